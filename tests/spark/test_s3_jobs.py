"""Jobs against a real S3 HTTP endpoint (the moto server on 127.0.0.1), as in production.

Spark itself cannot read s3:// input here: its S3 connector (hadoop-aws) comes from Maven,
which this machine cannot reach. Input is therefore local; everything em_spark writes
(checkpoints, models, registry, reports) goes through the S3 server.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark import GaussianMixture, GaussianMixtureModel
from em_spark.app.config import load_config
from em_spark.app.demo_data import make_blobs
from em_spark.app.nightly import run_nightly
from em_spark.engine import spark_source
from em_spark.storage import CheckpointStore
from em_spark.storage.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.spark, pytest.mark.s3]


def test_fit_checkpointing_to_s3_is_killed_and_resumes_exactly(spark, s3_server, s3_bucket, monkeypatch):
    X, _, _ = make_blobs(3000, 2, 3, seed=6)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], ["a", "b"]).cache()
    params = dict(
        k=3,
        maxIter=8,
        tol=0.0,
        seed=4,
        featuresCol=["a", "b"],
        checkpointDir=f"{s3_bucket}/ckpt",
        s3Endpoint=s3_server.endpoint,
    )
    reference = GaussianMixture(runId="reference", **params).fit(df)

    real = spark_source.SparkBlockSource.e_step
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("driver killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step", dying)
    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(runId="night-1", **params).fit(df)
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step", real)
    store = CheckpointStore(f"{s3_bucket}/ckpt", "night-1", s3_endpoint=s3_server.endpoint)
    assert store.latest().sequence == 4  # four complete iterations were committed to S3
    resumed = GaussianMixture(runId="night-1", **params).fit(df)
    assert resumed.summary.numIter == reference.summary.numIter
    np.testing.assert_allclose(resumed.means, reference.means, rtol=1e-9)
    assert resumed.summary.logLikelihoodHistory == reference.summary.logLikelihoodHistory

    resumed.save(f"{s3_bucket}/models/m")
    loaded = GaussianMixtureModel.load(f"{s3_bucket}/models/m", s3Endpoint=s3_server.endpoint)
    np.testing.assert_array_equal(loaded.covariances, resumed.covariances)


def test_nightly_with_its_registry_on_s3(spark, s3_server, s3_bucket, tmp_path):
    X, _, _ = make_blobs(3000, 2, 3, seed=42)
    night = tmp_path / "events" / "date=2026-11-22"
    night.mkdir(parents=True)
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1]}), night / "part-0.parquet")
    sets = [
        "nightly.date=2026-11-22",
        f"registry.uri={s3_bucket}/registry",
        f"storage.s3Endpoint={s3_server.endpoint}",
        f"nightly.inputPath={(tmp_path / 'events').as_uri()}/date={{date}}",
        "input.generate=",
        "fit.maxIter=30",
    ]
    report = run_nightly(load_config(str(REPO / "conf" / "nightly.yaml"), sets))
    assert report["decision"] == "promoted"
    assert run_nightly(load_config(str(REPO / "conf" / "nightly.yaml"), sets))["alreadyDone"]
    registry = ModelRegistry(f"{s3_bucket}/registry", s3_endpoint=s3_server.endpoint)
    assert [v.version for v in registry.versions("demo-gmm")] == [1] and registry.alias("demo-gmm") == 1


@pytest.mark.slow
def test_compose_topology_without_docker_local_cluster_and_s3(s3_server, tmp_path):
    """The docker-compose job and config, on local-cluster executors and the S3 test server."""
    s3_server.client().create_bucket(Bucket="em-spark")  # what the compose file's minio-setup does
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    submit = [
        str(Path(sys.executable).with_name("spark-submit")),
        "--master",
        "local-cluster[2,1,1024]",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.executor.memory=768m",
        str(REPO / "jobs" / "train.py"),
        "--config",
        str(REPO / "conf" / "docker.yaml"),
        "--set",
        f"storage.s3Endpoint={s3_server.endpoint}",
        "--set",
        f"input.path={(tmp_path / 'data').as_uri()}",
        "--set",
        "input.generate.rows=20000",
        "--set",
        "fit.maxIter=15",
    ]
    first = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "em_spark fit: run docker-demo: gaussian, 20000 rows" in out
    assert "in 2 partitions" in out  # one per executor core
    model = GaussianMixtureModel.load("s3://em-spark/models/demo", s3Endpoint=s3_server.endpoint)
    assert model.weights.shape == (3,)
    assert CheckpointStore("s3://em-spark/checkpoints", "docker-demo", s3_endpoint=s3_server.endpoint).latest()
    again = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "already finished" in again.stdout + again.stderr
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]):
        assert secret not in out


def test_debug_logging_and_the_spark_event_log_never_show_the_credentials(s3_server, tmp_path):
    # A job against the S3 test server at DEBUG, with Spark's event log on: boto3's request
    # signing is logged, yet neither the key id nor the secret appears anywhere.
    s3_server.client().create_bucket(Bucket="secrets-check")
    import yaml

    events = tmp_path / "events"
    events.mkdir()
    config = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    config["spark"]["conf"].update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri()})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    command = [
        sys.executable,
        "-m",
        "em_spark.cli",
        "train",
        "--config",
        str(tmp_path / "job.yaml"),
        "--set",
        "run.logLevel=DEBUG",
        "--set",
        "run.id=secrets",
        "--set",
        "fit.maxIter=3",
        "--set",
        "fit.nInit=1",
        "--set",
        "run.checkpointDir=s3://secrets-check/checkpoints",
        "--set",
        "output.modelPath=s3://secrets-check/model",
        "--set",
        f"storage.s3Endpoint={s3_server.endpoint}",
        "--set",
        "input.generate.rows=3000",
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "botocore" in out and "DEBUG" in out  # the libraries' debug lines were on
    logs = [p for p in events.rglob("*") if p.is_file()]
    assert logs, "Spark wrote no event log"
    texts = [out] + [p.read_text(errors="replace") for p in logs]
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]):
        assert all(secret not in text for text in texts)
