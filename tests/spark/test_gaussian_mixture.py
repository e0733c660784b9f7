"""GaussianMixture on a local SparkSession: numerics, API, persistence, resume."""

import warnings

import numpy as np
import pytest
from chispa import assert_column_equality, assert_df_equality
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T

from em_spark import GaussianMixture, GaussianMixtureModel
from em_spark.app.demo_data import make_blobs
from em_spark.engine import spark_source
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.engine.validation import DataValidationError
from em_spark.models import GaussianFamily
from em_spark.models.base import Block

pytestmark = pytest.mark.spark

COV_TYPES = ["full", "diag", "spherical", "tied"]


def _frame(spark, X, weights=None, partitions=3):
    cols = {f"x{j}": X[:, j].tolist() for j in range(X.shape[1])}
    rows = list(zip(*cols.values(), *([weights.tolist()] if weights is not None else [])))
    names = list(cols) + (["w"] if weights is not None else [])
    df = spark.createDataFrame(rows, names).repartition(partitions)
    return VectorAssembler(inputCols=list(cols), outputCol="features").transform(df)


@pytest.fixture(scope="module")
def iris(spark):
    from sklearn.datasets import load_iris

    X = load_iris().data
    return X, _frame(spark, X).cache()


def _sklearn_from(init, cov_type, X, iters, reg=1e-6):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    family = GaussianFamily(k=len(init["weights"]), covariance_type=cov_type, reg_covar=reg)
    params = family.params_from_public(init, X.shape[1])
    prec = params["precisions_cholesky"]
    if cov_type in ("full", "tied"):
        prec = prec @ np.swapaxes(prec, -1, -2)
    else:
        prec = prec**2
    sk = SkGMM(
        len(init["weights"]),
        covariance_type=cov_type,
        max_iter=iters,
        tol=0,
        reg_covar=reg,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=prec,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X)
    return sk


def _public_init(X, k, cov_type, seed=0):
    family = GaussianFamily(k=k, covariance_type=cov_type)
    return family.public_params(family.initialize(Block(X), np.random.default_rng(seed)))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_matches_scikit_learn_on_iris_from_the_same_initial_model(spark, iris, cov_type):
    X, df = iris
    init = _public_init(X, 3, cov_type)
    model = GaussianMixture(k=3, covarianceType=cov_type, maxIter=20, tol=0.0, initialModel=init).fit(df)
    sk = _sklearn_from(init, cov_type, X, 20)
    assert model.summary.numIter == 20
    np.testing.assert_allclose(model.weights, sk.weights_, rtol=1e-6)
    np.testing.assert_allclose(model.means, sk.means_, rtol=1e-6)
    np.testing.assert_allclose(model.covariances, sk.covariances_, rtol=1e-6)
    assert model.summary.averageLogLikelihood == pytest.approx(sk.lower_bound_, rel=1e-6)


def test_spark_fit_equals_the_in_process_loop(spark):
    X, _, _ = make_blobs(5000, 3, 4, seed=8)
    df = _frame(spark, X, partitions=5)
    model = GaussianMixture(k=4, maxIter=12, tol=0.0, seed=3, nInit=2).fit(df)
    local = fit_em(
        GaussianFamily(k=4), LocalBlockSource([Block(X)], seed=3), FitSettings(max_iter=12, tol=0.0, seed=3, n_init=2)
    )
    np.testing.assert_allclose(model.means, local.params["means"], rtol=1e-9)
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, local.history, rtol=1e-12)


def test_transform_adds_prediction_probability_and_loglik_columns(spark, iris):
    X, df = iris
    model = GaussianMixture(k=3, seed=1, maxIter=30).fit(df)
    out = model.transform(df)
    schema = {f.name: f.dataType for f in out.schema.fields}
    assert isinstance(schema["prediction"], T.IntegerType)
    assert isinstance(schema["probability"], VectorUDT)
    assert isinstance(schema["logLikelihood"], T.DoubleType)
    rows = out.select("x0", "x1", "x2", "x3", "prediction", "probability", "logLikelihood").collect()
    Xr = np.array([[r.x0, r.x1, r.x2, r.x3] for r in rows])
    expected = model.predict_numpy(Xr)
    np.testing.assert_array_equal([r.prediction for r in rows], expected["log_resp"].argmax(1))
    np.testing.assert_allclose([r.probability.toArray() for r in rows], np.exp(expected["log_resp"]), rtol=1e-12)
    np.testing.assert_allclose([r.logLikelihood for r in rows], expected["loglik"], rtol=1e-12)
    # the prediction is the argmax of the probability vector, row by row
    from pyspark.ml.functions import vector_to_array

    arr = out.withColumn("p", vector_to_array("probability"))
    arr = arr.withColumn("argmax", (F.array_position("p", F.array_max("p")) - 1).cast("int"))
    assert_column_equality(arr, "prediction", "argmax")


def test_transform_leaves_other_columns_untouched_and_nulls_unscorable_rows(spark):
    df = spark.createDataFrame(
        [(1, [0.0, 0.0]), (2, [10.0, 10.0]), (3, None), (4, [float("nan"), 1.0]), (5, [1.0])],
        "id int, features array<double>",
    )
    train = spark.createDataFrame(
        [([float(i % 2) * 10 + 0.1 * (i % 7), float(i % 2) * 10 - 0.1 * (i % 5)],) for i in range(60)],
        "features array<double>",
    )
    model = GaussianMixture(k=2, seed=0).fit(train)
    out = model.transform(df)
    assert_df_equality(out.select("id"), df.select("id"), ignore_row_order=True)
    nulls = {r.id for r in out.where(F.col("prediction").isNull()).collect()}
    assert nulls == {3, 4, 5}


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_save_and_load_round_trip(spark, iris, tmp_path, cov_type):
    X, df = iris
    model = GaussianMixture(k=3, covarianceType=cov_type, seed=2, maxIter=10).fit(df)
    path = (tmp_path / "m").as_uri()
    model.save(path)
    loaded = GaussianMixtureModel.load(path)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.summary.numIter == model.summary.numIter
    assert loaded.getOrDefault("covarianceType") == cov_type
    with pytest.raises(FileExistsError):
        model.save(path)
    model.save(path, overwrite=True)


def test_bic_and_aic_match_scikit_learn_for_the_same_parameters(spark, iris):

    X, df = iris
    model = GaussianMixture(k=3, seed=0, maxIter=50).fit(df)
    sk = _sklearn_from({"weights": model.weights, "means": model.means, "covariances": model.covariances}, "full", X, 1)
    sk.weights_, sk.means_, sk.covariances_ = model.weights, model.means, model.covariances
    sk.precisions_cholesky_ = model.arrays["precisions_cholesky"]
    assert model.bic(df) == pytest.approx(sk.bic(X), rel=1e-9)
    assert model.aic(df) == pytest.approx(sk.aic(X), rel=1e-9)


def test_integer_weights_equal_duplicated_rows(spark):
    rng = np.random.default_rng(4)
    X, _, _ = make_blobs(400, 2, 2, seed=4)
    w = rng.integers(1, 4, size=400).astype(float)
    init = _public_init(X, 2, "full")
    weighted = GaussianMixture(k=2, maxIter=10, tol=0.0, weightCol="w", initialModel=init).fit(_frame(spark, X, w))
    repeated = GaussianMixture(k=2, maxIter=10, tol=0.0, initialModel=init).fit(
        _frame(spark, np.repeat(X, w.astype(int), axis=0))
    )
    np.testing.assert_allclose(weighted.means, repeated.means, rtol=1e-9)
    np.testing.assert_allclose(weighted.covariances, repeated.covariances, rtol=1e-9)


def test_features_as_columns_array_or_vector_give_the_same_fit(spark):
    X, _, _ = make_blobs(600, 3, 2, seed=5)
    df = _frame(spark, X).withColumn("arr", F.array("x0", "x1", "x2"))
    fits = [
        GaussianMixture(k=2, seed=9, maxIter=5, tol=0.0, featuresCol=f).fit(df)
        for f in ("features", "arr", ["x0", "x1", "x2"])
    ]
    for other in fits[1:]:
        np.testing.assert_array_equal(other.means, fits[0].means)


def test_killed_fit_resumes_with_the_same_run_id_and_ends_exactly_as_uninterrupted(spark, tmp_path, monkeypatch):
    X, _, _ = make_blobs(3000, 2, 3, seed=6)
    df = _frame(spark, X).cache()
    params = dict(k=3, maxIter=9, tol=0.0, seed=4, nInit=2, checkpointDir=(tmp_path / "ck").as_uri())
    reference = GaussianMixture(runId="reference", **params).fit(df)

    # Both restarts run side by side: each data pass is one e_step_many (e_step goes through it).
    real_e_step_many = spark_source.SparkBlockSource.e_step_many
    calls = {"n": 0}

    def dying(self, models, label=""):
        if calls["n"] == 5:  # a pass in the middle of the run
            raise KeyboardInterrupt("driver killed")
        calls["n"] += 1
        return real_e_step_many(self, models, label)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", dying)
    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(runId="nightly-1", **params).fit(df)
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", real_e_step_many)
    resumed = GaussianMixture(runId="nightly-1", **params).fit(df)
    assert resumed.summary.numIter == reference.summary.numIter
    np.testing.assert_allclose(resumed.means, reference.means, rtol=1e-9)
    np.testing.assert_allclose(resumed.covariances, reference.covariances, rtol=1e-9)
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory


def test_a_finished_run_continues_under_a_larger_max_iter_and_ends_as_one_longer_run(spark, tmp_path):
    X, _, _ = make_blobs(3000, 2, 3, separation=1.5, seed=6)
    df = _frame(spark, X).cache()
    params = dict(k=3, tol=0.0, seed=4, nInit=2, checkpointDir=(tmp_path / "ck").as_uri())
    reference = GaussianMixture(runId="reference", maxIter=8, **params).fit(df)
    short = GaussianMixture(runId="nightly", maxIter=4, **params).fit(df)
    assert short.summary.numIter == 4
    longer = GaussianMixture(runId="nightly", maxIter=8, **params).fit(df)
    assert longer.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    np.testing.assert_array_equal(longer.means, reference.means)
    np.testing.assert_array_equal(longer.covariances, reference.covariances)
    with pytest.raises(ResumeMismatchError, match="'k': 3.*'k': 2"):
        GaussianMixture(runId="nightly", maxIter=8, **{**params, "k": 2}).fit(df)


def test_bad_input_fails_before_iteration_one_and_writes_no_checkpoint(spark, tmp_path):
    df = spark.createDataFrame([([1.0, 2.0],), ([float("nan"), 1.0],), ([3.0, 4.0],)], "features array<double>")
    ckpt = tmp_path / "ck"
    with pytest.raises(DataValidationError, match="NaN"):
        GaussianMixture(k=2, checkpointDir=ckpt.as_uri(), runId="bad").fit(df)
    assert not ckpt.exists()
    with pytest.raises(DataValidationError, match="not a column"):
        GaussianMixture(k=2, featuresCol="nope").fit(df)
    with pytest.raises(DataValidationError, match="type string"):
        GaussianMixture(k=1, featuresCol="s").fit(spark.createDataFrame([("a",)], "s string"))
    with pytest.raises(DataValidationError, match="fewer than k=5"):
        GaussianMixture(k=5).fit(df.where(~F.isnan(F.col("features")[0])))
    with pytest.raises(DataValidationError, match="no rows"):
        GaussianMixture(k=1).fit(df.limit(0))


def test_unknown_parameter_names_are_refused_with_a_suggestion():
    with pytest.raises(TypeError, match="unexpected keyword argument 'maxIters'"):
        GaussianMixture(k=2, maxIters=5)
    with pytest.raises(TypeError, match="did you mean 'maxIter'"):
        GaussianMixture(k=2).setParams(maxIters=5)
    assert GaussianMixture(k=2).setMaxIter(7).getMaxIter() == 7


def test_recovers_well_separated_components_in_50_dimensions(spark):
    X, labels, truth = make_blobs(16000, 50, 8, separation=8.0, seed=12)
    df = _frame(spark, X, partitions=4)
    model = GaussianMixture(k=8, seed=1, nInit=2, maxIter=100, tol=1e-6).fit(df)
    assert np.isfinite(model.summary.logLikelihood)
    # every true mean is matched by a distinct fitted mean
    dist = np.linalg.norm(truth["means"][:, None, :] - model.means[None, :, :], axis=2)
    match = dist.argmin(axis=1)
    assert len(set(match)) == 8
    assert dist[np.arange(8), match].max() < 0.5
    np.testing.assert_allclose(np.sort(model.weights), np.sort(truth["weights"]), atol=0.02)


def test_a_source_loaded_once_fits_as_the_estimator_does(iris):
    # load_source is fit's own load: fit_em on it gives the estimator's parameters, bit for bit,
    # and one loaded source serves several fits (as em-spark select uses it).
    from em_spark.engine.loop import FitSettings, fit_em

    _, df = iris
    estimator = GaussianMixture(k=3, maxIter=15, tol=0.0, seed=4)
    expected = estimator.fit(df).arrays
    source = estimator.load_source(df)
    try:
        for _ in range(2):
            result = fit_em(estimator.family(), source, FitSettings(max_iter=15, tol=0.0, seed=4))
            for name, value in expected.items():
                np.testing.assert_array_equal(result.params[name], value)
    finally:
        source.close()
