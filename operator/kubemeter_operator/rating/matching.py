"""Which meter each usage key's quantities go to, and what no meter prices.

GPU time: a key ("gpu", model, migProfile) goes to exactly one gpuTime meter, the most
specific that matches:

1. migProfile == the key's profile and gpuModel == the key's model;
2. migProfile == the key's profile and no gpuModel;
3. no migProfile and gpuModel == the key's model;
4. no migProfile and no gpuModel (the wildcard meter).

A MIG slice that lands on a level 3 or 4 meter counts as its share of the GPU: g/7 for a
profile `<g>g.<mem>gb` (A100/H100/H200 GPUs have 7 compute slices). The share applies to the
period *sum* of the key's milliseconds and is rounded half-up to an integer millisecond, so
splitting usage into more records never changes the result. A profile whose compute-slice
count is outside 1..7 is not a real profile and stays unpriced.

Tokens, agent steps and requests: the meter of the right kind whose `model` equals the key's
model, else the meter of that kind without a model. The prompt meter bills prompt − cached,
the cached meter bills cached, the completion meter bills completion: a cached token is never
billed by both, and with no cached meter it is unpriced. Custom: by `customName`.

Whatever no meter takes is reported as unpriced (never dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from kubemeter_operator.api.priceplan import GpuBasis, Meter, MeterKind
from kubemeter_operator.api.types import MIG_PROFILE_RE
from kubemeter_operator.money import round_half_up
from kubemeter_operator.usage.totals import Quantities, UsageKey, UsageTotals

MIG_COMPUTE_SLICES = 7
"""Compute slices of a full MIG-capable GPU (A100, H100, H200)."""


_MODEL_KIND_BY_USAGE: dict[str, MeterKind] = {
    "steps": MeterKind.AGENT_STEPS,
    "requests": MeterKind.REQUESTS,
}


def mig_share(profile: str) -> Fraction | None:
    """A MIG profile's share of the whole GPU (`3g.40gb` -> 3/7); None if not a profile."""
    match = MIG_PROFILE_RE.match(profile)
    if not match:
        return None
    slices = int(match.group(1))
    if not 1 <= slices <= MIG_COMPUTE_SLICES:
        return None
    return Fraction(slices, MIG_COMPUTE_SLICES)


def gpu_meter_for(meters: Sequence[Meter], key: UsageKey) -> Meter | None:
    """The most specific gpuTime meter for a GPU usage key (see the module docstring)."""
    gpu = [m for m in meters if m.kind is MeterKind.GPU_TIME]
    levels: list[tuple[str | None, str | None]] = []
    if key.mig_profile:
        levels += [(key.model, key.mig_profile), (None, key.mig_profile)]
    levels += [(key.model, None), (None, None)]
    for model, profile in levels:
        for meter in gpu:
            if meter.gpu_model == model and meter.mig_profile == profile:
                return meter
    return None


def model_meter_for(meters: Sequence[Meter], kind: MeterKind, model: str) -> Meter | None:
    """The meter of `kind` for an LLM model: exact model first, then the model-less one."""
    same_kind = [m for m in meters if m.kind is kind]
    if model:
        for meter in same_kind:
            if meter.model == model:
                return meter
    for meter in same_kind:
        if meter.model is None:
            return meter
    return None


def custom_meter_for(meters: Sequence[Meter], name: str) -> Meter | None:
    for meter in meters:
        if meter.kind is MeterKind.CUSTOM and meter.custom_name == name:
            return meter
    return None


@dataclass(frozen=True)
class Contribution:
    """Base units of one usage key that a meter bills."""

    key: UsageKey
    quantity: Decimal
    """Base units (integer ms/tokens/steps/requests, or a custom decimal)."""
    share: Fraction | None = None
    """The MIG share applied to the key's milliseconds, when one was."""


@dataclass
class UnpricedQuantities:
    """Usage of one key that no meter prices; `quantities` maps camelCase names to base units.

    `promptTokens` here counts only *uncached* prompt tokens (cached ones are listed as
    `cachedPromptTokens`), so the entries never overlap.
    """

    key: UsageKey
    quantities: dict[str, Decimal]
    reasons: list[str]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class Assignment:
    """Base quantities per meter name, and the usage no meter takes."""

    contributions: dict[str, list[Contribution]] = field(default_factory=dict)
    unpriced: list[UnpricedQuantities] = field(default_factory=list)

    def quantity(self, meter_name: str) -> Fraction:
        """Total base units a meter bills, exact."""
        contributions = self.contributions.get(meter_name, [])
        return sum((Fraction(c.quantity) for c in contributions), Fraction(0))

    def add(self, meter: Meter, contribution: Contribution) -> None:
        self.contributions.setdefault(meter.name, []).append(contribution)

    def add_unpriced(
        self, key: UsageKey, quantities: Mapping[str, Decimal | int], reason: str
    ) -> None:
        nonzero = {k: Decimal(v) for k, v in quantities.items() if v}
        if not nonzero:
            return
        last = self.unpriced[-1] if self.unpriced else None
        if last is not None and last.key == key:  # one entry per key (token parts)
            last.quantities.update(nonzero)
            if reason not in last.reasons:
                last.reasons.append(reason)
            return
        self.unpriced.append(UnpricedQuantities(key, nonzero, [reason]))


def _assign_gpu(out: Assignment, meters: Sequence[Meter], key: UsageKey, q: Quantities) -> None:
    raw = {"allocatedMs": q.allocated_ms, "activeMs": q.active_ms}
    share: Fraction | None = None
    if key.mig_profile:
        share = mig_share(key.mig_profile)
        if share is None:
            out.add_unpriced(key, raw, f"{key.mig_profile!r} is not a MIG profile of 1..7 slices")
            return
    meter = gpu_meter_for(meters, key)
    if meter is None:
        out.add_unpriced(key, raw, "no gpuTime meter matches this GPU model")
        return
    ms = q.active_ms if meter.effective_basis is GpuBasis.ACTIVE else q.allocated_ms
    if meter.mig_profile is not None or share is None:
        out.add(meter, Contribution(key, Decimal(ms)))
    else:
        # The slice's share of the GPU, on the period sum, rounded half-up to whole ms.
        out.add(meter, Contribution(key, round_half_up(ms * share, 0), share))


def _assign_tokens(out: Assignment, meters: Sequence[Meter], key: UsageKey, q: Quantities) -> None:
    parts = (
        (MeterKind.PROMPT_TOKENS, "promptTokens", q.prompt_tokens - q.cached_prompt_tokens),
        (MeterKind.CACHED_PROMPT_TOKENS, "cachedPromptTokens", q.cached_prompt_tokens),
        (MeterKind.COMPLETION_TOKENS, "completionTokens", q.completion_tokens),
    )
    for kind, name, amount in parts:
        meter = model_meter_for(meters, kind, key.model)
        if meter is None:
            out.add_unpriced(key, {name: amount}, f"no {kind.value} meter matches this model")
        else:
            out.add(meter, Contribution(key, Decimal(amount)))


def assign(meters: Sequence[Meter], totals: UsageTotals) -> Assignment:
    """Send each usage key's quantities to its meter(s); collect what none takes."""
    out = Assignment()
    for key in sorted(totals):
        q = totals[key]
        if key.kind == "gpu":
            _assign_gpu(out, meters, key, q)
        elif key.kind == "tokens":
            _assign_tokens(out, meters, key, q)
        elif key.kind in _MODEL_KIND_BY_USAGE:
            kind = _MODEL_KIND_BY_USAGE[key.kind]
            amount = q.steps if kind is MeterKind.AGENT_STEPS else q.requests
            meter = model_meter_for(meters, kind, key.model)
            if meter is None:
                out.add_unpriced(key, {key.kind: amount}, f"no {kind.value} meter matches")
            else:
                out.add(meter, Contribution(key, Decimal(amount)))
        elif key.kind == "custom":
            meter = custom_meter_for(meters, key.name)
            if meter is None:
                out.add_unpriced(key, {"custom": q.custom}, "no custom meter has this customName")
            else:
                out.add(meter, Contribution(key, q.custom))
        else:
            raw: dict[str, Decimal | int] = {
                "allocatedMs": q.allocated_ms,
                "activeMs": q.active_ms,
                "promptTokens": q.prompt_tokens,
                "completionTokens": q.completion_tokens,
                "cachedPromptTokens": q.cached_prompt_tokens,
                "steps": q.steps,
                "requests": q.requests,
                "custom": q.custom,
            }
            out.add_unpriced(key, raw, f"unknown usage kind {key.kind!r}")
    return out
