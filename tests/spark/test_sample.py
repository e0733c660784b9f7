"""model.sample on Spark: drawn in tasks as the contract says (task p draws with default_rng([seed, p])),
in the columns the model reads, so a fit on a large sample recovers the model."""

import numpy as np
import pytest

from em_spark import CategoricalMixture, GaussianHMM, GaussianMixture, KMeans
from em_spark.app.demo_data import make_blobs, make_hmm_sequences
from em_spark.engine import draws
from em_spark.models import ModelError

pytestmark = pytest.mark.spark


def _expected(family, params, n, seed, per_task, **kw):
    """The rows the contract promises: task p draws its units with default_rng([seed, p])."""
    parts = [
        family.draw(params, min(n, (p + 1) * per_task) - p * per_task, np.random.default_rng([seed, p]), **kw)
        for p in range(-(-n // per_task))
    ]
    return np.concatenate([d.X for d in parts]), np.concatenate([d.components for d in parts])


@pytest.fixture(scope="module")
def gaussian(spark):
    X, _, _ = make_blobs(3000, 2, 3, separation=5.0, seed=1)
    df = spark.createDataFrame(X.tolist(), ["a", "b"])
    return GaussianMixture(k=3, seed=1, featuresCol=["a", "b"], tol=1e-6, maxIter=200).fit(df)


def test_rows_are_drawn_task_by_task_from_the_seed_in_the_models_columns(spark, gaussian, monkeypatch):
    monkeypatch.setattr(draws, "ROWS_PER_TASK", 1000)
    sample = gaussian.sample(2500, seed=4)
    assert sample.columns == ["a", "b", "component"] and sample.rdd.getNumPartitions() == 3
    rows = sample.collect()
    X, components = _expected(gaussian.family, gaussian.arrays, 2500, 4, 1000)
    np.testing.assert_array_equal(np.array([[r.a, r.b] for r in rows]), X)
    np.testing.assert_array_equal([r.component for r in rows], components)
    assert rows == gaussian.sample(2500, seed=4).collect()
    assert rows != gaussian.sample(2500, seed=5).collect()


def test_a_fit_on_a_large_sample_recovers_the_model(spark, gaussian):
    refit = GaussianMixture(k=3, seed=2, featuresCol=["a", "b"], tol=1e-8, maxIter=300).fit(
        gaussian.sample(200_000, seed=7)
    )
    order = [int(np.argmin(np.linalg.norm(refit.means - m, axis=1))) for m in gaussian.means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(refit.means[order], gaussian.means, atol=0.03)
    np.testing.assert_allclose(refit.weights[order], gaussian.weights, atol=0.01)
    np.testing.assert_allclose(refit.covariances[order], gaussian.covariances, atol=0.05)


def test_sequences_come_with_their_state_paths_and_fit_back(spark):
    X, _, _ = make_hmm_sequences(200, 30, 2, 2, separation=4.0, seed=2)
    df = spark.createDataFrame([(i, x.tolist()) for i, x in enumerate(X)], "id long, obs array<array<double>>")
    model = GaussianHMM(k=2, featuresCol="obs", seed=0).fit(df)
    sample = model.sample(1500, seed=3, length=40)
    assert sample.columns == ["id", "obs", "states"]
    first = sample.orderBy("id").first()
    assert first.id == 0 and len(first.obs) == len(first.states) == 40 and len(first.obs[0]) == 2
    refit = GaussianHMM(k=2, featuresCol="obs", seed=0, tol=1e-6, maxIter=200).fit(sample)
    order = [int(np.argmin(np.linalg.norm(refit.means - m, axis=1))) for m in model.means]
    np.testing.assert_allclose(refit.transMat[np.ix_(order, order)], model.transMat, atol=0.03)
    with pytest.raises(ModelError, match="pass length="):
        model.sample(10)


def test_multinomial_rows_take_their_totals_and_k_means_refuses(spark):
    rng = np.random.default_rng(0)
    counts = rng.poisson([5.0, 1.0, 3.0], size=(500, 3)).astype(float)
    model = CategoricalMixture(k=2, kind="multinomial", seed=0, featuresCol="x").fit(
        spark.createDataFrame([(row.tolist(),) for row in counts], "x array<double>")
    )
    totals = rng.integers(1, 30, size=300)
    rows = model.sample(300, seed=1, trials=totals).collect()
    np.testing.assert_array_equal([sum(r.x) for r in rows], totals)
    with pytest.raises(ModelError, match="trials must be one row total or 300 of them"):
        model.sample(300, trials=totals[:10])
    kmeans = KMeans(k=2, seed=0, featuresCol="x").fit(
        spark.createDataFrame([(row.tolist(),) for row in counts], "x array<double>")
    )
    with pytest.raises(ModelError, match="k-means has no spread"):
        kmeans.sample(10)
