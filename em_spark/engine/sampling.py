"""The bounded, partition-independent sample the driver initializes (and re-seeds) from.

A weighted sample without replacement of units (rows, or whole sequences), by
Efraimidis-Spirakis: each unit's key is -log(u)/w, where u comes from the unit's hash
(:mod:`em_spark.engine.fingerprint`) and the seed, and the sample is the units of
smallest key whose rows fit the budget. The keys depend on the data and the seed only,
so a unit in the global sample is in its own partition's sample too: per-partition
samples merge (``+`` then :meth:`UnitSample.smallest`) into the same sample whatever the
partitioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from em_spark.engine.fingerprint import MASK64, splitmix64
from em_spark.models.base import sparse_rows

__all__ = ["UnitSample", "sample_units"]


@dataclass(frozen=True, eq=False)
class UnitSample:
    """Sampled units (rows or whole sequences) with their keys, sorted by key."""

    keys: np.ndarray  # (m,)
    lengths: np.ndarray  # (m,) rows per unit (1 for row data)
    X: Any  # (sum(lengths), d): an ndarray, or a CSR array for sparse blocks (row data only)
    labels: np.ndarray | None  # (sum(lengths),)

    def smallest(self, budget: int) -> UnitSample:
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
        X = self.X[rows, :] if sp.issparse(self.X) else self.X[rows]
        return UnitSample(self.keys[order], self.lengths[order], X, None if self.labels is None else self.labels[rows])

    def __add__(self, other: UnitSample) -> UnitSample:
        labels = None
        if self.labels is not None or other.labels is not None:
            labels = np.concatenate(
                [s.labels if s.labels is not None else np.full(s.X.shape[0], -1, np.int64) for s in (self, other)]
            )
        return UnitSample(
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.lengths, other.lengths]),
            _stack(self.X, other.X),
            labels,
        )


def _stack(a: Any, b: Any) -> Any:
    """Rows of ``a`` then ``b``: both dense, or both sparse (a fit's blocks are one kind)."""
    if sp.issparse(a) or sp.issparse(b):
        return sparse_rows(sp.vstack([a, b], format="csr"))
    return np.concatenate([a, b])


def sample_units(
    X: np.ndarray,
    labels: np.ndarray | None,
    hashes: np.ndarray,
    lengths: np.ndarray,
    weights: np.ndarray,
    sample_size: int,
    seed: int,
) -> UnitSample:
    """The sample of one block's units: those of smallest key within ``sample_size`` rows.

    ``hashes``, ``lengths`` and ``weights`` are per unit (a sequence's weight is its first
    step's); ``X`` (an ndarray, or a CSR array for row data) and ``labels`` per row. A unit of
    zero weight is never sampled.
    """
    seed_mix = splitmix64(np.array([seed & MASK64], dtype=np.uint64))[0]
    u = ((splitmix64(hashes ^ seed_mix) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    with np.errstate(divide="ignore"):
        keys = -np.log(u) / weights  # zero weight -> +inf: never sampled
    eligible = np.isfinite(keys)
    if eligible.all():
        sample = UnitSample(keys, lengths, X, labels)
    else:
        rows = np.repeat(eligible, lengths)
        X_rows = X[np.flatnonzero(rows), :] if sp.issparse(X) else X[rows]
        sample = UnitSample(keys[eligible], lengths[eligible], X_rows, None if labels is None else labels[rows])
    return sample.smallest(sample_size)
