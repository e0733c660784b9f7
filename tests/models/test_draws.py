"""Drawing from fitted parameters, every family, without a JVM: the draws follow the model (component
shares, per-component moments, transition frequencies), a fit on a large draw recovers the model,
the same generator state gives the same draws, and arguments a family does not take are refused."""

from __future__ import annotations

import numpy as np
import pytest

from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import (
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
    ModelError,
    PoissonMixtureFamily,
)
from em_spark.models.base import Block

N = 60_000
WEIGHTS = np.array([0.2, 0.5, 0.3])
MEANS = np.array([[0.0, 0.0], [6.0, 1.0], [-3.0, 5.0]])
FULL = np.array([[[1.0, 0.6], [0.6, 2.0]], [[0.5, -0.2], [-0.2, 0.4]], [[3.0, 0.0], [0.0, 0.2]]])
COVARIANCES = {
    "full": FULL,
    "tied": FULL[0],
    "diag": np.array([[1.0, 2.0], [0.5, 0.4], [3.0, 0.2]]),
    "spherical": np.array([1.0, 0.5, 2.0]),
}
CHAIN = {"startprob": np.array([0.6, 0.4]), "transmat": np.array([[0.9, 0.1], [0.25, 0.75]])}


def _shares(components, k):
    return np.bincount(components, minlength=k) / components.size


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCES))
def test_gaussian_draws_have_the_models_shares_means_and_covariances(covariance_type):
    family = GaussianFamily(k=3, covariance_type=covariance_type)
    params = {"weights": WEIGHTS, "means": MEANS, "covariances": COVARIANCES[covariance_type]}
    drawn = family.draw(params, N, np.random.default_rng(1))
    assert drawn.X.shape == (N, 2) and drawn.lengths is None
    np.testing.assert_allclose(_shares(drawn.components, 3), WEIGHTS, atol=0.01)
    full = family.full_covariances(params)
    for j in range(3):
        rows = drawn.X[drawn.components == j]
        np.testing.assert_allclose(rows.mean(axis=0), MEANS[j], atol=0.06)
        np.testing.assert_allclose(np.cov(rows.T), full[j], atol=0.1 * np.abs(full[j]).max())


def test_a_fit_on_a_large_draw_recovers_the_gaussian_mixture():
    family = GaussianFamily(k=3)
    params = {"weights": WEIGHTS, "means": MEANS, "covariances": FULL}
    drawn = family.draw(params, N, np.random.default_rng(2))
    source = LocalBlockSource([Block(b) for b in np.array_split(drawn.X, 4)], sample_size=2000, seed=0)
    fitted = fit_em(family, source, FitSettings(max_iter=300, tol=1e-9, n_init=3, seed=1)).params
    order = np.argsort(fitted["means"][:, 0])[np.argsort(np.argsort(MEANS[:, 0]))]
    np.testing.assert_allclose(fitted["weights"][order], WEIGHTS, atol=0.01)
    np.testing.assert_allclose(fitted["means"][order], MEANS, atol=0.05)
    np.testing.assert_allclose(fitted["covariances"][order], FULL, atol=0.08)


def test_categorical_codes_follow_each_features_probabilities():
    family = CategoricalMixtureFamily(k=2, n_categories=(2, 3))
    probs = np.array([[0.9, 0.1, 0.2, 0.3, 0.5], [0.3, 0.7, 0.6, 0.3, 0.1]])
    params = {"weights": np.array([0.4, 0.6]), "probs": probs, "n_categories": np.array([2.0, 3.0])}
    drawn = family.draw(params, N, np.random.default_rng(3))
    assert set(np.unique(drawn.X[:, 0])) == {0.0, 1.0} and set(np.unique(drawn.X[:, 1])) == {0.0, 1.0, 2.0}
    for j in range(2):
        rows = drawn.X[drawn.components == j]
        np.testing.assert_allclose(
            np.bincount(rows[:, 0].astype(int), minlength=2) / len(rows), probs[j, :2], atol=0.01
        )
        np.testing.assert_allclose(
            np.bincount(rows[:, 1].astype(int), minlength=3) / len(rows), probs[j, 2:], atol=0.01
        )


def test_multinomial_rows_spread_their_totals_and_need_them():
    family = CategoricalMixtureFamily(k=2, kind="multinomial")
    probs = np.array([[0.7, 0.3, 0.0], [0.1, 0.1, 0.8]])
    params = {"weights": np.array([0.5, 0.5]), "probs": probs, "n_categories": np.array([3.0])}
    totals = np.random.default_rng(0).integers(0, 40, size=5000)
    drawn = family.draw(params, 5000, np.random.default_rng(4), trials=totals)
    np.testing.assert_array_equal(drawn.X.sum(axis=1), totals)
    for j in range(2):
        mine = drawn.components == j
        np.testing.assert_allclose(drawn.X[mine].sum(axis=0) / totals[mine].sum(), probs[j], atol=0.01)
    with pytest.raises(ModelError, match="models each row's counts given the row's total: pass trials="):
        family.draw(params, 10, np.random.default_rng(0))
    with pytest.raises(ModelError, match="trials must be non-negative integers"):
        family.draw(params, 2, np.random.default_rng(0), trials=[3, -1])


def test_poisson_draws_have_the_models_rates():
    family = PoissonMixtureFamily(k=2)
    params = {"weights": np.array([0.3, 0.7]), "rates": np.array([[0.5, 12.0], [4.0, 1.0]])}
    drawn = family.draw(params, N, np.random.default_rng(5))
    assert np.all(np.round(drawn.X) == drawn.X) and drawn.X.min() >= 0
    for j in range(2):
        rows = drawn.X[drawn.components == j]
        np.testing.assert_allclose(rows.mean(axis=0), params["rates"][j], rtol=0.03)
        np.testing.assert_allclose(rows.var(axis=0), params["rates"][j], rtol=0.06)  # Poisson: variance = mean


def _transition_frequencies(paths, k):
    counts = np.zeros((k, k))
    np.add.at(counts, (paths[:, :-1].ravel(), paths[:, 1:].ravel()), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def test_hmm_draws_follow_the_chain_and_the_emissions():
    family = GaussianHMMFamily(k=2, covariance_type="diag")
    params = {**CHAIN, "means": np.array([[0.0, 0.0], [4.0, -2.0]]), "covariances": np.array([[1.0, 0.5], [2.0, 0.25]])}
    drawn = family.draw(params, 3000, np.random.default_rng(6), length=40)
    np.testing.assert_array_equal(drawn.lengths, np.full(3000, 40))
    paths = drawn.components.reshape(3000, 40)
    np.testing.assert_allclose(_shares(paths[:, 0], 2), CHAIN["startprob"], atol=0.02)
    np.testing.assert_allclose(_transition_frequencies(paths, 2), CHAIN["transmat"], atol=0.01)
    for j in range(2):
        steps = drawn.X[drawn.components == j]
        np.testing.assert_allclose(steps.mean(axis=0), params["means"][j], atol=0.03)
        np.testing.assert_allclose(steps.var(axis=0), params["covariances"][j], rtol=0.04)


def test_a_fit_on_a_large_draw_recovers_the_categorical_hmm():
    family = CategoricalHMMFamily(2, n_categories=3)
    params = {**CHAIN, "emissionprob": np.array([[0.8, 0.15, 0.05], [0.1, 0.3, 0.6]])}
    drawn = family.draw(params, 2000, np.random.default_rng(7), length=50)
    blocks = [Block(x, lengths=np.full(x.shape[0] // 50, 50)) for x in np.split(drawn.X, 4)]
    source = LocalBlockSource(blocks, sample_size=20_000, seed=0)
    fitted = fit_em(
        family,
        source,
        FitSettings(max_iter=300, tol=1e-9),
        initial_params={
            **params,
            "transmat": np.full((2, 2), 0.5),
            "emissionprob": np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]),
        },
    ).params
    np.testing.assert_allclose(fitted["transmat"], params["transmat"], atol=0.02)
    np.testing.assert_allclose(fitted["emissionprob"], params["emissionprob"], atol=0.02)


def test_the_same_generator_state_draws_the_same_rows():
    family = GaussianFamily(k=3, covariance_type="diag")
    params = {"weights": WEIGHTS, "means": MEANS, "covariances": COVARIANCES["diag"]}
    a, b = family.draw(params, 500, np.random.default_rng(9)), family.draw(params, 500, np.random.default_rng(9))
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.components, b.components)
    assert not np.array_equal(a.X, family.draw(params, 500, np.random.default_rng(10)).X)


def test_arguments_a_family_does_not_take_and_k_means_are_refused_clearly():
    gaussian = GaussianFamily(k=3, covariance_type="spherical")
    params = {"weights": WEIGHTS, "means": MEANS, "covariances": COVARIANCES["spherical"]}
    with pytest.raises(ModelError, match="n \\(the number of rows to draw\\) must be a non-negative integer"):
        gaussian.draw(params, -1, np.random.default_rng(0))
    with pytest.raises(ModelError, match="length applies to sequence families"):
        gaussian.draw(params, 5, np.random.default_rng(0), length=10)
    with pytest.raises(ModelError, match="trials applies to multinomial count rows"):
        gaussian.draw(params, 5, np.random.default_rng(0), trials=10)
    hmm = CategoricalHMMFamily(2, n_categories=3)
    hmm_params = {**CHAIN, "emissionprob": np.full((2, 3), 1 / 3)}
    with pytest.raises(ModelError, match="an HMM draws whole sequences: pass length="):
        hmm.draw(hmm_params, 5, np.random.default_rng(0))
    with pytest.raises(ModelError, match="length \\(the steps of each sequence\\) must be at least 1"):
        hmm.draw(hmm_params, 5, np.random.default_rng(0), length=0)
    kmeans = KMeansFamily(k=3)
    with pytest.raises(ModelError, match="k-means has no spread.*GaussianMixture\\(covarianceType='spherical'\\)"):
        kmeans.draw({"centers": MEANS, "weights": WEIGHTS}, 5, np.random.default_rng(0))
