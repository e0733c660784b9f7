"""Online (stepwise) EM against batch EM: average log-likelihood against rows processed.

    python bench/bench_online.py [--rows 8000000] [--features 10] [--k 5] [--master local[2]] \
        [--fraction 0.05] [--offset 2] [--decay 0.6] [--batch-tol 1e-5] [--out bench/results/online_latest.md]

Both fits run on one loaded source (em_spark's load of the same cached DataFrame, in a plain
``SparkSession.builder.master(...).getOrCreate()`` session) from the same initial model
(bench_gmm's shared k-means++ start), full covariances:

- batch EM (``optimizer="batch"``) until the change of its average log-likelihood is below
  ``--batch-tol``: its history gives the log-likelihood after each of its P data passes;
- online EM (``optimizer="online"``, ``tol=0``) grown step by step with the run-continuation of
  a larger ``maxIter`` on one run id, and after each chunk of steps one extra full pass (not
  counted as rows processed) measures its average log-likelihood on all the rows.

The target (issue 14): online EM reaches within 0.01 nats per row of batch EM's final average
log-likelihood in at most P / 3 data passes' worth of rows. Prints the table, the machine's DGEMM
GFLOP/s and load average, and writes the curves as a PNG (matplotlib, a runtime dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_gmm import Case, generate, initial_params, write_parquet  # bench/bench_gmm.py
from common import log, machine_facts, machine_lines  # bench/common.py

TARGET_NATS = 0.01  # within this many nats per row of batch EM's final average log-likelihood
TARGET_PASS_SHARE = 1 / 3  # in at most this share of batch EM's data passes


def run(spark, args) -> dict:
    from em_spark.engine.loop import FitSettings, fit_em
    from em_spark.engine.spark_source import load_blocks
    from em_spark.models import GaussianFamily

    case = Case("online", args.rows, args.features, args.k, args.separation, args.seed)
    log(f"{case.rows:,} rows x {case.features} features, K={case.k}, separation={case.separation}")
    X, how = generate(case)
    init_public = initial_params(X, case.k, args.seed)
    tmp = tempfile.mkdtemp(prefix="bench_online_", dir=args.tmpdir)
    try:
        write_parquet(X, tmp)
        del X
        cols = [f"x{j}" for j in range(case.features)]
        df = spark.read.parquet(tmp)
        family = GaussianFamily(k=case.k, covariance_type="full")
        source = load_blocks(df, cols, None, k=case.k, seed=args.seed, num_partitions=args.partitions)
        try:
            init = family.params_from_public({k: np.asarray(v) for k, v in init_public.items()}, case.features)
            n = float(source.summary.weight_sum)

            log(f"batch EM to tol={args.batch_tol:g} (at most {args.batch_max_iter} passes)")
            started = time.perf_counter()
            batch = fit_em(
                family, source, FitSettings(max_iter=args.batch_max_iter, tol=args.batch_tol, seed=args.seed), init
            )
            batch_seconds = time.perf_counter() - started
            # history[i] is the average log-likelihood of the parameters after i passes
            batch_curve = [(i * n, float(h)) for i, h in enumerate(batch.history)]
            final_stats = source.e_step(family, batch.params)
            batch_final = final_stats.loglik / final_stats.weight
            batch_curve.append((len(batch.history) * n, batch_final))
            passes = len(batch.history)
            log(f"batch EM: {passes} passes, final avgLogLik {batch_final:.6f}, {batch_seconds:.1f} s")

            steps_per_epoch = math.ceil(1 / args.fraction)
            budget_passes = max(passes * TARGET_PASS_SHARE, 1.0) * args.online_share
            max_steps = max(1, math.ceil(budget_passes / args.fraction))
            every = max(1, round(steps_per_epoch * args.eval_epochs))
            checkpoints = tempfile.mkdtemp(prefix="bench_online_ck_", dir=args.tmpdir)
            online_curve = [(0.0, float(batch.history[0]))]  # the same start
            online_seconds = 0.0
            reached_rows = None
            try:
                for steps in range(every, max_steps + every, every):
                    settings = FitSettings(
                        optimizer="online",
                        mini_batch_fraction=args.fraction,
                        learning_offset=args.offset,
                        learning_decay=args.decay,
                        max_iter=steps,
                        tol=0.0,
                        seed=args.seed,
                        run_id="bench-online",
                        checkpoint_dir=checkpoints,
                    )
                    started = time.perf_counter()
                    online = fit_em(family, source, settings, init)  # continues the run: larger maxIter
                    online_seconds += time.perf_counter() - started
                    stats = source.e_step(family, online.params)  # the measurement pass (not counted)
                    avg = stats.loglik / stats.weight
                    rows = steps * args.fraction * n
                    online_curve.append((rows, float(avg)))
                    log(f"online EM: {steps} steps ({rows / n:.2f} passes' rows) avgLogLik {avg:.6f}")
                    if reached_rows is None and avg >= batch_final - TARGET_NATS:
                        reached_rows = rows
            finally:
                shutil.rmtree(checkpoints, ignore_errors=True)
        finally:
            source.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reached_passes = None if reached_rows is None else reached_rows / n
    return {
        "rows": case.rows,
        "features": case.features,
        "k": case.k,
        "separation": case.separation,
        "data": how,
        "partitions": args.partitions,
        "batch": {
            "tol": args.batch_tol,
            "passes": passes,
            "finalAvgLogLik": batch_final,
            "seconds": batch_seconds,
            "curve": batch_curve,
        },
        "online": {
            "miniBatchFraction": args.fraction,
            "learningOffset": args.offset,
            "learningDecay": args.decay,
            "stepsRun": max_steps,
            "secondsWithoutMeasurementPasses": online_seconds,
            "curve": online_curve,
            "reachedWithinNatsAfterPasses": reached_passes,
        },
        "target": {
            "nats": TARGET_NATS,
            "maxPasses": passes * TARGET_PASS_SHARE,
            "met": reached_passes is not None and reached_passes <= passes * TARGET_PASS_SHARE,
        },
    }


def picture(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = result["batch"]["finalAvgLogLik"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, zoom in zip(axes, (False, True)):
        for name, style in (("batch", "o-"), ("online", ".-")):
            rows, ll = zip(*result[name]["curve"])
            ax.plot(np.array(rows) / 1e6, ll, style, label=f"{name} EM", markersize=4)
        ax.axhline(final - TARGET_NATS, color="grey", linestyle="--", linewidth=0.8, label="batch final - 0.01")
        ax.axvline(
            result["target"]["maxPasses"] * result["rows"] / 1e6,
            color="red",
            linestyle=":",
            linewidth=0.8,
            label="1/3 of batch's passes",
        )
        ax.set_xlabel("rows processed (millions)")
        ax.set_ylabel("average log-likelihood per row (all rows)")
        if zoom:
            ax.set_ylim(final - 0.05, final + 0.01)
            ax.set_title("zoom: the last 0.05 nats")
        else:
            ax.set_title(f"{result['rows']:,} x {result['features']}, K={result['k']}, full")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict, facts: dict, command: str) -> str:
    b, o, t = result["batch"], result["online"], result["target"]
    reached = o["reachedWithinNatsAfterPasses"]
    lines = [
        f"# Online vs batch EM ({result['rows']:,} x {result['features']}, K={result['k']}, full covariance)",
        "",
        f"`{command}`",
        "",
        "| | data passes (rows / N) | final avgLogLik (all rows) | seconds |",
        "|---|---|---|---|",
        f"| batch EM (tol {b['tol']:g}) | {b['passes']} | {b['finalAvgLogLik']:.6f} | {b['seconds']:.1f} |",
        f"| online EM (fraction {o['miniBatchFraction']:g}, tau {o['learningOffset']:g}, kappa "
        f"{o['learningDecay']:g}) | {o['curve'][-1][0] / result['rows']:.2f} | {o['curve'][-1][1]:.6f} | "
        f"{o['secondsWithoutMeasurementPasses']:.1f} (without the measurement passes) |",
        "",
        f"Online EM within {t['nats']} nats/row of batch EM's final: "
        + ("never in this run" if reached is None else f"after {reached:.2f} passes' rows")
        + f"; target at most {t['maxPasses']:.2f} (a third of batch's {b['passes']}): "
        + ("MET" if t["met"] else "NOT MET"),
        "",
        "```",
        machine_lines(facts).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8_000_000)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--separation", type=float, default=6.0, help="as bench_gmm's cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--partitions", type=int, default=None, help="default: one per core")
    p.add_argument("--fraction", type=float, default=0.05, help="miniBatchFraction")
    p.add_argument("--offset", type=float, default=2.0, help="learningOffset (tau)")
    p.add_argument("--decay", type=float, default=0.6, help="learningDecay (kappa)")
    p.add_argument("--batch-tol", type=float, default=1e-5)
    p.add_argument("--batch-max-iter", type=int, default=300)
    p.add_argument("--eval-epochs", type=float, default=0.25, help="measure online EM every this many passes' rows")
    p.add_argument("--online-share", type=float, default=1.5, help="run online EM to this many times the target")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--out", default="bench/results/online_latest.md")
    args = p.parse_args(argv)

    facts = machine_facts()
    from pyspark.sql import SparkSession

    # a plain session, as a user builds it
    builder = SparkSession.builder.master(args.master).appName("em_spark-bench-online")
    for key, value in {"spark.ui.enabled": "false", "spark.driver.memory": args.driver_memory}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        result = run(spark, args)
    finally:
        spark.stop()
    facts["loadAfter"] = os.getloadavg()
    command = "python bench/bench_online.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    picture(result, png)
    text = table(result, facts, command.strip()) + f"\n![online vs batch EM]({png.name})\n"
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({**result, "machine": facts}, indent=1, default=str))
    print(text)
    log(f"wrote {out}, {out.with_suffix('.json')} and {png}")
    return 0 if result["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
