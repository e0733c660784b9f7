"""Sequence input on Spark: whole sequences per partition, input types, long format, validation."""

import itertools
from collections import Counter

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from em_spark import GaussianHMM
from em_spark.engine import spark_source
from em_spark.engine.spark_source import group_sequences, load_blocks
from em_spark.engine.validation import DataValidationError

pytestmark = pytest.mark.spark


def _sequences(seed=0, n_seq=90, d=2, low=1, high=25):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(n), d)).round(4) for n in rng.integers(low, high, size=n_seq)]


def _per_row(spark, seqs, partitions=5):
    rows = [(i, s.tolist()) for i, s in enumerate(seqs)]
    return spark.createDataFrame(rows, "id long, obs array<array<double>>").repartition(partitions)


def _long(spark, seqs, seed=1):
    """One row per step, shuffled; times are increasing but neither contiguous nor from 0."""
    rng = np.random.default_rng(seed)
    rows = [
        (i, int(100 * t + rng.integers(0, 50)), float(x[0]), float(x[1]))
        for i, s in enumerate(seqs)
        for t, x in enumerate(s)
    ]
    rows = [rows[j] for j in rng.permutation(len(rows))]
    return spark.createDataFrame(rows, "sid long, t long, a double, b double").repartition(3)


def _key(seq):
    return np.asarray(seq, dtype=np.float64).tobytes() + str(np.shape(seq)).encode()


def _partition_sequences(source):
    """Per partition of the Spark-managed blocks: the list of its sequences (as arrays)."""

    def collect(index, items):
        out = []
        for block, _ in items:
            edges = np.concatenate([[0], np.cumsum(block.lengths)]) if block.n_rows else [0]
            out.extend(block.X[a:b].copy() for a, b in itertools.pairwise(edges))
        yield index, out

    return dict(source.blocks.mapPartitionsWithIndex(collect).collect())


def test_load_never_splits_a_sequence_across_partitions(spark):
    seqs = _sequences()
    df = _per_row(spark, seqs, partitions=5)
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # many small batches per input split
    try:
        source = load_blocks(df, "obs", None, k=2, seed=0, num_partitions=3, sequences=True)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    try:
        assert source.num_partitions == 3
        summary = source.summary
        assert summary.sequences and summary.rows == len(seqs)
        assert summary.observations == sum(len(s) for s in seqs)
        per_partition = _partition_sequences(source)
        assert len(per_partition) == 3 and all(per_partition.values())  # batches were dealt over all three
        # the partitions' sequences, read back from (X, lengths), are exactly the input sequences
        loaded = [s for part in per_partition.values() for s in part]
        assert Counter(map(_key, loaded)) == Counter(map(_key, seqs))
        assert sum(len(s) for s in loaded) == summary.observations
        # and the per-partition lengths of the executor-local handles agree with them
        handles = source.handles.collect()
        for h in handles:
            assert sum(h.block_rows) == sum(len(s) for s in per_partition[h.index])
            assert sum(h.block_sequences) == len(per_partition[h.index])
        assert sum(h.rows for h in handles) == summary.observations
        # the sample holds whole input sequences
        sample = summary.sample
        edges = np.concatenate([[0], np.cumsum(sample.lengths)])
        inputs = set(map(_key, seqs))
        assert all(_key(sample.X[a:b]) in inputs for a, b in itertools.pairwise(edges))
    finally:
        source.close()


def test_array_of_vectors_arrays_of_doubles_and_arrays_of_ints_are_read_alike(spark):
    seqs = _sequences(seed=2, n_seq=20)
    vectors = spark.createDataFrame([(i, [Vectors.dense(x) for x in s]) for i, s in enumerate(seqs)], ["id", "obs"])
    assert vectors.schema["obs"].dataType.simpleString() == "array<vector>"
    arrays = _per_row(spark, seqs, partitions=2)
    fingerprints = []
    for df in (vectors, arrays):
        source = load_blocks(df, "obs", None, k=2, seed=0, num_partitions=2, sequences=True)
        try:
            assert source.n_features == 2
            fingerprints.append(source.fingerprint)
            loaded = [s for part in _partition_sequences(source).values() for s in part]
            assert Counter(map(_key, loaded)) == Counter(map(_key, seqs))
        finally:
            source.close()
    assert fingerprints[0] == fingerprints[1]

    symbols = [[0, 2, 1, 1], [3], [2, 2, 0]]
    ints = spark.createDataFrame([(s,) for s in symbols], "obs array<int>")
    source = load_blocks(ints, "obs", None, k=2, seed=0, num_partitions=2, sequences=True)
    try:
        assert source.n_features == 1
        assert source.summary.rows == 3 and source.summary.observations == 8
        loaded = [s for part in _partition_sequences(source).values() for s in part]
        assert sorted(s[:, 0].tolist() for s in loaded) == sorted(map(list, symbols))
    finally:
        source.close()

    with pytest.raises(DataValidationError, match="one sequence per row"):
        load_blocks(spark.createDataFrame([(1.0,)], "obs double"), "obs", None, k=1, seed=0, sequences=True)
    with pytest.raises(DataValidationError, match="one sequence per row from one column"):
        load_blocks(arrays, ["a", "b"], None, k=1, seed=0, sequences=True)


def test_group_sequences_orders_steps_by_time_and_equals_one_sequence_per_row(spark):
    seqs = _sequences(seed=3, n_seq=40)
    grouped = group_sequences(_long(spark, seqs), "sid", "t", ["a", "b"])
    expected = spark.createDataFrame(
        [(i, s.tolist()) for i, s in enumerate(seqs)], "sid long, sequence array<array<double>>"
    )
    assert_df_equality(grouped, expected, ignore_row_order=True, ignore_nullable=True)
    # loaded, it is the same data as the one-per-row input: the same fingerprint
    identities = []
    for df, col in ((grouped, "sequence"), (_per_row(spark, seqs), "obs")):
        source = load_blocks(df, col, None, k=2, seed=0, num_partitions=2, sequences=True)
        identities.append(source.fingerprint)
        source.close()
    assert identities[0] == identities[1]


def test_duplicate_times_are_refused_naming_the_sequence(spark):
    seqs = _sequences(seed=4, n_seq=6)
    long = _long(spark, seqs)
    duplicated = long.union(long.where(F.col("sid") == 4).limit(1))
    with pytest.raises(DataValidationError, match=r"sequence\(s\) \[4\] have two or more steps with the same 't'"):
        group_sequences(duplicated, "sid", "t", ["a", "b"])
    with pytest.raises(DataValidationError, match="distinct time"):
        GaussianHMM(k=2, featuresCol=["a", "b"], sequenceCol="sid", timeCol="t").fit(duplicated)
    with pytest.raises(DataValidationError, match="timeCol 'when' is not a column"):
        group_sequences(long, "sid", "when", ["a", "b"])
    with pytest.raises(ValueError, match="needs both sequenceCol and timeCol"):
        GaussianHMM(k=2, featuresCol=["a", "b"], sequenceCol="sid").fit(long)


def test_bad_sequences_fail_before_iteration_one_with_one_error_naming_the_counts(spark, tmp_path, monkeypatch):
    good = [s.tolist() for s in _sequences(seed=5, n_seq=10)]
    nan, inf = float("nan"), float("inf")
    bad = [None, [], [[1.0, nan], [2.0, 3.0]], [[1.0, 2.0], [inf, 0.0]], [[1.0, 2.0], [3.0]]]
    df = spark.createDataFrame([(s,) for s in good + bad], "obs array<array<double>>").repartition(3)

    def no_e_step(*args, **kwargs):
        raise AssertionError("an E-step ran on data that should have been refused")

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step", no_e_step)
    ckpt = tmp_path / "ck"
    with pytest.raises(DataValidationError) as err:
        GaussianHMM(k=2, featuresCol="obs", checkpointDir=ckpt.as_uri(), runId="bad").fit(df)
    message = str(err.value)
    assert message.startswith("cannot fit: ")
    assert "2 sequence(s) have a null or empty sequence in column 'obs'" in message
    assert "1 sequence(s) differ" in message
    assert "2 sequence(s) contain NaN, infinite or null feature values in column 'obs'" in message
    assert not ckpt.exists()


def test_null_sequence_ids_or_times_are_refused_naming_the_columns(spark):
    from em_spark.engine.spark_source import group_sequences
    from em_spark.engine.validation import DataValidationError

    df = spark.createDataFrame([(1, 0, 1.0), (1, None, 2.0), (None, 0, 3.0)], "sid int, t int, x double")
    with pytest.raises(DataValidationError, match=r"1 row\(s\) with a null 'sid' and 1 with a null 't'"):
        group_sequences(df, "sid", "t", ["x"])
