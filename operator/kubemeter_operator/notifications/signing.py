"""The webhook signature: `X-Kubemeter-Signature: t=<unix seconds>,v1=<hex>`. Pure.

    header = sign(body, secret, now)                  # t=1795253460,v1=5f0c...
    verify(header, body, secret, now, tolerance_s=300) -> bool

`v1` is the lowercase hex HMAC-SHA256, keyed by the Tenant's Secret value (its bytes, with
surrounding whitespace removed), of the ASCII timestamp, a dot, and the raw body:
`HMAC(secret, b"1795253460." + body)`. `t` is the time of the attempt (not of the event),
so a receiver that rejects timestamps further than a tolerance from its clock rejects a
replayed request; the id in the body is what tells a retry from a new event. A header may
carry several `v1` entries (a receiver accepts any that matches); kubemeter sends one.

Never log a secret, and compare digests in constant time only (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import datetime

HEADER = "X-Kubemeter-Signature"
SCHEME = "v1"


def signature(body: bytes, secret: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, now: datetime) -> str:
    """The header value for an attempt made at `now`: `t=<unix seconds>,v1=<hex>`."""
    timestamp = math.floor(now.timestamp())
    return f"t={timestamp},{SCHEME}={signature(body, secret, timestamp)}"


def parse(header: str) -> tuple[int, list[str]] | None:
    """(timestamp, the v1 signatures) of a header value; None when it is malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return None
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify(
    header: str, body: bytes, secret: bytes, now: datetime, tolerance_s: float = 300.0
) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance_s` of
    `now` (either side)."""
    parsed = parse(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if abs(now.timestamp() - timestamp) > tolerance_s:
        return False
    expected = signature(body, secret, timestamp)
    return any(s.isascii() and hmac.compare_digest(expected, s.lower()) for s in signatures)


__all__ = ["HEADER", "SCHEME", "parse", "sign", "signature", "verify"]
