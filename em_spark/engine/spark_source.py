"""The Spark side of the data: load once, validate, cache as numpy blocks, run E-steps.

One load pass turns the input DataFrame into an RDD of numpy blocks (through Arrow,
never per-row Python), persists it, and in the same pass counts bad rows, computes a
fingerprint of the data and draws a bounded sample for initialization. Each EM
iteration is then one Spark job: broadcast the parameters, one E-step per partition
emitting one statistics value, an ordered tree reduce, done.
"""

from __future__ import annotations

import logging
import operator
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from em_spark.engine.arrow_input import (
    FEATURES_FIELD,
    LABEL_FIELD,
    WEIGHT_FIELD,
    InputSpec,
)
from em_spark.engine.dataframe_source import (
    DataFrameBlockSource,
    default_parallelism,
    is_connect,
    load_dataframe_blocks,
)
from em_spark.engine.executor_files import (
    LocalPartition,
    PartitionWriter,
    executor_root,
    read_partition,
    remove_partition,
)
from em_spark.engine.load_summary import LoadSummary, RowProblems, summarize_block
from em_spark.engine.minibatch import Subset, SubsetStats, sum_subset_e_steps
from em_spark.engine.partition_tasks import (
    PAYLOAD_SCHEMA,
    PROBLEM_FIELDS,
    Model,
    assemble_partition,
    sum_e_steps,
    to_payloads,
)
from em_spark.engine.reduce import ordered_tree_reduce
from em_spark.engine.sources import DEFAULT_AGGREGATION_DEPTH, DEFAULT_SAMPLE_SIZE, SummaryFacts
from em_spark.engine.validation import DataValidationError, check_loaded
from em_spark.models.base import Block, EMFamily, Params
from em_spark.stats import Stats

__all__ = [
    "SparkBlockSource",
    "describe_features",
    "feature_array",
    "group_sequences",
    "input_array",
    "is_vector_column",
    "load_blocks",
    "sequence_array",
]

log = logging.getLogger("em_spark")

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def describe_features(features: str | Sequence[str]) -> str:
    return f"column {features!r}" if isinstance(features, str) else f"columns {list(features)!r}"


def _field(df: DataFrame, name: str, role: str) -> T.StructField:
    try:
        return df.schema[name]
    except Exception:  # noqa: BLE001 -- KeyError classically, PySparkKeyError/AnalysisException on Connect
        raise DataValidationError(
            f"{role} {name!r} is not a column of the input; available columns: {df.columns}"
        ) from None


def is_vector_column(df: DataFrame, features: str | Sequence[str]) -> bool:
    """``features`` names one Vector (VectorUDT) column of ``df``: the column a sparse load reads
    as it is (its SQL struct), without ``vector_to_array``."""
    from pyspark.ml.linalg import VectorUDT

    return isinstance(features, str) and isinstance(_field(df, features, "featuresCol").dataType, VectorUDT)


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
            # A null Vector is a bad row the load counts and names; vector_to_array would fail the job on it.
            return F.when(F.col(features).isNotNull(), vector_to_array(F.col(features), "float64"))
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


def sequence_array(df: DataFrame, features: str | Sequence[str]) -> Column:
    """An ``array<array<double>>`` (or ``array<double>``: one number per step) expression for a
    column holding one sequence per row, validated against the schema.

    The column is an array of Vectors, an array of arrays of numbers, or an array of numbers
    (a 1-feature sequence, e.g. the symbols of a categorical HMM).
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    if not isinstance(features, str):
        raise DataValidationError(
            f"sequence models read one sequence per row from one column, got {list(features)!r}; "
            "collect the steps into an array column (or give sequenceCol and timeCol for long-format data)."
        )
    dtype = _field(df, features, "featuresCol").dataType
    element = dtype.elementType if isinstance(dtype, T.ArrayType) else None
    if isinstance(element, VectorUDT):
        return F.transform(F.col(features), lambda v: F.when(v.isNotNull(), vector_to_array(v, "float64")))
    if isinstance(element, T.ArrayType) and isinstance(element.elementType, _NUMERIC):
        return F.col(features).cast(T.ArrayType(T.ArrayType(T.DoubleType())))
    if isinstance(element, _NUMERIC):
        return F.col(features).cast(T.ArrayType(T.DoubleType()))
    raise DataValidationError(
        f"featuresCol {features!r} has type {dtype.simpleString()}; a sequence model needs one sequence per row: "
        "array<array<double>>, array<vector> or array<double> (one number per step). For long-format data "
        "(one row per step) give sequenceCol and timeCol."
    )


def input_array(df: DataFrame, features: str | Sequence[str], sequences: bool) -> Column:
    """The features as the load pass and the scorer read them: rows or sequences."""
    return sequence_array(df, features) if sequences else feature_array(df, features)


def group_sequences(
    df: DataFrame,
    sequence_col: str,
    time_col: str,
    features: str | Sequence[str],
    output_col: str = "sequence",
    label_col: str | None = None,
) -> DataFrame:
    """Long format (one row per step) to one row per sequence, steps ordered by ``time_col``.

    Returns a DataFrame of ``sequence_col`` and ``output_col`` (array<array<double>>), and with
    ``label_col`` that column as array<long>: each step's known state, in the steps' order. Each
    sequence is one group, so it lands whole in one partition. Two steps of a sequence at
    the same time are refused: their order would be arbitrary.
    """
    for name, role in ((sequence_col, "sequenceCol"), (time_col, "timeCol")):
        _field(df, name, role)
    parts = [F.col(time_col).alias("t"), feature_array(df, features).alias("x")]
    label = _label_expr(df, label_col)
    if label is not None:
        parts.append(label.alias("y"))
    step = F.struct(*parts)
    grouped = df.groupBy(sequence_col).agg(
        F.sort_array(F.collect_list(step)).alias("__steps"),
        F.sum(F.col(time_col).isNull().cast("long")).alias("__null_times"),
        (F.count(F.col(time_col)) - F.countDistinct(F.col(time_col))).alias("__dup"),
    )
    # One check job over the grouped steps: null ids (one group), null times, duplicate times.
    problems = grouped.select(
        F.sum(F.when(F.col(sequence_col).isNull(), F.size("__steps")).otherwise(0)).alias("null_ids"),
        F.sum("__null_times").alias("null_times"),
        F.sum((F.col("__dup") > 0).cast("long")).alias("duplicated"),
    ).first()
    assert problems is not None  # an aggregate has one row
    if problems["null_ids"] or problems["null_times"]:
        raise DataValidationError(
            f"long-format input has {problems['null_ids'] or 0} row(s) with a null {sequence_col!r} and "
            f"{problems['null_times'] or 0} with a null {time_col!r}; every step needs a sequence id and a time "
            "(filter those rows out first)."
        )
    if problems["duplicated"]:
        ids = [row[0] for row in grouped.filter(F.col("__dup") > 0).select(sequence_col).limit(3).collect()]
        raise DataValidationError(
            f"sequence(s) {ids} have two or more steps with the same {time_col!r}; each step of a sequence "
            "needs a distinct time (deduplicate the input first)."
        )
    labels = [F.col("__steps.y").alias(label_col)] if label is not None and label_col else []
    return grouped.select(sequence_col, F.col("__steps.x").alias(output_col), *labels)


_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)


def _label_expr(df: DataFrame, label_col: str | None, sequences: bool = False) -> Column | None:
    """The label column as long (rows), or as array<long> (one sequence per row: a state per step)."""
    if not label_col:
        return None
    dtype = _field(df, label_col, "labelCol").dataType
    if sequences:
        if not (isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _INTEGRAL)):
            raise DataValidationError(
                f"labelCol {label_col!r} has type {dtype.simpleString()}; for one sequence per row it must be an "
                "array of integer state ids, one per step (0..k-1 where the state is known, null or -1 where not). "
                "In long format (sequenceCol and timeCol) it is an integer column, one label per step."
            )
        return F.col(label_col).cast(T.ArrayType(T.LongType()))
    if not isinstance(dtype, _INTEGRAL):
        raise DataValidationError(
            f"labelCol {label_col!r} has type {dtype.simpleString()}; it must hold integer component ids "
            "(0..k-1 for known rows, null or -1 for unknown)."
        )
    return F.col(label_col).cast(T.LongType())


def _weight_expr(df: DataFrame, weight_col: str | None) -> Column | None:
    if not weight_col:
        return None
    dtype = _field(df, weight_col, "weightCol").dataType
    if not isinstance(dtype, _NUMERIC):
        raise DataValidationError(f"weightCol {weight_col!r} has type {dtype.simpleString()}; it must be numeric.")
    return F.col(weight_col).cast(T.DoubleType())


def _spill_partition(
    dataset_key: str, sample_size: int, seed: int, sequences: bool
) -> Callable[[int, Iterable[tuple[Block, RowProblems]]], Iterator[tuple[Any, LoadSummary]]]:
    """Load-pass task: summarize the partition and write its blocks to an executor-local file."""

    def spill(index: int, items: Iterable[tuple[Block, RowProblems]]) -> Iterator[tuple[Any, LoadSummary]]:

        directory = os.path.join(executor_root(), "em_spark-blocks", dataset_key)
        writer = PartitionWriter(directory, index)
        total: LoadSummary | None = None
        try:
            for block, problems in items:  # one block at a time: memory does not grow with the data
                s = summarize_block(block, sample_size, seed, problems, sequences=sequences)
                total = s if total is None else total + s
                writer.add(block)
            handle = writer.commit()
        except BaseException:
            writer.abort()
            raise
        yield handle, total or LoadSummary(sequences=sequences)

    return spill


class _Missing:
    """Marks a partition whose local block file was not on the executor that ran its task."""

    def __add__(self, other: Any) -> _Missing:
        return self

    __radd__ = __add__

    def __reduce__(self) -> str:
        return "MISSING"  # unpickles to the module's singleton


MISSING = _Missing()


def _add(a: Any, b: Any) -> Any:
    return MISSING if a is MISSING or b is MISSING else a + b


class _ParamsRef:
    """The models' parameters for the executors: inside the task closure when small, else a broadcast."""

    INLINE_BYTES = 1 << 20  # a broadcast costs a file round trip per task; small params ride along

    def __init__(self, sc: Any, models: Sequence[Model]) -> None:
        size = sum(np.asarray(v).nbytes for _, params in models for v in params.values())
        self._inline = list(models) if size <= self.INLINE_BYTES else None
        self._broadcast: Any = None if self._inline is not None else sc.broadcast(list(models))

    @property
    def value(self) -> list[Model]:
        return self._inline if self._inline is not None else self._broadcast.value

    def release(self) -> None:
        if self._broadcast is not None:
            self._broadcast.destroy()


def _sum(models: Sequence[Model], blocks: Iterable[Block], index: int, subset: Subset | None) -> Any:
    """A partition's statistics: of all its blocks, or of ``subset``'s slices of them (stepwise EM)."""
    if subset is None:
        return sum_e_steps(models, blocks)
    return sum_subset_e_steps(models, enumerate(blocks), index, subset)


def _e_step_local(
    models_ref: _ParamsRef, subset: Subset | None = None
) -> Callable[[int, Iterator[LocalPartition]], Iterator[tuple[int, Any]]]:
    """Iteration task on a handle: the blocks come from the executor-local file."""

    def e_step(index: int, handles: Iterator[LocalPartition]) -> Iterator[tuple[int, Any]]:
        found = [read_partition(h) for h in handles]  # consume the input: the worker is then reused
        if any(blocks is None for blocks in found):
            yield index, MISSING
            return
        total = _sum(models_ref.value, (b for blocks in found if blocks is not None for b in blocks), index, subset)
        if total is not None:
            yield index, total

    return e_step


def _e_step_spark(
    models_ref: _ParamsRef, subset: Subset | None = None
) -> Callable[[int, Iterator[tuple[Block, RowProblems]]], Iterator[tuple[int, Any]]]:
    """Fallback iteration task on the Spark-managed blocks (same blocks, same order)."""

    def e_step(index: int, items: Iterator[tuple[Block, RowProblems]]) -> Iterator[tuple[int, Any]]:
        total = _sum(models_ref.value, (block for block, _ in items), index, subset)
        if total is not None:
            yield index, total

    return e_step


def _remove_local(index: int, handles: Iterator[LocalPartition]) -> Iterator[int]:
    for handle in handles:
        remove_partition(handle)
    yield index


class SparkBlockSource(SummaryFacts):
    """Validated, cached blocks of one input DataFrame.

    ``handles`` (cached, tiny) point at executor-local files holding each partition's
    blocks; ``blocks`` (the assembled partitions, not persisted: recomputed from the deal's
    shuffle files by Spark's lineage) are the truth they came from.

    Attributes
    ----------
    summary : LoadSummary of the whole input
    n_features, fingerprint, sample : as the EM loop needs them
    """

    def __init__(self, handles: Any, blocks: Any, summary: LoadSummary, aggregation_depth: int) -> None:
        self.handles = handles
        self.blocks = blocks
        self.summary = summary
        self.aggregation_depth = aggregation_depth
        self.fallbacks = 0  # iterations computed from the Spark-managed blocks

    @property
    def num_partitions(self) -> int:
        return self.handles.getNumPartitions()

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        """Sufficient statistics of all the data under ``params``: one Spark job."""
        return self.e_step_many([(family, params)], label)[0]

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        """Sufficient statistics of all the data under each ``(family, params)``: one Spark job for all."""
        total = self._pass(models, None, label)
        if total is None:
            raise DataValidationError("the cached input has no rows left; was it unpersisted?")
        return list(total.items)

    def e_step_subset(self, models: Sequence[Model], subset: Subset, label: str = "") -> SubsetStats:
        """The statistics of ``subset``'s slices under each model (stepwise EM): one Spark job."""
        return self._pass(models, subset, label) or SubsetStats()

    def _pass(self, models: Sequence[Model], subset: Subset | None, label: str) -> Any:
        """One job: every partition's statistics (of all rows, or of ``subset``), reduced in order."""
        sc = self.handles.context
        models_ref = _ParamsRef(sc, models)
        try:
            sc.setJobDescription(label or "em_spark E-step")
            per_partition = self.handles.mapPartitionsWithIndex(_e_step_local(models_ref, subset))
            total = ordered_tree_reduce(per_partition, _add, self.aggregation_depth)
            if total is MISSING:
                # A task ran where its partition's file is not (lost locality or executor).
                # The Spark-managed blocks give the same per-partition statistics, so the
                # result is identical, only slower.
                self.fallbacks += 1
                log.warning("%s: a local block file was missing; computing this iteration from Spark's copy", label)
                per_partition = self.blocks.mapPartitionsWithIndex(_e_step_spark(models_ref, subset))
                total = ordered_tree_reduce(per_partition, operator.add, self.aggregation_depth)
        finally:
            sc.setJobDescription(None)
            models_ref.release()
        return total

    def close(self) -> None:
        """Release the cached data and (best effort) the executor-local files."""
        try:
            self.handles.mapPartitionsWithIndex(_remove_local).collect()
        except Exception as exc:  # noqa: BLE001 -- cleanup must not hide the fit's outcome
            log.warning("could not remove executor-local block files: %s", exc)
        self.handles.unpersist()
        self.blocks.unpersist()


def load_blocks(
    df: DataFrame,
    features: str | Sequence[str],
    weight_col: str | None,
    *,
    k: int,
    seed: int,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    num_partitions: int | None = None,
    aggregation_depth: int = DEFAULT_AGGREGATION_DEPTH,
    label: str = "",
    sequences: bool = False,
    allow_missing: bool = False,
    label_col: str | None = None,
    transport: str = "auto",
    dtype: str = InputSpec.dtype,
    sparse: bool = False,
    counts: bool = False,
) -> SparkBlockSource | DataFrameBlockSource:
    """Read, validate and cache the input; raise DataValidationError before any fitting.

    ``sequences``: one sequence per row (a family's ``sequential``); ``allow_missing``: NaN
    and null entries are kept as NaN (a family's ``models_missing``); ``label_col``: known
    components for semi-supervised EM (integer, null or -1 for unknown). ``dtype``: the
    blocks' X, "float64" or "float32" (see :class:`~em_spark.engine.arrow_input.InputSpec`).
    ``sparse`` (a family's ``accepts_sparse``): a Vector features column is read without
    densifying, into sparse (CSR) blocks; other columns load dense as always. ``counts`` (a
    family's ``needs_counts``): rows with a negative or non-integer value are refused.

    ``num_partitions`` defaults to the default parallelism (the total executor cores): one
    task per core per iteration. Each further wave of tasks costs 25-50 ms of Python-task
    overhead per iteration (measured on local[2], 1M x 10); blocks are dealt evenly, so
    one wave is balanced.

    ``transport``: ``"rdd"`` (this module's SparkBlockSource: RDDs, a classic session only),
    ``"dataframe"`` (:class:`~em_spark.engine.dataframe_source.DataFrameBlockSource`: DataFrame
    APIs only, any session), or ``"auto"``: the DataFrame source on a Spark Connect session, the
    RDD source on a classic one (faster there per iteration: see bench/bench_connect.py).
    """
    connect = is_connect(df)
    if transport == "auto":
        transport = "dataframe" if connect else "rdd"
    if transport not in ("rdd", "dataframe"):
        raise ValueError(f"transport must be 'auto', 'rdd' or 'dataframe', got {transport!r}")
    if transport == "rdd" and connect:
        raise ValueError(
            "the 'rdd' transport needs a classic SparkSession (RDDs do not exist on Spark Connect); "
            "use transport='dataframe' or 'auto'"
        )
    sparse = sparse and not (sequences or allow_missing) and is_vector_column(df, features)
    features_expr = F.col(features) if sparse and isinstance(features, str) else input_array(df, features, sequences)
    columns = [features_expr.alias(FEATURES_FIELD)]
    weight = _weight_expr(df, weight_col)
    if weight is not None:
        columns.append(weight.alias(WEIGHT_FIELD))
    labels = _label_expr(df, label_col, sequences)
    if labels is not None:
        columns.append(labels.alias(LABEL_FIELD))
    spec = InputSpec(
        sequences=sequences,
        allow_missing=allow_missing,
        k=k if labels is not None else None,
        dtype=dtype,
        sparse=sparse,
        counts=counts,
    )
    selected = df.select(*columns)
    n_target = int(num_partitions or default_parallelism(df.sparkSession))
    if n_target < 1:
        raise ValueError(f"numPartitions must be >= 1, got {num_partitions}")
    if transport == "dataframe":
        return load_dataframe_blocks(
            selected.mapInArrow(to_payloads(spec), PAYLOAD_SCHEMA),
            num_partitions=n_target,
            sample_size=sample_size,
            seed=seed,
            sequences=sequences,
            aggregation_depth=aggregation_depth,
            check=lambda summary: check_loaded(
                summary, k, describe_features(features), weight_col, label_col, allow_missing
            ),
        )
    sc = df.sparkSession.sparkContext

    payloads = selected.mapInArrow(to_payloads(spec), PAYLOAD_SCHEMA).rdd.map(
        lambda r: ((r.src, r.idx), (bytes(r.payload), RowProblems(**{name: r[name] for name in PROBLEM_FIELDS})))
    )
    # Deal batches over the target partitions whatever the input's partitioning (a Parquet
    # file with one row group leaves all but one input split empty). Consecutive batches of
    # a source partition go to consecutive targets, and a prime stride spreads sources that
    # hold a single batch each. The (src, idx) keys make the deal deterministic, and
    # assemble_partition re-sorts within each partition, so a recomputed partition is identical.
    payloads = payloads.partitionBy(n_target, partitionFunc=lambda key: key[0] * 7919 + key[1])
    # Not persisted: the deal's shuffle files already hold the data, so a partition whose file is
    # missing is re-assembled from them (or, after executor loss, from the input) by Spark's own
    # lineage, identical because assembly sorts by key. A DISK_ONLY copy as well would hold the
    # rows a third time and send every block through the JVM and back before the file is written;
    # unpersisted, assembling and writing the file run in one Python worker (measured at 1M x 10:
    # 1.4 s of the 3.1 s fixed cost was the deal and that copy).
    blocks = payloads.mapPartitions(lambda items: assemble_partition(items, executor_root()))
    dataset_key = uuid.uuid4().hex
    spilled = blocks.mapPartitionsWithIndex(_spill_partition(dataset_key, sample_size, seed, sequences)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    handles = None
    try:
        sc.setJobDescription(f"{label} load + validate" if label else "em_spark load + validate")
        summary = ordered_tree_reduce(
            spilled.mapPartitionsWithIndex(lambda i, pairs: [(i, summary) for _, summary in pairs]),
            LoadSummary.__add__,
            aggregation_depth,
        )
        summary = summary or LoadSummary(sequences=sequences)
        check_loaded(summary, k, describe_features(features), weight_col, label_col, allow_missing)
        # Iterations need only the handles; keep them cached without the summaries.
        handles = spilled.map(lambda pair: pair[0]).persist(StorageLevel.MEMORY_AND_DISK)
        handles.count()
        sc.setJobDescription(None)  # type: ignore[arg-type]  # None clears it; pyspark's stub says str
    except BaseException:
        sc.setJobDescription(None)  # type: ignore[arg-type]  # (as above)
        if handles is not None:
            handles.unpersist()
        blocks.unpersist()
        raise
    finally:
        spilled.unpersist()
    return SparkBlockSource(handles, blocks, summary, aggregation_depth)
