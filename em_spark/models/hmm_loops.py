"""The fused loops of the compiled HMM E-step, compiled by numba when this module is imported.

Only :mod:`em_spark.models.compiled` imports this module, lazily: see there for what the
loops compute and why. One loop per sequence of the block (block order, no packing):
the scaled emission probabilities of its T steps, the forward pass, then the backward
pass, which yields the weighted posteriors w γ (T, k) and adds Σ w ξ to ``trans`` as it
goes (no (T, k, k) array), then the start and emission statistics from w γ while it is in
cache. Shapes: frame, alpha, gamma (T_max, k) per-sequence scratch; inv_scale (T_max,)
1 / c_t. ``starts`` (n_seq + 1,) row offsets of the sequences.

Each loop returns (loglik, bad): the Σ_s w_s log p(sequence s) of the block and −1, or
the index of the first sequence whose scaling factors underflowed (or were 0); then the
caller redoes the block with the numpy path (which takes those sequences in log space).
"""

from __future__ import annotations

import numba
import numpy as np

from em_spark.models.gaussian_loops import cache_enabled

__all__ = ["categorical_stats", "gaussian_diag_stats", "gaussian_full_stats"]

_jit = numba.njit(cache=cache_enabled(), fastmath={"reassoc", "contract"}, error_model="numpy", nogil=True)

_TINY = np.finfo(np.float64).tiny
# log p = Σ log c_t is taken as the log of running products of the c_t (one log per few
# hundred steps instead of one per step). Every c_t <= 1 (the frame is divided by its
# peak), so a product is flushed below _FLUSH; a factor below _DIRECT goes in by itself,
# so a product never leaves the normal range.
_FLUSH = 1e-200
_DIRECT = 1e-100


@_jit
def _forward(
    frame: np.ndarray, T: int, startprob: np.ndarray, transmat: np.ndarray, alpha: np.ndarray, inv_scale: np.ndarray
) -> float:
    """Scaled forward pass over frame[:T]; returns Σ log c_t, or NaN if a factor is below the smallest normal."""
    k = frame.shape[1]
    logsum = 0.0
    prod = 1.0
    for t in range(T):
        c = 0.0
        if t == 0:
            for j in range(k):
                a = startprob[j] * frame[0, j]
                alpha[0, j] = a
                c += a
        else:
            for j in range(k):
                a = 0.0
                for i in range(k):
                    a += alpha[t - 1, i] * transmat[i, j]
                a *= frame[t, j]
                alpha[t, j] = a
                c += a
        if not c >= _TINY:
            return np.nan
        inv = 1.0 / c
        for j in range(k):
            alpha[t, j] *= inv
        inv_scale[t] = inv
        if c < _DIRECT:
            logsum += np.log(c)
        else:
            prod *= c
            if prod < _FLUSH:
                logsum += np.log(prod)
                prod = 1.0
    return logsum + np.log(prod)


@_jit
def _backward(
    frame: np.ndarray,
    T: int,
    transmat: np.ndarray,
    alpha: np.ndarray,
    inv_scale: np.ndarray,
    w: float,
    gamma: np.ndarray,
    trans_acc: np.ndarray,
    beta: np.ndarray,
    bb: np.ndarray,
) -> None:
    """β̂_{t−1} = A (b_t ⊙ β̂_t) / c_t; gamma[:T] = w α̂ ⊙ β̂; trans_acc += w Σ_t α̂_{t−1} ⊗ (b_t ⊙ β̂_t / c_t) ⊙ A."""
    k = frame.shape[1]
    for j in range(k):
        beta[j] = 1.0
        gamma[T - 1, j] = w * alpha[T - 1, j]
    for t in range(T - 1, 0, -1):
        for j in range(k):
            bb[j] = frame[t, j] * beta[j] * inv_scale[t]
        for i in range(k):
            wa = w * alpha[t - 1, i]
            s = 0.0
            for j in range(k):
                p = transmat[i, j] * bb[j]
                s += p
                trans_acc[i, j] += wa * p
            beta[i] = s
            gamma[t - 1, i] = wa * s


@_jit
def _chain(
    frame: np.ndarray,
    T: int,
    startprob: np.ndarray,
    transmat: np.ndarray,
    w: float,
    alpha: np.ndarray,
    inv_scale: np.ndarray,
    gamma: np.ndarray,
    start_acc: np.ndarray,
    trans_acc: np.ndarray,
    beta: np.ndarray,
    bb: np.ndarray,
) -> float:
    """Forward-backward of one sequence (frame[:T] filled); returns its Σ log c_t (NaN: underflow)."""
    logc = _forward(frame, T, startprob, transmat, alpha, inv_scale)
    if np.isnan(logc):
        return logc
    _backward(frame, T, transmat, alpha, inv_scale, w, gamma, trans_acc, beta, bb)
    for j in range(frame.shape[1]):
        start_acc[j] += gamma[0, j]
    return logc


@_jit
def _max_length(starts: np.ndarray) -> int:
    longest = 0
    for s in range(starts.size - 1):
        longest = max(longest, starts[s + 1] - starts[s])
    return longest


@_jit
def _frame_peak(lf: np.ndarray, frame: np.ndarray, t: int) -> float:
    """frame[t] = lf − max lf (exponentiated later by _exp_flat); returns the max (0, with frame[t] = −inf,
    if every state has −inf)."""
    k = lf.size
    peak = lf[0]
    for j in range(1, k):
        peak = max(peak, lf[j])
    if not np.isfinite(peak):
        for j in range(k):
            frame[t, j] = -np.inf
        return 0.0
    for j in range(k):
        frame[t, j] = lf[j] - peak
    return peak


# exp by Cody-Waite range reduction and a degree-13 Taylor polynomial (truncation below
# 1e-17 relative on |r| <= ln 2 / 2): plain arithmetic, so the loop over a sequence's T k
# values vectorizes, where numba's scalar libm exp was most of the Gaussian kernel's time.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.4426950408889634
_EXP_FLOOR = -708.0  # below: 0 (numpy gives a subnormal there; the peak's own 1 dwarfs it)


@_jit
def _exp_flat(values: np.ndarray, n: int, bits: np.ndarray) -> None:
    """values[:n] = exp(values[:n]) in place, for values <= 0 (or −inf); ``bits`` int64 scratch (>= n)."""
    for i in range(n):
        x = values[i]
        xc = max(x, _EXP_FLOOR)
        m = np.floor(xc * _INV_LN2 + 0.5)
        r = (xc - m * _LN2_HI) - m * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        bits[i] = (np.int64(m) + 1023) << 52
        values[i] = p if x >= _EXP_FLOOR else 0.0
    two_m = bits[:n].view(np.float64)
    for i in range(n):
        values[i] *= two_m[i]


@_jit
def categorical_stats(
    symbols: np.ndarray,
    starts: np.ndarray,
    seq_w: np.ndarray,
    has_w: bool,
    startprob: np.ndarray,
    transmat: np.ndarray,
    emit_scaled: np.ndarray,
    log_peak: np.ndarray,
    start_acc: np.ndarray,
    trans_acc: np.ndarray,
    counts: np.ndarray,
) -> tuple[float, int]:
    """symbols (n,) int64; emit_scaled (C, k) P(c | state) / max_state P(c | state), log_peak (C,) log of that max."""
    k = startprob.size
    t_max = _max_length(starts)
    frame, alpha, gamma = np.empty((t_max, k)), np.empty((t_max, k)), np.empty((t_max, k))
    inv_scale, beta, bb = np.empty(t_max), np.empty(k), np.empty(k)
    loglik = 0.0
    for s in range(starts.size - 1):
        r0 = starts[s]
        T = starts[s + 1] - r0
        w = seq_w[s] if has_w else 1.0
        peaks = 0.0
        for t in range(T):
            c = symbols[r0 + t]
            peaks += log_peak[c]
            for j in range(k):
                frame[t, j] = emit_scaled[c, j]
        logc = _chain(frame, T, startprob, transmat, w, alpha, inv_scale, gamma, start_acc, trans_acc, beta, bb)
        if np.isnan(logc):
            return loglik, s
        for t in range(T):
            c = symbols[r0 + t]
            for j in range(k):
                counts[j, c] += gamma[t, j]
        if w > 0:
            loglik += w * (logc + peaks)
    return loglik, -1


@_jit
def gaussian_full_stats(
    X: np.ndarray,
    starts: np.ndarray,
    seq_w: np.ndarray,
    has_w: bool,
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    upper: np.ndarray,
    log_const: np.ndarray,
    start_acc: np.ndarray,
    trans_acc: np.ndarray,
    post: np.ndarray,
    sums: np.ndarray,
    sq: np.ndarray,
) -> tuple[float, int]:
    """X (n, d); upper (k, d, d) the precisions' upper Cholesky factors; sq (k, d, d), upper triangle only."""
    k, d = means.shape
    t_max = _max_length(starts)
    frame, alpha, gamma = np.empty((t_max, k)), np.empty((t_max, k)), np.empty((t_max, k))
    inv_scale, beta, bb, lf = np.empty(t_max), np.empty(k), np.empty(k), np.empty(k)
    diff, y = np.empty(d), np.empty(d)
    flat, bits = frame.reshape(t_max * k), np.empty(t_max * k, dtype=np.int64)
    loglik = 0.0
    for s in range(starts.size - 1):
        r0 = starts[s]
        T = starts[s + 1] - r0
        w = seq_w[s] if has_w else 1.0
        peaks = 0.0
        for t in range(T):
            for j in range(k):
                for a in range(d):
                    diff[a] = X[r0 + t, a] - means[j, a]
                half = 0.0
                for c in range(d):  # y = (x − μ_j) P_j, P_j upper triangular
                    v = 0.0
                    for a in range(c + 1):
                        v += diff[a] * upper[j, a, c]
                    half += v * v
                lf[j] = log_const[j] - 0.5 * half
            peaks += _frame_peak(lf, frame, t)
        _exp_flat(flat, T * k, bits)
        logc = _chain(frame, T, startprob, transmat, w, alpha, inv_scale, gamma, start_acc, trans_acc, beta, bb)
        if np.isnan(logc):
            return loglik, s
        for t in range(T):
            for j in range(k):
                g = gamma[t, j]
                post[j] += g
                for a in range(d):
                    diff[a] = X[r0 + t, a] - means[j, a]
                    y[a] = g * diff[a]
                    sums[j, a] += y[a]
                for a in range(d):
                    for b in range(a, d):
                        sq[j, a, b] += y[a] * diff[b]
        if w > 0:
            loglik += w * (logc + peaks)
    return loglik, -1


@_jit
def gaussian_diag_stats(
    X: np.ndarray,
    starts: np.ndarray,
    seq_w: np.ndarray,
    has_w: bool,
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    half_prec: np.ndarray,
    log_const: np.ndarray,
    start_acc: np.ndarray,
    trans_acc: np.ndarray,
    post: np.ndarray,
    sums: np.ndarray,
    sq: np.ndarray,
) -> tuple[float, int]:
    """X (n, d); half_prec (k, d) ½ the diagonal precisions; sq (k, d) weighted squares."""
    k, d = means.shape
    t_max = _max_length(starts)
    frame, alpha, gamma = np.empty((t_max, k)), np.empty((t_max, k)), np.empty((t_max, k))
    inv_scale, beta, bb, lf = np.empty(t_max), np.empty(k), np.empty(k), np.empty(k)
    flat, bits = frame.reshape(t_max * k), np.empty(t_max * k, dtype=np.int64)
    loglik = 0.0
    for s in range(starts.size - 1):
        r0 = starts[s]
        T = starts[s + 1] - r0
        w = seq_w[s] if has_w else 1.0
        peaks = 0.0
        for t in range(T):
            for j in range(k):
                half = 0.0
                for a in range(d):
                    v = X[r0 + t, a] - means[j, a]
                    half += half_prec[j, a] * v * v
                lf[j] = log_const[j] - half
            peaks += _frame_peak(lf, frame, t)
        _exp_flat(flat, T * k, bits)
        logc = _chain(frame, T, startprob, transmat, w, alpha, inv_scale, gamma, start_acc, trans_acc, beta, bb)
        if np.isnan(logc):
            return loglik, s
        for t in range(T):
            for j in range(k):
                g = gamma[t, j]
                post[j] += g
                for a in range(d):
                    v = X[r0 + t, a] - means[j, a]
                    gv = g * v
                    sums[j, a] += gv
                    sq[j, a] += gv * v
        if w > 0:
            loglik += w * (logc + peaks)
    return loglik, -1
