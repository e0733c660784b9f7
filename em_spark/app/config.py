"""Typed job configuration from YAML, with ``--set key=value`` overrides.

Every section is a dataclass; an unknown key is an error that names the key and the
closest valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_type_hints

import yaml

from em_spark.engine.acceleration import ACCELERATIONS
from em_spark.engine.arrow_input import DTYPES, InputSpec
from em_spark.engine.settings import OPTIMIZERS, FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models import FAMILIES as _MODEL_FAMILIES
from em_spark.models import CategoricalMixtureFamily, GaussianFamily, GaussianHMMFamily, StudentTMixtureFamily
from em_spark.models.base import DEFAULT_K
from em_spark.models.hmm import HMM_COVARIANCE_TYPES
from em_spark.models.kernels import COVARIANCE_TYPES
from em_spark.models.student_t import MAX_DOF, MIN_DOF

__all__ = ["DEFAULT_CONFIG", "ConfigError", "JobConfig", "load_config"]

DEFAULT_CONFIG = "demo.yaml"  # embedded in the package: runs with no files at all


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key.

    The message is always one line (the CLI prints it after ``em-spark: error:``): line
    breaks, say from a YAML error or another library's message, are folded into spaces.
    """

    def __init__(self, message: Any = "") -> None:
        super().__init__(_one_line(str(message)))


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def _show(value: Any, limit: int = 100) -> str:
    """``repr(value)`` (one line, as repr escapes line breaks), shortened when long."""
    text = repr(_plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class MlflowSection:
    """Experiment tracking (the ``em-spark[mlflow]`` extra; see em_spark.app.tracking)."""

    trackingUri: str | None = None  # e.g. http://mlflow:5000; None: no tracking
    experiment: str = "em_spark"  # the MLflow experiment runs are logged under (created when missing)


@dataclass
class RunSection:
    id: str | None = None  # run id: a re-run with the same id resumes from its checkpoints
    checkpointDir: str | None = None  # URI; None disables checkpoints
    keepCheckpoints: int = FitSettings.keep_checkpoints
    logFormat: str = "text"  # "text" or "json"
    logLevel: str = "INFO"  # DEBUG also shows the libraries' debug lines (credentials redacted)
    metricsPath: str | None = (
        None  # URI of the run's metrics JSON ({runId} replaced); default <checkpointDir>/<runId>/metrics.json
    )
    pushgateway: str | None = None  # e.g. http://pushgateway:9091: push the run's metrics there when it ends
    mlflow: MlflowSection = field(default_factory=MlflowSection)  # experiment tracking (em-spark[mlflow])


@dataclass
class SparkSection:
    master: str | None = "local[2]"  # ignored under spark-submit, and when remote is set
    appName: str = "em_spark"
    conf: dict[str, Any] = field(default_factory=dict)
    # Spark Connect: sc://host:15002[/;token=...] makes the command a Connect client (as the
    # SPARK_REMOTE environment variable does); None: a classic session on ``master``
    remote: str | None = None


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

    family: str = (
        "gaussian"  # gaussian | kmeans | categorical | poisson | student_t | gaussian_hmm | categorical_hmm | lda
    )
    # defaults: the families' own (the Gaussian family's where families differ)
    k: int = DEFAULT_K
    covarianceType: str = GaussianFamily.covariance_type  # gaussian: full|diag|spherical|tied; gaussian_hmm: full|diag
    regCovar: float = GaussianFamily.reg_covar
    initMode: str = GaussianFamily.init_mode
    initialModel: str | None = None  # path of a saved model to start restart 0 from
    handleMissing: str = (
        GaussianFamily.handle_missing
    )  # gaussian, gaussian_hmm, categorical_hmm: "model" fits missing (null/NaN) entries / steps exactly
    kind: str = CategoricalMixtureFamily.kind  # categorical: "categorical" codes or "multinomial" count vectors
    smoothing: float | None = (
        None  # categorical(_hmm): Dirichlet pseudo-count; poisson: Gamma prior (default: the family's)
    )
    nCategories: Any = None  # categorical(_hmm): categories per feature (default: inferred)
    weightsPrior: float = GaussianFamily.weights_prior  # the mixtures: Dirichlet concentration of the weights
    # HMMs (hmmlearn's priors; the defaults are none): Dirichlet concentrations of the chain ...
    startProbPrior: float = GaussianHMMFamily.startprob_prior
    transMatPrior: float = GaussianHMMFamily.transmat_prior
    # ... and, gaussian and gaussian_hmm, the prior on the means and covariances
    meansPrior: float = GaussianHMMFamily.means_prior
    meansWeight: float = GaussianHMMFamily.means_weight
    covarsPrior: float = GaussianHMMFamily.covars_prior
    covarsWeight: float = GaussianHMMFamily.covars_weight
    dof: float = StudentTMixtureFamily.dof  # student_t: degrees of freedom (initial, or fixed)
    estimateDof: bool = StudentTMixtureFamily.estimate_dof  # student_t: estimate them per component
    docConcentration: Any = None  # lda: alpha > 0, one number or k of them (default: 1/k)
    topicConcentration: float | None = None  # lda: eta > 0 (default: 1/k)


@dataclass
class FitSection:
    # defaults: the engine's own
    maxIter: int = FitSettings.max_iter
    tol: float = FitSettings.tol
    nInit: int = FitSettings.n_init
    seed: int = FitSettings.seed
    acceleration: str = FitSettings.acceleration  # none | squarem (SQUAREM-accelerated EM)
    optimizer: str = FitSettings.optimizer  # batch | online (stepwise EM on mini-batches)
    miniBatchFraction: float = FitSettings.mini_batch_fraction  # online: the share each step reads
    learningOffset: float = FitSettings.learning_offset  # online: tau in rho_t = (t + tau) ** -kappa
    learningDecay: float = FitSettings.learning_decay  # online: kappa
    dtype: str = InputSpec.dtype  # float64 | float32 (blocks stored in float32, statistics in float64)
    numPartitions: int | None = None
    aggregationDepth: int = DEFAULT_AGGREGATION_DEPTH
    initSampleSize: int = DEFAULT_SAMPLE_SIZE


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
    # full: refit tonight's data from production (and fresh restarts); incremental: model.update()
    # production with tonight's rows only, forgetting older data with halfLife (NIGHTLY_MODES)
    mode: str = "full"
    halfLife: float = 7.0  # incremental: nights after which a night's data counts half (> 0)


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


# -- reading YAML ------------------------------------------------------------------------------


class _Int(int):
    """An integer as YAML read it, remembering the text it was written as: a string-valued key
    takes that text, so ``run.id: 0042`` stays ``'0042'`` (YAML 1.1 would make it the octal 34)."""

    text: str


class _Float(float):
    """A float as YAML read it, remembering its text (``1.0e-6`` stays ``'1.0e-6'`` in spark.conf)."""

    text: str


def _plain(value: Any) -> Any:
    """``value`` with the YAML number wrappers replaced by plain ``int`` and ``float``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, _Float):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    """A scalar as the text a string-valued key takes (the YAML text for numbers)."""
    return getattr(value, "text", None) or str(value)


if TYPE_CHECKING:  # a mixin over SafeLoader or CSafeLoader: type-checked as the first
    _LoaderBase = yaml.SafeLoader
else:
    _LoaderBase = object


class _Strict(_LoaderBase):
    """PyYAML's SafeLoader, stricter where it would silently do the wrong thing.

    A key given twice in one mapping is an error naming the key and both lines (SafeLoader
    keeps the last). Timestamps stay the text they were written as (every date-like key is a
    string, and SafeLoader raises a bare ValueError on ``2026-13-01``). Numbers remember their
    text (see :class:`_Int`).
    """

    where = "<config>"  # the file or "--set", for messages
    root = ""  # the dotted key the document is the value of ("" for a config file)

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths: dict[int, str] = {}
        _record_paths(node, self.root, self._paths, set())
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: explicit keys override merged ones, as YAML says
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error names it
            mark = key_node.start_mark
            line = f"line {mark.line + 1}" if not self.root else f"line {mark.line + 1} column {mark.column + 1}"
            if first is not None:
                parent = self._paths.get(id(node), "")
                path = f"{parent}.{_text(key)}" if parent else _text(key)
                raise ConfigError(
                    f"config key {path!r} is given twice, at {first} and {line}; "
                    f"YAML would silently keep the last, so remove one (in {self.where})"
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        value = _Int(yaml.SafeLoader.construct_yaml_int(self, node))
        value.text = node.value
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        value = _Float(yaml.SafeLoader.construct_yaml_float(self, node))
        value.text = node.value
        return value


def _strict_loader(base: type) -> type[_Strict]:
    loader = cast("type[_Strict]", type(f"_Strict{base.__name__}", (_Strict, base), {}))
    loader.add_constructor("tag:yaml.org,2002:int", _Strict.construct_yaml_int)
    loader.add_constructor("tag:yaml.org,2002:float", _Strict.construct_yaml_float)
    # types-PyYAML binds the constructor's self to the loader class; SafeLoader's own method fits it at runtime
    loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)  # type: ignore[type-var]
    return loader


# libyaml's parser when PyYAML was built with it (the same events, a few times faster), else PyYAML's own
_PythonLoader = _strict_loader(yaml.SafeLoader)
_StrictLoader = _strict_loader(yaml.CSafeLoader) if getattr(yaml, "__with_libyaml__", False) else _PythonLoader


def _record_paths(node: yaml.Node, path: str, paths: dict[int, str], seen: set[int]) -> None:
    """The dotted key of every node under ``node`` (for messages about duplicate keys)."""
    if id(node) in seen:  # an alias: already walked (and maybe recursive)
        return
    seen.add(id(node))
    paths[id(node)] = path
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            _record_paths(value_node, f"{path}.{name}" if path else str(name), paths, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_paths(item, f"{path}[{i}]", paths, seen)


def _yaml_problem(exc: BaseException) -> str:
    """A one-line account of why YAML text could not be read."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = []
        if exc.context:
            parts.append(exc.context + (f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""))
        if exc.problem:
            mark = exc.problem_mark
            parts.append(exc.problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""))
        return _one_line(", ".join(parts) or str(exc))
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return _one_line(f"{type(exc).__name__}: {exc}")  # a constructor's own error, e.g. !!int abc


def _load_yaml(text: str, where: str, root: str = "", loader_class: type | None = None) -> Any:
    """Parse ``text``; every failure (PyYAML's errors, and the ValueError or TypeError some of its
    constructors raise) comes out as one ConfigError."""
    loader = (loader_class or _StrictLoader)(text)
    loader.where, loader.root = where, root
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary between user text and the job
        if root:
            raise ConfigError(
                f"config key {root!r} has a value that is not valid YAML, {_show(text)}: {_yaml_problem(exc)} (in {where})"
            ) from None
        raise ConfigError(f"config file {where} is not valid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


# -- building typed sections ---------------------------------------------------------------------


def _section_type(hint: Any) -> type | None:
    """The dataclass a field holds (``GenerateSection | None`` counts), else None."""
    if dataclasses.is_dataclass(hint):
        return cast(type, hint)  # (a hint: the class, not an instance)
    for section in (GenerateSection,):
        if section.__name__ in str(hint):
            return section
    return None


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name != "source"}


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if data is None:
        return cls()
    hints = _field_hints(cls)
    names = list(hints)
    if not isinstance(data, dict):
        raise ConfigError(
            f"config key {where!r} must be a mapping of its keys ({', '.join(names)}), got {_show(data)} (in {source})"
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, 1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}; valid keys here: {names} (in {source})")
        kwargs[key] = _coerce(hints[key], value, path, source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str, source: str) -> Any:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"config key {path!r} {problem}, got {_show(value)} (in {source})")

    text = str(hint)
    section = _section_type(hint)
    if section is not None:
        return None if value is None and "None" in text else _build(section, value, path, source)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"config key {path!r} cannot be null (in {source})")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int or text.startswith("int"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("must be an integer")
        return int(value)
    if hint is float or text.startswith("float"):
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if not number and not isinstance(value, float):
            raise bad("must be a number")
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise bad("must be a finite number") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if hint is str or text.startswith("str"):
        if number:
            return _text(value)  # YAML reads 0042 and 1.0 as numbers; the key wants the text
        if not isinstance(value, str):
            raise bad("must be a string")
        return value
    if text.startswith("dict"):
        return _flat_mapping(value, path, source)
    if text.startswith("list[int]"):
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise bad("must be a list of integers")
        return [int(v) for v in value]
    if text.startswith("list"):
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad("must be a list of strings")
        return value
    return _plain(value)


def _flat_mapping(value: Any, path: str, source: str) -> dict[str, str]:
    """Spark properties and reader options: a flat mapping of names to strings. Numbers and
    booleans become the strings Spark parses (``8`` -> ``"8"``, ``true`` -> ``"true"``)."""
    if not isinstance(value, dict):
        raise ConfigError(f"config key {path!r} must be a mapping of names to values, got {_show(value)} (in {source})")
    out = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"config key {path!r} has a key {_show(name)} that is not a non-empty name (in {source})")
        where = f"{path}.{name}"
        if isinstance(item, bool):
            out[name] = "true" if item else "false"
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(
                f"config key {where!r} must be a string, a finite number or a boolean, got {_show(item)}; "
                f"quote it if you mean the text (in {source})"
            )
        elif isinstance(item, (int, float)):
            out[name] = _text(item)
        elif isinstance(item, str):
            out[name] = item
        else:
            what = (
                "null"
                if item is None
                else "a mapping"
                if isinstance(item, dict)
                else "a list"
                if isinstance(item, list)
                else type(item).__name__
            )
            raise ConfigError(
                f"config key {where!r} must be a string, a number or a boolean (Spark properties and options are "
                f"flat name: value pairs), got {what}: {_show(item)} (in {source})"
            )
    return out


def _apply_override(data: dict, assignment: str) -> None:
    """Apply ``key=value`` to the raw config ``data``. The key is a dotted path through the
    sections; inside a mapping-valued key (spark.conf, input.options) the rest of the path is
    one name, as Spark property names have dots: ``spark.conf.spark.sql.shuffle.partitions=8``."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value (for example model.k=5), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"--set key {key!r} is not a dotted path like model.k")
    value = _load_yaml(raw, "--set", key) if raw.strip() else None
    node: dict = data
    cls: type | None = JobConfig  # None once the path leaves the known keys (_build then names it)
    i = 0
    while i < len(parts) - 1:
        here = ".".join(parts[: i + 1])
        hint = _field_hints(cls).get(parts[i]) if cls is not None else None
        section = _section_type(hint) if hint is not None else None
        if hint is not None and section is None and not str(hint).startswith("dict"):
            raise ConfigError(
                f"config key {here!r} is a single value, not a section: --set {key}=... names a key inside it (in --set)"
            )
        child = node.get(parts[i])
        if child is None:
            child = node[parts[i]] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"config key {here!r} holds {_show(child)}, not a mapping that --set {key} could go into (in --set)"
            )
        node = child
        if hint is not None and section is None:  # a mapping-valued key: the rest is one name
            node[".".join(parts[i + 1 :])] = value
            return
        cls, i = section, i + 1
    node[parts[-1]] = value


def load_config(path: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read ``path`` (or the embedded demo config), apply ``key=value`` overrides, validate.

    Every problem, however deep, is raised as one :class:`ConfigError` naming the key."""
    if path is None:
        text = resources.files("em_spark").joinpath("conf").joinpath(DEFAULT_CONFIG).read_text()
        source = f"embedded {DEFAULT_CONFIG}"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist; pass --config with a YAML file (see conf/)")
        try:
            text, source = p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path!r} cannot be read: {exc}") from None
    data = _load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections (run, input, model, ...)")
    for assignment in overrides or []:
        _apply_override(data, assignment)
    if overrides:
        source = f"{source} with --set"
    config = _build(JobConfig, data, "", source)
    config.source = source
    _check(config)
    return config


# -- checking values -------------------------------------------------------------------------

# the allowed values are the models' own (models is pure numpy: cheap to import here)
FAMILIES = tuple(_MODEL_FAMILIES)  # family names, in the models' order
# the columns a scored row gets (the models' default output column names)
SCORE_COLUMNS = ("prediction", "probability", "logLikelihood")

# Numbers with a range: key -> (test, what is allowed). A float must be finite as well.
_RANGES: dict[str, tuple[Any, str]] = {
    "run.keepCheckpoints": (lambda v: v >= 1, ">= 1"),
    "model.k": (lambda v: v >= 1, ">= 1"),
    "model.regCovar": (lambda v: v >= 0, ">= 0"),
    "model.smoothing": (lambda v: v >= 0, ">= 0 (a pseudo-count)"),
    "model.weightsPrior": (lambda v: v > 0, "> 0 (a Dirichlet concentration; 1 is flat)"),
    "model.startProbPrior": (lambda v: v > 0, "> 0 (a Dirichlet concentration; 1 is flat)"),
    "model.transMatPrior": (lambda v: v > 0, "> 0 (a Dirichlet concentration; 1 is flat)"),
    "model.meansWeight": (lambda v: v >= 0, ">= 0 (pseudo-observations)"),
    "model.covarsPrior": (lambda v: v >= 0, ">= 0"),
    "model.covarsWeight": (lambda v: v >= 0, ">= 0 (pseudo-observations)"),
    "model.dof": (lambda v: MIN_DOF <= v <= MAX_DOF, f"in [{MIN_DOF}, {MAX_DOF:g}] (degrees of freedom)"),
    "model.topicConcentration": (lambda v: v > 0, "> 0 (eta, the Dirichlet prior of the topics' words)"),
    "fit.maxIter": (lambda v: v >= 1, ">= 1"),
    "fit.tol": (lambda v: v >= 0, ">= 0"),
    "fit.nInit": (lambda v: v >= 1, ">= 1"),
    "fit.miniBatchFraction": (lambda v: 0 < v <= 1, "in (0, 1] (the share of the data each online step reads)"),
    "fit.learningOffset": (lambda v: v >= 0, ">= 0 (tau)"),
    "fit.learningDecay": (lambda v: 0.5 < v <= 1, "in (0.5, 1] (kappa)"),
    "fit.numPartitions": (lambda v: 1 <= v <= 2**31 - 1, "between 1 and 2147483647, or null for one per core"),
    "fit.aggregationDepth": (lambda v: v >= 1, ">= 1 (the depth of the tree reduce)"),
    "fit.initSampleSize": (lambda v: v >= 1, ">= 1 (rows sampled for initialization)"),
    "input.generate.rows": (lambda v: v >= 1, ">= 1"),
    "input.generate.features": (lambda v: v >= 1, ">= 1"),
    "input.generate.components": (lambda v: v >= 1, ">= 1"),
    "input.generate.separation": (lambda v: v >= 0, ">= 0"),
    "input.generate.seed": (lambda v: v >= 0, ">= 0 (numpy takes non-negative seeds)"),
    "input.generate.missingFraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "input.generate.steps": (lambda v: v >= 0, ">= 0"),
    "nightly.holdoutFraction": (lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"),
    "nightly.driftThreshold": (lambda v: v >= 0, ">= 0 (nats per row)"),
    "nightly.freshRestarts": (lambda v: v >= 0, ">= 0"),
    "nightly.halfLife": (lambda v: v > 0, "> 0 (nights after which a night's data counts half)"),
}

#: list keys whose entries may repeat (a number per topic or per feature: equal ones are a choice)
_REPEATS_ALLOWED = frozenset({"model.docConcentration", "model.nCategories"})

#: how the nightly job fits tonight's candidate (nightly.mode)
NIGHTLY_MODES = ("full", "incremental")


def _leaves(section: object, prefix: str = "") -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, value, may be null) of every key of every section, walking the dataclasses."""
    kind: type = type(section)
    for name, hint in _field_hints(kind).items():
        value, key = getattr(section, name), f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key)
        else:
            yield key, value, "None" in str(hint)


def _check(c: JobConfig) -> None:
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"config key {key!r} {problem} (in {c.source})")

    # Rules for every key, by the kind of value it holds.
    for key, value, optional in _leaves(c):
        if isinstance(value, float) and not math.isfinite(value):
            rule = _RANGES.get(key, (None, ""))[1]
            raise bad(key, f"must be a finite number{' ' + rule if rule else ''}, got {value}")
        if key in _RANGES and isinstance(value, (int, float)) and not _RANGES[key][0](value):
            raise bad(key, f"must be {_RANGES[key][1]}, got {value}")
        if isinstance(value, str) and not value.strip():
            raise bad(
                key,
                f"must not be empty, got {value!r}" + ("; leave it out or set it to null for none" if optional else ""),
            )
        if isinstance(value, list):
            if any(isinstance(v, str) and not v.strip() for v in value):
                raise bad(key, f"must not hold an empty name, got {_show(value)}")
            repeated = [v for i, v in enumerate(value) if v in value[:i]]
            if repeated and key not in _REPEATS_ALLOWED:
                raise bad(key, f"lists {repeated[0]!r} more than once, got {_show(value)}")

    if c.model.covarianceType not in COVARIANCE_TYPES:
        raise bad("model.covarianceType", f"must be one of full, diag, spherical, tied; got {c.model.covarianceType!r}")
    if c.fit.acceleration not in ACCELERATIONS:
        raise bad("fit.acceleration", f"must be one of {', '.join(ACCELERATIONS)}; got {c.fit.acceleration!r}")
    if c.fit.optimizer not in OPTIMIZERS:
        raise bad("fit.optimizer", f"must be one of {', '.join(OPTIMIZERS)}; got {c.fit.optimizer!r}")
    if c.fit.optimizer == "online" and c.fit.acceleration != ACCELERATIONS[0]:
        raise bad(
            "fit.acceleration", f"must be {ACCELERATIONS[0]} with fit.optimizer: online; got {c.fit.acceleration!r}"
        )
    if c.fit.dtype not in DTYPES:
        raise bad("fit.dtype", f"must be one of {', '.join(DTYPES)}; got {c.fit.dtype!r}")
    if c.nightly.mode not in NIGHTLY_MODES:
        raise bad(
            "nightly.mode",
            f"must be one of {', '.join(NIGHTLY_MODES)} (incremental: update production with tonight's rows "
            f"only); got {c.nightly.mode!r}",
        )
    if c.model.initMode not in ("k-means++", "random"):
        raise bad("model.initMode", f"must be 'k-means++' or 'random', got {c.model.initMode!r}")
    if c.model.family not in FAMILIES:
        raise bad("model.family", f"must be one of {', '.join(FAMILIES)}; got {c.model.family!r}")
    if c.model.family == "gaussian_hmm" and c.model.covarianceType not in HMM_COVARIANCE_TYPES:
        raise bad(
            "model.covarianceType",
            f"must be one of {', '.join(HMM_COVARIANCE_TYPES)} for model.family 'gaussian_hmm', "
            f"got {c.model.covarianceType!r}",
        )
    if c.model.handleMissing not in ("error", "model"):
        raise bad("model.handleMissing", f"must be 'error' or 'model', got {c.model.handleMissing!r}")
    if c.model.kind not in ("categorical", "multinomial"):
        raise bad("model.kind", f"must be 'categorical' or 'multinomial', got {c.model.kind!r}")
    _check_categories(c, bad)
    _check_doc_concentration(c, bad)
    if c.impute.mode not in ("errorifexists", "overwrite"):
        raise bad("impute.mode", f"must be 'errorifexists' or 'overwrite', got {c.impute.mode!r}")
    if c.run.logLevel not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise bad("run.logLevel", f"must be DEBUG, INFO, WARNING or ERROR, got {c.run.logLevel!r}")
    if c.run.logFormat not in ("text", "json"):
        raise bad("run.logFormat", f"must be 'text' or 'json', got {c.run.logFormat!r}")
    if c.run.metricsPath is not None:
        leftover = c.run.metricsPath.replace("{runId}", "")
        if not c.run.metricsPath.strip() or "{" in leftover or "}" in leftover:
            raise bad("run.metricsPath", f"must be a path or URI, optionally with {{runId}}; got {c.run.metricsPath!r}")
    if c.run.pushgateway is not None and not _is_http_url(c.run.pushgateway, path=True):
        raise bad("run.pushgateway", f"must be an http(s) URL like http://pushgateway:9091, got {c.run.pushgateway!r}")
    uri = c.run.mlflow.trackingUri
    if uri is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+|databricks(-uc)?", uri):
        raise bad(
            "run.mlflow.trackingUri",
            f"must be an MLflow tracking URI like http://mlflow:5000 or databricks (no spaces), got {uri!r}",
        )
    if c.storage.s3Endpoint is not None:
        endpoint = c.storage.s3Endpoint
        if not _is_http_url(endpoint if "://" in endpoint else "https://" + endpoint, path=False):
            raise bad("storage.s3Endpoint", f"must look like http://host:port or https://host, got {endpoint!r}")
    if c.spark.master is not None and any(ch.isspace() for ch in c.spark.master):
        raise bad(
            "spark.master",
            f"must be a Spark master URL like local[2], spark://host:7077 or yarn (no spaces), got {c.spark.master!r}",
        )
    if c.spark.remote is not None and not _is_connect_url(c.spark.remote):
        raise bad(
            "spark.remote",
            f"must be a Spark Connect URL like sc://host:15002 (or sc://host:443/;use_ssl=true;token=...), "
            f"got {c.spark.remote!r}",
        )
    if c.score.mode not in ("errorifexists", "overwrite"):
        raise bad("score.mode", f"must be 'errorifexists' or 'overwrite', got {c.score.mode!r}")
    _check_output_columns(c, bad)
    if not c.select.ks or any(k < 1 for k in c.select.ks):
        raise bad("select.ks", f"must be a non-empty list of integers >= 1, got {c.select.ks}")
    allowed = HMM_COVARIANCE_TYPES if c.model.family == "gaussian_hmm" else COVARIANCE_TYPES
    if not c.select.covarianceTypes or any(t not in allowed for t in c.select.covarianceTypes):
        raise bad(
            "select.covarianceTypes",
            f"must be a non-empty list of {', '.join(allowed)}; got {c.select.covarianceTypes}",
        )
    if c.select.criterion not in ("bic", "aic"):
        raise bad("select.criterion", f"must be 'bic' or 'aic', got {c.select.criterion!r}")
    if c.nightly.date is not None:
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", c.nightly.date):
                raise ValueError
            datetime.date.fromisoformat(c.nightly.date)
        except ValueError:
            raise bad("nightly.date", f"must be a date like 2026-11-22 (YYYY-MM-DD), got {c.nightly.date!r}") from None
    generate = c.input.generate
    if generate is not None and generate.steps > 0 and generate.missingFraction != 0:
        raise bad(
            "input.generate.missingFraction",
            f"must be 0 with input.generate.steps > 0 (sequences have no missing entries), got {generate.missingFraction}",
        )
    features = c.input.features
    if not (
        isinstance(features, str)
        or (isinstance(features, list) and features and all(isinstance(f, str) for f in features))
    ):
        raise bad("input.features", f"must be a column name or a non-empty list of column names, got {_show(features)}")
    if (c.input.sequenceCol is None) != (c.input.timeCol is None):
        given, missing = (
            ("input.sequenceCol", "input.timeCol")
            if c.input.timeCol is None
            else ("input.timeCol", "input.sequenceCol")
        )
        raise bad(
            given, f"needs {missing} too: long-format sequences take both columns (or neither), but {missing} is null"
        )
    from em_spark.storage import validate_name

    for key, value, what in (
        ("run.id", c.run.id, "run id"),
        ("registry.modelName", c.registry.modelName, "model name"),
        ("score.registryModel", c.score.registryModel, "model name"),
    ):
        if value is not None:
            try:
                validate_name(value, what)
            except ValueError as exc:
                raise bad(key, f"is invalid: {exc}") from None


def _check_categories(c: JobConfig, bad: Any) -> None:
    value = c.model.nCategories
    if value is None:
        return

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if c.model.family == "categorical_hmm":
        if not count(value):
            raise bad(
                "model.nCategories",
                f"must be an integer >= 1 (the number of symbols) or null to infer it, got {_show(value)}",
            )
        return
    if not (count(value) or (isinstance(value, list) and value and all(count(v) for v in value))):
        raise bad(
            "model.nCategories",
            f"must be an integer >= 1, a non-empty list of them (categories per feature) or null to infer it, got {_show(value)}",
        )
    if c.model.kind == "multinomial" and isinstance(value, list) and len(value) != 1:
        raise bad(
            "model.nCategories",
            f"must be one integer (the number of count columns) with model.kind 'multinomial', got {_show(value)}",
        )


def _check_doc_concentration(c: JobConfig, bad: Any) -> None:
    value = c.model.docConcentration
    if value is None:
        return

    def positive(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    if not (positive(value) or (isinstance(value, list) and len(value) == c.model.k and all(map(positive, value)))):
        raise bad(
            "model.docConcentration",
            f"must be a number > 0 or a list of model.k={c.model.k} numbers > 0 (alpha, the Dirichlet prior of "
            f"each document's topic shares), or null for 1/k; got {_show(value)}",
        )


def _check_output_columns(c: JobConfig, bad: Any) -> None:
    """Output column names that would collide (Spark then fails the write after all the work)."""
    score = c.score
    keep = score.keepColumns or []
    taken = [col for col in keep if col in SCORE_COLUMNS]
    if taken:
        raise bad(
            "score.keepColumns", f"must not hold {taken[0]!r}: the scores are written under {', '.join(SCORE_COLUMNS)}"
        )
    if score.anomalyCol in keep:
        raise bad(
            "score.keepColumns", f"must not hold {score.anomalyCol!r}: score.anomalyCol is written under that name"
        )
    if score.anomalyCol in SCORE_COLUMNS:
        raise bad(
            "score.anomalyCol",
            f"must differ from the score columns {', '.join(SCORE_COLUMNS)}, got {score.anomalyCol!r}",
        )
    if score.keepColumns is not None and score.partitionBy:
        unknown = [col for col in score.partitionBy if col not in score.keepColumns]
        if unknown:
            raise bad("score.partitionBy", f"must name columns of score.keepColumns, got {unknown[0]!r} (not kept)")
    impute = c.impute
    if impute.outputCol == impute.stdCol:
        raise bad("impute.stdCol", f"must differ from impute.outputCol, got {impute.stdCol!r} for both")
    clash = [col for col in impute.keepColumns or [] if col in (impute.outputCol, impute.stdCol)]
    if clash:
        raise bad(
            "impute.keepColumns",
            f"must not hold {clash[0]!r}: impute.outputCol and impute.stdCol are written under that name",
        )


def _is_connect_url(text: str) -> bool:
    """``text`` is sc://host[:port][/;key=value...] (or local[...], pyspark's in-process server)."""
    from em_spark.engine.session import parse_connect_url

    try:
        parse_connect_url(text)
    except ValueError:
        return False
    return True


def _is_http_url(text: str, *, path: bool) -> bool:
    """``text`` is http(s)://host[:port] (with ``path``: and optionally a path), nothing else."""
    import urllib.parse

    try:
        url = urllib.parse.urlsplit(text)
        _ = url.port  # raises on a port that is not a number
    except ValueError:
        return False
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        return False
    return path or url.path in ("", "/")
