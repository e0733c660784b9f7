"""Mixtures of multivariate Student-t distributions: the ``student_t`` family.

A component is t_ν(μ, Σ): a Gaussian N(μ, Σ / τ) whose precision scale τ ~ Gamma(ν/2, ν/2) is
drawn per row. Heavy tails give a row far from every component a small scale instead of a large
pull on the means and covariances, so a few gross outliers do not drag the components (the
robust mixtures of Peel and McLachlan 2000). EM treats the component and τ as latent: given the
component j, E[τ | x] = u_ij = (ν_j + d) / (ν_j + δ_ij), δ_ij the Mahalanobis distance of x_i.

Parameters are a plain dict of float64 arrays::

    weights       (k,)      mixing weights
    means         (k, d)    locations μ_j
    covariances   full (k, d, d) | diag (k, d): scale matrices Σ_j (the covariance is
                  Σ_j ν_j / (ν_j − 2) for ν_j > 2)
    dof           (k,)      degrees of freedom ν_j

The sufficient statistics of a block (sample weights w multiply everything; the moments are
taken around the means the E-step ran under, like the Gaussian family's, so that data far from
the origin loses no digits)::

    nk      (k,)            Σ_i w_i r_ij
    nu      (k,)            Σ_i w_i r_ij u_ij
    sum     (k, d)          Σ_i w_i r_ij u_ij (x_i − μ_j)
    sq      (k, d, d)|(k, d)  Σ_i w_i r_ij u_ij (x_i − μ_j)(x_i − μ_j)ᵀ (diagonal for diag)
    tau     (k,)            Σ_i w_i r_ij (E[log τ | x_i, j] − u_ij), with E[log τ | x, j] =
                            ψ((ν_j + d)/2) − log((ν_j + δ_ij)/2) = log u_ij + ψ((ν_j + d)/2) − log((ν_j + d)/2)
    loglik, weight, count   ()

M-step (the ECM of McLachlan and Peel, "Finite Mixture Models", 2000, section 7.5): weights
nk / Σ nk; μ_j = μ_old + sum_j / nu_j; Σ_j = (sq_j − nu_j δ_j δ_jᵀ) / nk_j + reg_covar I with
δ_j = sum_j / nu_j; and, unless the degrees of freedom are fixed, ν_j the root of

    −ψ(ν/2) + log(ν/2) + 1 + tau_j / nk_j = 0

found by bracketing on [MIN_DOF, MAX_DOF] (at MAX_DOF the component is Gaussian for every
practical purpose). Each step increases the log-likelihood (an ECM), so it never decreases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import brentq
from scipy.special import digamma, gammaln

from em_spark.models.base import Block, FamilyBase, ModelError, MStepResult, Params, check_k
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.kernels import cholesky_or_none, log0, shifted_moments
from em_spark.models.labels import check_labels, clamp_to_labels, log_posterior
from em_spark.models.priors import check_concentration, dirichlet_log_prior, map_weights
from em_spark.models.reparam import covariance_from_free, covariance_to_free, softmax
from em_spark.models.validation import check_parameter, check_present, is_number
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = ["COVARIANCE_TYPES", "MAX_DOF", "MIN_DOF", "StudentTMixtureFamily"]

COVARIANCE_TYPES = ("full", "diag")
#: the range the degrees of freedom are estimated in (and may be given in)
MIN_DOF, MAX_DOF = 0.05, 1e4


def _dof_equation(tau_mean: float) -> Any:
    """f(ν) of the module docstring, for one component (``tau_mean`` = tau_j / nk_j)."""
    return lambda nu: -digamma(0.5 * nu) + math.log(0.5 * nu) + 1.0 + tau_mean


@dataclass(frozen=True)
class StudentTMixtureFamily(FamilyBase):
    """Mixture of ``k`` multivariate Student-t distributions, fitted by EM with latent scales.

    Parameters
    ----------
    k : int
    covariance_type : {"full", "diag"}
        One scale matrix per component, or one vector of scales per component.
    dof : float
        The degrees of freedom every component starts from (and keeps, with
        ``estimate_dof=False``), in [MIN_DOF, MAX_DOF]. Small values mean heavy tails.
    estimate_dof : bool
        Estimate each component's degrees of freedom in the M-step (one-dimensional root finding).
    reg_covar : float
        Added to every scale matrix's diagonal in the M-step, as the Gaussian family's.
    init_mode : {"k-means++", "random"}
        The Gaussian family's initialization of weights, means and scales; dof start at ``dof``.
    weights_prior : float
        Dirichlet concentration of the mixing weights (> 0): 1 (default) is flat, maximum
        likelihood; above 1 pulls the weights towards equal, below 1 lets components empty.
    """

    name: ClassVar[str] = "student_t"
    sequential: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False
    #: labelled rows (``Block.labels`` >= 0) are clamped to their component, as the Gaussian mixture's
    supports_labels: ClassVar[bool] = True
    summary_params: ClassVar[tuple[str, ...]] = ("weights", "means", "dof")
    added_fields: ClassVar[tuple[str, ...]] = ("weights_prior",)  # left out of config() at its default

    k: int
    covariance_type: str = "full"
    dof: float = 10.0
    estimate_dof: bool = True
    reg_covar: float = 1e-6
    init_mode: str = "k-means++"
    weights_prior: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "components"))
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ModelError(
                f"covarianceType must be one of {list(COVARIANCE_TYPES)} for a Student-t mixture, "
                f"got {self.covariance_type!r}"
            )
        if not is_number(self.dof) or not math.isfinite(self.dof) or not MIN_DOF <= self.dof <= MAX_DOF:
            raise ModelError(
                f"dof (degrees of freedom) must be a number in [{MIN_DOF}, {MAX_DOF:g}], got {self.dof!r}; "
                "small values give heavy tails (3-10 is usual), large ones a Gaussian"
            )
        object.__setattr__(self, "dof", float(self.dof))
        if not isinstance(self.estimate_dof, (bool, np.bool_)):
            raise ModelError(f"estimateDof must be true or false, got {self.estimate_dof!r}")
        object.__setattr__(self, "estimate_dof", bool(self.estimate_dof))
        # the Gaussian family validates reg_covar and init_mode (same messages)
        object.__setattr__(self, "reg_covar", self._gaussian.reg_covar)
        object.__setattr__(self, "weights_prior", check_concentration(self.weights_prior, "weightsPrior"))

    @property
    def _gaussian(self) -> GaussianFamily:
        """The Gaussian mixture of the same shape: initialization, distances, draws' scale factors."""
        return GaussianFamily(self.k, self.covariance_type, self.reg_covar, self.init_mode)

    # -- protocol: description ------------------------------------------------

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``weights`` (k,), ``means`` (k, d), ``covariances`` (the scales) and ``dof`` (k,)."""
        return {n: np.array(params[n], dtype=np.float64) for n in ("weights", "means", "covariances", "dof")}

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between the components' Gaussian cores N(μ, Σ)
        (location and scale; the tails are left out), for matching components across fits."""
        return self._gaussian.component_distances(params_a, params_b)

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        order = self._permutation(order)
        return {name: np.array(value)[order] for name, value in params.items()}

    def progress(self, params: Params) -> dict[str, float]:
        return {"minWeight": float(np.min(params["weights"])), "minDof": float(np.min(params["dof"]))}

    def log_prior(self, params: Params) -> float:
        """The weights' Dirichlet log prior (0 when flat): the ECM then climbs loglik + this."""
        return dirichlet_log_prior(params["weights"], self.weights_prior)

    def n_parameters(self, params: Params) -> int:
        """(k − 1) weights + k d means + the scales + k degrees of freedom when estimated."""
        d = int(np.shape(params["means"])[1])
        scales = self.k * d * (d + 1) // 2 if self.covariance_type == "full" else self.k * d
        return self.k - 1 + self.k * d + scales + (self.k if self.estimate_dof else 0)

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """Log-weights, means, the scales' log-Cholesky (or log-variance) coordinates, log dof."""
        free = {
            "log_weights": log0(params["weights"]),
            "means": np.asarray(params["means"], dtype=np.float64),
            "covariances": covariance_to_free(params["covariances"], self.covariance_type),
        }
        if self.estimate_dof:
            free["log_dof"] = np.log(params["dof"])
        return free

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        covariances = covariance_from_free(free["covariances"], self.covariance_type)
        dof = (
            np.exp(np.clip(free["log_dof"], math.log(MIN_DOF), math.log(MAX_DOF)))
            if self.estimate_dof
            else params["dof"]
        )
        if not np.all(np.isfinite(covariances)) or self._cholesky(covariances) is None:
            raise ModelError("extrapolated Student-t scales are not positive definite")
        return {
            "weights": softmax(np.asarray(free["log_weights"])),
            "means": np.array(free["means"], dtype=np.float64),
            "covariances": covariances,
            "dof": np.array(dof, dtype=np.float64),
        }

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s weights, means, covariances (scales) and,
        optionally, dof (default: the family's ``dof`` for every component)."""
        k, d = self.k, int(n_features)
        check_present(arrays, ("weights", "means", "covariances"), optional=("dof",))
        what = f"k={k}, {d} features and covarianceType={self.covariance_type!r}"
        shape = (k, d, d) if self.covariance_type == "full" else (k, d)
        dof = arrays.get("dof")
        dof = np.full(k, self.dof) if dof is None else check_parameter(dof, "dof", shape=(k,), what=what)
        if np.any(dof < MIN_DOF) or np.any(dof > MAX_DOF):
            raise ModelError(f"initialModel dof must lie in [{MIN_DOF}, {MAX_DOF:g}], got {np.asarray(dof).tolist()}")
        return {
            "weights": check_parameter(
                arrays["weights"], "weights", shape=(k,), what=what, min_value=0.0, simplex=True
            ),
            "means": check_parameter(arrays["means"], "means", shape=(k, d), what=what),
            "covariances": check_parameter(
                arrays["covariances"],
                "covariances",
                shape=shape,
                what=what,
                positive_definite="matrices" if self.covariance_type == "full" else "variances",
            ),
            "dof": np.array(dof, dtype=np.float64),
        }

    # -- the density ---------------------------------------------------------------

    def _cholesky(self, covariances: np.ndarray) -> np.ndarray | None:
        """(k, d, d) lower factors of the scales (diag: their square roots on a diagonal), or None."""
        if self.covariance_type == "diag":
            if not np.all(covariances > 0):
                return None
            return np.sqrt(covariances)[:, :, None] * np.eye(covariances.shape[1])
        return cholesky_or_none(covariances)

    def _distances(self, X: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """(Mahalanobis distances δ (n, k), log|Σ_j|^(1/2) (k,)) of rows X under the scales."""
        means, covariances = params["means"], np.asarray(params["covariances"], dtype=np.float64)
        n, k = X.shape[0], self.k
        maha = np.empty((n, k))
        if self.covariance_type == "diag":
            for j in range(k):
                maha[:, j] = (np.square(X - means[j]) / covariances[j]).sum(axis=1)
            return maha, 0.5 * np.log(covariances).sum(axis=1)
        factors = self._cholesky(covariances)
        if factors is None:
            raise ModelError("a Student-t component's scale matrix is not positive definite; increase regCovar")
        for j in range(k):
            z = np.linalg.solve(factors[j], (X - means[j]).T)  # (d, n): L z = x − μ
            maha[:, j] = np.einsum("ij,ij->j", z, z)
        return maha, np.log(np.diagonal(factors, axis1=1, axis2=2)).sum(axis=1)

    def _log_components(self, X: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """(log t_ν(x_i | μ_j, Σ_j) (n, k), δ (n, k))."""
        d = X.shape[1]
        nu = np.asarray(params["dof"], dtype=np.float64)
        maha, half_log_det = self._distances(X, params)
        log_norm = gammaln(0.5 * (nu + d)) - gammaln(0.5 * nu) - 0.5 * d * np.log(nu * np.pi) - half_log_det
        return log_norm - 0.5 * (nu + d) * np.log1p(maha / nu), maha

    def _rows(self, block: Block, params: Params) -> np.ndarray:
        d = int(np.shape(params["means"])[1])
        if block.n_features != d:
            raise ModelError(f"data has {block.n_features} features but the model has {d}")
        return np.asarray(block.X, dtype=np.float64)

    # -- protocol: E-step and scoring -------------------------------------------------

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of one block (see the module docstring for the fields)."""
        X = self._rows(block, params)
        n, d, k = X.shape[0], X.shape[1], self.k
        log_t, maha = self._log_components(X, params)
        log_joint = log_t + log0(params["weights"])
        log_resp, loglik = log_posterior(log_joint)
        log_resp, loglik = clamp_to_labels(log_joint, log_resp, loglik, check_labels(block.labels, k))
        w = None if block.weight is None else np.asarray(block.weight, dtype=np.float64)
        wr = np.exp(log_resp) if w is None else np.exp(log_resp) * w[:, None]
        nu = np.asarray(params["dof"], dtype=np.float64)
        u = (nu + d) / (nu + maha)  # (n, k) E[τ | x, j]
        wru = wr * u
        nk_shift = wr.sum(axis=0) * (digamma(0.5 * (nu + d)) - np.log(0.5 * (nu + d)))
        sums = np.empty((k, d))
        sq = np.empty((k, d, d) if self.covariance_type == "full" else (k, d))
        for j in range(k):
            diff = X - params["means"][j]
            sums[j] = wru[:, j] @ diff
            sq[j] = (diff * wru[:, j, None]).T @ diff if self.covariance_type == "full" else wru[:, j] @ np.square(diff)
        return Stats(
            {
                "nk": wr.sum(axis=0),
                "nu": wru.sum(axis=0),
                "sum": sums,
                "sq": sq,
                # E[log τ] − E[τ] under the E-step's dof: what the dof equation needs, and nothing
                # of the parameters is left for the M-step to know
                "tau": (wr * (np.log(u) - u)).sum(axis=0) + nk_shift,
                LOGLIK: np.float64(loglik.sum() if w is None else loglik @ w),
                WEIGHT: np.float64(n if w is None else w.sum()),
                COUNT: np.float64(n),
            }
        )

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-row ``log_resp`` (n, k) and ``loglik`` (n,): log Σ_j w_j t_ν(x | μ_j, Σ_j)."""
        X = self._rows(block, params)
        log_t, _ = self._log_components(X, params)
        log_resp, loglik = log_posterior(log_t + log0(params["weights"]))
        return {"log_resp": log_resp, "loglik": loglik}

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """``sum`` and ``sq`` taken around ``new``'s means (their weights are the u-weighted ``nu``)."""
        sums, sq = shifted_moments(stats["nu"], stats["sum"], stats["sq"], old["means"], new["means"])
        return Stats({**stats, "sum": sums, "sq": sq})

    # -- protocol: M-step ----------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """The ECM step of the module docstring. A component whose weight share fell below
        1e-10 keeps its location, scale and dof (not estimable) and an event says so."""
        total = self._require_weight(stats, "a Student-t mixture")
        nk, nu_sum = np.asarray(stats["nk"], dtype=np.float64), np.asarray(stats["nu"], dtype=np.float64)
        dead = self._lost_mass(nk, total)
        alive = np.setdiff1d(np.arange(self.k), dead)
        d = int(np.shape(params["means"])[1])
        means = np.array(params["means"], dtype=np.float64)
        covariances = np.array(params["covariances"], dtype=np.float64)
        dof = np.array(params["dof"], dtype=np.float64)
        delta = np.asarray(stats["sum"])[alive] / nu_sum[alive, None]
        means[alive] += delta
        sq = np.asarray(stats["sq"])[alive]
        if self.covariance_type == "full":
            scatter = sq - nu_sum[alive, None, None] * delta[:, :, None] * delta[:, None, :]
            scales = scatter / nk[alive, None, None]
            scales = 0.5 * (scales + np.swapaxes(scales, 1, 2))
            scales[:, np.arange(d), np.arange(d)] += self.reg_covar
        else:
            scales = (sq - nu_sum[alive, None] * np.square(delta)) / nk[alive, None] + self.reg_covar
        covariances[alive] = scales
        if self._cholesky(covariances) is None:
            raise ModelError(
                "a Student-t component's scale matrix collapsed (not positive definite): "
                "increase regCovar, or decrease k"
            )
        if self.estimate_dof:
            tau = np.asarray(stats["tau"], dtype=np.float64)
            for j in alive:
                dof[j] = self._solve_dof(float(tau[j] / nk[j]))
        weights = map_weights(nk, self.weights_prior)
        events = [
            f"component {int(j)} lost its mass (weight {float(f'{nk[j] / total:.3g}')}); it keeps its "
            "location, scale and degrees of freedom"
            for j in dead
        ]
        return MStepResult({"weights": weights, "means": means, "covariances": covariances, "dof": dof}, events)

    @staticmethod
    def _solve_dof(tau_mean: float) -> float:
        """The root of the dof equation in [MIN_DOF, MAX_DOF]; MAX_DOF when the data are Gaussian enough
        that none is below it (f > 0 throughout), MIN_DOF when f < 0 throughout."""
        f = _dof_equation(tau_mean)
        low, high = f(MIN_DOF), f(MAX_DOF)
        if high > 0:
            return MAX_DOF
        if low < 0:
            return MIN_DOF
        return float(brentq(f, MIN_DOF, MAX_DOF, xtol=1e-12, rtol=1e-12))

    # -- protocol: initialization and draws -------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """The Gaussian family's initialization (weights, means, covariances as the scales); every
        component starts at ``dof``."""
        start = self._gaussian.initialize(sample, rng)
        return {
            "weights": start["weights"],
            "means": start["means"],
            "covariances": start["covariances"],
            "dof": np.full(self.k, self.dof),
        }

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """μ + (L z) / √τ with z standard normal and τ ~ Gamma(ν/2, scale 2/ν) per row."""
        self._no_trials(trials, "a Student-t mixture")
        gaussian = self._gaussian.rows_of_components(
            {**params, "means": np.zeros_like(params["means"])}, components, rng
        )
        nu = np.asarray(params["dof"], dtype=np.float64)[components]
        tau = rng.gamma(0.5 * nu, 2.0 / nu)
        return np.asarray(params["means"])[components] + gaussian / np.sqrt(tau)[:, None]
