"""Library errors become kubemeter errors at the ledger's edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from kubemeter_operator.errors import ConflictError, LedgerUnavailableError, PermanentError


@contextmanager
def wrapped(what: str) -> Iterator[None]:
    """Wrap sqlalchemy errors raised inside: retryable ones as LedgerUnavailableError
    (database
    down, disconnects, lock timeouts, deadlocks, serialization failures), unique-key
    violations as ConflictError, anything else from the database as PermanentError."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        raise ConflictError(what, str(exc.orig).splitlines()[0] if exc.orig else "") from exc
    except sa_exc.OperationalError as exc:
        raise LedgerUnavailableError(
            f"ledger {what}: database unavailable or busy: {exc.orig}"
        ) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise LedgerUnavailableError(f"ledger {what}: connection lost: {exc.orig}") from exc
        raise PermanentError(f"ledger {what}: {exc.orig}") from exc
    except sa_exc.TimeoutError as exc:
        raise LedgerUnavailableError(
            f"ledger {what}: no database connection available: {exc}"
        ) from exc
    except sa_exc.SQLAlchemyError as exc:
        raise PermanentError(f"ledger {what}: {exc}") from exc
    except psycopg.IntegrityError as exc:  # the psycopg hot path (pgfast)
        raise ConflictError(what, str(exc).splitlines()[0]) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailableError(f"ledger {what}: database unavailable or busy: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"ledger {what}: {exc}") from exc
