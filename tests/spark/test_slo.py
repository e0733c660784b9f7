"""`em-spark slo` over a registry built by real nightly retrains: three nights that retrain,
one whose fit dies, and a rollback; every number is checked against the reports and the alias
log the nights left, recomputed here."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import pytest

from em_spark.app.nightly import run_nightly
from em_spark.app.slo import compute_slo
from em_spark.engine import spark_source
from em_spark.storage.registry import ModelRegistry
from spark.test_nightly import _config, _night

pytestmark = pytest.mark.spark

NAME = "demo-gmm"
# The last four nights before today: the rollback below is logged now, in the same window.
TODAY = datetime.datetime.now(datetime.timezone.utc).date()
D1, D2, D3, D4 = ((TODAY - datetime.timedelta(days=back)).isoformat() for back in (4, 3, 2, 1))


FAST = {"fit.maxIter": 25}


def _cfg(root, date, **overrides):
    return _config(root, date, **{**FAST, **overrides})


def _report(root, date):
    return json.loads((root / "registry" / NAME / "runs" / f"{NAME}-{date}" / "report.json").read_text())


def _seconds(later: str, earlier: str) -> float:
    parse = lambda t: datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def test_slo_of_real_nights_with_a_failed_night_and_a_rollback(spark, tmp_path, monkeypatch):
    root = tmp_path
    for date, shift, seed in ((D1, 0.0, 1), (D2, 1.5, 2), (D3, 0.0, 3), (D4, -1.5, 4)):
        _night(root, date, shift=shift, seed=seed, rows=2000)
    assert run_nightly(_cfg(root, D1))["decision"] == "promoted"  # v1, the first model
    assert run_nightly(_cfg(root, D2))["newVersion"] == 2  # drift: retrained, promoted
    registry = ModelRegistry((root / "registry").as_uri())
    assert registry.alias(NAME) == 2

    real, calls = spark_source.SparkBlockSource.e_step_many, {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the restarts share each pass: this is the second one
            raise RuntimeError("executor lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", dying)
    with pytest.raises(RuntimeError, match="executor lost"):
        run_nightly(_cfg(root, D3, **{"nightly.force": "true"}))  # dies in its fit: no report
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", real)
    assert (root / "registry" / NAME / "checkpoints" / f"{NAME}-{D3}").is_dir()

    registry.rollback(NAME, reason="v2 misbehaves")  # back to v1
    kept = run_nightly(_cfg(root, D4, **{"nightly.promotionTolerance": -100.0}))
    assert kept["decision"] == "kept" and kept["newVersion"] == 3 and registry.alias(NAME) == 1

    slo = compute_slo(str(root / "registry"), NAME, days=30, until=TODAY)
    reports = [_report(root, d) for d in (D1, D2, D4)]
    assert slo["window"] == {
        "from": (TODAY - datetime.timedelta(days=29)).isoformat(),
        "until": TODAY.isoformat(),
        "days": 30,
    }
    assert slo["jobSuccess"] == {"attempted": 4, "succeeded": 3, "failed": 1, "rate": 0.75}
    assert [(n["date"], n["status"]) for n in slo["nights"]] == [
        (D1, "succeeded"),
        (D2, "succeeded"),
        (D3, "failed"),
        (D4, "succeeded"),
    ]
    # Latency: the three retrains' total seconds; p50 the middle one, p90 linear between order
    # statistics 2 and 3 (position 0.9 * (3 - 1) = 1.8).
    a, b, c = sorted(r["timings"]["total"] for r in reports)
    assert slo["retrainLatencySeconds"] == {
        "retrains": 3,
        "p50": pytest.approx(b, rel=1e-12),
        "p90": pytest.approx(b + 0.8 * (c - b), rel=1e-12),
        "max": c,
    }
    converged = [r["metrics"]["new"]["converged"] for r in reports]
    assert slo["convergence"] == {"fits": 3, "converged": sum(converged), "rate": sum(converged) / 3}
    # Validation delta: the nights with a production model (D2 against v1, D4 against v1 again).
    deltas = [r["metrics"]["new"]["holdoutAvgLogLik"] - r["metrics"]["productionOnSameHoldout"] for r in reports[1:]]
    assert "productionOnSameHoldout" not in reports[0]["metrics"]
    assert slo["validationDelta"] == {
        "nights": 2,
        "mean": pytest.approx((deltas[0] + deltas[1]) / 2, rel=1e-12),
        "min": min(deltas),
        "last": deltas[1],
    }
    assert deltas[1] < 100  # tolerance -100: the gate asks for 100 nats/row better, so it kept production
    history = registry.alias_history(NAME)
    assert [(e.action, e.version) for e in history] == [("promote", 1), ("promote", 2), ("rollback", 1)]
    rollback = slo["timeToRollback"]
    expected = _seconds(history[2].at, history[1].at)
    assert rollback["rollbacks"] == 1 and rollback["maxSeconds"] == expected == rollback["meanSeconds"]
    assert rollback["events"] == [
        {
            "at": history[2].at,
            "fromVersion": 2,
            "toVersion": 1,
            "promotedAt": history[1].at,
            "secondsFromPromotion": expected,
            "reason": "v2 misbehaves",
        }
    ]
    # A window that ends before the failed night sees only the first two.
    early = compute_slo(str(root / "registry"), NAME, days=2, until=datetime.date.fromisoformat(D2))
    assert early["jobSuccess"]["rate"] == 1.0 and early["retrainLatencySeconds"]["retrains"] == 2
    assert early["timeToRollback"]["rollbacks"] == 0

    # The command: the table a person reads, and the same document as JSON.
    out = tmp_path / "slo.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "em_spark.cli", "slo", "--registry", str(root / "registry")),
            *("--name", NAME, "--until", TODAY.isoformat(), "--output", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == json.loads(json.dumps(slo))
    assert "job success rate  75.0% (3 of 4 nights)" in result.stdout
    assert f"failed nights: {D3}" in result.stdout
    assert "(1 rollbacks)" in result.stdout
