"""Running the real ``em-spark`` command in a subprocess, and proving nothing stored changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["CliResult", "process_group_members", "run_cli", "run_cli_here", "small_workspace", "snapshot"]


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("em-spark: error:")]

    def assert_clean_error(self, *fragments: str) -> str:
        """Exit code 2, exactly one ``em-spark: error:`` line holding every fragment, no traceback."""
        assert self.code == 2, f"exit {self.code}\n{self.err[-3000:]}"
        assert "Traceback" not in self.err and "\tat org.apache" not in self.err, self.err[-3000:]
        assert len(self.error_lines) == 1, self.err[-3000:]
        line = self.error_lines[0]
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} not in {line!r}"
        return line


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """``python -m em_spark.cli ARGS`` in ``cwd``, with loopback Spark and this interpreter."""
    environment = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    environment.pop("PYSPARK_GATEWAY_PORT", None)  # never attach to the test session's JVM
    environment.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "em_spark.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc)


#: Commands that never start Spark (they read and write the registry and runs with pyarrow).
NO_SPARK_COMMANDS = ("registry", "report")


def run_cli_here(*args: str, cwd: Path) -> CliResult:
    """``em_spark.cli.main(ARGS)`` in this process, in ``cwd``, its stdout and stderr captured.

    For the commands that never start Spark (:data:`NO_SPARK_COMMANDS`), where a subprocess is
    seconds of imports for a millisecond's work; each has subprocess tests of its own. The CLI's
    ``em_spark`` logger and the working directory are restored afterwards, and its closing
    ``_stop_session`` is skipped: it would stop the test session's SparkSession. A parse error
    is its exit code; any other exception propagates (where a subprocess would print a traceback).
    """
    import contextlib
    import io
    import logging
    from unittest import mock

    from em_spark import cli

    assert args and args[0] in NO_SPARK_COMMANDS, f"{args[:1]} may start Spark: use run_cli"
    out, err = io.StringIO(), io.StringIO()
    logger = logging.getLogger("em_spark")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.object(cli, "_stop_session"):
            try:
                code = cli.main(list(args))
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.chdir(here)
        logger.handlers[:], logger.level, logger.propagate = saved
    return CliResult(subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue()))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): compare two to prove nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def small_workspace(root: Path, rows: int = 1000) -> Path:
    """The issue's repro: ``d/ok`` (``rows`` x numeric ``x0, x1``, two blobs) and ``small.yaml``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = np.random.default_rng(0).normal(size=(rows, 2))
    X[: rows // 2] += 5.0
    (root / "d" / "ok").mkdir(parents=True)
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1]}), root / "d" / "ok" / "part-0.parquet")
    (root / "small.yaml").write_text(
        "run: {id: t1, checkpointDir: ck}\n"
        "spark: {master: 'local[2]', conf: {spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '2'}}\n"
        "input: {path: d/ok, features: [x0, x1]}\n"
        "model: {k: 2}\n"
        "fit: {maxIter: 20}\n"
        "output: {modelPath: models/t1}\n"
        "score: {outputPath: scored/t1, mode: overwrite}\n"
    )
    return root / "small.yaml"


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: what a kill left behind."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members
