"""What one pass over the data learns, as a value with ``+``: the :class:`LoadSummary`.

Each block of the load pass is summarized (:func:`summarize_block`) where it is
converted, and the summaries are added up in a tree reduce on the way to the driver,
like Stats: row and weight totals, the :class:`RowProblems` of the conversion (rows that
cannot be modelled, counted by reason), the distinct widths seen, the data fingerprint
(:mod:`em_spark.engine.fingerprint`) and a bounded sample (:mod:`em_spark.engine.sampling`).
``em_spark.engine.validation`` turns it into one clear error before iteration 1.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from em_spark.engine.fingerprint import MASK64, unit_hashes
from em_spark.engine.sampling import UnitSample, sample_units
from em_spark.models.base import Block, sparse_rows

__all__ = ["LoadSummary", "RowProblems", "summarize_block"]


@dataclass(frozen=True)
class RowProblems:
    """Counts of rows (or sequences) dropped from a block because they cannot be modelled."""

    null_rows: int = 0  # the feature vector (or sequence) is null, or a sequence is empty
    ragged_rows: int = 0  # a feature vector whose length differs from the block's first
    nonfinite_rows: int = 0  # NaN, +-inf or a null entry inside the vector (NaN/null allowed when modelled)
    bad_weight_rows: int = 0  # weight null, negative, NaN or infinite
    bad_label_rows: int = 0  # label >= k (not a component id)
    overflow_rows: int = 0  # a finite feature value beyond float32's range, when blocks are float32
    noncount_rows: int = 0  # a negative or non-integer value, where the family needs counts
    bad_index_rows: int = 0  # a sparse vector whose indices are not strictly increasing within 0..size-1
    label_length_rows: int = 0  # a sequence whose list of step labels is not as long as the sequence

    def __add__(self, other: RowProblems) -> RowProblems:
        return RowProblems(*(a + b for a, b in zip(astuple(self), astuple(other))))


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
    problems: RowProblems = field(default_factory=RowProblems)  # rows (sequences) dropped, by reason
    n_features: frozenset = field(default_factory=frozenset)  # distinct vector lengths seen
    fingerprint: int = 0  # sum of unit hashes mod 2**64
    sample_size: int = 0
    sequences: bool = False
    observations: int = 0
    observation_weight: float = 0.0  # sum of weight x steps: BIC's sample size (models.criteria)
    labelled_rows: int = 0
    missing_entries: int = 0  # NaN entries kept to be modelled
    sample_units: UnitSample | None = None

    def __add__(self, other: LoadSummary) -> LoadSummary:
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
            problems=self.problems + other.problems,
            n_features=self.n_features | other.n_features,
            fingerprint=(self.fingerprint + other.fingerprint) & MASK64,
            sample_size=max(self.sample_size, other.sample_size),
            sequences=self.sequences or other.sequences,
            observations=self.observations + other.observations,
            observation_weight=self.observation_weight + other.observation_weight,
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
        # float64 on the driver whatever the blocks' dtype: initialization runs on exact widened values
        X = sparse_rows(s.X.astype(np.float64)) if sp.issparse(s.X) else np.ascontiguousarray(s.X, dtype=np.float64)
        return Block(
            X,
            lengths=s.lengths.copy() if self.sequences else None,
            labels=labels,
        )

    def with_problems(self, problems: RowProblems) -> LoadSummary:
        return replace(self, problems=self.problems + problems)


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
        sample = sample_units(block.X, block.labels, h, lengths, w, sample_size, seed)
    summary = LoadSummary(
        rows=int(lengths.size),
        blocks=1,
        weight_sum=float(math.fsum(w)) if lengths.size else 0.0,
        n_features=n_features,
        fingerprint=int(h.sum(dtype=np.uint64)) if h.size else 0,
        sample_size=sample_size,
        sequences=sequences,
        observations=block.n_rows,
        observation_weight=float(math.fsum(w * lengths)) if lengths.size else 0.0,
        labelled_rows=0 if block.labels is None else int((block.labels >= 0).sum()),
        missing_entries=int(np.isnan(block.X.data if block.is_sparse else block.X).sum()) if block.n_rows else 0,
        sample_units=sample,
    )
    return summary.with_problems(problems) if problems is not None else summary
