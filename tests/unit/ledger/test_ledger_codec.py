"""The fast canonical JSON of usage records is byte-identical to the generic one: a change
would turn every replayed event into a conflict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from kubemeter_operator.api.usage import (
    CustomUsage,
    GpuUsage,
    RequestUsage,
    StepUsage,
    TokenUsage,
    UsageRecord,
)
from kubemeter_operator.ledger import codec

texts = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and s)
ids = st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,40}$", fullmatch=True)
counts = st.integers(min_value=0, max_value=10**12)
zones = st.sampled_from([UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))])
instants = st.builds(
    lambda s, us, tz: (
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s, microseconds=us)
    ).astimezone(tz),
    st.integers(min_value=0, max_value=3 * 365 * 86400),
    st.integers(min_value=0, max_value=999_999),
    zones,
)
decimals = st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False).map(
    lambda d: Decimal(d)
)


@st.composite
def records(draw: st.DrawFn) -> UsageRecord:
    kind = draw(st.sampled_from(["gpu", "tokens", "steps", "requests", "custom"]))
    common = {"id": draw(st.none() | ids), "tenant": draw(st.none() | texts)}
    at = draw(instants)
    if kind == "gpu":
        alloc = draw(counts)
        return GpuUsage(
            **common, model=draw(texts), mig_profile=draw(st.none() | st.just("1g.10gb")),
            allocated_ms=alloc, active_ms=draw(st.integers(0, alloc)), window_start=at,
            window_end=at + timedelta(milliseconds=draw(st.integers(1, 10**9))),
        )  # fmt: skip
    if kind == "tokens":
        prompt = draw(counts)
        return TokenUsage(
            **common, model=draw(texts), prompt_tokens=prompt, completion_tokens=draw(counts),
            cached_prompt_tokens=draw(st.integers(0, prompt)), timestamp=at,
        )  # fmt: skip
    if kind == "steps":
        return StepUsage(**common, model=draw(st.none() | texts), steps=draw(counts), timestamp=at)
    if kind == "requests":
        return RequestUsage(
            **common, model=draw(st.none() | texts), requests=draw(counts), timestamp=at
        )
    return CustomUsage(**common, name=draw(texts), quantity=draw(decimals), timestamp=at)


@settings(max_examples=1500, deadline=None)
@given(records())
def test_fast_canonical_json_equals_the_generic_form(record: UsageRecord) -> None:
    assert codec.record_json(record) == codec._record_json_generic(record)
    assert codec.parse_record(codec.record_json(record)) == record
