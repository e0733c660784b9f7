"""The Gaussian family against scikit-learn, and the properties the Spark engine relies on.

Pure numpy: no JVM. scikit-learn is the oracle (a test dependency only).
"""

from __future__ import annotations

import json
import warnings
from itertools import pairwise, permutations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import em_spark.models.compiled as compiled_module
import em_spark.models.gaussian as gaussian_module
import em_spark.models.kernels as kernels_module
from em_spark.models import FAMILIES, Block, EMFamily, GaussianFamily, ModelError, MStepResult
from em_spark.stats import Stats, sum_stats

TYPES = ["full", "tied", "diag", "spherical"]


# ---------------------------------------------------------------------------
# helpers


def blobs(n=600, d=3, k=3, seed=0, spread=4.0):
    """Well-mixed synthetic clusters with different shapes, in random order."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(k, size=n)
    mixing = rng.normal(size=(k, d, d)) * 0.6 + np.eye(d)
    return centers[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mixing[labels])


def iris():
    return load_iris().data.astype(np.float64)


def wine_standardized():
    X = load_wine().data.astype(np.float64)
    return (X - X.mean(axis=0)) / X.std(axis=0)


def fit(family, X, params, n_iter, weight=None, sample=None, labels=None):
    """Run our E-step on the whole data and the M-step ``n_iter`` times; return params and history."""
    block = Block(X, weight, labels=labels)
    sample = block if sample is None else sample
    history = []
    for _ in range(n_iter):
        stats = family.e_step(block, params)
        history.append(stats.loglik / stats.weight)
        params = family.m_step(stats, params, sample, np.random.default_rng(0)).params
    return params, np.array(history)


def precisions_from_covariances(covariances, covariance_type):
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(covariances)
    return 1.0 / covariances


def sklearn_from(family, params, **kwargs):
    """A GaussianMixture starting exactly from our parameters."""
    return GaussianMixture(
        n_components=family.k,
        covariance_type=family.covariance_type,
        reg_covar=family.reg_covar,
        weights_init=params["weights"],
        means_init=params["means"],
        precisions_init=precisions_from_covariances(params["covariances"], family.covariance_type),
        **kwargs,
    )


def sklearn_fit(family, params, X, max_iter):
    gm = sklearn_from(family, params, tol=0.0, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never "converges"
        gm.fit(X)
    return gm


def assert_params_close(ours, theirs, rtol=1e-6):
    for name in ("weights", "means", "covariances"):
        scale = np.max(np.abs(theirs[name]))
        np.testing.assert_allclose(ours[name], theirs[name], rtol=rtol, atol=1e-9 * scale, err_msg=name)


def assert_valid_params(family, params, d):
    k = family.k
    cov_shapes = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    assert params["weights"].shape == (k,)
    assert params["means"].shape == (k, d)
    assert params["covariances"].shape == cov_shapes[family.covariance_type]
    assert params["precisions_cholesky"].shape == cov_shapes[family.covariance_type]
    for value in params.values():
        assert value.dtype == np.float64
        assert np.all(np.isfinite(value))
    assert np.all(params["weights"] >= 0)
    assert params["weights"].sum() == pytest.approx(1.0, abs=1e-12)
    if family.covariance_type in ("full", "tied"):
        np.linalg.cholesky(params["covariances"])  # raises if not positive definite
    else:
        assert np.all(params["covariances"] > 0)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Force many E-step chunks of an odd size (numpy and compiled kernels), so chunk boundaries are exercised."""
    monkeypatch.setattr(kernels_module, "_SCRATCH_BYTES", 0)
    monkeypatch.setattr(kernels_module, "_MIN_CHUNK_ROWS", 7)
    monkeypatch.setattr(compiled_module, "_CHUNK_ROWS", 7)


# ---------------------------------------------------------------------------
# agreement with scikit-learn


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(blobs, id="synthetic"),
        pytest.param(iris, id="iris"),
        pytest.param(wine_standardized, id="wine-standardized"),
        pytest.param(lambda: load_wine().data.astype(np.float64), id="wine-raw"),
    ],
)
def test_twenty_em_iterations_match_sklearn_from_the_same_initial_model(covariance_type, data):
    X = data()
    family = GaussianFamily(3, covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(42))

    ours, history = fit(family, X, init, n_iter=20)
    gm = sklearn_fit(family, init, X, max_iter=20)

    assert_params_close(ours, {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_})
    np.testing.assert_allclose(ours["precisions_cholesky"], gm.precisions_cholesky_, rtol=1e-6, atol=1e-9)
    # sklearn's lower bound of iteration i is the average log-likelihood before M-step i
    np.testing.assert_allclose(history, gm.lower_bounds_, rtol=1e-9)
    assert history[-1] == pytest.approx(gm.lower_bound_, rel=1e-9)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_many_chunks_per_block_match_sklearn(covariance_type, tiny_chunks):
    X = blobs(n=500, d=4)
    family = GaussianFamily(3, covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(7))
    ours, history = fit(family, X, init, n_iter=5)
    gm = sklearn_fit(family, init, X, max_iter=5)
    assert_params_close(ours, {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_})
    np.testing.assert_allclose(history, gm.lower_bounds_, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_many_features_use_the_syrk_path_and_still_match_sklearn(covariance_type):
    d = 40
    assert d >= kernels_module._SYRK_MIN_FEATURES
    X = blobs(n=900, d=d, k=2, spread=3.0)
    family = GaussianFamily(2, covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(3))
    ours, history = fit(family, X, init, n_iter=3)
    gm = sklearn_fit(family, init, X, max_iter=3)
    assert_params_close(ours, {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_})
    np.testing.assert_allclose(history, gm.lower_bounds_, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_score_matches_sklearn_predict_proba_and_score_samples(covariance_type):
    X = iris()
    family = GaussianFamily(3, covariance_type)
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(1)), n_iter=5)
    gm = sklearn_fit(family, params, X, max_iter=1)
    # put sklearn exactly on our parameters (fit ran one step from them)
    gm.weights_, gm.means_ = params["weights"], params["means"]
    gm.covariances_, gm.precisions_cholesky_ = params["covariances"], params["precisions_cholesky"]

    scored = family.score(Block(X), params)
    assert scored["log_resp"].shape == (len(X), 3)
    assert scored["loglik"].shape == (len(X),)
    np.testing.assert_allclose(np.exp(scored["log_resp"]).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(scored["log_resp"]), gm.predict_proba(X), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(scored["loglik"], gm.score_samples(X), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_n_parameters_equals_sklearn(covariance_type):
    X = blobs(d=5)
    family = GaussianFamily(4, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    gm = sklearn_fit(family, params, X, max_iter=1)
    assert family.n_parameters(params) == gm._n_parameters()


# ---------------------------------------------------------------------------
# numerics the engine relies on


@pytest.mark.parametrize("covariance_type", TYPES)
def test_data_far_from_the_origin_fits_like_centered_data(covariance_type):
    offset = 1e8
    X = blobs(n=800, d=3, spread=3.0)
    family = GaussianFamily(3, covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(5))
    shifted_init = dict(init, means=init["means"] + offset)

    near, near_history = fit(family, X, init, n_iter=15)
    far, far_history = fit(family, X + offset, shifted_init, n_iter=15)

    scale = np.max(np.abs(near["covariances"]))
    np.testing.assert_allclose(far["covariances"], near["covariances"], rtol=1e-6, atol=1e-9 * scale)
    np.testing.assert_allclose(far["weights"], near["weights"], rtol=1e-6)
    np.testing.assert_allclose(far["means"] - offset, near["means"], atol=1e-6)
    np.testing.assert_allclose(far_history, near_history, rtol=1e-7)

    # the test has teeth: raw second moments (E[x²] − E[x]²) lose everything at this offset
    x = (X + offset)[:, 0]
    raw_variance = np.mean(x * x) - np.mean(x) ** 2
    assert abs(raw_variance - np.var(X[:, 0])) > 1e-3 * np.var(X[:, 0])


@pytest.mark.parametrize("covariance_type", TYPES)
def test_stats_are_additive_over_random_splits_including_empty_blocks(covariance_type):
    rng = np.random.default_rng(11)
    X = blobs(n=700, d=4)
    weight = rng.uniform(0.0, 3.0, size=len(X))
    weight[::17] = 0.0
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X, weight), np.random.default_rng(2))

    whole = family.e_step(Block(X, weight), params)
    cuts = np.sort(np.concatenate([rng.integers(0, len(X), size=6), [0, 0, 350, 350, len(X)]]))
    parts = [family.e_step(Block(X[a:b], weight[a:b]), params) for a, b in pairwise(cuts)]
    assert any(p.count == 0 for p in parts)  # empty blocks are part of the split

    total = sum_stats(parts)
    assert set(total) == set(whole) == {"nk", "sum", "sq", "loglik", "weight", "count"}
    for name in whole:
        scale = max(1.0, float(np.max(np.abs(whole[name]))))
        np.testing.assert_allclose(total[name], whole[name], rtol=1e-10, atol=1e-11 * scale, err_msg=name)
    assert total.count == len(X)
    assert total.weight == pytest.approx(weight.sum())


@pytest.mark.parametrize("covariance_type", TYPES)
def test_e_step_of_an_empty_block_is_zero_stats_of_the_right_shapes(covariance_type):
    X = blobs(d=3)
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    empty = family.e_step(Block(np.empty((0, 3))), params)
    full = family.e_step(Block(X), params)
    for name in full:
        assert empty[name].shape == full[name].shape
        assert not np.any(empty[name])
    assert (empty + full).allclose(full)
    scored = family.score(Block(np.empty((0, 3))), params)
    assert scored["log_resp"].shape == (0, 3) and scored["loglik"].shape == (0,)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_e_step_does_not_depend_on_the_chunk_size(covariance_type, monkeypatch):
    X = blobs(n=1000, d=4)
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    one_chunk = family.e_step(Block(X), params)
    monkeypatch.setattr(kernels_module, "_SCRATCH_BYTES", 0)
    monkeypatch.setattr(kernels_module, "_MIN_CHUNK_ROWS", 13)
    monkeypatch.setattr(compiled_module, "_CHUNK_ROWS", 13)
    assert one_chunk.allclose(family.e_step(Block(X), params), rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_integer_sample_weights_equal_duplicated_rows(covariance_type):
    rng = np.random.default_rng(3)
    X = blobs(n=300, d=3)
    counts = rng.integers(0, 4, size=len(X))
    family = GaussianFamily(3, covariance_type)
    init = family.initialize(Block(X), np.random.default_rng(0))

    weighted = family.e_step(Block(X, counts.astype(np.float64)), init)
    duplicated = family.e_step(Block(np.repeat(X, counts, axis=0)), init)
    for name in ("nk", "sum", "sq", "loglik", "weight"):
        np.testing.assert_allclose(weighted[name], duplicated[name], rtol=1e-10, atol=1e-9, err_msg=name)

    by_weight, _ = fit(family, X, init, n_iter=10, weight=counts.astype(np.float64))
    by_rows, _ = fit(family, np.repeat(X, counts, axis=0), init, n_iter=10)
    assert_params_close(by_weight, by_rows, rtol=1e-8)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
def test_log_likelihood_never_decreases(covariance_type, init_mode):
    X = blobs(n=500, d=3, k=4, spread=2.5)
    family = GaussianFamily(4, covariance_type, init_mode=init_mode)
    _, history = fit(family, X, family.initialize(Block(X), np.random.default_rng(9)), n_iter=30)
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[1:])), steps


# ---------------------------------------------------------------------------
# initialization


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
def test_initialize_is_bit_identical_for_the_same_seed_and_valid(covariance_type, init_mode):
    X = blobs(n=400, d=3)
    weight = np.random.default_rng(0).uniform(0.5, 2.0, size=len(X))
    family = GaussianFamily(3, covariance_type, init_mode=init_mode)
    first = family.initialize(Block(X, weight), np.random.default_rng(123))
    second = family.initialize(Block(X, weight), np.random.default_rng(123))
    assert first.keys() == second.keys() == {"weights", "means", "covariances", "precisions_cholesky"}
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    assert_valid_params(family, first, 3)
    if init_mode == "random":
        # means are k distinct sample points
        assert len({tuple(m) for m in first["means"]}) == 3
        assert all(any(np.array_equal(m, x) for x in X) for m in first["means"])


def test_kmeans_plus_plus_initialization_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    X = np.concatenate([c + rng.normal(size=(100, 2)) for c in centers])
    params = GaussianFamily(3).initialize(Block(X), np.random.default_rng(4))
    found = params["means"][np.argsort(params["means"] @ [1.0, 10.0])]
    np.testing.assert_allclose(found, centers[[0, 1, 2]], atol=0.5)
    np.testing.assert_allclose(params["weights"], 1 / 3, atol=1e-12)


def test_initialize_uses_sample_weights_in_kmeans():
    # the zero-weight far point must never become a center or pull one
    X = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [1000.0]])
    weight = np.array([1, 1, 1, 1, 1, 1, 0.0])
    for seed in range(5):
        params = GaussianFamily(2).initialize(Block(X, weight), np.random.default_rng(seed))
        np.testing.assert_allclose(np.sort(params["means"][:, 0]), [0.1, 10.1], atol=1e-9)


def test_kmeans_initialization_survives_a_cluster_that_ends_up_empty(monkeypatch):
    X = blobs(n=200, d=2, k=2)
    far_center = X.max(axis=0) + 1e3

    def seeds_with_a_far_center(X_centered, w, k, rng):
        return np.array([X_centered[0], X_centered[1], far_center])

    monkeypatch.setattr(gaussian_module, "kmeans_plusplus", seeds_with_a_far_center)
    family = GaussianFamily(3, "full")
    params = family.initialize(Block(X), np.random.default_rng(0))
    assert_valid_params(family, params, 2)
    assert params["weights"][2] < 0.01  # the empty cluster got a small weight, not NaN


@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
def test_initialize_rejects_fewer_distinct_points_than_k(init_mode):
    X = np.array([[1.0, 2.0]] * 10 + [[3.0, 4.0]] * 10)
    with pytest.raises(ModelError, match=r"fewer distinct points than k=3; decrease k"):
        GaussianFamily(3, init_mode=init_mode).initialize(Block(X), np.random.default_rng(0))
    # rows of weight 0 do not count
    X3 = np.array([[1.0], [2.0], [3.0]])
    with pytest.raises(ModelError, match="fewer distinct points"):
        GaussianFamily(3, init_mode=init_mode).initialize(
            Block(X3, np.array([1.0, 1.0, 0.0])), np.random.default_rng(0)
        )


# ---------------------------------------------------------------------------
# repairs and errors


def params_with_far_components(family, X, far):
    """Params fitted on X, then components ``far`` moved so far away they get no responsibility."""
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(0)), n_iter=3)
    means = params["means"].copy()
    for i, j in enumerate(far):
        means[j] = X.max(axis=0) + 1e6 * (i + 1)
    return dict(params, means=means)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_component_that_lost_its_mass_is_reseeded_without_nan(covariance_type):
    X = blobs(n=300, d=2)
    family = GaussianFamily(3, covariance_type)
    params = params_with_far_components(family, X, far=[2])

    stats = family.e_step(Block(X), params)
    assert stats["nk"][2] == 0.0  # the responsibilities underflowed to exactly 0

    result = family.m_step(stats, params, Block(X[:100]), np.random.default_rng(0))
    assert isinstance(result, MStepResult)
    assert_valid_params(family, result.params, 2)
    assert len(result.events) == 1
    assert "component 2 lost its mass" in result.events[0] and "re-seeded" in result.events[0]
    # re-seeded at the sample point the old model explains worst
    worst = np.argmin(family.score(Block(X[:100]), params)["loglik"])
    np.testing.assert_array_equal(result.params["means"][2], X[worst])

    after, _ = fit(family, X, result.params, n_iter=5)
    assert_valid_params(family, after, 2)


def test_two_dead_components_are_reseeded_at_different_points():
    X = blobs(n=300, d=2, k=2)
    family = GaussianFamily(4, "full")
    params = params_with_far_components(family, X, far=[1, 3])
    stats = family.e_step(Block(X), params)
    assert stats["nk"][1] == stats["nk"][3] == 0.0
    result = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    assert len(result.events) == 2
    assert not np.array_equal(result.params["means"][1], result.params["means"][3])
    assert_valid_params(family, result.params, 2)


def test_a_zero_weight_in_the_initial_model_is_repaired_not_nan():
    X = blobs(n=200, d=2)
    family = GaussianFamily(3, "diag")
    start = family.params_from_public(
        {"weights": [0.5, 0.5, 0.0], "means": X[:3], "covariances": np.ones((3, 2))}, n_features=2
    )
    with np.errstate(all="raise"):
        stats = family.e_step(Block(X), start)
    result = family.m_step(stats, start, Block(X), np.random.default_rng(0))
    assert result.events and "component 2" in result.events[0]
    assert_valid_params(family, result.params, 2)


def test_collapsed_component_without_regularization_says_what_to_do():
    X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [50.0, 50.0]])
    family = GaussianFamily(2, "full", reg_covar=0.0)
    params = family.params_from_public(
        {"weights": [0.5, 0.5], "means": [[1.0, 0.5], [50.0, 50.0]], "covariances": np.stack([np.eye(2)] * 2)},
        n_features=2,
    )
    stats = family.e_step(Block(X), params)
    with pytest.raises(ModelError, match="ill-defined empirical covariance: increase regCovar, or decrease"):
        family.m_step(stats, params, Block(X), np.random.default_rng(0))


@pytest.mark.parametrize(
    "covariance_type, bad, message",
    [
        (
            "full",
            {"covariances": np.eye(2)},
            r"covariances must have shape \(3, 2, 2\) .*covarianceType='full', got \(2, 2\)",
        ),
        ("tied", {"covariances": np.ones((3, 2, 2))}, r"covariances must have shape \(2, 2\) .*got \(3, 2, 2\)"),
        ("diag", {"covariances": np.ones(3)}, r"covariances must have shape \(3, 2\) .*got \(3,\)"),
        ("spherical", {"covariances": np.ones((3, 2))}, r"covariances must have shape \(3,\) .*got \(3, 2\)"),
        ("full", {"means": np.zeros((2, 2))}, r"means must have shape \(3, 2\) .*got \(2, 2\)"),
        ("full", {"weights": [0.5, 0.5]}, r"weights must have shape \(3,\)"),
        ("full", {"weights": [0.5, 0.6, -0.1]}, "weights must be non-negative"),
        ("full", {"weights": [0.5, 0.5, 0.5]}, "weights must sum to 1"),
        ("diag", {"means": [[0, 0], [1, np.nan], [2, 2]]}, "means must be finite"),
        (
            "full",
            {"covariances": np.stack([np.eye(2), [[1, 2], [2, 1]], np.eye(2)])},
            r"positive definite.*components \[1\]",
        ),
        ("full", {"covariances": np.stack([np.eye(2), [[1, 0.5], [0.1, 1]], np.eye(2)])}, "symmetric"),
        ("tied", {"covariances": [[1.0, 0.0], [0.0, -1.0]]}, "positive definite"),
        ("diag", {"covariances": [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]}, r"positive definite.*components \[1\]"),
        ("spherical", {"covariances": [1.0, -1.0, 1.0]}, "positive definite"),
    ],
)
def test_initial_model_errors_say_what_is_wrong(covariance_type, bad, message):
    family = GaussianFamily(3, covariance_type)
    good = family.public_params(family.initialize(Block(blobs(d=2)), np.random.default_rng(0)))
    with pytest.raises(ModelError, match=message):
        family.params_from_public({**good, **bad}, n_features=2)


def test_initial_model_missing_arrays_are_named():
    with pytest.raises(ModelError, match=r"missing \['covariances'\]"):
        GaussianFamily(2).params_from_public({"weights": [0.5, 0.5], "means": np.zeros((2, 1))}, 1)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_initial_model_round_trips_through_public_params(covariance_type):
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(blobs(d=3)), np.random.default_rng(0))
    public = family.public_params(params)
    assert set(public) == {"weights", "means", "covariances"}
    public["weights"] = public["weights"] * (1 + 1e-8)  # within 1e-6 of summing to 1: renormalized
    again = family.params_from_public(public, n_features=3)
    assert again["weights"].sum() == pytest.approx(1.0, abs=1e-15)
    for name in params:
        np.testing.assert_allclose(again[name], params[name], rtol=1e-7, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be a positive integer"),
        (dict(k=2.5), "k must be a positive integer"),
        (dict(k=True), "k must be a positive integer"),
        (dict(k=2, covariance_type="banana"), r"covarianceType must be one of \['full', 'diag', 'spherical', 'tied'\]"),
        (dict(k=2, reg_covar=-1.0), "regCovar must be a finite non-negative number"),
        (dict(k=2, reg_covar=float("nan")), "regCovar must be a finite non-negative number"),
        (dict(k=2, init_mode="kmeans"), r"initMode must be one of \['k-means\+\+', 'random'\]"),
    ],
)
def test_bad_hyperparameters_are_rejected_with_advice(kwargs, message):
    with pytest.raises(ModelError, match=message):
        GaussianFamily(**kwargs)


def test_e_step_rejects_data_with_the_wrong_number_of_features():
    family = GaussianFamily(2)
    params = family.initialize(Block(blobs(d=3)), np.random.default_rng(0))
    with pytest.raises(ModelError, match="data has 4 features but the model has 3"):
        family.e_step(Block(np.zeros((5, 4))), params)


# ---------------------------------------------------------------------------
# protocol


def test_family_satisfies_the_protocol_and_is_registered():
    family = GaussianFamily(3, "diag", reg_covar=1e-4, init_mode="random")
    assert isinstance(family, EMFamily)
    assert FAMILIES["gaussian"] is GaussianFamily
    config = family.config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = FAMILIES[config["name"]](**{k: v for k, v in config.items() if k != "name"})
    assert rebuilt == family and rebuilt.name == "gaussian"


@pytest.mark.parametrize("covariance_type", TYPES)
def test_methods_never_mutate_their_inputs(covariance_type):
    X = blobs(d=3)
    weight = np.ones(len(X))
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X, weight), np.random.default_rng(0))
    snapshot = {name: value.copy() for name, value in params.items()}
    X_before, w_before = X.copy(), weight.copy()

    stats = family.e_step(Block(X, weight), params)
    family.score(Block(X, weight), params)
    result = family.m_step(stats, params, Block(X, weight), np.random.default_rng(0))
    family.public_params(params)["means"][:] = 0.0  # a copy

    for name in params:
        assert np.array_equal(params[name], snapshot[name]), name
    assert np.array_equal(X, X_before) and np.array_equal(weight, w_before)
    assert isinstance(stats, Stats)
    assert all(result.params[name] is not params[name] for name in params)


# ---------------------------------------------------------------------------
# semi-supervised EM (Block.labels)


def some_labels(n, k, fraction, seed, truth=None):
    """-1 everywhere but a random ``fraction`` of the rows, labelled by ``truth`` (or at random)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n) if truth is None else truth
    return np.where(rng.random(n) < fraction, truth, -1)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_labelled_rows_count_fully_for_their_component(covariance_type):
    X = blobs(n=400, d=3)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 2.0, size=len(X))
    labels = some_labels(len(X), 3, 0.3, seed=1)
    family = GaussianFamily(3, covariance_type)
    params, _ = fit(family, X, family.initialize(Block(X), np.random.default_rng(0)), 3)
    known = labels >= 0

    stats = family.e_step(Block(X[known], w[known], labels=labels[known]), params)
    one_hot = np.eye(3)[labels[known]] * w[known, None]  # (n, k)
    diffs = X[known][:, None, :] - params["means"][None]  # (n, k, d)
    np.testing.assert_allclose(stats["nk"], one_hot.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["sum"], np.einsum("nk,nkd->kd", one_hot, diffs), rtol=1e-10, atol=1e-10)
    sq = np.einsum("nk,nkd,nke->kde", one_hot, diffs, diffs)
    expected_sq = np.diagonal(sq, axis1=1, axis2=2) if covariance_type in ("diag", "spherical") else sq
    np.testing.assert_allclose(stats["sq"], expected_sq, rtol=1e-10, atol=1e-10)
    covs = family.full_covariances(params)
    complete_data = [
        np.log(params["weights"][c]) + multivariate_normal(params["means"][c], covs[c]).logpdf(x)
        for x, c in zip(X[known], labels[known])
    ]
    assert stats.loglik == pytest.approx(np.dot(complete_data, w[known]), rel=1e-10)

    # labels change nothing for the unlabelled rows: the whole block is the sum of both parts
    unlabelled = family.e_step(Block(X[~known], w[~known]), params)
    assert family.e_step(Block(X, w, labels=labels), params).allclose(stats + unlabelled, rtol=1e-10, atol=1e-9)

    scored = family.score(Block(X, labels=labels), params)
    plain = family.score(Block(X), params)
    assert np.array_equal(np.exp(scored["log_resp"][known]), np.eye(3)[labels[known]])
    np.testing.assert_allclose(scored["loglik"][known], complete_data, rtol=1e-10)
    np.testing.assert_allclose(scored["loglik"][~known], plain["loglik"][~known], rtol=1e-12)
    np.testing.assert_allclose(scored["log_resp"][~known], plain["log_resp"][~known], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_labels_all_unknown_are_bit_identical_to_no_labels(covariance_type):
    X = blobs(n=300, d=3)
    family = GaussianFamily(3, covariance_type)
    params = family.initialize(Block(X), np.random.default_rng(0))
    unknown = np.full(len(X), -1)
    a, b = family.e_step(Block(X), params), family.e_step(Block(X, labels=unknown), params)
    assert all(np.array_equal(a[name], b[name]) for name in a)
    scored = family.score(Block(X, labels=unknown), params)
    assert all(np.array_equal(value, scored[name]) for name, value in family.score(Block(X), params).items())


def test_a_label_beyond_k_is_refused():
    X = blobs(n=50, d=2)
    family = GaussianFamily(3)
    params = family.initialize(Block(X), np.random.default_rng(0))
    labels = np.full(len(X), -1)
    labels[4] = 3
    with pytest.raises(ModelError, match=r"label 3 is not a component id.*0..2 for k=3"):
        family.e_step(Block(X, labels=labels), params)
    with pytest.raises(ModelError, match="label 3 is not a component id"):
        family.score(Block(X, labels=labels), params)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_log_likelihood_never_decreases_with_labels(covariance_type):
    X = blobs(n=500, d=3, k=4, spread=2.5)
    labels = some_labels(len(X), 4, 0.05, seed=3)  # random labels: the data disagrees with them
    family = GaussianFamily(4, covariance_type)
    _, history = fit(family, X, family.initialize(Block(X), np.random.default_rng(9)), 30, labels=labels)
    steps = np.diff(history)
    assert np.all(steps >= -1e-9 * np.abs(history[1:])), steps


def grid_of_blobs(n=1800, seed=0):
    """3 x 3 overlapping blobs (sd 1, 3 apart in x, 3.6 in y); the class is the column.

    Split into rows, the data is fitted slightly better (rows are further apart), so
    unsupervised EM mostly finds the rows; a few labels must make it find the columns.
    """
    rng = np.random.default_rng(seed)
    column, row = rng.integers(3, size=n), rng.integers(3, size=n)
    X = np.stack([3.0 * column, 3.6 * row], axis=1) + rng.normal(size=(n, 2))
    return X, column


def accuracy(family, params, X, truth, best_permutation):
    """Share of rows whose most likely component is their class (under the best relabelling if asked)."""
    predicted = family.score(Block(X), params)["log_resp"].argmax(axis=1)
    if not best_permutation:
        return np.mean(predicted == truth)
    return max(np.mean(np.asarray(p)[predicted] == truth) for p in permutations(range(family.k)))


def test_a_few_labels_pick_the_split_and_the_component_ids():
    gains = []
    for seed in range(4):
        X, column = grid_of_blobs(seed=seed)
        labels = some_labels(len(X), 3, 0.05, seed, truth=column)
        family = GaussianFamily(3, "full")
        init = family.initialize(Block(X, labels=labels), np.random.default_rng(seed))

        semi, history = fit(family, X, init, 150, labels=labels)
        unsupervised, _ = fit(family, X, init, 150)

        semi_accuracy = accuracy(family, semi, X, column, best_permutation=False)  # ids as they are
        assert semi_accuracy > 0.85, (seed, semi_accuracy)
        # component j sits on column j (x = 3j), in the middle row (y = 3.6)
        np.testing.assert_allclose(semi["means"], [[0.0, 3.6], [3.0, 3.6], [6.0, 3.6]], atol=0.4)
        assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
        # the unsupervised fit from the same start is never better, even allowed any relabelling
        unsupervised_accuracy = accuracy(family, unsupervised, X, column, best_permutation=True)
        assert semi_accuracy >= unsupervised_accuracy - 0.01, seed
        gains.append(semi_accuracy - unsupervised_accuracy)
    assert np.mean(gains) > 0.15, gains


@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
def test_initialize_with_labels_aligns_component_ids(init_mode):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    z = rng.integers(3, size=600)
    X = centers[z] + rng.normal(size=(600, 2))
    labels = np.full(len(X), -1)
    for j in range(3):
        labels[np.flatnonzero(z == j)[:5]] = j
    family = GaussianFamily(3, init_mode=init_mode)
    for seed in range(5):
        params = family.initialize(Block(X, labels=labels), np.random.default_rng(seed))
        assert_valid_params(family, params, 2)
        np.testing.assert_allclose(params["means"], centers, atol=1.0)  # ids follow the labels
        fitted, _ = fit(family, X, params, 30, labels=labels)
        np.testing.assert_allclose(fitted["means"], centers, atol=0.3)


# ---------------------------------------------------------------------------
# MAP EM: a Dirichlet prior on the weights, hmmlearn's prior on means and covariances


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_map_em_never_lowers_the_log_posterior_and_the_priors_pull_as_stated(covariance_type):
    from em_spark.app.demo_data import make_blobs

    X, _, _ = make_blobs(600, 2, 3, separation=3.0, seed=8)
    priors = dict(weights_prior=40.0, means_prior=1.0, means_weight=50.0, covars_prior=2.0, covars_weight=6.0)
    family = GaussianFamily(k=3, covariance_type=covariance_type, **priors)
    block, rng = Block(X), np.random.default_rng(0)
    params = family.initialize(block, rng)
    posterior = []
    for _ in range(25):
        stats = family.e_step(block, params)
        posterior.append(float(stats["loglik"]) + family.log_prior(params))
        params = family.m_step(stats, params, block, rng).params
    assert np.all(np.diff(posterior) >= -1e-9 * abs(posterior[0]))
    plain = GaussianFamily(k=3, covariance_type=covariance_type)
    nk = family.e_step(block, params)["nk"]
    # weights: the Dirichlet MAP, (nk + α − 1) / (n + k(α − 1)), pulled towards uniform
    new = family.m_step(family.e_step(block, params), params, block, rng).params
    np.testing.assert_allclose(new["weights"], (nk + 39.0) / (nk.sum() + 3 * 39.0), rtol=1e-12)
    assert np.ptp(new["weights"]) < np.ptp(
        plain.m_step(family.e_step(block, params), params, block, rng).params["weights"]
    )
    # means: a weight of 50 pseudo-rows at 1.0 pulls each mean towards (1, 1)
    ml = plain.m_step(plain.e_step(block, params), params, block, rng).params["means"]
    assert np.all(np.linalg.norm(new["means"] - 1.0, axis=1) < np.linalg.norm(ml - 1.0, axis=1))


def test_gaussian_priors_at_their_defaults_leave_the_config_and_the_fit_unchanged():
    assert GaussianFamily(k=2).config() == {
        "name": "gaussian",
        "k": 2,
        "covariance_type": "full",
        "reg_covar": 1e-6,
        "init_mode": "k-means++",
        "handle_missing": "error",
    }
    assert (
        GaussianFamily(k=2).log_prior(
            {"weights": np.array([0.5, 0.5]), "means": np.zeros((2, 1)), "covariances": np.ones((2, 1, 1))}
        )
        == 0.0
    )
    with pytest.raises(ModelError, match=r"weightsPrior must be a finite number > 0"):
        GaussianFamily(k=2, weights_prior=0.0)
    with pytest.raises(ModelError, match=r"covarsWeight must be a finite number >= 0"):
        GaussianFamily(k=2, covars_weight=-1.0)
