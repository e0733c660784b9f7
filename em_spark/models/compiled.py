"""The Gaussian E-step of one block as fused numba loops (the numpy kernels of :mod:`kernels` are the reference).

:func:`gaussian_stats` computes, in one pass over the rows of a block, what
``GaussianFamily._accumulate`` computes with numpy: responsibilities (log-sum-exp
normalized), the log-likelihood and the statistics nk (k,), sum (k, d), sq (k, d, d) or
(k, d), all around the means the E-step runs under. Where numpy makes several passes
over (k, d, rows) temporaries, these loops keep a chunk of rows (feature-major, so the
innermost loops run along rows and vectorize) in cache and touch each value a few times:

* full and tied: ½‖(x − μ_k) P_k‖² as a triangular product (P is upper triangular), and
  the upper triangle of Σ w r (x − μ_k)(x − μ_k)ᵀ, mirrored at the end;
* diag and spherical (spherical as diag with equal variances): elementwise.

Numerics as the numpy path: float64 throughout (float32 rows, see ``dtype`` in
:class:`~em_spark.engine.arrow_input.InputSpec`, are widened value by value into the float64
chunk), the same log-sum-exp, the same
semi-supervised clamping. The loops are compiled with ``reassoc`` and ``contract`` only
(sums may be reordered into vector lanes and use FMA; no assumption that values are
finite, so a dead component's log weight of −inf works as in numpy), so results agree
with numpy to rounding, not bit for bit. No ``parallel``: one thread, like the one BLAS
thread a Spark task gets.

The switch: environment variable ``EM_SPARK_KERNEL`` = ``numpy`` forces the numpy path
(``compiled``, the default, uses these loops when numba imports). Compilation happens once
per Python process, and is cached on disk when a cache directory is writable (see
:func:`em_spark.models.gaussian_loops.cache_enabled`). The missing-value rows of
:mod:`gaussian_missing`, the k-means initialization's hard assignments and ``score``
keep the numpy path.

The HMM E-step (:func:`hmm_gaussian_stats`, :func:`hmm_categorical_stats`, loops in
:mod:`hmm_loops`) follows the same switch: one fused loop per sequence (forward,
backward, posteriors, start/transition and emission statistics); a block with a sequence
whose scaling underflows goes to the numpy path of :mod:`markov`, which is the reference.
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from typing import Any

import numpy as np

from em_spark.models.kernels import LOG_2PI

__all__ = [
    "KERNEL_ENV",
    "KERNEL_MODES",
    "gaussian_stats",
    "hmm_categorical_stats",
    "hmm_gaussian_stats",
    "use_compiled",
    "use_hmm_compiled",
]

KERNEL_ENV = "EM_SPARK_KERNEL"
KERNEL_MODES = ("compiled", "numpy")

# Rows per chunk: the chunk's (d, rows) panels and (k, rows) log-probabilities stay in L1/L2.
# Measured (2026-12-02, loaded machine, 64..1024 tried): 256 best at d=10/K=5, within noise of
# the best (64) at d=50/K=8; 512 and more fall out of L1/L2 and lose 20-40%.
_CHUNK_ROWS = 256


def use_compiled() -> bool:
    """True unless ``EM_SPARK_KERNEL=numpy`` (read at each call, so tests and executors can set it)."""
    mode = os.environ.get(KERNEL_ENV, "compiled").strip().lower() or "compiled"
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNEL_ENV} must be one of {list(KERNEL_MODES)}, got {mode!r}")
    return mode == "compiled" and _loops() is not None


@cache
def _loops() -> Any:
    """The module of compiled loops, imported on first use (importing numba takes about a second)."""
    try:
        from em_spark.models import gaussian_loops
    except ImportError as error:  # a platform without a numba wheel: stay correct, say why it is slower
        warnings.warn(f"numba is not importable ({error}); the Gaussian E-step uses the numpy kernel", stacklevel=3)
        return None
    return gaussian_loops


def gaussian_stats(
    covariance_type: str,
    X: np.ndarray,
    w: np.ndarray | None,
    clamp: np.ndarray | None,
    means: np.ndarray,
    prec_chol: np.ndarray,
    log_const: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(nk (k,), sum (k, d), sq, loglik) of rows X (n, d) under the mixture, around ``means`` (k, d).

    ``w`` (n,) row weights or None; ``clamp`` (n,) component of a labelled row (>= 0) or
    -1, or None; ``prec_chol`` and ``log_const`` (k,) as in :mod:`gaussian`. ``sq`` is
    (k, d, d) for full and tied, (k, d) for diag and spherical.
    """
    loops = _loops()
    assert loops is not None  # callers check use_compiled() first
    # float32 rows stay float32 (numba compiles a float32 specialization): each value is widened
    # to float64 as a chunk is transposed, so all arithmetic and accumulators are float64.
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    k, d = means.shape
    has_w, has_clamp = w is not None, clamp is not None
    w_arr = np.ascontiguousarray(w, dtype=np.float64) if w is not None else np.empty(0)
    c_arr = np.ascontiguousarray(clamp, dtype=np.int64) if clamp is not None else np.empty(0, dtype=np.int64)
    nk, sums = np.zeros(k), np.zeros((k, d))
    means = np.ascontiguousarray(means, dtype=np.float64)
    log_const = np.ascontiguousarray(log_const, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        upper = np.broadcast_to(prec_chol, (k, d, d)) if covariance_type == "tied" else prec_chol
        upper = np.ascontiguousarray(upper, dtype=np.float64)
        sq = np.zeros((k, d, d))
        loglik = loops.stats_matrix(
            X, w_arr, has_w, c_arr, has_clamp, means, upper, log_const, nk, sums, sq, _CHUNK_ROWS
        )
    else:
        # ½ p², the diagonal precisions (spherical: one per component, for every feature)
        half_prec = 0.5 * np.square(prec_chol if covariance_type == "diag" else prec_chol[:, None] * np.ones(d))
        half_prec = np.ascontiguousarray(half_prec, dtype=np.float64)
        sq = np.zeros((k, d))
        loglik = loops.stats_vector(
            X, w_arr, has_w, c_arr, has_clamp, means, half_prec, log_const, nk, sums, sq, _CHUNK_ROWS
        )
    return nk, sums, sq, float(loglik)


# ---------------------------------------------------------------------------
# The HMM E-step (forward-backward and statistics, fused per sequence; hmm_loops)


@cache
def _hmm_loops() -> Any:
    try:
        from em_spark.models import hmm_loops
    except ImportError as error:
        warnings.warn(f"numba is not importable ({error}); the HMM E-step uses the numpy kernel", stacklevel=3)
        return None
    return hmm_loops


# (start (k,), trans (k, k), loglik, emission statistics by name) of a block, or None
HMMStats = tuple[np.ndarray, np.ndarray, float, dict[str, np.ndarray]] | None


def _sequence_args(lengths: np.ndarray, seq_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    starts = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    w = np.ascontiguousarray(seq_weight, dtype=np.float64) if seq_weight is not None else np.empty(0)
    return starts, w, seq_weight is not None


def hmm_gaussian_stats(
    covariance_type: str,
    X: np.ndarray,
    lengths: np.ndarray,
    seq_weight: np.ndarray | None,
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
) -> HMMStats:
    """The Gaussian HMM statistics of a block (post, sum, sq around ``means``), as ``MarkovChain.e_step``.

    X (n, d) the block's sequences one after the other, ``lengths`` (n_seq,), ``seq_weight``
    (n_seq,) or None. None when a sequence's scaling factors underflow: the numpy path
    (with its log-space fallback) then does the block.
    """
    loops = _hmm_loops()
    assert loops is not None  # callers check use_hmm_compiled() first
    k, d = means.shape
    starts, w, has_w = _sequence_args(lengths, seq_weight)
    X = np.ascontiguousarray(X, dtype=np.float64)
    means = np.ascontiguousarray(means, dtype=np.float64)
    start, trans, post, sums = np.zeros(k), np.zeros((k, k)), np.zeros(k), np.zeros((k, d))
    chain = (np.ascontiguousarray(startprob, dtype=np.float64), np.ascontiguousarray(transmat, dtype=np.float64))
    # tied is full with one factor for every state, spherical diag with one precision for every
    # dimension: the same loops, and the statistics have the full / diag shapes those kernels sum
    if covariance_type == "tied":
        covariance_type, prec_chol = "full", np.broadcast_to(prec_chol, (k, d, d))
    elif covariance_type == "spherical":
        covariance_type, prec_chol = "diag", np.broadcast_to(np.asarray(prec_chol)[:, None], (k, d))
    if covariance_type == "full":
        log_const = np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)).sum(axis=-1) - 0.5 * d * LOG_2PI
        sq = np.zeros((k, d, d))
        loglik, bad = loops.gaussian_full_stats(
            X, starts, w, has_w, *chain, means, np.ascontiguousarray(prec_chol, dtype=np.float64), log_const,
            start, trans, post, sums, sq,
        )  # fmt: skip
        upper = np.triu(sq)
        sq = upper + np.swapaxes(np.triu(sq, 1), 1, 2)
    elif covariance_type == "diag":
        log_const = np.log(prec_chol).sum(axis=1) - 0.5 * d * LOG_2PI
        sq = np.zeros((k, d))
        loglik, bad = loops.gaussian_diag_stats(
            X, starts, w, has_w, *chain, means, np.ascontiguousarray(0.5 * np.square(prec_chol)), log_const,
            start, trans, post, sums, sq,
        )  # fmt: skip
    else:
        raise ValueError(f"no compiled HMM kernel for covariance type {covariance_type!r}")
    if bad >= 0:
        return None
    return start, trans, float(loglik), {"post": post, "sum": sums, "sq": sq}


def hmm_categorical_stats(
    symbols: np.ndarray,
    lengths: np.ndarray,
    seq_weight: np.ndarray | None,
    startprob: np.ndarray,
    transmat: np.ndarray,
    emissionprob: np.ndarray,
) -> HMMStats:
    """The categorical HMM statistics of a block (counts (k, C)); symbols (n,) ints 0..C−1. As above."""
    loops = _hmm_loops()
    assert loops is not None  # callers check use_hmm_compiled() first
    k, c = emissionprob.shape
    starts, w, has_w = _sequence_args(lengths, seq_weight)
    # each symbol's emission probabilities divided by their largest (as the numpy path's frame)
    peak = emissionprob.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        emit_scaled = np.where(peak > 0, emissionprob / np.where(peak > 0, peak, 1.0), 0.0)
        log_peak = np.where(peak > 0, np.log(np.where(peak > 0, peak, 1.0)), 0.0)
    start, trans, counts = np.zeros(k), np.zeros((k, k)), np.zeros((k, c))
    loglik, bad = loops.categorical_stats(
        np.ascontiguousarray(symbols, dtype=np.int64), starts, w, has_w,
        np.ascontiguousarray(startprob, dtype=np.float64), np.ascontiguousarray(transmat, dtype=np.float64),
        np.ascontiguousarray(emit_scaled.T), log_peak, start, trans, counts,
    )  # fmt: skip
    if bad >= 0:
        return None
    return start, trans, float(loglik), {"counts": counts}


def use_hmm_compiled() -> bool:
    """As :func:`use_compiled`, for the HMM loops."""
    return use_compiled() and _hmm_loops() is not None
