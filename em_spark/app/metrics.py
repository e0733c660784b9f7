"""Run metrics: collect them from the fit, write ``metrics.json``, push to a Prometheus Pushgateway.

The EM loop logs one record per iteration on the ``em_spark`` logger, carrying the line's
fields as ``record.em_event`` (a dict) and the component weights after the M-step as
``record.em_weights``. :class:`IterationRecorder` is a logging handler that keeps them, and
optionally rewrites the metrics file after every iteration (``status: running``), so the
engine knows nothing of metrics files. :func:`publish` writes the final document
(``status: finished``) and pushes it.

The metrics file is JSON, written through the storage layer (any ``pyarrow.fs`` URI, S3
included). Restarts and iterations are numbered from 1, as in the log lines. A resumed run
keeps the per-iteration records the earlier attempts wrote.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from em_spark.models.criteria import aic, bic

__all__ = [
    "METRICS_FILE",
    "IterationRecorder",
    "build_metrics",
    "json_safe",
    "metrics_uri",
    "prometheus_text",
    "publish",
    "push_metrics",
    "read_metrics",
    "write_metrics",
]

log = logging.getLogger("em_spark")

METRICS_FILE = "metrics.json"
METRICS_FORMAT = 1
PUSH_JOB = "em_spark"
# Record attributes the EM loop sets on its per-iteration log record (em_spark.engine.loop.fit_em).
EVENT_ATTR, WEIGHTS_ATTR = "em_event", "em_weights"


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
    """

    def __init__(
        self,
        run_id: str | None = None,
        destination: Callable[[str], str | None] | None = None,
        s3_endpoint: str | None = None,
        logger: logging.Logger = log,
    ) -> None:
        super().__init__(logging.DEBUG)
        self.run_id = run_id
        self.destination = destination
        self.s3_endpoint = s3_endpoint
        self.records: dict[tuple[int, int], dict[str, Any]] = {}
        self._logger = logger
        self._previous: list[dict[str, Any]] | None = None  # an earlier attempt's records (resume)
        self._write_failed = False

    def __enter__(self) -> IterationRecorder:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self)

    @property
    def uri(self) -> str | None:
        return self.destination(self.run_id) if self.destination and self.run_id else None

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, EVENT_ATTR, None)
        if not isinstance(event, dict) or event.get("event") != "iteration":
            return
        if self.run_id is None:
            self.run_id = event["run_id"]
        if event["run_id"] != self.run_id:
            return
        entry = {k: v for k, v in event.items() if k not in ("event", "run_id")}
        weights = getattr(record, WEIGHTS_ATTR, None)
        if weights is not None:
            entry["weights"] = list(weights)
        if self._previous is None:
            self._previous = self._earlier_records(_key(entry))
        self.records[_key(entry)] = entry
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
        kept = [r for r in doc.get("perIteration", []) if isinstance(r, dict) and "restart" in r and "iteration" in r]
        return [r for r in kept if first is None or _key(r) < first]

    def all_records(self) -> list[dict[str, Any]]:
        """This attempt's records after any kept from earlier attempts, in (restart, iteration) order."""
        if self._previous is None:
            self._previous = self._earlier_records(None)
        merged = {_key(r): r for r in self._previous}
        merged.update(self.records)
        return [merged[k] for k in sorted(merged)]

    def document(self, model: Any = None, **facts: Any) -> dict[str, Any]:
        return build_metrics(self.run_id, self.all_records(), model, **facts)


def build_metrics(
    run_id: str | None,
    records: Iterable[dict[str, Any]] = (),
    model: Any = None,
    *,
    wall_seconds: float | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """The metrics document: per-iteration records, and with a fitted ``model`` the run's outcome."""
    records = list(records)
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
        return doc
    s = model.summary
    family = model.family
    best = s.bestRestart + 1
    best_records = [r for r in records if r["restart"] == best]
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
        bestRestart=best,
        restarts=max([r["restart"] for r in records], default=best),
        logLikelihood=float(s.logLikelihood),
        averageLogLikelihood=float(s.averageLogLikelihood),
        logLikelihoodHistory=[float(v) for v in s.logLikelihoodHistory],
        iterationSeconds=[float(r["seconds"]) for r in best_records] or [float(v) for v in s.iterationSeconds],
        wallSeconds=None if wall_seconds is None else float(wall_seconds),
        weightsName=family.component_weights_name,
        componentWeights=family.component_weights(model.arrays).tolist(),
        criteria=_criteria(model),
        perIteration=records,
    )
    return doc


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


# --- Prometheus ----------------------------------------------------------------------


def _label_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, value: Any, labels: dict[str, Any]) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    number = float(value)
    text = str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
    body = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{body}}} {text}" if body else f"{name} {text}"


def prometheus_text(metrics: dict[str, Any]) -> str:
    """The finished run's metrics in the Prometheus text exposition format (gauges).

    The run id is not a label here: the Pushgateway's grouping key carries it."""
    labels = {"family": metrics.get("family") or "unknown"}
    seconds = metrics.get("iterationSeconds") or []
    gauges = [
        ("em_spark_iterations", "EM iterations of the best restart", metrics.get("iterations")),
        (
            "em_spark_converged",
            "1 if the best restart converged",
            None if metrics.get("converged") is None else int(metrics["converged"]),
        ),
        ("em_spark_components", "number of components (k)", metrics.get("k")),
        ("em_spark_rows", "rows (sequences) fitted", metrics.get("rows")),
        ("em_spark_avg_log_likelihood", "final average log-likelihood per row", metrics.get("averageLogLikelihood")),
        ("em_spark_log_likelihood", "final total log-likelihood", metrics.get("logLikelihood")),
        ("em_spark_wall_seconds", "wall time of the job", metrics.get("wallSeconds")),
        (
            "em_spark_iteration_seconds_total",
            "seconds spent in the best restart's iterations",
            sum(seconds) if seconds else None,
        ),
        ("em_spark_bic", "BIC from the training log-likelihood", (metrics.get("criteria") or {}).get("bic")),
        ("em_spark_finished_timestamp_seconds", "when the run finished (Unix time)", time.time()),
    ]
    lines: list[str] = []
    for name, help_text, value in gauges:
        sample = _sample(name, value, labels)
        if sample is not None:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", sample]
    weights = metrics.get("componentWeights")
    if weights:
        name = "em_spark_component_weight"
        lines += [f"# HELP {name} final weight of each component", f"# TYPE {name} gauge"]
        lines += [s for i, w in enumerate(weights) if (s := _sample(name, w, {**labels, "component": i}))]
        smallest = _sample("em_spark_min_component_weight", min(weights), labels)
        if smallest is not None:
            lines += [
                "# HELP em_spark_min_component_weight smallest final component weight",
                "# TYPE em_spark_min_component_weight gauge",
                smallest,
            ]
    return "\n".join(lines) + "\n"


def push_metrics(gateway: str, metrics: dict[str, Any], timeout: float = 10.0) -> bool:
    """PUT the metrics to ``<gateway>/metrics/job/em_spark/run_id/<runId>``; True on success.

    A failure is logged as a warning and never raised: monitoring must not fail a job."""
    run_id = str(metrics.get("runId") or "unknown")
    url = f"{gateway.rstrip('/')}/metrics/job/{PUSH_JOB}/run_id/{urllib.parse.quote(run_id, safe='')}"
    request = urllib.request.Request(
        url,
        data=prometheus_text(metrics).encode(),
        method="PUT",
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("run=%s: could not push metrics to the Pushgateway at %s: %s", run_id, gateway, exc)
        return False
    log.info("run=%s: metrics pushed to %s", run_id, url)
    return True


def publish(
    recorder: IterationRecorder,
    model: Any,
    *,
    wall_seconds: float | None = None,
    model_path: str | None = None,
    pushgateway: str | None = None,
) -> dict[str, Any]:
    """Write the finished run's metrics file (where the recorder's destination says) and push
    them (when ``pushgateway`` is set). Failures are warnings: the model is already fitted."""
    recorder.run_id = model.summary.runId
    doc = recorder.document(model, wall_seconds=wall_seconds, model_path=model_path)
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
