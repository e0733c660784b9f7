"""Time to a converged model, each library at its defaults: em_spark vs pyspark.ml GaussianMixture.

    python bench/bench_end_to_end.py [--cases 1m10 8m10] [--k 5] [--out bench/results/end_to_end_latest]

For each case (bench_gmm.py's data: make_blobs, 10 features, 5 components) one cached DataFrame
with a ``features`` vector column, built the way a user builds it, in one plain
``SparkSession.builder.master("local[2]")`` session. Each engine fits it from scratch with only ``k``
set (em_spark: full covariance, k-means++ init, tol 1e-3 on the average log-likelihood,
maxIter 100; pyspark.ml: random init, tol 0.01 on the total log-likelihood, maxIter 100): wall time
of ``fit`` including every fixed cost, iterations run and the final average log-likelihood per
row. One untimed warm-up fit per engine on a small DataFrame first (Python workers, JIT).
The machine's DGEMM GFLOP/s, load average and versions are printed with the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_gmm import CASES, generate, write_parquet  # bench/bench_gmm.py: the same data
from common import log, machine_facts, machine_lines  # bench/common.py

HERE = Path(__file__).resolve().parent


def cached_features(spark, directory: str, features: int, partitions: int):
    from pyspark.ml.feature import VectorAssembler

    cols = [f"x{j}" for j in range(features)]
    raw = spark.read.parquet(directory).repartition(partitions)
    df = VectorAssembler(inputCols=cols, outputCol="features").transform(raw).select("features").cache()
    df.count()
    return df


def fit_em_spark(df, k: int) -> dict:
    from em_spark import GaussianMixture

    started = time.perf_counter()
    model = GaussianMixture(k=k).fit(df)
    seconds = time.perf_counter() - started
    s = model.summary
    return {"seconds": seconds, "numIter": int(s.numIter), "avgLogLik": float(s.averageLogLikelihood)}


def fit_pyspark_ml(df, k: int, rows: int) -> dict:
    from pyspark.ml.clustering import GaussianMixture

    started = time.perf_counter()
    model = GaussianMixture(k=k).fit(df)
    seconds = time.perf_counter() - started
    s = model.summary
    return {"seconds": seconds, "numIter": int(s.numIter), "avgLogLik": float(s.logLikelihood) / rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["1m10", "8m10"], choices=sorted(CASES))
    p.add_argument("--master", default="local[2]")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--out", default=str(HERE / "results" / "end_to_end_latest"))
    args = p.parse_args(argv)
    facts = machine_facts()
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(args.master)
        .appName("bench_end_to_end")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", args.driver_memory)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    try:
        for name in args.cases:
            case = CASES[name]
            X, how = generate(case)
            tmp = tempfile.mkdtemp(prefix=f"bench_e2e_{name}_")
            try:
                write_parquet(X, tmp)
                if not results:  # warm-up on the first 20k rows: workers started, kernel compiled
                    small = tempfile.mkdtemp(prefix="bench_e2e_warm_")
                    write_parquet(X[:20_000], small)
                    warm = cached_features(spark, small, case.features, args.partitions)
                    fit_em_spark(warm, case.k)
                    fit_pyspark_ml(warm, case.k, 20_000)
                    warm.unpersist()
                    shutil.rmtree(small, ignore_errors=True)
                del X
                gc.collect()
                df = cached_features(spark, tmp, case.features, args.partitions)
                log(f"{name}: cached {case.rows:,} rows")
                em = fit_em_spark(df, case.k)
                log(f"  em_spark {em}")
                ml = fit_pyspark_ml(df, case.k, case.rows)
                log(f"  pyspark.ml {ml}")
                df.unpersist()
                results.append({"case": name, "rows": case.rows, "generator": how, "em_spark": em, "pyspark.ml": ml})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        spark.stop()
    facts["loadAfter"] = os.getloadavg()

    lines = [
        f"Time to a converged model at each library's defaults (k=5 set), {args.master}: "
        f"`python bench/bench_end_to_end.py --cases {' '.join(args.cases)}`",
        "",
        "| rows | engine | fit seconds | iterations | avg log-likelihood | x faster than pyspark.ml |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        em, ml = r["em_spark"], r["pyspark.ml"]
        for engine, x in (("em_spark", em), ("pyspark.ml", ml)):
            lines.append(
                f"| {r['rows']:,} | {engine} | {x['seconds']:.1f} | {x['numIter']} | {x['avgLogLik']:.4f} | "
                f"{ml['seconds'] / x['seconds']:.1f}x |"
            )
    lines += ["", machine_lines(facts)]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": facts, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
