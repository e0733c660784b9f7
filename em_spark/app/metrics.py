"""Run metrics: collect them from the fit, write ``metrics.json``, push to a Prometheus Pushgateway.

The EM loop logs one record per iteration on the ``em_spark`` logger, carrying the line's
fields as ``record.em_event`` (a dict) and the component weights after the M-step as
``record.em_weights``; when a restart ends, one record with ``em_event["event"] == "restart"``
and the restart's hard assignments on the initialization sample as ``record.em_assignments``.
:class:`IterationRecorder` is a logging handler that keeps them, and optionally rewrites the
metrics file after every iteration (``status: running``), so the engine knows nothing of
metrics files. :func:`publish` writes the final document (``status: finished``) and pushes it.

Prometheus metrics are gauges in a ``prometheus_client`` ``CollectorRegistry`` per push,
pushed with ``push_to_gateway`` under the grouping key job + ``run_id`` (a re-run of the same
run id replaces its group). The nightly job pushes its outcome under the job
``em_spark_nightly`` (:func:`push_nightly`); alert rules over both are in
``docs/monitoring/alerts.yml``.

The metrics file is JSON, written through the storage layer (any ``pyarrow.fs`` URI, S3
included). Restarts and iterations are numbered from 1, as in the log lines. A resumed run
keeps the per-iteration records the earlier attempts wrote.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway

from em_spark.models.criteria import aic, bic
from em_spark.models.diagnostics import posterior_stability

__all__ = [
    "METRICS_FILE",
    "IterationRecorder",
    "build_metrics",
    "executor_core_seconds",
    "failure_registry",
    "imputation_registry",
    "json_safe",
    "metrics_uri",
    "new_run_id",
    "nightly_registry",
    "prometheus_text",
    "publish",
    "publish_imputation",
    "push_failure",
    "push_metrics",
    "push_nightly",
    "read_metrics",
    "run_registry",
    "started_registry",
    "write_metrics",
]

log = logging.getLogger("em_spark")

METRICS_FILE = "metrics.json"
METRICS_FORMAT = 1
PUSH_JOB = "em_spark"  # the Pushgateway job of a run's metrics (grouped by run_id)
NIGHTLY_JOB = "em_spark_nightly"  # the job of a night's outcome (grouped by run_id = <model>-<date>)
# Record attributes the EM loop sets on its log records (em_spark.engine.loop.fit_em).
EVENT_ATTR, WEIGHTS_ATTR, ASSIGNMENTS_ATTR = "em_event", "em_weights", "em_assignments"


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain, and inf/NaN made None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_uri(run_id: str, checkpoint_dir: str | None, metrics_path: str | None) -> str | None:
    """Where a run's metrics go: ``metrics_path`` (``{runId}`` replaced), else
    ``<checkpoint_dir>/<run_id>/metrics.json``, else nowhere (None)."""
    if metrics_path:
        return metrics_path.replace("{runId}", run_id)
    if checkpoint_dir:
        from em_spark.storage.fs import join

        return join(checkpoint_dir, run_id, METRICS_FILE)
    return None


def write_metrics(uri: str, metrics: dict[str, Any], s3_endpoint: str | None = None) -> None:
    from em_spark.storage.fs import resolve, write_object

    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    data = json.dumps(json_safe(metrics), indent=1, allow_nan=False).encode()
    write_object(fs, path, data, overwrite=True)


def read_metrics(uri: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The metrics document at ``uri``; FileNotFoundError if there is none, ValueError if it is not one."""
    from em_spark.storage.fs import read_object, resolve

    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    try:
        doc = json.loads(read_object(fs, path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{uri} is not a metrics file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != METRICS_FORMAT:
        raise ValueError(f"{uri} is not an em_spark metrics file of format {METRICS_FORMAT}")
    return doc


def _key(record: dict[str, Any]) -> tuple[int, int]:
    return int(record["restart"]), int(record["iteration"])


class IterationRecorder(logging.Handler):
    """Keeps the fit's per-iteration records; with ``destination``, rewrites the metrics file
    after each one. Use as a context manager around the fit. It hears the loop's INFO
    records, so the ``em_spark`` logger must let INFO through (the CLI sets it so).

    Parameters
    ----------
    run_id : only records of this run are kept (default: the first run seen).
    destination : run id -> metrics URI or None (the run id may only be known once the fit starts).
    tracker : an :class:`em_spark.app.tracking.Tracker`; each new iteration record goes to it too.
    """

    def __init__(
        self,
        run_id: str | None = None,
        destination: Callable[[str], str | None] | None = None,
        s3_endpoint: str | None = None,
        logger: logging.Logger = log,
        pushgateway: str | None = None,
        tracker: Any = None,
    ) -> None:
        super().__init__(logging.DEBUG)
        self.tracker = tracker
        self.run_id = run_id
        self.destination = destination
        self.s3_endpoint = s3_endpoint
        self.pushgateway = pushgateway
        self.records: dict[tuple[int, int], dict[str, Any]] = {}
        self.restarts: dict[int, dict[str, Any]] = {}  # restart (from 1) -> its record, with "assignments"
        self.started = time.time()
        self._logger = logger
        self._previous: list[dict[str, Any]] | None = None  # an earlier attempt's records (resume)
        self._previous_restarts: list[dict[str, Any]] = []
        self._write_failed = False
        self._tracking_failed = False
        self._start_pushed = False

    def __enter__(self) -> IterationRecorder:
        self.started = time.time()
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self)

    @property
    def uri(self) -> str | None:
        return self.destination(self.run_id) if self.destination and self.run_id else None

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, EVENT_ATTR, None)
        if not isinstance(event, dict) or event.get("event") not in ("iteration", "restart"):
            return
        if self.run_id is None:
            self.run_id = event["run_id"]
        if event["run_id"] != self.run_id:
            return
        entry = {k: v for k, v in event.items() if k not in ("event", "run_id")}
        if event["event"] == "restart":
            labels = getattr(record, ASSIGNMENTS_ATTR, None)
            if labels is not None:
                entry["assignments"] = _encode_labels(np.asarray(labels))
            self.restarts[int(entry["restart"])] = entry
            return
        if not self._start_pushed and self.pushgateway:
            self._start_pushed = True  # once per attempt, so a run that hangs is seen (EmSparkRunTooLong)
            try:
                _push(self.pushgateway, PUSH_JOB, self.run_id, started_registry(self.started), "start")
            except Exception as exc:  # noqa: BLE001 -- a logging handler must never fail the fit
                log.warning("run=%s: could not push the run's start: %s", self.run_id, exc)
        weights = getattr(record, WEIGHTS_ATTR, None)
        if weights is not None:
            entry["weights"] = list(weights)
        if self._previous is None:
            self._previous = self._earlier_records(_key(entry))
        self.records[_key(entry)] = entry
        if self.tracker is not None and not self._tracking_failed:
            try:
                self.tracker.iteration(self.run_id, entry)
            except Exception as exc:  # noqa: BLE001 -- tracking never fails the fit
                self._tracking_failed = True
                log.warning("run=%s: cannot log iterations to MLflow (%s); the fit goes on", self.run_id, exc)
        if self.uri and not self._write_failed:
            try:
                write_metrics(self.uri, self.document(), self.s3_endpoint)
            except Exception as exc:  # noqa: BLE001 -- metrics never fail the fit
                self._write_failed = True
                log.warning(
                    "run=%s: cannot write metrics to %s (%s); retrying when the fit ends", self.run_id, self.uri, exc
                )

    def _earlier_records(self, first: tuple[int, int] | None) -> list[dict[str, Any]]:
        """Records of earlier attempts of this run from the existing file, before ``first``.

        A resumed fit continues after them; a fresh fit (first = (1, 1)) replaces them all."""
        uri = self.uri
        if not uri:
            return []
        try:
            doc = read_metrics(uri, self.s3_endpoint)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 -- an unreadable earlier file only loses history
            log.warning("run=%s: ignoring the unreadable metrics file %s: %s", self.run_id, uri, exc)
            return []
        if doc.get("runId") != self.run_id:
            return []
        restarts = [r for r in doc.get("perRestart", []) if isinstance(r, dict) and "restart" in r]
        self._previous_restarts = [r for r in restarts if first is None or int(r["restart"]) < first[0]]
        kept = [r for r in doc.get("perIteration", []) if isinstance(r, dict) and "restart" in r and "iteration" in r]
        return [r for r in kept if first is None or _key(r) < first]

    def all_records(self) -> list[dict[str, Any]]:
        """This attempt's records after any kept from earlier attempts, in (restart, iteration) order."""
        if self._previous is None:
            self._previous = self._earlier_records(None)
        merged = {_key(r): r for r in self._previous}
        merged.update(self.records)
        return [merged[k] for k in sorted(merged)]

    def restart_records(self) -> list[dict[str, Any]]:
        """One record per finished restart (earlier attempts' first), in restart order."""
        if self._previous is None:
            self._previous = self._earlier_records(None)
        merged = {int(r["restart"]): r for r in self._previous_restarts}
        merged.update(self.restarts)
        return [merged[k] for k in sorted(merged)]

    def document(self, model: Any = None, **facts: Any) -> dict[str, Any]:
        return build_metrics(self.run_id, self.all_records(), model, restarts=self.restart_records(), **facts)


def _encode_labels(labels: np.ndarray) -> str:
    """Hard assignments (int, -1 for none) as base64 of zlib-compressed int32: a few KiB for 10,000 rows."""
    return base64.b64encode(zlib.compress(np.asarray(labels, dtype="<i4").tobytes(), 6)).decode("ascii")


def _decode_labels(text: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i4").astype(np.int64)


def build_metrics(
    run_id: str | None,
    records: Iterable[dict[str, Any]] = (),
    model: Any = None,
    *,
    restarts: Iterable[dict[str, Any]] = (),
    wall_seconds: float | None = None,
    model_path: str | None = None,
    executor_core_seconds: float | None = None,
    drift: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The metrics document: per-iteration records, and with a fitted ``model`` the run's outcome.

    ``restarts``: one record per finished restart (the loop's restart events: ``entropy`` and
    base64 ``assignments`` on the sample), from which ``posterior`` is computed. ``drift``: for
    a nightly retrain, how far the new model moved from production (:func:`em_spark.models.
    diagnostics.component_drift` plus the average log-likelihood drop)."""
    records = list(records)
    restarts = list(restarts)
    doc: dict[str, Any] = {
        "format": METRICS_FORMAT,
        "status": "running" if model is None else "finished",
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runId": run_id,
    }
    if model is None:
        if records:
            last = records[-1]
            doc.update(restart=last["restart"], iteration=last["iteration"], averageLogLikelihood=last["avgLogLik"])
        doc["perIteration"] = records
        doc["perRestart"] = restarts
        return doc
    s = model.summary
    family = model.family
    best = s.bestRestart + 1
    best_records = [r for r in records if r["restart"] == best]
    iteration_seconds = [float(r["seconds"]) for r in best_records] or [float(v) for v in s.iterationSeconds]
    doc.update(
        runId=s.runId,
        family=family.name,
        k=int(s.k),
        numFeatures=int(model.numFeatures),
        modelPath=model_path,
        rows=int(s.numRows),
        totalWeight=float(s.totalWeight),
        iterations=int(s.numIter),
        converged=bool(s.converged),
        stoppedBy=str(getattr(s, "stoppedBy", "") or ("tol" if s.converged else "maxIter")),
        epochs=float(getattr(s, "epochs", s.numIter)),
        heldOutAverageLogLikelihood=_last_or_none(getattr(s, "heldOutLogLikelihoodHistory", [])),
        bestRestart=best,
        restarts=max([r["restart"] for r in records], default=best),
        logLikelihood=float(s.logLikelihood),
        averageLogLikelihood=float(s.averageLogLikelihood),
        logLikelihoodHistory=[float(v) for v in s.logLikelihoodHistory],
        iterationSeconds=iteration_seconds,
        secondsPerIteration=float(np.mean(iteration_seconds)) if iteration_seconds else None,
        wallSeconds=None if wall_seconds is None else float(wall_seconds),
        executorCoreSeconds=None if executor_core_seconds is None else float(executor_core_seconds),
        model=model_name,
        weightsName=family.component_weights_name,
        componentWeights=family.component_weights(model.arrays).tolist(),
        criteria=_criteria(model),
        posterior=_posterior(restarts, best),
        perIteration=records,
        perRestart=restarts,
    )
    if drift is not None:
        doc["drift"] = drift
    return doc


def _last_or_none(values: list[float]) -> float | None:
    return float(values[-1]) if values else None


def _posterior(restarts: list[dict[str, Any]], best: int) -> dict[str, Any]:
    """Posterior entropy of the best restart and its stability against the other restarts, on
    the initialization sample. Restarts without assignments (a family that cannot score the
    sample) are left out; ``stability`` is None with a single restart."""
    by_restart = {int(r["restart"]): r for r in restarts}
    mine = by_restart.get(best) or {}
    labelled = {k: _decode_labels(r["assignments"]) for k, r in by_restart.items() if r.get("assignments")}
    stability = None
    if best in labelled:
        others = [k for k in sorted(labelled) if k != best]
        stability = posterior_stability(labelled[best], [labelled[k] for k in others])
        if stability is not None:
            stability["restarts"] = others
    return {
        "entropy": mine.get("entropy"),
        "sampleRows": None if best not in labelled else int(labelled[best].shape[0]),
        "stability": stability,
    }


def _criteria(model: Any) -> dict[str, Any]:
    """The final criteria from the training log-likelihood (that of the last E-step): no extra pass
    over the data. BIC's sample size is the summary's ``observationWeight`` (models.criteria)."""
    s = model.summary
    p = int(model.family.n_parameters(model.arrays))
    n = s.observationWeight
    ll = float(s.logLikelihood)
    return {
        "logLikelihood": ll,
        "averageLogLikelihood": float(s.averageLogLikelihood),
        "nParameters": p,
        "bic": bic(ll, p, float(n)) if n is not None and n > 0 else None,
        "aic": aic(ll, p),
    }


# --- executor time ------------------------------------------------------------------------


def executor_core_seconds(spark: Any, run_id: str, wait_seconds: float = 2.0) -> float | None:
    """Core-seconds the executors spent in this run's Spark jobs, from the classic session's
    status store (what the Spark UI shows): the summed ``executorRunTime`` of the stages of every
    job whose description starts with ``em_spark run=<run_id> `` (the loop labels each E-step's
    job so, and the load), times ``spark.task.cpus``.

    None where it cannot be known: a Spark Connect session has no ``sparkContext`` (the client
    sees no task metrics; the server's UI / REST API or its event log has them), and jobs the UI
    no longer retains (``spark.ui.retainedJobs`` / ``retainedStages``) are not counted."""
    try:
        sc = spark.sparkContext
        jsc = sc._jsc.sc()
    except Exception:  # noqa: BLE001 -- Connect raises JVM_ATTRIBUTE_NOT_SUPPORTED; any failure means unknown
        return None
    try:
        # The listener bus delivers job and stage events asynchronously; waitUntilEmpty is an
        # internal API (private[spark]): without it the count may miss the last job.
        with contextlib.suppress(Exception):
            jsc.listenerBus().waitUntilEmpty(int(wait_seconds * 1000))
        store = jsc.statusStore()
        prefix = f"em_spark run={run_id} "
        stage_ids: set[int] = set()
        jobs = store.jobsList(None).iterator()
        while jobs.hasNext():
            job = jobs.next()
            description = job.description()
            if description.isDefined() and (description.get() + " ").startswith(prefix):
                ids = job.stageIds().iterator()
                while ids.hasNext():
                    stage_ids.add(int(ids.next()))
        gateway = sc._gateway
        no_tasks, no_quantiles = gateway.jvm.java.util.ArrayList(), gateway.new_array(gateway.jvm.double, 0)
        millis = 0
        for stage_id in sorted(stage_ids):
            try:  # every attempt of the stage: a retried stage's cores were spent too
                attempts = store.stageData(stage_id, False, no_tasks, False, no_quantiles).iterator()
            except Exception:  # noqa: BLE001 -- NoSuchElementException: skipped, or no longer retained
                continue
            while attempts.hasNext():
                millis += int(attempts.next().executorRunTime())
        cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    except Exception as exc:  # noqa: BLE001 -- monitoring never fails the run
        log.warning("run=%s: cannot read executor time from the Spark status store: %s", run_id, exc)
        return None
    return millis / 1000.0 * cpus


# --- Prometheus ----------------------------------------------------------------------


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float; None for None, text, NaN, infinities and what is not a number."""
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _Gauges:
    """Gauges of one registry that share their label names and values."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self.registry, self.labels = registry, labels
        self.gauges: dict[str, Gauge] = {}

    def set(self, name: str, help_text: str, value: Any, **extra: str) -> None:
        """One sample; nothing for a None or non-finite value. Calls with ``extra`` labels
        (e.g. ``component``) add samples to the same gauge."""
        number = finite_or_none(value)
        if number is None:
            return
        names = (*self.labels, *extra)
        gauge = self.gauges.get(name)
        if gauge is None:
            gauge = self.gauges[name] = Gauge(name, help_text, names, registry=self.registry)
        (gauge.labels(**self.labels, **extra) if names else gauge).set(number)


def run_registry(metrics: dict[str, Any], now: float | None = None) -> CollectorRegistry:
    """The finished run's metrics as ``prometheus_client`` gauges, labelled by ``family`` and, for
    a nightly retrain, ``model`` (the registered model's name). The run id is not a
    label here: the Pushgateway's grouping key carries it."""
    registry = CollectorRegistry(auto_describe=True)
    labels = {"family": str(metrics.get("family") or "unknown")}
    if metrics.get("model"):
        labels["model"] = str(metrics["model"])
    g = _Gauges(registry, labels)
    seconds = metrics.get("iterationSeconds") or []
    converged = metrics.get("converged")
    g.set("em_spark_iterations", "EM iterations of the best restart", metrics.get("iterations"))
    g.set("em_spark_converged", "1 if the best restart converged", None if converged is None else int(converged))
    if metrics.get("stoppedBy"):
        # one series per run, labelled by what ended it: tol (batch), heldOut (online, converged on
        # the held-out set) or maxIter, so an alert can tell a budget stop from convergence
        g.set(
            "em_spark_stopped_by",
            "1, labelled by what ended the best restart: tol, heldOut (online EM's held-out set) or maxIter",
            1,
            reason=str(metrics["stoppedBy"]),
        )
    g.set("em_spark_epochs", "data passes' worth of rows the best restart read", metrics.get("epochs"))
    g.set(
        "em_spark_held_out_avg_log_likelihood",
        "online EM: the held-out set's last average log-likelihood per row",
        metrics.get("heldOutAverageLogLikelihood"),
    )
    g.set("em_spark_components", "number of components (k)", metrics.get("k"))
    g.set("em_spark_restarts", "restarts fitted", metrics.get("restarts"))
    g.set("em_spark_rows", "rows (sequences) fitted", metrics.get("rows"))
    g.set("em_spark_avg_log_likelihood", "final average log-likelihood per row", metrics.get("averageLogLikelihood"))
    g.set("em_spark_log_likelihood", "final total log-likelihood", metrics.get("logLikelihood"))
    g.set("em_spark_wall_seconds", "wall time of the job", metrics.get("wallSeconds"))
    g.set(
        "em_spark_iteration_seconds_total",
        "seconds spent in the best restart's iterations",
        sum(seconds) if seconds else None,
    )
    g.set(
        "em_spark_seconds_per_iteration",
        "mean seconds per EM iteration (best restart)",
        metrics.get("secondsPerIteration"),
    )
    g.set(
        "em_spark_executor_core_seconds",
        "executor core-seconds of the run's Spark jobs (classic sessions only)",
        metrics.get("executorCoreSeconds"),
    )
    g.set("em_spark_bic", "BIC from the training log-likelihood", (metrics.get("criteria") or {}).get("bic"))
    posterior = metrics.get("posterior") or {}
    g.set(
        "em_spark_posterior_entropy",
        "mean responsibility entropy on the initialization sample / log k (0 sure, 1 uniform)",
        posterior.get("entropy"),
    )
    stability = posterior.get("stability") or {}
    g.set(
        "em_spark_posterior_stability_ari_min",
        "smallest adjusted Rand index between the best restart's and another restart's assignments",
        stability.get("minAri"),
    )
    g.set(
        "em_spark_posterior_stability_ari_mean",
        "mean adjusted Rand index between the best restart's and the other restarts' assignments",
        stability.get("meanAri"),
    )
    weights = metrics.get("componentWeights") or []
    for i, w in enumerate(weights):
        g.set("em_spark_component_weight", "final weight of each component", w, component=str(i))
    if weights:
        g.set("em_spark_min_component_weight", "smallest final component weight", min(weights))
    _drift_gauges(g, metrics.get("drift"))
    started = metrics.get("startedAt")
    g.set("em_spark_run_started_timestamp_seconds", "when this attempt of the run started (Unix time)", started)
    g.set(
        "em_spark_finished_timestamp_seconds",
        "when the run finished (Unix time)",
        time.time() if now is None else now,
    )
    return registry


def _drift_gauges(g: _Gauges, drift: dict[str, Any] | None) -> None:
    if not drift:
        return
    g.set(
        "em_spark_drift_avg_log_likelihood_drop",
        "production's holdout avg log-likelihood minus tonight's (nats/row; positive: worse)",
        drift.get("drop"),
    )
    g.set("em_spark_drift_threshold", "the configured drift threshold (nats/row)", drift.get("threshold"))
    for i, value in enumerate(drift.get("weightShift") or []):
        g.set("em_spark_drift_weight_shift", "|new - production| share of each component", value, component=str(i))
    g.set("em_spark_drift_max_weight_shift", "largest component weight shift", drift.get("maxWeightShift"))
    for i, value in enumerate(drift.get("divergence") or []):
        g.set(
            "em_spark_drift_component_divergence",
            "symmetric divergence between production's and the new model's component",
            value,
            component=str(i),
        )
    g.set("em_spark_drift_max_component_divergence", "largest component divergence", drift.get("maxDivergence"))


def started_registry(started: float) -> CollectorRegistry:
    """A run's start (pushed at its first iteration, so a run that hangs can be seen)."""
    registry = CollectorRegistry(auto_describe=True)
    _Gauges(registry, {}).set(
        "em_spark_run_started_timestamp_seconds", "when this attempt of the run started (Unix time)", started
    )
    return registry


def prometheus_text(metrics: dict[str, Any]) -> str:
    """The finished run's gauges in the Prometheus text exposition format (``generate_latest``)."""
    return generate_latest(run_registry(metrics)).decode()


def _push(
    gateway: str, job: str, run_id: str | None, registry: CollectorRegistry, what: str, timeout: float = 10.0
) -> bool:
    """``push_to_gateway`` (PUT: replaces the group job + run_id); a failure is a warning, never raised."""
    run_id = str(run_id or "unknown")
    try:
        push_to_gateway(gateway, job=job, registry=registry, grouping_key={"run_id": run_id}, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 -- monitoring must not fail a job (URLError, HTTPError, bad URL)
        log.warning("run=%s: could not push metrics to the Pushgateway at %s (%s): %s", run_id, gateway, what, exc)
        return False
    log.info("run=%s: %s metrics pushed to %s (job %s)", run_id, what, gateway, job)
    return True


def push_metrics(gateway: str, metrics: dict[str, Any], timeout: float = 10.0) -> bool:
    """Push the finished run's gauges to ``gateway`` under job ``em_spark`` and its run id; True
    on success. A failure is logged as a warning and never raised: monitoring must not fail a job."""
    return _push(gateway, PUSH_JOB, metrics.get("runId"), run_registry(metrics), "run", timeout)


def failure_registry(error: BaseException, model: str | None = None, now: float | None = None) -> CollectorRegistry:
    """A failed run's gauge: ``em_spark_run_failure_timestamp_seconds{error=<exception class>}``."""
    registry = CollectorRegistry(auto_describe=True)
    labels = {"error": type(error).__name__, **({"model": model} if model else {})}
    _Gauges(registry, labels).set(
        "em_spark_run_failure_timestamp_seconds",
        "when the run failed (Unix time), labelled by the error's class",
        time.time() if now is None else now,
    )
    return registry


def push_failure(
    gateway: str, run_id: str | None, error: BaseException, *, job: str = PUSH_JOB, model: str | None = None
) -> bool:
    """Push that the run failed (:func:`failure_registry`; ``ModelError`` for a model that cannot
    be fitted as asked). A later success under the same run id replaces the group."""
    return _push(gateway, job, run_id, failure_registry(error, model), "failure")


def nightly_registry(
    report: dict[str, Any] | None, *, error: BaseException | None = None, model: str, now: float | None = None
) -> CollectorRegistry:
    """One night's outcome as gauges labelled ``model``: success (or the failure and its error
    class), whether it retrained and promoted, how many nights in a row the promotion gate kept
    production, and the drift it measured."""
    now = time.time() if now is None else now
    registry = CollectorRegistry(auto_describe=True)
    g = _Gauges(registry, {"model": model})
    g.set("em_spark_nightly_timestamp_seconds", "when this night's attempt ended (Unix time)", now)
    g.set("em_spark_nightly_success", "1 if the night's run finished, 0 if it failed", 0 if error else 1)
    if error is not None:
        _Gauges(registry, {"model": model, "error": type(error).__name__}).set(
            "em_spark_nightly_failure_timestamp_seconds", "when the night's run failed (Unix time)", now
        )
        return registry
    report = report or {}
    g.set("em_spark_nightly_success_timestamp_seconds", "when the night's run last finished (Unix time)", now)
    g.set(
        "em_spark_nightly_retrained", "1 if the night fitted a new version", int(report.get("newVersion") is not None)
    )
    g.set(
        "em_spark_nightly_promoted", "1 if the night promoted a new version", int(report.get("decision") == "promoted")
    )
    g.set(
        "em_spark_nightly_gate_kept",
        "1 if the promotion gate rejected the night's new version (production kept)",
        int(bool(report.get("gateKept"))),
    )
    g.set(
        "em_spark_nightly_gate_kept_nights",
        "nights in a row (this one included) the promotion gate kept production",
        report.get("gateKeptNights", 0),
    )
    g.set("em_spark_nightly_production_version", "production version after the night", report.get("productionAfter"))
    # --- validation delta (dashboards, em-spark slo): the new version's holdout avg
    # log-likelihood minus production's on the same holdout (positive: the new one is better).
    night_metrics = report.get("metrics") or {}
    new_holdout = (night_metrics.get("new") or {}).get("holdoutAvgLogLik")
    production_holdout = night_metrics.get("productionOnSameHoldout")
    g.set(
        "em_spark_nightly_validation_delta",
        "new version's holdout avg log-likelihood minus production's on the same holdout (nats/row)",
        None if new_holdout is None or production_holdout is None else float(new_holdout) - float(production_holdout),
    )
    # --- end validation delta
    drift = report.get("drift") or {}
    g.set(
        "em_spark_nightly_drift_avg_log_likelihood_drop",
        "production's baseline holdout avg log-likelihood minus tonight's (nats/row)",
        drift.get("drop"),
    )
    g.set("em_spark_nightly_drift_threshold", "the configured drift threshold (nats/row)", drift.get("threshold"))
    g.set(
        "em_spark_nightly_max_weight_shift",
        "largest component weight shift of the new version",
        drift.get("maxWeightShift"),
    )
    g.set(
        "em_spark_nightly_max_component_divergence",
        "largest divergence between a production and a new component",
        drift.get("maxDivergence"),
    )
    return registry


def push_nightly(
    gateway: str, report: dict[str, Any] | None, *, model: str, run_id: str, error: BaseException | None = None
) -> bool:
    """Push one night's outcome under job ``em_spark_nightly`` and the night's run id."""
    return _push(gateway, NIGHTLY_JOB, run_id, nightly_registry(report, error=error, model=model), "nightly")


def new_run_id(kind: str) -> str:
    """A run id for a run that was given none (``<kind>-<UTC time>-<random>``)."""
    import uuid

    return time.strftime(f"{kind}-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


def imputation_registry(doc: dict[str, Any]) -> CollectorRegistry:
    """An impute run's gauges: accuracy on entries hidden from observed data, and row counts."""
    registry = CollectorRegistry(auto_describe=True)
    g = _Gauges(registry, {"model": str(doc.get("model") or "")})
    accuracy = doc.get("imputation") or {}
    g.set("em_spark_imputation_rmse", "RMSE of imputed vs hidden observed entries", accuracy.get("rmse"))
    g.set(
        "em_spark_imputation_baseline_rmse",
        "RMSE of column means vs the same hidden entries (the bar to beat)",
        accuracy.get("baselineRmse"),
    )
    g.set(
        "em_spark_imputation_masked_entries",
        "observed entries hidden to measure accuracy",
        accuracy.get("maskedEntries"),
    )
    g.set("em_spark_imputed_rows", "rows with at least one entry filled", doc.get("imputedRows"))
    g.set("em_spark_rows", "rows read", doc.get("rows"))
    g.set("em_spark_finished_timestamp_seconds", "when the run finished (Unix time)", time.time())
    return registry


def publish_imputation(
    run_id: str, result: dict[str, Any], uri: str | None, s3_endpoint: str | None, pushgateway: str | None
) -> dict[str, Any]:
    """Write (when ``uri``) and push (when ``pushgateway``) an impute run's metrics; failures are warnings."""
    doc = {
        "format": METRICS_FORMAT,
        "kind": "impute",
        "status": "finished",
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runId": run_id,
        "model": result.get("model"),
        "rows": result.get("rows"),
        "imputedRows": result.get("imputedRows"),
        "unreadable": result.get("unreadable"),
        "output": result.get("output"),
        "imputation": result.get("accuracy"),
    }
    if uri:
        try:
            write_metrics(uri, doc, s3_endpoint)
            log.info("run=%s: metrics written to %s", run_id, uri)
        except Exception as exc:  # noqa: BLE001 -- metrics never fail the run
            log.warning("run=%s: could not write metrics to %s: %s", run_id, uri, exc)
    if pushgateway:
        _push(pushgateway, PUSH_JOB, run_id, imputation_registry(doc), "imputation")
    return doc


def publish(
    recorder: IterationRecorder,
    model: Any,
    *,
    wall_seconds: float | None = None,
    model_path: str | None = None,
    pushgateway: str | None = None,
    executor_core_seconds: float | None = None,
    drift: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Write the finished run's metrics file (where the recorder's destination says) and push
    them (when ``pushgateway`` is set). Failures are warnings: the model is already fitted."""
    recorder.run_id = model.summary.runId
    doc = recorder.document(
        model,
        wall_seconds=wall_seconds,
        model_path=model_path,
        executor_core_seconds=executor_core_seconds,
        drift=drift,
        model_name=model_name,
    )
    doc["startedAt"] = recorder.started
    uri = recorder.uri
    if uri:
        try:
            write_metrics(uri, doc, recorder.s3_endpoint)
            log.info("run=%s: metrics written to %s", doc["runId"], uri)
        except Exception as exc:  # noqa: BLE001 -- metrics never fail the run
            log.warning("run=%s: could not write metrics to %s: %s", doc["runId"], uri, exc)
    if pushgateway:
        push_metrics(pushgateway, doc)
    return doc
