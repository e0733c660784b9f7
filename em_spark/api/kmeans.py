"""KMeans: k-means on the same engine (hard EM), with pyspark.ml's names where they overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyspark import keyword_only

from em_spark.api.base import EMEstimator, EMModel
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models import KMeansFamily
from em_spark.models.base import DEFAULT_K

__all__ = ["KMeans", "KMeansModel"]

# k-means converges in fewer, cheaper iterations than the engine's defaults assume
MAX_ITER = 20
TOL = 1e-4


class KMeansModel(EMModel):
    """Fitted centers. ``transform`` adds ``prediction`` (nearest center), a one-hot
    ``probability`` and ``logLikelihood`` = minus the squared distance to that center."""

    @property
    def centers(self) -> np.ndarray:
        """(k, d) cluster centers."""
        return self.public_params()["centers"]

    def clusterCenters(self) -> list[np.ndarray]:
        """The centers as a list of arrays, as ``pyspark.ml.clustering.KMeansModel`` returns them."""
        return list(self.centers)


class KMeans(EMEstimator):
    """K-means (Lloyd's algorithm) as distributed hard EM, with checkpoints and resume.

    ``tol`` applies to the change of the mean squared distance to the nearest center.
    """

    _model_class = KMeansModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        maxIter: int = MAX_ITER,
        tol: float = TOL,
        seed: int = FitSettings.seed,
        initMode: str = KMeansFamily.init_mode,
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
        self._setDefault(maxIter=MAX_ITER, tol=TOL)
        self._set_checked(**self._input_kwargs)

    def family(self) -> KMeansFamily:
        return KMeansFamily(k=self.getOrDefault("k"), init_mode=self.getOrDefault("initMode"))
