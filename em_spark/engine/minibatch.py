"""Which rows one step of stepwise EM reads: a reproducible subset of the blocks, and its statistics.

The unit of a mini-batch is a *slice*: ``SLICE_ROWS`` consecutive rows of a block (for sequence
blocks, whole consecutive sequences of about that many rows: a sequence is never split). Every
slice is named by (partition, block index in the partition, slice index in the block), which the
same input and partitioning fix, so a slice's fate is a function of the seed and the step only,
never of timing, task placement or the Spark schedule:

- held out (never trained on; the fixed set convergence is judged on) when
  ``u(seed, HELD, partition, block)[slice] < heldOutFraction``;
- in step ``t``'s mini-batch when it is not held out and ``u(seed, STEP, t, partition, block)[slice]
  < miniBatchFraction`` (a Bernoulli sample of the training slices, as pyspark.ml's online LDA
  samples its documents each iteration).

A task sums the E-step of its chosen slices under each model (:func:`sum_subset_e_steps`) into a
:class:`SubsetStats`: the mini-batch's statistics and, on evaluation steps, the held-out set's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import StatsTuple

__all__ = ["SLICE_ROWS", "Subset", "SubsetStats", "slices", "sum_subset_e_steps"]

#: rows per slice: fine enough that a mini-batch of a few percent is many slices on a
#: partition of a million rows, coarse enough that numpy (not per-slice Python) sets the E-step's time
SLICE_ROWS = 4096
_HELD, _STEP = 0, 1  # the two random streams: the fixed held-out set, and each step's sample

Model = tuple[EMFamily, Params]


@dataclass(frozen=True)
class Subset:
    """The rows of one step: step ``step`` (1-based) of a fit seeded ``seed``.

    ``evaluate``: also sum the held-out slices (the step judges convergence on them).
    """

    seed: int
    step: int
    fraction: float
    held_out_fraction: float
    evaluate: bool = False

    def choose(self, partition: int, block: int, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
        """(in the mini-batch, held out): two boolean masks over the block's ``n_slices`` slices."""
        seed = self.seed & 0xFFFFFFFFFFFFFFFF
        held = np.random.default_rng([seed, _HELD, partition, block]).random(n_slices) < self.held_out_fraction
        picked = np.random.default_rng([seed, _STEP, self.step, partition, block]).random(n_slices) < self.fraction
        return picked & ~held, held


def slices(block: Block, rows: int | None = None) -> list[Block]:
    """``block`` cut into consecutive slices of about ``rows`` (default ``SLICE_ROWS``) rows (whole
    sequences for sequence blocks)."""
    rows = SLICE_ROWS if rows is None else rows
    n = block.n_rows
    cuts: list[tuple[int, int, np.ndarray | None]]
    if block.lengths is None:
        bounds = [*range(0, n, rows), n]
        cuts = [(a, b, None) for a, b in itertools.pairwise(bounds)]
    else:
        ends = np.cumsum(block.lengths)
        cuts, start_row, start_seq = [], 0, 0
        for i, end in enumerate(ends):
            if end - start_row >= rows or i == len(ends) - 1:
                cuts.append((start_row, int(end), block.lengths[start_seq : i + 1]))
                start_row, start_seq = int(end), i + 1
    return [
        Block(
            block.X[a:b],
            None if block.weight is None else block.weight[a:b],
            lengths=lengths,
            labels=None if block.labels is None else block.labels[a:b],
        )
        for a, b, lengths in cuts
    ]


@dataclass(frozen=True)
class SubsetStats:
    """One step's statistics under each model: of the mini-batch, and of the held-out set (on
    evaluation steps). Either is None where no slice was chosen; adds as its parts add."""

    batch: StatsTuple | None = None
    held: StatsTuple | None = None

    def __add__(self, other: SubsetStats) -> SubsetStats:
        if not isinstance(other, SubsetStats):
            return NotImplemented
        return SubsetStats(_plus(self.batch, other.batch), _plus(self.held, other.held))


def _plus(a: StatsTuple | None, b: StatsTuple | None) -> StatsTuple | None:
    return b if a is None else a if b is None else a + b


def sum_subset_e_steps(
    models: Sequence[Model], blocks: Iterable[tuple[int, Block]], partition: int, subset: Subset
) -> SubsetStats:
    """The statistics of partition ``partition``'s chosen slices under each model, added in
    (block, slice) order; ``blocks`` are (block index, block) in the partition's order."""
    from threadpoolctl import threadpool_limits

    total = SubsetStats()
    with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread: Spark runs one task per core
        for index, block in blocks:
            if not block.n_rows:
                continue
            parts = slices(block)
            picked, held = subset.choose(partition, index, len(parts))
            for part, in_batch, in_held in zip(parts, picked, held):
                if in_batch:
                    total = total + SubsetStats(batch=_e_steps(models, part))
                elif in_held and subset.evaluate:
                    total = total + SubsetStats(held=_e_steps(models, part))
    return total


def _e_steps(models: Sequence[Model], block: Block) -> StatsTuple:
    return StatsTuple(tuple(family.e_step(block, params) for family, params in models))


def indexed(blocks: Iterable[Block]) -> Iterator[tuple[int, Block]]:
    """(block index, block) in the partition's order."""
    return enumerate(blocks)
