"""Library errors become kubemeter errors at the ledger's edge."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from kubemeter_operator.errors import (
    ConflictError,
    InputError,
    LedgerUnavailableError,
    PermanentError,
)


@contextmanager
def wrapped(what: str) -> Iterator[None]:
    """Wrap sqlalchemy errors raised inside: retryable ones as LedgerUnavailableError
    (database down, disconnects, lock timeouts, deadlocks, serialization failures), a CHECK
    violation or a 64-bit overflow of a quantity as InputError (bad input: nothing written),
    unique-key violations as ConflictError, anything else from the database as
    PermanentError. Classified by the driver's error type and code, never by message."""
    try:
        yield
    except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
        if _out_of_bounds(exc.orig):
            raise InputError(
                "quantity",
                f"a quantity or its total would leave the ledger's bounds "
                f"(non-negative 64-bit integers): {what} refused",
            ) from exc
        if isinstance(exc, sa_exc.DataError):
            raise PermanentError(f"ledger {what}: {exc.orig}") from exc
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
    except (psycopg.errors.CheckViolation, psycopg.errors.NumericValueOutOfRange) as exc:
        raise InputError(
            "quantity",
            f"a quantity or its total would leave the ledger's bounds "
            f"(non-negative 64-bit integers): {what} refused",
        ) from exc
    except psycopg.IntegrityError as exc:  # the psycopg hot path (pgfast)
        raise ConflictError(what, str(exc).splitlines()[0]) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailableError(f"ledger {what}: database unavailable or busy: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"ledger {what}: {exc}") from exc


def _out_of_bounds(orig: BaseException | None) -> bool:
    """A CHECK constraint or a numeric range refused the write."""
    if isinstance(orig, psycopg.errors.CheckViolation | psycopg.errors.NumericValueOutOfRange):
        return True
    if isinstance(orig, sqlite3.IntegrityError):
        return getattr(orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_CHECK"
    return False
