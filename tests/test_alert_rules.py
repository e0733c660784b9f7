"""docs/monitoring/alerts.yml and docs/runbooks: the rules are valid and unit-tested by promtool,
query only metrics em_spark pushes, and carry a severity and a runbook that exists. The
runbooks' commands are run by tests/test_runbooks.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from em_spark.app import metrics
from em_spark.models import ModelError

ROOT = Path(__file__).resolve().parents[1]
MONITORING, RUNBOOKS = ROOT / "docs" / "monitoring", ROOT / "docs" / "runbooks"
RULES = yaml.safe_load((MONITORING / "alerts.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]
RECORDS = [rule for group in RULES["groups"] for rule in group["rules"] if "record" in rule]
TESTS = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus (as .ci/run does)")
    return path


@pytest.mark.parametrize("command", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]])
def test_promtool_accepts_the_rules_and_their_unit_tests(command):
    done = subprocess.run([_promtool(), *command], cwd=MONITORING, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_the_issue_asks_for_exist_with_a_severity_and_a_runbook():
    names = {rule["alert"] for rule in ALERTS}
    assert names == {
        "EmSparkNightlyRunFailed",
        "EmSparkNoSuccessfulRun",
        "EmSparkRunTooLong",
        "EmSparkNotConverged",
        "EmSparkComponentCollapsing",
        "EmSparkModelError",
        "EmSparkDriftHigh",
        "EmSparkPromotionGateKeepsProduction",
    }
    for rule in ALERTS:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert re.fullmatch(r"docs/runbooks/[a-z-]+\.md", url), url
        page = (ROOT / url).read_text()
        assert rule["alert"] in page, f"{url} does not name {rule['alert']}"
        for section in ("## Symptoms", "## Where it shows", "## Diagnose", "## Fix"):
            assert section in page, f"{url} has no {section!r}"
    assert {r["labels"]["severity"] for r in ALERTS if r["alert"] in ("EmSparkNightlyRunFailed",)} == {"page"}


def test_every_alert_has_a_promtool_case_where_it_fires():
    firing = {
        case["alertname"]
        for test in TESTS["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")  # non-empty: the alert is expected; the others in the test must stay quiet
    }
    assert firing == {rule["alert"] for rule in ALERTS}


def _pushed_metric_names() -> set[str]:
    """Every metric name em_spark's registries produce, from documents that fill every field."""
    run = {
        "runId": "r",
        "family": "gaussian",
        "model": "m",
        "k": 2,
        "rows": 10,
        "iterations": 3,
        "converged": False,
        "stoppedBy": "maxIter",
        "epochs": 3.0,
        "heldOutAverageLogLikelihood": -1.1,
        "restarts": 2,
        "averageLogLikelihood": -1.0,
        "logLikelihood": -10.0,
        "wallSeconds": 1.0,
        "iterationSeconds": [0.1, 0.2],
        "secondsPerIteration": 0.15,
        "executorCoreSeconds": 2.0,
        "criteria": {"bic": 1.0},
        "posterior": {"entropy": 0.1, "stability": {"minAri": 0.9, "meanAri": 0.95}},
        "componentWeights": [0.5, 0.5],
        "startedAt": 1.0,
        "drift": {
            "drop": 0.1,
            "threshold": 0.05,
            "weightShift": [0.1, 0.1],
            "maxWeightShift": 0.1,
            "divergence": [0.2, 0.3],
            "maxDivergence": 0.3,
        },
    }
    night = {
        "decision": "kept",
        "newVersion": 2,
        "gateKept": True,
        "gateKeptNights": 1,
        "productionAfter": 1,
        "drift": {"drop": 0.1, "threshold": 0.05, "maxWeightShift": 0.1, "maxDivergence": 0.3},
    }
    registries = [
        metrics.run_registry(run),
        metrics.nightly_registry(night, model="m"),
        metrics.nightly_registry(None, model="m", error=ModelError("x")),
        metrics.failure_registry(ModelError("x")),
        metrics.started_registry(1.0),
        metrics.imputation_registry({"imputation": {"rmse": 1, "baselineRmse": 2, "maskedEntries": 3}, "rows": 4}),
    ]
    return {m.name for registry in registries for m in registry.collect()}


def test_the_rules_query_only_metrics_that_em_spark_pushes():
    pushed = _pushed_metric_names()
    recorded = {rule["record"] for rule in RECORDS}
    used, uses_recorded = set(), set()
    for rule in ALERTS + RECORDS:
        expr = rule["expr"]
        for name in recorded:  # a recorded series (level:metric:operation) is no pushed metric
            if name in expr:
                uses_recorded.add(name)
                expr = expr.replace(name, "")
        used |= set(re.findall(r"\bem_spark_[a-z_]+\b", expr))
    assert used and used <= pushed, sorted(used - pushed)
    assert uses_recorded == recorded  # every recording rule is used by a rule
    # and the runbooks name real metrics too
    texts = [page.read_text() for page in RUNBOOKS.glob("*.md")]
    for name in recorded:
        texts = [text.replace(name, "") for text in texts]
    named = {n for text in texts for n in re.findall(r"\bem_spark_[a-z_]+\b", text)}
    assert named - {metrics.NIGHTLY_JOB} <= pushed, sorted(named - pushed)  # the nightly job's name is no metric
