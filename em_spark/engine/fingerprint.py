"""Row hashing: a 64-bit hash of each row's (or sequence's) exact bits.

The hashes depend only on a unit's content, so their sum is independent of order and
partitioning. The load pass uses them twice: their sum mod 2**64 is the data
fingerprint a resume compares (:class:`~em_spark.engine.load_summary.LoadSummary`),
and they are the random numbers of the partition-independent sample
(:mod:`em_spark.engine.sampling`). Changing anything here changes every fingerprint,
so existing checkpoints would refuse to resume.

Sparse blocks (CSR) hash the same as dense copies of the same rows: a row's hash sums
one term per cell, and a cell holding +0.0 (all bits zero) contributes splitmix64(0) = 0,
so summing over the stored non-zeros only gives the dense sum exactly. A dense fit and a
sparse fit of the same data therefore share fingerprints and samples (an explicit -0.0
is a non-zero bit pattern and counts, in both).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from em_spark.models.base import Block

__all__ = ["GOLDEN", "MASK64", "row_hashes", "splitmix64", "unit_hashes"]

MASK64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(h: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64 finalizer); uint64 arithmetic wraps."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _column_multipliers(d: int) -> np.ndarray:
    return np.random.default_rng(0x5EED).integers(1, 2**63, size=d, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def row_hashes(block: Block) -> np.ndarray:
    """(n_rows,) uint64 hash of each row's exact bits (features, weight and label).

    Depends only on the row's content, so sums of it are independent of order and
    partitioning: that makes both the data fingerprint and the sample reproducible.
    """
    if block.n_rows == 0:
        return np.empty(0, np.uint64)
    with np.errstate(over="ignore"):
        # The bits of the float64 values: a float32 block hashes its (exactly widened) values,
        # so its fingerprint is that of the float32-rounded data.
        if block.is_sparse:
            h = _sparse_cell_sums(block.X, _column_multipliers(block.n_features))
        else:
            bits = np.ascontiguousarray(block.X, dtype=np.float64).view(np.uint64)
            h = splitmix64(bits * _column_multipliers(block.n_features)).sum(axis=1, dtype=np.uint64)
        h = h + np.uint64(block.n_features)
        if block.weight is not None:
            h = h ^ splitmix64(np.ascontiguousarray(block.weight).view(np.uint64) + GOLDEN)
        if block.labels is not None:
            h = h ^ splitmix64(
                np.ascontiguousarray(block.labels, dtype=np.int64).view(np.uint64) + GOLDEN * np.uint64(3)
            )
        return splitmix64(h)


def _sparse_cell_sums(X: Any, multipliers: np.ndarray) -> np.ndarray:
    """(n_rows,) uint64 per-row sums of the cell terms of a CSR array's stored entries (see the
    module doc): the dense sum, since a +0.0 cell's term is 0."""
    bits = np.ascontiguousarray(X.data, dtype=np.float64).view(np.uint64)
    terms = splitmix64(bits * multipliers[X.indices])
    # row sums through a wrapping cumulative sum: differences of uint64 prefix sums are exact mod 2**64
    prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
    indptr = np.asarray(X.indptr, dtype=np.int64)
    return prefix[indptr[1:]] - prefix[indptr[:-1]]


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
        mixed = splitmix64(h ^ (step * GOLDEN))
        return splitmix64(np.add.reduceat(mixed, starts, dtype=np.uint64) + block.lengths.astype(np.uint64))
