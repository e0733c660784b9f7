"""A Dirichlet prior on the mixing weights (MAP EM), the same for every mixture family.

Pure numpy. The weights' M-step under a symmetric Dirichlet(α) is checked against a numerical
maximizer of Σ_j nk_j log w_j + (α − 1) Σ_j log w_j over the simplex (scipy), and each family's
fit must never lower the log-posterior, loglik + log_prior, which the engine's SQUAREM safeguard
compares.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax

from em_spark.app.demo_data import make_blobs, make_contaminated_blobs, make_poisson_counts
from em_spark.models import Block, ModelError
from em_spark.models.categorical import CategoricalMixtureFamily
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.poisson import PoissonMixtureFamily
from em_spark.models.priors import dirichlet_log_prior, map_weights
from em_spark.models.student_t import StudentTMixtureFamily


def _numerical_map_weights(nk: np.ndarray, alpha: float) -> np.ndarray:
    """argmax over the simplex by unconstrained optimization of softmax logits."""

    def negative(z: np.ndarray) -> float:
        log_w = log_softmax(z)
        return -float(nk @ log_w + (alpha - 1.0) * log_w.sum())

    result = minimize(negative, np.zeros(nk.size), method="BFGS", options={"gtol": 1e-12})
    return np.exp(log_softmax(result.x))


@pytest.mark.parametrize("alpha", [1.0, 2.5, 20.0])
def test_map_weights_maximize_the_dirichlet_posterior(alpha):
    nk = np.array([120.0, 30.5, 7.25, 900.0])
    np.testing.assert_allclose(map_weights(nk, alpha), _numerical_map_weights(nk, alpha), atol=1e-6)


def test_a_concentration_below_one_can_empty_a_component():
    weights = map_weights(np.array([100.0, 50.0, 0.2]), 0.5)  # max(0.2 - 0.5, 0) = 0
    assert weights[2] == 0.0 and weights.sum() == pytest.approx(1.0)


def _data(name: str):
    if name == "categorical":
        rng = np.random.default_rng(0)
        kind = rng.integers(0, 3, size=1500)
        probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
        X = np.stack([np.array([rng.choice(3, p=probs[c]) for c in kind]) for _ in range(4)], axis=1)
        return CategoricalMixtureFamily, X.astype(np.float64), {}
    if name == "poisson":
        X, _, _ = make_poisson_counts(rows=1500, features=4, components=3, seed=1)
        return PoissonMixtureFamily, X, {}
    if name == "student_t":
        X, _ = make_contaminated_blobs(rows=1500, seed=2)
        return StudentTMixtureFamily, X, {"covariance_type": "diag"}
    X, _, _ = make_blobs(rows=1500, features=3, components=3, separation=2.0, seed=3)
    return GaussianFamily, X, {"covariance_type": "full"}


FAMILIES = ["categorical", "poisson", "student_t", "gaussian"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("alpha", [0.8, 4.0])
def test_every_mixture_takes_the_prior_and_never_lowers_the_log_posterior(name, alpha):
    cls, X, extra = _data(name)
    family = cls(k=3, weights_prior=alpha, **extra)
    block = Block(X)
    params = family.initialize(block, np.random.default_rng(0))
    objective = []
    for _ in range(25):
        stats = family.e_step(block, params)
        objective.append(stats.loglik + family.log_prior(params))
        new = family.m_step(stats, params, block, np.random.default_rng(0)).params
        # the weights are the Dirichlet MAP of the expected counts
        np.testing.assert_allclose(new["weights"], map_weights(np.asarray(stats["nk"]), alpha), rtol=1e-12)
        params = new
    objective = np.array(objective)
    assert np.all(np.diff(objective) >= -1e-9 * np.abs(objective[1:])), np.diff(objective)
    assert family.log_prior(params) == pytest.approx(
        dirichlet_log_prior(params["weights"], alpha) + cls(k=3, **extra).log_prior(params)
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_a_bad_concentration_is_refused_naming_the_key_and_the_default_is_not_saved(name):
    cls, _, extra = _data(name)
    for bad in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(ModelError, match="weightsPrior must be a finite number > 0"):
            cls(k=3, weights_prior=bad, **extra)
    assert "weights_prior" not in cls(k=3, **extra).config()  # checkpoints written before it resume
    assert cls(k=3, weights_prior=2.0, **extra).config()["weights_prior"] == 2.0


def test_fixed_weights_and_a_weights_prior_do_not_mix():
    with pytest.raises(ModelError, match="weightsPrior has no effect with fixWeights"):
        CategoricalMixtureFamily(k=2, fix_weights=True, weights_prior=2.0)
