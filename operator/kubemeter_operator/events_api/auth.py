"""Bearer-token authentication for the events API: one token per tenant.

Only SHA-256 digests of tokens are kept in memory. A presented token is hashed and compared
with every known digest using `hmac.compare_digest` (no early exit), so a lookup takes the
same time whichever tenant (if any) it belongs to.

A token shared by two tenants authenticates neither (it could not say whose usage it is);
`TokenIndex.ambiguous` lists such tenants so the operator can report them.

`token_weakness` is the strength rule for tokens the operator reads from Secrets (see its
docstring): a weak token must never authenticate. `StaticTokenStore` (tests, demos) applies it
only when asked (`check_strength=True`).

Never keep or log a plaintext token, and never compare tokens with `==`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Protocol

BEARER = "bearer"

MIN_TOKEN_BYTES = 32
"""A token must be at least this long (UTF-8 bytes): 32 random bytes, base64 or hex encoded,
is the intended credential (`openssl rand -base64 32`)."""
MIN_DISTINCT_CHARS = 10
MIN_RANDOM_REST = 16
PLACEHOLDERS = (
    "changeme",
    "password",
    "passw0rd",
    "passwd",
    "secret",
    "token",
    "apikey",
    "example",
    "placeholder",
    "default",
    "replaceme",
    "replace",
    "kubemeter",
    "letmein",
    "qwerty",
    "admin",
    "test",
)
"""Words that mark a value as a placeholder rather than a generated secret."""
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


class TokenStore(Protocol):
    """Maps a bearer token to the tenant that owns it.

    `authenticate` returns the tenant name, or None for an unknown token. It raises
    `kubemeter_operator.errors.TransientError` when it cannot tell yet (e.g. the tokens have
    not been loaded), which the API answers with 503 rather than 401.
    """

    async def authenticate(self, token: str) -> str | None: ...


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _shortest_period(text: str) -> int:
    """The length of the shortest block whose repetition spells `text` (KMP failure function)."""
    fail = [0] * len(text)
    k = 0
    for i in range(1, len(text)):
        while k and text[i] != text[k]:
            k = fail[k - 1]
        if text[i] == text[k]:
            k += 1
        fail[i] = k
    return len(text) - fail[-1] if text else 0


def _without_sequences(text: str) -> str:
    """`text` without its runs of 3 or more consecutive characters (`abc`, `123`, `cba`)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        end = i  # the last index of the run of consecutive characters starting at i
        if i + 1 < len(text) and (step := ord(text[i + 1]) - ord(text[i])) in (1, -1):
            end = i + 1
            while end + 1 < len(text) and ord(text[end + 1]) - ord(text[end]) == step:
                end += 1
        if end - i + 1 >= 3:
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def token_weakness(token: str) -> str | None:
    """Why `token` is too weak to be a tenant's API credential, or None when it is fine.

    The rule (cheap, explainable, and never refusing a properly generated token in practice):
    1. at least `MIN_TOKEN_BYTES` (32) bytes of UTF-8;
    2. at least `MIN_DISTINCT_CHARS` (10) distinct characters (`aaaa...`, `0101...` fail);
    3. not a repetition of a shorter block (`changeme-changeme-...`, `0123456789` x 4);
    4. after removing placeholder words (`PLACEHOLDERS`: changeme, password, secret,
       token...) and runs of 3+ consecutive characters (`abc`, `6789`, `zyx`) from its
       lowercased letters and digits, at least `MIN_RANDOM_REST` (16) characters remain.

    `openssl rand -base64 32` or `-hex 32` always passes. The reason never quotes the token.
    """
    size = len(token.encode("utf-8"))
    if size < MIN_TOKEN_BYTES:
        return f"it is {size} bytes long; at least {MIN_TOKEN_BYTES} are required"
    distinct = len(set(token))
    if distinct < MIN_DISTINCT_CHARS:
        return (
            f"it has only {distinct} distinct characters; at least {MIN_DISTINCT_CHARS} "
            "are required"
        )
    period = _shortest_period(token)
    if period <= len(token) // 2:
        return f"it repeats a {period}-character pattern"
    rest = _NOT_ALNUM.sub("", token.lower())
    found = [word for word in PLACEHOLDERS if word in rest]
    for word in found:
        rest = rest.replace(word, "")
    rest = _without_sequences(rest)
    if len(rest) < MIN_RANDOM_REST:
        what = f"placeholder words ({', '.join(found)}) and " if found else ""
        left = f"{len(rest)} character{' remains' if len(rest) == 1 else 's remain'}"
        return (
            f"it is mostly {what}runs of consecutive characters: only {left} besides, "
            f"at least {MIN_RANDOM_REST} are required"
        )
    return None


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != BEARER or not value:
        return None
    return value


class TokenIndex:
    """An immutable digest -> tenant index built from (tenant, token) pairs."""

    def __init__(self, pairs: Iterable[tuple[str, bytes]] = ()) -> None:
        by_digest: dict[bytes, set[str]] = {}
        for tenant, digest in pairs:
            by_digest.setdefault(digest, set()).add(tenant)
        self.ambiguous: frozenset[str] = frozenset(
            t for owners in by_digest.values() if len(owners) > 1 for t in owners
        )
        self._entries: tuple[tuple[bytes, str], ...] = tuple(
            (digest, next(iter(owners))) for digest, owners in by_digest.items() if len(owners) == 1
        )

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> TokenIndex:
        """From plaintext tokens by tenant (empty tokens are ignored)."""
        return cls((tenant, token_digest(tok)) for tenant, tok in tokens.items() if tok)

    def __len__(self) -> int:
        return len(self._entries)

    def tenants(self) -> frozenset[str]:
        return frozenset(t for _, t in self._entries)

    def lookup(self, token: str) -> str | None:
        digest = token_digest(token)
        found: str | None = None
        for known, tenant in self._entries:
            if hmac.compare_digest(known, digest):
                found = tenant
        return found


class StaticTokenStore:
    """Tokens given in code: for unit tests, demos and single-tenant setups.

    Only emptiness is checked unless `check_strength=True`, which refuses (ValueError naming
    the tenant and the reason) a token that `token_weakness` calls weak. Tokens read from
    Kubernetes Secrets (`KubernetesTokenStore`) are always checked.
    """

    def __init__(
        self, tokens: Mapping[str, str] | None = None, *, check_strength: bool = False
    ) -> None:
        self._tokens: dict[str, bytes] = {}
        self._index = TokenIndex()
        self.check_strength = check_strength
        for tenant, token in (tokens or {}).items():
            self.set_token(tenant, token)

    def set_token(self, tenant: str, token: str) -> None:
        if not token:
            raise ValueError(f"token of tenant {tenant!r}: must not be empty")
        if self.check_strength and (why := token_weakness(token)) is not None:
            raise ValueError(f"token of tenant {tenant!r}: too weak: {why}")
        self._tokens[tenant] = token_digest(token)
        self._index = TokenIndex(self._tokens.items())

    async def authenticate(self, token: str) -> str | None:
        return self._index.lookup(token)
