"""PoissonMixture: mixtures of independent Poisson counts, on the same engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import TypeConverters

from em_spark.api.base import EMEstimator, EMModel, HasSmoothing, HasWeightsPrior, ml_param
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models.base import DEFAULT_K
from em_spark.models.base import Params as ParamArrays
from em_spark.models.poisson import PoissonMixtureFamily

__all__ = ["PoissonMixture", "PoissonMixtureModel"]


class _PoissonParams(HasSmoothing, HasWeightsPrior):
    smoothing = ml_param(
        "smoothing",
        "pseudo-count added to every component's count sum in the M-step (a Gamma prior on the rates; >= 0)",
        TypeConverters.toFloat,
    )


_POISSON_DEFAULTS = dict(
    smoothing=PoissonMixtureFamily.smoothing,
    initMode=PoissonMixtureFamily.init_mode,
    weightsPrior=PoissonMixtureFamily.weights_prior,
)


class PoissonMixtureModel(EMModel, _PoissonParams):
    """A fitted Poisson mixture.

    Attributes
    ----------
    weights : ndarray of shape (k,)
    rates : ndarray of shape (k, d), each component's Poisson rate of each count column
    """

    _family: PoissonMixtureFamily

    def __init__(self, family: PoissonMixtureFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_POISSON_DEFAULTS)
        self._set(smoothing=family.smoothing, weightsPrior=family.weights_prior)

    @property
    def weights(self) -> np.ndarray:
        return self.public_params()["weights"]

    @property
    def rates(self) -> np.ndarray:
        return self.public_params()["rates"]


class PoissonMixture(EMEstimator, _PoissonParams):
    """Mixture of products of independent Poisson distributions, for count data such as events per
    user per day. Features are non-negative integer counts in numeric columns (or a Vector/array
    column); anything else is refused with the column and value named, before iteration 1."""

    _model_class = PoissonMixtureModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        smoothing: float = PoissonMixtureFamily.smoothing,
        weightsPrior: float = PoissonMixtureFamily.weights_prior,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        initMode: str = PoissonMixtureFamily.init_mode,
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
        self._setDefault(**_POISSON_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> PoissonMixtureFamily:
        return PoissonMixtureFamily(
            k=self.getOrDefault("k"),
            smoothing=self.getOrDefault("smoothing"),
            init_mode=self.getOrDefault("initMode"),
            weights_prior=self.getOrDefault("weightsPrior"),
        )
