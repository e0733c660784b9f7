"""Faults of the Spark Connect path, injected for real: the real ``em-spark train`` runs as a
Connect client in its own process group (``tests/spark/faults/train_with_faults.py``, which
pauses or holds after one checkpoint commit) against a real Connect server in its own process.

1. The client (the driver of the EM loop: M-step and checkpoints run there) is SIGKILLed
   after checkpoint KILL_AFTER; the same command, run again, takes over the dead client's
   lease at once (same machine, process gone: as the classic driver-kill test), resumes from
   that checkpoint and ends bit-identical to an uninterrupted run.
2. The server is SIGKILLed while the client waits between iterations HOLD_AFTER and
   HOLD_AFTER + 1, and a new server is started on the same port: the client's next iteration
   fails with one clear error line (what was lost, in which iteration, what is kept, how to
   resume), writes no checkpoint, releases its lease; the same command against the new
   server resumes and ends bit-identical to the uninterrupted run.

The uninterrupted run and the client kill use the package's server; the server restart has
servers of its own. The three run at once in background threads, as in tests/spark/test_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from connect_data import SPARK_CONF  # (conftest.py puts this folder on sys.path)
from environments import SERVER_START_SECONDS, _free_port

from tests.clitools import process_group_members

pytestmark = [pytest.mark.connect, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
FAULTS = HERE.parent / "spark" / "faults"
ROWS, FEATURES, K, MAX_ITER, SEED = 6000, 3, 3, 6, 7
KILL_AFTER = HOLD_AFTER = 2
RUN_TIMEOUT = 600  # seconds per client process


def _env() -> dict[str, str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    # the client is told its server by --set spark.remote only; never this process's JVM or mode
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(name, None)
    return env


def _kill_group(popen: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait(60)
    deadline = time.monotonic() + 30
    while process_group_members(popen.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


class Server:
    """A Connect server (tests/connect/connect_server.py) in its own process group on ``port``."""

    def __init__(self, port: int, log: Path):
        args = [
            sys.executable,
            str(HERE / "connect_server.py"),
            str(port),
            *(f"{k}={v}" for k, v in SPARK_CONF.items()),
        ]
        with open(log, "a") as err:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_SECONDS
        line = ""
        while time.monotonic() < deadline and self.popen.poll() is None:
            line = self.popen.stdout.readline()
            if line.startswith("READY"):
                return
        self.kill()
        raise RuntimeError(f"the Connect server did not start; its log:\n{log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the server's whole group (the Python process and its JVM), as a crash would."""
        _kill_group(self.popen)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.stdin.close()  # connect_server.py stops when its stdin closes
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()


class Client:
    """``em-spark train`` (through train_with_faults.py) as a Connect client, in its own process group."""

    def __init__(self, args: list[str], cwd: Path, log: Path):
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed by wait())
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            [sys.executable, str(FAULTS / "train_with_faults.py"), *args],
            cwd=cwd,
            env=_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seconds: float | None = None

    def wait(self) -> int:
        try:
            return self.popen.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(self.popen)
            raise
        finally:
            self.seconds = time.perf_counter() - self.started
            self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _ckpt(sequence: int) -> str:
    return f"ckpt-{sequence:010d}.emck"


class Workspace:
    """One run's directory: config, checkpoints, model, fault markers; its train command."""

    def __init__(self, root: Path, data: Path, run_id: str, remote_url: str):
        self.dir = root / run_id
        (self.dir / "markers").mkdir(parents=True)
        self.run_id = run_id
        self.model = self.dir / "model"
        self.checkpoints = self.dir / "checkpoints" / run_id / "checkpoints"
        config = {
            "run": {"id": run_id, "checkpointDir": str(self.dir / "checkpoints"), "keepCheckpoints": 3},
            "input": {"path": str(data), "format": "parquet", "features": [f"x{j}" for j in range(FEATURES)]},
            "model": {"family": "gaussian", "k": K, "covarianceType": "full"},
            "fit": {"maxIter": MAX_ITER, "tol": 0.0, "nInit": 1, "seed": SEED},
            "output": {"modelPath": str(self.model), "overwrite": True},
        }
        self.config = self.dir / "train.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.remote_url = remote_url

    def args(self, *fault: str) -> list[str]:
        return [
            "--fault-dir",
            str(self.dir / "markers"),
            *fault,
            "--config",
            str(self.config),
            "--set",
            f"spark.remote={self.remote_url}",
        ]

    def client(self, log: str, *fault: str) -> Client:
        return Client(self.args(*fault), self.dir, self.dir / log)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.checkpoints.glob("ckpt-*"))

    def wait_for(self, client: Client, sequence: int) -> None:
        target = self.checkpoints / _ckpt(sequence)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not target.exists():
            if not client.alive() or time.monotonic() > deadline:
                _kill_group(client.popen)
                raise AssertionError(f"checkpoint {sequence} never appeared:\n{client.log[-3000:]}")
            time.sleep(0.02)


def job_reference(ws: Workspace) -> dict:
    """The same config, uninterrupted, on the package's server."""
    run = ws.client("train.log")
    rc = run.wait()
    return {"rc": rc, "log": run.log, "model": ws.model, "seconds": run.seconds}


def job_client_kill(ws: Workspace) -> dict:
    """SIGKILL the client's process group once checkpoint KILL_AFTER is committed; run again."""
    first = ws.client("first.log", "--pause-after", str(KILL_AFTER))
    ws.wait_for(first, KILL_AFTER)
    seen_at_kill = ws.names()
    _kill_group(first.popen)
    rc_first = first.wait()
    survivors, left = process_group_members(first.popen.pid), ws.names()
    again = ws.client("again.log")
    rc_again = again.wait()
    return {
        "rc_first": rc_first,
        "pid_first": first.popen.pid,
        "survivors": survivors,
        "seen_at_kill": seen_at_kill,
        "left": left,
        "first_log": first.log,
        "rc_again": rc_again,
        "again_log": again.log,
        "model": ws.model,
        "seconds": (first.seconds, again.seconds),
    }


def job_server_restart(root: Path, data: Path) -> dict:
    """Kill the server while the client waits after checkpoint HOLD_AFTER, start a new one on
    the same port, let the client go on; then run the same command against the new server."""
    port = _free_port()
    ws = Workspace(root, data, "restarted", f"sc://127.0.0.1:{port}")
    release = ws.dir / "release"
    server = Server(port, ws.dir / "server-1.log")
    first = ws.client("first.log", "--hold-after", str(HOLD_AFTER), "--release-file", str(release))
    try:
        ws.wait_for(first, HOLD_AFTER)
        held = ws.dir / "markers" / f"held-{HOLD_AFTER}"
        while not held.exists() and first.alive():
            time.sleep(0.02)
        server.kill()
        server = Server(port, ws.dir / "server-2.log")  # a new server on the same port
        released = time.perf_counter()
        release.write_text("go")
        rc_first = first.wait()
        failed_after = time.perf_counter() - released
        left = ws.names()
        again = ws.client("again.log")
        rc_again = again.wait()
    finally:
        if first.alive():
            _kill_group(first.popen)
        server.stop()
    return {
        "port": port,
        "rc_first": rc_first,
        "first_log": first.log,
        "failed_after": failed_after,
        "left": left,
        "rc_again": rc_again,
        "again_log": again.log,
        "model": ws.model,
        "seconds": (first.seconds, again.seconds),
    }


@pytest.fixture(scope="module")
def faults(connect_url, tmp_path_factory):
    from em_spark.app.demo_data import write_blobs

    root = tmp_path_factory.mktemp("connect-faults")
    data = root / "data"
    # overlapping blobs: the parameters still move at the last iteration, so every iteration counts
    write_blobs(str(data), ROWS, FEATURES, K, separation=2.5, seed=11)
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="connect-fault")
    try:
        yield {
            "reference": pool.submit(job_reference, Workspace(root, data, "reference", connect_url)),
            "client_kill": pool.submit(job_client_kill, Workspace(root, data, "killed", connect_url)),
            "server_restart": pool.submit(job_server_restart, root, data),
        }
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load_model(path: Path):
    from em_spark.api import load_model

    return load_model(path.as_uri())


def _assert_same_as_reference(faults: dict, model_path: Path) -> None:
    reference = faults["reference"].result(timeout=3 * RUN_TIMEOUT)
    assert reference["rc"] == 0, reference["log"][-3000:]
    model, ref = _load_model(model_path), _load_model(reference["model"])
    assert set(model.arrays) == set(ref.arrays)
    for name, value in ref.arrays.items():
        assert np.array_equal(model.arrays[name], value), f"{name} differs from the uninterrupted run"
    assert model.summary.logLikelihoodHistory == ref.summary.logLikelihoodHistory
    assert model.summary.numIter == ref.summary.numIter == MAX_ITER


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("em-spark: error:")]


def test_client_sigkilled_mid_fit_is_rerun_and_resumes_bit_identical(faults):
    r = faults["client_kill"].result(timeout=3 * RUN_TIMEOUT)
    assert r["rc_first"] == -signal.SIGKILL, r["first_log"][-3000:]
    assert r["survivors"] == [], f"processes of the killed client's group survived: {r['survivors']}"
    assert "a Spark Connect" not in r["first_log"]  # it never finished
    assert _ckpt(KILL_AFTER) in r["seen_at_kill"] and _ckpt(KILL_AFTER + 1) not in r["seen_at_kill"]
    assert r["left"][-1] == _ckpt(KILL_AFTER)
    assert r["rc_again"] == 0, r["again_log"][-3000:]
    log = r["again_log"]
    # The killed client's lease does not block the re-run: same machine, its process is gone.
    pid = r["pid_first"]
    assert re.search(rf"took over the lease of host \S+ pid {pid}: process {pid} no longer exists", log), log[-3000:]
    assert re.search(
        rf"resuming from \S+/killed/checkpoints/{_ckpt(KILL_AFTER)}: restart 1/1, iteration {KILL_AFTER}\b", log
    )
    assert f"iter={KILL_AFTER}/{MAX_ITER}" not in log and f"iter={KILL_AFTER + 1}/{MAX_ITER}" in log
    assert "a Spark Connect session" in log  # the re-run is a Connect client too
    _assert_same_as_reference(faults, r["model"])
    print(f"[connect faults] client SIGKILL: killed run {r['seconds'][0]:.1f}s, resume {r['seconds'][1]:.1f}s")


def test_server_restarted_between_iterations_is_one_clear_error_and_a_rerun_resumes_bit_identical(faults):
    r = faults["server_restart"].result(timeout=4 * RUN_TIMEOUT)
    log = r["first_log"]
    assert r["rc_first"] == 2, log[-4000:]
    assert "Traceback" not in log and "grpc" not in log.lower() and "\tat org.apache" not in log, log[-4000:]
    errors = _error_lines(log)
    assert len(errors) == 1, log[-4000:]
    line = errors[0]
    for fragment in (
        f"run restarted: lost the Spark Connect server at sc://127.0.0.1:{r['port']}",
        f"in iteration {HOLD_AFTER + 1} (restart 1/1)",
        f"the checkpoints up to iteration {HOLD_AFTER} are kept",
        "run the same command again",
    ):
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert f"iter={HOLD_AFTER + 1}/{MAX_ITER}" not in log
    # Nothing half-written: exactly the checkpoints of the iterations that finished.
    assert r["left"] == [_ckpt(s) for s in range(1, HOLD_AFTER + 1)]
    assert r["rc_again"] == 0, r["again_log"][-3000:]
    again = r["again_log"]
    assert "is corrupt" not in again and "took over the lease" not in again  # the failed run released it
    assert re.search(
        rf"resuming from \S+/restarted/checkpoints/{_ckpt(HOLD_AFTER)}: restart 1/1, iteration {HOLD_AFTER}\b", again
    ), again[-3000:]
    assert f"iter={HOLD_AFTER}/{MAX_ITER}" not in again and f"iter={HOLD_AFTER + 1}/{MAX_ITER}" in again
    _assert_same_as_reference(faults, r["model"])
    print(
        f"[connect faults] server restart: error {r['failed_after']:.1f}s after the client went on; "
        f"failed run {r['seconds'][0]:.1f}s, resume {r['seconds'][1]:.1f}s"
    )
