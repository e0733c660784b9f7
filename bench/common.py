"""What every benchmark prints beside its figures: the machine's DGEMM speed, load and versions.

Our machines vary from day to day, so a table is only read next to these facts, and ratios
are quoted from one run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import numpy as np

__all__ = ["dgemm_gflops", "log", "machine_facts", "machine_lines", "versions"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dgemm_gflops(n: int = 2000) -> dict:
    """Best of three ``n x n`` DGEMMs, on one BLAS thread and on all."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).normal(size=(n, n))
    result = {}
    for name, threads in (("oneThread", 1), ("allThreads", None)):
        with threadpool_limits(limits=threads, user_api="blas"):
            a @ a
            best = min(_timed(lambda: a @ a) for _ in range(3))
        result[name] = 2 * n**3 / best / 1e9
    return result


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def versions(*references: str) -> dict:
    """Python, Spark, numpy, pyarrow, em_spark and Java versions, plus those of ``references``
    (the modules a benchmark compares against, e.g. ``"sklearn"``)."""
    import importlib

    import pyarrow
    import pyspark

    import em_spark

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except Exception as exc:  # informational only
        java = f"unknown ({exc})"
    return {
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "em_spark": em_spark.__version__,
        **{name: importlib.import_module(name).__version__ for name in references},
        "java": java,
        "cpus": os.cpu_count(),
    }


def machine_facts() -> dict:
    """DGEMM, versions and the load average before the run (``loadAfter`` is added by the caller)."""
    load_before = os.getloadavg()
    facts = {"dgemmGflops": dgemm_gflops(), "versions": versions(), "loadBefore": load_before}
    log(f"DGEMM 2000x2000: {facts['dgemmGflops']}; load average {load_before}")
    return facts


def machine_lines(facts: dict) -> str:
    """The lines printed under every table."""
    gflops = facts["dgemmGflops"]
    after = facts.get("loadAfter") or os.getloadavg()
    return (
        f"DGEMM 2000x2000 GFLOP/s: one thread {gflops['oneThread']:.1f}, all threads {gflops['allThreads']:.1f}\n"
        f"load average before {tuple(round(x, 2) for x in facts['loadBefore'])}, "
        f"after {tuple(round(x, 2) for x in after)}\n"
        f"versions: {facts['versions']}\n"
    )
