"""The bodies of the per-partition tasks, shared by both transports of the data.

Both :mod:`em_spark.engine.spark_source` (RDDs, a classic session) and
:mod:`em_spark.engine.dataframe_source` (DataFrame-only, a Spark Connect session) run
the same three steps in their map tasks, so the same input and partitioning give the
same blocks in the same order, and bit-identical statistics, whichever carried them:

    to_payloads         mapInArrow: one encoded block per Arrow batch, keyed (partition, index)
    assemble_partition  a partition's payloads in key order, decoded and merged into large blocks
    sum_e_steps         the E-step of a partition's blocks under one or more models, added in block
                        order (one BLAS thread)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from em_spark.engine.arrow_input import InputSpec, block_from_arrow
from em_spark.engine.block_codec import decode_block, encode_block, merge_stream
from em_spark.engine.load_summary import RowProblems
from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import StatsTuple

__all__ = [
    "PAYLOAD_SCHEMA",
    "PROBLEM_FIELDS",
    "Model",
    "PayloadStore",
    "assemble_partition",
    "sum_e_steps",
    "to_payloads",
]

#: what one E-step pass runs under: a family and its parameters
Model = tuple[EMFamily, Params]

PROBLEM_FIELDS = tuple(f.name for f in fields(RowProblems))  # one long column each in the payload
# A load task keeps up to this many payload bytes in memory, the rest in a scratch file.
SCRATCH_MEMORY_BYTES = 32 << 20
PAYLOAD_SCHEMA = "src int, idx int, payload binary, " + ", ".join(f"{name} long" for name in PROBLEM_FIELDS)


def to_payloads(spec: InputSpec) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """mapInArrow function: one encoded block per Arrow batch, tagged by (partition, index)."""

    def to_payloads(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        assert context is not None  # (this runs in a task)
        src = context.partitionId()
        for idx, batch in enumerate(batches):
            block, problems, _ = block_from_arrow(batch, spec)
            yield pa.RecordBatch.from_pydict(
                {
                    "src": pa.array([src], pa.int32()),
                    "idx": pa.array([idx], pa.int32()),
                    "payload": pa.array([encode_block(block)], pa.binary()),
                    **{name: [getattr(problems, name)] for name in PROBLEM_FIELDS},
                }
            )

    return to_payloads


class PayloadStore:
    """One partition's encoded batches, by key: in memory up to a budget, beyond it in an
    anonymous scratch file (deleted when closed, or when the process dies), so a load task's
    memory does not grow with the partition. Only the keys and offsets stay in memory."""

    def __init__(self, scratch_dir: str | None = None, memory_budget: int = SCRATCH_MEMORY_BYTES) -> None:
        self.scratch_dir, self.memory_budget = scratch_dir, memory_budget
        self._index: list[tuple[tuple[int, int], bytes | tuple[int, int]]] = []
        self._held = 0
        self._file: Any = None
        self.problems = RowProblems()

    def add(self, key: tuple[int, int], payload: bytes, problems: RowProblems) -> None:
        self.problems = self.problems + problems
        if self._file is None and self._held + len(payload) <= self.memory_budget:
            self._index.append((key, bytes(payload)))
            self._held += len(payload)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.scratch_dir, prefix="em_spark-load-")  # noqa: SIM115 -- closed by close()
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(payload)
        self._index.append((key, (offset, len(payload))))

    @property
    def bytes_in_memory(self) -> int:
        """Payload bytes held in memory (at most ``memory_budget``)."""
        return self._held

    def in_key_order(self) -> Iterator[bytes]:
        """The payloads sorted by (source partition, batch index): the partition's canonical order."""
        for _, where in sorted(self._index, key=lambda entry: entry[0]):
            if isinstance(where, bytes):
                yield where
            else:
                self._file.seek(where[0])
                yield self._file.read(where[1])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._index.clear()

    def assembled(self) -> Iterator[tuple[Block, RowProblems]]:
        """The partition's rows decoded and merged into large blocks, one block held at a time.

        The partition's problem counts ride along with its first block (or an empty one)."""
        try:
            decoded = (block for block in map(decode_block, self.in_key_order()) if block.n_rows)
            first = True
            for block in merge_stream(decoded):
                yield block, self.problems if first else RowProblems()
                first = False
            if first and self.problems != RowProblems():
                yield Block(np.empty((0, 0))), self.problems  # summarize_block is told whether the data are sequences
        finally:
            self.close()


def assemble_partition(
    items: Iterable[tuple[tuple[int, int], tuple[bytes, RowProblems]]], scratch_dir: str | None = None
) -> Iterator[tuple[Block, RowProblems]]:
    """Decode one partition's batches in key order and merge them into large blocks (streaming)."""
    # Sorting by (source partition, batch index) makes the partition's content and
    # order independent of shuffle-fetch order, so a recomputed partition is identical.
    store = PayloadStore(scratch_dir)
    for key, (payload, problems) in items:
        store.add(key, payload, problems)
    yield from store.assembled()


def sum_e_steps(models: Sequence[Model], blocks: Iterable[Block]) -> StatsTuple | None:
    """The E-step statistics of ``blocks`` under each ``(family, params)`` of ``models``, each
    added in block order (None when the blocks hold no rows).

    Each block is read once for all models (a shared pass): model ``i``'s statistics are
    exactly those a pass for model ``i`` alone computes, same additions in the same order.
    """
    from threadpoolctl import threadpool_limits

    total = None
    # One BLAS thread per task: Spark already runs one task per core.
    with threadpool_limits(limits=1, user_api="blas"):
        for block in blocks:
            if block.n_rows:
                s = StatsTuple(tuple(family.e_step(block, params) for family, params in models))
                total = s if total is None else total + s
    return total
