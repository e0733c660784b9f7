"""Missing values and labels travel through Spark's load pass and executor-local files intact:
a fit through Spark equals the same fit on the driver's numpy blocks, and bad labels are
refused before iteration 1."""

import numpy as np
import pytest

from em_spark import CategoricalMixture, GaussianMixture
from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.engine.validation import DataValidationError
from em_spark.models import Block, GaussianFamily

pytestmark = pytest.mark.spark


def _frame(spark, X, labels=None):
    rows = [
        ([None if np.isnan(v) else float(v) for v in x], None if labels is None or labels[i] < 0 else int(labels[i]))
        for i, x in enumerate(X)
    ]
    return spark.createDataFrame(rows, "x array<double>, y int").repartition(3)


def _initial(X):
    return {
        "weights": np.full(2, 0.5),
        "means": np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]) + np.nanmean(X, axis=0),
        "covariances": np.tile(np.eye(3) * 4.0, (2, 1, 1)),
    }


@pytest.mark.parametrize("with_labels", [False, True])
def test_a_fit_with_missing_values_and_labels_through_spark_equals_the_numpy_fit(spark, with_labels):
    X, truth, _ = make_blobs(rows=3000, features=3, components=2, separation=3.0, seed=11)
    X[np.random.default_rng(0).random(X.shape) < 0.2] = np.nan
    labels = np.where(np.arange(3000) % 10 == 0, truth, -1) if with_labels else None
    df = _frame(spark, X, labels)
    init = _initial(X)
    estimator = GaussianMixture(
        k=2,
        handleMissing="model",
        maxIter=15,
        tol=0.0,
        featuresCol="x",
        initialModel=init,
        numPartitions=3,
        labelCol="y" if with_labels else None,
    )
    model = estimator.fit(df)

    family = GaussianFamily(k=2, handle_missing="model")
    source = LocalBlockSource([Block(X, labels=labels)])
    local = fit_em(family, source, FitSettings(max_iter=15, tol=0.0), family.params_from_public(init, 3))
    # the same sums in another order: equal up to rounding
    np.testing.assert_allclose(model.means, local.params["means"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.covariances, local.params["covariances"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, local.history, rtol=1e-11)


def test_without_handle_missing_nulls_are_refused_before_fitting_with_the_fix_named(spark):
    X, _, _ = make_blobs(rows=200, features=3, components=2, seed=1)
    X[0, 1] = np.nan
    with pytest.raises(DataValidationError, match=r"1 row\(s\) contain NaN.*handleMissing='model'"):
        GaussianMixture(k=2, featuresCol="x").fit(_frame(spark, X))


def test_labels_beyond_k_or_of_a_wrong_type_are_refused_before_fitting(spark):
    X, _, _ = make_blobs(rows=200, features=3, components=2, seed=1)
    labels = np.full(200, -1)
    labels[:3] = 2
    with pytest.raises(DataValidationError, match=r"3 row\(s\) have a label >= k=2 in labelCol 'y'"):
        GaussianMixture(k=2, featuresCol="x", labelCol="y").fit(_frame(spark, X, labels))
    text = _frame(spark, X).selectExpr("x", "cast(y as string) as y")
    with pytest.raises(DataValidationError, match="labelCol 'y' has type string"):
        GaussianMixture(k=2, featuresCol="x", labelCol="y").fit(text)


def test_a_few_labels_fix_the_label_switching_of_a_categorical_mixture_and_help_accuracy(spark):
    # Two kinds of customers buying from 6 categories with overlapping tastes; 3% are labelled.
    rng = np.random.default_rng(5)
    kind = rng.integers(0, 2, size=3000)
    taste = np.array([[0.35, 0.25, 0.15, 0.1, 0.1, 0.05], [0.1, 0.1, 0.15, 0.15, 0.25, 0.25]])
    counts = np.array([rng.multinomial(8, taste[c]) for c in kind])
    labelled = rng.random(3000) < 0.03
    rows = [(c.tolist(), int(kind[i]) if labelled[i] else None, int(kind[i])) for i, c in enumerate(counts)]
    df = spark.createDataFrame(rows, "basket array<int>, y int, truth int")

    def accuracy(model):
        out = model.transform(df).select("prediction", "truth").collect()
        return np.mean([r.prediction == r.truth for r in out])

    common = dict(k=2, kind="multinomial", featuresCol="basket", maxIter=50, tol=1e-6)
    plain = [accuracy(CategoricalMixture(seed=s, **common).fit(df)) for s in range(4)]
    semi = [accuracy(CategoricalMixture(seed=s, labelCol="y", **common).fit(df)) for s in range(4)]
    # Unsupervised, component ids are arbitrary: some seeds name the kinds the other way round.
    assert min(plain) < 0.5 < max(plain), plain
    # With labels, component j is kind j for every seed, and at least as accurate as the best unsupervised fit.
    assert min(semi) > 0.75 and min(semi) >= max(*plain, 1 - min(plain)) - 0.01, (semi, plain)
