"""``em-spark score`` and ``em-spark impute``: apply a saved (or registered) model to the input
and write Parquet, checked and staged by :mod:`em_spark.app.outputs`."""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

from em_spark.app import outputs
from em_spark.app.common import model_exists, read_input, resolve_local, spark_session
from em_spark.app.config import ConfigError, JobConfig

if TYPE_CHECKING:
    from em_spark.api import EMModel

__all__ = ["run_impute", "run_score"]

log = logging.getLogger("em_spark")

#: imputation accuracy: observed entries hidden at random among the first rows read
ACCURACY_ROWS = 5_000
ACCURACY_FRACTION = 0.1


def _input_partition_columns(df: Any, input_uri: str) -> list[str]:
    """Partition columns of a directory-partitioned input (``.../date=2026-11-22/part-0.parquet``)."""
    files = df.inputFiles()
    if not files:
        return []
    # Spark lists files as encoded URIs (a space as %20); the input URI is literal (see resolve_local).
    first = urllib.parse.unquote(files[0]) if input_uri.startswith("file:") else files[0]
    relative = first[len(input_uri) :] if first.startswith(input_uri) else first
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


def _scoring_model(
    config: JobConfig, model_path: str | None = None, key: str = "score.modelPath"
) -> tuple[EMModel, str]:
    from em_spark.api import load_model, model_from_bytes

    if config.score.registryModel:
        from em_spark.storage.registry import ModelRegistry

        if not config.registry.uri:
            raise ConfigError(f"score.registryModel needs registry.uri (in {config.source})")
        registry = ModelRegistry(resolve_local(config.registry.uri), s3_endpoint=config.storage.s3Endpoint)
        version = registry.alias(config.score.registryModel)
        if version is None:
            raise ConfigError(f"registry model {config.score.registryModel!r} has no production version to score with")
        data = registry.load_bytes(config.score.registryModel, version)
        return model_from_bytes(data), f"{config.score.registryModel} v{version} (production)"
    model_path = resolve_local(model_path or config.score.modelPath or config.output.modelPath)
    if not model_path:
        also = ", or score.registryModel" if key == "score.modelPath" else ""
        raise ConfigError(
            f"config key {key!r} (or output.modelPath{also}) is required (in {config.source}); "
            "set it to the path a train run saved its model to"
        )
    if not model_exists(model_path, config.storage.s3Endpoint):
        from em_spark.api.base import MODEL_FILE

        raise ConfigError(
            f"no model at {model_path} (no {MODEL_FILE} there): run `em-spark train` first to save one there "
            f"(output.modelPath), or set {key} to a saved model"
        )
    return load_model(model_path, s3Endpoint=config.storage.s3Endpoint), model_path


def run_score(config: JobConfig) -> dict[str, Any]:
    """Score the input with a saved model and write Parquet; return counts.

    Everything is checked before the output is touched, and the new output replaces the old
    one only once it is complete (see :mod:`em_spark.app.outputs`)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from em_spark.engine.scoring import sample_feature_counts

    output = resolve_local(config.score.outputPath)
    if not output:
        raise ConfigError(f"config key 'score.outputPath' is required (in {config.source})")
    mode = outputs.save_mode(config.score.mode, "score.mode")
    model_uri = None if config.score.registryModel else resolve_local(config.score.modelPath or config.output.modelPath)
    outputs.refuse_overlap(
        output,
        "score.outputPath",
        {
            "input.path": resolve_local(config.input.path),
            "the model": model_uri,
            "run.checkpointDir": resolve_local(config.run.checkpointDir),
        },
    )
    model, model_name = _scoring_model(config)
    model.setParams(featuresCol=config.input.features)
    sequential = model.family.sequential
    long_format = sequential and bool(config.input.sequenceCol)
    if model.hasParam("sequenceCol"):
        # The config says how tonight's input is laid out, whatever the model was fitted on.
        model.setParams(sequenceCol=config.input.sequenceCol, timeCol=config.input.timeCol)
    if not isinstance(config.input.features, str):
        outputs.check_feature_count(
            model.numFeatures, [len(config.input.features)], config.input.features, model_name, per_step=sequential
        )
    staged = outputs.prepare_output(output, mode, "score.mode", config.storage.s3Endpoint)
    spark = spark_session(config)
    df = read_input(spark, config)
    keep = _kept_columns(df, config.score.keepColumns, "score.keepColumns")
    partition_by = config.score.partitionBy
    if partition_by is None:
        assert config.input.path is not None  # (read_input requires it)
        partition_by = _input_partition_columns(df, resolve_local(config.input.path))
    unknown = [c for c in partition_by if c not in keep]
    if unknown:
        raise ConfigError(f"config key 'score.partitionBy' names columns not kept in the output: {unknown}")
    outputs.check_feature_count(
        model.numFeatures,
        sample_feature_counts(df, config.input.features, sequential and not long_format),
        config.input.features,
        model_name,
        per_step=sequential,
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
        # a fresh staging location; "error", not "errorifexists", which the Connect client refuses
        writer = scored.select(*columns).write.mode("error")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(uri)

    aggregates = [
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col(ll if sequential else pred).isNull(), 1).otherwise(0)).alias("unscored"),
    ]
    if threshold is not None:
        aggregates.append(F.sum(F.col(config.score.anomalyCol).cast("int")).alias("anomalies"))
    counts = outputs.write_staged(staged, mode, write, lambda uri: spark.read.parquet(uri).agg(*aggregates).first())
    result = {
        "rows": int(counts["rows"]),
        "unscored": int(counts["unscored"] or 0),
        "output": output,
        "partitionBy": list(partition_by),
        "model": model_name,
    }
    if threshold is not None:
        result["anomalies"] = int(counts["anomalies"] or 0)
    unit = "sequences" if sequential else "rows"
    if result["unscored"]:
        log.warning(
            "%d of %d %s could not be scored (null, NaN, infinite or not %d features%s); their outputs are null",
            result["unscored"],
            result["rows"],
            unit,
            model.numFeatures,
            " per step" if sequential else "",
        )
    anomalies = f", {result['anomalies']} below logLikelihood {threshold}" if threshold is not None else ""
    unscored = f", {result['unscored']} unscored (null outputs)" if result["unscored"] else ""
    print(
        f"em_spark score: {result['rows']} {unit} scored with {model_name}{unscored}{anomalies} -> {output}", flush=True
    )
    return result


def run_impute(config: JobConfig) -> dict[str, Any]:
    """Write the input with missing entries filled by a Gaussian mixture; return counts.

    Observed entries are kept as they are; each missing entry becomes its conditional
    expectation given the row's observed entries, with its conditional standard deviation.
    Checked and staged like :func:`run_score`.
    """
    from pyspark.sql import functions as F

    from em_spark.engine.scoring import sample_feature_counts

    output = resolve_local(config.impute.outputPath)
    if not output:
        raise ConfigError(f"config key 'impute.outputPath' is required (in {config.source})")
    mode = outputs.save_mode(config.impute.mode, "impute.mode")
    model_uri = (
        None
        if config.score.registryModel
        else resolve_local(config.impute.modelPath or config.score.modelPath or config.output.modelPath)
    )
    outputs.refuse_overlap(
        output,
        "impute.outputPath",
        {
            "input.path": resolve_local(config.input.path),
            "the model": model_uri,
            "run.checkpointDir": resolve_local(config.run.checkpointDir),
        },
    )
    model, model_name = _scoring_model(config, config.impute.modelPath, "impute.modelPath")
    if not model.family.supports_impute or model.family.sequential:
        raise ConfigError(
            f"{model_name} is a {type(model).__name__}; the impute command fills rows with a GaussianMixture model "
            "(a GaussianHMM fills the gaps of sequences with GaussianHMMModel.impute(df) from Python)"
        )
    from em_spark.api import GaussianMixtureModel

    assert isinstance(model, GaussianMixtureModel)  # (the one model whose family imputes)
    if not isinstance(config.input.features, str):
        outputs.check_feature_count(model.numFeatures, [len(config.input.features)], config.input.features, model_name)
    staged = outputs.prepare_output(output, mode, "impute.mode", config.storage.s3Endpoint)
    spark = spark_session(config)
    df = read_input(spark, config)
    keep = _kept_columns(df, config.impute.keepColumns, "impute.keepColumns")
    model.setParams(featuresCol=config.input.features)
    outputs.check_feature_count(
        model.numFeatures, sample_feature_counts(df, config.input.features, False), config.input.features, model_name
    )
    out_col, std_col = config.impute.outputCol, config.impute.stdCol
    imputed = model.impute(df, outputCol=out_col, stdCol=std_col).select(*keep, out_col, std_col)
    # A row counts as imputed when any entry had to be filled (its std is positive somewhere).
    filled = F.exists(F.col(std_col), lambda v: v > 0)
    aggregates = (
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col(out_col).isNull(), 1).otherwise(0)).alias("unreadable"),
        F.sum(F.when(filled, 1).otherwise(0)).alias("imputed"),
    )
    counts = outputs.write_staged(
        staged,
        mode,
        lambda uri: imputed.write.mode("error").parquet(uri),  # (Connect refuses "errorifexists")
        lambda uri: spark.read.parquet(uri).agg(*aggregates).first(),
    )
    result = {
        "rows": int(counts["rows"]),
        "imputedRows": int(counts["imputed"] or 0),
        "unreadable": int(counts["unreadable"] or 0),
        "output": output,
        "model": model_name,
    }
    result["accuracy"] = _imputation_accuracy(df, model, config)
    _publish_imputation(config, result)
    if result["unreadable"]:
        log.warning(
            "%d of %d rows could not be read (null vector, not %d features, or infinite values); "
            "their outputs are null",
            result["unreadable"],
            result["rows"],
            model.numFeatures,
        )
    unreadable = f", {result['unreadable']} unreadable (null outputs)" if result["unreadable"] else ""
    print(
        f"em_spark impute: {result['rows']} rows, {result['imputedRows']} with missing entries filled{unreadable}, "
        f"with {model_name} -> {output}",
        flush=True,
    )
    return result


def _imputation_accuracy(df: Any, model: Any, config: JobConfig) -> dict[str, Any] | None:
    """How well the model fills gaps, measured where the truth is known: ``ACCURACY_FRACTION``
    of the observed entries of the first ``ACCURACY_ROWS`` readable rows are hidden at random
    (seeded by ``fit.seed``) and imputed on the driver; RMSE against the hidden truth and
    against column means (:func:`em_spark.models.diagnostics.masked_imputation_accuracy`)."""
    import numpy as np

    from em_spark.engine.spark_source import input_array
    from em_spark.models.diagnostics import masked_imputation_accuracy

    rows = (
        df.select(input_array(df, config.input.features, False).alias("x"))
        .where("x is not null and size(x) = " + str(int(model.numFeatures)))
        .limit(ACCURACY_ROWS)
        .collect()
    )
    X = np.array([[np.nan if v is None else v for v in row["x"]] for row in rows], dtype=np.float64)
    X = X.reshape(-1, model.numFeatures)
    X = X[~np.isinf(X).any(axis=1)]
    if X.shape[0] == 0:
        return None
    accuracy = masked_imputation_accuracy(
        model.family, model.arrays, X, ACCURACY_FRACTION, np.random.default_rng(config.fit.seed)
    )
    log.info(
        "imputation accuracy on %d hidden entries of %d rows: RMSE %s (column means: %s)",
        accuracy["maskedEntries"],
        accuracy["rows"],
        accuracy["rmse"],
        accuracy["baselineRmse"],
    )
    return accuracy


def _publish_imputation(config: JobConfig, result: dict[str, Any]) -> None:
    """The impute run's metrics file (with a checkpointDir or metricsPath) and push, under the run
    id ``<run.id>-impute``: a config shared with ``train`` must not overwrite the fit's metrics."""
    from em_spark.app import metrics

    run_id = f"{config.run.id}-impute" if config.run.id else metrics.new_run_id("impute")
    uri = metrics.metrics_uri(run_id, resolve_local(config.run.checkpointDir), resolve_local(config.run.metricsPath))
    metrics.publish_imputation(run_id, result, uri, config.storage.s3Endpoint, config.run.pushgateway)
