"""Gaussian E-step of one block on one thread: numpy kernel vs compiled (numba) kernel, as % of DGEMM peak.

    python bench/bench_kernel.py [--rows 1000000] [--rows50 200000] [--repeat 5] \
        [--out bench/results/kernel_latest.md]

For d=10/K=5 and d=50/K=8 and every covariance type, times ``GaussianFamily.e_step`` on one
block (unweighted, no labels, no missing values) with one BLAS thread (threadpoolctl), the
numpy path (``EM_SPARK_KERNEL=numpy``) and the compiled path alternating in the same run;
best of ``--repeat`` each. Reports seconds per million rows and useful GFLOP/s as a % of the
single-core DGEMM rate measured in the same run (2000 x 2000, best of 3, before and after the
kernels; the higher of the two is the peak), and against a 1000 x 1000 single-core DGEMM timed
right before and after each case (the higher of the two), since the load of a shared machine drifts
during a run.

Useful flops (what the E-step needs, counted once whatever the implementation does):

* full, tied: 4·N·K·d² (Mahalanobis terms (x − μ_k)P_k: 2·d² per row and component; second
  moments Σ w r (x − μ)(x − μ)ᵀ: 2·d²), PLATFORM.md's count. The compiled kernel does about
  half of these multiply-adds (P is triangular, the moments symmetric); numpy does them all.
* diag, spherical: 6·N·K·d (difference, square and scaled sum for the Mahalanobis term; two
  multiply-adds for the moments).

It also measures the first-task cost of the compiled path in fresh Python processes: import,
JIT compile and one small E-step, with an empty on-disk cache (what every process pays
without a cache) and with a warm one, next to the same first task on the numpy path.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

CASES = ((10, 5), (50, 8))
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
ROOT = Path(__file__).resolve().parent.parent

FIRST_TASK = """
import time
started = time.perf_counter()
import numpy as np
from em_spark.models.base import Block
from em_spark.models.gaussian import GaussianFamily
rng = np.random.default_rng(0)
X = rng.normal(size=(4096, 10))
for kind in ("full", "diag"):
    family = GaussianFamily(k=5, covariance_type=kind)
    family.e_step(Block(X), family.initialize(Block(X), rng))
print(time.perf_counter() - started)
"""


def dgemm_gflops(threads: int | None, size: int = 2000) -> float:
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).normal(size=(size, size))
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def useful_flops(kind: str, n: int, k: int, d: int) -> float:
    return 4.0 * n * k * d * d if kind in ("full", "tied") else 6.0 * n * k * d


def versions() -> dict:
    import numba
    import threadpoolctl

    import em_spark

    blas = [
        {key: info.get(key) for key in ("internal_api", "version", "architecture")}
        for info in threadpoolctl.threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "em_spark": em_spark.__version__,
        "blas": blas,
        "cpu": platform.processor() or platform.machine(),
    }


def mixture_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    which = rng.integers(k, size=n)
    return centers[which] + rng.normal(size=(n, d))


def time_kernels(rows: dict[int, int], repeat: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from em_spark.models.base import Block
    from em_spark.models.compiled import KERNEL_ENV
    from em_spark.models.gaussian import GaussianFamily

    out = []
    for d, k in CASES:
        n = rows[d]
        X = mixture_data(n, d, k, seed=d)
        block = Block(X)
        for kind in COVARIANCE_TYPES:
            family = GaussianFamily(k=k, covariance_type=kind)
            params = family.initialize(Block(X[:20_000]), np.random.default_rng(1))
            best = {"numpy": float("inf"), "compiled": float("inf")}
            results = {}
            local_peak = dgemm_gflops(1, 1000)
            with threadpool_limits(limits=1, user_api="blas"):
                for mode in best:  # warm-up (and JIT compile) outside the timing
                    os.environ[KERNEL_ENV] = mode
                    results[mode] = family.e_step(Block(X[:4096]), params)
                for _ in range(repeat):
                    for mode, so_far in best.items():
                        os.environ[KERNEL_ENV] = mode
                        best[mode] = min(so_far, _timed(partial(family.e_step, block, params)))
                        results[mode] = family.e_step(Block(X[:65536]), params)
            os.environ.pop(KERNEL_ENV, None)
            # the load of a shared machine drifts: each case also gets the peak measured next to it
            local_peak = max(dgemm_gflops(1, 1000), local_peak)
            gap = max(
                float(np.max(np.abs(results["numpy"][f] - results["compiled"][f])))
                / max(float(np.max(np.abs(results["numpy"][f]))), 1e-300)
                for f in results["numpy"]
            )
            out.append(
                {
                    "d": d,
                    "k": k,
                    "covarianceType": kind,
                    "rows": n,
                    "flops": useful_flops(kind, n, k, d),
                    "seconds": best,
                    "maxRelativeDifference": gap,
                    "adjacentPeak": local_peak,
                }
            )
            print(f"d={d} K={k} {kind}: numpy {best['numpy']:.4f} s, compiled {best['compiled']:.4f} s", flush=True)
    return out


def first_task_costs() -> dict:
    """Seconds of a fresh process's first E-step task (import + compile + run), by cache state."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_CACHE_DIR", None)
    out = {}
    with tempfile.TemporaryDirectory() as cache_dir:

        def run(label: str, **extra: str) -> None:
            proc = subprocess.run(
                [sys.executable, "-c", FIRST_TASK],
                env={**env, **extra},
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            out[label] = float(proc.stdout.strip().splitlines()[-1])
            print(f"first task, {label}: {out[label]:.2f} s", flush=True)

        run("numpy", EM_SPARK_KERNEL="numpy")
        # an empty cache is the cost without one (compile in every process) plus writing it
        run("compiled, empty cache (= no cache, plus the write)", NUMBA_CACHE_DIR=cache_dir)
        run("compiled, warm cache", NUMBA_CACHE_DIR=cache_dir)
    return out


def report(result: dict) -> str:
    peak = result["dgemm"]["oneThreadPeak"]
    lines = [
        "# Gaussian E-step kernel: numpy vs compiled (one thread)",
        "",
        f"Run {result['date']}: `{result['command']}`",
        "",
        f"DGEMM 2000x2000: one thread {result['dgemm']['oneThread']} GFLOP/s (before, after), all threads "
        f"{result['dgemm']['allThreads']:.1f} GFLOP/s; peak used for %: {peak:.1f} GFLOP/s.",
        f"Load average before {result['loadBefore']}, after {result['loadAfter']}.",
        f"Versions: {json.dumps(result['versions'])}",
        "",
        "Useful flops: full/tied 4·N·K·d², diag/spherical 6·N·K·d (see the script's docstring).",
        "",
        "| d | K | covariance | numpy s/1M rows | compiled s/1M rows | numpy GFLOP/s | compiled GFLOP/s "
        "| numpy % peak | compiled % peak | adjacent 1000² DGEMM | numpy % adjacent | compiled % adjacent "
        "| speed-up | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["kernels"]:
        per_m = {m: s / row["rows"] * 1e6 for m, s in row["seconds"].items()}
        rate = {m: row["flops"] / s / 1e9 for m, s in row["seconds"].items()}
        lines.append(
            f"| {row['d']} | {row['k']} | {row['covarianceType']} | {per_m['numpy']:.3f} | {per_m['compiled']:.3f} "
            f"| {rate['numpy']:.1f} | {rate['compiled']:.1f} | {100 * rate['numpy'] / peak:.1f}% "
            f"| {100 * rate['compiled'] / peak:.1f}% | {row['adjacentPeak']:.1f} "
            f"| {100 * rate['numpy'] / row['adjacentPeak']:.1f}% | {100 * rate['compiled'] / row['adjacentPeak']:.1f}% "
            f"| {row['seconds']['numpy'] / row['seconds']['compiled']:.1f}x "
            f"| {row['maxRelativeDifference']:.1e} |"
        )
    if result.get("firstTask"):
        lines += ["", "First task in a fresh Python process (import + JIT + one 4096-row E-step, full and diag):", ""]
        lines += [f"- {label}: {seconds:.2f} s" for label, seconds in result["firstTask"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the d=10 block")
    p.add_argument("--rows50", type=int, default=200_000, help="rows of the d=50 block")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-first-task", action="store_true", help="skip the fresh-process JIT measurements")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernel_latest.md")
    args = p.parse_args(argv)
    result: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "bench/bench_kernel.py", *(argv if argv is not None else sys.argv[1:])]),
        "loadBefore": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }
    before = dgemm_gflops(1)
    all_threads = dgemm_gflops(None)
    print(f"DGEMM one thread {before:.1f} GFLOP/s, all threads {all_threads:.1f}", flush=True)
    result["kernels"] = time_kernels({10: args.rows, 50: args.rows50}, args.repeat)
    after = dgemm_gflops(1)
    result["dgemm"] = {
        "oneThread": [round(before, 1), round(after, 1)],
        "allThreads": all_threads,
        "oneThreadPeak": max(before, after),
    }
    result["firstTask"] = None if args.no_first_task else first_task_costs()
    result["loadAfter"] = [round(x, 2) for x in os.getloadavg()]
    text = report(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
