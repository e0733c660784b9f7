"""Online (stepwise) EM on a classic local SparkSession: both transports and their fallbacks read the
same slices (bit-identical fits), it lands near batch EM, and a killed fit resumes exactly."""

import numpy as np
import pytest

from em_spark import GaussianMixture
from em_spark.app.demo_data import make_blobs
from em_spark.engine import spark_source
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.spark_source import load_blocks
from em_spark.models import GaussianFamily
from em_spark.models.base import Block

pytestmark = pytest.mark.spark

# 40,000 rows in 4 partitions: ~3 slices of 4096 rows per partition, 12 in all
SETTINGS = FitSettings(optimizer="online", mini_batch_fraction=0.25, max_iter=16, tol=0.0, seed=2)


@pytest.fixture(scope="module")
def blobs(spark):
    X, _, _ = make_blobs(40_000, 3, 3, separation=4.0, seed=5)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b", "c"]).repartition(4).cache()
    df.count()
    yield X, df
    df.unpersist()


def _same(a, b):
    assert a.history == b.history
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)


def test_every_source_and_fallback_reads_the_same_slices_so_online_fits_are_bit_identical(blobs):
    _, df = blobs
    family = GaussianFamily(k=3)
    rdd = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=4, transport="rdd")
    frame = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=4, transport="dataframe")
    try:
        reference = fit_em(family, rdd, SETTINGS)
        _same(fit_em(family, rdd, SETTINGS), reference)  # reproducible for a seed and partitioning
        _same(fit_em(family, frame, SETTINGS), reference)
        frame.close_files()  # the DataFrame source's fallback: the cached blocks
        _same(fit_em(family, frame, SETTINGS), reference)
        rdd.handles.mapPartitionsWithIndex(spark_source._remove_local).collect()  # the RDD's: Spark's copy
        _same(fit_em(family, rdd, SETTINGS), reference)
        assert rdd.fallbacks == SETTINGS.max_iter and frame.fallbacks == 1
        # each step read about a quarter of the rows, never all of them
        assert reference.n_iter == 16 and reference.epochs == pytest.approx(4.0)
    finally:
        rdd.close()
        frame.close()


def test_the_estimator_fits_online_near_batch_em_and_a_killed_fit_resumes_exactly(spark, blobs, tmp_path, monkeypatch):
    """0.005 nats per row: the sampling error of ~1/rho_t recent mini-batches of ~10,000 rows."""
    X, df = blobs
    params = dict(k=3, seed=2, featuresCol=["a", "b", "c"])
    online = dict(optimizer="online", miniBatchFraction=0.25, maxIter=30, tol=0.0, **params)
    batch = GaussianMixture(maxIter=200, tol=1e-8, **params).fit(df)
    reference = GaussianMixture(**online).fit(df)
    assert reference.summary.optimizer == "online" and reference.summary.stoppedBy == "maxIter"
    assert reference.summary.numIter == 30 and reference.summary.epochs == pytest.approx(7.5)
    family = GaussianFamily(k=3)

    def avg(model):
        return float(np.mean(family.score(Block(np.asarray(X)), model.arrays)["loglik"]))

    assert abs(avg(reference) - avg(batch)) < 0.005

    real = spark_source.SparkBlockSource.e_step_subset
    calls = {"n": 0}

    def dying(self, models, subset, label=""):  # the online step's one pass (it has no e_step_many)
        if calls["n"] == 12:
            raise KeyboardInterrupt("driver killed")
        calls["n"] += 1
        return real(self, models, subset, label)

    run = dict(runId="online", checkpointDir=(tmp_path / "ck").as_uri())
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_subset", dying)
    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(**online, **run).fit(df)
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_subset", real)
    resumed = GaussianMixture(**online, **run).fit(df)
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    for key in reference.arrays:
        np.testing.assert_array_equal(resumed.arrays[key], reference.arrays[key], err_msg=key)


@pytest.mark.parametrize(
    "param, value, message",
    [
        ("miniBatchFraction", 0.0, r"miniBatchFraction must be a finite number in \(0, 1\], got 0.0"),
        ("learningDecay", 0.4, r"learningDecay must be a finite number in \(0.5, 1\] \(kappa\), got 0.4"),
        ("learningOffset", -2.0, r"learningOffset must be a finite number >= 0 \(tau\), got -2.0"),
    ],
)
def test_bad_online_params_fail_before_anything_is_stored(blobs, tmp_path, param, value, message):
    _, df = blobs
    ckpt = tmp_path / "ck"
    estimator = GaussianMixture(k=3, featuresCol=["a", "b", "c"], optimizer="online", checkpointDir=ckpt.as_uri())
    with pytest.raises(ValueError, match=message):
        estimator.setParams(runId="bad", **{param: value}).fit(df)
    assert not ckpt.exists()
