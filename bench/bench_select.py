"""Model selection: one ``select`` over k = 1..K (shared data passes) against K separate fits.

    python bench/bench_select.py [--rows 200000] [--features 10] [--max-k 8] [--max-iter 100] \
        [--out bench/results/select_latest]

One plain ``SparkSession.builder.master("local[2]")`` session, one Parquet data set (a mixture
of 5 Gaussians, full covariance), the same settings for every fit (maxIter, tol = 1e-3, seed):

    select (shared passes)   what ``em-spark select`` runs: load once, every candidate's
                             iterations share one Spark job per round (engine/shared_passes.py)
    one load, fits in turn   the same candidates fitted one after another on the one loaded
                             source: what sharing the passes alone buys
    separate fits            ``GaussianMixture(k=k).fit(df)`` for each k: a load each, as a user
                             without ``select`` would run them

Every candidate's fitted model is the same in all three (the test suite checks it bit for bit);
printed: seconds, data passes (Spark E-step jobs), and the ratio to the separate fits, with the
machine's DGEMM GFLOP/s, load average and versions. Quote ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import log, machine_facts, machine_lines  # bench/common.py: the script's own directory is on sys.path

HERE = Path(__file__).resolve().parent


def write_data(spark, rows: int, d: int, directory: str, seed: int = 42) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(5, d))  # overlapping: fits take tens of iterations
    z = rng.integers(0, 5, rows)
    X = means[z] + rng.normal(size=(rows, d))
    spark.createDataFrame(pd.DataFrame(X, columns=[f"f{j}" for j in range(d)])).repartition(4).write.parquet(directory)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--max-k", type=int, default=8)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--out", default=str(HERE / "results" / "select_latest"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    facts = machine_facts()
    from pyspark.sql import SparkSession

    from em_spark import GaussianMixture
    from em_spark.engine.loop import fit_em
    from em_spark.engine.selection import select_models
    from em_spark.engine.settings import FitSettings

    spark = SparkSession.builder.master("local[2]").appName("bench_select").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    ks = list(range(1, args.max_k + 1))
    features = [f"f{j}" for j in range(args.features)]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_select_") as tmp:
        data = os.path.join(tmp, "data")
        write_data(spark, args.rows, args.features, data)
        df = spark.read.parquet(data).cache()
        df.count()

        def estimator(k: int) -> GaussianMixture:
            return GaussianMixture(k=k, covarianceType="full", featuresCol=features, maxIter=args.max_iter, seed=1)

        settings = FitSettings(max_iter=args.max_iter, tol=estimator(1).getTol(), seed=1)
        base = estimator(1)
        log("warm-up fit (untimed): the Python workers' imports and the kernel's JIT load")
        estimator(2).setMaxIter(2).fit(df)

        log("select (shared passes)")
        started = time.perf_counter()
        source = base.load_source(df, base.family())
        calls = _count_passes(source)
        candidates = select_models(source, ks, ["full"], settings, make_family=lambda k, _: estimator(k).family())
        source.close()
        results["select (shared passes)"] = {
            "seconds": time.perf_counter() - started,
            "passes": calls(),
            "iterations": [c.numIter for c in candidates],
            "avgLogLik": [c.avgLogLik for c in candidates],
        }

        log("one load, fits in turn")
        started = time.perf_counter()
        source = base.load_source(df, base.family())
        calls = _count_passes(source)
        fits = [fit_em(estimator(k).family(), source, settings) for k in ks]
        source.close()
        results["one load, fits in turn"] = {
            "seconds": time.perf_counter() - started,
            "passes": calls(),
            "iterations": [f.n_iter for f in fits],
        }

        log("separate fits")
        started = time.perf_counter()
        models = [estimator(k).fit(df) for k in ks]
        results["separate fits"] = {
            "seconds": time.perf_counter() - started,
            "passes": sum(m.summary.numIter for m in models),
            "iterations": [m.summary.numIter for m in models],
        }
    spark.stop()
    facts["loadAfter"] = os.getloadavg()
    separate = results["separate fits"]["seconds"]
    lines = [
        f"select over k = 1..{args.max_k} (full covariance): {args.rows:,} rows x {args.features} features, "
        f"5 true components, maxIter={args.max_iter}, tol={settings.tol}, local[2]",
        "",
        "| way | seconds | E-step passes | x cheaper than separate fits |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['passes']} | {separate / r['seconds']:.1f} |")
    text = (
        "\n".join(lines) + f"\n\niterations per k: {results['separate fits']['iterations']}\n\n" + machine_lines(facts)
    )
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": facts, "results": results}, indent=2, default=str))
    out.with_suffix(".md").write_text(text)
    return 0


def _count_passes(source):
    """Count the source's Spark E-step jobs (``e_step_many`` calls; ``e_step`` goes through it)."""
    count = [0]
    real = source.e_step_many

    def counted(models, label=""):
        count[0] += 1
        return real(models, label)

    source.e_step_many = counted
    return lambda: count[0]


if __name__ == "__main__":
    sys.exit(main())
