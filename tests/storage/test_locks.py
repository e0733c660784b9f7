"""Run leases: one live holder per run id, takeover of dead or expired holders, races."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from em_spark.storage import (
    LeaseLostError,
    RunLock,
    RunLockedError,
    StorageError,
    locks,
    seal,
)
from em_spark.storage.locks import Lease

REPO = Path(__file__).resolve().parents[2]
LOGGER = "em_spark.storage.locks"

HOLD_CODE = """
import sys
from em_spark.storage import RunLock
with RunLock(sys.argv[1], sys.argv[2], ttl_seconds=3600):
    print("held", flush=True)
    sys.stdin.read()
"""

DIE_CODE = """
import os, sys
from em_spark.storage import RunLock
lock = RunLock(sys.argv[1], sys.argv[2], ttl_seconds=3600)
lock.acquire()
print(os.getpid(), flush=True)
os._exit(0)  # killed: no release, no finally
"""


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lock(root, run_id="run-1", **kw) -> RunLock:
    kw.setdefault("heartbeat_seconds", 0)
    kw.setdefault("ttl_seconds", 60)
    return RunLock(str(root), run_id, **kw)


def _lease_names(root, run_id="run-1") -> list[str]:
    return sorted(p.name for p in (Path(root) / run_id / "lock").iterdir() if p.name.startswith("lease-"))


@pytest.fixture
def elsewhere(monkeypatch):
    """Make this process look like one on another machine (pids there mean nothing here)."""
    other = locks._Process("other-host", "other-host|boot=x|pid:[1]", 4242, None)
    monkeypatch.setattr(locks, "_this_process", lambda: other)
    return other


# --- one process ----------------------------------------------------------------


def test_acquire_refuses_a_second_holder_until_released(tmp_path):
    first, second = _lock(tmp_path), _lock(tmp_path)
    lease = first.acquire()
    assert lease.pid == os.getpid() and lease.generation == 1 and not lease.released
    with pytest.raises(RunLockedError) as caught:
        second.acquire()
    message = str(caught.value)
    assert isinstance(caught.value, StorageError)
    assert message.startswith(
        f"run run-1 is already running (owner host {socket.gethostname()} pid {os.getpid()}, since "
    )
    assert (
        "; wait for it, or use another run id; if that process is dead on another machine, the lease expires at "
        in message
    )
    assert message.count(time.strftime("%Y-%m-%d", time.gmtime(lease.expires))) >= 2
    assert caught.value.lease == lease
    first.release()
    assert second.acquire().generation == 3  # 1: acquired, 2: released marker, 3: acquired again
    assert _lease_names(tmp_path) == ["lease-0000000003.emlease"]  # older generations pruned


def test_ensure_free_names_a_live_holder_and_writes_nothing(tmp_path):
    look = _lock(tmp_path)
    look.ensure_free()  # no lease at all: free, and nothing is created by looking
    assert not (tmp_path / "run-1").exists()
    holder = _lock(tmp_path)
    lease = holder.acquire()
    with pytest.raises(RunLockedError, match=f"run run-1 is already running .* pid {os.getpid()}, since "):
        look.ensure_free()
    assert _lease_names(tmp_path) == [f"lease-{lease.generation:010d}.emlease"]
    holder.ensure_free()  # the holder itself may go on
    holder.release()
    look.ensure_free()


def test_a_released_lease_leaves_a_marker_and_frees_the_run_for_any_machine(tmp_path, elsewhere):
    holder = _lock(tmp_path, ttl_seconds=3600)
    holder.acquire()
    holder.release()
    assert holder.lease is None
    assert _lease_names(tmp_path) == ["lease-0000000002.emlease"]
    _lock(tmp_path, ttl_seconds=3600).acquire()  # released, not merely expired or dead


def test_context_manager_releases_on_error(tmp_path):
    with pytest.raises(KeyError), _lock(tmp_path):
        raise KeyError("boom")
    _lock(tmp_path).acquire()


def test_run_id_is_validated_before_touching_storage(tmp_path):
    with pytest.raises(ValueError, match="run id"):
        RunLock(str(tmp_path), "../escape")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), True, "60"])
def test_ttl_must_be_a_positive_number(tmp_path, ttl):
    with pytest.raises(ValueError, match="TTL"):
        RunLock(str(tmp_path), "r", ttl_seconds=ttl)


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops(tmp_path, caplog):
    clock = Clock()
    old, new = _lock(tmp_path, clock=clock), _lock(tmp_path, clock=clock)
    old.acquire()
    clock.now += 59.9
    with pytest.raises(RunLockedError):
        new.acquire()
    clock.now += 0.1  # exactly at expiry
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        taken = new.acquire()
    assert any("took over" in r.getMessage() and "expired" in r.getMessage() for r in caplog.records)
    assert taken.generation == 2 and taken.owner == new.owner
    with pytest.raises(LeaseLostError, match="lost the run's lease"):
        old.check()  # overdue, so check renews, and renewing finds the new holder
    with pytest.raises(LeaseLostError):
        old.renew()  # stays lost
    old.release()  # must not release the new holder's lease
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        _lock(tmp_path, clock=clock).acquire()
    assert new.renew().generation == 3


def test_renewals_extend_the_lease(tmp_path):
    clock = Clock()
    holder, other = _lock(tmp_path, clock=clock), _lock(tmp_path, clock=clock)
    start = clock.now
    holder.acquire()
    for _ in range(3):
        clock.now += 50
        renewed = holder.renew()
        assert renewed.expires == clock.now + 60 and renewed.since == start
    clock.now += 59
    with pytest.raises(RunLockedError):
        other.acquire()
    clock.now += 1
    other.acquire()


def test_check_renews_only_when_the_heartbeat_interval_has_passed(tmp_path):
    clock = Clock()
    holder = _lock(tmp_path, clock=clock, ttl_seconds=60, heartbeat_seconds=10)
    holder.acquire()
    clock.now += 9
    holder.check()
    assert holder.lease.generation == 1
    clock.now += 1
    holder.check()
    assert holder.lease.generation == 2 and holder.lease.expires == clock.now + 60


def test_heartbeat_keeps_the_lease_alive_and_stops_at_release(tmp_path):
    other = _lock(tmp_path, ttl_seconds=0.6)
    with _lock(tmp_path, ttl_seconds=0.6, heartbeat_seconds=0.1) as holder:
        time.sleep(1.5)  # more than twice the TTL
        with pytest.raises(RunLockedError):
            other.acquire()
        assert holder.lease.generation > 5
    assert not any(t.name == "em_spark-lease-run-1" for t in threading.enumerate())  # the heartbeat stopped
    other.acquire()
    names = _lease_names(tmp_path)
    time.sleep(0.3)
    assert _lease_names(tmp_path) == names  # nothing renews any more


def test_heartbeat_notices_a_takeover_and_check_then_refuses(tmp_path, caplog):
    with (
        caplog.at_level(logging.ERROR, logger=LOGGER),
        _lock(tmp_path, ttl_seconds=30, heartbeat_seconds=0.05) as holder,
    ):
        holder.check()
        # Another process whose clock says the lease is long expired takes the run over.
        _lock(tmp_path, clock=lambda: time.time() + 3600).acquire()
        time.sleep(0.5)
        with pytest.raises(LeaseLostError, match="lost the run's lease"):
            holder.check()  # the lease is not due for renewal; the heartbeat found the loss
    assert any("lost the run's lease" in r.getMessage() for r in caplog.records)
    assert len(_lease_names(tmp_path)) == 1  # the loser released nothing


def test_without_heartbeat_an_idle_holder_expires(tmp_path):
    _lock(tmp_path, ttl_seconds=0.3).acquire()
    time.sleep(0.4)
    _lock(tmp_path, ttl_seconds=0.3).acquire()


def test_a_holder_on_another_machine_blocks_until_expiry_even_if_its_pid_is_unknown_here(tmp_path, monkeypatch):
    clock = Clock()
    far = locks._Process("far", "far|boot=y|pid:[2]", 999_999_999, None)  # no such pid here
    monkeypatch.setattr(locks, "_this_process", lambda: far)
    _lock(tmp_path, clock=clock, ttl_seconds=600).acquire()
    monkeypatch.undo()
    with pytest.raises(RunLockedError, match="owner host far pid 999999999"):
        _lock(tmp_path, clock=clock).acquire()
    clock.now += 600
    _lock(tmp_path, clock=clock).acquire()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for process start times")
def test_a_reused_pid_does_not_keep_a_dead_holders_lease(tmp_path):
    me = locks._this_process()
    path = tmp_path / "run-1" / "lock" / "lease-0000000001.emlease"
    path.parent.mkdir(parents=True)

    def forge(start):
        lease = Lease("run-1", 1, "someone", me.host, me.machine, me.pid, start, 1.0, 1.0, time.time() + 3600)
        path.write_bytes(seal(lease.encode()))

    forge(me.start)  # this very process: alive
    with pytest.raises(RunLockedError):
        _lock(tmp_path).acquire()
    forge(str(int(me.start) - 1))  # same pid, but a process that started earlier: gone
    _lock(tmp_path).acquire()


def test_a_lease_left_by_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path, caplog, monkeypatch):
    done = subprocess.run(
        [sys.executable, "-c", DIE_CODE, str(tmp_path), "run-1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    dead_pid = int(done.stdout)
    # Seen from another machine, the lease is still held (for an hour)...
    monkeypatch.setattr(locks, "_this_process", lambda: locks._Process("other", "other|boot=x|", 4242, None))
    with pytest.raises(RunLockedError, match=f"pid {dead_pid},"):
        _lock(tmp_path, ttl_seconds=3600).acquire()
    monkeypatch.undo()
    # ...but on its own machine the process is known to be gone.
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        lease = _lock(tmp_path, ttl_seconds=3600).acquire()
    assert lease.generation == 2 and lease.pid == os.getpid()
    assert any(f"pid {dead_pid}" in r.getMessage() and "no longer exists" in r.getMessage() for r in caplog.records)


def test_a_live_holder_in_another_process_is_named_and_blocks(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CODE, str(tmp_path), "run-1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"is already running .*pid {holder.pid},"):
            _lock(tmp_path).acquire()
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    _lock(tmp_path).acquire()  # it released on exit


def test_damaged_newest_lease_blocks_while_recent_then_is_replaced(tmp_path, caplog):
    path = tmp_path / "run-1" / "lock" / "lease-0000000004.emlease"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"EMSEALv1 torn")
    clock = Clock(time.time())
    with pytest.raises(RunLockedError, match="damaged"):
        _lock(tmp_path, clock=clock).acquire()
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _lock(tmp_path, clock=clock).acquire().generation == 5
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_a_racer_that_recreates_a_pruned_generation_backs_off(tmp_path, monkeypatch):
    """ABA: B reads generation 1; A renews to 2 and 3, pruning 1 and 2; B creates 2 again."""
    holder, late = _lock(tmp_path), _lock(tmp_path)
    holder.acquire()
    stale = locks._Newest(1, Lease("run-1", 1, "gone", "h", "h|boot=z|", 1, None, 0.0, 0.0, 0.0))  # expired
    holder.renew()
    holder.renew()
    assert _lease_names(tmp_path) == ["lease-0000000003.emlease"]
    reads = iter([stale])
    real = RunLock._newest
    monkeypatch.setattr(RunLock, "_newest", lambda self: next(reads, None) or real(self))
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        late.acquire()
    assert _lease_names(tmp_path) == ["lease-0000000003.emlease"]  # its generation 2 withdrawn
    assert holder.renew().generation == 4


def test_a_retried_create_that_finds_its_own_object_counts_as_created(tmp_path, monkeypatch):
    """A conditional PUT whose response was lost is retried and answered 412 by its own object."""
    real = locks._write

    def lost_response(fs, path, data):
        real(fs, path, data)
        raise locks.ObjectExistsError.refused(path)

    monkeypatch.setattr(locks, "_write", lost_response)
    holder = _lock(tmp_path)
    assert holder.acquire().generation == 1
    assert holder.renew().generation == 2


# --- races ----------------------------------------------------------------------


def _gate_first_write(barrier):
    """A ``_write`` that holds each racer's first write until all racers reach it."""
    real, seen = locks._write, threading.local()

    def gated(fs, path, data):
        if not getattr(seen, "done", False):
            seen.done = True
            barrier.wait(timeout=60)
        real(fs, path, data)

    return gated


def _race_threads(root, endpoint, monkeypatch, n=6):
    barrier = threading.Barrier(n)
    monkeypatch.setattr(locks, "_write", _gate_first_write(barrier))
    outcomes = [None] * n

    def attempt(i):
        lock = RunLock(root, "race", s3_endpoint=endpoint, ttl_seconds=600, heartbeat_seconds=0)
        try:
            lock.acquire()
            outcomes[i] = "won"
        except RunLockedError as exc:
            outcomes[i] = str(exc)
        except BaseException as exc:  # noqa: BLE001
            outcomes[i] = f"error {exc!r}"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def _race_worker(root, endpoint, barrier, results, finish):
    from em_spark.storage import RunLock, RunLockedError, locks

    locks._write = _gate_first_write(barrier)
    lock = RunLock(root, "race", s3_endpoint=endpoint, ttl_seconds=600, heartbeat_seconds=0)
    try:
        lock.acquire()
    except RunLockedError as exc:
        results.put((os.getpid(), str(exc)))
        return
    except BaseException as exc:  # noqa: BLE001
        results.put((os.getpid(), f"error {exc!r}"))
        return
    results.put((os.getpid(), "won"))
    finish.wait(120)  # hold it until every racer has tried
    lock.release()


def _race_processes(root, endpoint, n=4):
    ctx = multiprocessing.get_context("spawn")
    barrier, results, finish = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_race_worker, args=(root, endpoint, barrier, results, finish)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        outcomes = dict(results.get(timeout=180) for _ in procs)
    finally:
        finish.set()
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * n
    return outcomes


def _exactly_one_won(outcomes, winner_pid):
    assert sum(o == "won" for o in outcomes) == 1, outcomes
    losers = [o for o in outcomes if o != "won"]
    assert all(o.startswith("run race is already running (owner host ") for o in losers), losers
    assert all(f"pid {winner_pid}," in o for o in losers), losers


def test_racing_threads_exactly_one_wins_on_local_disk(tmp_path, monkeypatch):
    _exactly_one_won(_race_threads(str(tmp_path), None, monkeypatch), os.getpid())


def test_racing_processes_exactly_one_wins_on_local_disk(tmp_path):
    outcomes = _race_processes(str(tmp_path), None)
    [winner] = [pid for pid, o in outcomes.items() if o == "won"]
    _exactly_one_won(list(outcomes.values()), winner)


@pytest.mark.s3
def test_racing_threads_exactly_one_wins_on_s3(s3_server, s3_bucket, monkeypatch):
    outcomes = _race_threads(f"{s3_bucket}/runs", s3_server.endpoint, monkeypatch)
    _exactly_one_won(outcomes, os.getpid())


@pytest.mark.s3
def test_racing_processes_exactly_one_wins_on_s3(s3_server, s3_bucket):
    outcomes = _race_processes(f"{s3_bucket}/runs", s3_server.endpoint)
    [winner] = [pid for pid, o in outcomes.items() if o == "won"]
    _exactly_one_won(list(outcomes.values()), winner)


@pytest.mark.s3
def test_lease_lifecycle_on_s3(s3_server, s3_bucket):
    clock = Clock()
    root = f"{s3_bucket}/runs"
    holder = RunLock(root, "r", s3_endpoint=s3_server.endpoint, ttl_seconds=60, heartbeat_seconds=0, clock=clock)
    other = RunLock(root, "r", s3_endpoint=s3_server.endpoint, ttl_seconds=60, heartbeat_seconds=0, clock=clock)
    holder.acquire()
    clock.now += 30
    holder.renew()
    clock.now += 59
    with pytest.raises(RunLockedError, match="is already running"):
        other.acquire()
    clock.now += 1
    other.acquire()
    with pytest.raises(LeaseLostError):
        holder.renew()
    other.release()
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket[5:]).get("Contents", [])]
    assert [k for k in keys if "lease-" in k] == ["runs/r/lock/lease-0000000004.emlease"]
    holder.acquire()
