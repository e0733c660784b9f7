"""Mixtures of independent Poisson counts: the ``poisson`` family.

Each row holds d non-negative integer counts (events per user per day, visits per page,
defects per batch). A component is a product of d Poisson distributions with rates
λ_j = (λ_j1 .. λ_jd), so that

    log p(x | z=j) = Σ_f x_f log λ_jf − λ_jf − log x_f!

Parameters are a plain dict of float64 arrays::

    weights   (k,)     mixing weights
    rates     (k, d)   Poisson rates, > 0 (>= 0 with smoothing 0)

The sufficient statistics of a block (sample weights w multiply everything)::

    nk       (k,)     Σ_i w_i r_ij
    sums     (k, d)   Σ_i w_i r_ij x_i
    loglik, weight, count   ()

The M-step is the MAP estimate under a Gamma(1 + smoothing, 0) prior on every rate (the
improper limit of a Gamma prior whose rate parameter goes to 0, so the estimate has no scale
of its own): λ_jf = (sums_jf + smoothing) / nk_j, and weights = nk / Σ nk. ``smoothing``
plays the part of the categorical family's pseudo-count: a rate never goes to 0, so new data
with a count a component never saw still scores finite. EM never decreases
loglik + smoothing · Σ log λ (:meth:`PoissonMixtureFamily.log_prior`); with smoothing 0 it
is maximum likelihood.

Semi-supervised EM (``Block.labels``) works as for the other mixtures
(:mod:`em_spark.models.labels`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import gammaln

from em_spark.models.base import Block, FamilyBase, ModelError, MStepResult, Params, check_k
from em_spark.models.kernels import log0
from em_spark.models.labels import check_labels, clamp_to_labels, log_posterior
from em_spark.models.priors import check_concentration, dirichlet_log_prior, map_weights
from em_spark.models.reparam import softmax
from em_spark.models.validation import check_parameter, check_present, is_number
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = ["INIT_MODES", "PoissonMixtureFamily"]

INIT_MODES = ("k-means++", "random")
_LLOYD_MAX_ITER = 20


@dataclass(frozen=True)
class PoissonMixtureFamily(FamilyBase):
    """Mixture of ``k`` products of independent Poisson distributions over d count columns.

    Parameters
    ----------
    k : int
        Number of mixture components.
    smoothing : float
        Pseudo-count added to every component's count sum in the M-step (the Gamma prior's
        shape minus one; see the module docstring). 0 gives maximum likelihood.
    init_mode : {"k-means++", "random"}
        "k-means++": k-means++ seeding and Lloyd iterations on log(1 + x), then the M-step of
        the hard assignment. "random": each component's rates are the sample's mean counts
        times a Gamma(2, 1/2) draw per entry (mean 1), uniform weights.
    weights_prior : float
        Dirichlet concentration of the mixing weights (> 0): 1 (default) is flat, maximum
        likelihood; above 1 pulls the weights towards equal, below 1 lets components empty.
    """

    name: ClassVar[str] = "poisson"
    sequential: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = True
    needs_counts: ClassVar[bool] = True  # the load refuses non-counts before iteration 1, naming the column
    summary_params: ClassVar[tuple[str, ...]] = ("weights", "rates")
    added_fields: ClassVar[tuple[str, ...]] = ("weights_prior",)  # left out of config() at its default

    k: int
    smoothing: float = 1e-3
    init_mode: str = "k-means++"
    weights_prior: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "components"))
        if not is_number(self.smoothing) or not math.isfinite(self.smoothing) or self.smoothing < 0:
            raise ModelError(
                "smoothing must be a finite non-negative number (a pseudo-count added to every rate's count "
                f"sum), got {self.smoothing!r}; use the default 0.001 if unsure"
            )
        object.__setattr__(self, "smoothing", float(self.smoothing))
        if self.init_mode not in INIT_MODES:
            raise ModelError(f"initMode must be one of {list(INIT_MODES)}, got {self.init_mode!r}")
        object.__setattr__(self, "weights_prior", check_concentration(self.weights_prior, "weightsPrior"))

    # -- protocol: description ------------------------------------------------

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``weights`` (k,) and ``rates`` (k, d)."""
        return {name: np.array(params[name], dtype=np.float64) for name in ("weights", "rates")}

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between components: Σ_f (√λ_a − √λ_b)² / 2.

        That is the Bhattacharyya distance of two products of Poisson distributions (each
        feature's −log Σ_x √(p_a(x) p_b(x)) = (√λ_a − √λ_b)² / 2): 0 for identical components,
        symmetric, and in counts' own units.
        """
        root_a = np.sqrt(np.asarray(params_a["rates"], dtype=np.float64))
        root_b = np.sqrt(np.asarray(params_b["rates"], dtype=np.float64))
        if root_a.shape[1] != root_b.shape[1]:
            raise ModelError(
                f"cannot compare models over different count columns: {root_a.shape[1]} vs {root_b.shape[1]}"
            )
        return 0.5 * ((root_a[:, None, :] - root_b[None, :, :]) ** 2).sum(axis=2)

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        """Parameters with components reordered: new component j is old component ``order[j]``."""
        order = self._permutation(order)
        return {name: np.array(params[name])[order] for name in ("weights", "rates")}

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest component weight: a component heading for collapse shows here first."""
        return {"minWeight": float(np.min(params["weights"]))}

    def n_parameters(self, params: Params) -> int:
        """Free parameters: (k − 1) weights + k·d rates."""
        return self.k - 1 + self.k * int(np.asarray(params["rates"]).shape[1])

    def log_prior(self, params: Params) -> float:
        """smoothing · Σ log λ (the Gamma(1 + smoothing, 0) prior of the M-step) plus the weights'
        Dirichlet log prior (0 for both flat)."""
        smoothed = float(self.smoothing * np.sum(log0(params["rates"]))) if self.smoothing > 0 else 0.0
        return smoothed + dirichlet_log_prior(params["weights"], self.weights_prior)

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """Log-weights (k,) and log-rates (k, d)."""
        return {"log_weights": log0(params["weights"]), "log_rates": log0(params["rates"])}

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """Weights by softmax, rates by exp."""
        with np.errstate(over="ignore"):
            rates = np.exp(np.asarray(free["log_rates"], dtype=np.float64))
        if not np.all(np.isfinite(rates)):
            raise ModelError("extrapolated Poisson rates overflow")
        return {"weights": softmax(np.asarray(free["log_weights"])), "rates": rates}

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s ``weights`` (k,) and ``rates`` (k, d).

        Weights must be finite, non-negative and sum to 1 within 1e-6 (renormalized); rates
        finite and non-negative (positive unless smoothing is 0 would keep them so).
        """
        k, d = self.k, int(n_features)
        check_present(arrays, ("weights", "rates"))
        what = f"k={k} and {d} count columns"
        weights = check_parameter(arrays["weights"], "weights", shape=(k,), what=what, min_value=0.0, simplex=True)
        rates = check_parameter(arrays["rates"], "rates", shape=(k, d), what=what, min_value=0.0)
        return {"weights": weights, "rates": rates}

    # -- data checks ---------------------------------------------------------------------

    def _counts(self, block: Block, d: int) -> np.ndarray:
        """The block's X as float64 after checking its width and that it holds counts."""
        if block.n_features != d:
            raise ModelError(f"data has {block.n_features} features but the model has {d} count columns")
        X = np.asarray(block.X, dtype=np.float64)
        self._check_counts(X)
        return X

    @staticmethod
    def _check_counts(X: np.ndarray) -> None:
        """A ModelError naming the first column and value that is not a non-negative integer count."""
        valid = (X >= 0) & (np.floor(X) == X) & np.isfinite(X)
        if valid.all():
            return
        rows, cols = np.nonzero(~valid)
        col, value = int(cols[0]), float(X[rows[0], cols[0]])
        raise ModelError(
            f"count column {col} holds {value!r}; a Poisson mixture needs finite non-negative integer counts "
            "(round or drop such rows; use sample weights instead of fractional counts)"
        )

    # -- protocol: E-step and scoring --------------------------------------------

    def _posterior(self, block: Block, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, log_resp (n, k), loglik (n,)) of a checked block, labels applied."""
        rates = np.asarray(params["rates"], dtype=np.float64)
        X = self._counts(block, rates.shape[1])
        labels = check_labels(block.labels, self.k)
        zero = rates <= 0
        log_rates = log0(rates)
        if zero.any():
            # 0 · log 0 = 0: a zero rate is impossible only for rows with a positive count there
            log_components = X @ np.where(zero, 0.0, log_rates).T
            log_components[((X > 0).astype(np.float64) @ zero.T.astype(np.float64)) > 0] = -np.inf
        else:
            log_components = X @ log_rates.T
        log_joint = log_components - rates.sum(axis=1) + log0(params["weights"])
        log_resp, loglik = log_posterior(log_joint)
        log_resp, loglik = clamp_to_labels(log_joint, log_resp, loglik, labels)
        return X, log_resp, loglik - gammaln(X + 1.0).sum(axis=1)

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of one block (see the module docstring for the fields).

        Raises a :class:`ModelError` for a value that is not a count, and for a row of
        positive weight with probability 0 under the model (only with zero rates or weights).
        """
        X, log_resp, loglik = self._posterior(block, params)
        n = X.shape[0]
        w = None if block.weight is None else np.asarray(block.weight, dtype=np.float64)
        impossible = ~np.isfinite(loglik)
        if impossible.any():
            if w is None or np.any(w[impossible] > 0):
                raise ModelError(
                    "a row has probability 0 under every component it may belong to (a positive count where a "
                    "rate is exactly 0); use smoothing > 0, or an initialModel without zero rates"
                )
            log_resp = np.where(impossible[:, None], -np.inf, log_resp)
            loglik = np.where(impossible, 0.0, loglik)
        resp = np.exp(log_resp)
        wr = resp if w is None else resp * w[:, None]
        return Stats(
            {
                "nk": wr.sum(axis=0),
                "sums": wr.T @ X,
                LOGLIK: np.float64(loglik.sum() if w is None else loglik @ w),
                WEIGHT: np.float64(n if w is None else w.sum()),
                COUNT: np.float64(n),
            }
        )

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-row ``log_resp`` (n, k) and ``loglik`` (n,) (unweighted); a row impossible under
        every component gets loglik -inf and the mixing weights as its responsibilities."""
        _, log_resp, loglik = self._posterior(block, params)
        impossible = ~np.isfinite(loglik)
        if impossible.any():
            log_resp = log_resp.copy()
            log_resp[impossible] = log0(params["weights"])
        return {"log_resp": log_resp, "loglik": loglik}

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """(n, d) independent Poisson counts at each row's component's rates."""
        self._no_trials(trials, "a Poisson mixture")
        return rng.poisson(np.asarray(params["rates"], dtype=np.float64)[components]).astype(np.float64)

    # -- protocol: M-step ----------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """The MAP estimate of the module docstring. A component whose weight share fell below
        1e-10 is re-seeded at the sample row the model explains worst (half that row's counts,
        half the sample's mean counts), with weight 1/len(sample); an event says so."""
        total_weight = self._require_weight(stats, "a Poisson mixture")
        nk = np.asarray(stats["nk"], dtype=np.float64)
        sums = np.asarray(stats["sums"], dtype=np.float64)
        weights = map_weights(nk, self.weights_prior)
        dead = self._lost_mass(nk, total_weight)
        alive = np.setdiff1d(np.arange(self.k), dead)
        rates = np.array(params["rates"], dtype=np.float64)
        rates[alive] = (sums[alive] + self.smoothing) / nk[alive, None]
        events = []
        if dead.size:
            rates[dead] = self._reseed_rates(sample, params, dead)
            for j in dead:
                events.append(
                    f"component {int(j)} lost its mass (weight {float(f'{nk[j] / total_weight:.3g}')}); re-seeded "
                    "at the sample row with the lowest likelihood"
                )
            weights[dead] = 1.0 / sample.n_rows
            weights /= weights.sum()
        return MStepResult({"weights": weights, "rates": rates}, events)

    def _reseed_rates(self, sample: Block, params: Params, dead: np.ndarray) -> np.ndarray:
        """(len(dead), d) rates at the worst-explained distinct sample rows, half-blended with the mean."""
        if sample.n_rows == 0:
            raise ModelError(
                f"components {dead.tolist()} lost their mass and there is no sample to re-seed them from; decrease k"
            )
        unlabelled = Block(sample.X, sample.weight)
        X = self._counts(unlabelled, np.asarray(params["rates"]).shape[1])
        w = np.asarray(sample.weights_or_ones(), dtype=np.float64)
        mean = self._sample_mean(X, w)
        order = np.argsort(self.score(unlabelled, params)["loglik"], kind="stable")
        candidates = order[w[order] > 0] if (w > 0).any() else order
        seeds: list[np.ndarray] = []
        for _ in dead:
            pick = next((i for i in candidates if not any(np.array_equal(X[i], s) for s in seeds)), candidates[0])
            seeds.append(X[pick])
        return 0.5 * np.array(seeds) + 0.5 * mean + self.smoothing

    @staticmethod
    def _sample_mean(X: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(d,) the sample's weighted mean counts."""
        return (w @ X) / w.sum()

    # -- protocol: initialization -----------------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Initial parameters from a sample held on the driver (see ``init_mode``). A component
        with labelled rows of positive weight in the sample starts from their mean counts."""
        self._require_sample(sample)
        X = np.asarray(sample.X, dtype=np.float64)
        self._check_counts(X)
        w = np.asarray(sample.weights_or_ones(), dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ModelError("the sample's weights must be finite, non-negative and not all 0")
        k, mean = self.k, self._sample_mean(X, w)
        if self.init_mode == "random":
            weights = np.full(k, 1.0 / k)
            rates = mean * rng.gamma(2.0, 0.5, size=(k, X.shape[1])) + self.smoothing
        else:
            weights, rates = self._initialize_kmeans(X, w, rng)
        labels = check_labels(sample.labels, k)
        if labels is not None:
            for j in range(k):
                mine = (labels == j) & (w > 0)
                if mine.any():
                    rates[j] = (w[mine] @ X[mine] + self.smoothing) / w[mine].sum()
        return {"weights": weights, "rates": rates}

    def _initialize_kmeans(
        self, X: np.ndarray, w: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weights, rates) from k-means on log(1 + x), then the M-step of the hard assignment."""
        from em_spark.models.seeding import kmeans_plusplus, lloyd

        k = self.k
        embedded = np.log1p(X)
        distinct = np.unique(embedded[w > 0], axis=0).shape[0]
        if distinct < k:
            raise ModelError(
                f"the sample has {distinct} distinct rows (of positive weight), fewer than k={k}; decrease k"
            )
        centers = kmeans_plusplus(embedded, w, k, rng)
        assignment, _ = lloyd(embedded, w, centers, _LLOYD_MAX_ITER)
        wr = (assignment[:, None] == np.arange(k)) * w[:, None]
        nk = wr.sum(axis=0)
        mean = self._sample_mean(X, w)
        rates = np.tile(mean + self.smoothing, (k, 1))
        filled = nk > 0
        rates[filled] = (wr.T @ X + self.smoothing)[filled] / nk[filled, None]
        weights = np.where(filled, nk, 1.0 / X.shape[0])
        return weights / weights.sum(), rates
