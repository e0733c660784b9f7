"""A Gaussian family whose E-step injects one real fault, for the fault-injection tests.

Imported by the driver scripts in this folder as a top-level module and shipped to the
executors by value (``cloudpickle.register_pickle_by_value``), so em_spark is untouched
and the executors need no copy of this folder.

The fault fires in exactly one task: the one for partition ``fault_partition`` of the
E-step job of iteration ``fault_iteration`` (read from the job description the engine
sets, ``... iter=N``), on its first attempt, and only once: a marker file created with
O_EXCL in ``fault_dir`` (shared by all processes on this machine) records that it fired.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass

from em_spark.models import GaussianFamily

FAULTS = ("none", "raise", "exit", "kill-executor")
_ITER_RE = re.compile(r"\biter=(\d+)\b")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def find_executor_jvm(max_levels: int = 4) -> int:
    """The executor JVM above this Python worker: worker -> pyspark daemon -> JVM."""
    pid = os.getpid()
    for _ in range(max_levels):
        pid = _ppid(pid)
        if pid <= 1:
            break
        if "CoarseGrainedExecutorBackend" in _cmdline(pid):
            return pid
    raise RuntimeError(f"no CoarseGrainedExecutorBackend among the ancestors of {os.getpid()}")


@dataclass(frozen=True)
class FaultyGaussian(GaussianFamily):
    fault: str = "none"
    fault_dir: str = ""
    fault_iteration: int = 3
    fault_partition: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")

    def e_step(self, block, params):
        if self.fault != "none":
            self._maybe_inject()
        return super().e_step(block, params)

    def _maybe_inject(self) -> None:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is None:  # on the driver
            return
        match = _ITER_RE.search(ctx.getLocalProperty("spark.job.description") or "")
        if match is None or int(match.group(1)) != self.fault_iteration:
            return
        if ctx.partitionId() != self.fault_partition or ctx.attemptNumber() != 0:
            return
        marker = os.path.join(self.fault_dir, f"{self.fault}-p{self.fault_partition}-i{self.fault_iteration}.json")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # fired already (e.g. in a stage re-attempt)
        info = {
            "fault": self.fault,
            "partition": ctx.partitionId(),
            "iteration": self.fault_iteration,
            "stage": ctx.stageId(),
            "attempt": ctx.attemptNumber(),
            "taskAttemptId": ctx.taskAttemptId(),
            "worker_pid": os.getpid(),
            "time": time.time(),
        }
        if self.fault == "kill-executor":
            info["executor_pid"] = find_executor_jvm()
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        if self.fault == "raise":
            raise RuntimeError(
                f"injected fault: first attempt of partition {ctx.partitionId()}, iteration {self.fault_iteration}"
            )
        if self.fault == "exit":
            os._exit(1)  # the Python worker dies mid-E-step, without cleanup
        if self.fault == "kill-executor":
            os.kill(info["executor_pid"], signal.SIGKILL)
            os._exit(1)  # the worker's JVM is gone; do not outlive it
