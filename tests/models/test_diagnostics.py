"""Run diagnostics (em_spark.models.diagnostics) against the references: scikit-learn's
adjusted_rand_score, scipy.stats.entropy, and the truth an imputation was hidden from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import adjusted_rand_score

from em_spark.app.demo_data import make_blobs
from em_spark.models import CategoricalMixtureFamily, GaussianFamily, GaussianHMMFamily, KMeansFamily
from em_spark.models.base import Block
from em_spark.models.diagnostics import (
    adjusted_rand_index,
    component_drift,
    hard_assignments,
    masked_imputation_accuracy,
    matched_agreement,
    normalized_entropy,
    posterior_stability,
    posterior_summary,
)


@pytest.mark.parametrize("seed", range(8))
def test_ari_equals_scikit_learns_on_random_and_related_labelings(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 400)), int(rng.integers(1, 7))
    a = rng.integers(0, k, n)
    b = rng.integers(0, int(rng.integers(1, 7)), n)
    noisy = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), a)  # mostly the same partition
    for x, y in ((a, b), (a, noisy), (noisy, a), (a, (a + 3) % max(k, 1))):
        assert adjusted_rand_index(x, y) == pytest.approx(adjusted_rand_score(x, y), abs=1e-12)


@pytest.mark.parametrize(
    "a, b",
    [
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # relabeled: identical partitions
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # one cluster each
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # all singletons
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster vs singletons: 0
        ([0], [5]),
        ([0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 2, 2]),  # worse than chance: negative
    ],
)
def test_ari_special_cases_match_scikit_learn(a, b):
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_ari_is_exact_on_large_samples_without_overflow():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 200_000)
    b = np.where(rng.random(a.size) < 0.1, 2 - a, a)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), rel=1e-12)


def test_rows_no_component_explains_are_left_out_of_the_comparison():
    a = np.array([0, 0, 1, 1, -1, 2])
    b = np.array([1, 1, 0, 0, 0, -1])
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a[:4], b[:4]))
    with pytest.raises(ValueError, match="different lengths"):
        adjusted_rand_index([0, 1], [0])


def test_matched_agreement_pairs_components_by_overlap_before_counting():
    a = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    b = np.array([2, 2, 1, 0, 0, 1, 1, 1])  # a relabeled, one row moved
    fraction, mapping = matched_agreement(a, b)
    assert fraction == pytest.approx(7 / 8)
    assert mapping == {2: 0, 0: 1, 1: 2}
    assert matched_agreement(a, a) == (1.0, {0: 0, 1: 1, 2: 2})


def test_posterior_stability_summarizes_each_other_restart():
    best = np.array([0, 0, 1, 1, 2, 2])
    same, shuffled = (best + 1) % 3, np.array([0, 1, 2, 0, 1, 2])
    stability = posterior_stability(best, [same, shuffled])
    assert stability["ari"] == pytest.approx([1.0, adjusted_rand_score(best, shuffled)])
    assert stability["minAri"] == pytest.approx(adjusted_rand_score(best, shuffled))
    assert stability["meanAri"] == pytest.approx((1.0 + adjusted_rand_score(best, shuffled)) / 2)
    assert stability["agreement"][0] == 1.0 and stability["restartsCompared"] == 2
    assert posterior_stability(best, []) is None


def test_normalized_entropy_equals_scipys_mean_entropy_over_log_k():
    rng = np.random.default_rng(3)
    resp = rng.dirichlet(np.full(4, 0.7), size=500)
    resp[:20, 0], resp[:20, 1:] = 1.0, 0.0  # certain rows: log 0 = -inf
    with np.errstate(divide="ignore"):
        log_resp = np.log(resp)
    expected = np.mean(scipy_entropy(resp, axis=1)) / math.log(4)
    assert normalized_entropy(log_resp) == pytest.approx(expected, rel=1e-12)
    assert normalized_entropy(np.log(np.full((3, 5), 0.2))) == pytest.approx(1.0)
    assert normalized_entropy(np.zeros((4, 1))) == 0.0
    unexplained = np.full((2, 4), -np.inf)
    assert normalized_entropy(unexplained) is None
    assert normalized_entropy(np.vstack([log_resp[:10], unexplained])) == pytest.approx(
        np.mean(scipy_entropy(resp[:10], axis=1)) / math.log(4)
    )
    assert hard_assignments(np.vstack([log_resp[:2], unexplained])).tolist()[2:] == [-1, -1]


def _fitted_gaussian(X, k, iters=40, seed=0):
    family = GaussianFamily(k=k)
    block = Block(X)
    params = family.initialize(block, np.random.default_rng(seed))
    for i in range(iters):
        params = family.m_step(family.e_step(block, params), params, block, np.random.default_rng(i)).params
    return family, params


def test_posterior_summary_of_well_separated_blobs_is_sure_and_of_overlapping_ones_is_not():
    far = make_blobs(600, 2, 3, separation=12.0, seed=1)[0]
    near = make_blobs(600, 2, 3, separation=0.5, seed=1)[0]
    family_far, params_far = _fitted_gaussian(far, 3)
    family_near, params_near = _fitted_gaussian(near, 3)
    sure = posterior_summary(family_far, Block(far), params_far)
    unsure = posterior_summary(family_near, Block(near), params_near)
    assert sure.entropy < 0.05 and 0.3 < unsure.entropy <= 1.0
    family, params = _fitted_gaussian(far, 3)
    log_resp = family.score(Block(far), params)["log_resp"]
    assert np.array_equal(sure.labels, np.argmax(log_resp, axis=1))


@pytest.mark.parametrize(
    "family",
    [
        KMeansFamily(k=3),
        CategoricalMixtureFamily(k=2, n_categories=(3, 4)),
        GaussianHMMFamily(k=2),
    ],
    ids=lambda f: f.name,
)
def test_every_family_gives_a_posterior_summary_through_the_protocol(family):
    rng = np.random.default_rng(0)
    if isinstance(family, CategoricalMixtureFamily):
        X = np.column_stack([rng.integers(0, 3, 200), rng.integers(0, 4, 200)]).astype(float)
        block = Block(X)
    elif family.sequential:
        block = Block(rng.normal(size=(200, 2)), lengths=np.full(10, 20))
    else:
        block = Block(rng.normal(size=(200, 2)))
    summary = posterior_summary(family, block, family.initialize(block, rng))
    assert summary.labels.shape == (200,) and set(summary.labels.tolist()) <= set(range(family.k))
    assert summary.entropy is not None and 0.0 <= summary.entropy <= 1.0 + 1e-12


def test_component_drift_is_zero_for_the_same_model_and_measures_weight_and_shape_moves():
    X = make_blobs(900, 2, 3, separation=6.0, seed=4)[0]
    family, params = _fitted_gaussian(X, 3)
    same = component_drift(family, params, params)
    assert same["maxWeightShift"] == 0.0 and same["maxDivergence"] == pytest.approx(0.0, abs=1e-12)
    moved = {name: np.array(value, copy=True) for name, value in params.items()}
    moved["weights"] = params["weights"] + np.array([0.1, -0.1, 0.0])
    moved["means"] = params["means"] + np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    drift = component_drift(family, params, moved)
    assert drift["weightShift"] == pytest.approx([0.1, 0.1, 0.0])
    assert drift["weightTotalVariation"] == pytest.approx(0.1)
    assert drift["divergence"][0] == pytest.approx(0.0, abs=1e-12) and drift["divergence"][1] > 0.1
    assert drift["maxDivergence"] == drift["divergence"][1]
    backwards = component_drift(family, moved, params)  # symmetric
    assert backwards["divergence"] == pytest.approx(drift["divergence"])


def test_masked_imputation_beats_column_means_on_correlated_data_and_is_exact_where_nothing_is_hidden():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(2000, 1))
    X = np.hstack([z, 2 * z + 0.1 * rng.normal(size=(2000, 1)), -z + 0.1 * rng.normal(size=(2000, 1))])
    family, params = _fitted_gaussian(X, 1, iters=3)
    X_gaps = X.copy()
    X_gaps[::7, 1] = np.nan  # gaps already in the data are never used as truth
    accuracy = masked_imputation_accuracy(family, params, X_gaps, 0.1, np.random.default_rng(0))
    observed = int((~np.isnan(X_gaps)).sum())
    assert accuracy["maskedEntries"] == round(0.1 * observed) and accuracy["rows"] == 2000
    assert accuracy["rmse"] < 0.25 * accuracy["baselineRmse"]
    assert 0.7 < accuracy["baselineRmse"] < 2.0  # about the columns' spread
    again = masked_imputation_accuracy(family, params, X_gaps, 0.1, np.random.default_rng(0))
    assert again == accuracy
    assert masked_imputation_accuracy(family, params, X, 0.0, np.random.default_rng(0))["rmse"] is None
    with pytest.raises(ValueError, match="cannot impute"):
        masked_imputation_accuracy(KMeansFamily(k=2), {}, X, 0.1, np.random.default_rng(0))
