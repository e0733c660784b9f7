"""Incremental EM without a JVM: stored statistics moved, relabeled, decayed, and carried into a fit.

The reference for "update equals the weighted batch fit it stands for": a fit on yesterday's rows
(weighted by decay) plus tonight's, from the same start. One EM step agrees to the convergence of
yesterday's fit (the stored statistics are its last E-step, taken one step before its final
parameters); later steps differ by design, because the update keeps yesterday's responsibilities
frozen where the batch fit recomputes them. Several update steps are checked against an independent
reference of exactly that: scikit-learn's M-step on yesterday's frozen responsibilities x decay
plus tonight's current ones.
"""

import math

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky, _estimate_gaussian_parameters

from em_spark.app.demo_data import make_poisson_counts
from em_spark.engine.incremental import DecayedSource, RecordingSource, decay_factor
from em_spark.engine.loop import fit_em
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import (
    Block,
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
    PoissonMixtureFamily,
    StudentTMixtureFamily,
)
from em_spark.models.kernels import shifted_moments
from em_spark.stats import Stats

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def _blobs(rng, n, d=3, shift=0.0):
    centers = np.array([[0.0] * d, [6.0] * d, [-6.0, 6.0, 0.0][:d]])
    labels = rng.integers(0, 3, n)
    return centers[labels] + rng.normal(size=(n, d)) + shift, labels


def _codes(rng, n):
    component = rng.integers(0, 2, n)
    a = np.where(component == 0, rng.choice(3, n, p=[0.9, 0.05, 0.05]), rng.choice(3, n, p=[0.05, 0.05, 0.9]))
    b = np.where(component == 0, rng.choice(4, n, p=[0.85, 0.05, 0.05, 0.05]), rng.choice(4, n, p=[0.05] * 3 + [0.85]))
    return np.column_stack([a, b]).astype(float)


def _fit_recorded(family, blocks, settings, initial=None):
    """fit_em over a recording view; (result, stored statistics in the final params' frame)."""
    source = RecordingSource(LocalBlockSource(blocks))
    result = fit_em(family, source, settings, initial)
    params, stats = source.last_e_step([r.history for r in result.restarts], result.restart)
    return result, family.move_stats(stats, params, result.params), source


# --- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [3, 2])
def test_shifted_moments_equal_the_moments_taken_around_the_new_origin(ndim):
    rng = np.random.default_rng(0)
    X, wr = rng.normal(size=(50, 3)) * 3 + 10, rng.random((4, 50))
    old, new = rng.normal(size=(4, 3)) + 10, rng.normal(size=(4, 3)) + 9

    def moments(shift):
        diffs = X[None, :, :] - shift[:, None, :]  # (k, n, d)
        sums = np.einsum("kn,knd->kd", wr, diffs)
        sq = np.einsum("kn,kni,knj->kij", wr, diffs, diffs) if ndim == 3 else np.einsum("kn,knd->kd", wr, diffs**2)
        return sums, sq

    moved = shifted_moments(wr.sum(axis=1), *moments(old), old, new)
    for got, want in zip(moved, moments(new)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_statistics_moved_equal_an_e_step_under_the_new_means_with_the_same_responsibilities(
    covariance_type,
):
    # every row labelled: the responsibilities are one-hot whatever the parameters, so an E-step
    # under other means differs only by the frame (and the log-likelihood, not compared)
    rng = np.random.default_rng(1)
    X, labels = _blobs(rng, 400)
    family = GaussianFamily(k=3, covariance_type=covariance_type)
    block = Block(X, rng.random(400) + 0.5, labels=labels)
    a = family.initialize(Block(X), np.random.default_rng(2))
    b = family.initialize(Block(X + 0.3), np.random.default_rng(3))
    moved = family.move_stats(family.e_step(block, a), a, b)
    direct = family.e_step(block, b)
    for name in ("nk", "sum", "sq", "weight", "count"):
        np.testing.assert_allclose(moved[name], direct[name], rtol=1e-11, atol=1e-8)


FAMILIES = {
    "gaussian full": (GaussianFamily(k=3), "rows"),
    "gaussian diag": (GaussianFamily(k=3, covariance_type="diag"), "rows"),
    "gaussian tied": (GaussianFamily(k=3, covariance_type="tied"), "rows"),
    "kmeans": (KMeansFamily(k=3), "rows"),
    "categorical": (CategoricalMixtureFamily(k=2, n_categories=(3, 4)), "codes"),
    "poisson": (PoissonMixtureFamily(k=3), "counts"),
    "student t": (StudentTMixtureFamily(k=3, dof=4.0), "rows"),
    "gaussian hmm": (GaussianHMMFamily(k=2), "sequences"),
    "categorical hmm": (CategoricalHMMFamily(2, n_categories=3), "code sequences"),
}


def _block(kind, rng):
    if kind == "rows":
        return Block(_blobs(rng, 300)[0] + 100.0)  # far from the origin: the frame matters
    if kind == "codes":
        return Block(_codes(rng, 300))
    if kind == "counts":
        return Block(make_poisson_counts(300, 3, 3, seed=int(rng.integers(1 << 30)))[0])
    if kind == "sequences":
        return Block(_blobs(rng, 300, d=2)[0] + 50.0, lengths=np.full(30, 10))
    return Block(_codes(rng, 300)[:, :1], lengths=np.full(30, 10))


def _assert_params_close(a, b, rtol=1e-9, atol=1e-9):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("case", FAMILIES, ids=list(FAMILIES))
def test_the_m_step_of_moved_statistics_is_the_m_step_of_the_originals(case):
    family, kind = FAMILIES[case]
    rng = np.random.default_rng(4)
    block = _block(kind, rng)
    a = family.initialize(block, np.random.default_rng(5))
    b = family.m_step(family.e_step(block, a), a, block, np.random.default_rng(0)).params  # another frame
    stats = family.e_step(block, a)
    want = family.m_step(stats, a, block, np.random.default_rng(0)).params
    got = family.m_step(family.move_stats(stats, a, b), b, block, np.random.default_rng(0)).params
    _assert_params_close(got, want)


@pytest.mark.parametrize("case", FAMILIES, ids=list(FAMILIES))
def test_relabeled_statistics_give_the_relabeled_m_step(case):
    family, kind = FAMILIES[case]
    block = _block(kind, np.random.default_rng(6))
    params = family.initialize(block, np.random.default_rng(7))
    stats = family.e_step(block, params)
    order = np.roll(np.arange(family.k), 1)
    want = family.relabel(family.m_step(stats, params, block, np.random.default_rng(0)).params, order)
    got = family.m_step(
        family.relabel_stats(stats, order), family.relabel(params, order), block, np.random.default_rng(0)
    ).params
    _assert_params_close(got, want)


def test_scaled_statistics_scale_every_array_and_refuse_a_negative_factor():
    stats = Stats({"nk": [1.0, 3.0], "loglik": -4.0, "weight": 4.0, "count": 4.0})
    half = stats.scaled(0.5)
    assert half["nk"].tolist() == [0.5, 1.5] and (half.loglik, half.weight, half.count) == (-2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="scaled by a finite number >= 0"):
        stats.scaled(-1.0)


def test_decay_factor_is_streaming_kmeans_half_life_in_batches():
    assert decay_factor(1) == 0.5
    assert decay_factor(7) ** 7 == pytest.approx(0.5, rel=1e-15)
    assert decay_factor(math.inf) == 1.0


@pytest.mark.parametrize("bad", [0, -1, -0.5, math.nan, "7", None, True])
def test_a_half_life_that_is_not_a_positive_number_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="halfLife must be"):
        decay_factor(bad)


# --- the stored statistics of a fit ---------------------------------------------------------------


@pytest.mark.parametrize("n_init", [1, 3])
def test_stored_statistics_give_back_the_winning_restarts_parameters(n_init):
    # restarts converge after different numbers of passes (tol > 0); the winner's last pass is found
    rng = np.random.default_rng(8)
    X = rng.normal(size=(2000, 3)) + rng.integers(0, 3, size=(2000, 1)) * 1.5  # overlapping: restarts differ
    family = GaussianFamily(k=3, init_mode="random")
    # seed 0: restart 1 drops out after 74 passes, the winner (3) after 76, restart 2 after 165
    settings = FitSettings(max_iter=300, tol=1e-5, n_init=n_init, seed=0)
    result, stats, source = _fit_recorded(family, [Block(X[:900]), Block(X[900:])], settings)
    if n_init > 1:
        assert len({len(r.history) for r in result.restarts}) > 1  # (the case worth testing)
    # the model's statistics, in its own frame, are those whose M-step it is
    sample = Block(X[:100])
    again = family.m_step(stats, result.params, sample, np.random.default_rng(0)).params
    _assert_params_close(again, result.params, rtol=1e-10, atol=1e-10)
    assert stats.count == 2000 and stats.loglik / stats.weight == result.history[-1]


@pytest.mark.parametrize("n_init", [1, 3])
def test_the_recorder_keeps_at_most_one_pass_per_restart_and_still_finds_each_restarts_last(n_init):
    rng = np.random.default_rng(4)
    family = GaussianFamily(k=3, covariance_type="diag")
    blocks = [Block(rng.normal(size=(300, 2)))]  # no cluster structure: EM crawls, restarts stop apart
    settings = FitSettings(max_iter=40, tol=1e-4, seed=2, n_init=n_init)
    result, _, recorder = _fit_recorded(family, blocks, settings)
    histories = [r.history for r in result.restarts]
    assert recorder.passes_seen == max(len(h) for h in histories) > 3
    assert len({len(h) for h in histories}) == n_init  # (with 3 restarts: three stopping points)
    assert len(recorder.kept) == n_init
    for restart, history in enumerate(histories):
        params, stats = recorder.last_e_step(histories, restart)
        # the statistics of a restart's last pass: their log-likelihood is its last history entry
        assert stats.loglik / stats.weight == history[-1]


def test_a_resumed_run_that_ran_none_of_the_winners_passes_stores_nothing():
    source = RecordingSource(LocalBlockSource([Block(np.zeros((3, 1)))]))
    assert source.last_e_step([[1.0, 2.0]], 0) is None  # no pass recorded in this process


# --- update = the weighted batch fit it stands for -------------------------------------------------


def _yesterday_and_tonight(kind, rng):
    if kind == "rows":
        yesterday, _ = _blobs(rng, 3000)
        tonight, _ = _blobs(rng, 1000, shift=0.4)  # the world moved a little
    else:
        yesterday, tonight = _codes(rng, 3000), _codes(rng, 1000)
    return yesterday, tonight


@pytest.mark.parametrize(
    "family,kind,passes",
    [
        (GaussianFamily(k=3), "rows", 60),
        (GaussianFamily(k=3, covariance_type="diag"), "rows", 60),
        (CategoricalMixtureFamily(k=2, n_categories=(3, 4)), "codes", 1500),  # EM converges slowly here
    ],
    ids=["gaussian full", "gaussian diag", "categorical"],
)
def test_one_update_step_equals_one_step_of_the_weighted_batch_fit_from_the_same_start(family, kind, passes):
    rng = np.random.default_rng(9)
    yesterday, tonight = _yesterday_and_tonight(kind, rng)
    # yesterday's fit run to its fixed point: its last E-step's parameters are its final ones to ~1e-13
    base, stored, _ = _fit_recorded(family, [Block(yesterday)], FitSettings(max_iter=passes, tol=0.0, seed=1))
    decay = decay_factor(3)
    one = FitSettings(max_iter=1, tol=0.0, seed=1)
    update = fit_em(
        family, DecayedSource(LocalBlockSource([Block(tonight)]), stored, base.params, decay), one, base.params
    )
    weighted = LocalBlockSource([Block(yesterday, np.full(len(yesterday), decay)), Block(tonight)])
    batch = fit_em(family, weighted, one, base.params)
    _assert_params_close(update.params, batch.params, rtol=1e-8, atol=1e-10)
    assert update.history[0] == pytest.approx(batch.history[0], rel=1e-12)
    # and the update moved: tonight's data counts
    assert max(np.max(np.abs(update.params[n] - base.params[n])) for n in base.params) > 1e-4


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_several_update_steps_equal_scikit_learns_m_step_on_frozen_and_current_responsibilities(covariance_type):
    rng = np.random.default_rng(10)
    yesterday, tonight = _yesterday_and_tonight("rows", rng)
    family, reg = GaussianFamily(k=3, covariance_type=covariance_type), 1e-6
    base, stored, recorder = _fit_recorded(family, [Block(yesterday)], FitSettings(max_iter=15, tol=0.0, seed=1))
    frozen_at = recorder.last_pass[0][0]  # the parameters of yesterday's last E-step
    decay, steps = decay_factor(2), 6
    update = fit_em(
        family,
        DecayedSource(LocalBlockSource([Block(tonight)]), stored, base.params, decay),
        FitSettings(max_iter=steps, tol=0.0, seed=1),
        base.params,
    )

    def responsibilities(X, params):
        sk = SkGaussianMixture(3, covariance_type=covariance_type, reg_covar=reg)
        sk.weights_, sk.means_, sk.covariances_ = params["weights"], params["means"], params["covariances"]
        sk.precisions_cholesky_ = _compute_precision_cholesky(params["covariances"], covariance_type)
        return np.exp(sk._estimate_log_prob_resp(X)[1])

    frozen = decay * responsibilities(yesterday, frozen_at)
    params = base.params
    X = np.vstack([yesterday, tonight])
    for _ in range(steps):
        resp = np.vstack([frozen, responsibilities(tonight, params)])
        nk, means, covariances = _estimate_gaussian_parameters(X, resp, reg, covariance_type)
        params = {"weights": nk / nk.sum(), "means": means, "covariances": covariances}
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(update.params[name], params[name], rtol=1e-7, atol=1e-9, err_msg=name)
