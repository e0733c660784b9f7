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

FEATURES_FIELD = "__em_x"  # array<double>, the features of a row
WEIGHT_FIELD = "__em_w"  # double, the sample weight of a row (absent: unit weights)

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
    """Counts of rows dropped from a block because they cannot be modelled."""

    null_rows: int = 0  # the feature vector itself is null
    ragged_rows: int = 0  # a feature vector whose length differs from the block's first
    nonfinite_rows: int = 0  # NaN, +-inf or a null entry inside the vector
    bad_weight_rows: int = 0  # weight null, negative, NaN or infinite

    def __add__(self, other: "RowProblems") -> "RowProblems":
        return RowProblems(*(a + b for a, b in zip(astuple(self), astuple(other))))


def block_from_arrow(batch: pa.RecordBatch | pa.Table) -> tuple[Block, RowProblems, int]:
    """Convert the ``FEATURES_FIELD`` (and optional ``WEIGHT_FIELD``) columns.

    Returns
    -------
    block : Block holding only the valid rows
    problems : RowProblems, counts of dropped rows
    n_features : int, length of the first non-null vector (-1 when there is none)
    """
    block, _, problems, d = convert_arrow(batch)
    return block, problems, d


def convert_arrow(
    batch: pa.RecordBatch | pa.Table, expected_features: int | None = None
) -> tuple[Block, np.ndarray, RowProblems, int]:
    """Like :func:`block_from_arrow`, also returning the (n,) mask of rows kept.

    ``expected_features`` fixes the vector length (when scoring with a fitted model);
    otherwise the first non-null vector sets it.
    """
    x = batch.column(FEATURES_FIELD)
    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks()
    n = len(x)
    has_weight = WEIGHT_FIELD in batch.schema.names

    lengths = pc.list_value_length(x).to_numpy(zero_copy_only=False)  # NaN where null
    null_row = np.isnan(lengths) if lengths.dtype.kind == "f" else np.zeros(n, bool)
    lengths = np.where(null_row, -1, lengths).astype(np.int64)
    valid_lengths = lengths[~null_row]
    if expected_features is not None:
        d = int(expected_features)
    else:
        d = int(valid_lengths[0]) if valid_lengths.size else -1
    ragged_row = ~null_row & (lengths != d)

    values = x.flatten()  # the entries of all non-null vectors, in row order
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    ragged_row |= ~null_row & (lengths == 0)
    # A null entry inside a vector converts to NaN, so one finiteness test covers both.
    nonfinite_row = np.zeros(n, bool)
    bad_entry = ~np.isfinite(flat)
    kept_lengths = lengths[~null_row]
    starts = np.concatenate([[0], np.cumsum(kept_lengths)[:-1]]).astype(np.int64)
    if bad_entry.any():
        row_of_entry = np.repeat(np.arange(kept_lengths.size), kept_lengths)
        bad_per_kept = np.bincount(row_of_entry[bad_entry], minlength=kept_lengths.size)
        nonfinite_row[~null_row] = bad_per_kept > 0
        nonfinite_row &= ~ragged_row

    bad_weight_row = np.zeros(n, bool)
    weight = None
    if has_weight:
        w = batch.column(WEIGHT_FIELD)
        w = w.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # null -> NaN
        bad_weight_row = ~(np.isfinite(w) & (w >= 0))
        weight = w

    good = ~(null_row | ragged_row | nonfinite_row | bad_weight_row)
    if d <= 0:
        X = np.empty((0, max(d, 0)))
    elif not (null_row.any() or ragged_row.any()):
        X = flat.reshape(n, d)[good]
    else:
        # Rebuild row-wise offsets for the non-null rows, then gather the good ones.
        row_of_kept = np.flatnonzero(~null_row)
        good_kept = good[row_of_kept]
        idx = starts[good_kept][:, None] + np.arange(d)[None, :]
        X = flat[idx]
    X = np.ascontiguousarray(X, dtype=np.float64)
    block = Block(X, None if weight is None else np.ascontiguousarray(weight[good]))
    problems = RowProblems(
        null_rows=int(null_row.sum()),
        ragged_rows=int(ragged_row.sum()),
        nonfinite_rows=int(nonfinite_row.sum()),
        bad_weight_rows=int((bad_weight_row & ~(null_row | ragged_row | nonfinite_row)).sum()),
    )
    return block, good, problems, d


# ---------------------------------------------------------------------------
# Block <-> bytes (how blocks travel from the Arrow load pass into the RDD)
# ---------------------------------------------------------------------------

_HEADER = struct.Struct("<qqB")  # rows, features, has_weight


def encode_block(block: Block) -> bytes:
    """A block as raw little-endian bytes (no pickle)."""
    n, d = block.X.shape
    parts = [_HEADER.pack(n, d, block.weight is not None), block.X.astype("<f8", copy=False).tobytes()]
    if block.weight is not None:
        parts.append(block.weight.astype("<f8", copy=False).tobytes())
    return b"".join(parts)


def decode_block(data: bytes) -> Block:
    n, d, has_weight = _HEADER.unpack_from(data, 0)
    off = _HEADER.size
    X = np.frombuffer(data, dtype="<f8", count=n * d, offset=off).reshape(n, d).copy()
    weight = None
    if has_weight:
        weight = np.frombuffer(data, dtype="<f8", count=n, offset=off + 8 * n * d).copy()
    return Block(X, weight)


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


def row_hashes(block: Block) -> np.ndarray:
    """(n_rows,) uint64 hash of each row's exact bits (features and weight).

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
            h = h ^ _splitmix64(np.ascontiguousarray(block.weight).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        return _splitmix64(h)


@dataclass(frozen=True, eq=False)
class LoadSummary:
    """What one pass over the data learns, as a value with ``+`` (like Stats).

    The sample is a weighted sample without replacement of at most ``sample_size``
    rows (Efraimidis-Spirakis: keep the rows with the smallest -log(u)/w, where u is a
    hash of the row and the seed). It is bounded whatever N is, and it depends on the
    data and the seed only, never on how the data is partitioned.
    """

    rows: int = 0
    blocks: int = 0
    weight_sum: float = 0.0
    null_rows: int = 0
    ragged_rows: int = 0
    nonfinite_rows: int = 0
    bad_weight_rows: int = 0
    n_features: frozenset = field(default_factory=frozenset)  # distinct vector lengths seen
    fingerprint: int = 0  # sum of row hashes mod 2**64
    sample_size: int = 0
    sample_keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    sample_X: np.ndarray | None = None

    def __add__(self, other: "LoadSummary") -> "LoadSummary":
        keys, X = self.sample_keys, self.sample_X
        if other.sample_X is not None:
            if X is None:
                keys, X = other.sample_keys, other.sample_X
            elif X.shape[1] == other.sample_X.shape[1]:
                keys, X = _smallest(
                    np.concatenate([keys, other.sample_keys]),
                    np.concatenate([X, other.sample_X]),
                    max(self.sample_size, other.sample_size),
                )
        return LoadSummary(
            rows=self.rows + other.rows,
            blocks=self.blocks + other.blocks,
            weight_sum=self.weight_sum + other.weight_sum,
            null_rows=self.null_rows + other.null_rows,
            ragged_rows=self.ragged_rows + other.ragged_rows,
            nonfinite_rows=self.nonfinite_rows + other.nonfinite_rows,
            bad_weight_rows=self.bad_weight_rows + other.bad_weight_rows,
            n_features=self.n_features | other.n_features,
            fingerprint=(self.fingerprint + other.fingerprint) & _MASK64,
            sample_size=max(self.sample_size, other.sample_size),
            sample_keys=keys,
            sample_X=X,
        )

    @property
    def data_identity(self) -> str:
        """Rows, width, total weight and content hash: differs when the data differs."""
        d = next(iter(self.n_features), 0)
        return f"rows={self.rows};d={d};weight={self.weight_sum!r};hash={self.fingerprint:016x}"

    @property
    def sample(self) -> Block:
        """The sampled rows, with unit weights (the sampling already followed the weights)."""
        d = next(iter(self.n_features), 0)
        X = self.sample_X if self.sample_X is not None else np.empty((0, d))
        return Block(np.ascontiguousarray(X))

    def with_problems(self, problems: RowProblems) -> "LoadSummary":
        return replace(
            self,
            null_rows=self.null_rows + problems.null_rows,
            ragged_rows=self.ragged_rows + problems.ragged_rows,
            nonfinite_rows=self.nonfinite_rows + problems.nonfinite_rows,
            bad_weight_rows=self.bad_weight_rows + problems.bad_weight_rows,
        )


def _smallest(keys: np.ndarray, X: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    if keys.size <= m:
        order = np.argsort(keys, kind="stable")
    else:
        order = np.argpartition(keys, m - 1)[:m]
        order = order[np.argsort(keys[order], kind="stable")]
    return keys[order], X[order]


def summarize_block(block: Block, sample_size: int, seed: int, problems: RowProblems | None = None) -> LoadSummary:
    """The LoadSummary of one block (plus the problem counts from its conversion)."""
    h = row_hashes(block)
    w = block.weights_or_ones()
    n_features = frozenset([block.n_features]) if block.n_rows else frozenset()
    keys = np.empty(0)
    X = None
    if sample_size > 0 and block.n_rows:
        seed_mix = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))[0]
        u = ((_splitmix64(h ^ seed_mix) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        with np.errstate(divide="ignore"):
            all_keys = -np.log(u) / w  # zero weight -> +inf: never sampled
        eligible = np.isfinite(all_keys)
        keys, X = _smallest(all_keys[eligible], block.X[eligible], sample_size)
    summary = LoadSummary(
        rows=block.n_rows,
        blocks=1,
        weight_sum=float(math.fsum(w)) if block.n_rows else 0.0,
        n_features=n_features,
        fingerprint=int(h.sum(dtype=np.uint64)) if block.n_rows else 0,
        sample_size=sample_size,
        sample_keys=keys,
        sample_X=X,
    )
    return summary.with_problems(problems) if problems is not None else summary
