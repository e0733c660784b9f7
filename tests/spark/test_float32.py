"""dtype="float32" on Spark: the same fit as float64 within 1e-4, half the executor-local bytes."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from pyspark import SparkFiles

from em_spark.api import GaussianMixture
from em_spark.app.demo_data import make_blobs
from em_spark.engine.spark_source import load_blocks
from em_spark.engine.state import ResumeMismatchError

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def blobs(spark):
    X, _, truth = make_blobs(50_000, 10, 5, seed=21)
    df = spark.createDataFrame([(r.tolist(),) for r in X], "features array<double>").repartition(3).cache()
    df.count()
    yield df, truth
    df.unpersist()


def _x_bytes() -> int:
    root = os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks")
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(root, "*", "*.x.bin")))


def test_a_float32_fit_matches_the_float64_fit_within_1e_4(blobs):
    df, truth = blobs
    fits = {
        dtype: GaussianMixture(k=5, tol=1e-10, maxIter=300, seed=3, initialModel=truth, dtype=dtype).fit(df)
        for dtype in ("float64", "float32")
    }
    wide, narrow = fits["float64"], fits["float32"]
    assert narrow.getDtype() == "float32" and wide.getDtype() == "float64"
    for name in ("weights", "means", "covariances"):
        a, b = getattr(wide, name), getattr(narrow, name)
        scale = np.abs(a).max()  # relative to the array's scale: an entry near 0 has no relative digits
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    assert narrow.summary.logLikelihood == pytest.approx(wide.summary.logLikelihood, rel=1e-6)


def test_float32_blocks_take_half_the_executor_local_bytes(blobs):
    df, _ = blobs
    sizes = {}
    for dtype in ("float64", "float32"):
        before = _x_bytes()
        source = load_blocks(df, "features", None, k=5, seed=0, dtype=dtype)
        try:
            sizes[dtype] = _x_bytes() - before
        finally:
            source.close()
    assert sizes["float64"] >= 50_000 * 10 * 8
    assert sizes["float32"] == sizes["float64"] // 2  # raw values, no header


def test_a_resume_in_another_dtype_is_refused_naming_it(spark, tmp_path):
    X, _, _ = make_blobs(2000, 2, 2, seed=5)
    df = spark.createDataFrame([(r.tolist(),) for r in X], "features array<double>")
    params = dict(k=2, maxIter=3, seed=1, checkpointDir=(tmp_path / "ck").as_uri(), runId="precision")
    GaussianMixture(**params).fit(df)
    with pytest.raises(ResumeMismatchError, match="'dtype': 'float32'"):
        GaussianMixture(dtype="float32", **params).fit(df)


def test_an_unknown_dtype_is_refused_when_set():
    with pytest.raises(ValueError, match=r"dtype must be one of \['float64', 'float32'\], got 'float16'"):
        GaussianMixture(dtype="float16")
