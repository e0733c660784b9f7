"""pyspark.ml-style estimators and models over the engine, for any model family.

A family-specific estimator only says which family to build from its params and
which arrays its fitted model exposes; fitting, transform, scoring, save and load
live here once.
"""

from __future__ import annotations

import json
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from em_spark.engine.arrow_input import DTYPES, InputSpec
from em_spark.engine.dataframe_source import DataFrameBlockSource
from em_spark.engine.executor_check import check_executors
from em_spark.engine.incremental import DecayedSource, RecordingSource, decay_factor, stats_digest
from em_spark.engine.job_tags import tagged_jobs
from em_spark.engine.loop import FitResult, fit_em, run_lock
from em_spark.engine.scoring import score_frame
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.engine.spark_source import SparkBlockSource, describe_features, load_blocks
from em_spark.engine.validation import DataValidationError
from em_spark.models.base import DEFAULT_K, EMFamily
from em_spark.models.base import Params as ParamArrays
from em_spark.models.criteria import information_criteria
from em_spark.models.gaussian import GaussianFamily
from em_spark.stats import Stats
from em_spark.storage.names import MODEL_FILE

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "MODEL_FILE",
    "EMEstimator",
    "EMModel",
    "EMParams",
    "EMSummary",
    "HasCovariance",
    "HasGaussianPrior",
    "HasSmoothing",
    "ParamAccessors",
]

log = logging.getLogger("em_spark")

MODEL_FORMAT = 1


_T = TypeVar("_T")


def _features(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"featuresCol must be a column name or a list of numeric column names, got {value!r}")


def _dtype(value: Any) -> str:
    if value not in DTYPES:
        raise ValueError(
            f"dtype must be one of {list(DTYPES)}, got {value!r}; 'float32' halves executor memory and "
            "disk (statistics stay float64), 'float64' is the default"
        )
    return str(value)


def optional_string(value: Any) -> str | None:
    """A Param converter for an optional column name: None or "" is None."""
    return None if value is None or value == "" else TypeConverters.toString(value)


@overload
def ml_param(name: str, doc: str) -> Param[Any]: ...
@overload
def ml_param(name: str, doc: str, converter: Callable[[Any], _T]) -> Param[_T]: ...
def ml_param(name: str, doc: str, converter: Callable[[Any], Any] = TypeConverters.identity) -> Param[Any]:
    """A class-level pyspark.ml Param (shared by every estimator and model module in api/)."""
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class ParamAccessors(Params):
    """Base of the params classes: what their declared ``setX(value)`` accessors do."""

    def _set_or_clear(self, name: str, value: Any) -> Self:
        """Set one param as ``setParams`` does: None clears it (back to its default)."""
        if value is None:
            self.clear(self.getParam(name))
        else:
            self._set(**{name: value})
        return self


class HasCovariance(ParamAccessors):
    """Accessors of the Gaussian families' covariance params (each params class declares the Params)."""

    covarianceType: Param[str]
    regCovar: Param[float]

    def getCovarianceType(self) -> str:
        """Get the covariance type (or its default)."""
        return self.getOrDefault(self.covarianceType)

    def setCovarianceType(self, value: str) -> Self:
        """Set the covariance type."""
        return self._set_or_clear("covarianceType", value)

    def getRegCovar(self) -> float:
        """Get the regularization added to every covariance diagonal (or its default)."""
        return self.getOrDefault(self.regCovar)

    def setRegCovar(self, value: float) -> Self:
        """Set the regularization added to every covariance diagonal."""
        return self._set_or_clear("regCovar", value)


class HasGaussianPrior(ParamAccessors):
    """hmmlearn's prior on Gaussian means and covariances (em_spark.models.priors; defaults: none)."""

    meansPrior = ml_param(
        "meansPrior", "prior mean of every state's mean (hmmlearn's means_prior)", TypeConverters.toFloat
    )
    meansWeight = ml_param(
        "meansWeight", "pseudo-observations behind meansPrior (>= 0; 0: no prior)", TypeConverters.toFloat
    )
    covarsPrior = ml_param(
        "covarsPrior", "prior scatter ψ, as ψ I (>= 0; hmmlearn's covars_prior)", TypeConverters.toFloat
    )
    covarsWeight = ml_param(
        "covarsWeight", "pseudo-observations behind covarsPrior (hmmlearn's covars_weight)", TypeConverters.toFloat
    )

    def getMeansPrior(self) -> float:
        """Get the prior mean of the states' means (or its default)."""
        return self.getOrDefault(self.meansPrior)

    def setMeansPrior(self, value: float) -> Self:
        """Set the prior mean of the states' means."""
        return self._set_or_clear("meansPrior", value)

    def getMeansWeight(self) -> float:
        """Get the weight of the means' prior (or its default)."""
        return self.getOrDefault(self.meansWeight)

    def setMeansWeight(self, value: float) -> Self:
        """Set the weight of the means' prior."""
        return self._set_or_clear("meansWeight", value)

    def getCovarsPrior(self) -> float:
        """Get the covariances' prior scatter (or its default)."""
        return self.getOrDefault(self.covarsPrior)

    def setCovarsPrior(self, value: float) -> Self:
        """Set the covariances' prior scatter."""
        return self._set_or_clear("covarsPrior", value)

    def getCovarsWeight(self) -> float:
        """Get the weight of the covariances' prior (or its default)."""
        return self.getOrDefault(self.covarsWeight)

    def setCovarsWeight(self, value: float) -> Self:
        """Set the weight of the covariances' prior."""
        return self._set_or_clear("covarsWeight", value)


class HasWeightsPrior(ParamAccessors):
    """The mixtures' Dirichlet prior on the mixing weights (1: flat, maximum likelihood)."""

    weightsPrior = ml_param(
        "weightsPrior", "Dirichlet concentration of the mixing weights (> 0; 1 is flat)", TypeConverters.toFloat
    )

    def getWeightsPrior(self) -> float:
        """Get the Dirichlet concentration of the mixing weights (or its default)."""
        return self.getOrDefault(self.weightsPrior)

    def setWeightsPrior(self, value: float) -> Self:
        """Set the Dirichlet concentration of the mixing weights."""
        return self._set_or_clear("weightsPrior", value)


class HasHandleMissing(ParamAccessors):
    """How the families that can model missing values treat null / NaN features (default: refuse)."""

    handleMissing = ml_param(
        "handleMissing",
        "'error': refuse null/NaN features; 'model': fit them exactly as values missing at random",
        TypeConverters.toString,
    )

    def getHandleMissing(self) -> str:
        """Get how missing features are handled ('error' or 'model') (or its default)."""
        return self.getOrDefault(self.handleMissing)

    def setHandleMissing(self, value: str) -> Self:
        """Set how missing features are handled ('error' or 'model')."""
        return self._set_or_clear("handleMissing", value)


class HasSmoothing(ParamAccessors):
    """Accessors of the categorical families' smoothing param (each params class declares the Param)."""

    smoothing: Param[float]

    def getSmoothing(self) -> float:
        """Get the Dirichlet pseudo-count of the M-step (or its default)."""
        return self.getOrDefault(self.smoothing)

    def setSmoothing(self, value: float) -> Self:
        """Set the Dirichlet pseudo-count of the M-step."""
        return self._set_or_clear("smoothing", value)


class EMParams(ParamAccessors):
    """Parameters shared by every EM estimator (names follow pyspark.ml where they overlap)."""

    k = ml_param("k", "number of mixture components (> 0)", TypeConverters.toInt)
    maxIter = ml_param("maxIter", "maximum EM iterations per restart (>= 1)", TypeConverters.toInt)
    tol = ml_param(
        "tol",
        "stop when the change of the average log-likelihood per sample is below tol (>= 0)",
        TypeConverters.toFloat,
    )
    seed = ml_param("seed", "random seed", TypeConverters.toInt)
    featuresCol = ml_param(
        "featuresCol", "features: a Vector or array<double> column, or a list of numeric columns", _features
    )
    predictionCol = ml_param("predictionCol", "output column of the most likely component", TypeConverters.toString)
    probabilityCol = ml_param(
        "probabilityCol", "output column of component probabilities (Vector)", TypeConverters.toString
    )
    logLikelihoodCol = ml_param(
        "logLikelihoodCol", "output column of the per-row log-likelihood ('' for none)", TypeConverters.toString
    )
    weightCol = ml_param("weightCol", "optional column of non-negative sample weights", optional_string)
    labelCol = ml_param(
        "labelCol",
        "optional column of known components for semi-supervised EM (0..k-1; null or -1: unknown); "
        "for an HMM a known state per step (an array per sequence, or one per row in long format)",
        optional_string,
    )
    aggregationDepth = ml_param(
        "aggregationDepth", "depth of the tree reduce of statistics (>= 1)", TypeConverters.toInt
    )
    initMode = ml_param(
        "initMode",
        "initialization: 'k-means++' or 'random' (ignored for restart 0 when initialModel is set)",
        TypeConverters.toString,
    )
    nInit = ml_param("nInit", "number of restarts; the one with the best log-likelihood is kept", TypeConverters.toInt)
    acceleration = ml_param(
        "acceleration",
        "'none' (plain EM) or 'squarem' (SQUAREM-accelerated EM; an iteration is still one data pass)",
        TypeConverters.toString,
    )
    optimizer = ml_param(
        "optimizer",
        "'batch' (every iteration a pass over all the data) or 'online' (stepwise EM: every iteration a "
        "step on a mini-batch of miniBatchFraction of the data; maxIter counts steps)",
        TypeConverters.toString,
    )
    miniBatchFraction = ml_param(
        "miniBatchFraction", "online: the share of the data each step reads, in (0, 1]", TypeConverters.toFloat
    )
    learningOffset = ml_param(
        "learningOffset",
        "online: tau (>= 0) in the step size rho_t = (t + tau)^-kappa; larger damps the early steps",
        TypeConverters.toFloat,
    )
    learningDecay = ml_param(
        "learningDecay",
        "online: kappa in (0.5, 1], the exponential decay rate of the step size rho_t = (t + tau)^-kappa",
        TypeConverters.toFloat,
    )
    initialModel: Param[EMModel | Mapping[str, Any] | None] = ml_param(
        "initialModel", "a fitted model or a dict of arrays to start restart 0 from"
    )
    checkpointDir = ml_param(
        "checkpointDir", "URI under which each iteration is checkpointed (file://, s3://, ...)", optional_string
    )
    runId = ml_param("runId", "name of the run; a fit with the same runId and checkpointDir resumes", optional_string)
    keepCheckpoints = ml_param(
        "keepCheckpoints", "checkpoints kept per run (the latest is never deleted)", TypeConverters.toInt
    )
    numPartitions: Param[int | None] = ml_param(
        "numPartitions", "partitions of the cached blocks (default: Spark's default parallelism, one task per core)"
    )
    initSampleSize = ml_param(
        "initSampleSize", "rows sampled (without replacement) for initialization", TypeConverters.toInt
    )
    dtype = ml_param(
        "dtype",
        "storage precision of the cached blocks: 'float64' or 'float32' (half the executor memory and disk; "
        "rows validated in float64, statistics accumulated in float64)",
        _dtype,
    )
    #: the keyword arguments of the call, set by pyspark's ``keyword_only`` (as pyspark.ml declares it)
    _input_kwargs: dict[str, Any]

    s3Endpoint = ml_param(
        "s3Endpoint",
        "endpoint URL of an S3-compatible store (MinIO); default: AWS_ENDPOINT_URL or AWS",
        optional_string,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            # defaults of the engine and the families are theirs (initMode: the Gaussian and k-means default)
            k=DEFAULT_K,
            maxIter=FitSettings.max_iter,
            tol=FitSettings.tol,
            seed=FitSettings.seed,
            featuresCol="features",
            predictionCol="prediction",
            probabilityCol="probability",
            logLikelihoodCol="logLikelihood",
            weightCol=None,
            labelCol=None,
            aggregationDepth=DEFAULT_AGGREGATION_DEPTH,
            initMode=GaussianFamily.init_mode,
            nInit=FitSettings.n_init,
            acceleration=FitSettings.acceleration,
            optimizer=FitSettings.optimizer,
            miniBatchFraction=FitSettings.mini_batch_fraction,
            learningOffset=FitSettings.learning_offset,
            learningDecay=FitSettings.learning_decay,
            initialModel=None,
            checkpointDir=None,
            runId=None,
            keepCheckpoints=FitSettings.keep_checkpoints,
            numPartitions=None,
            initSampleSize=DEFAULT_SAMPLE_SIZE,
            s3Endpoint=None,
            dtype=InputSpec.dtype,
        )

    def _set_checked(self, **kwargs: Any) -> None:
        """Set params by name; unknown names get a clear error, None means "use the default"."""
        unknown = [name for name in kwargs if not self.hasParam(name)]
        if unknown:
            import difflib

            names = sorted(p.name for p in self.params)
            hints = [
                f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, names, 1)) else repr(u)
                for u in unknown
            ]
            raise TypeError(
                f"{type(self).__name__} has no parameter " + ", ".join(hints) + f"; parameters are: {names}"
            )
        for name, value in kwargs.items():
            if value is None:
                self.clear(self.getParam(name))
            else:
                self._set(**{name: value})

    def _input(self, dataset: DataFrame) -> tuple[DataFrame, Any]:
        """(data, features column(s)) as the engine reads them; sequence models group long format here."""
        return dataset, self.getOrDefault("featuresCol")

    def _load(
        self, data: DataFrame, features: Any, family: EMFamily, label: str
    ) -> SparkBlockSource | DataFrameBlockSource:
        label_col = self.getOrDefault("labelCol")
        if label_col and not family.supports_labels:
            raise ValueError(
                f"labelCol is set but the {family.name!r} family does not take labels; "
                "semi-supervised EM works with GaussianMixture, CategoricalMixture, PoissonMixture and the HMMs "
                "(a known state per step)"
            )
        return load_blocks(
            data,
            features,
            self.getOrDefault("weightCol"),
            k=family.k,
            seed=self.getOrDefault("seed"),
            sample_size=self.getOrDefault("initSampleSize"),
            num_partitions=self.getOrDefault("numPartitions"),
            aggregation_depth=self.getOrDefault("aggregationDepth"),
            label=label,
            sequences=family.sequential,
            allow_missing=family.models_missing,
            label_col=label_col,
            dtype=self.getOrDefault("dtype"),
            sparse=family.accepts_sparse,
            counts=family.needs_counts,
        )

    def fit_settings(self) -> FitSettings:
        """How a fit of this estimator runs EM (its params as the engine's FitSettings)."""
        return FitSettings(
            max_iter=self.getOrDefault("maxIter"),
            tol=self.getOrDefault("tol"),
            n_init=self.getOrDefault("nInit"),
            seed=self.getOrDefault("seed"),
            acceleration=self.getOrDefault("acceleration"),
            optimizer=self.getOrDefault("optimizer"),
            mini_batch_fraction=self.getOrDefault("miniBatchFraction"),
            learning_offset=self.getOrDefault("learningOffset"),
            learning_decay=self.getOrDefault("learningDecay"),
            run_id=self.getOrDefault("runId"),
            checkpoint_dir=self.getOrDefault("checkpointDir"),
            keep_checkpoints=self.getOrDefault("keepCheckpoints"),
            s3_endpoint=self.getOrDefault("s3Endpoint"),
        )

    def setParams(self, **kwargs: Any) -> Self:
        """Set params by name (pyspark.ml's setParams); None means "use the default"."""
        self._set_checked(**kwargs)
        return self

    def getK(self) -> int:
        """Get the number of mixture components (or its default)."""
        return self.getOrDefault(self.k)

    def setK(self, value: int) -> Self:
        """Set the number of mixture components."""
        return self._set_or_clear("k", value)

    def getMaxIter(self) -> int:
        """Get the maximum EM iterations per restart (or its default)."""
        return self.getOrDefault(self.maxIter)

    def setMaxIter(self, value: int) -> Self:
        """Set the maximum EM iterations per restart."""
        return self._set_or_clear("maxIter", value)

    def getTol(self) -> float:
        """Get the convergence tolerance on the average log-likelihood per sample (or its default)."""
        return self.getOrDefault(self.tol)

    def setTol(self, value: float) -> Self:
        """Set the convergence tolerance on the average log-likelihood per sample."""
        return self._set_or_clear("tol", value)

    def getAcceleration(self) -> str:
        """Get the EM driver: 'none' (plain EM) or 'squarem' (or its default)."""
        return self.getOrDefault(self.acceleration)

    def setAcceleration(self, value: str) -> Self:
        """Set the EM driver: 'none' (plain EM) or 'squarem' (SQUAREM-accelerated EM)."""
        return self._set_or_clear("acceleration", value)

    def getOptimizer(self) -> str:
        """Get the optimizer: 'batch' or 'online' (stepwise EM) (or its default)."""
        return self.getOrDefault(self.optimizer)

    def setOptimizer(self, value: str) -> Self:
        """Set the optimizer: 'batch' or 'online' (stepwise EM on mini-batches)."""
        return self._set_or_clear("optimizer", value)

    def getMiniBatchFraction(self) -> float:
        """Get the share of the data each online step reads (or its default)."""
        return self.getOrDefault(self.miniBatchFraction)

    def setMiniBatchFraction(self, value: float) -> Self:
        """Set the share of the data each online step reads, in (0, 1]."""
        return self._set_or_clear("miniBatchFraction", value)

    def getLearningOffset(self) -> float:
        """Get tau of the online step size (t + tau)^-kappa (or its default)."""
        return self.getOrDefault(self.learningOffset)

    def setLearningOffset(self, value: float) -> Self:
        """Set tau (>= 0) of the online step size (t + tau)^-kappa."""
        return self._set_or_clear("learningOffset", value)

    def getLearningDecay(self) -> float:
        """Get kappa of the online step size (t + tau)^-kappa (or its default)."""
        return self.getOrDefault(self.learningDecay)

    def setLearningDecay(self, value: float) -> Self:
        """Set kappa, in (0.5, 1], of the online step size (t + tau)^-kappa."""
        return self._set_or_clear("learningDecay", value)

    def getSeed(self) -> int:
        """Get the random seed (or its default)."""
        return self.getOrDefault(self.seed)

    def setSeed(self, value: int) -> Self:
        """Set the random seed."""
        return self._set_or_clear("seed", value)

    def getFeaturesCol(self) -> str | list[str]:
        """Get the features column, or the list of numeric feature columns (or its default)."""
        return self.getOrDefault(self.featuresCol)

    def setFeaturesCol(self, value: str | Sequence[str]) -> Self:
        """Set the features column, or the list of numeric feature columns."""
        return self._set_or_clear("featuresCol", value)

    def getPredictionCol(self) -> str:
        """Get the output column of the most likely component (or its default)."""
        return self.getOrDefault(self.predictionCol)

    def setPredictionCol(self, value: str) -> Self:
        """Set the output column of the most likely component."""
        return self._set_or_clear("predictionCol", value)

    def getProbabilityCol(self) -> str:
        """Get the output column of component probabilities (or its default)."""
        return self.getOrDefault(self.probabilityCol)

    def setProbabilityCol(self, value: str) -> Self:
        """Set the output column of component probabilities."""
        return self._set_or_clear("probabilityCol", value)

    def getLogLikelihoodCol(self) -> str:
        """Get the output column of the per-row log-likelihood ('' for none) (or its default)."""
        return self.getOrDefault(self.logLikelihoodCol)

    def setLogLikelihoodCol(self, value: str) -> Self:
        """Set the output column of the per-row log-likelihood ('' for none)."""
        return self._set_or_clear("logLikelihoodCol", value)

    def getWeightCol(self) -> str | None:
        """Get the column of sample weights, if any (or its default)."""
        return self.getOrDefault(self.weightCol)

    def setWeightCol(self, value: str | None) -> Self:
        """Set the column of sample weights, if any."""
        return self._set_or_clear("weightCol", value)

    def getLabelCol(self) -> str | None:
        """Get the column of known components, if any (or its default)."""
        return self.getOrDefault(self.labelCol)

    def setLabelCol(self, value: str | None) -> Self:
        """Set the column of known components, if any."""
        return self._set_or_clear("labelCol", value)

    def getAggregationDepth(self) -> int:
        """Get the depth of the tree reduce of statistics (or its default)."""
        return self.getOrDefault(self.aggregationDepth)

    def setAggregationDepth(self, value: int) -> Self:
        """Set the depth of the tree reduce of statistics."""
        return self._set_or_clear("aggregationDepth", value)

    def getInitMode(self) -> str:
        """Get the initialization mode (or its default)."""
        return self.getOrDefault(self.initMode)

    def setInitMode(self, value: str) -> Self:
        """Set the initialization mode."""
        return self._set_or_clear("initMode", value)

    def getNInit(self) -> int:
        """Get the number of restarts (or its default)."""
        return self.getOrDefault(self.nInit)

    def setNInit(self, value: int) -> Self:
        """Set the number of restarts."""
        return self._set_or_clear("nInit", value)

    def getInitialModel(self) -> EMModel | Mapping[str, Any] | None:
        """Get the fitted model or dict of arrays restart 0 starts from (or its default)."""
        return self.getOrDefault(self.initialModel)

    def setInitialModel(self, value: EMModel | Mapping[str, Any] | None) -> Self:
        """Set the fitted model or dict of arrays restart 0 starts from."""
        return self._set_or_clear("initialModel", value)

    def getCheckpointDir(self) -> str | None:
        """Get the URI under which iterations are checkpointed (or its default)."""
        return self.getOrDefault(self.checkpointDir)

    def setCheckpointDir(self, value: str | None) -> Self:
        """Set the URI under which iterations are checkpointed."""
        return self._set_or_clear("checkpointDir", value)

    def getRunId(self) -> str | None:
        """Get the name of the run (or its default)."""
        return self.getOrDefault(self.runId)

    def setRunId(self, value: str | None) -> Self:
        """Set the name of the run."""
        return self._set_or_clear("runId", value)

    def getKeepCheckpoints(self) -> int:
        """Get the number of checkpoints kept per run (or its default)."""
        return self.getOrDefault(self.keepCheckpoints)

    def setKeepCheckpoints(self, value: int) -> Self:
        """Set the number of checkpoints kept per run."""
        return self._set_or_clear("keepCheckpoints", value)

    def getNumPartitions(self) -> int | None:
        """Get the number of partitions of the cached blocks (or its default)."""
        return self.getOrDefault(self.numPartitions)

    def setNumPartitions(self, value: int | None) -> Self:
        """Set the number of partitions of the cached blocks."""
        return self._set_or_clear("numPartitions", value)

    def getInitSampleSize(self) -> int:
        """Get the number of rows sampled for initialization (or its default)."""
        return self.getOrDefault(self.initSampleSize)

    def setInitSampleSize(self, value: int) -> Self:
        """Set the number of rows sampled for initialization."""
        return self._set_or_clear("initSampleSize", value)

    def getDtype(self) -> str:
        """Get the storage precision of the cached blocks (or its default)."""
        return self.getOrDefault(self.dtype)

    def setDtype(self, value: str) -> Self:
        """Set the storage precision of the cached blocks: 'float64' or 'float32'."""
        return self._set_or_clear("dtype", value)

    def getS3Endpoint(self) -> str | None:
        """Get the endpoint URL of an S3-compatible store (or its default)."""
        return self.getOrDefault(self.s3Endpoint)

    def setS3Endpoint(self, value: str | None) -> Self:
        """Set the endpoint URL of an S3-compatible store."""
        return self._set_or_clear("s3Endpoint", value)


#: prefix of the stored statistics' arrays in a saved model (its parameters have no "/")
STATISTICS_PREFIX = "statistics/"


def model_statistics(family: EMFamily, recorder: RecordingSource, result: FitResult) -> Stats:
    """The winning restart's last E-step statistics, moved into the frame of its final parameters
    (``family.move_stats``). When this process ran none of its passes (a finished run re-run, or
    one resumed after the winner stopped), one more pass takes them under the final parameters;
    call it before the source is closed."""
    last = recorder.last_e_step([r.history for r in result.restarts], result.restart)
    if last is None:
        log.info(
            "run=%s: the fit's last pass ran in an earlier process; one more pass takes the model's statistics",
            result.run_id or "-",
        )
        return recorder.e_step(family, result.params)  # (under the final parameters: their frame already)
    params, stats = last
    return family.move_stats(stats, params, result.params)


class EMSummary:
    """Training summary, with pyspark.ml's names where they exist.

    ``numIter``, ``iterationSeconds`` and ``logLikelihoodHistory`` count data passes (E-steps),
    with ``acceleration="squarem"`` as well (see engine.loop ``_Fit.iterate``).
    """

    def __init__(self, model: EMModel, result: FitResult, training: DataFrame | None) -> None:
        self._model = model
        self._training = training
        self.k = model.getOrDefault("k")
        self.logLikelihood = result.log_likelihood
        self.averageLogLikelihood = result.average_log_likelihood
        self.logLikelihoodHistory = list(result.history)
        self.numIter = result.n_iter
        self.converged = result.converged
        self.bestRestart = result.restart
        self.numRows = result.n_rows
        self.totalWeight = result.total_weight
        self.runId = result.run_id
        self.iterationSeconds = list(result.iteration_seconds)
        self.dataFingerprint = result.data_fingerprint
        # total weight of the observations (steps, for sequence models): BIC's sample size
        self.observationWeight = result.observation_weight
        # online EM (optimizer="online"): numIter counts steps, logLikelihoodHistory holds each step's
        # mini-batch estimate; stoppedBy says whether the held-out set ("heldOut") or maxIter ended it
        self.optimizer = result.optimizer
        self.stoppedBy = result.stopped_by or ("tol" if result.converged else "maxIter")
        self.heldOutLogLikelihoodHistory = list(result.held_out_history)
        self.epochs = result.epochs if result.epochs is not None else float(result.n_iter)

    @property
    def predictions(self) -> DataFrame:
        """The training data transformed by the model (lazy)."""
        if self._training is None:
            raise RuntimeError("this summary was loaded from storage; transform the data with the model instead")
        return self._model.transform(self._training)

    @property
    def clusterSizes(self) -> list[int]:
        """Rows assigned to each component (one Spark job)."""
        col = self._model.getOrDefault("predictionCol")
        counts: dict[int, int] = dict(self.predictions.groupBy(col).count().collect())
        return [int(counts.get(i, 0)) for i in range(self.k)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "logLikelihood": self.logLikelihood,
            "averageLogLikelihood": self.averageLogLikelihood,
            "logLikelihoodHistory": self.logLikelihoodHistory,
            "numIter": self.numIter,
            "converged": self.converged,
            "bestRestart": self.bestRestart,
            "numRows": self.numRows,
            "totalWeight": self.totalWeight,
            "runId": self.runId,
            "iterationSeconds": self.iterationSeconds,
            "dataFingerprint": self.dataFingerprint,
            "observationWeight": self.observationWeight,
            "optimizer": self.optimizer,
            "stoppedBy": self.stoppedBy,
            "heldOutLogLikelihoodHistory": self.heldOutLogLikelihoodHistory,
            "epochs": self.epochs,
        }


class EMEstimator(Estimator, EMParams):
    """Base of every EM estimator: subclasses build their family and their model."""

    _model_class: type[EMModel]

    @abstractmethod
    def family(self) -> EMFamily:
        """The model family (with its hyperparameters) that this estimator's params describe."""

    def _initial_params(self, family: EMFamily, n_features: int) -> ParamArrays | None:
        initial = self.getOrDefault("initialModel")
        if initial is None:
            return None
        if isinstance(initial, EMModel):
            arrays = initial.public_params()
        elif isinstance(initial, Mapping):
            arrays = {key: np.asarray(value, dtype=np.float64) for key, value in initial.items()}
        else:
            raise TypeError(f"initialModel must be a fitted model or a dict of arrays, got {type(initial).__name__}")
        return family.params_from_public(arrays, n_features)

    def load_source(
        self, dataset: DataFrame, family: EMFamily | None = None, label: str = ""
    ) -> SparkBlockSource | DataFrameBlockSource:
        """Load and validate ``dataset`` once, as :meth:`fit` reads it (featuresCol, weightCol,
        labelCol, initSampleSize, numPartitions, aggregationDepth, seed, dtype): the cached blocks that
        any number of fits with ``engine.loop.fit_em`` can pass over (``em-spark select`` fits a
        grid on one). ``family`` (default ``self.family()``) decides how rows are read: sequences,
        missing values, labels. The caller closes it (``source.close()``) to release the cache."""
        family = self.family() if family is None else family
        data, features = self._input(dataset)
        check_executors(data.sparkSession)
        return self._load(data, features, family, label)

    def _fit(self, dataset: DataFrame) -> EMModel:
        family = self.family()
        original = dataset
        dataset, features = self._input(dataset)
        weight_col = self.getOrDefault("weightCol")
        label_col = self.getOrDefault("labelCol")
        dtype = self.getOrDefault("dtype")
        settings = self.fit_settings()
        if settings.run_id:
            from em_spark.storage import validate_name

            validate_name(settings.run_id, "run id")
        started = time.perf_counter()
        # Before the lease, a checkpoint or the load: executors that cannot run the E-step are one
        # clear error, not a ModuleNotFoundError in a Python worker traceback from the first job.
        check_executors(dataset.sparkSession)
        if settings.checkpoint_dir and settings.run_id:
            # A second run of a running id stops here, before it pays for a load. fit_em takes the
            # lease itself after the load, so a run refused for bad data leaves nothing behind.
            run_lock(settings).ensure_free()
        # every job of this fit (the load, each iteration) carries the run's tag: findable, and
        # stopped on the server by a Ctrl-C here (engine/job_tags.py)
        with tagged_jobs(dataset.sparkSession, settings.run_id):
            source = self._load(dataset, features, family, f"em_spark run={settings.run_id}" if settings.run_id else "")
            summary = source.summary
            extra = ""
            if summary.sequences:
                extra += f" ({summary.observations} steps)"
            if label_col:
                extra += f", {summary.labelled_rows} labelled"
            if summary.missing_entries:
                extra += f", {summary.missing_entries} missing entries modelled"
            log.info(
                "run=%s loaded and validated %d %s x %d features%s (%d blocks in %d partitions) in %.1f s",
                settings.run_id or "-",
                summary.rows,
                "sequences" if summary.sequences else "rows",
                source.n_features,
                extra,
                summary.blocks,
                source.num_partitions,
                time.perf_counter() - started,
            )
            recorder = RecordingSource(source)  # keeps each pass's statistics: the model stores the last
            try:
                initial = self._initial_params(family, source.n_features)
                result = fit_em(
                    family,
                    recorder,
                    settings,
                    initial,
                    data_identity={
                        "features": features,
                        "weightCol": weight_col,
                        **({"labelCol": label_col} if label_col else {}),
                        # a resume in another precision would mix statistics of differently rounded
                        # data (named only when not the default, so older checkpoints still resume)
                        **({"dtype": dtype} if dtype != InputSpec.dtype else {}),
                    },
                )
                statistics = model_statistics(family, recorder, result)
            finally:
                source.close()
        model = self._model_class(family, result.params, source.n_features)
        model._set(**{p.name: v for p, v in self.extractParamMap().items() if model.hasParam(p.name)})
        model._summary = EMSummary(model, result, original)
        model._statistics = statistics
        return model


class EMModel(Model, EMParams):
    """A fitted model: parameters as numpy arrays, Spark transform, safe save/load."""

    #: the params a saved model keeps (how it reads and writes data), restored on load
    _saved_params: tuple[str, ...] = (
        "featuresCol",
        "predictionCol",
        "probabilityCol",
        "logLikelihoodCol",
        "weightCol",
        "seed",
    )

    def __init__(self, family: EMFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__()
        self._family = family
        # Not "_params": pyspark's Params caches its Param list under that name.
        self._arrays = {k: np.asarray(v) for k, v in params.items()}
        self._n_features = int(n_features)
        self._summary: EMSummary | None = None
        # the sufficient statistics of the data behind the model, in its parameters' frame (update())
        self._statistics: Stats | None = None
        self._set(k=family.k)

    # -- parameters ---------------------------------------------------------
    @property
    def family(self) -> EMFamily:
        """The fitted model family (with its hyperparameters), for layers that need the protocol."""
        return self._family

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """All fitted parameter arrays, including derived ones (e.g. precision Cholesky factors)."""
        return dict(self._arrays)

    def public_params(self) -> dict[str, np.ndarray]:
        return self._family.public_params(self._arrays)

    @property
    def numFeatures(self) -> int:
        return self._n_features

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> EMSummary:
        if self._summary is None:
            raise RuntimeError(
                "no training summary: this model was not fitted in this session or was saved without one"
            )
        return self._summary

    @property
    def statistics(self) -> Stats | None:
        """The sufficient statistics behind the model (the fit's last E-step, in the frame of these
        parameters), with ``weight`` and ``count`` the (effective) total weight and rows behind them;
        None for a model saved before they were stored."""
        return self._statistics

    def with_params(self, params: ParamArrays) -> EMModel:
        """The same model (params, summary) with other parameter arrays; its statistics, which
        belong to the old arrays, are dropped (see :meth:`relabeled`)."""
        other = self.copy()
        other._arrays = {k: np.asarray(v) for k, v in params.items()}
        other._statistics = None
        return other

    def relabeled(self, order: Any) -> EMModel:
        """The same model with components reordered (new component j is old ``order[j]``),
        parameters and stored statistics alike."""
        other = self.with_params(self._family.relabel(self._arrays, order))
        if self._statistics is not None:
            other._statistics = self._family.relabel_stats(self._statistics, order)
        return other

    # -- incremental update -------------------------------------------------
    def update(
        self,
        dataset: DataFrame,
        halfLife: float,
        *,
        maxIter: int | None = None,
        tol: float | None = None,
        runId: str | None = None,
        checkpointDir: str | None = None,
    ) -> EMModel:
        """A new model from this one and ``dataset`` only, forgetting old data with ``halfLife``.

        EM runs on ``dataset``'s rows, starting from this model's parameters; every iteration's
        statistics are ``decay * self.statistics + E-step(dataset | current parameters)`` with
        ``decay = 0.5 ** (1 / halfLife)`` (pyspark.mllib StreamingKMeans' ``halfLife`` in
        batches: data ``halfLife`` updates old counts half; ``float('inf')`` never forgets). A
        pass costs ``dataset``'s rows, not the history's. The new model stores its own statistics
        (their ``weight`` and ``count`` are the effective totals behind it). ``maxIter`` and
        ``tol`` default to this model's; with ``runId`` and ``checkpointDir`` the update is
        checkpointed and a killed one resumes (it must be given the same model and halfLife).

        The summary's ``numRows`` are ``dataset``'s rows; ``totalWeight`` and the log-likelihoods
        are those of the weighted objective (old statistics included).
        """
        from dataclasses import replace

        decay = decay_factor(halfLife)  # bad input is refused before anything is read or stored
        stored = self.require_statistics()
        family = self._family
        settings = replace(
            self.fit_settings(),
            n_init=1,  # the model continues: no fresh restarts
            optimizer="batch",  # tonight's rows are few next to the history: full passes over them
            max_iter=self.getOrDefault("maxIter") if maxIter is None else maxIter,
            tol=self.getOrDefault("tol") if tol is None else tol,
            run_id=runId,
            checkpoint_dir=checkpointDir,
        )
        if runId:
            from em_spark.storage import validate_name

            validate_name(runId, "run id")
        data, features = self._input(dataset)
        self.check_features(data, features)
        check_executors(data.sparkSession)
        if settings.checkpoint_dir and settings.run_id:
            run_lock(settings).ensure_free()
        weight_col = self.getOrDefault("weightCol")
        with tagged_jobs(data.sparkSession, settings.run_id):
            source = self._load(data, features, family, f"em_spark update={settings.run_id or '-'}")
            try:
                if source.n_features != self._n_features:
                    raise DataValidationError(
                        f"{describe_features(features)} hold {source.n_features} features but the model was fitted "
                        f"on {self._n_features}; update it with data of the same features (or fit a new model)"
                    )
                recorder = RecordingSource(DecayedSource(source, stored, self._arrays, decay))
                result = fit_em(
                    family,
                    recorder,
                    settings,
                    self._arrays,
                    data_identity={
                        "features": features,
                        "weightCol": weight_col,
                        # a resume must continue the same update: same starting model, same forgetting
                        "update": {"decay": decay, "statistics": stats_digest(stored)},
                    },
                )
                statistics = model_statistics(family, recorder, result)
            finally:
                source.close()
        result = replace(result, total_weight=decay * stored.weight + result.total_weight)
        model = type(self)(family, result.params, self._n_features)
        model._set(**{p.name: v for p, v in self.extractParamMap().items() if model.hasParam(p.name)})
        model._set(maxIter=settings.max_iter, tol=settings.tol)
        model._summary = EMSummary(model, result, dataset)
        model._statistics = statistics
        return model

    def check_features(self, dataset: DataFrame, features: Any = None) -> None:
        """A DataValidationError naming the column when ``dataset`` (batch or streaming) lacks this
        model's feature columns, or has another number of them, before anything is read."""
        from em_spark.engine.spark_source import feature_array, sequence_array

        features = self.getOrDefault("featuresCol") if features is None else features
        (sequence_array if self._family.sequential else feature_array)(dataset, features)  # the load's validator
        if not isinstance(features, str) and len(features) != self._n_features:
            raise DataValidationError(
                f"featuresCol names {len(features)} columns {list(features)} but the model has {self._n_features} "
                "features; give the columns it was fitted on"
            )

    def require_statistics(self) -> Stats:
        """:attr:`statistics`, or a ValueError that says why there are none and what to do."""
        if self._statistics is None:
            raise ValueError(
                "this model stores no sufficient statistics, so update() has nothing to start from: it was "
                "saved by an older em_spark; fit it again "
                "(a full retrain; with the nightly job, nightly.mode: full for one night) and update that model"
            )
        return self._statistics

    # -- sampling -----------------------------------------------------------
    def sample(
        self,
        n: int,
        seed: int | None = None,
        *,
        length: int | None = None,
        trials: Any = None,
        spark: SparkSession | None = None,
    ) -> DataFrame:
        """``n`` rows drawn from the model with their ``component`` (sequence models: ``n``
        sequences of ``length`` steps with ``id`` and their ``states``), as scikit-learn's and
        hmmlearn's ``sample``, drawn in Spark tasks: a DataFrame whose feature columns are named
        as this model reads them, so ``estimator.fit(model.sample(n))`` fits it back.

        The rows are a function of ``seed`` (default: the model's), ``n`` and ``length`` only.
        ``trials``: a multinomial mixture's row totals (one, or ``n``), which it conditions on.
        ``spark``: the session (default: the active one, classic or Connect). k-means has no
        spread to draw from and says so."""
        from em_spark.engine.draws import draw_frame

        session = spark or SparkSession.getActiveSession()
        if session is None:
            raise ValueError("sample() draws in Spark tasks: create a SparkSession first, or pass spark=")
        return draw_frame(
            session,
            self._family,
            self._arrays,
            n,
            self.getOrDefault("seed") if seed is None else int(seed),
            self.getOrDefault("featuresCol"),
            length=length,
            trials=trials,
        )

    # -- scoring ------------------------------------------------------------
    def _transform(self, dataset: DataFrame) -> DataFrame:
        dataset, features = self._input(dataset)
        return score_frame(
            dataset,
            self._family,
            self._arrays,
            self._n_features,
            features,
            prediction_col=self.getOrDefault("predictionCol"),
            probability_col=self.getOrDefault("probabilityCol"),
            loglik_col=self.getOrDefault("logLikelihoodCol") or None,
        )

    def predict_numpy(self, X: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Score rows held on the driver: ``log_resp`` (n, k) and ``loglik`` (n,); for a sequence
        model ``X`` holds the steps of sequences of ``lengths`` and the result has ``viterbi`` (n,)
        and one ``loglik`` per sequence."""
        from em_spark.models.base import Block

        block = Block(
            np.asarray(X, dtype=np.float64), lengths=None if lengths is None else np.asarray(lengths, dtype=np.int64)
        )
        return self._family.score(block, self._arrays)

    def _total_log_likelihood(self, dataset: DataFrame) -> tuple[float, float, float]:
        """(sum of w * loglik, sum of w, weighted number of observations) over the dataset; every
        row (sequence) must be scorable. Observations are rows, or the steps of all sequences."""
        dataset, features = self._input(dataset)
        weight_col = self.getOrDefault("weightCol")
        w = F.col(weight_col).cast("double") if weight_col else F.lit(1.0)
        scored = score_frame(
            dataset,
            self._family,
            self._arrays,
            self._n_features,
            features,
            loglik_col="__em_ll",
            prediction_col="__em_pred",
            probability_col="__em_prob",
        )
        steps = F.size("__em_pred") if self._family.sequential else F.lit(1)
        row = scored.agg(
            F.sum(w * F.col("__em_ll")).alias("ll"),
            F.sum(w).alias("w"),
            F.sum(w * steps).alias("n"),
            F.sum(F.when(F.col("__em_ll").isNull(), 1).otherwise(0)).alias("bad"),
        ).first()
        assert row is not None  # an aggregate has one row
        if row["bad"]:
            what = "sequence(s)" if self._family.sequential else "row(s)"
            raise DataValidationError(
                f"{row['bad']} {what} of {describe_features(features)} cannot be scored (null, NaN or not "
                f"{self._n_features} features); clean them before computing a criterion."
            )
        return float(row["ll"]), float(row["w"]), float(row["n"])

    def criteria(self, dataset: DataFrame) -> dict[str, float]:
        """Average log-likelihood per row (per sequence for sequence models), BIC and AIC on
        ``dataset``, from one pass over it. BIC's sample size is the total weight of the
        observations, weight x steps for sequences (:mod:`em_spark.models.criteria`)."""
        ll, w, n = self._total_log_likelihood(dataset)
        p = self._family.n_parameters(self._arrays)
        return {"avgLogLik": ll / w, **information_criteria(ll, p, n)}

    def bic(self, dataset: DataFrame) -> float:
        """Bayesian information criterion on ``dataset`` (lower is better), as scikit-learn defines it."""
        return self.criteria(dataset)["bic"]

    def aic(self, dataset: DataFrame) -> float:
        """Akaike information criterion on ``dataset`` (lower is better)."""
        return self.criteria(dataset)["aic"]

    # -- persistence --------------------------------------------------------
    def to_bytes(self) -> bytes:
        from em_spark.storage import pack

        keep = set(self._saved_params)
        meta = {
            "format": MODEL_FORMAT,
            "modelClass": type(self).__name__,
            "family": self._family.config(),
            "numFeatures": self._n_features,
            "params": {p.name: v for p, v in self.extractParamMap().items() if p.name in keep},
            "summary": self._summary.as_dict() if self._summary is not None else None,
            "statistics": None if self._statistics is None else sorted(self._statistics),
        }
        arrays = dict(self._arrays)
        if self._statistics is not None:
            arrays.update({STATISTICS_PREFIX + name: value for name, value in self._statistics.items()})
        return pack(json.loads(json.dumps(meta)), arrays)

    def save(self, path: str, overwrite: bool = False) -> None:
        """Write the model under ``path`` (any pyarrow.fs URI) as one checksummed file, no pickle."""
        from em_spark.storage import put_sealed
        from em_spark.storage.fs import join

        put_sealed(
            join(path, MODEL_FILE), self.to_bytes(), overwrite=overwrite, s3_endpoint=self.getOrDefault("s3Endpoint")
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "<bytes>") -> EMModel:
        from em_spark.models import FAMILIES
        from em_spark.storage import unpack

        meta, arrays = unpack(data)
        if meta.get("format") != MODEL_FORMAT or meta.get("modelClass") != cls.__name__:
            raise ValueError(
                f"{where} holds a {meta.get('modelClass')!r} (format {meta.get('format')!r}), "
                f"not a {cls.__name__} of format {MODEL_FORMAT}"
            )
        family_config = dict(meta["family"])
        family_cls = FAMILIES[family_config.pop("name")]
        family = family_cls(**family_config)
        stored = {
            name[len(STATISTICS_PREFIX) :]: arrays.pop(name)
            for name in list(arrays)
            if name.startswith(STATISTICS_PREFIX)
        }
        model = cls(family, arrays, meta["numFeatures"])
        if meta.get("statistics") is not None:
            if sorted(stored) != sorted(meta["statistics"]):
                raise ValueError(f"{where} lists statistics {meta['statistics']} but holds {sorted(stored)}")
            model._statistics = Stats(stored)
        model._set(**{k: v for k, v in meta["params"].items() if v is not None})
        if meta.get("summary"):
            summary = meta["summary"]
            result = FitResult(
                params=arrays,
                history=summary["logLikelihoodHistory"],
                n_iter=summary["numIter"],
                converged=summary["converged"],
                restart=summary["bestRestart"],
                total_weight=summary["totalWeight"],
                n_rows=summary["numRows"],
                run_id=summary["runId"],
                iteration_seconds=summary["iterationSeconds"],
                data_fingerprint=summary.get("dataFingerprint", ""),
                # files written before it was stored: for row models it is the total weight
                observation_weight=summary.get(
                    "observationWeight", None if family.sequential else summary["totalWeight"]
                ),
                optimizer=summary.get("optimizer", "batch"),  # (files written before online EM: batch)
                stopped_by=summary.get("stoppedBy", ""),
                held_out_history=summary.get("heldOutLogLikelihoodHistory", []),
                epochs=summary.get("epochs"),
            )
            model._summary = EMSummary(model, result, None)
        return model

    @classmethod
    def load(cls, path: str, s3Endpoint: str | None = None) -> EMModel:
        from em_spark.storage import get_sealed
        from em_spark.storage.fs import join

        uri = join(path, MODEL_FILE)
        return cls.from_bytes(get_sealed(uri, s3_endpoint=s3Endpoint), uri)
