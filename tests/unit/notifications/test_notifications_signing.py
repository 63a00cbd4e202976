"""X-Kubemeter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from kubemeter_operator.notifications.signing import parse, sign, verify

SECRET = b"whsec-0123456789abcdef0123456789abcdef"
BODY = b'{"id":"abc","specversion":"1.0"}'
AT = datetime(2026, 11, 20, 9, 31, 0, 900000, tzinfo=UTC)


def test_header_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    header = sign(BODY, SECRET, AT)
    t = int(AT.timestamp())  # whole seconds, rounded down
    expected = hmac.new(SECRET, f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"


def test_a_signature_verifies_with_the_same_secret_and_body_within_the_tolerance() -> None:
    header = sign(BODY, SECRET, AT)
    assert verify(header, BODY, SECRET, AT)
    assert verify(header, BODY, SECRET, AT + timedelta(seconds=299))
    assert verify(header, BODY, SECRET, AT - timedelta(seconds=299))


def test_a_tampered_body_fails() -> None:
    header = sign(BODY, SECRET, AT)
    assert not verify(header, BODY.replace(b"abc", b"abd"), SECRET, AT)
    assert not verify(header, BODY + b" ", SECRET, AT)


def test_a_wrong_key_fails() -> None:
    assert not verify(sign(BODY, SECRET, AT), BODY, SECRET + b"x", AT)


def test_an_old_or_future_timestamp_fails_as_a_replay() -> None:
    header = sign(BODY, SECRET, AT)
    assert not verify(header, BODY, SECRET, AT + timedelta(seconds=302))
    assert not verify(header, BODY, SECRET, AT - timedelta(seconds=302))
    assert not verify(header, BODY, SECRET, AT + timedelta(hours=1), tolerance_s=60)


def test_a_changed_timestamp_fails() -> None:
    t, (sig,) = parse(sign(BODY, SECRET, AT)) or (0, [""])
    assert not verify(f"t={t + 1},v1={sig}", BODY, SECRET, AT)


def test_any_matching_v1_entry_verifies() -> None:
    t, (sig,) = parse(sign(BODY, SECRET, AT)) or (0, [""])
    assert verify(f"t={t},v1={'0' * 64},v1={sig}", BODY, SECRET, AT)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "v1=abc",
        "t=1795253460",
        "t=abc,v1=00",
        "t=1795253460,t=1795253460,v1=00",
        "garbage",
        "t=١٧٩٥٢٥٣٤٦٠,v1=00",  # non-ASCII digits
        "t=1795253460,v1=ü",
    ],
)
def test_a_malformed_header_fails(header: str) -> None:
    assert not verify(header, BODY, SECRET, AT)
