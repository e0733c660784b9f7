"""The categorical/multinomial family against a loop-by-loop reference, textbook numbers and
generated data, and the properties the Spark engine relies on.

Pure numpy: no JVM.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise, permutations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.stats import multinomial

from em_spark.models import Block, EMFamily, ModelError
from em_spark.models.categorical import CategoricalMixtureFamily
from em_spark.stats import Stats, sum_stats

KINDS = ["categorical", "multinomial"]


# ---------------------------------------------------------------------------
# helpers


def categorical_data(n=300, n_categories=(3, 2, 5, 4), k=3, seed=0, concentration=0.7, weights=None):
    """Codes (n, d) drawn from a random latent-class model; returns X, z, true params."""
    rng = np.random.default_rng(seed)
    truth = [rng.dirichlet(np.full(c, concentration), size=k) for c in n_categories]
    weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=float)
    z = rng.choice(k, size=n, p=weights)
    columns = [(rng.random(n)[:, None] > np.cumsum(t[z], axis=1)).sum(axis=1) for t in truth]
    X = np.minimum(np.stack(columns, axis=1), np.array(n_categories) - 1).astype(np.float64)
    params = {"weights": weights, "probs": np.concatenate(truth, axis=1), "n_categories": np.array(n_categories, float)}
    return X, z, params


def count_data(n=200, n_columns=6, k=3, seed=0, length=(0, 30)):
    """Count vectors (n, C) from a random multinomial mixture, including some empty rows."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_columns, 0.8), size=k)
    z = rng.integers(k, size=n)
    lengths = rng.integers(length[0], length[1] + 1, size=n)
    X = np.array([rng.multinomial(m, probs[j]) for m, j in zip(lengths, z)], dtype=np.float64)
    return X, z


def data_for(kind, seed=0, n=None):
    if kind == "categorical":
        X, _, _ = categorical_data(n=n or 300, seed=seed)
        return CategoricalMixtureFamily(3, (3, 2, 5, 4)), X
    X, _ = count_data(n=n or 200, seed=seed)
    return CategoricalMixtureFamily(3, kind="multinomial"), X


def run_em(family, X, params, n_iter, weight=None, labels=None):
    """Our E-step on all rows and the M-step, ``n_iter`` times; return params and loglik history."""
    block = Block(X, weight, labels=labels)
    history = []
    for _ in range(n_iter):
        stats = family.e_step(block, params)
        history.append(stats.loglik)
        params = family.m_step(stats, params, block, np.random.default_rng(0)).params
    return params, np.array(history)


def reference_em(X, weight, labels, weights, probs, n_categories, kind, smoothing, n_iter, fix_weights=False):
    """Straightforward loops: EM for a categorical / multinomial mixture (the test oracle)."""
    n, k = X.shape[0], len(weights)
    weight = np.ones(n) if weight is None else weight
    labels = np.full(n, -1) if labels is None else labels
    offsets = [0]
    for c in n_categories:
        offsets.append(offsets[-1] + c)
    weights, probs = np.array(weights, float), np.array(probs, float)
    history = []
    for _ in range(n_iter):
        nk = np.zeros(k)
        counts = np.zeros_like(probs)
        loglik = 0.0
        for i in range(n):
            joint = np.zeros(k)
            for j in range(k):
                if kind == "categorical":
                    logp = sum(math.log(probs[j, offsets[f] + int(X[i, f])]) for f in range(len(n_categories)))
                else:
                    logp = math.lgamma(X[i].sum() + 1) - sum(math.lgamma(x + 1) for x in X[i])
                    logp += sum(x * math.log(probs[j, c]) for c, x in enumerate(X[i]) if x > 0)
                joint[j] = math.log(weights[j]) + logp
            if labels[i] >= 0:
                resp = np.zeros(k)
                resp[labels[i]] = 1.0
                row_loglik = joint[labels[i]]
            else:
                top = joint.max()
                row_loglik = top + math.log(sum(math.exp(v - top) for v in joint))
                resp = np.array([math.exp(v - row_loglik) for v in joint])
            loglik += weight[i] * row_loglik
            for j in range(k):
                nk[j] += weight[i] * resp[j]
                if kind == "categorical":
                    for f in range(len(n_categories)):
                        counts[j, offsets[f] + int(X[i, f])] += weight[i] * resp[j]
                else:
                    counts[j] += weight[i] * resp[j] * X[i]
        history.append(loglik)
        if not fix_weights:
            weights = nk / nk.sum()
        for j in range(k):
            for f in range(len(n_categories)):
                a, b = offsets[f], offsets[f + 1]
                probs[j, a:b] = (counts[j, a:b] + smoothing) / (counts[j, a:b] + smoothing).sum()
    return weights, probs, np.array(history)


def match_to(family, reference, fitted):
    """``fitted`` relabelled to best match ``reference`` (min-cost assignment on component_distances)."""
    cost = family.component_distances(reference, fitted)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(family.k, dtype=int)
    order[rows] = cols
    return family.relabel(fitted, order)


# ---------------------------------------------------------------------------
# the two-coins example (Do & Batzoglou, "What is the expectation maximization algorithm?",
# Nature Biotechnology 26, 2008, figure 1b): five sets of ten tosses of coin A or B


TWO_COINS_HEADS = np.array([5.0, 9.0, 8.0, 4.0, 7.0])
TWO_COINS_X = np.stack([TWO_COINS_HEADS, 10.0 - TWO_COINS_HEADS], axis=1)  # [heads, tails] per set


def two_coins(fix_weights):
    """Each set is a binomial (a two-category multinomial) row; maximum likelihood (smoothing 0)."""
    family = CategoricalMixtureFamily(2, kind="multinomial", smoothing=0.0, fix_weights=fix_weights)
    params = family.params_from_public({"weights": [0.5, 0.5], "probs": [[0.6, 0.4], [0.5, 0.5]]}, 2)
    return family, params


def test_two_coins_reproduces_the_paper_with_equal_fixed_priors():
    # The paper's EM picks the coin of each set with equal prior odds and never re-estimates
    # them: that is fix_weights=True with weights (1/2, 1/2).
    family, params = two_coins(fix_weights=True)
    block = Block(TWO_COINS_X)
    stats = family.e_step(block, params)
    # the paper's expected tallies after the first E-step: A ≈ 21.3 H, 8.6 T; B ≈ 11.7 H, 8.4 T
    np.testing.assert_allclose(stats["counts"], [[21.3, 8.6], [11.7, 8.4]], atol=0.06)
    thetas = []
    for _ in range(10):
        params = family.m_step(family.e_step(block, params), params, block, np.random.default_rng(0)).params
        thetas.append(params["probs"][:, 0].copy())
        np.testing.assert_array_equal(params["weights"], [0.5, 0.5])
    assert np.round(thetas[0], 2).tolist() == [0.71, 0.58]
    assert np.round(thetas[9], 2).tolist() == [0.80, 0.52]
    np.testing.assert_allclose(thetas[0], [0.71301224, 0.58133931], rtol=1e-7)
    np.testing.assert_allclose(thetas[9], [0.79674415, 0.51965866], rtol=1e-7)


def test_two_coins_with_free_weights_is_close_but_not_the_papers_numbers():
    # Re-estimating the priors gives the same first step (the priors start equal), then
    # drifts: after 10 iterations θ ≈ (0.79, 0.51) with weights ≈ (0.54, 0.46).
    family, params = two_coins(fix_weights=False)
    params, history = run_em(family, TWO_COINS_X, params, 1)
    np.testing.assert_allclose(params["probs"][:, 0], [0.71301224, 0.58133931], rtol=1e-7)
    params, history = run_em(family, TWO_COINS_X, params, 9)
    np.testing.assert_allclose(params["probs"][:, 0], [0.80, 0.52], atol=0.015)
    assert params["weights"][0] > 0.5
    assert np.all(np.diff(history) >= -1e-12)


def test_two_coins_loglik_is_the_binomial_log_likelihood():
    family, params = two_coins(fix_weights=True)
    expected = sum(
        math.log(0.5 * multinomial.pmf(x, 10, [0.6, 0.4]) + 0.5 * multinomial.pmf(x, 10, [0.5, 0.5]))
        for x in TWO_COINS_X
    )
    assert family.e_step(Block(TWO_COINS_X), params).loglik == pytest.approx(expected, rel=1e-12)
    assert family.n_parameters(params) == 2  # two coin biases; the priors are fixed
    assert two_coins(fix_weights=False)[0].n_parameters(params) == 3


# ---------------------------------------------------------------------------
# agreement with the loop-by-loop reference


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.5])
@pytest.mark.parametrize("labelled", [False, True])
def test_ten_iterations_match_the_reference(kind, weighted, smoothing, labelled):
    family, X = data_for(kind, n=120)
    family = CategoricalMixtureFamily(3, family.n_categories, kind=kind, smoothing=smoothing)
    rng = np.random.default_rng(5)
    weight = rng.uniform(0.2, 3.0, size=len(X)) if weighted else None
    labels = np.where(rng.random(len(X)) < 0.15, rng.integers(3, size=len(X)), -1) if labelled else None
    params = family.initialize(Block(X), np.random.default_rng(1))
    n_categories = params["n_categories"].astype(int).tolist()

    ours, history = run_em(family, X, params, 10, weight, labels)
    weights, probs, ref_history = reference_em(
        X, weight, labels, params["weights"], params["probs"], n_categories, kind, smoothing, 10
    )
    np.testing.assert_allclose(history, ref_history, rtol=1e-10)
    np.testing.assert_allclose(ours["weights"], weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours["probs"], probs, rtol=1e-9, atol=1e-12)


def test_fixed_weights_match_the_reference():
    X, _, _ = categorical_data(n=100)
    family = CategoricalMixtureFamily(3, (3, 2, 5, 4), fix_weights=True)
    start = family.initialize(Block(X), np.random.default_rng(2))
    start = {**start, "weights": np.array([0.2, 0.3, 0.5])}
    ours, history = run_em(family, X, start, 10)
    weights, probs, ref_history = reference_em(
        X, None, None, start["weights"], start["probs"], [3, 2, 5, 4], "categorical", 1.0, 10, fix_weights=True
    )
    np.testing.assert_array_equal(ours["weights"], [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(weights, [0.2, 0.3, 0.5])
    np.testing.assert_allclose(ours["probs"], probs, rtol=1e-9)
    np.testing.assert_allclose(history, ref_history, rtol=1e-10)


def test_a_bernoulli_column_is_the_two_category_case():
    rng = np.random.default_rng(0)
    X = rng.integers(2, size=(50, 3)).astype(float)
    family = CategoricalMixtureFamily(2, (2, 2, 2))
    params = family.initialize(Block(X), np.random.default_rng(0))
    p1 = params["probs"][:, 1::2]  # P(x_f = 1) per component and feature
    expected = np.log((params["weights"] * np.prod(np.where(X[:, None, :] == 1, p1, 1 - p1), axis=2)).sum(axis=1))
    np.testing.assert_allclose(family.score(Block(X), params)["loglik"], expected, rtol=1e-12)
    assert family.n_parameters(params) == 1 + 2 * 3


def test_multinomial_loglik_is_a_true_log_likelihood():
    X, _ = count_data(n=40)
    family = CategoricalMixtureFamily(2, kind="multinomial")
    params = family.initialize(Block(X), np.random.default_rng(0))
    expected = np.log(sum(w * multinomial.pmf(X, X.sum(axis=1), p) for w, p in zip(params["weights"], params["probs"])))
    np.testing.assert_allclose(family.score(Block(X), params)["loglik"], expected, rtol=1e-10)
    stats = family.e_step(Block(X), params)
    assert stats.loglik == pytest.approx(expected.sum(), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_integer_sample_weights_equal_duplicated_rows(kind):
    family, X = data_for(kind, n=80)
    counts = np.random.default_rng(3).integers(0, 4, size=len(X))
    params = family.initialize(Block(X), np.random.default_rng(0))
    weighted, h1 = run_em(family, X, params, 5, weight=counts.astype(float))
    duplicated, h2 = run_em(family, np.repeat(X, counts, axis=0), params, 5)
    np.testing.assert_allclose(h1, h2, rtol=1e-10)
    for name in ("weights", "probs"):
        np.testing.assert_allclose(weighted[name], duplicated[name], rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------------------
# parameter recovery


def test_recovers_the_parameters_of_generated_data():
    n_categories = (3, 4, 5, 6)
    X, _, truth = categorical_data(n=20_000, n_categories=n_categories, k=3, seed=1, weights=[0.5, 0.3, 0.2])
    family = CategoricalMixtureFamily(3, n_categories)
    sample = Block(X[:5000])
    best = None
    for restart in range(3):  # as nInit: keep the restart with the best log-likelihood
        params = family.initialize(sample, np.random.default_rng(restart))
        previous = -np.inf
        for _ in range(300):  # until the mean log-likelihood changes by less than 1e-9
            params, history = run_em(family, X, params, 1)
            if history[-1] / len(X) - previous < 1e-9:
                break
            previous = history[-1] / len(X)
        if best is None or previous > best[1]:
            best = (params, previous)
    fitted = match_to(family, truth, best[0])
    np.testing.assert_allclose(fitted["weights"], truth["weights"], atol=0.01)
    np.testing.assert_allclose(fitted["probs"], truth["probs"], atol=0.03)
    distances = family.component_distances(truth, fitted)
    assert np.all(np.diag(distances) < 0.01)
    assert np.all(distances[~np.eye(3, dtype=bool)] > 0.1)  # each matched pair is unambiguous


def test_recovers_a_multinomial_mixture():
    X, z = count_data(n=3000, n_columns=8, k=3, seed=2, length=(20, 60))
    family = CategoricalMixtureFamily(3, kind="multinomial", init_mode="k-means++")
    params, _ = run_em(family, X, family.initialize(Block(X), np.random.default_rng(0)), 50)
    predicted = family.score(Block(X), params)["log_resp"].argmax(axis=1)
    best = max(np.mean(np.array(perm)[predicted] == z) for perm in permutations(range(3)))
    assert best > 0.97


def test_kmeans_plus_plus_initialization_finds_separated_clusters():
    rng = np.random.default_rng(0)
    z = rng.integers(3, size=600)
    X = np.where(rng.random((600, 5)) < 0.9, z[:, None], rng.integers(3, size=(600, 5))).astype(float)
    family = CategoricalMixtureFamily(3, (3,) * 5, init_mode="k-means++")
    params = family.initialize(Block(X), np.random.default_rng(0))
    predicted = family.score(Block(X), params)["log_resp"].argmax(axis=1)
    assert max(np.mean(np.array(perm)[predicted] == z) for perm in permutations(range(3))) > 0.95


# ---------------------------------------------------------------------------
# properties the engine relies on


@pytest.mark.parametrize("kind", KINDS)
def test_stats_are_additive_over_random_splits_including_empty_blocks(kind):
    family, X = data_for(kind)
    rng = np.random.default_rng(7)
    weight = rng.uniform(0.0, 2.0, size=len(X))
    labels = np.where(rng.random(len(X)) < 0.1, rng.integers(3, size=len(X)), -1)
    params = family.initialize(Block(X), np.random.default_rng(0))
    whole = family.e_step(Block(X, weight, labels=labels), params)
    cuts = np.sort(np.concatenate([[0, 0, 17, 17], rng.integers(0, len(X), size=6), [len(X), len(X)]]))
    parts = [family.e_step(Block(X[a:b], weight[a:b], labels=labels[a:b]), params) for a, b in pairwise(cuts)]
    assert any(part.count == 0 for part in parts)
    assert sum_stats(parts).allclose(whole, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_e_step_of_an_empty_block_is_zero_stats_of_the_right_shapes(kind):
    family, X = data_for(kind)
    params = family.initialize(Block(X), np.random.default_rng(0))
    empty = family.e_step(Block(np.empty((0, X.shape[1]))), params)
    full = family.e_step(Block(X), params)
    assert isinstance(empty, Stats) and set(empty) == {"nk", "counts", "loglik", "weight", "count"}
    assert all(empty[name].shape == full[name].shape for name in full)
    assert empty.allclose(full.zero(), rtol=0, atol=0)
    assert family.score(Block(np.empty((0, X.shape[1]))), params)["log_resp"].shape == (0, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("init_mode", ["random", "k-means++"])
def test_log_likelihood_never_decreases_without_smoothing(kind, init_mode):
    family, X = data_for(kind, seed=3)
    family = CategoricalMixtureFamily(3, family.n_categories, kind=kind, smoothing=0.0, init_mode=init_mode)
    _, history = run_em(family, X, family.initialize(Block(X), np.random.default_rng(0)), 40)
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


@pytest.mark.parametrize("kind", KINDS)
def test_with_smoothing_the_map_objective_never_decreases(kind):
    # With pseudo-counts, EM maximizes loglik + smoothing Σ log θ (the Dirichlet log-prior),
    # and that is what never decreases.
    family, X = data_for(kind, seed=4)
    family = CategoricalMixtureFamily(3, family.n_categories, kind=kind, smoothing=2.0)
    params = family.initialize(Block(X), np.random.default_rng(0))
    objective = []
    for _ in range(30):
        stats = family.e_step(Block(X), params)
        objective.append(stats.loglik + family.smoothing * np.log(params["probs"]).sum())
        params = family.m_step(stats, params, Block(X), np.random.default_rng(0)).params
    assert np.all(np.diff(objective) >= -1e-9 * np.abs(objective[1:]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("init_mode", ["random", "k-means++"])
def test_same_seed_gives_bit_identical_fits(kind, init_mode):
    family, X = data_for(kind)
    family = CategoricalMixtureFamily(3, family.n_categories, kind=kind, init_mode=init_mode)
    a = family.initialize(Block(X), np.random.default_rng(42))
    b = family.initialize(Block(X), np.random.default_rng(42))
    c = family.initialize(Block(X), np.random.default_rng(43))
    assert all(np.array_equal(a[name], b[name]) for name in a)
    if init_mode == "random":  # (k-means may well reach the same clusters from another seed)
        assert not np.array_equal(a["probs"], c["probs"])
    fit_a, history_a = run_em(family, X, a, 10)
    fit_b, history_b = run_em(family, X, b, 10)
    assert np.array_equal(history_a, history_b)
    assert all(np.array_equal(fit_a[name], fit_b[name]) for name in fit_a)
    # valid parameters: distributions per feature, positive weights
    assert a["weights"].sum() == pytest.approx(1.0) and np.all(a["weights"] > 0)
    assert np.allclose(np.add.reduceat(a["probs"], np.r_[0, np.cumsum(a["n_categories"].astype(int))[:-1]], axis=1), 1)


def test_initialize_infers_n_categories_from_the_sample():
    X = np.array([[0, 2], [1, 0], [0, 4], [1, 1]], dtype=float)
    params = CategoricalMixtureFamily(2).initialize(Block(X), np.random.default_rng(0))
    assert params["n_categories"].tolist() == [2.0, 5.0]
    assert params["probs"].shape == (2, 7)
    counts = CategoricalMixtureFamily(2, kind="multinomial").initialize(Block(X), np.random.default_rng(0))
    assert counts["n_categories"].tolist() == [2.0] and counts["probs"].shape == (2, 2)


# ---------------------------------------------------------------------------
# unseen categories and invalid data


def test_an_unseen_category_in_new_data_scores_finite_with_smoothing():
    X = np.array([[0, 1], [1, 0], [0, 0], [1, 1]] * 10, dtype=float)  # feature 0 never takes code 2
    family = CategoricalMixtureFamily(2, (3, 2))
    params, _ = run_em(family, X, family.initialize(Block(X), np.random.default_rng(0)), 10)
    scores = family.score(Block(np.array([[2.0, 1.0]])), params)
    assert np.all(np.isfinite(scores["loglik"])) and np.all(np.isfinite(scores["log_resp"]))
    assert np.exp(scores["log_resp"]).sum() == pytest.approx(1.0)


def test_without_smoothing_an_unseen_category_scores_minus_infinity_without_nan():
    X = np.array([[0, 1], [1, 0], [0, 0], [1, 1]] * 10, dtype=float)
    family = CategoricalMixtureFamily(2, (3, 2), smoothing=0.0)
    params, _ = run_em(family, X, family.initialize(Block(X), np.random.default_rng(0)), 10)
    assert np.all(params["probs"][:, 2] == 0.0)
    scores = family.score(Block(np.array([[2.0, 1.0], [0.0, 1.0]])), params)
    assert scores["loglik"][0] == -np.inf and np.isfinite(scores["loglik"][1])
    np.testing.assert_allclose(np.exp(scores["log_resp"][0]), params["weights"])  # no information: the prior
    with pytest.raises(ModelError, match="probability 0 under every component.*smoothing > 0"):
        family.e_step(Block(np.array([[2.0, 1.0]])), params)
    # a row of weight 0 that is impossible contributes nothing instead of failing
    stats = family.e_step(Block(np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([0.0, 1.0])), params)
    assert np.isfinite(stats.loglik) and stats["nk"].sum() == pytest.approx(1.0)


def test_multinomial_zero_probabilities_never_give_nan():
    family = CategoricalMixtureFamily(2, kind="multinomial", smoothing=0.0)
    params = family.params_from_public({"weights": [0.5, 0.5], "probs": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]}, 3)
    X = np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    scores = family.score(Block(X), params)
    assert np.all(np.isfinite(scores["loglik"]))
    assert scores["log_resp"][1, 0] == -np.inf  # component 0 cannot produce category 2
    assert scores["loglik"][2] == 0.0  # an empty row has probability 1
    np.testing.assert_allclose(np.exp(scores["log_resp"][2]), [0.5, 0.5])


@pytest.mark.parametrize(
    "value, message",
    [
        (-1.0, r"column 1 holds -1\.0.*integer 0\.\.2 \(n_categories\[1\] = 3\)"),
        (3.0, r"column 1 holds 3\.0.*integer 0\.\.2"),
        (1.5, r"column 1 holds 1\.5"),
        (np.nan, r"column 1 holds nan"),
        (np.inf, r"column 1 holds inf"),
    ],
)
def test_invalid_codes_raise_a_clear_error(value, message):
    family = CategoricalMixtureFamily(2, (2, 3))
    X = np.array([[0.0, 1.0], [1.0, 2.0]])
    params = family.initialize(Block(X), np.random.default_rng(0))
    bad = X.copy()
    bad[1, 1] = value
    with pytest.raises(ModelError, match=message):
        family.e_step(Block(bad), params)
    with pytest.raises(ModelError, match=message):
        family.score(Block(bad), params)


def test_a_code_beyond_the_inferred_categories_says_to_give_n_categories():
    family = CategoricalMixtureFamily(2)
    params = family.initialize(Block(np.array([[0.0], [1.0], [2.0]])), np.random.default_rng(0))
    message = "column 0 holds 3.0.*inferred from the initialization sample.*give n_categories"
    with pytest.raises(ModelError, match=message):
        family.e_step(Block(np.array([[3.0]])), params)
    with pytest.raises(ModelError, match="column 0 holds -2.0.*non-negative integers"):
        family.initialize(Block(np.array([[0.0], [-2.0]])), np.random.default_rng(0))
    with pytest.raises(ModelError, match="re-code the features"):
        family.initialize(Block(np.array([[0.0], [1e9]])), np.random.default_rng(0))


@pytest.mark.parametrize("value", [-1.0, 0.5, np.nan])
def test_invalid_counts_raise_a_clear_error(value):
    family = CategoricalMixtureFamily(2, kind="multinomial")
    X = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 4.0]])
    params = family.initialize(Block(X), np.random.default_rng(0))
    X[0, 2] = value
    with pytest.raises(ModelError, match=f"count column 2 holds {value!r}.*non-negative integer counts"):
        family.e_step(Block(X), params)


@pytest.mark.parametrize("kind", KINDS)
def test_e_step_rejects_data_with_the_wrong_number_of_features(kind):
    family = CategoricalMixtureFamily(2, (3, 3, 3) if kind == "categorical" else (3,), kind=kind)
    params = family.initialize(Block(np.ones((5, 3))), np.random.default_rng(0))
    with pytest.raises(ModelError, match="data has 4 features but the model has 3"):
        family.e_step(Block(np.zeros((5, 4))), params)


# ---------------------------------------------------------------------------
# semi-supervised EM


def two_factor_data(n=2000, seed=0):
    """An ambiguous data set: rows in two equally strong ways to split them.

    Features 0-2 copy a hidden bit A (80% of the time), features 3-5 an independent bit B.
    A 2-component mixture fits either split equally well; the labels are about A.
    """
    rng = np.random.default_rng(seed)
    A, B = rng.integers(2, size=n), rng.integers(2, size=n)

    def noisy(bit):
        return np.where(rng.random((n, 3)) < 0.8, bit[:, None], 1 - bit[:, None])

    return np.hstack([noisy(A), noisy(B)]).astype(np.float64), A, B


def test_a_few_labels_pick_the_split_and_the_component_ids():
    X, A, B = two_factor_data()
    family = CategoricalMixtureFamily(2, (2,) * 6)
    # the same near-symmetric initial model for both fits, leaning very slightly towards B
    probs = np.full((2, 12), 0.5)
    probs[0, 6:] = np.tile([0.499, 0.501], 3)
    probs[1, 6:] = np.tile([0.501, 0.499], 3)
    init = family.params_from_public({"weights": [0.5, 0.5], "probs": probs}, 6)
    labels = np.full(len(X), -1)
    for j in (0, 1):
        labels[np.flatnonzero(j == A)[:10]] = j  # ten labelled rows per component (1%)

    unsupervised, _ = run_em(family, X, init, 100)
    semi, h_s = run_em(family, X, init, 100, labels=labels)

    def predict(params):
        return family.score(Block(X), params)["log_resp"].argmax(axis=1)

    assert abs(np.mean(predict(unsupervised) == A) - 0.5) < 0.05  # split by B: no better than chance
    assert abs(np.mean(predict(unsupervised) == B) - 0.5) > 0.4
    accuracy = np.mean(predict(semi) == A)  # ids compared as they are: no relabelling
    assert accuracy > 0.85
    assert np.all(np.diff(h_s) >= -1e-9 * np.abs(h_s[1:]))  # the semi-supervised objective rises too
    # labelled rows stay on their label
    np.testing.assert_array_equal(
        family.score(Block(X, labels=labels), semi)["log_resp"][labels >= 0].argmax(axis=1), labels[labels >= 0]
    )


def test_initialize_with_labels_aligns_component_ids():
    X, z, truth = categorical_data(n=3000, n_categories=(3, 3, 4, 4, 5), k=3, seed=4, concentration=0.5)
    family = CategoricalMixtureFamily(3, (3, 3, 4, 4, 5))
    labels = np.full(len(X), -1)
    for j in range(3):
        labels[np.flatnonzero(z == j)[:5]] = j
    for seed in range(3):
        params = family.initialize(Block(X, labels=labels), np.random.default_rng(seed))
        fitted, _ = run_em(family, X, params, 50, labels=labels)
        distances = family.component_distances(truth, fitted)
        assert np.array_equal(distances.argmin(axis=1), [0, 1, 2]), seed  # no label switching
        assert np.mean(family.score(Block(X), fitted)["log_resp"].argmax(axis=1) == z) > 0.85


def test_labelled_rows_score_their_complete_data_log_likelihood():
    family, X = data_for("categorical")
    params = family.initialize(Block(X), np.random.default_rng(0))
    labels = np.full(len(X), -1)
    labels[:3] = [2, 0, 1]
    scored = family.score(Block(X, labels=labels), params)
    plain = family.score(Block(X), params)
    joint = plain["log_resp"] + plain["loglik"][:, None]  # log w_j + log p(x | j)
    np.testing.assert_allclose(scored["loglik"][:3], joint[np.arange(3), [2, 0, 1]], rtol=1e-12)
    np.testing.assert_array_equal(scored["loglik"][3:], plain["loglik"][3:])
    assert np.array_equal(np.exp(scored["log_resp"][:3]), np.eye(3)[[2, 0, 1]])


# ---------------------------------------------------------------------------
# dead components


def test_a_component_that_lost_its_mass_is_reseeded_without_nan():
    X, _, _ = categorical_data(n=200)
    family = CategoricalMixtureFamily(3, (3, 2, 5, 4), smoothing=0.0)
    params = family.initialize(Block(X), np.random.default_rng(0))
    params = {**params, "weights": np.array([0.5, 0.5, 0.0])}
    stats = family.e_step(Block(X), params)
    result = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    assert len(result.events) == 1 and result.events[0].startswith("component 2 lost its mass")
    new = result.params
    assert all(np.all(np.isfinite(v)) for v in new.values())
    assert new["weights"][2] > 0 and new["weights"].sum() == pytest.approx(1.0)
    # re-seeded at the row the model explained worst: half its codes, half the sample's frequencies
    worst = np.argmin(family.score(Block(X), params)["loglik"])
    columns = np.array([0, 3, 5, 10])[:4] + X[worst].astype(int)
    assert np.all(new["probs"][2, columns] >= 0.5)
    np.testing.assert_allclose(np.add.reduceat(new["probs"][2], [0, 3, 5, 10]), 1.0)
    next_stats = family.e_step(Block(X), new)
    assert np.isfinite(next_stats.loglik) and next_stats["nk"][2] > 0


def test_two_dead_components_are_reseeded_at_different_rows():
    X, _ = count_data(n=100)
    family = CategoricalMixtureFamily(3, kind="multinomial")
    params = family.initialize(Block(X), np.random.default_rng(0))
    params = {**params, "weights": np.array([1.0, 0.0, 0.0])}
    result = family.m_step(family.e_step(Block(X), params), params, Block(X), np.random.default_rng(0))
    assert len(result.events) == 2
    assert not np.allclose(result.params["probs"][1], result.params["probs"][2])


def test_dead_component_with_fixed_weights_keeps_the_weights():
    X, _, _ = categorical_data(n=100)
    family = CategoricalMixtureFamily(2, (3, 2, 5, 4), fix_weights=True)
    params = family.initialize(Block(X), np.random.default_rng(0))
    params = {**params, "weights": np.array([1.0 - 1e-14, 1e-14])}
    result = family.m_step(family.e_step(Block(X), params), params, Block(X), np.random.default_rng(0))
    assert result.events and np.array_equal(result.params["weights"], params["weights"])


def test_no_weight_and_no_sample_errors_say_what_to_do():
    family, X = data_for("categorical")
    params = family.initialize(Block(X), np.random.default_rng(0))
    zero = family.e_step(Block(X[:0]), params)
    with pytest.raises(ModelError, match="carry no weight"):
        family.m_step(zero, params, Block(X), np.random.default_rng(0))
    dead = {**params, "weights": np.array([1.0, 0.0, 0.0])}
    with pytest.raises(ModelError, match="no sample to re-seed"):
        family.m_step(family.e_step(Block(X), dead), dead, Block(X[:0]), np.random.default_rng(0))
    with pytest.raises(ModelError, match="empty sample"):
        family.initialize(Block(X[:0]), np.random.default_rng(0))
    with pytest.raises(ModelError, match="fewer than k=3"):
        CategoricalMixtureFamily(3, init_mode="k-means++").initialize(Block(np.zeros((5, 2))), np.random.default_rng(0))


# ---------------------------------------------------------------------------
# parameters from the user, component matching, protocol


@pytest.mark.parametrize("kind", KINDS)
def test_initial_model_round_trips_through_public_params(kind):
    family, X = data_for(kind)
    params = family.initialize(Block(X), np.random.default_rng(0))
    public = family.public_params(params)
    assert set(public) == {"weights", "probs", "n_categories"}
    rebuilt = family.params_from_public(public, X.shape[1])
    for name in params:
        np.testing.assert_allclose(rebuilt[name], params[name], rtol=1e-15)
    # n_categories may be left out when the config gives it
    rebuilt = family.params_from_public({"weights": public["weights"], "probs": public["probs"]}, X.shape[1])
    np.testing.assert_array_equal(rebuilt["n_categories"], params["n_categories"])


def test_initial_model_without_configured_categories():
    family = CategoricalMixtureFamily(2)
    one_feature = family.params_from_public({"weights": [0.5, 0.5], "probs": [[0.2, 0.8], [0.6, 0.4]]}, 1)
    assert one_feature["n_categories"].tolist() == [2.0]
    given = family.params_from_public(
        {"weights": [0.5, 0.5], "probs": [[0.2, 0.8, 1.0], [0.6, 0.4, 1.0]], "n_categories": [2, 1]}, 2
    )
    assert given["n_categories"].tolist() == [2.0, 1.0]
    with pytest.raises(ModelError, match="needs n_categories"):
        family.params_from_public({"weights": [0.5, 0.5], "probs": [[0.2, 0.8, 1.0], [0.6, 0.4, 1.0]]}, 2)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"weights": [0.5, 0.5]}, r"missing \['probs'\]"),
        ({"weights": [0.5, 0.5, 0.0], "probs": np.full((2, 5), 0.5)}, r"weights must have shape \(2,\)"),
        ({"weights": [0.5, 0.5], "probs": np.full((2, 4), 0.5)}, r"probs must have shape \(2, 5\)"),
        ({"weights": [0.7, 0.5], "probs": [[0.5, 0.5, 0.2, 0.3, 0.5]] * 2}, "weights must sum to 1"),
        ({"weights": [1.5, -0.5], "probs": [[0.5, 0.5, 0.2, 0.3, 0.5]] * 2}, "non-negative"),
        (
            {"weights": [0.5, 0.5], "probs": [[0.5, 0.5, 0.2, 0.3, 0.4]] * 2},
            r"component 0 must sum to 1 over feature 1 \(columns 2..4\)",
        ),
        ({"weights": [0.5, 0.5], "probs": [[0.5, 0.5, 0.2, np.nan, 0.5]] * 2}, "finite"),
        ({"weights": [0.5, 0.5], "probs": [[1.5, -0.5, 0.2, 0.3, 0.5]] * 2}, "probs must be non-negative"),
        (
            {"weights": [0.5, 0.5], "probs": np.full((2, 5), 0.5), "n_categories": [3, 2]},
            r"disagrees with initialModel n_categories \[3, 2\]",
        ),
    ],
)
def test_initial_model_errors_say_what_is_wrong(arrays, message):
    family = CategoricalMixtureFamily(2, (2, 3))
    with pytest.raises(ModelError, match=message):
        family.params_from_public(arrays, 2)


def test_fixed_weights_refuse_a_zero_initial_weight():
    family = CategoricalMixtureFamily(2, (2,), fix_weights=True)
    with pytest.raises(ModelError, match="switch its component off"):
        family.params_from_public({"weights": [1.0, 0.0], "probs": [[0.5, 0.5]] * 2}, 1)


def test_component_distances_and_relabel():
    family, X = data_for("categorical")
    params = family.initialize(Block(X), np.random.default_rng(0))
    distances = family.component_distances(params, params)
    assert distances.shape == (3, 3)
    np.testing.assert_allclose(np.diag(distances), 0.0, atol=1e-12)
    np.testing.assert_allclose(distances, distances.T, atol=1e-12)
    assert np.all(distances[~np.eye(3, dtype=bool)] > 0)
    order = np.array([2, 0, 1])
    shuffled = family.relabel(params, order)
    np.testing.assert_array_equal(shuffled["probs"], params["probs"][order])
    np.testing.assert_array_equal(shuffled["n_categories"], params["n_categories"])
    matched = match_to(family, params, shuffled)
    assert all(np.array_equal(matched[name], params[name]) for name in params)
    # scoring is unchanged up to the column order
    np.testing.assert_allclose(
        family.score(Block(X), shuffled)["log_resp"], family.score(Block(X), params)["log_resp"][:, order]
    )
    with pytest.raises(ModelError, match="permutation"):
        family.relabel(params, [0, 0, 1])
    other = CategoricalMixtureFamily(3, (3, 2, 5, 5)).initialize(Block(X), np.random.default_rng(0))
    with pytest.raises(ModelError, match="different categories"):
        family.component_distances(params, other)


def test_disjoint_components_have_a_large_finite_distance():
    family = CategoricalMixtureFamily(2, (2,), smoothing=0.0)
    params = family.params_from_public({"weights": [0.5, 0.5], "probs": [[1.0, 0.0], [0.0, 1.0]]}, 1)
    distances = family.component_distances(params, params)
    assert np.all(np.isfinite(distances)) and distances[0, 1] > 100


def test_n_parameters_and_progress():
    categorical = CategoricalMixtureFamily(3, (3, 2, 5, 4))
    params = categorical.initialize(Block(categorical_data()[0]), np.random.default_rng(0))
    assert categorical.n_parameters(params) == 2 + 3 * (2 + 1 + 4 + 3)
    counts = CategoricalMixtureFamily(3, kind="multinomial")
    assert counts.n_parameters(counts.initialize(Block(count_data()[0]), np.random.default_rng(0))) == 2 + 3 * 5
    assert categorical.progress(params) == {"minWeight": pytest.approx(1 / 3)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be a positive integer"),
        ({"k": 2, "kind": "poisson"}, "kind must be one of"),
        ({"k": 2, "smoothing": -1.0}, "smoothing must be a finite non-negative number"),
        ({"k": 2, "smoothing": float("nan")}, "smoothing must be"),
        ({"k": 2, "init_mode": "kmeans"}, "initMode must be one of"),
        ({"k": 2, "n_categories": (3, 0)}, r"n_categories\[1\] must be a positive integer"),
        ({"k": 2, "n_categories": ()}, "must not be empty"),
        ({"k": 2, "n_categories": (3, 4), "kind": "multinomial"}, r"is \(C,\)"),
        ({"k": 2, "fix_weights": "yes"}, "fix_weights must be true or false"),
    ],
)
def test_bad_hyperparameters_are_rejected_with_advice(kwargs, message):
    with pytest.raises(ModelError, match=message):
        CategoricalMixtureFamily(**kwargs)


def test_n_categories_that_do_not_fit_the_sample_are_rejected():
    with pytest.raises(ModelError, match="n_categories gives 3 features but the data has 2"):
        CategoricalMixtureFamily(2, (2, 2, 2)).initialize(Block(np.zeros((4, 2))), np.random.default_rng(0))
    with pytest.raises(ModelError, match="does not match the data's 2 count columns"):
        CategoricalMixtureFamily(2, 3, kind="multinomial").initialize(Block(np.zeros((4, 2))), np.random.default_rng(0))


def test_family_satisfies_the_protocol_and_config_round_trips():
    family = CategoricalMixtureFamily(
        3, [3, 2], kind="categorical", smoothing=0.5, init_mode="k-means++", fix_weights=True
    )
    assert isinstance(family, EMFamily)
    assert family.n_categories == (3, 2)
    config = family.config()
    assert json.loads(json.dumps(config)) == config
    assert config["name"] == "categorical"
    rebuilt = CategoricalMixtureFamily(**{k: v for k, v in config.items() if k != "name"})
    assert rebuilt == family and rebuilt.name == "categorical"
    inferred = CategoricalMixtureFamily(2)
    assert CategoricalMixtureFamily(**{k: v for k, v in inferred.config().items() if k != "name"}) == inferred


@pytest.mark.parametrize("kind", KINDS)
def test_methods_never_mutate_their_inputs(kind):
    family, X = data_for(kind)
    weight = np.ones(len(X))
    labels = np.full(len(X), -1)
    labels[:5] = 1
    params = family.initialize(Block(X, weight, labels=labels), np.random.default_rng(0))
    snapshot = {name: value.copy() for name, value in params.items()}
    before = X.copy(), weight.copy(), labels.copy()
    block = Block(X, weight, labels=labels)
    stats = family.e_step(block, params)
    family.score(block, params)
    result = family.m_step(stats, params, block, np.random.default_rng(0))
    family.public_params(params)["probs"][:] = 0.0  # a copy
    family.relabel(params, [1, 0, 2])["weights"][:] = 0.0
    for name in params:
        assert np.array_equal(params[name], snapshot[name]), name
    assert all(np.array_equal(a, b) for a, b in zip((X, weight, labels), before))
    assert all(result.params[name] is not params[name] for name in params)
