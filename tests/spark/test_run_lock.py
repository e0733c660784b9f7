"""Two `em-spark train` commands with the same run id at once: one fits, the other stops clearly."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from em_spark.app.demo_data import write_blobs

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _driver_tracebacks(stderr: str) -> list[str]:
    """The tracebacks in ``stderr`` with a frame outside pyspark (pyspark's worker daemon excluded)."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if any("pyspark" not in path for path in re.findall(r'File "([^"]+)"', b))]


def test_two_trains_with_one_run_id_at_once_exactly_one_proceeds(tmp_path):
    config = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    config["run"]["id"] = "twice"
    config["input"]["generate"] = None
    config["fit"].update(maxIter=80, tol=0.0, nInit=1)  # far longer than the two drivers start apart
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    write_blobs(str(tmp_path / "em-spark-demo" / "data"), 3000, 2, 3, seed=1)  # both read it; neither writes it

    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    command = [sys.executable, "-m", "em_spark.cli", "train", "--config", str(path)]
    drivers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [d.communicate(timeout=900) for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
    codes = [d.returncode for d in drivers]
    assert sorted(codes) == [0, 2], (codes, [err[-3000:] for _, err in outputs])
    winner = drivers[codes.index(0)]
    loser_err = outputs[codes.index(2)][1]
    assert "em-spark: error: run twice is already running (owner host " in loser_err
    assert f" pid {winner.pid}, since " in loser_err and "wait for it, or use another run id" in loser_err
    # no traceback of the driver's own: a Python worker the loser's SparkContext cut off on its way
    # out may print pyspark's daemon BrokenPipeError (all its frames in pyspark), which is not ours
    assert not _driver_tracebacks(loser_err), loser_err[-4000:]
    assert (tmp_path / "em-spark-demo" / "model-local").exists()


def test_a_train_of_a_run_id_already_running_stops_before_it_loads_the_data(tmp_path):
    # Two drivers started at the same instant both load, and the lease after the load decides
    # (above). A run started while another holds the lease stops before its load.
    from em_spark.storage import RunLock

    config = yaml.safe_load((REPO / "conf" / "local.yaml").read_text())
    config["run"]["id"] = "busy"
    config["input"]["generate"] = None
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    write_blobs(str(tmp_path / "em-spark-demo" / "data"), 3000, 2, 3, seed=1)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    holder = RunLock(str(tmp_path / config["run"]["checkpointDir"]), "busy", heartbeat_seconds=0)
    with holder:  # this test process is the live holder
        out = subprocess.run(
            [sys.executable, "-m", "em_spark.cli", "train", "--config", str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert out.returncode == 2, out.stderr[-3000:]
    assert (
        "em-spark: error: run busy is already running (owner host " in out.stderr
        and f" pid {os.getpid()}, " in out.stderr
    )
    assert "loaded and validated" not in out.stderr and "Traceback" not in out.stderr
