"""Passes and seconds to converge: plain EM (acceleration="none") against SQUAREM ("squarem").

    python bench/bench_squarem.py [--master 'local[2]'] [--rows 200000] [--tol 1e-3 --tol 1e-6] \
        [--out bench/results/squarem_latest.md]

Each case is a cached DataFrame built the way a user builds it, in a plain
``SparkSession.builder.master(...).getOrCreate()`` session; each fit runs to convergence
(``maxIter`` 2000) from the same seed, once with each acceleration, for every ``--tol``.
Reported: data passes (``summary.numIter``: one E-step each, under either driver), the
seconds of the fit end to end (load, initialization and the passes) and of the passes alone
(the sum of ``summary.iterationSeconds``), and the final average log-likelihood. Before and
after: the single-core and all-core DGEMM GFLOP/s (2000 x 2000, best of 3) and the load average,
since the machine is shared.

Cases: overlapping mixtures, where plain EM is slow (components close together), and a
well-separated one, where it is not.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_kernel import dgemm_gflops  # noqa: E402  (the same DGEMM measurement as the kernel benchmark)


def _categorical_codes(rows: int, seed: int) -> np.ndarray:
    """Codes of 6 features (4 categories) from 3 latent classes that differ little."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(4, 2.0), size=(3, 6))
    z = rng.choice(3, size=rows, p=[0.5, 0.3, 0.2])
    u = rng.random((rows, 6, 1))
    return (u > np.cumsum(probs[z], axis=2)).sum(axis=2).clip(max=3).astype(np.float64)


def cases(rows: int) -> dict[str, tuple[str, dict, np.ndarray]]:
    """name -> (estimator name, estimator params, data)."""
    from em_spark.app.demo_data import make_blobs

    return {
        f"gaussian full, overlapping ({rows // 1000}k x 4, K=3)": (
            "GaussianMixture",
            {"k": 3, "covarianceType": "full"},
            make_blobs(rows, 4, 3, separation=1.0, seed=3)[0],
        ),
        f"gaussian diag, overlapping ({rows // 1000}k x 6, K=4)": (
            "GaussianMixture",
            {"k": 4, "covarianceType": "diag"},
            make_blobs(rows, 6, 4, separation=1.0, seed=4)[0],
        ),
        f"gaussian full, separated ({rows // 1000}k x 4, K=3)": (
            "GaussianMixture",
            {"k": 3, "covarianceType": "full"},
            make_blobs(rows, 4, 3, separation=6.0, seed=3)[0],
        ),
        f"categorical, overlapping ({rows // 1000}k x 6, 4 categories, K=3)": (
            "CategoricalMixture",
            {"k": 3, "nCategories": [4] * 6, "smoothing": 0.0},
            _categorical_codes(rows, 5),
        ),
    }


def machine() -> dict:
    return {
        "dgemm1": round(dgemm_gflops(1), 1),
        "dgemmAll": round(dgemm_gflops(None), 1),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def run(master: str, rows: int, tols: list[float]) -> dict:
    import pyspark
    from pyspark.sql import SparkSession

    import em_spark
    from em_spark import api

    before = machine()
    spark = SparkSession.builder.master(master).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    try:
        for name, (estimator, params, X) in cases(rows).items():
            df = spark.createDataFrame([(row.tolist(),) for row in X], "features array<double>").cache()
            df.count()
            for tol in tols:
                for acceleration in ("none", "squarem"):
                    est = getattr(api, estimator)(**params, tol=tol, maxIter=2000, seed=1, acceleration=acceleration)
                    started = time.perf_counter()
                    model = est.fit(df)
                    seconds = time.perf_counter() - started
                    s = model.summary
                    results.append(
                        {
                            "case": name,
                            "tol": tol,
                            "acceleration": acceleration,
                            "passes": s.numIter,
                            "converged": s.converged,
                            "seconds": round(seconds, 2),
                            "passSeconds": round(sum(s.iterationSeconds), 2),
                            "avgLogLik": s.averageLogLikelihood,
                        }
                    )
                    print(json.dumps(results[-1]), flush=True)
            df.unpersist()
    finally:
        spark.stop()
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "master": master,
        "rows": rows,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyspark": pyspark.__version__,
            "em_spark": em_spark.__version__,
        },
        "before": before,
        "after": machine(),
        "results": results,
    }


def report(result: dict) -> str:
    b, a = result["before"], result["after"]
    lines = [
        f"{result['date']}, {result['master']}, `{result['command']}`; versions {result['versions']}",
        f"DGEMM GFLOP/s one core {b['dgemm1']} / {a['dgemm1']}, all cores {b['dgemmAll']} / {a['dgemmAll']} "
        f"(before / after); load average {b['load']} / {a['load']}",
        "",
        "| case | tol | acceleration | data passes | fit seconds | seconds in passes | average log-likelihood |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["case"], r["tol"], r["acceleration"]): r for r in result["results"]}
    for r in result["results"]:
        plain = by_key[(r["case"], r["tol"], "none")]
        ratio = "" if r["acceleration"] == "none" else f" ({plain['passes'] / r['passes']:.1f}x fewer)"
        mark = "" if r["converged"] else " (not converged)"
        lines.append(
            f"| {r['case']} | {r['tol']:g} | {r['acceleration']} | {r['passes']}{ratio}{mark} | {r['seconds']} | "
            f"{r['passSeconds']} | {r['avgLogLik']:.9f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--tol", type=float, action="append", help="repeatable; default: 1e-3 (the default) and 1e-6")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "squarem_latest.md"))
    args = p.parse_args(argv)
    result = run(args.master, args.rows, args.tol or [1e-3, 1e-6])
    text = report(result)
    print(text)
    out = Path(args.out)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
