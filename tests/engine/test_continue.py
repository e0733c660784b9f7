"""Continuing a finished run: a re-run under a larger maxIter or a smaller tol picks up its checkpoint
and ends bit for bit where one uninterrupted longer run ends; any other change is still refused."""

import logging

import numpy as np
import pytest
from fakes import Killed, KilledAfter

from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block


@pytest.fixture(scope="module")
def blocks():
    X, _, _ = make_blobs(3000, 3, 4, separation=1.5, seed=7)  # overlapping: many iterations to converge
    return [Block(b) for b in np.array_split(X, 4)]


def _source(blocks):
    return LocalBlockSource(blocks, sample_size=500, seed=11)


def _family():
    return GaussianFamily(k=4, init_mode="random")


def _same(a, b):
    """Bit-identical results: every restart's parameters and history, and the winner."""
    assert a.history == b.history and a.restart == b.restart and a.converged == b.converged
    assert len(a.restarts) == len(b.restarts)
    for ra, rb in zip(a.restarts, b.restarts, strict=True):
        assert ra.history == rb.history and ra.converged == rb.converged
        for name in ra.params:
            np.testing.assert_array_equal(ra.params[name], rb.params[name])


@pytest.mark.parametrize("acceleration", ["none", "squarem"])
def test_a_larger_max_iter_continues_a_run_stopped_at_max_iter(blocks, tmp_path, acceleration, caplog):
    longer = FitSettings(max_iter=12, tol=0.0, n_init=2, seed=4, acceleration=acceleration)
    reference = fit_em(_family(), _source(blocks), longer)
    run = dict(run_id="grow", checkpoint_dir=str(tmp_path))
    first = fit_em(_family(), _source(blocks), FitSettings(**{**longer.__dict__, "max_iter": 6, **run}))
    assert len(first.history) == 6 and not first.converged
    source = _source(blocks)
    with caplog.at_level(logging.INFO, logger="em_spark"):
        continued = fit_em(_family(), source, FitSettings(**{**longer.__dict__, **run}))
    assert source.e_step_calls == 6  # the six passes after the checkpoint, not twelve
    _same(continued, reference)
    assert "continuing under maxIter=12, tol=0 (its checkpoints had maxIter=6, tol=0)" in caplog.text
    again = _source(blocks)  # the continued run is finished in its turn
    _same(fit_em(_family(), again, FitSettings(**{**longer.__dict__, **run})), reference)
    assert again.e_step_calls == 0


def test_a_smaller_tol_continues_a_converged_restart_and_restarts_out_of_step_share_passes(blocks, tmp_path):
    """Under tol=1e-2 the two restarts converge at different iterations; under 1e-7 both go on, each
    from its own iteration, in shared passes, and end as one uninterrupted tol=1e-7 run."""
    strict = FitSettings(max_iter=200, tol=1e-7, n_init=2, seed=4)
    reference = fit_em(_family(), _source(blocks), strict)
    run = dict(run_id="tighten", checkpoint_dir=str(tmp_path))
    loose = fit_em(_family(), _source(blocks), FitSettings(**{**strict.__dict__, "tol": 1e-2, **run}))
    assert all(r.converged for r in loose.restarts)
    assert len({len(r.history) for r in loose.restarts}) == 2  # out of step: the checkpoint numbers must not clash
    assert all(len(r.history) < len(s.history) for r, s in zip(loose.restarts, reference.restarts, strict=True))
    continued = fit_em(_family(), _source(blocks), FitSettings(**{**strict.__dict__, **run}))
    _same(continued, reference)
    assert continued.converged


def test_a_run_that_converged_under_the_new_settings_too_is_returned_without_a_pass(blocks, tmp_path):
    settings = FitSettings(max_iter=200, tol=1e-3, seed=4, run_id="conv", checkpoint_dir=str(tmp_path))
    first = fit_em(_family(), _source(blocks), settings)
    assert first.converged
    source = _source(blocks)
    again = fit_em(_family(), source, FitSettings(**{**settings.__dict__, "max_iter": 400}))
    assert source.e_step_calls == 0
    _same(again, first)


def test_a_continued_run_killed_midway_resumes_exactly(blocks, tmp_path):
    longer = FitSettings(max_iter=12, tol=0.0, n_init=2, seed=4)
    reference = fit_em(_family(), _source(blocks), longer)
    run = dict(run_id="grow-kill", checkpoint_dir=str(tmp_path))
    fit_em(_family(), _source(blocks), FitSettings(**{**longer.__dict__, "max_iter": 5, **run}))
    with pytest.raises(Killed):
        fit_em(_family(), KilledAfter(blocks, 3, sample_size=500, seed=11), FitSettings(**{**longer.__dict__, **run}))
    _same(fit_em(_family(), _source(blocks), FitSettings(**{**longer.__dict__, **run})), reference)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(max_iter=4), "'maxIter': 6"),  # fewer iterations: the stored run went past where this one stops
        (dict(tol=1e-2), "'tol': 0.0"),  # a larger tol may have stopped it earlier
        (dict(max_iter=12, seed=5), "'seed': 4"),  # a larger budget does not excuse another change
        (dict(max_iter=12, n_init=3), "'nInit': 2"),
    ],
)
def test_every_other_change_is_still_refused_naming_the_difference(blocks, tmp_path, change, message):
    settings = FitSettings(max_iter=6, tol=0.0, n_init=2, seed=4, run_id="refuse", checkpoint_dir=str(tmp_path))
    fit_em(_family(), _source(blocks), settings)
    with pytest.raises(ResumeMismatchError, match=rf"settings: checkpoint has .*{message}.*larger maxIter"):
        fit_em(_family(), _source(blocks), FitSettings(**{**settings.__dict__, **change}))


def test_another_family_with_a_larger_budget_is_refused(blocks, tmp_path):
    settings = FitSettings(max_iter=3, tol=0.0, seed=4, run_id="fam", checkpoint_dir=str(tmp_path))
    fit_em(_family(), _source(blocks), settings)
    with pytest.raises(ResumeMismatchError, match="family: checkpoint has"):
        fit_em(
            GaussianFamily(k=3, init_mode="random"),
            _source(blocks),
            FitSettings(**{**settings.__dict__, "max_iter": 9}),
        )
