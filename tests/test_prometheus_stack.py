"""Metrics through the real monitoring stack: Debian's Pushgateway and Prometheus server,
started on 127.0.0.1 on free ports. A run's metrics are pushed with prometheus_client,
Prometheus scrapes the gateway (1 s interval, generated config, docs/monitoring/alerts.yml
loaded) and the values are read back through Prometheus's HTTP API. JVM-free.

The binaries come from ``apt-get install prometheus prometheus-pushgateway`` (``.ci/run``
does it); without them these tests fail with that reason, they are not skipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from em_spark.app import metrics
from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily, ModelError
from em_spark.models.base import Block

ALERTS = Path(__file__).resolve().parents[1] / "docs" / "monitoring" / "alerts.yml"
INSTALL = "apt-get install -y prometheus prometheus-pushgateway (as .ci/run does)"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wait_ready(url: str, process: subprocess.Popen, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(url, 1.0)
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} not ready after {seconds} s:\n{log.read_text()[-3000:]}")


def _start(args: list[str], ready: str, log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    try:
        _wait_ready(ready, process, log)
    except BaseException:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    """Terminate the process this fixture started (by its pid), killing it if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(pushgateway URL, Prometheus URL): both on 127.0.0.1, stopped when the module ends."""
    pushgateway_bin, prometheus_bin = _binary("prometheus-pushgateway"), _binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    gw_port, prom_port = _free_port(), _free_port()
    gateway = _start(
        [pushgateway_bin, f"--web.listen-address=127.0.0.1:{gw_port}", "--persistence.file="],
        f"http://127.0.0.1:{gw_port}/-/ready",
        root / "pushgateway.log",
    )
    config = root / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "pushgateway",
                        "honor_labels": True,  # keep the pushed job and run_id labels
                        "static_configs": [{"targets": [f"127.0.0.1:{gw_port}"]}],
                    }
                ],
            }
        )
    )
    try:
        prometheus = _start(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            f"http://127.0.0.1:{prom_port}/-/ready",
            root / "prometheus.log",
        )
    except BaseException:
        _stop(gateway)
        raise
    yield f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
    _stop(prometheus)
    _stop(gateway)


def query(prometheus: str, promql: str) -> list[dict]:
    body = json.loads(_get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prometheus: str, promql: str, count: int = 1, seconds: float = 20.0) -> list[dict]:
    """The query's result once it has ``count`` series (Prometheus scrapes every second)."""
    deadline = time.monotonic() + seconds
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if len(result) == count:
            return result
        time.sleep(0.3)
    pytest.fail(f"{promql}: expected {count} series within {seconds} s, got {result}")


def by_label(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


@pytest.fixture(scope="module")
def fitted_run():
    """A real fit (three restarts) and its metrics document, as ``em-spark train`` publishes it."""
    X = make_blobs(1500, 2, 3, separation=5.0, seed=2)[0]
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], sample_size=300, seed=1)
    family = GaussianFamily(k=3)
    logger = logging.getLogger("em_spark")
    level = logger.level
    logger.setLevel(logging.INFO)  # the recorder hears the loop's INFO records (the CLI sets this)
    try:
        with metrics.IterationRecorder("stack-run") as recorder:
            result = fit_em(family, source, FitSettings(max_iter=40, tol=1e-6, n_init=3, run_id="stack-run"))
    finally:
        logger.setLevel(level)
    assert len(recorder.restarts) == 3
    from em_spark.api.base import EMSummary
    from em_spark.api.gaussian import GaussianMixtureModel

    model = GaussianMixtureModel(family, result.params, 2)
    model._summary = EMSummary(model, result, None)
    return recorder, model, result


def test_a_pushed_run_is_scraped_and_queried_back_through_prometheus(stack, fitted_run):
    gateway, prometheus = stack
    recorder, model, result = fitted_run
    doc = metrics.publish(recorder, model, wall_seconds=4.5, pushgateway=gateway)
    selector = '{job="em_spark",run_id="stack-run"}'
    [iterations] = wait_for(prometheus, f"em_spark_iterations{selector}")
    assert iterations["metric"]["family"] == "gaussian"
    assert float(iterations["value"][1]) == result.n_iter
    one = lambda name: float(wait_for(prometheus, f"{name}{selector}")[0]["value"][1])  # noqa: E731
    assert one("em_spark_converged") == float(result.converged)
    assert one("em_spark_avg_log_likelihood") == pytest.approx(result.history[-1], rel=1e-12)
    assert one("em_spark_wall_seconds") == 4.5
    assert one("em_spark_restarts") == 3
    assert one("em_spark_posterior_entropy") == pytest.approx(doc["posterior"]["entropy"], rel=1e-12)
    assert one("em_spark_posterior_stability_ari_min") == pytest.approx(doc["posterior"]["stability"]["minAri"])
    assert one("em_spark_seconds_per_iteration") == pytest.approx(doc["secondsPerIteration"], rel=1e-12)
    weights = by_label(wait_for(prometheus, f"em_spark_component_weight{selector}", count=3), "component")
    assert weights == {str(j): pytest.approx(w, rel=1e-12) for j, w in enumerate(result.params["weights"])}
    # The alert rules loaded from docs/monitoring/alerts.yml are healthy on real data.
    rules = json.loads(_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
    assert {g["name"] for g in rules} == {"em_spark_nightly", "em_spark_runs"}
    assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"]), rules


def test_a_night_that_failed_is_replaced_by_its_successful_rerun(stack):
    gateway, prometheus = stack
    night = "stackmodel-2026-12-02"
    assert metrics.push_nightly(gateway, None, model="stackmodel", run_id=night, error=ModelError("singular"))
    [failed] = wait_for(prometheus, 'em_spark_nightly_failure_timestamp_seconds{model="stackmodel"}')
    assert failed["metric"]["error"] == "ModelError" and failed["metric"]["run_id"] == night
    assert by_label(wait_for(prometheus, 'em_spark_nightly_success{model="stackmodel"}'), "run_id") == {night: 0.0}
    # The failed-night alert sees it (pending: its expression holds; it has no `for`, so firing soon).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        alerts = json.loads(_get(f"{prometheus}/api/v1/alerts"))["data"]["alerts"]
        mine = [a for a in alerts if a["labels"].get("model") == "stackmodel"]
        if {a["labels"]["alertname"] for a in mine} >= {"EmSparkNightlyRunFailed", "EmSparkModelError"}:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the alerts did not fire: {alerts}")
    assert {a["labels"]["severity"] for a in mine if a["labels"]["alertname"] == "EmSparkNightlyRunFailed"} == {"page"}

    report = {
        "decision": "kept",
        "newVersion": 4,
        "gateKept": True,
        "gateKeptNights": 3,
        "productionAfter": 2,
        "drift": {"drop": 0.02, "threshold": 0.05, "maxWeightShift": 0.01, "maxDivergence": 0.003},
    }
    assert metrics.push_nightly(gateway, report, model="stackmodel", run_id=night)  # the re-run: same group
    assert by_label(wait_for(prometheus, 'em_spark_nightly_success{model="stackmodel"} == 1'), "run_id") == {night: 1.0}
    # The failure series is gone from the gateway's group, so Prometheus marks it stale.
    wait_for(prometheus, 'em_spark_nightly_failure_timestamp_seconds{model="stackmodel"}', count=0)
    assert by_label(wait_for(prometheus, 'em_spark_nightly_gate_kept_nights{model="stackmodel"}'), "run_id") == {
        night: 3.0
    }
    [drop] = wait_for(prometheus, 'em_spark_nightly_drift_avg_log_likelihood_drop{model="stackmodel"}')
    assert float(drop["value"][1]) == 0.02
    wait_for(prometheus, 'ALERTS{alertname="EmSparkPromotionGateKeepsProduction",model="stackmodel"}')


def test_a_run_that_failed_is_pushed_with_its_error_class(stack):
    gateway, prometheus = stack
    assert metrics.push_failure(gateway, "stack-failed", ModelError("covariance is singular"))
    [failed] = wait_for(prometheus, 'em_spark_run_failure_timestamp_seconds{run_id="stack-failed"}')
    assert failed["metric"]["error"] == "ModelError" and failed["metric"]["job"] == "em_spark"
    assert abs(float(failed["value"][1]) - time.time()) < 60


# --- the Grafana dashboards' queries ------------------------------------------------------------

DASHBOARDS = Path(__file__).resolve().parents[1] / "docs" / "monitoring" / "dashboards"


def _fit(run_id: str, max_iter: int, n_init: int, seed: int):
    """A real fit on blobs, recorded as `em-spark train` records it: (recorder, model)."""
    from em_spark.api.base import EMSummary
    from em_spark.api.gaussian import GaussianMixtureModel

    X = make_blobs(1200, 2, 3, separation=5.0, seed=seed)[0]
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], sample_size=300, seed=1)
    family = GaussianFamily(k=3)
    logger = logging.getLogger("em_spark")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with metrics.IterationRecorder(run_id) as recorder:
            result = fit_em(family, source, FitSettings(max_iter=max_iter, tol=1e-6, n_init=n_init, run_id=run_id))
    finally:
        logger.setLevel(level)
    model = GaussianMixtureModel(family, result.params, 2)
    model._summary = EMSummary(model, result, None)
    return recorder, model


def _night_report(decision: str, version: int, production: int, **extra) -> dict:
    """A night's report as em_spark.app.nightly writes it (the fields push_nightly reads)."""
    return {
        "decision": decision,
        "newVersion": version,
        "productionAfter": production,
        "metrics": {"new": {"holdoutAvgLogLik": -2.91}, "productionOnSameHoldout": -2.95},
        **extra,
    }


def test_every_dashboard_panel_query_returns_data_from_pushed_metrics(stack):
    """Real runs and nights pushed through em_spark's push functions (covering every alert's
    condition), then every panel's PromQL of the three dashboards, with $model and $run_id
    set, must parse and return at least one series from the real Prometheus."""
    from em_spark.models.diagnostics import component_drift

    gateway, prometheus = stack
    now = time.time()
    # Runs (job em_spark): a nightly retrain's fit with drift and executor time, one that hit
    # maxIter, one whose smallest component collapsed, one that failed and one still running.
    recorder, model = _fit("dash-run", max_iter=60, n_init=3, seed=3)
    _, unconverged = _fit("dash-unconverged", max_iter=2, n_init=1, seed=4)
    assert not unconverged.summary.converged
    drift = {
        "drop": 0.2,
        "threshold": 0.05,
        **component_drift(model.family, unconverged.arrays, model.arrays),
    }
    doc = metrics.publish(
        recorder,
        model,
        wall_seconds=8000.0,  # longer than EmSparkRunTooLong's 2 hours
        pushgateway=gateway,
        executor_core_seconds=12.5,
        drift=drift,
        model_name="dashmodel",
    )
    unconverged_recorder = metrics.IterationRecorder("dash-unconverged")
    assert (
        metrics.publish(unconverged_recorder, unconverged, wall_seconds=1.0, pushgateway=gateway)["converged"] is False
    )
    collapsing = {**doc, "runId": "dash-collapsing", "componentWeights": [0.6, 0.395, 0.005], "drift": None}
    assert metrics.push_metrics(gateway, collapsing)
    assert metrics.push_failure(gateway, "dash-failed", ModelError("covariance is singular"))
    assert metrics._push(gateway, metrics.PUSH_JOB, "dash-hung", metrics.started_registry(now - 8000), "start")
    # Nights (job em_spark_nightly): a promotion, then a night whose gate kept production the
    # 3rd time with drift above the threshold; a model whose night failed; one not refreshed for 27 h.
    assert metrics.push_nightly(
        gateway, _night_report("promoted", 2, 2), model="dashmodel", run_id="dashmodel-2026-12-01"
    )
    time.sleep(0.01)  # the latest night has the larger timestamp
    kept = _night_report(
        "kept",
        3,
        2,
        gateKept=True,
        gateKeptNights=3,
        drift={"drop": 0.2, "threshold": 0.05, "maxWeightShift": 0.15, "maxDivergence": 0.4},
    )
    assert metrics.push_nightly(gateway, kept, model="dashmodel", run_id="dashmodel-2026-12-02")
    assert metrics.push_nightly(gateway, None, model="dashfail", run_id="dashfail-2026-12-02", error=ModelError("x"))
    stale = metrics.nightly_registry(_night_report("promoted", 1, 1), model="dashstale", now=now - 27 * 3600)
    assert metrics._push(gateway, metrics.NIGHTLY_JOB, "dashstale-2026-11-30", stale, "nightly")
    wait_for(prometheus, 'em_spark_nightly_success{model="dashstale"}')

    variables = {"$model": "dashmodel", "$run_id": "dash-run"}
    checked = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in variables.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: unknown variable in {expr!r}"
                result = _poll_non_empty(prometheus, expr)
                assert result, f"{path.name} / {panel['title']}: {expr!r} returned no series"
                checked += 1
    assert checked >= 40


def _poll_non_empty(prometheus: str, promql: str, seconds: float = 20.0) -> list[dict]:
    """The query's result once it is non-empty (scrapes and rule evaluations are every second);
    a query Prometheus cannot parse fails at once with its error."""
    deadline = time.monotonic() + seconds
    while True:
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = json.loads(_get(url))
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Prometheus refused {promql!r}: {exc.read().decode()}")
        assert body["status"] == "success", body
        if body["data"]["result"] or time.monotonic() > deadline:
            return body["data"]["result"]
        time.sleep(0.3)
