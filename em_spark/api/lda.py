"""LDA: latent Dirichlet allocation by variational EM, a drop-in for ``pyspark.ml.clustering.LDA``.

The per-document variational updates run in the map tasks (``em_spark.models.lda``), the
expected topic-word counts are the statistics, the M-step runs on the driver.
``optimizer="online"`` (pyspark.ml's default) is online variational Bayes (Hoffman, Blei and
Bach 2010) through the engine's stepwise EM; ``"em"`` (or em_spark's ``"batch"``) is batch
variational EM, scikit-learn's ``learning_method="batch"``. Note: pyspark.ml's ``"em"`` is a
MAP EM on a graph with other default priors; here both optimizers fit the same variational
model, with the variational defaults 1/k for both concentrations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import Param, TypeConverters
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from em_spark.api.base import EMEstimator, EMModel, ParamAccessors, ml_param
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.scoring import sample_feature_counts, score_frame
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.engine.spark_source import describe_features, feature_array
from em_spark.engine.validation import DataValidationError
from em_spark.models import LDAFamily
from em_spark.models.base import Params as ParamArrays

if TYPE_CHECKING:
    from pyspark.ml.linalg import DenseMatrix, DenseVector
    from typing_extensions import Self

__all__ = ["LDA", "LDAModel"]

#: pyspark.ml LDA's defaults where they differ from the engine's (k, maxIter, optimizer, learning rate)
K = 10
MAX_ITER = 20
OPTIMIZER = "online"
LEARNING_OFFSET = 1024.0
LEARNING_DECAY = 0.51
# pyspark.ml's LDA has no tol: it runs maxIter iterations (online: no held-out set either)
TOL = 0.0
TOPIC_DISTRIBUTION_COL = "topicDistribution"
#: the values of ``optimizer``: pyspark.ml's two, and em_spark's name of batch EM
LDA_OPTIMIZERS = ("online", "em", "batch")

# pyspark.ml's names that are em_spark's under another name: one value, set through either
_ALIASES = {
    "subsamplingRate": "miniBatchFraction",
    "miniBatchFraction": "subsamplingRate",
    "topicDistributionCol": "probabilityCol",
    "probabilityCol": "topicDistributionCol",
}


def _concentration(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return TypeConverters.toListFloat(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else TypeConverters.toFloat(value)


class _LDAParams(ParamAccessors):
    """LDA's own params, and pyspark.ml's aliases of em_spark's (kept equal whichever is set)."""

    docConcentration: Param[list[float] | None] = ml_param(
        "docConcentration",
        "alpha, the Dirichlet prior of each document's topic shares (> 0): one number, or k; default 1/k",
        _concentration,
    )
    topicConcentration: Param[float | None] = ml_param(
        "topicConcentration", "eta, the Dirichlet prior of each topic's words (> 0); default 1/k", _optional_float
    )
    topicDistributionCol = ml_param(
        "topicDistributionCol",
        "output column of each document's topic distribution (Vector); the same as probabilityCol",
        TypeConverters.toString,
    )
    subsamplingRate = ml_param(
        "subsamplingRate",
        "online: the share of the corpus each step reads, in (0, 1]; the same as miniBatchFraction",
        TypeConverters.toFloat,
    )
    maxDocIter = ml_param(
        "maxDocIter",
        "most updates of a document's topics per E-step (scikit-learn's max_doc_update_iter)",
        TypeConverters.toInt,
    )
    meanChangeTol = ml_param(
        "meanChangeTol",
        "a document's topics have converged when their mean absolute change is below this (scikit-learn's)",
        TypeConverters.toFloat,
    )

    def _set(self, **kwargs: Any) -> Self:
        for name, partner in _ALIASES.items():
            if name in kwargs and partner not in kwargs and self.hasParam(partner):
                kwargs[partner] = kwargs[name]
        return super()._set(**kwargs)

    def clear(self, param: Param) -> None:
        super().clear(param)
        partner = _ALIASES.get(param.name)
        if partner is not None and self.hasParam(partner):
            super().clear(self.getParam(partner))

    def fit_settings(self) -> FitSettings:
        """The engine's settings, with pyspark.ml's optimizer "em" as batch variational EM."""
        optimizer = self.getOrDefault("optimizer")
        if optimizer not in LDA_OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {list(LDA_OPTIMIZERS)} ('em' and 'batch': batch variational EM), "
                f"got {optimizer!r}"
            )
        if optimizer != "em":
            return super().fit_settings()  # type: ignore[misc]  # (EMParams', after this mixin)
        batch = self.copy()
        batch._paramMap[batch.getParam("optimizer")] = "batch"
        return batch.fit_settings()

    def getDocConcentration(self) -> list[float] | None:
        """Get alpha, the doc concentration (None: 1/k) (or its default)."""
        return self.getOrDefault(self.docConcentration)

    def setDocConcentration(self, value: float | Sequence[float] | None) -> Self:
        """Set alpha, the doc concentration: one number > 0, or k of them."""
        return self._set_or_clear("docConcentration", value)

    def getTopicConcentration(self) -> float | None:
        """Get eta, the topic concentration (None: 1/k) (or its default)."""
        return self.getOrDefault(self.topicConcentration)

    def setTopicConcentration(self, value: float | None) -> Self:
        """Set eta, the topic concentration (> 0)."""
        return self._set_or_clear("topicConcentration", value)

    def getTopicDistributionCol(self) -> str:
        """Get the output column of the topic distributions (or its default)."""
        return self.getOrDefault(self.topicDistributionCol)

    def setTopicDistributionCol(self, value: str) -> Self:
        """Set the output column of the topic distributions."""
        return self._set_or_clear("topicDistributionCol", value)

    def getSubsamplingRate(self) -> float:
        """Get the share of the corpus each online step reads (or its default)."""
        return self.getOrDefault(self.subsamplingRate)

    def setSubsamplingRate(self, value: float) -> Self:
        """Set the share of the corpus each online step reads, in (0, 1]."""
        return self._set_or_clear("subsamplingRate", value)

    def getMaxDocIter(self) -> int:
        """Get the most updates of a document's topics per E-step (or its default)."""
        return self.getOrDefault(self.maxDocIter)

    def setMaxDocIter(self, value: int) -> Self:
        """Set the most updates of a document's topics per E-step."""
        return self._set_or_clear("maxDocIter", value)

    def getMeanChangeTol(self) -> float:
        """Get the convergence tolerance of a document's topics (or its default)."""
        return self.getOrDefault(self.meanChangeTol)

    def setMeanChangeTol(self, value: float) -> Self:
        """Set the convergence tolerance of a document's topics."""
        return self._set_or_clear("meanChangeTol", value)


_LDA_DEFAULTS: dict[str, Any] = dict(
    k=K,
    maxIter=MAX_ITER,
    tol=TOL,
    optimizer=OPTIMIZER,
    learningOffset=LEARNING_OFFSET,
    learningDecay=LEARNING_DECAY,
    docConcentration=None,
    topicConcentration=None,
    topicDistributionCol=TOPIC_DISTRIBUTION_COL,
    probabilityCol=TOPIC_DISTRIBUTION_COL,
    subsamplingRate=FitSettings.mini_batch_fraction,  # 0.05: pyspark.ml's subsamplingRate default too
    maxDocIter=LDAFamily.max_doc_update_iter,
    meanChangeTol=LDAFamily.mean_change_tol,
)


def _token_count(features: Any, df: DataFrame) -> Any:
    """A Column: each document's number of tokens (the sum of its counts)."""
    return F.aggregate(feature_array(df, features), F.lit(0.0), lambda total, x: total + x)


def check_counts(df: DataFrame, features: Any) -> None:
    """A DataValidationError naming the column unless every document holds non-negative integer
    counts and at least one word (one Spark job); null or non-finite rows are left to the load."""
    counts = feature_array(df, features)

    def bad(x: Any) -> Any:
        finite = ~F.isnan(x) & (F.abs(x) != F.lit(float("inf")))
        return finite & ((x < 0) | (x % 1 != 0))

    row = (
        df.select(counts.alias("x"))
        .agg(
            F.sum(F.when(F.exists("x", bad), 1).otherwise(0)).alias("bad"),
            F.first(F.try_element_at(F.filter("x", bad), F.lit(1)), ignorenulls=True).alias("example"),
            F.sum(F.when(F.aggregate("x", F.lit(0.0), lambda t, x: t + x) == 0, 1).otherwise(0)).alias("empty"),
        )
        .first()
    )
    assert row is not None  # an aggregate has one row
    where = describe_features(features)
    if row["bad"]:
        raise DataValidationError(
            f"cannot fit LDA: {row['bad']} document(s) in {where} hold a negative or non-integer count (e.g. "
            f"{row['example']!r}); LDA needs non-negative integer word counts: give it CountVectorizer or "
            "HashingTF output, not TF-IDF or normalized frequencies."
        )
    if row["empty"]:
        raise DataValidationError(
            f"cannot fit LDA: {row['empty']} document(s) in {where} have no words (all counts 0); drop empty "
            "documents first (they carry no information about the topics)."
        )


class LDAModel(_LDAParams, EMModel):
    """A fitted LDA model. ``transform`` adds ``topicDistribution`` (each document's topic shares,
    a Vector), plus em_spark's ``prediction`` (its main topic) and ``logLikelihood`` (its part of
    the variational bound)."""

    _family: LDAFamily
    _saved_params = (*EMModel._saved_params, "topicDistributionCol")

    def __init__(self, family: LDAFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_LDA_DEFAULTS)
        self._set(maxDocIter=family.max_doc_update_iter, meanChangeTol=family.mean_change_tol)
        if family.doc_concentration is not None:
            alpha = family.doc_concentration
            self._set(docConcentration=list(alpha) if isinstance(alpha, tuple) else [alpha])
        if family.topic_concentration is not None:
            self._set(topicConcentration=family.topic_concentration)

    def vocabSize(self) -> int:
        """The number of words (count columns) the model was fitted on."""
        return self._n_features

    def isDistributed(self) -> bool:
        """False: the topics are held on the driver (pyspark.ml's LocalLDAModel)."""
        return False

    @property
    def topics(self) -> np.ndarray:
        """(k, V) each topic's word distribution (lambda normalized)."""
        return self._family.topics(self._arrays)

    def topicsMatrix(self) -> DenseMatrix:
        """(V, k) lambda transposed, unnormalized, as pyspark.ml's online LDA model returns it
        (each column a topic; :meth:`describeTopics` normalizes)."""
        from pyspark.ml.linalg import DenseMatrix

        lam = np.asarray(self._arrays["lambda"], dtype=np.float64)
        return DenseMatrix(lam.shape[1], lam.shape[0], lam.ravel().tolist())  # column-major: topic by topic

    def estimatedDocConcentration(self) -> DenseVector:
        """alpha (k,): fixed, not optimized (pyspark.ml's optimizeDocConcentration is not offered)."""
        from pyspark.ml.linalg import DenseVector

        return DenseVector(np.asarray(self._arrays["alpha"], dtype=np.float64))

    def describeTopics(self, maxTermsPerTopic: int = 10) -> DataFrame:
        """A DataFrame of ``topic``, ``termIndices`` and ``termWeights`` (the most likely words of
        each topic, by descending probability), as pyspark.ml's."""
        from pyspark.sql import SparkSession

        if isinstance(maxTermsPerTopic, bool) or not isinstance(maxTermsPerTopic, int) or maxTermsPerTopic < 1:
            raise ValueError(f"maxTermsPerTopic must be an integer >= 1, got {maxTermsPerTopic!r}")
        topics = self.topics
        rows = []
        for j, topic in enumerate(topics):
            order = np.argsort(-topic, kind="stable")[:maxTermsPerTopic]
            rows.append((j, [int(i) for i in order], [float(topic[i]) for i in order]))
        spark = SparkSession.getActiveSession()
        if spark is None:
            raise RuntimeError("describeTopics needs an active SparkSession")
        return spark.createDataFrame(rows, "topic int, termIndices array<int>, termWeights array<double>")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        dataset, features = self._input(dataset)
        self._check_vocabulary(dataset, features)
        return score_frame(
            dataset,
            self._family,
            self._arrays,
            self._n_features,
            features,
            prediction_col=self.getOrDefault("predictionCol"),
            probability_col=self.getOrDefault("topicDistributionCol"),
            loglik_col=self.getOrDefault("logLikelihoodCol") or None,
        )

    def _check_vocabulary(self, dataset: DataFrame, features: Any) -> None:
        counts = sample_feature_counts(dataset, features, False)
        if counts and self._n_features not in counts:
            raise DataValidationError(
                f"{describe_features(features)} holds count vectors of {counts[0]} words but the model's vocabulary "
                f"has {self._n_features}; transform documents counted with the vocabulary the model was fitted on "
                "(the same fitted CountVectorizer, or HashingTF with the same numFeatures)"
            )

    def logLikelihood(self, dataset: DataFrame) -> float:
        """The variational lower bound of the log-likelihood of ``dataset`` (the documents' parts
        plus the topics' part), as pyspark.ml and scikit-learn's ``score`` define it."""
        return self._bound_and_tokens(dataset)[0]

    def logPerplexity(self, dataset: DataFrame) -> float:
        """minus the bound per token: ``-logLikelihood(dataset) / tokens`` (pyspark.ml's;
        scikit-learn's ``perplexity`` is its exp)."""
        bound, tokens = self._bound_and_tokens(dataset)
        return -bound / tokens

    def _bound_and_tokens(self, dataset: DataFrame) -> tuple[float, float]:
        """(the bound, the weighted token count) of ``dataset``, in one Spark job."""
        dataset, features = self._input(dataset)
        self._check_vocabulary(dataset, features)
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
        row = scored.agg(
            F.sum(w * F.col("__em_ll")).alias("ll"),
            F.sum(w * _token_count(features, dataset)).alias("tokens"),
            F.sum(F.when(F.col("__em_ll").isNull(), 1).otherwise(0)).alias("bad"),
        ).first()
        assert row is not None  # an aggregate has one row
        if row["bad"]:
            raise DataValidationError(
                f"{row['bad']} document(s) of {describe_features(features)} cannot be scored (null, NaN or not "
                f"{self._n_features} words); clean them before computing the bound."
            )
        if not row["tokens"]:
            raise DataValidationError(f"{describe_features(features)} holds no documents with words")
        return float(row["ll"]) + self._family.log_prior(self._arrays), float(row["tokens"])


class LDA(_LDAParams, EMEstimator):
    """Latent Dirichlet allocation by variational EM (online or batch), with checkpoints and resume.

    Features are word counts per document: a Vector (CountVectorizer, HashingTF) or
    array<double> column, or a list of numeric columns. ``maxIter`` counts online steps
    (``optimizer="online"``) or passes (``"em"``/``"batch"``); ``tol`` (0 by default, as
    pyspark.ml's LDA has none) stops batch EM on the change of the bound's documents' part per
    document, online EM on a held-out set. The initial topics are scikit-learn's (lambda ~
    Gamma(100, 1/100)); ``initMode`` does not apply.
    """

    _model_class = LDAModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = K,
        maxIter: int = MAX_ITER,
        tol: float = TOL,
        seed: int = FitSettings.seed,
        optimizer: str = OPTIMIZER,
        docConcentration: float | Sequence[float] | None = None,
        topicConcentration: float | None = None,
        learningOffset: float = LEARNING_OFFSET,
        learningDecay: float = LEARNING_DECAY,
        subsamplingRate: float = FitSettings.mini_batch_fraction,
        miniBatchFraction: float = FitSettings.mini_batch_fraction,
        maxDocIter: int = LDAFamily.max_doc_update_iter,
        meanChangeTol: float = LDAFamily.mean_change_tol,
        featuresCol: str | Sequence[str] = "features",
        topicDistributionCol: str = TOPIC_DISTRIBUTION_COL,
        predictionCol: str = "prediction",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: str | None = None,
        nInit: int = FitSettings.n_init,
        acceleration: str = FitSettings.acceleration,
        initialModel: EMModel | Mapping[str, Any] | None = None,
        aggregationDepth: int = DEFAULT_AGGREGATION_DEPTH,
        checkpointDir: str | None = None,
        runId: str | None = None,
        keepCheckpoints: int = FitSettings.keep_checkpoints,
        numPartitions: int | None = None,
        initSampleSize: int = DEFAULT_SAMPLE_SIZE,
        s3Endpoint: str | None = None,
        dtype: str = InputSpec.dtype,
    ) -> None:
        super().__init__()
        self._setDefault(**_LDA_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> LDAFamily:
        alpha = self.getOrDefault("docConcentration")
        return LDAFamily(
            k=self.getOrDefault("k"),
            doc_concentration=None if alpha is None else alpha[0] if len(alpha) == 1 else tuple(alpha),
            topic_concentration=self.getOrDefault("topicConcentration"),
            max_doc_update_iter=self.getOrDefault("maxDocIter"),
            mean_change_tol=self.getOrDefault("meanChangeTol"),
        )

    def _fit(self, dataset: DataFrame) -> EMModel:
        self.family()  # bad hyperparameters first, before any Spark job
        self.fit_settings()
        data, features = self._input(dataset)
        check_counts(data, features)
        return super()._fit(dataset)
