"""Replicas that start at the same moment migrate one ledger once: four processes open the
same empty database together (SQLite on one file, and a real PostgreSQL) and each gets a
ledger at the head; every schema version is applied exactly once.

The chart runs two operator replicas, and a rolling upgrade starts a new one while the old
one still runs: without the migration lock (PostgreSQL advisory lock, SQLite BEGIN
IMMEDIATE) the second CREATE TABLE fails, or a step runs twice."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kubemeter_operator.ledger.migrations import HEAD

from support.postgres import create_database, drop_database, postgres_url  # noqa: F401

pytestmark = pytest.mark.integration

OPENER = """
import sys, time
from kubemeter_operator.ledger import Ledger
start = float(sys.argv[2])
while time.time() < start:
    pass
Ledger.open(sys.argv[1]).close()
print("opened")
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    url, name = create_database(server)
    try:
        yield url
    finally:
        drop_database(server, name)


def test_four_replicas_starting_together_migrate_once(empty_ledger_url: str) -> None:
    start = time.time() + 3  # after every interpreter has imported the ledger
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, empty_ledger_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "opened"

    engine = create_engine(empty_ledger_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT version, count(*) FROM schema_version GROUP BY version")
            ).all()
    finally:
        engine.dispose()
    assert sorted(rows) == [(v, 1) for v in range(1, HEAD + 1)]
