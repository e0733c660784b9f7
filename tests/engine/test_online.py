"""Stepwise (mini-batch) EM, optimizer="online", without a JVM: the algorithm as written, its answer
against batch EM and scikit-learn, reproducibility, exact resume, and bad settings."""

import logging
import math

import numpy as np
import pytest
from fakes import Killed, KilledAfter

from em_spark.app.demo_data import make_blobs, make_hmm_sequences, make_poisson_counts
from em_spark.engine import minibatch
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.minibatch import Subset, slices
from em_spark.engine.online import step_size
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import (
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
    PoissonMixtureFamily,
    StudentTMixtureFamily,
)
from em_spark.models.base import Block


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    """Slices of 100 rows, so that a few thousand rows make a mini-batch of many slices."""
    monkeypatch.setattr(minibatch, "SLICE_ROWS", 100)


def _rows(X, n_blocks=4):
    return LocalBlockSource([Block(b) for b in np.array_split(X, n_blocks)], sample_size=500, seed=11)


def _sequences(X, n_blocks=3):
    blocks = []
    for part in np.array_split(X, n_blocks):
        n, t = part.shape[:2]
        blocks.append(Block(part.reshape(n * t, -1).astype(np.float64), lengths=np.full(n, t)))
    return LocalBlockSource(blocks, sample_size=500, seed=11)


@pytest.fixture(scope="module")
def blobs():
    X, _, _ = make_blobs(6000, 4, 3, separation=3.0, seed=3)
    return X


def _online(**kw):
    return FitSettings(**{"optimizer": "online", "tol": 0.0, "seed": 2, "mini_batch_fraction": 0.25, **kw})


def _avg(family, source, params):
    stats = source.e_step(family, params)
    return stats.loglik / stats.weight


# ---------------------------------------------------------------------------
# the algorithm, as written


def test_online_em_is_the_stepwise_recursion_of_cappe_and_moulines(blobs):
    """An independent textbook loop over the same slices gives the same parameters (to rounding:
    the engine adds slice statistics in the same order, so the only differences are none)."""
    family, source = GaussianFamily(k=3), _rows(blobs)
    settings = _online(max_iter=12, learning_offset=3.0, learning_decay=0.7)
    result = fit_em(family, source, settings)

    params = family.initialize(source.sample, np.random.default_rng([settings.seed, 0]))
    total_weight = source.summary.weight_sum
    s = None
    for t in range(1, 13):
        subset = Subset(settings.seed, t, 0.25, 0.0)
        batch = None
        for index, block in enumerate(source.blocks):
            parts = slices(block)
            picked, _ = subset.choose(0, index, len(parts))
            for part, chosen in zip(parts, picked):
                if chosen:
                    e = family.e_step(part, params)
                    batch = e if batch is None else batch + e
        s_hat = batch.scaled(total_weight / batch.weight)
        rho = 1.0 if t == 1 else (t + 3.0) ** -0.7
        s = s_hat if s is None else s.scaled(1 - rho) + s_hat.scaled(rho)
        params = family.m_step(s, params, source.sample, np.random.default_rng([settings.seed, 0, t - 1])).params
    for name in params:
        np.testing.assert_array_equal(result.params[name], params[name])
    assert result.n_iter == 12 and result.optimizer == "online" and result.stopped_by == "maxIter"
    assert result.epochs == pytest.approx(3.0)


def test_the_step_size_is_one_then_decays_as_t_plus_tau_to_the_minus_kappa():
    assert step_size(1, 1024.0, 0.51) == 1.0
    assert step_size(10, 2.0, 0.6) == pytest.approx(12.0**-0.6)
    assert step_size(10, 0.0, 1.0) == pytest.approx(0.1)


def test_mini_batches_are_a_bernoulli_sample_of_the_slices_and_the_held_out_set_is_fixed():
    subset = Subset(seed=5, step=3, fraction=0.2, held_out_fraction=0.1)
    picked, held = subset.choose(partition=1, block=2, n_slices=20_000)
    assert picked.mean() == pytest.approx(0.2 * 0.9, abs=0.01) and held.mean() == pytest.approx(0.1, abs=0.01)
    assert not np.any(picked & held)  # never trained on
    other = Subset(seed=5, step=4, fraction=0.2, held_out_fraction=0.1).choose(1, 2, 20_000)
    np.testing.assert_array_equal(other[1], held)  # the same held-out slices at every step
    assert not np.array_equal(other[0], picked)  # another mini-batch
    seq = Block(np.zeros((250, 1)), lengths=np.array([60, 60, 60, 70]))
    assert [p.n_rows for p in slices(seq, 100)] == [120, 130]  # whole sequences only
    assert [p.n_rows for p in slices(Block(np.zeros((250, 1))), 100)] == [100, 100, 50]


# ---------------------------------------------------------------------------
# the answer


def test_online_em_reaches_batch_ems_answer_on_well_separated_blobs(blobs):
    """Tolerance 0.005 nats per row: at miniBatchFraction 0.25 the last statistics average about
    1/rho_t ~ 10 recent mini-batches (~15,000 rows), so the parameters carry a sampling error that
    costs ~ (parameters)/(2 x rows) ~ 1e-3 nats per row; batch EM's own answer is exact."""
    family, source = GaussianFamily(k=3), _rows(blobs)
    batch = fit_em(family, source, FitSettings(max_iter=300, tol=1e-9, seed=2))
    online = fit_em(family, source, _online(max_iter=120))
    assert abs(_avg(family, source, online.params) - _avg(family, source, batch.params)) < 0.005
    order = np.argsort(batch.params["means"][:, 0])
    np.testing.assert_allclose(
        online.params["means"][np.argsort(online.params["means"][:, 0])], batch.params["means"][order], atol=0.1
    )


def test_online_em_agrees_with_scikit_learns_gaussian_mixture_on_the_same_data_and_start(blobs):
    """scikit-learn's batch EM from the same initial model is the reference: within 0.005 nats per
    row (the mini-batch sampling error above) and means within 0.1 (the blobs are 3 apart)."""
    from sklearn.mixture import GaussianMixture as SkGMM

    family, source = GaussianFamily(k=3), _rows(blobs)
    init = family.initialize(source.sample, np.random.default_rng([2, 0]))  # restart 0's start, as the fit draws it
    public = family.public_params(init)
    sk = SkGMM(
        3,
        covariance_type="full",
        tol=1e-10,
        max_iter=500,
        reg_covar=family.reg_covar,
        weights_init=public["weights"],
        means_init=public["means"],
        precisions_init=np.linalg.inv(public["covariances"]),
    ).fit(blobs)
    online = fit_em(family, source, _online(max_iter=120))
    assert abs(_avg(family, source, online.params) - sk.score(blobs)) < 0.005
    np.testing.assert_allclose(online.params["means"], sk.means_, atol=0.1)  # same start: same labels


def _family_cases():
    X, _, _ = make_blobs(6000, 4, 3, separation=3.0, seed=3)
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(4, 0.3), size=(3, 6))
    z = rng.choice(3, size=6000, p=[0.5, 0.3, 0.2])
    codes = (rng.random((6000, 6, 1)) > np.cumsum(probs[z], axis=2)).sum(axis=2).clip(max=3).astype(np.float64)
    H, _, _ = make_hmm_sequences(120, 50, 2, 3, separation=4.0, seed=4)
    symbols = np.digitize(H[..., 0], [-2.0, 0.0, 2.0]).astype(np.float64)[..., None]
    return {
        "gaussian-full": (lambda: GaussianFamily(k=3), lambda: _rows(X), 1),
        "gaussian-diag": (lambda: GaussianFamily(k=3, covariance_type="diag"), lambda: _rows(X), 1),
        "kmeans": (lambda: KMeansFamily(k=3), lambda: _rows(X), 1),
        "categorical": (lambda: CategoricalMixtureFamily(3, (4,) * 6), lambda: _rows(codes), 1),
        "student_t": (lambda: StudentTMixtureFamily(k=3, dof=5.0), lambda: _rows(X), 1),
        "poisson": (lambda: PoissonMixtureFamily(3), lambda: _rows(make_poisson_counts(6000, 4, 3, seed=6)[0]), 1),
        "gaussian_hmm": (lambda: GaussianHMMFamily(3), lambda: _sequences(H), 50),
        "categorical_hmm": (lambda: CategoricalHMMFamily(3, n_categories=4), lambda: _sequences(symbols), 50),
    }


@pytest.mark.parametrize("name", list(_family_cases()))
def test_every_family_fits_online_to_within_a_hundredth_of_a_nat_per_observation_of_batch_em(name):
    """0.02 nats per observation (per row; per step of a 50-step sequence): the sampling error of
    the last mini-batches plus, for k-means' hard assignments and the HMMs' slower chains, what 100
    epochs leave of the way; batch EM runs to tol 1e-9 or 300 iterations."""
    make_family, make_source, steps = _family_cases()[name]
    family, source = make_family(), make_source()
    batch = fit_em(family, source, FitSettings(max_iter=300, tol=1e-9, seed=2))
    online = fit_em(family, source, _online(max_iter=400, learning_decay=0.51))
    gap = (_avg(family, source, batch.params) - _avg(family, source, online.params)) / steps
    assert gap < 0.02, gap
    assert math.isfinite(online.history[-1]) and len(online.history) == 400


# ---------------------------------------------------------------------------
# reproducible, stops as told, resumes exactly


def test_a_seed_and_a_partitioning_give_bit_identical_fits_and_another_seed_another_one(blobs):
    settings = _online(max_iter=20, n_init=2)
    a = fit_em(GaussianFamily(k=3), _rows(blobs), settings)
    b = fit_em(GaussianFamily(k=3), _rows(blobs), settings)
    assert a.history == b.history
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    c = fit_em(GaussianFamily(k=3), _rows(blobs), _online(max_iter=20, n_init=2, seed=3))
    assert c.history != a.history


def test_with_tol_it_stops_on_the_held_out_set_and_says_so(blobs, caplog):
    family, source = GaussianFamily(k=3), _rows(blobs)
    with caplog.at_level(logging.INFO, logger="em_spark"):
        result = fit_em(family, source, _online(max_iter=400, tol=1e-3))
    assert result.converged and result.stopped_by == "heldOut" and result.n_iter < 400
    # one held-out evaluation an epoch (4 steps at 0.25), from step 1
    assert len(result.held_out_history) == (result.n_iter - 1) // 4 + 1
    assert abs(result.held_out_history[-1] - result.held_out_history[-2]) < 1e-3
    assert "converged when the held-out set (0.1 of the data, not trained on)" in caplog.text
    assert "online EM stopped by convergence on the held-out set" in caplog.text
    events = [r.em_event for r in caplog.records if getattr(r, "em_event", {}).get("event") == "online_stop"]
    assert events and events[0]["stoppedBy"] == "heldOut"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="em_spark"):
        capped = fit_em(family, _rows(blobs), _online(max_iter=8))
    assert capped.stopped_by == "maxIter" and not capped.held_out_history
    assert "tol=0: no held-out set, every restart runs maxIter steps" in caplog.text


def test_a_killed_online_fit_resumes_bit_identical_to_an_uninterrupted_one(blobs, tmp_path):
    settings = _online(max_iter=15, n_init=2, tol=1e-6)
    reference = fit_em(GaussianFamily(k=3), _rows(blobs), settings)
    run = FitSettings(**{**settings.__dict__, "run_id": "online-kill", "checkpoint_dir": str(tmp_path)})
    blocks = _rows(blobs).blocks
    with pytest.raises(Killed):  # the fault is injected into the step's pass (fakes.KilledAfter)
        fit_em(GaussianFamily(k=3), KilledAfter(blocks, 7, sample_size=500, seed=11), run)
    source = _rows(blobs)
    resumed = fit_em(GaussianFamily(k=3), source, run)
    assert source.e_step_calls == 15 - 7
    assert resumed.history == reference.history and resumed.held_out_history == reference.held_out_history
    for a, b in zip(resumed.restarts, reference.restarts, strict=True):
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])
    again = _rows(blobs)
    fit_em(GaussianFamily(k=3), again, run)  # finished: no pass
    assert again.e_step_calls == 0


def test_an_online_run_continues_under_a_larger_max_iter_but_not_as_batch_em(blobs, tmp_path):
    longer = _online(max_iter=16)
    reference = fit_em(GaussianFamily(k=3), _rows(blobs), longer)
    run = dict(run_id="online-grow", checkpoint_dir=str(tmp_path))
    fit_em(GaussianFamily(k=3), _rows(blobs), FitSettings(**{**longer.__dict__, "max_iter": 8, **run}))
    grown = fit_em(GaussianFamily(k=3), _rows(blobs), FitSettings(**{**longer.__dict__, **run}))
    assert grown.history == reference.history
    with pytest.raises(ResumeMismatchError, match="checkpoint of online EM"):
        fit_em(GaussianFamily(k=3), _rows(blobs), FitSettings(max_iter=16, tol=0.0, seed=2, **run))
    with pytest.raises(ResumeMismatchError, match="'miniBatchFraction': 0.25"):
        fit_em(GaussianFamily(k=3), _rows(blobs), FitSettings(**{**longer.__dict__, "mini_batch_fraction": 0.5, **run}))


# ---------------------------------------------------------------------------
# bad settings


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mini_batch_fraction", 0.0, r"miniBatchFraction must be a finite number in \(0, 1\], got 0.0"),
        ("mini_batch_fraction", 1.5, r"miniBatchFraction must be a finite number in \(0, 1\], got 1.5"),
        ("learning_decay", 0.5, r"learningDecay must be a finite number in \(0.5, 1\] \(kappa\), got 0.5"),
        ("learning_decay", 1.2, r"learningDecay must be a finite number in \(0.5, 1\] \(kappa\), got 1.2"),
        ("learning_offset", -1.0, r"learningOffset must be a finite number >= 0 \(tau\), got -1.0"),
        ("learning_offset", math.nan, r"learningOffset must be a finite number >= 0 \(tau\), got nan"),
        ("optimizer", "sgd", r"optimizer must be one of \['batch', 'online'\], got 'sgd'"),
        ("acceleration", "squarem", r"acceleration='squarem' accelerates batch EM; optimizer='online' takes none"),
    ],
)
def test_bad_online_settings_are_a_clear_error_naming_the_key_and_range(key, value, message):
    with pytest.raises(ValueError, match=message):
        FitSettings(**{"optimizer": "online", key: value})


def test_select_refuses_online_settings_with_the_way_out(blobs):
    from em_spark.engine.selection import select_models

    with pytest.raises(ValueError, match=r"select fits its candidates with batch EM; optimizer='online'"):
        select_models(_rows(blobs), [2, 3], ["full"], _online(max_iter=5))
