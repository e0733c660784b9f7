"""CategoricalMixture on Spark: recovers generated parameters; persistence like every family."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from em_spark import CategoricalMixture, CategoricalMixtureModel

pytestmark = pytest.mark.spark


def test_recovers_generated_categorical_components_and_round_trips(spark, tmp_path):
    rng = np.random.default_rng(3)
    weights = np.array([0.5, 0.3, 0.2])
    probs = [rng.dirichlet(np.full(c, 0.5), size=3) for c in (3, 4, 5)]
    z = rng.choice(3, size=6000, p=weights)
    X = np.stack([np.array([rng.choice(len(p[j]), p=p[j]) for j in z]) for p in probs], axis=1)
    df = spark.createDataFrame([tuple(int(v) for v in row) for row in X], ["a", "b", "c"])
    model = CategoricalMixture(
        k=3, seed=1, nInit=3, maxIter=200, tol=1e-7, featuresCol=["a", "b", "c"], nCategories=[3, 4, 5]
    ).fit(df)
    truth = np.concatenate(probs, axis=1)
    cost = np.abs(truth[:, None, :] - model.probs[None, :, :]).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    assert cost[rows, cols].max() < 0.35
    np.testing.assert_allclose(model.weights[cols], weights, atol=0.06)
    assert [p.shape for p in model.featureProbs] == [(3, 3), (3, 4), (3, 5)]
    out = model.transform(df).select("prediction").distinct().count()
    assert out == 3
    model.save((tmp_path / "cat").as_uri())
    loaded = CategoricalMixtureModel.load((tmp_path / "cat").as_uri())
    np.testing.assert_array_equal(loaded.probs, model.probs)
