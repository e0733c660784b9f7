"""The HMM families against hmmlearn, and the properties the Spark engine relies on.

Pure numpy: no JVM. hmmlearn 0.3.3 is the oracle (a test dependency only). It runs one
sequence at a time in C; ours runs all the sequences of a block at once, scaled, so the
agreement checks are also checks of the packed layout and of the scaling.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import time

import numpy as np
import pytest
from hmmlearn import hmm as hl
from threadpoolctl import threadpool_limits

import em_spark.models.markov as markov_module
from em_spark.models import Block, EMFamily, ModelError, MStepResult
from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily
from em_spark.stats import Stats, sum_stats

COV_TYPES = ["full", "diag", "tied", "spherical"]

# hmmlearn warns when a transmat row has zero sum etc.; keep its logger quiet in tests
logging.getLogger("hmmlearn").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------
# helpers: simulating sequences (vectorized across sequences) and references


TRUE_START = np.array([0.6, 0.3, 0.1])
TRUE_TRANS = np.array([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
TRUE_COVS = np.array([np.eye(2), [[1.0, 0.5], [0.5, 2.0]], 0.5 * np.eye(2)])
TRUE_EMISSION = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.05, 0.1, 0.5, 0.3, 0.05], [0.1, 0.1, 0.1, 0.2, 0.5]])


def draw(rng, p_rows):
    """One categorical draw per row of probabilities (n, k)."""
    u = rng.random(p_rows.shape[0])[:, None]
    return np.minimum((u > np.cumsum(p_rows, axis=1)).sum(axis=1), p_rows.shape[1] - 1)


def sample_states(rng, lengths, startprob=TRUE_START, transmat=TRUE_TRANS):
    """(sum(lengths),) hidden states of consecutive sequences."""
    n_seq, T = len(lengths), int(np.max(lengths))
    states = np.empty((n_seq, T), dtype=np.int64)
    states[:, 0] = draw(rng, np.tile(startprob, (n_seq, 1)))
    for t in range(1, T):
        states[:, t] = draw(rng, transmat[states[:, t - 1]])
    return states[np.arange(T) < np.asarray(lengths)[:, None]]


def gaussian_sequences(rng, lengths, means=TRUE_MEANS, covs=TRUE_COVS):
    states = sample_states(rng, lengths)
    chol = np.linalg.cholesky(covs)
    noise = rng.normal(size=(len(states), means.shape[1]))
    return means[states] + np.einsum("nij,nj->ni", chol[states], noise)


def symbol_sequences(rng, lengths, emission=TRUE_EMISSION):
    states = sample_states(rng, lengths)
    return draw(rng, emission[states]).astype(np.float64)[:, None]


def random_lengths(rng, n_seq, low=1, high=60):
    return rng.integers(low, high, size=n_seq)


def starts_of(lengths):
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)


def split_sequences(X, lengths):
    return [X[s : s + L] for s, L in zip(starts_of(lengths), lengths)]


def perturbed_chain(params, rng):
    """``params`` with a random (non-uniform) startprob and transmat, so the chain is exercised."""
    k = len(params["startprob"])
    out = dict(params)
    out["startprob"] = rng.dirichlet(np.full(k, 3.0))
    out["transmat"] = rng.dirichlet(np.full(k, 3.0), size=k)
    return out


def full_covariances(family, params):
    """(k, d, d) whatever the covariance type: what hmmlearn's ``covars_`` property returns."""
    cov, k, d = params["covariances"], family.k, params["means"].shape[1]
    if family.covariance_type == "diag":
        return np.einsum("ki,ij->kij", cov, np.eye(d))
    if family.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if family.covariance_type == "spherical":
        return cov[:, None, None] * np.eye(d)
    return cov


def hmmlearn_gaussian(family, params, **kwargs):
    """An hmmlearn GaussianHMM sitting exactly on our parameters, with hmmlearn's M-step = ours."""
    model = hl.GaussianHMM(
        n_components=family.k,
        covariance_type=family.covariance_type,
        init_params="",
        params="stmc",
        covars_prior=0.0,  # hmmlearn's M-step regularization; ours is reg_covar (0 in these tests)
        **kwargs,
    )
    model.startprob_ = params["startprob"].copy()
    model.transmat_ = params["transmat"].copy()
    model.means_ = params["means"].copy()
    model.covars_ = params["covariances"].copy()
    return model


def hmmlearn_categorical(params, **kwargs):
    k, c = params["emissionprob"].shape
    model = hl.CategoricalHMM(n_components=k, n_features=c, init_params="", params="ste", **kwargs)
    model.startprob_ = params["startprob"].copy()
    model.transmat_ = params["transmat"].copy()
    model.emissionprob_ = params["emissionprob"].copy()
    return model


def fit(family, block, params, n_iter, sample=None):
    """Our E-step on the block and the M-step ``n_iter`` times; params and the loglik history."""
    history = []
    for _ in range(n_iter):
        stats = family.e_step(block, params)
        history.append(stats.loglik)
        params = family.m_step(stats, params, block if sample is None else sample, np.random.default_rng(0)).params
    return params, np.array(history)


def gaussian_setup(covariance_type="full", n_seq=150, seed=0, reg_covar=0.0):
    rng = np.random.default_rng(seed)
    lengths = random_lengths(rng, n_seq)
    X = gaussian_sequences(rng, lengths)
    family = GaussianHMMFamily(3, covariance_type, reg_covar=reg_covar)
    block = Block(X, lengths=lengths)
    params = perturbed_chain(family.initialize(block, np.random.default_rng(seed + 1)), rng)
    return family, block, params


def categorical_setup(n_seq=150, seed=0):
    rng = np.random.default_rng(seed)
    lengths = random_lengths(rng, n_seq)
    X = symbol_sequences(rng, lengths)
    family = CategoricalHMMFamily(3, n_categories=5)
    block = Block(X, lengths=lengths)
    params = perturbed_chain(family.initialize(block, np.random.default_rng(seed + 1)), rng)
    return family, block, params


def categorical_path_log_prob(params, symbols, lengths, path):
    """Σ over sequences of log p(path, symbols)."""
    log_start, log_trans = np.log(params["startprob"]), np.log(params["transmat"])
    total = np.log(params["emissionprob"])[path, symbols].sum()
    for s, L in zip(starts_of(lengths), lengths):
        total += log_start[path[s]] + log_trans[path[s : s + L - 1], path[s + 1 : s + L]].sum()
    return total


def blocks_of(block, cuts):
    """Blocks of whole sequences: sequence indices ``cuts`` split the block (repeats give empty blocks)."""
    lengths = np.asarray(block.lengths)
    row_at = np.concatenate([[0], np.cumsum(lengths)])
    bounds = [0, *cuts, len(lengths)]
    out = []
    for a, b in itertools.pairwise(bounds):
        rows = slice(row_at[a], row_at[b])
        out.append(
            Block(
                block.X[rows],
                None if block.weight is None else block.weight[rows],
                lengths[a:b],
            )
        )
    return out


@pytest.fixture
def tiny_groups(monkeypatch):
    """Force many sequence groups per block (a few sequences each), so group boundaries are exercised."""
    monkeypatch.setattr(markov_module, "_GROUP_BYTES", 0)
    monkeypatch.setattr(markov_module, "_MIN_GROUP_ROWS", 37)


# ---------------------------------------------------------------------------
# agreement with hmmlearn


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_ten_iterations_match_hmmlearn_from_the_same_initial_model(covariance_type):
    family, block, init = gaussian_setup(covariance_type)
    ours, history = fit(family, block, init, n_iter=10)

    ref = hmmlearn_gaussian(family, init, n_iter=10, tol=0.0).fit(block.X, block.lengths)

    assert len(ref.monitor_.history) == 10
    np.testing.assert_allclose(history, ref.monitor_.history, rtol=1e-9)
    np.testing.assert_allclose(ours["startprob"], ref.startprob_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours["transmat"], ref.transmat_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours["means"], ref.means_, rtol=1e-6, atol=1e-10)
    if covariance_type == "spherical":
        # hmmlearn 0.3.3 keeps a spherical model's variances tiled to (k, d) after its M-step, which its
        # covars_ property then flattens into k * d matrices: compare with the (k, d) array itself
        np.testing.assert_allclose(np.ptp(ref._covars_, axis=1), 0.0, atol=1e-15)
        np.testing.assert_allclose(ours["covariances"], ref._covars_[:, 0], rtol=1e-6, atol=1e-10)
    else:
        np.testing.assert_allclose(full_covariances(family, ours), ref.covars_, rtol=1e-6, atol=1e-10)
    # and the log-likelihood under the final parameters
    total = sum(family.score(block, ours)["loglik"])
    assert total == pytest.approx(ref.score(block.X, block.lengths), rel=1e-10)


def test_categorical_ten_iterations_match_hmmlearn_from_the_same_initial_model():
    family, block, init = categorical_setup()
    ours, history = fit(family, block, init, n_iter=10)

    ref = hmmlearn_categorical(init, n_iter=10, tol=0.0).fit(block.X.astype(int), block.lengths)

    np.testing.assert_allclose(history, ref.monitor_.history, rtol=1e-9)
    for name, theirs in (
        ("startprob", ref.startprob_),
        ("transmat", ref.transmat_),
        ("emissionprob", ref.emissionprob_),
    ):
        np.testing.assert_allclose(ours[name], theirs, rtol=1e-6, atol=1e-12, err_msg=name)
    total = sum(family.score(block, ours)["loglik"])
    assert total == pytest.approx(ref.score(block.X.astype(int), block.lengths), rel=1e-10)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_many_groups_per_block_match_hmmlearn(covariance_type, tiny_groups):
    family, block, init = gaussian_setup(covariance_type, n_seq=60, seed=3)
    ours, history = fit(family, block, init, n_iter=4)
    ref = hmmlearn_gaussian(family, init, n_iter=4, tol=0.0).fit(block.X, block.lengths)
    np.testing.assert_allclose(history, ref.monitor_.history, rtol=1e-9)
    np.testing.assert_allclose(ours["transmat"], ref.transmat_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours["means"], ref.means_, rtol=1e-6, atol=1e-10)


def test_estep_statistics_equal_hmmlearns_accumulated_statistics():
    family, block, params = gaussian_setup("full", n_seq=40, seed=5)
    ref = hmmlearn_gaussian(family, params)
    ref.n_features = 2
    theirs, logprob = ref._do_estep(block.X, block.lengths)
    ours = family.e_step(block, params)
    np.testing.assert_allclose(ours["start"], theirs["start"], rtol=1e-10)
    np.testing.assert_allclose(ours["trans"], theirs["trans"], rtol=1e-10)
    np.testing.assert_allclose(ours["post"], theirs["post"], rtol=1e-10)
    # ours are around the current means: Σ γ (x − μ) = Σ γ x − post μ
    np.testing.assert_allclose(
        ours["sum"] + ours["post"][:, None] * params["means"], theirs["obs"], rtol=1e-10, atol=1e-9
    )
    assert ours.loglik == pytest.approx(logprob, rel=1e-12)
    assert ours.weight == len(block.lengths) and ours.count == block.n_rows


@pytest.mark.parametrize("family_kind", ["gaussian", "categorical"])
def test_score_matches_hmmlearn_per_sequence_posteriors_and_viterbi(family_kind):
    if family_kind == "gaussian":
        family, block, params = gaussian_setup("full", n_seq=80, seed=11)
        ref = hmmlearn_gaussian(family, params)
        X_ref = block.X
    else:
        family, block, params = categorical_setup(n_seq=80, seed=11)
        ref = hmmlearn_categorical(params)
        X_ref = block.X.astype(int)
    params, _ = fit(family, block, params, n_iter=3)  # somewhere off the initialization
    for name, attr in (("startprob", "startprob_"), ("transmat", "transmat_")):
        setattr(ref, attr, params[name])
    if family_kind == "gaussian":
        ref.means_, ref.covars_ = params["means"], params["covariances"]
    else:
        ref.emissionprob_ = params["emissionprob"]

    scored = family.score(block, params)
    n, k, lengths = block.n_rows, family.k, block.lengths
    assert scored["loglik"].shape == (len(lengths),)
    assert scored["log_resp"].shape == (n, k)
    assert scored["viterbi"].shape == (n,) and scored["viterbi"].dtype == np.int64

    per_sequence = [ref.score(x) for x in split_sequences(X_ref, lengths)]
    np.testing.assert_allclose(scored["loglik"], per_sequence, rtol=1e-10)
    np.testing.assert_allclose(np.exp(scored["log_resp"]), ref.predict_proba(X_ref, lengths), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.exp(scored["log_resp"]).sum(axis=1), 1.0, rtol=1e-12)
    _, path = ref.decode(X_ref, lengths, algorithm="viterbi")
    np.testing.assert_array_equal(scored["viterbi"], path)


def test_viterbi_matches_hmmlearn_with_many_groups_and_length_one_sequences(tiny_groups):
    rng = np.random.default_rng(4)
    lengths = np.concatenate([random_lengths(rng, 50, 1, 30), np.ones(5, int)])
    rng.shuffle(lengths)
    X = gaussian_sequences(rng, lengths)
    family = GaussianHMMFamily(3, "diag", reg_covar=0.0)
    block = Block(X, lengths=lengths)
    params = perturbed_chain(family.initialize(block, np.random.default_rng(0)), rng)
    ref = hmmlearn_gaussian(family, params)
    scored = family.score(block, params)
    np.testing.assert_array_equal(scored["viterbi"], ref.decode(X, lengths, algorithm="viterbi")[1])
    np.testing.assert_allclose(scored["loglik"], [ref.score(x) for x in split_sequences(X, lengths)], rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_n_parameters_equals_hmmlearn(covariance_type):
    family, block, params = gaussian_setup(covariance_type, n_seq=10)
    ref = hmmlearn_gaussian(family, params)
    ref.n_features = 2
    assert family.n_parameters(params) == sum(ref._get_n_fit_scalars_per_param().values())

    cat, cblock, cparams = categorical_setup(n_seq=10)
    cref = hmmlearn_categorical(cparams)
    assert cat.n_parameters(cparams) == sum(cref._get_n_fit_scalars_per_param().values())


def test_reg_covar_is_added_to_the_covariance_diagonal_in_the_m_step():
    """reg_covar has scikit-learn's semantics (not hmmlearn's min_covar, which only floors the init)."""
    family, block, params = gaussian_setup("full", n_seq=40, seed=2, reg_covar=0.25)
    gamma = hmmlearn_gaussian(family, params).predict_proba(block.X, block.lengths)
    new = family.m_step(family.e_step(block, params), params, block, np.random.default_rng(0)).params
    for j in range(family.k):
        nk = gamma[:, j].sum()
        mean = gamma[:, j] @ block.X / nk
        centered = block.X - mean
        cov = (gamma[:, j, None] * centered).T @ centered / nk + 0.25 * np.eye(2)
        np.testing.assert_allclose(new["means"][j], mean, rtol=1e-10)
        np.testing.assert_allclose(new["covariances"][j], cov, rtol=1e-10)


def test_categorical_smoothing_adds_a_pseudo_count_to_every_emission_count():
    family, block, params = categorical_setup(n_seq=30, seed=8)
    stats = family.e_step(block, params)
    smoothed = CategoricalHMMFamily(3, n_categories=5, smoothing=0.5)
    emission = smoothed.m_step(stats, params, block, np.random.default_rng(0)).params["emissionprob"]
    expected = (stats["counts"] + 0.5) / (stats["counts"] + 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(emission, expected, rtol=1e-12)
    # hmmlearn's Dirichlet prior of 1 + smoothing is the same estimate
    ref = hmmlearn_categorical(params, n_iter=1, tol=0.0, emissionprob_prior=1.5).fit(
        block.X.astype(int), block.lengths
    )
    np.testing.assert_allclose(emission, ref.emissionprob_, rtol=1e-10)


# ---------------------------------------------------------------------------
# numerics the engine relies on


@pytest.mark.parametrize("family_kind", ["gaussian", "categorical"])
def test_statistics_are_additive_over_splits_of_the_sequences_including_empty_blocks(family_kind):
    family, block, params = gaussian_setup("full", n_seq=50) if family_kind == "gaussian" else categorical_setup(50)
    whole = family.e_step(block, params)
    for cuts in ([25], [0, 10, 10, 49], [1, 2, 3, 50]):
        parts = [family.e_step(b, params) for b in blocks_of(block, cuts)]
        assert sum_stats(parts).allclose(whole, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("family_kind", ["gaussian", "categorical"])
def test_empty_block_gives_zero_statistics_with_the_right_shapes(family_kind):
    family, block, params = gaussian_setup("diag", n_seq=5) if family_kind == "gaussian" else categorical_setup(5)
    whole = family.e_step(block, params)
    d = block.n_features
    for empty in (Block(np.empty((0, d)), lengths=np.zeros(0, int)), Block(np.empty((0, d)))):
        stats = family.e_step(empty, params)
        assert set(stats) == set(whole)
        for name in whole:
            assert stats[name].shape == whole[name].shape, name
            assert np.all(stats[name] == 0), name


def test_grouping_does_not_change_the_statistics(tiny_groups):
    family, block, params = gaussian_setup("full", n_seq=40, seed=9)
    grouped = family.e_step(block, params)
    markov_module._GROUP_BYTES, markov_module._MIN_GROUP_ROWS = 1 << 30, 1 << 30  # undone by monkeypatch
    assert grouped.allclose(family.e_step(block, params), rtol=1e-12, atol=1e-10)


def test_sequence_weight_is_the_weight_of_its_first_observation_and_acts_as_a_count():
    family, block, params = gaussian_setup("full", n_seq=12, seed=6)
    lengths = block.lengths
    seq_weight = np.array([2, 0, 1, 3, 1, 1, 0, 2, 1, 1, 1, 1], dtype=float)
    row_weight = np.random.default_rng(0).random(block.n_rows) * 10  # ignored but for the first rows
    row_weight[starts_of(lengths)] = seq_weight
    weighted = family.e_step(Block(block.X, row_weight, lengths), params)
    # the same statistics as each sequence repeated ``weight`` times
    pieces = split_sequences(block.X, lengths)
    reps = [p for p, w in zip(pieces, seq_weight) for _ in range(int(w))]
    repeated = family.e_step(Block(np.concatenate(reps), lengths=np.array([len(p) for p in reps])), params)
    for name in weighted:
        if name == "count":
            assert weighted.count == block.n_rows  # observations in the block, unweighted
        else:
            np.testing.assert_allclose(weighted[name], repeated[name], rtol=1e-10, atol=1e-10, err_msg=name)
    assert weighted.weight == seq_weight.sum()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: gaussian_setup("full", seed=21), id="gaussian-full"),
        pytest.param(lambda: gaussian_setup("diag", seed=22), id="gaussian-diag"),
        pytest.param(lambda: categorical_setup(seed=23), id="categorical"),
    ],
)
def test_log_likelihood_never_decreases_over_twenty_iterations(make):
    family, block, init = make()
    _, history = fit(family, block, init, n_iter=20)
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert history[-1] > history[0]


@pytest.mark.parametrize("family_kind", ["gaussian", "categorical"])
def test_long_sequences_do_not_underflow(family_kind):
    rng = np.random.default_rng(13)
    lengths = np.array([5000, 4000, 3])
    if family_kind == "gaussian":
        X = gaussian_sequences(rng, lengths)
        family = GaussianHMMFamily(3, "full", reg_covar=0.0)
        params = {
            **family.params_from_public(
                {"startProb": TRUE_START, "transMat": TRUE_TRANS, "means": TRUE_MEANS, "covariances": TRUE_COVS}, 2
            )
        }
        ref = hmmlearn_gaussian(family, params)
        X_ref = X
    else:
        X = symbol_sequences(rng, lengths)
        family = CategoricalHMMFamily(3, 5)
        params = family.params_from_public(
            {"startProb": TRUE_START, "transMat": TRUE_TRANS, "emissionProb": TRUE_EMISSION}, 1
        )
        ref = hmmlearn_categorical(params)
        X_ref = X.astype(int)
    block = Block(X, lengths=lengths)
    stats = family.e_step(block, params)
    for name in stats:
        assert np.all(np.isfinite(stats[name])), name
    scored = family.score(block, params)
    assert scored["loglik"][0] < -2000  # far below what exp() can represent: p ≈ e^-several thousand
    np.testing.assert_allclose(scored["loglik"], [ref.score(x) for x in split_sequences(X_ref, lengths)], rtol=1e-10)
    np.testing.assert_allclose(np.exp(scored["log_resp"]).sum(axis=1), 1.0, rtol=1e-10)
    best_logprob, path = ref.decode(X_ref, lengths, algorithm="viterbi")
    if family_kind == "gaussian":
        np.testing.assert_array_equal(scored["viterbi"], path)
    else:
        # symbols make exact ties (0.2·0.6·0.1 = 0.6·0.1·0.2): any best path will do, and
        # rounding decides which one each implementation returns
        ours = categorical_path_log_prob(params, X_ref[:, 0], lengths, scored["viterbi"])
        assert ours == pytest.approx(best_logprob, rel=1e-12)
        assert np.mean(scored["viterbi"] == path) > 0.99
    assert stats.loglik == pytest.approx(scored["loglik"].sum(), rel=1e-12)


def _underflowing_setup():
    """Sequences whose scaled recursion underflows to exactly 0 but whose probability is positive.

    Two 1-d states 100 standard deviations apart; state 0 can never leave. A sequence that
    starts near state 0's mean but then sits at state 1's must have started in state 1
    (probability ∝ e^-5000): the scaled forward pass rounds that start to 0, so its next
    scaling factor is 0. The log-space recursion gets it right.
    """
    family = GaussianHMMFamily(2, "diag", reg_covar=0.0)
    params = family.params_from_public(
        {
            "startProb": np.array([0.5, 0.5]),
            "transMat": np.array([[1.0, 0.0], [0.2, 0.8]]),
            "means": np.array([[0.0], [100.0]]),
            "covariances": np.array([[1.0], [1.0]]),
        },
        1,
    )
    rng = np.random.default_rng(0)
    normal = [rng.normal(size=n) for n in (5, 7, 3)]
    odd = np.array([0.1, 100.2, 99.5, 100.1, 0.3, -0.2])
    pieces = [normal[0], odd, normal[1], normal[2] + 100.0]
    lengths = np.array([len(p) for p in pieces])
    return family, params, Block(np.concatenate(pieces)[:, None], lengths=lengths)


def test_sequences_whose_scaling_underflows_are_redone_in_log_space():
    family, params, block = _underflowing_setup()
    ref = hmmlearn_gaussian(family, params)  # hmmlearn's default "log" implementation
    ref.n_features = 1
    scored = family.score(block, params)
    per_sequence = [ref.score(x) for x in split_sequences(block.X, block.lengths)]
    assert np.all(np.isfinite(scored["loglik"]))
    assert scored["loglik"][1] < -4000
    np.testing.assert_allclose(scored["loglik"], per_sequence, rtol=1e-10)
    np.testing.assert_allclose(np.exp(scored["log_resp"]), ref.predict_proba(block.X, block.lengths), atol=1e-12)
    np.testing.assert_array_equal(scored["viterbi"], ref.decode(block.X, block.lengths, algorithm="viterbi")[1])

    theirs, logprob = ref._do_estep(block.X, block.lengths)
    ours = family.e_step(block, params)
    assert ours.loglik == pytest.approx(logprob, rel=1e-12)
    for name in ("start", "trans", "post"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_sequence_of_probability_zero_is_refused_by_the_e_step_and_scored_minus_infinity():
    family = CategoricalHMMFamily(2, 3)
    params = family.params_from_public(
        {
            "startProb": np.array([1.0, 0.0]),
            "transMat": np.array([[0.5, 0.5], [0.0, 1.0]]),
            "emissionProb": np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]),
        },
        1,
    )
    # sequence 1 needs symbol 0 after state 1 was reached through symbol 2: impossible
    X = np.array([0, 1, 1, 0, 2, 0, 1], dtype=float)[:, None]
    block = Block(X, lengths=np.array([3, 3, 1]))
    scored = family.score(block, params)
    assert scored["loglik"][1] == -np.inf
    assert np.all(np.isfinite(scored["loglik"][[0, 2]]))
    np.testing.assert_array_equal(scored["viterbi"][3:6], -1)
    assert np.all(scored["viterbi"][[0, 1, 2, 6]] >= 0)
    assert not np.any(np.isnan(scored["log_resp"]))
    with pytest.raises(ModelError, match=r"probability zero.*sequence 1.*smoothing > 0"):
        family.e_step(block, params)
    # with weight 0 the impossible sequence is ignored
    weight = np.array([1, 1, 1, 0, 0, 0, 1.0])
    stats = family.e_step(Block(X, weight, np.array([3, 3, 1])), params)
    assert np.isfinite(stats.loglik) and stats.weight == 2


def test_the_refusal_names_the_sequence_by_its_index_in_the_block(tiny_groups):
    family = CategoricalHMMFamily(2, 3)
    params = family.params_from_public(
        {"startProb": [1.0, 0.0], "transMat": [[0.5, 0.5], [0.0, 1.0]], "emissionProb": [[0.5, 0.5, 0], [0, 0.5, 0.5]]},
        1,
    )
    pieces = [np.array([0.0, 1.0, 1.0])] * 40 + [np.array([0.0, 2.0, 0.0])] + [np.array([1.0])] * 5
    block = Block(np.concatenate(pieces)[:, None], lengths=np.array([len(p) for p in pieces]))
    with pytest.raises(ModelError, match=r"1 sequence\(s\) .* \(for example sequence 40\)"):
        family.e_step(block, params)
    scored = family.score(block, params)
    assert np.flatnonzero(np.isinf(scored["loglik"])).tolist() == [40]


# ---------------------------------------------------------------------------
# M-step repairs


def test_a_state_that_lost_its_mass_keeps_its_emission_parameters_and_says_so():
    family, block, params = gaussian_setup("full", n_seq=40, seed=1)
    params = dict(params)
    params["means"] = params["means"].copy()
    params["means"][2] = [1e4, -1e4]  # explains nothing: its occupancy underflows to ~0
    params = family.params_from_public(family.public_params(params), 2)
    result = family.m_step(family.e_step(block, params), params, block, np.random.default_rng(0))
    assert isinstance(result, MStepResult)
    assert any("state 2 lost its mass" in event for event in result.events)
    new = result.params
    np.testing.assert_array_equal(new["means"][2], params["means"][2])
    np.testing.assert_array_equal(new["covariances"][2], params["covariances"][2])
    for value in new.values():
        assert np.all(np.isfinite(value))
    # and the fit goes on, monotone
    _, history = fit(family, block, new, n_iter=5)
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


def test_a_categorical_state_that_lost_its_mass_keeps_its_emission_row():
    family, block, params = categorical_setup(n_seq=30)
    params = dict(
        params, startprob=np.array([0.5, 0.5, 0.0]), transmat=np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [1 / 3] * 3])
    )
    result = family.m_step(family.e_step(block, params), params, block, np.random.default_rng(0))
    assert any("state 2 lost its mass" in e for e in result.events)
    assert any("state 2 had no expected transitions" in e for e in result.events)
    np.testing.assert_array_equal(result.params["emissionprob"][2], params["emissionprob"][2])
    np.testing.assert_array_equal(result.params["transmat"][2], params["transmat"][2])
    for value in result.params.values():
        assert np.all(np.isfinite(value))


def test_m_step_refuses_statistics_of_no_data():
    family, block, params = gaussian_setup("full", n_seq=5)
    empty = family.e_step(Block(np.empty((0, 2)), lengths=np.zeros(0, int)), params)
    with pytest.raises(ModelError, match="no weight"):
        family.m_step(empty, params, block, np.random.default_rng(0))


def test_collapsed_covariance_without_regularization_is_a_clear_error():
    family = GaussianHMMFamily(2, "full", reg_covar=0.0)
    X = np.repeat([[0.0, 0.0], [5.0, 5.0]], 10, axis=0) + 0.0
    block = Block(X, lengths=np.array([10, 10]))
    params = family.params_from_public(
        {
            "startProb": [0.5, 0.5],
            "transMat": [[0.9, 0.1], [0.1, 0.9]],
            "means": [[0.0, 0.0], [5.0, 5.0]],
            "covariances": np.array([np.eye(2), np.eye(2)]),
        },
        2,
    )
    with pytest.raises(ModelError, match="increase regCovar"):
        family.m_step(family.e_step(block, params), params, block, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# parameters from users, initialization, description


def test_public_params_round_trip():
    for family, block, params in (
        gaussian_setup("full", n_seq=5),
        gaussian_setup("diag", n_seq=5),
        categorical_setup(5),
    ):
        public = family.public_params(params)
        assert {"startProb", "transMat"} <= set(public)
        again = family.params_from_public(public, block.n_features)
        assert again.keys() == params.keys()
        for name in params:
            np.testing.assert_allclose(again[name], params[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("transMat"), r"missing \['transMat'\]"),
        (lambda p: p.update(startProb=[0.5, 0.5]), r"startProb must have shape \(3,\)"),
        (lambda p: p.update(startProb=[0.5, 0.6, -0.1]), "non-negative"),
        (lambda p: p.update(startProb=[0.5, 0.2, 0.2]), "must sum to 1"),
        (lambda p: p.update(transMat=np.full((3, 3), 0.3)), r"rows must each sum to 1; rows \[0, 1, 2\]"),
        (lambda p: p.update(transMat=np.full((3, 3), np.nan)), "finite"),
        (lambda p: p.update(transMat="abc"), "numeric"),
        (lambda p: p.update(means=np.zeros((3, 3))), r"means must have shape \(3, 2\)"),
        (lambda p: p.update(covariances=-np.ones((3, 2, 2))), "positive definite"),
        (lambda p: p.update(covariances=np.array([[[1, 0.5], [0, 1]]] * 3)), "symmetric"),
    ],
)
def test_gaussian_params_from_public_errors(change, message):
    family = GaussianHMMFamily(3, "full")
    public = {"startProb": TRUE_START, "transMat": TRUE_TRANS, "means": TRUE_MEANS, "covariances": TRUE_COVS}
    change(public)
    with pytest.raises(ModelError, match=message):
        family.params_from_public(public, 2)


@pytest.mark.parametrize(
    "family, change, message",
    [
        (CategoricalHMMFamily(3), lambda p: p.pop("emissionProb"), r"missing \['emissionProb'\]"),
        (CategoricalHMMFamily(3, 4), lambda p: None, r"emissionProb must have shape \(3, 4\).*nCategories=4"),
        (CategoricalHMMFamily(3), lambda p: p.update(emissionProb=np.ones(5) / 5), r"shape \(k, n_categories\)"),
        (
            CategoricalHMMFamily(3),
            lambda p: p.update(emissionProb=TRUE_EMISSION * 2),
            "emissionProb rows must each sum to 1",
        ),
    ],
)
def test_categorical_params_from_public_errors(family, change, message):
    public = {"startProb": TRUE_START, "transMat": TRUE_TRANS, "emissionProb": TRUE_EMISSION}
    change(public)
    with pytest.raises(ModelError, match=message):
        family.params_from_public(public, 1)


def test_params_from_public_renormalizes_within_tolerance_and_checks_features():
    family = CategoricalHMMFamily(3)
    params = family.params_from_public(
        {"startProb": TRUE_START * (1 + 1e-8), "transMat": TRUE_TRANS, "emissionProb": TRUE_EMISSION}, 1
    )
    assert params["startprob"].sum() == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ModelError, match="one integer symbol per row"):
        family.params_from_public({"startProb": TRUE_START, "transMat": TRUE_TRANS, "emissionProb": TRUE_EMISSION}, 2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GaussianHMMFamily(0), "k must be a positive integer"),
        (
            lambda: GaussianHMMFamily(2, "block"),
            r"covarianceType must be one of \['full', 'diag', 'tied', 'spherical'\]",
        ),
        (lambda: GaussianHMMFamily(2, reg_covar=-1.0), "regCovar"),
        (lambda: GaussianHMMFamily(2, init_mode="kmeans"), "initMode"),
        (lambda: CategoricalHMMFamily(2, n_categories=0), "nCategories"),
        (lambda: CategoricalHMMFamily(2, smoothing=float("nan")), "smoothing"),
    ],
)
def test_hyperparameter_errors(make, message):
    with pytest.raises(ModelError, match=message):
        make()


def test_data_errors_are_clear():
    family, block, params = categorical_setup(n_seq=5)
    with pytest.raises(ModelError, match="symbol 7 is out of range.*nCategories=5"):
        family.e_step(Block(np.array([[1.0], [7.0]]), lengths=np.array([2])), params)
    with pytest.raises(ModelError, match="non-negative integers"):
        family.e_step(Block(np.array([[1.5]]), lengths=np.array([1])), params)
    with pytest.raises(ModelError, match="at least one observation"):
        family.e_step(Block(np.array([[1.0]]), lengths=np.array([1, 0])), params)
    gfamily, gblock, gparams = gaussian_setup("full", n_seq=5)
    with pytest.raises(ModelError, match="data has 3 features but the model has 2"):
        gfamily.e_step(Block(np.zeros((4, 3)), lengths=np.array([4])), gparams)


@pytest.mark.parametrize("init_mode", ["k-means++", "random"])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_gaussian_initialize_gives_valid_parameters_near_the_data(covariance_type, init_mode):
    rng = np.random.default_rng(3)
    lengths = random_lengths(rng, 100)
    X = gaussian_sequences(rng, lengths)
    family = GaussianHMMFamily(3, covariance_type, init_mode=init_mode)
    params = family.initialize(Block(X, lengths=lengths), np.random.default_rng(0))
    np.testing.assert_allclose(params["startprob"], 1 / 3)
    np.testing.assert_allclose(params["transmat"], 1 / 3)
    assert params["means"].shape == (3, 2)
    expected = {"full": (3, 2, 2), "diag": (3, 2), "tied": (2, 2), "spherical": (3,)}[covariance_type]
    assert params["covariances"].shape == expected
    for value in params.values():
        assert value.dtype == np.float64 and np.all(np.isfinite(value))
    if init_mode == "k-means++":
        # each true mean has an initial mean close by
        distance = np.linalg.norm(params["means"][:, None] - TRUE_MEANS[None], axis=2)
        assert np.all(distance.min(axis=0) < 1.0)


def test_categorical_initialize_infers_the_number_of_categories_from_the_sample():
    rng = np.random.default_rng(1)
    X = symbol_sequences(rng, np.full(20, 10))
    params = CategoricalHMMFamily(3).initialize(Block(X, lengths=np.full(20, 10)), np.random.default_rng(0))
    assert params["emissionprob"].shape == (3, int(X.max()) + 1)
    np.testing.assert_allclose(params["emissionprob"].sum(axis=1), 1.0)
    assert np.all(params["emissionprob"] > 0)
    wide = CategoricalHMMFamily(3, 9).initialize(Block(X, lengths=np.full(20, 10)), np.random.default_rng(0))
    assert wide["emissionprob"].shape == (3, 9)
    with pytest.raises(ModelError, match="empty sample"):
        CategoricalHMMFamily(3).initialize(Block(np.empty((0, 1)), lengths=np.zeros(0, int)), np.random.default_rng(0))


def test_families_implement_the_protocol_and_describe_themselves():
    for family in (GaussianHMMFamily(3, "diag", 1e-3, "random"), CategoricalHMMFamily(2, 6, 0.5)):
        assert isinstance(family, EMFamily)
        config = family.config()
        assert json.loads(json.dumps(config)) == config
        assert config["name"] == family.name
        assert pickle.loads(pickle.dumps(family)) == family
    assert GaussianHMMFamily.name == "gaussian_hmm" and CategoricalHMMFamily.name == "categorical_hmm"
    family, block, params = gaussian_setup("full", n_seq=5)
    progress = family.progress(params)
    assert set(progress) == {"minStateProb"} and 0 <= progress["minStateProb"] <= 1
    # stationary distribution of the true chain
    params = dict(params, transmat=TRUE_TRANS)
    pi = np.linalg.matrix_power(TRUE_TRANS, 200)[0]
    assert family.progress(params)["minStateProb"] == pytest.approx(pi.min(), rel=1e-9)


def test_relabel_permutes_states_consistently():
    family, block, params = gaussian_setup("full", n_seq=20)
    order = np.array([2, 0, 1])
    relabeled = family.relabel(params, order)
    a, b = family.score(block, params), family.score(block, relabeled)
    np.testing.assert_allclose(a["loglik"], b["loglik"], rtol=1e-12)
    np.testing.assert_allclose(a["log_resp"][:, order], b["log_resp"], rtol=1e-9, atol=1e-12)
    with pytest.raises(ModelError, match="permutation"):
        family.relabel(params, [0, 0, 1])


def test_results_are_deterministic():
    for make in (lambda: gaussian_setup("full", n_seq=30, seed=4), lambda: categorical_setup(30, seed=4)):
        family, block, params = make()
        first, second = family.e_step(block, params), family.e_step(block, params)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])
        _, block2, params2 = make()
        for name in params:
            np.testing.assert_array_equal(params[name], params2[name])
        s1, s2 = family.score(block, params), family.score(block, params)
        for name in s1:
            np.testing.assert_array_equal(s1[name], s2[name])


def test_e_step_does_not_mutate_its_inputs():
    family, block, params = gaussian_setup("full", n_seq=10)
    X, lengths = block.X.copy(), block.lengths.copy()
    copies = {name: value.copy() for name, value in params.items()}
    family.e_step(block, params)
    family.score(block, params)
    np.testing.assert_array_equal(block.X, X)
    np.testing.assert_array_equal(block.lengths, lengths)
    for name in params:
        np.testing.assert_array_equal(params[name], copies[name])


# ---------------------------------------------------------------------------
# speed (a print, not an assertion)


def test_e_step_timing_print(capsys):
    """One core: 10,000 sequences x 100 steps, 3 states, 2-d full, as one block or four."""
    rng = np.random.default_rng(0)
    n_seq, L = 10_000, 100
    lengths = np.full(n_seq, L)
    X = gaussian_sequences(rng, lengths)
    family = GaussianHMMFamily(3, "full")
    params = family.initialize(Block(X[:20_000], lengths=np.full(200, L)), np.random.default_rng(0))
    timings = {}
    with threadpool_limits(1):
        for n_blocks in (1, 4):
            blocks = blocks_of(Block(X, lengths=lengths), [n_seq * i // n_blocks for i in range(1, n_blocks)])
            best = np.inf
            for _ in range(3):
                start = time.perf_counter()
                total = sum_stats(family.e_step(b, params) for b in blocks)
                best = min(best, time.perf_counter() - start)
            timings[n_blocks] = best
            assert isinstance(total, Stats) and np.isfinite(total.loglik)
    with capsys.disabled():
        print(
            f"\n[hmm e_step, 1 thread] {n_seq} sequences x {L} steps, k=3, d=2 full: "
            f"1 block {timings[1] * 1e3:.0f} ms, 4 blocks {timings[4] * 1e3:.0f} ms"
        )


@pytest.mark.parametrize("covariance_type", ["tied", "spherical"])
def test_relabeling_a_tied_or_spherical_hmm_reorders_what_belongs_to_states_only(covariance_type):
    family, block, params = gaussian_setup(covariance_type, n_seq=20)
    order = np.array([2, 0, 1])
    moved = family.relabel(params, order)
    np.testing.assert_array_equal(moved["means"], params["means"][order])
    expected = params["covariances"] if covariance_type == "tied" else params["covariances"][order]
    np.testing.assert_array_equal(moved["covariances"], expected)
    # the relabeled model scores every sequence the same, with the states' posteriors reordered
    a, b = family.score(block, params), family.score(block, moved)
    np.testing.assert_allclose(b["loglik"], a["loglik"], rtol=1e-12)
    np.testing.assert_allclose(b["log_resp"], a["log_resp"][:, order], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------
# MAP EM: hmmlearn's priors

PRIORS = dict(
    startprob_prior=2.5, transmat_prior=3.0, means_prior=0.5, means_weight=4.0, covars_prior=0.3, covars_weight=5.0
)


def hmmlearn_with_priors(family, params, **kwargs):
    """hmmlearn on our parameters with the same priors: its covars_prior as ψ I for full and tied."""
    d = params["means"].shape[1]
    psi = {"full": np.tile(np.eye(d), (family.k, 1, 1)), "tied": np.eye(d)}.get(family.covariance_type, 1.0)
    model = hl.GaussianHMM(
        n_components=family.k,
        covariance_type=family.covariance_type,
        init_params="",
        params="stmc",
        startprob_prior=PRIORS["startprob_prior"],
        transmat_prior=PRIORS["transmat_prior"],
        means_prior=PRIORS["means_prior"],
        means_weight=PRIORS["means_weight"],
        covars_prior=PRIORS["covars_prior"] * psi,
        covars_weight=PRIORS["covars_weight"],
        **kwargs,
    )
    model.startprob_, model.transmat_ = params["startprob"].copy(), params["transmat"].copy()
    model.means_, model.covars_ = params["means"].copy(), params["covariances"].copy()
    return model


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_map_em_with_hmmlearns_priors_matches_hmmlearn_and_never_lowers_the_log_posterior(covariance_type):
    _, block, init = gaussian_setup(covariance_type)
    family = GaussianHMMFamily(3, covariance_type, reg_covar=0.0, **PRIORS)
    ours, history = fit(family, block, init, n_iter=10)
    # tol=-inf: with a prior the log-likelihood may fall, which would stop hmmlearn's monitor at tol=0
    ref = hmmlearn_with_priors(family, init, n_iter=10, tol=-np.inf).fit(block.X, block.lengths)
    np.testing.assert_allclose(history, ref.monitor_.history, rtol=1e-9)
    np.testing.assert_allclose(ours["startprob"], ref.startprob_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours["transmat"], ref.transmat_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours["means"], ref.means_, rtol=1e-6, atol=1e-10)
    if covariance_type == "spherical":
        np.testing.assert_allclose(ours["covariances"], ref._covars_[:, 0], rtol=1e-6, atol=1e-10)
    else:
        np.testing.assert_allclose(full_covariances(family, ours), ref.covars_, rtol=1e-6, atol=1e-10)
    # the prior moved the fit: without it the parameters differ
    plain, _ = fit(GaussianHMMFamily(3, covariance_type, reg_covar=0.0), block, init, n_iter=10)
    assert not np.allclose(plain["means"], ours["means"], rtol=1e-4)
    # EM for the MAP estimate: loglik + log prior never decreases (the log-likelihood alone may)
    params, posterior = init, []
    for _ in range(15):
        stats = family.e_step(block, params)
        posterior.append(float(stats.loglik) + family.log_prior(params))
        params = family.m_step(stats, params, block, np.random.default_rng(0)).params
    assert np.all(np.diff(posterior) >= -1e-9 * abs(posterior[0]))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_the_gaussian_prior_is_the_one_whose_map_the_m_step_is(covariance_type):
    """Perturbing the M-step's answer in any direction lowers E[complete loglik] + log prior."""
    from em_spark.models.priors import GaussianPrior

    family, block, params = gaussian_setup(covariance_type, n_seq=30, seed=4)
    prior = GaussianPrior(0.5, 4.0, 0.3, 5.0)
    stats = family.e_step(block, params)
    nk, sums, sq = stats["post"], stats["sum"], stats["sq"]
    means, cov = prior.m_step(nk, sums, sq, params["means"], covariance_type)

    def objective(m, c):
        full = full_covariances(family, {"means": m, "covariances": c})
        inv = np.linalg.inv(full)
        total = 0.0
        for j in range(3):  # Σ γ log N(x | m_j, Σ_j), from the moments around the old means
            shift = params["means"][j] - m[j]
            s2 = (sq[j] if sq.ndim == 3 else np.diag(sq[j])) + np.outer(sums[j], shift) + np.outer(shift, sums[j])
            s2 = s2 + nk[j] * np.outer(shift, shift)
            total += -0.5 * nk[j] * np.linalg.slogdet(full[j])[1] - 0.5 * np.trace(inv[j] @ s2)
        return total + prior.log_prior(m, c, covariance_type)

    best = objective(means, cov)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert objective(means + 1e-3 * rng.normal(size=means.shape), cov) < best
        scaled = cov * np.exp(1e-3 * rng.normal()) if covariance_type != "tied" else cov * (1 + 1e-3 * rng.normal())
        assert objective(means, scaled) < best


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"startprob_prior": 0.0}, r"startProbPrior must be a finite number > 0"),
        ({"transmat_prior": -1.0}, r"transMatPrior must be a finite number > 0"),
        ({"means_weight": -0.1}, r"meansWeight must be a finite number >= 0 \(hmmlearn's means_weight\)"),
        ({"covars_prior": float("nan")}, r"covarsPrior must be a finite number >= 0"),
        ({"means_prior": float("inf")}, r"meansPrior must be a finite number"),
    ],
)
def test_bad_priors_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ModelError, match=message):
        GaussianHMMFamily(2, **kwargs)
    if "means" not in str(kwargs) and "covars" not in str(kwargs):
        with pytest.raises(ModelError, match=message):
            CategoricalHMMFamily(2, **kwargs)


def test_the_estimators_and_the_job_config_pass_the_priors_to_the_family():
    from em_spark.api import CategoricalHMM, GaussianHMM
    from em_spark.app.common import estimator_from_config
    from em_spark.app.config import load_config

    family = GaussianHMM(k=2, startProbPrior=2.0, meansWeight=3.0, covarsPrior=0.1, covarsWeight=4.0).family()
    assert (family.startprob_prior, family.means_weight, family.covars_prior, family.covars_weight) == (
        2.0,
        3.0,
        0.1,
        4.0,
    )
    assert CategoricalHMM(k=2, transMatPrior=5.0).family().transmat_prior == 5.0
    config = load_config(
        None, ["model.family=gaussian_hmm", "model.transMatPrior=3", "model.meansPrior=1.5", "model.meansWeight=2"]
    )
    family = estimator_from_config(config, None).family()
    assert (family.transmat_prior, family.means_prior, family.means_weight) == (3.0, 1.5, 2.0)


def test_priors_at_their_defaults_leave_the_config_as_checkpoints_written_before_them_have_it():
    """A resume compares family configs: a run checkpointed before the priors existed must still resume."""
    assert GaussianHMMFamily(3).config() == {
        "name": "gaussian_hmm",
        "k": 3,
        "covariance_type": "full",
        "reg_covar": 1e-6,
        "init_mode": "k-means++",
    }
    assert CategoricalHMMFamily(2).config() == {
        "name": "categorical_hmm",
        "k": 2,
        "n_categories": None,
        "smoothing": 0.0,
    }
    with_prior = GaussianHMMFamily(3, means_weight=2.0).config()
    assert with_prior["means_weight"] == 2.0 and "covars_weight" not in with_prior
    assert GaussianHMMFamily(**{k: v for k, v in with_prior.items() if k != "name"}) == GaussianHMMFamily(
        3, means_weight=2.0
    )
