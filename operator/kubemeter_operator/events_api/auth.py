"""Bearer-token authentication for the events API: one token per tenant.

Only SHA-256 digests of tokens are kept in memory. A presented token is hashed and compared
with every known digest using `hmac.compare_digest` (no early exit), so a lookup takes the
same time whichever tenant (if any) it belongs to.

A token shared by two tenants authenticates neither (it could not say whose usage it is);
`TokenIndex.ambiguous` lists such tenants so the operator can report them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Protocol

BEARER = "bearer"


class TokenStore(Protocol):
    """Maps a bearer token to the tenant that owns it.

    `authenticate` returns the tenant name, or None for an unknown token. It raises
    `kubemeter_operator.errors.TransientError` when it cannot tell yet (e.g. the tokens have
    not been loaded), which the API answers with 503 rather than 401.
    """

    async def authenticate(self, token: str) -> str | None: ...


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


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
    """Tokens given in code: for unit tests, demos and single-tenant setups."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._tokens: dict[str, bytes] = {}
        for tenant, token in (tokens or {}).items():
            self.set_token(tenant, token)

    def set_token(self, tenant: str, token: str) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self._tokens[tenant] = token_digest(token)
        self._index = TokenIndex(self._tokens.items())

    async def authenticate(self, token: str) -> str | None:
        return self._index.lookup(token)
