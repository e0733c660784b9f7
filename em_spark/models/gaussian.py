"""Gaussian mixture models: the ``gaussian`` family.

Parameters are a plain dict of float64 arrays with scikit-learn's shapes::

    weights              (k,)
    means                (k, d)
    covariances          full (k, d, d) | tied (d, d) | diag (k, d) | spherical (k,)
    precisions_cholesky  same shapes: P with P Pᵀ = Σ⁻¹ (upper triangular for full and
                         tied), so log N(x | μ, Σ) = -½(d log 2π + ‖(x − μ) P‖²) + log det P.

The sufficient statistics of a block are accumulated around a per-component shift equal
to the means the E-step runs under (μ_k), so the second moments never cancel, however far
the data sits from the origin::

    nk   (k,)      Σ w r
    sum  (k, d)    Σ w r (x − μ_k)
    sq   (k, d, d) Σ w r (x − μ_k)(x − μ_k)ᵀ   full and tied
         (k, d)    Σ w r (x − μ_k)²           diag and spherical
    loglik, weight, count   ()

The M-step then takes mean = μ_k + δ_k and cov = sq / nk − δ δᵀ with δ = sum / nk, which
is scikit-learn's estimate written in shifted coordinates.

With ``handle_missing="model"`` NaN entries are values missing at random: rows with a NaN
go through the exact conditional-Gaussian E-step of :mod:`gaussian_missing`, which
returns the same statistics (x replaced by its conditional expectation, sq corrected by
the conditional covariance), so the M-step is unchanged; complete rows keep the fast
kernel below. ``Block.labels`` >= 0 clamp a row's responsibilities to its known
component (semi-supervised EM, :mod:`labels`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from em_spark.models.base import Block, FamilyBase, ModelError, MStepResult, Params, check_k
from em_spark.models.compiled import gaussian_stats, use_compiled
from em_spark.models.gaussian_missing import DiagonalMissing, FullMissing, nan_mask
from em_spark.models.kernels import (
    COVARIANCE_TYPES,
    KERNELS,
    LOG_2PI,
    Kernel,
    add_to_variances,
    chunks,
    ill_defined_covariance,
    log0,
    normalize_log_prob,
    not_positive_definite_components,
    shifted_moments,
)
from em_spark.models.labels import check_labels, clamp_to_labels, log_posterior
from em_spark.models.priors import GaussianPrior, check_concentration, dirichlet_log_prior, map_weights
from em_spark.models.reparam import covariance_from_free, covariance_to_free, softmax
from em_spark.models.seeding import kmeans_plusplus, lloyd
from em_spark.models.validation import check_handle_missing, check_parameter, check_present
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = ["COVARIANCE_TYPES", "INIT_MODES", "GaussianFamily"]

INIT_MODES = ("k-means++", "random")

# scikit-learn adds 10 machine epsilons to every nk so an empty component divides by
# something non-zero; we do the same so both fits agree to rounding.
_NK_EPS = 10.0 * np.finfo(np.float64).eps
_LLOYD_MAX_ITER = 20


# ---------------------------------------------------------------------------
# Sample statistics


def _block_stats(
    nk: np.ndarray, sums: np.ndarray, sq: np.ndarray, loglik: float, n: int, w: np.ndarray | None
) -> dict[str, np.ndarray]:
    """One block's statistics: ``nk`` (k,), ``sum`` (k, d), ``sq`` (the kernel's shape) around the
    shift, and the totals every family carries."""
    return {
        "nk": nk,
        "sum": sums,
        "sq": sq,
        LOGLIK: np.float64(loglik),
        WEIGHT: np.float64(n if w is None else w.sum()),
        COUNT: np.float64(n),
    }


def _weighted_covariance(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(d, d) weighted (biased, like the M-step) covariance of the rows of X."""
    if not w.sum() > 0:
        w = np.ones(X.shape[0])  # no row carries weight: fall back to the plain covariance
    total = w.sum()
    centered = X - (w @ X) / total
    scaled = centered * np.sqrt(w / total)[:, None]
    return scaled.T @ scaled  # Aᵀ A: numpy uses syrk, the result is exactly symmetric


# ---------------------------------------------------------------------------
# The family


@dataclass(frozen=True)
class GaussianFamily(FamilyBase):
    """Mixture of ``k`` multivariate Gaussians, fitted by EM with scikit-learn's semantics.

    Parameters
    ----------
    k : int
        Number of mixture components.
    covariance_type : {"full", "diag", "spherical", "tied"}
    reg_covar : float
        Non-negative value added to every covariance diagonal in the M-step.
    init_mode : {"k-means++", "random"}
        How :meth:`initialize` seeds the parameters from a sample.
    handle_missing : {"error", "model"}
        "error": a NaN in the data is a :class:`ModelError`. "model": NaN entries are
        values missing at random, fitted by exact EM (see :mod:`gaussian_missing`) and
        filled in by :meth:`impute`.
    weights_prior : float
        Dirichlet concentration of the mixing weights (MAP: weights ∝ max(nk + α − 1, 0)); 1 is flat.
    means_prior, means_weight, covars_prior, covars_weight : float
        hmmlearn's conjugate prior on the means and covariances (:mod:`em_spark.models.priors`);
        the defaults (0, 0, 0, 1) are none. With any prior EM climbs loglik + :meth:`log_prior`.
    """

    name: ClassVar[str] = "gaussian"
    summary_params: ClassVar[tuple[str, ...]] = ("weights", "means")
    sequential: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = True
    supports_impute: ClassVar[bool] = True

    k: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    init_mode: str = "k-means++"
    handle_missing: str = "error"
    weights_prior: float = 1.0
    means_prior: float = 0.0
    means_weight: float = 0.0
    covars_prior: float = 0.0
    covars_weight: float = 1.0
    #: the priors came later: left out of config() at their defaults (checkpoints written before resume)
    added_fields: ClassVar[tuple[str, ...]] = (
        "weights_prior",
        "means_prior",
        "means_weight",
        "covars_prior",
        "covars_weight",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "components"))
        if self.covariance_type not in KERNELS:
            raise ModelError(f"covarianceType must be one of {list(COVARIANCE_TYPES)}, got {self.covariance_type!r}")
        if (
            isinstance(self.reg_covar, bool)
            or not isinstance(self.reg_covar, (int, float, np.floating, np.integer))
            or not math.isfinite(self.reg_covar)
            or self.reg_covar < 0
        ):
            raise ModelError(
                f"regCovar must be a finite non-negative number (added to covariance diagonals), "
                f"got {self.reg_covar!r}; use the default 1e-6 if unsure"
            )
        object.__setattr__(self, "reg_covar", float(self.reg_covar))
        if self.init_mode not in INIT_MODES:
            raise ModelError(f"initMode must be one of {list(INIT_MODES)}, got {self.init_mode!r}")
        check_handle_missing(self.handle_missing)
        object.__setattr__(self, "weights_prior", check_concentration(self.weights_prior, "weightsPrior"))
        prior = self._prior  # validates the Gaussian prior's four numbers
        for name in ("means_prior", "means_weight", "covars_prior", "covars_weight"):
            object.__setattr__(self, name, getattr(prior, name))

    @property
    def _prior(self) -> GaussianPrior:
        """hmmlearn's prior on the means and covariances (inactive by default)."""
        return GaussianPrior(self.means_prior, self.means_weight, self.covars_prior, self.covars_weight)

    def log_prior(self, params: Params) -> float:
        """The Dirichlet log prior of the weights plus the Gaussian prior's (0 without priors)."""
        return dirichlet_log_prior(params["weights"], self.weights_prior) + self._prior.log_prior(
            params["means"], params["covariances"], self.covariance_type
        )

    # -- protocol: description ------------------------------------------------

    @property
    def models_missing(self) -> bool:
        """NaN entries are modelled as missing values (the loader keeps such rows)."""
        return self.handle_missing == "model"

    @property
    def _kernel(self) -> Kernel:
        return KERNELS[self.covariance_type]

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``weights`` (k,), ``means`` (k, d) and ``covariances`` (shape by type)."""
        return {name: np.array(params[name], dtype=np.float64) for name in ("weights", "means", "covariances")}

    def full_covariances(self, params: Params) -> np.ndarray:
        """(k, d, d) covariance matrices whatever the covariance type."""
        cov, k = params["covariances"], self.k
        d = params["means"].shape[1]
        if self.covariance_type == "full":
            return cov.copy()
        if self.covariance_type == "tied":
            return np.broadcast_to(cov, (k, d, d)).copy()
        if self.covariance_type == "diag":
            return np.einsum("ki,ij->kij", cov, np.eye(d))
        return cov[:, None, None] * np.eye(d)

    def rows_of_components(self, params: Params, components: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, d) a Gaussian row drawn from each row's component (n,): mean + L z, L the
        covariance's Cholesky factor, z standard normal (also a Gaussian HMM's emissions)."""
        means = np.asarray(params["means"], dtype=np.float64)
        factors = np.linalg.cholesky(self.full_covariances(params))
        z = rng.standard_normal((components.size, means.shape[1]))
        X = np.empty_like(z)
        for j in range(means.shape[0]):
            mine = components == j
            X[mine] = means[j] + z[mine] @ factors[j].T
        return X

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """Complete rows (also with ``handle_missing="model"``: the model is of complete rows)."""
        self._no_trials(trials, "a Gaussian mixture")
        return self.rows_of_components(params, components, rng)

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between the components of two fitted models.

        It weighs mean shifts in the components' own metric and covariance changes
        together, so a component that kept its place but changed shape still counts as
        moved. Entry [i, j] compares component i of ``a`` with component j of ``b``.
        """
        mu_a, mu_b = params_a["means"], params_b["means"]
        cov_a, cov_b = self.full_covariances(params_a), self.full_covariances(params_b)
        logdet_a = np.linalg.slogdet(cov_a)[1]
        logdet_b = np.linalg.slogdet(cov_b)[1]
        out = np.empty((len(mu_a), len(mu_b)))
        for i in range(len(mu_a)):
            avg = 0.5 * (cov_a[i] + cov_b)  # (k, d, d)
            diff = mu_a[i] - mu_b  # (k, d)
            solved = np.linalg.solve(avg, diff[..., None])[..., 0]
            maha = np.einsum("kd,kd->k", diff, solved)
            out[i] = 0.125 * maha + 0.5 * (np.linalg.slogdet(avg)[1] - 0.5 * (logdet_a[i] + logdet_b))
        return out

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        """Parameters with components reordered: new component j is old component ``order[j]``."""
        order = self._permutation(order)
        out = {}
        for name, value in params.items():
            per_component = name in ("weights", "means") or (
                name in ("covariances", "precisions_cholesky") and self.covariance_type != "tied"
            )
            out[name] = value[order].copy() if per_component else value.copy()
        return out

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """``sum`` and ``sq`` moved from ``old``'s means to ``new``'s (the shift; see the module docstring)."""
        sums, sq = shifted_moments(stats["nk"], stats["sum"], stats["sq"], old["means"], new["means"])
        return Stats({**stats, "sum": sums, "sq": sq})

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest component weight: a component heading for collapse shows here first."""
        return {"minWeight": float(np.min(params["weights"]))}

    def n_parameters(self, params: Params) -> int:
        """Free parameters (as scikit-learn's ``_n_parameters``), for BIC and AIC."""
        d = int(np.shape(params["means"])[1])
        return self._kernel.n_cov_parameters(self.k, d) + self.k * d + self.k - 1

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """Log-weights (k,), means (k, d), covariances as log-variances or log-diagonal Cholesky factors."""
        return {
            "log_weights": log0(params["weights"]),
            "means": np.asarray(params["means"], dtype=np.float64),
            "covariances": covariance_to_free(params["covariances"], self.covariance_type),
        }

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """Weights by softmax, covariances rebuilt, precisions recomputed (ModelError if not usable)."""
        covariances = covariance_from_free(free["covariances"], self.covariance_type)
        return self._finish(softmax(free["log_weights"]), np.array(free["means"]), covariances)

    # -- protocol: parameters from the user -------------------------------------

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s weights, means and covariances.

        Validates shapes against ``k``, ``n_features`` and the covariance type, finiteness,
        weights (non-negative, summing to 1 within 1e-6; renormalized) and covariances
        (symmetric positive definite), then computes ``precisions_cholesky``.
        """
        k, d, kind = self.k, int(n_features), self.covariance_type
        check_present(arrays, ("weights", "means", "covariances"))
        what = f"k={k}, {d} features and covarianceType={kind!r}"
        weights = check_parameter(arrays["weights"], "weights", shape=(k,), what=what, min_value=0.0, simplex=True)
        means = check_parameter(arrays["means"], "means", shape=(k, d), what=what)
        covariances = check_parameter(
            arrays["covariances"],
            "covariances",
            shape=self._kernel.cov_shape(k, d),
            what=what,
            positive_definite="matrices" if kind in ("full", "tied") else "variances",
        )
        return {
            "weights": weights,
            "means": means,
            "covariances": covariances,
            "precisions_cholesky": self._kernel.precisions_cholesky(covariances),
        }

    # -- protocol: E-step and scoring --------------------------------------------

    def _log_const(self, params: Params, d: int) -> np.ndarray:
        """(k,) log π_k + log det P_k − ½ d log 2π: the row-independent part of log π_k N(x)."""
        with np.errstate(divide="ignore"):  # a weight of exactly 0 gives -inf: a dead component
            log_weights = np.log(params["weights"])
        log_det = self._kernel.log_det(params["precisions_cholesky"], d)
        return log_weights + log_det - 0.5 * d * LOG_2PI

    def _check_block(self, block: Block, params: Params) -> int:
        d = int(np.shape(params["means"])[1])
        if block.n_features != d:
            raise ModelError(f"data has {block.n_features} features but the model has {d}")
        return d

    def _accumulate(
        self,
        X: np.ndarray,
        w: np.ndarray | None,
        shift: np.ndarray,
        prec_chol: np.ndarray | None,
        log_const: np.ndarray | None,
        labels: np.ndarray | None = None,
        clamp: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Statistics of rows ``X`` (n, d) with weights ``w`` (n,) or None, around ``shift`` (k, d).

        With ``labels`` (n,) the responsibilities are hard one-hot assignments (used by
        the k-means initialization); otherwise they are the posterior under the model.
        With ``clamp`` (n,) (semi-supervised EM), rows with ``clamp`` >= 0 get one-hot
        responsibilities on that component and add log π_c + log N(x | c) to ``loglik``.
        """
        kernel, k = self._kernel, self.k
        n, d = X.shape
        if labels is None and use_compiled():
            assert prec_chol is not None and log_const is not None  # scoring needs the model: it is given
            nk, sums, sq, loglik = gaussian_stats(self.covariance_type, X, w, clamp, shift, prec_chol, log_const)
            return _block_stats(nk, sums, sq, loglik, n, w)
        nk = np.zeros(k)
        sums = np.zeros((k, d))
        sq = np.zeros(kernel.sq_shape(k, d))
        loglik = 0.0
        prepared = None if prec_chol is None else kernel.prepare(prec_chol)
        for start, stop, diffs, work in chunks(self._kernel, X, shift):
            if labels is None:
                assert prepared is not None and log_const is not None  # scoring needs the model: it is given
                half_maha = kernel.half_mahalanobis(diffs, work, prepared)
                log_prob = np.subtract(log_const[:, None], half_maha, out=half_maha)
                if clamp is not None:
                    known = np.flatnonzero(clamp[start:stop] >= 0)
                    which = clamp[start:stop][known]
                    picked = log_prob[which, known]  # the joint log-probabilities, before normalizing
                log_norm = normalize_log_prob(log_prob)
                resp = log_prob  # (k, rows), normalized in place
                if clamp is not None and known.size:
                    resp[:, known] = 0.0
                    resp[which, known] = 1.0
                    log_norm[known] = picked
            else:
                resp = (labels[None, start:stop] == np.arange(k)[:, None]).astype(np.float64)
                log_norm = None
            if w is None:
                wr = resp
                if log_norm is not None:
                    loglik += log_norm.sum()
            else:
                wr = resp * w[start:stop]
                if log_norm is not None:
                    loglik += log_norm @ w[start:stop]
            nk += wr.sum(axis=1)
            kernel.moments(diffs, work, wr, sums, sq)
        return _block_stats(nk, sums, sq, loglik, n, w)

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of one block (see the module docstring for the fields).

        Parameters
        ----------
        block : Block with X of shape (n, d) (NaN = missing with ``handle_missing="model"``),
            optional weights (n,) and labels (n,) (-1 unknown, else the row's component)
        params : the parameters the E-step runs under; their means are the shift

        Returns
        -------
        Stats with nk (k,), sum (k, d), sq (k, d, d) or (k, d), loglik, weight, count ()
        """
        d = self._check_block(block, params)
        # float32 rows are not widened as a whole: both kernels widen them chunk by chunk into
        # float64 scratch, so the arithmetic and the Stats are float64 (see Block).
        X = block.X if block.X.dtype == np.float32 else np.asarray(block.X, dtype=np.float64)
        w = None if block.weight is None else np.asarray(block.weight, dtype=np.float64)
        labels = check_labels(block.labels, self.k)
        missing = self._missing_entries(X)
        kernel_args = (params["means"], params["precisions_cholesky"], self._log_const(params, d))
        if missing is None:
            return Stats(self._accumulate(X, w, *kernel_args, clamp=labels))
        gappy = missing.any(axis=1)
        complete = ~gappy

        def rows_of(values: np.ndarray | None, which: np.ndarray | np.bool_) -> np.ndarray | None:
            return None if values is None else values[which]

        stats = self._accumulate(X[complete], rows_of(w, complete), *kernel_args, clamp=rows_of(labels, complete))
        loglik = self._missing_model(params).accumulate(
            X[gappy].astype(np.float64),
            missing[gappy],
            rows_of(w, gappy),
            rows_of(labels, gappy),
            stats["sum"],
            stats["sq"],
            stats["nk"],
        )
        stats[LOGLIK] = np.float64(stats[LOGLIK] + loglik)
        stats[WEIGHT] = np.float64(X.shape[0] if w is None else w.sum())
        stats[COUNT] = np.float64(X.shape[0])
        return Stats(stats)

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-row ``log_resp`` (n, k) and ``loglik`` (n,) = log p(x) under the mixture (unweighted).

        For a row with missing values ``loglik`` is the observed-data log-likelihood
        log p(x_o); for a labelled row it is log π_c + log p(x | c), as in the E-step.
        """
        d = self._check_block(block, params)
        X = np.asarray(block.X, dtype=np.float64)
        labels = check_labels(block.labels, self.k)
        missing = self._missing_entries(X)
        if missing is not None or labels is not None:
            log_joint = self._log_joint(X, missing, params)
            log_resp, loglik = log_posterior(log_joint)
            log_resp, loglik = clamp_to_labels(log_joint, log_resp, loglik, labels)
            return {"log_resp": log_resp, "loglik": loglik}
        kernel = self._kernel
        log_const = self._log_const(params, d)
        prepared = kernel.prepare(params["precisions_cholesky"])
        log_resp = np.empty((X.shape[0], self.k))
        loglik = np.empty(X.shape[0])
        for start, stop, diffs, work in chunks(self._kernel, X, params["means"]):
            log_prob = log_const[:, None] - kernel.half_mahalanobis(diffs, work, prepared)
            peak = log_prob.max(axis=0)
            log_norm = peak + np.log(np.exp(log_prob - peak).sum(axis=0))
            log_resp[start:stop] = (log_prob - log_norm).T
            loglik[start:stop] = log_norm
        return {"log_resp": log_resp, "loglik": loglik}

    def impute(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """The missing (NaN) entries filled in by their conditional expectation under the mixture.

        Works whatever ``handle_missing`` is (a model fitted on complete data can fill gaps
        in new data). Labelled rows use their component only.

        Returns
        -------
        dict with ``imputed`` (n, d): observed entries unchanged, a missing entry
        E[x_m | x_o] = Σ_j r_j x̂_jm; and ``std`` (n, d): 0 on observed entries, the
        conditional standard deviation (mixture variance, within plus between components)
        on missing ones.
        """
        self._check_block(block, params)
        X = np.asarray(block.X, dtype=np.float64)
        imputed, std = X.copy(), np.zeros(X.shape)
        missing = nan_mask(X)
        if missing is not None:
            gappy = np.flatnonzero(missing.any(axis=1))
            labels = check_labels(block.labels, self.k)
            imputed[gappy], std[gappy] = self._missing_model(params).impute(
                X[gappy], missing[gappy], None if labels is None else labels[gappy]
            )
        return {"imputed": imputed, "std": std}

    # -- missing values ----------------------------------------------------------------

    def _missing_entries(self, X: np.ndarray) -> np.ndarray | None:
        """(n, d) mask of the NaN entries of X, None if there is none; a ModelError unless modelled."""
        missing = nan_mask(X)
        if missing is not None and not self.models_missing:
            n_rows = int(missing.any(axis=1).sum())
            raise ModelError(
                f"the data holds missing values (NaN) in {n_rows} of its {X.shape[0]} rows; clean the "
                'data (drop or impute those rows) or pass handleMissing="model" to fit the mixture to '
                "the observed values (missing at random)"
            )
        return missing

    def _missing_model(self, params: Params) -> DiagonalMissing | FullMissing:
        """The missing-data E-step for these parameters (tied and spherical broadcast to k and d)."""
        with np.errstate(divide="ignore"):  # a weight of exactly 0 gives -inf: a dead component
            log_weights = np.log(params["weights"])
        means, cov = params["means"], params["covariances"]
        if self.covariance_type == "diag":
            return DiagonalMissing(log_weights, means, cov)
        if self.covariance_type == "spherical":
            return DiagonalMissing(log_weights, means, np.broadcast_to(cov[:, None], means.shape))
        return FullMissing(log_weights, means, self.full_covariances(params))

    def _log_joint(self, X: np.ndarray, missing: np.ndarray | None, params: Params) -> np.ndarray:
        """(n, k) log π_j + log N(x | j) (marginal on the observed entries of rows with NaN)."""
        d = X.shape[1]
        kernel = self._kernel
        log_const = self._log_const(params, d)
        prepared = kernel.prepare(params["precisions_cholesky"])
        out = np.empty((X.shape[0], self.k))
        if missing is None:
            complete, gappy = np.arange(X.shape[0]), None
        else:
            gappy = missing.any(axis=1)
            complete = np.flatnonzero(~gappy)
        for start, stop, diffs, work in chunks(self._kernel, X if gappy is None else X[complete], params["means"]):
            out[complete[start:stop]] = (log_const[:, None] - kernel.half_mahalanobis(diffs, work, prepared)).T
        if gappy is not None and missing is not None:  # (one is None when the other is)
            out[gappy] = self._missing_model(params).log_joint(X[gappy], missing[gappy])
        return out

    def _filled(self, sample: Block) -> Block:
        """``sample`` with NaN entries replaced by weighted column means (see _fill_column_means)."""
        X = np.asarray(sample.X, dtype=np.float64)
        missing = self._missing_entries(X)
        if missing is None:
            return sample
        return Block(_fill_column_means(X, missing, sample.weights_or_ones()), sample.weight, labels=sample.labels)

    # -- protocol: M-step ----------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """New parameters from summed statistics (scikit-learn's M-step, in shifted coordinates).

        ``params`` are those the statistics were computed under (their means are the shift).
        A component whose weight share fell below 1e-10 is re-seeded at the ``sample`` point
        the current model explains worst, with the sample's covariance; an event says so.
        """
        total_weight = self._require_weight(stats, "a Gaussian mixture")
        weights, means, covariances, dead = self._estimate(stats, params["means"])
        events = []
        if dead.size:
            sample = self._filled(sample)
            seeds = self._lowest_likelihood_points(sample, params, means, dead)
            share = np.asarray(stats["nk"])[dead] / total_weight
            for j, fraction in zip(dead, share):
                events.append(
                    f"component {int(j)} lost its mass (weight {float(f'{fraction:.3g}')}); re-seeded at the "
                    "sample point with the lowest likelihood"
                )
            self._reseed(weights, means, covariances, dead, seeds, sample)
        return MStepResult(self._finish(weights, means, covariances), events)

    def _estimate(
        self, stats: Mapping[str, np.ndarray], shift: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(weights, means, covariances, dead component indices) from stats taken around ``shift``."""
        nk_raw = np.asarray(stats["nk"], dtype=np.float64)
        nk = nk_raw + _NK_EPS
        prior = self._prior
        if prior.active:  # MAP (models/priors.py), then reg_covar on the diagonals as always
            means, covariances = prior.m_step(
                nk, np.asarray(stats["sum"]), np.asarray(stats["sq"]), shift, self.covariance_type
            )
            covariances = add_to_variances(covariances, self.reg_covar, self.covariance_type)
        else:
            delta = np.asarray(stats["sum"]) / nk[:, None]
            means = shift + delta
            covariances = self._kernel.covariance(nk, delta, np.asarray(stats["sq"]), self.reg_covar)
        # (the flat prior divides the occupancies with their tiny floor, as scikit-learn does)
        weights = nk / nk.sum() if self.weights_prior == 1.0 else map_weights(nk_raw, self.weights_prior)
        dead = self._lost_mass(nk_raw, float(stats[WEIGHT]))
        return weights, means, covariances, dead

    def _reseed(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray,
        dead: np.ndarray,
        seeds: list[np.ndarray],
        sample: Block,
    ) -> None:
        """Give each dead component a mean from ``seeds``, the sample covariance and a small weight (in place)."""
        sample_cov = _weighted_covariance(sample.X, sample.weights_or_ones())
        for j, seed in zip(dead, seeds):
            means[j] = seed
            self._kernel.set_component(covariances, int(j), sample_cov, self.reg_covar)
            weights[j] = 1.0 / sample.n_rows
        weights /= weights.sum()

    def _finish(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> Params:
        try:
            prec_chol = self._kernel.precisions_cholesky(covariances)
        except np.linalg.LinAlgError:
            bad = not_positive_definite_components(covariances, self.covariance_type)
            raise ill_defined_covariance("Gaussian mixture", bad, self.covariance_type) from None
        return {"weights": weights, "means": means, "covariances": covariances, "precisions_cholesky": prec_chol}

    def _lowest_likelihood_points(
        self, sample: Block, params: Params, new_means: np.ndarray, dead: np.ndarray
    ) -> list[np.ndarray]:
        """One seed row per dead component: the sample points the model explains worst.

        Scored under ``params`` (the model the statistics came from). Ties go to the lower
        row index; a point equal to a surviving mean or an earlier seed is skipped, as are
        rows of weight 0, unless nothing else is left.
        """
        if sample.n_rows == 0:
            raise ModelError(
                f"components {dead.tolist()} lost their mass and there is no sample to re-seed them from; decrease k"
            )
        loglik = self.score(sample, params)["loglik"]
        order = np.argsort(loglik, kind="stable")
        usable = sample.weights_or_ones()[order] > 0
        candidates = order[usable] if usable.any() else order
        dead_set = set(dead.tolist())
        taken = [m for j, m in enumerate(new_means) if j not in dead_set]
        seeds = []
        for _ in dead:
            pick = next(
                (i for i in candidates if not any(np.array_equal(sample.X[i], m) for m in taken)),
                candidates[0],
            )
            seeds.append(sample.X[pick].copy())
            taken.append(sample.X[pick])
        return seeds

    # -- protocol: initialization -----------------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Initial parameters from a sample held on the driver.

        "k-means++": weighted k-means++ seeding, then up to 20 weighted Lloyd iterations,
        then the M-step of the hard assignments. "random": k distinct sample points drawn
        with probability proportional to weight as means, uniform weights, and the whole
        sample's covariance for every component.

        With missing values (``handle_missing="model"``) the sample's NaN entries are first
        filled with its weighted column means. A component with labelled rows (of positive
        weight) in the sample then gets their weighted mean as its mean, so component ids
        follow the labels from the first iteration.
        """
        sample = self._filled(sample)
        X = np.asarray(sample.X, dtype=np.float64)
        w = np.asarray(sample.weights_or_ones(), dtype=np.float64)
        self._require_sample(sample)
        if not np.all(np.isfinite(X)) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ModelError("the sample must be finite with non-negative weights")
        distinct, inverse = np.unique(X[w > 0], axis=0, return_inverse=True)
        if distinct.shape[0] < self.k:
            raise ModelError(
                f"the data has {distinct.shape[0]} distinct points (of positive weight), fewer distinct "
                f"points than k={self.k}; decrease k"
            )
        if self.init_mode == "random":
            params = self._initialize_random(X, w, distinct, inverse.reshape(-1), w[w > 0], rng)
        else:
            params = self._initialize_kmeans(X, w, rng)
        labels = check_labels(sample.labels, self.k)
        if labels is not None:
            means = params["means"].copy()
            for j in range(self.k):
                mine = (labels == j) & (w > 0)
                if mine.any():
                    means[j] = (w[mine] @ X[mine]) / w[mine].sum()
            params = {**params, "means": means}  # the covariances (hence precisions) are unchanged
        return params

    def _sample_covariance_params(self, X: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The whole sample's covariance (+ reg_covar) in the covariance type's shape."""
        k, d = self.k, X.shape[1]
        covariances = np.zeros(self._kernel.cov_shape(k, d))
        sample_cov = _weighted_covariance(X, w)
        if self.covariance_type == "tied":
            return sample_cov + self.reg_covar * np.eye(d)
        for j in range(k):
            self._kernel.set_component(covariances, j, sample_cov, self.reg_covar)
        return covariances

    def _initialize_random(
        self,
        X: np.ndarray,
        w: np.ndarray,
        distinct: np.ndarray,
        inverse: np.ndarray,
        positive_w: np.ndarray,
        rng: np.random.Generator,
    ) -> Params:
        # Duplicate rows pool their weight, so the k drawn points are distinct points.
        pooled = np.bincount(inverse, weights=positive_w, minlength=distinct.shape[0])
        chosen = rng.choice(distinct.shape[0], size=self.k, replace=False, p=pooled / pooled.sum())
        weights = np.full(self.k, 1.0 / self.k)
        return self._finish(weights, distinct[chosen].copy(), self._sample_covariance_params(X, w))

    def _initialize_kmeans(self, X: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> Params:
        # Center once so the ‖x‖² − 2 x·c + ‖c‖² distances do not cancel far from the origin.
        origin = (w @ X) / w.sum()
        centered = X - origin
        centers = kmeans_plusplus(centered, w, self.k, rng)
        labels, centers = lloyd(centered, w, centers, _LLOYD_MAX_ITER)
        shift = centers + origin
        stats = self._accumulate(X, w, shift, None, None, labels=labels)
        weights, means, covariances, _ = self._estimate(stats, shift)
        empty = np.flatnonzero(stats["nk"] <= 0)
        if empty.size:
            # a cluster that ended up empty keeps its center, with the sample's covariance
            self._reseed(weights, means, covariances, empty, shift[empty], Block(X, w))
        return self._finish(weights, means, covariances)


def _fill_column_means(X: np.ndarray, missing: np.ndarray, w: np.ndarray) -> np.ndarray:
    """X (n, d) with its NaN entries (``missing``) replaced by the weighted means of their columns.

    A crude single imputation, used only to seed the parameters (initialization and the
    re-seeding of a dead component): it shrinks variances and correlations, which EM then
    undoes, since the E-step itself treats the entries as missing. Columns whose observed
    entries all have weight 0 use the unweighted mean; a column with no observed entry
    cannot be estimated at all.
    """
    observed = ~missing
    never = np.flatnonzero(~observed.any(axis=0))
    if never.size:
        raise ModelError(
            f"feature column(s) {never.tolist()} are missing (NaN) in every sampled row, so the model cannot "
            "estimate them; drop those columns (or fill them) before fitting"
        )
    weight = observed * w[:, None]
    unweighted = weight.sum(axis=0) <= 0
    weight[:, unweighted] = observed[:, unweighted]
    column_means = (weight * np.where(observed, X, 0.0)).sum(axis=0) / weight.sum(axis=0)
    return np.where(missing, column_means, X)
