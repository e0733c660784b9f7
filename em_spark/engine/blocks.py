"""From Arrow record batches to validated numpy blocks, and what the load pass learns.

Pure numpy/pyarrow: runs inside Spark's Python workers during the load pass, and
in tests without a JVM. Nothing here raises on bad rows: problems are counted
into a :class:`LoadSummary` so the driver can raise one clear error before
iteration 1 instead of a stack trace from an executor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import astuple, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from em_spark.models.base import Block

__all__ = [
    "FEATURES_FIELD",
    "WEIGHT_FIELD",
    "LABEL_FIELD",
    "InputSpec",
    "LoadSummary",
    "RowProblems",
    "block_from_arrow",
    "convert_arrow",
    "encode_block",
    "decode_block",
    "summarize_block",
    "target_block_rows",
    "merge_blocks",
]

FEATURES_FIELD = "__em_x"  # array<double> (a row) or array<array<double>> (a sequence)
WEIGHT_FIELD = "__em_w"  # double, the sample weight of a row or sequence (absent: unit weights)
LABEL_FIELD = "__em_y"  # long, a known component (null or negative: unknown)

_MASK64 = (1 << 64) - 1


def target_block_rows(n_features: int, budget_values: int = 1 << 20) -> int:
    """Rows per block: about 8 MB of features, between 1k and 64k rows.

    Large enough that numpy/BLAS dominates the per-block Python cost, small enough
    that the E-step's (rows x components) temporaries stay cache- and memory-friendly.
    """
    return int(min(65536, max(1024, budget_values // max(n_features, 1))))


# ---------------------------------------------------------------------------
# Arrow -> Block
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowProblems:
    """Counts of rows (or sequences) dropped from a block because they cannot be modelled."""

    null_rows: int = 0  # the feature vector (or sequence) is null, or a sequence is empty
    ragged_rows: int = 0  # a feature vector whose length differs from the block's first
    nonfinite_rows: int = 0  # NaN, +-inf or a null entry inside the vector (NaN/null allowed when modelled)
    bad_weight_rows: int = 0  # weight null, negative, NaN or infinite
    bad_label_rows: int = 0  # label >= k (not a component id)

    def __add__(self, other: "RowProblems") -> "RowProblems":
        return RowProblems(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass(frozen=True)
class InputSpec:
    """How the load pass reads rows, as the family's protocol flags ask.

    sequences : each row holds one sequence (a list of feature vectors, or of numbers)
    allow_missing : NaN or null entries inside a vector are kept (as NaN) to be modelled
    k : components, to refuse labels that are not component ids (None: no label column)
    """

    sequences: bool = False
    allow_missing: bool = False
    k: int | None = None


def block_from_arrow(batch: pa.RecordBatch | pa.Table, spec: InputSpec = InputSpec()) -> tuple[Block, RowProblems, int]:
    """Convert the ``FEATURES_FIELD`` (and optional weight and label) columns.

    Returns
    -------
    block : Block holding only the valid rows (or whole valid sequences)
    problems : RowProblems, counts of dropped rows (or sequences)
    n_features : int, length of the first non-null vector (-1 when there is none)
    """
    block, _, problems, d = convert_arrow(batch, spec=spec)
    return block, problems, d


def _vectors(x: pa.Array, expected_features: int | None, allow_missing: bool):
    """The rows of a list<double> array as an (n_good, d) matrix, and why the others failed.

    Returns (X of the good rows, good, null_row, ragged_row, nonfinite_row, d), masks of shape (n,).
    """
    n = len(x)
    lengths = pc.list_value_length(x).to_numpy(zero_copy_only=False)  # NaN where null
    null_row = np.isnan(lengths) if lengths.dtype.kind == "f" else np.zeros(n, bool)
    lengths = np.where(null_row, -1, lengths).astype(np.int64)
    valid_lengths = lengths[~null_row]
    if expected_features is not None:
        d = int(expected_features)
    else:
        d = int(valid_lengths[0]) if valid_lengths.size else -1
    ragged_row = ~null_row & ((lengths != d) | (lengths == 0))

    values = x.flatten()  # the entries of all non-null vectors, in row order
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    # A null entry inside a vector converts to NaN, so one test covers both; when missing
    # values are modelled, NaN and null are kept and only infinities are refused.
    bad_entry = np.isinf(flat) if allow_missing else ~np.isfinite(flat)
    nonfinite_row = np.zeros(n, bool)
    kept_lengths = lengths[~null_row]
    starts = np.concatenate([[0], np.cumsum(kept_lengths)[:-1]]).astype(np.int64)
    if bad_entry.any():
        row_of_entry = np.repeat(np.arange(kept_lengths.size), kept_lengths)
        bad_per_kept = np.bincount(row_of_entry[bad_entry], minlength=kept_lengths.size)
        nonfinite_row[~null_row] = bad_per_kept > 0
        nonfinite_row &= ~ragged_row
    good = ~(null_row | ragged_row | nonfinite_row)
    if d <= 0:
        X = np.empty((0, max(d, 0)))
    elif not (null_row.any() or ragged_row.any()):
        X = flat.reshape(n, d)[good]
    else:
        # Row-wise offsets of the non-null rows, then gather the good ones.
        good_kept = good[~null_row]
        X = flat[starts[good_kept][:, None] + np.arange(d)[None, :]]
    return np.ascontiguousarray(X, dtype=np.float64), good, null_row, ragged_row, nonfinite_row, d


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    column = batch.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _weights(batch, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    if WEIGHT_FIELD not in batch.schema.names:
        return None, np.zeros(n, bool)
    w = _column(batch, WEIGHT_FIELD).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # null -> NaN
    return w, ~(np.isfinite(w) & (w >= 0))


def _labels(batch, n: int, k: int | None) -> tuple[np.ndarray | None, np.ndarray]:
    if LABEL_FIELD not in batch.schema.names:
        return None, np.zeros(n, bool)
    y = _column(batch, LABEL_FIELD).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    y = np.where(y < 0, -1, y)
    return y, (y >= k) if k is not None else np.zeros(n, bool)


def convert_arrow(
    batch: pa.RecordBatch | pa.Table,
    expected_features: int | None = None,
    spec: InputSpec = InputSpec(),
) -> tuple[Block, np.ndarray, RowProblems, int]:
    """Like :func:`block_from_arrow`, also returning the (n,) mask of rows (sequences) kept.

    ``expected_features`` fixes the vector length (when scoring with a fitted model);
    otherwise the first non-null vector sets it.
    """
    if spec.sequences:
        return _convert_sequences(batch, expected_features, spec)
    x = _column(batch, FEATURES_FIELD)
    n = len(x)
    X, good, null_row, ragged_row, nonfinite_row, d = _vectors(x, expected_features, spec.allow_missing)
    weight, bad_weight_row = _weights(batch, n)
    labels, bad_label_row = _labels(batch, n, spec.k)
    vector_ok = good
    good = good & ~bad_weight_row & ~bad_label_row
    if not good[vector_ok].all():
        X = X[good[vector_ok]]
    block = Block(
        X,
        None if weight is None else np.ascontiguousarray(weight[good]),
        labels=None if labels is None else np.ascontiguousarray(labels[good]),
    )
    problems = RowProblems(
        null_rows=int(null_row.sum()),
        ragged_rows=int(ragged_row.sum()),
        nonfinite_rows=int(nonfinite_row.sum()),
        bad_weight_rows=int((bad_weight_row & vector_ok).sum()),
        bad_label_rows=int((bad_label_row & vector_ok & ~bad_weight_row).sum()),
    )
    return block, good, problems, d


def _convert_sequences(batch, expected_features: int | None, spec: InputSpec):
    """One sequence per row: list<list<double>> (vectors) or list<double> (one number per step).

    A sequence with any bad observation is dropped whole (a sequence is never split); the
    counts in RowProblems are of sequences. The block's weight is per observation (each
    sequence's weight repeated), as Block documents.
    """
    seqs = _column(batch, FEATURES_FIELD)
    n = len(seqs)
    seq_len = pc.list_value_length(seqs).to_numpy(zero_copy_only=False)
    null_seq = np.isnan(seq_len) if seq_len.dtype.kind == "f" else np.zeros(n, bool)
    seq_len = np.where(null_seq, 0, seq_len).astype(np.int64)
    observations = seqs.flatten()  # the steps of all non-null sequences, in order
    if pa.types.is_list(observations.type) or pa.types.is_large_list(observations.type):
        X_obs, obs_good, _, obs_ragged, _, d = _vectors(observations, expected_features, spec.allow_missing)
    else:  # one number per step: a 1-feature sequence
        values = observations.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        d = 1 if expected_features is None else int(expected_features)
        obs_ragged = np.full(values.size, d != 1)
        finite = np.isinf(values) if spec.allow_missing else ~np.isfinite(values)
        obs_good = ~finite & ~obs_ragged
        X_obs = values[obs_good].reshape(-1, 1) if d == 1 else np.empty((0, max(d, 0)))
    # Per sequence: any ragged (or null) step, any non-finite step.
    seq_of_obs = np.repeat(np.flatnonzero(~null_seq), seq_len[~null_seq])
    ragged_seq = np.bincount(seq_of_obs[obs_ragged], minlength=n) > 0
    bad_seq = np.bincount(seq_of_obs[~obs_good], minlength=n) > 0
    empty_seq = null_seq | (seq_len == 0)
    nonfinite_seq = bad_seq & ~ragged_seq
    weight, bad_weight_seq = _weights(batch, n)
    shape_ok = ~(empty_seq | bad_seq)
    good = shape_ok & ~bad_weight_seq
    keep_obs = good[seq_of_obs][obs_good]  # good sequences have only good steps
    X = X_obs[keep_obs] if not keep_obs.all() else X_obs
    lengths = seq_len[good]
    block = Block(
        np.ascontiguousarray(X),
        None if weight is None else np.repeat(weight[good], lengths),
        lengths=lengths,
    )
    problems = RowProblems(
        null_rows=int(empty_seq.sum()),
        ragged_rows=int((ragged_seq & ~empty_seq).sum()),
        nonfinite_rows=int((nonfinite_seq & ~empty_seq).sum()),
        bad_weight_rows=int((bad_weight_seq & shape_ok).sum()),
    )
    return block, good, problems, d


# ---------------------------------------------------------------------------
# Block <-> bytes (how blocks travel from the Arrow load pass into the RDD)
# ---------------------------------------------------------------------------

_HEADER = struct.Struct("<qqBq")  # rows, features, flags, sequences
_HAS_WEIGHT, _HAS_LENGTHS, _HAS_LABELS = 1, 2, 4


def encode_block(block: Block) -> bytes:
    """A block as raw little-endian bytes (no pickle): X, then weight, lengths, labels if present."""
    n, d = block.X.shape
    flags = (
        (_HAS_WEIGHT if block.weight is not None else 0)
        | (_HAS_LENGTHS if block.lengths is not None else 0)
        | (_HAS_LABELS if block.labels is not None else 0)
    )
    n_seq = 0 if block.lengths is None else block.lengths.size
    parts = [_HEADER.pack(n, d, flags, n_seq), block.X.astype("<f8", copy=False).tobytes()]
    if block.weight is not None:
        parts.append(block.weight.astype("<f8", copy=False).tobytes())
    if block.lengths is not None:
        parts.append(block.lengths.astype("<i8", copy=False).tobytes())
    if block.labels is not None:
        parts.append(block.labels.astype("<i8", copy=False).tobytes())
    return b"".join(parts)


def decode_block(data: bytes) -> Block:
    n, d, flags, n_seq = _HEADER.unpack_from(data, 0)
    off = _HEADER.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal off
        out = np.frombuffer(data, dtype=dtype, count=count, offset=off).copy()
        off += 8 * count
        return out

    X = take("<f8", n * d).reshape(n, d)
    weight = take("<f8", n) if flags & _HAS_WEIGHT else None
    lengths = take("<i8", n_seq) if flags & _HAS_LENGTHS else None
    labels = take("<i8", n) if flags & _HAS_LABELS else None
    return Block(X, weight, lengths, labels)


def merge_blocks(blocks: list[Block], max_rows: int) -> list[Block]:
    """Concatenate consecutive blocks while the result stays within ``max_rows``."""
    out: list[Block] = []
    pending: list[Block] = []
    pending_rows = 0
    for b in blocks:
        if pending and pending_rows + b.n_rows > max_rows:
            out.append(Block.concat(pending, pending[0].n_features))
            pending, pending_rows = [], 0
        pending.append(b)
        pending_rows += b.n_rows
    if pending:
        out.append(pending[0] if len(pending) == 1 else Block.concat(pending, pending[0].n_features))
    return out


# ---------------------------------------------------------------------------
# The load summary: validation counts, fingerprint, and a bounded sample
# ---------------------------------------------------------------------------


def _splitmix64(h: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64 finalizer); uint64 arithmetic wraps."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _column_multipliers(d: int) -> np.ndarray:
    return np.random.default_rng(0x5EED).integers(1, 2**63, size=d, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_hashes(block: Block) -> np.ndarray:
    """(n_rows,) uint64 hash of each row's exact bits (features, weight and label).

    Depends only on the row's content, so sums of it are independent of order and
    partitioning: that makes both the data fingerprint and the sample reproducible.
    """
    if block.n_rows == 0:
        return np.empty(0, np.uint64)
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(block.X).view(np.uint64)
        h = _splitmix64(bits * _column_multipliers(block.n_features)).sum(axis=1, dtype=np.uint64)
        h = h + np.uint64(block.n_features)
        if block.weight is not None:
            h = h ^ _splitmix64(np.ascontiguousarray(block.weight).view(np.uint64) + _GOLDEN)
        if block.labels is not None:
            h = h ^ _splitmix64(np.ascontiguousarray(block.labels, dtype=np.int64).view(np.uint64) + _GOLDEN * np.uint64(3))
        return _splitmix64(h)


def unit_hashes(block: Block) -> np.ndarray:
    """(n_units,) uint64 hash of each unit: a row, or for a sequence block a whole sequence.

    A sequence's hash mixes each step's row hash with its position, so reordering the
    steps of a sequence changes it but reordering the sequences does not.
    """
    h = row_hashes(block)
    if block.lengths is None or h.size == 0:
        return h
    starts = np.concatenate([[0], np.cumsum(block.lengths)[:-1]])
    step = np.arange(block.n_rows, dtype=np.uint64) - np.repeat(starts, block.lengths).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(h ^ (step * _GOLDEN))
        return _splitmix64(np.add.reduceat(mixed, starts, dtype=np.uint64) + block.lengths.astype(np.uint64))


@dataclass(frozen=True, eq=False)
class _Sample:
    """Sampled units (rows or whole sequences) with their keys, sorted by key."""

    keys: np.ndarray  # (m,)
    lengths: np.ndarray  # (m,) rows per unit (1 for row data)
    X: np.ndarray  # (sum(lengths), d)
    labels: np.ndarray | None  # (sum(lengths),)

    def smallest(self, budget: int) -> "_Sample":
        """The units of smallest key whose rows fit within ``budget`` (at least one unit)."""
        if self.keys.size == 0:
            return self
        unit_rows = bool(np.all(self.lengths == 1))
        if unit_rows and self.keys.size > budget:
            order = np.argpartition(self.keys, budget - 1)[:budget]
            order = order[np.argsort(self.keys[order], kind="stable")]
        else:
            order = np.argsort(self.keys, kind="stable")
        if not unit_rows:
            count = int(np.searchsorted(np.cumsum(self.lengths[order]), budget, side="right"))
            order = order[: max(count, 1)]
            starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
            rows = np.concatenate([np.arange(starts[u], starts[u] + self.lengths[u]) for u in order])
        else:
            rows = order
        return _Sample(
            self.keys[order], self.lengths[order], self.X[rows], None if self.labels is None else self.labels[rows]
        )

    def __add__(self, other: "_Sample") -> "_Sample":
        labels = None
        if self.labels is not None or other.labels is not None:
            labels = np.concatenate([
                s.labels if s.labels is not None else np.full(s.X.shape[0], -1, np.int64) for s in (self, other)
            ])
        return _Sample(
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.lengths, other.lengths]),
            np.concatenate([self.X, other.X]),
            labels,
        )


@dataclass(frozen=True, eq=False)
class LoadSummary:
    """What one pass over the data learns, as a value with ``+`` (like Stats).

    ``rows`` counts units: rows, or sequences for sequence data (``observations`` then
    counts their steps). The sample is a weighted sample without replacement of units
    holding at most ``sample_size`` rows (Efraimidis-Spirakis: keep the units with the
    smallest -log(u)/w, where u is a hash of the unit and the seed). It is bounded
    whatever N is, and it depends on the data and the seed only, never on how the data
    is partitioned: a unit in the global sample is in its own partition's sample too.
    """

    rows: int = 0
    blocks: int = 0
    weight_sum: float = 0.0
    null_rows: int = 0
    ragged_rows: int = 0
    nonfinite_rows: int = 0
    bad_weight_rows: int = 0
    bad_label_rows: int = 0
    n_features: frozenset = field(default_factory=frozenset)  # distinct vector lengths seen
    fingerprint: int = 0  # sum of unit hashes mod 2**64
    sample_size: int = 0
    sequences: bool = False
    observations: int = 0
    labelled_rows: int = 0
    missing_entries: int = 0  # NaN entries kept to be modelled
    sample_units: _Sample | None = None

    def __add__(self, other: "LoadSummary") -> "LoadSummary":
        sample = self.sample_units
        if other.sample_units is not None:
            if sample is None:
                sample = other.sample_units
            elif sample.X.shape[1] == other.sample_units.X.shape[1]:
                sample = (sample + other.sample_units).smallest(max(self.sample_size, other.sample_size))
        return LoadSummary(
            rows=self.rows + other.rows,
            blocks=self.blocks + other.blocks,
            weight_sum=self.weight_sum + other.weight_sum,
            null_rows=self.null_rows + other.null_rows,
            ragged_rows=self.ragged_rows + other.ragged_rows,
            nonfinite_rows=self.nonfinite_rows + other.nonfinite_rows,
            bad_weight_rows=self.bad_weight_rows + other.bad_weight_rows,
            bad_label_rows=self.bad_label_rows + other.bad_label_rows,
            n_features=self.n_features | other.n_features,
            fingerprint=(self.fingerprint + other.fingerprint) & _MASK64,
            sample_size=max(self.sample_size, other.sample_size),
            sequences=self.sequences or other.sequences,
            observations=self.observations + other.observations,
            labelled_rows=self.labelled_rows + other.labelled_rows,
            missing_entries=self.missing_entries + other.missing_entries,
            sample_units=sample,
        )

    @property
    def data_identity(self) -> str:
        """Rows, width, total weight and content hash: differs when the data differs."""
        d = next(iter(self.n_features), 0)
        steps = f";steps={self.observations}" if self.sequences else ""
        return f"rows={self.rows}{steps};d={d};weight={self.weight_sum!r};hash={self.fingerprint:016x}"

    @property
    def sample(self) -> Block:
        """The sampled units with unit weights (the sampling already followed the weights);
        whole sequences (with ``lengths``) for sequence data, and labels when there are any."""
        d = next(iter(self.n_features), 0)
        s = self.sample_units
        if s is None:
            return Block(np.empty((0, d)), lengths=np.empty(0, np.int64) if self.sequences else None)
        labels = None if s.labels is None or not (s.labels >= 0).any() else np.ascontiguousarray(s.labels)
        return Block(np.ascontiguousarray(s.X), lengths=s.lengths.copy() if self.sequences else None, labels=labels)

    def with_problems(self, problems: RowProblems) -> "LoadSummary":
        return replace(
            self,
            null_rows=self.null_rows + problems.null_rows,
            ragged_rows=self.ragged_rows + problems.ragged_rows,
            nonfinite_rows=self.nonfinite_rows + problems.nonfinite_rows,
            bad_weight_rows=self.bad_weight_rows + problems.bad_weight_rows,
            bad_label_rows=self.bad_label_rows + problems.bad_label_rows,
        )


def summarize_block(
    block: Block, sample_size: int, seed: int, problems: RowProblems | None = None, sequences: bool | None = None
) -> LoadSummary:
    """The LoadSummary of one block (plus the problem counts from its conversion).

    ``sequences`` defaults to whether the block has ``lengths``; pass it for an empty block.
    """
    sequences = block.lengths is not None if sequences is None else sequences
    h = unit_hashes(block)
    lengths = block.lengths if block.lengths is not None else np.ones(block.n_rows, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    w = block.weights_or_ones()[starts] if lengths.size else np.empty(0)  # a sequence's weight is its first step's
    n_features = frozenset([block.n_features]) if block.n_rows else frozenset()
    sample = None
    if sample_size > 0 and lengths.size:
        seed_mix = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))[0]
        u = ((_splitmix64(h ^ seed_mix) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        with np.errstate(divide="ignore"):
            keys = -np.log(u) / w  # zero weight -> +inf: never sampled
        eligible = np.isfinite(keys)
        if eligible.all():
            sample = _Sample(keys, lengths, block.X, block.labels)
        else:
            rows = np.repeat(eligible, lengths)
            sample = _Sample(keys[eligible], lengths[eligible], block.X[rows],
                             None if block.labels is None else block.labels[rows])
        sample = sample.smallest(sample_size)
    summary = LoadSummary(
        rows=int(lengths.size),
        blocks=1,
        weight_sum=float(math.fsum(w)) if lengths.size else 0.0,
        n_features=n_features,
        fingerprint=int(h.sum(dtype=np.uint64)) if h.size else 0,
        sample_size=sample_size,
        sequences=sequences,
        observations=block.n_rows,
        labelled_rows=0 if block.labels is None else int((block.labels >= 0).sum()),
        missing_entries=int(np.isnan(block.X).sum()) if block.n_rows else 0,
        sample_units=sample,
    )
    return summary.with_problems(problems) if problems is not None else summary
