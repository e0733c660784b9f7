"""The Student-t mixture without a JVM: EM against an independent scipy reference of the same ECM
updates from the same start, a log-likelihood that never decreases, robustness on contaminated data
where a Gaussian mixture is dragged, draws, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import digamma, logsumexp
from scipy.stats import multivariate_t

from em_spark.app.demo_data import make_blobs, make_contaminated_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily, ModelError, StudentTMixtureFamily
from em_spark.models.base import Block


def reference_ecm(X, params, iterations, covariance_type, estimate_dof):
    """Peel and McLachlan's ECM for t mixtures written out with scipy: multivariate_t's log density,
    u = (ν + d) / (ν + δ), the u-weighted means and scales, and each ν the root of
    −ψ(ν/2) + log(ν/2) + 1 + mean_r(log u − u) + ψ((ν_old + d)/2) − log((ν_old + d)/2)."""
    w, mu, cov, nu = (np.array(params[n], dtype=float) for n in ("weights", "means", "covariances", "dof"))
    n, d = X.shape
    k = len(w)
    history = []
    for _ in range(iterations):
        full = cov if covariance_type == "full" else np.array([np.diag(c) for c in cov])
        log_joint = np.stack(
            [np.log(w[j]) + multivariate_t(mu[j], full[j], df=nu[j]).logpdf(X) for j in range(k)], axis=1
        )
        loglik = logsumexp(log_joint, axis=1)
        history.append(loglik.sum())
        r = np.exp(log_joint - loglik[:, None])
        for j in range(k):
            diff = X - mu[j]
            maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(full[j]), diff)
            u = (nu[j] + d) / (nu[j] + maha)
            nk = r[:, j].sum()
            mu_j = (r[:, j] * u) @ X / (r[:, j] * u).sum()
            centered = X - mu_j
            scatter = (centered * (r[:, j] * u)[:, None]).T @ centered / nk
            cov_j = scatter if covariance_type == "full" else np.diag(scatter).copy()
            if estimate_dof:
                c = 1 + (r[:, j] * (np.log(u) - u)).sum() / nk + digamma((nu[j] + d) / 2) - np.log((nu[j] + d) / 2)
                nu[j] = brentq(lambda v, c=c: -digamma(v / 2) + np.log(v / 2) + c, 0.05, 1e4, xtol=1e-12, rtol=1e-12)
            mu[j], cov[j] = mu_j, cov_j
        w = r.sum(axis=0) / n
    return {"weights": w, "means": mu, "covariances": cov, "dof": nu}, np.array(history)


@pytest.fixture(scope="module")
def blobs():
    X, _, _ = make_blobs(1500, 2, 3, separation=4.0, seed=5)
    return X


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("estimate_dof", [True, False])
def test_em_matches_a_scipy_reference_of_the_same_updates_from_the_same_start(blobs, covariance_type, estimate_dof):
    family = StudentTMixtureFamily(
        k=3, covariance_type=covariance_type, dof=4.0, estimate_dof=estimate_dof, reg_covar=0.0
    )
    start = family.initialize(Block(blobs), np.random.default_rng(0))
    source = LocalBlockSource([Block(b) for b in np.array_split(blobs, 3)], sample_size=500, seed=1)
    result = fit_em(family, source, FitSettings(max_iter=15, tol=0.0), initial_params=start)
    expected, history = reference_ecm(blobs, start, 15, covariance_type, estimate_dof)
    np.testing.assert_allclose(np.array(result.history), history / len(blobs), rtol=1e-10)
    for name in ("weights", "means", "covariances", "dof"):
        np.testing.assert_allclose(result.params[name], expected[name], rtol=1e-8, atol=1e-10, err_msg=name)
    assert np.all(np.diff(result.history) >= -1e-12)  # an ECM: the log-likelihood never decreases
    if not estimate_dof:
        np.testing.assert_array_equal(result.params["dof"], 4.0)


def test_gross_outliers_drag_a_gaussian_mixture_but_not_the_t_mixture():
    X, truth = make_contaminated_blobs()
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], sample_size=3000, seed=1)
    settings = FitSettings(max_iter=300, tol=1e-8, n_init=4, seed=2)

    def mean_error(params):
        distance = np.linalg.norm(params["means"][:, None] - truth[None], axis=2)
        return distance.min(axis=0).max()  # the worst-recovered true cluster

    t = fit_em(StudentTMixtureFamily(k=3), source, settings).params
    gaussian = fit_em(GaussianFamily(k=3), source, settings).params
    assert mean_error(t) < 0.1
    assert mean_error(gaussian) > 10 * mean_error(t)
    # scored with the t mixture, the outliers are the rows of lowest likelihood: an anomaly flag finds them
    loglik = StudentTMixtureFamily(k=3).score(Block(X), t)["loglik"]
    lowest = np.argsort(loglik)[:150]
    assert np.isin(np.arange(150), lowest).mean() > 0.9


def test_statistics_of_any_split_add_up_to_the_whole(blobs):
    family = StudentTMixtureFamily(k=3, dof=3.0)
    params = family.initialize(Block(blobs), np.random.default_rng(1))
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=len(blobs))
    whole = family.e_step(Block(blobs, w), params)
    total = family.e_step(Block(blobs[:7], w[:7]), params) + family.e_step(Block(blobs[7:], w[7:]), params)
    for name in whole:
        np.testing.assert_allclose(total[name], whole[name], rtol=1e-11, err_msg=name)


def test_draws_have_the_models_heavy_tails():
    family = StudentTMixtureFamily(k=1, covariance_type="diag")
    params = {
        "weights": np.array([1.0]),
        "means": np.array([[1.0, -2.0]]),
        "covariances": np.array([[1.0, 4.0]]),
        "dof": np.array([5.0]),
    }
    X = family.draw(params, 200_000, np.random.default_rng(3)).X
    np.testing.assert_allclose(np.median(X, axis=0), [1.0, -2.0], atol=0.02)
    # a t_5 has variance ν/(ν − 2) times its scale
    np.testing.assert_allclose(X.var(axis=0), np.array([1.0, 4.0]) * 5 / 3, rtol=0.05)
    assert family.score(Block(X[:1000]), params)["loglik"].mean() == pytest.approx(
        multivariate_t([1.0, -2.0], np.diag([1.0, 4.0]), df=5).logpdf(X[:1000]).mean(), rel=1e-12
    )


def test_unconstrained_coordinates_round_trip():
    family = StudentTMixtureFamily(k=2)
    params = {
        "weights": np.array([0.4, 0.6]),
        "means": np.array([[0.0, 1.0], [2.0, 3.0]]),
        "covariances": np.array([[[2.0, 0.3], [0.3, 1.0]], [[1.0, 0.0], [0.0, 0.5]]]),
        "dof": np.array([3.0, 40.0]),
    }
    back = family.from_unconstrained(family.to_unconstrained(params), params)
    for name, value in params.items():
        np.testing.assert_allclose(back[name], value, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dof": 0.0}, r"dof \(degrees of freedom\) must be a number in \[0.05, 10000\]"),
        ({"dof": -3}, r"dof \(degrees of freedom\) must be a number"),
        ({"dof": float("inf")}, r"dof \(degrees of freedom\) must be a number"),
        ({"covariance_type": "tied"}, r"covarianceType must be one of \['full', 'diag'\] for a Student-t mixture"),
        ({"estimate_dof": "yes"}, "estimateDof must be true or false"),
        ({"reg_covar": -1.0}, "regCovar must be a finite non-negative number"),
    ],
)
def test_bad_hyperparameters_are_refused_naming_them(kwargs, message):
    with pytest.raises(ModelError, match=message):
        StudentTMixtureFamily(**{"k": 2, **kwargs})


def test_an_initial_model_with_bad_dof_or_shapes_is_refused():
    family = StudentTMixtureFamily(k=2, covariance_type="diag")
    good = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": [[1.0, 1.0], [2.0, 2.0]]}
    np.testing.assert_array_equal(family.params_from_public(good, 2)["dof"], [10.0, 10.0])
    with pytest.raises(ModelError, match=r"initialModel dof must lie in \[0.05, 10000\]"):
        family.params_from_public({**good, "dof": [0.0, 3.0]}, 2)
    with pytest.raises(ModelError, match="covariances"):
        family.params_from_public({**good, "covariances": [[1.0, -1.0], [2.0, 2.0]]}, 2)


def test_labelled_rows_are_clamped_to_their_component_and_name_the_components():
    """Semi-supervised, as the Gaussian mixture: a labelled row's responsibility is one-hot on its
    label (its statistics are those of that component alone), and a few labels (2%) name the
    components after them whatever the seed; unlabelled, the seeds name them differently."""
    X, means = make_contaminated_blobs(rows=3000, outlier_fraction=0.0, seed=8)
    truth = np.argmin(np.linalg.norm(X[:, None] - means[None], axis=2), axis=1)
    labels = np.full(X.shape[0], -1)
    picked = np.random.default_rng(0).choice(X.shape[0], size=60, replace=False)
    labels[picked] = truth[picked]
    family = StudentTMixtureFamily(3, "diag")
    params = family.initialize(Block(X), np.random.default_rng(0))
    stats = family.e_step(Block(X[picked[:1]], labels=labels[picked[:1]]), params)
    expected = np.zeros(3)
    expected[labels[picked[0]]] = 1.0
    np.testing.assert_array_equal(stats["nk"], expected)
    orders = set()
    for seed in range(4):
        settings = FitSettings(max_iter=100, tol=1e-8, seed=seed)
        plain = fit_em(family, LocalBlockSource([Block(X)]), settings).params
        orders.add(tuple(np.argmin(np.linalg.norm(plain["means"][:, None] - means[None], axis=2), axis=1)))
        labelled = fit_em(family, LocalBlockSource([Block(X, labels=labels)]), settings).params
        np.testing.assert_allclose(labelled["means"], means, atol=0.15)
    assert len(orders) > 1  # without labels the component ids are arbitrary
