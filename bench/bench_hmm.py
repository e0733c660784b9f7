"""Time per Baum-Welch iteration: em_spark GaussianHMM / CategoricalHMM on Spark vs hmmlearn.

    python bench/bench_hmm.py [--case 10kx100] [--case 10kx100diag] [--case 10kx100cat] \
        [--master local[2]] [--iters 10] [--repeats 3] [--out bench/results/hmm_latest.md]

Method as bench/bench_gmm.py: every engine is fitted twice with tol=0 from the same initial
model, ``maxIter = A`` and ``maxIter = B = A + iters``; the time per iteration is
``(t_B - t_A) / (n_B - n_A)`` (load, block cache, start-up and bookkeeping cancel). Each
(A, B) pair is repeated ``--repeats`` times; the difference estimate uses the minimum time of
each (as bench_gmm) and the median of the repeats (the headline, for a busy machine). The
median and fastest per-iteration times of the B fits come from em_spark's
``summary.iterationSeconds`` and, for hmmlearn, from a convergence monitor that timestamps
every iteration. The log-likelihood of every iteration of
the two implementations' B fits is compared (same start, so they must agree to ~1e-10).

A third row, "em_spark kernel", runs em_spark's own E-step (``family.e_step``) on the whole
numpy data in this process with one BLAS thread, plus one driver M-step: the cost of the
numerical work alone, without Spark. It locates the time of a Spark iteration (see the
report).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import versions  # bench/common.py

logging.getLogger("hmmlearn").setLevel(logging.ERROR)

# hmmlearn's "Model is not converging" check uses eps ** 0.5; anything beyond this relative
# difference between em_spark's and hmmlearn's log-likelihood is reported as a disagreement.
AGREEMENT_RTOL = 1e-6
PLATFORM_HMMLEARN_SECONDS = 4.7  # PLATFORM.md: hmmlearn GaussianHMM 10k x 100, k=3, 2-d, full (scaling)
GOAL_SPEEDUP = 10.0


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "gaussian" or "categorical"
    sequences: int
    steps: int
    k: int
    covariance: str = "full"  # gaussian only
    seed: int = 42


# the true HMM the data are drawn from (k = 3; the tests' TRUE_* parameters)
TRUE_START = np.array([0.6, 0.3, 0.1])
TRUE_TRANS = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
TRUE_COVS = np.array([np.eye(2), [[1.0, 0.5], [0.5, 2.0]], 0.5 * np.eye(2)])
TRUE_EMISSION = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.05, 0.1, 0.5, 0.3, 0.05], [0.1, 0.1, 0.1, 0.2, 0.5]])

CASES = {
    "small": Case("small", "gaussian", 500, 100, 3, "full"),
    "10kx100": Case("10kx100", "gaussian", 10_000, 100, 3, "full"),
    "10kx100diag": Case("10kx100diag", "gaussian", 10_000, 100, 3, "diag"),
    "10kx100cat": Case("10kx100cat", "categorical", 10_000, 100, 3),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def describe(case: Case) -> str:
    if case.kind == "gaussian":
        return (
            f"{case.sequences:,} sequences x {case.steps} steps, GaussianHMM k={case.k}, d={TRUE_MEANS.shape[1]}, "
            f"{case.covariance} covariance"
            + (" (data from the full-covariance true HMM)" if case.covariance == "diag" else "")
        )
    return (
        f"{case.sequences:,} sequences x {case.steps} steps, CategoricalHMM k={case.k}, "
        f"{TRUE_EMISSION.shape[1]} symbols"
    )


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def true_model(case: Case):
    from hmmlearn import hmm as hl

    if case.kind == "gaussian":
        m = hl.GaussianHMM(case.k, covariance_type="full", init_params="")
        m.means_, m.covars_ = TRUE_MEANS.copy(), TRUE_COVS.copy()
    else:
        m = hl.CategoricalHMM(case.k, n_features=TRUE_EMISSION.shape[1], init_params="")
        m.emissionprob_ = TRUE_EMISSION.copy()
    m.startprob_, m.transmat_ = TRUE_START.copy(), TRUE_TRANS.copy()
    return m


_GENERATED: dict = {}


def generate(case: Case, generator: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(X, lengths, how): ``case.sequences`` sequences of ``case.steps`` steps from the true HMM.

    Cases of the same kind, size and seed share the data (the diag case fits the full case's
    data), drawn once per run.

    hmmlearn: one ``sample(steps)`` call per sequence, one seeded RandomState (exactly
    hmmlearn's generative process; ~70 s for 1M Gaussian steps: it draws one
    multivariate_normal per step). numpy: the same process vectorized across sequences."""
    key = (case.kind, case.sequences, case.steps, case.seed, generator)
    if key not in _GENERATED:
        _GENERATED[key] = _generate(case, generator)
    return _GENERATED[key]


def _generate(case: Case, generator: str) -> tuple[np.ndarray, np.ndarray, str]:
    n, T = case.sequences, case.steps
    lengths = np.full(n, T, dtype=np.int64)
    if generator == "hmmlearn":
        model, rs = true_model(case), np.random.RandomState(case.seed)
        X = np.concatenate([model.sample(T, random_state=rs)[0] for _ in range(n)])
        how = f"hmmlearn {type(model).__name__}.sample({T}) per sequence, RandomState({case.seed})"
    else:
        rng = np.random.default_rng(case.seed)

        def draw(p):
            u = rng.random(p.shape[0])[:, None]
            return np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)

        states = np.empty((n, T), dtype=np.int64)
        states[:, 0] = draw(np.tile(TRUE_START, (n, 1)))
        for t in range(1, T):
            states[:, t] = draw(TRUE_TRANS[states[:, t - 1]])
        states = states.ravel()
        if case.kind == "gaussian":
            chol = np.linalg.cholesky(TRUE_COVS)
            z = rng.standard_normal((states.size, TRUE_MEANS.shape[1]))
            X = TRUE_MEANS[states] + np.einsum("nij,nj->ni", chol[states], z)
        else:
            X = draw(TRUE_EMISSION[states])[:, None]
        how = f"numpy, vectorized across sequences, default_rng({case.seed})"
    if case.kind == "categorical":
        X = X.astype(np.int64)
    return np.ascontiguousarray(X), lengths, how


def write_parquet(X: np.ndarray, lengths: np.ndarray, directory: str) -> str:
    """One row per sequence: ``obs`` list<list<double>> (Gaussian) or list<int64> (symbols)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    if X.dtype.kind == "i":
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(X[:, 0]))
    else:
        n, d = X.shape
        steps = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(X.ravel()))
        column = pa.ListArray.from_arrays(pa.array(offsets), steps)
    pq.write_table(pa.table({"obs": column}), os.path.join(directory, "part-0.parquet"), row_group_size=2_000)
    return directory


def initial_model(X: np.ndarray, case: Case, seed: int, sample: int = 10_000) -> dict[str, np.ndarray]:
    """A shared starting point (em_spark's public names): startProb and transMat rows from a
    seeded Dirichlet(3) (not uniform, so the chain is exercised). Gaussian: k-means++ plus 5
    Lloyd steps on a 10k-step sample, per-cluster covariances (diagonals for diag).
    Categorical: emission rows from a seeded Dirichlet(3)."""
    rng = np.random.default_rng([seed, 2])
    k = case.k
    out = {"startProb": rng.dirichlet(np.full(k, 3.0)), "transMat": rng.dirichlet(np.full(k, 3.0), size=k)}
    if case.kind == "categorical":
        out["emissionProb"] = rng.dirichlet(np.full(TRUE_EMISSION.shape[1], 3.0), size=k)
        return out
    from sklearn.cluster import kmeans_plusplus

    S = X[np.sort(rng.choice(len(X), size=min(sample, len(X)), replace=False))]
    d = S.shape[1]
    centers, _ = kmeans_plusplus(S, k, random_state=seed)

    def labels():
        return ((S * S).sum(1)[:, None] - 2 * S @ centers.T + (centers * centers).sum(1)[None, :]).argmin(1)

    for _ in range(5):
        lab = labels()
        for j in range(k):
            if np.any(lab == j):
                centers[j] = S[lab == j].mean(0)
    lab = labels()
    overall = np.cov(S, rowvar=False, bias=True)
    covs = np.array(
        [np.cov(S[lab == j], rowvar=False, bias=True) if np.sum(lab == j) > 2 * d else overall for j in range(k)]
    )
    covs = 0.5 * (covs + covs.transpose(0, 2, 1)) + 1e-6 * np.eye(d)
    out["means"] = centers.copy()
    out["covariances"] = covs if case.covariance == "full" else np.einsum("kii->ki", covs).copy()
    return out


# ---------------------------------------------------------------------------
# Engines: each returns (seconds, iterations run, total loglik, extra)
# ---------------------------------------------------------------------------


def _timed_monitor(monitor):
    """hmmlearn's ConvergenceMonitor, also keeping every log-likelihood and a timestamp per iteration."""
    from hmmlearn.base import ConvergenceMonitor

    class TimedMonitor(ConvergenceMonitor):
        def _reset(self):
            super()._reset()
            self.all_history, self.stamps = [], [time.perf_counter()]

        def report(self, log_prob):
            super().report(log_prob)
            self.all_history.append(float(log_prob))
            self.stamps.append(time.perf_counter())

    return TimedMonitor(monitor.tol, monitor.n_iter, monitor.verbose)


def fit_hmmlearn(X, lengths, case: Case, max_iter: int, init, implementation: str):
    from hmmlearn import hmm as hl

    # tol=-inf: hmmlearn stops when the gain is < tol, and with tol=0 a rounding-level
    # decrease near convergence would end the fit early; em_spark's tol=0 never stops.
    common = dict(n_components=case.k, n_iter=max_iter, tol=-np.inf, init_params="", implementation=implementation)
    if case.kind == "gaussian":
        m = hl.GaussianHMM(covariance_type=case.covariance, params="stmc", covars_prior=0.0, min_covar=0.0, **common)
        m.means_, m.covars_ = init["means"].copy(), init["covariances"].copy()
    else:
        m = hl.CategoricalHMM(n_features=TRUE_EMISSION.shape[1], params="ste", **common)
        m.emissionprob_ = init["emissionProb"].copy()
    m.startprob_, m.transmat_ = init["startProb"].copy(), init["transMat"].copy()
    m.monitor_ = _timed_monitor(m.monitor_)
    started = time.perf_counter()
    m.fit(X, lengths)
    seconds = time.perf_counter() - started
    mon = m.monitor_
    extra = {
        "iterationSeconds": np.diff(mon.stamps).tolist(),
        "logLikelihoodHistory": list(mon.all_history),
        "params": _hmmlearn_params(m, case),
    }
    return seconds, int(mon.iter), float(mon.all_history[-1]), extra


def _hmmlearn_params(m, case: Case) -> dict[str, np.ndarray]:
    out = {"startProb": m.startprob_, "transMat": m.transmat_}
    if case.kind == "gaussian":
        out["means"] = m.means_
        out["covariances"] = m.covars_ if case.covariance == "full" else np.einsum("kii->ki", m.covars_)
    else:
        out["emissionProb"] = m.emissionprob_
    return {k: np.array(v) for k, v in out.items()}


def fit_em_spark(df, case: Case, max_iter: int, init, seed: int, partitions: int | None):
    from em_spark import CategoricalHMM, GaussianHMM

    common = dict(
        k=case.k,
        maxIter=max_iter,
        tol=0.0,
        seed=seed,
        featuresCol="obs",
        numPartitions=partitions,
        initialModel={key: np.array(v) for key, v in init.items()},
    )
    if case.kind == "gaussian":
        est = GaussianHMM(covarianceType=case.covariance, regCovar=0.0, **common)
    else:
        est = CategoricalHMM(nCategories=TRUE_EMISSION.shape[1], smoothing=0.0, **common)
    started = time.perf_counter()
    model = est.fit(df)
    seconds = time.perf_counter() - started
    s = model.summary
    n_seq = float(s.totalWeight)
    extra = {
        "iterationSeconds": list(s.iterationSeconds),
        "logLikelihoodHistory": [float(h) * n_seq for h in s.logLikelihoodHistory],
        "params": {key: np.array(v) for key, v in model.public_params().items()},
    }
    return seconds, int(s.numIter), float(s.logLikelihood), extra


def measure(name: str, fit, a: int, b: int, repeats: int) -> dict:
    """Warm-up fit (maxIter=a, untimed), then `repeats` x (fit a, fit b)."""
    log(f"  {name}: warm-up fit maxIter={a}")
    fit(a)
    runs = {a: [], b: []}
    last = {}
    per_iter_b = []
    for _ in range(repeats):
        for m in (a, b):
            seconds, n_iter, ll, extra = fit(m)
            runs[m].append(
                {"seconds": seconds, "numIter": n_iter, "logLik": ll, "iterationSeconds": extra["iterationSeconds"]}
            )
            last[m] = (n_iter, ll, extra)
            if m == b:
                per_iter_b.extend(extra["iterationSeconds"][1:])  # the first iteration is also the warm-up of the fit
            log(
                f"  {name}: maxIter={m} ran {n_iter} iterations in {seconds:.3f} s (loglik {ll:.6f}, "
                f"median iteration {statistics.median(extra['iterationSeconds']):.3f} s)"
            )
    n_a, n_b = last[a][0], last[b][0]
    out = {
        "engine": name,
        "maxIterA": a,
        "maxIterB": b,
        "runs": {str(k): v for k, v in runs.items()},
        "nA": n_a,
        "nB": n_b,
        "logLik": last[b][1],
        "extra": last[b][2],
    }
    for stat, f in (("min", min), ("median", statistics.median)):
        t_a, t_b = f(x["seconds"] for x in runs[a]), f(x["seconds"] for x in runs[b])
        per = (t_b - t_a) / (n_b - n_a) if n_b > n_a else None
        out[stat] = {
            "tA": t_a,
            "tB": t_b,
            "secondsPerIteration": per,
            "fixedSeconds": (t_a - n_a * per) if per is not None else None,
        }
    out["secondsPerIteration"] = out["min"]["secondsPerIteration"]
    out["medianIterationSeconds"] = statistics.median(per_iter_b) if per_iter_b else None
    out["fastestIterationSeconds"] = min(per_iter_b) if per_iter_b else None
    return out


def kernel_time(X, lengths, case: Case, init, repeats: int) -> dict:
    """em_spark's E-step on all the data in this process, one BLAS thread, and one M-step."""
    from threadpoolctl import threadpool_limits

    from em_spark.models import Block
    from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily

    if case.kind == "gaussian":
        family = GaussianHMMFamily(case.k, case.covariance, reg_covar=0.0)
    else:
        family = CategoricalHMMFamily(case.k, TRUE_EMISSION.shape[1])
    Xf = np.asarray(X, dtype=np.float64)
    block = Block(Xf, lengths=lengths)
    params = family.params_from_public({k: np.array(v) for k, v in init.items()}, Xf.shape[1])
    sample = Block(Xf[: 100 * case.steps], lengths=lengths[:100])
    e_times, m_times = [], []
    with threadpool_limits(1):
        for _ in range(repeats):
            started = time.perf_counter()
            stats = family.e_step(block, params)
            e_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            family.m_step(stats, params, sample, np.random.default_rng(0))
            m_times.append(time.perf_counter() - started)
    return {
        "eStepSeconds1Thread": min(e_times),
        "eStepRuns": e_times,
        "mStepSeconds": min(m_times),
        "logLik": float(stats.loglik),
    }


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------


def _max_rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if a.size else 0.0


def run_case(spark, case: Case, args) -> dict:
    a, b = args.base, args.base + args.iters
    log(f"case {case.name}: {describe(case)}")
    started = time.perf_counter()
    X, lengths, how = generate(case, args.generator)
    log(f"generated {len(X):,} steps in {time.perf_counter() - started:.1f} s ({how})")
    init = initial_model(X if case.kind == "gaussian" else None, case, args.seed)
    tmp = tempfile.mkdtemp(prefix=f"bench_hmm_{case.name}_", dir=args.tmpdir)
    try:
        write_parquet(X, lengths, tmp)

        log(f"em_spark kernel (one thread, no Spark, {args.repeats} runs)")
        try:
            kernel = kernel_time(X, lengths, case, init, args.repeats)
            log(f"  E-step {kernel['eStepSeconds1Thread']:.3f} s, M-step {kernel['mStepSeconds'] * 1e3:.1f} ms")
        except Exception as exc:  # the package is being edited concurrently: report, don't fail
            kernel = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  kernel timing failed: {kernel['error']}")

        log(f"hmmlearn ({args.hmmlearn_impl} implementation, one process, same numpy data)")
        hl = measure(
            "hmmlearn", lambda m, X=X: fit_hmmlearn(X, lengths, case, m, init, args.hmmlearn_impl), a, b, args.repeats
        )
        del X
        gc.collect()

        df = spark.read.parquet(tmp).repartition(args.partitions).select("obs").cache()
        started = time.perf_counter()
        count = df.count()
        cache_seconds = time.perf_counter() - started
        assert count == case.sequences, (count, case.sequences)
        log(f"cached DataFrame: {count:,} sequences, {df.rdd.getNumPartitions()} partitions ({cache_seconds:.1f} s)")
        try:
            log("em_spark")
            em = measure(
                "em_spark", lambda m: fit_em_spark(df, case, m, init, args.seed, args.em_partitions), a, b, args.repeats
            )
        finally:
            df.unpersist()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    em_hist, hl_hist = em["extra"]["logLikelihoodHistory"], hl["extra"]["logLikelihoodHistory"]
    if "logLik" in kernel:
        kernel["logLikRelDiffVsHmmlearn"] = abs(kernel["logLik"] - hl_hist[0]) / abs(hl_hist[0])
    agreement = {
        "iterations": [len(em_hist), len(hl_hist)],
        "logLikMaxRelDiff": _max_rel(em_hist, hl_hist),
        "finalLogLikRelDiff": abs(em["logLik"] - hl["logLik"]) / abs(hl["logLik"]),
        "params": {
            key: _max_rel(em["extra"]["params"][key], hl["extra"]["params"][key]) for key in hl["extra"]["params"]
        },
    }
    agreement["ok"] = bool(len(em_hist) == len(hl_hist) and agreement["logLikMaxRelDiff"] <= AGREEMENT_RTOL)
    log(
        f"log-likelihood after {len(em_hist)} iterations: em_spark {em['logLik']:.10g}, hmmlearn {hl['logLik']:.10g}; "
        f"max relative difference over all iterations {agreement['logLikMaxRelDiff']:.2e} "
        f"({'OK' if agreement['ok'] else 'DISAGREE'} at rtol {AGREEMENT_RTOL:g})"
    )
    for r in (em, hl):
        r["extra"]["params"] = {k: v.tolist() for k, v in r["extra"]["params"].items()}
    return {
        "case": case.name,
        "kind": case.kind,
        "sequences": case.sequences,
        "steps": case.steps,
        "k": case.k,
        "covariance": case.covariance if case.kind == "gaussian" else None,
        "description": describe(case),
        "dataSeed": case.seed,
        "generator": how,
        "partitions": args.partitions,
        "cacheSeconds": cache_seconds,
        "initialModel": {k: v.tolist() for k, v in init.items()},
        "agreement": agreement,
        "kernel": kernel,
        "engines": [em, hl],
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _fmt(x, spec=".3f", none="n/a"):
    return none if x is None else format(x, spec)


def _ratio(num, den) -> str:
    return f"{num / den:.1f}x" if num and den and den > 0 and num > 0 else "n/a"


def table(results: list[dict]) -> str:
    lines = [
        "| engine | case | s/iteration (difference, median of repeats) | s/iteration (difference, min) "
        "| median iteration s | fastest iteration s | speedup vs hmmlearn (difference, median) "
        "| speedup vs hmmlearn (median iteration) | loglik (B fit) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        em, hl = res["engines"]
        base_diff, base_it = hl["median"]["secondsPerIteration"], hl["medianIterationSeconds"]
        for r in (em, hl):
            mn, md = r["min"], r["median"]
            notes = [f"fits (median of repeats): {r['nA']} it {md['tA']:.2f} s, {r['nB']} it {md['tB']:.2f} s"]
            if md["fixedSeconds"] is not None:
                notes.append(f"fixed ≈ {md['fixedSeconds']:.1f} s")
            if r is em:
                ag = res["agreement"]
                notes.append(
                    f"same init as hmmlearn; loglik of all {ag['iterations'][0]} iterations within "
                    f"{ag['logLikMaxRelDiff']:.1e} relative ({'OK' if ag['ok'] else '**DISAGREE**'}), "
                    f"parameters within {max(ag['params'].values()):.1e}"
                )
            else:
                notes.append("same init; one process")
            lines.append(
                f"| {r['engine']} | {res['case']} | {_fmt(md['secondsPerIteration'])} | {_fmt(mn['secondsPerIteration'])} | "
                f"{_fmt(r['medianIterationSeconds'])} | {_fmt(r['fastestIterationSeconds'])} | "
                f"{'1.00x' if r is hl else _ratio(base_diff, md['secondsPerIteration'])} | "
                f"{'1.00x' if r is hl else _ratio(base_it, r['medianIterationSeconds'])} | "
                f"{r['logLik']:.6f} | {'; '.join(notes)} |"
            )
        kern = res["kernel"]
        if "error" in kern:
            lines.append(f"| em_spark kernel (no Spark) | {res['case']} | n/a | | | | | | | failed: {kern['error']} |")
        else:
            one = kern["eStepSeconds1Thread"] + kern["mStepSeconds"]
            ideal = kern["eStepSeconds1Thread"] / 2 + kern["mStepSeconds"]
            lines.append(
                f"| em_spark kernel (no Spark) | {res['case']} | {one:.3f} | | | | {_ratio(base_diff, one)} | "
                f"{_ratio(base_it, one)} | | "
                f"E-step on all data in this process, 1 thread, best of {len(kern['eStepRuns'])}: "
                f"{kern['eStepSeconds1Thread']:.3f} s (loglik at the initial model within "
                f"{kern['logLikRelDiffVsHmmlearn']:.1e} of hmmlearn's first iteration); driver M-step "
                f"{kern['mStepSeconds'] * 1e3:.1f} ms; perfectly split over 2 cores ≈ {ideal:.3f} s/iteration "
                f"({_ratio(base_it, ideal)} hmmlearn's median iteration) |"
            )
    return "\n".join(lines)


def goal_lines(results: list[dict]) -> list[str]:
    out = [f"Goal: ≥ {GOAL_SPEEDUP:.0f}x hmmlearn per iteration on local[2]."]
    for res in results:
        em, hl = res["engines"]
        d_em, d_hl = em["median"]["secondsPerIteration"], hl["median"]["secondsPerIteration"]
        i_em, i_hl = em["medianIterationSeconds"], hl["medianIterationSeconds"]
        f_em, f_hl = em["fastestIterationSeconds"], hl["fastestIterationSeconds"]
        speeds = [x for x in (d_hl / d_em if d_em and d_hl else None, i_hl / i_em if i_em else None) if x]
        met = (
            "met"
            if speeds and min(speeds) >= GOAL_SPEEDUP
            else ("not met" if speeds and max(speeds) < GOAL_SPEEDUP else "borderline (the two estimates disagree)")
        )
        line = (
            f"- {res['case']}: {_ratio(d_hl, d_em)} by difference (medians), {_ratio(i_hl, i_em)} by median "
            f"iteration, {_ratio(f_hl, f_em)} fastest iteration vs fastest iteration: **{met}**"
        )
        if res["kind"] == "gaussian" and res["covariance"] == "full":
            line += (
                f"; against PLATFORM.md's {PLATFORM_HMMLEARN_SECONDS} s/iteration for hmmlearn: "
                f"{_ratio(PLATFORM_HMMLEARN_SECONDS, d_em)} (difference), {_ratio(PLATFORM_HMMLEARN_SECONDS, i_em)} "
                "(median iteration)"
            )
        out.append(line)
    return out


def nproc() -> int:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:
        return len(os.sched_getaffinity(0))


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: 10kx100")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--iters", type=int, default=10, help="B - A: extra iterations of the long fit (default 10)")
    p.add_argument("--base", type=int, default=2, help="A: maxIter of the short fit (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="(A, B) fit pairs per engine (default 1)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the cached input DataFrame (default 4)")
    p.add_argument(
        "--em-partitions",
        type=int,
        default=None,
        help="em_spark numPartitions (default: em_spark's own default, one partition per core)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shared initial model and of em_spark")
    p.add_argument(
        "--generator",
        choices=["hmmlearn", "numpy"],
        default="hmmlearn",
        help="hmmlearn: model.sample per sequence (~70 s for 1M Gaussian steps); numpy: same process, vectorized",
    )
    p.add_argument(
        "--hmmlearn-impl",
        choices=["scaling", "log"],
        default="scaling",
        help="hmmlearn's forward-backward implementation (default scaling, its faster one)",
    )
    p.add_argument(
        "--hmmlearn-threads",
        type=int,
        default=1,
        help="BLAS threads of this process, where hmmlearn runs (default 1; 0 = leave OpenBLAS's default, all "
        "cores). hmmlearn is single-threaded C plus small per-sequence scipy/BLAS calls (solve_triangular "
        "on 100 x 2 arrays) that multi-threaded OpenBLAS makes many times slower, on a busy machine "
        "10x and more",
    )
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--tmpdir", default=None, help="where the temporary Parquet goes (default: system temp)")
    p.add_argument("--out", default="bench/results/hmm_latest.md")
    args = p.parse_args(argv)
    cases = [CASES[c] for c in (args.case or ["10kx100"])]
    if args.iters < 1 or args.base < 1 or args.repeats < 1:
        p.error("--iters, --base and --repeats must be >= 1")
    if args.hmmlearn_threads:
        # threadpoolctl limits only the libraries already loaded: scipy (hmmlearn's solve_triangular)
        # ships its own OpenBLAS, so load hmmlearn, scipy.linalg and scikit-learn first.
        import hmmlearn.hmm  # noqa: F401
        import scipy.linalg  # noqa: F401
        import sklearn.cluster  # noqa: F401
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(args.hmmlearn_threads)  # the driver only: em_spark's work runs in Spark's workers
        log(
            "BLAS threads in this process: "
            + ", ".join(
                f"{i.get('internal_api')} {os.path.basename(i.get('filepath', ''))} {i.get('num_threads')}"
                for i in threadpool_info()
            )
        )

    from em_spark.engine.session import get_session

    load_before = loadavg()
    conf = {"spark.ui.enabled": "false", "spark.driver.memory": args.driver_memory}
    spark = get_session("em_spark-bench-hmm", args.master, conf)
    spark.sparkContext.setLogLevel("WARN")
    sc = spark.sparkContext
    jvm_max = int(sc._jvm.java.lang.Runtime.getRuntime().maxMemory())
    log(
        f"Spark {spark.version} master={sc.master} defaultParallelism={sc.defaultParallelism} "
        f"driver heap max {jvm_max / 2**30:.1f} GiB; load average {load_before}"
    )
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    results = []
    try:
        for case in cases:
            results.append(run_case(spark, case, args))
    finally:
        spark.stop()
    load_after = loadavg()
    wall = time.perf_counter() - t0

    command = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv])
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: i.get(k) for k in ("internal_api", "filepath", "version", "num_threads", "threading_layer")}
            for i in threadpool_info()
        ]
    except Exception:
        blas = None
    info = {
        "command": command,
        "cwd": os.getcwd(),
        "started": started.isoformat(timespec="seconds"),
        "wallSeconds": wall,
        "loadAverage": {"before": load_before, "after": load_after},
        "env": {
            k: os.environ.get(k)
            for k in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        },
        "host": {"nproc": nproc(), "platform": platform.platform(), "machine": platform.machine()},
        "versions": versions("hmmlearn"),
        "driverBlas": blas,
        "spark": {"master": args.master, "conf": conf, "driverHeapMaxBytes": jvm_max},
        "method": {
            "maxIterA": args.base,
            "maxIterB": args.base + args.iters,
            "repeats": args.repeats,
            "tol": "em_spark 0, hmmlearn -inf (never stops early)",
            "regCovar": 0.0,
            "hmmlearn": {
                "implementation": args.hmmlearn_impl,
                "covars_prior": 0.0,
                "min_covar": 0.0,
                "init_params": "",
                "blasThreads": args.hmmlearn_threads or "OpenBLAS default (all cores)",
            },
            "agreementRtol": AGREEMENT_RTOL,
            "generator": args.generator,
        },
        "platformReference": {"hmmlearnSecondsPerIteration": PLATFORM_HMMLEARN_SECONDS, "goalSpeedup": GOAL_SPEEDUP},
        "results": results,
    }
    v = info["versions"]
    header = [
        f"# HMM time per Baum-Welch iteration ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"- command: `{command}`",
        f"- master {args.master}, input DataFrame {args.partitions} partitions, em_spark numPartitions "
        f"{args.em_partitions or 'default'}, nproc {info['host']['nproc']}, driver heap {jvm_max / 2**30:.1f} GiB; "
        f"load average (1/5/15 min) {load_before} before, {load_after} after; total {wall / 60:.1f} min",
        f"- pyspark {v['pyspark']}, numpy {v['numpy']}, hmmlearn {v['hmmlearn']}, em_spark {v['em_spark']}, "
        f"python {v['python']}, {v['java']}",
        f"- method: each engine fitted with maxIter={args.base} and {args.base + args.iters} (after one untimed "
        f"warm-up fit; {args.repeats} repeat(s)); s/iteration = (t_B - t_A) / (n_B - n_A) with the median and with the "
        "min time of each over the repeats; median / fastest iteration s = median / min of the per-iteration times of "
        "all B fits (first iteration of each fit left out): em_spark `summary.iterationSeconds` (E-step job + driver "
        "M-step), hmmlearn a monitor that timestamps every iteration",
        f"- both start from the same initial model; em_spark regCovar=0, tol=0; hmmlearn {args.hmmlearn_impl} "
        'implementation, init_params="", covars_prior=0, min_covar=0, tol=-inf (never stops early), '
        f"BLAS threads in its process {args.hmmlearn_threads or 'OpenBLAS default (all cores)'}; loglik = total log-likelihood of the "
        "last E-step, as hmmlearn's monitor reports it",
        f"- reference: PLATFORM.md quotes hmmlearn at {PLATFORM_HMMLEARN_SECONDS} s/iteration (scaling) for 10k x 100, "
        f"k=3, 2-d, full; goal ≥ {GOAL_SPEEDUP:.0f}x on local[2]",
        "",
    ]
    for res in results:
        header.append(f"- {res['case']}: {res['description']}; data: {res['generator']}")
    text = "\n".join(header) + "\n\n" + table(results) + "\n\n" + "\n".join(goal_lines(results)) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
