"""Terms, running statements from rollups, immutable finalised statements; migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import MetaData, inspect, text

from kubemeter_operator.api.priceplan import PricePlanSpec
from kubemeter_operator.api.usage import USAGE_LIST
from kubemeter_operator.billing import statements as billing_statements
from kubemeter_operator.errors import ConflictError, InputError
from kubemeter_operator.ledger import Ledger, migrations
from kubemeter_operator.ledger.engine import make_engine
from kubemeter_operator.ledger.schema import metadata
from kubemeter_operator.rating import rate
from kubemeter_operator.usage import UsageKey, accumulate
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


def test_v3_ledger_upgrades_to_billing_over_time(ledger_url: str, plan: PricePlanSpec) -> None:
    """v4 rebuilds the rollups with a booked period, seeds billing_state from finalised
    statements and turns v3 burns (keys burn/<tenant>/<period>/<total>) into payments."""
    engine = make_engine(ledger_url)
    oct_ = Period(2026, 10)
    try:
        assert migrations.migrate(engine, target=3) == (0, 3)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM usage_rollup")
            conn.exec_driver_sql(
                "INSERT INTO usage_rollup (tenant, period, day, kind, model, mig_profile, name,"
                " allocated_ms, active_ms, prompt_tokens, completion_tokens,"
                " cached_prompt_tokens, steps, requests, custom) VALUES"
                " ('acme', '2026-10', '2026-10-31', 'tokens', 'llama', '', '', 0, 0, 7, 0, 0, 0,"
                " 0, '0'),"
                " ('acme', '2026-11', '2026-11-05', 'tokens', 'llama', '', '', 0, 0, 5, 0, 0, 0,"
                " 0, '0')"
            )
            ts = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if engine.dialect.name == "sqlite" else now
            conn.execute(
                text(
                    "INSERT INTO statement (tenant, period, currency, total, body, body_hash,"
                    " finalized_at) VALUES ('acme', '2026-10', 'USD', 42, '{}', 'h', :ts)"
                ),
                {"ts": ts},
            )
            conn.execute(
                text(
                    "INSERT INTO wallet (tenant, currency, balance, topped_up, taken, updated_at)"
                    " VALUES ('acme', 'USD', 8, 50, 42, :ts)"
                ),
                {"ts": ts},
            )
            for key, amount in (("burn/acme/2026-10/30", 30), ("burn/acme/2026-10/42", 12)):
                conn.execute(
                    text(
                        "INSERT INTO wallet_entry (tenant, key, kind, currency, amount, taken,"
                        " shortfall, balance_after, created_at) VALUES ('acme', :k, 'burn',"
                        " 'USD', :a, :a, 0, 0, :ts)"
                    ),
                    {"k": key, "a": amount, "ts": ts},
                )
    finally:
        engine.dispose()
    with Ledger.open(ledger_url) as led:
        assert led.schema_version() == migrations.HEAD >= 4
        assert led.period_totals("acme", oct_)[UsageKey("tokens", "llama")].prompt_tokens == 7
        assert led.period_totals("acme", NOV)[UsageKey("tokens", "llama")].prompt_tokens == 5
        assert led.late_totals("acme", NOV) == {}
        assert ("acme", oct_) not in led.open_periods()
        assert led.unannounced() == []  # statements finalised before v4 were announced
        (paid,) = led.settlements("acme")
        assert (paid.period, paid.due, paid.paid) == ("2026-10", Decimal(42), Decimal(42))
        # late usage for October (finalised before the upgrade) is booked into November
        led.record_events("acme", USAGE_LIST.validate_python([
            {"kind": "tokens", "id": "late", "model": "llama", "promptTokens": 3,
             "timestamp": "2026-10-30T00:00:00Z"}]))  # fmt: skip
        assert led.period_totals("acme", oct_)[UsageKey("tokens", "llama")].prompt_tokens == 7
        late = led.late_totals("acme", NOV)
        assert late[oct_][UsageKey("tokens", "llama")].prompt_tokens == 3
