"""`em-spark slo` without Spark: a registry built through its public API, night reports in the
layout em_spark.app.nightly writes (runs/<model>-<date>/report.json), and the command's answers
to bad input (one `em-spark: error:` line, exit 2, nothing written)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from em_spark.app.slo import compute_slo, human_table
from em_spark.storage.registry import ModelRegistry

NAME = "gmm"


def model_bytes(seed: int) -> bytes:
    from em_spark.api import GaussianMixtureModel
    from em_spark.models.base import Block
    from em_spark.models.gaussian import GaussianFamily

    rng = np.random.default_rng(seed)
    block = Block(X=np.vstack([rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (40, 2))]), weight=None, lengths=None)
    family = GaussianFamily(k=2)
    params = family.initialize(block, rng)
    return GaussianMixtureModel(family, params, 2).to_bytes()


def write_report(root: Path, date: str, report: dict) -> None:
    path = root / NAME / "runs" / f"{NAME}-{date}" / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": NAME, "date": date, "runId": f"{NAME}-{date}", **report}, indent=2))


def retrained(version: int, total: float, converged: bool, new: float, production: float | None) -> dict:
    metrics: dict = {"new": {"holdoutAvgLogLik": new, "converged": converged, "numIter": 12}}
    if production is not None:
        metrics["productionOnSameHoldout"] = production
    return {"decision": "promoted", "newVersion": version, "metrics": metrics, "timings": {"total": total}}


def em_spark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "em_spark.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )


@pytest.fixture
def registry_root(tmp_path) -> Path:
    """Five retrains (latencies 10, 20, 30, 40, 100 s), a night without retrain, two failed
    nights (one left checkpoints, one a claimed version), one night outside the window, a
    rollback of version 3 to 2, 90 seconds after 3 was promoted (alias entries written here)."""
    root = tmp_path / "registry"
    registry = ModelRegistry(str(root))
    for v in range(1, 6):
        registry.register(
            NAME, model_bytes(v), config={}, seed=v, data_fingerprint="f", run_id=f"{NAME}-2026-11-0{v}", metrics={}
        )
    write_report(root, "2026-11-01", retrained(1, 10.0, True, -3.0, None))
    write_report(root, "2026-11-02", retrained(2, 20.0, True, -2.9, -3.0))
    write_report(root, "2026-11-03", retrained(3, 100.0, False, -2.8, -2.9))
    write_report(root, "2026-11-04", retrained(4, 30.0, True, -2.95, -2.75))
    write_report(root, "2026-11-05", retrained(5, 40.0, True, -2.7, -2.75))
    write_report(root, "2026-11-06", {"decision": "kept", "productionAfter": 5, "timings": {"total": 3.0}})
    (root / NAME / "checkpoints" / f"{NAME}-2026-11-07").mkdir(parents=True)  # a fit that died
    write_report(root, "2026-10-01", retrained(9, 999.0, False, 0.0, -9.0))  # before the window
    (root / NAME / "checkpoints" / "not-a-night").mkdir()  # ignored: not <model>-<date>
    for v in (1, 2, 3):
        registry.promote(NAME, v)
    registry.rollback(NAME, reason="v3 is bad")
    # The alias log's times, as if v3 was promoted at 12:00:00 and rolled back at 12:01:30.
    aliases = root / NAME / "aliases" / "production"
    from em_spark.storage import seal, unseal

    for sequence, at in ((3, "2026-11-03T12:00:00Z"), (4, "2026-11-03T12:01:30Z")):
        path = aliases / f"{sequence:010d}.json.sealed"
        entry = json.loads(unseal(path.read_bytes()))
        entry["at"] = at
        path.unlink()
        path.write_bytes(seal(json.dumps(entry, sort_keys=True, indent=1).encode()))
    return root


def test_service_levels_from_the_registry_are_exact(registry_root):
    history = ModelRegistry(str(registry_root)).alias_history(NAME)
    assert [(e.action, e.version, e.at) for e in history[2:]] == [
        ("promote", 3, "2026-11-03T12:00:00Z"),
        ("rollback", 2, "2026-11-03T12:01:30Z"),
    ]
    slo = compute_slo(str(registry_root), NAME, days=30, until=datetime.date(2026, 11, 30))
    assert slo["window"] == {"from": "2026-11-01", "until": "2026-11-30", "days": 30}
    assert slo["jobSuccess"] == {"attempted": 7, "succeeded": 6, "failed": 1, "rate": 6 / 7}
    # sorted 10, 20, 30, 40, 100: p50 = 30; p90 at position 0.9 * 4 = 3.6: 40 + 0.6 * 60 = 76
    assert slo["retrainLatencySeconds"] == {"retrains": 5, "p50": 30.0, "p90": pytest.approx(76.0), "max": 100.0}
    assert slo["convergence"] == {"fits": 5, "converged": 4, "rate": 0.8}
    deltas = [-2.9 - -3.0, -2.8 - -2.9, -2.95 - -2.75, -2.7 - -2.75]
    assert slo["validationDelta"] == {
        "nights": 4,
        "mean": pytest.approx(sum(deltas) / 4, abs=1e-15),
        "min": pytest.approx(-0.2, abs=1e-12),
        "last": pytest.approx(0.05, abs=1e-12),
    }
    assert slo["timeToRollback"]["rollbacks"] == 1
    assert slo["timeToRollback"]["maxSeconds"] == 90.0 == slo["timeToRollback"]["meanSeconds"]
    assert slo["timeToRollback"]["events"][0] == {
        "at": "2026-11-03T12:01:30Z",
        "fromVersion": 3,
        "toVersion": 2,
        "promotedAt": "2026-11-03T12:00:00Z",
        "secondsFromPromotion": 90.0,
        "reason": "v3 is bad",
    }
    assert [n["date"] for n in slo["nights"] if n["status"] == "failed"] == ["2026-11-07"]
    table = human_table(slo)
    assert "job success rate  85.7% (6 of 7 nights)" in table
    assert "p50 30.0 s, p90 76.0 s, max 100.0 s (5 retrains)" in table
    assert "failed nights: 2026-11-07" in table


def test_a_claimed_version_without_a_report_is_a_failed_night(registry_root):
    """A night that registered (or claimed) a version and died before its report."""
    registry = ModelRegistry(str(registry_root))
    registry.register(
        NAME, model_bytes(8), config={}, seed=8, data_fingerprint="f", run_id=f"{NAME}-2026-11-08", metrics={}
    )
    slo = compute_slo(str(registry_root), NAME, days=2, until=datetime.date(2026, 11, 8))
    assert slo["jobSuccess"] == {"attempted": 2, "succeeded": 0, "failed": 2, "rate": 0.0}
    assert slo["retrainLatencySeconds"] == {"retrains": 0, "p50": None, "p90": None, "max": None}
    assert slo["timeToRollback"] == {"rollbacks": 0, "maxSeconds": None, "meanSeconds": None, "events": []}


def test_the_command_prints_the_table_and_writes_the_json(registry_root, tmp_path):
    out = tmp_path / "out" / "slo.json"
    out.parent.mkdir()
    result = em_spark(
        "slo", "--registry", str(registry_root), "--name", NAME, "--until", "2026-11-30", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc == json.loads(json.dumps(compute_slo(str(registry_root), NAME, until=datetime.date(2026, 11, 30))))
    assert result.stdout.startswith(f"model {NAME}: service levels 2026-11-01 .. 2026-11-30 (30 days)\n")
    assert "time to rollback  max 90 s, mean 90 s (1 rollbacks)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "nope"], "unknown model 'nope'"),
        (["--name", NAME, "--days", "0"], "--days must be a positive number of days, got 0"),
        (["--name", NAME, "--days", "-3"], "--days must be a positive number of days, got -3"),
        (["--name", NAME, "--until", "yesterday"], "--until must be a date like 2026-11-30, got 'yesterday'"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(registry_root, tmp_path, args, message):
    out = tmp_path / "slo.json"
    result = em_spark("slo", "--registry", str(registry_root), *args, "--output", str(out))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("em-spark: error: ") and message in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_an_empty_or_missing_registry_is_one_error_line(tmp_path, kind):
    root = tmp_path / "registry"
    if kind == "empty":
        root.mkdir()
    result = em_spark("slo", "--registry", str(root), "--name", NAME, "--output", str(tmp_path / "slo.json"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"em-spark: error: registry {root} holds no models; check --registry (nightly runs register them)"
    ], result.stderr
