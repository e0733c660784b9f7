"""The Spark block source: iterations read executor-local files, with an exact fallback."""

import os
import shutil

import numpy as np
import pytest
from pyspark import SparkFiles

from em_spark.app.demo_data import make_blobs
from em_spark.engine.spark_source import load_blocks
from em_spark.models import GaussianFamily

pytestmark = pytest.mark.spark


def test_missing_local_files_fall_back_to_sparks_copy_with_identical_statistics(spark):
    X, _, _ = make_blobs(4000, 3, 2, seed=3)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b", "c"]).repartition(3)
    source = load_blocks(df, ["a", "b", "c"], None, k=2, seed=0, num_partitions=4)
    try:
        family = GaussianFamily(k=2)
        params = family.initialize(source.sample, np.random.default_rng(0))
        fast = source.e_step(family, params)
        assert source.fallbacks == 0
        shutil.rmtree(os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks"))
        slow = source.e_step(family, params)
        assert source.fallbacks == 1
        for name in fast:
            np.testing.assert_array_equal(fast[name], slow[name])
        assert fast.count == 4000
    finally:
        source.close()


def test_close_removes_the_local_files(spark):
    df = spark.createDataFrame([(float(i), float(i % 3)) for i in range(100)], ["a", "b"])
    source = load_blocks(df, ["a", "b"], None, k=2, seed=0)
    root = os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks")
    assert any(os.scandir(root))
    source.close()
    assert not os.path.exists(root) or not any(os.scandir(root))


def test_the_dataframe_transport_gives_the_rdd_transports_statistics_bit_for_bit(spark):
    # The Connect path's source on a classic session: same deal, same blocks, same task bodies,
    # the same tree order on the driver; with its files, and from the cached blocks without them.
    X, _, _ = make_blobs(5000, 3, 3, seed=5)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b", "c"]).repartition(3)
    family = GaussianFamily(k=3)
    rdd = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=5, transport="rdd")
    frame = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=5, transport="dataframe")
    try:
        assert type(frame).__name__ == "DataFrameBlockSource"
        assert frame.fingerprint == rdd.fingerprint
        np.testing.assert_array_equal(frame.sample.X, rdd.sample.X)
        params = family.initialize(rdd.sample, np.random.default_rng(1))
        expected = rdd.e_step(family, params)
        fast = frame.e_step(family, params)
        frame.close_files()
        slow = frame.e_step(family, params)
        assert (frame.fallbacks, rdd.fallbacks) == (1, 0)
        for name in expected:
            np.testing.assert_array_equal(fast[name], expected[name])
            np.testing.assert_array_equal(slow[name], expected[name])
    finally:
        rdd.close()
        frame.close()


@pytest.mark.parametrize("transport", ["rdd", "dataframe"])
def test_one_job_computes_the_statistics_of_several_models_bit_for_bit(spark, transport):
    # Restarts and select candidates share each data pass: one Spark job for all the models,
    # each model's statistics exactly those of a job of its own (and from Spark's copy too).
    X, _, _ = make_blobs(3000, 3, 3, seed=8)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b", "c"]).repartition(3)
    source = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=5, transport=transport)
    sc = spark.sparkContext
    try:
        families = [GaussianFamily(k=3), GaussianFamily(k=2, covariance_type="diag"), GaussianFamily(k=4)]
        models = [(f, f.initialize(source.sample, np.random.default_rng(i))) for i, f in enumerate(families)]
        alone = [source.e_step(family, params) for family, params in models]
        group = f"shared-pass-{transport}"
        sc.setJobGroup(group, "one E-step job for three models")
        shared = source.e_step_many(models)
        sc.setLocalProperty("spark.jobGroup.id", None)
        assert len(sc.statusTracker().getJobIdsForGroup(group)) == 1
        if transport == "rdd":
            shutil.rmtree(os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks"))
        else:
            source.close_files()
        from_copy = source.e_step_many(models)
        assert source.fallbacks == 1
        for a, b, c in zip(alone, shared, from_copy):
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
                np.testing.assert_array_equal(a[name], c[name])
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        source.close()


def test_the_restarts_of_a_fit_share_one_job_per_round_on_the_dataframe_source(spark):
    # nInit=3 on the Connect path's source: one Spark job per iteration for every restart still
    # running, each restart bit for bit the restart run alone (the textbook loop, one after another).
    from fakes import one_after_another

    from em_spark.engine.loop import FitSettings, fit_em

    X, _, _ = make_blobs(3000, 2, 3, separation=2.0, seed=4)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b"]).repartition(3)
    source = load_blocks(df, ["a", "b"], None, k=3, seed=0, num_partitions=4, transport="dataframe")
    sc = spark.sparkContext
    family = GaussianFamily(k=3, init_mode="random")
    settings = FitSettings(max_iter=30, tol=1e-3, n_init=3, seed=5)
    try:
        reference = one_after_another(family, source, settings)
        sc.setJobGroup("restarts", "a fit with nInit=3")
        result = fit_em(family, source, settings)
        sc.setLocalProperty("spark.jobGroup.id", None)
        rounds = max(len(history) for _, history in reference)
        assert len(sc.statusTracker().getJobIdsForGroup("restarts")) == rounds
        assert rounds < sum(len(history) for _, history in reference)  # fewer jobs than restarts one after another
        for outcome, (params, history) in zip(result.restarts, reference):
            assert outcome.history == history
            for name in params:
                np.testing.assert_array_equal(outcome.params[name], params[name])
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        source.close()
