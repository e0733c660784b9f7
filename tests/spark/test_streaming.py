"""em_spark.streaming on a file-source Structured Streaming query: one update per micro-batch,
a stopped and restarted query that goes on from its committed model, a batch id delivered twice."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark import GaussianMixture
from em_spark.engine.validation import DataValidationError
from em_spark.storage import CheckpointStore
from em_spark.streaming import StreamingUpdate

pytestmark = pytest.mark.spark

SCHEMA = "x0 double, x1 double"


def _rows(seed, n, shift=0.0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0]])
    return centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 2)) + shift


def _drop(directory, index, X):
    """One file of the stream; modification times in index order, so micro-batches come in that order."""
    path = directory / f"part-{index:03d}.parquet"
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1]}), path)
    os.utime(path, (1_700_000_000 + index, 1_700_000_000 + index))
    return path


def _run_query(spark, updater, incoming, spark_checkpoint):
    stream = spark.readStream.schema(SCHEMA).option("maxFilesPerTrigger", 1).parquet(str(incoming))
    query = (
        stream.writeStream.foreachBatch(updater.check(stream))
        .option("checkpointLocation", str(spark_checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    assert query.exception() is None


def test_a_restarted_query_continues_and_a_repeated_batch_counts_once(spark, tmp_path):
    incoming, ours, theirs = tmp_path / "in", f"file://{tmp_path}/em", tmp_path / "spark-ckpt"
    incoming.mkdir()
    base = GaussianMixture(k=3, seed=1, featuresCol=["x0", "x1"], maxIter=20).fit(
        spark.createDataFrame([tuple(map(float, r)) for r in _rows(0, 1500)], ["x0", "x1"])
    )
    batches = [_rows(1, 300, 0.3), _rows(2, 200, 0.6), _rows(3, 400, 0.9), _rows(4, 250, 1.2)]
    paths = [_drop(incoming, 0, batches[0]), _drop(incoming, 1, batches[1])]

    updater = StreamingUpdate(base, ours, "events-stream", halfLife=2.0, maxIter=5)
    _run_query(spark, updater, incoming, theirs)
    assert updater.lastBatchId == 1

    # the query stops; later files arrive and a new process starts the query again
    paths += [_drop(incoming, 2, batches[2]), _drop(incoming, 3, batches[3])]
    restarted = StreamingUpdate(base, ours, "events-stream", halfLife=2.0, maxIter=5)
    assert restarted.lastBatchId == 1  # from the committed checkpoint, not from `base`
    _run_query(spark, restarted, incoming, theirs)
    assert restarted.lastBatchId == 3

    # the same as four updates one after another, uninterrupted
    expected = base
    for path in paths:
        expected = expected.update(spark.read.schema(SCHEMA).parquet(str(path)), halfLife=2.0, maxIter=5)
    got = restarted.model
    for name, value in expected.public_params().items():
        np.testing.assert_allclose(got.public_params()[name], value, rtol=1e-9, atol=1e-9, err_msg=name)
    decay = 0.5**0.5
    count = 1500.0
    for X in batches:
        count = decay * count + len(X)
    assert got.statistics.count == pytest.approx(count, rel=1e-12)

    # micro-batch 3 delivered again (Spark replays a batch it did not record as done): not counted twice
    store = CheckpointStore(ours, "events-stream")
    before = store.sequences()
    restarted(spark.read.schema(SCHEMA).parquet(str(paths[3])), 3)
    assert restarted.model is got and restarted.lastBatchId == 3 and store.sequences() == before


def test_a_stream_without_the_models_feature_column_is_refused_before_the_query_starts(spark, tmp_path):
    base = GaussianMixture(k=2, seed=1, featuresCol=["x0", "x1"], maxIter=5).fit(
        spark.createDataFrame([tuple(map(float, r)) for r in _rows(5, 300)], ["x0", "x1"])
    )
    incoming = tmp_path / "in"
    incoming.mkdir()
    stream = spark.readStream.schema("x0 double, y1 double").parquet(str(incoming))
    updater = StreamingUpdate(base, f"file://{tmp_path}/em", "bad-stream", halfLife=3)
    with pytest.raises(DataValidationError, match="'x1' is not a column of the input; available columns"):
        updater.check(stream)
    assert not (tmp_path / "em").exists()


def test_a_bad_half_life_or_a_model_without_statistics_is_refused_before_anything_is_written(spark, tmp_path):
    base = GaussianMixture(k=2, seed=1, featuresCol=["x0", "x1"], maxIter=5).fit(
        spark.createDataFrame([tuple(map(float, r)) for r in _rows(6, 200)], ["x0", "x1"])
    )
    with pytest.raises(ValueError, match="halfLife must be > 0"):
        StreamingUpdate(base, f"file://{tmp_path}/em", "s", halfLife=-1)
    old = base.copy()
    old._statistics = None  # as an older em_spark saved it
    with pytest.raises(ValueError, match="stores no sufficient statistics"):
        StreamingUpdate(old, f"file://{tmp_path}/em", "s", halfLife=2)
    assert not (tmp_path / "em").exists()
