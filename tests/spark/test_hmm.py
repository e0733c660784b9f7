"""GaussianHMM and CategoricalHMM on a local SparkSession: hmmlearn agreement, transform,
long format, persistence, resume, criteria."""

import logging

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from hmmlearn import hmm as hl
from pyspark.sql import functions as F
from pyspark.sql import types as T

from em_spark import CategoricalHMM, CategoricalHMMModel, GaussianHMM, GaussianHMMModel
from em_spark.engine import spark_source

pytestmark = pytest.mark.spark

logging.getLogger("hmmlearn").setLevel(logging.ERROR)

START = np.array([0.6, 0.3, 0.1])
TRANS = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
COVS = np.array([np.eye(2), [[1.0, 0.5], [0.5, 2.0]], 0.5 * np.eye(2)])
EMISSION = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.05, 0.1, 0.5, 0.3, 0.05], [0.1, 0.1, 0.1, 0.2, 0.5]])


def _states(rng, length):
    s = [rng.choice(3, p=START)]
    for _ in range(length - 1):
        s.append(rng.choice(3, p=TRANS[s[-1]]))
    return np.array(s)


def _gaussian_sequences(seed, n_seq=100):
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(COVS)
    out = []
    for length in rng.integers(3, 40, size=n_seq):
        s = _states(rng, int(length))
        out.append(MEANS[s] + np.einsum("nij,nj->ni", chol[s], rng.normal(size=(len(s), 2))))
    return out


def _symbol_sequences(seed, n_seq=100):
    rng = np.random.default_rng(seed)
    return [
        np.array([rng.choice(5, p=EMISSION[j]) for j in _states(rng, int(n))]) for n in rng.integers(3, 40, size=n_seq)
    ]


def _chain_init(rng):
    return {"startProb": rng.dirichlet(np.full(3, 3.0)), "transMat": rng.dirichlet(np.full(3, 3.0), size=3)}


def _gaussian_init(cov_type, seed=0):
    rng = np.random.default_rng(seed)
    covs = {
        "full": COVS * 1.5,
        "diag": np.diagonal(COVS, axis1=1, axis2=2) * 1.5,
        "tied": COVS.mean(axis=0) * 1.5,
        "spherical": np.diagonal(COVS, axis1=1, axis2=2).mean(axis=1) * 1.5,
    }[cov_type]
    return {**_chain_init(rng), "means": MEANS + rng.normal(scale=0.7, size=MEANS.shape), "covariances": covs}


def _categorical_init(seed=0):
    rng = np.random.default_rng(seed)
    return {**_chain_init(rng), "emissionProb": rng.dirichlet(np.ones(5), size=3)}


def _hmmlearn_gaussian(cov_type, public, **kwargs):
    """hmmlearn on the given parameters, with its M-step equal to ours (covars_prior=0, regCovar=0)."""
    ref = hl.GaussianHMM(3, covariance_type=cov_type, init_params="", params="stmc", covars_prior=0.0, **kwargs)
    ref.startprob_, ref.transmat_ = public["startProb"].copy(), public["transMat"].copy()
    ref.means_, ref.covars_ = public["means"].copy(), public["covariances"].copy()
    return ref


def _hmmlearn_categorical(public, **kwargs):
    ref = hl.CategoricalHMM(3, n_features=5, init_params="", params="ste", **kwargs)
    ref.startprob_, ref.transmat_ = public["startProb"].copy(), public["transMat"].copy()
    ref.emissionprob_ = public["emissionProb"].copy()
    return ref


def _full(cov_type, covariances):
    """(3, d, d) matrices, as hmmlearn's covars_ returns them."""
    if cov_type == "diag":
        return np.einsum("ki,ij->kij", covariances, np.eye(covariances.shape[1]))
    if cov_type == "tied":
        return np.broadcast_to(covariances, (3, *covariances.shape))
    return covariances


@pytest.fixture(scope="module")
def gaussian_data(spark):
    seqs = _gaussian_sequences(0)
    df = spark.createDataFrame([(i, s.tolist()) for i, s in enumerate(seqs)], "id long, obs array<array<double>>")
    return seqs, df.repartition(4).cache()


@pytest.fixture(scope="module")
def gaussian_fits(gaussian_data):
    """Fitted GaussianHMMs (10 iterations from _gaussian_init), one per covariance type, fitted once."""
    _, df = gaussian_data
    fits = {}

    def fitted(cov_type):
        if cov_type not in fits:
            fits[cov_type] = GaussianHMM(
                k=3,
                covarianceType=cov_type,
                maxIter=10,
                tol=0.0,
                regCovar=0.0,
                featuresCol="obs",
                initialModel=_gaussian_init(cov_type),
                numPartitions=3,
            ).fit(df)
        return fits[cov_type]

    return fitted


@pytest.mark.parametrize("cov_type", ["full", "diag", "tied", "spherical"])
def test_gaussian_hmm_matches_hmmlearn_from_the_same_initial_model(gaussian_data, gaussian_fits, cov_type):
    seqs, _ = gaussian_data
    X, lengths = np.concatenate(seqs), [len(s) for s in seqs]
    model = gaussian_fits(cov_type)
    ref = _hmmlearn_gaussian(cov_type, _gaussian_init(cov_type), n_iter=10, tol=0.0).fit(X, lengths)
    assert model.summary.numIter == len(ref.monitor_.history) == 10
    assert model.summary.numRows == len(seqs)
    # the engine's history is per sequence; hmmlearn's is the total
    np.testing.assert_allclose(
        np.array(model.summary.logLikelihoodHistory) * len(seqs), ref.monitor_.history, rtol=1e-9
    )
    np.testing.assert_allclose(model.startProb, ref.startprob_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.transMat, ref.transmat_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.means, ref.means_, rtol=1e-6, atol=1e-10)
    if cov_type == "spherical":  # hmmlearn keeps these tiled to (k, d) (tests/models/test_hmm.py)
        np.testing.assert_allclose(model.covariances, ref._covars_[:, 0], rtol=1e-6, atol=1e-10)
    else:
        np.testing.assert_allclose(_full(cov_type, model.covariances), ref.covars_, rtol=1e-6, atol=1e-10)
    assert model.covariances.shape == {"full": (3, 2, 2), "diag": (3, 2), "tied": (2, 2), "spherical": (3,)}[cov_type]


def test_categorical_hmm_matches_hmmlearn_and_round_trips(spark, tmp_path):
    seqs = _symbol_sequences(1)
    df = spark.createDataFrame([(i, s.tolist()) for i, s in enumerate(seqs)], "id long, obs array<int>").repartition(3)
    init = _categorical_init()
    model = CategoricalHMM(
        k=3, nCategories=5, maxIter=10, tol=0.0, featuresCol="obs", initialModel=init, numPartitions=3
    ).fit(df)
    X, lengths = np.concatenate(seqs)[:, None], [len(s) for s in seqs]
    ref = _hmmlearn_categorical(init, n_iter=10, tol=0.0).fit(X, lengths)
    assert model.summary.numIter == len(ref.monitor_.history) == 10
    np.testing.assert_allclose(
        np.array(model.summary.logLikelihoodHistory) * len(seqs), ref.monitor_.history, rtol=1e-9
    )
    np.testing.assert_allclose(model.startProb, ref.startprob_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.transMat, ref.transmat_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.emissionProb, ref.emissionprob_, rtol=1e-6, atol=1e-12)

    # transform: the Viterbi path and the log-likelihood of each sequence, as hmmlearn's
    _set_hmmlearn(ref, model)
    rows = {r.id: r for r in model.transform(df).collect()}
    for i, s in enumerate(seqs):
        assert rows[i].prediction == ref.predict(s[:, None]).tolist()
        assert rows[i].logLikelihood == pytest.approx(ref.score(s[:, None]), rel=1e-10)
    assert model.criteria(df)["bic"] == pytest.approx(ref.bic(X, lengths), rel=1e-10)

    path = (tmp_path / "cat").as_uri()
    model.save(path)
    loaded = CategoricalHMMModel.load(path)
    for name in ("startProb", "transMat", "emissionProb"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.getOrDefault("smoothing") == model.getOrDefault("smoothing")


def _set_hmmlearn(ref, model):
    """Put the fitted model's parameters into an hmmlearn model."""
    ref.startprob_, ref.transmat_ = model.startProb, model.transMat
    if isinstance(model, GaussianHMMModel):
        ref.means_, ref.covars_ = model.means, model.covariances
    else:
        ref.emissionprob_ = model.emissionProb


def test_transform_adds_viterbi_path_posteriors_and_loglik_and_nulls_unscorable_sequences(
    spark, gaussian_data, gaussian_fits
):
    seqs, _ = gaussian_data
    model = gaussian_fits("full")
    nan = float("nan")
    good = {i: seqs[i] for i in range(12)}
    bad = {100: None, 101: [], 102: [[1.0, 2.0], [nan, 0.0]], 103: [[1.0, 2.0], [3.0]], 104: [[1.0, 2.0, 3.0]]}
    rows = [(i, s.tolist(), f"tag{i}") for i, s in good.items()] + [(i, s, f"tag{i}") for i, s in bad.items()]
    df = spark.createDataFrame(rows, "id long, obs array<array<double>>, tag string").repartition(2)
    out = model.transform(df)
    schema = {f.name: f.dataType for f in out.schema.fields}
    assert schema["prediction"] == T.ArrayType(T.IntegerType())
    assert schema["probability"] == T.ArrayType(T.ArrayType(T.DoubleType()))
    assert schema["logLikelihood"] == T.DoubleType()
    assert_df_equality(out.select("id", "obs", "tag"), df, ignore_row_order=True, allow_nan_equality=True)

    ref = _hmmlearn_gaussian("full", model.public_params())
    scored = {r.id: r for r in out.collect()}
    for i, s in good.items():
        r = scored[i]
        assert r.prediction == ref.predict(s).tolist()
        assert r.logLikelihood == pytest.approx(ref.score(s), rel=1e-10)
        np.testing.assert_allclose(np.array(r.probability), ref.predict_proba(s), rtol=1e-8, atol=1e-12)
        assert len(r.probability) == len(s)
    for i in bad:
        assert (scored[i].prediction, scored[i].probability, scored[i].logLikelihood) == (None, None, None)
    # renamed output columns, and no log-likelihood column when asked for none
    renamed = model.copy().setParams(predictionCol="path", probabilityCol="post", logLikelihoodCol="").transform(df)
    assert renamed.columns == ["id", "obs", "tag", "path", "post"]


def test_long_format_fit_equals_the_one_sequence_per_row_fit(spark, gaussian_data, gaussian_fits, tmp_path):
    seqs, df = gaussian_data
    per_row = gaussian_fits("full")
    rng = np.random.default_rng(5)
    steps = [(i, 10 * t + 3, float(x[0]), float(x[1])) for i, s in enumerate(seqs) for t, x in enumerate(s)]
    steps = [steps[j] for j in rng.permutation(len(steps))]
    long = spark.createDataFrame(steps, "sid long, t long, a double, b double").repartition(3)
    model = GaussianHMM(
        k=3,
        maxIter=10,
        tol=0.0,
        regCovar=0.0,
        featuresCol=["a", "b"],
        sequenceCol="sid",
        timeCol="t",
        initialModel=_gaussian_init("full"),
        numPartitions=3,
    ).fit(long)
    assert model.summary.dataFingerprint.split("hash=")[1] == per_row.summary.dataFingerprint.split("hash=")[1]
    assert model.summary.numRows == len(seqs)
    for name in ("startProb", "transMat", "means", "covariances"):
        np.testing.assert_allclose(getattr(model, name), getattr(per_row, name), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, per_row.summary.logLikelihoodHistory, rtol=1e-12)

    # transform groups the steps too: one row per sequence, keyed by sequenceCol
    out = model.transform(long)
    assert out.columns == ["sid", "sequence", "prediction", "probability", "logLikelihood"]
    expected = per_row.transform(df).select(F.col("id").alias("sid"), "prediction", "logLikelihood")
    got = out.select("sid", "prediction", "logLikelihood")
    # (the two fits differ in the last bits: their blocks hold the sequences in another order)
    assert_approx_df_equality(got, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)
    # BIC counts steps, whichever the format
    assert model.criteria(long)["bic"] == pytest.approx(per_row.criteria(df)["bic"], rel=1e-9)

    # a saved long-format model reads long-format data again after loading
    path = (tmp_path / "long").as_uri()
    model.save(path)
    loaded = GaussianHMMModel.load(path)
    assert (loaded.getOrDefault("sequenceCol"), loaded.getOrDefault("timeCol")) == ("sid", "t")
    assert_df_equality(loaded.transform(long), out, ignore_row_order=True)
    with pytest.raises(ValueError, match="weightCol is not supported with long-format input"):
        GaussianHMM(k=3, featuresCol=["a", "b"], sequenceCol="sid", timeCol="t", weightCol="a").fit(long)


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_save_and_load_round_trip(spark, gaussian_data, gaussian_fits, tmp_path, cov_type):
    _, df = gaussian_data
    model = gaussian_fits(cov_type)
    path = (tmp_path / "m").as_uri()
    model.save(path)
    loaded = GaussianHMMModel.load(path)
    for name in ("startProb", "transMat", "means", "covariances"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.getOrDefault("covarianceType") == cov_type
    assert loaded.getOrDefault("featuresCol") == "obs"
    assert loaded.summary.numIter == model.summary.numIter
    assert loaded.summary.logLikelihoodHistory == model.summary.logLikelihoodHistory
    assert_df_equality(loaded.transform(df), model.transform(df), ignore_row_order=True)
    with pytest.raises(FileExistsError):
        model.save(path)
    model.save(path, overwrite=True)
    with pytest.raises(ValueError, match="not a CategoricalHMMModel"):
        CategoricalHMMModel.load(path)


def test_killed_fit_resumes_with_the_same_run_id_and_ends_exactly_as_uninterrupted(
    spark, gaussian_data, tmp_path, monkeypatch
):
    _, df = gaussian_data
    params = dict(
        k=3,
        covarianceType="diag",
        maxIter=5,
        tol=0.0,
        seed=4,
        nInit=2,
        featuresCol="obs",
        checkpointDir=(tmp_path / "ck").as_uri(),
    )
    reference = GaussianHMM(runId="reference", **params).fit(df)

    # Both restarts run side by side: each data pass is one e_step_many (e_step goes through it).
    real_e_step_many = spark_source.SparkBlockSource.e_step_many
    calls = {"n": 0}

    def dying(self, models, label=""):
        if calls["n"] == 3:  # a pass in the middle of the run
            raise KeyboardInterrupt("driver killed")
        calls["n"] += 1
        return real_e_step_many(self, models, label)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", dying)
    with pytest.raises(KeyboardInterrupt):
        GaussianHMM(runId="hmm-1", **params).fit(df)
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", real_e_step_many)
    resumed = GaussianHMM(runId="hmm-1", **params).fit(df)
    assert resumed.summary.numIter == reference.summary.numIter
    assert resumed.summary.bestRestart == reference.summary.bestRestart
    for name in ("startProb", "transMat", "means", "covariances"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name))
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory


def test_criteria_bic_and_aic_equal_hmmlearns(gaussian_data, gaussian_fits):
    seqs, df = gaussian_data
    X, lengths = np.concatenate(seqs), [len(s) for s in seqs]
    for cov_type in ("full", "diag"):
        model = gaussian_fits(cov_type)
        ref = _hmmlearn_gaussian(cov_type, model.public_params())
        ref.n_features = 2  # set by hmmlearn's fit; these parameters were not fitted by it
        criteria = model.criteria(df)
        assert criteria["bic"] == pytest.approx(ref.bic(X, lengths), rel=1e-10)
        assert criteria["aic"] == pytest.approx(ref.aic(X, lengths), rel=1e-10)
        assert criteria["avgLogLik"] == pytest.approx(ref.score(X, lengths) / len(seqs), rel=1e-10)
        assert model.bic(df) == criteria["bic"]


def test_bic_of_weighted_sequences_counts_weight_times_steps_in_training_criteria_and_metrics(gaussian_data):
    # One sample size (models.criteria): the summary, EMModel.criteria and metrics.json agree.
    from em_spark.app.metrics import _criteria
    from em_spark.models.criteria import bic

    seqs, df = gaussian_data
    weighted = df.withColumn("w", (F.col("id") % 3 + 1).cast("double"))
    model = GaussianHMM(k=3, covarianceType="diag", maxIter=3, tol=0.0, seed=0, featuresCol="obs", weightCol="w").fit(
        weighted
    )
    expected = float(sum((i % 3 + 1) * len(s) for i, s in enumerate(seqs)))
    assert model.summary.observationWeight == expected
    criteria = model.criteria(weighted)
    p = model.family.n_parameters(model.arrays)
    total_weight = float(sum(i % 3 + 1 for i in range(len(seqs))))
    assert criteria["bic"] == pytest.approx(bic(criteria["avgLogLik"] * total_weight, p, expected), rel=1e-12)
    metrics = _criteria(model)
    assert metrics["bic"] == pytest.approx(bic(model.summary.logLikelihood, p, expected), rel=1e-12)
