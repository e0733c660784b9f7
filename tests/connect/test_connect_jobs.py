"""The em-spark commands as Spark Connect clients: ``spark.remote`` in the config (or
``--set``, or SPARK_REMOTE) points a command at the package's real Connect server."""

from __future__ import annotations

import json

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
