"""k-means++ seeding and Lloyd iterations on the driver's sample: the initializer every family shares.

Pure numpy on a bounded sample (never the whole data set), weighted by the sample weights.
``X`` may be a CSR array (a sparse sample): distances are then expanded,
‖x‖² − 2 x·c + ‖c‖², so that nothing is densified but the (k, d) centers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from em_spark.models.base import ModelError, dense_row

__all__ = ["kmeans_plusplus", "lloyd"]


def _squared_norms(X: Any) -> np.ndarray:
    """(n,) squared Euclidean norms of the rows of X (dense or CSR)."""
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1)).reshape(-1)
    return np.einsum("ij,ij->i", X, X)


def _squared_distances_to(X: Any, point: np.ndarray) -> np.ndarray:
    """(n,) squared Euclidean distances from the rows of X to one point (dense X: no cancellation)."""
    if sp.issparse(X):
        return np.maximum(_squared_norms(X) - 2.0 * np.asarray(X @ point) + point @ point, 0.0)
    diff = X - point
    return np.einsum("ij,ij->i", diff, diff)


def kmeans_plusplus(X: Any, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted greedy k-means++ seeding (as scikit-learn's ``_kmeans_plusplus``).

    Returns (k, d) centers, k distinct rows of X with positive weight.
    """
    n_trials = 2 + int(np.log(k))
    first = rng.choice(X.shape[0], p=w / w.sum())
    centers = [dense_row(X, first)]
    closest = _squared_distances_to(X, centers[0])
    for _ in range(1, k):
        cumulative = np.cumsum(w * closest)
        total = cumulative[-1]
        if not total > 0:
            raise ModelError(f"the data has fewer distinct points than k={k}; decrease k")
        draws = rng.uniform(size=n_trials) * total
        # side="right" lands only on rows with a positive contribution (never on a center);
        # rounding past the end falls back to the last such row
        candidates = np.searchsorted(cumulative, draws, side="right")
        last_positive = int(np.flatnonzero(w * closest > 0)[-1])
        candidates = np.minimum(candidates, last_positive)
        trial = np.stack([np.minimum(closest, _squared_distances_to(X, dense_row(X, c))) for c in candidates])
        best = int(np.argmin(trial @ w))
        closest = trial[best]
        centers.append(dense_row(X, candidates[best]))
    return np.array(centers)


def lloyd(X: Any, w: np.ndarray, centers: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd iterations until the assignments stop changing (at most ``max_iter`` updates).

    Returns (labels (n,), centers (k, d)): the final assignment and the centers it was made to.
    An empty cluster keeps its previous center.
    """
    k = centers.shape[0]
    centers = centers.copy()
    x_sq = _squared_norms(X)

    def assign(centers: np.ndarray) -> np.ndarray:
        distances = x_sq[:, None] - 2.0 * np.asarray(X @ centers.T) + np.einsum("ij,ij->i", centers, centers)
        return np.argmin(distances, axis=1)  # ties go to the lower cluster index

    labels = assign(centers)
    for _ in range(max_iter):
        one_hot = (labels[:, None] == np.arange(k)) * w[:, None]
        mass = one_hot.sum(axis=0)
        filled = mass > 0
        sums = np.asarray(X.T @ one_hot).T if sp.issparse(X) else one_hot.T @ X
        centers[filled] = sums[filled] / mass[filled, None]
        new_labels = assign(centers)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centers
