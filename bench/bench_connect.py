"""Time per EM iteration through each transport: classic files, classic DataFrame, Spark Connect.

    python bench/bench_connect.py [--rows 1000000] [--features 10] [--k 5] [--iters 8] \
        [--out bench/results/connect_latest]

One run, four engines on the same Parquet data (full covariance, ``tol=0``, the same initial
model for em_spark):

    classic-files       em_spark on a classic local[2] session: RDD source, executor-local block files
    classic-dataframe   em_spark's DataFrame-only source on the same classic session (also files,
                        read from inside mapInArrow), and with the files removed (cache only, as
                        where executors keep no disk: serverless)
    connect-dataframe   em_spark on a Spark Connect session (``SparkSession.builder.remote("local[2]")``)
    pyspark.ml-connect  pyspark.ml GaussianMixture on that Connect session

A classic session and a Connect session cannot share a Python process (a Connect session
switches pyspark's functions to Connect mode process-wide), so each side runs in a worker
process of its own (``--worker classic`` / ``--worker connect``) and prints one JSON line.

em_spark's time per iteration is the median of ``summary.iterationSeconds`` after the first
(one E-step job plus the M-step on the driver); pyspark.ml's is ``(t_B - t_A) / (n_B - n_A)``
from fits with ``maxIter = 2`` and ``2 + iters`` (the fastest of two fits each) after one
untimed warm-up fit (its summary has no per-iteration times).
Also printed: the machine's DGEMM GFLOP/s (one thread and all), the load average before and
after, and the versions. The machine is shared: quote ratios from one run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import log, machine_facts, machine_lines  # bench/common.py

HERE = Path(__file__).resolve().parent
SPARK_CONF = {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"}


def write_data(rows: int, d: int, k: int, directory: str, seed: int = 42) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(k, d))
    os.makedirs(directory, exist_ok=True)
    files = 4
    for i in range(files):
        n = rows // files
        z = rng.integers(0, k, n)
        X = means[z] + rng.normal(size=(n, d))
        table = pa.table({f"f{j}": X[:, j] for j in range(d)})
        pq.write_table(table, os.path.join(directory, f"part-{i}.parquet"))


def initial_model(directory: str, k: int, d: int, seed: int = 7) -> dict:
    """The same initial model for every em_spark engine: k rows of the data, unit covariances."""
    import pyarrow.parquet as pq

    first = pq.read_table(os.path.join(directory, "part-0.parquet")).to_pandas().to_numpy()
    rng = np.random.default_rng(seed)
    means = first[rng.choice(first.shape[0], k, replace=False)]
    return {"weights": [1.0 / k] * k, "means": means.tolist(), "covariances": np.stack([np.eye(d)] * k).tolist()}


def fit_em_spark(df, features: list[str], k: int, iters: int, init: dict, transport: str, files: bool = True) -> dict:
    from em_spark import GaussianMixture
    from em_spark.engine import spark_source

    real = spark_source.load_blocks
    sources = []

    def load(*args, **kwargs):
        source = real(*args, **{**kwargs, "transport": transport})
        if not files:
            source.close_files()
            source.use_files = False
        sources.append(source)
        return source

    from em_spark.api import base

    base.load_blocks = load  # the estimator's loader, told which transport to use
    try:
        gm = GaussianMixture(
            k=k,
            covarianceType="full",
            maxIter=iters,
            tol=0.0,
            featuresCol=features,
            initialModel={key: np.array(v) for key, v in init.items()},
        )
        started = time.perf_counter()
        model = gm.fit(df)
        seconds = time.perf_counter() - started
    finally:
        base.load_blocks = real
    per_iter = model.summary.iterationSeconds
    return {
        "secondsPerIteration": statistics.median(per_iter[1:]) if len(per_iter) > 1 else per_iter[0],
        "iterationSeconds": per_iter,
        "fitSeconds": seconds,
        "numIter": model.summary.numIter,
        "avgLogLik": model.summary.averageLogLikelihood,
        "fallbacks": sources[0].fallbacks if sources else None,
        "means": model.means.tolist(),
    }


def fit_pyspark_ml(df, k: int, iters: int, seed: int = 7, repeats: int = 2) -> dict:
    from pyspark.ml.clustering import GaussianMixture

    # one untimed fit first, as bench_gmm.py does: the first fit pays the JVM's JIT warm-up, which
    # would otherwise land in the maxIter=2 fit and shrink (t_B - t_A)
    GaussianMixture(k=k, maxIter=2, tol=0.0, seed=seed, featuresCol="features").fit(df)
    runs = {}
    for max_iter in (2, 2 + iters):
        seconds = []
        for _ in range(repeats):  # the fastest of the repeats: the one the shared machine disturbed least
            started = time.perf_counter()
            model = GaussianMixture(k=k, maxIter=max_iter, tol=0.0, seed=seed, featuresCol="features").fit(df)
            seconds.append(time.perf_counter() - started)
        runs[max_iter] = (min(seconds), int(model.summary.numIter), float(model.summary.logLikelihood))
    (t_a, n_a, _), (t_b, n_b, ll) = runs[2], runs[2 + iters]
    return {
        "secondsPerIteration": (t_b - t_a) / (n_b - n_a) if n_b > n_a else None,
        "fitSeconds": t_b,
        "numIter": n_b,
        "logLikelihood": ll,
        "runs": {str(m): r for m, r in runs.items()},
    }


def worker(side: str, args: argparse.Namespace) -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    features = [f"f{j}" for j in range(args.features)]
    init = json.loads((Path(args.data).parent / "init.json").read_text())
    out: dict = {}
    if side == "classic":
        from em_spark.engine.session import get_session

        spark = get_session("bench_connect-classic", "local[2]", {**SPARK_CONF, "spark.ui.enabled": "false"})
        spark.sparkContext.setLogLevel("ERROR")
        df = spark.read.parquet(args.data)
        for name, transport, files in (
            ("classic-files", "rdd", True),
            ("classic-dataframe", "dataframe", True),
            ("classic-dataframe-cache-only", "dataframe", False),
        ):
            log(f"{name}: fitting maxIter={args.iters}")
            out[name] = fit_em_spark(df, features, args.k, args.iters, init, transport, files)
            log(f"{name}: {out[name]['secondsPerIteration']:.3f} s per iteration")
    else:
        builder = SparkSession.builder.remote("local[2]")
        for key, value in SPARK_CONF.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        df = spark.read.parquet(args.data)
        log(f"connect-dataframe: fitting maxIter={args.iters}")
        out["connect-dataframe"] = fit_em_spark(df, features, args.k, args.iters, init, "dataframe")
        log(f"connect-dataframe: {out['connect-dataframe']['secondsPerIteration']:.3f} s per iteration")
        from pyspark.ml.feature import VectorAssembler

        assembled = VectorAssembler(inputCols=features, outputCol="features").transform(df).select("features").cache()
        assembled.count()
        log("pyspark.ml-connect: fitting")
        out["pyspark.ml-connect"] = fit_pyspark_ml(assembled, args.k, args.iters)
        log(f"pyspark.ml-connect: {out['pyspark.ml-connect']['secondsPerIteration']:.3f} s per iteration")
    spark.stop()
    print("RESULT " + json.dumps(out), flush=True)


def table(results: dict, rows: int, d: int, k: int) -> str:
    ml = (results.get("pyspark.ml-connect") or {}).get("secondsPerIteration")
    lines = [
        f"{rows:,} rows x {d} features, K={k}, full covariance, local[2]",
        "",
        "| engine | s / iteration | x faster than pyspark.ml on Connect | fit s (incl. load) | fallbacks |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        per = r.get("secondsPerIteration")
        ratio = f"{ml / per:.1f}" if ml and per else "-"
        fallbacks = r.get("fallbacks")
        lines.append(
            f"| {name} | {per:.3f} | {ratio} | {r['fitSeconds']:.1f} | {'-' if fallbacks is None else fallbacks} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--data", help="(internal) Parquet directory for a worker")
    p.add_argument("--worker", choices=("classic", "connect"), help="(internal) run one side and print JSON")
    p.add_argument("--out", default=str(HERE / "results" / "connect_latest"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return 0

    machine = machine_facts()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_connect_") as tmp:
        data = os.path.join(tmp, "data")
        write_data(args.rows, args.features, args.k, data)
        Path(tmp, "init.json").write_text(json.dumps(initial_model(data, args.k, args.features)))
        for side in ("classic", "connect"):
            cmd = [sys.executable, __file__, "--worker", side, "--data", data]
            cmd += ["--rows", str(args.rows), "--features", str(args.features), "--k", str(args.k)]
            cmd += ["--iters", str(args.iters)]
            env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=3600)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                log(f"{side} worker failed (exit {done.returncode})")
                continue
            results.update(json.loads(line[len("RESULT ") :]))
    machine["loadAfter"] = os.getloadavg()
    report = table(results, args.rows, args.features, args.k)
    text = f"{report}\n\n{machine_lines(machine)}"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=str))
    out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
