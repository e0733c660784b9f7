"""StudentTMixture: robust mixtures of multivariate Student-t distributions, on the same engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import TypeConverters

from em_spark.api.base import EMEstimator, EMModel, HasCovariance, HasWeightsPrior, ml_param
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.models.base import DEFAULT_K
from em_spark.models.base import Params as ParamArrays
from em_spark.models.student_t import StudentTMixtureFamily

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["StudentTMixture", "StudentTMixtureModel"]


class _StudentTParams(HasCovariance, HasWeightsPrior):
    covarianceType = ml_param(
        "covarianceType", "'full' or 'diag' (the components' scale matrices)", TypeConverters.toString
    )
    regCovar = ml_param("regCovar", "added to every scale matrix's diagonal in the M-step", TypeConverters.toFloat)
    dof = ml_param(
        "dof",
        "degrees of freedom every component starts from (kept with estimateDof=False); small = heavy tails",
        TypeConverters.toFloat,
    )
    estimateDof = ml_param("estimateDof", "estimate each component's degrees of freedom", TypeConverters.toBoolean)

    def getDof(self) -> float:
        """Get the (initial) degrees of freedom (or its default)."""
        return self.getOrDefault(self.dof)

    def setDof(self, value: float) -> Self:
        """Set the (initial) degrees of freedom."""
        return self._set_or_clear("dof", value)

    def getEstimateDof(self) -> bool:
        """Get whether the degrees of freedom are estimated (or its default)."""
        return self.getOrDefault(self.estimateDof)

    def setEstimateDof(self, value: bool) -> Self:
        """Set whether the degrees of freedom are estimated."""
        return self._set_or_clear("estimateDof", value)


_STUDENT_T_DEFAULTS = dict(
    covarianceType=StudentTMixtureFamily.covariance_type,
    regCovar=StudentTMixtureFamily.reg_covar,
    dof=StudentTMixtureFamily.dof,
    estimateDof=StudentTMixtureFamily.estimate_dof,
    initMode=StudentTMixtureFamily.init_mode,
    weightsPrior=StudentTMixtureFamily.weights_prior,
)


class StudentTMixtureModel(EMModel, _StudentTParams):
    """A fitted Student-t mixture.

    Attributes
    ----------
    weights : ndarray of shape (k,)
    means : ndarray of shape (k, d), the locations
    covariances : ndarray, the scale matrices: full (k, d, d), diag (k, d)
    dof : ndarray of shape (k,), the degrees of freedom
    """

    _family: StudentTMixtureFamily

    def __init__(self, family: StudentTMixtureFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_STUDENT_T_DEFAULTS)
        self._set(
            covarianceType=family.covariance_type,
            regCovar=family.reg_covar,
            dof=family.dof,
            estimateDof=family.estimate_dof,
            weightsPrior=family.weights_prior,
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

    @property
    def degreesOfFreedom(self) -> np.ndarray:
        return self.public_params()["dof"]


class StudentTMixture(EMEstimator, _StudentTParams):
    """Mixture of multivariate Student-t distributions (Peel and McLachlan 2000), fitted by EM with
    latent scales: outliers get small weights instead of dragging the components, so it is the
    mixture for anomaly detection on data with gross errors (score with an anomaly threshold on
    ``logLikelihood``). Degrees of freedom per component, fixed or estimated."""

    _model_class = StudentTMixtureModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        covarianceType: str = StudentTMixtureFamily.covariance_type,
        dof: float = StudentTMixtureFamily.dof,
        estimateDof: bool = StudentTMixtureFamily.estimate_dof,
        regCovar: float = StudentTMixtureFamily.reg_covar,
        weightsPrior: float = StudentTMixtureFamily.weights_prior,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        initMode: str = StudentTMixtureFamily.init_mode,
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
        self._setDefault(**_STUDENT_T_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> StudentTMixtureFamily:
        return StudentTMixtureFamily(
            k=self.getOrDefault("k"),
            covariance_type=self.getOrDefault("covarianceType"),
            dof=self.getOrDefault("dof"),
            estimate_dof=self.getOrDefault("estimateDof"),
            reg_covar=self.getOrDefault("regCovar"),
            init_mode=self.getOrDefault("initMode"),
            weights_prior=self.getOrDefault("weightsPrior"),
        )
