"""Terms, running statements from rollups, immutable finalised statements; migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import MetaData, inspect

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import USAGE_LIST
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import Ledger, migrations
from kubemeter_operator.ledger.engine import make_engine
from kubemeter_operator.ledger.schema import metadata
from kubemeter_operator.rating import rate
from kubemeter_operator.usage import accumulate
from kubemeter_operator.usage.periods import Period

NOV = Period(2026, 11)
RECORDS = USAGE_LIST.validate_python([
    {"kind": "gpu", "id": "g1", "model": "H100", "allocatedMs": 36_000_000,
     "windowStart": "2026-10-31T20:00:00Z", "windowEnd": "2026-11-01T06:00:00Z"},
    {"kind": "tokens", "id": "t1", "model": "llama", "promptTokens": 3_000_000,
     "completionTokens": 12_345, "timestamp": "2026-11-05T00:00:00Z"},
    {"kind": "custom", "id": "c1", "name": "credits", "quantity": "12.5",
     "timestamp": "2026-11-06T00:00:00Z"},
])  # fmt: skip


def test_running_statement_and_immutable_final(ledger: Ledger, plan: PricePlanSpec) -> None:
    ledger.record_events("acme", RECORDS)
    with pytest.raises(InputError):
        billing_statements.running_statement(ledger, "acme", NOV)
    ledger.set_terms("acme", NOV, plan, Decimal("10"))
    terms = ledger.get_terms("acme", NOV)
    assert terms is not None
    assert terms.plan == plan
    assert terms.discount_percent == Decimal(10)
    running = billing_statements.running_statement(ledger, "acme", NOV)
    expected = rate(plan, accumulate(RECORDS, NOV), period=NOV, discount_percent=Decimal(10))
    assert running == expected
    assert billing_statements.final_statement(ledger, "acme", NOV) is None
    assert billing_statements.finalize(ledger, "acme", NOV, running) is True
    assert billing_statements.finalize(ledger, "acme", NOV, running) is False
    assert billing_statements.final_statement(ledger, "acme", NOV) == running
    assert billing_statements.statement(ledger, "acme", NOV) == (running, True)
    other = rate(plan, {}, period=NOV)
    with pytest.raises(ConflictError, match="acme"):
        billing_statements.finalize(ledger, "acme", NOV, other)
    assert billing_statements.final_statement(ledger, "acme", NOV) == running


def test_v1_ledger_upgrades_in_place(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    try:
        assert migrations.migrate(engine, target=1) == (0, 1)
        v1 = Ledger(engine)
        # write v1 data with the v1 code path: usage rows only (no rollup table yet)
        from kubemeter_operator.ledger.codec import digest, record_json
        from kubemeter_operator.ledger.schema import usage_event

        with engine.begin() as conn:
            for r in RECORDS:
                payload = record_json(r)
                conn.execute(usage_event.insert().values(
                    event_id=r.id, tenant="acme", at=r.at, payload_hash=digest("acme", payload),
                    payload=payload, recorded_at=datetime.now(UTC)))  # fmt: skip
        assert v1.schema_version() == 1
        assert not inspect(engine).has_table("usage_rollup")
    finally:
        engine.dispose()
    with Ledger.open(ledger_url) as led:
        assert led.schema_version() == migrations.HEAD >= 3
        for period in (Period(2026, 10), NOV):
            assert led.period_totals("acme", period) == accumulate(RECORDS, period)
        assert led.record_events("acme", RECORDS).duplicates == len(RECORDS)
    with Ledger.open(ledger_url) as led:  # reopening at head is a no-op
        assert led.schema_version() == migrations.HEAD


def test_migrated_schema_matches_metadata(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as led:
        reflected = MetaData()
        reflected.reflect(led.engine)
        assert set(reflected.tables) == set(metadata.tables)
        insp = inspect(led.engine)
        for name, table in metadata.tables.items():
            assert [c["name"] for c in insp.get_columns(name)] == [c.name for c in table.c]
            assert {i["name"] for i in insp.get_indexes(name)} == {i.name for i in table.indexes}
            pk = insp.get_pk_constraint(name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns]
