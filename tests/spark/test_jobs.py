"""The jobs as users run them: spark-submit of jobs/train.py and jobs/score.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from em_spark.api import GaussianMixtureModel

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _spark_submit() -> str:
    found = Path(sys.executable).with_name("spark-submit")
    return str(found) if found.exists() else shutil.which("spark-submit")


def _config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    config["run"]["id"] = "job-test"
    config["input"]["generate"] = {"rows": 3000, "features": 2, "components": 3, "seed": 1}
    config["fit"].update(maxIter=20, nInit=1)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args, cwd):
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_then_score_through_spark_submit(tmp_path):
    config = _config(tmp_path)
    submit = [_spark_submit(), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
    train = _run([*submit, str(REPO / "jobs" / "train.py"), "--config", str(config)], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "em_spark fit: run job-test: gaussian, 3000 rows" in train.stdout
    # one log line per iteration (spark-submit merges the driver's stderr into stdout)
    assert "run=job-test restart=1/1 iter=1/20" in train.stdout + train.stderr
    model = GaussianMixtureModel.load((tmp_path / "em-spark-demo" / "model-local").as_uri())
    assert model.weights.shape == (3,)

    score = _run([*submit, str(REPO / "jobs" / "score.py"), "--config", str(config)], tmp_path)
    assert score.returncode == 0, score.stderr[-3000:]
    table = pq.read_table(tmp_path / "em-spark-demo" / "scored-local")
    assert table.num_rows == 3000
    assert {"x0", "x1", "component", "prediction", "probability", "logLikelihood"} <= set(table.column_names)

    # Re-running the finished run is safe: it is read back from its checkpoint.
    again = _run([*submit, str(REPO / "jobs" / "train.py"), "--config", str(config)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr


def test_job_with_a_bad_config_key_fails_with_a_clear_message(tmp_path):
    config = _config(tmp_path)
    result = _run(
        [sys.executable, "-m", "em_spark.cli", "train", "--config", str(config), "--set", "model.kk=3"], tmp_path
    )
    assert result.returncode == 2
    assert "unknown config key 'model.kk' (did you mean model.k?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_nightly_retrain_through_spark_submit_then_registry_cli(tmp_path):
    submit = [_spark_submit(), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
    night = [
        str(REPO / "jobs" / "nightly_retrain.py"),
        "--config",
        str(REPO / "conf" / "nightly.yaml"),
        "--set",
        "nightly.date=2026-11-22",
        "--set",
        "input.generate.rows=5000",
        "--set",
        "fit.maxIter=20",
    ]
    first = _run([*submit, *night], tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    assert "nightly demo-gmm 2026-11-22: PROMOTED" in out
    report = tmp_path / "em-spark-demo" / "registry" / "demo-gmm" / "runs" / "demo-gmm-2026-11-22" / "report.json"
    assert '"decision": "promoted"' in report.read_text()
    again = _run([*submit, *night], tmp_path)
    assert again.returncode == 0 and "already done" in again.stdout + again.stderr
    listing = _run(
        [
            sys.executable,
            "-m",
            "em_spark.cli",
            "registry",
            "list",
            "--registry",
            "em-spark-demo/registry",
            "--name",
            "demo-gmm",
        ],
        tmp_path,
    )
    assert listing.returncode == 0 and "*1" in listing.stdout and "demo-gmm-2026-11-22" in listing.stdout


def test_select_through_spark_submit_writes_the_table_and_json(tmp_path):
    config = _config(tmp_path)
    select = [
        _spark_submit(),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        str(REPO / "jobs" / "select_models.py"),
        "--config",
        str(config),
        "--set",
        "select.ks=[1, 2, 3, 4]",
        "--set",
        "select.outputPath=select.json",
    ]
    result = _run(select, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "chosen by lowest BIC: k=3, covarianceType=full" in out
    import json

    report = json.loads((tmp_path / "select.json").read_text())
    assert report["chosen"]["k"] == 3 and len(report["candidates"]) == 4


def test_hidden_markov_model_train_then_score_through_spark_submit(tmp_path):
    # conf/hmm.yaml as shipped, smaller: sequences in, Viterbi paths and per-sequence likelihoods out.
    submit = [_spark_submit(), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
    small = [
        "--config",
        str(REPO / "conf" / "hmm.yaml"),
        "--set",
        "input.generate.rows=300",
        "--set",
        "input.generate.steps=20",
        "--set",
        "fit.maxIter=15",
    ]
    train = _run([*submit, str(REPO / "jobs" / "train.py"), *small], tmp_path)
    assert train.returncode == 0, (train.stdout + train.stderr)[-3000:]
    assert "em_spark fit: run hmm-demo: gaussian_hmm, 300 sequences, 2 features, k=3 (diag)" in train.stdout
    score = _run([*submit, str(REPO / "jobs" / "score.py"), *small], tmp_path)
    assert score.returncode == 0, (score.stdout + score.stderr)[-3000:]
    assert "300 sequences scored" in score.stdout
    table = pq.read_table(tmp_path / "em-spark-demo" / "scored-hmm").to_pydict()
    assert set(table) == {"id", "prediction", "probability", "logLikelihood"}
    assert all(len(path) == 20 and set(path) <= {0, 1, 2} for path in table["prediction"])
    assert all(len(steps) == 20 and abs(sum(steps[0]) - 1.0) < 1e-9 for steps in table["probability"])


def test_imputation_train_then_impute_through_spark_submit(tmp_path):
    submit = [_spark_submit(), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
    small = [
        "--config",
        str(REPO / "conf" / "impute.yaml"),
        "--set",
        "input.generate.rows=4000",
        "--set",
        "fit.nInit=1",
        "--set",
        "fit.maxIter=30",
    ]
    train = _run([*submit, str(REPO / "jobs" / "train.py"), *small], tmp_path)
    out = train.stdout + train.stderr
    assert train.returncode == 0, out[-3000:]
    assert "missing entries modelled" in out
    impute = _run([*submit, str(REPO / "jobs" / "impute.py"), *small], tmp_path)
    assert impute.returncode == 0, (impute.stdout + impute.stderr)[-3000:]
    assert "em_spark impute: 4000 rows" in impute.stdout
    table = pq.read_table(tmp_path / "em-spark-demo" / "imputed").to_pydict()
    filled = 0
    for i in range(4000):
        row = [table[f"x{j}"][i] for j in range(4)]
        for j, value in enumerate(row):
            if value is None:
                filled += 1
                assert table["imputedStd"][i][j] > 0
            else:
                assert table["imputed"][i][j] == value and table["imputedStd"][i][j] == 0.0
    assert 0.15 * 16000 < filled < 0.25 * 16000  # about 20% of the entries were missing

    # The same data without handleMissing: a clear error before fitting, naming the fix.
    refused = _run(
        [
            sys.executable,
            "-m",
            "em_spark.cli",
            "train",
            *small,
            "--set",
            "model.handleMissing=error",
            "--set",
            "run.id=refused",
        ],
        tmp_path,
    )
    assert refused.returncode == 2 and "handleMissing='model'" in refused.stderr
    assert "Traceback" not in refused.stderr
