"""docs/monitoring/alerts.yml and docs/runbooks: the rules are valid and unit-tested by promtool,
query only metrics em_spark pushes, carry a severity and a runbook that exists, and every
em-spark command a runbook shows parses with the real CLI and config validation."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from em_spark.app import metrics
from em_spark.app.config import load_config
from em_spark.cli import _parser
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
    named = {n for page in RUNBOOKS.glob("*.md") for n in re.findall(r"\bem_spark_[a-z_]+\b", page.read_text())}
    assert named - {metrics.NIGHTLY_JOB} <= pushed, sorted(named - pushed)  # the nightly job's name is no metric


PLACEHOLDERS = {
    "$REGISTRY": "file:///tmp/registry",
    "$MODEL": "demo-gmm",
    "$DATE": "2026-11-22",
    "$CONFIG": str(ROOT / "conf" / "nightly.yaml"),
    "$PUSHGATEWAY": "http://127.0.0.1:9091",
    "<run id>": "run-1",
    "<night's parquet>": "/tmp/night.parquet",
    "<k>": "2",
    "<fewer>": "2",
    "N": "2",
}


def _runbook_commands() -> list[tuple[str, str]]:
    found = []
    for page in sorted(RUNBOOKS.glob("*.md")):
        text = page.read_text()
        blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
        lines = [line.strip() for block in blocks for line in block.splitlines()]
        lines += re.findall(r"`(em-spark [^`]+)`", text)
        found += [(page.name, line) for line in lines if line.startswith("em-spark ")]
    return found


COMMANDS = _runbook_commands()


def test_the_runbooks_show_commands():
    pages = {page for page, _ in COMMANDS}
    assert pages == {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_each_runbook_command_parses_and_its_settings_are_valid_config(page, line):
    text = line
    for placeholder, value in PLACEHOLDERS.items():
        text = re.sub(rf"(?<![\w$]){re.escape(placeholder)}(?!\w)", value, text)
    assert "<" not in text and "$" not in text, f"{page}: unfilled placeholder in {line!r}"
    argv = shlex.split(text)[1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: em-spark does not accept {line!r}")
    if args.command != "registry":
        load_config(args.config, args.overrides)  # every --set key=value is a valid config value
