"""What the events API needs from the rest of the operator (structural types only).

The API is wired to the real `Ledger` in the operator process and to small fakes in unit
tests; both satisfy these protocols. Ledger methods may be plain (blocking, SQLAlchemy) or
coroutine functions: plain ones run on the API's own thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kubemeter_operator.api.tenant import Tenant
from kubemeter_operator.api.usage import UsageRecord
from kubemeter_operator.usage.periods import Period


class RecordResultLike(Protocol):
    """The outcome of recording a batch: how many events were new, how many seen before."""

    @property
    def accepted(self) -> int: ...

    @property
    def duplicates(self) -> int: ...


class EventLedger(Protocol):
    """The ledger operations the events API uses.

    - `record_events`: all-or-nothing and idempotent by (tenant, event id); raises
      `ConflictError(key=<id>)` when the tenant recorded that id before with a different
      payload, `InputError` when a quantity would leave the ledger's bounds, and
      `TransientError` when the database is unavailable.
    - `get_terms`, `period_totals`, `get_statement`: what `billing.statements` reads to
      answer `GET /v1/tenants/{name}/usage` (the final statement of a closed period, else
      the running one), and `GET /v1/tenants/{name}/allowance`;
    - `wallet`: the prepaid wallet's balance and shortfall (`balance`, `outstanding`), read
      for the allowance of a tenant whose wallet is enabled.
    """

    def record_events(self, tenant: str, records: Sequence[UsageRecord]) -> Any: ...

    def get_terms(self, tenant: str, period: Period) -> Any: ...

    def period_totals(self, tenant: str, period: Period) -> Any: ...

    def get_statement(self, tenant: str, period: Period) -> str | None: ...

    def wallet(self, tenant: str) -> Any: ...


TenantsProvider = Callable[[], Mapping[str, Tenant]]
"""The Tenants the operator currently knows, by name (e.g. from its kopf index)."""
