"""The fused loops of the compiled Gaussian E-step, compiled by numba when this module is imported.

Only :mod:`em_spark.models.compiled` imports this module, lazily (importing numba takes
about a second): see there for what the loops compute and why. The functions are plain
Python over numpy arrays; numba compiles each on its first call in a process.
Shapes: X (n, d); lp (k, R) log-probabilities, then responsibilities, of a chunk of R rows;
xt, diff, wd (d, R) the chunk transposed, x − μ_k and w r (x − μ_k).
"""

from __future__ import annotations

import os
import tempfile

import numba
import numpy as np

__all__ = ["CACHE_DIR_ENV", "cache_enabled", "stats_matrix", "stats_vector"]

CACHE_DIR_ENV = "NUMBA_CACHE_DIR"


def cache_enabled() -> bool:
    """Whether numba may cache the compiled loops on disk (decided once, at import).

    numba writes next to this file, else under NUMBA_CACHE_DIR or the user's cache
    directory, and with none writable ``cache=True`` fails at decoration. A read-only
    install (an image, a root-owned site-packages) with no NUMBA_CACHE_DIR uses a per-user
    directory in the temp dir instead, and no cache when even that is not writable.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    in_tree = os.path.join(here, "__pycache__")
    if os.environ.get(CACHE_DIR_ENV) or os.access(in_tree if os.path.isdir(in_tree) else here, os.W_OK):
        return True
    fallback = os.path.join(tempfile.gettempdir(), f"em_spark-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.makedirs(fallback, mode=0o700, exist_ok=True)
    except OSError:
        return False
    if not os.access(fallback, os.W_OK):
        return False
    numba.config.CACHE_DIR = fallback  # type: ignore[attr-defined]  # (numba read NUMBA_CACHE_DIR at import)
    return True


# reassoc: sums may be split over vector lanes; contract: a * b + c may be one FMA. No
# finiteness assumptions, so a dead component's log weight of -inf behaves as in numpy.
_jit = numba.njit(cache=cache_enabled(), fastmath={"reassoc", "contract"}, error_model="numpy", nogil=True)


@_jit
def _transpose_chunk(X: np.ndarray, start: int, m: int, xt: np.ndarray) -> None:
    d = X.shape[1]
    for r in range(m):
        for j in range(d):
            xt[j, r] = X[start + r, j]


@_jit
def _normalize_chunk(
    lp: np.ndarray,
    m: int,
    start: int,
    w: np.ndarray,
    has_w: bool,
    clamp: np.ndarray,
    has_clamp: bool,
    peak: np.ndarray,
    total: np.ndarray,
) -> float:
    """Log-sum-exp over components for each row of the chunk, in place (as kernels.normalize_log_prob).

    Returns the chunk's Σ w log p(x). A labelled row (``clamp`` >= 0) gets one-hot
    responsibilities and adds its joint log-probability log π_c + log N(x | c) instead,
    taken before exponentiating (as the numpy path), so it is exact however unlikely.
    """
    k = lp.shape[0]
    for r in range(m):
        peak[r] = lp[0, r]
    for c in range(1, k):
        for r in range(m):
            peak[r] = max(peak[r], lp[c, r])
    loglik = 0.0
    if has_clamp:
        for r in range(m):
            known = clamp[start + r]
            if known >= 0:
                joint = lp[known, r]
                loglik += joint * w[start + r] if has_w else joint
    for r in range(m):
        total[r] = 0.0
    for c in range(k):
        for r in range(m):
            e = np.exp(lp[c, r] - peak[r])
            lp[c, r] = e
            total[r] += e
    # rows along the innermost loops (they vectorize): total becomes 1 / total
    for r in range(m):
        norm = peak[r] + np.log(total[r])
        if has_w:
            norm *= w[start + r]
        if not (has_clamp and clamp[start + r] >= 0):
            loglik += norm
        total[r] = 1.0 / total[r]
    for c in range(k):
        for r in range(m):
            lp[c, r] *= total[r]
    if has_clamp:
        for r in range(m):
            known = clamp[start + r]
            if known >= 0:
                for c in range(k):
                    lp[c, r] = 0.0
                lp[known, r] = 1.0
    return loglik


@_jit
def stats_matrix(
    X: np.ndarray,
    w: np.ndarray,
    has_w: bool,
    clamp: np.ndarray,
    has_clamp: bool,
    means: np.ndarray,
    upper: np.ndarray,
    log_const: np.ndarray,
    nk: np.ndarray,
    sums: np.ndarray,
    sq: np.ndarray,
    chunk: int,
) -> float:
    """Full and tied covariances: ``upper`` (k, d, d) are the Cholesky precisions P_k (upper triangular)."""
    n, d = X.shape
    k = means.shape[0]
    xt = np.empty((d, chunk))
    diff = np.empty((d, chunk))
    wd = np.empty((d, chunk))
    lp = np.empty((k, chunk))
    y = np.empty(chunk)
    y2 = np.empty(chunk)
    wr = np.empty(chunk)
    peak = np.empty(chunk)
    total = np.empty(chunk)
    loglik = 0.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        _transpose_chunk(X, start, m, xt)
        for c in range(k):
            for j in range(d):
                mu = means[c, j]
                for r in range(m):
                    diff[j, r] = xt[j, r] - mu
            for r in range(m):
                lp[c, r] = 0.0
            # ‖(x − μ) P‖²: column i of P has entries in rows 0..i only. Columns i and i + 1
            # together, so each row of diff is loaded once for both.
            for i in range(0, d - 1, 2):
                p0 = upper[c, 0, i]
                p1 = upper[c, 0, i + 1]
                for r in range(m):
                    a = diff[0, r]
                    y[r] = a * p0
                    y2[r] = a * p1
                for j in range(1, i + 1):
                    p0 = upper[c, j, i]
                    p1 = upper[c, j, i + 1]
                    for r in range(m):
                        a = diff[j, r]
                        y[r] += a * p0
                        y2[r] += a * p1
                p1 = upper[c, i + 1, i + 1]
                for r in range(m):
                    last = y2[r] + diff[i + 1, r] * p1
                    lp[c, r] += y[r] * y[r] + last * last
            if d % 2:
                i = d - 1
                for r in range(m):
                    y[r] = 0.0
                for j in range(i + 1):
                    p0 = upper[c, j, i]
                    for r in range(m):
                        y[r] += diff[j, r] * p0
                for r in range(m):
                    lp[c, r] += y[r] * y[r]
            lc = log_const[c]
            for r in range(m):
                lp[c, r] = lc - 0.5 * lp[c, r]
        loglik += _normalize_chunk(lp, m, start, w, has_w, clamp, has_clamp, peak, total)
        for c in range(k):
            weight = 0.0
            for r in range(m):
                v = lp[c, r] * w[start + r] if has_w else lp[c, r]
                wr[r] = v
                weight += v
            nk[c] += weight
            for j in range(d):
                mu = means[c, j]
                s = 0.0
                for r in range(m):
                    e = xt[j, r] - mu
                    diff[j, r] = e
                    t = e * wr[r]
                    wd[j, r] = t
                    s += t
                sums[c, j] += s
            # upper triangle of Σ w r (x − μ)(x − μ)ᵀ, four columns at a time (one load of wd per four products)
            for i in range(d):
                j = i
                while j + 3 < d:
                    s0 = 0.0
                    s1 = 0.0
                    s2 = 0.0
                    s3 = 0.0
                    for r in range(m):
                        a = wd[i, r]
                        s0 += a * diff[j, r]
                        s1 += a * diff[j + 1, r]
                        s2 += a * diff[j + 2, r]
                        s3 += a * diff[j + 3, r]
                    sq[c, i, j] += s0
                    sq[c, i, j + 1] += s1
                    sq[c, i, j + 2] += s2
                    sq[c, i, j + 3] += s3
                    j += 4
                while j < d:
                    s0 = 0.0
                    for r in range(m):
                        s0 += wd[i, r] * diff[j, r]
                    sq[c, i, j] += s0
                    j += 1
    for c in range(k):
        for i in range(d):
            for j in range(i + 1, d):
                sq[c, j, i] = sq[c, i, j]
    return loglik


@_jit
def stats_vector(
    X: np.ndarray,
    w: np.ndarray,
    has_w: bool,
    clamp: np.ndarray,
    has_clamp: bool,
    means: np.ndarray,
    half_prec: np.ndarray,
    log_const: np.ndarray,
    nk: np.ndarray,
    sums: np.ndarray,
    sq: np.ndarray,
    chunk: int,
) -> float:
    """Diag and spherical covariances: ``half_prec`` (k, d) = ½ / σ²."""
    n, d = X.shape
    k = means.shape[0]
    xt = np.empty((d, chunk))
    lp = np.empty((k, chunk))
    wr = np.empty(chunk)
    peak = np.empty(chunk)
    total = np.empty(chunk)
    loglik = 0.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        _transpose_chunk(X, start, m, xt)
        for c in range(k):
            lc = log_const[c]
            for r in range(m):
                lp[c, r] = lc
            for j in range(d):
                mu = means[c, j]
                h = half_prec[c, j]
                for r in range(m):
                    e = xt[j, r] - mu
                    lp[c, r] -= h * (e * e)
        loglik += _normalize_chunk(lp, m, start, w, has_w, clamp, has_clamp, peak, total)
        for c in range(k):
            weight = 0.0
            for r in range(m):
                v = lp[c, r] * w[start + r] if has_w else lp[c, r]
                wr[r] = v
                weight += v
            nk[c] += weight
            for j in range(d):
                mu = means[c, j]
                s1 = 0.0
                s2 = 0.0
                for r in range(m):
                    e = xt[j, r] - mu
                    t = e * wr[r]
                    s1 += t
                    s2 += t * e
                sums[c, j] += s1
                sq[c, j] += s2
    return loglik
