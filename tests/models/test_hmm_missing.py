"""HMMs with missing observations inside sequences and with known states at some steps.

Pure numpy. The reference marginalizes explicitly: it enumerates every state path of short
sequences (k^T of them), scores each with scipy's multivariate normal on the step's observed
features only, and sums. Posteriors, the log-likelihood, the expected statistics (with each
missing entry's conditional mean and covariance given the state, by an explicit solve) and the
imputed values must all agree with the packed, scaled forward-backward. hmmlearn has neither
missing steps nor known states (hmmlearn #327, #173), so it cannot be the oracle here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from em_spark.models import Block, ModelError
from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily

from .test_hmm import (
    COV_TYPES,
    TRUE_COVS,
    TRUE_MEANS,
    fit,
    full_covariances,
    gaussian_sequences,
    perturbed_chain,
    random_lengths,
    sample_states,
    starts_of,
    symbol_sequences,
)

D = 3
MEANS3 = np.array([[0.0, 0.0, 1.0], [3.0, 1.0, -1.0], [-2.0, 4.0, 0.5]])
COVS3 = np.array(
    [
        [[1.0, 0.3, 0.1], [0.3, 1.5, 0.2], [0.1, 0.2, 0.8]],
        [[2.0, -0.4, 0.0], [-0.4, 1.0, 0.3], [0.0, 0.3, 1.2]],
        [[0.6, 0.1, -0.2], [0.1, 0.9, 0.0], [-0.2, 0.0, 1.1]],
    ]
)


def gappy_sequences(seed: int, lengths: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Gaussian sequences (3 features) with a ``fraction`` of entries NaN and every fifth step all NaN."""
    rng = np.random.default_rng(seed)
    X = gaussian_sequences(rng, lengths, means=MEANS3, covs=COVS3)
    X[rng.random(X.shape) < fraction] = np.nan
    X[::5] = np.nan
    return X


def family_and_params(covariance_type: str, seed: int = 0, handle_missing: str = "model"):
    family = GaussianHMMFamily(3, covariance_type, reg_covar=0.0, handle_missing=handle_missing)
    rng = np.random.default_rng(seed)
    complete = Block(gaussian_sequences(rng, np.full(40, 20), means=MEANS3, covs=COVS3), lengths=np.full(40, 20))
    params = perturbed_chain(family.initialize(complete, np.random.default_rng(seed + 1)), rng)
    return family, params


# ---------------------------------------------------------------------------
# the reference: every path of a short sequence, explicitly


def emission_log_density(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """log N(x_o | μ_o, Σ_oo) over the observed entries of x (0: nothing observed)."""
    o = ~np.isnan(x)
    if not o.any():
        return 0.0
    return float(multivariate_normal(mean[o], cov[np.ix_(o, o)]).logpdf(x[o]))


def conditional(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x̂ (d,), C (d, d)): x with its missing entries replaced by E[x_m | x_o], and their
    conditional covariance zero-padded, by an explicit solve (no precision-matrix algebra)."""
    m, o = np.isnan(x), ~np.isnan(x)
    x_hat, C = x.copy(), np.zeros((x.size, x.size))
    if m.any():
        if o.any():
            gain = np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, m)]).T  # Σ_mo Σ_oo⁻¹
            x_hat[m] = mean[m] + gain @ (x[o] - mean[o])
            C[np.ix_(m, m)] = cov[np.ix_(m, m)] - gain @ cov[np.ix_(o, m)]
        else:
            x_hat[m] = mean[m]
            C[np.ix_(m, m)] = cov[np.ix_(m, m)]
    return x_hat, C


def brute_force(log_emission: np.ndarray, startprob: np.ndarray, transmat: np.ndarray, labels=None):
    """(loglik, gamma (T, k)) of one sequence with per-step log emissions (T, k), by enumerating
    paths; ``labels`` (T,) restricts the sum to the paths through the known states."""
    T, k = log_emission.shape
    log_paths, paths = [], []
    for path in itertools.product(range(k), repeat=T):
        if labels is not None and any(lab >= 0 and lab != s for lab, s in zip(labels, path)):
            continue
        lp = np.log(startprob[path[0]]) + log_emission[0, path[0]]
        for t in range(1, T):
            lp += np.log(transmat[path[t - 1], path[t]]) + log_emission[t, path[t]]
        log_paths.append(lp)
        paths.append(path)
    log_paths = np.array(log_paths)
    loglik = logsumexp(log_paths)
    posterior = np.exp(log_paths - loglik)
    gamma = np.zeros((T, k))
    for p, path in zip(posterior, paths):
        gamma[np.arange(T), list(path)] += p
    return loglik, gamma


def reference_gaussian(family, params, X, lengths, labels=None):
    """loglik per sequence, gamma (n, k), expected statistics and imputed values, explicitly."""
    k = family.k
    covs = full_covariances(family, params)
    means = params["means"]
    logliks, gammas = [], []
    for s, L in zip(starts_of(lengths), lengths):
        rows = X[s : s + L]
        log_emission = np.array([[emission_log_density(x, means[j], covs[j]) for j in range(k)] for x in rows])
        ll, g = brute_force(
            log_emission, params["startprob"], params["transmat"], None if labels is None else labels[s : s + L]
        )
        logliks.append(ll)
        gammas.append(g)
    gamma = np.concatenate(gammas)
    post = gamma.sum(axis=0)
    sums, sq = np.zeros((k, D)), np.zeros((k, D, D))
    imputed = np.zeros_like(X)
    for i, x in enumerate(X):
        for j in range(k):
            x_hat, C = conditional(x, means[j], covs[j])
            dev = x_hat - means[j]
            sums[j] += gamma[i, j] * dev
            sq[j] += gamma[i, j] * (np.outer(dev, dev) + C)
            imputed[i] += gamma[i, j] * x_hat
    if family.covariance_type in ("diag", "spherical"):
        sq = np.diagonal(sq, axis1=1, axis2=2)
    return np.array(logliks), gamma, {"post": post, "sum": sums, "sq": sq}, imputed


# ---------------------------------------------------------------------------
# Gaussian emissions with missing entries and missing steps


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_forward_backward_with_missing_entries_matches_explicit_marginalization(covariance_type):
    family, params = family_and_params(covariance_type)
    lengths = np.array([5, 1, 4, 6, 3])
    X = gappy_sequences(7, lengths)
    assert np.isnan(X).all(axis=1).any() and (np.isnan(X).any(axis=1) & ~np.isnan(X).all(axis=1)).any()
    block = Block(X, lengths=lengths)
    ref_loglik, ref_gamma, ref_stats, _ = reference_gaussian(family, params, X, lengths)

    scores = family.score(block, params)
    np.testing.assert_allclose(scores["loglik"], ref_loglik, rtol=1e-10)
    np.testing.assert_allclose(np.exp(scores["log_resp"]), ref_gamma, atol=1e-10)

    stats = family.e_step(block, params)
    assert stats.loglik == pytest.approx(ref_loglik.sum(), rel=1e-10)
    assert float(stats["count"]) == X.shape[0]  # a missing step keeps its place: it is still a step
    for name in ("post", "sum", "sq"):
        np.testing.assert_allclose(stats[name], ref_stats[name], rtol=1e-9, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_imputed_steps_are_the_posterior_means(covariance_type):
    family, params = family_and_params(covariance_type)
    lengths = np.array([6, 4, 5])
    X = gappy_sequences(3, lengths, fraction=0.3)
    _, _, _, ref_imputed = reference_gaussian(family, params, X, lengths)

    out = family.impute(Block(X, lengths=lengths), params)
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(out["imputed"][observed], X[observed])  # observed entries untouched
    np.testing.assert_allclose(out["imputed"][~observed], ref_imputed[~observed], rtol=1e-9, atol=1e-10)
    assert np.all(out["std"][observed] == 0) and np.all(out["std"][~observed] > 0)


def test_imputation_works_whatever_the_model_was_fitted_with():
    family, params = family_and_params("full", handle_missing="error")
    lengths = np.array([6, 4])
    X = gappy_sequences(5, lengths)
    with pytest.raises(ModelError, match='handleMissing="model"'):
        family.e_step(Block(X, lengths=lengths), params)
    modelled = GaussianHMMFamily(3, "full", reg_covar=0.0, handle_missing="model")
    np.testing.assert_array_equal(
        family.impute(Block(X, lengths=lengths), params)["imputed"],
        modelled.impute(Block(X, lengths=lengths), params)["imputed"],
    )


def test_the_neighbours_inform_an_imputed_step():
    """A whole missing step between two steps clearly in state 1 is imputed near state 1's mean,
    not at the average of the states' means: the chain, not only the step, informs it."""
    family = GaussianHMMFamily(2, "diag", reg_covar=0.0, handle_missing="model")
    params = family.params_from_public(
        {
            "startProb": np.array([0.5, 0.5]),
            "transMat": np.array([[0.95, 0.05], [0.05, 0.95]]),
            "means": np.array([[-5.0, -5.0], [5.0, 5.0]]),
            "covariances": np.ones((2, 2)),
        },
        2,
    )
    X = np.array([[5.1, 4.9], [np.nan, np.nan], [4.8, 5.2]])
    imputed = family.impute(Block(X, lengths=np.array([3])), params)["imputed"]
    assert imputed[1] == pytest.approx([5.0, 5.0], abs=0.5)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_em_with_gaps_never_decreases_the_observed_likelihood_and_recovers_the_chain(covariance_type):
    rng = np.random.default_rng(11)
    lengths = random_lengths(rng, 120, low=20, high=60)
    X = gaussian_sequences(rng, lengths)  # TRUE_MEANS, TRUE_COVS (2 features)
    X[rng.random(X.shape) < 0.2] = np.nan
    family = GaussianHMMFamily(3, covariance_type, reg_covar=1e-6, handle_missing="model")
    block = Block(X, lengths=lengths)
    params = family.initialize(block, np.random.default_rng(1))
    params, history = fit(family, block, params, 40)
    assert np.all(np.diff(history) >= -1e-8 * np.abs(history[1:]))
    order = np.argsort(params["means"][:, 0])
    np.testing.assert_allclose(params["means"][order], TRUE_MEANS[np.argsort(TRUE_MEANS[:, 0])], atol=0.25)


def test_without_gaps_the_missing_value_path_changes_nothing():
    rng = np.random.default_rng(2)
    lengths = random_lengths(rng, 30)
    block = Block(gaussian_sequences(rng, lengths), lengths=lengths)
    plain = GaussianHMMFamily(3, "full", reg_covar=0.0)
    modelled = GaussianHMMFamily(3, "full", reg_covar=0.0, handle_missing="model")
    params = plain.initialize(block, np.random.default_rng(3))
    a, b = plain.e_step(block, params), modelled.e_step(block, params)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_handle_missing_is_validated_and_saved_only_when_set():
    with pytest.raises(ModelError, match="handleMissing must be one of"):
        GaussianHMMFamily(2, handle_missing="drop")
    with pytest.raises(ModelError, match="handleMissing must be one of"):
        CategoricalHMMFamily(2, handle_missing="ignore")
    assert "handle_missing" not in GaussianHMMFamily(2).config()  # old checkpoints' configs resume
    assert GaussianHMMFamily(2, handle_missing="model").config()["handle_missing"] == "model"


# ---------------------------------------------------------------------------
# categorical emissions with missing steps


def test_categorical_missing_steps_are_marginalized():
    family = CategoricalHMMFamily(3, n_categories=5, handle_missing="model")
    rng = np.random.default_rng(4)
    lengths = np.array([5, 3, 6])
    X = symbol_sequences(rng, lengths)
    X[[1, 4, 9, 12]] = np.nan
    params = perturbed_chain(family.initialize(Block(X, lengths=lengths), np.random.default_rng(5)), rng)
    E = params["emissionprob"]
    stats = family.e_step(Block(X, lengths=lengths), params)
    scores = family.score(Block(X, lengths=lengths), params)
    counts = np.zeros_like(E)
    for i, (s, L) in enumerate(zip(starts_of(lengths), lengths)):
        symbols = X[s : s + L, 0]
        log_emission = np.array([np.zeros(3) if np.isnan(c) else np.log(E[:, int(c)]) for c in symbols])
        ll, gamma = brute_force(log_emission, params["startprob"], params["transmat"])
        assert scores["loglik"][i] == pytest.approx(ll, rel=1e-12)
        for t, c in enumerate(symbols):
            if not np.isnan(c):
                counts[:, int(c)] += gamma[t]
    np.testing.assert_allclose(stats["counts"], counts, rtol=1e-10, atol=1e-12)
    with pytest.raises(ModelError, match="missing observations"):
        CategoricalHMMFamily(3, n_categories=5).e_step(Block(X, lengths=lengths), params)


# ---------------------------------------------------------------------------
# known states at some steps


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_known_states_clamp_the_forward_backward(covariance_type):
    family, params = family_and_params(covariance_type)
    lengths = np.array([5, 4, 6])
    X = gappy_sequences(9, lengths, fraction=0.1)
    labels = np.full(X.shape[0], -1)
    labels[[0, 3, 7, 10, 14]] = [2, 0, 1, 1, 0]
    block = Block(X, lengths=lengths, labels=labels)
    ref_loglik, ref_gamma, ref_stats, _ = reference_gaussian(family, params, X, lengths, labels)
    scores = family.score(block, params)
    np.testing.assert_allclose(scores["loglik"], ref_loglik, rtol=1e-10)
    np.testing.assert_allclose(np.exp(scores["log_resp"]), ref_gamma, atol=1e-10)
    known = labels >= 0
    np.testing.assert_array_equal(scores["viterbi"][known], labels[known])
    stats = family.e_step(block, params)
    for name in ("post", "sum", "sq"):
        np.testing.assert_allclose(stats[name], ref_stats[name], rtol=1e-9, atol=1e-10, err_msg=name)


def test_known_states_fix_label_switching():
    """Unlabelled, the states come out in whatever order the initialization gave (it differs by
    seed); with a few steps labelled (1% of them) state j is the state the labels call j for every
    seed: the labelled steps seed their states' means (as labelled rows do for a mixture) and the
    clamped E-step keeps them there (the clamp itself is checked against the path enumeration above)."""
    rng = np.random.default_rng(6)
    lengths = np.full(60, 50)
    states = sample_states(rng, lengths)
    X = TRUE_MEANS[states] + np.einsum(
        "nij,nj->ni", np.linalg.cholesky(TRUE_COVS)[states], rng.normal(size=(states.size, 2))
    )
    labels = np.full(states.size, -1)
    known = rng.choice(states.size, size=states.size // 100, replace=False)
    labels[known] = states[known]
    family = GaussianHMMFamily(3, "full", reg_covar=1e-6)
    block = Block(X, lengths=lengths, labels=labels)
    unlabelled_orders = set()
    for seed in range(6):
        unlabelled = Block(X, lengths=lengths)
        plain, _ = fit(family, unlabelled, family.initialize(unlabelled, np.random.default_rng(seed)), 30)
        unlabelled_orders.add(tuple(np.argsort(plain["means"][:, 0])))
        params, _ = fit(family, block, family.initialize(block, np.random.default_rng(seed)), 30)
        np.testing.assert_allclose(params["means"], TRUE_MEANS, atol=0.2)
    assert len(unlabelled_orders) > 1  # the starts did name the states differently


def test_state_labels_out_of_range_are_refused():
    family, params = family_and_params("diag")
    X = gappy_sequences(1, np.array([4]), fraction=0.0)
    with pytest.raises(ModelError, match="not a component id"):
        family.e_step(Block(X, lengths=np.array([4]), labels=np.array([0, 3, -1, -1])), params)


def test_a_label_the_chain_cannot_reach_names_label_col():
    family = CategoricalHMMFamily(2, n_categories=2)
    params = family.params_from_public(
        {
            "startProb": np.array([1.0, 0.0]),
            "transMat": np.array([[1.0, 0.0], [0.0, 1.0]]),
            "emissionProb": np.array([[0.5, 0.5], [0.5, 0.5]]),
        },
        1,
    )
    block = Block(np.array([[0.0], [1.0]]), lengths=np.array([2]), labels=np.array([-1, 1]))
    with pytest.raises(ModelError, match="labelCol"):
        family.e_step(block, params)
