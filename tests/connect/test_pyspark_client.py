"""The client side from a virtualenv of ``pip install -e ".[connect]"``: ``pyspark-client`` only, no
JVM, no full pyspark, no Java on PATH. ``em-spark train`` there, against the package's server (full pyspark, its own
process), fits the same model, bit for bit, as the same command from the full pyspark."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from environments import REPO, make_venv

from tests.clitools import CliResult, run_cli, small_workspace

pytestmark = pytest.mark.connect

#: em_spark as a Connect client installs it: its `connect` extra, the thin pyspark-client (4.2.0
#: is the newest on PyPI when this was written; the server is 4.3), and nothing else
CLIENT = ["-e", f"{REPO}[connect]"]

# Run in the child before the CLI: the claim is about that very process. From a file, not
# ``python -c``: pyspark's Connect import takes a __main__ without __file__ for a doctest run and
# goes looking for a SPARK_HOME, which a pyspark-client install does not have.
_CHILD = """
import importlib.metadata as md, os, shutil, sys
import pyspark
assert shutil.which("java") is None, shutil.which("java")
assert "JAVA_HOME" not in os.environ
assert not os.path.isdir(os.path.join(os.path.dirname(pyspark.__file__), "jars")), "a full pyspark"
try:
    md.version("pyspark")
    raise AssertionError("the full pyspark distribution is installed")
except md.PackageNotFoundError:
    pass
print("pyspark-client", md.version("pyspark-client"), flush=True)
from em_spark.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory, runtime_python):
    """The python of a fresh virtualenv: em_spark -e with its `connect` extra, on top of the runtime
    venv's packages (em_spark's other dependencies, seen through a .pth line)."""
    return make_venv(tmp_path_factory.mktemp("pyspark-client") / "venv", CLIENT, base=runtime_python)


def _train_from(python, workdir, connect_url) -> CliResult:
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "SPARK_HOME", "PYTHONPATH", "SPARK_REMOTE")}
    env.update({"PATH": str(python.parent), "SPARK_LOCAL_IP": "127.0.0.1"})  # the venv's bin only: no java
    config = small_workspace(workdir)
    runner = workdir / "run_em_spark.py"
    runner.write_text(_CHILD)
    done = subprocess.run(
        [str(python), str(runner), "train", "--config", str(config), "--set", f"spark.remote={connect_url}"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return CliResult(done)


def test_train_from_a_pyspark_client_only_venv_without_java_fits_the_full_clients_model(
    client_python, connect_url, tmp_path
):
    thin_dir, full_dir = tmp_path / "thin", tmp_path / "full"
    thin_dir.mkdir()
    full_dir.mkdir()
    thin = _train_from(client_python, thin_dir, connect_url)
    assert thin.code == 0, thin.out[-2000:] + thin.err[-4000:]
    assert thin.out.startswith("pyspark-client ") and "a Spark Connect session" in thin.out, thin.out[-2000:]

    config = small_workspace(full_dir)
    full = run_cli("train", "--config", str(config), "--set", f"spark.remote={connect_url}", cwd=full_dir)
    assert full.code == 0, full.err[-4000:]

    from em_spark import GaussianMixtureModel

    a = GaussianMixtureModel.load(str(thin_dir / "models" / "t1"))
    b = GaussianMixtureModel.load(str(full_dir / "models" / "t1"))
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)
    assert a.summary.logLikelihoodHistory == b.summary.logLikelihoodHistory
    assert a.summary.dataFingerprint == b.summary.dataFingerprint
