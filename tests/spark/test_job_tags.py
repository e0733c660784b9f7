"""A classic session's fit tags every job with its run (SparkContext job tags, as the Connect
client's session tags in tests/connect/test_connect.py): a KeyboardInterrupt cancels that tag's
jobs, the tag is gone afterwards, and the run resumes from its checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from em_spark import GaussianMixture
from em_spark.engine import spark_source

pytestmark = pytest.mark.spark


def test_a_classic_fit_tags_its_jobs_and_a_keyboard_interrupt_cancels_them_and_resumes(spark, tmp_path, monkeypatch):
    X = np.random.default_rng(1).normal(size=(600, 2))
    X[:300] += 4.0
    df = spark.createDataFrame([(float(a), float(b)) for a, b in X], "x0 double, x1 double").repartition(2)
    sc = spark.sparkContext
    params = dict(k=2, featuresCol=["x0", "x1"], maxIter=4, tol=0.0, seed=5, checkpointDir=(tmp_path / "ck").as_uri())
    cancelled: list[str] = []
    monkeypatch.setattr(type(sc), "cancelJobsWithTag", lambda self, tag: cancelled.append(tag))
    real = spark_source.SparkBlockSource.e_step
    seen = {"n": 0, "tags": []}

    def dying(self, family, p, label=""):
        seen["tags"].append({str(t) for t in sc.getJobTags()})  # (a py4j set)
        if seen["n"] == 2:
            raise KeyboardInterrupt("Ctrl-C")
        seen["n"] += 1
        return real(self, family, p, label)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step", dying)
    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(runId="tagged", **params).fit(df)
    assert seen["tags"] == [{"em_spark-tagged"}] * 3
    assert cancelled == ["em_spark-tagged"] and len(sc.getJobTags()) == 0
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step", real)
    resumed = GaussianMixture(runId="tagged", **params).fit(df)
    reference = GaussianMixture(runId="reference", **params).fit(df)
    assert len(resumed.summary.iterationSeconds) == 4 - 2  # resumed after the two checkpointed iterations
    for key in reference.arrays:
        np.testing.assert_array_equal(resumed.arrays[key], reference.arrays[key], err_msg=key)


def test_the_candidates_of_select_run_their_passes_in_threads_that_carry_the_tag(spark, monkeypatch):
    # select's candidates run in threads of their own (engine/shared_passes.py); whichever thread
    # completes a round runs the pass, so every thread must carry the caller's tag.
    from em_spark.app.demo_data import make_blobs
    from em_spark.engine.job_tags import tagged_jobs
    from em_spark.engine.loop import FitSettings
    from em_spark.engine.selection import select_models

    X, _, _ = make_blobs(1200, 2, 2, separation=5.0, seed=3)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b"]).repartition(2)
    sc = spark.sparkContext
    real = spark_source.SparkBlockSource.e_step_many
    seen: list[set[str]] = []

    def recording(self, models, label=""):
        seen.append({str(t) for t in sc.getJobTags()})
        return real(self, models, label)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", recording)
    source = spark_source.load_blocks(df, ["a", "b"], None, k=3, seed=0, num_partitions=2)
    try:
        with tagged_jobs(spark, "grid") as tag:
            candidates = select_models(
                source,
                [1, 2, 3],
                ["full", "diag"],
                FitSettings(max_iter=4, seed=0),
            )
    finally:
        source.close()
    assert tag == "em_spark-grid" and len(candidates) == 6
    assert seen and all(tags == {"em_spark-grid"} for tags in seen), seen
    assert len(sc.getJobTags()) == 0
