"""SparseVector columns on a classic session: a 50,000-word vocabulary loads into sparse blocks
(executor files sized by the non-zeros), fits CategoricalMixture(kind="multinomial") as the
numpy engine fits the same rows, transforms, resumes from checkpoints, and bad counts are one
clear error before iteration 1."""

from __future__ import annotations

import glob
import os
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from pyspark import SparkFiles
from pyspark.ml.linalg import Vectors

from em_spark import CategoricalMixture
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.engine.spark_source import load_blocks
from em_spark.engine.validation import DataValidationError
from em_spark.models import Block
from em_spark.models.base import sparse_rows

pytestmark = pytest.mark.spark

VOCABULARY = 50_000


def word_counts(n=3000, vocabulary=VOCABULARY, k=3, seed=0):
    """(n, V) CSR word counts of documents from k topics with disjoint-ish vocabularies."""
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(vocabulary, 0.01), size=k)
    rows = [rng.multinomial(int(rng.integers(10, 80)), topics[j]) for j in rng.integers(0, k, n)]
    return sparse_rows(sp.csr_array(np.array(rows, dtype=np.float64)))


def vector_frame(spark, X, dense_every=0):
    """A DataFrame of one Vector column ``features``: SparseVectors, and every ``dense_every``-th row
    a DenseVector (0: none)."""
    rows = []
    for i, (a, b) in enumerate(pairwise(X.indptr)):
        if dense_every and i % dense_every == 0:
            rows.append((Vectors.dense(X[[i], :].toarray()[0]),))
        else:
            rows.append((Vectors.sparse(X.shape[1], X.indices[a:b].tolist(), X.data[a:b].tolist()),))
    return spark.createDataFrame(rows, ["features"])


@pytest.fixture(scope="module")
def documents(spark):
    X = word_counts()
    df = vector_frame(spark, X).repartition(3).cache()
    df.count()
    yield X, df
    df.unpersist()


def _block_bytes() -> dict[str, int]:
    root = os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks")
    return {p: os.path.getsize(p) for p in glob.glob(os.path.join(root, "*", "*.bin"))}


def test_what_map_in_arrow_delivers_for_a_vector_column_is_its_sql_struct(spark):
    df = spark.createDataFrame([(Vectors.sparse(4, [1], [2.0]),), (Vectors.dense([1.0, 0.0]),), (None,)], ["v"])
    seen = df.mapInArrow(
        lambda batches: (pa.RecordBatch.from_pydict({"t": [str(b.schema.field("v").type)]}) for b in batches),
        "t string",
    ).collect()
    assert {r["t"] for r in seen} == {
        "struct<type: int8 not null, size: int32, indices: list<element: int32 not null>, values: list<element: double not null>>"
    }


def test_a_50000_word_vocabulary_loads_into_blocks_sized_by_the_non_zeros(documents):
    X, df = documents
    before = _block_bytes()
    source = load_blocks(df, "features", None, k=3, seed=0, sparse=True, counts=True)
    try:
        written = {p: n for p, n in _block_bytes().items() if p not in before}
        assert source.summary.rows == X.shape[0] and source.n_features == VOCABULARY
        assert source.sample.is_sparse
        partitions = source.num_partitions
        total = sum(written.values())
        blocks = source.summary.blocks
        # values (8 bytes) + indices (4) per non-zero, and one int32 indptr entry per row and block
        assert total >= X.nnz * 12 + X.shape[0] * 4
        assert total <= X.nnz * 12 + (X.shape[0] + blocks + partitions) * 4
        assert total < X.shape[0] * VOCABULARY * 8 / 500  # the dense blocks would be 1.2 GB
        # the fingerprint is the dense rows' (module fingerprint): compare with the numpy engine's
        assert source.fingerprint == LocalBlockSource([Block(X)], sample_size=0).fingerprint
    finally:
        source.close()


def test_a_sparse_fit_is_the_numpy_engines_fit_and_transforms(documents):
    X, df = documents
    estimator = CategoricalMixture(k=3, kind="multinomial", seed=5, nInit=2, maxIter=12, tol=0.0)
    model = estimator.fit(df)
    assert model.probs.shape == (3, VOCABULARY)
    family = estimator.family()
    reference = fit_em(
        family,
        LocalBlockSource([Block(X[a : a + 1000, :]) for a in range(0, 3000, 1000)], seed=5),
        FitSettings(max_iter=12, tol=0.0, seed=5, n_init=2),
    )
    # the same sample (partition-independent), so the same start; the statistics differ only in
    # summation order across partitions
    np.testing.assert_allclose(model.summary.logLikelihoodHistory, reference.history, rtol=1e-10)
    np.testing.assert_allclose(model.probs, reference.params["probs"], rtol=1e-8, atol=1e-14)
    scored = model.transform(df).select("features", "prediction", "probability", "logLikelihood").collect()
    rows = sparse_rows(sp.vstack([sp.csr_array(r["features"].toArray()[None, :]) for r in scored[:300]]))
    expected = family.score(Block(rows), model.arrays)
    np.testing.assert_array_equal([r["prediction"] for r in scored[:300]], expected["log_resp"].argmax(axis=1))
    np.testing.assert_allclose([r["logLikelihood"] for r in scored[:300]], expected["loglik"], rtol=1e-10)
    np.testing.assert_allclose(
        [r["probability"].toArray() for r in scored[:300]], np.exp(expected["log_resp"]), atol=1e-12
    )
    assert len(scored) == X.shape[0] and all(r["prediction"] is not None for r in scored)


def test_dense_vectors_in_the_column_are_rows_like_any_other(spark):
    X = word_counts(n=600, vocabulary=300, seed=2)
    params = dict(k=2, kind="multinomial", seed=1, maxIter=5, tol=0.0, numPartitions=2)
    mixed = CategoricalMixture(**params).fit(vector_frame(spark, X, dense_every=3).coalesce(1))
    pure = CategoricalMixture(**params).fit(vector_frame(spark, X).coalesce(1))
    assert mixed.summary.dataFingerprint == pure.summary.dataFingerprint
    np.testing.assert_array_equal(mixed.probs, pure.probs)


def test_a_count_vectorizer_column_fits(spark):
    from pyspark.ml.feature import CountVectorizer

    rng = np.random.default_rng(4)
    docs = [([f"w{w}" for w in rng.integers(0, 40, 20) + 40 * (i % 2)],) for i in range(400)]
    tokens = spark.createDataFrame(docs, ["words"])
    counts = CountVectorizer(inputCol="words", outputCol="features").fit(tokens).transform(tokens)
    model = CategoricalMixture(k=2, kind="multinomial", seed=0, maxIter=20).fit(counts)
    predicted = [r["prediction"] for r in model.transform(counts).select("prediction").collect()]
    halves = np.array(predicted).reshape(-1, 2)  # documents alternate between the two vocabularies
    assert (halves[:, 0] != halves[:, 1]).all()


def test_a_checkpointed_sparse_fit_resumes_where_it_stopped(spark, tmp_path):
    X = word_counts(n=1500, seed=3)
    df = vector_frame(spark, X)
    params = dict(k=3, kind="multinomial", seed=2, nInit=1, tol=0.0, checkpointDir=(tmp_path / "ck").as_uri())
    reference = CategoricalMixture(runId="reference", maxIter=6, **params).fit(df)
    CategoricalMixture(runId="nightly", maxIter=3, **params).fit(df)
    resumed = CategoricalMixture(runId="nightly", maxIter=6, **params).fit(df)
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory
    np.testing.assert_array_equal(resumed.probs, reference.probs)


@pytest.mark.parametrize("bad", [-2.0, 0.5])
def test_bad_counts_in_a_sparse_column_are_refused_before_iteration_1(spark, tmp_path, bad):
    X = word_counts(n=300, vocabulary=1000, seed=1).tolil()
    X[7, 3] = bad
    X[11, 900] = bad
    df = vector_frame(spark, sparse_rows(X))
    checkpoints = tmp_path / "ck"
    with pytest.raises(DataValidationError) as raised:
        CategoricalMixture(k=2, kind="multinomial", checkpointDir=checkpoints.as_uri(), runId="bad").fit(df)
    message = str(raised.value)
    assert "2 row(s) have a negative or non-integer value in column 'features'" in message, message
    assert "non-negative integer counts: drop or round those rows" in message
    assert not checkpoints.exists() or not any(checkpoints.rglob("*.emck"))  # nothing stored


def test_sparse_vectors_read_back_from_parquet_score_with_the_vectorized_nested_reader_on(spark, tmp_path):
    """A user's plain session reads nested Parquet columns vectorized (Spark's default); a scalar
    Arrow UDF over such a Vector column then fails in Spark's row-to-columnar converter
    (UNSUPPORTED_DATATYPE UDT). Scoring reads it through mapInArrow instead, on any session, and
    gives the same scores as the numpy model."""
    X = word_counts(n=300, vocabulary=2000, seed=3)
    path = str(tmp_path / "docs")
    vector_frame(spark, X).write.parquet(path)
    model = CategoricalMixture(k=2, kind="multinomial", seed=0, maxIter=3).fit(spark.read.parquet(path))
    key = "spark.sql.parquet.enableNestedColumnVectorizedReader"
    before = spark.conf.get(key)
    spark.conf.set(key, "true")
    try:
        scored = model.transform(spark.read.parquet(path)).select("features", "logLikelihood").collect()
    finally:
        spark.conf.set(key, before)
    by_row = {
        tuple(r["features"].indices.tolist()) + tuple(r["features"].values.tolist()): r["logLikelihood"] for r in scored
    }
    expected = model._family.score(Block(X), model._arrays)["loglik"]
    got = [by_row[tuple(X.indices[a:b].tolist()) + tuple(X.data[a:b].tolist())] for a, b in pairwise(X.indptr)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
