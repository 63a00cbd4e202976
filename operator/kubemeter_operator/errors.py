"""kubemeter's own error types. Library errors are wrapped in these at module edges; the kopf
handlers turn them into kopf.TemporaryError / kopf.PermanentError."""

from __future__ import annotations


class KubemeterError(Exception):
    """Base of every kubemeter error."""


class InputError(KubemeterError):
    """Bad input (a CRD field, an API payload, a file, a flag). Changes nothing.

    `field` names the offending field (dotted/indexed path) so the message can point at it.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class ConflictError(KubemeterError):
    """An idempotency key was reused with a different payload."""

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__(
            f"conflict: {key} was already recorded with a different payload"
            + (f" ({detail})" if detail else "")
        )


class TransientError(KubemeterError):
    """A failure that may go away by itself (network, database briefly down): retry."""


class PrometheusUnavailableError(TransientError):
    """Prometheus could not be queried (unreachable, overloaded, a bad gateway)."""


class LedgerUnavailableError(TransientError):
    """The ledger's database could not be reached or was busy."""


class PermanentError(KubemeterError):
    """A failure that will not go away without a change: surface it in status and Events."""
