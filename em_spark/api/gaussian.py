"""GaussianMixture: a drop-in for ``pyspark.ml.clustering.GaussianMixture``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import TypeConverters
from pyspark.sql import DataFrame

from em_spark.api.base import (
    EMEstimator,
    EMModel,
    HasCovariance,
    HasGaussianPrior,
    HasHandleMissing,
    HasWeightsPrior,
    ml_param,
)
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models import GaussianFamily
from em_spark.models.base import DEFAULT_K
from em_spark.models.base import Params as ParamArrays

if TYPE_CHECKING:
    pass

__all__ = ["GaussianMixture", "GaussianMixtureModel"]


class _GaussianParams(HasGaussianPrior, HasCovariance, HasHandleMissing, HasWeightsPrior):
    covarianceType = ml_param("covarianceType", "'full', 'diag', 'spherical' or 'tied'", TypeConverters.toString)
    regCovar = ml_param(
        "regCovar",
        "added to every covariance diagonal in the M-step (scikit-learn's reg_covar)",
        TypeConverters.toFloat,
    )


#: the Gaussian params' defaults: the family's
_GAUSSIAN_DEFAULTS = dict(
    covarianceType=GaussianFamily.covariance_type,
    regCovar=GaussianFamily.reg_covar,
    handleMissing=GaussianFamily.handle_missing,
    weightsPrior=GaussianFamily.weights_prior,
    meansPrior=GaussianFamily.means_prior,
    meansWeight=GaussianFamily.means_weight,
    covarsPrior=GaussianFamily.covars_prior,
    covarsWeight=GaussianFamily.covars_weight,
)


class GaussianMixtureModel(EMModel, _GaussianParams):
    """A fitted Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (k,)
    means : ndarray of shape (k, n_features)
    covariances : ndarray, shaped by covarianceType as in scikit-learn: full (k, d, d),
        tied (d, d), diag (k, d), spherical (k,)
    """

    _family: GaussianFamily

    def __init__(self, family: GaussianFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_GAUSSIAN_DEFAULTS)
        self._set(
            covarianceType=family.covariance_type,
            regCovar=family.reg_covar,
            handleMissing=family.handle_missing,
            weightsPrior=family.weights_prior,
            meansPrior=family.means_prior,
            meansWeight=family.means_weight,
            covarsPrior=family.covars_prior,
            covarsWeight=family.covars_weight,
        )

    def impute(self, dataset: DataFrame, outputCol: str = "imputed", stdCol: str | None = None) -> DataFrame:
        """``dataset`` with missing entries filled by their conditional expectation under the mixture.

        Adds ``outputCol`` (array<double>: observed entries exactly as they are, each missing
        (null or NaN) entry replaced by E[x_m | x_o], the responsibility-weighted conditional
        means of the components) and ``stdCol`` (default ``outputCol + "Std"``; array<double>:
        the conditional standard deviation of each entry, 0 where observed). Works whatever
        ``handleMissing`` the model was fitted with. Rows that cannot be read (null vector,
        wrong length, infinities) get nulls.
        """
        from em_spark.engine.scoring import impute_frame

        dataset, features = self._input(dataset)
        return impute_frame(
            dataset,
            self._family,
            self._arrays,
            self._n_features,
            features,
            output_col=outputCol,
            std_col=stdCol or f"{outputCol}Std",
        )

    @property
    def weights(self) -> np.ndarray:
        return self.public_params()["weights"]

    @property
    def means(self) -> np.ndarray:
        return self.public_params()["means"]

    @property
    def covariances(self) -> np.ndarray:
        return self.public_params()["covariances"]

    def full_covariances(self) -> np.ndarray:
        """(k, d, d) covariance matrices whatever the covariance type."""
        return self._family.full_covariances(self._arrays)

    @property
    def gaussiansDF(self) -> DataFrame:
        """One row per component with ``mean`` (Vector) and ``cov`` (Matrix), as pyspark.ml has it."""
        from pyspark.ml.linalg import DenseMatrix, DenseVector
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is None:
            raise RuntimeError("gaussiansDF needs an active SparkSession")
        rows = [
            (DenseVector(m), DenseMatrix(c.shape[0], c.shape[1], c.ravel(order="F").tolist()))
            for m, c in zip(self.means, self.full_covariances())
        ]
        return spark.createDataFrame(rows, ["mean", "cov"])


class GaussianMixture(EMEstimator, _GaussianParams):
    """Gaussian mixture fitted by distributed EM.

    Same parameter names as ``pyspark.ml.clustering.GaussianMixture`` where they overlap,
    with scikit-learn's numerics: log-space E-step, Cholesky precisions, ``regCovar``
    added to every covariance diagonal, and ``tol`` on the average log-likelihood per sample.

    ``handleMissing="model"`` fits rows with missing (null or NaN) features exactly: the
    E-step uses each component's conditional Gaussian of the missing entries given the
    observed ones, and the model's ``impute`` fills them. ``labelCol`` names a column of known
    components (semi-supervised EM: those rows' responsibilities are fixed to their label).

    Examples
    --------
    >>> gm = GaussianMixture(k=3, covarianceType="full", seed=7)   # doctest: +SKIP
    >>> model = gm.fit(df)                                          # doctest: +SKIP
    >>> model.weights, model.means, model.covariances               # doctest: +SKIP
    """

    _model_class = GaussianMixtureModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        covarianceType: str = GaussianFamily.covariance_type,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        regCovar: float = GaussianFamily.reg_covar,
        handleMissing: str = GaussianFamily.handle_missing,
        weightsPrior: float = GaussianFamily.weights_prior,
        meansPrior: float = GaussianFamily.means_prior,
        meansWeight: float = GaussianFamily.means_weight,
        covarsPrior: float = GaussianFamily.covars_prior,
        covarsWeight: float = GaussianFamily.covars_weight,
        initMode: str = GaussianFamily.init_mode,
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
        self._setDefault(**_GAUSSIAN_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> GaussianFamily:
        return GaussianFamily(
            k=self.getOrDefault("k"),
            covariance_type=self.getOrDefault("covarianceType"),
            reg_covar=self.getOrDefault("regCovar"),
            init_mode=self.getOrDefault("initMode"),
            handle_missing=self.getOrDefault("handleMissing"),
            weights_prior=self.getOrDefault("weightsPrior"),
            means_prior=self.getOrDefault("meansPrior"),
            means_weight=self.getOrDefault("meansWeight"),
            covars_prior=self.getOrDefault("covarsPrior"),
            covars_weight=self.getOrDefault("covarsWeight"),
        )
