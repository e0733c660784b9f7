"""Where the fixed cost of a fit goes: the load pass stage by stage, against pyspark.ml's fixed cost.

    python bench/bench_load.py [--rows 1000000 4000000] [--features 10] [--k 5] \
        [--dtype float64|float32] [--no-reference] [--out bench/results/load_latest]

One plain ``SparkSession.builder.master("local[2]")`` session (its ``spark.local.dir`` in a fresh
temporary directory, so Spark's disk can be measured), and for each N a cached DataFrame of a
5-component mixture in ``--features`` columns, built the way a user builds it. Each stage is timed
as its own Spark action over that DataFrame, each adding one step of ``load_blocks``:

    arrow      Arrow batches -> validated, encoded numpy blocks (``to_payloads``, mapInArrow)
    + deal     + the deal over partitions (a shuffle) and assembling (streaming, not persisted)
    load       the whole ``load_blocks``: + summary (counts, fingerprint, sample) and the
               executor-local block files
    init       ``family.initialize`` on the driver's sample (k-means++ and Lloyd)
    em_spark fixed   ``GaussianMixture(maxIter=1).fit(df)`` minus its one iteration
    pyspark.ml fixed ``pyspark.ml GaussianMixture(maxIter=1)`` minus one iteration (the difference
               of maxIter=3 and 1, over two), after an untimed warm-up fit

Also: disk per row (the block files, and what the load adds under spark.local.dir: the deal's
shuffle files, which are also the fallback copy) and the peak RSS of the Python workers over the load and one iteration (the peak is reset per size). Printed
with the machine's DGEMM GFLOP/s, load average and versions; quote ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import log, machine_facts, machine_lines  # bench/common.py

HERE = Path(__file__).resolve().parent


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while walking
                total += os.path.getsize(os.path.join(root, name))
    return total


def _worker_memory_mib(spark, reset: bool = False) -> list[dict]:
    """Each Python worker's peak RSS since the last reset (VmHWM), and its anonymous and
    file-backed RSS now (RssFile: the memory-mapped block files, shared page cache). ``reset``
    restarts the peak (Linux ``clear_refs``), so a size's figure is not an earlier size's."""

    def memory(_):
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) / 1024  # kB
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return fields

    return spark.sparkContext.parallelize(range(2), 2).map(memory).collect()


def make_data(spark, rows: int, d: int, k: int, path: str) -> None:
    from pyspark.sql import functions as F

    frame = spark.range(rows, numPartitions=8).withColumn("z", F.floor(F.rand(7) * k))
    frame = frame.select(*[(F.randn(11 + j) + F.col("z") * (1.5 + 0.5 * j)).alias(f"f{j}") for j in range(d)])
    frame.write.mode("overwrite").parquet(path)


def run_size(spark, rows: int, args: argparse.Namespace, tmp: str, local_dir: str) -> dict:
    from pyspark import SparkFiles
    from pyspark.ml.clustering import GaussianMixture as MLGaussianMixture
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    from em_spark import GaussianMixture
    from em_spark.engine.arrow_input import FEATURES_FIELD, InputSpec
    from em_spark.engine.load_summary import RowProblems
    from em_spark.engine.partition_tasks import PAYLOAD_SCHEMA, PROBLEM_FIELDS, assemble_partition, to_payloads
    from em_spark.engine.spark_source import feature_array, load_blocks
    from em_spark.models import GaussianFamily

    features = [f"f{j}" for j in range(args.features)]
    path = os.path.join(tmp, f"data-{rows}")
    log(f"{rows:,} rows: writing the data")
    make_data(spark, rows, args.features, args.k, path)
    df = spark.read.parquet(path).cache()
    df.count()
    out: dict = {"rows": rows}
    _worker_memory_mib(spark, reset=True)
    spec = InputSpec(sequences=False, allow_missing=False, k=None, dtype=args.dtype)
    payloads = df.select(feature_array(df, features).alias(FEATURES_FIELD)).mapInArrow(
        to_payloads(spec), PAYLOAD_SCHEMA
    )
    n_target = int(spark.sparkContext.defaultParallelism)

    log("arrow")
    out["arrow"], _ = _timed(lambda: payloads.agg(F.sum(F.length("payload"))).collect())

    def deal():
        rdd = payloads.rdd.map(
            lambda r: ((r.src, r.idx), (bytes(r.payload), RowProblems(**{n: r[n] for n in PROBLEM_FIELDS})))
        )
        blocks = rdd.partitionBy(n_target, partitionFunc=lambda key: key[0] * 7919 + key[1])
        blocks = blocks.mapPartitions(assemble_partition)  # as load_blocks: assembled, not persisted
        blocks.count()
        return blocks

    log("+ deal")
    out["+ deal"], _ = _timed(deal)

    log("load")
    disk_before = _du(local_dir)
    out["load"], source = _timed(lambda: load_blocks(df, features, None, k=args.k, seed=1, dtype=args.dtype))
    block_files = _du(os.path.join(SparkFiles.getRootDirectory(), "em_spark-blocks"))
    out["blockFilesBytesPerRow"] = block_files / rows
    # what the load added under spark.local.dir besides the block files (Spark's files root, which
    # holds them, is inside it in local mode): the deal's shuffle files
    out["sparkDiskOnlyBytesPerRow"] = (_du(local_dir) - disk_before - block_files) / rows
    family = GaussianFamily(k=args.k)
    log("init")
    out["init"], _ = _timed(lambda: family.initialize(source.sample, np.random.default_rng(1)))
    source.close()

    log("em_spark fit, maxIter=1")
    seconds, model = _timed(
        lambda: GaussianMixture(k=args.k, maxIter=1, tol=0.0, featuresCol=features, seed=1, dtype=args.dtype).fit(df)
    )
    out["em_spark fixed"] = seconds - model.summary.iterationSeconds[0]
    out["em_spark iteration"] = model.summary.iterationSeconds[0]
    out["workerMemoryMiB"] = _worker_memory_mib(spark)

    if args.no_reference:
        out["pyspark.ml fixed"] = out["pyspark.ml iteration"] = float("nan")
        df.unpersist()
        shutil.rmtree(path, ignore_errors=True)
        return out
    assembled = VectorAssembler(inputCols=features, outputCol="features").transform(df).select("features").cache()
    assembled.count()
    MLGaussianMixture(k=args.k, maxIter=1, seed=1).fit(assembled)  # warm-up: the JVM's JIT
    log("pyspark.ml fits, maxIter=1 and 3")
    one, _ = _timed(lambda: MLGaussianMixture(k=args.k, maxIter=1, tol=0.0, seed=1).fit(assembled))
    three, _ = _timed(lambda: MLGaussianMixture(k=args.k, maxIter=3, tol=0.0, seed=1).fit(assembled))
    per_iteration = (three - one) / 2
    out["pyspark.ml fixed"] = one - per_iteration
    out["pyspark.ml iteration"] = per_iteration
    assembled.unpersist()
    df.unpersist()
    shutil.rmtree(path, ignore_errors=True)
    return out


STAGES = ["arrow", "+ deal", "load", "init", "em_spark fixed", "pyspark.ml fixed"]


def table(results: list[dict]) -> str:
    lines = [
        "| rows | " + " | ".join(f"{s} s" for s in STAGES) + " | em_spark / pyspark.ml fixed | block files B/row "
        "| Spark local dir B/row (the deal's shuffle files) | Python worker peak RSS MiB "
        "(load + 1 iteration) | of which mapped block files MiB |",
        "|---" * (len(STAGES) + 6) + "|",
    ]
    for r in results:
        ratio = r["em_spark fixed"] / r["pyspark.ml fixed"] if r["pyspark.ml fixed"] > 0 else float("nan")
        lines.append(
            f"| {r['rows']:,} | "
            + " | ".join(f"{r[s]:.2f}" for s in STAGES)
            + f" | {ratio:.2f} | {r['blockFilesBytesPerRow']:.0f} | {r['sparkDiskOnlyBytesPerRow']:.0f} | "
            + ", ".join(f"{m['VmHWM']:.0f}" for m in r["workerMemoryMiB"])
            + " | "
            + ", ".join(f"{m['RssFile']:.0f}" for m in r["workerMemoryMiB"])
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="em_spark's block dtype")
    p.add_argument("--no-reference", action="store_true", help="skip the pyspark.ml fits (em_spark's columns only)")
    p.add_argument("--driver-memory", default="6g", help="the local driver's heap (caching 8M rows needs more than 1g)")
    p.add_argument("--out", default=str(HERE / "results" / "load_latest"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    facts = machine_facts()
    from pyspark.sql import SparkSession

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        local_dir = os.path.join(tmp, "spark-local")
        os.makedirs(local_dir)
        spark = (
            SparkSession.builder.master("local[2]")
            .appName("bench_load")
            .config("spark.local.dir", local_dir)
            .config("spark.driver.memory", args.driver_memory)
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        log("warm-up (untimed): a small fit starts the Python workers and loads the compiled kernel")
        run_size(spark, 20_000, args, tmp, local_dir)
        for rows in args.rows:
            results.append(run_size(spark, rows, args, tmp, local_dir))
            log(json.dumps(results[-1]))
        spark.stop()
    facts["loadAfter"] = os.getloadavg()
    text = (
        f"Fixed cost of a fit, stage by stage: {args.features} features, K={args.k}, full covariance, local[2], "
        f"dtype={args.dtype}; "
        "each stage column includes the ones before it up to `load`\n\n"
        + table(results)
        + "\n\n"
        + machine_lines(facts)
    )
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": facts, "results": results}, indent=2, default=str))
    out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
