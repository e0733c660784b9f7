"""The Poisson mixture family without a JVM: EM against an independent scipy reference of the same
updates from the same start, additivity, recovery of a known mixture, its prior, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import poisson

from em_spark.app.demo_data import make_poisson_counts
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import ModelError, PoissonMixtureFamily
from em_spark.models.base import Block


@pytest.fixture(scope="module")
def counts():
    return make_poisson_counts(3000, 4, 3, seed=7)


def reference_em(X, weights, rates, iterations, smoothing):
    """EM for a Poisson mixture written from the textbook with scipy's pmf: the E-step by
    logsumexp of log w_j + Σ_f log Poisson(x_f; λ_jf), the MAP M-step (sums + smoothing) / nk."""
    history = []
    for _ in range(iterations):
        log_joint = np.log(weights) + poisson.logpmf(X[:, None, :], rates[None, :, :]).sum(axis=2)
        loglik = logsumexp(log_joint, axis=1)
        history.append(loglik.sum())
        resp = np.exp(log_joint - loglik[:, None])
        nk = resp.sum(axis=0)
        weights, rates = nk / nk.sum(), (resp.T @ X + smoothing) / nk[:, None]
    return weights, rates, np.array(history)


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_em_matches_a_scipy_reference_of_the_same_updates_from_the_same_start(counts, smoothing):
    X, _, _ = counts
    family = PoissonMixtureFamily(k=3, smoothing=smoothing)
    start = family.initialize(Block(X[:500]), np.random.default_rng(0))
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 5)], sample_size=500, seed=1)
    result = fit_em(family, source, FitSettings(max_iter=25, tol=0.0), initial_params=start)
    weights, rates, history = reference_em(X, start["weights"], start["rates"], 25, smoothing)
    np.testing.assert_allclose(result.params["weights"], weights, rtol=1e-10)
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-10)
    # the engine's history is the average log-likelihood per row, each under the pass's parameters
    np.testing.assert_allclose(np.array(result.history), history / X.shape[0], rtol=1e-12)


def test_statistics_of_any_split_add_up_to_the_statistics_of_the_whole(counts):
    X, _, _ = counts
    family = PoissonMixtureFamily(k=3)
    params = family.initialize(Block(X[:400]), np.random.default_rng(2))
    w = np.random.default_rng(3).uniform(0.2, 2.0, size=X.shape[0])
    whole = family.e_step(Block(X, w), params)
    parts = [family.e_step(Block(X[a:b], w[a:b]), params) for a, b in [(0, 1), (1, 1100), (1100, 1100), (1100, 3000)]]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    for name in whole:
        np.testing.assert_allclose(total[name], whole[name], rtol=1e-12, err_msg=name)


def test_a_fit_recovers_the_mixture_that_made_the_counts(counts):
    X, _, truth = counts
    family = PoissonMixtureFamily(k=3)
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 4)], sample_size=1000, seed=1)
    result = fit_em(family, source, FitSettings(max_iter=200, tol=1e-8, n_init=2, seed=4))
    _, order = linear_sum_assignment(family.component_distances(truth, result.params))  # truth i <-> fitted order[i]
    np.testing.assert_allclose(result.params["weights"][order], truth["weights"], atol=0.03)
    np.testing.assert_allclose(result.params["rates"][order], truth["rates"], rtol=0.1, atol=0.2)


def test_the_objective_with_its_gamma_prior_never_decreases(counts):
    X, _, _ = counts
    family = PoissonMixtureFamily(k=3, smoothing=2.0, init_mode="random")
    params = family.initialize(Block(X[:300]), np.random.default_rng(5))
    block, objective = Block(X), []
    for _ in range(30):
        stats = family.e_step(block, params)
        objective.append(float(stats["loglik"]) + family.log_prior(params))
        params = family.m_step(stats, params, Block(X[:300]), np.random.default_rng(0)).params
    assert np.all(np.diff(objective) >= -1e-9 * abs(objective[0]))


def test_a_zero_rate_scores_zero_counts_and_refuses_positive_ones_without_smoothing():
    family = PoissonMixtureFamily(k=2, smoothing=0.0)
    params = {"weights": np.array([0.5, 0.5]), "rates": np.array([[0.0, 1.0], [2.0, 1.0]])}
    scored = family.score(Block(np.array([[0.0, 3.0], [1.0, 0.0]])), params)
    assert np.isfinite(scored["loglik"]).all()
    assert np.exp(scored["log_resp"][1]) == pytest.approx([0.0, 1.0])  # a count where rate 0 is impossible
    expected = np.log(0.5 * poisson.pmf(0, 0.0) * poisson.pmf(3, 1.0) + 0.5 * poisson.pmf(0, 2.0) * poisson.pmf(3, 1.0))
    assert scored["loglik"][0] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ModelError, match="probability 0 under every component.*use smoothing > 0"):
        family.e_step(Block(np.array([[1.0, 0.0]])), {**params, "weights": np.array([1.0, 0.0])})


def test_a_dead_component_is_reseeded_with_an_event():
    X = np.vstack([np.full((50, 2), 1.0), np.full((50, 2), 9.0)])
    family = PoissonMixtureFamily(k=3)
    params = {"weights": np.array([0.5, 0.5, 0.0]), "rates": np.array([[1.0, 1.0], [9.0, 9.0], [100.0, 100.0]])}
    stats = family.e_step(Block(X), params)
    out = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    assert out.events and "component 2 lost its mass" in out.events[0]
    assert out.params["weights"][2] > 0 and np.all(out.params["rates"][2] < 100.0)


def test_distances_are_the_bhattacharyya_distance_of_the_poisson_products():
    family = PoissonMixtureFamily(k=2)
    a = {"weights": np.array([0.5, 0.5]), "rates": np.array([[1.0, 4.0], [9.0, 0.25]])}
    b = family.relabel(a, np.array([1, 0]))
    distances = family.component_distances(a, b)
    assert distances[0, 1] == 0.0 and distances[1, 0] == 0.0
    x = np.arange(200)
    bc = [np.sum(np.sqrt(poisson.pmf(x, la) * poisson.pmf(x, lb))) for la, lb in [(1.0, 9.0), (4.0, 0.25)]]
    assert distances[0, 0] == pytest.approx(-np.log(bc).sum(), rel=1e-9)


def test_unconstrained_coordinates_round_trip():
    family = PoissonMixtureFamily(k=2)
    params = {"weights": np.array([0.3, 0.7]), "rates": np.array([[1.5, 0.2], [7.0, 3.0]])}
    back = family.from_unconstrained(family.to_unconstrained(params), params)
    for name, value in params.items():
        np.testing.assert_allclose(back[name], value, rtol=1e-14)


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "count column 1 holds -1.0"), (2.5, "count column 1 holds 2.5"), (np.inf, "count column 1 holds inf")],
)
def test_values_that_are_not_counts_are_refused_naming_the_column(value, message):
    family = PoissonMixtureFamily(k=2)
    X = np.ones((10, 3))
    X[4, 1] = value
    with pytest.raises(ModelError, match=message + ".*non-negative integer counts"):
        family.initialize(Block(X), np.random.default_rng(0))
    params = {"weights": np.array([0.5, 0.5]), "rates": np.ones((2, 3))}
    with pytest.raises(ModelError, match=message):
        family.e_step(Block(X), params)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing": -1.0}, "smoothing must be a finite non-negative number"),
        ({"smoothing": float("nan")}, "smoothing must be a finite non-negative number"),
        ({"init_mode": "kmeans"}, r"initMode must be one of \['k-means\+\+', 'random'\]"),
        ({"k": 0}, "k must be a positive integer"),
    ],
)
def test_bad_hyperparameters_are_refused_naming_them(kwargs, message):
    with pytest.raises(ModelError, match=message):
        PoissonMixtureFamily(**{"k": 2, **kwargs})


def test_an_initial_model_is_checked_for_shape_and_sign():
    family = PoissonMixtureFamily(k=2)
    good = {"weights": [0.5, 0.5], "rates": [[1.0, 2.0], [3.0, 4.0]]}
    assert family.params_from_public(good, 2)["rates"].shape == (2, 2)
    with pytest.raises(ModelError, match="rates.*shape"):
        family.params_from_public(good, 3)
    with pytest.raises(ModelError, match="rates"):
        family.params_from_public({**good, "rates": [[1.0, -2.0], [3.0, 4.0]]}, 2)
    with pytest.raises(ModelError, match="data has 3 features but the model has 2 count columns"):
        family.e_step(Block(np.ones((4, 3))), family.params_from_public(good, 2))
