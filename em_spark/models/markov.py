"""The Markov chain of the HMM families, which emission models plug into (hmmlearn's ``_BaseHMM`` split).

:class:`MarkovChain` owns everything about the hidden chain: the start and transition
statistics, the scaled forward-backward pass, Viterbi, the chain's M-step, relabeling and
parameter count. An emission model subclasses it and supplies the per-state emissions
through a few hooks (``_observations``, ``_log_frame``, ``_emission_stats``,
``_emission_m_step``, ``_initialize_emissions``, ``_emission_n_parameters``,
``_relabel_emissions``); see :mod:`em_spark.models.hmm` for the Gaussian and categorical ones.

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

With numba (``EM_SPARK_KERNEL`` not ``numpy``) ``e_step`` runs the fused per-sequence loops
of :mod:`em_spark.models.compiled` instead; this numpy path stays the reference and takes
any block those loops hand back (a sequence whose scaling factors underflowed).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from em_spark.models.base import DEAD_FRACTION, Block, Draws, FamilyBase, ModelError, MStepResult, Params, check_count
from em_spark.models.compiled import HMMStats, use_hmm_compiled
from em_spark.models.kernels import log0
from em_spark.models.labels import check_labels
from em_spark.models.priors import check_concentration, dirichlet_log_prior, dirichlet_map
from em_spark.models.reparam import softmax
from em_spark.models.validation import check_handle_missing, check_parameter
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = [
    "MarkovChain",
    "Packing",
    "Posterior",
    "block_sequences",
    "chain_m_step",
    "clamp_states",
    "dead_state_event",
    "dead_states",
    "forward_backward",
    "sequence_groups",
    "stationary",
    "viterbi",
]

# Scaling factors below the smallest normal double lose precision: redo in log space.
_TINY = np.finfo(np.float64).tiny
# The E-step runs on groups of whole sequences of about this many bytes per (k, n_rows)
# array, so the forward and backward passes over its half a dozen such arrays stay in
# cache; longer groups make every step a trip to memory, shorter ones pay numpy's per-call
# overhead on fewer columns. Measured on k = 3.
_GROUP_BYTES = 1 << 21
_MIN_GROUP_ROWS = 4096


# ---------------------------------------------------------------------------
# Sequences of a block and their packed (time-major) layout


class Packing:
    """The sequences of a block, sorted longest first and laid out time-major ("packed").

    Packed column ``offsets[t] + r`` holds time step ``t`` of the sequence of rank ``r``
    (sequence ``order[r]`` of the block). ``n_active[t]`` sequences are longer than ``t``
    and they are ranks ``0 .. n_active[t] - 1``: the sequences running at step t are a
    contiguous run of columns, and those continuing to t + 1 are its first
    ``n_active[t + 1]``. ``perm[p]`` is the block row of packed column p. A subset of the
    sequences packs to the same columns, in the same order, with the others left out.
    """

    def __init__(self, lengths: np.ndarray) -> None:
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

    def steps(self) -> Iterator[tuple[int, int, int, int]]:
        """(t, lo, hi, prev) per time step: packed columns lo:hi, and the first column of step t − 1.

        The ``hi - lo`` sequences of step t are the first ``hi - lo`` of step t − 1.
        """
        off, act = self._offsets, self._n_active
        for t in range(self.n_steps):
            yield t, off[t], off[t] + act[t], off[t - 1] if t else 0

    def ends(self) -> Iterator[tuple[int, int, int]]:
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


def block_sequences(block: Block) -> tuple[np.ndarray, np.ndarray | None]:
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


def sequence_groups(lengths: np.ndarray, k: int) -> list[tuple[int, int, int, int]]:
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
    return [(s0, s1, row_at[s0], row_at[s1]) for s0, s1 in itertools.pairwise(firsts)]


# ---------------------------------------------------------------------------
# Forward-backward and Viterbi over all sequences of a block at once, in packed order.
#
# Everything is state-major: arrays of shape (k, n_rows), so a step's slice is k
# contiguous runs of one value per sequence, the recursion's product is a (k, k) @ (k, m)
# GEMM and the normalizations reduce over the short axis of k rows (numpy is several times
# slower on (m, k) arrays, whose inner runs are only k long).


class Posterior(NamedTuple):
    gamma: np.ndarray  # (k, n_rows) state posteriors, packed; 0 for impossible sequences
    xi: np.ndarray  # (k, k) Σ_s w_s Σ_t ξ_st
    loglik: np.ndarray  # (n_seq,) log p(sequence) (block order), −inf for probability 0


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp along an axis; −inf (no warning, no NaN) where every term is −inf."""
    peak = values.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        total = np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))
    return np.squeeze(total + peak, axis=axis)


def forward_backward(
    packing: Packing,
    log_frame: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    seq_weight: np.ndarray | None,
) -> Posterior:
    """Posteriors of every sequence of a block; ``log_frame`` (k, n_rows), packed, is log p(x_t | state).

    Scaled recursion first; sequences whose scaling factors underflowed are redone in log space.
    """
    k, n = log_frame.shape
    if n == 0:
        return Posterior(np.zeros((k, 0)), np.zeros((k, k)), np.zeros(0))
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
    assert bad is not None  # no posterior: the sequences that underflowed
    # Redo the sequences whose scaling factors underflowed in log space; the others as before.
    gamma, loglik = np.empty((k, n)), np.empty(packing.lengths.size)
    xi = np.zeros((k, k))
    for subset, scaled in ((~bad, True), (bad, False)):
        if not subset.any():
            continue
        columns = packing.per_column(subset)
        sub_packing = Packing(packing.lengths[subset])
        sub_weight = None if seq_weight is None else seq_weight[subset]
        if scaled:
            part, _ = _scaled_forward_backward(
                sub_packing, frame[:, columns], peak[columns], startprob, transmat, sub_weight
            )
            assert part is not None  # the sequences whose factors did not underflow: they do not here either
        else:
            part = _log_forward_backward(sub_packing, log_frame[:, columns], startprob, transmat, sub_weight)
        gamma[:, columns], loglik[subset] = part.gamma, part.loglik
        xi += part.xi
    return Posterior(gamma, xi, loglik)


def _scaled_forward_backward(
    packing: Packing,
    frame: np.ndarray,
    peak: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    seq_weight: np.ndarray | None,
) -> tuple[Posterior | None, np.ndarray | None]:
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
    return Posterior(gamma, xi, loglik), None


def _log_forward_backward(
    packing: Packing,
    log_frame: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    seq_weight: np.ndarray | None,
) -> Posterior:
    """The same posteriors in log space (slower; for sequences the scaled recursion cannot take)."""
    k, n = log_frame.shape
    log_start, log_trans = log0(startprob), log0(transmat)
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
    return Posterior(gamma, xi, loglik)


def viterbi(packing: Packing, log_frame: np.ndarray, startprob: np.ndarray, transmat: np.ndarray) -> np.ndarray:
    """(n_rows,) packed most likely state path of every sequence; −1 for impossible sequences."""
    k, n = log_frame.shape
    log_start, log_trans = log0(startprob), log0(transmat)
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
# The chain's M-step, and the base class of the HMM families


def chain_m_step(
    stats: Stats, params: Params, events: list[str], startprob_prior: float = 1.0, transmat_prior: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """New startprob and transmat: hmmlearn's M-step, with its Dirichlet priors (flat at 1: maximum
    likelihood); rows with no transitions keep theirs."""
    if startprob_prior != 1.0 or transmat_prior != 1.0:
        return (
            dirichlet_map(stats["start"], startprob_prior, params["startprob"]),
            dirichlet_map(stats["trans"], transmat_prior, params["transmat"]),
        )
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


def clamp_states(log_frame: np.ndarray, labels: np.ndarray) -> None:
    """Known states: a step labelled j (``labels`` (n,) >= 0, packed) can only be in state j, so
    every other state's log emission there becomes −inf (in place; −1 leaves a step free). The
    forward-backward then sums only over paths through the known states, as a labelled row of a
    mixture keeps only its component."""
    known = np.flatnonzero(labels >= 0)
    if known.size:
        keep = log_frame[labels[known], known]
        log_frame[:, known] = -np.inf
        log_frame[labels[known], known] = keep


def dead_states(occupancy: np.ndarray) -> np.ndarray:
    total = occupancy.sum()
    return np.flatnonzero(~(occupancy >= DEAD_FRACTION * total) | ~(occupancy > 0))


def dead_state_event(j: int, share: float) -> str:
    return f"state {j} lost its mass (occupancy share {float(f'{share:.3g}')}); kept its previous emission parameters"


def stationary(transmat: np.ndarray) -> np.ndarray:
    """A stationary distribution of the chain (least squares; one of them if not unique)."""
    k = transmat.shape[0]
    system = np.vstack([transmat.T - np.eye(k), np.ones((1, k))])
    rhs = np.zeros(k + 1)
    rhs[-1] = 1.0
    pi = np.clip(np.linalg.lstsq(system, rhs, rcond=None)[0], 0.0, None)
    return pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)


class MarkovChain(FamilyBase, ABC):
    """Base of the HMM families: the chain, with the emissions left to the subclass.

    The chain's parameters are ``startprob`` (k,) and ``transmat`` (k, k); its statistics
    ``start`` (k,) and ``trans`` (k, k) plus ``loglik``, ``weight`` and ``count``. A
    subclass (a frozen dataclass with ``k``) implements the emission hooks below; the
    protocol methods ``e_step``, ``m_step``, ``score``, ``initialize``, ``relabel``,
    ``n_parameters``, ``component_weights`` and ``progress`` are the chain's.
    """

    k: int
    startprob_prior: float  # Dirichlet concentrations of startProb and of each transMat row (1: flat)
    transmat_prior: float
    handle_missing: str  # "error" or "model": NaN steps (or entries) marginalized in the forward-backward
    sequential: ClassVar[bool] = True
    #: a label per step (``Block.labels``, -1 unknown) clamps that step's state in the E-step
    supports_labels: ClassVar[bool] = True
    #: what the model is called in the "no weight" error ("a Gaussian HMM")
    _what: ClassVar[str] = "an HMM"
    #: advice appended to the "probability zero" error of the E-step
    _impossible_hint: ClassVar[str] = ""

    # -- emission hooks ---------------------------------------------------------

    @abstractmethod
    def _observations(self, block: Block, params: Params) -> np.ndarray:
        """The block's observations (n_rows, ...), checked against the emission parameters."""

    @abstractmethod
    def _log_frame(self, observations: np.ndarray, params: Params) -> np.ndarray:
        """(k, n_rows) log p(x_t | state) of (packed) observations."""

    @abstractmethod
    def _emission_stats(self, observations: np.ndarray, wgamma: np.ndarray, params: Params) -> dict[str, np.ndarray]:
        """The emission statistics of (packed) observations with weighted posteriors w γ (k, n_rows)."""

    @abstractmethod
    def _emission_m_step(self, stats: Stats, params: Params, events: list[str]) -> dict[str, np.ndarray]:
        """New emission parameters from the summed statistics; appends to ``events`` what it repaired."""

    @abstractmethod
    def _initialize_emissions(self, sample: Block, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Initial emission parameters from a sample of whole sequences."""

    @abstractmethod
    def _emission_n_parameters(self, params: Params) -> int:
        """Free emission parameters."""

    @abstractmethod
    def _relabel_emissions(self, params: Params, order: np.ndarray) -> dict[str, np.ndarray]:
        """The emission parameters with states reordered (``order`` a checked permutation)."""

    @abstractmethod
    def _emissions_to_free(self, params: Params) -> dict[str, np.ndarray]:
        """The emission parameters in unconstrained coordinates (see ``to_unconstrained``)."""

    @abstractmethod
    def _emissions_from_free(self, free: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The emission parameters from :meth:`_emissions_to_free` coordinates (ModelError if unusable)."""

    @abstractmethod
    def _draw_emissions(self, params: Params, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n_steps, d) one observation drawn from each step's state (n_steps,)."""

    def _compiled_stats(
        self, observations: np.ndarray, lengths: np.ndarray, seq_weight: np.ndarray | None, params: Params
    ) -> HMMStats:
        """(start, trans, loglik, emission statistics) by the compiled loops, or None to use the numpy path."""
        return None

    @property
    def models_missing(self) -> bool:
        """NaN observations (a whole step, or for Gaussian emissions some of its features) are
        missing at random: the forward-backward marginalizes them and the step keeps its place."""
        return self.handle_missing == "model"

    def _refuse_missing(self, n_missing_rows: int, n_rows: int) -> None:
        """The error for NaN observations when they are not modelled (a no-op for none)."""
        if n_missing_rows and not self.models_missing:
            raise ModelError(
                f"the data holds missing observations (NaN) in {n_missing_rows} of its {n_rows} steps; clean the "
                'sequences (drop or impute those steps) or pass handleMissing="model" to marginalize them in the '
                "forward-backward (missing at random; the steps keep their place in time)"
            )

    # -- unconstrained coordinates (accelerated EM) -------------------------------------

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """Log start probabilities (k,), log transition rows (k, k), then the emissions'."""
        return {
            "log_startprob": log0(params["startprob"]),
            "log_transmat": log0(params["transmat"]),
            **self._emissions_to_free(params),
        }

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """startprob and transmat rows by softmax, then the emissions'."""
        return {
            "startprob": softmax(free["log_startprob"]),
            "transmat": softmax(free["log_transmat"], axis=1),
            **self._emissions_from_free(free),
        }

    # -- the chain ------------------------------------------------------------------

    def _posteriors(
        self, block: Block, params: Params
    ) -> Iterator[tuple[Posterior, Packing, np.ndarray | None, np.ndarray, np.ndarray, tuple[int, int, int]]]:
        """Per group of sequences: (posterior, packing, weights, packed observations, packed log
        emissions, (first sequence, first row, stop row) of the group in the block)."""
        lengths, seq_weight = block_sequences(block)
        observations = self._observations(block, params)
        labels = check_labels(block.labels, self.k)
        for s0, s1, r0, r1 in sequence_groups(lengths, self.k):
            packing = Packing(lengths[s0:s1])
            packed = packing.pack_rows(observations[r0:r1])
            log_frame = self._log_frame(packed, params)
            if labels is not None:
                clamp_states(log_frame, packing.pack_rows(labels[r0:r1]))
            weight = None if seq_weight is None else seq_weight[s0:s1]
            post = forward_backward(packing, log_frame, params["startprob"], params["transmat"], weight)
            yield post, packing, weight, packed, log_frame, (s0, r0, r1)

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of the block's sequences (see the module docstring for the fields).

        An empty block gives zero statistics; a sequence of probability zero under ``params``
        (possible only with zeros in the parameters) raises a ModelError.
        """
        if block.n_rows and use_hmm_compiled() and check_labels(block.labels, self.k) is None:
            # the fused per-sequence loops (models/compiled.py); None: a sequence underflowed
            # (or has missing steps), and the numpy path below (the reference) takes it
            lengths, seq_weight = block_sequences(block)
            fused = self._compiled_stats(self._observations(block, params), lengths, seq_weight, params)
            if fused is not None:
                start, trans, loglik, emission = fused
                total_weight = float(lengths.size) if seq_weight is None else float(seq_weight.sum())
                return Stats(
                    {
                        "start": start,
                        "trans": trans,
                        LOGLIK: np.float64(loglik),
                        WEIGHT: np.float64(total_weight),
                        COUNT: np.float64(block.n_rows),
                        **emission,
                    }
                )
        total: dict[str, np.ndarray] | None = None
        for post, packing, weight, packed, _, (first, _, _) in self._posteriors(block, params):
            stats, wgamma = self._chain_stats(post, packing, weight, first)
            stats.update(self._emission_stats(packed, wgamma, params))
            total = stats if total is None else {name: total[name] + value for name, value in stats.items()}
        assert total is not None  # sequence_groups gives an empty block one (empty) group
        return Stats(total)

    def _chain_stats(
        self, post: Posterior, packing: Packing, seq_weight: np.ndarray | None, first: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """start/trans/loglik/weight/count, and the (k, n_rows) packed weighted posteriors w γ."""
        impossible = ~np.isfinite(post.loglik)
        if seq_weight is not None:
            impossible &= seq_weight > 0
        if impossible.any():
            raise ModelError(
                f"{int(impossible.sum())} sequence(s) of this block have probability zero under the current "
                f"parameters (for example sequence {first + int(np.flatnonzero(impossible)[0])}): a zero in startProb, "
                "transMat or emissionProb rules them out (or a known state in labelCol that the chain cannot be "
                "in there). Give an initialModel without those zeros" + self._impossible_hint
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
        loglik, log_resp, paths = [], np.empty((n, k)), np.empty(n, dtype=np.int64)
        for post, packing, _, _, log_frame, (_, r0, r1) in self._posteriors(block, params):
            loglik.append(post.loglik)
            log_resp[r0:r1] = packing.unpack_rows(log0(post.gamma).T)
            path = viterbi(packing, log_frame, params["startprob"], params["transmat"])
            paths[r0:r1] = packing.unpack_rows(path)
        return {"loglik": np.concatenate(loglik), "log_resp": log_resp, "viterbi": paths}

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest stationary state probability: a state heading for collapse shows here first.
        With a prior, ``logPrior`` too: EM then raises avgLogLik + logPrior / sequences (the MAP
        objective), and avgLogLik alone may fall."""
        out = {"minStateProb": float(np.min(stationary(params["transmat"])))}
        prior = self.log_prior(params)
        if prior != 0.0:
            out["logPrior"] = prior
        return out

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """hmmlearn's M-step (with its priors when given): the chain's, then the emissions'.

        A state with no expected transitions out keeps its transMat row; the emission model
        says what it does with a state that lost its mass; events say so.
        """
        if not float(stats[WEIGHT]) > 0 or not float(np.sum(stats["start"])) > 0:
            raise self._no_weight(self._what, "sequences")
        events: list[str] = []
        startprob, transmat = chain_m_step(stats, params, events, self.startprob_prior, self.transmat_prior)
        emissions = self._emission_m_step(stats, params, events)
        return MStepResult({"startprob": startprob, "transmat": transmat, **emissions}, events)

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """The emission model's initial emissions; startprob and transmat rows uniform (1/k)."""
        emissions = self._initialize_emissions(sample, rng)
        k = self.k
        return {"startprob": np.full(k, 1.0 / k), "transmat": np.full((k, k), 1.0 / k), **emissions}

    def draw(
        self, params: Params, n: int, rng: np.random.Generator, length: int | None = None, trials: Any = None
    ) -> Draws:
        """``n`` sequences of ``length`` steps: each state path from startprob and transmat (one
        uniform per step, inverse CDF, all sequences at once), then each step's observation from
        its state (the emission model's :meth:`_draw_emissions`)."""
        n = check_count(n, "n (the number of sequences to draw)")
        if length is None:
            raise ModelError("an HMM draws whole sequences: pass length= (the number of steps of each)")
        length = check_count(length, "length (the steps of each sequence)")
        if length < 1:
            raise ModelError(f"length (the steps of each sequence) must be at least 1, got {length}")
        self._no_trials(trials, "an HMM")
        start = np.cumsum(np.asarray(params["startprob"], dtype=np.float64))
        trans = np.cumsum(np.asarray(params["transmat"], dtype=np.float64), axis=1)
        uniform = rng.random((n, length))
        paths = np.empty((n, length), dtype=np.int64)
        last = self.k - 1  # rounding may leave a cumulative sum a hair below 1
        paths[:, 0] = np.minimum((uniform[:, 0, None] >= start).sum(axis=1), last)
        for t in range(1, length):
            paths[:, t] = np.minimum((uniform[:, t, None] >= trans[paths[:, t - 1]]).sum(axis=1), last)
        states = paths.reshape(-1)
        return Draws(self._draw_emissions(params, states, rng), states, np.full(n, length, dtype=np.int64))

    def _check_chain_settings(self) -> None:
        """Validate (and make floats of) the chain's Dirichlet concentrations, and ``handle_missing``;
        subclasses call it."""
        check_handle_missing(self.handle_missing)
        object.__setattr__(self, "startprob_prior", check_concentration(self.startprob_prior, "startProbPrior"))
        object.__setattr__(self, "transmat_prior", check_concentration(self.transmat_prior, "transMatPrior"))

    def log_prior(self, params: Params) -> float:
        """The chain's Dirichlet log priors plus the emission model's (0 for flat priors: maximum likelihood)."""
        return (
            dirichlet_log_prior(params["startprob"], self.startprob_prior)
            + dirichlet_log_prior(params["transmat"], self.transmat_prior)
            + self._emission_log_prior(params)
        )

    def _emission_log_prior(self, params: Params) -> float:
        """The emission parameters' log prior (0: maximum likelihood)."""
        return 0.0

    def n_parameters(self, params: Params) -> int:
        """Free parameters (hmmlearn's ``_get_n_fit_scalars_per_param`` summed), for BIC and AIC."""
        return (self.k - 1) + self.k * (self.k - 1) + self._emission_n_parameters(params)

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        """Parameters with states reordered: new state j is old state ``order[j]``."""
        order = self._permutation(order)
        out = {
            "startprob": params["startprob"][order].copy(),
            "transmat": params["transmat"][np.ix_(order, order)].copy(),
        }
        out.update(self._relabel_emissions(params, order))
        return out

    def relabel_stats(self, stats: Stats, order: np.ndarray) -> Stats:
        """Statistics with states reordered as :meth:`relabel` does: ``trans`` along both axes,
        every other per-state array along its first."""
        order = self._permutation(order)
        moved = FamilyBase.relabel_stats(self, stats, order)
        return Stats({**moved, "trans": np.asarray(stats["trans"])[np.ix_(order, order)]})

    def _chain_from_public(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """startprob and transmat from an ``initialModel``'s startProb and transMat: non-negative,
        summing to 1 (per row) within 1e-6, then renormalized."""
        what = f"k={self.k}"
        return {
            "startprob": check_parameter(
                arrays["startProb"], "startProb", shape=(self.k,), what=what, min_value=0.0, simplex=True
            ),
            "transmat": check_parameter(
                arrays["transMat"], "transMat", shape=(self.k, self.k), what=what, min_value=0.0, simplex=True
            ),
        }

    component_weights_name: ClassVar[str] = "startProb"

    def component_weights(self, params: Params) -> np.ndarray:
        """(k,) the start probabilities: what a state's share is reported as."""
        return params["startprob"]
