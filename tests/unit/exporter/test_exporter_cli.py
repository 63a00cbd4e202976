"""Command-line parsing."""

from __future__ import annotations

import argparse

import pytest

from kubemeter_exporter.cli import build_parser, parse_duration, parse_listen


def test_durations() -> None:
    assert parse_duration("5s") == 5.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2") == 2.0
    assert parse_duration("1m") == 60.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("0s")


def test_listen_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_listen("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert parse_listen(":9400") == ("0.0.0.0", 9400)
    assert parse_listen("[::1]:9400") == ("::1", 9400)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen("9400x")
    args = build_parser().parse_args([])
    assert args.listen == ("0.0.0.0", 9400)
    assert args.interval == 5.0
    assert args.pod_resources_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"
