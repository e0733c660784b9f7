"""A night's cost: a full retrain on the whole history against model.update on tonight's rows only.

    python bench/bench_incremental.py [--master 'local[2]'] [--tonight 200000] [--nights 1 --nights 7 --nights 30] \
        [--features 10] [--k 5] [--iters 10]

For each history length H (nights of ``--tonight`` rows each), in a plain SparkSession with the
data as a cached DataFrame: a full fit of H + 1 nights from the current model (``initialModel``,
one restart) and ``model.update(tonight, halfLife=7)``, both ``--iters`` EM iterations at
``tol=0`` (so the two do the same number of passes). Printed per H: rows read, wall seconds of
each (load and passes) and seconds per pass. The claim it checks: the update's seconds stay flat
as H grows; the full retrain's grow with H. DGEMM GFLOP/s and the load average are printed
before and after, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_gmm import write_parquet  # noqa: E402  (bench/bench_gmm.py)
from common import log, machine_facts, machine_lines  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--tonight", type=int, default=200_000)
    parser.add_argument("--nights", type=int, action="append")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "incremental_latest.md"))
    args = parser.parse_args()
    nights = args.nights or [1, 7, 30]

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from em_spark import GaussianMixture
    from em_spark.app.demo_data import make_blobs

    facts = machine_facts()
    builder = SparkSession.builder.master(args.master).config("spark.ui.enabled", "false")
    spark = builder.config("spark.driver.memory", args.driver_memory).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    scratch = tempfile.mkdtemp(prefix="bench_incremental_")
    columns = [f"x{j}" for j in range(args.features)]

    def frame(rows: int, seed: int):
        # through Parquet, as a user's data arrives: a 6M-row Python list would fill the driver's heap
        X, _, _ = make_blobs(rows, args.features, args.k, separation=4.0, seed=seed)
        directory = os.path.join(scratch, f"night-{seed}-{rows}")
        os.makedirs(directory)
        df = spark.read.parquet(write_parquet(X, directory))
        return df.select(array_to_vector(F.array(*columns)).alias("features")).cache()

    tonight = frame(args.tonight, 0)
    tonight.count()
    estimator = GaussianMixture(k=args.k, seed=1, maxIter=args.iters, tol=0.0)
    model = estimator.fit(tonight)  # "production": the model the night starts from
    lines = ["| nights of history | rows read: full / update | full retrain s | update s | s per pass: full / update |"]
    lines.append("|---|---|---|---|---|")
    for h in nights:
        history = frame(args.tonight * h, h)
        everything = history.unionByName(tonight).cache()
        rows = everything.count()
        started = time.perf_counter()
        full = estimator.copy().setParams(initialModel=model, nInit=1).fit(everything)
        full_s = time.perf_counter() - started
        started = time.perf_counter()
        updated = model.update(tonight, halfLife=7, maxIter=args.iters, tol=0.0)
        update_s = time.perf_counter() - started
        per_full = np.mean(full.summary.iterationSeconds)
        per_update = np.mean(updated.summary.iterationSeconds)
        lines.append(
            f"| {h} | {rows} / {args.tonight} | {full_s:.2f} | {update_s:.2f} | {per_full:.3f} / {per_update:.3f} |"
        )
        log(lines[-1])
        everything.unpersist()
        history.unpersist()
    facts["loadAfter"] = os.getloadavg()
    command = "python bench/bench_incremental.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = [f"# A night's cost: full retrain against model.update ({stamp})", "", f"`{command}`", "", *lines]
    report += [
        "",
        f"{args.tonight} rows a night x {args.features} features, K={args.k}, {args.iters} passes each, {args.master}",
        machine_lines(facts),
    ]
    print("\n".join(report))
    Path(args.out).write_text("\n".join(report) + "\n")
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
