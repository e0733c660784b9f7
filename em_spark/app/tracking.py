"""Experiment tracking in MLflow (the ``em-spark[mlflow]`` extra): the only module importing mlflow.

With ``run.mlflow.trackingUri``, a fit is one MLflow run in ``run.mlflow.experiment``, found
again by its tag ``em_spark.runId``: a resumed em_spark run (same run id after a kill)
continues that MLflow run, and iterations whose metrics it already holds are not logged
twice. What a run holds:

- params: the estimator's params (model and fit settings), as strings;
- per-iteration metrics, step = iteration, one series per restart: ``restart<r>/avgLogLik``,
  ``restart<r>/change``, ``restart<r>/seconds`` and the family's progress fields (``minWeight``);
- final metrics: the outcome ``metrics.json`` has (iterations, converged, BIC/AIC, posterior
  entropy and stability ARI, wall seconds, ...), at step 0;
- tags: ``em_spark.runId``, ``em_spark.dataFingerprint``, ``em_spark.seed``,
  ``em_spark.packageVersion``, ``em_spark.configDigest`` (sha256 of the job config);
- artifacts: the saved model (``model/model.emsp``) and ``metrics.json``.

The nightly job tags its night's run with its decision and reason and logs ``report.json``.

mlflow is imported lazily: em_spark runs without it. :func:`open_tracker` runs before
Spark starts and fails the command with one line when mlflow is missing or the server
cannot be reached (see the README for why a run does not go on untracked). Once the fit
runs, a logging failure is a warning: the fit itself is never lost to tracking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from typing import Any

from em_spark.app.config import ConfigError, JobConfig
from em_spark.app.metrics import finite_or_none

__all__ = ["INSTALL_HINT", "RUN_ID_TAG", "Tracker", "TrackingError", "config_digest", "open_tracker"]

log = logging.getLogger("em_spark")

INSTALL_HINT = "pip install 'em-spark[mlflow]'"
RUN_ID_TAG = "em_spark.runId"  # the em_spark run id: how a resumed run finds its MLflow run
_SERIES = re.compile(r"restart(\d+)/avgLogLik")
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


class TrackingError(ConfigError):
    """Tracking was asked for but cannot work (mlflow missing, server unreachable); one line."""


def config_digest(config: JobConfig) -> str:
    """sha256 of the job config as canonical JSON: two runs with one digest ran one config."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_reachable(uri: str, timeout: float = 10.0) -> None:
    """An http(s) tracking server answers its /health endpoint; other URIs are left to mlflow."""
    if not uri.startswith(("http://", "https://")):
        return
    # a proxy in the environment must not stand between a job and a server on its own machine
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(uri) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} (config key 'run.mlflow.trackingUri'): {reason}; "
            "start it, fix the URI, or remove run.mlflow.trackingUri to run untracked"
        ) from None


def _is_loopback(uri: str) -> bool:
    import urllib.parse

    return urllib.parse.urlsplit(uri).hostname in ("127.0.0.1", "localhost", "::1")


def open_tracker(config: JobConfig) -> Tracker | None:
    """The run's tracker when ``run.mlflow.trackingUri`` is set, else None. Call before Spark
    starts: mlflow missing or the server unreachable is a :class:`TrackingError` now."""
    section = config.run.mlflow
    if not section.trackingUri:
        return None
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(
            f"config key 'run.mlflow.trackingUri' asks for MLflow tracking, but mlflow cannot be imported ({exc}); "
            f"install it with {INSTALL_HINT}, or remove the key (in {config.source})"
        ) from None
    # A client that waits minutes on retries would hold the job; the preflight below says why.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    _check_reachable(section.trackingUri)
    client = MlflowClient(tracking_uri=section.trackingUri)
    try:
        experiment = client.get_experiment_by_name(section.experiment)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(section.experiment)
        )
    except Exception as exc:  # noqa: BLE001 -- MlflowException, requests' errors: one line for the CLI
        raise TrackingError(
            f"MLflow at {section.trackingUri} refused the experiment {section.experiment!r} "
            f"(config key 'run.mlflow.experiment'): {exc}"
        ) from None
    return Tracker(client, experiment_id, config)


class Tracker:
    """One em_spark run's MLflow run: created, or found by its ``em_spark.runId`` tag, when the
    first record arrives (the run id may only be known once the fit starts)."""

    def __init__(self, client: Any, experiment_id: str, config: JobConfig) -> None:
        self.client, self.experiment_id, self.config = client, experiment_id, config
        self.run_id: str | None = None  # em_spark's
        self.mlflow_run_id: str | None = None
        self.already_finished = False
        self.params: dict[str, str] = {}
        self._logged: set[tuple[int, int]] = set()  # (restart, iteration) the MLflow run already holds
        self._failed = False

    def set_params(self, params: dict[str, Any]) -> None:
        """Params logged when the run starts (estimator params and fit settings)."""
        self.params = {k: str(v)[:_MAX_PARAM] for k, v in params.items() if v is not None}

    # -- finding or starting the run -----------------------------------------------------------

    def start(self, run_id: str) -> str:
        """The MLflow run id of em_spark run ``run_id``: the one tagged with it, else a new one."""
        if self.mlflow_run_id is not None:
            return self.mlflow_run_id
        from mlflow.entities import Param, RunTag

        from em_spark import __version__

        self.run_id = run_id
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1
        )
        if found:
            run = found[0]
            self.mlflow_run_id = run.info.run_id
            self.already_finished = run.info.status == "FINISHED"
            for key in run.data.metrics:
                match = _SERIES.fullmatch(key)
                if match:
                    restart = int(match.group(1))
                    history = self.client.get_metric_history(self.mlflow_run_id, key)
                    self._logged.update((restart, int(m.step)) for m in history)
            if not self.already_finished:
                self.client.update_run(self.mlflow_run_id, status="RUNNING")
            log.info("run=%s: continuing MLflow run %s", run_id, self.mlflow_run_id)
            return self.mlflow_run_id
        tags = {
            RUN_ID_TAG: run_id,
            "em_spark.seed": str(self.config.fit.seed),
            "em_spark.packageVersion": __version__,
            "em_spark.configDigest": config_digest(self.config),
            "em_spark.family": self.config.model.family,
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_id)
        self.mlflow_run_id = run.info.run_id
        self.client.log_batch(
            self.mlflow_run_id,
            params=[Param(k, v) for k, v in sorted(self.params.items())],
            tags=[RunTag("em_spark.configSource", self.config.source[:_MAX_PARAM])],
        )
        log.info("run=%s: MLflow run %s in experiment %s", run_id, self.mlflow_run_id, self.experiment_id)
        return self.mlflow_run_id

    # -- the IterationRecorder's hook ----------------------------------------------------------

    def iteration(self, run_id: str, entry: dict[str, Any]) -> None:
        """One iteration's metrics (step = iteration, series per restart), unless already logged."""
        from mlflow.entities import Metric

        restart, iteration = int(entry["restart"]), int(entry["iteration"])
        mlflow_run = self.start(run_id)
        if (restart, iteration) in self._logged:
            return
        now = _now_ms()
        metrics = []
        for key, value in entry.items():
            if key in ("restart", "restarts", "iteration", "maxIter", "weights", "converged"):
                continue
            number = finite_or_none(value)
            if number is not None:
                metrics.append(Metric(f"restart{restart}/{key}", number, now, iteration))
        self.client.log_batch(mlflow_run, metrics=metrics)
        self._logged.add((restart, iteration))

    # -- the end of the fit --------------------------------------------------------------------

    def finish(self, doc: dict[str, Any], model: Any) -> None:
        """Final metrics, fingerprint, model and metrics.json; the run marked FINISHED. A run
        MLflow already holds as finished (a re-run of a finished run) is left as it is."""
        run_id = str(doc.get("runId"))
        try:
            mlflow_run = self.start(run_id)
            if self.already_finished:
                log.info("run=%s: MLflow run %s already holds this finished run", run_id, mlflow_run)
                return
            self._log_final(mlflow_run, doc, model)
            self.client.set_terminated(mlflow_run, status="FINISHED")
        except Exception as exc:  # noqa: BLE001 -- the model is fitted and saved; tracking is a record of it
            log.warning("run=%s: could not record the run in MLflow: %s", run_id, exc)

    def _log_final(self, mlflow_run: str, doc: dict[str, Any], model: Any) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        criteria = doc.get("criteria") or {}
        posterior = doc.get("posterior") or {}
        stability = posterior.get("stability") or {}
        weights = doc.get("componentWeights") or []
        final = {
            "iterations": doc.get("iterations"),
            "converged": None if doc.get("converged") is None else int(bool(doc["converged"])),
            "restarts": doc.get("restarts"),
            "bestRestart": doc.get("bestRestart"),
            "rows": doc.get("rows"),
            "logLikelihood": doc.get("logLikelihood"),
            "averageLogLikelihood": doc.get("averageLogLikelihood"),
            "bic": criteria.get("bic"),
            "aic": criteria.get("aic"),
            "posteriorEntropy": posterior.get("entropy"),
            "stabilityAriMin": stability.get("minAri"),
            "stabilityAriMean": stability.get("meanAri"),
            "minComponentWeight": min(weights) if weights else None,
            "wallSeconds": doc.get("wallSeconds"),
            "secondsPerIteration": doc.get("secondsPerIteration"),
            "executorCoreSeconds": doc.get("executorCoreSeconds"),
        }
        metrics = [Metric(k, v, now, 0) for k, raw in final.items() if (v := finite_or_none(raw)) is not None]
        tags = [RunTag("em_spark.dataFingerprint", str(model.summary.dataFingerprint))]
        if doc.get("modelPath"):
            tags.append(RunTag("em_spark.modelPath", str(doc["modelPath"])[:_MAX_PARAM]))
        self.client.log_batch(mlflow_run, metrics=metrics, tags=tags)
        from em_spark.storage import file_uri

        with tempfile.TemporaryDirectory(prefix="em-spark-mlflow-") as tmp:
            model_dir = os.path.join(tmp, "model")
            model.save(file_uri(model_dir))  # as `train` saves it: em_spark.api.load_model reads the artifact
            self.client.log_artifacts(mlflow_run, model_dir, "model")
            from em_spark.app.metrics import METRICS_FILE, json_safe

            path = os.path.join(tmp, METRICS_FILE)
            with open(path, "w") as f:
                json.dump(json_safe(doc), f, indent=1, allow_nan=False)
            self.client.log_artifact(mlflow_run, path)

    def fail(self, run_id: str | None) -> None:
        """Mark the MLflow run FAILED after a fit error (a re-run sets it RUNNING again)."""
        if self.mlflow_run_id is None:
            return
        try:
            self.client.set_terminated(self.mlflow_run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 -- the fit's own error is what the caller raises
            log.warning("run=%s: could not mark the MLflow run failed: %s", run_id, exc)

    def record_night(self, night_run_id: str, report: dict[str, Any]) -> None:
        """The nightly decision (tags ``em_spark.decision``, ``em_spark.decisionReason``), a few
        numbers, and ``report.json``, on the night's run (the retrain's, when it fitted one)."""
        from mlflow.entities import Metric, RunTag

        try:
            mlflow_run = self.start(night_run_id)
            tags = [
                RunTag("em_spark.decision", str(report.get("decision"))),
                RunTag("em_spark.decisionReason", str(report.get("reason"))[:_MAX_PARAM]),
                RunTag("em_spark.nightlyDate", str(report.get("date"))),
                RunTag("em_spark.model", str(report.get("model"))),
            ]
            drift = report.get("drift") or {}
            numbers = {
                "nightly/promoted": int(report.get("decision") == "promoted"),
                "nightly/gateKeptNights": report.get("gateKeptNights"),
                "nightly/productionAfter": report.get("productionAfter"),
                "nightly/newVersion": report.get("newVersion"),
                "nightly/driftDrop": drift.get("drop"),
                "nightly/maxWeightShift": drift.get("maxWeightShift"),
                "nightly/maxDivergence": drift.get("maxDivergence"),
            }
            now = _now_ms()
            metrics = [Metric(k, v, now, 0) for k, raw in numbers.items() if (v := finite_or_none(raw)) is not None]
            self.client.log_batch(mlflow_run, metrics=metrics, tags=tags)
            with tempfile.TemporaryDirectory(prefix="em-spark-mlflow-") as tmp:
                path = os.path.join(tmp, "report.json")
                with open(path, "w") as f:
                    json.dump(report, f, indent=2, default=float)
                self.client.log_artifact(mlflow_run, path)
            self.client.set_terminated(mlflow_run, status="FINISHED")
        except Exception as exc:  # noqa: BLE001 -- the night is done and its report written
            log.warning("nightly %s: could not record the decision in MLflow: %s", night_run_id, exc)


def estimator_params(estimator: Any) -> dict[str, Any]:
    """An estimator's params worth recording (not the initial model object itself)."""
    params = {p.name: v for p, v in estimator.extractParamMap().items()}
    if params.get("initialModel") is not None:
        params["initialModel"] = "given"
    return params


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
