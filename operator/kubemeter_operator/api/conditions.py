"""Kubernetes-style status conditions."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from kubemeter_operator.api.types import ApiModel


class Condition(ApiModel):
    type: str = Field(max_length=100)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=100)
    message: str = Field(default="", max_length=2000)
    last_transition_time: AwareDatetime | None = None
    observed_generation: int | None = None
