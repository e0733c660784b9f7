"""The compiled (numba) Gaussian E-step against the numpy kernel it replaces, which stays the reference.

Bound: every statistic agrees within 1e-12 relative to the largest entry of its field
(entries near 0, such as Σ w r (x − μ) at a fixed point, are compared on that scale).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import em_spark.models.compiled as compiled_module
from em_spark.models import Block, GaussianFamily
from em_spark.models.compiled import KERNEL_ENV, use_compiled
from em_spark.stats import Stats

TYPES = ["full", "tied", "diag", "spherical"]
RTOL = 1e-12
ROOT = Path(__file__).resolve().parents[2]


def mixture(n: int, d: int, k: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d)) + offset
    mixing = rng.normal(size=(k, d, d)) * 0.5 + np.eye(d)
    which = rng.integers(k, size=n)
    return centers[which] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mixing[which])


def both(family: GaussianFamily, block: Block, params: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[Stats, Stats]:
    monkeypatch.setenv(KERNEL_ENV, "numpy")
    assert not use_compiled()
    reference = family.e_step(block, params)
    monkeypatch.setenv(KERNEL_ENV, "compiled")
    assert use_compiled()
    return reference, family.e_step(block, params)


def assert_agree(reference: Stats, compiled: Stats) -> None:
    assert reference.keys() == compiled.keys()
    for name in reference:
        ref, got = reference[name], compiled[name]
        assert ref.shape == got.shape, name
        assert np.all(np.isfinite(got)), name
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * scale, err_msg=name)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
@pytest.mark.parametrize(("n", "d", "k"), [(1000, 3, 3), (777, 10, 5), (300, 50, 8)])
def test_compiled_e_step_matches_the_numpy_kernel(covariance_type, weighted, labelled, n, d, k, monkeypatch):
    rng = np.random.default_rng(n + d)
    X = mixture(n, d, k, seed=d, offset=1e3)  # far from the origin: the statistics are taken around the means
    family = GaussianFamily(k, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(1))
    w = rng.uniform(0.0, 3.0, size=n) if weighted else None
    labels = np.where(rng.random(n) < 0.3, rng.integers(k, size=n), -1) if labelled else None
    assert_agree(*both(family, Block(X, w, labels=labels), params, monkeypatch))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_labelled_row_far_from_its_component_keeps_its_exact_joint_log_probability(covariance_type, monkeypatch):
    # exp(log p_c − peak) underflows to 0 here: the log-likelihood must come from log p_c itself
    X = mixture(400, 4, 3, seed=2)
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    far = params["means"][0] + 200.0
    X[:5] = far
    labels = np.full(len(X), -1)
    labels[:5] = int(np.argmax(np.linalg.norm(params["means"] - far, axis=1)))  # the farthest component
    reference, compiled = both(family, Block(X, labels=labels), params, monkeypatch)
    assert np.isfinite(reference.loglik)
    assert_agree(reference, compiled)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_component_with_weight_zero_gets_nothing_and_no_nan(covariance_type, monkeypatch):
    X = mixture(600, 5, 4, seed=3)
    family = GaussianFamily(4, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    weights = params["weights"].copy()
    weights[2] = 0.0  # log weight −inf: the component is dead
    params = {**params, "weights": weights / weights.sum()}
    reference, compiled = both(family, Block(X), params, monkeypatch)
    assert compiled["nk"][2] == 0.0
    assert_agree(reference, compiled)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
def test_chunk_boundaries_and_empty_blocks(covariance_type, n, monkeypatch):
    X = mixture(max(n, 50), 6, 3, seed=4)
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    assert_agree(*both(family, Block(X[:n]), params, monkeypatch))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_compiled_statistics_are_additive_over_splits(covariance_type, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "compiled")
    X = mixture(2000, 7, 4, seed=5)
    w = np.random.default_rng(0).uniform(size=len(X))
    family = GaussianFamily(4, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    whole = family.e_step(Block(X, w), params)
    cuts = [0, 3, 700, 701, 1999, 2000]
    parts = [family.e_step(Block(X[a:b], w[a:b]), params) for a, b in pairwise(cuts)]
    total = whole.zero()
    for part in parts:
        total = total + part
    assert whole.allclose(total, rtol=RTOL, atol=RTOL * float(np.max(np.abs(whole["sq"]))))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_missing_values_keep_working_with_the_compiled_kernel_on_complete_rows(covariance_type, monkeypatch):
    X = mixture(800, 5, 3, seed=6)
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    family = GaussianFamily(3, covariance_type, handle_missing="model")
    params = family.initialize(Block(X), np.random.default_rng(0))
    assert_agree(*both(family, Block(X), params, monkeypatch))


def test_the_switch_forces_the_numpy_path_and_refuses_unknown_values(monkeypatch):
    calls = []
    real = compiled_module.gaussian_stats

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("em_spark.models.gaussian.gaussian_stats", spy)
    X = mixture(100, 3, 2, seed=7)
    family = GaussianFamily(2)
    params = family.initialize(Block(X), np.random.default_rng(0))
    monkeypatch.setenv(KERNEL_ENV, "numpy")
    family.e_step(Block(X), params)
    assert calls == []
    monkeypatch.delenv(KERNEL_ENV)
    family.e_step(Block(X), params)
    assert calls == ["full"]
    monkeypatch.setenv(KERNEL_ENV, "fortran")
    with pytest.raises(ValueError, match="EM_SPARK_KERNEL must be one of"):
        family.e_step(Block(X), params)


def test_a_read_only_install_caches_the_compiled_loops_in_the_temp_dir(tmp_path):
    """The package directory cannot be written (and no NUMBA_CACHE_DIR): the cache goes to the temp dir.

    As an ordinary user the copy of the package is made read-only with chmod; root may
    write anywhere, so as root it is bind-mounted read-only in a private mount namespace.
    """
    package = tmp_path / "site" / "em_spark"
    shutil.copytree(ROOT / "em_spark", package, ignore=shutil.ignore_patterns("__pycache__"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("NUMBA_CACHE_DIR", KERNEL_ENV)}
    env.update(PYTHONPATH=str(package.parent), TMPDIR=str(temp), HOME=str(package), PYTHONDONTWRITEBYTECODE="1")
    script = (
        "import numpy as np\n"
        "from em_spark.models import Block, GaussianFamily\n"
        "from em_spark.models.compiled import use_compiled\n"
        "X = np.random.default_rng(0).normal(size=(300, 3))\n"
        "f = GaussianFamily(2, 'diag')\n"
        "assert use_compiled()\n"
        "import numba, em_spark.models.gaussian_loops as loops\n"
        "print(loops.__file__, numba.config.CACHE_DIR, loops.cache_enabled())\n"
        "print(f.e_step(Block(X), f.initialize(Block(X), np.random.default_rng(0))).loglik)\n"
    )
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        site = shlex.quote(str(package.parent))
        mount = f"mount --bind -o ro {site} {site} && exec " + " ".join(shlex.quote(part) for part in command)
        command = ["unshare", "--mount", "sh", "-c", mount]
    else:
        for path in [*package.rglob("*"), package, package.parent]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        done = subprocess.run(command, env=env, cwd=tmp_path, timeout=600, capture_output=True, text=True)
    finally:
        for path in [package.parent, package, *package.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert done.returncode == 0, done.stderr
    assert not list(package.rglob("*.nbi")), "numba wrote into the read-only package"
    written = sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))
    assert any(name.endswith(".nbi") and name.startswith("em_spark-numba-") for name in written), (written, done.stdout)
