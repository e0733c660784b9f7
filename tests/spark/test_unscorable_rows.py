"""Rows that cannot be scored get null outputs and a logged count, for every family, as the
README says: NaN, +inf, a ragged or wrong-length vector/array, a null vector (a null step of a
sequence). Through ``run_score`` / ``run_impute`` themselves (the command code, in-process);
the same through the CLI is in test_score_safety.py."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import types as T

from em_spark.api import CategoricalMixture, GaussianHMM, GaussianMixture, KMeans
from em_spark.app.config import ConfigError, load_config
from em_spark.cli import run_impute, run_score

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
NAN, INF = float("nan"), float("inf")

# (name, array value, Vector value); the good rows come first.
BAD_ROWS = [
    ("nan", [NAN, 1.0], Vectors.dense([NAN, 1.0])),
    ("+inf", [INF, 1.0], Vectors.dense([INF, 1.0])),
    ("ragged (3 entries)", [1.0, 1.0, 1.0], Vectors.dense([1.0, 1.0, 1.0])),
    ("wrong length (1 entry)", [1.0], Vectors.sparse(1, [0], [1.0])),
    ("null", None, None),
]
SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("f", T.ArrayType(T.DoubleType())),
        T.StructField("v", VectorUDT()),
    ]
)
SEQ_SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("s", T.ArrayType(T.ArrayType(T.DoubleType()))),
        T.StructField("sv", T.ArrayType(VectorUDT())),
    ]
)


def _config(tmp_path: Path, data: Path, model: Path, features: str, section: str = "score"):
    return load_config(
        str(REPO / "conf" / "local.yaml"),
        [
            f"input.path={data.as_uri()}",
            "input.generate=",
            f"input.features={features}",
            f"{section}.modelPath={model.as_uri()}",
            f"{section}.outputPath={(tmp_path / f'out-{features}').as_uri()}",
            f"{section}.mode=overwrite",
            "score.partitionBy=[]",
            f"run.checkpointDir={(tmp_path / 'ck').as_uri()}",
            f"{section}.keepColumns=[id]",
        ],
    )


# Vector columns scanned from Parquet need the row reader of nested columns on pyspark 4.3
# (UNSUPPORTED_DATATYPE otherwise): em_spark.engine.session sets it, and these tests read Vectors
# from Parquet through that session, so they fail if it stops doing so.


def _rows(good: np.ndarray) -> list[tuple]:
    rows = [(i, [float(x) for x in r], Vectors.dense(r.tolist())) for i, r in enumerate(good)]
    return rows + [(len(good) + j, a, v) for j, (_, a, v) in enumerate(BAD_ROWS)]


def _good(family: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    if family == "categorical":
        return rng.integers(0, 3, size=(60, 2)).astype(float)
    return rng.normal(size=(60, 2)) + np.repeat([[0.0, 0.0], [5.0, 5.0]], 30, axis=0)


@pytest.fixture(scope="module")
def row_data(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    made = {}
    for family in ("gaussian", "categorical"):
        good = _good(family)
        spark.createDataFrame(_rows(good), SCHEMA).coalesce(1).write.parquet(str(root / family))
        made[family] = (root / family, len(good))
    return made


ESTIMATORS = {
    "gaussian": lambda: GaussianMixture(k=2, seed=0, maxIter=5, featuresCol="f"),
    "kmeans": lambda: KMeans(k=2, seed=0, maxIter=5, featuresCol="f"),
    "categorical": lambda: CategoricalMixture(k=2, seed=0, maxIter=5, featuresCol="f", nCategories=[3, 3]),
}


@pytest.mark.parametrize("family", list(ESTIMATORS))
def test_each_unscorable_row_gets_null_outputs_and_is_counted(spark, row_data, tmp_path, family, caplog):
    data, n_good = row_data["categorical" if family == "categorical" else "gaussian"]
    train = spark.read.parquet(str(data)).where(f"id < {n_good}")
    model = ESTIMATORS[family]().fit(train)
    model.save(str(tmp_path / "model"))
    for features in ("f", "v"):
        with caplog.at_level(logging.WARNING, logger="em_spark"):
            result = run_score(_config(tmp_path, data, tmp_path / "model", features))
        assert result["rows"] == n_good + len(BAD_ROWS) and result["unscored"] == len(BAD_ROWS), (family, features)
        assert f"{len(BAD_ROWS)} of {n_good + len(BAD_ROWS)} rows could not be scored" in caplog.text
        out = {r["id"]: r for r in spark.read.parquet(result["output"]).collect()}
        for j, (name, _, _) in enumerate(BAD_ROWS):
            row = out[n_good + j]
            assert row["prediction"] is None and row["probability"] is None and row["logLikelihood"] is None, name
        good = [out[i] for i in range(n_good)]
        assert all(r["prediction"] is not None and math.isfinite(r["logLikelihood"]) for r in good)
        assert all(abs(sum(r["probability"]) - 1.0) < 1e-9 for r in good)


def _sequences(good: np.ndarray) -> list[tuple]:
    """Eight good 5-step sequences of 2 features; then one sequence per bad case (one bad step)."""
    seqs = [good[i * 5 : (i + 1) * 5] for i in range(len(good) // 5)]
    rows = [
        (i, [list(map(float, s)) for s in seq], [Vectors.dense(s.tolist()) for s in seq]) for i, seq in enumerate(seqs)
    ]
    base = seqs[0]
    for j, (_name, a, v) in enumerate(BAD_ROWS):
        steps = [list(map(float, s)) for s in base]
        vectors = [Vectors.dense(s.tolist()) for s in base]
        steps[2], vectors[2] = a, v  # one bad step (a null step for "null")
        rows.append((len(seqs) + j, steps, vectors))
    rows.append((len(seqs) + len(BAD_ROWS), None, None))  # a null sequence
    return rows


def test_hmm_unscorable_sequences_get_null_outputs_and_are_counted(spark, tmp_path, caplog):
    good = _good("gaussian")[:40]
    rows = _sequences(good)
    data = tmp_path / "seqs"
    spark.createDataFrame(rows, SEQ_SCHEMA).coalesce(1).write.parquet(str(data))
    n_good, n_bad = len(good) // 5, len(BAD_ROWS) + 1
    model = GaussianHMM(k=2, seed=0, maxIter=5, featuresCol="s").fit(
        spark.read.parquet(str(data)).where(f"id < {n_good}")
    )
    model.save(str(tmp_path / "model"))
    for features in ("s", "sv"):
        with caplog.at_level(logging.WARNING, logger="em_spark"):
            result = run_score(_config(tmp_path, data, tmp_path / "model", features))
        assert result["rows"] == n_good + n_bad and result["unscored"] == n_bad, features
        assert f"{n_bad} of {n_good + n_bad} sequences could not be scored" in caplog.text
        out = {r["id"]: r for r in spark.read.parquet(result["output"]).collect()}
        for j in range(n_bad):
            row = out[n_good + j]
            assert row["prediction"] is None and row["probability"] is None and row["logLikelihood"] is None, j
        assert all(len(out[i]["prediction"]) == 5 and math.isfinite(out[i]["logLikelihood"]) for i in range(n_good))


def test_impute_unreadable_rows_get_null_outputs_and_are_counted(spark, row_data, tmp_path, caplog):
    data, n_good = row_data["gaussian"]
    model = GaussianMixture(k=2, seed=0, maxIter=5, featuresCol="f").fit(
        spark.read.parquet(str(data)).where(f"id < {n_good}")
    )
    model.save(str(tmp_path / "model"))
    # NaN is a missing entry, which impute fills (documented); the others cannot be read.
    unreadable = [j for j, (name, _, _) in enumerate(BAD_ROWS) if name != "nan"]
    for features in ("f", "v"):
        with caplog.at_level(logging.WARNING, logger="em_spark"):
            result = run_impute(_config(tmp_path, data, tmp_path / "model", features, section="impute"))
        assert result["rows"] == n_good + len(BAD_ROWS) and result["unreadable"] == len(unreadable), features
        assert result["imputedRows"] == 1
        assert f"{len(unreadable)} of {n_good + len(BAD_ROWS)} rows could not be read" in caplog.text
        out = {r["id"]: r for r in spark.read.parquet(result["output"]).collect()}
        for j in unreadable:
            assert out[n_good + j]["imputed"] is None and out[n_good + j]["imputedStd"] is None, BAD_ROWS[j][0]
        nan_row = out[n_good]
        assert math.isfinite(nan_row["imputed"][0]) and nan_row["imputed"][1] == 1.0 and nan_row["imputedStd"][0] > 0


def test_a_model_data_feature_count_mismatch_is_refused_naming_both_counts(spark, tmp_path):
    rng = np.random.default_rng(1)
    model = GaussianMixture(k=2, seed=0, maxIter=3, featuresCol="f").fit(
        spark.createDataFrame([([float(a), float(b)],) for a, b in rng.normal(size=(50, 2))], ["f"])
    )
    model.save(str(tmp_path / "model"))
    three = [(i, [1.0, 2.0, 3.0], Vectors.dense([1.0, 2.0, 3.0])) for i in range(20)] + [(99, None, None)]
    data = tmp_path / "three"
    spark.createDataFrame(three, SCHEMA).coalesce(1).write.parquet(str(data))
    for features in ("f", "v"):
        with pytest.raises(ConfigError, match=r"has 2 features but input.features \(column '.*'\) has 3"):
            run_score(_config(tmp_path, data, tmp_path / "model", features))
        assert not (tmp_path / f"out-{features}").exists()
    # A Vector column with ML attribute metadata (VectorAssembler) is checked without a job.
    from pyspark.ml.feature import VectorAssembler

    assembled = VectorAssembler(inputCols=["a", "b", "c"], outputCol="v").transform(
        spark.createDataFrame([(1.0, 2.0, 3.0)], ["a", "b", "c"])
    )
    from em_spark.engine.scoring import sample_feature_counts

    assert sample_feature_counts(assembled, "v", False) == [3]
