"""The em-spark commands as Spark Connect clients: ``spark.remote`` in the config (or
``--set``, or SPARK_REMOTE) points a command at the package's real Connect server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clitools import run_cli, small_workspace

pytestmark = pytest.mark.connect


def test_train_score_and_select_run_as_connect_clients_and_a_rerun_resumes(connect_url, tmp_path):
    config = small_workspace(tmp_path)
    remote = f"spark.remote={connect_url}"
    trained = run_cli("train", "--config", str(config), "--set", remote, cwd=tmp_path)
    assert trained.code == 0, trained.err[-4000:]
    assert "em_spark fit: run t1" in trained.out
    assert (tmp_path / "models" / "t1").is_dir() and any((tmp_path / "ck" / "t1" / "checkpoints").iterdir())

    # the same run again, through SPARK_REMOTE: read back from its last checkpoint, not refitted
    again = run_cli(
        "train",
        "--config",
        str(config),
        "--set",
        "output.overwrite=true",
        cwd=tmp_path,
        env={"SPARK_REMOTE": connect_url},
    )
    assert again.code == 0, again.err[-4000:]
    assert "already finished" in again.out + again.err

    scored = run_cli("score", "--config", str(config), "--set", remote, cwd=tmp_path)
    assert scored.code == 0, scored.err[-4000:]
    assert (tmp_path / "scored" / "t1" / "_SUCCESS").exists()

    selected = run_cli(
        "select",
        "--config",
        str(config),
        "--set",
        remote,
        "--set",
        "select.ks=[1, 2, 3]",
        "--set",
        "select.outputPath=select.json",
        cwd=tmp_path,
    )
    assert selected.code == 0, selected.err[-4000:]
    report = json.loads((tmp_path / "select.json").read_text())
    assert report["chosen"]["k"] == 2  # two blobs


def _spark_submit_connect(tmp_path, *spark_conf: str):
    """spark-submit jobs/train.py with spark.api.mode=connect (plus ``spark_conf``), no SPARK_REMOTE."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    submit = Path(sys.executable).with_name("spark-submit")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(name, None)
    config = small_workspace(tmp_path)
    args = [str(submit), "--master", "local[2]", "--conf", "spark.api.mode=connect", "--conf", "spark.ui.enabled=false"]
    for item in spark_conf:
        args += ["--conf", item]
    args += [str(repo / "jobs" / "train.py"), "--config", str(config)]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_spark_submit_in_connect_api_mode_trains_as_a_connect_client(tmp_path):
    import pyspark

    # pip's pyspark launcher leaves the SQL and Connect server jars off the driver classpath in
    # connect API mode; extraClassPath puts them back so the in-driver Connect server can start
    jars = f"{Path(pyspark.__file__).parent / 'jars'}/*"
    done = _spark_submit_connect(tmp_path, f"spark.driver.extraClassPath={jars}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "em_spark fit: run t1" in done.stdout and "a Spark Connect session" in done.stdout, done.stdout[-2000:]
    assert (tmp_path / "models" / "t1").is_dir()


def test_spark_submit_in_connect_api_mode_without_the_server_jars_is_one_clear_error(tmp_path):
    done = _spark_submit_connect(tmp_path)
    assert done.returncode == 2, done.stderr[-4000:]
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("em-spark: error:")]
    assert len(errors) == 1, done.stderr[-4000:]
    assert "spark.driver.extraClassPath=" in errors[0] and "spark.remote" in errors[0]
    # refused before anything was written
    assert not (tmp_path / "models").exists() and not (tmp_path / "ck").exists()
