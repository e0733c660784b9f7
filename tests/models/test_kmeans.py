"""K-means as hard EM: Lloyd's algorithm in the engine's shape, checked against scikit-learn."""

import numpy as np
import pytest

from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models.base import Block
from em_spark.models.kmeans import KMeansFamily


def _lloyd(family, X, params, iters, n_blocks=1, w=None):
    for _ in range(iters):
        stats = None
        for part, pw in zip(
            np.array_split(X, n_blocks), np.array_split(w, n_blocks) if w is not None else [None] * n_blocks
        ):
            s = family.e_step(Block(part, pw), params)
            stats = s if stats is None else stats + s
        params = family.m_step(stats, params, Block(X), np.random.default_rng(0)).params
    return params, stats


def test_matches_scikit_learn_lloyd_from_the_same_centers():
    from sklearn.cluster import KMeans

    X, _, _ = make_blobs(4000, 3, 4, seed=3)
    family = KMeansFamily(k=4)
    init = family.initialize(Block(X), np.random.default_rng(1))
    ours, stats = _lloyd(family, X, init, 15, n_blocks=3)
    sk = KMeans(4, init=init["centers"], n_init=1, max_iter=15, tol=0, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours["centers"], sk.cluster_centers_, rtol=1e-10, atol=1e-12)


def test_far_from_the_origin_gives_the_same_centers():
    X, _, _ = make_blobs(2000, 2, 3, seed=4)
    family = KMeansFamily(k=3)
    init = family.initialize(Block(X), np.random.default_rng(0))
    near, _ = _lloyd(family, X, init, 10)
    far, _ = _lloyd(family, X + 1e8, {**init, "centers": init["centers"] + 1e8}, 10)
    np.testing.assert_allclose(far["centers"] - 1e8, near["centers"], atol=1e-6)


def test_statistics_are_additive_and_integer_weights_equal_duplicates():
    rng = np.random.default_rng(5)
    X, _, _ = make_blobs(600, 2, 3, seed=5)
    w = rng.integers(1, 4, size=600).astype(float)
    family = KMeansFamily(k=3)
    params = family.initialize(Block(X), np.random.default_rng(0))
    whole = family.e_step(Block(X, w), params)
    parts = (
        family.e_step(Block(X[:0], w[:0]), params)
        + family.e_step(Block(X[:250], w[:250]), params)
        + family.e_step(Block(X[250:], w[250:]), params)
    )
    assert whole.allclose(parts)
    dup = family.e_step(Block(np.repeat(X, w.astype(int), axis=0)), params)
    for name in ("nk", "sum", "loglik", "weight"):  # count is rows, not weight
        np.testing.assert_allclose(whole[name], dup[name], rtol=1e-12)


def test_objective_never_gets_worse_and_the_loop_converges():
    X, _, _ = make_blobs(3000, 2, 4, seed=6)
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=2)
    result = fit_em(KMeansFamily(k=4), source, FitSettings(max_iter=100, tol=1e-9, seed=2))
    h = np.array(result.history)
    assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:])) and result.converged


def test_an_empty_cluster_moves_to_the_farthest_sample_point():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0]])
    family = KMeansFamily(k=2)
    params = {"centers": np.array([[0.0, 0.0], [100.0, -100.0]]), "weights": np.array([0.5, 0.5])}
    stats = family.e_step(Block(X[:2]), params)
    step = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    np.testing.assert_array_equal(step.params["centers"][1], [10.0, 10.0])
    assert "lost all its rows" in step.events[0] and np.all(np.isfinite(step.params["weights"]))


def test_score_is_one_hot_and_initial_centers_are_validated():
    family = KMeansFamily(k=2)
    params = family.params_from_public({"centers": np.array([[0.0], [5.0]])}, 1)
    out = family.score(Block(np.array([[1.0], [4.0]])), params)
    np.testing.assert_array_equal(np.exp(out["log_resp"]), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(out["loglik"], [-1.0, -1.0])
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        family.params_from_public({"centers": np.zeros((2, 2))}, 3)
