"""Experiment tracking against a real ``mlflow server`` (SQLite backend store) on 127.0.0.1.

Runs go through the real CLI; what they recorded is read back with ``MlflowClient``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from clitools import run_cli, small_workspace

from em_spark.app.config import ConfigError, load_config

SERVER_START_SECONDS = 300  # a cold start creates the SQLite schema; slow on a loaded 2-core machine
FAULTS = Path(__file__).parent / "spark" / "faults" / "train_with_faults.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` in its own process group; its URI once /health answers; stopped by pid."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server's workers share its group: stopped together
    )
    uri = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_SECONDS
    try:
        while True:
            try:
                with opener.open(uri + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow server did not answer {uri}/health:\n{(root / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri, experiment, run_id):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`em_spark.runId` = '{run_id}'")


def _tracking(uri, experiment):
    return ["--set", f"run.mlflow.trackingUri={uri}", "--set", f"run.mlflow.experiment={experiment}"]


# --- JVM-free: config and the errors before Spark starts ------------------------------------


def test_mlflow_keys_are_validated_with_one_line_naming_the_key():
    assert load_config(None).run.mlflow.trackingUri is None  # off unless asked for
    assert load_config(None).run.mlflow.experiment == "em_spark"
    for override, fragment in (
        ("run.mlflow.trackinguri=http://x:5000", "did you mean run.mlflow.trackingUri"),
        ("run.mlflow.trackingUri=[1]", "'run.mlflow.trackingUri' must be a string"),
        ("run.mlflow.trackingUri=not a uri", "'run.mlflow.trackingUri' must be an MLflow tracking URI"),
        ("run.mlflow.experiment=", "'run.mlflow.experiment' cannot be null"),
    ):
        with pytest.raises(ConfigError, match=fragment) as info:
            load_config(None, [override])
        assert "\n" not in str(info.value)


def test_an_unreachable_tracking_server_fails_the_run_before_spark_starts(tmp_path):
    config = small_workspace(tmp_path, rows=200)
    port = _free_port()  # nothing listens there
    r = run_cli("train", "--config", str(config), *_tracking(f"http://127.0.0.1:{port}", "x"), cwd=tmp_path)
    r.assert_clean_error("cannot reach the MLflow tracking server", f"127.0.0.1:{port}", "run.mlflow.trackingUri")
    assert "SparkContext" not in r.err and not (tmp_path / "ck").exists()


def test_tracking_without_mlflow_installed_names_the_extra(tmp_path):
    config = small_workspace(tmp_path, rows=200)
    # An interpreter in which `import mlflow` fails, as it does without the extra.
    blocker = tmp_path / "no-mlflow" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named mlflow (blocked by the test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    r = run_cli("train", "--config", str(config), *_tracking("http://127.0.0.1:9", "x"), cwd=tmp_path, env=env)
    r.assert_clean_error("pip install 'em-spark[mlflow]'", "run.mlflow.trackingUri")
    assert "SparkContext" not in r.err and not (tmp_path / "models").exists()


# --- a real server --------------------------------------------------------------------------


@pytest.mark.spark
def test_a_train_run_records_params_iterations_final_metrics_tags_and_the_model(tmp_path, mlflow_server):
    config = small_workspace(tmp_path)
    r = run_cli(
        "train", "--config", str(config), "--set", "fit.nInit=2", *_tracking(mlflow_server, "train"), cwd=tmp_path
    )
    assert r.code == 0, r.err[-3000:]
    [run] = _runs(mlflow_server, "train", "t1")
    client = _client(mlflow_server)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["k"] == "2" and params["maxIter"] == "20" and params["nInit"] == "2" and params["seed"] == "0"
    tags = run.data.tags
    from em_spark import __version__

    assert tags["em_spark.runId"] == "t1" and tags["em_spark.packageVersion"] == __version__
    assert tags["em_spark.seed"] == "0" and len(tags["em_spark.configDigest"]) == 64
    import json

    doc = json.loads((tmp_path / "ck" / "t1" / "metrics.json").read_text())
    from em_spark.api import load_model

    saved = load_model(str(tmp_path / "models" / "t1"))
    assert tags["em_spark.dataFingerprint"] == saved.summary.dataFingerprint != ""
    # one series per restart, step = iteration, the values metrics.json holds
    for restart in (1, 2):
        mine = [rec for rec in doc["perIteration"] if rec["restart"] == restart]
        history = client.get_metric_history(run.info.run_id, f"restart{restart}/avgLogLik")
        assert [m.step for m in history] == [rec["iteration"] for rec in mine] == list(range(1, len(mine) + 1))
        assert [m.value for m in history] == pytest.approx([rec["avgLogLik"] for rec in mine], rel=1e-12)
        seconds = client.get_metric_history(run.info.run_id, f"restart{restart}/seconds")
        assert [m.step for m in seconds] == [m.step for m in history]
    final = run.data.metrics
    assert final["iterations"] == doc["iterations"] and final["converged"] == int(doc["converged"])
    assert final["bic"] == pytest.approx(doc["criteria"]["bic"]) and final["aic"] == pytest.approx(
        doc["criteria"]["aic"]
    )
    assert final["posteriorEntropy"] == pytest.approx(doc["posterior"]["entropy"])
    assert final["stabilityAriMin"] == pytest.approx(doc["posterior"]["stability"]["minAri"])
    assert final["averageLogLikelihood"] == pytest.approx(doc["averageLogLikelihood"])
    # the model as an artifact: loadable, and the model the train command saved
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "downloaded"))
    assert load_model(local).to_bytes() == saved.to_bytes()
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"model", "metrics.json"}


@pytest.mark.spark
def test_a_run_killed_after_a_checkpoint_and_re_run_is_one_mlflow_run_with_each_iteration_once(tmp_path, mlflow_server):
    config = small_workspace(tmp_path)
    args = ["--config", str(config), "--set", "fit.tol=0", *_tracking(mlflow_server, "resume")]
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    env.pop("PYSPARK_GATEWAY_PORT", None)
    # em-spark train with a pause after checkpoint 5 is committed; the whole driver is killed there
    with open(tmp_path / "first.log", "wb") as first_log:
        first = subprocess.Popen(
            [sys.executable, str(FAULTS), "--fault-dir", str(markers), "--pause-after", "5", *args],
            cwd=tmp_path,
            env=env,
            stdout=first_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while not (markers / "paused-5").exists():
                assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[
                    -3000:
                ]
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
            first.wait(60)
    [killed] = _runs(mlflow_server, "resume", "t1")
    client = _client(mlflow_server)
    before = [m.step for m in client.get_metric_history(killed.info.run_id, "restart1/avgLogLik")]
    assert before == [1, 2, 3, 4]  # iteration 5 was committed, not yet logged, when the driver died

    r = run_cli("train", *args, cwd=tmp_path)
    assert r.code == 0, r.err[-3000:]
    assert "resuming from" in r.err and "continuing MLflow run" in r.err
    [run] = _runs(mlflow_server, "resume", "t1")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "restart1/avgLogLik")]
    assert len(steps) == len(set(steps)), steps  # no iteration logged twice
    # the re-run continued after the checkpoint: 6..20 (5's line died with the killed driver)
    assert steps == [1, 2, 3, 4, *range(6, 21)]
    assert run.data.metrics["iterations"] == 20


@pytest.mark.spark
def test_the_nightly_job_records_its_decision_and_report(tmp_path, mlflow_server):
    config = small_workspace(tmp_path)
    night = [
        "--config",
        str(config),
        "--set",
        "registry.uri=registry",
        "--set",
        "registry.modelName=blobs",
        "--set",
        "nightly.date=2026-11-30",
        *_tracking(mlflow_server, "nightly"),
    ]
    r = run_cli("nightly", *night, cwd=tmp_path)
    assert r.code == 0, r.err[-3000:]
    [run] = _runs(mlflow_server, "nightly", "blobs-2026-11-30")
    client = _client(mlflow_server)
    tags = run.data.tags
    assert tags["em_spark.decision"] == "promoted" and tags["em_spark.decisionReason"] == "no production model yet"
    assert run.data.metrics["nightly/promoted"] == 1 and run.data.metrics["nightly/newVersion"] == 1
    assert "restart1/avgLogLik" in run.data.metrics  # the night's fit is the same MLflow run
    import json

    local = client.download_artifacts(run.info.run_id, "report.json", str(tmp_path / "dl"))
    report = json.loads(Path(local).read_text())
    on_disk = json.loads((tmp_path / "registry" / "blobs" / "runs" / "blobs-2026-11-30" / "report.json").read_text())
    assert report["decision"] == on_disk["decision"] == "promoted" and report["newVersion"] == on_disk["newVersion"]
