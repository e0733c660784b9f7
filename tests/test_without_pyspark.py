"""em_spark installed without PySpark, as plain ``pip install em-spark`` leaves it (the core
dependencies only: what a Databricks runtime or spark-submit's $SPARK_HOME supplies PySpark to).

In a fresh virtualenv with ``pip install -e <repo>`` and no extra: no PySpark distribution comes
along, ``em_spark`` and the pure-numpy ``em_spark.models`` import and work, and what needs Spark
(the estimators, ``em-spark train``) stops with one line naming the extra to install; and
spark-submit, whose pyspark comes from $SPARK_HOME, runs a job with that interpreter.

Slow: the virtualenv (numpy, pyarrow, scipy, numba, matplotlib from pip's cache) takes one to two
minutes to build, once per session.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from clitools import CliResult, small_workspace, snapshot
from connect.environments import REPO, make_venv

pytestmark = pytest.mark.slow

# The one install hint, as the error line must carry it (em_spark/engine/session.py).
HINTS = ('pip install "em-spark[spark]"', '"em-spark[connect]"', "the runtime's pyspark")

# Run in the venv: the claims are about that interpreter. Prints one line per claim.
_CHILD = r"""
import importlib.metadata as md, importlib.util, sys
for dist in ("pyspark", "pyspark-client", "pyspark-connect"):
    try:
        md.version(dist)
        raise AssertionError(f"plain em-spark pulled in {dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
assert importlib.util.find_spec("pyspark") is None
import numpy as np
import em_spark
import em_spark.cli
from em_spark.models import FAMILIES, GaussianFamily
assert "pyspark" not in sys.modules, "importing em_spark imported pyspark"
print("imported", em_spark.__version__, sorted(FAMILIES))

# the models work without Spark: one Gaussian E-step's log-likelihood against scipy's densities
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from em_spark.models import Block
from em_spark.stats import LOGLIK
X = np.random.default_rng(0).normal(size=(200, 2))
X[:100] += 5.0
public = {"weights": np.array([0.4, 0.6]), "means": np.array([[5.0, 4.0], [0.5, 0.0]]),
          "covariances": np.array([[[1.0, 0.3], [0.3, 2.0]], [[1.5, 0.0], [0.0, 0.5]]])}
family = GaussianFamily(2)
stats = family.e_step(Block(X), family.params_from_public(public, 2))
reference = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in
                       zip(public["weights"], public["means"], public["covariances"])], axis=0).sum()
assert np.isclose(stats[LOGLIK], reference, rtol=1e-12, atol=0), (stats[LOGLIK], reference)
print("e-step", float(stats[LOGLIK]), float(reference))

# hasattr and getattr with a default answer, as for any missing attribute (the message stays)
assert hasattr(em_spark, "GaussianMixture") is False and getattr(em_spark, "KMeans", None) is None
try:
    em_spark.GaussianMixture
except AttributeError as exc:
    assert "PySpark is needed" in str(exc) and exc.name == "GaussianMixture", exc
else:
    raise AssertionError("em_spark.GaussianMixture without pyspark")

try:
    from em_spark import GaussianMixture
except ImportError as exc:
    print("import error", type(exc).__name__, isinstance(exc, ModuleNotFoundError), exc.name, "|", exc)
else:
    raise AssertionError("GaussianMixture imported without pyspark")
"""


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory):
    """The python of a fresh virtualenv holding em_spark (editable) and its core dependencies only."""
    return make_venv(tmp_path_factory.mktemp("without-pyspark") / "venv", ["-e", str(REPO)])


def _env(python) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME", "VIRTUAL_ENV", "SPARK_REMOTE")}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    return env


def test_em_spark_and_its_models_import_without_pyspark_and_the_estimators_say_what_to_install(bare_python, tmp_path):
    runner = tmp_path / "child.py"
    runner.write_text(_CHILD)
    done = subprocess.run(
        [str(bare_python), str(runner)],
        cwd=tmp_path,
        env=_env(bare_python),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("imported 0.") and "gaussian" in lines[0], lines
    (error,) = [line for line in lines if line.startswith("import error ")]
    head, message = error.split(" | ", 1)
    assert head == "import error PySparkMissingError True pyspark", error
    assert "\n" not in message and "em_spark.api" in message, message
    for hint in HINTS:
        assert hint in message, (hint, message)


def test_em_spark_train_without_pyspark_prints_one_line_naming_the_extra_and_touches_nothing(bare_python, tmp_path):
    config = small_workspace(tmp_path)  # a valid job: the only thing wrong is the missing PySpark
    before = snapshot(tmp_path)
    done = subprocess.run(
        [str(bare_python.parent / "em-spark"), "train", "--config", str(config), "--set", "model.k=3"],
        cwd=tmp_path,
        env=_env(bare_python),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = CliResult(done).assert_clean_error("PySpark is needed for em-spark train", *HINTS)
    assert done.stderr.strip() == line, done.stderr  # nothing but the one line
    assert snapshot(tmp_path) == before  # no checkpoint, no model, no demo data written


@pytest.mark.spark
def test_spark_submit_runs_a_job_on_plain_em_spark_with_pyspark_from_spark_home(bare_python, tmp_path):
    import pyspark

    from em_spark.api import GaussianMixtureModel

    spark_home = Path(pyspark.__file__).parent  # this full pyspark stands for a cluster's Spark install
    config = small_workspace(tmp_path)
    env = _env(bare_python)
    env.update(
        SPARK_HOME=str(spark_home),
        PYSPARK_PYTHON=str(bare_python),  # driver and executors: the venv without any pyspark
        PYSPARK_DRIVER_PYTHON=str(bare_python),
        SPARK_LOCAL_IP="127.0.0.1",
    )
    submit = [str(spark_home / "bin" / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false"]
    done = subprocess.run(
        [*submit, str(REPO / "jobs" / "train.py"), "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "em_spark fit: run t1: gaussian, 1000 rows, 2 features, k=2" in done.stdout, done.stdout[-2000:]
    model = GaussianMixtureModel.load((tmp_path / "models" / "t1").as_uri())
    assert sorted(model.means[:, 0].round()) == [0.0, 5.0]  # the two blobs of small_workspace
