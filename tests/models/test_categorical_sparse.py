"""The multinomial mixture on sparse (CSR) count blocks: the same statistics, scores,
initialization and fit as on the dense copy of the rows, additive over any split, and the
same bad-count errors. Pure numpy: no JVM."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import scipy.sparse as sp

from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import Block, ModelError
from em_spark.models.base import sparse_rows
from em_spark.models.categorical import CategoricalMixtureFamily
from em_spark.stats import sum_stats


def documents(n=500, vocabulary=2000, k=3, seed=0, length=(0, 40)):
    """Word-count rows (n, V) from a multinomial mixture over a large vocabulary, mostly zeros,
    with a few empty documents; dense and CSR copies."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(vocabulary, 0.05), size=k)
    z = rng.integers(k, size=n)
    lengths = rng.integers(length[0], length[1] + 1, size=n)
    X = np.array([rng.multinomial(m, probs[j]) for m, j in zip(lengths, z)], dtype=np.float64)
    return X, sparse_rows(sp.csr_array(X))


def assert_stats_close(a, b, rtol=1e-12):
    assert set(a.keys()) == set(b.keys())
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=0, err_msg=name)


@pytest.fixture(scope="module")
def data():
    return documents()


def test_the_family_declares_sparse_and_counts_for_multinomial_only():
    assert CategoricalMixtureFamily(2, kind="multinomial").accepts_sparse
    assert CategoricalMixtureFamily(2, kind="multinomial").needs_counts
    assert not CategoricalMixtureFamily(2).accepts_sparse and not CategoricalMixtureFamily(2).needs_counts
    with pytest.raises(ModelError, match="sparse rows are count vectors: use kind='multinomial'"):
        CategoricalMixtureFamily(2, (3, 3)).e_step(Block(sp.csr_array(np.ones((2, 2)))), {"n_categories": [3.0, 3.0]})


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [1.0, 0.0])
def test_sparse_and_dense_blocks_give_the_same_statistics_and_scores(data, weighted, smoothing):
    X, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial", smoothing=smoothing)
    params = family.initialize(Block(X), np.random.default_rng(1))
    if smoothing == 0.0:  # zero probabilities: the 0 log 0 and impossible-row paths
        params["probs"][0, :50] = 0.0
        params["probs"][0] /= params["probs"][0].sum()
    w = np.random.default_rng(2).random(X.shape[0]) if weighted else None
    if smoothing == 0.0:  # rows impossible under every component must carry weight 0
        impossible = ~np.isfinite(family.score(Block(X), params)["loglik"])
        w = np.where(impossible, 0.0, 1.0 if w is None else w)
    dense_stats = family.e_step(Block(X, w), params)
    sparse_stats = family.e_step(Block(Xs, w), params)
    assert_stats_close(sparse_stats, dense_stats)
    dense_scores, sparse_scores = family.score(Block(X), params), family.score(Block(Xs), params)
    np.testing.assert_allclose(sparse_scores["loglik"], dense_scores["loglik"], rtol=1e-12)
    finite = np.isfinite(dense_scores["log_resp"])
    np.testing.assert_array_equal(np.isfinite(sparse_scores["log_resp"]), finite)
    np.testing.assert_allclose(
        sparse_scores["log_resp"][finite], dense_scores["log_resp"][finite], rtol=1e-10, atol=1e-12
    )


def test_float32_sparse_blocks_give_the_float64_statistics_of_the_same_counts(data):
    X, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial")
    params = family.initialize(Block(X), np.random.default_rng(1))
    assert_stats_close(family.e_step(Block(Xs.astype(np.float32)), params), family.e_step(Block(X), params))


def test_statistics_of_a_sparse_block_add_up_over_any_split(data):
    _, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial")
    params = family.initialize(Block(Xs), np.random.default_rng(4))
    w = np.random.default_rng(5).random(Xs.shape[0])
    whole = family.e_step(Block(Xs, w), params)
    rng = np.random.default_rng(6)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, Xs.shape[0]), size=4, replace=False))
        edges = [0, *cuts.tolist(), Xs.shape[0]]
        parts = [family.e_step(Block(Xs[a:b, :], w[a:b]), params) for a, b in pairwise(edges)]
        assert_stats_close(sum_stats(parts), whole)
    empty = family.e_step(Block(Xs[:0, :]), params)
    assert float(empty["count"]) == 0.0 and not empty["counts"].any()


@pytest.mark.parametrize("init_mode", ["random", "k-means++"])
def test_initialization_from_a_sparse_sample_matches_the_dense_one(data, init_mode):
    X, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial", init_mode=init_mode)
    labels = np.where(np.arange(X.shape[0]) < 10, np.arange(X.shape[0]) % 3, -1)
    for kwargs in ({}, {"labels": labels}):
        a = family.initialize(Block(X, **kwargs), np.random.default_rng(9))
        b = family.initialize(Block(Xs, **kwargs), np.random.default_rng(9))
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-10, atol=1e-15, err_msg=f"{init_mode} {name}")


def test_a_lost_component_is_reseeded_from_a_sparse_sample_as_from_the_dense_one(data):
    X, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial")
    params = family.initialize(Block(X), np.random.default_rng(1))
    stats = family.e_step(Block(X), params)
    stats = type(stats)({**stats, "nk": np.array([float(stats["nk"][0]), 0.0, float(stats["nk"][2])])})
    a = family.m_step(stats, params, Block(X), np.random.default_rng(0))
    b = family.m_step(stats, params, Block(Xs), np.random.default_rng(0))
    assert a.events and b.events == a.events
    for name in a.params:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=1e-12)


@pytest.mark.parametrize("init_mode", ["random", "k-means++"])
def test_a_fit_on_sparse_blocks_is_the_fit_on_dense_blocks(data, init_mode):
    X, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial", init_mode=init_mode)
    settings = FitSettings(max_iter=30, tol=0.0, seed=3, n_init=2)
    cuts = [0, 120, 300, X.shape[0]]
    dense = fit_em(family, LocalBlockSource([Block(X[a:b]) for a, b in pairwise(cuts)]), settings)
    sparse_source = LocalBlockSource([Block(Xs[a:b, :]) for a, b in pairwise(cuts)])
    assert sparse_source.sample.is_sparse
    fitted = fit_em(family, sparse_source, settings)
    assert fitted.data_fingerprint == dense.data_fingerprint  # one fingerprint for both copies
    assert fitted.restart == dense.restart and fitted.n_iter == dense.n_iter
    np.testing.assert_allclose(fitted.history, dense.history, rtol=1e-12)
    for name in dense.params:
        np.testing.assert_allclose(fitted.params[name], dense.params[name], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(("value", "shown"), [(-1.0, r"-1\.0"), (2.5, r"2\.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_bad_counts_in_a_sparse_block_raise_the_dense_error(value, shown):
    family = CategoricalMixtureFamily(2, kind="multinomial")
    X = np.zeros((3, 5))
    X[0, 1], X[2, 3] = 1.0, value
    params = family.initialize(Block(np.ones((2, 5))), np.random.default_rng(0))
    message = rf"count column 3 holds {shown}; multinomial rows must be finite non-negative integer counts"
    for block in (Block(X), Block(sp.csr_array(X))):
        with pytest.raises(ModelError, match=message):
            family.e_step(block, params)
        with pytest.raises(ModelError, match=message):
            family.initialize(block, np.random.default_rng(0))


def test_a_50000_word_vocabulary_costs_memory_in_the_non_zeros():
    """The E-step on 2,000 documents of a 50,000-word vocabulary: its temporaries are (n, k)
    and (k, V), never (n, V) (which would be 800 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, V = 2000, 50_000
    Xs = sparse_rows(
        sp.random_array(
            (n, V), density=50 / V, format="csr", rng=rng, data_sampler=lambda size: rng.integers(1, 4, size)
        ).astype(np.float64)
    )
    family = CategoricalMixtureFamily(4, kind="multinomial")
    params = family.initialize(Block(Xs), np.random.default_rng(0))
    tracemalloc.start()
    stats = family.e_step(Block(Xs), params)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stats["counts"].shape == (4, V)
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # (k, V) stats and log-probs: ~1.6 MB each


def test_a_killed_fit_on_sparse_blocks_resumes_from_its_checkpoint_exactly(data, tmp_path):
    from fakes import Killed, KilledAfter

    _, Xs = data
    family = CategoricalMixtureFamily(3, kind="multinomial")
    blocks = [Block(Xs[a:b, :]) for a, b in pairwise([0, 200, 350, Xs.shape[0]])]
    settings = FitSettings(max_iter=8, tol=0.0, seed=2, n_init=2, run_id="sparse", checkpoint_dir=str(tmp_path))
    reference = fit_em(family, LocalBlockSource(blocks), FitSettings(max_iter=8, tol=0.0, seed=2, n_init=2))
    with pytest.raises(Killed):
        fit_em(family, KilledAfter(blocks, 5), settings)
    source = LocalBlockSource(blocks)
    resumed = fit_em(family, source, settings)
    assert source.e_step_calls == 8 - 5  # only the passes after the kill
    assert resumed.history == reference.history and resumed.restart == reference.restart
    for name in reference.params:
        np.testing.assert_array_equal(resumed.params[name], reference.params[name])
