"""Operator configuration: flags beat KUBEMETER_* variables; bad values are refused with a
message naming the field, before anything starts."""

from __future__ import annotations

import pytest

from kubemeter_operator.cli import main
from kubemeter_operator.config import OperatorConfig
from kubemeter_operator.errors import InputError


def test_flags_win_over_environment() -> None:
    env = {"KUBEMETER_PROMETHEUS_URL": "http://env:9090", "KUBEMETER_INTERVAL_S": "30"}
    cfg = OperatorConfig.load({"prometheus_url": "http://flag:9090"}, env)
    assert cfg.prometheus_url == "http://flag:9090"
    assert cfg.interval_s == 30
    assert cfg.events_host_port == ("0.0.0.0", 8080)
    assert OperatorConfig.load({"events_listen": ""}, env).events_host_port is None


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({}, "prometheus_url"),
        ({"prometheus_url": "prometheus:9090"}, "prometheus_url"),
        ({"prometheus_url": "http://p:9090", "interval_s": 0}, "interval_s"),
        ({"prometheus_url": "http://p:9090", "events_listen": "8080"}, "events_listen"),
        ({"prometheus_url": "http://p:9090", "metrics_port": 70000}, "metrics_port"),
    ],
)
def test_bad_config_names_the_field(flags: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        OperatorConfig.load(flags, {})
    assert field in str(info.value)


def test_operator_command_refuses_bad_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEMETER_PROMETHEUS_URL", raising=False)
    code = main(["operator", "--prometheus-url", "http://p:9090", "--interval", "-5"])
    assert code == 2
    assert "interval_s" in capsys.readouterr().err
