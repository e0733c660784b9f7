"""CategoricalMixture: mixtures of categorical features or of count vectors, on the same engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import TypeConverters

from em_spark.api.base import EMEstimator, EMModel, HasSmoothing, HasWeightsPrior, ml_param
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models import CategoricalMixtureFamily
from em_spark.models.base import DEFAULT_K
from em_spark.models.base import Params as ParamArrays

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CategoricalMixture", "CategoricalMixtureModel"]


def _categories(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    return [TypeConverters.toInt(v) for v in value]


class _CategoricalParams(HasSmoothing, HasWeightsPrior):
    kind = ml_param(
        "kind",
        "'categorical' (each column a categorical code 0..c-1) or 'multinomial' (each row a count vector)",
        TypeConverters.toString,
    )
    smoothing = ml_param(
        "smoothing", "Dirichlet pseudo-count added to every category in the M-step", TypeConverters.toFloat
    )
    nCategories = ml_param(
        "nCategories", "categories per feature (default: inferred from the sample as max + 1)", _categories
    )

    def getKind(self) -> str:
        """Get the kind of data ('categorical' or 'multinomial') (or its default)."""
        return self.getOrDefault(self.kind)

    def setKind(self, value: str) -> Self:
        """Set the kind of data ('categorical' or 'multinomial')."""
        return self._set_or_clear("kind", value)

    def getNCategories(self) -> list[int] | None:
        """Get the number of categories per feature (or its default)."""
        return self.getOrDefault(self.nCategories)

    def setNCategories(self, value: int | Sequence[int] | None) -> Self:
        """Set the number of categories per feature."""
        return self._set_or_clear("nCategories", value)


_CATEGORICAL_DEFAULTS = dict(
    kind=CategoricalMixtureFamily.kind,
    smoothing=CategoricalMixtureFamily.smoothing,
    nCategories=CategoricalMixtureFamily.n_categories,
    initMode=CategoricalMixtureFamily.init_mode,
    weightsPrior=CategoricalMixtureFamily.weights_prior,
)


class CategoricalMixtureModel(EMModel, _CategoricalParams):
    """A fitted categorical or count mixture.

    Attributes
    ----------
    weights : ndarray of shape (k,)
    probs : ndarray of shape (k, total categories), the features' category probabilities side by side
    featureProbs : list of (k, c_f) arrays, one per feature
    """

    _family: CategoricalMixtureFamily

    def __init__(self, family: CategoricalMixtureFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_CATEGORICAL_DEFAULTS)
        self._set(kind=family.kind, smoothing=family.smoothing, weightsPrior=family.weights_prior)

    @property
    def weights(self) -> np.ndarray:
        return self.public_params()["weights"]

    @property
    def probs(self) -> np.ndarray:
        return self.public_params()["probs"]

    @property
    def featureProbs(self) -> list[np.ndarray]:
        return [p.copy() for p in self._family.feature_probs(self._arrays)]


class CategoricalMixture(EMEstimator, _CategoricalParams):
    """Mixture of independent categorical features (Bernoulli for 0/1 columns), or of
    multinomial count vectors (documents as word counts, customers as purchase counts).

    Features are integer codes in numeric columns (or a Vector/array column); invalid codes
    are refused with the column and value named.
    """

    _model_class = CategoricalMixtureModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        kind: str = CategoricalMixtureFamily.kind,
        smoothing: float = CategoricalMixtureFamily.smoothing,
        nCategories: int | Sequence[int] | None = None,
        weightsPrior: float = CategoricalMixtureFamily.weights_prior,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        initMode: str = CategoricalMixtureFamily.init_mode,
        nInit: int = FitSettings.n_init,
        acceleration: str = FitSettings.acceleration,
        optimizer: str = FitSettings.optimizer,
        miniBatchFraction: float = FitSettings.mini_batch_fraction,
        learningOffset: float = FitSettings.learning_offset,
        learningDecay: float = FitSettings.learning_decay,
        initialModel: EMModel | Mapping[str, Any] | None = None,
        featuresCol: str | Sequence[str] = "features",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: str | None = None,
        labelCol: str | None = None,
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
        self._setDefault(**_CATEGORICAL_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> CategoricalMixtureFamily:
        categories = self.getOrDefault("nCategories")
        return CategoricalMixtureFamily(
            k=self.getOrDefault("k"),
            n_categories=tuple(categories) if categories else None,
            kind=self.getOrDefault("kind"),
            smoothing=self.getOrDefault("smoothing"),
            init_mode=self.getOrDefault("initMode"),
            weights_prior=self.getOrDefault("weightsPrior"),
        )
