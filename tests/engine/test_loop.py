"""The EM loop without a JVM: convergence, restarts, checkpoints, exact resume."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import Killed, KilledAfter

from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block
from em_spark.storage import CheckpointStore, LeaseLostError, RunLock, RunLockedError, locks


@pytest.fixture(scope="module")
def blobs():
    X, _, truth = make_blobs(3000, 3, 3, separation=4.0, seed=3)
    return X, truth


def _source(X, n_blocks=4):
    return LocalBlockSource([Block(b) for b in np.array_split(X, n_blocks)], sample_size=500, seed=11)


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
        fit_em(GaussianFamily(k=3, init_mode="random"), _source(X), FitSettings(max_iter=30, tol=1e-6, seed=2)).history[
            -1
        ]
    ]
    assert result.history[-1] >= max(singles) - 1e-12
    assert 0 <= result.restart < 3


@pytest.mark.parametrize("killed_after", [1, 4, 7])
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
    assert source.e_step_calls == 8 - killed_after  # only the missing rounds were run (both restarts in each)
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


# --- one live fit per run id ------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]

HOLD_CODE = """
import sys
from em_spark.storage import RunLock
with RunLock(sys.argv[1], sys.argv[2], ttl_seconds=3600):
    print("held", flush=True)
    sys.stdin.read()
"""

# A driver: the same data, source and settings as the tests below; it can be killed
# (os._exit) after some E-steps, slowed down, and held at a start line.
FIT_CODE = """
import os, sys, time
import numpy as np
from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block
from em_spark.storage import RunLockedError

root, run_id, die_after, pause, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

class Source(LocalBlockSource):
    def e_step(self, family, params, label=""):
        if self.e_step_calls == die_after:
            os._exit(17)  # killed: no finally, no release
        time.sleep(pause)
        return super().e_step(family, params, label)

X, _, _ = make_blobs(3000, 3, 3, separation=4.0, seed=3)
source = Source([Block(b) for b in np.array_split(X, 4)], sample_size=500, seed=11)
settings = FitSettings(max_iter=8, tol=0.0, seed=4, run_id=run_id, checkpoint_dir=root)
print("ready", flush=True)
while gate != "-" and not os.path.exists(gate):
    time.sleep(0.002)
try:
    result = fit_em(GaussianFamily(k=3, covariance_type="diag"), source, settings)
except RunLockedError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(3)
print("fitted", result.n_iter, flush=True)
"""


def _driver(tmp_path, run_id, *, die_after=-1, pause=0.0, gate="-"):
    args = [sys.executable, "-c", FIT_CODE, str(tmp_path), run_id, str(die_after), str(pause), str(gate)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _free_for_another_machine(root, run_id, monkeypatch) -> bool:
    """Whether a process on another machine could take the run now (a dead pid here does not count there)."""
    with monkeypatch.context() as m:
        m.setattr(locks, "_this_process", lambda: locks._Process("other", "other|boot=x|", 4242, None))
        probe = RunLock(str(root), run_id, ttl_seconds=3600, heartbeat_seconds=0)
        try:
            probe.acquire()
        except RunLockedError:
            return False
        probe.release()
        return True


def _changed(settings, **changes):
    return FitSettings(**{**settings.__dict__, **changes})


def test_a_fit_whose_run_another_process_holds_fails_fast_and_writes_nothing(blobs, tmp_path):
    X, _ = blobs
    settings = FitSettings(max_iter=5, tol=0.0, seed=4, run_id="busy", checkpoint_dir=str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CODE, str(tmp_path), "busy"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        source = _source(X)
        with pytest.raises(
            RunLockedError, match=rf"^run busy is already running \(owner host .+ pid {holder.pid}, since "
        ):
            fit_em(GaussianFamily(k=3), source, settings)
        assert source.e_step_calls == 0
        assert CheckpointStore(str(tmp_path), "busy").sequences() == []
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert fit_em(GaussianFamily(k=3), _source(X), settings).n_iter == 5  # released: the run proceeds


def test_the_lease_is_released_when_a_fit_ends_and_when_it_fails(blobs, tmp_path, monkeypatch):
    X, _ = blobs
    settings = FitSettings(max_iter=3, tol=0.0, seed=4, run_id="rel", checkpoint_dir=str(tmp_path))
    fit_em(GaussianFamily(k=3), _source(X), settings)
    assert _free_for_another_machine(tmp_path, "rel", monkeypatch)
    blocks = [Block(b) for b in np.array_split(X, 4)]
    with pytest.raises(Killed):
        fit_em(GaussianFamily(k=3), KilledAfter(blocks, 1, sample_size=500, seed=11), _changed(settings, run_id="rel2"))
    assert _free_for_another_machine(tmp_path, "rel2", monkeypatch)


def test_a_run_whose_driver_was_killed_resumes_at_the_next_iteration(blobs, tmp_path, monkeypatch):
    X, _ = blobs
    family = GaussianFamily(k=3, covariance_type="diag")
    settings = FitSettings(max_iter=8, tol=0.0, seed=4, run_id="killed", checkpoint_dir=str(tmp_path))
    reference = fit_em(family, _source(X), _changed(settings, run_id=None, checkpoint_dir=None))
    killed = _driver(tmp_path, "killed", die_after=3)
    assert killed.wait(timeout=120) == 17, killed.stderr.read()
    assert CheckpointStore(str(tmp_path), "killed").sequences() == [1, 2, 3]
    assert not _free_for_another_machine(tmp_path, "killed", monkeypatch)  # its lease was left behind

    source = _source(X)
    resumed = fit_em(family, source, settings)  # same machine: the dead driver's lease is taken over
    assert source.e_step_calls == 5  # iterations 4..8 only
    assert resumed.history == reference.history
    np.testing.assert_array_equal(resumed.params["means"], reference.params["means"])
    assert _free_for_another_machine(tmp_path, "killed", monkeypatch)


def test_two_drivers_starting_one_run_at_once_exactly_one_fits(tmp_path):
    gate = tmp_path / "go"
    drivers = [_driver(tmp_path, "twice", pause=0.15, gate=gate) for _ in range(2)]
    try:
        for d in drivers:
            assert d.stdout.readline().strip() == "ready"
        gate.touch()
        outputs = [d.communicate(timeout=120) for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
    codes = [d.returncode for d in drivers]
    assert sorted(codes) == [0, 3], (codes, outputs)
    winner = drivers[codes.index(0)]
    _, loser_err = outputs[codes.index(3)]
    assert outputs[codes.index(0)][0].strip().endswith("fitted 8")
    assert "error: run twice is already running (owner host " in loser_err
    assert f" pid {winner.pid}, since " in loser_err and "wait for it, or use another run id" in loser_err


def test_a_fit_that_loses_its_lease_stops_before_the_next_checkpoint(blobs, tmp_path, monkeypatch):
    X, _ = blobs
    root = str(tmp_path)
    thief = RunLock(root, "stolen", ttl_seconds=3600, heartbeat_seconds=0, clock=lambda: time.time() + 10_000)

    class TakenOver(LocalBlockSource):
        def e_step(self, family, params, label=""):
            if self.e_step_calls == 2:
                thief.acquire()  # a process that (by its clock) found the lease expired
                time.sleep(0.6)  # the fit's heartbeat (every 0.2 s) runs meanwhile
            return super().e_step(family, params, label)

    settings = FitSettings(max_iter=6, tol=0.0, seed=4, run_id="stolen", checkpoint_dir=root, lock_ttl_seconds=1.0)
    source = TakenOver([Block(b) for b in np.array_split(X, 4)], sample_size=500, seed=11)
    with pytest.raises(LeaseLostError, match="lost the run's lease"):
        fit_em(GaussianFamily(k=3), source, settings)
    assert CheckpointStore(root, "stolen").sequences() == [1, 2]  # nothing written after the takeover
    assert thief.renew().owner == thief.owner  # and the thief's lease was left alone


def test_lock_ttl_is_validated_and_not_part_of_the_resume_identity():
    assert FitSettings(lock_ttl_seconds=5).identity() == FitSettings().identity()
    for bad in (0, -1, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="lockTtlSeconds"):
            FitSettings(lock_ttl_seconds=bad)
