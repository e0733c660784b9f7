"""Hard data fits or fails cleanly: duplicate points, a constant column, a component that
collapses onto one point, 200 dimensions. Whatever happens: no NaN in any output, and the
log-likelihood per iteration never decreases (up to rounding), or a ModelError says what to do."""

import numpy as np
import pytest

from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import Block, CategoricalMixtureFamily, GaussianFamily, GaussianHMMFamily, KMeansFamily

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]


def _fit(family, X, max_iter=40, lengths=None, blocks=3):
    rows = np.array_split(np.arange(X.shape[0]), blocks)
    parts = [Block(X[r]) for r in rows] if lengths is None else [Block(X, lengths=lengths)]
    result = fit_em(family, LocalBlockSource(parts, seed=0), FitSettings(max_iter=max_iter, tol=0.0, seed=0))
    return result


def _assert_clean(result):
    for name, value in result.params.items():
        assert np.all(np.isfinite(value)), f"{name} has NaN or infinity"
    history = np.asarray(result.history)
    assert np.all(np.isfinite(history))
    # EM never decreases the likelihood; allow rounding relative to its size.
    assert np.all(np.diff(history) >= -1e-9 * np.maximum(1.0, np.abs(history[1:]))), history


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_many_duplicate_points_fit_without_nan(covariance_type):
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(5, 3)), 200, axis=0)  # 5 distinct points, each 200 times
    _assert_clean(_fit(GaussianFamily(3, covariance_type), X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_constant_column_fits_without_nan(covariance_type):
    rng = np.random.default_rng(1)
    X = np.column_stack(
        [rng.normal(size=(900, 2)) + np.repeat([[0, 0], [6, 6], [0, 8]], 300, axis=0), np.full(900, 7.0)]
    )
    result = _fit(GaussianFamily(3, covariance_type), X)
    _assert_clean(result)
    np.testing.assert_allclose(result.params["means"][:, 2], 7.0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_a_component_collapsing_onto_one_point_is_regularized_not_nan(covariance_type):
    # One far point alone: a component that takes it gets reg_covar, not a singular covariance.
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + 6.0, [[100.0, 100.0]]])
    _assert_clean(_fit(GaussianFamily(3, covariance_type), X))


def test_a_collapse_without_regularization_fails_with_a_clear_error():
    from em_spark.models import ModelError

    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 100, axis=0)
    with pytest.raises(ModelError, match="regCovar"):
        _fit(GaussianFamily(2, "full", reg_covar=0.0), X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_200_dimensional_data_fits_without_nan(covariance_type):
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=3.0, size=(3, 200))
    X = centers[rng.integers(0, 3, size=3000)] + rng.normal(size=(3000, 200))
    result = _fit(GaussianFamily(3, covariance_type), X, max_iter=15)
    _assert_clean(result)
    # well separated in 200-d: every center is found
    distance = np.linalg.norm(result.params["means"][:, None] - centers[None], axis=2)
    assert distance.min(axis=1).max() < 2.0


def test_other_families_on_duplicate_data_fit_without_nan():
    rng = np.random.default_rng(4)
    counts = np.repeat(rng.integers(0, 5, size=(4, 6)), 100, axis=0).astype(float)
    # Without smoothing EM maximizes the likelihood itself, which then never decreases; with
    # smoothing it maximizes the posterior (MAP), so only finiteness is promised.
    _assert_clean(_fit(CategoricalMixtureFamily(3, kind="multinomial", smoothing=0.0), counts))
    _assert_clean(_fit(CategoricalMixtureFamily(3, n_categories=(5,) * 6, smoothing=0.0), counts))
    _assert_finite(_fit(CategoricalMixtureFamily(3, kind="multinomial", smoothing=1.0), counts))
    steps = np.repeat(rng.normal(size=(4, 2)), 50, axis=0)  # runs of identical observations
    _assert_clean(_fit(GaussianHMMFamily(3, "diag"), steps, lengths=np.full(10, 20)))
    # k-means minimizes distortion, not a likelihood: only finiteness is promised.
    _assert_finite(_fit(KMeansFamily(3), np.repeat(rng.normal(size=(4, 2)), 50, axis=0)))


def _assert_finite(result):
    for name, value in result.params.items():
        assert np.all(np.isfinite(value)), f"{name} has NaN or infinity"
