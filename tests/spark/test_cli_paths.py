"""Local paths are literal: a space, a non-ASCII letter or ``%20`` in a folder name means that
folder, for Spark and for em_spark's own storage alike, in the log and on disk (issue 9)."""

from __future__ import annotations

import shutil

import pytest
from clitools import run_cli, small_workspace

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_train_and_score_with_spaces_non_ascii_and_percent_in_paths(tmp_path):
    small_workspace(tmp_path)
    shutil.copytree(tmp_path / "d" / "ok", tmp_path / "in put é" / "ok")
    overrides = [
        "--set",
        "input.path=in put é/ok",
        "--set",
        "run.checkpointDir=check points",
        "--set",
        "output.modelPath=models/a%20b ü",
        "--set",
        "score.outputPath=scored ø/t1",
    ]
    trained = run_cli("train", "--config", "small.yaml", *overrides, cwd=tmp_path)
    assert trained.code == 0, trained.err[-3000:]
    model_dir = tmp_path / "models" / "a%20b ü"
    assert (model_dir / "model.emsp").is_file() and not (tmp_path / "models" / "a b ü").exists()
    assert f"model saved to file://{model_dir}" in trained.out  # the same path in the log as on disk
    assert (tmp_path / "check points" / "t1").is_dir()

    scored = run_cli("score", "--config", "small.yaml", *overrides, cwd=tmp_path)
    assert scored.code == 0, scored.err[-3000:]
    assert f"-> file://{tmp_path / 'scored ø' / 't1'}" in scored.out
    assert any(p.suffix == ".parquet" for p in (tmp_path / "scored ø" / "t1").iterdir())

    # A re-run of the finished run with the same literal paths resumes nothing and refits nothing.
    again = run_cli("train", "--config", "small.yaml", *overrides, "--set", "output.overwrite=true", cwd=tmp_path)
    assert again.code == 0, again.err[-3000:]
