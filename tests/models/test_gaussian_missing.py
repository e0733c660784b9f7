"""EM for Gaussian mixtures with missing values (``handle_missing="model"``).

The oracle is a slow reference written here, row by row with scipy on the observed
coordinates (Ghahramani & Jordan 1994), independent of the vectorized implementation.
Pure numpy: no JVM.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm
from sklearn.datasets import load_wine

from em_spark.models import Block, GaussianFamily, ModelError, gaussian_missing
from em_spark.models.gaussian_missing import nan_mask, pattern_groups
from em_spark.stats import sum_stats

from .test_gaussian import TYPES, assert_valid_params, blobs, fit

_NK_EPS = 10.0 * np.finfo(np.float64).eps


# ---------------------------------------------------------------------------
# helpers


def mask_at_random(X, fraction=0.2, seed=0):
    """X with about ``fraction`` of its entries set to NaN, independently (missing completely at random)."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    out[rng.random(X.shape) < fraction] = np.nan
    return out


def gappy_data(n=200, d=4, seed=0):
    """Blobs with 20% of the entries missing, one row all missing and one with a single observed value."""
    X = mask_at_random(blobs(n=n, d=d, seed=seed), 0.2, seed)
    X[0] = np.nan
    X[1, [0, 1, 3]] = np.nan
    X[1, 2] = 0.5
    return X


def full_covariances(covariance_type, covariances, k, d):
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.stack([covariances] * k)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return np.stack([c * np.eye(d) for c in covariances])


def reference_posterior(family, X, labels, params):
    """Row by row: responsibilities (n, k), loglik (n,), x̂ (n, k, d), conditional covariances (n, k, d, d)."""
    n, d = X.shape
    k = family.k
    covs = full_covariances(family.covariance_type, params["covariances"], k, d)
    resp, loglik = np.zeros((n, k)), np.zeros(n)
    x_hat, cond = np.zeros((n, k, d)), np.zeros((n, k, d, d))
    for i in range(n):
        o = ~np.isnan(X[i])
        m = ~o
        joint = np.log(params["weights"]).copy()
        for j in range(k):
            mu, S = params["means"][j], covs[j]
            x_hat[i, j, o] = X[i, o]
            if o.any():
                joint[j] += multivariate_normal(mu[o], S[np.ix_(o, o)]).logpdf(X[i, o])
                B = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
                x_hat[i, j, m] = mu[m] + B @ (X[i, o] - mu[o])
                cond[i, j][np.ix_(m, m)] = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
            else:
                x_hat[i, j] = mu
                cond[i, j] = S
        if labels is not None and labels[i] >= 0:
            resp[i, labels[i]] = 1.0
            loglik[i] = joint[labels[i]]
        else:
            loglik[i] = logsumexp(joint)
            resp[i] = np.exp(joint - loglik[i])
    return resp, loglik, x_hat, cond


def reference_em_step(family, X, w, labels, params):
    """(stats around the current means as a dict, new params) of one exact EM iteration, in raw coordinates."""
    d, reg = X.shape[1], family.reg_covar
    resp, loglik, x_hat, cond = reference_posterior(family, X, labels, params)
    wr = resp * w[:, None]
    dev_old = x_hat - params["means"][None]
    stats = {
        "nk": wr.sum(axis=0),
        "sum": np.einsum("nk,nkd->kd", wr, dev_old),
        "sq": np.einsum("nk,nkd,nke->kde", wr, dev_old, dev_old) + np.einsum("nk,nkde->kde", wr, cond),
        "loglik": loglik @ w,
    }
    nk = stats["nk"] + _NK_EPS
    means = np.einsum("nk,nkd->kd", wr, x_hat) / nk[:, None]
    dev = x_hat - means[None]
    scatter = np.einsum("nk,nkd,nke->kde", wr, dev, dev) + np.einsum("nk,nkde->kde", wr, cond)
    full = scatter / nk[:, None, None] + reg * np.eye(d)
    covariances = {
        "full": full,
        "tied": scatter.sum(axis=0) / nk.sum() + reg * np.eye(d),
        "diag": np.diagonal(full, axis1=1, axis2=2),
        "spherical": np.diagonal(full, axis1=1, axis2=2).mean(axis=1),
    }[family.covariance_type]
    return stats, {"weights": nk / nk.sum(), "means": means, "covariances": covariances}


def assert_params_close(ours, theirs, rtol=1e-8):
    for name in ("weights", "means", "covariances"):
        scale = np.max(np.abs(theirs[name]))
        np.testing.assert_allclose(ours[name], theirs[name], rtol=rtol, atol=1e-10 * scale, err_msg=name)


def matched(family, reference, fitted):
    """``fitted`` relabelled to best match ``reference`` (min-cost assignment on component distances)."""
    _, order = linear_sum_assignment(family.component_distances(reference, fitted))
    return family.relabel(fitted, order)


def model(covariance_type="full", k=3, **kwargs):
    return GaussianFamily(k, covariance_type, handle_missing="model", **kwargs)


# Full and tied covariances take one of two code paths per missingness pattern: a pattern
# with many rows gets its own matrix products, small ones are batched (see FullMissing).
# The test data is small, so every pattern is batched unless the threshold is lowered.
TYPES_AND_PATHS = [
    pytest.param("full", "batched", id="full-batched"),
    pytest.param("full", "per-pattern", id="full-per-pattern"),
    pytest.param("tied", "batched", id="tied-batched"),
    pytest.param("tied", "per-pattern", id="tied-per-pattern"),
    pytest.param("diag", None, id="diag"),
    pytest.param("spherical", None, id="spherical"),
]


def use_path(monkeypatch, path):
    if path == "per-pattern":
        monkeypatch.setattr(gaussian_missing, "_LARGE_PATTERN_ROWS", 1)


# ---------------------------------------------------------------------------
# exactness against the slow reference


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("covariance_type, path", TYPES_AND_PATHS)
def test_one_e_step_matches_the_reference(covariance_type, path, labelled, monkeypatch):
    use_path(monkeypatch, path)
    X = gappy_data()
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 2.0, size=len(X))
    labels = np.where(rng.random(len(X)) < 0.2, rng.integers(3, size=len(X)), -1) if labelled else None
    family = model(covariance_type)
    params = family.initialize(Block(X, w), np.random.default_rng(0))
    params, _ = fit(family, X, params, 3, weight=w)  # move off the initialization a little

    ours = family.e_step(Block(X, w, labels=labels), params)
    theirs, _ = reference_em_step(family, X, w, labels, params)
    if covariance_type in ("diag", "spherical"):
        theirs["sq"] = np.diagonal(theirs["sq"], axis1=1, axis2=2)  # sq holds the diagonal terms
    for name, value in theirs.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(ours[name], value, rtol=1e-10, atol=1e-12 * scale, err_msg=name)
    assert ours.weight == pytest.approx(w.sum()) and ours.count == len(X)

    resp, loglik, _, _ = reference_posterior(family, X, labels, params)
    scored = family.score(Block(X, labels=labels), params)
    np.testing.assert_allclose(scored["loglik"], loglik, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.exp(scored["log_resp"]), resp, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "covariance_type, path, labelled",
    [
        ("full", "batched", False),
        ("full", "per-pattern", True),
        ("tied", "batched", True),
        ("tied", "per-pattern", False),
        ("diag", None, False),
        ("diag", None, True),
        ("spherical", None, False),
        ("spherical", None, True),
    ],
)
def test_ten_em_iterations_match_the_reference(covariance_type, path, labelled, monkeypatch):
    use_path(monkeypatch, path)
    X = gappy_data(n=150, seed=3)
    rng = np.random.default_rng(2)
    w = rng.uniform(0.5, 2.0, size=len(X))
    labels = np.where(rng.random(len(X)) < 0.1, rng.integers(3, size=len(X)), -1) if labelled else None
    family = model(covariance_type)
    init = family.initialize(Block(X, w), np.random.default_rng(5))

    ours, history = fit(family, X, init, 10, weight=w, labels=labels)
    theirs, their_history = dict(init), []
    for _ in range(10):
        stats, theirs = reference_em_step(family, X, w, labels, theirs)
        their_history.append(stats["loglik"] / w.sum())
    assert_params_close(ours, theirs)
    np.testing.assert_allclose(history, their_history, rtol=1e-10)


@pytest.mark.parametrize("covariance_type, path", TYPES_AND_PATHS)
def test_impute_matches_the_reference(covariance_type, path, monkeypatch):
    use_path(monkeypatch, path)
    X = gappy_data(seed=4)
    family = model(covariance_type)
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(0)), 5)
    resp, _, x_hat, cond = reference_posterior(family, X, None, params)
    expected = np.einsum("nk,nkd->nd", resp, x_hat)
    second = np.einsum("nk,nkd->nd", resp, np.diagonal(cond, axis1=2, axis2=3) + x_hat**2)
    expected_std = np.sqrt(np.clip(second - expected**2, 0.0, None))

    out = family.impute(Block(X), params)
    gaps = np.isnan(X)
    assert set(out) == {"imputed", "std"} and out["imputed"].shape == out["std"].shape == X.shape
    np.testing.assert_array_equal(out["imputed"][~gaps], X[~gaps])
    assert np.all(out["std"][~gaps] == 0.0)
    np.testing.assert_allclose(out["imputed"][gaps], expected[gaps], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["std"][gaps], expected_std[gaps], rtol=1e-6, atol=1e-9)
    assert np.all(out["std"][gaps] > 0)


# ---------------------------------------------------------------------------
# properties the engine relies on


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_without_nan_the_model_mode_is_bit_identical_to_the_error_mode(covariance_type, labelled):
    X = blobs(n=500, d=4)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.0, 2.0, size=len(X))
    labels = np.where(rng.random(len(X)) < 0.1, rng.integers(3, size=len(X)), -1) if labelled else None
    plain, modelled = GaussianFamily(3, covariance_type), model(covariance_type)
    params = plain.initialize(Block(X, w), np.random.default_rng(1))
    modelled_params = modelled.initialize(Block(X, w), np.random.default_rng(1))
    for name in params:
        assert np.array_equal(params[name], modelled_params[name]), name

    a = plain.e_step(Block(X, w, labels=labels), params)
    b = modelled.e_step(Block(X, w, labels=labels), params)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    for name, value in plain.score(Block(X, labels=labels), params).items():
        assert np.array_equal(value, modelled.score(Block(X, labels=labels), params)[name]), name
    imputed = modelled.impute(Block(X), params)
    assert np.array_equal(imputed["imputed"], X) and not np.any(imputed["std"])


@pytest.mark.parametrize("covariance_type", TYPES)
def test_stats_are_additive_over_random_splits_including_empty_blocks(covariance_type):
    rng = np.random.default_rng(11)
    X = gappy_data(n=600, seed=11)
    weight = rng.uniform(0.0, 3.0, size=len(X))
    weight[::17] = 0.0
    labels = np.where(rng.random(len(X)) < 0.1, rng.integers(3, size=len(X)), -1)
    family = model(covariance_type)
    params = family.initialize(Block(X, weight), np.random.default_rng(2))

    whole = family.e_step(Block(X, weight, labels=labels), params)
    cuts = np.sort(np.concatenate([rng.integers(0, len(X), size=6), [0, 0, 300, 300, len(X)]]))
    parts = [family.e_step(Block(X[a:b], weight[a:b], labels=labels[a:b]), params) for a, b in pairwise(cuts)]
    assert any(p.count == 0 for p in parts)
    total = sum_stats(parts)
    assert set(total) == set(whole) == {"nk", "sum", "sq", "loglik", "weight", "count"}
    for name in whole:
        scale = max(1.0, float(np.max(np.abs(whole[name]))))
        np.testing.assert_allclose(total[name], whole[name], rtol=1e-10, atol=1e-11 * scale, err_msg=name)
    # a block of only incomplete rows, and one of only complete rows, also add up
    gappy = np.isnan(X).any(axis=1)
    split = family.e_step(Block(X[gappy], weight[gappy], labels=labels[gappy]), params) + family.e_step(
        Block(X[~gappy], weight[~gappy], labels=labels[~gappy]), params
    )
    assert split.allclose(whole, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_observed_data_log_likelihood_never_decreases(covariance_type, labelled):
    X = mask_at_random(blobs(n=500, d=3, k=4, spread=2.5), 0.25, seed=9)
    rng = np.random.default_rng(9)
    labels = np.where(rng.random(len(X)) < 0.05, rng.integers(4, size=len(X)), -1) if labelled else None
    family = model(covariance_type, k=4)
    init = family.initialize(Block(X), np.random.default_rng(9))
    _, history = fit(family, X, init, 30, labels=labels)
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[1:])), steps
    assert history[-1] > history[0] + 1e-3  # it did move


@pytest.mark.parametrize("covariance_type, path", TYPES_AND_PATHS)
def test_the_e_step_does_not_depend_on_chunk_sizes(covariance_type, path, monkeypatch):
    use_path(monkeypatch, path)
    X = gappy_data(n=400, seed=6)
    family = model(covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    big = family.e_step(Block(X), params)
    monkeypatch.setattr(gaussian_missing, "_CHUNK_ELEMENTS", 1)  # one row per chunk
    small = family.e_step(Block(X), params)
    assert big.allclose(small, rtol=1e-11, atol=1e-10)


def test_both_full_covariance_paths_give_the_same_statistics(monkeypatch):
    X = gappy_data(n=2000, seed=7)  # some patterns above the threshold, many below
    family = model("full")
    params = family.initialize(Block(X), np.random.default_rng(0))
    sizes = [rows.size for _, rows in pattern_groups(np.isnan(X))]
    assert max(sizes) >= gaussian_missing._LARGE_PATTERN_ROWS > min(sizes)
    mixed = family.e_step(Block(X), params)
    monkeypatch.setattr(gaussian_missing, "_LARGE_PATTERN_ROWS", 1)
    assert family.e_step(Block(X), params).allclose(mixed, rtol=1e-11, atol=1e-10)
    monkeypatch.setattr(gaussian_missing, "_LARGE_PATTERN_ROWS", len(X) + 1)
    assert family.e_step(Block(X), params).allclose(mixed, rtol=1e-11, atol=1e-10)


def test_rows_are_grouped_by_missingness_pattern():
    missing = np.array([[True, False], [False, False], [True, False], [True, True]])
    groups = pattern_groups(missing)
    assert [(p.tolist(), r.tolist()) for p, r in groups] == [
        ([False, False], [1]),
        ([True, False], [0, 2]),
        ([True, True], [3]),
    ]
    assert pattern_groups(np.zeros((0, 2), dtype=bool)) == []
    assert nan_mask(np.ones((3, 2))) is None and nan_mask(np.empty((0, 2))) is None
    assert nan_mask(np.array([[np.inf, -np.inf]])) is None  # inf − inf is NaN, but no entry is
    np.testing.assert_array_equal(nan_mask(np.array([[1.0, np.nan]])), [[False, True]])


# ---------------------------------------------------------------------------
# statistical quality


def correlated_mixture(n=3000, d=5, seed=0, shared=False):
    """Three well-separated, strongly correlated Gaussian clusters (with one covariance if ``shared``)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, d))
    z = rng.integers(3, size=n)
    X = np.empty((n, d))
    A = rng.normal(size=(d, d))
    for j in range(3):
        A = A if shared else rng.normal(size=(d, d))
        cov = A @ A.T + 0.1 * np.eye(d)  # strongly correlated: missing values are predictable
        X[z == j] = rng.multivariate_normal(centers[j], cov, size=int((z == j).sum()))
    return X


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_fit_with_missing_values_is_close_to_the_complete_data_fit(covariance_type, seed):
    X = correlated_mixture(seed=seed, shared=covariance_type == "tied")
    Xm = mask_at_random(X, 0.2, seed=seed + 1)
    family = model(covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(0))
    complete, _ = fit(family, X, init, 100)
    gappy, _ = fit(family, Xm, init, 100)
    gappy = matched(family, complete, gappy)

    # 20% of the entries are gone, so the estimates move by their (larger) sampling error:
    # means within 0.1 of a component's scale (its RMS standard deviation), covariances
    # within 10% (Frobenius), weights within 0.01. Seen: at most 0.055, 0.054 and 0.006.
    scale = np.sqrt(np.mean(np.diagonal(family.full_covariances(complete), axis1=1, axis2=2), axis=1))

    def errors(fitted):
        mean_error = np.linalg.norm(fitted["means"] - complete["means"], axis=1) / scale
        cov_a, cov_b = family.full_covariances(fitted), family.full_covariances(complete)
        cov_error = np.linalg.norm(cov_a - cov_b, axis=(1, 2)) / np.linalg.norm(cov_b, axis=(1, 2))
        return mean_error, cov_error

    mean_error, cov_error = errors(gappy)
    assert np.all(mean_error < 0.1), mean_error
    assert np.all(cov_error < 0.1), cov_error
    np.testing.assert_allclose(gappy["weights"], complete["weights"], atol=0.01)

    # the test has teeth: filling with column means and fitting is far off (seen: errors 0.17 to 1.6)
    filled = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
    naive_mean_error, naive_cov_error = errors(matched(family, complete, fit(family, filled, init, 100)[0]))
    assert mean_error.max() < 0.5 * naive_mean_error.max()
    assert cov_error.max() < 0.5 * naive_cov_error.max()


@pytest.mark.parametrize(
    "data, covariance_type, k",
    [
        pytest.param(correlated_mixture, "full", 3, id="correlated-synthetic"),
        pytest.param(lambda: load_wine().data, "diag", 3, id="wine-standardized-diag"),
        pytest.param(lambda: load_wine().data, "tied", 3, id="wine-standardized-tied"),
    ],
)
def test_imputation_beats_column_means(data, covariance_type, k):
    X = data().astype(np.float64)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    Xm = mask_at_random(X, 0.2, seed=2)
    family = model(covariance_type, k=k)
    params, _ = fit(family, Xm, family.initialize(Block(Xm), np.random.default_rng(0)), 100)
    out = family.impute(Block(Xm), params)
    gaps = np.isnan(Xm)
    rmse = np.sqrt(np.mean((out["imputed"][gaps] - X[gaps]) ** 2))
    column_means = np.broadcast_to(np.nanmean(Xm, axis=0), X.shape)
    baseline = np.sqrt(np.mean((column_means[gaps] - X[gaps]) ** 2))
    assert rmse < 0.8 * baseline, (rmse, baseline)
    # the reported std is calibrated: the standardized errors have a mean square near 1
    z = (out["imputed"][gaps] - X[gaps]) / out["std"][gaps]
    assert 0.5 < np.mean(z**2) < 2.0, np.mean(z**2)


# ---------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("covariance_type", TYPES)
def test_an_all_missing_row_carries_only_the_mixing_weights(covariance_type):
    X = blobs(n=200, d=3)
    family = model(covariance_type)
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(0)), 5)
    row = np.full((1, 3), np.nan)

    scored = family.score(Block(row), params)
    assert scored["loglik"][0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.exp(scored["log_resp"][0]), params["weights"], rtol=1e-12)

    stats = family.e_step(Block(row, np.array([2.0])), params)
    np.testing.assert_allclose(stats["nk"], 2.0 * params["weights"], rtol=1e-12)
    assert not np.any(stats["sum"])  # x̂ = μ: no pull on the means
    covs = family.full_covariances(params)
    expected_sq = 2.0 * params["weights"][:, None, None] * covs  # C = Σ: the covariances are not shrunk
    if covariance_type in ("diag", "spherical"):
        expected_sq = np.diagonal(expected_sq, axis1=1, axis2=2)
    np.testing.assert_allclose(stats["sq"], expected_sq, rtol=1e-12)
    assert stats.loglik == pytest.approx(0.0, abs=1e-12) and stats.weight == 2.0

    out = family.impute(Block(row), params)
    mixture_mean = params["weights"] @ params["means"]
    np.testing.assert_allclose(out["imputed"][0], mixture_mean, rtol=1e-12)
    variance = params["weights"] @ (np.diagonal(covs, axis1=1, axis2=2) + (params["means"] - mixture_mean) ** 2)
    np.testing.assert_allclose(out["std"][0], np.sqrt(variance), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_single_observed_coordinate_scores_its_one_dimensional_marginal(covariance_type):
    X = blobs(n=200, d=3)
    family = model(covariance_type)
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(0)), 5)
    covs = family.full_covariances(params)
    row = np.array([[np.nan, 1.5, np.nan]])
    joint = np.log(params["weights"]) + norm.logpdf(1.5, params["means"][:, 1], np.sqrt(covs[:, 1, 1]))
    scored = family.score(Block(row), params)
    assert scored["loglik"][0] == pytest.approx(logsumexp(joint), rel=1e-12)
    out = family.impute(Block(row), params)
    assert out["imputed"][0, 1] == 1.5 and out["std"][0, 1] == 0.0
    assert np.all(out["std"][0, [0, 2]] > 0)


def test_handle_missing_error_says_what_to_do():
    X = blobs(n=100, d=3)
    family = GaussianFamily(3)
    assert family.handle_missing == "error" and not family.models_missing
    params = family.initialize(Block(X), np.random.default_rng(0))
    gappy = X.copy()
    gappy[[4, 7], 1] = np.nan
    message = r'missing values \(NaN\) in 2 of its 100 rows; clean the data .*handleMissing="model"'
    with pytest.raises(ModelError, match=message):
        family.e_step(Block(gappy), params)
    with pytest.raises(ModelError, match=message):
        family.score(Block(gappy), params)
    with pytest.raises(ModelError, match=message):
        family.initialize(Block(gappy), np.random.default_rng(0))
    # imputing needs no fit with missing values: a complete-data model fills gaps in new data
    assert np.all(np.isfinite(family.impute(Block(gappy), params)["imputed"]))


def test_handle_missing_is_a_validated_hyperparameter_in_the_config():
    with pytest.raises(ModelError, match=r"handleMissing must be one of \['error', 'model'\], got 'drop'"):
        GaussianFamily(2, handle_missing="drop")
    family = model("diag", k=2)
    assert family.models_missing
    config = family.config()
    assert config["handle_missing"] == "model"
    assert GaussianFamily(**{k: v for k, v in config.items() if k != "name"}) == family
    old = {"k": 2, "covariance_type": "diag", "reg_covar": 1e-6, "init_mode": "k-means++"}  # before the field
    assert GaussianFamily(**old).handle_missing == "error"


@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_initialize_from_a_sample_with_missing_values(covariance_type, init_mode):
    X = gappy_data(n=300, seed=8)
    family = model(covariance_type, init_mode=init_mode)
    params = family.initialize(Block(X), np.random.default_rng(0))
    assert_valid_params(family, params, 4)
    X[:, 2] = np.nan
    with pytest.raises(ModelError, match=r"feature column\(s\) \[2\] are missing \(NaN\) in every sampled row"):
        family.initialize(Block(X), np.random.default_rng(0))


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_dead_component_is_reseeded_from_a_sample_with_missing_values(covariance_type):
    X = gappy_data(n=300, seed=5)[1:]  # no all-missing row: it would keep every component alive
    family = model(covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    params = {**params, "means": params["means"].copy()}
    params["means"][2] = 1e6  # so far away it gets no responsibility
    stats = family.e_step(Block(X), params)
    assert stats["nk"][2] == 0.0
    result = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    assert len(result.events) == 1 and "component 2 lost its mass" in result.events[0]
    assert_valid_params(family, result.params, 4)
    after, _ = fit(family, X, result.params, 5)
    assert_valid_params(family, after, 4)
