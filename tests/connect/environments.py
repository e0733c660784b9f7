"""Virtualenvs with chosen packages, and Connect servers whose executors use one of them.

For the tests of what must be installed where: a client with ``pyspark-client`` only (no JVM),
and executors whose Python has em_spark's dependencies but not em_spark. Installs come from
the package index (CI has it); a failed install is an error with pip's output, never a skip.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).with_name("connect_server.py")
SERVER_START_SECONDS = 300  # a loaded 2-core machine takes 30-60 s to start the JVM
PIP_SECONDS = 1200


def runtime_requirements() -> list[str]:
    """em_spark's runtime dependencies (its installed metadata, as pyproject.toml declares them),
    without extras and without any PySpark distribution."""
    found = importlib.metadata.requires("em-spark") or []
    core = [req for req in found if "extra ==" not in req]
    return [req for req in core if not re.match(r"pyspark\b", req)]


def make_venv(dest: Path, requirements: list[str], *, editable: bool = False) -> Path:
    """A new virtualenv at ``dest`` with ``requirements`` (and this repo, ``--no-deps -e``, when
    ``editable``); its python. RuntimeError with pip's output when an install fails."""
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True, capture_output=True, timeout=300)
    python = dest / "bin" / "python"
    steps = [[*requirements]] + ([["--no-deps", "-e", str(REPO)]] if editable else [])
    for args in steps:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *args],
            capture_output=True,
            text=True,
            timeout=PIP_SECONDS,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"pip install {' '.join(args)} into {dest} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
            )
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def connect_server(log: Path, executor_python: str, cwd: Path, conf: Mapping[str, str]) -> Iterator[str]:
    """``sc://127.0.0.1:PORT`` of a Connect server (full pyspark, this interpreter) whose Python
    workers run ``executor_python`` in ``cwd``; stopped on exit.

    ``cwd`` matters: a worker started with ``python -m`` has its working directory on sys.path,
    so a server started in the repository would let any Python import em_spark from there."""
    port = _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": executor_python}
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT", "PYTHONPATH"):
        env.pop(name, None)
    args = [sys.executable, str(SERVER_SCRIPT), str(port), *(f"{k}={v}" for k, v in conf.items())]
    with open(log, "w") as err:
        server = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        line = ""
        while time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
            if line.startswith("READY"):
                break
        if not line.startswith("READY"):
            raise RuntimeError(f"the Connect server did not start; its log:\n{log.read_text()[-4000:]}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.stdin.close()  # the server stops when its stdin closes
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
