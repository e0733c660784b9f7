"""The data as the EM loop sees it: the :class:`BlockSource` protocol and an in-process source.

A source knows its rows only through summed statistics: ``e_step(family, params)`` returns
the :class:`~em_spark.stats.Stats` of all rows, plus the few facts the loop needs on the
driver (width, fingerprint, a bounded sample, the load summary). The Spark implementation
is :class:`em_spark.engine.spark_source.SparkBlockSource` (one Spark job per E-step);
:class:`LocalBlockSource` holds numpy blocks in this process, for tests and small data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from em_spark.engine.load_summary import LoadSummary, summarize_block
from em_spark.engine.minibatch import Subset, SubsetStats, sum_subset_e_steps
from em_spark.engine.partition_tasks import Model, sum_e_steps
from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import Stats

__all__ = ["BlockSource", "LocalBlockSource", "SummaryFacts"]


class BlockSource(Protocol):
    """The data, as the loop sees it."""

    # read-only properties (a source may compute them)
    @property
    def n_features(self) -> int: ...
    @property
    def fingerprint(self) -> str:
        """Changes when the data changes; compared on resume."""

    @property
    def sample(self) -> Block:
        """Bounded sample, held on the driver, for initialization and re-seeding."""

    @property
    def summary(self) -> Any:
        """A LoadSummary: rows, weight_sum, ..."""

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        """Summed sufficient statistics of all rows under ``params``."""

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        """``[e_step(family, params) for family, params in models]``, bit for bit, from one pass over
        the rows (one Spark job for all the models: restarts or candidates that share the data)."""

    def e_step_subset(self, models: Sequence[Model], subset: Subset, label: str = "") -> SubsetStats:
        """The statistics of ``subset``'s slices (``engine.minibatch``) under each model: one pass
        (one Spark job) that reads only the chosen slices' rows, for stepwise EM."""


class SummaryFacts:
    """A Spark source's ``n_features``, ``fingerprint`` and ``sample``, read from its LoadSummary
    (written once for the RDD and the DataFrame sources)."""

    summary: LoadSummary

    @property
    def n_features(self) -> int:
        return int(next(iter(self.summary.n_features)))

    @property
    def fingerprint(self) -> str:
        return self.summary.data_identity

    @property
    def sample(self) -> Block:
        return self.summary.sample


#: rows (or sequences) sampled for initialization when not told
DEFAULT_SAMPLE_SIZE = 10_000
#: depth of the tree reduce of statistics when not told
DEFAULT_AGGREGATION_DEPTH = 2


class LocalBlockSource:
    """In-process blocks: for tests and for small data on the driver."""

    def __init__(self, blocks: list[Block], sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> None:
        self.blocks = blocks
        summary = summarize_block(blocks[0], sample_size, seed)  # (at least one block)
        for b in blocks[1:]:
            summary = summary + summarize_block(b, sample_size, seed)
        self.summary = summary
        self.n_features = blocks[0].n_features
        self.fingerprint = summary.data_identity
        self.sample = summary.sample
        self.e_step_calls = 0

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        return self.e_step_many([(family, params)], label)[0]

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        self.e_step_calls += 1  # data passes
        total = sum_e_steps(models, self.blocks)
        if total is None:
            raise ValueError("the blocks hold no rows")
        return list(total.items)

    def e_step_subset(self, models: Sequence[Model], subset: Subset, label: str = "") -> SubsetStats:
        self.e_step_calls += 1  # (one pass, over part of the rows)
        return sum_subset_e_steps(models, enumerate(self.blocks), 0, subset)  # one partition
