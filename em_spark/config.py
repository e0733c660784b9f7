"""Typed job configuration from YAML, with ``--set key=value`` overrides.

Every section is a dataclass; an unknown key is an error that names the key and the
closest valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

__all__ = ["ConfigError", "JobConfig", "load_config", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "demo.yaml"  # embedded in the package: runs with no files at all


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass
class RunSection:
    id: str | None = None  # run id: a re-run with the same id resumes from its checkpoints
    checkpointDir: str | None = None  # URI; None disables checkpoints
    keepCheckpoints: int = 3
    logFormat: str = "text"  # "text" or "json"
    logLevel: str = "INFO"  # DEBUG also shows the libraries' debug lines (credentials redacted)
    metricsPath: str | None = None  # URI of the run's metrics JSON ({runId} replaced); default <checkpointDir>/<runId>/metrics.json
    pushgateway: str | None = None  # e.g. http://pushgateway:9091: push the run's metrics there when it ends


@dataclass
class SparkSection:
    master: str | None = "local[2]"  # ignored under spark-submit
    appName: str = "em_spark"
    conf: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateSection:
    """A synthetic data set, written once to the input path (for demos): Gaussian blobs
    (columns x0..x{d-1}), or with ``steps`` > 0 sequences from a Gaussian HMM (``obs``)."""

    rows: int = 100_000  # rows, or sequences when steps > 0
    features: int = 2
    components: int = 3  # mixture components, or hidden states
    separation: float = 6.0
    seed: int = 42
    missingFraction: float = 0.0  # blobs: share of entries left null (for imputation demos)
    steps: int = 0  # > 0: sequences of this many steps


@dataclass
class InputSection:
    path: str | None = None
    format: str = "parquet"
    options: dict[str, Any] = field(default_factory=dict)
    features: Any = "features"  # a Vector/array column name, or a list of numeric columns
    weightCol: str | None = None
    labelCol: str | None = None  # known components for semi-supervised EM (null or -1: unknown)
    sequenceCol: str | None = None  # HMMs, long format (one row per step): the sequence id ...
    timeCol: str | None = None  # ... and the column ordering the steps
    generate: GenerateSection | None = None  # when set and the path is empty, write demo data there first


@dataclass
class ModelSection:
    """The model; keys a family does not take must stay at their defaults (else an error says so)."""

    family: str = "gaussian"  # gaussian | kmeans | categorical | gaussian_hmm | categorical_hmm
    k: int = 2
    covarianceType: str = "full"  # gaussian: full|diag|spherical|tied; gaussian_hmm: full|diag
    regCovar: float = 1e-6
    initMode: str = "k-means++"
    initialModel: str | None = None  # path of a saved model to start restart 0 from
    handleMissing: str = "error"  # gaussian: "model" fits rows with missing (null/NaN) entries exactly
    kind: str = "categorical"  # categorical: "categorical" codes or "multinomial" count vectors
    smoothing: float | None = None  # categorical, categorical_hmm: Dirichlet pseudo-count (default: the family's)
    nCategories: Any = None  # categorical(_hmm): categories per feature (default: inferred)


@dataclass
class FitSection:
    maxIter: int = 100
    tol: float = 1e-3
    nInit: int = 1
    seed: int = 0
    numPartitions: int | None = None
    aggregationDepth: int = 2
    initSampleSize: int = 10_000


@dataclass
class OutputSection:
    modelPath: str | None = None  # where train saves the model
    overwrite: bool = False


@dataclass
class ScoreSection:
    modelPath: str | None = None  # model to score with (default: output.modelPath)
    registryModel: str | None = None  # or: score with this registry model's production version
    outputPath: str | None = None  # Parquet output of scored rows
    mode: str = "errorifexists"  # Spark save mode: errorifexists, overwrite
    keepColumns: list[str] | None = None  # input columns to carry over (default: all)
    anomalyThreshold: float | None = None  # rows with logLikelihood below this get anomaly=true
    anomalyCol: str = "anomaly"
    partitionBy: list[str] | None = None  # default: the input's partition columns (date=... directories)


@dataclass
class ImputeSection:
    modelPath: str | None = None  # Gaussian mixture to impute with (default: output.modelPath)
    outputPath: str | None = None  # Parquet output: the input with missing entries filled
    outputCol: str = "imputed"  # array<double>: observed entries as they are, missing ones E[x_m | x_o]
    stdCol: str = "imputedStd"  # array<double>: conditional standard deviation (0 where observed)
    mode: str = "errorifexists"  # Spark save mode: errorifexists, overwrite
    keepColumns: list[str] | None = None  # input columns to carry over (default: all)


@dataclass
class RegistrySection:
    uri: str | None = None  # root URI of the model registry
    modelName: str | None = None  # the registered model this job trains or scores


@dataclass
class NightlySection:
    date: str | None = None  # the night to process (YYYY-MM-DD); default: today (UTC)
    inputPath: str | None = None  # input path template; {date} is replaced; default: input.path
    holdoutFraction: float = 0.2  # rows held out (by a hash of their features) for evaluation
    driftThreshold: float = 0.05  # retrain when the avg log-likelihood per row drops by more (nats)
    promotionTolerance: float = 0.01  # promote unless holdout avg log-likelihood is worse by more (nats)
    freshRestarts: int = 2  # restarts from initMode besides the warm start from production
    force: bool = False  # retrain even without drift


@dataclass
class StorageSection:
    s3Endpoint: str | None = None  # e.g. http://minio:9000; default: AWS_ENDPOINT_URL, else AWS


@dataclass
class SelectSection:
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])  # component counts to try
    covarianceTypes: list[str] = field(default_factory=lambda: ["full"])
    criterion: str = "bic"  # bic | aic: the lower wins
    outputPath: str | None = None  # JSON report of every candidate (any pyarrow.fs URI)


@dataclass
class JobConfig:
    run: RunSection = field(default_factory=RunSection)
    spark: SparkSection = field(default_factory=SparkSection)
    input: InputSection = field(default_factory=InputSection)
    model: ModelSection = field(default_factory=ModelSection)
    fit: FitSection = field(default_factory=FitSection)
    output: OutputSection = field(default_factory=OutputSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    impute: ImputeSection = field(default_factory=ImputeSection)
    storage: StorageSection = field(default_factory=StorageSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    nightly: NightlySection = field(default_factory=NightlySection)
    select: SelectSection = field(default_factory=SelectSection)
    source: str = "<defaults>"  # where the config came from, for messages

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.name != "source"]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, 1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}; valid keys here: {names}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    text = str(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    for section in (GenerateSection,):
        if section.__name__ in text:
            return None if value is None else _build(section, value, path)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"config key {path!r} cannot be null")
    if hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {path!r} must be an integer, got {value!r}")
    elif hint is float or text.startswith("float"):
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {path!r} must be a number, got {value!r}")
        return float(value)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r} must be true or false, got {value!r}")
    elif text.startswith("str") and isinstance(value, (datetime.date, int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads 2026-11-22 as a date and 0042 as a number
    elif text.startswith("str") and not isinstance(value, str):
        raise ConfigError(f"config key {path!r} must be a string, got {value!r}")
    elif text.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
    elif text.startswith("list[int]"):
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"config key {path!r} must be a list of integers, got {value!r}")
    elif text.startswith("list") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"config key {path!r} must be a list of strings, got {value!r}")
    return value


def _apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value (for example model.k=5), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set key {key!r} is not a dotted path like model.k")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read ``path`` (or the embedded demo config), apply ``key=value`` overrides, validate."""
    if path is None:
        text = resources.files("em_spark").joinpath("conf", DEFAULT_CONFIG).read_text()
        source = f"embedded {DEFAULT_CONFIG}"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist; pass --config with a YAML file (see conf/)")
        text, source = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections (run, input, model, ...)")
    for assignment in overrides or []:
        _apply_override(data, assignment)
    config = _build(JobConfig, data, "")
    config.source = source
    _check(config)
    return config


def _check(c: JobConfig) -> None:
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"config key {key!r} {problem} (in {c.source})")

    if c.model.k < 1:
        raise bad("model.k", f"must be >= 1, got {c.model.k}")
    if c.model.covarianceType not in ("full", "diag", "spherical", "tied"):
        raise bad("model.covarianceType", f"must be one of full, diag, spherical, tied; got {c.model.covarianceType!r}")
    if c.model.initMode not in ("k-means++", "random"):
        raise bad("model.initMode", f"must be 'k-means++' or 'random', got {c.model.initMode!r}")
    families = ("gaussian", "kmeans", "categorical", "gaussian_hmm", "categorical_hmm")
    if c.model.family not in families:
        raise bad("model.family", f"must be one of {', '.join(families)}; got {c.model.family!r}")
    if c.model.handleMissing not in ("error", "model"):
        raise bad("model.handleMissing", f"must be 'error' or 'model', got {c.model.handleMissing!r}")
    if c.model.kind not in ("categorical", "multinomial"):
        raise bad("model.kind", f"must be 'categorical' or 'multinomial', got {c.model.kind!r}")
    if c.impute.mode not in ("errorifexists", "overwrite"):
        raise bad("impute.mode", f"must be 'errorifexists' or 'overwrite', got {c.impute.mode!r}")
    if c.model.regCovar < 0:
        raise bad("model.regCovar", f"must be >= 0, got {c.model.regCovar}")
    if c.fit.maxIter < 1:
        raise bad("fit.maxIter", f"must be >= 1, got {c.fit.maxIter}")
    if c.fit.tol < 0:
        raise bad("fit.tol", f"must be >= 0, got {c.fit.tol}")
    if c.fit.nInit < 1:
        raise bad("fit.nInit", f"must be >= 1, got {c.fit.nInit}")
    if c.run.keepCheckpoints < 1:
        raise bad("run.keepCheckpoints", f"must be >= 1, got {c.run.keepCheckpoints}")
    if c.run.logLevel not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise bad("run.logLevel", f"must be DEBUG, INFO, WARNING or ERROR, got {c.run.logLevel!r}")
    if c.run.logFormat not in ("text", "json"):
        raise bad("run.logFormat", f"must be 'text' or 'json', got {c.run.logFormat!r}")
    if c.run.metricsPath is not None:
        leftover = c.run.metricsPath.replace("{runId}", "")
        if not c.run.metricsPath.strip() or "{" in leftover or "}" in leftover:
            raise bad("run.metricsPath", f"must be a path or URI, optionally with {{runId}}; got {c.run.metricsPath!r}")
    if c.run.pushgateway is not None:
        import urllib.parse

        url = urllib.parse.urlsplit(c.run.pushgateway)
        try:
            url.port  # raises on a port that is not a number
        except ValueError:
            url = url._replace(netloc="")
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise bad("run.pushgateway", f"must be an http(s) URL like http://pushgateway:9091, got {c.run.pushgateway!r}")
    if c.score.mode not in ("errorifexists", "overwrite"):
        raise bad("score.mode", f"must be 'errorifexists' or 'overwrite', got {c.score.mode!r}")
    if not c.select.ks or any(k < 1 for k in c.select.ks):
        raise bad("select.ks", f"must be a non-empty list of integers >= 1, got {c.select.ks}")
    unknown = [t for t in c.select.covarianceTypes if t not in ("full", "diag", "spherical", "tied")]
    if unknown or not c.select.covarianceTypes:
        raise bad("select.covarianceTypes", f"must be a non-empty list of full, diag, spherical, tied; got {c.select.covarianceTypes}")
    if c.select.criterion not in ("bic", "aic"):
        raise bad("select.criterion", f"must be 'bic' or 'aic', got {c.select.criterion!r}")
    if not 0.0 < c.nightly.holdoutFraction < 1.0:
        raise bad("nightly.holdoutFraction", f"must be between 0 and 1 (exclusive), got {c.nightly.holdoutFraction}")
    if c.nightly.freshRestarts < 0:
        raise bad("nightly.freshRestarts", f"must be >= 0, got {c.nightly.freshRestarts}")
    if c.nightly.date is not None:
        try:
            datetime.date.fromisoformat(str(c.nightly.date))
        except ValueError:
            raise bad("nightly.date", f"must be a date like 2026-11-22, got {c.nightly.date!r}") from None
    if c.registry.modelName is not None:
        from em_spark.storage import validate_name

        try:
            validate_name(c.registry.modelName, "model name")
        except ValueError as exc:
            raise bad("registry.modelName", f"is invalid: {exc}") from None
    features = c.input.features
    if not (isinstance(features, str) or (isinstance(features, list) and features and all(isinstance(f, str) for f in features))):
        raise bad("input.features", f"must be a column name or a non-empty list of column names, got {features!r}")
    if c.run.id is not None:
        from em_spark.storage import validate_name

        try:
            validate_name(c.run.id, "run id")
        except ValueError as exc:
            raise bad("run.id", f"is invalid: {exc}") from None
