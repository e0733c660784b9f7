"""The compiled (numba) HMM E-step against the numpy forward-backward it replaces, which stays the reference.

Bound: every statistic agrees within 1e-12 relative to the largest entry of its field.
hmmlearn is compared with the default (compiled) path in test_hmm.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import em_spark.models.compiled as compiled_module
from em_spark.models import Block
from em_spark.models.compiled import KERNEL_ENV, use_hmm_compiled
from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily
from em_spark.stats import Stats

RTOL = 1e-12
TRANS = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])


def both(family, block: Block, params: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[Stats, Stats]:
    monkeypatch.setenv(KERNEL_ENV, "numpy")
    assert not use_hmm_compiled()
    reference = family.e_step(block, params)
    monkeypatch.setenv(KERNEL_ENV, "compiled")
    assert use_hmm_compiled()
    return reference, family.e_step(block, params)


def assert_agree(reference: Stats, compiled: Stats) -> None:
    assert reference.keys() == compiled.keys()
    for name in reference:
        ref, got = np.asarray(reference[name]), np.asarray(compiled[name])
        assert ref.shape == got.shape, name
        assert np.all(np.isfinite(got)), name
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def sequences(rng: np.random.Generator, n_seq: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(1, 80, size=n_seq)
    lengths[:3] = [1, 1, 200]  # length-one sequences and a long one in the same block
    return rng.permutation(lengths), np.zeros(0)


def row_weights(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    w = rng.uniform(0.5, 3.0, size=int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    w[starts[::5]] = 0.0  # a sequence of weight 0 contributes nothing
    return w


def chain(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    transmat = rng.dirichlet(np.ones(k) * 2, size=k) * 0.5 + np.eye(k) * 0.5
    return {"startprob": rng.dirichlet(np.ones(k)), "transmat": transmat / transmat.sum(axis=1, keepdims=True)}


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(("d", "k"), [(2, 3), (5, 4), (1, 2)])
def test_compiled_gaussian_hmm_e_step_matches_the_numpy_path(covariance_type, weighted, d, k, monkeypatch):
    rng = np.random.default_rng(d * 10 + k)
    lengths, _ = sequences(rng, 90)
    n = int(lengths.sum())
    centers = rng.normal(scale=3.0, size=(k, d)) + 1e3  # far from the origin: statistics are around the means
    X = centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    family = GaussianHMMFamily(k, covariance_type, reg_covar=0.0)
    params = {**family.initialize(Block(X, lengths=lengths), np.random.default_rng(1)), **chain(rng, k)}
    w = row_weights(rng, lengths) if weighted else None
    assert_agree(*both(family, Block(X, w, lengths), params, monkeypatch))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(("c", "k"), [(5, 3), (12, 6), (2, 2)])
def test_compiled_categorical_hmm_e_step_matches_the_numpy_path(weighted, c, k, monkeypatch):
    rng = np.random.default_rng(c * 10 + k)
    lengths, _ = sequences(rng, 90)
    symbols = rng.integers(c, size=(int(lengths.sum()), 1)).astype(np.float64)
    family = CategoricalHMMFamily(k, c)
    params = {"emissionprob": rng.dirichlet(np.ones(c), size=k), **chain(rng, k)}
    params["emissionprob"][0, 0] = 0.0  # a symbol state 0 cannot emit (others can)
    params["emissionprob"][0] /= params["emissionprob"][0].sum()
    w = row_weights(rng, lengths) if weighted else None
    assert_agree(*both(family, Block(symbols, w, lengths), params, monkeypatch))


def test_one_sequence_without_lengths_and_many_sequences_per_block_agree(monkeypatch):
    rng = np.random.default_rng(3)
    family = GaussianHMMFamily(3, "full", reg_covar=0.0)
    X = rng.normal(size=(3000, 2)) + rng.integers(3, size=(3000, 1)) * 3.0
    params = {**family.initialize(Block(X), np.random.default_rng(0)), **chain(rng, 3)}
    assert_agree(*both(family, Block(X), params, monkeypatch))  # one sequence of 3000 steps


def test_an_underflowing_sequence_sends_the_block_to_the_numpy_path(monkeypatch):
    # state 0 never leaves; the second sequence sits at state 1 after starting near state 0,
    # so its scaled forward pass rounds to 0: the compiled loop reports it, numpy redoes it in log space
    family = GaussianHMMFamily(2, "diag", reg_covar=0.0)
    params = family.params_from_public(
        {
            "startProb": np.array([0.5, 0.5]),
            "transMat": np.array([[1.0, 0.0], [0.2, 0.8]]),
            "means": np.array([[0.0], [100.0]]),
            "covariances": np.array([[1.0], [1.0]]),
        },
        1,
    )
    pieces = [np.array([0.2, -0.1, 0.3]), np.array([0.1, 100.2, 99.5, 100.1]), np.array([100.0, 99.0])]
    lengths = np.array([len(p) for p in pieces])
    X = np.concatenate(pieces)[:, None]
    fused = compiled_module.hmm_gaussian_stats(
        "diag",
        X,
        lengths,
        None,
        params["startprob"],
        params["transmat"],
        params["means"],
        params["precisions_cholesky"],
    )
    assert fused is None
    reference, compiled = both(family, Block(X, lengths=lengths), params, monkeypatch)
    assert np.isfinite(compiled.loglik)
    assert_agree(reference, compiled)


def test_the_fused_loops_return_the_first_underflowing_sequence():
    loops = compiled_module._hmm_loops()
    emission = np.array([[1.0, 0.0], [0.0, 1.0]])  # state 0 emits 0, state 1 emits 1; no way 0 -> 1
    starts = np.array([0, 2, 4, 6])
    symbols = np.array([0, 0, 0, 1, 1, 1])  # the second sequence is impossible
    peak = emission.max(axis=0)
    out = (np.zeros(2), np.zeros((2, 2)), np.zeros((2, 2)))
    _, bad = loops.categorical_stats(
        symbols, starts, np.empty(0), False, np.array([0.5, 0.5]), np.array([[1.0, 0.0], [0.5, 0.5]]),
        np.ascontiguousarray((emission / peak).T), np.log(peak), *out,
    )  # fmt: skip
    assert bad == 1
