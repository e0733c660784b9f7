"""Unconstrained coordinates of constrained parameters, for accelerated EM (SQUAREM).

SQUAREM (``em_spark.engine.acceleration``) extrapolates parameters along a line; in these
coordinates any finite point maps back to feasible parameters: probabilities as logs
(``kernels.log0``, mapped back by a softmax), variances as logs, covariance matrices as their Cholesky
factor with a log diagonal. Each family's ``to_unconstrained`` / ``from_unconstrained``
is built from these. A probability of exactly 0 is −inf here; it stays 0 as long as the
three points of a cycle agree on it (the extrapolation keeps coordinates they share).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

__all__ = [
    "covariance_from_free",
    "covariance_to_free",
    "softmax",
    "softmax_blocks",
]


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(z) normalized along ``axis``; NaN where a row is all −inf or not finite (infeasible)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(z - np.max(z, axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


def softmax_blocks(z: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(..., T) -> (..., T): a softmax within each feature's columns ``offsets[i]:offsets[i+1]``."""
    out = np.empty_like(np.asarray(z, dtype=np.float64))
    for start, stop in pairwise(offsets):
        out[..., start:stop] = softmax(z[..., start:stop])
    return out


def covariance_to_free(cov: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances (shape by type) as unconstrained values: log variances ("diag", "spherical"),
    or the lower Cholesky factor with its diagonal as logs ("full" (k, d, d), "tied" (d, d))."""
    cov = np.asarray(cov, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        return np.log(cov)
    L = np.linalg.cholesky(cov)
    d = L.shape[-1]
    diag = np.arange(d)
    L[..., diag, diag] = np.log(L[..., diag, diag])
    return L


def covariance_from_free(free: np.ndarray, covariance_type: str) -> np.ndarray:
    """The inverse of :func:`covariance_to_free`: positive (definite) for any finite input."""
    free = np.asarray(free, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        with np.errstate(over="ignore"):
            return np.exp(free)
    L = np.tril(free)
    d = L.shape[-1]
    diag = np.arange(d)
    with np.errstate(over="ignore"):
        L[..., diag, diag] = np.exp(L[..., diag, diag])
    return L @ np.swapaxes(L, -1, -2)
