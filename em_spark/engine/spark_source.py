"""The Spark side of the data: load once, validate, cache as numpy blocks, run E-steps.

One load pass turns the input DataFrame into an RDD of numpy blocks (through Arrow,
never per-row Python), persists it, and in the same pass counts bad rows, computes a
fingerprint of the data and draws a bounded sample for initialization. Each EM
iteration is then one Spark job: broadcast the parameters, one E-step per partition
emitting one statistics value, an ordered tree reduce, done.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from em_spark.engine.blocks import (
    FEATURES_FIELD,
    WEIGHT_FIELD,
    LoadSummary,
    RowProblems,
    block_from_arrow,
    decode_block,
    encode_block,
    merge_blocks,
    summarize_block,
    target_block_rows,
)
from em_spark.engine.reduce import ordered_tree_reduce
from em_spark.engine.validation import DataValidationError, check_loaded
from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import Stats

__all__ = ["SparkBlockSource", "feature_array", "describe_features", "load_blocks"]

log = logging.getLogger("em_spark")

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def describe_features(features: str | Sequence[str]) -> str:
    return f"column {features!r}" if isinstance(features, str) else f"columns {list(features)!r}"


def _field(df: DataFrame, name: str, role: str) -> T.StructField:
    try:
        return df.schema[name]
    except (KeyError, Exception):
        raise DataValidationError(
            f"{role} {name!r} is not a column of the input; available columns: {df.columns}"
        ) from None


def feature_array(df: DataFrame, features: str | Sequence[str]) -> Column:
    """An ``array<double>`` expression for the features, validated against the schema.

    ``features`` is a Vector column (from VectorAssembler), an array of numbers, a single
    numeric column, or a list of numeric columns.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    if isinstance(features, str):
        dtype = _field(df, features, "featuresCol").dataType
        if isinstance(dtype, VectorUDT):
            return vector_to_array(F.col(features), "float64")
        if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _NUMERIC):
            return F.col(features).cast(T.ArrayType(T.DoubleType()))
        if isinstance(dtype, _NUMERIC):
            return F.array(F.col(features).cast(T.DoubleType()))
        raise DataValidationError(
            f"featuresCol {features!r} has type {dtype.simpleString()}; expected a Vector column "
            "(pyspark.ml.feature.VectorAssembler), an array of numbers, or a list of numeric columns."
        )
    names = list(features)
    if not names:
        raise DataValidationError("the list of feature columns is empty; name at least one numeric column.")
    for name in names:
        dtype = _field(df, name, "feature column").dataType
        if not isinstance(dtype, _NUMERIC):
            raise DataValidationError(
                f"feature column {name!r} has type {dtype.simpleString()}; feature columns must be numeric "
                "(cast or encode it first)."
            )
    return F.array(*[F.col(n).cast(T.DoubleType()) for n in names])


def _weight_expr(df: DataFrame, weight_col: str | None) -> Column | None:
    if not weight_col:
        return None
    dtype = _field(df, weight_col, "weightCol").dataType
    if not isinstance(dtype, _NUMERIC):
        raise DataValidationError(f"weightCol {weight_col!r} has type {dtype.simpleString()}; it must be numeric.")
    return F.col(weight_col).cast(T.DoubleType())


_PAYLOAD_SCHEMA = (
    "src int, idx int, payload binary, null_rows long, ragged_rows long, nonfinite_rows long, bad_weight_rows long"
)


def _to_payloads(batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow function: one encoded block per Arrow batch, tagged by (partition, index)."""
    import pyarrow as pa
    from pyspark import TaskContext

    src = TaskContext.get().partitionId()
    for idx, batch in enumerate(batches):
        block, problems, _ = block_from_arrow(batch)
        yield pa.RecordBatch.from_pydict(
            {
                "src": pa.array([src], pa.int32()),
                "idx": pa.array([idx], pa.int32()),
                "payload": pa.array([encode_block(block)], pa.binary()),
                "null_rows": [problems.null_rows],
                "ragged_rows": [problems.ragged_rows],
                "nonfinite_rows": [problems.nonfinite_rows],
                "bad_weight_rows": [problems.bad_weight_rows],
            }
        )


def _assemble(items: Iterator[tuple[tuple[int, int], tuple[bytes, RowProblems]]]) -> Iterator[tuple[Block, RowProblems]]:
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
        merged = [Block(np.empty((0, 0)))]
    for i, block in enumerate(merged):
        yield block, problems if i == 0 else RowProblems()


def _summarize_partition(sample_size: int, seed: int):
    def summarize(index: int, items: Iterator[tuple[Block, RowProblems]]) -> Iterator[tuple[int, LoadSummary]]:
        total = None
        for block, problems in items:
            s = summarize_block(block, sample_size, seed, problems)
            total = s if total is None else total + s
        if total is not None:
            yield index, total

    return summarize


def _e_step_partition(family: EMFamily, params_bc: Any):
    def e_step(index: int, items: Iterator[tuple[Block, RowProblems]]) -> Iterator[tuple[int, Stats]]:
        from threadpoolctl import threadpool_limits

        params = params_bc.value
        total = None
        # One BLAS thread per task: Spark already runs one task per core.
        with threadpool_limits(limits=1, user_api="blas"):
            for block, _ in items:
                if block.n_rows:
                    s = family.e_step(block, params)
                    total = s if total is None else total + s
        if total is not None:
            yield index, total

    return e_step


class SparkBlockSource:
    """Validated, cached blocks of one input DataFrame.

    Attributes
    ----------
    summary : LoadSummary of the whole input
    n_features, fingerprint, sample : as the EM loop needs them
    """

    def __init__(self, rdd: Any, summary: LoadSummary, aggregation_depth: int):
        self.rdd = rdd
        self.summary = summary
        self.aggregation_depth = aggregation_depth

    @property
    def n_features(self) -> int:
        return next(iter(self.summary.n_features))

    @property
    def fingerprint(self) -> str:
        s = self.summary
        return f"rows={s.rows};d={self.n_features};weight={s.weight_sum!r};hash={s.fingerprint:016x}"

    @property
    def sample(self) -> Block:
        return self.summary.sample

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        """Sufficient statistics of all the data under ``params``: one Spark job."""
        sc = self.rdd.context
        params_bc = sc.broadcast(params)
        try:
            sc.setJobDescription(label or "em_spark E-step")
            per_partition = self.rdd.mapPartitionsWithIndex(_e_step_partition(family, params_bc))
            total = ordered_tree_reduce(per_partition, Stats.__add__, self.aggregation_depth)
        finally:
            sc.setJobDescription(None)
            params_bc.destroy()
        if total is None:
            raise DataValidationError("the cached input has no rows left; was it unpersisted?")
        return total

    def close(self) -> None:
        self.rdd.unpersist()


def load_blocks(
    df: DataFrame,
    features: str | Sequence[str],
    weight_col: str | None,
    *,
    k: int,
    seed: int,
    sample_size: int = 10_000,
    num_partitions: int | None = None,
    aggregation_depth: int = 2,
    label: str = "",
) -> SparkBlockSource:
    """Read, validate and cache the input; raise DataValidationError before any fitting.

    ``num_partitions`` defaults to twice the default parallelism: enough to keep every
    core busy, few enough that per-task overhead stays small (PLATFORM.md).
    """
    sc = df.sparkSession.sparkContext
    columns = [feature_array(df, features).alias(FEATURES_FIELD)]
    weight = _weight_expr(df, weight_col)
    if weight is not None:
        columns.append(weight.alias(WEIGHT_FIELD))
    selected = df.select(*columns)
    n_target = int(num_partitions or 2 * sc.defaultParallelism)
    if n_target < 1:
        raise ValueError(f"numPartitions must be >= 1, got {num_partitions}")

    payloads = selected.mapInArrow(_to_payloads, _PAYLOAD_SCHEMA).rdd.map(
        lambda r: (
            (r.src, r.idx),
            (bytes(r.payload), RowProblems(r.null_rows, r.ragged_rows, r.nonfinite_rows, r.bad_weight_rows)),
        )
    )
    n_source = payloads.getNumPartitions()
    if n_source != n_target:
        # Deal blocks round-robin over the target partitions; (src, idx) keys make the
        # assignment deterministic and _assemble re-sorts within each partition.
        payloads = payloads.partitionBy(n_target, partitionFunc=lambda key, n=n_source: key[0] + key[1] * n)
    blocks = payloads.mapPartitions(_assemble).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sc.setJobDescription(f"{label} load + validate" if label else "em_spark load + validate")
        summary = ordered_tree_reduce(
            blocks.mapPartitionsWithIndex(_summarize_partition(sample_size, seed)),
            LoadSummary.__add__,
            aggregation_depth,
        )
        sc.setJobDescription(None)
        summary = summary or LoadSummary()
        check_loaded(summary, k, describe_features(features), weight_col)
    except BaseException:
        blocks.unpersist()
        raise
    return SparkBlockSource(blocks, summary, aggregation_depth)
