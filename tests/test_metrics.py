"""Runs a person can see: per-iteration JSON log lines, Spark job descriptions, the metrics
file and the Pushgateway push. All JVM-free except the tests marked ``spark``."""

from __future__ import annotations

import http.server
import io
import json
import logging
import re
import socket
import threading
import time
from typing import ClassVar

import fakes
import numpy as np
import pytest
from fakes import Killed

from em_spark.api.base import EMSummary
from em_spark.api.gaussian import GaussianMixtureModel
from em_spark.app import metrics
from em_spark.app.common import JsonFormatter as _JsonFormatter
from em_spark.app.config import ConfigError, load_config
from em_spark.app.demo_data import make_blobs
from em_spark.engine import minibatch
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block


@pytest.fixture(scope="module")
def X():
    return make_blobs(1500, 2, 3, separation=5.0, seed=2)[0]


class LabelledSource(LocalBlockSource):
    """Records the job description the loop gives each E-step."""

    def __init__(self, X, **kw):
        super().__init__([Block(b) for b in np.array_split(X, 3)], sample_size=300, seed=1, **kw)
        self.labels: list[str] = []

    def e_step_many(self, models, label=""):
        self.labels.append(label)
        return super().e_step_many(models, label)


def KilledAfter(X, passes):
    return fakes.KilledAfter([Block(b) for b in np.array_split(X, 3)], passes, sample_size=300, seed=1)


@pytest.fixture
def em_logger():
    """The em_spark logger at INFO, restored afterwards (the CLI's setup_logging changes it)."""
    logger = logging.getLogger("em_spark")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def _model(family, result, n_features=2):
    """A fitted model without Spark: what GaussianMixture.fit builds from a FitResult."""
    model = GaussianMixtureModel(family, result.params, n_features)
    model._summary = EMSummary(model, result, None)
    return model


# --- 1. one structured line per iteration; job descriptions ---------------------------------


def test_every_e_step_job_is_described_with_the_run_restart_and_iteration(X):
    source = LabelledSource(X)
    fit_em(GaussianFamily(k=3), source, FitSettings(max_iter=3, tol=0.0, n_init=2, run_id="night-42"))
    assert source.labels == [
        f"em_spark run=night-42 restart=1,2/2 iter={i}" for i in (1, 2, 3)
    ]  # one job, both restarts


def test_json_logs_have_one_line_per_iteration_with_separate_fields(X, em_logger):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonFormatter())
    em_logger.addHandler(handler)
    fit_em(GaussianFamily(k=3), LabelledSource(X), FitSettings(max_iter=4, tol=0.0, run_id="json-run"))
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is strict JSON
    iterations = [e for e in entries if e.get("event") == "iteration"]
    assert [e["iteration"] for e in iterations] == [1, 2, 3, 4]
    for e in iterations:
        assert e["run_id"] == "json-run" and e["restart"] == 1 and e["level"] == "INFO"
        assert isinstance(e["avgLogLik"], float) and e["seconds"] >= 0
        assert 0 < e["minWeight"] <= 1 / 3 + 1e-12
        assert e["message"].startswith(f"run=json-run restart=1/1 iter={e['iteration']}/4 avgLogLik=")
    assert iterations[0]["change"] is None  # +inf in the text line; strict JSON has no inf
    assert iterations[2]["change"] == pytest.approx(iterations[2]["avgLogLik"] - iterations[1]["avgLogLik"])
    assert "em_weights" not in json.dumps(entries) and "weights" not in iterations[0]  # weights go to metrics only


@pytest.mark.spark
def test_spark_ui_job_descriptions_name_the_run_and_iteration(spark):
    from em_spark import GaussianMixture

    rows = make_blobs(600, 2, 2, seed=3)[0]
    df = spark.createDataFrame([(float(a), float(b)) for a, b in rows], ["a", "b"])
    GaussianMixture(k=2, maxIter=2, tol=0.0, seed=1, runId="ui-visible", featuresCol=["a", "b"]).fit(df)
    store = spark.sparkContext._jsc.sc().statusStore()  # what the Spark UI's Jobs page shows
    wanted = {"em_spark run=ui-visible restart=1/1 iter=1", "em_spark run=ui-visible restart=1/1 iter=2"}
    descriptions: set[str] = set()
    for _ in range(50):  # the listener bus delivers job events asynchronously
        jobs = store.jobsList(None).iterator()
        while jobs.hasNext():
            description = jobs.next().description()
            if description.isDefined():
                descriptions.add(description.get())
        if wanted <= descriptions:
            break
        time.sleep(0.1)
    assert wanted <= descriptions
    assert "em_spark run=ui-visible load + validate" in descriptions


# --- 2. the metrics file ----------------------------------------------------------------------


def test_the_recorder_rewrites_the_metrics_file_after_every_iteration(X, em_logger, tmp_path):
    root = tmp_path.as_uri()
    seen = []

    class Watching(LabelledSource):
        def e_step(self, family, params, label=""):
            path = tmp_path / "rec" / "metrics.json"
            seen.append(json.loads(path.read_text())["perIteration"] if path.exists() else None)
            return super().e_step(family, params, label)

    with metrics.IterationRecorder(None, lambda rid: metrics.metrics_uri(rid, root, None)) as recorder:
        result = fit_em(GaussianFamily(k=3), Watching(X), FitSettings(max_iter=3, tol=0.0, run_id="rec"))
    assert recorder not in em_logger.handlers
    assert seen[0] is None and [len(s) for s in seen[1:]] == [1, 2]  # written before the next E-step
    doc = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert doc["status"] == "running" and doc["runId"] == "rec" and doc["iteration"] == 3
    assert [r["avgLogLik"] for r in doc["perIteration"]] == pytest.approx(result.history)
    assert all(len(r["weights"]) == 3 and sum(r["weights"]) == pytest.approx(1.0) for r in doc["perIteration"])


def test_publish_writes_the_finished_run(X, em_logger, tmp_path):
    family = GaussianFamily(k=3)
    with metrics.IterationRecorder("pub", lambda rid: metrics.metrics_uri(rid, str(tmp_path), None)) as recorder:
        result = fit_em(family, LabelledSource(X), FitSettings(max_iter=50, tol=1e-6, n_init=2, run_id="pub"))
    model = _model(family, result)
    doc = metrics.publish(recorder, model, wall_seconds=1.5, model_path="file:///m")
    on_disk = json.loads((tmp_path / "pub" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics.json_safe(doc)))
    assert on_disk["status"] == "finished" and on_disk["family"] == "gaussian" and on_disk["k"] == 3
    assert on_disk["rows"] == 1500 and on_disk["wallSeconds"] == 1.5 and on_disk["modelPath"] == "file:///m"
    assert on_disk["iterations"] == result.n_iter and on_disk["converged"] == result.converged
    assert on_disk["bestRestart"] == result.restart + 1 and on_disk["restarts"] == 2
    assert on_disk["logLikelihoodHistory"] == pytest.approx(result.history)
    assert len(on_disk["iterationSeconds"]) == result.n_iter
    assert on_disk["componentWeights"] == pytest.approx(result.params["weights"].tolist())
    best = [r for r in on_disk["perIteration"] if r["restart"] == on_disk["bestRestart"]]
    assert best[-1]["weights"] == pytest.approx(on_disk["componentWeights"])
    p = family.n_parameters(result.params)
    assert on_disk["criteria"]["bic"] == pytest.approx(-2 * result.log_likelihood + p * np.log(1500))


def test_a_resumed_run_keeps_the_records_of_the_attempt_that_was_killed(X, em_logger, tmp_path):
    family, ckpt = GaussianFamily(k=3), str(tmp_path / "ckpt")
    settings = FitSettings(max_iter=6, tol=0.0, run_id="resumed", checkpoint_dir=ckpt)
    where = lambda rid: metrics.metrics_uri(rid, ckpt, None)  # noqa: E731
    with metrics.IterationRecorder("resumed", where), pytest.raises(Killed):
        fit_em(family, KilledAfter(X, 4), settings)
    with metrics.IterationRecorder("resumed", where) as recorder:
        result = fit_em(family, LabelledSource(X), settings)
    assert len(recorder.records) == 2  # this attempt ran iterations 5 and 6 only
    doc = metrics.publish(recorder, _model(family, result))
    assert [r["iteration"] for r in doc["perIteration"]] == [1, 2, 3, 4, 5, 6]
    assert [r["avgLogLik"] for r in doc["perIteration"]] == pytest.approx(result.history)
    # Re-running the finished run changes nothing; a fresh fit under the same id replaces the records.
    with metrics.IterationRecorder("resumed", where) as recorder:
        fit_em(family, LabelledSource(X), settings)
    assert [r["iteration"] for r in metrics.publish(recorder, _model(family, result))["perIteration"]] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    fresh = FitSettings(max_iter=2, tol=0.0, run_id="resumed")
    with metrics.IterationRecorder("resumed", where) as recorder:
        result = fit_em(family, LabelledSource(X), fresh)
    assert [r["iteration"] for r in metrics.publish(recorder, _model(family, result))["perIteration"]] == [1, 2]


def test_posterior_stability_and_entropy_are_computed_from_every_restarts_assignments(X, em_logger, tmp_path):
    from scipy.stats import entropy as scipy_entropy
    from sklearn.metrics import adjusted_rand_score

    family, source = GaussianFamily(k=3), LabelledSource(X)
    with metrics.IterationRecorder("post", lambda rid: metrics.metrics_uri(rid, str(tmp_path), None)) as recorder:
        result = fit_em(family, source, FitSettings(max_iter=30, tol=1e-8, n_init=3, run_id="post", seed=4))
    doc = json.loads(json.dumps(metrics.json_safe(metrics.publish(recorder, _model(family, result)))))
    assert [r["restart"] for r in doc["perRestart"]] == [1, 2, 3]
    labels = {r["restart"]: metrics._decode_labels(r["assignments"]) for r in doc["perRestart"]}
    best = doc["bestRestart"]
    log_resp = family.score(source.sample, result.params)["log_resp"]
    assert np.array_equal(labels[best], np.argmax(log_resp, axis=1))  # the best restart's final model
    others = [r for r in (1, 2, 3) if r != best]
    stability = doc["posterior"]["stability"]
    assert stability["restarts"] == others and doc["posterior"]["sampleRows"] == 300
    assert stability["ari"] == pytest.approx([adjusted_rand_score(labels[best], labels[r]) for r in others])
    assert stability["minAri"] == pytest.approx(min(stability["ari"]))
    expected_entropy = np.mean(scipy_entropy(np.exp(log_resp), axis=1)) / np.log(3)
    assert doc["posterior"]["entropy"] == pytest.approx(expected_entropy, rel=1e-9)
    assert doc["secondsPerIteration"] == pytest.approx(np.mean(doc["iterationSeconds"]))
    on_disk = json.loads((tmp_path / "post" / "metrics.json").read_text())
    assert on_disk["posterior"] == doc["posterior"]


def test_a_resumed_run_compares_every_restart_it_finished(X, em_logger, tmp_path):
    family, ckpt = GaussianFamily(k=3), str(tmp_path / "ckpt")
    settings = FitSettings(max_iter=4, tol=0.0, n_init=3, run_id="later", checkpoint_dir=ckpt, seed=2)
    where = lambda rid: metrics.metrics_uri(rid, ckpt, None)  # noqa: E731
    with metrics.IterationRecorder("later", where), pytest.raises(Killed):
        fit_em(family, KilledAfter(X, 2), settings)  # killed in round 3 (the restarts run side by side)
    with metrics.IterationRecorder("later", where) as recorder:
        result = fit_em(family, LabelledSource(X), settings)
    assert sorted(recorder.restarts) == [1, 2, 3]  # this attempt finished every restart
    doc = metrics.publish(recorder, _model(family, result))
    assert [r["restart"] for r in doc["perRestart"]] == [1, 2, 3]
    assert doc["posterior"]["stability"]["restartsCompared"] == 2


def test_a_metrics_file_that_cannot_be_written_is_a_warning_not_a_failure(X, em_logger, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    em_logger.propagate = True
    family = GaussianFamily(k=3)
    # Not caplog.at_level: it would raise the logger to WARNING, and the recorder listens at INFO.
    with metrics.IterationRecorder("w", lambda rid: str(blocker / rid / "metrics.json")) as recorder:
        result = fit_em(family, LabelledSource(X), FitSettings(max_iter=3, tol=0.0, run_id="w"))
    doc = metrics.publish(recorder, _model(family, result))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "cannot write metrics" in warnings[0] and "could not write metrics" in warnings[1]
    assert doc["status"] == "finished" and len(doc["perIteration"]) == 3


def test_metrics_uri():
    assert metrics.metrics_uri("r1", "s3://b/ckpt", None) == "s3://b/ckpt/r1/metrics.json"
    assert metrics.metrics_uri("r1", "s3://b/ckpt", "s3://b/m/{runId}.json") == "s3://b/m/r1.json"
    assert metrics.metrics_uri("r1", None, None) is None


# --- 2b. Pushgateway ------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, dict, str]]] = []
    status = 200

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def pushgateway():
    handler = type("Receiver", (_Receiver,), {"requests": [], "status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format: every line a comment (# HELP / # TYPE) or a sample."""
    assert text.endswith("\n")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.setdefault(match.group(1), []).append((labels, float(match.group(4))))
    return samples


def test_metrics_are_pushed_to_the_pushgateway(X, em_logger, pushgateway):
    url, receiver = pushgateway
    family = GaussianFamily(k=3)
    with metrics.IterationRecorder("push-1") as recorder:
        result = fit_em(family, LabelledSource(X), FitSettings(max_iter=12, tol=0.0, run_id="push-1"))
    metrics.publish(recorder, _model(family, result), wall_seconds=3.0, pushgateway=url + "/")
    [(method, path, headers, body)] = receiver.requests
    assert method == "PUT" and path == "/metrics/job/em_spark/run_id/push-1"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_exposition(body)
    assert samples["em_spark_iterations"] == [({"family": "gaussian"}, 12.0)]
    assert re.search(r'^em_spark_iterations\{family="gaussian"\} 12\.0$', body, re.M)  # prometheus_client's format
    assert samples["em_spark_converged"][0][1] == 0.0 and samples["em_spark_rows"][0][1] == 1500
    assert samples["em_spark_avg_log_likelihood"][0][1] == pytest.approx(result.history[-1])
    assert samples["em_spark_wall_seconds"][0][1] == 3.0
    weights = {labels["component"]: value for labels, value in samples["em_spark_component_weight"]}
    assert weights == {str(j): pytest.approx(w) for j, w in enumerate(result.params["weights"])}
    assert samples["em_spark_min_component_weight"][0][1] == pytest.approx(min(result.params["weights"]))
    doc = metrics.build_metrics(
        "push-1", recorder.all_records(), _model(family, result), restarts=recorder.restart_records()
    )
    assert samples["em_spark_posterior_entropy"][0][1] == pytest.approx(doc["posterior"]["entropy"])
    assert samples["em_spark_seconds_per_iteration"][0][1] == pytest.approx(doc["secondsPerIteration"])
    assert "em_spark_posterior_stability_ari_min" not in samples  # one restart: nothing to compare


def test_the_metrics_say_what_stopped_the_fit_batch_or_online(X, em_logger, monkeypatch):
    """Issue 14: the log line and the metrics say whether tol, the held-out set or maxIter ended it."""
    monkeypatch.setattr(minibatch, "SLICE_ROWS", 50)  # 30 slices of X, so a mini-batch holds several
    family = GaussianFamily(k=3)
    capped = fit_em(family, LabelledSource(X), FitSettings(max_iter=3, tol=0.0))
    converged = fit_em(family, LabelledSource(X), FitSettings(max_iter=200, tol=1e-3))
    online = fit_em(
        family,
        LabelledSource(X),
        FitSettings(optimizer="online", mini_batch_fraction=0.25, max_iter=400, tol=1e-3, seed=2),
    )
    assert online.stopped_by == "heldOut", "the data must let the online fit converge on its held-out set"
    for result, reason in [(capped, "maxIter"), (converged, "tol"), (online, "heldOut")]:
        doc = metrics.build_metrics("stop-1", [], _model(family, result))
        assert doc["stoppedBy"] == reason
        samples = parse_exposition(metrics.prometheus_text(doc))
        assert samples["em_spark_stopped_by"] == [({"family": "gaussian", "reason": reason}, 1.0)]
    doc = metrics.build_metrics("stop-1", [], _model(family, online))
    assert doc["epochs"] == pytest.approx(online.n_iter * 0.25)
    assert doc["heldOutAverageLogLikelihood"] == pytest.approx(online.held_out_history[-1])
    held_out = parse_exposition(metrics.prometheus_text(doc))["em_spark_held_out_avg_log_likelihood"]
    assert held_out[0][1] == pytest.approx(online.held_out_history[-1])


@pytest.mark.parametrize("failure", ["refused", "http-500"])
def test_a_failed_push_is_a_warning_and_never_fails_the_job(X, em_logger, pushgateway, caplog, failure):
    url, receiver = pushgateway
    if failure == "refused":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        receiver.status = 500
    family = GaussianFamily(k=3)
    with metrics.IterationRecorder("push-2") as recorder:
        result = fit_em(family, LabelledSource(X), FitSettings(max_iter=2, tol=0.0, run_id="push-2"))
    em_logger.propagate = True
    doc = metrics.publish(recorder, _model(family, result), pushgateway=url)
    assert doc["status"] == "finished"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "could not push metrics to the Pushgateway" in warning.getMessage()


# --- config -------------------------------------------------------------------------------------


def test_new_run_keys_are_validated_with_errors_naming_the_key():
    config = load_config(None, ["run.metricsPath=s3://b/metrics/{runId}.json", "run.pushgateway=http://pg:9091"])
    assert config.run.metricsPath == "s3://b/metrics/{runId}.json" and config.run.pushgateway == "http://pg:9091"
    assert load_config(None).run.pushgateway is None and load_config(None).run.metricsPath is None
    for bad in ("pg:9091", "ftp://pg:9091", "http://", "http://pg:port", "http://pg:9091?x=1"):
        with pytest.raises(ConfigError, match=r"'run\.pushgateway'"):
            load_config(None, [f"run.pushgateway={bad}"])
    for bad in ("m/{run}.json", "' '"):
        with pytest.raises(ConfigError, match=r"'run\.metricsPath'"):
            load_config(None, [f"run.metricsPath={bad}"])
    with pytest.raises(ConfigError, match=r"'run\.pushgateway' must be an http"):
        load_config(None, ["run.pushgateway=9091"])
