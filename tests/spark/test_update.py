"""model.update(df, halfLife) on local Spark: stored statistics saved without pickle, the update
equal to the weighted batch fit it stands for (one EM step from the same start; see
tests/engine/test_incremental.py for why one step, and for several steps against scikit-learn),
and bad input refused before anything is read or stored."""

import math

import numpy as np
import pytest

from em_spark import GaussianMixture, GaussianMixtureModel, KMeans, KMeansModel
from em_spark.engine.incremental import decay_factor
from em_spark.engine.validation import DataValidationError

pytestmark = pytest.mark.spark


def _rows(rng, n, shift=0.0):
    centers = np.array([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0]])
    return centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 2)) + shift


def _frame(spark, X, weight=None):
    cols = [f"x{j}" for j in range(X.shape[1])]
    rows = [tuple(float(v) for v in row) + (() if weight is None else (float(weight),)) for row in X]
    return spark.createDataFrame(rows, cols + ([] if weight is None else ["w"]))


def test_a_fitted_model_saves_and_loads_its_statistics(spark, tmp_path):
    X = _rows(np.random.default_rng(0), 2000)
    model = GaussianMixture(k=3, seed=1, featuresCol=["x0", "x1"], tol=1e-8).fit(_frame(spark, X))
    stats = model.statistics
    assert stats is not None and stats.count == 2000 and stats.weight == 2000
    model.save(f"file://{tmp_path}/m")
    loaded = GaussianMixtureModel.load(f"file://{tmp_path}/m")
    assert loaded.statistics is not None and loaded.statistics.allclose(stats, rtol=0, atol=0)


def _update_matches_weighted_batch(spark, estimator, yesterday, tonight, tol):
    decay = decay_factor(4)
    base = estimator.copy().setParams(maxIter=tol[0], tol=0.0).fit(_frame(spark, yesterday))
    updated = base.update(_frame(spark, tonight), halfLife=4, maxIter=1)
    features = estimator.getFeaturesCol()
    weighted = _frame(spark, yesterday, decay).unionByName(
        _frame(spark, tonight, 1.0)
    )  # yesterday's rows count decay, tonight's 1
    batch = estimator.copy().setParams(maxIter=1, tol=0.0, weightCol="w", initialModel=base, nInit=1).fit(weighted)
    assert features == batch.getFeaturesCol()
    for name, value in batch.public_params().items():
        np.testing.assert_allclose(updated.public_params()[name], value, rtol=tol[1], atol=1e-10, err_msg=name)
    # the new model's statistics: decay x yesterday's rows plus tonight's
    assert updated.statistics.count == pytest.approx(decay * len(yesterday) + len(tonight), rel=1e-12)
    assert updated.summary.numRows == len(tonight)
    return base, updated


def test_a_gaussian_update_equals_one_step_of_the_weighted_batch_fit(spark):
    rng = np.random.default_rng(1)
    estimator = GaussianMixture(k=3, seed=1, featuresCol=["x0", "x1"])
    _update_matches_weighted_batch(spark, estimator, _rows(rng, 3000), _rows(rng, 1000, shift=0.5), (15, 1e-8))


def test_a_kmeans_update_equals_one_step_of_the_weighted_batch_fit(spark):
    # Lloyd's iterations reach their fixed point exactly, so the stored statistics (the last
    # E-step's) are those at the final centers: the agreement is to rounding. The categorical
    # family is checked the same way without a JVM (tests/engine/test_incremental.py).
    rng = np.random.default_rng(2)
    estimator = KMeans(k=3, seed=1, featuresCol=["x0", "x1"])
    base, updated = _update_matches_weighted_batch(
        spark, estimator, _rows(rng, 3000), _rows(rng, 800, 0.5), (20, 1e-12)
    )
    assert isinstance(updated, KMeansModel) and base.summary.converged is False  # (tol=0: ran all 20)


def test_an_update_with_an_infinite_half_life_keeps_all_history_and_is_saved_with_its_statistics(spark, tmp_path):
    rng = np.random.default_rng(3)
    base = GaussianMixture(k=3, seed=1, featuresCol=["x0", "x1"]).fit(_frame(spark, _rows(rng, 1500)))
    updated = base.update(_frame(spark, _rows(rng, 500)), halfLife=math.inf, maxIter=5)
    assert updated.statistics.count == pytest.approx(2000)
    updated.save(f"file://{tmp_path}/u")
    again = GaussianMixtureModel.load(f"file://{tmp_path}/u")
    assert again.statistics.allclose(updated.statistics, rtol=0, atol=0)
    # and it can be updated again from its stored form
    assert again.update(_frame(spark, _rows(rng, 200)), halfLife=2, maxIter=2).statistics.count == pytest.approx(
        0.5**0.5 * 2000 + 200
    )


@pytest.fixture(scope="module")
def small_model(spark):
    return GaussianMixture(k=2, seed=1, featuresCol=["x0", "x1"], maxIter=5).fit(
        _frame(spark, _rows(np.random.default_rng(4), 300))
    )


@pytest.mark.parametrize("bad", [0, -3, math.nan])
def test_a_half_life_not_above_zero_is_refused_before_anything_is_read_or_written(spark, small_model, tmp_path, bad):
    df = _frame(spark, _rows(np.random.default_rng(5), 50))
    with pytest.raises(ValueError, match="halfLife must be > 0"):
        small_model.update(df, halfLife=bad, runId="bad-half-life", checkpointDir=f"file://{tmp_path}/ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_data_without_the_models_feature_columns_is_refused_naming_the_column(spark, small_model, tmp_path):
    df = _frame(spark, _rows(np.random.default_rng(6), 50)).withColumnRenamed("x1", "y1")
    with pytest.raises(DataValidationError, match="'x1' is not a column of the input; available columns"):
        small_model.update(df, halfLife=3, runId="bad-columns", checkpointDir=f"file://{tmp_path}/ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_a_vector_of_another_width_is_refused_naming_both_widths(spark, small_model):
    from pyspark.ml.feature import VectorAssembler

    df = VectorAssembler(inputCols=["x0", "x1", "x2"], outputCol="f").transform(
        _frame(spark, np.random.default_rng(7).normal(size=(40, 3)))
    )
    model = small_model.copy().setFeaturesCol("f")
    with pytest.raises(DataValidationError, match="hold 3 features but the model was fitted on 2"):
        model.update(df, halfLife=3)


def test_a_model_saved_without_statistics_is_refused_with_the_fix(spark, small_model, tmp_path):
    old = small_model.copy()
    old._statistics = None  # what an older em_spark saved: no statistics in the file
    old.save(f"file://{tmp_path}/old")
    loaded = GaussianMixtureModel.load(f"file://{tmp_path}/old")
    assert loaded.statistics is None
    with pytest.raises(ValueError, match="stores no sufficient statistics.*fit it again"):
        loaded.update(
            _frame(spark, _rows(np.random.default_rng(8), 20)),
            halfLife=2,
            checkpointDir=f"file://{tmp_path}/c",
            runId="r",
        )
    assert not (tmp_path / "c").exists()


def test_a_finished_run_fitted_again_still_stores_statistics(spark, tmp_path):
    # the re-run returns the checkpointed result without an E-step; one more pass takes the
    # statistics under the final parameters (the model of a night re-run after a kill has them too)
    df = _frame(spark, _rows(np.random.default_rng(9), 800))
    estimator = GaussianMixture(
        k=3, seed=1, featuresCol=["x0", "x1"], tol=1e-10, checkpointDir=f"file://{tmp_path}/c", runId="twice"
    )
    first = estimator.fit(df)
    again = estimator.fit(df)
    assert again.summary.numIter == first.summary.numIter
    assert again.statistics is not None and again.statistics.count == 800
    # converged: the statistics under the final parameters and those of the last E-step agree closely
    assert again.statistics.allclose(first.statistics, rtol=1e-6, atol=1e-6)
