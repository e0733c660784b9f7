"""K-means as hard EM: the limit of a spherical Gaussian mixture as the variance goes to 0.

The E-step assigns each row to its nearest center (a one-hot responsibility), the M-step
moves each center to the weighted mean of its rows: Lloyd's algorithm, in the same
distributed shape as every other family. Also usable as an initializer.

The objective the engine tracks as ``loglik`` is minus the (weighted) inertia, so
"average log-likelihood" means minus the mean squared distance to the nearest center,
and ``tol`` applies to its change per row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from em_spark.models.base import Block, FamilyBase, ModelError, MStepResult, Params, check_k
from em_spark.models.seeding import kmeans_plusplus
from em_spark.models.validation import check_parameter
from em_spark.stats import Stats

__all__ = ["KMeansFamily"]

INIT_MODES = ("k-means++", "random")


def _squared_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(n, k) squared distances, from explicit differences (no cancellation far from the origin)."""
    out = np.empty((X.shape[0], centers.shape[0]))
    for j, center in enumerate(centers):
        diff = X - center
        np.einsum("ij,ij->i", diff, diff, out=out[:, j])
    return out


@dataclass(frozen=True)
class KMeansFamily(FamilyBase):
    """``k`` centers fitted by Lloyd's algorithm (hard EM).

    Parameters
    ----------
    k : int
    init_mode : {"k-means++", "random"}
        Seeding on the sample: weighted k-means++, or k distinct sample points.
    """

    name: ClassVar[str] = "kmeans"
    summary_params: ClassVar[tuple[str, ...]] = ("weights", "centers")
    sequential: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = False

    k: int
    init_mode: str = "k-means++"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "clusters"))
        if self.init_mode not in INIT_MODES:
            raise ModelError(f"initMode must be one of {list(INIT_MODES)}, got {self.init_mode!r}")

    # -- parameters -----------------------------------------------------------

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """Refused: k-means is the zero-variance limit of a Gaussian mixture, so its draws would be
        its centers."""
        raise ModelError(
            "k-means has no spread around its centers (it is the zero-variance limit of a Gaussian mixture), so "
            "there is nothing to draw; fit GaussianMixture(covarianceType='spherical') to draw rows"
        )

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """``centers`` (k, d) and ``weights`` (k,), the share of weight in each cluster."""
        return {"centers": params["centers"].copy(), "weights": params["weights"].copy()}

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Parameters from ``centers`` (or ``means``) of shape (k, n_features)."""
        centers = arrays.get("centers", arrays.get("means"))
        if centers is None:
            raise ModelError("an initial k-means model needs 'centers' of shape (k, n_features)")
        what = f"k={self.k} and {n_features} features"
        centers = check_parameter(centers, "centers", shape=(self.k, n_features), what=what)
        return {"centers": centers, "weights": np.full(self.k, 1.0 / self.k)}

    def n_parameters(self, params: Params) -> int:
        return int(params["centers"].size)

    def progress(self, params: Params) -> dict[str, float]:
        return {"minWeight": float(np.min(params["weights"]))}

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) squared distances between the centers of two models."""
        return _squared_distances(params_a["centers"], params_b["centers"])

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        order = self._permutation(order)
        return {name: value[order].copy() for name, value in params.items()}

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """``sum`` moved from ``old``'s centers to ``new``'s (sums are taken around each row's center)."""
        moved = stats["sum"] + stats["nk"][:, None] * (old["centers"] - new["centers"])
        return Stats({**stats, "sum": moved})

    # -- EM -------------------------------------------------------------------

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """The centers (k, d): already unconstrained (the weights follow from the assignments)."""
        return {"centers": np.asarray(params["centers"], dtype=np.float64)}

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """The centers; the weights of ``params`` (the E-step never reads them)."""
        return {"centers": np.array(free["centers"]), "weights": np.array(params["weights"])}

    def e_step(self, block: Block, params: Params) -> Stats:
        """Hard assignment of each row to its nearest center, as additive statistics.

        Sums are taken around each row's current center, so the M-step's new center is
        ``center + sum / nk`` without cancellation.
        """
        centers = params["centers"]
        k, d = centers.shape
        if block.n_rows == 0:
            zero = np.zeros(())
            return Stats({"nk": np.zeros(k), "sum": np.zeros((k, d)), "loglik": zero, "weight": zero, "count": zero})
        distances = _squared_distances(block.X, centers)
        labels = np.argmin(distances, axis=1)  # ties go to the lower index, as in scikit-learn
        w = block.weights_or_ones()
        closest = distances[np.arange(block.n_rows), labels]
        sums = np.zeros((k, d))
        np.add.at(sums, labels, w[:, None] * (block.X - centers[labels]))
        return Stats(
            {
                "nk": np.bincount(labels, weights=w, minlength=k),
                "sum": sums,
                "loglik": np.asarray(-float(w @ closest)),
                "weight": np.asarray(float(w.sum())),
                "count": np.asarray(float(block.n_rows)),
            }
        )

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        centers = params["centers"].copy()
        nk = stats["nk"]
        filled = nk > 0
        centers[filled] += stats["sum"][filled] / nk[filled, None]
        events = []
        empty = np.flatnonzero(~filled)
        if empty.size:
            # Like scikit-learn: an empty cluster moves to the sample point farthest from its center.
            far = np.argsort(-_squared_distances(sample.X, centers).min(axis=1), kind="stable")
            for j, row in zip(empty, far):
                centers[j] = sample.X[row]
                events.append(f"cluster {j} lost all its rows; moved to the sample point farthest from any center")
        total = nk.sum()
        weights = nk / total if total > 0 else np.full(self.k, 1.0 / self.k)
        return MStepResult({"centers": centers, "weights": weights}, events)

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """``log_resp`` (n, k): 0 for the nearest center, -inf elsewhere; ``loglik`` (n,): minus the squared distance."""
        distances = _squared_distances(block.X, params["centers"])
        labels = np.argmin(distances, axis=1)
        log_resp = np.full(distances.shape, -np.inf)
        log_resp[np.arange(block.n_rows), labels] = 0.0
        return {"log_resp": log_resp, "loglik": -distances[np.arange(block.n_rows), labels]}

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Centers from the sample: k-means++ seeding, or k distinct points (weighted)."""
        X, w = sample.X, sample.weights_or_ones()
        distinct = np.unique(X[w > 0], axis=0)
        if distinct.shape[0] < self.k:
            raise ModelError(f"the data has {distinct.shape[0]} distinct points, fewer than k={self.k}; decrease k")
        if self.init_mode == "random":
            centers = distinct[rng.choice(distinct.shape[0], size=self.k, replace=False)]
        else:
            origin = (w @ X) / w.sum()
            centers = kmeans_plusplus(X - origin, w, self.k, rng) + origin
        return {"centers": np.array(centers, dtype=np.float64), "weights": np.full(self.k, 1.0 / self.k)}
