"""A real Spark Connect server on 127.0.0.1 for the tests, and a client session on it.

The server runs in a process of its own (``connect_server.py``: a classic local[2] session
with Spark's Connect plugin), the way a user's client talks to a cluster. Not
``SparkSession.builder.remote("local[2]")``: that starts the server inside this process, on
a SparkContext that then clashes with the suite's classic ``spark`` fixture.

A Connect session also switches pyspark's functions to Connect mode for the whole process
(the environment variable ``SPARK_CONNECT_MODE_ENABLED``), so the client is package-scoped
and its teardown switches the mode back: classic tests collected after these still work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from connect_data import SPARK_CONF, write_all  # noqa: E402
from environments import connect_server, make_venv, runtime_requirements  # noqa: E402


@pytest.fixture(scope="package")
def connect_url(tmp_path_factory):
    """``sc://127.0.0.1:PORT`` of a Connect server started for this test package (its executors
    run this interpreter, in a directory outside the repository)."""
    root = tmp_path_factory.mktemp("connect-server")
    with connect_server(root / "server.log", sys.executable, root, SPARK_CONF) as url:
        yield url


@pytest.fixture(scope="package")
def runtime_python(tmp_path_factory):
    """The python of a fresh virtualenv with em_spark's runtime dependencies only (no em_spark, no
    PySpark distribution): the bare executors' Python, and the base the pyspark-client venv adds
    to. Built once for the package: installing numpy, scipy, numba, pandas, pyarrow and
    matplotlib is minutes on a loaded 2-core machine."""
    return make_venv(tmp_path_factory.mktemp("runtime-venv") / "venv", runtime_requirements())


@pytest.fixture(scope="package")
def connect(connect_url):
    """A Spark Connect client session on the package's server."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_url).getOrCreate()
    session.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", SPARK_CONF["spark.sql.execution.arrow.maxRecordsPerBatch"]
    )
    yield session
    session.stop()
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)  # pyspark's functions back to classic mode


@pytest.fixture(scope="package")
def datasets(tmp_path_factory):
    """name -> local directory of Parquet files (see connect_data.py)."""
    return write_all(str(tmp_path_factory.mktemp("connect-data")))


@pytest.fixture(scope="package")
def classic_models(datasets, tmp_path_factory):
    """The reference fits on a classic session (in their own process): fit name -> model directory."""
    out = tmp_path_factory.mktemp("classic-models")
    root = str(Path(datasets["rows"]).parent)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(HERE / "classic_fits.py"), root, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"classic reference fits failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return {p.name: str(p) for p in out.iterdir()}
