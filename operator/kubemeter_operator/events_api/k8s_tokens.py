"""Tenant API tokens read from Kubernetes Secrets (`Tenant.spec.apiTokenSecretRef`).

`KubernetesTokenStore.refresh()` reads the Secret each current Tenant references and
rebuilds the digest index (plaintext tokens are hashed at once and never kept). Refreshes
happen on a timer (`run()`), right away when the operator calls `tenants_changed()`, and on
an unknown token at most every `miss_refresh_interval_s` (so a freshly created Secret works
within seconds without letting bad tokens hammer the API server).

A Secret that cannot be read because the API server is unavailable keeps its tenant's
previous token (a hiccup must not lock tenants out); a Secret that is gone, lacks the key
or is empty removes the tenant's token. A token that `auth.token_weakness` calls weak
(shorter than 32 bytes, few distinct characters, a repeated pattern, a placeholder) is
refused: it never authenticates. Problems per tenant are kept in `problems` (why, for a
person) and `problem_reasons` (a stable CamelCase reason, for a Tenant condition).

Concurrent refreshes coalesce: many requests with unknown tokens arriving at once cause one
read of the Secrets, not one each.

Never keep a plaintext token (only digests), never log one, and never let a weak or shared
token authenticate.

RBAC: the operator needs `get` on the referenced Secrets (a Role in their namespace).
Secrets are read through `kube.secrets` (`SecretReader`, `kubernetes_secret_reader`, still
importable from here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from kubemeter_operator.errors import TransientError
from kubemeter_operator.events_api.auth import TokenIndex, token_digest, token_weakness
from kubemeter_operator.events_api.ports import TenantsProvider
from kubemeter_operator.kube.secrets import SecretReader as SecretReader
from kubemeter_operator.kube.secrets import kubernetes_secret_reader as kubernetes_secret_reader

log = logging.getLogger(__name__)

SECRET_UNREADABLE = "SecretUnreadable"
SECRET_NOT_FOUND = "SecretNotFound"
TOKEN_KEY_MISSING = "TokenKeyMissing"
WEAK_TOKEN = "WeakToken"
SHARED_TOKEN = "SharedToken"


def _decode(value: str) -> str | None:
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text.strip() or None  # `echo token | kubectl create secret` adds a newline


class KubernetesTokenStore:
    """TokenStore backed by the Secrets that Tenants reference."""

    def __init__(
        self,
        tenants: TenantsProvider,
        read_secret: SecretReader | None = None,
        *,
        refresh_interval_s: float = 60.0,
        miss_refresh_interval_s: float = 5.0,
        executor: Executor | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants = tenants
        self._read_secret = read_secret
        self._refresh_interval_s = refresh_interval_s
        self._miss_refresh_interval_s = miss_refresh_interval_s
        self._executor = executor
        self._monotonic = monotonic
        self._index: TokenIndex | None = None
        self._digests: dict[str, bytes] = {}
        self._last_refresh = float("-inf")
        self._generation = 0  # refreshes started so far (to coalesce concurrent ones)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.problems: dict[str, str] = {}
        """Tenant -> why its token is missing or refused, in words (never the token itself).

        Only tenants that name a Secret (`spec.apiTokenSecretRef`) appear: one without a
        reference has chosen not to use the events API. Replaced as a whole on each refresh."""
        self.problem_reasons: dict[str, str] = {}
        """Tenant -> a stable reason for the same problem, for a Tenant condition:
        `SecretUnreadable` (the API server could not be asked; the last known token is kept),
        `SecretNotFound`, `TokenKeyMissing` (no such key, empty, not UTF-8), `WeakToken`
        (refused by `auth.token_weakness`), `SharedToken` (another tenant has the same one)."""

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def tenants_changed(self) -> None:
        """Ask `run()` to refresh now (call from the Tenant watch handlers)."""
        self._changed.set()

    async def authenticate(self, token: str) -> str | None:
        if self._index is None:
            await self._refresh(unless_since=self._generation)
        index = self._index
        if index is None:  # a concurrent first load failed
            raise TransientError("API tokens are not loaded yet")
        tenant = index.lookup(token)
        if tenant is None and (
            self._monotonic() - self._last_refresh >= self._miss_refresh_interval_s
        ):
            await self._refresh(unless_since=self._generation)
            tenant = self._index.lookup(token) if self._index is not None else None
        return tenant

    async def refresh(self) -> None:
        """Re-read every referenced Secret and rebuild the index."""
        await self._refresh(unless_since=None)

    async def _refresh(self, *, unless_since: int | None) -> None:
        """Refresh, unless `unless_since` is given and a refresh has started since that
        generation (a request that waited for the lock is served by the refresh before it)."""
        async with self._lock:
            if unless_since is not None and self._generation != unless_since:
                return
            self._generation += 1
            self._last_refresh = self._monotonic()
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, self._refresh_sync)
            except TransientError:
                if self._index is None:
                    raise
                log.warning("keeping the previous API tokens", exc_info=True)

    def _refresh_sync(self) -> None:
        reader = self._read_secret
        if reader is None:
            reader = self._read_secret = kubernetes_secret_reader()
        tenants = self._tenants()
        secrets: dict[tuple[str, str], dict[str, str] | None] = {}
        failed: dict[tuple[str, str], str] = {}
        digests: dict[str, bytes] = {}
        problems: dict[str, str] = {}
        reasons: dict[str, str] = {}

        def problem(tenant: str, reason: str, message: str) -> None:
            problems[tenant] = message
            reasons[tenant] = reason

        for name, tenant in sorted(tenants.items()):
            ref = tenant.spec.api_token_secret_ref
            if ref is None:
                continue
            where = (ref.namespace, ref.name)
            if where not in secrets and where not in failed:
                try:
                    secrets[where] = reader(ref.namespace, ref.name)
                except TransientError as exc:
                    failed[where] = str(exc)
            if where in failed:
                if name in self._digests:  # keep the last known token through a hiccup
                    digests[name] = self._digests[name]
                problem(name, SECRET_UNREADABLE, failed[where])
                continue
            data = secrets[where]
            if data is None:
                problem(name, SECRET_NOT_FOUND, f"secret {ref.namespace}/{ref.name} not found")
                continue
            raw = data.get(ref.key)
            token = _decode(raw) if raw is not None else None
            if token is None:
                problem(
                    name,
                    TOKEN_KEY_MISSING,
                    f"secret {ref.namespace}/{ref.name} has no usable (non-empty, UTF-8) "
                    f"key {ref.key!r}",
                )
                continue
            weakness = token_weakness(token)
            if weakness is not None:
                problem(
                    name,
                    WEAK_TOKEN,
                    f"the API token in secret {ref.namespace}/{ref.name} key {ref.key!r} is "
                    f"too weak and is refused: {weakness}; generate one with "
                    "`openssl rand -base64 32`",
                )
                continue
            digests[name] = token_digest(token)
        if failed and not secrets and not digests and self._index is None:
            raise TransientError("; ".join(sorted(set(failed.values()))))
        index = TokenIndex(digests.items())
        for name in index.ambiguous:
            problem(name, SHARED_TOKEN, "its API token is also another tenant's token; refusing it")
        self._digests = digests
        self._index = index
        self.problems = problems
        self.problem_reasons = reasons

    async def run(self) -> None:
        """Refresh every `refresh_interval_s` and whenever `tenants_changed()` is called.

        Runs until cancelled (start it as a task next to the API server)."""
        while True:
            try:
                await self.refresh()
            except TransientError:
                log.warning("could not load the API tokens; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._refresh_interval_s)
            self._changed.clear()
