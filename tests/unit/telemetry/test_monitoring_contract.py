"""The chart's alerts and dashboard speak only kubemeter's metric contracts: every metric
name in files/prometheus-rules.yaml and files/dashboards/*.json is defined in
`kubemeter_exporter.contract`, `metering.metrics`, `notifications.metrics` or
`telemetry.contract` (or is Prometheus' own `up`), with the label names those declare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from kubemeter_exporter import contract as exporter
from kubemeter_operator.metering import metrics as metering
from kubemeter_operator.notifications import metrics as notifications
from kubemeter_operator.telemetry import contract as telemetry

from support.paths import REPO_ROOT

FILES = REPO_ROOT / "charts" / "kubemeter" / "files"
BUILTIN = {"up"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}  # fmt: skip
_HISTOGRAM = ("_bucket", "_sum", "_count")


def contract_names() -> dict[str, set[str] | None]:
    """Metric name -> its label names (None: not declared, as for metering's)."""
    names: dict[str, set[str] | None] = {}
    for spec in (*exporter.ALL_METRICS, *notifications.METRICS, *telemetry.METRICS):
        names[spec.name] = set(spec.labels)
    for value in vars(metering).values():
        if isinstance(value, str) and value.startswith("kubemeter_"):
            names[value] = None
            if value == metering.METERING_CYCLE_SECONDS:
                names.update({value + s: None for s in _HISTOGRAM})
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (inside {...} or a by/on (...) list) or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        after = text[m.end() :].lstrip()
        if word.lower() in KEYWORDS or after.startswith("("):
            continue
        found.add(word)
    return found


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its {...}) of every `metric{...}` selector."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), labels))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(Path(FILES / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for p in dashboard["panels"]:
            for t in p.get("targets") or []:
                out.append((f"{path.name}: {p['title']} {t['refId']}", t["expr"]))
        for v in dashboard["templating"]["list"]:
            if v["type"] == "query":
                out.append((f"{path.name}: ${v['name']}", v["definition"]))
    return out


def test_the_metric_name_extraction_sees_names_and_skips_the_rest() -> None:
    expr = ('sum by (tenant) (rate(a_total{kind="x", job="$j"}[5m])) / on (tenant) '
            'group_left () max(b) > bool 0 and c offset 5m')  # fmt: skip
    assert metric_names(expr) == {"a_total", "b", "c"}
    assert selector_labels(expr)[0] == ("a_total", {"kind", "job"})


def test_every_metric_in_the_alerts_and_the_dashboard_is_in_a_contract() -> None:
    names = contract_names()
    exprs = [*rule_exprs(), *dashboard_exprs()]
    assert len(exprs) > 40
    unknown = []
    for where, expr in exprs:
        if where.split(": ")[-1].startswith("$"):  # label_values(metric, label)
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr).groups()  # type: ignore[union-attr]
            assert label in (names.get(metric) or set()), (where, expr)
            found = {metric}
        else:
            found = metric_names(expr)
        unknown += [f"{where}: {n}" for n in sorted(found) if n not in names and n not in BUILTIN]
    assert not unknown, "metric names in no contract:\n" + "\n".join(unknown)


def test_every_label_matched_is_one_the_contract_declares() -> None:
    names = contract_names()
    scrape_labels = {"job", "instance"}
    wrong = []
    for where, expr in [*rule_exprs(), *dashboard_exprs()]:
        for metric, labels in selector_labels(expr):
            declared = names.get(metric)
            if declared is not None and labels - declared - scrape_labels:
                wrong.append(f"{where}: {metric} {sorted(labels - declared)}")
    assert not wrong, wrong


def test_the_exporter_job_in_the_alerts_is_the_charts_default() -> None:
    values = yaml.safe_load((REPO_ROOT / "charts" / "kubemeter" / "values.yaml").read_text())
    job = values["exporter"]["scrapeJob"]
    jobs = {m for _, e in rule_exprs() for m in re.findall(r'job="([^"]+)"', e)}
    assert jobs == {job}
