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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from em_spark.engine.arrow_input import InputSpec, block_from_arrow
from em_spark.engine.block_codec import decode_block, encode_block, merge_blocks, target_block_rows
from em_spark.engine.load_summary import RowProblems
from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import StatsTuple

__all__ = ["PAYLOAD_SCHEMA", "PROBLEM_FIELDS", "Model", "assemble_partition", "sum_e_steps", "to_payloads"]

#: what one E-step pass runs under: a family and its parameters
Model = tuple[EMFamily, Params]

PROBLEM_FIELDS = tuple(f.name for f in fields(RowProblems))  # one long column each in the payload
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


def assemble_partition(
    items: Iterable[tuple[tuple[int, int], tuple[bytes, RowProblems]]],
) -> Iterator[tuple[Block, RowProblems]]:
    """Decode one partition's batches in key order and merge them into large blocks."""
    # Sorting by (source partition, batch index) makes the partition's content and
    # order independent of shuffle-fetch order, so a recomputed partition is identical.
    ordered = sorted(items, key=lambda kv: kv[0])
    problems = RowProblems()
    blocks = []
    for _, (payload, batch_problems) in ordered:
        problems = problems + batch_problems
        block = decode_block(payload)
        if block.n_rows:
            blocks.append(block)
    merged = merge_blocks(blocks, target_block_rows(blocks[0].n_features)) if blocks else []
    # The partition's problem counts ride along with its first block (or an empty one).
    if not merged and problems != RowProblems():
        merged = [Block(np.empty((0, 0)))]  # summarize_block is told whether the data are sequences
    for i, block in enumerate(merged):
        yield block, problems if i == 0 else RowProblems()


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
