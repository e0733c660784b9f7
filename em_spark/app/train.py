"""``em-spark train``: fit the configured model, save it, publish its metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from em_spark.app.common import (
    check_outputs_writable,
    estimator_from_config,
    load_saved_model,
    model_exists,
    read_input,
    require_input,
    resolve_local,
    spark_session,
)
from em_spark.app.config import ConfigError, JobConfig

__all__ = ["run_train"]

log = logging.getLogger("em_spark")


def _format_summary(model: Any, seconds: float, model_path: str | None, on_connect: bool) -> str:
    import numpy as np

    s = model.summary
    family = model.family
    unit = "sequences" if family.sequential else "rows"
    setting = f" ({model.getOrDefault('covarianceType')})" if model.hasParam("covarianceType") else ""
    lines = [
        f"em_spark fit: run {s.runId}: {family.name}, {s.numRows} {unit}, {model.numFeatures} features, "
        f"k={s.k}{setting}, {'a Spark Connect' if on_connect else 'a classic'} session",
        f"  iterations {s.numIter} ({'converged' if s.converged else 'not converged'}), best restart {s.bestRestart + 1}, "
        f"average log-likelihood {s.averageLogLikelihood:.6f}, total {s.logLikelihood:.2f}, {seconds:.1f} s",
    ]
    params = model.public_params()
    per_component = family.summary_params
    with np.printoptions(precision=4, suppress=True, linewidth=120):
        for i in range(s.k):
            parts = []
            for name in per_component:
                value = params[name][i]
                if np.ndim(value) == 0:
                    parts.append(f"{name} {float(value):.4f}")
                else:
                    parts.append(f"{name} {np.array2string(value[:8])}{' ...' if value.size > 8 else ''}")
            lines.append(f"  component {i}: " + "  ".join(parts))
    if model_path:
        lines.append(f"  model saved to {model_path}")
    return "\n".join(lines)


def run_train(config: JobConfig) -> Any:
    """Fit the configured model; save it; return the fitted model."""
    started = time.perf_counter()
    model_path = resolve_local(config.output.modelPath)
    endpoint = config.storage.s3Endpoint
    # Refuse before spending a whole fit on a result that could not be saved.
    if model_path and not config.output.overwrite and model_exists(model_path, endpoint):
        raise ConfigError(
            f"a model already exists at {model_path} and output.overwrite is false; "
            "choose another output.modelPath or set output.overwrite: true"
        )
    initial = None
    if config.model.initialModel:
        initial = load_saved_model(
            resolve_local(config.model.initialModel),
            "model.initialModel",
            config,
            "point it at a model saved by em-spark train (a directory holding model.emsp)",
        )
    check_outputs_writable(config, model_path)
    require_input(config)
    estimator = estimator_from_config(config, initial)  # family keys checked before Spark starts
    from em_spark.app import tracking

    tracker = tracking.open_tracker(config)  # mlflow missing or unreachable: refused before Spark starts
    if tracker is not None:
        tracker.set_params(tracking.estimator_params(estimator))
    spark = spark_session(config)
    df = read_input(spark, config)
    from em_spark.app import metrics

    checkpoint_dir, metrics_path = resolve_local(config.run.checkpointDir), resolve_local(config.run.metricsPath)
    with metrics.IterationRecorder(
        config.run.id,
        lambda run_id: metrics.metrics_uri(run_id, checkpoint_dir, metrics_path),
        endpoint,
        pushgateway=config.run.pushgateway,
        tracker=tracker,
    ) as recorder:
        try:
            model = estimator.fit(df)
        except Exception as exc:
            if config.run.pushgateway:  # e.g. a ModelError: the alert names the error's class
                metrics.push_failure(config.run.pushgateway, recorder.run_id or config.run.id, exc)
            if tracker is not None:
                tracker.fail(recorder.run_id or config.run.id)
            raise
    if model_path:
        model.save(model_path, overwrite=config.output.overwrite)
    doc = metrics.publish(
        recorder,
        model,
        wall_seconds=time.perf_counter() - started,
        model_path=model_path,
        pushgateway=config.run.pushgateway,
        executor_core_seconds=metrics.executor_core_seconds(spark, model.summary.runId),
    )
    if tracker is not None:
        tracker.finish(doc, model)
    from em_spark.engine.dataframe_source import is_connect

    print(_format_summary(model, time.perf_counter() - started, model_path, is_connect(spark)), flush=True)
    return model
