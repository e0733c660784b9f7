"""The nightly retrain: drift check, warm-started retrain, holdout gate, stable component ids.

One night is identified by ``<model name>-<date>``: that is the run id of its fit (so a
killed fit resumes from its checkpoints), the key of its registered version (so a
re-run never registers a duplicate), and the name of its report (whose conditional
create makes a finished night a no-op on re-run).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from em_spark.app.common import estimator_from_config, read_input, require_input, resolve_local, spark_session
from em_spark.app.config import ConfigError, JobConfig
from em_spark.models.diagnostics import component_drift

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from em_spark.api import EMModel
    from em_spark.storage.registry import ModelRegistry

__all__ = ["holdout_mask", "match_components", "run_nightly"]

log = logging.getLogger("em_spark")

REPORT_FILE = "report.json"


def match_components(family: Any, reference: dict, candidate: dict) -> tuple[np.ndarray, np.ndarray]:
    """Order of ``candidate``'s components that best matches ``reference``'s.

    Returns ``order`` (k,), where candidate component ``order[j]`` takes id j, and the (k,)
    distance of each matched pair (the family's ``component_distances``: Bhattacharyya for
    Gaussian and categorical emissions): a minimum-cost assignment on the
    parameters, so downstream users keep their component ids across retrains.
    """
    from scipy.optimize import linear_sum_assignment

    cost = family.component_distances(reference, candidate)  # [reference j, candidate i]
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=int)
    order[rows] = cols
    return order, cost[rows, cols][np.argsort(rows)]


def holdout_mask(df: Any, features: Any, fraction: float, sequences: bool = False, key_col: str | None = None) -> Any:
    """A Column that is true for about ``fraction`` of the rows, chosen by a hash of the features.

    Depends on the row's content only, so a re-run (or a resumed run) holds out the same rows.
    ``sequences``: one sequence per row, hashed whole. ``key_col``: hash this column instead
    (the sequence id of long-format data, so all steps of a sequence go the same way).
    """
    from pyspark.sql import functions as F

    from em_spark.engine.spark_source import input_array

    key = F.col(key_col) if key_col else input_array(df, features, sequences)
    return F.pmod(F.xxhash64(key), F.lit(10_000)) < F.lit(round(fraction * 10_000))


def _read_report(fs: Any, path: str, uri: str) -> dict:
    from em_spark.storage import read_object

    try:
        return json.loads(read_object(fs, path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"the report {uri} exists but is not valid JSON ({exc}); inspect it, and delete it to re-run the night"
        ) from None


def _avg_loglik(model: Any, df: Any) -> float:
    return model.criteria(df)["avgLogLik"]


def _night_date(config: JobConfig) -> str:
    return config.nightly.date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def run_nightly(config: JobConfig) -> dict[str, Any]:
    """Run (or confirm) one night's retrain; return the report that was written.

    ``config`` is not changed: the night's input path, run id, checkpoints and restarts are
    set on copies of it (``dataclasses.replace``). With ``run.pushgateway``, the night's
    outcome (or its failure and the error's class) is pushed under the job ``em_spark_nightly``
    and the night's run id; a re-run of the night replaces it."""
    try:
        report = _run_nightly(config)
    except Exception as exc:
        _push_night(config, None, exc)
        raise
    _push_night(config, report, None)
    return report


def _push_night(config: JobConfig, report: dict[str, Any] | None, error: BaseException | None) -> None:
    if not config.run.pushgateway:
        return
    from em_spark.app import metrics

    name = config.registry.modelName or "unknown"
    metrics.push_nightly(
        config.run.pushgateway, report, model=name, run_id=f"{name}-{_night_date(config)}", error=error
    )


def _previous_report(
    registry_uri: str, name: str, date: str, s3_endpoint: str | None, look_back_days: int = 7
) -> dict | None:
    """The most recent earlier night's report within ``look_back_days`` (nights may be skipped), or None."""
    from em_spark.storage import exists, join, read_object, resolve

    day = datetime.date.fromisoformat(date)
    for back in range(1, look_back_days + 1):
        earlier = (day - datetime.timedelta(days=back)).isoformat()
        fs, path = resolve(join(registry_uri, name, "runs", f"{name}-{earlier}", REPORT_FILE), s3_endpoint=s3_endpoint)
        if exists(fs, path):
            try:
                return json.loads(read_object(fs, path))
            except (ValueError, UnicodeDecodeError):
                return None  # a damaged report: the streak starts again (the night itself refuses it)
    return None


def _run_nightly(config: JobConfig) -> dict[str, Any]:
    from em_spark import __version__
    from em_spark.models import FAMILIES
    from em_spark.storage import ObjectExistsError, exists, join, resolve, validate_name, write_object
    from em_spark.storage.registry import ModelRegistry

    started = time.perf_counter()
    timings: dict[str, float] = {}
    registry_uri = resolve_local(config.registry.uri)
    name = config.registry.modelName
    if not registry_uri or not name:
        raise ConfigError(f"the nightly job needs registry.uri and registry.modelName (in {config.source})")
    date = _night_date(config)
    run_id = validate_name(f"{name}-{date}", "run id")
    endpoint = config.storage.s3Endpoint
    registry = ModelRegistry(registry_uri, s3_endpoint=endpoint)
    report_uri = join(registry_uri, name, "runs", run_id, REPORT_FILE)
    fs, report_path = resolve(report_uri, s3_endpoint=endpoint)
    if exists(fs, report_path):
        done: dict[str, Any] = _read_report(fs, report_path, report_uri)
        log.info(
            "nightly %s: the night %s is already done (%s); report at %s", name, date, done["decision"], report_uri
        )
        return {**done, "alreadyDone": True}

    # --- runbooks (held lease): a second start of a running night stops here, before Spark
    # starts and reads the night's data; the fit still takes the lease itself and decides races.
    from em_spark.storage import RunLock

    RunLock(
        resolve_local(config.run.checkpointDir) or join(registry_uri, name, "checkpoints"), run_id, s3_endpoint=endpoint
    ).ensure_free()
    # --- end runbooks
    template = config.nightly.inputPath or config.input.path
    if not template:
        raise ConfigError(f"the nightly job needs nightly.inputPath or input.path (in {config.source})")
    config = dataclasses.replace(config, input=dataclasses.replace(config.input, path=template.replace("{date}", date)))
    require_input(config)
    # Before Spark starts: a damaged production alias is refused at once, not after the read.
    production_version = (
        registry.alias(name) if registry.exists() and name in registry.names() else None
    )  # first night: none
    from em_spark.app import tracking

    tracker = tracking.open_tracker(config)  # mlflow missing or unreachable: refused before Spark starts
    spark = spark_session(config)
    data = read_input(spark, config)
    features = config.input.features
    sequential = FAMILIES[config.model.family].sequential
    holdout_flag = holdout_mask(data, features, config.nightly.holdoutFraction, sequential, config.input.sequenceCol)
    train = data.where(~holdout_flag).cache()
    holdout = data.where(holdout_flag).cache()
    rows = {"train": train.count(), "holdout": holdout.count()}
    timings["read"] = time.perf_counter() - started

    production = None
    if production_version is not None:
        production = _registered_model(config, registry, name, production_version)

    # Drift: how much worse the production model explains tonight's data than the
    # holdout it was accepted on. Positive = the world moved away from the model.
    drift = None
    if production is not None and production_version is not None:  # (one is set when the other is)
        t = time.perf_counter()
        baseline = registry.get(name, production_version).metrics.get("holdoutAvgLogLik")
        current = _avg_loglik(production, data)
        drift = {
            "baselineAvgLogLik": baseline,
            "currentAvgLogLik": current,
            "drop": None if baseline is None else baseline - current,
            "threshold": config.nightly.driftThreshold,
        }
        timings["drift"] = time.perf_counter() - t

    reasons = []
    if config.nightly.force:
        reasons.append("forced")
    if production is None or drift is None:  # (drift is measured whenever there is a production model)
        reasons.append("no production model yet")
    elif drift["drop"] is None:
        reasons.append("production has no recorded holdout baseline")
    elif drift["drop"] > config.nightly.driftThreshold:
        reasons.append(f"drift {drift['drop']:.4f} nats/row above the threshold {config.nightly.driftThreshold}")

    report: dict[str, Any] = {
        "model": name,
        "date": date,
        "runId": run_id,
        "input": config.input.path,
        "rows": rows,
        "productionBefore": production_version,
        "drift": drift,
        "packageVersion": __version__,
    }
    if not reasons:
        assert drift is not None  # (no reason to retrain: production was measured)
        report.update(
            decision="kept",
            reason=f"drift {drift['drop']:.4f} nats/row is within the threshold {config.nightly.driftThreshold}; no retrain",
            productionAfter=production_version,
        )
    else:
        report.update(
            _retrain(
                config, registry, name, run_id, production, production_version, train, holdout, timings, drift, tracker
            )
        )
        report["retrainReasons"] = reasons
        if report.get("componentDrift") is not None:  # the report's drift has both measures
            report["drift"] = {**report["drift"], **report.pop("componentDrift")}
    # The promotion gate kept production although the night retrained: counted in a row, so an
    # alert can tell one rejected night from a model that can no longer be replaced.
    report["gateKept"] = report["decision"] == "kept" and report.get("newVersion") is not None
    previous = _previous_report(registry_uri, name, date, endpoint) if report["gateKept"] else None
    report["gateKeptNights"] = (int((previous or {}).get("gateKeptNights") or 0) + 1) if report["gateKept"] else 0
    timings["total"] = time.perf_counter() - started
    report["timings"] = timings
    report["finishedAt"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    train.unpersist()
    holdout.unpersist()

    try:
        write_object(fs, report_path, json.dumps(report, indent=2, default=float).encode(), overwrite=False)
    except ObjectExistsError:
        # Another run of the same night finished first; its report is the record.
        report = {**_read_report(fs, report_path, report_uri), "alreadyDone": True}
    if tracker is not None and not report.get("alreadyDone"):
        tracker.record_night(run_id, report)
    log.info("%s", human_summary(report))
    return report


def _registered_model(config: JobConfig, registry: Any, name: str, version: int) -> Any:
    """A registered version, set up to read tonight's input; it must be of the configured family."""
    from em_spark.api import ESTIMATORS, model_from_bytes

    model = model_from_bytes(registry.load_bytes(name, version), f"{name} v{version}")
    expected = ESTIMATORS[config.model.family]._model_class
    if not isinstance(model, expected):
        raise ConfigError(
            f"{name} v{version} is a {type(model).__name__} but model.family is {config.model.family!r} "
            f"(a {expected.__name__}); a nightly retrain keeps the family of its registered model"
        )
    model.setParams(featuresCol=config.input.features, weightCol=config.input.weightCol)
    if model.hasParam("sequenceCol"):
        # The config says how tonight's input is laid out, whatever the model was fitted on.
        model.setParams(sequenceCol=config.input.sequenceCol, timeCol=config.input.timeCol)
    return model


def _retrain(
    config: JobConfig,
    registry: ModelRegistry,
    name: str,
    run_id: str,
    production: EMModel | None,
    production_version: int | None,
    train: DataFrame,
    holdout: DataFrame,
    timings: dict[str, float],
    drift: dict[str, Any] | None,  # None on the first night (no production model to compare)
    tracker: Any = None,  # em_spark.app.tracking.Tracker: the night's fit is its MLflow run
) -> dict:
    existing = registry.find_by_run_id(name, run_id)
    t = time.perf_counter()
    if existing is not None:
        # The fit finished and was registered before an interruption: reuse it.
        version = existing
        model = _registered_model(config, registry, name, existing.version)
        mapping = existing.extra.get("componentMapping")
    else:
        config = dataclasses.replace(
            config,
            run=dataclasses.replace(
                config.run,
                id=run_id,
                checkpointDir=config.run.checkpointDir or _join_registry(config, name, "checkpoints"),
            ),
            fit=dataclasses.replace(
                config.fit,
                nInit=1 + config.nightly.freshRestarts if production is not None else max(config.fit.nInit, 1),
            ),
        )
        from em_spark.app import metrics

        checkpoint_dir, metrics_path = config.run.checkpointDir, resolve_local(config.run.metricsPath)
        incremental = config.nightly.mode == "incremental" and production is not None
        with metrics.IterationRecorder(
            run_id,
            lambda rid: metrics.metrics_uri(rid, checkpoint_dir, metrics_path),
            config.storage.s3Endpoint,
            pushgateway=config.run.pushgateway,
            tracker=tracker,
        ) as recorder:
            estimator = estimator_from_config(config, production)
            if tracker is not None:
                from em_spark.app.tracking import estimator_params

                tracker.set_params(estimator_params(estimator))
            if incremental:
                assert production is not None  # (incremental needs the model it updates)
                # tonight's rows only: production's stored statistics stand for the nights before
                model = production.update(
                    train,
                    halfLife=config.nightly.halfLife,
                    maxIter=config.fit.maxIter,
                    tol=config.fit.tol,
                    runId=run_id,
                    checkpointDir=checkpoint_dir,
                )
            else:
                model = estimator.fit(train)
        timings["fit"] = time.perf_counter() - t
        mapping, fitted = None, model
        if production is not None:
            family = model.family
            order, distance = match_components(family, production.arrays, model.arrays)
            model = model.relabeled(order)  # parameters and stored statistics in production's ids
            drift = {**(drift or {}), **component_drift(family, production.arrays, model.arrays)}
        # The night's fit is a run like any other: its metrics file (and push) as for train, with
        # the drift from production (per component in production's ids) when there is one.
        doc = metrics.publish(
            recorder,
            fitted,
            wall_seconds=timings["fit"],
            pushgateway=config.run.pushgateway,
            executor_core_seconds=metrics.executor_core_seconds(train.sparkSession, run_id),
            drift=drift,
            model_name=name,
        )
        if tracker is not None:
            tracker.finish(doc, model)
        if production is not None:
            new, old = model.public_params(), production.public_params()
            moved = np.linalg.norm(new["means"] - old["means"], axis=1) if "means" in new else None
            mapping = [
                {
                    "component": j,
                    "fromFitted": int(order[j]),
                    "distance": float(distance[j]),
                    **({"meanShift": float(moved[j])} if moved is not None else {}),
                }
                for j in range(len(order))
            ]
        t = time.perf_counter()
        on_train = model.criteria(train)
        model_metrics = {
            "trainAvgLogLik": on_train["avgLogLik"],
            "holdoutAvgLogLik": _avg_loglik(model, holdout),
            "bic": on_train["bic"],
            "numIter": model.summary.numIter,
            "converged": model.summary.converged,
            "wallSeconds": time.perf_counter() - t + timings.get("fit", 0.0),
        }
        version = registry.register(
            name,
            model.to_bytes(),
            config=config.to_dict(),
            seed=config.fit.seed,
            data_fingerprint=model.summary.dataFingerprint,
            run_id=run_id,
            metrics=model_metrics,
            extra={
                "componentMapping": mapping,
                "warmStartFrom": production_version,
                "mode": "incremental" if incremental else "full",
                **({"halfLife": config.nightly.halfLife} if incremental else {}),
            },
        )
        timings["evaluate+register"] = time.perf_counter() - t

    new_holdout = version.metrics["holdoutAvgLogLik"]
    out: dict[str, Any] = {
        "fitMode": version.extra.get("mode", "full"),  # incremental: production updated with tonight's rows
        "newVersion": version.version,
        "metrics": {"new": version.metrics},
        "componentMapping": mapping,
    }
    if production is not None:
        # Beyond the log-likelihood: how the components moved (model is in production's ids).
        out["componentDrift"] = component_drift(model.family, production.arrays, model.arrays)
    if production is None:
        registry.promote(name, version.version, reason=f"{run_id}: first model")
        return {**out, "decision": "promoted", "reason": "no production model yet", "productionAfter": version.version}
    production_holdout = _avg_loglik(production, holdout)
    out["metrics"]["productionOnSameHoldout"] = production_holdout
    tolerance = config.nightly.promotionTolerance
    if new_holdout >= production_holdout - tolerance:
        if registry.alias(name) != version.version:
            registry.promote(
                name,
                version.version,
                reason=f"{run_id}: holdout {new_holdout:.5f} vs production {production_holdout:.5f}",
            )
        return {
            **out,
            "decision": "promoted",
            "productionAfter": version.version,
            "reason": f"holdout avg log-likelihood {new_holdout:.5f} is not worse than production's "
            f"{production_holdout:.5f} by more than {tolerance}",
        }
    return {
        **out,
        "decision": "kept",
        "productionAfter": production_version,
        "reason": f"new version {version.version} is worse on the holdout ({new_holdout:.5f} vs production "
        f"{production_holdout:.5f}, tolerance {tolerance}); production stays at version {production_version}",
    }


def _join_registry(config: JobConfig, *names: str) -> str:
    from em_spark.storage import join

    assert config.registry.uri is not None  # (the nightly job requires it)
    return join(resolve_local(config.registry.uri), *names)


def human_summary(report: dict[str, Any]) -> str:
    """A few lines a person reads in the job log."""
    lines = [f"nightly {report['model']} {report['date']}: {report['decision'].upper()}: {report['reason']}"]
    if report.get("drift"):
        d = report["drift"]
        lines.append(
            f"  drift: production avg log-likelihood {d['currentAvgLogLik']:.5f} tonight vs baseline "
            f"{d['baselineAvgLogLik'] if d['baselineAvgLogLik'] is None else round(d['baselineAvgLogLik'], 5)}"
        )
        if d.get("maxWeightShift") is not None:
            lines.append(
                f"  components: largest weight shift {d['maxWeightShift']:.4f}, "
                f"largest divergence from production {d['maxDivergence']:.4g}"
            )
    if report.get("newVersion") is not None:
        m = report["metrics"]["new"]
        lines.append(
            f"  new version {report['newVersion']}: train {m['trainAvgLogLik']:.5f}, holdout {m['holdoutAvgLogLik']:.5f}, "
            f"BIC {m['bic']:.1f}, {m['numIter']} iterations"
        )
    for entry in report.get("componentMapping") or []:
        moved = f"mean moved {entry['meanShift']:.4g}, " if "meanShift" in entry else ""
        lines.append(
            f"  component {entry['component']} <- fitted {entry['fromFitted']} ({moved}distance {entry['distance']:.4g})"
        )
    lines.append(f"  production: {report.get('productionBefore')} -> {report.get('productionAfter')}")
    return "\n".join(lines)
