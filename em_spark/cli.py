"""``em-spark train|score``: run a job from a YAML config, in-process or under spark-submit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.parse
from typing import Any, Sequence

from em_spark.config import ConfigError, JobConfig, load_config

__all__ = ["main", "run_train", "run_score", "run_impute", "run_select", "run_report"]

log = logging.getLogger("em_spark")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "run_id", None):
            entry["run_id"] = record.run_id
        event = getattr(record, "em_event", None)  # a per-iteration line's fields, e.g. avgLogLik
        if isinstance(event, dict):
            from em_spark.metrics import json_safe

            entry.update(json_safe(event))
        return json.dumps(entry, allow_nan=False)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if level <= logging.DEBUG:
        # Debugging a job: let the libraries' debug lines (boto3, urllib3) through too.
        # em_spark.storage.s3 redacts credentials from botocore's; py4j's are one per JVM call.
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        logging.getLogger("py4j").setLevel(logging.INFO)


def _resolve_local(uri: str | None) -> str | None:
    """Relative local paths become absolute file:// URIs (Spark and pyarrow then agree).

    The URI is literal, as Spark reads it (see :func:`em_spark.storage.local_path`): a
    space, ``=`` or ``%20`` in a folder name means that folder, in the log and on disk.
    """
    if uri is None or "://" in uri:
        return uri
    from em_spark.storage import file_uri

    return file_uri(uri)


def _load_saved_model(uri: str, key: str, config: JobConfig, fix: str) -> Any:
    """The model saved at ``uri`` (named by config ``key``), or a ConfigError saying what to do."""
    from em_spark.api import load_model
    from em_spark.storage import redact_uri

    try:
        return load_model(uri, s3Endpoint=config.storage.s3Endpoint)
    except FileNotFoundError:
        raise ConfigError(f"config key {key!r}: no saved model at {redact_uri(uri)} (in {config.source}); {fix}") from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config key {key!r}: cannot load the model at {redact_uri(uri)}: {exc}") from None


def _check_outputs_writable(config: JobConfig, model_path: str | None) -> None:
    """Refuse, before any data is read, a checkpoint dir or model path that cannot be written."""
    from em_spark.storage import check_writable

    for key, uri in (("run.checkpointDir", _resolve_local(config.run.checkpointDir)), ("output.modelPath", model_path)):
        if not uri:
            continue
        try:
            check_writable(uri, s3_endpoint=config.storage.s3Endpoint)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config key {key!r}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}; "
                              "choose a location this job can write") from None


def _session(config: JobConfig):
    from em_spark.session import get_session

    return get_session(config.spark.appName, config.spark.master, config.spark.conf)


def read_input(spark: Any, config: JobConfig):
    """The input DataFrame; writes the demo data set first when ``input.generate`` asks for it."""
    section = config.input
    if not section.path:
        raise ConfigError(f"config key 'input.path' is required (in {config.source})")
    path = _resolve_local(section.path)
    if section.generate is not None:
        from em_spark.storage.fs import exists, resolve

        fs, local = resolve(path, s3_endpoint=config.storage.s3Endpoint)
        if not exists(fs, f"{local}/part-0.parquet"):
            g = section.generate
            from em_spark.demo_data import write_blobs, write_sequences

            if g.steps > 0:
                log.info("writing demo sequences: %d x %d steps, %d features, %d states -> %s",
                         g.rows, g.steps, g.features, g.components, path)
                write_sequences(path, g.rows, g.steps, g.features, g.components, g.separation, g.seed,
                                config.storage.s3Endpoint)
            else:
                log.info("writing demo data: %d rows, %d features, %d components%s -> %s", g.rows, g.features,
                         g.components, f", {g.missingFraction:.0%} missing" if g.missingFraction else "", path)
                write_blobs(path, g.rows, g.features, g.components, g.separation, g.seed, config.storage.s3Endpoint,
                            g.missingFraction)
    require_input(config)
    return spark.read.format(section.format).options(**section.options).load(path)


def require_input(config: JobConfig) -> None:
    """A clear error for a local input path that is not there, before Spark starts or logs a
    stack trace for it. Other stores (s3a, hdfs) are left to Spark's reader, which may know
    schemes pyarrow does not. Demo data (``input.generate``) is written when missing."""
    from em_spark.storage import local_path

    path = _resolve_local(config.input.path)
    if not path or config.input.generate is not None:
        return
    local = local_path(path) if path.startswith("file:") else None
    if local is None or os.path.exists(local):
        return
    night = f" for nightly.date {config.nightly.date}" if config.nightly.date and config.nightly.inputPath else ""
    key = "nightly.inputPath" if night else "input.path"
    raise ConfigError(f"no input data at {path}{night} (config key {key!r}, in {config.source}); "
                      "check the path, or that the data for that date has landed")


# model.* keys that only some families take; each is passed when the estimator has it.
_FAMILY_KEYS = ("covarianceType", "regCovar", "initMode", "handleMissing", "kind", "smoothing", "nCategories")
_INPUT_KEYS = ("labelCol", "sequenceCol", "timeCol")


def _estimator(config: JobConfig, initial_model: Any):
    """The configured family's estimator. A family-specific key left at its default gives way to
    the family's own default; set to anything else on a family without it, it is an error."""
    from em_spark.api import ESTIMATORS
    from em_spark.config import InputSection, ModelSection

    family = config.model.family
    if family not in ESTIMATORS:
        raise ConfigError(f"config key 'model.family' is {family!r}; available: {sorted(ESTIMATORS)}")
    estimator = ESTIMATORS[family](
        k=config.model.k,
        initialModel=initial_model,
        maxIter=config.fit.maxIter,
        tol=config.fit.tol,
        nInit=config.fit.nInit,
        seed=config.fit.seed,
        numPartitions=config.fit.numPartitions,
        aggregationDepth=config.fit.aggregationDepth,
        initSampleSize=config.fit.initSampleSize,
        featuresCol=config.input.features,
        weightCol=config.input.weightCol,
        checkpointDir=_resolve_local(config.run.checkpointDir),
        runId=config.run.id,
        keepCheckpoints=config.run.keepCheckpoints,
        s3Endpoint=config.storage.s3Endpoint,
    )
    for section, keys, defaults in (("model", _FAMILY_KEYS, ModelSection()), ("input", _INPUT_KEYS, InputSection())):
        for key in keys:
            value, default = getattr(getattr(config, section), key), getattr(defaults, key)
            if value == default:
                continue
            applies = estimator.hasParam(key) and (key != "labelCol" or estimator.family().supports_labels)
            if not applies:
                raise ConfigError(
                    f"config key '{section}.{key}' does not apply to model.family {family!r} "
                    f"(in {config.source}); remove it or choose a family that takes it"
                )
            estimator.setParams(**{key: value})
    return estimator


def _model_exists(uri: str, s3_endpoint: str | None) -> bool:
    from em_spark.api.base import MODEL_FILE
    from em_spark.storage.fs import exists, join, resolve

    fs, path = resolve(join(uri, MODEL_FILE), s3_endpoint=s3_endpoint)
    return exists(fs, path)


def _format_summary(model: Any, seconds: float, model_path: str | None) -> str:
    import numpy as np

    s = model.summary
    unit = "sequences" if model._family.sequential else "rows"
    setting = f" ({model.getOrDefault('covarianceType')})" if model.hasParam("covarianceType") else ""
    lines = [
        f"em_spark fit: run {s.runId}: {model._family.name}, {s.numRows} {unit}, {model.numFeatures} features, "
        f"k={s.k}{setting}",
        f"  iterations {s.numIter} ({'converged' if s.converged else 'not converged'}), best restart {s.bestRestart + 1}, "
        f"average log-likelihood {s.averageLogLikelihood:.6f}, total {s.logLikelihood:.2f}, {seconds:.1f} s",
    ]
    params = model.public_params()
    per_component = [name for name in ("weights", "startProb", "means") if name in params]
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
    model_path = _resolve_local(config.output.modelPath)
    endpoint = config.storage.s3Endpoint
    # Refuse before spending a whole fit on a result that could not be saved.
    if model_path and not config.output.overwrite and _model_exists(model_path, endpoint):
        raise ConfigError(
            f"a model already exists at {model_path} and output.overwrite is false; "
            "choose another output.modelPath or set output.overwrite: true"
        )
    initial = None
    if config.model.initialModel:
        initial = _load_saved_model(_resolve_local(config.model.initialModel), "model.initialModel", config,
                                    "point it at a model saved by em-spark train (a directory holding model.emsp)")
    _check_outputs_writable(config, model_path)
    require_input(config)
    estimator = _estimator(config, initial)  # family keys checked before Spark starts
    spark = _session(config)
    df = read_input(spark, config)
    from em_spark import metrics

    checkpoint_dir, metrics_path = _resolve_local(config.run.checkpointDir), _resolve_local(config.run.metricsPath)
    with metrics.IterationRecorder(
        config.run.id, lambda run_id: metrics.metrics_uri(run_id, checkpoint_dir, metrics_path), endpoint,
    ) as recorder:
        model = estimator.fit(df)
    if model_path:
        model.save(model_path, overwrite=config.output.overwrite)
    metrics.publish(recorder, model, wall_seconds=time.perf_counter() - started, model_path=model_path,
                    pushgateway=config.run.pushgateway)
    print(_format_summary(model, time.perf_counter() - started, model_path), flush=True)
    return model


def run_report(config: JobConfig, source: str, output: str, data: str | None = None, features: str | None = None,
               rows: int = 5000, model: str | None = None) -> dict[str, Any]:
    """Draw a run (a run id, its metrics.json, or a saved model): report.png and report.html."""
    from pathlib import Path

    from em_spark.report import build_report
    from em_spark.storage.fs import redact_uri

    if rows < 1:
        raise ConfigError(f"report: --rows must be >= 1, got {rows}")
    endpoint = config.storage.s3Endpoint
    uri = _resolve_local(source)
    if "://" not in source and not Path(source).exists() and _is_name(source):
        from em_spark.metrics import metrics_uri

        uri = metrics_uri(source, _resolve_local(config.run.checkpointDir), _resolve_local(config.run.metricsPath))
        if uri is None:
            raise ConfigError(f"{source!r} is not a path; to find run {source!r} set run.checkpointDir or run.metricsPath")
    try:
        report, png, page = build_report(
            uri, _resolve_local(output), data=_resolve_local(data),
            features=features.split(",") if features and "," in features else features, max_rows=rows,
            model_path=_resolve_local(model), s3_endpoint=endpoint,
        )
    except FileNotFoundError as exc:
        raise ConfigError(f"report: nothing found at {redact_uri(uri)}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise ConfigError(f"report: cannot read {redact_uri(uri)}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"report: {exc}") from None
    for note in report.notes:
        print(f"  note: {note}", flush=True)
    print(f"em_spark report: {', '.join(report.panels)} -> {png} and {page}", flush=True)
    return {"png": png, "html": page, "panels": report.panels, "notes": report.notes}


def _is_name(text: str) -> bool:
    from em_spark.storage import validate_name

    try:
        validate_name(text)
    except ValueError:
        return False
    return True


def _input_partition_columns(df: Any, input_uri: str) -> list[str]:
    """Partition columns of a directory-partitioned input (``.../date=2026-11-22/part-0.parquet``)."""
    files = df.inputFiles()
    if not files:
        return []
    # Spark lists files as encoded URIs (a space as %20); the input URI is literal (see _resolve_local).
    first = urllib.parse.unquote(files[0]) if input_uri.startswith("file:") else files[0]
    relative = first[len(input_uri):] if first.startswith(input_uri) else first
    keys = [segment.split("=", 1)[0] for segment in relative.strip("/").split("/")[:-1] if "=" in segment]
    return [k for k in keys if k in df.columns]


def _kept_columns(df: Any, keep: list[str] | None, key: str) -> list[str]:
    """The input columns an output carries: ``keep``, checked against the input, or all of them."""
    if keep is None:
        return list(df.columns)
    missing = [c for c in keep if c not in df.columns]
    if missing:
        raise ConfigError(f"config key {key!r} names columns not in the input: {missing}")
    return keep


def _scoring_model(config: JobConfig, model_path: str | None = None, key: str = "score.modelPath"):
    from em_spark.api import load_model, model_from_bytes

    if config.score.registryModel:
        from em_spark.registry import ModelRegistry

        if not config.registry.uri:
            raise ConfigError(f"score.registryModel needs registry.uri (in {config.source})")
        registry = ModelRegistry(_resolve_local(config.registry.uri), s3_endpoint=config.storage.s3Endpoint)
        version = registry.alias(config.score.registryModel)
        if version is None:
            raise ConfigError(f"registry model {config.score.registryModel!r} has no production version to score with")
        data = registry.load_bytes(config.score.registryModel, version)
        return model_from_bytes(data), f"{config.score.registryModel} v{version} (production)"
    model_path = _resolve_local(model_path or config.score.modelPath or config.output.modelPath)
    if not model_path:
        also = ", or score.registryModel" if key == "score.modelPath" else ""
        raise ConfigError(
            f"config key {key!r} (or output.modelPath{also}) is required (in {config.source}); "
            "set it to the path a train run saved its model to"
        )
    if not _model_exists(model_path, config.storage.s3Endpoint):
        from em_spark.api.base import MODEL_FILE

        raise ConfigError(
            f"no model at {model_path} (no {MODEL_FILE} there): run `em-spark train` first to save one there "
            f"(output.modelPath), or set {key} to a saved model"
        )
    return load_model(model_path, s3Endpoint=config.storage.s3Endpoint), model_path


def run_score(config: JobConfig) -> dict[str, Any]:
    """Score the input with a saved model and write Parquet; return counts.

    Everything is checked before the output is touched, and the new output replaces the old
    one only once it is complete (see :mod:`em_spark.job_output`)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from em_spark import job_output
    from em_spark.engine.scoring import sample_feature_counts

    output = _resolve_local(config.score.outputPath)
    if not output:
        raise ConfigError(f"config key 'score.outputPath' is required (in {config.source})")
    mode = job_output.save_mode(config.score.mode, "score.mode")
    model_uri = None if config.score.registryModel else _resolve_local(config.score.modelPath or config.output.modelPath)
    job_output.refuse_overlap(output, "score.outputPath", {
        "input.path": _resolve_local(config.input.path), "the model": model_uri,
        "run.checkpointDir": _resolve_local(config.run.checkpointDir),
    })
    model, model_name = _scoring_model(config)
    model.setParams(featuresCol=config.input.features)
    sequential = model._family.sequential
    long_format = sequential and bool(config.input.sequenceCol)
    if model.hasParam("sequenceCol"):
        # The config says how tonight's input is laid out, whatever the model was fitted on.
        model.setParams(sequenceCol=config.input.sequenceCol, timeCol=config.input.timeCol)
    if not isinstance(config.input.features, str):
        job_output.check_feature_count(model.numFeatures, [len(config.input.features)], config.input.features,
                                       model_name, per_step=sequential)
    staged = job_output.prepare_output(output, mode, "score.mode", config.storage.s3Endpoint)
    spark = _session(config)
    df = read_input(spark, config)
    keep = _kept_columns(df, config.score.keepColumns, "score.keepColumns")
    partition_by = config.score.partitionBy
    if partition_by is None:
        partition_by = _input_partition_columns(df, _resolve_local(config.input.path))
    unknown = [c for c in partition_by if c not in keep]
    if unknown:
        raise ConfigError(f"config key 'score.partitionBy' names columns not kept in the output: {unknown}")
    job_output.check_feature_count(
        model.numFeatures, sample_feature_counts(df, config.input.features, sequential and not long_format),
        config.input.features, model_name, per_step=sequential,
    )
    scored = model.transform(df)
    pred, prob, ll = (model.getOrDefault(n) for n in ("predictionCol", "probabilityCol", "logLikelihoodCol"))
    if sequential:
        # One row per sequence: its Viterbi path, per-step state posteriors, log-likelihood.
        if config.input.sequenceCol:
            # Long format was grouped into one row per sequence: the step columns are gone.
            keep = [config.input.sequenceCol]
            if partition_by:
                log.warning("score: long-format sequences are written without partitionBy %s", partition_by)
                partition_by = []
        columns = [*keep, pred, prob, ll]
    else:
        # Probabilities as array<double>: readable by any Parquet consumer, not only Spark ML.
        # vector_to_array fails on null, so unscorable rows keep a null probability.
        probability = F.when(F.col(prob).isNotNull(), vector_to_array(F.col(prob)))
        columns = [*keep, pred, probability.alias(prob), ll]
    threshold = config.score.anomalyThreshold
    if threshold is not None:
        # Low likelihood under the model = unlike anything it was trained on.
        columns.append((F.col(ll) < F.lit(float(threshold))).alias(config.score.anomalyCol))

    def write(uri: str) -> None:
        writer = scored.select(*columns).write.mode("errorifexists")  # a fresh staging location
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(uri)

    aggregates = [F.count(F.lit(1)).alias("rows"), F.sum(F.when(F.col(ll if sequential else pred).isNull(), 1)
                                                        .otherwise(0)).alias("unscored")]
    if threshold is not None:
        aggregates.append(F.sum(F.col(config.score.anomalyCol).cast("int")).alias("anomalies"))
    counts = job_output.write_staged(staged, mode, write, lambda uri: spark.read.parquet(uri).agg(*aggregates).first())
    result = {
        "rows": int(counts["rows"]), "unscored": int(counts["unscored"] or 0), "output": output,
        "partitionBy": list(partition_by), "model": model_name,
    }
    if threshold is not None:
        result["anomalies"] = int(counts["anomalies"] or 0)
    unit = "sequences" if sequential else "rows"
    if result["unscored"]:
        log.warning(
            "%d of %d %s could not be scored (null, NaN, infinite or not %d features%s); their outputs are null",
            result["unscored"], result["rows"], unit, model.numFeatures, " per step" if sequential else "",
        )
    anomalies = f", {result['anomalies']} below logLikelihood {threshold}" if threshold is not None else ""
    unscored = f", {result['unscored']} unscored (null outputs)" if result["unscored"] else ""
    print(f"em_spark score: {result['rows']} {unit} scored with {model_name}{unscored}{anomalies} -> {output}",
          flush=True)
    return result


def run_impute(config: JobConfig) -> dict[str, Any]:
    """Write the input with missing entries filled by a Gaussian mixture; return counts.

    Observed entries are kept as they are; each missing entry becomes its conditional
    expectation given the row's observed entries, with its conditional standard deviation.
    Checked and staged like :func:`run_score`.
    """
    from pyspark.sql import functions as F

    from em_spark import job_output
    from em_spark.engine.scoring import sample_feature_counts

    output = _resolve_local(config.impute.outputPath)
    if not output:
        raise ConfigError(f"config key 'impute.outputPath' is required (in {config.source})")
    mode = job_output.save_mode(config.impute.mode, "impute.mode")
    model_uri = None if config.score.registryModel else _resolve_local(
        config.impute.modelPath or config.score.modelPath or config.output.modelPath)
    job_output.refuse_overlap(output, "impute.outputPath", {
        "input.path": _resolve_local(config.input.path), "the model": model_uri,
        "run.checkpointDir": _resolve_local(config.run.checkpointDir),
    })
    model, model_name = _scoring_model(config, config.impute.modelPath, "impute.modelPath")
    if not model.family.supports_impute:
        raise ConfigError(f"{model_name} is a {type(model).__name__}; imputation needs a GaussianMixture model")
    if not isinstance(config.input.features, str):
        job_output.check_feature_count(model.numFeatures, [len(config.input.features)], config.input.features,
                                       model_name)
    staged = job_output.prepare_output(output, mode, "impute.mode", config.storage.s3Endpoint)
    spark = _session(config)
    df = read_input(spark, config)
    keep = _kept_columns(df, config.impute.keepColumns, "impute.keepColumns")
    model.setParams(featuresCol=config.input.features)
    job_output.check_feature_count(model.numFeatures, sample_feature_counts(df, config.input.features, False),
                                   config.input.features, model_name)
    out_col, std_col = config.impute.outputCol, config.impute.stdCol
    imputed = model.impute(df, outputCol=out_col, stdCol=std_col).select(*keep, out_col, std_col)
    # A row counts as imputed when any entry had to be filled (its std is positive somewhere).
    filled = F.exists(F.col(std_col), lambda v: v > 0)
    aggregates = (
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col(out_col).isNull(), 1).otherwise(0)).alias("unreadable"),
        F.sum(F.when(filled, 1).otherwise(0)).alias("imputed"),
    )
    counts = job_output.write_staged(
        staged, mode, lambda uri: imputed.write.mode("errorifexists").parquet(uri),
        lambda uri: spark.read.parquet(uri).agg(*aggregates).first(),
    )
    result = {"rows": int(counts["rows"]), "imputedRows": int(counts["imputed"] or 0),
              "unreadable": int(counts["unreadable"] or 0), "output": output, "model": model_name}
    if result["unreadable"]:
        log.warning("%d of %d rows could not be read (null vector, not %d features, or infinite values); "
                    "their outputs are null", result["unreadable"], result["rows"], model.numFeatures)
    unreadable = f", {result['unreadable']} unreadable (null outputs)" if result["unreadable"] else ""
    print(f"em_spark impute: {result['rows']} rows, {result['imputedRows']} with missing entries filled{unreadable}, "
          f"with {model_name} -> {output}", flush=True)
    return result


def run_select(config: JobConfig) -> dict[str, Any]:
    """Fit the configured grid once over cached data; print the table, write the JSON report."""
    from em_spark.engine.loop import FitSettings
    from em_spark.engine.spark_source import load_blocks
    from em_spark.selection import format_table, select_models, to_json

    base = _estimator(config, None)
    covariance_types = config.select.covarianceTypes if base.hasParam("covarianceType") else [None]

    def make_family(k: int, covariance_type: str | None):
        candidate = base.copy().setParams(k=k, **({"covarianceType": covariance_type} if covariance_type else {}))
        return candidate.family()

    spark = _session(config)
    df, features = base._input(read_input(spark, config))
    family = make_family(min(config.select.ks), covariance_types[0])
    settings = FitSettings(max_iter=config.fit.maxIter, tol=config.fit.tol, n_init=config.fit.nInit, seed=config.fit.seed)
    source = load_blocks(
        df, features, config.input.weightCol, k=min(config.select.ks), seed=config.fit.seed,
        sample_size=config.fit.initSampleSize, num_partitions=config.fit.numPartitions,
        aggregation_depth=config.fit.aggregationDepth, label="em_spark select",
        sequences=family.sequential, allow_missing=family.models_missing,
        label_col=config.input.labelCol if family.supports_labels else None,
    )
    try:
        candidates = select_models(source, config.select.ks, covariance_types, settings, make_family=make_family)
    finally:
        source.close()
    criterion = config.select.criterion
    try:
        table = format_table(candidates, criterion)
    except ValueError as exc:  # every grid point skipped
        raise ConfigError(f"select: {exc} (in {config.source})") from None
    print(table, flush=True)
    report = to_json(candidates, criterion, input=config.input.path, rows=source.summary.rows)
    output = _resolve_local(config.select.outputPath)
    if output:
        from em_spark.storage import resolve, write_object

        fs, path = resolve(output, s3_endpoint=config.storage.s3Endpoint)
        write_object(fs, path, report.encode(), overwrite=True)
        print(f"em_spark select: report written to {output}", flush=True)
    return json.loads(report)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="em-spark", description="Expectation-Maximization on Apache Spark.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "fit a model and save it"),
        ("score", "score data with a saved model"),
        ("nightly", "the nightly retrain: drift check, warm-started retrain, holdout gate, registry"),
        ("select", "fit a grid of k and covariance types; report BIC and AIC, choose the best"),
        ("impute", "fill missing entries with their conditional expectation under a Gaussian mixture"),
        ("report", "draw a run: log-likelihood, component weights, clusters (report.png, report.html)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config (default: the embedded demo config)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set model.k=5 (repeatable)")
    report = sub.choices["report"]
    report.add_argument("source", help="a run id (found under run.checkpointDir), a run's metrics.json, or a saved model")
    report.add_argument("--output", default="em-spark-report", help="directory for report.png and report.html")
    report.add_argument("--data", help="Parquet data to draw as a scatter colored by component (at most 3 features)")
    report.add_argument("--features", help="feature columns of --data, e.g. x0,x1 (default: the model's featuresCol)")
    report.add_argument("--rows", type=int, default=5000, help="rows of --data to draw (default 5000)")
    report.add_argument("--model", help="saved model to color the scatter with (default: the run's output.modelPath)")
    from em_spark.registry_cli import add_registry_parser

    add_registry_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from em_spark.engine.loop import ResumeMismatchError
    from em_spark.engine.validation import DataValidationError
    from em_spark.models.base import ModelError
    from em_spark.session import JavaNotFoundError

    from em_spark.registry import RegistryError
    from em_spark.storage import StorageError

    expected = (
        ConfigError, DataValidationError, ResumeMismatchError, ModelError, JavaNotFoundError,
        FileExistsError, RegistryError, StorageError,
    )
    try:
        if args.command == "registry":
            from em_spark.registry_cli import run_registry

            setup_logging()
            return run_registry(args)
        config = load_config(args.config, args.overrides)
        setup_logging(config.run.logFormat, getattr(logging, config.run.logLevel))
        if args.command == "train":
            run_train(config)
        elif args.command == "score":
            run_score(config)
        elif args.command == "select":
            run_select(config)
        elif args.command == "impute":
            run_impute(config)
        elif args.command == "report":
            run_report(config, args.source, args.output, args.data, args.features, args.rows, args.model)
        else:
            from em_spark.nightly import run_nightly

            run_nightly(config)
    except expected as exc:
        print(f"em-spark: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        from pyspark.errors import AnalysisException

        if isinstance(exc, AnalysisException):
            # Spark's message, without the JVM stack trace some versions append after it.
            first = str(exc).split("\n\tat ", 1)[0].split("\nJVM stacktrace:", 1)[0]
            print(f"em-spark: error: Spark could not read or write the data: {_one_line(first)}", file=sys.stderr)
            return 2
        raise
    finally:
        _stop_session()
    return 0


def _one_line(message: str) -> str:
    """An error message as the one line the CLI promises."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _stop_session() -> None:
    """Stop the SparkSession a command used, so Python workers are not torn down mid-write at exit."""
    import sys as _sys

    if "pyspark.sql" not in _sys.modules:
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


if __name__ == "__main__":
    sys.exit(main())
