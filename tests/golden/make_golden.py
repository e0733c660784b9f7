"""Golden fits: fixed small problems for every family, on the numpy path and through Spark.

Run at a commit whose numerics are the reference, to (re)write ``tests/golden/*.npz``::

    SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=.venv/bin/python .venv/bin/python tests/golden/make_golden.py

The last bits of a fit depend on the CPU: numpy picks its SIMD kernels (exp, log, sums) and
OpenBLAS its GEMM kernels by the instruction sets it finds, so the same code gives fits that
differ by rounding on another processor. ``--machine`` records the fits for this machine's
numeric signature (:func:`machine_signature`) under ``machines/<signature>/`` instead; the test
reads the recording of the machine it runs on, and compares with the default recording within
a rounding tolerance where there is none.

Each case stores its inputs (so the data never depend on a generator that may change),
every fitted parameter array, the log-likelihood history and a few outputs of ``score``
(and ``impute``) under the fitted parameters. ``tests/test_golden_fits.py`` refits from the
stored inputs and asserts every array is bit-identical: a refactoring that moves code must
not change a single bit of any fit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# inputs (generated once, then stored with the golden outputs)


def _blobs(rng, n, d, k, separation=4.0):
    means = rng.normal(scale=separation, size=(k, d))
    labels = rng.integers(0, k, size=n)
    A = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(d)
    z = rng.standard_normal((n, d))
    return means[labels] + np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[labels], z), labels


def _chain(rng, lengths, k):
    start = rng.dirichlet(np.full(k, 5.0))
    trans = rng.dirichlet(np.ones(k), size=k) * 0.3 + np.eye(k) * 0.7
    states = []
    for L in lengths:
        s = [rng.choice(k, p=start)]
        for _ in range(int(L) - 1):
            s.append(rng.choice(k, p=trans[s[-1]]))
        states.extend(s)
    return np.array(states)


def make_inputs() -> dict[str, dict[str, np.ndarray]]:
    """name -> arrays: X (n, d), optional w (n,), labels (n,), lengths (n_seq,)."""
    rng = np.random.default_rng(20240601)
    out: dict[str, dict[str, np.ndarray]] = {}
    X, truth = _blobs(rng, 800, 3, 3)
    out["blobs"] = {
        "X": X,
        "w": rng.uniform(0.2, 2.0, size=800),
        "labels": np.where(np.arange(800) % 7 == 0, truth, -1),
    }
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.15] = np.nan
    Xm[np.isnan(Xm).all(axis=1), 0] = 0.5  # keep at least one observed entry per row
    out["blobs_missing"] = {"X": Xm}
    codes = np.stack([rng.integers(0, c, size=600) for c in (3, 2, 4)], axis=1).astype(np.float64)
    group = rng.integers(0, 2, size=600)
    codes[group == 1, 0] = np.minimum(codes[group == 1, 0], 1)  # some structure to find
    out["codes"] = {"X": codes, "labels": np.where(np.arange(600) % 9 == 0, group, -1)}
    topics = rng.dirichlet(np.full(6, 0.5), size=3)
    which = rng.integers(0, 3, size=400)
    counts = np.stack([rng.multinomial(rng.integers(0, 30), topics[j]) for j in which]).astype(np.float64)
    out["counts"] = {"X": counts, "w": rng.uniform(0.5, 1.5, size=400)}
    lengths = rng.integers(2, 40, size=60)
    states = _chain(rng, lengths, 3)
    means = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
    gauss = means[states] + rng.normal(size=(states.size, 2)) * np.array([1.0, 0.7])
    seq_w = rng.uniform(0.5, 2.0, size=lengths.size)
    out["sequences"] = {"X": gauss, "lengths": lengths, "w": np.repeat(seq_w, lengths)}
    emission = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.05, 0.1, 0.5, 0.3, 0.05], [0.1, 0.1, 0.1, 0.2, 0.5]])
    symbols = np.array([rng.choice(5, p=emission[s]) for s in states], dtype=np.float64)[:, None]
    out["symbols"] = {"X": symbols, "lengths": lengths}
    out.update(make_initial_models(out))
    return out


def make_initial_models(data) -> dict[str, dict[str, np.ndarray]]:
    """User-given initial models (``initialModel`` arrays), some just within the tolerances
    (sums off by 1e-9, covariances asymmetric by rounding), so their validation and
    renormalization are part of the golden fits."""
    rng = np.random.default_rng(77)
    X = data["blobs"]["X"]
    means = X[rng.choice(X.shape[0], size=3, replace=False)]
    A = rng.normal(size=(3, 3, 3))
    full = A @ np.swapaxes(A, 1, 2) + np.eye(3)
    full[:, 0, 1] *= 1 + 1e-12  # asymmetric by rounding: symmetrized
    off = np.array([0.3, 0.3, 0.4]) * (1 + 1e-9)  # sums to 1 within 1e-6: renormalized
    seq_means = data["sequences"]["X"][rng.choice(data["sequences"]["X"].shape[0], size=3, replace=False)]
    return {
        "init_gaussian_full": {"weights": off, "means": means, "covariances": full},
        "init_gaussian_diag": {"weights": off, "means": means, "covariances": rng.uniform(0.5, 3.0, size=(3, 3))},
        "init_gaussian_tied": {"weights": off, "means": means, "covariances": full[0]},
        "init_gaussian_spherical": {"weights": off, "means": means, "covariances": rng.uniform(0.5, 3.0, size=3)},
        "init_kmeans": {"centers": means},
        "init_codes": {
            "weights": np.array([0.45, 0.55]) * (1 + 1e-9),
            "probs": np.concatenate([rng.dirichlet(np.ones(c), size=2) for c in (3, 2, 4)], axis=1) * (1 - 1e-9),
            "n_categories": np.array([3.0, 2.0, 4.0]),
        },
        "init_counts": {"weights": off, "probs": rng.dirichlet(np.ones(6), size=3) * (1 + 1e-9)},
        "init_gaussian_hmm_diag": {
            "startProb": rng.dirichlet(np.ones(3)) * (1 + 1e-9),
            "transMat": rng.dirichlet(np.ones(3), size=3) * (1 - 1e-9),
            "means": seq_means,
            "covariances": rng.uniform(0.5, 2.0, size=(3, 2)),
        },
        "init_gaussian_hmm_full": {
            "startProb": rng.dirichlet(np.ones(3)),
            "transMat": rng.dirichlet(np.ones(3), size=3),
            "means": seq_means,
            "covariances": full[:, :2, :2],
        },
        "init_symbols": {
            "startProb": rng.dirichlet(np.ones(3)),
            "transMat": rng.dirichlet(np.ones(3), size=3) * (1 + 1e-9),
            "emissionProb": rng.dirichlet(np.ones(5), size=3) * (1 - 1e-9),
        },
    }


# ---------------------------------------------------------------------------
# the numpy path: fit_em over LocalBlockSource


def _blocks(data: dict[str, np.ndarray], n_blocks: int, *, weights=False, labels=False, sequences=False):
    from em_spark.models.base import Block

    X = data["X"]
    w = data["w"] if weights else None
    y = data["labels"] if labels else None
    if not sequences:
        cuts = np.array_split(np.arange(X.shape[0]), n_blocks)
        return [Block(X[c], None if w is None else w[c], labels=None if y is None else y[c]) for c in cuts]
    lengths = data["lengths"]
    groups = np.array_split(np.arange(lengths.size), n_blocks)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    blocks = []
    for g in groups:
        rows = slice(int(starts[g[0]]), int(starts[g[-1] + 1]))
        blocks.append(Block(X[rows], None if w is None else w[rows], lengths[g].astype(np.int64)))
    return blocks


def _local(family, blocks, *, max_iter=12, n_init=1, seed=3, initial=None, impute=False):
    from em_spark.engine.loop import FitSettings, LocalBlockSource, fit_em
    from em_spark.models.base import Block

    source = LocalBlockSource(blocks, sample_size=300, seed=5)
    init = None if initial is None else family.params_from_public(initial, source.n_features)
    result = fit_em(family, source, FitSettings(max_iter=max_iter, tol=0.0, n_init=n_init, seed=seed), init)
    out = {f"param.{name}": np.asarray(value) for name, value in result.params.items()}
    out["history"] = np.array(result.history, dtype=np.float64)
    scored = family.score(blocks[0], result.params)
    out.update({f"score.{name}": np.asarray(value) for name, value in scored.items()})
    out["n_parameters"] = np.array(family.n_parameters(result.params))
    if impute:
        filled = family.impute(Block(blocks[0].X), result.params)
        out.update({f"impute.{name}": value for name, value in filled.items()})
    return out


def _far_component_init(X):
    """An initialModel whose last component is so far away it gets no mass: the M-step re-seeds it."""
    centre = np.nanmean(X, axis=0)
    d = X.shape[1]
    means = np.stack([centre - 1.0, centre + 1.0, centre + 1e4])
    return {"weights": np.array([0.45, 0.45, 0.1]), "means": means, "covariances": np.tile(np.eye(d) * 2.0, (3, 1, 1))}


def numpy_cases(inputs) -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    from em_spark.models import (
        CategoricalHMMFamily,
        CategoricalMixtureFamily,
        GaussianFamily,
        GaussianHMMFamily,
        KMeansFamily,
    )

    blobs, missing, codes, counts = inputs["blobs"], inputs["blobs_missing"], inputs["codes"], inputs["counts"]
    seqs, syms = inputs["sequences"], inputs["symbols"]
    cases: dict[str, Callable[[], dict[str, np.ndarray]]] = {}
    for cov in ("full", "diag", "spherical", "tied"):
        cases[f"np_gaussian_{cov}"] = lambda cov=cov: _local(
            GaussianFamily(k=3, covariance_type=cov), _blocks(blobs, 4, weights=True), n_init=2
        )
    cases["np_gaussian_full_random_labels"] = lambda: _local(
        GaussianFamily(k=3, init_mode="random"), _blocks(blobs, 3, labels=True)
    )
    cases["np_gaussian_full_reseed"] = lambda: _local(
        GaussianFamily(k=3), _blocks(blobs, 4), max_iter=6, initial=_far_component_init(blobs["X"])
    )
    for cov in ("full", "diag", "spherical", "tied"):
        cases[f"np_gaussian_missing_{cov}"] = lambda cov=cov: _local(
            GaussianFamily(k=3, covariance_type=cov, handle_missing="model"),
            _blocks(missing, 3),
            max_iter=8,
            impute=True,
        )
    cases["np_kmeans"] = lambda: _local(KMeansFamily(k=3), _blocks(blobs, 4, weights=True))
    cases["np_kmeans_random"] = lambda: _local(KMeansFamily(k=4, init_mode="random"), _blocks(blobs, 4), n_init=2)
    cases["np_categorical_codes"] = lambda: _local(CategoricalMixtureFamily(k=2), _blocks(codes, 3), n_init=2)
    cases["np_categorical_codes_kmeans_labels"] = lambda: _local(
        CategoricalMixtureFamily(k=2, init_mode="k-means++", smoothing=0.5), _blocks(codes, 3, labels=True)
    )
    cases["np_categorical_multinomial"] = lambda: _local(
        CategoricalMixtureFamily(k=3, kind="multinomial"), _blocks(counts, 4, weights=True)
    )
    for cov in ("full", "diag"):
        cases[f"np_gaussian_hmm_{cov}"] = lambda cov=cov: _local(
            GaussianHMMFamily(k=3, covariance_type=cov), _blocks(seqs, 3, weights=True, sequences=True), max_iter=8
        )
    cases["np_gaussian_hmm_full_random"] = lambda: _local(
        GaussianHMMFamily(k=3, init_mode="random"), _blocks(seqs, 2, sequences=True), max_iter=6
    )
    cases["np_categorical_hmm"] = lambda: _local(
        CategoricalHMMFamily(k=3), _blocks(syms, 3, sequences=True), max_iter=10, n_init=2
    )
    cases["np_categorical_hmm_smoothed"] = lambda: _local(
        CategoricalHMMFamily(k=3, n_categories=6, smoothing=0.5), _blocks(syms, 2, sequences=True), max_iter=6
    )
    # from user-given initial models: their validation and renormalization are part of the fit
    for cov in ("full", "diag", "spherical", "tied"):
        cases[f"np_gaussian_{cov}_initial"] = lambda cov=cov: _local(
            GaussianFamily(k=3, covariance_type=cov),
            _blocks(blobs, 2),
            max_iter=4,
            initial=inputs[f"init_gaussian_{cov}"],
        )
    cases["np_kmeans_initial"] = lambda: _local(
        KMeansFamily(k=3), _blocks(blobs, 2), max_iter=4, initial=inputs["init_kmeans"]
    )
    cases["np_categorical_codes_initial"] = lambda: _local(
        CategoricalMixtureFamily(k=2, smoothing=0.0), _blocks(codes, 2), max_iter=4, initial=inputs["init_codes"]
    )
    cases["np_categorical_multinomial_initial"] = lambda: _local(
        CategoricalMixtureFamily(k=3, kind="multinomial"), _blocks(counts, 2), max_iter=4, initial=inputs["init_counts"]
    )
    for cov in ("full", "diag"):
        cases[f"np_gaussian_hmm_{cov}_initial"] = lambda cov=cov: _local(
            GaussianHMMFamily(k=3, covariance_type=cov),
            _blocks(seqs, 2, sequences=True),
            max_iter=4,
            initial=inputs[f"init_gaussian_hmm_{cov}"],
        )
    cases["np_categorical_hmm_initial"] = lambda: _local(
        CategoricalHMMFamily(k=3), _blocks(syms, 2, sequences=True), max_iter=4, initial=inputs["init_symbols"]
    )
    return cases


# ---------------------------------------------------------------------------
# through Spark: the api estimators on local[2]


def _spark_fit(estimator, df):
    model = estimator.fit(df)
    out = {f"param.{name}": np.asarray(value) for name, value in model.arrays.items()}
    out["history"] = np.array(model.summary.logLikelihoodHistory, dtype=np.float64)
    return out


def _rows_frame(spark, data, *, weights=False):
    X = data["X"]
    rows = [
        ([None if np.isnan(v) else float(v) for v in x],) + ((float(data["w"][i]),) if weights else ())
        for i, x in enumerate(X)
    ]
    return spark.createDataFrame(rows, "x array<double>" + (", w double" if weights else ""))


def _sequence_frame(spark, data, *, symbols=False):
    X, lengths = data["X"], data["lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    rows = []
    for s in range(lengths.size):
        seq = X[starts[s] : starts[s + 1]]
        rows.append(([float(v) for v in seq[:, 0]],) if symbols else ([[float(v) for v in r] for r in seq],))
    return spark.createDataFrame(rows, "x array<double>" if symbols else "x array<array<double>>")


def spark_cases(inputs, spark) -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    from em_spark import CategoricalHMM, CategoricalMixture, GaussianHMM, GaussianMixture, KMeans

    common = dict(featuresCol="x", tol=0.0, seed=7, numPartitions=2)
    blobs, missing, codes = inputs["blobs"], inputs["blobs_missing"], inputs["codes"]
    return {
        "spark_gaussian_full": lambda: _spark_fit(
            GaussianMixture(k=3, maxIter=6, weightCol="w", **common), _rows_frame(spark, blobs, weights=True)
        ),
        "spark_gaussian_missing_diag": lambda: _spark_fit(
            GaussianMixture(k=3, covarianceType="diag", handleMissing="model", maxIter=5, **common),
            _rows_frame(spark, missing),
        ),
        "spark_kmeans": lambda: _spark_fit(KMeans(k=3, maxIter=5, **common), _rows_frame(spark, blobs)),
        "spark_categorical": lambda: _spark_fit(
            CategoricalMixture(k=2, maxIter=5, **common), _rows_frame(spark, codes)
        ),
        "spark_gaussian_hmm_diag": lambda: _spark_fit(
            GaussianHMM(k=3, covarianceType="diag", maxIter=5, **common), _sequence_frame(spark, inputs["sequences"])
        ),
        "spark_categorical_hmm": lambda: _spark_fit(
            CategoricalHMM(k=3, maxIter=5, **common), _sequence_frame(spark, inputs["symbols"], symbols=True)
        ),
    }


# ---------------------------------------------------------------------------
# storage


INPUTS_FILE = HERE / "inputs.npz"


def save_inputs(inputs) -> None:
    np.savez(
        INPUTS_FILE, **{f"{name}.{key}": value for name, arrays in inputs.items() for key, value in arrays.items()}
    )


def load_inputs() -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(INPUTS_FILE, allow_pickle=False) as f:
        for full in f.files:
            name, key = full.split(".", 1)
            out.setdefault(name, {})[key] = f[full]
    return out


def machine_signature() -> str:
    """What decides the last bits of a fit here: OpenBLAS's kernel architecture and the CPU
    features numpy dispatches on (a short digest of them)."""
    import hashlib

    from numpy._core._multiarray_umath import __cpu_features__
    from threadpoolctl import threadpool_info

    # BLAS libraries only: OpenMP runtimes (loaded by numba or scikit-learn in the same process) do not
    # change a bit, and whether one is loaded yet depends on what ran before
    blas = "-".join(sorted({str(i.get("architecture")) for i in threadpool_info() if i.get("user_api") == "blas"}))
    blas = blas or "noblas"
    features = ",".join(sorted(name for name, present in __cpu_features__.items() if present))
    return f"{blas}-{hashlib.sha1(features.encode()).hexdigest()[:10]}"


MACHINES = HERE / "machines"


def golden_dir(machine: bool = False) -> Path:
    """Where this machine's recordings are: its own when ``machine`` (or when they exist), else the default."""
    own = MACHINES / machine_signature()
    return own if machine or own.is_dir() else HERE


def golden_path(case: str, machine: bool = False) -> Path:
    return golden_dir(machine) / f"{case}.npz"


def recorded_for_this_machine() -> bool:
    """Whether the recordings read here were made on a machine with this one's numeric signature:
    the default ones were made on the machine named in ``DEFAULT_MACHINE``."""
    return golden_dir() != HERE or machine_signature() == DEFAULT_MACHINE.read_text().strip()


DEFAULT_MACHINE = HERE / "DEFAULT_MACHINE"


def load_golden(case: str) -> dict[str, np.ndarray]:
    with np.load(golden_path(case), allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def all_recordings(case: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(machine, arrays) of every recording of ``case``: the default one, then each machine's."""
    out = []
    for name, directory in [(DEFAULT_MACHINE.read_text().strip(), HERE)] + [
        (d.name, d) for d in sorted(MACHINES.iterdir()) if d.is_dir()
    ]:
        path = directory / f"{case}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                out.append((name, {key: f[key] for key in f.files}))
    return out


def main() -> None:
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(HERE.parent.parent))
    machine = "--machine" in sys.argv
    if machine:  # the inputs are shared by every machine's recordings: never rewritten here
        golden_dir(machine=True).mkdir(parents=True, exist_ok=True)
    else:
        save_inputs(make_inputs())
        DEFAULT_MACHINE.write_text(machine_signature() + "\n")
    inputs = load_inputs()  # exactly what the test will read back
    with threadpool_limits(limits=1):
        for case, fit in numpy_cases(inputs).items():
            np.savez(golden_path(case, machine), **fit())
            print("wrote", golden_path(case, machine))
    if "--no-spark" in sys.argv:
        return
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from em_spark.engine.session import get_session

    spark = get_session("em_spark-golden", "local[2]", SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for case, fit in spark_cases(inputs, spark).items():
            np.savez(golden_path(case, machine), **fit())
            print("wrote", golden_path(case, machine))
    finally:
        spark.stop()


#: the session tests/conftest.py builds (the golden Spark fits depend on its partitioning)
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
}

if __name__ == "__main__":
    main()
