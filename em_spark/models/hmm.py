"""Hidden Markov models: the ``gaussian_hmm`` and ``categorical_hmm`` families.

A block holds whole sequences: ``block.X`` stacks the observations of consecutive
sequences and ``block.lengths`` says how many each has (no ``lengths``: the block is
one sequence, as in hmmlearn). A sequence is never split across blocks, so the
statistics of a data set are the sum of the statistics of its blocks.

Parameters are a plain dict of float64 arrays::

    startprob            (k,)      P(first state)
    transmat             (k, k)    P(next state j | state i), rows sum to 1
    gaussian_hmm:   means (k, d), covariances full (k, d, d) | diag (k, d) | tied (d, d) |
                    spherical (k,), precisions_cholesky (same shape; see ``em_spark.models.gaussian``)
    categorical_hmm: emissionprob (k, n_categories), rows sum to 1

Users see them as ``startProb``, ``transMat``, ``means``, ``covariances`` /
``emissionProb`` (:meth:`public_params`, :meth:`params_from_public`).

Sufficient statistics of a block (a :class:`~em_spark.stats.Stats`), with ``w_s`` the
weight of sequence ``s`` (the weight of its first observation; 1 without weights)::

    start   (k,)      Σ_s w_s γ_s0                 posterior of the first state
    trans   (k, k)    Σ_s w_s Σ_t ξ_st             expected transition counts
    post    (k,)      Σ_s w_s Σ_t γ_st             gaussian_hmm: state occupancy
    sum     (k, d)    Σ w γ (x − μ_k)              gaussian_hmm, around the current means
    sq      (k, d, d) Σ w γ (x − μ_k)(x − μ_k)ᵀ     full and tied; (k, d) squares for diag and spherical
    counts  (k, C)    Σ w γ [x = c]                categorical_hmm
    loglik  ()        Σ_s w_s log p(sequence s)
    weight  ()        Σ_s w_s                      (the number of sequences without weights)
    count   ()        number of observations

so the engine's "average log-likelihood per sample" is per *sequence*.

The chain (forward-backward, Viterbi, the start/transition statistics and M-step) is
:class:`~em_spark.models.markov.MarkovChain`; the families here are its emission models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from em_spark.models.base import Block, ModelError, Params, check_k
from em_spark.models.compiled import HMMStats, hmm_categorical_stats, hmm_gaussian_stats
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.gaussian_missing import nan_mask
from em_spark.models.kernels import (
    KERNELS,
    LOG_2PI,
    Kernel,
    add_to_variances,
    chunks,
    ill_defined_covariance,
    log0,
    not_positive_definite_components,
    shifted_moments,
)
from em_spark.models.markov import MarkovChain, block_sequences, dead_state_event, dead_states
from em_spark.models.priors import GaussianPrior
from em_spark.models.reparam import covariance_from_free, covariance_to_free, softmax
from em_spark.models.validation import check_parameter, check_present
from em_spark.stats import Stats

__all__ = ["HMM_COVARIANCE_TYPES", "CategoricalHMMFamily", "GaussianHMMFamily"]

HMM_COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")


@dataclass(frozen=True)
class GaussianHMMFamily(MarkovChain):
    """Hidden Markov model with ``k`` states and Gaussian emissions, fitted by Baum-Welch.

    Parameters
    ----------
    k : int
        Number of hidden states.
    covariance_type : {"full", "diag", "tied", "spherical"}
        As hmmlearn's: one matrix per state, one vector of variances per state, one matrix
        shared by every state (pooled over the states' occupancies), or one variance per state
        (the mean of its per-dimension variances). The kernels are the ``gaussian`` family's.
    reg_covar : float
        Non-negative value added to every covariance diagonal in the M-step (scikit-learn's
        ``reg_covar``, as the ``gaussian`` family). This is *not* hmmlearn's ``min_covar``:
        hmmlearn uses ``min_covar`` only to floor its initial covariance, and regularizes its
        M-step with a prior (``covars_prior`` added to the scatter before dividing by the
        occupancy, default 1e-2; for diag it also floors the occupancy at 1e-5). With
        ``reg_covar=0`` here and ``covars_prior=0`` there (``means_weight=0`` and flat
        start/transition priors: hmmlearn's defaults) the two M-steps are the same, which
        is how the tests compare them.
    init_mode : {"k-means++", "random"}
        How :meth:`initialize` seeds the emission parameters from a sample (as the
        ``gaussian`` family); startprob and transmat start uniform.
    handle_missing : {"error", "model"}
        ``"model"``: NaN entries are missing at random. A step with some features missing is
        emitted with the marginal density of its observed ones (a step with all missing, with
        density 1), so the forward-backward marginalizes them and the steps keep their place in
        time; the statistics take the missing entries' conditional means and covariances given the
        state (:mod:`gaussian_missing`, as the ``gaussian`` family's). ``"error"`` refuses NaN.
    """

    name: ClassVar[str] = "gaussian_hmm"
    summary_params: ClassVar[tuple[str, ...]] = ("startProb", "means")
    _what: ClassVar[str] = "a Gaussian HMM"
    #: the priors came later: left out of config() at their defaults (checkpoints written before resume)
    added_fields: ClassVar[tuple[str, ...]] = (
        "startprob_prior",
        "transmat_prior",
        "means_prior",
        "means_weight",
        "covars_prior",
        "covars_weight",
        "handle_missing",
    )
    supports_impute: ClassVar[bool] = True

    k: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    init_mode: str = "k-means++"
    startprob_prior: float = 1.0
    transmat_prior: float = 1.0
    means_prior: float = 0.0
    means_weight: float = 0.0
    covars_prior: float = 0.0
    covars_weight: float = 1.0
    handle_missing: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "hidden states"))
        if self.covariance_type not in HMM_COVARIANCE_TYPES:
            raise ModelError(
                f"covarianceType must be one of {list(HMM_COVARIANCE_TYPES)} for a Gaussian HMM, "
                f"got {self.covariance_type!r}"
            )
        # the gaussian family validates reg_covar and init_mode (same messages)
        object.__setattr__(self, "reg_covar", self._mixture.reg_covar)
        self._check_chain_settings()
        prior = self._prior  # validates the Gaussian prior's four numbers
        for name in ("means_prior", "means_weight", "covars_prior", "covars_weight"):
            object.__setattr__(self, name, getattr(prior, name))

    @property
    def _prior(self) -> GaussianPrior:
        """hmmlearn's prior on the emission means and covariances (inactive by default)."""
        return GaussianPrior(self.means_prior, self.means_weight, self.covars_prior, self.covars_weight)

    @property
    def _mixture(self) -> GaussianFamily:
        """The Gaussian mixture with the same emission settings, for its kernels and k-means++."""
        return GaussianFamily(
            self.k, self.covariance_type, self.reg_covar, self.init_mode, handle_missing=self.handle_missing
        )

    def _emission_mixture_params(self, params: Params) -> Params:
        """The emission parameters as a mixture's with unit weights: its log π_j + log N(x | j) is then
        log N(x | j), the emission density (the missing-value machinery is the mixture's)."""
        return {**params, "weights": np.ones(self.k)}

    @property
    def _kernel(self) -> Kernel:
        return KERNELS[self.covariance_type]

    # -- description ------------------------------------------------------------

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``startProb`` (k,), ``transMat`` (k, k), ``means`` (k, d), ``covariances``."""
        return {
            "startProb": np.array(params["startprob"], dtype=np.float64),
            "transMat": np.array(params["transmat"], dtype=np.float64),
            "means": np.array(params["means"], dtype=np.float64),
            "covariances": np.array(params["covariances"], dtype=np.float64),
        }

    def _draw_emissions(self, params: Params, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A Gaussian observation from each step's state, as the Gaussian mixture draws rows."""
        return self._mixture.rows_of_components(params, states, rng)

    def _emission_log_prior(self, params: Params) -> float:
        return self._prior.log_prior(params["means"], params["covariances"], self.covariance_type)

    def _emission_n_parameters(self, params: Params) -> int:
        d = int(np.shape(params["means"])[1])
        return self.k * d + self._kernel.n_cov_parameters(self.k, d)

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between the states' emission Gaussians of two models.

        States are matched by what they emit: the chain (start and transition probabilities)
        is then relabeled along with them. Entry [i, j] compares state i of ``a`` with state j of ``b``.
        """
        return self._mixture.component_distances(params_a, params_b)

    def _relabel_emissions(self, params: Params, order: np.ndarray) -> dict[str, np.ndarray]:
        if self.covariance_type == "tied":  # one covariance for every state: nothing to reorder
            return {
                "means": params["means"][order].copy(),
                **{n: params[n].copy() for n in ("covariances", "precisions_cholesky")},
            }
        return {name: params[name][order].copy() for name in ("means", "covariances", "precisions_cholesky")}

    def _emissions_to_free(self, params: Params) -> dict[str, np.ndarray]:
        """Means (k, d) and covariances as log-variances or log-diagonal Cholesky factors."""
        return {
            "means": np.asarray(params["means"], dtype=np.float64),
            "covariances": covariance_to_free(params["covariances"], self.covariance_type),
        }

    def _emissions_from_free(self, free: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Means and covariances, with their precisions' Cholesky factors (ModelError if not usable)."""
        covariances = covariance_from_free(free["covariances"], self.covariance_type)
        try:
            prec_chol = self._kernel.precisions_cholesky(covariances)
        except np.linalg.LinAlgError:
            bad = not_positive_definite_components(covariances, self.covariance_type)
            raise ill_defined_covariance("Gaussian HMM", bad, self.covariance_type, unit="state") from None
        return {"means": np.array(free["means"]), "covariances": covariances, "precisions_cholesky": prec_chol}

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s startProb, transMat, means and covariances.

        startProb and each transMat row must be non-negative and sum to 1 within 1e-6 (then
        renormalized); means and covariances are checked as the ``gaussian`` family does.
        """
        check_present(arrays, ("startProb", "transMat", "means", "covariances"))
        chain = self._chain_from_public(arrays)
        k, d, kind = self.k, int(n_features), self.covariance_type
        what = f"k={k}, {d} features and covarianceType={kind!r}"
        means = check_parameter(arrays["means"], "means", shape=(k, d), what=what)
        covariances = check_parameter(
            arrays["covariances"],
            "covariances",
            shape=self._kernel.cov_shape(k, d),
            what=what,
            positive_definite="matrices" if kind in ("full", "tied") else "variances",
            unit="state",
        )
        return {
            **chain,
            "means": means,
            "covariances": covariances,
            "precisions_cholesky": self._kernel.precisions_cholesky(covariances),
        }

    # -- E-step -------------------------------------------------------------------

    def _observations(self, block: Block, params: Params) -> np.ndarray:
        """(n_rows, d) float64 observations, checked against the model's d (NaN only when modelled)."""
        d = int(np.shape(params["means"])[1])
        if block.n_features != d:
            raise ModelError(f"data has {block.n_features} features but the model has {d}")
        X = np.asarray(block.X, dtype=np.float64)
        missing = nan_mask(X)
        if missing is not None:
            self._refuse_missing(int(missing.any(axis=1).sum()), X.shape[0])
        return X

    def _log_frame(self, X: np.ndarray, params: Params) -> np.ndarray:
        """(k, n_rows) log N(x_t | μ_j, Σ_j), with the gaussian family's chunked kernels; for a step
        with NaN entries the marginal density of its observed ones (1 when nothing is observed)."""
        missing = nan_mask(X)
        if missing is not None:
            return self._mixture._log_joint(X, missing, self._emission_mixture_params(params)).T
        d = X.shape[1]
        kernel = self._kernel
        prec_chol = params["precisions_cholesky"]
        # (k,); tied's log-determinant is one number, shared by every state
        log_const = np.broadcast_to(kernel.log_det(prec_chol, d) - 0.5 * d * LOG_2PI, (self.k,))
        prepared = kernel.prepare(prec_chol)
        out = np.empty((self.k, X.shape[0]))
        for start, stop, diffs, work in chunks(self._kernel, X, params["means"]):
            half_maha = kernel.half_mahalanobis(diffs, work, prepared)
            np.subtract(log_const[:, None], half_maha, out=out[:, start:stop])
        return out

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """The emissions' ``sum`` and ``sq`` moved from ``old``'s means to ``new``'s (the chain's counts stay)."""
        sums, sq = shifted_moments(stats["post"], stats["sum"], stats["sq"], old["means"], new["means"])
        return Stats({**stats, "sum": sums, "sq": sq})

    def _emission_stats(self, X: np.ndarray, wgamma: np.ndarray, params: Params) -> dict[str, np.ndarray]:
        """post (k,), sum (k, d), sq (k, d, d) | (k, d) of observations X (n, d) with weighted posteriors (k, n)."""
        k, kernel = self.k, self._kernel
        d = X.shape[1]
        sums = np.zeros((k, d))
        sq = np.zeros(kernel.sq_shape(k, d))
        missing = nan_mask(X)
        complete_X, complete_w = X, wgamma
        if missing is not None:
            gappy = missing.any(axis=1)
            complete_X, complete_w = X[~gappy], wgamma[:, ~gappy]
            # the missing entries' conditional means and covariances given each state
            self._mixture._missing_model(self._emission_mixture_params(params)).accumulate_posterior(
                X[gappy], missing[gappy], wgamma[:, gappy], sums, sq
            )
        for start, stop, diffs, work in chunks(self._kernel, complete_X, params["means"]):
            kernel.moments(diffs, work, complete_w[:, start:stop], sums, sq)
        return {"post": wgamma.sum(axis=1), "sum": sums, "sq": sq}

    def impute(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """The NaN entries of the sequences filled by their posterior mean E[x_m | all observed steps].

        With the forward-backward posteriors γ_tj of each step (which weigh the neighbouring steps
        through the chain) and each state's conditional mean x̂_tj of the missing entries given the
        step's observed ones, the imputed value is Σ_j γ_tj x̂_tj and its standard deviation the
        mixture's, within plus between states (:meth:`gaussian_missing._MissingModel.impute`). Works
        whatever ``handle_missing`` the model was fitted with; a sequence of probability zero under
        the model gets NaN.

        Returns
        -------
        dict with ``imputed`` (n_rows, d) (observed entries unchanged) and ``std`` (n_rows, d) (0 where
        observed), in block order.
        """
        X = np.asarray(block.X, dtype=np.float64)
        imputed, std = X.copy(), np.zeros(X.shape)
        if nan_mask(X) is None:
            return {"imputed": imputed, "std": std}
        modelling = self if self.models_missing else replace(self, handle_missing="model")
        missing_model = self._mixture._missing_model(self._emission_mixture_params(params))
        for post, packing, _, packed, _, (_, r0, r1) in modelling._posteriors(block, params):
            missing = nan_mask(packed)
            if missing is None:
                continue
            gappy = np.flatnonzero(missing.any(axis=1))
            filled, spread = packed.copy(), np.zeros(packed.shape)
            filled[gappy], spread[gappy] = missing_model.impute(
                packed[gappy], missing[gappy], None, resp=post.gamma[:, gappy].T
            )
            impossible = ~np.isfinite(packing.per_column(post.loglik))
            if impossible.any():  # no posterior to impute from
                filled[impossible] = np.where(missing[impossible], np.nan, packed[impossible])
            imputed[r0:r1], std[r0:r1] = packing.unpack_rows(filled), packing.unpack_rows(spread)
        return {"imputed": imputed, "std": std}

    def _compiled_stats(
        self, observations: np.ndarray, lengths: np.ndarray, seq_weight: np.ndarray | None, params: Params
    ) -> HMMStats:
        if nan_mask(observations) is not None:
            return None  # missing entries: the numpy path's marginal densities and conditional moments
        return hmm_gaussian_stats(
            self.covariance_type, observations, lengths, seq_weight, params["startprob"], params["transmat"],
            params["means"], params["precisions_cholesky"],
        )  # fmt: skip

    # -- M-step -------------------------------------------------------------------

    def _emission_m_step(self, stats: Stats, params: Params, events: list[str]) -> dict[str, np.ndarray]:
        """hmmlearn's emission M-step (no priors) in shifted coordinates, plus ``reg_covar`` on the diagonals.

        A state whose occupancy share fell below 1e-10 keeps its previous means and
        covariances (they are not estimable; keeping them keeps the likelihood monotone).
        """
        occupancy = np.asarray(stats["post"], dtype=np.float64)
        dead = dead_states(occupancy)
        nk = np.where(np.isin(np.arange(self.k), dead), 1.0, occupancy)
        prior = self._prior
        if prior.active:  # MAP: hmmlearn's update with its prior, then reg_covar on the diagonals
            means, covariances = prior.m_step(
                nk, np.asarray(stats["sum"]), np.asarray(stats["sq"]), params["means"], self.covariance_type
            )
            covariances = add_to_variances(covariances, self.reg_covar, self.covariance_type)
        else:
            delta = np.asarray(stats["sum"]) / nk[:, None]
            means = params["means"] + delta
            covariances = self._kernel.covariance(nk, delta, np.asarray(stats["sq"]), self.reg_covar)
        for j in dead:
            means[j] = params["means"][j]
            if self.covariance_type != "tied":  # a dead state adds nothing to the pooled (tied) covariance
                covariances[j] = params["covariances"][j]
            events.append(dead_state_event(int(j), float(occupancy[j] / occupancy.sum())))
        try:
            prec_chol = self._kernel.precisions_cholesky(covariances)
        except np.linalg.LinAlgError:
            bad = not_positive_definite_components(covariances, self.covariance_type)
            raise ill_defined_covariance("Gaussian HMM", bad, self.covariance_type, unit="state") from None
        return {"means": means, "covariances": covariances, "precisions_cholesky": prec_chol}

    # -- initialization -------------------------------------------------------------

    def _initialize_emissions(self, sample: Block, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The ``gaussian`` family's initialization on the sample's observations (each weighted
        by its sequence's weight), i.e. k-means++ and Lloyd, or k random points."""
        lengths, seq_weight = block_sequences(sample)
        weight = None if seq_weight is None else np.repeat(seq_weight, lengths)
        # known states (labels per step) seed their states' means, as labelled rows do for a mixture
        steps = Block(np.asarray(sample.X, dtype=np.float64), weight, labels=sample.labels)
        mixture = self._mixture.initialize(steps, rng)
        return {name: mixture[name] for name in ("means", "covariances", "precisions_cholesky")}


# ---------------------------------------------------------------------------
# Categorical emissions


@dataclass(frozen=True)
class CategoricalHMMFamily(MarkovChain):
    """Hidden Markov model with ``k`` states emitting integer symbols, fitted by Baum-Welch.

    Observations are one symbol per row: ``X`` has one column of float64 values holding
    integers ``0 .. n_categories - 1``.

    Parameters
    ----------
    k : int
        Number of hidden states.
    n_categories : int or None
        Number of symbols. None: one more than the largest symbol in the initialization
        sample (give it when the sample may miss the largest symbols).
    smoothing : float
        Non-negative pseudo-count added to every emission count in the M-step (additive
        smoothing; a Dirichlet prior of 1 + smoothing). 0, the default, is maximum likelihood
        (hmmlearn's default ``emissionprob_prior=1``); a symbol never seen in a state then has
        probability 0 there. startProb and transMat are never smoothed.
    handle_missing : {"error", "model"}
        ``"model"``: a NaN (or null) step is a missing symbol, emitted with probability 1 by every
        state, so the forward-backward marginalizes it and the step keeps its place in time.
    """

    name: ClassVar[str] = "categorical_hmm"
    summary_params: ClassVar[tuple[str, ...]] = ("startProb",)
    _what: ClassVar[str] = "a categorical HMM"
    added_fields: ClassVar[tuple[str, ...]] = ("startprob_prior", "transmat_prior", "handle_missing")
    _impossible_hint: ClassVar[str] = ", or use smoothing > 0"

    k: int
    n_categories: int | None = None
    smoothing: float = 0.0
    startprob_prior: float = 1.0
    transmat_prior: float = 1.0
    handle_missing: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "hidden states"))
        c = self.n_categories
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
                raise ModelError(f"nCategories must be a positive integer (the number of symbols) or None, got {c!r}")
            object.__setattr__(self, "n_categories", int(c))
        s = self.smoothing
        if (
            isinstance(s, bool)
            or not isinstance(s, (int, float, np.floating, np.integer))
            or not math.isfinite(s)
            or s < 0
        ):
            raise ModelError(f"smoothing must be a finite non-negative number (a pseudo-count), got {s!r}")
        object.__setattr__(self, "smoothing", float(s))
        self._check_chain_settings()

    # -- description ------------------------------------------------------------

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``startProb`` (k,), ``transMat`` (k, k) and ``emissionProb`` (k, n_categories)."""
        return {
            "startProb": np.array(params["startprob"], dtype=np.float64),
            "transMat": np.array(params["transmat"], dtype=np.float64),
            "emissionProb": np.array(params["emissionprob"], dtype=np.float64),
        }

    def _draw_emissions(self, params: Params, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n_steps, 1) a symbol from each step's state's emission distribution (inverse CDF)."""
        cumulative = np.cumsum(np.asarray(params["emissionprob"], dtype=np.float64), axis=1)
        last = cumulative.shape[1] - 1
        symbols = np.minimum((rng.random(states.size)[:, None] >= cumulative[states]).sum(axis=1), last)
        return symbols.astype(np.float64)[:, None]

    def _emission_n_parameters(self, params: Params) -> int:
        c = int(np.shape(params["emissionprob"])[1])
        return self.k * (c - 1)

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances −log Σ_c sqrt(p_a(c) p_b(c)) between the states'
        emission distributions of two models (0 for identical rows, inf for disjoint support)."""
        coefficient = np.sqrt(params_a["emissionprob"]) @ np.sqrt(params_b["emissionprob"]).T
        with np.errstate(divide="ignore"):
            return -np.log(np.clip(coefficient, 0.0, 1.0))

    def _relabel_emissions(self, params: Params, order: np.ndarray) -> dict[str, np.ndarray]:
        return {"emissionprob": params["emissionprob"][order].copy()}

    def _emission_log_prior(self, params: Params) -> float:
        """smoothing · Σ log emissionprob: the Dirichlet(1 + smoothing) prior of the M-step (0 with smoothing 0)."""
        return float(self.smoothing * np.sum(log0(params["emissionprob"]))) if self.smoothing > 0 else 0.0

    def _emissions_to_free(self, params: Params) -> dict[str, np.ndarray]:
        """Log emission probabilities (k, n_categories)."""
        return {"log_emissionprob": log0(params["emissionprob"])}

    def _emissions_from_free(self, free: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Emission rows by softmax."""
        return {"emissionprob": softmax(free["log_emissionprob"], axis=1)}

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s startProb, transMat and emissionProb.

        Each must be non-negative and sum to 1 (per row) within 1e-6; they are renormalized.
        emissionProb is (k, n_categories); its width must equal ``n_categories`` when set.
        """
        if int(n_features) != 1:
            raise ModelError(self._one_column_message(int(n_features)))
        check_present(arrays, ("startProb", "transMat", "emissionProb"))
        chain = self._chain_from_public(arrays)
        k = self.k
        width = np.shape(arrays["emissionProb"])
        c = self.n_categories if self.n_categories is not None else (width[1] if len(width) == 2 else -1)
        if c < 1:
            raise ModelError(f"initialModel emissionProb must have shape (k, n_categories) = ({k}, C), got {width}")
        emission = check_parameter(
            arrays["emissionProb"],
            "emissionProb",
            shape=(k, c),
            what=f"k={k} and nCategories={c}",
            min_value=0.0,
            simplex=True,
        )
        return {**chain, "emissionprob": emission}

    # -- E-step -------------------------------------------------------------------

    @staticmethod
    def _one_column_message(d: int) -> str:
        return (
            f"a categorical HMM observes one integer symbol per row (1 feature), got {d} features; "
            "encode each observation as a single symbol 0..nCategories-1"
        )

    def _symbols(self, X: np.ndarray, n_categories: int | None) -> np.ndarray:
        """(n_rows,) intp symbols from X (n_rows, 1); checked to be integers in range. A missing
        (NaN) step is −1 when missing steps are modelled (a ModelError otherwise)."""
        if X.shape[1] != 1:
            raise ModelError(self._one_column_message(X.shape[1]))
        values = X[:, 0]
        if values.size == 0:
            return np.zeros(0, dtype=np.intp)
        gaps = np.isnan(values)
        if gaps.any():
            self._refuse_missing(int(gaps.sum()), values.size)
            symbols = np.full(values.size, -1, dtype=np.intp)
            if not gaps.all():
                symbols[~gaps] = self._symbols(X[~gaps], n_categories)
            return symbols
        if not np.all(values == np.floor(values)) or values.min() < 0:
            raise ModelError("categorical HMM observations must be non-negative integers (symbols 0..nCategories-1)")
        if n_categories is not None and values.max() >= n_categories:
            raise ModelError(
                f"symbol {int(values.max())} is out of range: the model has nCategories={n_categories} "
                f"(symbols 0..{n_categories - 1}); set nCategories to cover every symbol"
            )
        return values.astype(np.intp)

    def _observations(self, block: Block, params: Params) -> np.ndarray:
        """(n_rows,) intp symbols, checked against the model's number of categories."""
        return self._symbols(np.asarray(block.X, dtype=np.float64), params["emissionprob"].shape[1])

    def _log_frame(self, symbols: np.ndarray, params: Params) -> np.ndarray:
        """(k, n_rows) log P(symbol | state); −inf where the probability is 0, and 0 (probability 1
        under every state) at a missing step (symbol −1)."""
        gaps = symbols < 0
        frame = np.take(log0(params["emissionprob"]), np.where(gaps, 0, symbols), axis=1)
        if gaps.any():
            frame[:, gaps] = 0.0
        return frame

    def _emission_stats(self, symbols: np.ndarray, wgamma: np.ndarray, params: Params) -> dict[str, np.ndarray]:
        """counts (k, n_categories) of the symbols (n,) with weighted posteriors (k, n); a missing
        step (−1) counts for no symbol (its state still counts in the chain's statistics)."""
        c = params["emissionprob"].shape[1]
        seen = symbols >= 0
        if not seen.all():
            symbols, wgamma = symbols[seen], wgamma[:, seen]
        return {"counts": np.stack([np.bincount(symbols, weights=wgamma[j], minlength=c) for j in range(self.k)])}

    def _compiled_stats(
        self, observations: np.ndarray, lengths: np.ndarray, seq_weight: np.ndarray | None, params: Params
    ) -> HMMStats:
        if observations.size and observations.min() < 0:
            return None  # missing steps: the numpy path
        return hmm_categorical_stats(
            observations, lengths, seq_weight, params["startprob"], params["transmat"], params["emissionprob"]
        )

    # -- M-step -------------------------------------------------------------------

    def _emission_m_step(self, stats: Stats, params: Params, events: list[str]) -> dict[str, np.ndarray]:
        """hmmlearn's emission M-step: rows ∝ counts + smoothing.

        A state whose occupancy share fell below 1e-10 keeps its previous emission row.
        """
        counts = np.asarray(stats["counts"], dtype=np.float64)
        occupancy = counts.sum(axis=1)
        dead = dead_states(occupancy)
        smoothed = counts + self.smoothing
        row_sum = smoothed.sum(axis=1)
        emission = smoothed / np.where(row_sum > 0, row_sum, 1.0)[:, None]
        for j in dead:
            emission[j] = params["emissionprob"][j]
            events.append(dead_state_event(int(j), float(occupancy[j] / occupancy.sum())))
        return {"emissionprob": emission}

    # -- initialization -------------------------------------------------------------

    def _initialize_emissions(self, sample: Block, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Emission rows drawn from a flat Dirichlet; ``n_categories`` (when None) is one more
        than the sample's largest symbol."""
        self._require_sample(sample)
        symbols = self._symbols(np.asarray(sample.X, dtype=np.float64), self.n_categories)
        if self.n_categories is None and not (symbols >= 0).any():
            raise ModelError("the initialization sample holds only missing steps; give nCategories, or more data")
        c = self.n_categories if self.n_categories is not None else int(symbols.max()) + 1
        return {"emissionprob": rng.dirichlet(np.ones(c), size=self.k)}
