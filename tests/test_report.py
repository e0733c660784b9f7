"""``em-spark report``: a PNG and an HTML page of a run, from its metrics.json or a saved model.

The models here are fitted without a JVM (``fit_em`` on in-process blocks), except in the
test marked ``spark``, which runs the CLI's train job and then reports on it by run id."""

from __future__ import annotations

import base64
import json
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark import cli
from em_spark.api.base import EMSummary
from em_spark.api.gaussian import GaussianMixtureModel
from em_spark.app import metrics
from em_spark.app.demo_data import make_blobs
from em_spark.app.report import build_report, render
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PANEL_WIDTH, HEIGHT = 500, 420  # pixels: 5 x 4.2 inches at 100 dpi per panel


@pytest.fixture(autouse=True)
def em_logger(monkeypatch):
    """INFO on the em_spark logger (the recorder listens there), restored afterwards; and a CLI
    ``main`` that leaves the test session's SparkSession running."""
    logger = logging.getLogger("em_spark")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(cli, "_stop_session", lambda: None)
    yield logger
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def _fit(X, tmp_path, run_id="rep", k=3, n_init=2, covariance_type="full"):
    """Fit without Spark; write the run's metrics.json and save the model. Returns their URIs."""
    ckpt, model_uri = (tmp_path / "ckpt").as_uri(), (tmp_path / "model").as_uri()
    family = GaussianFamily(k=k, covariance_type=covariance_type)
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], sample_size=500, seed=1)
    with metrics.IterationRecorder(run_id, lambda rid: metrics.metrics_uri(rid, ckpt, None)) as recorder:
        result = fit_em(family, source, FitSettings(max_iter=30, tol=1e-6, n_init=n_init, seed=3, run_id=run_id))
    model = GaussianMixtureModel(family, result.params, X.shape[1])
    model._summary = EMSummary(model, result, None)
    model.setParams(featuresCol=[f"x{j}" for j in range(X.shape[1])])
    model.save(model_uri)
    metrics.publish(recorder, model, wall_seconds=2.0, model_path=model_uri)
    return f"{ckpt}/{run_id}/metrics.json", model_uri, result


def _parquet(X, path):
    path.mkdir()
    pq.write_table(pa.table({f"x{j}": X[:, j] for j in range(X.shape[1])}), path / "part-0.parquet")
    return str(path)


def _check_png(data: bytes, panels: int):
    import io

    import matplotlib.image

    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.shape[:2] == (HEIGHT, PANEL_WIDTH * panels)
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def _embedded_png(page: str) -> bytes:
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "the page does not embed a PNG"
    return base64.b64decode(match.group(1))


def test_report_from_a_runs_metrics_with_a_scatter_of_the_data(tmp_path):
    X, truth, _ = make_blobs(2000, 2, 3, separation=6.0, seed=4)
    metrics_uri, _, result = _fit(X, tmp_path)
    data = _parquet(X, tmp_path / "data")
    report, png_uri, html_uri = build_report(metrics_uri, str(tmp_path / "out"), data=data, max_rows=1200)
    # The scatter's model comes from the modelPath the metrics name; its features from the model.
    assert report.panels == ["log-likelihood", "weights", "seconds", "scatter"]
    assert png_uri == str(tmp_path / "out" / "report.png") and html_uri == str(tmp_path / "out" / "report.html")
    png = (tmp_path / "out" / "report.png").read_bytes()
    _check_png(png, panels=4)
    page = (tmp_path / "out" / "report.html").read_text()
    assert _embedded_png(page) == png
    assert "run rep" in page and "gaussian k=3" in page and "the two features as they are" in page


def test_weights_over_iterations_come_from_the_metrics_and_a_model_alone_shows_the_final_ones(tmp_path):
    X = make_blobs(1500, 2, 3, seed=6)[0]
    metrics_uri, model_uri, _ = _fit(X, tmp_path)
    doc = json.loads((tmp_path / "ckpt" / "rep" / "metrics.json").read_text())
    from_metrics = render(doc)
    assert from_metrics.panels == ["log-likelihood", "weights", "seconds"] and from_metrics.notes == []
    _check_png(from_metrics.png, panels=3)

    report, _, _ = build_report(model_uri, (tmp_path / "from-model").as_uri())
    # A saved model keeps the best restart's seconds in its summary.
    assert report.panels == ["log-likelihood", "weights", "seconds"]
    assert any("no per-iteration weights" in n for n in report.notes)
    _check_png((tmp_path / "from-model" / "report.png").read_bytes(), panels=3)
    assert "no per-iteration weights" in (tmp_path / "from-model" / "report.html").read_text()
    # The model file itself, and the run directory holding metrics.json, work as sources too.
    assert build_report(f"{model_uri}/model.emsp", str(tmp_path / "o2"))[0].panels[:2] == ["log-likelihood", "weights"]
    assert build_report(str(tmp_path / "ckpt" / "rep"), str(tmp_path / "o3"))[0].notes == []


def test_three_features_are_drawn_by_their_principal_components_and_more_are_not_drawn(tmp_path):
    X3 = make_blobs(1500, 3, 2, seed=7)[0]
    metrics_uri, _, _ = _fit(X3, tmp_path / "three", k=2, n_init=1)
    report, _, _ = build_report(metrics_uri, str(tmp_path / "o3"), data=_parquet(X3, tmp_path / "d3"))
    assert report.panels[-1] == "scatter"
    assert any("principal components" in n for n in report.notes)

    X5 = make_blobs(1500, 5, 2, seed=8)[0]
    metrics_uri, _, _ = _fit(X5, tmp_path / "five", k=2, n_init=1)
    report, _, _ = build_report(metrics_uri, str(tmp_path / "o5"), data=_parquet(X5, tmp_path / "d5"))
    assert report.panels == ["log-likelihood", "weights", "seconds"]
    assert any("5 features" in n for n in report.notes)


def test_the_cli_reports_a_run_by_id_or_by_path(tmp_path, capsys):
    X = make_blobs(1500, 2, 3, seed=9)[0]
    _fit(X, tmp_path, run_id="nightly-7")
    data = _parquet(X, tmp_path / "data")
    checkpoint_dir = (tmp_path / "ckpt").as_uri()
    code = cli.main(
        [
            "report",
            "nightly-7",
            "--set",
            f"run.checkpointDir={checkpoint_dir}",
            "--output",
            str(tmp_path / "by-id"),
            "--data",
            data,
            "--features",
            "x0,x1",
            "--rows",
            "500",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "em_spark report: log-likelihood, weights, seconds, scatter ->" in out
    _check_png((tmp_path / "by-id" / "report.png").read_bytes(), panels=4)

    code = cli.main(["report", str(tmp_path / "model"), "--output", str(tmp_path / "by-path")])
    assert code == 0 and (tmp_path / "by-path" / "report.html").is_file()

    code = cli.main(["report", "no-such-run", "--set", f"run.checkpointDir={checkpoint_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "em-spark: error: report:" in err and "no-such-run" in err
    code = cli.main(
        [
            "report",
            "nightly-7",
            "--set",
            f"run.checkpointDir={checkpoint_dir}",
            "--output",
            str(tmp_path / "x"),
            "--data",
            data,
            "--features",
            "nope",
        ]
    )
    assert code == 2 and "no column(s) ['nope']" in capsys.readouterr().err


@pytest.mark.spark
def test_cli_train_writes_metrics_pushes_them_and_the_run_can_be_reported(spark, tmp_path, capsys):
    import http.server
    import threading

    received = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = cli.load_config(
            None,
            [
                f"input.path={tmp_path / 'data'}",
                "input.generate.rows=3000",
                f"run.checkpointDir={tmp_path / 'ckpt'}",
                "run.id=cli-run",
                f"output.modelPath={tmp_path / 'model'}",
                "fit.maxIter=8",
                "fit.nInit=1",
                f"run.pushgateway=http://127.0.0.1:{server.server_address[1]}",
            ],
        )
        cli.run_train(config)
    finally:
        server.shutdown()
        server.server_close()
    doc = json.loads((tmp_path / "ckpt" / "cli-run" / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["runId"] == "cli-run" and doc["rows"] == 3000
    assert doc["modelPath"] == (tmp_path / "model").as_uri() and doc["wallSeconds"] > 0
    assert len(doc["perIteration"]) == doc["iterations"] and all(len(r["weights"]) == 3 for r in doc["perIteration"])
    # The run's start (at its first iteration), then the finished run, both to the run's group.
    [(started_path, started), (path, body)] = received
    assert started_path == path == "/metrics/job/em_spark/run_id/cli-run"
    assert "em_spark_run_started_timestamp_seconds" in started
    assert re.search(rf'^em_spark_iterations{{family="gaussian"}} {doc["iterations"]}\.0$', body, re.M)
    assert doc["executorCoreSeconds"] > 0

    result = cli.run_report(config, "cli-run", str(tmp_path / "report"), data=str(tmp_path / "data"))
    assert result["panels"] == ["log-likelihood", "weights", "seconds", "scatter"]
    _check_png((tmp_path / "report" / "report.png").read_bytes(), panels=4)


def test_report_with_a_data_path_that_does_not_exist_blames_the_data_not_the_run(tmp_path):
    from clitools import run_cli, snapshot

    X = make_blobs(600, 2, 2, seed=10)[0]
    metrics_uri, _, _ = _fit(X, tmp_path, k=2, n_init=1)
    before = snapshot(tmp_path)
    result = run_cli(
        "report",
        metrics_uri,
        "--output",
        str(tmp_path / "out"),
        "--data",
        "no-such-data",
        "--features",
        "x0,x1",
        cwd=tmp_path,
    )
    line = result.assert_clean_error("--data file://", "no-such-data: no data there")
    assert "metrics.json" not in line and snapshot(tmp_path) == before


def test_report_on_an_hmm_run_draws_the_steps_by_viterbi_state(tmp_path):
    from clitools import run_cli

    from em_spark.api.hmm import GaussianHMMModel
    from em_spark.app.demo_data import make_hmm_sequences
    from em_spark.models import GaussianHMMFamily

    X, _, _ = make_hmm_sequences(120, 30, 2, 3, separation=5.0, seed=4)
    ckpt, model_uri = (tmp_path / "ckpt").as_uri(), (tmp_path / "model").as_uri()
    family = GaussianHMMFamily(k=3, covariance_type="diag")
    source = LocalBlockSource([Block(X.reshape(-1, 2), lengths=np.full(120, 30))], sample_size=2000, seed=0)
    with metrics.IterationRecorder("hmm", lambda rid: metrics.metrics_uri(rid, ckpt, None)) as recorder:
        result = fit_em(family, source, FitSettings(max_iter=8, seed=0, run_id="hmm"))
    model = GaussianHMMModel(family, result.params, 2)
    model._summary = EMSummary(model, result, None)
    model.setParams(featuresCol="obs")
    model.save(model_uri)
    metrics.publish(recorder, model, wall_seconds=1.0, model_path=model_uri)
    pq.write_table(pa.table({"obs": [seq.tolist() for seq in X]}), tmp_path / "sequences.parquet")

    result = run_cli(
        "report",
        "hmm",
        "--set",
        f"run.checkpointDir={ckpt}",
        "--output",
        str(tmp_path / "out"),
        "--data",
        str(tmp_path / "sequences.parquet"),
        "--rows",
        "600",
        cwd=tmp_path,
    )
    assert result.code == 0, result.err[-3000:]
    assert "em_spark report: log-likelihood, weights, seconds, scatter ->" in result.out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "each step&#x27;s state on its Viterbi path" in page or "each step's state on its Viterbi path" in page
    _check_png((tmp_path / "out" / "report.png").read_bytes(), panels=4)
    # Whole sequences up to the step budget: 600 steps are 20 sequences of 30.
    from em_spark.app.report import read_points

    points, lengths = read_points(str(tmp_path / "sequences.parquet"), "obs", 600, sequences=True)
    assert lengths.tolist() == [30] * 20 and np.array_equal(points, X[:20].reshape(-1, 2))


def _dense_covariances(kind, covariances, k, d):
    """(k, d, d) from the public ``covariances`` of each covariance type (as documented)."""
    if kind == "full":
        return covariances
    if kind == "tied":
        return np.repeat(covariances[None], k, axis=0)
    if kind == "diag":
        return np.array([np.diag(c) for c in covariances])
    return np.array([c * np.eye(d) for c in covariances])


def _ellipse_covariance(ellipse, n_std):
    """The covariance whose n_std ellipse this is: R diag((w/2n)^2, (h/2n)^2) R^T."""
    a, b = ellipse.width / (2 * n_std), ellipse.height / (2 * n_std)
    t = np.radians(ellipse.angle)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return R @ np.diag([a * a, b * b]) @ R.T


@pytest.mark.parametrize("kind, d", [("full", 2), ("diag", 2), ("spherical", 2), ("tied", 2), ("full", 3), ("diag", 3)])
def test_the_scatter_draws_each_components_1_and_2_sd_ellipses(tmp_path, kind, d):
    from matplotlib.patches import Ellipse
    from sklearn.decomposition import PCA

    X = make_blobs(1500, d, 3, separation=7.0, seed=11)[0]
    if kind != "spherical":  # stretch a feature so the ellipses are not circles
        X[:, 0] *= 3.0
    metrics_uri, _, result = _fit(X, tmp_path, k=3, n_init=1, covariance_type=kind)
    report, _, _ = build_report(metrics_uri, str(tmp_path / "out"), data=_parquet(X, tmp_path / "data"))
    assert report.panels == ["log-likelihood", "weights", "seconds", "scatter"]
    _check_png((tmp_path / "out" / "report.png").read_bytes(), panels=4)
    assert any("ellipses at 1 and 2 standard deviations" in n for n in report.notes)

    public = GaussianFamily(k=3, covariance_type=kind).public_params(result.params)
    means, covariances = public["means"], _dense_covariances(kind, public["covariances"], 3, d)
    if d == 2:
        V, centers = np.eye(2), means
    else:  # the plot's axes are the first two principal components of the drawn rows
        pca = PCA(n_components=2).fit(X)
        V, centers = pca.components_, (means - pca.mean_) @ pca.components_.T
    ax = report.figure.axes[report.panels.index("scatter")]
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * 3
    drawn_centers = np.array([e.center for e in ellipses])
    # A principal axis is only defined up to its sign: take the plot's.
    signs = np.sign(np.sum(drawn_centers[::2] * centers, axis=0))
    V, centers = V * signs[:, None], centers * signs
    for j in range(3):
        mine = [e for e in ellipses if np.allclose(e.center, centers[j], atol=1e-8)]
        assert len(mine) == 2, f"component {j}: ellipses at {drawn_centers.tolist()}, mean at {centers[j]}"
        one, two = sorted(mine, key=lambda e: e.width)
        expected = V @ covariances[j] @ V.T
        np.testing.assert_allclose(_ellipse_covariance(one, 1.0), expected, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(_ellipse_covariance(two, 2.0), expected, rtol=1e-7, atol=1e-9)
        assert two.width == pytest.approx(2 * one.width) and two.height == pytest.approx(2 * one.height)
        if kind == "spherical":
            assert one.width == pytest.approx(one.height)


def test_the_log_likelihood_axis_has_plain_labels_and_no_offset_text():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = [-1234.5671, -1234.56706, -1234.56703, -1234.56702]  # late iterations: 5th-digit changes
    doc = {"runId": "flat", "bestRestart": 1, "logLikelihoodHistory": history, "componentWeights": [0.5, 0.5]}
    report = render(doc)
    ax = report.figure.axes[report.panels.index("log-likelihood")]
    assert ax.yaxis.get_offset_text().get_text() == ""
    labels = [t.get_text().replace("\u2212", "-") for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all(label.startswith("-1234.567") for label in labels), labels
    # Matplotlib's default would have put an offset over the panel for the same curve.
    default = Figure()
    FigureCanvasAgg(default)
    plain = default.subplots()
    plain.plot(range(1, 5), history)
    default.canvas.draw()
    assert plain.yaxis.get_offset_text().get_text() != ""


def test_the_seconds_panel_draws_each_restarts_per_iteration_seconds(tmp_path):
    X = make_blobs(1200, 2, 2, seed=12)[0]
    _fit(X, tmp_path, k=2, n_init=2)
    doc = json.loads((tmp_path / "ckpt" / "rep" / "metrics.json").read_text())
    report = render(doc)
    assert report.panels == ["log-likelihood", "weights", "seconds"]
    ax = report.figure.axes[report.panels.index("seconds")]
    assert ax.get_title() == "Seconds per iteration"
    for restart, line in zip((1, 2), ax.get_lines()):
        records = sorted((r for r in doc["perIteration"] if r["restart"] == restart), key=lambda r: r["iteration"])
        assert list(line.get_xdata()) == [r["iteration"] for r in records]
        assert list(line.get_ydata()) == [r["seconds"] for r in records]
    assert len(ax.get_lines()) == 2
    best = ax.get_lines()[doc["bestRestart"] - 1]
    assert list(best.get_ydata()) == doc["iterationSeconds"]  # the summary's are the best restart's
    # A saved model has no per-iteration records: its summary's seconds (every data pass the fit
    # ran, each shared by the restarts still running) are drawn as one curve, and the note says so.
    report, _, _ = build_report(str(tmp_path / "model"), str(tmp_path / "from-model"))
    [line] = report.figure.axes[report.panels.index("seconds")].get_lines()
    from em_spark.app.report import load_source

    _, saved = load_source(str(tmp_path / "model"))
    assert list(line.get_ydata()) == saved.summary.iterationSeconds
    assert len(saved.summary.iterationSeconds) == max(r["iteration"] for r in doc["perIteration"])
    assert any("shared by all restarts" in n for n in report.notes)
