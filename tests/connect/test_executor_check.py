"""Executors that cannot import em_spark, on a real Connect server whose Python workers run a
virtualenv with em_spark's dependencies but not em_spark (a cluster without the library).

Before the fix, the first job of a fit failed with ``ModuleNotFoundError: No module named
'em_spark'`` inside a Python worker traceback; now the fit stops first with one line naming the
fix, and ``SparkSession.addArtifacts`` of a zipped em_spark is shown to be that fix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from connect_data import SPARK_CONF
from environments import REPO, connect_server

import em_spark
from em_spark import GaussianMixture, GaussianMixtureModel
from tests.clitools import run_cli, small_workspace

pytestmark = pytest.mark.connect

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def bare_url(tmp_path_factory, runtime_python):
    """A Connect server whose executors' Python has em_spark's dependencies, not em_spark.

    Its workers are not reused: a reused worker keeps the modules an earlier session imported
    from its artifacts, and these tests give each session its own em_spark (or none)."""
    root = tmp_path_factory.mktemp("bare-executors")
    conf = {**SPARK_CONF, "spark.python.worker.reuse": "false"}
    # cwd outside the repository: a worker's working directory is on its sys.path
    with connect_server(root / "server.log", str(runtime_python), root, conf) as url:
        yield url


def _zip_em_spark(dest: Path, version: str | None = None) -> Path:
    """em_spark/ as a zip for addArtifacts (``version`` rewrites its __version__). The name is
    unique: a local-mode server keeps every session's files in one directory, and refuses a
    second, different file of the same name."""
    archive = dest / f"em_spark-{uuid.uuid4().hex[:12]}.zip"
    package = REPO / "em_spark"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(package.rglob("*")):
            if path.suffix != ".py":  # what the README's recipe ships
                continue
            text = path.read_text()
            if version is not None and path == package / "__init__.py":
                old = f'__version__ = "{em_spark.__version__}"'
                assert old in text
                text = text.replace(old, f'__version__ = "{version}"')
            z.writestr(str(path.relative_to(REPO)), text)
    return archive


def _readme_recipe() -> str:
    """The README's addArtifacts example (Connect section), as written."""
    readme = (REPO / "README.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "spark.addArtifacts(" in c]
    return code


def _artifact_client(url: str, archive: Path, *fit: str) -> dict:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(HERE / "artifact_client.py"), url, str(archive), *fit],
        capture_output=True,
        text=True,
        env=env,
        cwd=archive.parent,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout[-2000:]
    return json.loads(lines[0][len("RESULT ") :])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Every command that runs em_spark code on the executors: the set of paths it may write is empty.
_COMMANDS = {
    "train": [],
    "score": ["--set", "score.outputPath=scored/t1"],
    "impute": ["--set", "impute.outputPath=imputed/t1"],
    "select": ["--set", "select.ks=[1, 2]", "--set", "select.outputPath=select.json"],
}


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_a_command_on_executors_without_em_spark_is_one_clear_error_before_anything_is_written(
    bare_url, connect, tmp_path, command
):
    config = small_workspace(tmp_path)
    if command in ("score", "impute"):  # a model to apply, fitted where em_spark is installed
        from em_spark import GaussianMixture

        df = connect.read.parquet(str(tmp_path / "d" / "ok"))
        GaussianMixture(k=2, featuresCol=["x0", "x1"], maxIter=3, seed=3).fit(df).save(str(tmp_path / "models" / "t1"))
    before = _snapshot(tmp_path)
    done = run_cli(
        command, "--config", str(config), "--set", f"spark.remote={bare_url}", *_COMMANDS[command], cwd=tmp_path
    )
    done.assert_clean_error(
        "cannot import em_spark",
        "No module named 'em_spark'",
        "cluster library",
        "serverless environment",
        "addArtifacts(",
    )
    assert "Traceback" not in done.err
    # no checkpoint directory, lease, model, output or report: only what the test itself wrote
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["d", "small.yaml", *(["models"] if command in ("score", "impute") else [])]
    )


@pytest.fixture(scope="module")
def bare(bare_url):
    """A client session of this process on the bare server (the package's own stays as it is)."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(bare_url).create()
    yield session
    session.stop()


_API_CALLS = {
    "fit": lambda model, df: GaussianMixture(k=2, featuresCol=["x0", "x1"], maxIter=3).fit(df),
    "transform": lambda model, df: model.transform(df),
    "bic": lambda model, df: model.bic(df),
    "aic": lambda model, df: model.aic(df),
    "impute": lambda model, df: model.impute(df),
    "load_source": lambda model, df: GaussianMixture(k=2, featuresCol=["x0", "x1"]).load_source(df),
}


@pytest.mark.parametrize("call", sorted(_API_CALLS))
def test_every_api_entry_point_on_executors_without_em_spark_raises_the_check_before_any_job(bare, call, tmp_path):
    """transform and impute are lazy and build their UDF at once: the check fails the call
    itself, so nothing is ever written from the returned DataFrame."""
    from em_spark.engine.executor_check import ExecutorImportError

    small_workspace(tmp_path)
    model = GaussianMixtureModel(
        GaussianMixture(k=2).family(),
        GaussianMixture(k=2)
        .family()
        .params_from_public(
            {
                "weights": np.array([0.5, 0.5]),
                "means": np.array([[0.0, 0.0], [5.0, 5.0]]),
                "covariances": np.stack([np.eye(2)] * 2),
            },
            2,
        ),
        2,
    ).setFeaturesCol(["x0", "x1"])
    df = bare.read.parquet(str(tmp_path / "d" / "ok"))
    with pytest.raises(ExecutorImportError, match="cannot import em_spark.*addArtifacts"):
        _API_CALLS[call](model, df)


def test_the_readmes_add_artifacts_recipe_is_the_fix_and_fits_as_with_an_installed_em_spark(
    bare_url, connect, tmp_path
):
    small_workspace(tmp_path)
    data, saved = tmp_path / "d" / "ok", tmp_path / "shipped-model"
    recipe = tmp_path / "ship.py"
    recipe.write_text(_readme_recipe())
    result = _artifact_client(bare_url, recipe, str(data), str(saved))
    assert (tmp_path / f"em_spark-{em_spark.__version__}.zip").is_file()
    assert "cannot import em_spark" in result["before"]
    assert result["after"] == "ok"

    # the same fit on the package's server, where em_spark is installed in the workers' Python
    from em_spark import GaussianMixture, GaussianMixtureModel

    df = connect.read.parquet(str(data))
    installed = GaussianMixture(k=2, featuresCol=["x0", "x1"], maxIter=15, seed=3).fit(df)
    shipped = GaussianMixtureModel.load(str(saved))
    assert shipped.arrays.keys() == installed.arrays.keys()
    for key in installed.arrays:
        np.testing.assert_array_equal(shipped.arrays[key], installed.arrays[key], err_msg=key)
    assert shipped.summary.logLikelihoodHistory == installed.summary.logLikelihoodHistory


def test_another_em_spark_version_on_the_executors_is_a_clear_error_naming_both(bare_url, tmp_path):
    result = _artifact_client(bare_url, _zip_em_spark(tmp_path, version="0.0.9"))
    assert "cannot import em_spark" in result["before"]
    after = result["after"]
    assert "executors run em_spark 0.0.9" in after, after
    assert f"this client runs em_spark {em_spark.__version__}" in after, after
    assert f"em_spark=={em_spark.__version__}" in after, after
