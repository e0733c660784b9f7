"""The registry never changes production by itself: issue 9, through the real CLI.

Every command runs as ``python -m em_spark.cli ...`` in a subprocess, the way an
operator or a scheduler runs it. A refused command must exit 2 with exactly one
``em-spark: error: ...`` line on stderr (no traceback), and leave every stored
file (registry, input, previous output) byte-identical.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from em_spark.storage import seal
from em_spark.storage.registry import ModelRegistry

NAME = "gmm"
ENTRY = "{:010d}.json.sealed"


# --- helpers ---------------------------------------------------------------------------------


def em_spark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(
        [sys.executable, "-m", "em_spark.cli", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def registry_cmd(command: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    return em_spark("registry", command, "--registry", str(root), *args, cwd=root.parent)


def snapshot(top: Path) -> dict[str, bytes | None]:
    """Every file (path -> bytes) and directory (path -> None) under ``top``."""
    return {str(p.relative_to(top)): (p.read_bytes() if p.is_file() else None) for p in sorted(top.rglob("*"))}


def assert_refused(result: subprocess.CompletedProcess, *patterns: str) -> str:
    """Exit 2, nothing on stdout, exactly one error line on stderr matching every pattern."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("em-spark: error: "), result.stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


def assert_ok(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr and "error" not in result.stderr, result.stderr
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model_bytes() -> list[bytes]:
    """Two small, valid Gaussian-mixture models, fitted with numpy alone (no Spark)."""
    from em_spark.api import GaussianMixtureModel
    from em_spark.models.base import Block
    from em_spark.models.gaussian import GaussianFamily

    out = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        block = Block(X=np.vstack([rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (40, 2))]), weight=None, lengths=None)
        family = GaussianFamily(k=2)
        params = family.initialize(block, rng)
        for _ in range(5):
            params = family.m_step(family.e_step(block, params), params, block, rng).params
        out.append(GaussianMixtureModel(family, params, 2).to_bytes())
    return out


def make_registry(root: Path, model_bytes: list[bytes]) -> ModelRegistry:
    reg = ModelRegistry(str(root))
    for i, data in enumerate(model_bytes, start=1):
        reg.register(
            NAME,
            data,
            config={"model": {"k": 2}},
            seed=i,
            data_fingerprint="sha256:abc",
            run_id=f"nightly-{i}",
            metrics={"holdoutAvgLogLik": -3.0 - i},
        )
    return reg


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def rolled_back(root, model_bytes) -> Path:
    """The issue's registry: promote v1, promote v2, roll back to v1 (alias entries 1, 2, 3)."""
    reg = make_registry(root, model_bytes)
    reg.promote(NAME, 1)
    reg.promote(NAME, 2)
    reg.rollback(NAME)
    assert ModelRegistry(str(root)).alias(NAME) == 1
    return root


def entry_path(root: Path, sequence: int) -> Path:
    return root / NAME / "aliases" / "production" / ENTRY.format(sequence)


DAMAGES = {
    "flipped-byte": flip_one_byte,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-7]),
    "copied-from-entry-2": lambda p: p.write_bytes(entry_path(p.parents[3], 2).read_bytes()),
    "valid-seal-not-an-entry": lambda p: p.write_bytes(seal(b'{"format": 1, "version": 2}')),
}


# --- case 3: a damaged newest entry never moves production ---------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_show_production_fails_on_a_damaged_newest_entry_instead_of_answering_an_older_version(rolled_back, damage):
    DAMAGES[damage](entry_path(rolled_back, 3))
    before = snapshot(rolled_back.parent)
    result = registry_cmd("show", rolled_back, "--name", NAME, "--version", "production")
    assert_refused(
        result,
        r"alias 'production' of model 'gmm' cannot be resolved: its newest log entry 3 \(\S*/0000000003\.json\.sealed\) "
        r"is damaged",
        r"does not fall back to an older entry",
        r"`em-spark registry promote --registry \S+ --name gmm --version N` appends a fresh entry that supersedes",
    )
    assert snapshot(rolled_back.parent) == before


def test_scoring_with_the_registry_model_fails_on_a_damaged_newest_entry(rolled_back, tmp_path):
    flip_one_byte(entry_path(rolled_back, 3))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "part-0.parquet").write_bytes(b"tonight's rows")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-0.parquet").write_bytes(b"last night's scores")
    before = snapshot(tmp_path)
    result = em_spark(
        "score",
        "--set",
        f"input.path={tmp_path / 'input'}",
        "--set",
        "score.registryModel=gmm",
        "--set",
        f"registry.uri={rolled_back}",
        "--set",
        f"score.outputPath={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert_refused(
        result, r"alias 'production' of model 'gmm' cannot be resolved: its newest log entry 3 ", r"registry promote"
    )
    assert snapshot(tmp_path) == before


def test_list_shows_a_damaged_newest_entry_and_changes_nothing(rolled_back):
    flip_one_byte(entry_path(rolled_back, 3))
    before = snapshot(rolled_back.parent)

    lines = assert_ok(registry_cmd("list", rolled_back)).splitlines()
    assert lines[1].split() == ["gmm", "DAMAGED", "2", "2"]
    assert re.search(
        r"alias 'production' of model 'gmm' cannot be resolved: its newest log entry 3 .* is damaged", lines[2]
    )

    out = assert_ok(registry_cmd("list", rolled_back, "--name", NAME))
    assert "*" not in out and "(production is unknown: its newest log entry is damaged)" in out
    assert "entry 3" in out and "registry promote" in out

    shown = json.loads(assert_ok(registry_cmd("show", rolled_back, "--name", NAME, "--version", "2")))
    assert shown["version"] == 2 and shown["aliases"] == []
    assert "newest log entry 3" in shown["alias_problems"]["production"]
    assert snapshot(rolled_back.parent) == before


def test_promote_repairs_a_damaged_newest_entry_by_appending_past_it(rolled_back):
    flip_one_byte(entry_path(rolled_back, 3))
    before = snapshot(rolled_back.parent)
    out = assert_ok(registry_cmd("promote", rolled_back, "--name", NAME, "--version", "1", "--reason", "repair"))
    assert out.strip() == (
        "model gmm: production -> version 1 (was unknown: entry 3 of its log is damaged; entry 4 supersedes it)"
    )
    after = snapshot(rolled_back.parent)
    assert {k: v for k, v in after.items() if k in before} == before  # the damaged entry is not overwritten
    assert sorted(set(after) - set(before)) == [f"registry/gmm/aliases/production/{ENTRY.format(4)}"]

    shown = json.loads(assert_ok(registry_cmd("show", rolled_back, "--name", NAME)))
    assert shown["version"] == 1 and shown["aliases"] == ["production"]
    assert "entries damaged: 3" in shown["alias_problems"]["production"]
    [entry] = [e for e in ModelRegistry(str(rolled_back)).alias_history(NAME) if e.sequence == 4]
    assert (entry.version, entry.previous, entry.repairs, entry.reason) == (1, None, 3, "repair")


def test_rollback_refuses_to_guess_from_a_damaged_history(rolled_back):
    flip_one_byte(entry_path(rolled_back, 3))
    before = snapshot(rolled_back.parent)
    assert_refused(
        registry_cmd("rollback", rolled_back, "--name", NAME),
        r"cannot roll back alias 'production' of model 'gmm': its newest entry 3 \(\S+\) is damaged",
        r"none is guessed",
        r"registry promote --registry \S+ --name gmm --version N",
    )
    assert snapshot(rolled_back.parent) == before

    # After the repair the newest entry verifies, but the stack below it is still unknown.
    assert_ok(registry_cmd("promote", rolled_back, "--name", NAME, "--version", "2"))
    before = snapshot(rolled_back.parent)
    assert_refused(
        registry_cmd("rollback", rolled_back, "--name", NAME),
        r"cannot roll back alias 'production' of model 'gmm' from version 2: the version before it is unknown "
        r"because entry 3 of its log \(\S+/0000000003\.json\.sealed\) is damaged",
        r"promote the version that should be in production explicitly instead: `em-spark registry promote",
    )
    assert snapshot(rolled_back.parent) == before


def test_a_damaged_older_entry_followed_by_a_valid_one_no_longer_decides(rolled_back):
    # Entry 3 (the rollback to 1) was created after entry 2 existed, so it decides the value.
    flip_one_byte(entry_path(rolled_back, 2))
    before = snapshot(rolled_back.parent)
    shown = json.loads(assert_ok(registry_cmd("show", rolled_back, "--name", NAME, "--version", "production")))
    assert shown["version"] == 1 and shown["aliases"] == ["production"]
    problem = shown["alias_problems"]["production"]
    assert "entries damaged: 2 (" in problem and "a rollback cannot go back past entry 2" in problem
    lines = assert_ok(registry_cmd("list", rolled_back, "--name", NAME)).splitlines()
    assert lines[1].split()[0] == "*1" and "(* = production)" in lines and lines[-1] == problem
    assert snapshot(rolled_back.parent) == before


# --- case 3: promote verifies the model first ---------------------------------------------------

MODEL_DAMAGES = {
    "flipped-byte": flip_one_byte,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "another-valid-model": lambda p: p.write_bytes(p.parents[1].joinpath(f"{1:010d}", "model.emsp").read_bytes()),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGES))
def test_promote_refuses_a_version_whose_model_is_damaged(root, model_bytes, damage):
    reg = make_registry(root, model_bytes)
    reg.promote(NAME, 1)
    MODEL_DAMAGES[damage](root / NAME / "versions" / f"{2:010d}" / "model.emsp")
    before = snapshot(root.parent)
    assert_refused(
        registry_cmd("promote", root, "--name", NAME, "--version", "2"),
        r"cannot promote model 'gmm' version 2 to alias 'production': the model object ",
        r"\S*/gmm/versions/0000000002/model\.emsp",
        r"(is damaged|does not match the checksum recorded in its metadata|is missing)",
        r"; alias 'production' was not moved$",
    )
    assert snapshot(root.parent) == before
    assert json.loads(assert_ok(registry_cmd("show", root, "--name", NAME)))["version"] == 1


def test_rollback_refuses_a_target_whose_model_is_damaged(root, model_bytes):
    reg = make_registry(root, model_bytes)
    reg.promote(NAME, 1)
    reg.promote(NAME, 2)
    flip_one_byte(root / NAME / "versions" / f"{1:010d}" / "model.emsp")
    before = snapshot(root.parent)
    assert_refused(
        registry_cmd("rollback", root, "--name", NAME),
        r"cannot roll back alias 'production' of model 'gmm' to version 1: the model object is damaged",
        r"alias 'production' was not moved \(still version 2\)",
    )
    assert snapshot(root.parent) == before


def test_promote_and_rollback_of_valid_models_still_work(root, model_bytes):
    make_registry(root, model_bytes)
    out = assert_ok(registry_cmd("promote", root, "--name", NAME, "--version", "1"))
    assert out.strip() == "model gmm: production -> version 1 (was not set)"
    out = assert_ok(registry_cmd("promote", root, "--name", NAME, "--version", "2"))
    assert out.strip() == "model gmm: production -> version 2 (was 1)"
    out = assert_ok(registry_cmd("rollback", root, "--name", NAME))
    assert out.strip() == "model gmm: production rolled back to version 1 (was 2)"
    assert ModelRegistry(str(root)).load_bytes(NAME) == model_bytes[0]


# --- no noise on a normal registration; real incomplete versions stay visible -----------------------


def test_registering_logs_no_incomplete_version_but_list_still_shows_real_ones(root, model_bytes, tmp_path):
    make_registry(root, model_bytes[:1])
    script = (
        "import sys; from em_spark.app.common import setup_logging; from em_spark.storage.registry import ModelRegistry\n"
        "setup_logging()\n"
        "ModelRegistry(sys.argv[1]).register('gmm', b'v2 bytes', config={}, seed=2, data_fingerprint='x',"
        " run_id='nightly-2', metrics={})\n"
    )
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    result = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "registered version 2 (run nightly-2)" in result.stderr
    assert "incomplete" not in result.stderr and "skipping" not in result.stderr

    # A registration that crashed after claiming number 3 is still listed when asked.
    (root / NAME / "versions" / f"{3:010d}.claim").write_bytes(seal(json.dumps({"run_id": "crashed"}).encode()))
    before = snapshot(root.parent)
    out = assert_ok(registry_cmd("list", root, "--name", NAME, "--incomplete"))
    assert "incomplete version 3 (run crashed" in out and "no metadata" in out
    assert "incomplete" not in assert_ok(registry_cmd("list", root, "--name", NAME))
    assert snapshot(root.parent) == before


# --- a registry root that does not exist ----------------------------------------------------------


def test_list_on_a_root_that_does_not_exist_is_an_error(tmp_path):
    missing = tmp_path / "no-such-registry"
    before = snapshot(tmp_path)
    assert_refused(
        registry_cmd("list", missing),
        rf"registry {re.escape(str(missing))} does not exist; check --registry, or create it with a first "
        r"registration \(an `em-spark nightly` run",
    )
    assert_refused(registry_cmd("list", missing, "--name", NAME), r"does not exist")
    assert_refused(
        registry_cmd("show", missing, "--name", NAME),
        rf"unknown model 'gmm': registry {re.escape(str(missing))} does not exist",
    )
    assert snapshot(tmp_path) == before and not missing.exists()


def test_list_on_an_existing_empty_root_says_no_models(tmp_path):
    (tmp_path / "registry").mkdir()
    out = assert_ok(registry_cmd("list", tmp_path / "registry"))
    assert out.strip() == f"no models in {tmp_path / 'registry'}"
