"""What every command shares: logging, local paths, the SparkSession, reading the input,
building an estimator from a config, loading a saved model, checking outputs can be written.

Everything here takes a :class:`~em_spark.app.config.JobConfig` and never changes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, overload

from em_spark.app.config import ConfigError, JobConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import DataFrame, SparkSession

    from em_spark.api import EMEstimator

__all__ = [
    "JsonFormatter",
    "check_outputs_writable",
    "estimator_from_config",
    "load_saved_model",
    "model_exists",
    "read_input",
    "require_input",
    "resolve_local",
    "setup_logging",
    "spark_session",
]

log = logging.getLogger("em_spark")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if run_id := getattr(record, "run_id", None):
            entry["run_id"] = run_id
        event = getattr(record, "em_event", None)  # a per-iteration line's fields, e.g. avgLogLik
        if isinstance(event, dict):
            from em_spark.app.metrics import json_safe

            entry.update(json_safe(event))
        return json.dumps(entry, allow_nan=False)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
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


@overload
def resolve_local(uri: str) -> str: ...
@overload
def resolve_local(uri: None) -> None: ...
@overload
def resolve_local(uri: str | None) -> str | None: ...
def resolve_local(uri: str | None) -> str | None:
    """Relative local paths become absolute file:// URIs (Spark and pyarrow then agree).

    The URI is literal, as Spark reads it (see :func:`em_spark.storage.local_path`): a
    space, ``=`` or ``%20`` in a folder name means that folder, in the log and on disk.
    """
    if uri is None or "://" in uri:
        return uri
    from em_spark.storage import file_uri

    return file_uri(uri)


def spark_session(config: JobConfig) -> SparkSession:
    from em_spark.engine.session import get_session

    return get_session(config.spark.appName, config.spark.master, config.spark.conf, remote=config.spark.remote)


def read_input(spark: Any, config: JobConfig) -> DataFrame:
    """The input DataFrame; writes the demo data set first when ``input.generate`` asks for it."""
    section = config.input
    if not section.path:
        raise ConfigError(f"config key 'input.path' is required (in {config.source})")
    path = resolve_local(section.path)
    if section.generate is not None:
        from em_spark.storage.fs import exists, resolve

        fs, local = resolve(path, s3_endpoint=config.storage.s3Endpoint)
        if not exists(fs, f"{local}/part-0.parquet"):
            g = section.generate
            from em_spark.app.demo_data import write_blobs, write_sequences

            if g.steps > 0:
                log.info(
                    "writing demo sequences: %d x %d steps, %d features, %d states -> %s",
                    g.rows,
                    g.steps,
                    g.features,
                    g.components,
                    path,
                )
                write_sequences(
                    path, g.rows, g.steps, g.features, g.components, g.separation, g.seed, config.storage.s3Endpoint
                )
            else:
                log.info(
                    "writing demo data: %d rows, %d features, %d components%s -> %s",
                    g.rows,
                    g.features,
                    g.components,
                    f", {g.missingFraction:.0%} missing" if g.missingFraction else "",
                    path,
                )
                write_blobs(
                    path,
                    g.rows,
                    g.features,
                    g.components,
                    g.separation,
                    g.seed,
                    config.storage.s3Endpoint,
                    g.missingFraction,
                )
    require_input(config)
    return spark.read.format(section.format).options(**section.options).load(path)


def require_input(config: JobConfig) -> None:
    """A clear error for a local input path that is not there, before Spark starts or logs a
    stack trace for it. Other stores (s3a, hdfs) are left to Spark's reader, which may know
    schemes pyarrow does not. Demo data (``input.generate``) is written when missing."""
    from em_spark.storage import local_path

    path = resolve_local(config.input.path)
    if not path or config.input.generate is not None:
        return
    local = local_path(path) if path.startswith("file:") else None
    if local is None or os.path.exists(local):
        return
    night = f" for nightly.date {config.nightly.date}" if config.nightly.date and config.nightly.inputPath else ""
    key = "nightly.inputPath" if night else "input.path"
    raise ConfigError(
        f"no input data at {path}{night} (config key {key!r}, in {config.source}); "
        "check the path, or that the data for that date has landed"
    )


# model.* keys that only some families take; each is passed when the estimator has it.
_FAMILY_KEYS = (
    "covarianceType",
    "regCovar",
    "initMode",
    "handleMissing",
    "kind",
    "smoothing",
    "nCategories",
    "dof",
    "estimateDof",
    "weightsPrior",
    "startProbPrior",
    "transMatPrior",
    "meansPrior",
    "meansWeight",
    "covarsPrior",
    "covarsWeight",
    "docConcentration",
    "topicConcentration",
)


_INPUT_KEYS = ("labelCol", "sequenceCol", "timeCol")


def estimator_from_config(config: JobConfig, initial_model: Any) -> EMEstimator:
    """The configured family's estimator. A family-specific key left at its default gives way to
    the family's own default; set to anything else on a family without it, it is an error."""
    from em_spark.api import ESTIMATORS
    from em_spark.app.config import InputSection, ModelSection

    family = config.model.family
    if family not in ESTIMATORS:
        raise ConfigError(f"config key 'model.family' is {family!r}; available: {sorted(ESTIMATORS)}")
    estimator_class: Callable[..., EMEstimator] = ESTIMATORS[family]  # (each takes its params by keyword)
    estimator = estimator_class(
        k=config.model.k,
        initialModel=initial_model,
        maxIter=config.fit.maxIter,
        tol=config.fit.tol,
        nInit=config.fit.nInit,
        seed=config.fit.seed,
        acceleration=config.fit.acceleration,
        optimizer=config.fit.optimizer,
        miniBatchFraction=config.fit.miniBatchFraction,
        learningOffset=config.fit.learningOffset,
        learningDecay=config.fit.learningDecay,
        dtype=config.fit.dtype,
        numPartitions=config.fit.numPartitions,
        aggregationDepth=config.fit.aggregationDepth,
        initSampleSize=config.fit.initSampleSize,
        featuresCol=config.input.features,
        weightCol=config.input.weightCol,
        checkpointDir=resolve_local(config.run.checkpointDir),
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


def load_saved_model(uri: str, key: str, config: JobConfig, fix: str) -> Any:
    """The model saved at ``uri`` (named by config ``key``), or a ConfigError saying what to do."""
    from em_spark.api import load_model
    from em_spark.storage import redact_uri

    try:
        return load_model(uri, s3Endpoint=config.storage.s3Endpoint)
    except FileNotFoundError:
        raise ConfigError(
            f"config key {key!r}: no saved model at {redact_uri(uri)} (in {config.source}); {fix}"
        ) from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config key {key!r}: cannot load the model at {redact_uri(uri)}: {exc}") from None


def check_outputs_writable(config: JobConfig, model_path: str | None) -> None:
    """Refuse, before any data is read, a checkpoint dir or model path that cannot be written."""
    from em_spark.storage import check_writable

    for key, uri in (("run.checkpointDir", resolve_local(config.run.checkpointDir)), ("output.modelPath", model_path)):
        if not uri:
            continue
        try:
            check_writable(uri, s3_endpoint=config.storage.s3Endpoint)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"config key {key!r}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}; "
                "choose a location this job can write"
            ) from None


def model_exists(uri: str, s3_endpoint: str | None) -> bool:
    from em_spark.api.base import MODEL_FILE
    from em_spark.storage.fs import exists, join, resolve

    fs, path = resolve(join(uri, MODEL_FILE), s3_endpoint=s3_endpoint)
    return exists(fs, path)
