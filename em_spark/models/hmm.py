"""Hidden Markov models: the ``gaussian_hmm`` and ``categorical_hmm`` families.

A block holds whole sequences: ``block.X`` stacks the observations of consecutive
sequences and ``block.lengths`` says how many each has (no ``lengths``: the block is
one sequence, as in hmmlearn). A sequence is never split across blocks, so the
statistics of a data set are the sum of the statistics of its blocks.

Parameters are a plain dict of float64 arrays::

    startprob            (k,)      P(first state)
    transmat             (k, k)    P(next state j | state i), rows sum to 1
    gaussian_hmm:   means (k, d), covariances full (k, d, d) | diag (k, d),
                    precisions_cholesky (same shape; see ``em_spark.models.gaussian``)
    categorical_hmm: emissionprob (k, n_categories), rows sum to 1

Users see them as ``startProb``, ``transMat``, ``means``, ``covariances`` /
``emissionProb`` (:meth:`public_params`, :meth:`params_from_public`).

Sufficient statistics of a block (a :class:`~em_spark.stats.Stats`), with ``w_s`` the
weight of sequence ``s`` (the weight of its first observation; 1 without weights)::

    start   (k,)      Σ_s w_s γ_s0                 posterior of the first state
    trans   (k, k)    Σ_s w_s Σ_t ξ_st             expected transition counts
    post    (k,)      Σ_s w_s Σ_t γ_st             gaussian_hmm: state occupancy
    sum     (k, d)    Σ w γ (x − μ_k)              gaussian_hmm, around the current means
    sq      (k, d, d) Σ w γ (x − μ_k)(x − μ_k)ᵀ     full; (k, d) squares for diag
    counts  (k, C)    Σ w γ [x = c]                categorical_hmm
    loglik  ()        Σ_s w_s log p(sequence s)
    weight  ()        Σ_s w_s                      (the number of sequences without weights)
    count   ()        number of observations

so the engine's "average log-likelihood per sample" is per *sequence*.

The E-step (forward-backward) is scaled and vectorized across the sequences of a block.
The block is cut into groups of whole sequences of about 2 MiB per (k, n) array (so a
pass stays in cache); in each group the sequences are sorted longest first and their
observations laid out time-major ("packed", as PyTorch's PackedSequence), so the
sequences still running at step t are a contiguous run of columns, and those running at
t + 1 are the first of them. Arrays are state-major, (k, n). One Python loop over the
time steps then advances every sequence of the group at once with a (k, k) @ (k, m)
product; the work is one pass over the observations whatever the mix of lengths (no
padding, no masks). Emission log-probabilities are computed for all observations of a
group at once, and each observation's are divided by their largest before the recursion
(that factor goes back into the log-likelihood), so an outlier cannot underflow the
scaled recursion. A sequence whose scaling factor still underflows (or is exactly 0) is
redone in log space; one of probability exactly zero under the model gets
log-likelihood −inf (and the E-step refuses it, with a message).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np

from em_spark.models.base import Block, MStepResult, ModelError, Params, check_k, family_config
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.kernels import KERNELS, LOG_2PI, chunks, ill_defined_covariance, not_positive_definite_components
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = ["GaussianHMMFamily", "CategoricalHMMFamily", "HMM_COVARIANCE_TYPES"]

HMM_COVARIANCE_TYPES = ("full", "diag")

# A state whose expected occupancy falls below this share of all observations has lost
# its mass: its emission parameters are not estimable and it keeps the previous ones.
_DEAD_FRACTION = 1e-10
# Scaling factors below the smallest normal double lose precision: redo in log space.
_TINY = np.finfo(np.float64).tiny
# The E-step runs on groups of whole sequences of about this many bytes per (k, n_rows)
# array, so the forward and backward passes over its half a dozen such arrays stay in
# cache; longer groups make every step a trip to memory, shorter ones pay numpy's per-call
# overhead on fewer columns. Measured on k = 3.
_GROUP_BYTES = 1 << 21
_MIN_GROUP_ROWS = 4096
# Tolerance on the sums of user-given probability vectors (then renormalized).
_SUM_TOL = 1e-6


# ---------------------------------------------------------------------------
# Sequences of a block and their packed (time-major) layout


class _Packing:
    """The sequences of a block, sorted longest first and laid out time-major ("packed").

    Packed column ``offsets[t] + r`` holds time step ``t`` of the sequence of rank ``r``
    (sequence ``order[r]`` of the block). ``n_active[t]`` sequences are longer than ``t``
    and they are ranks ``0 .. n_active[t] - 1``: the sequences running at step t are a
    contiguous run of columns, and those continuing to t + 1 are its first
    ``n_active[t + 1]``. ``perm[p]`` is the block row of packed column p. A subset of the
    sequences packs to the same columns, in the same order, with the others left out.
    """

    def __init__(self, lengths: np.ndarray):
        n_seq = lengths.size
        self.lengths = lengths
        self.n_rows = int(lengths.sum())
        self.order = np.argsort(-lengths, kind="stable")
        self.n_steps = int(lengths.max()) if n_seq else 0
        ending = np.bincount(lengths, minlength=self.n_steps + 1)  # sequences of length exactly L
        # n_active[t] = #{sequences longer than t}, for t = 0 .. n_steps (the last is 0)
        n_active = (n_seq - np.cumsum(ending))[: self.n_steps + 1]
        offsets = np.zeros(self.n_steps + 1, dtype=np.int64)
        np.cumsum(n_active[: self.n_steps], out=offsets[1:])
        self._offsets, self._n_active = offsets.tolist(), n_active.tolist()
        starts = _starts_of(lengths)
        if n_seq and np.all(lengths == lengths[0]):
            # equal lengths (the common case): the transpose of the (n_seq, L) row grid
            self.perm = np.arange(self.n_rows).reshape(n_seq, int(lengths[0])).T.reshape(-1)
        else:
            rank = np.empty(n_seq, dtype=np.int64)
            rank[self.order] = np.arange(n_seq)
            seq_of_row = np.repeat(np.arange(n_seq), lengths)
            time_of_row = np.arange(self.n_rows) - starts[seq_of_row]
            self.perm = np.empty(self.n_rows, dtype=np.int64)
            self.perm[offsets[time_of_row] + rank[seq_of_row]] = np.arange(self.n_rows)

    def steps(self):
        """(t, lo, hi, prev) per time step: packed columns lo:hi, and the first column of step t − 1.

        The ``hi - lo`` sequences of step t are the first ``hi - lo`` of step t − 1.
        """
        off, act = self._offsets, self._n_active
        for t in range(self.n_steps):
            yield t, off[t], off[t] + act[t], off[t - 1] if t else 0

    def ends(self):
        """(t, lo, hi) per time step: the packed columns lo:hi of sequences whose last step is t."""
        off, act = self._offsets, self._n_active
        for t in range(self.n_steps):
            if act[t + 1] < act[t]:
                yield t, off[t] + act[t + 1], off[t] + act[t]

    def pack_rows(self, rows: np.ndarray) -> np.ndarray:
        """Block rows (n_rows, ...) in packed order."""
        return np.take(rows, self.perm, axis=0)

    def unpack_rows(self, packed: np.ndarray) -> np.ndarray:
        """Packed rows (n_rows, ...) back in block order."""
        out = np.empty_like(packed)
        out[self.perm] = packed
        return out

    def per_column(self, by_sequence: np.ndarray) -> np.ndarray:
        """(n_rows,) the value of each packed column's sequence, from (n_seq,) values."""
        ranked = by_sequence[self.order]
        return np.concatenate([ranked[: hi - lo] for _, lo, hi, _ in self.steps()])

    def sum_per_sequence(self, by_column: np.ndarray) -> np.ndarray:
        """(n_seq,) sums over each sequence's packed columns of a (n_rows,) array."""
        ranked = np.zeros(self.lengths.size)
        for _, lo, hi, _ in self.steps():
            ranked[: hi - lo] += by_column[lo:hi]
        out = np.empty_like(ranked)
        out[self.order] = ranked
        return out


def _starts_of(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _block_sequences(block: Block) -> tuple[np.ndarray, np.ndarray | None]:
    """The lengths (n_seq,) of a block's sequences and their weights (n_seq,) (None without weights)."""
    n = block.n_rows
    if block.lengths is None:
        lengths = np.array([n] if n else [], dtype=np.int64)
    else:
        raw = np.asarray(block.lengths)
        if raw.ndim != 1 or (raw.size and not np.all(raw == np.round(raw))):
            raise ModelError("sequence lengths must be a 1-D array of integers")
        lengths = raw.astype(np.int64)
        if np.any(lengths <= 0):
            raise ModelError(
                "every sequence needs at least one observation; got lengths "
                f"{np.unique(lengths[lengths <= 0]).tolist()}"
            )
    seq_weight = None
    if block.weight is not None:
        seq_weight = np.asarray(block.weight, dtype=np.float64)[_starts_of(lengths)]
    return lengths, seq_weight


def _sequence_groups(lengths: np.ndarray, k: int) -> list[tuple[int, int, int, int]]:
    """(first, stop) sequences and (first, stop) rows of consecutive groups of whole sequences.

    A group starts whenever the rows so far cross a multiple of the group size, so each
    holds about ``_GROUP_BYTES / (8 k)`` observations (more if one sequence is longer).
    A block with no sequences is one empty group.
    """
    if lengths.size == 0:
        return [(0, 0, 0, 0)]
    max_rows = max(_MIN_GROUP_ROWS, _GROUP_BYTES // (8 * k))
    ends = np.cumsum(lengths)
    group_of = (ends - lengths) // max_rows
    firsts = np.concatenate([[0], np.flatnonzero(np.diff(group_of)) + 1, [lengths.size]]).tolist()
    row_at = np.concatenate([[0], ends]).tolist()
    return [(s0, s1, row_at[s0], row_at[s1]) for s0, s1 in zip(firsts[:-1], firsts[1:])]


# ---------------------------------------------------------------------------
# Forward-backward and Viterbi over all sequences of a block at once, in packed order.
#
# Everything is state-major: arrays of shape (k, n_rows), so a step's slice is k
# contiguous runs of one value per sequence, the recursion's product is a (k, k) @ (k, m)
# GEMM and the normalizations reduce over the short axis of k rows (numpy is several times
# slower on (m, k) arrays, whose inner runs are only k long).


class _Posterior(NamedTuple):
    gamma: np.ndarray  # (k, n_rows) state posteriors, packed; 0 for impossible sequences
    xi: np.ndarray  # (k, k) Σ_s w_s Σ_t ξ_st
    loglik: np.ndarray  # (n_seq,) log p(sequence) (block order), −inf for probability 0


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(values)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp along an axis; −inf (no warning, no NaN) where every term is −inf."""
    peak = values.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        total = np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))
    return np.squeeze(total + peak, axis=axis)


def _forward_backward(
    packing: _Packing,
    log_frame: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    seq_weight: np.ndarray | None,
) -> _Posterior:
    """Posteriors of every sequence of a block; ``log_frame`` (k, n_rows), packed, is log p(x_t | state).

    Scaled recursion first; sequences whose scaling factors underflowed are redone in log space.
    """
    k, n = log_frame.shape
    if n == 0:
        return _Posterior(np.zeros((k, 0)), np.zeros((k, k)), np.zeros(0))
    # Each observation's emission probabilities divided by their largest: in [0, 1], max 1.
    peak = log_frame.max(axis=0)
    possible = np.isfinite(peak)  # an observation no state can emit has peak −inf
    if not possible.all():
        peak = np.where(possible, peak, 0.0)
    with np.errstate(under="ignore", invalid="ignore"):
        frame = np.exp(log_frame - peak)
    if not possible.all():
        frame[:, ~possible] = 0.0
    result, bad = _scaled_forward_backward(packing, frame, peak, startprob, transmat, seq_weight)
    if result is not None:
        return result
    # Redo the sequences whose scaling factors underflowed in log space; the others as before.
    gamma, loglik = np.empty((k, n)), np.empty(packing.lengths.size)
    xi = np.zeros((k, k))
    for subset, scaled in ((~bad, True), (bad, False)):
        if not subset.any():
            continue
        columns = packing.per_column(subset)
        sub_packing = _Packing(packing.lengths[subset])
        sub_weight = None if seq_weight is None else seq_weight[subset]
        if scaled:
            part, _ = _scaled_forward_backward(
                sub_packing, frame[:, columns], peak[columns], startprob, transmat, sub_weight
            )
        else:
            part = _log_forward_backward(sub_packing, log_frame[:, columns], startprob, transmat, sub_weight)
        gamma[:, columns], loglik[subset] = part.gamma, part.loglik
        xi += part.xi
    return _Posterior(gamma, xi, loglik)


def _scaled_forward_backward(packing, frame, peak, startprob, transmat, seq_weight):
    """Rabiner's scaled recursion; ``frame`` (k, n_rows) packed emission probabilities / peak.

    Returns (posterior, None), or (None, bad (n_seq,)) when some sequences' scaling
    factors underflowed (or were 0): those need the log-space recursion.
    """
    k, n = frame.shape
    transmat_t = np.ascontiguousarray(transmat.T)
    alpha = np.empty((k, n))  # α̂_t: forward probabilities normalized to sum to 1 at each step
    scale = np.empty(n)  # c_t, the normalizers: log p(x_1..T) = Σ log c_t + Σ peak_t
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        for t, lo, hi, prev in packing.steps():
            a = alpha[:, lo:hi]
            if t == 0:
                np.multiply(frame[:, lo:hi], startprob[:, None], out=a)
            else:
                np.matmul(transmat_t, alpha[:, prev : prev + hi - lo], out=a)
                a *= frame[:, lo:hi]
            a /= np.add.reduce(a, axis=0, out=scale[lo:hi])
        # NaN (after an earlier 0), 0 or subnormal factors: that sequence goes to log space
        bad_column = ~(scale >= _TINY)
    if bad_column.any():
        return None, packing.sum_per_sequence(bad_column.astype(np.float64)) > 0

    # Backward: β̂_{t-1} = A (b_t ⊙ β̂_t) / c_t, with β̂ = 1 at the last step of each sequence;
    # Σ_t ξ_t = A ⊙ Σ_t α̂_{t-1} (b_t ⊙ β̂_t / c_t)ᵀ.
    beta = np.empty((k, n))
    for _, lo, hi in packing.ends():
        beta[:, lo:hi] = 1.0
    weighted_alpha = alpha if seq_weight is None else alpha * packing.per_column(seq_weight)
    xi = np.zeros((k, k))
    carried = np.divide(frame, scale)  # b_t / c_t, then ⊙ β̂_t step by step
    with np.errstate(under="ignore"):
        for t, lo, hi, prev in reversed(list(packing.steps())):
            if t == 0:
                break
            bb = carried[:, lo:hi]
            bb *= beta[:, lo:hi]
            np.matmul(transmat, bb, out=beta[:, prev : prev + hi - lo])
            xi += weighted_alpha[:, prev : prev + hi - lo] @ bb.T
        xi *= transmat
        gamma = np.multiply(alpha, beta, out=beta)
    loglik = packing.sum_per_sequence(np.log(scale) + peak)
    return _Posterior(gamma, xi, loglik), None


def _log_forward_backward(packing, log_frame, startprob, transmat, seq_weight) -> _Posterior:
    """The same posteriors in log space (slower; for sequences the scaled recursion cannot take)."""
    k, n = log_frame.shape
    log_start, log_trans = _log(startprob), _log(transmat)
    la = np.empty((k, n))
    for t, lo, hi, prev in packing.steps():
        if t == 0:
            la[:, lo:hi] = log_start[:, None] + log_frame[:, lo:hi]
        else:
            before = la[:, None, prev : prev + hi - lo]  # (from, 1, m)
            la[:, lo:hi] = _logsumexp(before + log_trans[:, :, None], axis=0) + log_frame[:, lo:hi]
    lb = np.empty((k, n))
    for _, lo, hi in packing.ends():
        lb[:, lo:hi] = 0.0
    emitted = np.empty((k, n))  # log b_t + log β_t
    for t, lo, hi, prev in reversed(list(packing.steps())):
        emitted[:, lo:hi] = log_frame[:, lo:hi] + lb[:, lo:hi]
        if t > 0:
            lb[:, prev : prev + hi - lo] = _logsumexp(log_trans[:, :, None] + emitted[None, :, lo:hi], axis=1)
    # log p(sequence) at each sequence's last step, then spread to all its packed columns
    at_end = np.zeros(n)
    for _, lo, hi in packing.ends():
        at_end[lo:hi] = _logsumexp(la[:, lo:hi], axis=0)
    loglik = packing.sum_per_sequence(at_end)
    column_loglik = packing.per_column(loglik)
    possible = np.isfinite(column_loglik)
    safe = np.where(possible, column_loglik, 0.0)
    weight = np.ones(n) if seq_weight is None else packing.per_column(seq_weight)
    weight = np.where(possible, weight, 0.0)
    with np.errstate(under="ignore", invalid="ignore"):
        gamma = np.where(possible, np.exp(la + lb - safe), 0.0)
        xi = np.zeros((k, k))
        for t, lo, hi, prev in packing.steps():
            if t == 0:
                continue
            log_xi = la[:, None, prev : prev + hi - lo] + log_trans[:, :, None] + emitted[None, :, lo:hi]
            xi += np.where(possible[lo:hi], np.exp(log_xi - safe[lo:hi]), 0.0) @ weight[lo:hi]
    return _Posterior(gamma, xi, loglik)


def _viterbi(packing: _Packing, log_frame: np.ndarray, startprob, transmat) -> np.ndarray:
    """(n_rows,) packed most likely state path of every sequence; −1 for impossible sequences."""
    k, n = log_frame.shape
    log_start, log_trans = _log(startprob), _log(transmat)
    delta = np.empty((k, n))
    back = np.empty((k, n), dtype=np.intp)
    for t, lo, hi, prev in packing.steps():
        if t == 0:
            delta[:, lo:hi] = log_start[:, None] + log_frame[:, lo:hi]
            continue
        candidates = delta[:, None, prev : prev + hi - lo] + log_trans[:, :, None]  # (from, to, m)
        best = candidates.argmax(axis=0)  # ties go to the lower state, as hmmlearn
        back[:, lo:hi] = best
        delta[:, lo:hi] = np.take_along_axis(candidates, best[None], axis=0)[0] + log_frame[:, lo:hi]
    path = np.empty(n, dtype=np.int64)
    impossible = np.zeros(n, dtype=bool)
    for _, lo, hi in packing.ends():
        path[lo:hi] = delta[:, lo:hi].argmax(axis=0)
        impossible[lo:hi] = ~np.isfinite(delta[:, lo:hi].max(axis=0))
    for t, lo, hi, prev in reversed(list(packing.steps())):
        if t == 0:
            break
        m = hi - lo  # the sequences of step t, continuing from step t − 1
        path[prev : prev + m] = back[path[lo:hi], np.arange(lo, hi)]
        impossible[prev : prev + m] = impossible[lo:hi]
    path[impossible] = -1
    return path


# ---------------------------------------------------------------------------
# What both families share: the Markov chain




def _checked_distribution(arrays: Mapping[str, Any], name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A user-given probability vector or stack of rows: shape, finite, ≥ 0, sums to 1 (renormalized)."""
    try:
        value = np.array(arrays[name], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"initialModel {name} must be a numeric array: {exc}") from None
    if value.shape != shape:
        raise ModelError(f"initialModel {name} must have shape {shape} for {what}, got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ModelError(f"initialModel {name} must be finite (no NaN or infinity)")
    if np.any(value < 0):
        raise ModelError(f"initialModel {name} must be non-negative (probabilities)")
    sums = value.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > _SUM_TOL):
        if value.ndim == 1:
            raise ModelError(f"initialModel {name} must sum to 1, got sum {float(sums):.8g}")
        bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOL)
        raise ModelError(
            f"initialModel {name} rows must each sum to 1; rows {bad.tolist()} sum to "
            f"{[float(f'{s:.8g}') for s in sums[bad]]}"
        )
    return value / sums[..., None] if value.ndim > 1 else value / sums


def _check_missing(arrays: Mapping[str, Any], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelError(
            f"initialModel is missing {missing}; give {', '.join(names[:-1])} and {names[-1]} "
            f"(got {sorted(arrays)})"
        )


def _chain_m_step(stats: Stats, params: Params, events: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """New startprob and transmat (hmmlearn's M-step without priors); rows with no transitions keep theirs."""
    start = np.asarray(stats["start"], dtype=np.float64)
    startprob = start / start.sum()
    trans = np.asarray(stats["trans"], dtype=np.float64)
    row_sum = trans.sum(axis=1)
    empty = ~(row_sum > 0)
    transmat = trans / np.where(empty, 1.0, row_sum)[:, None]
    for i in np.flatnonzero(empty):
        transmat[i] = params["transmat"][i]
        events.append(
            f"state {int(i)} had no expected transitions out of it (it only occurred at the ends of "
            "sequences, or not at all); kept its previous transMat row"
        )
    return startprob, transmat


def _dead_states(occupancy: np.ndarray) -> np.ndarray:
    total = occupancy.sum()
    return np.flatnonzero(~(occupancy >= _DEAD_FRACTION * total) | ~(occupancy > 0))


def _dead_event(j: int, share: float) -> str:
    return (
        f"state {j} lost its mass (occupancy share {float(f'{share:.3g}')}); kept its previous "
        "emission parameters"
    )


def _require_weight(stats: Stats, what: str) -> None:
    if not float(stats[WEIGHT]) > 0 or not float(np.sum(stats["start"])) > 0:
        raise ModelError(
            "the statistics carry no weight (no sequences, or all sequence weights are 0); "
            f"cannot estimate {what} from no data"
        )


def _stationary(transmat: np.ndarray) -> np.ndarray:
    """A stationary distribution of the chain (least squares; one of them if not unique)."""
    k = transmat.shape[0]
    system = np.vstack([transmat.T - np.eye(k), np.ones((1, k))])
    rhs = np.zeros(k + 1)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.lstsq(system, rhs, rcond=None)[0], 0.0, None)
    return pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)


class _ChainMixin:
    """Methods shared by both HMM families; they need ``k`` and ``_log_frame``."""

    k: int

    def _posteriors(self, block: Block, params: Params):
        """Per group of sequences: (posterior, packing, weights, packed observations, packed log
        emissions, (first sequence, first row, stop row) of the group in the block)."""
        lengths, seq_weight = _block_sequences(block)
        observations = self._observations(block, params)
        for s0, s1, r0, r1 in _sequence_groups(lengths, self.k):
            packing = _Packing(lengths[s0:s1])
            packed = packing.pack_rows(observations[r0:r1])
            log_frame = self._log_frame(packed, params)
            weight = None if seq_weight is None else seq_weight[s0:s1]
            post = _forward_backward(packing, log_frame, params["startprob"], params["transmat"], weight)
            yield post, packing, weight, packed, log_frame, (s0, r0, r1)

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of the block's sequences (see the module docstring for the fields).

        An empty block gives zero statistics; a sequence of probability zero under ``params``
        (possible only with zeros in the parameters) raises a ModelError.
        """
        total: dict[str, np.ndarray] | None = None
        for post, packing, weight, packed, _, (first, _, _) in self._posteriors(block, params):
            stats, wgamma = self._chain_stats(post, packing, weight, first)
            stats.update(self._emission_stats(packed, wgamma, params))
            total = stats if total is None else {name: total[name] + value for name, value in stats.items()}
        return Stats(total)

    def _chain_stats(self, post: _Posterior, packing: _Packing, seq_weight, first: int) -> tuple[dict, np.ndarray]:
        """start/trans/loglik/weight/count, and the (k, n_rows) packed weighted posteriors w γ."""
        impossible = ~np.isfinite(post.loglik)
        if seq_weight is not None:
            impossible &= seq_weight > 0
        if impossible.any():
            raise ModelError(
                f"{int(impossible.sum())} sequence(s) of this block have probability zero under the current "
                f"parameters (for example sequence {first + int(np.flatnonzero(impossible)[0])}): a zero in startProb, "
                "transMat or emissionProb rules them out. Give an initialModel without those zeros"
                + (", or use smoothing > 0" if self.name == "categorical_hmm" else "")
            )
        n_seq = packing.lengths.size
        if seq_weight is None:
            wgamma = post.gamma
            loglik = post.loglik.sum()
            weight = float(n_seq)
        else:
            wgamma = post.gamma * packing.per_column(seq_weight)
            loglik = np.where(seq_weight > 0, post.loglik, 0.0) @ seq_weight
            weight = float(seq_weight.sum())
        return {
            "start": wgamma[:, :n_seq].sum(axis=1),  # the first n_seq packed columns are the t = 0 steps
            "trans": post.xi,
            LOGLIK: np.float64(loglik),
            WEIGHT: np.float64(weight),
            COUNT: np.float64(packing.n_rows),
        }, wgamma

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-sequence log-likelihoods and per-observation state posteriors and Viterbi states.

        Unlike a mixture's score, ``loglik`` is per *sequence*, not per row.

        Returns
        -------
        dict with
            loglik : (n_sequences,) log p(sequence) (unweighted); −inf for a sequence of
                probability zero under the model
            log_resp : (n_rows, k) log P(state at t | whole sequence) (forward-backward
                posteriors; −inf where the posterior underflows, and everywhere for a
                sequence of probability zero)
            viterbi : (n_rows,) int64 most likely state path of each sequence (ties to the
                lower state); −1 for a sequence of probability zero
        """
        n, k = block.n_rows, self.k
        loglik, log_resp, viterbi = [], np.empty((n, k)), np.empty(n, dtype=np.int64)
        for post, packing, _, _, log_frame, (_, r0, r1) in self._posteriors(block, params):
            loglik.append(post.loglik)
            log_resp[r0:r1] = packing.unpack_rows(_log(post.gamma).T)
            path = _viterbi(packing, log_frame, params["startprob"], params["transmat"])
            viterbi[r0:r1] = packing.unpack_rows(path)
        return {"loglik": np.concatenate(loglik), "log_resp": log_resp, "viterbi": viterbi}

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest stationary state probability: a state heading for collapse shows here first."""
        return {"minStateProb": float(np.min(_stationary(params["transmat"])))}

    def _chain_n_parameters(self) -> int:
        return (self.k - 1) + self.k * (self.k - 1)

    def _relabel_chain(self, params: Params, order) -> tuple[np.ndarray, dict]:
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(self.k)):
            raise ModelError(f"relabel needs a permutation of 0..{self.k - 1}, got {order.tolist()}")
        return order, {
            "startprob": params["startprob"][order].copy(),
            "transmat": params["transmat"][np.ix_(order, order)].copy(),
        }


# ---------------------------------------------------------------------------
# Gaussian emissions


@dataclass(frozen=True)
class GaussianHMMFamily(_ChainMixin):
    """Hidden Markov model with ``k`` states and Gaussian emissions, fitted by Baum-Welch.

    Parameters
    ----------
    k : int
        Number of hidden states.
    covariance_type : {"full", "diag"}
    reg_covar : float
        Non-negative value added to every covariance diagonal in the M-step (scikit-learn's
        ``reg_covar``, as the ``gaussian`` family). This is *not* hmmlearn's ``min_covar``:
        hmmlearn uses ``min_covar`` only to floor its initial covariance, and regularizes its
        M-step with a prior (``covars_prior`` added to the scatter before dividing by the
        occupancy, default 1e-2; for diag it also floors the occupancy at 1e-5). With
        ``reg_covar=0`` here and ``covars_prior=0`` there (``means_weight=0`` and flat
        start/transition priors: hmmlearn's defaults) the two M-steps are the same, which
        is how the tests compare them.
    init_mode : {"k-means++", "random"}
        How :meth:`initialize` seeds the emission parameters from a sample (as the
        ``gaussian`` family); startprob and transmat start uniform.
    """

    name: ClassVar[str] = "gaussian_hmm"
    sequential: ClassVar[bool] = True
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = False

    k: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    init_mode: str = "k-means++"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "hidden states"))
        if self.covariance_type not in HMM_COVARIANCE_TYPES:
            raise ModelError(
                f"covarianceType must be one of {list(HMM_COVARIANCE_TYPES)} for a Gaussian HMM, "
                f"got {self.covariance_type!r}"
            )
        # the gaussian family validates reg_covar and init_mode (same messages)
        object.__setattr__(self, "reg_covar", self._mixture.reg_covar)

    @property
    def _mixture(self) -> GaussianFamily:
        """The Gaussian mixture with the same emission settings, for its kernels and k-means++."""
        return GaussianFamily(self.k, self.covariance_type, self.reg_covar, self.init_mode)

    @property
    def _kernel(self):
        return KERNELS[self.covariance_type]

    # -- description ------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters, including the family name."""
        return family_config(self)

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``startProb`` (k,), ``transMat`` (k, k), ``means`` (k, d), ``covariances``."""
        return {
            "startProb": np.array(params["startprob"], dtype=np.float64),
            "transMat": np.array(params["transmat"], dtype=np.float64),
            "means": np.array(params["means"], dtype=np.float64),
            "covariances": np.array(params["covariances"], dtype=np.float64),
        }

    def n_parameters(self, params: Params) -> int:
        """Free parameters (hmmlearn's ``_get_n_fit_scalars_per_param`` summed), for BIC and AIC."""
        d = int(np.shape(params["means"])[1])
        return self._chain_n_parameters() + self.k * d + self._kernel.n_cov_parameters(self.k, d)

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between the states' emission Gaussians of two models.

        States are matched by what they emit: the chain (start and transition probabilities)
        is then relabeled along with them. Entry [i, j] compares state i of ``a`` with state j of ``b``.
        """
        return self._mixture.component_distances(params_a, params_b)

    def relabel(self, params: Params, order) -> Params:
        """Parameters with states reordered: new state j is old state ``order[j]``."""
        order, out = self._relabel_chain(params, order)
        for name in ("means", "covariances", "precisions_cholesky"):
            out[name] = params[name][order].copy()
        return out

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s startProb, transMat, means and covariances.

        startProb and each transMat row must be non-negative and sum to 1 within 1e-6 (then
        renormalized); means and covariances are checked as the ``gaussian`` family does.
        """
        _check_missing(arrays, ("startProb", "transMat", "means", "covariances"))
        k = self.k
        startprob = _checked_distribution(arrays, "startProb", (k,), f"k={k}")
        transmat = _checked_distribution(arrays, "transMat", (k, k), f"k={k}")
        emission = self._mixture.params_from_public(
            {"weights": np.full(k, 1.0 / k), "means": arrays["means"], "covariances": arrays["covariances"]},
            n_features,
        )
        return {
            "startprob": startprob,
            "transmat": transmat,
            "means": emission["means"],
            "covariances": emission["covariances"],
            "precisions_cholesky": emission["precisions_cholesky"],
        }

    # -- E-step -------------------------------------------------------------------

    def _observations(self, block: Block, params: Params) -> np.ndarray:
        """(n_rows, d) float64 observations, checked against the model's d."""
        d = int(np.shape(params["means"])[1])
        if block.n_features != d:
            raise ModelError(f"data has {block.n_features} features but the model has {d}")
        return np.asarray(block.X, dtype=np.float64)

    def _log_frame(self, X: np.ndarray, params: Params) -> np.ndarray:
        """(k, n_rows) log N(x_t | μ_j, Σ_j), with the gaussian family's chunked kernels."""
        d = X.shape[1]
        kernel = self._kernel
        prec_chol = params["precisions_cholesky"]
        log_const = kernel.log_det(prec_chol, d) - 0.5 * d * LOG_2PI
        prepared = kernel.prepare(prec_chol)
        out = np.empty((self.k, X.shape[0]))
        for start, stop, diffs, work in chunks(self._kernel, X, params["means"]):
            half_maha = kernel.half_mahalanobis(diffs, work, prepared)
            np.subtract(log_const[:, None], half_maha, out=out[:, start:stop])
        return out

    def _emission_stats(self, X: np.ndarray, wgamma: np.ndarray, params: Params) -> dict[str, np.ndarray]:
        """post (k,), sum (k, d), sq (k, d, d) | (k, d) of observations X (n, d) with weighted posteriors (k, n)."""
        k, kernel = self.k, self._kernel
        d = X.shape[1]
        sums = np.zeros((k, d))
        sq = np.zeros(kernel.sq_shape(k, d))
        for start, stop, diffs, work in chunks(self._kernel, X, params["means"]):
            kernel.moments(diffs, work, wgamma[:, start:stop], sums, sq)
        return {"post": wgamma.sum(axis=1), "sum": sums, "sq": sq}

    # -- M-step -------------------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """hmmlearn's M-step (no priors) in shifted coordinates, plus ``reg_covar`` on the diagonals.

        A state whose occupancy share fell below 1e-10 keeps its previous means and
        covariances (they are not estimable; keeping them keeps the likelihood monotone), a
        state with no expected transitions out keeps its transMat row; events say so.
        """
        _require_weight(stats, "a Gaussian HMM")
        events: list[str] = []
        startprob, transmat = _chain_m_step(stats, params, events)
        occupancy = np.asarray(stats["post"], dtype=np.float64)
        dead = _dead_states(occupancy)
        nk = np.where(np.isin(np.arange(self.k), dead), 1.0, occupancy)
        delta = np.asarray(stats["sum"]) / nk[:, None]
        means = params["means"] + delta
        covariances = self._kernel.covariance(nk, delta, np.asarray(stats["sq"]), self.reg_covar)
        for j in dead:
            means[j] = params["means"][j]
            covariances[j] = params["covariances"][j]
            events.append(_dead_event(int(j), float(occupancy[j] / occupancy.sum())))
        try:
            prec_chol = self._kernel.precisions_cholesky(covariances)
        except np.linalg.LinAlgError:
            bad = not_positive_definite_components(covariances, self.covariance_type)
            raise ill_defined_covariance("Gaussian HMM", bad, self.covariance_type, unit="state") from None
        return MStepResult(
            {
                "startprob": startprob,
                "transmat": transmat,
                "means": means,
                "covariances": covariances,
                "precisions_cholesky": prec_chol,
            },
            events,
        )

    # -- initialization -------------------------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Initial parameters from a sample of whole sequences held on the driver.

        Emissions: the ``gaussian`` family's initialization on the sample's observations
        (each weighted by its sequence's weight), i.e. k-means++ and Lloyd, or k random
        points; startprob and transmat rows uniform (1/k).
        """
        lengths, seq_weight = _block_sequences(sample)
        weight = None if seq_weight is None else np.repeat(seq_weight, lengths)
        mixture = self._mixture.initialize(Block(np.asarray(sample.X, dtype=np.float64), weight), rng)
        k = self.k
        return {
            "startprob": np.full(k, 1.0 / k),
            "transmat": np.full((k, k), 1.0 / k),
            "means": mixture["means"],
            "covariances": mixture["covariances"],
            "precisions_cholesky": mixture["precisions_cholesky"],
        }


# ---------------------------------------------------------------------------
# Categorical emissions


@dataclass(frozen=True)
class CategoricalHMMFamily(_ChainMixin):
    """Hidden Markov model with ``k`` states emitting integer symbols, fitted by Baum-Welch.

    Observations are one symbol per row: ``X`` has one column of float64 values holding
    integers ``0 .. n_categories - 1``.

    Parameters
    ----------
    k : int
        Number of hidden states.
    n_categories : int or None
        Number of symbols. None: one more than the largest symbol in the initialization
        sample (give it when the sample may miss the largest symbols).
    smoothing : float
        Non-negative pseudo-count added to every emission count in the M-step (additive
        smoothing; a Dirichlet prior of 1 + smoothing). 0, the default, is maximum likelihood
        (hmmlearn's default ``emissionprob_prior=1``); a symbol never seen in a state then has
        probability 0 there. startProb and transMat are never smoothed.
    """

    name: ClassVar[str] = "categorical_hmm"
    sequential: ClassVar[bool] = True
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = False

    k: int
    n_categories: int | None = None
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "hidden states"))
        c = self.n_categories
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
                raise ModelError(f"nCategories must be a positive integer (the number of symbols) or None, got {c!r}")
            object.__setattr__(self, "n_categories", int(c))
        s = self.smoothing
        if (
            isinstance(s, bool)
            or not isinstance(s, (int, float, np.floating, np.integer))
            or not math.isfinite(s)
            or s < 0
        ):
            raise ModelError(f"smoothing must be a finite non-negative number (a pseudo-count), got {s!r}")
        object.__setattr__(self, "smoothing", float(s))

    # -- description ------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters, including the family name."""
        return family_config(self)

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``startProb`` (k,), ``transMat`` (k, k) and ``emissionProb`` (k, n_categories)."""
        return {
            "startProb": np.array(params["startprob"], dtype=np.float64),
            "transMat": np.array(params["transmat"], dtype=np.float64),
            "emissionProb": np.array(params["emissionprob"], dtype=np.float64),
        }

    def n_parameters(self, params: Params) -> int:
        """Free parameters (hmmlearn's ``_get_n_fit_scalars_per_param`` summed), for BIC and AIC."""
        c = int(np.shape(params["emissionprob"])[1])
        return self._chain_n_parameters() + self.k * (c - 1)

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances −log Σ_c sqrt(p_a(c) p_b(c)) between the states'
        emission distributions of two models (0 for identical rows, inf for disjoint support)."""
        coefficient = np.sqrt(params_a["emissionprob"]) @ np.sqrt(params_b["emissionprob"]).T
        with np.errstate(divide="ignore"):
            return -np.log(np.clip(coefficient, 0.0, 1.0))

    def relabel(self, params: Params, order) -> Params:
        """Parameters with states reordered: new state j is old state ``order[j]``."""
        order, out = self._relabel_chain(params, order)
        out["emissionprob"] = params["emissionprob"][order].copy()
        return out

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s startProb, transMat and emissionProb.

        Each must be non-negative and sum to 1 (per row) within 1e-6; they are renormalized.
        emissionProb is (k, n_categories); its width must equal ``n_categories`` when set.
        """
        if int(n_features) != 1:
            raise ModelError(self._one_column_message(int(n_features)))
        _check_missing(arrays, ("startProb", "transMat", "emissionProb"))
        k = self.k
        startprob = _checked_distribution(arrays, "startProb", (k,), f"k={k}")
        transmat = _checked_distribution(arrays, "transMat", (k, k), f"k={k}")
        width = np.shape(arrays["emissionProb"])
        c = self.n_categories if self.n_categories is not None else (width[1] if len(width) == 2 else -1)
        if c < 1:
            raise ModelError(f"initialModel emissionProb must have shape (k, n_categories) = ({k}, C), got {width}")
        emission = _checked_distribution(arrays, "emissionProb", (k, c), f"k={k} and nCategories={c}")
        return {"startprob": startprob, "transmat": transmat, "emissionprob": emission}

    # -- E-step -------------------------------------------------------------------

    @staticmethod
    def _one_column_message(d: int) -> str:
        return (
            f"a categorical HMM observes one integer symbol per row (1 feature), got {d} features; "
            "encode each observation as a single symbol 0..nCategories-1"
        )

    def _symbols(self, X: np.ndarray, n_categories: int | None) -> np.ndarray:
        """(n_rows,) intp symbols from X (n_rows, 1); checked to be integers in range."""
        if X.shape[1] != 1:
            raise ModelError(self._one_column_message(X.shape[1]))
        values = X[:, 0]
        if values.size == 0:
            return np.zeros(0, dtype=np.intp)
        if not np.all(values == np.floor(values)) or values.min() < 0:
            raise ModelError("categorical HMM observations must be non-negative integers (symbols 0..nCategories-1)")
        if n_categories is not None and values.max() >= n_categories:
            raise ModelError(
                f"symbol {int(values.max())} is out of range: the model has nCategories={n_categories} "
                f"(symbols 0..{n_categories - 1}); set nCategories to cover every symbol"
            )
        return values.astype(np.intp)

    def _observations(self, block: Block, params: Params) -> np.ndarray:
        """(n_rows,) intp symbols, checked against the model's number of categories."""
        return self._symbols(np.asarray(block.X, dtype=np.float64), params["emissionprob"].shape[1])

    def _log_frame(self, symbols: np.ndarray, params: Params) -> np.ndarray:
        """(k, n_rows) log P(symbol | state); −inf where the probability is 0."""
        return np.take(_log(params["emissionprob"]), symbols, axis=1)

    def _emission_stats(self, symbols: np.ndarray, wgamma: np.ndarray, params: Params) -> dict[str, np.ndarray]:
        """counts (k, n_categories) of the symbols (n,) with weighted posteriors (k, n)."""
        c = params["emissionprob"].shape[1]
        return {"counts": np.stack([np.bincount(symbols, weights=wgamma[j], minlength=c) for j in range(self.k)])}

    # -- M-step -------------------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """hmmlearn's M-step (emission rows ∝ counts + smoothing).

        A state whose occupancy share fell below 1e-10 keeps its previous emission row; a
        state with no expected transitions out keeps its transMat row; events say so.
        """
        _require_weight(stats, "a categorical HMM")
        events: list[str] = []
        startprob, transmat = _chain_m_step(stats, params, events)
        counts = np.asarray(stats["counts"], dtype=np.float64)
        occupancy = counts.sum(axis=1)
        dead = _dead_states(occupancy)
        smoothed = counts + self.smoothing
        row_sum = smoothed.sum(axis=1)
        emission = smoothed / np.where(row_sum > 0, row_sum, 1.0)[:, None]
        for j in dead:
            emission[j] = params["emissionprob"][j]
            events.append(_dead_event(int(j), float(occupancy[j] / occupancy.sum())))
        return MStepResult({"startprob": startprob, "transmat": transmat, "emissionprob": emission}, events)

    # -- initialization -------------------------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Uniform startprob and transmat; emission rows drawn from a flat Dirichlet.

        ``n_categories`` (when None) is one more than the sample's largest symbol.
        """
        if sample.n_rows == 0:
            raise ModelError("cannot initialize from an empty sample; is the data empty?")
        symbols = self._symbols(np.asarray(sample.X, dtype=np.float64), self.n_categories)
        c = self.n_categories if self.n_categories is not None else int(symbols.max()) + 1
        k = self.k
        return {
            "startprob": np.full(k, 1.0 / k),
            "transmat": np.full((k, k), 1.0 / k),
            "emissionprob": rng.dirichlet(np.ones(c), size=k),
        }
