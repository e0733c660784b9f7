"""Issue 9, through the real CLI (a subprocess per command): ``score`` and ``impute`` check all
they can before touching the output, refuse with one ``em-spark: error:`` line, and replace an
output only by a complete new one; a job killed at any step of the swap leaves the old output or
the new one, and the same command run again finishes with only the new one.

Every refusal asserts that every stored file (input, previous output, checkpoints, model) is
byte-identical afterwards. The refusals that need no data (paths, model, mode, a list of
feature columns) stop before a Spark session starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from em_spark.app.config import load_config
from em_spark.cli import run_score, run_train

pytestmark = pytest.mark.spark

FAULTS = Path(__file__).resolve().parent / "faults"
TIMEOUT = 900
ROWS = 1000

CONFIG = {
    "run": {"id": "t1", "checkpointDir": "ck"},
    "spark": {"master": "local[1]", "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"}},
    "input": {"path": "d/ok", "features": ["x0", "x1"]},
    "model": {"k": 2},
    "fit": {"maxIter": 5, "nInit": 1},
    "output": {"modelPath": "models/t1", "overwrite": True},
    "score": {"outputPath": "scored/t1", "mode": "overwrite", "partitionBy": []},
}


def _data(run: int, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(run)
    X = rng.normal(size=(rows, 2)) + np.repeat([[0.0, 0.0], [6.0, 6.0]], rows // 2, axis=0)
    return {"id": np.arange(rows), "run": np.full(rows, run), "x0": X[:, 0], "x1": X[:, 1]}


def _write(root: Path, rel: str, columns: dict) -> None:
    (root / rel).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), root / rel / "part-0.parquet")


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A store as the issue's repro has it: input d/ok (and a copy), a trained model with its
    checkpoints, and a previous score output (in-process, on the test session)."""
    root = tmp_path_factory.mktemp("store")
    _write(root, "d/ok", _data(0))
    _write(root, "d/okcopy", _data(0))
    (root / "small.yaml").write_text(yaml.safe_dump(CONFIG))
    cwd = os.getcwd()
    os.chdir(root)  # the config's relative paths, as a user's shell would resolve them
    try:
        config = load_config("small.yaml", ["spark.master=local[2]"])
        run_train(config)
        run_score(config)
    finally:
        os.chdir(cwd)
    assert (root / "scored" / "t1" / "_SUCCESS").exists() and any((root / "ck").rglob("*.emck"))
    return root


@pytest.fixture
def store(trained, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(trained, root)
    return root


def _cli(root: Path, command: str, *sets: str, fault: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    head = (
        [sys.executable, str(FAULTS / "score_with_faults.py"), *fault, "--"]
        if fault is not None
        else [sys.executable, "-m", "em_spark.cli"]
    )
    args = [*head, command, "--config", "small.yaml"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("em-spark: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _siblings(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "scored").iterdir())


# --- 1. the output overlaps the input: refused, naming both paths ---------------------------


@pytest.mark.parametrize(
    "command, input_path, output_key, output",
    [
        ("score", "d/okcopy", "score.outputPath", "d/okcopy"),  # the issue's repro
        ("score", "d/okcopy", "score.outputPath", "d/okcopy/scored"),  # inside the input
        ("score", "d/okcopy", "score.outputPath", "d"),  # the input inside it
        ("score", "d/ok", "score.outputPath", "models/t1"),  # would delete the model
        ("impute", "d/okcopy", "impute.outputPath", "d/okcopy"),
    ],
    ids=["same", "inside-input", "contains-input", "the-model", "impute-same"],
)
def test_an_output_overlapping_what_the_job_reads_is_refused(store, command, input_path, output_key, output):
    before = _snapshot(store)
    result = _cli(store, command, f"input.path={input_path}", f"{output_key}={output}")
    line = _refused(result, f"{output_key} file://{store / output}", "overlaps")
    assert f"file://{store / input_path}" in line or f"file://{store / 'models' / 't1'}" in line
    assert _snapshot(store) == before


# --- model problems: one line naming the path and the fix, nothing written ------------------


def test_score_before_any_train_names_the_model_path_and_says_train_first(store):
    before = _snapshot(store)
    result = _cli(store, "score", "output.modelPath=models/never-trained", "score.outputPath=scored/new")
    _refused(
        result,
        f"no model at file://{store / 'models' / 'never-trained'}",
        "run `em-spark train` first",
        "score.modelPath",
    )
    assert _snapshot(store) == before and not (store / "scored" / "new").exists()


@pytest.mark.parametrize("command, key", [("score", "score.modelPath"), ("impute", "impute.modelPath")])
def test_no_model_path_at_all_names_the_key_to_set(store, command, key):
    before = _snapshot(store)
    result = _cli(store, command, "output.modelPath=", "impute.outputPath=imputed/t1")
    _refused(result, f"config key {key!r}", "is required")
    assert _snapshot(store) == before


def test_errorifexists_with_an_existing_output_is_refused_before_any_work(store):
    before = _snapshot(store)
    result = _cli(store, "score", "score.mode=errorifexists")
    _refused(result, f"file://{store / 'scored' / 't1'} already exists", "score.mode: overwrite")
    assert _snapshot(store) == before


def test_a_list_of_feature_columns_that_does_not_match_the_model_is_refused(store):
    _write(store, "d/three", {**_data(0), "x2": np.zeros(ROWS)})
    before = _snapshot(store)
    result = _cli(store, "score", "input.path=d/three", "input.features=[x0, x1, x2]")
    _refused(result, "has 2 features but input.features (columns ['x0', 'x1', 'x2']) has 3")
    assert _snapshot(store) == before


def test_an_array_column_that_does_not_match_the_model_is_refused_before_writing(store):
    _write(store, "d/arr", {"id": np.arange(50), "f": pa.array([[1.0, 2.0, 3.0]] * 50)})
    before = _snapshot(store)
    result = _cli(store, "score", "input.path=d/arr", "input.features=f")
    _refused(result, "has 2 features but input.features (column 'f') has 3")
    assert _snapshot(store) == before and _siblings(store) == ["t1"]


# --- 2. rows that cannot be scored: null outputs and a count; the old output replaced whole -----


def test_unscorable_rows_get_null_outputs_and_the_previous_output_is_replaced_whole(store):
    bad = _data(1)
    bad["x0"] = np.where(np.arange(ROWS) == 3, np.nan, bad["x0"])
    bad["x1"] = np.where(np.arange(ROWS) == 7, np.inf, bad["x1"])
    _write(store, "d/bad", bad)
    kept = {k: v for k, v in _snapshot(store).items() if not k.startswith("scored/")}
    result = _cli(store, "score", "input.path=d/bad")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{ROWS} rows scored" in result.stdout and "2 unscored (null outputs)" in result.stdout
    assert f"2 of {ROWS} rows could not be scored" in result.stderr
    out = pq.read_table(store / "scored" / "t1").to_pydict()
    assert len(out["id"]) == ROWS and set(out["run"]) == {1}  # all new, none of the old
    nulls = sorted(i for i, p in zip(out["id"], out["prediction"]) if p is None)
    assert nulls == [3, 7]
    assert all(
        out["probability"][i] is None and out["logLikelihood"][i] is None for i in range(ROWS) if out["id"][i] in (3, 7)
    )
    assert {k: v for k, v in _snapshot(store).items() if not k.startswith("scored/")} == kept
    assert _siblings(store) == ["t1"]


# --- killed at any step of the swap: old or new; the same command run again finishes ----------


KILLS = [("staged", []), ("exchanged", []), ("between-renames", ["--no-exchange"]), ("before-cleanup", [])]


def test_a_score_killed_at_any_step_leaves_the_old_or_the_new_output(store):
    others = {k: v for k, v in _snapshot(store).items() if not k.startswith("scored/")}
    current = 0  # the run whose rows the output holds (the fixture's score of d/ok)
    for run, (step, options) in enumerate(KILLS, start=1):
        _write(store, f"d/run{run}", _data(run))
        others = {**others, **{k: v for k, v in _snapshot(store).items() if k.startswith(f"d/run{run}/")}}
        result = _cli(store, "score", f"input.path=d/run{run}", fault=["--kill-at", step, *options])
        assert result.returncode == 137 and f"FAULT killed at {step}" in result.stderr, result.stderr[-3000:]
        if step == "between-renames":
            # The fallback's one instant without an output; the next run rolls the new one forward.
            assert not (store / "scored" / "t1").exists()
            current = run
        else:
            out = pq.read_table(store / "scored" / "t1").to_pydict()
            assert len(out["id"]) == ROWS and len(set(out["run"])) == 1, step
            assert out["run"][0] in (current, run), step
            current = out["run"][0]
        assert {k: v for k, v in _snapshot(store).items() if not k.startswith("scored/")} == others, step
    # The last command, run again: it finishes what was left and leaves only its new output.
    result = _cli(store, "score", f"input.path=d/run{len(KILLS)}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left by an earlier run that was stopped" in result.stderr
    out = pq.read_table(store / "scored" / "t1").to_pydict()
    assert len(out["id"]) == ROWS and set(out["run"]) == {len(KILLS)}
    assert _siblings(store) == ["t1"]
    assert {k: v for k, v in _snapshot(store).items() if not k.startswith("scored/")} == others
