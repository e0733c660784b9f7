"""The EM loop without a JVM: convergence, restarts, checkpoints, exact resume."""

import logging

import numpy as np
import pytest

from em_spark.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, LocalBlockSource, ResumeMismatchError, fit_em
from em_spark.models import GaussianFamily
from em_spark.models.base import Block
from em_spark.storage import CheckpointStore


@pytest.fixture(scope="module")
def blobs():
    X, _, truth = make_blobs(3000, 3, 3, separation=4.0, seed=3)
    return X, truth


def _source(X, n_blocks=4):
    return LocalBlockSource([Block(b) for b in np.array_split(X, n_blocks)], sample_size=500, seed=11)


class Killed(RuntimeError):
    pass


class KilledAfter(LocalBlockSource):
    """A source whose E-step 'crashes the driver' after a number of successful calls."""

    def __init__(self, blocks, calls, **kw):
        super().__init__(blocks, **kw)
        self.calls_left = calls

    def e_step(self, family, params, label=""):
        if self.calls_left == 0:
            raise Killed("driver killed")
        self.calls_left -= 1
        return super().e_step(family, params, label)


def test_tol_zero_runs_exactly_max_iter_and_loglik_never_decreases(blobs):
    X, _ = blobs
    result = fit_em(GaussianFamily(k=3), _source(X), FitSettings(max_iter=15, tol=0.0, seed=1))
    assert result.n_iter == 15 and not result.converged
    h = np.array(result.history)
    assert np.all(np.diff(h) >= -1e-10 * np.abs(h[1:]))


def test_converges_on_the_change_of_the_average_log_likelihood(blobs):
    X, _ = blobs
    result = fit_em(GaussianFamily(k=3), _source(X), FitSettings(max_iter=500, tol=1e-4, seed=1))
    assert result.converged
    assert abs(result.history[-1] - result.history[-2]) < 1e-4 <= abs(result.history[-2] - result.history[-3])
    assert result.log_likelihood == pytest.approx(result.history[-1] * 3000)


def test_same_seed_gives_bit_identical_parameters_and_blocking_does_not_matter_much(blobs):
    X, _ = blobs
    settings = FitSettings(max_iter=10, tol=0.0, seed=5)
    a = fit_em(GaussianFamily(k=3), _source(X, 4), settings)
    b = fit_em(GaussianFamily(k=3), _source(X, 4), settings)
    c = fit_em(GaussianFamily(k=3), _source(X, 7), settings)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
        np.testing.assert_allclose(a.params[name], c.params[name], rtol=1e-9, atol=1e-12)


def test_best_of_n_init_is_kept(blobs):
    X, _ = blobs
    settings = FitSettings(max_iter=30, tol=1e-6, n_init=3, seed=2)
    result = fit_em(GaussianFamily(k=3, init_mode="random"), _source(X), settings)
    singles = [
        fit_em(GaussianFamily(k=3, init_mode="random"), _source(X), FitSettings(max_iter=30, tol=1e-6, seed=2)).history[-1]
    ]
    assert result.history[-1] >= max(singles) - 1e-12
    assert 0 <= result.restart < 3


@pytest.mark.parametrize("killed_after", [1, 4, 9, 13])
def test_killed_run_resumes_and_ends_exactly_like_an_uninterrupted_one(blobs, tmp_path, killed_after):
    X, _ = blobs
    family = GaussianFamily(k=3, covariance_type="diag")
    settings = FitSettings(max_iter=8, tol=0.0, n_init=2, seed=4, run_id="r1", checkpoint_dir=str(tmp_path))
    reference = fit_em(family, _source(X), FitSettings(max_iter=8, tol=0.0, n_init=2, seed=4))

    blocks = [Block(b) for b in np.array_split(X, 4)]
    with pytest.raises(Killed):
        fit_em(family, KilledAfter(blocks, killed_after, sample_size=500, seed=11), settings)
    source = _source(X)
    resumed = fit_em(family, source, settings)
    assert source.e_step_calls == 16 - killed_after  # only the missing iterations were run
    assert resumed.n_iter == reference.n_iter and resumed.restart == reference.restart
    assert resumed.history == reference.history
    for name in reference.params:
        np.testing.assert_allclose(resumed.params[name], reference.params[name], rtol=1e-12, atol=0)


def test_finished_run_is_returned_from_its_checkpoint_without_refitting(blobs, tmp_path):
    X, _ = blobs
    settings = FitSettings(max_iter=5, tol=0.0, seed=4, run_id="done", checkpoint_dir=str(tmp_path))
    first = fit_em(GaussianFamily(k=3), _source(X), settings)
    source = _source(X)
    again = fit_em(GaussianFamily(k=3), source, settings)
    assert source.e_step_calls == 0
    np.testing.assert_array_equal(again.params["means"], first.params["means"])


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(family=GaussianFamily(k=4)), "family"),
        (dict(settings=dict(seed=99)), "settings"),
        (dict(data=1e-3), "fingerprint"),
    ],
)
def test_resume_against_other_data_or_config_is_refused_with_the_difference(blobs, tmp_path, change, key):
    X, _ = blobs
    settings = FitSettings(max_iter=3, tol=0.0, seed=4, run_id="r2", checkpoint_dir=str(tmp_path))
    fit_em(GaussianFamily(k=3), _source(X), settings)
    family = change.get("family", GaussianFamily(k=3))
    if "settings" in change:
        settings = FitSettings(**{**settings.__dict__, **change["settings"]})
    data = X + change.get("data", 0.0)
    with pytest.raises(ResumeMismatchError, match=key):
        fit_em(family, _source(data), settings)


def test_torn_latest_checkpoint_falls_back_to_the_previous_iteration(blobs, tmp_path, caplog):
    X, _ = blobs
    family = GaussianFamily(k=3)
    settings = FitSettings(max_iter=6, tol=0.0, seed=4, run_id="torn", checkpoint_dir=str(tmp_path), keep_checkpoints=3)
    reference = fit_em(family, _source(X), FitSettings(max_iter=6, tol=0.0, seed=4))
    blocks = [Block(b) for b in np.array_split(X, 4)]
    with pytest.raises(Killed):
        fit_em(family, KilledAfter(blocks, 4, sample_size=500, seed=11), settings)
    store = CheckpointStore(str(tmp_path), "torn")
    newest = max(store.sequences())
    path = tmp_path / "torn" / "checkpoints"
    victim = next(p for p in path.iterdir() if p.name.endswith(f"{newest:010d}.emck"))
    victim.write_bytes(victim.read_bytes()[:-100])  # a crash mid-upload
    with caplog.at_level(logging.WARNING):
        resumed = fit_em(family, _source(X), settings)
    assert any("corrupt" in r.getMessage().lower() or "damaged" in r.getMessage().lower() for r in caplog.records)
    assert resumed.history == reference.history
    np.testing.assert_allclose(resumed.params["means"], reference.params["means"], rtol=1e-12)


def test_retention_keeps_only_the_last_checkpoints(blobs, tmp_path):
    X, _ = blobs
    settings = FitSettings(max_iter=7, tol=0.0, seed=4, run_id="keep", checkpoint_dir=str(tmp_path), keep_checkpoints=2)
    fit_em(GaussianFamily(k=3), _source(X), settings)
    assert len(CheckpointStore(str(tmp_path), "keep").sequences()) == 2


def test_initial_params_start_restart_zero(blobs):
    X, truth = blobs
    family = GaussianFamily(k=3)
    init = family.params_from_public(truth, 3)
    result = fit_em(family, _source(X), FitSettings(max_iter=1, tol=0.0), init)
    # one M-step from the truth stays close to the truth
    np.testing.assert_allclose(np.sort(result.params["weights"]), np.sort(truth["weights"]), atol=0.03)


def test_each_iteration_logs_one_line_with_run_id_change_and_family_progress(blobs, caplog):
    X, _ = blobs
    with caplog.at_level(logging.INFO, logger="em_spark"):
        fit_em(GaussianFamily(k=3), _source(X), FitSettings(max_iter=3, tol=0.0, run_id="logged"))
    lines = [r.getMessage() for r in caplog.records if " iter=" in r.getMessage()]
    assert len(lines) == 3
    assert lines[1].startswith("run=logged restart=1/1 iter=2/3 avgLogLik=")
    assert "change=+" in lines[1] and "seconds=" in lines[1] and "minWeight=" in lines[1]
