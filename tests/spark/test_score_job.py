"""The score job for users downstream: anomaly flag, output partitioned like the input."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from em_spark import GaussianMixture
from em_spark.app.config import load_config
from em_spark.app.demo_data import make_blobs
from em_spark.cli import run_score
from em_spark.storage.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def partitioned_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    X, _, _ = make_blobs(3000, 2, 3, seed=5)
    X[:10] += 40.0  # ten rows far from every component
    for i, date in enumerate(["2026-11-21", "2026-11-22"]):
        part = root / f"date={date}"
        part.mkdir()
        rows = X[i * 1500 : (i + 1) * 1500]
        pq.write_table(
            pa.table({"id": np.arange(i * 1500, (i + 1) * 1500), "x0": rows[:, 0], "x1": rows[:, 1]}),
            part / "part-0.parquet",
        )
    return root


def test_score_flags_anomalies_and_partitions_like_the_input(spark, partitioned_input, tmp_path):
    train = spark.read.parquet(str(partitioned_input))
    model = GaussianMixture(k=3, seed=0, featuresCol=["x0", "x1"]).fit(train.where("id >= 10"))
    model.save((tmp_path / "model").as_uri())
    config = load_config(
        str(REPO / "conf" / "local.yaml"),
        [
            f"input.path={partitioned_input.as_uri()}",
            "input.generate=",
            "input.features=[x0, x1]",
            f"score.modelPath={(tmp_path / 'model').as_uri()}",
            f"score.outputPath={(tmp_path / 'out').as_uri()}",
            "score.anomalyThreshold=-20.0",
        ],
    )
    result = run_score(config)
    assert result["partitionBy"] == ["date"] and result["rows"] == 3000 and result["unscored"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("date=")) == [
        "date=2026-11-21",
        "date=2026-11-22",
    ]
    out = spark.read.parquet(str(tmp_path / "out"))
    flagged = out.where("anomaly").select("id")
    expected = out.where(F.col("logLikelihood") < -20.0).select("id")
    assert_df_equality(flagged, expected, ignore_row_order=True)
    assert {r.id for r in flagged.collect()} >= set(range(10))
    assert result["anomalies"] == flagged.count()


def test_score_with_the_registry_production_model(spark, partitioned_input, tmp_path):
    train = spark.read.parquet(str(partitioned_input))
    model = GaussianMixture(k=3, seed=0, featuresCol=["x0", "x1"]).fit(train)
    registry = ModelRegistry((tmp_path / "registry").as_uri())
    version = registry.register(
        "events", model.to_bytes(), config={}, seed=0, data_fingerprint="x", run_id="r1", metrics={}
    )
    registry.promote("events", version.version)
    config = load_config(
        str(REPO / "conf" / "local.yaml"),
        [
            f"input.path={partitioned_input.as_uri()}",
            "input.generate=",
            "score.registryModel=events",
            f"registry.uri={(tmp_path / 'registry').as_uri()}",
            f"score.outputPath={(tmp_path / 'out').as_uri()}",
            "score.partitionBy=[]",
        ],
    )
    result = run_score(config)
    assert result["model"] == "events v1 (production)" and result["partitionBy"] == []
