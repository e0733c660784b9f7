"""GaussianHMM and CategoricalHMM: hidden Markov models trained by Baum-Welch on the same engine.

Data: one sequence per row (``featuresCol`` an array of Vectors, an array of arrays of
numbers, or an array of numbers for one number per step), or long format, one row per
step, with ``sequenceCol`` and ``timeCol`` naming the sequence id and the step's time:
the estimator groups the steps of each sequence (ordered by time) into one row first.
"""

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
    HasSmoothing,
    ParamAccessors,
    ml_param,
    optional_string,
)
from em_spark.engine.arrow_input import InputSpec
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE
from em_spark.engine.spark_source import group_sequences
from em_spark.models import CategoricalHMMFamily, GaussianHMMFamily
from em_spark.models.base import DEFAULT_K
from em_spark.models.base import Params as ParamArrays

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SEQUENCE_COL", "CategoricalHMM", "CategoricalHMMModel", "GaussianHMM", "GaussianHMMModel"]

#: the column holding each grouped sequence when the input is in long format
SEQUENCE_COL = "sequence"


def _optional_int(value: Any) -> int | None:
    return None if value is None else TypeConverters.toInt(value)


class _SequenceParams(ParamAccessors):
    sequenceCol = ml_param(
        "sequenceCol", "long format: the column identifying each sequence (with timeCol)", optional_string
    )
    timeCol = ml_param(
        "timeCol", "long format: the column ordering the steps of a sequence (with sequenceCol)", optional_string
    )

    def getSequenceCol(self) -> str | None:
        """Get the long-format sequence id column (or its default)."""
        return self.getOrDefault(self.sequenceCol)

    def setSequenceCol(self, value: str | None) -> Self:
        """Set the long-format sequence id column."""
        return self._set_or_clear("sequenceCol", value)

    def getTimeCol(self) -> str | None:
        """Get the long-format time column (or its default)."""
        return self.getOrDefault(self.timeCol)

    def setTimeCol(self, value: str | None) -> Self:
        """Set the long-format time column."""
        return self._set_or_clear("timeCol", value)

    def _input(self, dataset: DataFrame) -> tuple[DataFrame, Any]:
        """One sequence per row as given, or long format grouped by sequenceCol, ordered by timeCol.

        Grouped data has the columns ``sequenceCol`` and ``sequence`` (array<array<double>>)."""
        sequence_col, time_col = self.getOrDefault("sequenceCol"), self.getOrDefault("timeCol")
        features = self.getOrDefault("featuresCol")
        if not sequence_col and not time_col:
            return dataset, features
        if not (sequence_col and time_col):
            raise ValueError(
                "long-format input needs both sequenceCol and timeCol (or neither, for one sequence per row)"
            )
        if self.getOrDefault("weightCol"):
            raise ValueError(
                "weightCol is not supported with long-format input (a weight belongs to a whole sequence); "
                "group the sequences into one row each and give a per-sequence weight column"
            )
        label_col = self.getOrDefault("labelCol") if self.hasParam("labelCol") else None
        if label_col and label_col not in dataset.columns:
            label_col = None  # a model scoring new data that has no labels
        grouped = group_sequences(dataset, sequence_col, time_col, features, SEQUENCE_COL, label_col=label_col)
        return grouped, SEQUENCE_COL


class _ChainPriorParams(ParamAccessors):
    """hmmlearn's Dirichlet priors on the chain (1: flat, maximum likelihood)."""

    startProbPrior = ml_param(
        "startProbPrior",
        "Dirichlet concentration of startProb (> 0; 1 is flat, hmmlearn's startprob_prior)",
        TypeConverters.toFloat,
    )
    transMatPrior = ml_param(
        "transMatPrior",
        "Dirichlet concentration of each transMat row (> 0; hmmlearn's transmat_prior)",
        TypeConverters.toFloat,
    )

    def getStartProbPrior(self) -> float:
        """Get the Dirichlet concentration of startProb (or its default)."""
        return self.getOrDefault(self.startProbPrior)

    def setStartProbPrior(self, value: float) -> Self:
        """Set the Dirichlet concentration of startProb."""
        return self._set_or_clear("startProbPrior", value)

    def getTransMatPrior(self) -> float:
        """Get the Dirichlet concentration of each transMat row (or its default)."""
        return self.getOrDefault(self.transMatPrior)

    def setTransMatPrior(self, value: float) -> Self:
        """Set the Dirichlet concentration of each transMat row."""
        return self._set_or_clear("transMatPrior", value)


class _GaussianHMMParams(_SequenceParams, _ChainPriorParams, HasGaussianPrior, HasCovariance, HasHandleMissing):
    covarianceType = ml_param(
        "covarianceType", "'full', 'diag', 'tied' or 'spherical' (as hmmlearn's)", TypeConverters.toString
    )
    regCovar = ml_param("regCovar", "added to every covariance diagonal in the M-step", TypeConverters.toFloat)


class _CategoricalHMMParams(_SequenceParams, _ChainPriorParams, HasSmoothing, HasHandleMissing):
    nCategories = ml_param(
        "nCategories", "number of symbols (default: inferred from the sample as max + 1)", _optional_int
    )
    smoothing = ml_param(
        "smoothing", "Dirichlet pseudo-count added to every emission count in the M-step", TypeConverters.toFloat
    )

    def getNCategories(self) -> int | None:
        """Get the number of symbols (or its default)."""
        return self.getOrDefault(self.nCategories)

    def setNCategories(self, value: int | None) -> Self:
        """Set the number of symbols."""
        return self._set_or_clear("nCategories", value)


#: the HMM params' defaults: the families' (no long format unless asked)
_CHAIN_PRIOR_DEFAULTS = dict(
    startProbPrior=GaussianHMMFamily.startprob_prior, transMatPrior=GaussianHMMFamily.transmat_prior
)
_GAUSSIAN_HMM_DEFAULTS = dict(
    covarianceType=GaussianHMMFamily.covariance_type,
    regCovar=GaussianHMMFamily.reg_covar,
    meansPrior=GaussianHMMFamily.means_prior,
    meansWeight=GaussianHMMFamily.means_weight,
    covarsPrior=GaussianHMMFamily.covars_prior,
    covarsWeight=GaussianHMMFamily.covars_weight,
    handleMissing=GaussianHMMFamily.handle_missing,
    **_CHAIN_PRIOR_DEFAULTS,
    sequenceCol=None,
    timeCol=None,
)
_CATEGORICAL_HMM_DEFAULTS = dict(
    nCategories=CategoricalHMMFamily.n_categories,
    smoothing=CategoricalHMMFamily.smoothing,
    handleMissing=CategoricalHMMFamily.handle_missing,
    **_CHAIN_PRIOR_DEFAULTS,
    sequenceCol=None,
    timeCol=None,
)


class _HMMModel(EMModel):
    """A fitted HMM: ``transform`` adds the Viterbi state path (``predictionCol``, array<int>),
    the per-step state posteriors (``probabilityCol``, array<array<double>>) and the
    sequence's log-likelihood (``logLikelihoodCol``)."""

    @property
    def startProb(self) -> np.ndarray:
        """(k,) probability of each state at the first step."""
        return self.public_params()["startProb"]

    @property
    def transMat(self) -> np.ndarray:
        """(k, k) transition probabilities: row i is P(next state | state i)."""
        return self.public_params()["transMat"]

    # A model fitted on long-format data (whose featuresCol names the step columns) reads
    # that format again once loaded.
    _saved_params = (*EMModel._saved_params, "sequenceCol", "timeCol")


class GaussianHMMModel(_GaussianHMMParams, _HMMModel):
    """A fitted Gaussian HMM.

    Attributes
    ----------
    startProb : (k,), transMat : (k, k), means : (k, d),
    covariances : (k, d, d) for full, (k, d) for diag (as hmmlearn's ``covars_`` for diag, not expanded)
    """

    def __init__(self, family: GaussianHMMFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_GAUSSIAN_HMM_DEFAULTS)
        self._set(
            covarianceType=family.covariance_type,
            regCovar=family.reg_covar,
            startProbPrior=family.startprob_prior,
            transMatPrior=family.transmat_prior,
            meansPrior=family.means_prior,
            meansWeight=family.means_weight,
            covarsPrior=family.covars_prior,
            covarsWeight=family.covars_weight,
            handleMissing=family.handle_missing,
        )

    def impute(self, dataset: DataFrame, outputCol: str = "imputed", stdCol: str | None = None) -> DataFrame:
        """``dataset`` with the missing entries of each sequence filled by their posterior mean.

        Adds ``outputCol`` (array<array<double>>, one vector per step: observed entries exactly as
        they are, a missing (null or NaN) entry or step replaced by Σ_j γ_tj E[x_m | x_o, state j],
        with γ the forward-backward posteriors, which weigh the neighbouring steps) and ``stdCol``
        (default ``outputCol + "Std"``: the posterior standard deviation of each entry, 0 where
        observed). Works whatever ``handleMissing`` the model was fitted with. Sequences that cannot
        be read, or of probability zero under the model, get nulls (or NaN)."""
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
    def means(self) -> np.ndarray:
        return self.public_params()["means"]

    @property
    def covariances(self) -> np.ndarray:
        return self.public_params()["covariances"]


class CategoricalHMMModel(_CategoricalHMMParams, _HMMModel):
    """A fitted categorical HMM. Attributes: startProb (k,), transMat (k, k), emissionProb (k, n_categories)."""

    def __init__(self, family: CategoricalHMMFamily, params: ParamArrays, n_features: int) -> None:
        super().__init__(family, params, n_features)
        self._setDefault(**_CATEGORICAL_HMM_DEFAULTS)
        self._set(
            smoothing=family.smoothing,
            startProbPrior=family.startprob_prior,
            transMatPrior=family.transmat_prior,
            handleMissing=family.handle_missing,
        )

    @property
    def emissionProb(self) -> np.ndarray:
        return self.public_params()["emissionProb"]


class GaussianHMM(_GaussianHMMParams, EMEstimator):
    """Hidden Markov model with Gaussian emissions, trained by distributed Baum-Welch.

    Each sequence is one unit: ``tol`` applies to the average log-likelihood per sequence,
    and ``weightCol`` gives a weight per sequence. Agrees with hmmlearn's GaussianHMM from
    the same initial parameters (with its ``covars_prior=0``; ``regCovar`` is scikit-learn's).
    ``handleMissing="model"`` marginalizes null or NaN steps and features in the forward-backward
    (the steps keep their place in time; ``model.impute`` fills them); ``labelCol`` gives a known
    state per step (an array per sequence, or one per row in long format; null or -1: unknown).

    >>> hmm = GaussianHMM(k=3, covarianceType="diag", featuresCol="obs")   # doctest: +SKIP
    >>> model = hmm.fit(df)                                                 # doctest: +SKIP
    >>> model.startProb, model.transMat, model.means, model.covariances     # doctest: +SKIP
    """

    _model_class = GaussianHMMModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        covarianceType: str = GaussianHMMFamily.covariance_type,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        regCovar: float = GaussianHMMFamily.reg_covar,
        initMode: str = GaussianHMMFamily.init_mode,
        startProbPrior: float = GaussianHMMFamily.startprob_prior,
        transMatPrior: float = GaussianHMMFamily.transmat_prior,
        meansPrior: float = GaussianHMMFamily.means_prior,
        meansWeight: float = GaussianHMMFamily.means_weight,
        covarsPrior: float = GaussianHMMFamily.covars_prior,
        covarsWeight: float = GaussianHMMFamily.covars_weight,
        nInit: int = FitSettings.n_init,
        acceleration: str = FitSettings.acceleration,
        optimizer: str = FitSettings.optimizer,
        miniBatchFraction: float = FitSettings.mini_batch_fraction,
        learningOffset: float = FitSettings.learning_offset,
        learningDecay: float = FitSettings.learning_decay,
        initialModel: EMModel | Mapping[str, Any] | None = None,
        featuresCol: str | Sequence[str] = "features",
        sequenceCol: str | None = None,
        timeCol: str | None = None,
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: str | None = None,
        labelCol: str | None = None,
        handleMissing: str = GaussianHMMFamily.handle_missing,
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
        self._setDefault(**_GAUSSIAN_HMM_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> GaussianHMMFamily:
        return GaussianHMMFamily(
            k=self.getOrDefault("k"),
            covariance_type=self.getOrDefault("covarianceType"),
            reg_covar=self.getOrDefault("regCovar"),
            init_mode=self.getOrDefault("initMode"),
            startprob_prior=self.getOrDefault("startProbPrior"),
            transmat_prior=self.getOrDefault("transMatPrior"),
            means_prior=self.getOrDefault("meansPrior"),
            means_weight=self.getOrDefault("meansWeight"),
            covars_prior=self.getOrDefault("covarsPrior"),
            covars_weight=self.getOrDefault("covarsWeight"),
            handle_missing=self.getOrDefault("handleMissing"),
        )


class CategoricalHMM(_CategoricalHMMParams, EMEstimator):
    """Hidden Markov model emitting integer symbols 0..nCategories-1, trained by distributed Baum-Welch.

    ``featuresCol`` holds one sequence of symbols per row (array of integers), or, in long
    format, one symbol per row. ``smoothing`` > 0 keeps an unseen symbol from getting
    probability zero. Agrees with hmmlearn's CategoricalHMM from the same initial parameters.
    ``handleMissing="model"`` marginalizes null or NaN steps; ``labelCol`` gives known states per step.
    """

    _model_class = CategoricalHMMModel

    @keyword_only
    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        nCategories: int | None = None,
        smoothing: float = CategoricalHMMFamily.smoothing,
        startProbPrior: float = CategoricalHMMFamily.startprob_prior,
        transMatPrior: float = CategoricalHMMFamily.transmat_prior,
        maxIter: int = FitSettings.max_iter,
        tol: float = FitSettings.tol,
        seed: int = FitSettings.seed,
        nInit: int = FitSettings.n_init,
        acceleration: str = FitSettings.acceleration,
        optimizer: str = FitSettings.optimizer,
        miniBatchFraction: float = FitSettings.mini_batch_fraction,
        learningOffset: float = FitSettings.learning_offset,
        learningDecay: float = FitSettings.learning_decay,
        initialModel: EMModel | Mapping[str, Any] | None = None,
        featuresCol: str | Sequence[str] = "features",
        sequenceCol: str | None = None,
        timeCol: str | None = None,
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        logLikelihoodCol: str = "logLikelihood",
        weightCol: str | None = None,
        labelCol: str | None = None,
        handleMissing: str = CategoricalHMMFamily.handle_missing,
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
        self._setDefault(**_CATEGORICAL_HMM_DEFAULTS)
        self._set_checked(**self._input_kwargs)

    def family(self) -> CategoricalHMMFamily:
        return CategoricalHMMFamily(
            k=self.getOrDefault("k"),
            n_categories=self.getOrDefault("nCategories"),
            smoothing=self.getOrDefault("smoothing"),
            startprob_prior=self.getOrDefault("startProbPrior"),
            transmat_prior=self.getOrDefault("transMatPrior"),
            handle_missing=self.getOrDefault("handleMissing"),
        )
