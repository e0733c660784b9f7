"""The Grafana dashboards in docs/monitoring/dashboards/: the committed JSON is what the
generator builds, and every query names only metrics em_spark pushes. Their PromQL is
evaluated against a real Prometheus in tests/test_prometheus_stack.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ROOT / "docs" / "monitoring" / "dashboards"
METRICS_SOURCE = ROOT / "em_spark" / "app" / "metrics.py"


def generator():
    spec = importlib.util.spec_from_file_location("em_spark_dashboards", BOARDS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out.extend((inner["title"], t["expr"]) for t in inner.get("targets") or [])
    return out


def test_the_committed_dashboards_are_the_generators_output():
    gen = generator()
    assert sorted(p.name for p in BOARDS.glob("*.json")) == sorted(gen.DASHBOARDS)
    for name, build in gen.DASHBOARDS.items():
        assert (BOARDS / name).read_text() == gen.render(build), (
            f"{name} differs from docs/monitoring/dashboards/generate.py's output: re-run it"
        )
    assert gen.main(["--check"]) == 0


def test_every_query_names_only_metrics_em_spark_pushes():
    pushed = set(re.findall(r'"(em_spark_[a-z_]+)"', METRICS_SOURCE.read_text()))
    assert "em_spark_iterations" in pushed and "em_spark_nightly_success" in pushed
    groups = yaml.safe_load((ROOT / "docs/monitoring/alerts.yml").read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    for path in sorted(BOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        queries = panel_queries(board)
        assert len(queries) >= 6, f"{path.name} has only {len(queries)} queries"
        for title, expr in queries:
            # recording rules' series (level:metric:operation, docs/monitoring/alerts.yml) are not pushed
            names = set(re.findall(r"(?<![:\w])em_spark_[a-z_]+\b(?!:)", expr))
            recorded_here = {name for name in recorded if name in expr}
            # ALERTS is Prometheus's own series of the rules' state (of em_spark's rules only).
            assert names or recorded_here or expr.startswith('ALERTS{alertname=~"EmSpark'), (
                f"{path.name} / {title}: {expr!r}"
            )
            unknown = names - pushed
            assert not unknown, f"{path.name} / {title}: {sorted(unknown)} are not pushed by em_spark/app/metrics.py"


def test_the_on_call_dashboard_shows_every_alert_rules_expression():
    rules = [r for g in yaml.safe_load((ROOT / "docs/monitoring/alerts.yml").read_text())["groups"] for r in g["rules"]]
    exprs = {expr for _, expr in panel_queries(json.loads((BOARDS / "on-call.json").read_text()))}
    missing = [r["alert"] for r in rules if "alert" in r and r["expr"].strip() not in exprs]
    assert not missing, f"the on-call dashboard lacks the expressions of {missing}"


@pytest.mark.parametrize(
    ("board", "needles"),
    [
        ("executive.json", ["nightly_success", "success_timestamp", "wall_seconds", "validation_delta", "promoted"]),
        ("on-call.json", ["failure_timestamp", "run_started", "converged", "min_component_weight", "drift"]),
        (
            "debug.json",
            ["log_likelihood", "iterations", "seconds_per_iteration", "component_weight", "entropy", "ari", "core"],
        ),
    ],
)
def test_each_dashboard_has_the_panels_its_audience_needs(board, needles):
    text = " ".join(expr for _, expr in panel_queries(json.loads((BOARDS / board).read_text())))
    assert [n for n in needles if n not in text] == []


def test_the_nightly_validation_delta_gauge_is_new_minus_production_on_the_same_holdout():
    from em_spark.app import metrics

    report = {"decision": "kept", "newVersion": 3, "metrics": {"new": {"holdoutAvgLogLik": -2.5}}}
    with_production = {**report, "metrics": {**report["metrics"], "productionOnSameHoldout": -2.25}}
    value = metrics.nightly_registry(with_production, model="m", now=1.0).get_sample_value(
        "em_spark_nightly_validation_delta", {"model": "m"}
    )
    assert value == -0.25
    first_night = metrics.nightly_registry(report, model="m", now=1.0)  # no production to compare with
    assert first_night.get_sample_value("em_spark_nightly_validation_delta", {"model": "m"}) is None
