"""Every family through a real Spark Connect server: fit, transform, criteria, save/load,
resume, restarts and the run lease, with the same fitted parameters as a classic session."""

from __future__ import annotations

import numpy as np
import pytest
from connect_data import FITS

import em_spark
from em_spark.engine import dataframe_source
from em_spark.engine.spark_source import load_blocks

pytestmark = pytest.mark.connect


def _fit(connect, datasets, name, **overrides):
    estimator, params, data = FITS[name]
    df = connect.read.parquet(datasets[data])
    return getattr(em_spark, estimator)(**{**params, **overrides}).fit(df), df


def _assert_same_model(a, b):
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


def test_the_session_is_a_connect_session_without_a_spark_context(connect):
    assert dataframe_source.is_connect(connect)
    with pytest.raises(Exception, match="JVM_ATTRIBUTE_NOT_SUPPORTED"):
        connect.sparkContext  # noqa: B018 -- the attribute access is what fails


@pytest.mark.parametrize("name", list(FITS))
def test_fit_on_connect_is_bit_identical_to_classic(connect, datasets, classic_models, name):
    # Same Parquet files, partitioning, Arrow batch size and seed: the DataFrame source deals
    # the same blocks to the same partitions, runs the same task bodies and adds the
    # per-partition statistics in the RDD tree's order, so nothing differs, not even the last bit.
    model, _ = _fit(connect, datasets, name)
    estimator = FITS[name][0]
    reference = getattr(em_spark, f"{estimator}Model").load(classic_models[name])
    _assert_same_model(model, reference)
    assert model.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    assert model.summary.dataFingerprint == reference.summary.dataFingerprint
    assert model.summary.numRows == reference.summary.numRows


@pytest.mark.parametrize("name", list(FITS))
def test_transform_criteria_save_and_load_on_connect(connect, datasets, tmp_path, name):
    model, df = _fit(connect, datasets, name, maxIter=3)
    scored = model.transform(df)
    rows = scored.select("prediction", "probability", "logLikelihood").collect()
    assert len(rows) == df.count()
    assert all(r["logLikelihood"] is not None for r in rows)
    criteria = model.criteria(df)
    assert np.isfinite(criteria["bic"]) and np.isfinite(criteria["aic"])
    assert model.bic(df) == criteria["bic"]
    model.save(str(tmp_path / "model"))
    loaded = type(model).load(str(tmp_path / "model"))
    _assert_same_model(model, loaded)
    again = loaded.transform(df).select("logLikelihood").collect()
    assert [r[0] for r in again] == [r["logLikelihood"] for r in rows]


def test_impute_on_connect(connect, datasets):
    model, df = _fit(connect, datasets, "missing", maxIter=3)
    out = model.impute(df).select("x", "imputed", "imputedStd").collect()
    assert len(out) == 3000
    for row in out[:200]:
        x, filled = np.array(row["x"], dtype=float), np.array(row["imputed"])
        observed = ~np.isnan(x)
        np.testing.assert_array_equal(filled[observed], x[observed])
        assert np.isfinite(filled).all()


def test_a_killed_fit_resumes_exactly_on_connect(connect, datasets, tmp_path, monkeypatch):
    """Every job of a fit carries its run's tag; a Ctrl-C (KeyboardInterrupt) in the client asks
    the server to interrupt that tag's operations, removes the tag, and the checkpoints resume."""
    params = dict(nInit=2, maxIter=6, checkpointDir=(tmp_path / "ck").as_uri())
    Source = dataframe_source.DataFrameBlockSource
    real_many = Source.e_step_many  # (e_step goes through it)
    calls: dict = {"n": 0, "die_at": None, "tags": []}
    session_type = type(connect)
    real_interrupt = session_type.interruptTag
    interrupted: list[str] = []

    def interrupt(self, tag):
        interrupted.append(tag)
        return real_interrupt(self, tag)  # the real call to the server

    def pass_started():  # one data pass: both restarts' E-steps share it while both run
        calls["tags"].append(set(connect.getTags()))  # a copy: getTags() is the live set removeTag empties
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt("client killed")
        calls["n"] += 1

    def many(self, models, label=""):
        pass_started()
        return real_many(self, models, label)

    monkeypatch.setattr(session_type, "interruptTag", interrupt)
    monkeypatch.setattr(Source, "e_step_many", many)
    reference, _ = _fit(connect, datasets, "gaussian", runId="reference", **params)
    passes = calls["n"]
    assert passes >= 3
    assert all(tags == {"em_spark-reference"} for tags in calls["tags"]), calls["tags"]
    assert connect.getTags() == set() and interrupted == []
    calls.update(n=0, die_at=passes - 2, tags=[])  # killed before the last two passes
    with pytest.raises(KeyboardInterrupt):
        _fit(connect, datasets, "gaussian", runId="connect-1", **params)
    assert len(calls["tags"]) == passes - 1 and all(tags == {"em_spark-connect-1"} for tags in calls["tags"])
    assert interrupted == ["em_spark-connect-1"]
    assert connect.getTags() == set()  # removed: the next run's jobs do not carry it
    calls.update(n=0, die_at=None)
    resumed, _ = _fit(connect, datasets, "gaussian", runId="connect-1", **params)
    _assert_same_model(resumed, reference)
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    assert resumed.summary.bestRestart == reference.summary.bestRestart
    assert calls["n"] == 2  # only the passes after the kill ran


def test_a_run_held_by_a_live_driver_is_refused_on_connect(connect, datasets, tmp_path):
    from em_spark.storage import RunLock, RunLockedError

    checkpoints = (tmp_path / "ck").as_uri()
    with RunLock(checkpoints, "busy", heartbeat_seconds=0), pytest.raises(RunLockedError, match="already running"):
        _fit(connect, datasets, "gaussian", runId="busy", checkpointDir=checkpoints)


def test_lost_block_files_fall_back_to_the_cached_blocks_with_identical_statistics(connect, datasets):
    from em_spark.models import GaussianFamily

    df = connect.read.parquet(datasets["rows"])
    source = load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, num_partitions=3)
    try:
        assert isinstance(source, dataframe_source.DataFrameBlockSource)
        family = GaussianFamily(k=3)
        params = family.initialize(source.sample, np.random.default_rng(0))
        fast = source.e_step(family, params)
        assert source.fallbacks == 0
        source.close_files()
        slow = source.e_step(family, params)
        assert source.fallbacks == 1
        for name in fast:
            np.testing.assert_array_equal(fast[name], slow[name])
        assert fast.count == 6000
    finally:
        source.close()


def test_the_candidates_of_select_send_their_passes_with_the_tag_on_connect(connect, datasets, monkeypatch):
    # select's candidates run in threads (engine/shared_passes.py) and a Connect session's tags
    # are per thread: each candidate thread inherits them (job_tags.tag_carrying_thread)
    from em_spark.engine.job_tags import tagged_jobs
    from em_spark.engine.loop import FitSettings
    from em_spark.engine.selection import select_models

    Source = dataframe_source.DataFrameBlockSource
    real_many = Source.e_step_many
    seen: list[set[str]] = []

    def many(self, models, label=""):
        seen.append(set(connect.getTags()))  # a copy: getTags() is the live set removeTag empties
        return real_many(self, models, label)

    monkeypatch.setattr(Source, "e_step_many", many)
    source = load_blocks(connect.read.parquet(datasets["rows"]), ["a", "b", "c"], None, k=3, seed=0, num_partitions=3)
    try:
        with tagged_jobs(connect, "grid-on-connect"):
            candidates = select_models(source, [1, 2, 3], ["diag"], FitSettings(max_iter=3, seed=0))
    finally:
        source.close()
    assert len(candidates) == 3
    assert seen and all(tags == {"em_spark-grid-on-connect"} for tags in seen), seen
    assert connect.getTags() == set()


def test_the_rdd_transport_on_connect_is_a_clear_error(connect, datasets):
    df = connect.read.parquet(datasets["rows"])
    with pytest.raises(ValueError, match="needs a classic SparkSession.*transport='dataframe'"):
        load_blocks(df, ["a", "b", "c"], None, k=3, seed=0, transport="rdd")


def test_gaussians_cluster_sizes_and_predictions_on_connect(connect, datasets):
    model, df = _fit(connect, datasets, "gaussian", maxIter=3)
    rows = model.gaussiansDF.collect()
    k = model.getK()
    assert len(rows) == k
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row["mean"].toArray(), model.means[i])
        np.testing.assert_array_equal(row["cov"].toArray(), model.full_covariances()[i])
    predicted = [r["prediction"] for r in model.summary.predictions.select("prediction").collect()]
    assert len(predicted) == df.count()
    assert model.summary.clusterSizes == [predicted.count(i) for i in range(k)]


@pytest.mark.parametrize("name", ["gaussian", "categorical", "gaussian_hmm"])
def test_sample_on_connect_draws_the_rows_the_seed_promises(connect, datasets, name):
    """model.sample uses DataFrame APIs only: on Connect, task p draws with default_rng([seed, p]) as
    on a classic session (tests/spark/test_sample.py), so both transports give the same rows."""
    model, _ = _fit(connect, datasets, name, maxIter=2)
    length = 6 if model.family.sequential else None
    rows = model.sample(50, seed=9, length=length).collect()
    drawn = model.family.draw(model.arrays, 50, np.random.default_rng([9, 0]), length=length)
    if model.family.sequential:
        np.testing.assert_array_equal(np.concatenate([np.array(r.seq) for r in rows]), drawn.X)
        np.testing.assert_array_equal(np.concatenate([r.states for r in rows]), drawn.components)
    else:
        columns = model.getOrDefault("featuresCol")
        np.testing.assert_array_equal(np.array([[r[c] for c in columns] for r in rows]), drawn.X)
        np.testing.assert_array_equal([r.component for r in rows], drawn.components)
