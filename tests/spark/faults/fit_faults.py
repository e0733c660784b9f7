"""Driver for the fault-injection tests, run by spark-submit (any master).

    spark-submit --master 'local[2,4]' fit_faults.py --data DIR --out DIR --fault-dir DIR \
        reference:none  raised:raise:3:0  crashed:exit:5:1  df-raised:raise:4:1:dataframe

Each positional argument is one fit ``name:fault[:iteration:partition[:transport]]``, run in
order in this one application on the same data with the same settings; ``transport`` is the
block source (``rdd``, the default, or ``dataframe``: see ``load_blocks``). ``name.npz`` in
``--out`` receives its parameters, history, per-iteration row counts, fallbacks and timings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faulty_family
from pyspark import cloudpickle

cloudpickle.register_pickle_by_value(faulty_family)

from em_spark.app.common import setup_logging
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.session import get_session
from em_spark.engine.spark_source import load_blocks

FEATURES = ["x0", "x1", "x2"]


def _await_executors(spark, n: int, timeout: float = 180.0) -> None:
    """Block until ``n`` executors (besides the driver) are registered."""
    deadline = time.time() + timeout
    while spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1 < n:
        if time.time() > deadline:
            raise TimeoutError(f"fewer than {n} executors after {timeout} s")
        time.sleep(0.2)


def fit_one(spark, data: str, spec: str, fault_dir: str, out: str, max_iter: int, await_executors: int = 0) -> None:
    name, fault, *where = spec.split(":")
    iteration, partition = (int(where[0]), int(where[1])) if where else (3, 0)
    transport = where[2] if len(where) > 2 else "rdd"
    family = faulty_family.FaultyGaussian(
        k=3, fault=fault, fault_dir=fault_dir, fault_iteration=iteration, fault_partition=partition
    )
    df = spark.read.parquet(data)
    source = load_blocks(df, FEATURES, None, k=3, seed=7, label=f"em_spark run={name}", transport=transport)
    records = []  # (count, weight, fallbacks after, started, finished) per E-step
    real_e_step = source.e_step

    def recording_e_step(fam, params, label=""):
        if await_executors and records:
            _await_executors(spark, await_executors)
        started = time.time()
        if transport == "dataframe":
            # The DataFrame source sets no job description (Connect has no SparkContext); the
            # faulty family finds its iteration there, so set it as the RDD source does.
            spark.sparkContext.setJobDescription(label)
        try:
            stats = real_e_step(fam, params, label)
        finally:
            if transport == "dataframe":
                spark.sparkContext.setJobDescription(None)
        records.append((float(stats.count), float(stats.weight), source.fallbacks, started, time.time()))
        return stats

    source.e_step = recording_e_step
    try:
        result = fit_em(family, source, FitSettings(max_iter=max_iter, tol=0.0, seed=7, run_id=name))
    finally:
        source.close()
    rec = np.array(records, dtype=np.float64)
    np.savez(
        os.path.join(out, f"{name}.npz"),
        **{f"param.{k}": v for k, v in result.params.items()},
        history=np.array(result.history),
        counts=rec[:, 0],
        weights=rec[:, 1],
        fallbacks=rec[:, 2],
        started=rec[:, 3],
        finished=rec[:, 4],
        partitions=np.array(source.num_partitions),
        rows=np.array(result.n_rows),
    )
    print(
        f"FIT {name} done ({transport}): {result.n_iter} iterations, fallbacks={source.fallbacks}, "
        f"partitions={source.num_partitions}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fault-dir", required=True)
    parser.add_argument("--max-iter", type=int, default=8)
    parser.add_argument(
        "--await-executors",
        type=int,
        default=0,
        help="before each E-step after the first, wait for this many executors",
    )
    parser.add_argument("fits", nargs="+")
    args = parser.parse_args()
    setup_logging()
    spark = get_session("em_spark-faults", None, {"spark.ui.enabled": "false"})
    try:
        for spec in args.fits:
            fit_one(spark, args.data, spec, args.fault_dir, args.out, args.max_iter, args.await_executors)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
