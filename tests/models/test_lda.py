"""LDA by variational EM against scikit-learn's LatentDirichletAllocation (the same updates).

The oracle is scikit-learn 1.9's batch variational EM driven from our initial topics through
its private API, pinned here: ``_init_latent_vars(V)`` (priors, ``random_state_``), then
``components_`` / ``exp_dirichlet_component_`` set to our lambda, ``_e_step(X, cal_sstats=True,
random_init=False)`` for the statistics (gamma starting at 1, as our E-step does: scikit-learn's
training E-step draws its initial gamma at random instead, which a pure E-step cannot), and
``score(X)`` for the full variational bound. Its batch M-step (``_em_step``) is
``components_ = topic_word_prior_ + sstats``, written out below.

Tolerance: scikit-learn's digamma (``_online_lda_fast.psi``) is an asymptotic series, not
scipy's; ``test_sklearns_digamma_differs_from_scipys_by_about_1e_9`` measures the gap (2e-9 at
this file's lambda and gamma). The fixed points move with it by their sensitivity: measured,
a document's smallest gamma entries by 1.7e-7 relative (7.5e-9 of the document's length), the
statistics by 6e-9, the bound by less than 1e-9; EM iterations then grow the gap (see
``DIGAMMAS``). With scikit-learn's digamma swapped into our E-step the two agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
from sklearn.decomposition import LatentDirichletAllocation
from sklearn.decomposition._online_lda_fast import _dirichlet_expectation_2d

from em_spark.engine.loop import fit_em
from em_spark.engine.minibatch import Subset
from em_spark.engine.online import step_size
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import FAMILIES, Block, LDAFamily, ModelError
from em_spark.models.lda import WORDS, dirichlet_expectation
from em_spark.stats import COUNT, LOGLIK, WEIGHT, sum_stats

K, V = 3, 40


def corpus(rng: np.random.Generator, docs: int = 150, vocabulary: int = V, k: int = K, mean_length: int = 40):
    """(docs, vocabulary) word counts drawn from an LDA model with sparse topics."""
    beta = rng.dirichlet(np.full(vocabulary, 0.1), size=k)
    theta = rng.dirichlet(np.full(k, 0.3), size=docs)
    lengths = rng.poisson(mean_length, size=docs) + 1
    return np.array([rng.multinomial(n, t @ beta) for n, t in zip(lengths, theta)], dtype=np.float64)


X = corpus(np.random.default_rng(0))
FAMILY = LDAFamily(k=K)
INIT = FAMILY.initialize(Block(X), np.random.default_rng(1))


def sklearn_oracle(lam: np.ndarray, alpha: float, eta: float, **kw) -> LatentDirichletAllocation:
    """scikit-learn's LDA with components_ = lam (see the module docstring for what is pinned)."""
    k, vocabulary = lam.shape
    lda = LatentDirichletAllocation(
        n_components=k, doc_topic_prior=alpha, topic_word_prior=eta, learning_method="batch", **kw
    )
    lda._init_latent_vars(vocabulary)
    lda.n_features_in_ = vocabulary
    lda.components_ = lam.copy()
    lda.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(lda.components_))
    return lda


def sklearn_batch_step(lda: LatentDirichletAllocation, X) -> None:
    _, sstats = lda._e_step(X, cal_sstats=True, random_init=False)
    lda.components_ = lda.topic_word_prior_ + sstats  # _em_step(batch_update=True)
    lda.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(lda.components_))


def test_the_oracle_is_the_pinned_scikit_learn():
    assert sklearn.__version__.split(".")[:2] == ["1", "9"], "re-check the private API the oracle drives"


def test_sklearns_digamma_differs_from_scipys_by_about_1e_9():
    """The measured gap behind this file's tolerances (see the module docstring)."""
    values = np.random.default_rng(2).gamma(0.5, 20.0, size=(50, 200)) + 1e-3
    gap = np.abs(_dirichlet_expectation_2d(values) - dirichlet_expectation(values))
    assert 1e-13 < gap.max() < 1e-8


def test_the_e_step_is_sklearns_e_step_and_its_bound_sklearns_score():
    lam = INIT["lambda"]
    lda = sklearn_oracle(lam, 1 / K, 1 / K)
    gamma, sstats = lda._e_step(X, cal_sstats=True, random_init=False)
    stats = FAMILY.e_step(Block(X), INIT)
    np.testing.assert_allclose(stats["sstats"], sstats, rtol=1e-7)
    # a document's small gamma entries move most with the digamma gap (measured: 1.7e-7 relative,
    # 7.5e-9 of the document's length); the statistics sum over documents (6e-9 relative)
    np.testing.assert_allclose(FAMILY.score(Block(X), INIT)["gamma"], gamma, rtol=1e-6)
    full_bound = stats[LOGLIK] + FAMILY.log_prior(INIT)
    assert full_bound == pytest.approx(lda.score(X), rel=1e-9)
    assert stats[WORDS] == X.sum() and stats[WEIGHT] == stats[COUNT] == X.shape[0]
    # perplexity as scikit-learn defines it: exp(-bound / tokens)
    # (exp amplifies the bound's relative gap by the bound per token, about 4)
    assert math.exp(-full_bound / stats[WORDS]) == pytest.approx(lda.perplexity(X), rel=1e-8)


def test_each_document_stops_where_sklearn_stops_it():
    """One update per document, or a loose tolerance (documents stop after different numbers of
    updates): gamma is scikit-learn's document by document."""
    for kw in ({"max_doc_update_iter": 1}, {"max_doc_update_iter": 7}, {"mean_change_tol": 0.05}):
        family = LDAFamily(k=K, **kw)
        lda = sklearn_oracle(INIT["lambda"], 1 / K, 1 / K, **kw)
        gamma, sstats = lda._e_step(X, cal_sstats=True, random_init=False)
        np.testing.assert_allclose(family.score(Block(X), INIT)["gamma"], gamma, rtol=1e-6, err_msg=str(kw))
        np.testing.assert_allclose(family.e_step(Block(X), INIT)["sstats"], sstats, rtol=1e-7, err_msg=str(kw))


# (digamma, rtol of every iteration's bound, rtol of the final lambda). With scikit-learn's own
# digamma swapped in the two are the same computation up to summation order (measured: lambda
# 2.4e-12, bounds 7e-15 after 10 iterations). With scipy's, the 2e-9 gap grows as EM moves the
# topics (measured after 10 iterations: lambda 5.6e-6 relative at its smallest entries, 1.4e-6 of
# a topic's mass; bounds below 1e-8).
DIGAMMAS = {"sklearn's digamma": ("sklearn", 1e-13, 1e-10), "scipy's digamma": ("scipy", 1e-7, 2e-5)}


@pytest.mark.parametrize("digamma", list(DIGAMMAS))
def test_batch_variational_em_follows_sklearn_from_the_same_initial_topics(digamma, monkeypatch):
    """10 iterations through the engine's loop: every iteration's full bound and the final
    topics agree with scikit-learn's batch updates from the same initial lambda."""
    which, bound_rtol, lambda_rtol = DIGAMMAS[digamma]
    if which == "sklearn":
        from em_spark.models import lda as module

        monkeypatch.setattr(
            module, "dirichlet_expectation", lambda a: _dirichlet_expectation_2d(np.ascontiguousarray(a))
        )
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 4)], sample_size=500)
    iterations = 10
    result = fit_em(FAMILY, source, FitSettings(max_iter=iterations, tol=0.0), INIT)
    lda = sklearn_oracle(INIT["lambda"], 1 / K, 1 / K)
    params, ours, theirs = INIT, [], []
    for _ in range(iterations):
        theirs.append(lda.score(X))
        sklearn_batch_step(lda, X)
        stats = FAMILY.e_step(Block(X), params)
        ours.append(stats[LOGLIK] + FAMILY.log_prior(params))
        params = FAMILY.m_step(stats, params, Block(X[:0]), np.random.default_rng(0)).params
    np.testing.assert_allclose(ours, theirs, rtol=bound_rtol)
    np.testing.assert_allclose(result.params["lambda"], params["lambda"], rtol=1e-10)
    np.testing.assert_allclose(result.params["lambda"], lda.components_, rtol=lambda_rtol)
    # the engine's history is the documents' part of the bound per document
    np.testing.assert_allclose(
        np.array(result.history) * X.shape[0] + [FAMILY.log_prior(p) for p in _iterates(iterations)], ours, rtol=1e-10
    )


def _iterates(n: int):
    params = INIT
    for _ in range(n):
        yield params
        params = FAMILY.m_step(FAMILY.e_step(Block(X), params), params, Block(X[:0]), np.random.default_rng(0)).params


def test_the_full_bound_never_decreases_in_batch_variational_em():
    """Coordinate ascent: each E-step maximizes over gamma (to the document tolerance), the M-step
    over lambda exactly. With the default tolerance 1e-3 a document's gamma is inexact, so the
    test uses 1e-6; a step may then lose at most rounding."""
    family = LDAFamily(k=4, mean_change_tol=1e-6)
    params = family.initialize(Block(X), np.random.default_rng(3))
    bounds = []
    for _ in range(40):
        stats = family.e_step(Block(X), params)
        bounds.append(stats[LOGLIK] + family.log_prior(params))
        params = family.m_step(stats, params, Block(X), np.random.default_rng(0)).params
    steps = np.diff(bounds)
    assert steps.min() > -1e-6 * abs(bounds[-1]), steps.min()
    assert bounds[-1] - bounds[0] > 100  # it did climb


def test_dense_and_csr_blocks_give_the_same_statistics_and_scores():
    dense = FAMILY.e_step(Block(X), INIT)
    sparse = FAMILY.e_step(Block(sp.csr_array(X)), INIT)
    assert dense.keys() == sparse.keys()
    for name in dense:
        np.testing.assert_array_equal(dense[name], sparse[name], err_msg=name)
    a, b = FAMILY.score(Block(X), INIT), FAMILY.score(Block(sp.csr_array(X)), INIT)
    np.testing.assert_array_equal(a["log_resp"], b["log_resp"])
    np.testing.assert_array_equal(a["loglik"], b["loglik"])
    # float32 storage widens to the same float64 statistics (counts are exact in float32)
    single = FAMILY.e_step(Block(sp.csr_array(X.astype(np.float32))), INIT)
    for name in dense:
        np.testing.assert_array_equal(dense[name], single[name], err_msg=name)


@pytest.mark.parametrize("cuts", [[1], [75], [10, 11, 149], [0, 0, 40, 40, 150]])
def test_statistics_of_any_split_add_up_to_the_whole(cuts):
    whole = FAMILY.e_step(Block(X), INIT)
    w = np.random.default_rng(4).random(X.shape[0]) * 2
    weighted = FAMILY.e_step(Block(sp.csr_array(X), w), INIT)
    for reference, weights in ((whole, None), (weighted, w)):
        parts = [
            FAMILY.e_step(Block(sp.csr_array(x), None if weights is None else ww), INIT)
            for x, ww in zip(np.split(X, cuts), np.split(np.ones(X.shape[0]) if weights is None else weights, cuts))
        ]
        total = sum_stats(parts)
        assert total is not None and total.allclose(reference, rtol=1e-12, atol=1e-9)


def test_scores_are_per_document_topic_distributions_and_bounds():
    scores = FAMILY.score(Block(X[:20]), INIT)
    theta = np.exp(scores["log_resp"])
    np.testing.assert_allclose(theta.sum(axis=1), 1.0)
    np.testing.assert_allclose(theta, scores["gamma"] / scores["gamma"].sum(axis=1, keepdims=True))
    assert scores["loglik"].sum() == pytest.approx(float(FAMILY.e_step(Block(X[:20]), INIT)[LOGLIK]), rel=1e-12)
    lda = sklearn_oracle(INIT["lambda"], 1 / K, 1 / K)
    np.testing.assert_allclose(theta, lda.transform(X[:20]), rtol=1e-6)


def test_online_steps_are_hoffmans_update_written_out():
    """Stepwise EM through engine.online with lambda = eta + s_t: step 1 takes rho_1 = 1 (the
    engine's rule: lambda_1 = eta + D/|S| sstats), every later step is Hoffman et al.'s
    lambda_t = (1 - rho_t) lambda_{t-1} + rho_t (eta + D/|S| sstats(S | lambda_{t-1})),
    sstats from scikit-learn's E-step."""
    blocks = [Block(b) for b in np.array_split(X, 30)]  # 30 blocks of one slice each: 5 documents
    settings = FitSettings(optimizer="online", max_iter=4, tol=0.0, mini_batch_fraction=0.3, seed=7)
    result = fit_em(FAMILY, LocalBlockSource(blocks, sample_size=500), settings, INIT)
    lam, eta, D = INIT["lambda"], 1 / K, X.shape[0]
    for t in range(1, settings.max_iter + 1):
        subset = Subset(settings.seed, t, settings.mini_batch_fraction, settings.held_out_fraction)
        picked = [b.X for i, b in enumerate(blocks) if subset.choose(0, i, 1)[0][0]]
        batch = np.concatenate(picked)
        lda = sklearn_oracle(lam, 1 / K, eta)
        _, sstats = lda._e_step(batch, cal_sstats=True, random_init=False)
        rho = 1.0 if t == 1 else (t + settings.learning_offset) ** -settings.learning_decay
        assert rho == step_size(t, settings.learning_offset, settings.learning_decay)
        lam = (
            (1 - rho) * lam + rho * (eta + D / batch.shape[0] * sstats) if t > 1 else eta + D / batch.shape[0] * sstats
        )
    np.testing.assert_allclose(result.params["lambda"], lam, rtol=1e-7)


def _perplexity(family: LDAFamily, params, X) -> float:
    stats = family.e_step(Block(X), params)
    return math.exp(-(stats[LOGLIK] + family.log_prior(params)) / stats[WORDS])


def test_online_variational_bayes_gets_close_to_batch():
    """Several epochs of online VB (pyspark.ml's offset and decay) end within 3% of batch
    variational EM's training perplexity, from the same initial topics."""
    rng = np.random.default_rng(5)
    data = corpus(rng, docs=600)
    blocks = [Block(b) for b in np.array_split(data, 60)]
    family = LDAFamily(k=K)
    init = family.initialize(Block(data), np.random.default_rng(6))
    batch = fit_em(family, LocalBlockSource(blocks, sample_size=1000), FitSettings(max_iter=50, tol=0.0), init)
    online = fit_em(
        family,
        LocalBlockSource(blocks, sample_size=1000),
        FitSettings(
            optimizer="online", max_iter=200, tol=0.0, mini_batch_fraction=0.1, learning_offset=10.0, learning_decay=0.7
        ),
        init,
    )
    p_batch, p_online, p_init = (_perplexity(family, p, data) for p in (batch.params, online.params, init))
    assert p_online < 1.03 * p_batch < p_init


@pytest.mark.parametrize(
    "X, message",
    [
        (
            np.array([[1.0, -1.0, 2.0], [1.0, 1.0, 1.0]]),
            r"document 0 has count -1.0 for word 1; LDA needs non-negative",
        ),
        (
            np.array([[1.0, 1.0, 2.0], [1.0, 0.5, 1.0]]),
            r"document 1 has count 0.5 for word 1.*not frequencies or TF-IDF",
        ),
        (np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]), r"1 document\(s\) have no words.*row 1; drop empty documents"),
    ],
)
def test_bad_counts_are_refused_by_initialize_e_step_and_score(X, message):
    family = LDAFamily(k=2)
    with pytest.raises(ModelError, match=message):
        family.initialize(Block(X), np.random.default_rng(0))
    params = family.initialize(Block(np.ones((2, 3))), np.random.default_rng(0))
    for call in (family.e_step, family.score):
        with pytest.raises(ModelError, match=message):
            call(Block(sp.csr_array(X)), params)


def test_a_vocabulary_of_another_size_is_refused():
    with pytest.raises(ModelError, match=r"have 41 count columns but the model's vocabulary has 40 words"):
        FAMILY.score(Block(np.ones((2, 41))), INIT)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"doc_concentration": 0.0}, r"docConcentration must be a number > 0 or 3 numbers > 0"),
        ({"doc_concentration": -1.0}, r"docConcentration must be a number > 0"),
        ({"doc_concentration": (0.1, 0.2)}, r"docConcentration must be a number > 0 or 3 numbers"),
        ({"doc_concentration": math.inf}, r"docConcentration must be"),
        ({"topic_concentration": 0}, r"topicConcentration must be a number > 0, got 0; leave it unset for 1/k"),
        ({"topic_concentration": -0.5}, r"topicConcentration must be a number > 0"),
        ({"max_doc_update_iter": 0}, r"maxDocIter must be an integer >= 1"),
        ({"mean_change_tol": -1.0}, r"meanChangeTol must be a finite number >= 0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ModelError, match=message):
        LDAFamily(k=3, **kwargs)


def test_priors_reach_the_parameters_and_an_asymmetric_alpha_is_used():
    family = LDAFamily(k=3, doc_concentration=[0.5, 0.1, 0.2], topic_concentration=0.05)
    assert family.doc_concentration == (0.5, 0.1, 0.2)  # a list (from a saved config) becomes a tuple
    assert FAMILIES["lda"](**{k: v for k, v in family.config().items() if k != "name"}) == family
    params = family.initialize(Block(X), np.random.default_rng(0))
    np.testing.assert_array_equal(params["alpha"], [0.5, 0.1, 0.2])
    assert float(params["eta"]) == 0.05
    stats = family.e_step(Block(X), params)
    np.testing.assert_allclose(family.m_step(stats, params, Block(X), None).params["lambda"], 0.05 + stats["sstats"])
    symmetric = LDAFamily(k=3, doc_concentration=0.2, topic_concentration=0.05)
    lda = sklearn_oracle(params["lambda"], 0.2, 0.05)
    sym_params = {**params, "alpha": np.full(3, 0.2)}
    assert symmetric.e_step(Block(X), sym_params)[LOGLIK] + symmetric.log_prior(sym_params) == pytest.approx(
        lda.score(X), rel=1e-9
    )


def test_hellinger_distances_match_the_topics():
    other = FAMILY.initialize(Block(X), np.random.default_rng(9))
    d = FAMILY.component_distances(INIT, other)
    p, q = FAMILY.topics(INIT), FAMILY.topics(other)
    expected = np.sqrt(1.0 - np.sqrt(p[:, None, :] * q[None, :, :]).sum(axis=2))
    np.testing.assert_allclose(d, expected, rtol=1e-6)
    assert np.all(np.diag(FAMILY.component_distances(INIT, INIT)) == 0.0)


def test_public_params_round_trip_and_the_unconstrained_coordinates_invert():
    public = FAMILY.public_params(INIT)
    again = FAMILY.params_from_public(public, V)
    for name in INIT:
        np.testing.assert_array_equal(again[name], INIT[name])
    back = FAMILY.from_unconstrained(FAMILY.to_unconstrained(INIT), INIT)
    np.testing.assert_allclose(back["lambda"], INIT["lambda"], rtol=1e-14)
    with pytest.raises(ModelError, match=r"initialModel lambda must have shape \(3, 41\)"):
        FAMILY.params_from_public(public, 41)
    with pytest.raises(ModelError, match="lambda must be > 0"):
        FAMILY.params_from_public({"lambda": -INIT["lambda"]}, V)
    assert FAMILY.n_parameters(INIT) == K * (V - 1)


def test_nightly_matching_pairs_each_topic_with_the_same_topic_of_another_nights_fit():
    """Two nights of documents from the same three topics, fitted from different initial topics:
    em_spark.app.nightly's minimum-cost matching on Hellinger distances pairs every new topic
    with the old topic that is closest to the same true topic."""
    from em_spark.app.nightly import match_components

    rng = np.random.default_rng(12)
    beta = rng.dirichlet(np.full(V, 0.1), size=K)

    def night(docs: int) -> np.ndarray:
        theta = rng.dirichlet(np.full(K, 0.3), size=docs)
        return np.array([rng.multinomial(60, t @ beta) for t in theta], dtype=np.float64)

    def fit(X: np.ndarray, seed: int):
        params = FAMILY.initialize(Block(X), np.random.default_rng(seed))
        for _ in range(60):
            params = FAMILY.m_step(FAMILY.e_step(Block(X), params), params, Block(X), None).params
        return params

    old, new = fit(night(300), 20), fit(night(300), 21)
    truth = {"lambda": beta * 1e6, "alpha": INIT["alpha"], "eta": INIT["eta"]}
    old_truth = np.argmin(FAMILY.component_distances(truth, old), axis=1)  # [true topic] -> old topic
    new_truth = np.argmin(FAMILY.component_distances(truth, new), axis=1)
    order, distances = match_components(FAMILY, old, new)
    np.testing.assert_array_equal(order[old_truth], new_truth)
    assert distances.max() < 0.25


def test_squarem_runs_on_lda_in_log_lambda_and_reaches_batch_ems_bound_in_fewer_passes():
    """The engine's SQUAREM extrapolates log lambda and keeps a step only when loglik + log_prior
    (the full bound) did not drop; from the same start it ends where plain EM ends, sooner."""
    family = LDAFamily(k=K, mean_change_tol=1e-6)

    def source():
        return LocalBlockSource([Block(b) for b in np.array_split(X, 3)], sample_size=500)

    def bound(params):
        stats = family.e_step(Block(X), params)
        return float(stats[LOGLIK]) + family.log_prior(params)

    plain = fit_em(family, source(), FitSettings(max_iter=400, tol=1e-7), INIT)
    fast = fit_em(family, source(), FitSettings(max_iter=400, tol=1e-7, acceleration="squarem"), INIT)
    assert all(np.all(np.isfinite(v)) for v in fast.params.values())
    assert bound(fast.params) == pytest.approx(bound(plain.params), rel=1e-5)
    assert fast.n_iter < plain.n_iter, (fast.n_iter, plain.n_iter)


def test_statistics_do_not_depend_on_the_memory_layout_of_lambda():
    """A resumed fit reads its parameters back from a checkpoint (C order, fresh buffers): it must
    compute what the live fit computed from the M-step's arrays, bit for bit (an F-ordered lambda
    once summed its rows in another order and broke exact resume)."""
    from em_spark.storage import pack, unpack

    live = FAMILY.m_step(FAMILY.e_step(Block(X), INIT), INIT, Block(X), None).params
    _, restored = unpack(pack({}, live))
    layouts = [live, restored, {**live, "lambda": np.asfortranarray(live["lambda"])}]
    reference = FAMILY.e_step(Block(X), live)
    for params in layouts:
        stats = FAMILY.e_step(Block(X), params)
        for name in reference:
            np.testing.assert_array_equal(stats[name], reference[name], err_msg=name)
        assert FAMILY.log_prior(params) == FAMILY.log_prior(live)


def test_documents_drawn_from_the_model_follow_its_topics_and_need_their_lengths():
    from em_spark.models import LDAFamily

    family = LDAFamily(k=2)
    lam = np.array([[9.0, 1.0, 0.0, 0.0], [0.0, 0.0, 5.0, 5.0]]) + 1e-9
    params = {"lambda": lam, "alpha": np.array([0.02, 0.02]), "eta": np.float64(0.5)}
    drawn = family.draw(params, 4000, np.random.default_rng(0), trials=40)
    np.testing.assert_array_equal(drawn.X.sum(axis=1), 40)
    beta = lam / lam.sum(axis=1, keepdims=True)
    for j in range(2):  # with alpha 0.02 most documents are nearly one topic: their words follow it
        words = drawn.X[drawn.components == j].sum(axis=0)
        np.testing.assert_allclose(words / words.sum(), beta[j], atol=0.05)
    with pytest.raises(ModelError, match="pass trials="):
        family.draw(params, 3, np.random.default_rng(0))
