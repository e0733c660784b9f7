"""Scoring a DataFrame under fitted parameters: vectorized per Arrow batch, lazily.

Rows whose features cannot be scored (null, wrong length, NaN when missing values are
not modelled) get null outputs rather than failing the whole job; callers that need
all rows scored count them.

Row families add a component (``prediction``), component probabilities (a Vector) and
the row's log-likelihood. Sequence families (one sequence per row) add the Viterbi
state path (array<int>), the per-step state posteriors (array<array<double>>) and the
sequence's log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from em_spark.engine.arrow_input import FEATURES_FIELD, InputSpec, convert_arrow
from em_spark.engine.dataframe_source import check_closure_size, is_connect
from em_spark.engine.executor_check import check_executors
from em_spark.engine.spark_source import input_array, is_vector_column
from em_spark.models.base import Block, EMFamily, ImputingFamily, Params

if TYPE_CHECKING:
    from pyspark.sql.types import DataType

__all__ = ["impute_frame", "sample_feature_counts", "score_frame"]

_SCORE_TYPE = "prediction int, probability array<double>, logLikelihood double"
_SEQUENCE_SCORE_TYPE = "prediction array<int>, probability array<array<double>>, logLikelihood double"
_IMPUTE_TYPE = "imputed array<double>, std array<double>"
_SEQUENCE_IMPUTE_TYPE = "imputed array<array<double>>, std array<array<double>>"


def _struct_types() -> dict[str, DataType]:
    """The row outputs above as StructTypes (mapInArrow's schema; DDL parsing needs a JVM on classic)."""
    from pyspark.sql import types as T

    double, integer = T.DoubleType(), T.IntegerType()
    return {
        _SCORE_TYPE: T.StructType(
            [
                T.StructField("prediction", integer),
                T.StructField("probability", T.ArrayType(double)),
                T.StructField("logLikelihood", double),
            ]
        ),
        _IMPUTE_TYPE: T.StructType(
            [T.StructField("imputed", T.ArrayType(double)), T.StructField("std", T.ArrayType(double))]
        ),
    }


def _block_of(
    family: EMFamily, n_features: int, features: pa.Array, allow_missing: bool = False
) -> tuple[Block, np.ndarray]:
    # A struct is a Vector column passed as it is (a family that accepts sparse blocks): a sparse block.
    spec = InputSpec(
        sequences=family.sequential,
        allow_missing=allow_missing or family.models_missing,
        sparse=pa.types.is_struct(features.type),
        counts=family.needs_counts,
    )
    batch = pa.RecordBatch.from_arrays([features], names=[FEATURES_FIELD])
    block, kept, _, _ = convert_arrow(batch, expected_features=n_features, spec=spec)
    return block, kept


def _lists(values: np.ndarray | pa.Array, lengths: np.ndarray, valid: np.ndarray) -> pa.ListArray:
    """A list array of ``valid.size`` entries: entry i (valid) holds the next ``lengths`` values, else null."""
    sizes = np.zeros(valid.size, np.int64)
    sizes[valid] = lengths
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    values = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~valid))


def _score_batch(family: EMFamily, params: Params, n_features: int, features: pa.Array) -> pa.Array:
    block, kept = _block_of(family, n_features, features)
    n, k = len(features), family.k
    scores = family.score(block, params) if block.n_rows else {"log_resp": np.empty((0, k)), "loglik": np.empty(0)}
    log_resp, loglik = scores["log_resp"], scores["loglik"]
    prediction = np.zeros(n, np.int32)
    prediction[kept] = np.argmax(log_resp, axis=1)
    row_loglik = np.zeros(n)
    row_loglik[kept] = loglik
    probability = _lists(np.exp(log_resp).ravel(), np.full(int(kept.sum()), k), kept)
    return pa.StructArray.from_arrays(
        [pa.array(prediction, mask=~kept), probability, pa.array(row_loglik, mask=~kept)],
        names=["prediction", "probability", "logLikelihood"],
    )


def _score_sequence_batch(family: EMFamily, params: Params, n_features: int, features: pa.Array) -> pa.Array:
    block, kept = _block_of(family, n_features, features)
    n, k = len(features), family.k
    lengths = block.lengths if block.lengths is not None else np.empty(0, np.int64)
    if block.n_rows:
        scores = family.score(block, params)
    else:
        scores = {"log_resp": np.empty((0, k)), "loglik": np.empty(0), "viterbi": np.empty(0, np.int64)}
    seq_loglik = np.zeros(n)
    seq_loglik[kept] = scores["loglik"]
    path = _lists(scores["viterbi"].astype(np.int32), lengths, kept)
    per_step = np.exp(scores["log_resp"]).ravel()
    steps = _lists(per_step, np.full(block.n_rows, k), np.ones(block.n_rows, bool))  # one list of k per step
    posteriors = _lists(steps, lengths, kept)
    return pa.StructArray.from_arrays(
        [path, posteriors, pa.array(seq_loglik, mask=~kept)], names=["prediction", "probability", "logLikelihood"]
    )


class _Inline:
    """Parameters carried in a closure, read like a broadcast (``.value``)."""

    def __init__(self, value: Params) -> None:
        self.value = value


def _with_scores(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    features: str | Sequence[str],
    return_type: str,
    batch_fn: Callable[..., pa.Array],
    tmp: str,
) -> DataFrame:
    """``df`` with a ``tmp`` struct column of ``batch_fn``'s outputs for each row (sequence)."""
    if isinstance(features, str) and _reads_vector_struct(df, family, features):
        return _with_scores_by_map(df, family, params, n_features, features, return_type, batch_fn, tmp)
    column = _input(df, family, features)
    return df.withColumn(tmp, _arrow_udf(df, family, params, n_features, return_type, batch_fn)(column))


def _reads_vector_struct(df: DataFrame, family: EMFamily, features: str) -> bool:
    """The features are a Vector column a sparse family reads as its struct (see _input)."""
    return family.accepts_sparse and not family.sequential and features in df.columns and is_vector_column(df, features)


def _with_scores_by_map(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    features: str,
    return_type: str,
    batch_fn: Callable[..., pa.Array],
    tmp: str,
) -> DataFrame:
    """The same outputs through ``mapInArrow`` over the whole frame, its columns passed through.

    A scalar Arrow UDF's input can go through Spark's row-to-columnar converter (on a Connect
    server, and on any session whose Parquet reader vectorizes nested columns, the default), which
    refuses a Vector (UDT) column (UNSUPPORTED_DATATYPE); ``mapInArrow`` hands the Vector over as its
    struct (as in the load pass) and takes it back, so sparse rows are never densified."""
    from pyspark.sql import types as T

    check_executors(df.sparkSession)
    if is_connect(df):
        check_closure_size(params, "scoring")
    inline = _Inline(params)  # the parameters ride in the closure (no broadcasts on Connect)
    names = df.columns
    at = names.index(features)

    def apply(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            for batch in batches:
                out = batch_fn(family, inline.value, n_features, batch.column(at))
                yield pa.RecordBatch.from_arrays([*batch.columns, out], names=[*names, tmp])

    schema = T.StructType([*df.schema.fields, T.StructField(tmp, _struct_types()[return_type])])
    return df.mapInArrow(apply, schema)


def _arrow_udf(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    return_type: str,
    batch_fn: Callable[..., pa.Array],
) -> Callable[..., Column]:
    from pyspark.sql.functions import arrow_udf

    # Every scoring entry point (transform, bic/aic, impute, the score and impute commands) builds
    # its UDF here, eagerly: executors that cannot import em_spark are one clear error now, before
    # a job or any output, not a worker traceback from the write (once per session, cached).
    check_executors(df.sparkSession)
    # Classic: a broadcast (fetched once per executor). Spark Connect has no broadcasts:
    # the parameters travel in the function's closure, inside the plan the client sends.
    if is_connect(df):
        check_closure_size(params, "scoring")
    params_bc = _Inline(params) if is_connect(df) else df.sparkSession.sparkContext.broadcast(params)

    @arrow_udf(return_type)  # type: ignore[call-overload]  # the stubs want functionType; 4.1+ reads the hints
    def apply(x: pa.Array) -> pa.Array:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return batch_fn(family, params_bc.value, n_features, x)

    return apply


def _null_safe_vectors(df: DataFrame, features: str | Sequence[str], sequential: bool) -> Column | None:
    """For a Vector column (array<Vector> for sequences) the features as arrays, with a null
    vector giving a null array: ``vector_to_array`` fails the whole job on a null input."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if not isinstance(features, str) or features not in df.columns:
        return None  # input_array validates and names what is wrong
    dtype = df.schema[features].dataType
    column = F.col(features)
    if not sequential and isinstance(dtype, VectorUDT):
        return F.when(column.isNotNull(), vector_to_array(column, "float64"))
    if sequential and isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, VectorUDT):
        return F.transform(column, lambda v: F.when(v.isNotNull(), vector_to_array(v, "float64")))
    return None


def _input(df: DataFrame, family: EMFamily, features: str | Sequence[str]) -> Column:
    sparse = family.accepts_sparse and not family.sequential
    if isinstance(features, str) and sparse and features in df.columns and is_vector_column(df, features):
        return F.col(features)  # read as its struct into a sparse block, never densified
    safe = _null_safe_vectors(df, features, family.sequential)
    return safe if safe is not None else input_array(df, features, family.sequential)


def sample_feature_counts(df: DataFrame, features: str | Sequence[str], sequential: bool, rows: int = 100) -> list[int]:
    """Feature counts the data holds: per row, or per step for sequences (one per sequence,
    from its first step). Without a Spark job where the schema says (a list of columns, a
    single number, one number per step, a Vector column with ML attribute metadata); else
    from the first ``rows`` non-null rows in one small job (empty when there are none).

    A model's feature count that is not among them is a whole-input mismatch, not bad rows.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if not isinstance(features, str):
        return [len(list(features))]  # long-format sequences too: one column per step feature
    input_array(df, features, sequential)  # validates the column, with the usual messages
    dtype = df.schema[features].dataType
    if sequential:
        element = cast(T.ArrayType, dtype).elementType  # (input_array checked it is an array)
        if not isinstance(element, (T.ArrayType, VectorUDT)):
            return [1]  # one number per step
        array = _null_safe_vectors(df, features, True)
        steps = array if array is not None else F.col(features)
        size = F.size(F.element_at(steps, 1))
        present = F.col(features).isNotNull() & (F.size(F.col(features)) > 0)
    else:
        if not isinstance(dtype, (T.ArrayType, VectorUDT)):
            return [1]
        if isinstance(dtype, VectorUDT):
            attrs = df.schema[features].metadata.get("ml_attr", {})
            if isinstance(attrs.get("num_attrs"), int) and attrs["num_attrs"] > 0:
                return [attrs["num_attrs"]]
        size = F.size(
            cast(Column, _null_safe_vectors(df, features, False)) if isinstance(dtype, VectorUDT) else F.col(features)
        )
        present = F.col(features).isNotNull()
    sample = df.where(present).select(size.alias("n")).limit(rows).collect()
    counts = [int(r["n"]) for r in sample if r["n"] is not None and r["n"] >= 0]
    # Most common first: the count to name when it is not the model's.
    return sorted(set(counts), key=lambda c: (-counts.count(c), c))


def score_frame(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    features: str | Sequence[str],
    *,
    prediction_col: str = "prediction",
    probability_col: str = "probability",
    loglik_col: str | None = "logLikelihood",
) -> DataFrame:
    """``df`` with the prediction, probability and log-likelihood columns added (see the module doc)."""
    from pyspark.ml.functions import array_to_vector

    batch_fn = _score_sequence_batch if family.sequential else _score_batch
    return_type = _SEQUENCE_SCORE_TYPE if family.sequential else _SCORE_TYPE
    tmp = "__em_score"
    out = _with_scores(df, family, params, n_features, features, return_type, batch_fn, tmp)
    out = out.withColumn(prediction_col, F.col(f"{tmp}.prediction"))
    probability = F.col(f"{tmp}.probability")
    if not family.sequential:
        # array_to_vector fails on null, so unscorable rows keep a null probability.
        probability = F.when(probability.isNotNull(), array_to_vector(probability))
    out = out.withColumn(probability_col, probability)
    if loglik_col:
        out = out.withColumn(loglik_col, F.col(f"{tmp}.logLikelihood"))
    return out.drop(tmp)


def _impute_batch(family: ImputingFamily, params: Params, n_features: int, features: pa.Array) -> pa.Array:
    # Imputing reads missing entries whatever the model was fitted with: they are what it fills.
    block, kept = _block_of(family, n_features, features, allow_missing=True)
    n_kept = int(kept.sum())
    if block.n_rows:
        out = family.impute(block, params)
        imputed, std = out["imputed"], out["std"]
    else:
        imputed = std = np.empty((0, n_features))
    width = np.full(n_kept, n_features)
    return pa.StructArray.from_arrays(
        [_lists(imputed.ravel(), width, kept), _lists(std.ravel(), width, kept)], names=["imputed", "std"]
    )


def impute_frame(
    df: DataFrame,
    family: EMFamily,
    params: Params,
    n_features: int,
    features: str | Sequence[str],
    *,
    output_col: str = "imputed",
    std_col: str = "imputedStd",
) -> DataFrame:
    """``df`` with ``output_col`` (array<double>: observed entries as they are, missing ones
    replaced by their conditional expectation) and ``std_col`` (array<double>: the conditional
    standard deviation of each entry, 0 where observed). Rows that cannot be read (null vector,
    wrong length, infinities) get nulls."""
    if not family.supports_impute:
        raise TypeError(f"the {family.name!r} family does not impute missing values")
    tmp = "__em_impute"
    if family.sequential:
        out = _with_scores(df, family, params, n_features, features, _SEQUENCE_IMPUTE_TYPE, _impute_sequence_batch, tmp)
    else:
        out = _with_scores(df, family, params, n_features, features, _IMPUTE_TYPE, _impute_batch, tmp)
    return out.withColumn(output_col, F.col(f"{tmp}.imputed")).withColumn(std_col, F.col(f"{tmp}.std")).drop(tmp)


def _impute_sequence_batch(family: ImputingFamily, params: Params, n_features: int, features: pa.Array) -> pa.Array:
    """One sequence per row: the imputed steps (a list of vectors) and their standard deviations."""
    block, kept = _block_of(family, n_features, features, allow_missing=True)
    lengths = block.lengths if block.lengths is not None else np.empty(0, np.int64)
    if block.n_rows:
        out = family.impute(block, params)
        imputed, std = out["imputed"], out["std"]
    else:
        imputed = std = np.empty((0, n_features))
    every_step = np.ones(block.n_rows, bool)
    width = np.full(block.n_rows, n_features)

    def sequences_of(values: np.ndarray) -> pa.ListArray:
        return _lists(_lists(values.ravel(), width, every_step), lengths, kept)

    return pa.StructArray.from_arrays([sequences_of(imputed), sequences_of(std)], names=["imputed", "std"])
