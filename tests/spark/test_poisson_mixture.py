"""PoissonMixture on Spark: recovers a generated count mixture from numeric columns, scores, persists,
and refuses rows that are not counts before iteration 1 (nothing written)."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import linear_sum_assignment

from em_spark import PoissonMixture, PoissonMixtureModel
from em_spark.app.config import load_config
from em_spark.app.demo_data import make_poisson_counts
from em_spark.cli import run_train
from em_spark.engine.validation import DataValidationError

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[2]


def _frame(spark, X):
    return spark.createDataFrame([tuple(int(v) for v in row) for row in X], [f"c{f}" for f in range(X.shape[1])])


def test_recovers_generated_poisson_components_scores_and_round_trips(spark, tmp_path):
    X, labels, truth = make_poisson_counts(4000, 3, 3, seed=11)
    df = _frame(spark, X).repartition(3)
    estimator = PoissonMixture(k=3, seed=1, nInit=2, maxIter=200, tol=1e-8, featuresCol=["c0", "c1", "c2"])
    model = estimator.fit(df)
    family = model._family
    _, order = linear_sum_assignment(
        family.component_distances(truth, {"weights": model.weights, "rates": model.rates})
    )
    np.testing.assert_allclose(model.rates[order], truth["rates"], rtol=0.12, atol=0.3)
    np.testing.assert_allclose(model.weights[order], truth["weights"], atol=0.04)
    assert model.summary.converged and model.getSmoothing() == PoissonMixture().getSmoothing()
    scored = model.transform(df).select("prediction", "logLikelihood").toPandas()
    assert scored["prediction"].nunique() == 3 and np.isfinite(scored["logLikelihood"]).all()
    model.save((tmp_path / "poisson").as_uri())
    loaded = PoissonMixtureModel.load((tmp_path / "poisson").as_uri())
    np.testing.assert_array_equal(loaded.rates, model.rates)
    np.testing.assert_array_equal(loaded.weights, model.weights)


def _job(tmp_path: Path, data: Path, run_id: str):
    return load_config(
        str(REPO / "conf" / "local.yaml"),
        [
            f"input.path={data.as_uri()}",
            "input.generate=",
            "input.features=[c0, c1]",
            "model.family=poisson",
            "model.k=2",
            f"run.id={run_id}",
            f"run.checkpointDir={(tmp_path / 'store' / 'ckpt').as_uri()}",
            f"output.modelPath={(tmp_path / 'store' / 'model').as_uri()}",
            "output.overwrite=true",
            "fit.maxIter=5",
        ],
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Every stored file with a digest of its bytes (the count check runs in the load, before the lease)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_the_train_job_fits_counts_and_refuses_values_that_are_not_counts_touching_nothing(spark, tmp_path):
    X, _, _ = make_poisson_counts(300, 2, 2, seed=3)
    good = tmp_path / "good"
    good.mkdir()
    pq.write_table(pa.table({"c0": X[:, 0], "c1": X[:, 1]}), good / "part-0.parquet")
    run_train(_job(tmp_path, good, "good-run"))
    before = _snapshot(tmp_path / "store")
    assert any(name.startswith("model/") for name in before) and any(name.startswith("ckpt/") for name in before)
    for bad in (-1.0, 2.5):
        data = tmp_path / f"bad{bad}"
        data.mkdir()
        pq.write_table(
            pa.table({"c0": X[:, 0], "c1": np.where(np.arange(300) == 17, bad, X[:, 1])}), data / "p.parquet"
        )
        for run_id in ("bad-run", "good-run"):  # a new run, and the finished one's id: neither touches the store
            with pytest.raises(
                DataValidationError, match=r"1 row\(s\) have a negative or non-integer value in columns \['c0', 'c1'\]"
            ):
                run_train(_job(tmp_path, data, run_id))
        assert _snapshot(tmp_path / "store") == before
