"""StudentTMixture on Spark: robust to gross outliers where the model is fitted from a DataFrame,
scores, persists, and runs from a job config (model.family: student_t, model.dof)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark import StudentTMixture, StudentTMixtureModel
from em_spark.app.config import load_config
from em_spark.app.demo_data import make_contaminated_blobs
from em_spark.cli import run_train

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[2]


def test_recovers_the_clusters_under_outliers_scores_and_round_trips(spark, tmp_path):
    X, truth = make_contaminated_blobs()
    df = spark.createDataFrame([(i, float(a), float(b)) for i, (a, b) in enumerate(X)], ["i", "a", "b"]).repartition(3)
    model = StudentTMixture(k=3, seed=2, nInit=4, tol=1e-8, maxIter=300, featuresCol=["a", "b"]).fit(df)
    distance = np.linalg.norm(model.means[:, None] - truth[None], axis=2)
    assert distance.min(axis=0).max() < 0.1
    assert model.degreesOfFreedom.shape == (3,) and model.getEstimateDof()
    scored = model.transform(df).select("i", "logLikelihood").toPandas().sort_values("i")["logLikelihood"].to_numpy()
    assert np.isin(np.arange(150), np.argsort(scored)[:150]).mean() > 0.9  # the outliers (rows 0-149) score lowest
    model.save((tmp_path / "t").as_uri())
    loaded = StudentTMixtureModel.load((tmp_path / "t").as_uri())
    for name in ("weights", "means", "covariances", "dof"):
        np.testing.assert_array_equal(loaded.public_params()[name], model.public_params()[name])


def test_the_train_job_fits_a_t_mixture_with_fixed_degrees_of_freedom(spark, tmp_path):
    X, _ = make_contaminated_blobs()
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1]}), data / "part-0.parquet")
    config = load_config(
        str(REPO / "conf" / "local.yaml"),
        [
            f"input.path={data.as_uri()}",
            "input.generate=",
            "input.features=[a, b]",
            "model.family=student_t",
            "model.k=3",
            "model.covarianceType=diag",
            "model.dof=3",
            "model.estimateDof=false",
            "run.id=t-job",
            f"run.checkpointDir={(tmp_path / 'ckpt').as_uri()}",
            f"output.modelPath={(tmp_path / 'model').as_uri()}",
            "fit.maxIter=20",
        ],
    )
    run_train(config)
    model = StudentTMixtureModel.load((tmp_path / "model").as_uri())
    np.testing.assert_array_equal(model.degreesOfFreedom, 3.0)
    assert model.covariances.shape == (3, 2) and model.getCovarianceType() == "diag"
