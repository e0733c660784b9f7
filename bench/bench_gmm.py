"""Time per EM iteration: em_spark vs pyspark.ml vs scikit-learn (full-covariance Gaussian mixtures).

    python bench/bench_gmm.py --case 1m10 --case 200k50 [--master local[2]] [--iters 10] \
        [--engines em_spark,pyspark.ml,scikit-learn] [--out bench/results/latest.md]

The estimators run in a plain ``SparkSession.builder.master(...).getOrCreate()`` session, as a
user builds it (only the UI is off and the driver heap set); the machine's DGEMM GFLOP/s, load
average and versions are printed with the table.

Every engine is fitted twice with ``tol=0``: ``maxIter = A`` and ``maxIter = B = A + iters``.
The time per iteration is ``(t_B - t_A) / (n_B - n_A)`` where ``n`` is the number of
iterations each fit actually ran: start-up, caching, initialization and the final
bookkeeping of a fit cancel out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import machine_facts, machine_lines, versions  # bench/common.py

# pyspark.ml adds MLUtils.EPSILON (the float64 machine epsilon) to every weighted density.
# When all K densities of a row underflow, that row contributes log(K * EPSILON).
SPARK_EPSILON = float(np.finfo(np.float64).eps)
# A pyspark.ml result whose average log-likelihood is within this many nats of the
# log(K * EPSILON) floor is reported as degenerate.
FLOOR_MARGIN = 0.01
# make_blobs builds an (n, d, d) temporary; above this size rows are drawn in chunks instead.
MAX_BLOBS_TEMP_BYTES = 1 << 30
REG_COVAR = 1e-6  # scikit-learn's and em_spark's default; pyspark.ml has none
ENGINES = ("em_spark", "pyspark.ml", "scikit-learn")


@dataclass(frozen=True)
class Case:
    name: str
    rows: int
    features: int
    k: int
    separation: float
    seed: int = 42


CASES = {
    "small": Case("small", 20_000, 5, 3, 6.0),
    "1m10": Case("1m10", 1_000_000, 10, 5, 6.0),
    "4m10": Case("4m10", 4_000_000, 10, 5, 6.0),
    "8m10": Case("8m10", 8_000_000, 10, 5, 6.0),
    # make_blobs draws means with scale `separation` per coordinate: in 50 dimensions the
    # components are tens of standard deviations apart. pyspark.ml's linear-space densities
    # underflow here (PLATFORM.md, "Known failure of the anchor").
    "200k50": Case("200k50", 200_000, 50, 8, 6.0),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def generate(case: Case) -> tuple[np.ndarray, str]:
    """(X, how) for the case: make_blobs, or make_blobs' mixture sampled in chunks when
    make_blobs' (n, d, d) temporary would be large (200k x 50: 4 GB)."""
    from em_spark.app.demo_data import make_blobs

    n, d, k = case.rows, case.features, case.k
    if n * d * d * 8 <= MAX_BLOBS_TEMP_BYTES:
        X, _, _ = make_blobs(n, d, k, case.separation, case.seed)
        return np.ascontiguousarray(X), "make_blobs"
    # make_blobs draws weights, means and covariances before any row, so a 1-row call
    # gives exactly the mixture of the full call; rows are then drawn chunk by chunk.
    _, _, truth = make_blobs(1, d, k, case.separation, case.seed)
    rng = np.random.default_rng([case.seed, 1])
    chol = np.linalg.cholesky(truth["covariances"])
    labels = rng.choice(k, size=n, p=truth["weights"])
    X = np.empty((n, d))
    chunk = 65_536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        z = rng.standard_normal((stop - start, d))
        lab = labels[start:stop]
        out = X[start:stop]
        for j in range(k):
            idx = lab == j
            out[idx] = truth["means"][j] + z[idx] @ chol[j].T
    return X, "make_blobs mixture (same weights/means/covariances), rows drawn in 64k chunks"


def write_parquet(X: np.ndarray, directory: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(directory, "part-0.parquet")
    schema = pa.schema([(f"x{j}", pa.float64()) for j in range(X.shape[1])])
    with pq.ParquetWriter(path, schema) as writer:
        step = 262_144
        for start in range(0, len(X), step):
            block = X[start : start + step]
            writer.write_table(
                pa.table({f"x{j}": np.ascontiguousarray(block[:, j]) for j in range(X.shape[1])}, schema=schema)
            )
    return directory


def initial_params(X: np.ndarray, k: int, seed: int, sample: int = 10_000) -> dict[str, np.ndarray]:
    """A shared starting point: k-means++ plus 5 Lloyd steps on a 10k-row sample, then
    cluster weights, means and covariances (+ REG_COVAR on the diagonal)."""
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng([seed, 2])
    S = X[np.sort(rng.choice(len(X), size=min(sample, len(X)), replace=False))]
    n, d = S.shape
    centers, _ = kmeans_plusplus(S, k, random_state=seed)
    for _ in range(5):
        dist = (S * S).sum(1)[:, None] - 2 * S @ centers.T + (centers * centers).sum(1)[None, :]
        lab = dist.argmin(1)
        for j in range(k):
            if np.any(lab == j):
                centers[j] = S[lab == j].mean(0)
    dist = (S * S).sum(1)[:, None] - 2 * S @ centers.T + (centers * centers).sum(1)[None, :]
    lab = dist.argmin(1)
    counts = np.bincount(lab, minlength=k).astype(float)
    weights = (counts + 1.0) / (n + k)
    weights /= weights.sum()
    overall = np.cov(S, rowvar=False, bias=True)
    covs = np.empty((k, d, d))
    for j in range(k):
        rows = S[lab == j]
        covs[j] = np.cov(rows, rowvar=False, bias=True) if len(rows) > 2 * d else overall
        covs[j] = 0.5 * (covs[j] + covs[j].T) + REG_COVAR * np.eye(d)
    return {"weights": weights, "means": centers.copy(), "covariances": covs}


# ---------------------------------------------------------------------------
# Engines: each returns (seconds, iterations actually run, avg loglik per sample, extra)
# ---------------------------------------------------------------------------


def fit_sklearn(X, case: Case, max_iter: int, init, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(
        n_components=case.k,
        covariance_type="full",
        tol=0.0,
        max_iter=max_iter,
        reg_covar=REG_COVAR,
        n_init=1,
        random_state=seed,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=np.linalg.inv(init["covariances"]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        gm.fit(X)
        seconds = time.perf_counter() - started
    return seconds, int(gm.n_iter_), float(gm.lower_bound_), {"means": gm.means_, "weights": gm.weights_}


def fit_em_spark(df, case: Case, max_iter: int, init, seed: int, partitions: int):
    from em_spark import GaussianMixture

    gm = GaussianMixture(
        k=case.k,
        covarianceType="full",
        maxIter=max_iter,
        tol=0.0,
        seed=seed,
        featuresCol="features",
        initialModel={key: np.array(v) for key, v in init.items()},
        numPartitions=partitions,
    )
    started = time.perf_counter()
    model = gm.fit(df)
    seconds = time.perf_counter() - started
    s = model.summary
    return (
        seconds,
        int(s.numIter),
        float(s.averageLogLikelihood),
        {
            "iterationSeconds": list(s.iterationSeconds),
            "means": model.means,
            "weights": model.weights,
        },
    )


def fit_pyspark_ml(df, case: Case, max_iter: int, seed: int):
    from pyspark.ml.clustering import GaussianMixture

    gm = GaussianMixture(k=case.k, maxIter=max_iter, tol=0.0, seed=seed, featuresCol="features")
    started = time.perf_counter()
    model = gm.fit(df)
    seconds = time.perf_counter() - started
    s = model.summary
    return seconds, int(s.numIter), float(s.logLikelihood) / case.rows, {"logLikelihoodTotal": float(s.logLikelihood)}


def measure(name: str, fit, a: int, b: int, repeats: int) -> dict:
    """Warm-up fit (maxIter=a, untimed), then `repeats` x (fit a, fit b); min time per maxIter."""
    log(f"  {name}: warm-up fit maxIter={a}")
    fit(a)
    runs = {a: [], b: []}
    last = {}
    for _ in range(repeats):
        for m in (a, b):
            seconds, n_iter, avg_ll, extra = fit(m)
            runs[m].append({"seconds": seconds, "numIter": n_iter, "avgLogLik": avg_ll})
            last[m] = (n_iter, avg_ll, extra)
            log(f"  {name}: maxIter={m} ran {n_iter} iterations in {seconds:.3f} s (avg loglik {avg_ll:.6f})")
    t_a = min(x["seconds"] for x in runs[a])
    t_b = min(x["seconds"] for x in runs[b])
    n_a, n_b = last[a][0], last[b][0]
    per_iter = (t_b - t_a) / (n_b - n_a) if n_b > n_a else None
    return {
        "engine": name,
        "maxIterA": a,
        "maxIterB": b,
        "runs": {str(k): v for k, v in runs.items()},
        "tA": t_a,
        "tB": t_b,
        "nA": n_a,
        "nB": n_b,
        "secondsPerIteration": per_iter,
        "fixedSeconds": (t_a - n_a * per_iter) if per_iter is not None else None,
        "avgLogLik": last[b][1],
        "extra": last[b][2],
    }


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------


def run_case(spark, case: Case, args) -> dict:
    from pyspark.ml.feature import VectorAssembler

    a, b = args.base, args.base + args.iters
    log(f"case {case.name}: {case.rows:,} rows x {case.features} features, K={case.k}, separation={case.separation}")
    X, how = generate(case)
    tmp = tempfile.mkdtemp(prefix=f"bench_gmm_{case.name}_", dir=args.tmpdir)
    engines: dict[str, dict] = {}
    try:
        write_parquet(X, tmp)
        init = initial_params(X, case.k, args.seed)

        if "scikit-learn" in args.engines:
            log("scikit-learn (one process, same numpy data)")
            engines["scikit-learn"] = measure(
                "scikit-learn", lambda m, X=X: fit_sklearn(X, case, m, init, args.seed), a, b, args.repeats
            )
        del X  # the Spark engines read the Parquet copy; nothing big stays on the driver
        gc.collect()

        raw = spark.read.parquet(tmp)
        cols = [f"x{j}" for j in range(case.features)]
        df = (
            VectorAssembler(inputCols=cols, outputCol="features")
            .transform(raw.repartition(args.partitions))
            .select("features")
            .cache()
        )
        started = time.perf_counter()
        count = df.count()
        cache_seconds = time.perf_counter() - started
        assert count == case.rows, (count, case.rows)
        log(f"cached DataFrame: {count:,} rows, {df.rdd.getNumPartitions()} partitions ({cache_seconds:.1f} s)")
        try:
            if "em_spark" in args.engines:
                log("em_spark")
                engines["em_spark"] = measure(
                    "em_spark",
                    lambda m: fit_em_spark(df, case, m, init, args.seed, args.em_partitions),
                    a,
                    b,
                    args.repeats,
                )
            if "pyspark.ml" in args.engines:
                log("pyspark.ml")
                engines["pyspark.ml"] = measure(
                    "pyspark.ml", lambda m: fit_pyspark_ml(df, case, m, args.seed), a, b, args.repeats
                )
        finally:
            df.unpersist()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ml, em, sk = (engines.get(name) for name in ("pyspark.ml", "em_spark", "scikit-learn"))
    if ml is not None:
        floor = math.log(case.k * SPARK_EPSILON)
        ml["logLikFloor"] = floor
        ml["degenerate"] = bool(ml["avgLogLik"] - floor < FLOOR_MARGIN or ml["nB"] < b)
        ml["nearFloor"] = bool(ml["avgLogLik"] - floor < FLOOR_MARGIN)
    if em is not None:
        em_it = em["extra"]["iterationSeconds"]
        em["medianIterationSeconds"] = statistics.median(em_it) if em_it else None
        if sk is not None:
            em["diffVsSklearn"] = {
                "avgLogLik": abs(em["avgLogLik"] - sk["avgLogLik"]),
                "means": float(np.max(np.abs(em["extra"]["means"] - sk["extra"]["means"]))),
                "weights": float(np.max(np.abs(em["extra"]["weights"] - sk["extra"]["weights"]))),
            }
    for r in engines.values():
        r["extra"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r["extra"].items()}
    return {
        "case": case.name,
        "rows": case.rows,
        "features": case.features,
        "k": case.k,
        "separation": case.separation,
        "dataSeed": case.seed,
        "generator": how,
        "partitions": args.partitions,
        "cacheSeconds": cache_seconds,
        "initialParams": {k: v.tolist() for k, v in init.items()},
        "engines": [r for r in (em, ml, sk) if r is not None],
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _fmt(x, spec=".3f", none="n/a"):
    return none if x is None else format(x, spec)


def table(results: list[dict]) -> str:
    lines = [
        "| engine | case | s/iteration (difference) | em_spark median iteration s | speedup vs pyspark.ml | avg loglik | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        by_name = {r["engine"]: r for r in res["engines"]}
        ml = by_name.get("pyspark.ml")
        base = ml["secondsPerIteration"] if ml is not None and not ml["degenerate"] else None
        for r in res["engines"]:
            em = by_name.get("em_spark")
            sk = by_name.get("scikit-learn")
            per = r["secondsPerIteration"]
            speed = "1.00x" if r is ml and base else (f"{base / per:.2f}x" if base and per else "n/a")
            notes = [f"fits: {r['nA']} it {r['tA']:.2f} s, {r['nB']} it {r['tB']:.2f} s"]
            if r["fixedSeconds"] is not None:
                notes.append(f"fixed ≈ {r['fixedSeconds']:.1f} s")
            if r is em and "diffVsSklearn" in r:
                d = r["diffVsSklearn"]
                notes.append(
                    f"same init as sklearn; avg loglik differs by {d['avgLogLik']:.1e}, means by up to {d['means']:.1e}"
                )
            if r is sk:
                notes.append("same init; one process, BLAS threads = all cores")
            if r is ml:
                notes.append("own random init (no initialModel in spark.ml)")
                if r["degenerate"]:
                    why = []
                    if r["nB"] < r["maxIterB"]:
                        why.append(f"stopped after {r['nB']} of {r['maxIterB']} iterations")
                    if r["nearFloor"]:
                        why.append(f"avg loglik at the floor log(K·2.2e-16) = {r['logLikFloor']:.4f}")
                    notes.append("**DEGENERATE**: " + "; ".join(why))
                else:
                    notes.append(f"not degenerate (floor {r['logLikFloor']:.2f})")
                if per is None:
                    notes.append("per-iteration time undefined: both fits ran the same number of iterations")
            lines.append(
                f"| {r['engine']} | {res['case']} | {_fmt(per)} | "
                f"{_fmt(r.get('medianIterationSeconds')) if r is em else ''} | {speed} | "
                f"{r['avgLogLik']:.6f} | {'; '.join(notes)} |"
            )
    return "\n".join(lines)


def nproc() -> int:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:
        return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: small")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--iters", type=int, default=10, help="B - A: extra iterations of the long fit (default 10)")
    p.add_argument("--base", type=int, default=2, help="A: maxIter of the short fit (default 2)")
    p.add_argument(
        "--repeats", type=int, default=1, help="(A, B) fit pairs per engine; the minimum time of each is used"
    )
    p.add_argument(
        "--partitions", type=int, default=4, help="partitions of the cached input DataFrame (both engines read it)"
    )
    p.add_argument(
        "--em-partitions",
        type=int,
        default=None,
        help="em_spark numPartitions (default: em_spark's own default, one partition per core)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shared initial model and of pyspark.ml's init")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated subset of {','.join(ENGINES)} (default: all; e.g. leave scikit-learn out at 8M rows)",
    )
    p.add_argument("--tmpdir", default=None, help="where the temporary Parquet copy goes (default: system temp)")
    p.add_argument("--out", default="bench/results/latest.md")
    args = p.parse_args(argv)
    cases = [CASES[c] for c in (args.case or ["small"])]
    if args.iters < 1 or args.base < 1 or args.repeats < 1:
        p.error("--iters, --base and --repeats must be >= 1")
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown or not args.engines:
        p.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")

    facts = machine_facts()
    from pyspark.sql import SparkSession

    # a plain session, as a user builds it: whatever em_spark needs for speed it sets up itself
    conf = {"spark.ui.enabled": "false", "spark.driver.memory": args.driver_memory}
    builder = SparkSession.builder.master(args.master).appName("em_spark-bench")
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    sc = spark.sparkContext
    jvm_max = int(sc._jvm.java.lang.Runtime.getRuntime().maxMemory())
    log(
        f"Spark {spark.version} master={sc.master} defaultParallelism={sc.defaultParallelism} "
        f"driver heap max {jvm_max / 2**30:.1f} GiB"
    )
    started = _dt.datetime.now(_dt.timezone.utc)
    results = []
    try:
        for case in cases:
            results.append(run_case(spark, case, args))
    finally:
        spark.stop()
    facts["loadAfter"] = os.getloadavg()

    command = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv])
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: i.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
            for i in threadpool_info()
        ]
    except Exception:
        blas = None
    info = {
        "command": command,
        "cwd": os.getcwd(),
        "started": started.isoformat(timespec="seconds"),
        "host": {"nproc": nproc(), "platform": platform.platform(), "machine": platform.machine()},
        "versions": versions("sklearn"),
        "driverBlas": blas,
        "spark": {"master": args.master, "conf": conf, "driverHeapMaxBytes": jvm_max},
        "method": {
            "maxIterA": args.base,
            "maxIterB": args.base + args.iters,
            "repeats": args.repeats,
            "tol": 0.0,
            "regCovar(sklearn, em_spark)": REG_COVAR,
            "sparkEpsilon": SPARK_EPSILON,
            "floorMargin": FLOOR_MARGIN,
        },
        "machine": facts,
        "results": results,
    }
    v = info["versions"]
    header = [
        f"# GMM time per EM iteration ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"- command: `{command}`",
        f"- master {args.master}, input DataFrame {args.partitions} partitions, em_spark numPartitions "
        f"{args.em_partitions or 'default'}, nproc {info['host']['nproc']}, "
        f"driver heap {jvm_max / 2**30:.1f} GiB",
        f"- pyspark {v['pyspark']}, numpy {v['numpy']}, scikit-learn {v['sklearn']}, em_spark {v['em_spark']}, "
        f"python {v['python']}, {v['java']}",
        f"- method: each engine fitted with tol=0 and maxIter={args.base} and {args.base + args.iters} "
        f"(after one untimed warm-up fit; min of {args.repeats} repeat(s)); s/iteration = (t_B - t_A) / (n_B - n_A)",
        "- em_spark and scikit-learn start from the same initial model; pyspark.ml cannot take one and starts "
        "from its own random initialization, so its log-likelihood is not comparable point for point",
        *("- " + line for line in machine_lines(facts).splitlines()[:2]),
        "",
    ]
    for res in results:
        header.append(
            f"- {res['case']}: {res['rows']:,} x {res['features']}, K={res['k']}, "
            f"separation {res['separation']}, data: {res['generator']}"
        )
    text = "\n".join(header) + "\n\n" + table(results) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
