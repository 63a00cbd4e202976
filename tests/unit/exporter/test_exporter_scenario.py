"""Scenario validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kubemeter_exporter.scenario import Scenario

ROOT = Path(__file__).resolve().parents[3]


def test_demo_scenario_loads() -> None:
    sc = Scenario.load(ROOT / "examples" / "scenarios" / "demo.yaml")
    assert sc.node == "demo-node"
    assert any(g.mig for g in sc.gpus)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"processes": [{"pid": 5, "pod": "x/y", "device": "GPU-a", "sm_util": 1}]}, "unknown pod"),
        ({"processes": [{"pid": 5, "device": "GPU-zzz", "sm_util": 1}]}, "unknown device"),
        ({"processes": [{"pid": 5, "device": "GPU-a", "sm_util": 101}]}, "less than or equal"),
        (
            {
                "pods": [
                    {
                        "namespace": "a",
                        "name": "b",
                        "uid": "u",
                        "allocations": [{"devices": ["GPU-a"], "start": 5, "end": 1}],
                    }
                ]
            },
            "before",
        ),
    ],
)
def test_bad_scenarios_name_the_problem(patch: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"gpus": [{"uuid": "GPU-a"}]}
    data.update(patch)
    with pytest.raises(ValidationError, match=message):
        Scenario.model_validate(data)
