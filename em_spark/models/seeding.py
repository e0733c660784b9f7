"""k-means++ seeding and Lloyd iterations on the driver's sample: the initializer every family shares.

Pure numpy on a bounded sample (never the whole data set), weighted by the sample weights.
"""

from __future__ import annotations

import numpy as np

from em_spark.models.base import ModelError

__all__ = ["kmeans_plusplus", "lloyd"]


def _squared_distances_to(X: np.ndarray, point: np.ndarray) -> np.ndarray:
    """(n,) squared Euclidean distances from the rows of X to one point (no cancellation)."""
    diff = X - point
    return np.einsum("ij,ij->i", diff, diff)


def kmeans_plusplus(X: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted greedy k-means++ seeding (as scikit-learn's ``_kmeans_plusplus``).

    Returns (k, d) centers, k distinct rows of X with positive weight.
    """
    n_trials = 2 + int(np.log(k))
    first = rng.choice(X.shape[0], p=w / w.sum())
    centers = [X[first]]
    closest = _squared_distances_to(X, X[first])
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
        trial = np.stack([np.minimum(closest, _squared_distances_to(X, X[c])) for c in candidates])
        best = int(np.argmin(trial @ w))
        closest = trial[best]
        centers.append(X[candidates[best]])
    return np.array(centers)


def lloyd(X: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd iterations until the assignments stop changing (at most ``max_iter`` updates).

    Returns (labels (n,), centers (k, d)): the final assignment and the centers it was made to.
    An empty cluster keeps its previous center.
    """
    k = centers.shape[0]
    centers = centers.copy()
    x_sq = np.einsum("ij,ij->i", X, X)

    def assign(centers: np.ndarray) -> np.ndarray:
        distances = x_sq[:, None] - 2.0 * (X @ centers.T) + np.einsum("ij,ij->i", centers, centers)
        return np.argmin(distances, axis=1)  # ties go to the lower cluster index

    labels = assign(centers)
    for _ in range(max_iter):
        one_hot = (labels[:, None] == np.arange(k)) * w[:, None]
        mass = one_hot.sum(axis=0)
        filled = mass > 0
        centers[filled] = (one_hot.T @ X)[filled] / mass[filled, None]
        new_labels = assign(centers)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centers
