"""LDA on a local SparkSession: the estimator fits what the numpy loop fits (array and Vector
columns alike), transforms, saves and loads, describes its topics; a killed fit resumes exactly;
bad counts and another vocabulary are refused before anything is stored."""

import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml.linalg import SparseVector, VectorUDT
from pyspark.sql import types as T

from em_spark import LDA, LDAModel
from em_spark.api import load_model
from em_spark.engine import spark_source
from em_spark.engine.results import restart_rng
from em_spark.engine.validation import DataValidationError
from em_spark.models import Block, LDAFamily, ModelError
from em_spark.models.lda import WORDS
from em_spark.stats import LOGLIK

pytestmark = pytest.mark.spark

K, V, SEED = 3, 25, 4


def _corpus(docs=300):
    rng = np.random.default_rng(11)
    beta = rng.dirichlet(np.full(V, 0.1), size=K)
    theta = rng.dirichlet(np.full(K, 0.3), size=docs)
    return np.array([rng.multinomial(rng.poisson(30) + 1, t @ beta) for t in theta], dtype=np.float64)


X = _corpus()


def _frame(spark, X):
    schema = T.StructType(
        [
            T.StructField("id", T.LongType()),
            T.StructField("counts", T.ArrayType(T.DoubleType())),
            T.StructField("vec", VectorUDT()),
        ]
    )
    rows = [
        (i, [float(v) for v in x], SparseVector(X.shape[1], {int(j): float(x[j]) for j in np.flatnonzero(x)}))
        for i, x in enumerate(X)
    ]
    return spark.createDataFrame(rows, schema).repartition(3, "id")


@pytest.fixture(scope="module")
def docs(spark):
    df = _frame(spark, X).cache()
    df.count()
    yield df
    df.unpersist()


def _numpy_batch(iterations):
    """Batch variational EM on the driver from the estimator's initial topics (restart 0's rng)."""
    family = LDAFamily(k=K)
    params = family.initialize(Block(X), restart_rng(SEED, 0))
    for _ in range(iterations):
        params = family.m_step(family.e_step(Block(X), params), params, Block(X), None).params
    return family, params


def test_lda_fits_as_the_numpy_loop_transforms_saves_loads_and_describes_its_topics(docs, tmp_path):
    model = LDA(k=K, optimizer="em", maxIter=12, seed=SEED, featuresCol="counts").fit(docs)
    family, params = _numpy_batch(12)
    np.testing.assert_allclose(model.arrays["lambda"], params["lambda"], rtol=1e-9)
    assert model.summary.optimizer == "batch" and model.summary.numIter == 12 and model.getOptimizer() == "em"
    # a SparseVector column is the same corpus
    on_vectors = LDA(k=K, optimizer="em", maxIter=12, seed=SEED, featuresCol="vec").fit(docs)
    np.testing.assert_allclose(on_vectors.arrays["lambda"], model.arrays["lambda"], rtol=1e-12)

    assert model.vocabSize() == V and not model.isDistributed()
    matrix = model.topicsMatrix()
    assert (matrix.numRows, matrix.numCols) == (V, K)
    np.testing.assert_array_equal(matrix.toArray(), model.arrays["lambda"].T)
    topics = model.describeTopics(4).orderBy("topic").collect()
    assert [r["topic"] for r in topics] == [0, 1, 2]
    for r in topics:
        best = np.argsort(-model.topics[r["topic"]], kind="stable")[:4]
        assert r["termIndices"] == best.tolist()
        np.testing.assert_allclose(r["termWeights"], model.topics[r["topic"], best])

    out = model.transform(docs).orderBy("id").select("topicDistribution", "prediction", "logLikelihood").collect()
    scores = family.score(Block(X), model.arrays)
    theta = np.array([r["topicDistribution"].toArray() for r in out])
    np.testing.assert_allclose(theta, np.exp(scores["log_resp"]), rtol=1e-10)
    np.testing.assert_array_equal([r["prediction"] for r in out], np.argmax(scores["log_resp"], axis=1))
    np.testing.assert_allclose([r["logLikelihood"] for r in out], scores["loglik"], rtol=1e-10)

    stats = family.e_step(Block(X), model.arrays)
    bound = float(stats[LOGLIK]) + family.log_prior(model.arrays)
    assert model.logLikelihood(docs) == pytest.approx(bound, rel=1e-10)
    assert model.logPerplexity(docs) == pytest.approx(-bound / float(stats[WORDS]), rel=1e-10)

    model.save((tmp_path / "lda").as_uri())
    for loaded in (LDAModel.load((tmp_path / "lda").as_uri()), load_model((tmp_path / "lda").as_uri())):
        assert isinstance(loaded, LDAModel) and loaded.family == model.family
        for name in model.arrays:
            np.testing.assert_array_equal(loaded.arrays[name], model.arrays[name])
        assert loaded.getTopicDistributionCol() == "topicDistribution" == loaded.getProbabilityCol()
        assert loaded.logPerplexity(docs) == pytest.approx(
            model.logPerplexity(docs), rel=1e-12
        )  # (Spark sums in any order)


def test_the_online_optimizer_is_the_default_and_a_killed_fit_resumes_exactly(docs, tmp_path, monkeypatch):
    online = dict(k=K, seed=SEED, featuresCol="counts", maxIter=12, subsamplingRate=0.5)
    reference = LDA(**online).fit(docs)
    assert reference.summary.optimizer == "online" and reference.getMiniBatchFraction() == 0.5
    _, batch = _numpy_batch(12)
    family = LDAFamily(k=K)

    def perplexity(params):
        stats = family.e_step(Block(X), params)
        return -(float(stats[LOGLIK]) + family.log_prior(params)) / float(stats[WORDS])

    initial = family.initialize(Block(X), restart_rng(SEED, 0))
    assert perplexity(batch) < perplexity(reference.arrays) < perplexity(initial)

    for optimizer, method in (("online", "e_step_subset"), ("em", "e_step_many")):
        real = getattr(spark_source.SparkBlockSource, method)
        calls = {"n": 0}

        def dying(self, *args, real=real, calls=calls, **kwargs):
            if calls["n"] == 5:
                raise KeyboardInterrupt("driver killed")
            calls["n"] += 1
            return real(self, *args, **kwargs)

        settings = {**online, "optimizer": optimizer}
        run = dict(runId=f"lda-{optimizer}", checkpointDir=(tmp_path / "ck").as_uri())
        expected = reference if optimizer == "online" else LDA(**settings).fit(docs)
        monkeypatch.setattr(spark_source.SparkBlockSource, method, dying)
        with pytest.raises(KeyboardInterrupt):
            LDA(**settings, **run).fit(docs)
        monkeypatch.setattr(spark_source.SparkBlockSource, method, real)
        resumed = LDA(**settings, **run).fit(docs)
        assert resumed.summary.logLikelihoodHistory == expected.summary.logLikelihoodHistory, optimizer
        for name in expected.arrays:
            np.testing.assert_array_equal(resumed.arrays[name], expected.arrays[name], err_msg=optimizer)


BAD = {
    "negative count": (
        lambda X: np.where(np.arange(X.size).reshape(X.shape) == 7, -2.0, X),
        r"negative or non-integer count \(e.g. -2.0\)",
    ),
    "fractional count": (
        lambda X: X / 3.0,
        r"hold a negative or non-integer count.*CountVectorizer or HashingTF output, not TF-IDF",
    ),
    "empty document": (
        lambda X: np.where(np.arange(X.shape[0])[:, None] == 4, 0.0, X),
        r"1 document\(s\) in column 'counts' have no words",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_counts_are_refused_naming_the_column_before_anything_is_stored(spark, tmp_path, case):
    make, message = BAD[case]
    df = _frame(spark, make(X))
    ckpt = tmp_path / "ck"
    with pytest.raises(DataValidationError, match=message):
        LDA(k=K, featuresCol="counts", runId="bad", checkpointDir=ckpt.as_uri()).fit(df)
    assert not ckpt.exists()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"docConcentration": 0.0}, r"docConcentration must be a number > 0"),
        ({"docConcentration": [0.1, -0.2, 0.3]}, r"docConcentration must be a number > 0 or 3 numbers > 0"),
        ({"topicConcentration": -1.0}, r"topicConcentration must be a number > 0"),
        ({"optimizer": "gibbs"}, r"optimizer must be one of \['online', 'em', 'batch'\]"),
    ],
)
def test_bad_hyperparameters_are_refused_before_anything_is_stored(docs, tmp_path, params, message):
    ckpt = tmp_path / "ck"
    with pytest.raises((ModelError, ValueError), match=message):
        LDA(k=K, featuresCol="counts", runId="bad", checkpointDir=ckpt.as_uri(), **params).fit(docs)
    assert not ckpt.exists()


def test_documents_of_another_vocabulary_are_refused_at_transform(spark, docs):
    model = LDA(k=K, optimizer="em", maxIter=2, featuresCol="counts").fit(docs)
    wider = _frame(spark, np.hstack([X, np.ones((X.shape[0], 1))]))
    for call in (model.transform, model.logPerplexity):
        with pytest.raises(
            DataValidationError,
            match=r"column 'counts' holds count vectors of 26 words but the model's vocabulary has 25",
        ):
            call(wider)
    assert math.isfinite(model.logPerplexity(docs))


def test_the_train_and_score_jobs_fit_lda_from_a_config_and_write_topic_distributions(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from em_spark.app.config import load_config
    from em_spark.cli import run_score, run_train

    data = tmp_path / "docs"
    data.mkdir()
    pq.write_table(pa.table({"id": np.arange(X.shape[0]), "counts": X.tolist()}), data / "part-0.parquet")
    store = tmp_path / "store"
    config = load_config(
        str(Path(__file__).resolve().parents[2] / "conf" / "local.yaml"),
        [
            f"input.path={data.as_uri()}",
            "input.generate=",
            "input.features=counts",
            "model.family=lda",
            f"model.k={K}",
            "model.topicConcentration=0.05",
            "fit.maxIter=5",
            "run.id=lda-job",
            f"run.checkpointDir={(store / 'ckpt').as_uri()}",
            f"output.modelPath={(store / 'model').as_uri()}",
            f"score.outputPath={(store / 'scored').as_uri()}",
        ],
    )
    run_train(config)
    model = load_model((store / "model").as_uri())
    assert isinstance(model, LDAModel) and model.family.topic_concentration == 0.05
    run_score(config)
    scored = pq.read_table(store / "scored").to_pandas().sort_values("id")
    theta = np.array(scored["topicDistribution"].tolist())
    assert theta.shape == (X.shape[0], K)
    np.testing.assert_allclose(theta, np.exp(model.family.score(Block(X), model.arrays)["log_resp"]), rtol=1e-10)
