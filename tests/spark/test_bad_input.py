"""Bad input gets one clear error before iteration 1, and nothing already stored is touched:
not the checkpoints of earlier runs, not the saved model, not the registry, not earlier outputs."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark.app.config import load_config
from em_spark.cli import run_score, run_train
from em_spark.engine.validation import DataValidationError

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(path: Path, columns: dict) -> str:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path / "part-0.parquet")
    return path.as_uri()


def _config(tmp_path: Path, data_uri: str, run_id: str, **sets):
    overrides = [
        f"input.path={data_uri}",
        "input.generate=",
        "input.features=[x0, x1]",
        f"run.id={run_id}",
        f"run.checkpointDir={(tmp_path / 'store' / 'ckpt').as_uri()}",
        f"output.modelPath={(tmp_path / 'store' / 'model').as_uri()}",
        "output.overwrite=true",
        f"score.outputPath={(tmp_path / 'store' / 'scored').as_uri()}",
        "score.mode=overwrite",
        "fit.maxIter=10",
        "fit.nInit=1",
        "model.k=3",
    ] + [f"{k}={v}" for k, v in sets.items()]
    return load_config(str(REPO / "conf" / "local.yaml"), overrides)


GOOD = np.random.default_rng(0).normal(size=(600, 2)) + np.repeat([[0, 0], [6, 0], [0, 6]], 200, axis=0)

BAD_INPUTS = {
    "nan feature": (
        {"x0": np.where(np.arange(600) == 5, np.nan, GOOD[:, 0]), "x1": GOOD[:, 1]},
        {},
        r"1 row\(s\) contain NaN, infinite or null feature values.*drop or impute them",
    ),
    "infinite feature": (
        {"x0": np.where(np.arange(600) == 5, np.inf, GOOD[:, 0]), "x1": GOOD[:, 1]},
        {},
        r"contain NaN, infinite or null feature values",
    ),
    "missing column": (
        {"x0": GOOD[:, 0], "y": GOOD[:, 1]},
        {},
        r"feature column 'x1' is not a column of the input; available columns: \['x0', 'y'\]",
    ),
    "non-numeric column": (
        {"x0": GOOD[:, 0], "x1": GOOD[:, 1].astype(str)},
        {},
        r"feature column 'x1' has type string; feature columns must be numeric",
    ),
    "empty input": ({"x0": GOOD[:0, 0], "x1": GOOD[:0, 1]}, {}, r"the input has no rows.*check the input path"),
    "fewer rows than k": ({"x0": GOOD[:2, 0], "x1": GOOD[:2, 1]}, {}, r"2 row\(s\), fewer than k=3.*decrease k"),
    "negative weight": (
        {"x0": GOOD[:, 0], "x1": GOOD[:, 1], "w": np.where(np.arange(600) == 3, -1.0, 1.0)},
        {"input.weightCol": "w"},
        r"1 row\(s\) have a null, negative, NaN or infinite weight",
    ),
    "infinite weight": (
        {"x0": GOOD[:, 0], "x1": GOOD[:, 1], "w": np.where(np.arange(600) == 3, np.inf, 1.0)},
        {"input.weightCol": "w"},
        r"weights must be finite and >= 0",
    ),
}


def test_each_bad_input_is_refused_clearly_and_nothing_stored_changes(spark, tmp_path):
    good = _write(tmp_path / "good", {"x0": GOOD[:, 0], "x1": GOOD[:, 1]})
    run_train(_config(tmp_path, good, "good-run"))
    run_score(_config(tmp_path, good, "good-run"))
    before = _snapshot(tmp_path / "store")
    assert any(name.startswith("ckpt/") for name in before) and any(name.startswith("scored/") for name in before)
    assert any(name.startswith("model/") for name in before)

    for name, (columns, sets, message) in BAD_INPUTS.items():
        data = _write(tmp_path / name.replace(" ", "-"), columns)
        # a new run id, and the finished run's id too: neither may touch what is stored
        for run_id in ("bad-run", "good-run"):
            with pytest.raises(DataValidationError, match=message):
                run_train(_config(tmp_path, data, run_id, **sets))
        assert _snapshot(tmp_path / "store") == before, f"{name}: stored files changed"


def test_scoring_with_a_missing_column_fails_before_the_old_output_is_replaced(spark, tmp_path):
    good = _write(tmp_path / "good", {"x0": GOOD[:, 0], "x1": GOOD[:, 1]})
    run_train(_config(tmp_path, good, "score-run"))
    run_score(_config(tmp_path, good, "score-run"))
    before = _snapshot(tmp_path / "store")
    wrong = _write(tmp_path / "wrong", {"x0": GOOD[:, 0], "z": GOOD[:, 1]})
    with pytest.raises(DataValidationError, match="'x1' is not a column"):
        run_score(_config(tmp_path, wrong, "score-run"))
    assert _snapshot(tmp_path / "store") == before
