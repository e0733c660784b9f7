"""Run metrics that need Spark: executor core-seconds from the classic session's status store,
the nightly job's drift beyond the log-likelihood and its pushed outcome, and the imputation
accuracy of ``em-spark impute`` on entries hidden from observed data."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark.app import metrics
from em_spark.app.config import load_config
from em_spark.app.demo_data import make_blobs
from em_spark.app.nightly import run_nightly

pytestmark = pytest.mark.spark


@pytest.fixture(autouse=True)
def em_logger():
    """The em_spark logger at INFO, as the CLI sets it: the metrics recorder hears the loop's records."""
    logger = logging.getLogger("em_spark")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(level)


def test_executor_core_seconds_count_the_runs_jobs_only(spark):
    from em_spark import GaussianMixture

    rows = make_blobs(4000, 2, 2, seed=3)[0]
    df = spark.createDataFrame([(float(a), float(b)) for a, b in rows], ["a", "b"])
    started = time.perf_counter()
    GaussianMixture(k=2, maxIter=5, tol=0.0, seed=1, runId="cores-1", featuresCol=["a", "b"]).fit(df)
    wall = time.perf_counter() - started
    used = metrics.executor_core_seconds(spark, "cores-1")
    assert used is not None and 0 < used <= wall * 2 + 0.5  # local[2]: at most two cores busy
    df.count()  # a job that is not the run's
    assert metrics.executor_core_seconds(spark, "cores-1") == pytest.approx(used)
    assert metrics.executor_core_seconds(spark, "cores-") == 0.0  # a prefix of an id is another run
    assert metrics.executor_core_seconds(spark, "never-ran") == 0.0


def test_a_session_without_a_spark_context_reports_no_core_seconds():
    class ConnectLike:  # what a Spark Connect session does: no JVM behind the client
        @property
        def sparkContext(self):
            raise RuntimeError("[JVM_ATTRIBUTE_NOT_SUPPORTED] Attribute `sparkContext` is not supported")

    assert metrics.executor_core_seconds(ConnectLike(), "any") is None


class _Gateway(http.server.BaseHTTPRequestHandler):
    pushes: ClassVar[list[tuple[str, str]]] = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).pushes.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    handler = type("Gateway", (_Gateway,), {"pushes": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.pushes
    server.shutdown()
    server.server_close()


def _night(root, date, shift=0.0, seed=1, rows=3000):
    X = make_blobs(rows, 2, 3, separation=6.0, seed=42)[0]
    X = X[np.random.default_rng(seed).permutation(rows)] + shift
    path = root / "events" / f"date={date}"
    path.mkdir(parents=True)
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1]}), path / "part-0.parquet")


def _config(root, date, url, **overrides):
    sets = [
        f"nightly.date={date}",
        f"registry.uri={(root / 'registry').as_uri()}",
        f"nightly.inputPath={(root / 'events').as_uri()}/date={{date}}",
        "input.generate=",
        "fit.maxIter=60",
        "nightly.freshRestarts=1",
        f"run.pushgateway={url}",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config("conf/nightly.yaml", sets)


def _samples(body: str, name: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + "{")]


def test_nights_report_component_drift_and_push_their_outcome_and_the_gate_streak(spark, tmp_path, gateway):
    url, pushes = gateway
    _night(tmp_path, "2026-11-20")
    run_nightly(_config(tmp_path, "2026-11-20", url))
    _night(tmp_path, "2026-11-21", shift=1.5, seed=2)  # the world moved: retrain, gate rejects (tolerance)
    strict = {"nightly.promotionTolerance": -100.0}
    kept = run_nightly(_config(tmp_path, "2026-11-21", url, **strict))
    assert kept["decision"] == "kept" and kept["gateKept"] and kept["gateKeptNights"] == 1
    drift = kept["drift"]
    assert len(drift["weightShift"]) == 3 and len(drift["divergence"]) == 3
    assert drift["maxWeightShift"] < 0.05  # a shift moves the means, not the shares
    assert drift["maxDivergence"] > 0.5  # ... so each matched component is far from production's
    fit_doc = json.loads(
        (tmp_path / "registry" / "demo-gmm" / "checkpoints" / "demo-gmm-2026-11-21" / "metrics.json").read_text()
    )
    assert fit_doc["drift"]["divergence"] == pytest.approx(drift["divergence"])
    assert fit_doc["model"] == "demo-gmm" and fit_doc["posterior"]["stability"]["restartsCompared"] == 1
    assert fit_doc["executorCoreSeconds"] > 0
    _night(tmp_path, "2026-11-22", shift=-1.5, seed=3)
    again = run_nightly(_config(tmp_path, "2026-11-22", url, **strict))
    assert again["gateKeptNights"] == 2  # in a row: the previous night's count + 1

    paths = [path for path, _ in pushes]
    assert "/metrics/job/em_spark_nightly/run_id/demo-gmm-2026-11-22" in paths
    assert "/metrics/job/em_spark/run_id/demo-gmm-2026-11-22" in paths  # the night's fit, as a run
    last_night = [body for path, body in pushes if path == "/metrics/job/em_spark_nightly/run_id/demo-gmm-2026-11-22"]
    assert _samples(last_night[-1], "em_spark_nightly_gate_kept_nights") == [2.0]
    assert _samples(last_night[-1], "em_spark_nightly_success") == [1.0]
    assert _samples(last_night[-1], "em_spark_nightly_max_component_divergence") == [
        pytest.approx(again["drift"]["maxDivergence"])
    ]
    fit_pushes = [body for path, body in pushes if path == "/metrics/job/em_spark/run_id/demo-gmm-2026-11-22"]
    assert len(fit_pushes) == 2  # the start (at the first iteration), then the finished run
    assert "em_spark_run_started_timestamp_seconds" in fit_pushes[0] and "em_spark_iterations" not in fit_pushes[0]
    assert 'model="demo-gmm"' in fit_pushes[-1] and _samples(fit_pushes[-1], "em_spark_drift_component_divergence")


def test_a_failed_night_pushes_its_failure_with_the_error_class(spark, tmp_path, gateway):
    url, pushes = gateway
    with pytest.raises(Exception) as raised:
        run_nightly(_config(tmp_path, "2026-11-30", url))  # no input for that night
    [(path, body)] = pushes
    assert path == "/metrics/job/em_spark_nightly/run_id/demo-gmm-2026-11-30"
    assert f'error="{type(raised.value).__name__}"' in body
    assert _samples(body, "em_spark_nightly_success") == [0.0]


def test_impute_measures_accuracy_on_hidden_observed_entries(spark, tmp_path, gateway):
    from em_spark.app.score import run_impute
    from em_spark.app.train import run_train

    url, pushes = gateway
    sets = [
        f"input.path={(tmp_path / 'incomplete').as_uri()}",
        "input.generate.rows=4000",
        f"run.checkpointDir={(tmp_path / 'ckpt').as_uri()}",
        f"output.modelPath={(tmp_path / 'model').as_uri()}",
        f"impute.outputPath={(tmp_path / 'imputed').as_uri()}",
        "fit.maxIter=40",
        f"run.pushgateway={url}",
    ]
    run_train(load_config("conf/impute.yaml", sets))
    result = run_impute(load_config("conf/impute.yaml", sets))
    accuracy = result["accuracy"]
    assert accuracy["rows"] == 4000 and accuracy["maskedEntries"] > 1000
    # The blobs are separated, so the mixture's conditional means beat column means clearly.
    assert accuracy["rmse"] < 0.8 * accuracy["baselineRmse"]
    doc = json.loads((tmp_path / "ckpt" / "impute-demo-impute" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "ckpt" / "impute-demo" / "metrics.json").read_text())
    assert trained["status"] == "finished" and "kind" not in trained  # the fit's own metrics stay
    assert doc["kind"] == "impute" and doc["imputation"] == accuracy
    [body] = [b for p, b in pushes if p == "/metrics/job/em_spark/run_id/impute-demo-impute"]
    assert _samples(body, "em_spark_imputation_rmse") == [pytest.approx(accuracy["rmse"])]
