"""HMMs with missing steps and known states through Spark: null entries and null steps keep their
place in time through the load pass and the executor files, per-step labels travel with them (one
array per sequence, or one label per row in long format), and the fit equals the same fit on the
driver's numpy blocks. Bad labels are refused before iteration 1, naming labelCol."""

import numpy as np
import pytest

from em_spark import CategoricalHMM, GaussianHMM
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.engine.validation import DataValidationError
from em_spark.models import Block, GaussianHMMFamily

pytestmark = pytest.mark.spark

MEANS = np.array([[0.0, 0.0, 1.0], [3.0, 1.0, -1.0], [-2.0, 4.0, 0.5]])
TRANS = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
INIT = {
    "startProb": np.array([0.5, 0.3, 0.2]),
    "transMat": np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]),
    "means": MEANS + 0.7,
    "covariances": np.tile(np.eye(3) * 2.0, (3, 1, 1)),
}


def _data(seed=0, n_seq=80):
    """(X (n, 3) with NaN entries and all-NaN steps, lengths, states, labels (n,) with 2% known)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 30, size=n_seq)
    states = []
    for length in lengths:
        s = [rng.choice(3)]
        for _ in range(length - 1):
            s.append(rng.choice(3, p=TRANS[s[-1]]))
        states.extend(s)
    states = np.array(states)
    X = MEANS[states] + rng.normal(size=(states.size, 3))
    X[rng.random(X.shape) < 0.15] = np.nan
    X[rng.random(states.size) < 0.05] = np.nan  # whole steps missing
    labels = np.where(rng.random(states.size) < 0.02, states, -1)
    return X, lengths, states, labels


def _step(x):
    """A step as Spark gets it: null for a step with nothing observed, null entries for gaps."""
    if np.isnan(x).all():
        return None
    return [None if np.isnan(v) else float(v) for v in x]


def _wide(spark, X, lengths, labels):
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = [
        (i, [_step(x) for x in X[s : s + L]], [None if y < 0 else int(y) for y in labels[s : s + L]])
        for i, (s, L) in enumerate(zip(starts, lengths))
    ]
    return spark.createDataFrame(rows, "id long, obs array<array<double>>, y array<int>").repartition(3)


def _numpy_fit(X, lengths, labels, iters):
    family = GaussianHMMFamily(3, "full", reg_covar=1e-6, handle_missing="model")
    source = LocalBlockSource([Block(X, lengths=lengths, labels=labels)])
    return fit_em(family, source, FitSettings(max_iter=iters, tol=0.0), family.params_from_public(INIT, 3))


def test_a_gappy_labelled_hmm_fit_through_spark_equals_the_numpy_fit_and_imputes_the_gaps(spark):
    X, lengths, _, labels = _data()
    df = _wide(spark, X, lengths, labels)
    model = GaussianHMM(
        k=3, handleMissing="model", labelCol="y", featuresCol="obs", maxIter=12, tol=0.0, initialModel=INIT,
        numPartitions=3,
    ).fit(df)  # fmt: skip
    local = _numpy_fit(X, lengths, labels, 12)
    np.testing.assert_allclose(model.means, local.params["means"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.covariances, local.params["covariances"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.transMat, local.params["transmat"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, local.history, rtol=1e-11)

    # transform and impute read the null steps too; imputing fills them with posterior means
    rows = model.impute(df.drop("y")).orderBy("id").collect()
    family = GaussianHMMFamily(3, "full", handle_missing="model")
    expected = family.impute(Block(X, lengths=lengths), model._arrays)["imputed"]
    got = np.concatenate([np.array(r["imputed"]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert not np.isnan(got).any()
    scored = model.transform(df.drop("y")).select("logLikelihood").collect()
    assert all(np.isfinite(r[0]) for r in scored)


def test_long_format_with_null_features_and_a_label_per_row_equals_the_wide_fit(spark):
    X, lengths, _, labels = _data(seed=1, n_seq=40)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    steps = [
        (
            int(i),
            int(t),
            *[None if np.isnan(v) else float(v) for v in X[s + t]],
            None if labels[s + t] < 0 else int(labels[s + t]),
        )
        for i, (s, L) in enumerate(zip(starts, lengths))
        for t in range(L)
    ]
    long = spark.createDataFrame(steps, "sid long, t long, a double, b double, c double, y int").repartition(3)
    common = dict(k=3, handleMissing="model", labelCol="y", maxIter=8, tol=0.0, initialModel=INIT, numPartitions=3)
    long_model = GaussianHMM(featuresCol=["a", "b", "c"], sequenceCol="sid", timeCol="t", **common).fit(long)
    wide_model = GaussianHMM(featuresCol="obs", **common).fit(_wide(spark, X, lengths, labels))
    np.testing.assert_allclose(long_model.means, wide_model.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        long_model.summary.logLikelihoodHistory, wide_model.summary.logLikelihoodHistory, rtol=1e-11
    )


def test_categorical_hmm_with_null_steps_and_labels_fits(spark):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(60):
        symbols = rng.integers(0, 4, size=20).tolist()
        symbols[3] = None
        rows.append((i, symbols, [0] + [None] * 19))
    df = spark.createDataFrame(rows, "id long, obs array<int>, y array<int>")
    model = CategoricalHMM(k=2, nCategories=4, handleMissing="model", labelCol="y", featuresCol="obs", maxIter=5).fit(
        df
    )
    assert model.summary.numIter == 5
    with pytest.raises(DataValidationError, match=r"60 sequence\(s\) contain NaN, infinite or null"):
        CategoricalHMM(k=2, nCategories=4, featuresCol="obs", maxIter=5).fit(df.drop("y"))


def test_bad_step_labels_are_refused_before_fitting_naming_label_col(spark, tmp_path):
    X, lengths, _, labels = _data(seed=2, n_seq=20)
    df = _wide(spark, X, lengths, labels)
    common = dict(k=3, handleMissing="model", featuresCol="obs", labelCol="y", checkpointDir=str(tmp_path / "ck"))
    short = df.selectExpr("id", "obs", "slice(y, 1, 2) as y")
    with pytest.raises(DataValidationError, match=r"20 sequence\(s\) have a list of step labels in labelCol 'y'"):
        GaussianHMM(**common).fit(short)
    too_big = df.selectExpr("id", "obs", "transform(y, v -> 5) as y")
    with pytest.raises(DataValidationError, match=r"have a state label >= k=3 in labelCol 'y'"):
        GaussianHMM(**common).fit(too_big)
    scalar = df.selectExpr("id", "obs", "1 as y")
    with pytest.raises(DataValidationError, match="array of integer state ids, one per step"):
        GaussianHMM(**common).fit(scalar)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").rglob("*.json"))
    with pytest.raises(DataValidationError, match="handleMissing"):
        GaussianHMM(k=3, featuresCol="obs").fit(df.drop("y"))
