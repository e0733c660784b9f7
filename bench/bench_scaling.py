"""Scaling of em_spark's fit: rows (1M, 4M, 8M x 10, K=5, full) against cores (local[1], local[2]).

    python bench/bench_scaling.py [--cases 1m10 4m10 8m10] [--masters 'local[1]' 'local[2]'] \
        [--out bench/results/scaling_latest]

One run of ``bench_gmm.py --engines em_spark`` per master (a fresh process each: a session's
master cannot change), each over every case, so each cell is em_spark's time per iteration
(difference method) and its fixed cost (load, validate, fingerprint, sample, initialize) in a plain
session. Prints the rows-per-second per core and the machine's DGEMM GFLOP/s and load average,
and a paper estimate for 10 billion rows on 100 nodes from the measured per-row costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import log, machine_facts, machine_lines  # bench/common.py

HERE = Path(__file__).resolve().parent


def run_master(master: str, cases: list[str], out: Path, iters: int) -> dict:
    command = [sys.executable, str(HERE / "bench_gmm.py"), "--engines", "em_spark", "--master", master]
    command += [arg for case in cases for arg in ("--case", case)]
    command += ["--iters", str(iters), "--repeats", "2", "--out", str(out.with_suffix(".md"))]
    log(" ".join(command))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.with_suffix(".json").read_text())


def cores_of(master: str) -> int:
    inside = master[master.index("[") + 1 : master.index("]")]
    return (os.cpu_count() or 1) if inside == "*" else int(inside)


def estimate_10b(per_row_iter: float, per_row_fixed: float, cores_per_node: int = 16, nodes: int = 100) -> str:
    """Wall time for 10B rows over nodes x cores from the measured per-row, per-core costs."""
    rows_per_core = 10e9 / (nodes * cores_per_node)
    iteration = rows_per_core * per_row_iter
    fixed = rows_per_core * per_row_fixed
    return (
        f"10 billion rows on {nodes} nodes x {cores_per_node} cores: {rows_per_core / 1e6:.2f}M rows per core; "
        f"one iteration ≈ {iteration:.1f} s of E-step compute plus the per-job overhead (0.1-0.3 s measured here, "
        f"more with {nodes * cores_per_node} tasks), fixed cost ≈ {fixed:.0f} s; "
        f"100 iterations ≈ {(100 * iteration + fixed) / 60:.0f} min before per-job overhead"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["1m10", "4m10", "8m10"])
    p.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--out", default=str(HERE / "results" / "scaling_latest"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    runs = {}
    for master in args.masters:
        tag = master.replace("[", "").replace("]", "").replace("*", "all")
        runs[master] = run_master(master, args.cases, out.with_name(f"{out.name}_{tag}"), args.iters)
    facts["loadAfter"] = os.getloadavg()

    cells = {}
    for master, info in runs.items():
        for res in info["results"]:
            em = res["engines"][0]
            cells[(res["case"], master)] = (res["rows"], em["secondsPerIteration"], em["fixedSeconds"])
    lines = [
        f"em_spark scaling, full covariance, K=5, 10 features; `python bench/bench_scaling.py "
        f"--cases {' '.join(args.cases)} --masters {' '.join(args.masters)}`",
        "",
        "| rows | master | s / iteration | fixed s | M rows / s / core per iteration | speed-up over "
        f"{args.masters[0]} |",
        "|---|---|---|---|---|---|",
    ]
    for case in args.cases:
        first = cells[(case, args.masters[0])][1]
        for master in args.masters:
            rows, per_iter, fixed = cells[(case, master)]
            rate = rows / per_iter / cores_of(master) / 1e6 if per_iter else float("nan")
            lines.append(
                f"| {rows:,} | {master} | {per_iter:.3f} | {fixed:.1f} | {rate:.2f} | {first / per_iter:.2f}x |"
            )
    last_case, last_master = args.cases[-1], args.masters[-1]
    rows, per_iter, fixed = cells[(last_case, last_master)]
    cores = cores_of(last_master)
    lines += ["", estimate_10b(per_iter * cores / rows, fixed * cores / rows), "", machine_lines(facts)]
    text = "\n".join(lines)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"machine": facts, "cells": {f"{c}|{m}": v for (c, m), v in cells.items()}}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
