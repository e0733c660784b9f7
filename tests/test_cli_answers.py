"""Failures that are answers: each bad setup exits 2 with one ``em-spark: error:`` line that
names the problem and the fix, and leaves every stored file as it was (issue 9)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from clitools import run_cli, small_workspace, snapshot


@pytest.fixture
def workspace(tmp_path) -> Path:
    small_workspace(tmp_path)
    return tmp_path


def test_a_missing_initial_model_is_named_before_spark_starts(workspace):
    before = snapshot(workspace)
    result = run_cli(
        "train", "--config", "small.yaml", "--set", "model.initialModel=models/never-trained", cwd=workspace
    )
    result.assert_clean_error(
        "config key 'model.initialModel'", "no saved model at file://", "models/never-trained", "em-spark train"
    )
    assert snapshot(workspace) == before


@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
@pytest.mark.parametrize("key", ["run.checkpointDir", "output.modelPath"])
def test_an_unwritable_checkpoint_dir_or_model_path_is_refused_before_the_fit(workspace, key, where):
    (workspace / "afile").write_text("not a directory")
    target = "afile/inside" if where == "under-a-file" else "/proc/em-spark-cannot-write-here"
    before = snapshot(workspace)
    result = run_cli("train", "--config", "small.yaml", "--set", f"{key}={target}", cwd=workspace)
    line = result.assert_clean_error(
        f"config key {key!r}: cannot write to file://", "choose a location this job can write"
    )
    assert ("afile is a file" in line) if where == "under-a-file" else ("/proc/em-spark-cannot-write-here" in line)
    assert "loaded and validated" not in result.err  # refused before any data was read
    assert snapshot(workspace) == before
    assert not Path("/proc/em-spark-cannot-write-here").exists()


def test_the_write_probe_leaves_no_directory_behind(tmp_path):
    from em_spark.storage import check_writable

    check_writable(str(tmp_path / "new" / "deeper" / "model"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "existing").mkdir()
    check_writable((tmp_path / "existing").as_uri())
    assert [p.name for p in tmp_path.iterdir()] == ["existing"] and list((tmp_path / "existing").iterdir()) == []


def test_a_stale_java_home_is_named_with_the_fix(workspace):
    assert shutil.which("java"), "the test machine has java on PATH"
    result = run_cli("train", "--config", "small.yaml", cwd=workspace, env={"JAVA_HOME": str(workspace / "no-jdk")})
    result.assert_clean_error(
        f"JAVA_HOME is '{workspace / 'no-jdk'}', which has no bin/java",
        "there is a java on PATH at",
        "unset it to use java from PATH",
    )


def test_a_nightly_without_data_for_the_night_answers_in_one_line(workspace):
    before = snapshot(workspace)
    result = run_cli(
        "nightly",
        "--config",
        "small.yaml",
        "--set",
        "registry.uri=registry",
        "--set",
        "registry.modelName=events",
        "--set",
        "nightly.date=2026-11-30",
        "--set",
        "nightly.inputPath=d/night/date={date}",
        cwd=workspace,
    )
    result.assert_clean_error(
        "no input data at file://", "d/night/date=2026-11-30", "for nightly.date 2026-11-30", "'nightly.inputPath'"
    )
    assert len(result.err.strip().splitlines()) == 1, result.err  # no Java trace before it: Spark never started
    assert snapshot(workspace) == before


def test_select_shows_the_candidates_it_skipped():
    import json

    import numpy as np

    from em_spark.engine.loop import FitSettings
    from em_spark.engine.selection import format_table, select_models, to_json
    from em_spark.engine.sources import LocalBlockSource
    from em_spark.models import Block

    X = np.random.default_rng(2).normal(size=(6, 2))
    candidates = select_models(LocalBlockSource([Block(X)]), [1, 2, 7, 9], ["diag"], FitSettings(max_iter=5, seed=0))
    table = format_table(candidates, "bic")
    assert [c.k for c in candidates] == [1, 2, 7, 9]
    assert "  7  diag       skipped: only 6 rows" in table and "  9  diag       skipped: only 6 rows" in table
    report = json.loads(to_json(candidates, "bic"))
    assert [c["skipped"] for c in report["candidates"]] == [None, None, "only 6 rows", "only 6 rows"]
    assert report["candidates"][2]["bic"] is None
    with pytest.raises(ValueError, match="no candidate of the grid could be fitted"):
        format_table(select_models(LocalBlockSource([Block(X)]), [8], ["full"], FitSettings(max_iter=5)), "bic")


def test_the_cli_module_runs_as_a_script():
    import sys

    out = subprocess.run([sys.executable, "-m", "em_spark.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout
