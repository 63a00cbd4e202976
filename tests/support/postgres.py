"""pytest plugin: a real PostgreSQL server for the ledger tests, and per-test databases.

Register with ``pytest_plugins = ["support.postgres"]`` (tests/ on ``pythonpath``).

- ``postgres_url`` (session): ``$KUBEMETER_TEST_POSTGRES_URL`` when set (nothing is started);
  otherwise a throwaway server started by ``hack/pgtmp.py`` (Debian's ``postgresql``
  package, run as a non-root user in a temp dir) and stopped at session end. Missing
  PostgreSQL FAILS the tests with an install hint; it never skips.
- ``ledger_url`` (function, parametrized ``sqlite`` / ``postgresql``): a fresh, empty
  database per test: a new SQLite file under ``tmp_path``, or ``CREATE DATABASE`` on the
  server (dropped afterwards).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]
PGTMP_PATH = REPO_ROOT / "hack" / "pgtmp.py"
_MODULE_NAME = "kubemeter_pgtmp"


def load_pgtmp() -> ModuleType:
    """Import hack/pgtmp.py (a standalone script) by path."""
    mod = sys.modules.get(_MODULE_NAME)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, PGTMP_PATH)
    assert spec is not None, PGTMP_PATH
    assert spec.loader is not None, PGTMP_PATH
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    given = os.environ.get("KUBEMETER_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    pgtmp = load_pgtmp()
    try:
        server = pgtmp.start(durable=False)
    except pgtmp.PostgresUnavailableError as exc:
        pytest.fail(f"PostgreSQL is required for the ledger tests: {exc}", pytrace=False)
    try:
        yield server.url()
    finally:
        if os.environ.get("KUBEMETER_KEEP_POSTGRES"):
            print(f"\nPostgreSQL left running in {server.base_dir}: {server.url()}")
        else:
            server.stop()


def create_database(server_url: str) -> tuple[str, str]:
    """CREATE DATABASE with a unique name; returns (its URL, its name)."""
    name = f"kmtest_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = make_url(server_url).set(database=name)
    return url.render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    url, name = create_database(server_url)
    try:
        yield url
    finally:
        drop_database(server_url, name)
