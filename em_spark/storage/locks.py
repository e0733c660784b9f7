"""Run leases: at most one live process per run id, on any store em_spark writes to.

Object stores have no locks, and a driver that is killed outright cannot release
one. So a run is guarded by a *lease*: a record naming its holder (a random owner
id, host, pid) and a time until which it is valid. A live holder keeps renewing it
(a background heartbeat, and before every checkpoint commit); a holder that dies
stops renewing, and its lease runs out.

Layout: ``<root>/<run_id>/lock/lease-<generation:010d>.emlease``, each object a
sealed JSON record (see :mod:`~em_spark.storage.frame`). The newest generation is
the lease's current state. Every change -- acquire, renew, take over, release --
writes the *next* generation with a conditional create (hard link locally,
``If-None-Match: *`` on S3), never an overwrite, so of several processes acting on
the same state exactly one succeeds; no compare-and-swap is needed. Older
generations are then deleted (best effort).

Deleted generations could be created again by a process that read an old state
(an ABA race). So a write only counts once a listing shows it is still the newest
generation: the newest one is never deleted (a release writes a marker instead of
deleting), hence a late writer always sees a newer generation and backs off.

A newcomer may replace the newest lease only when it is released, expired
(``now >= expires``), or held by a process on the *same machine* that no longer
exists. "Same machine" means same host name, boot id and pid namespace, so a pid
is only ever checked where it means something; the process start time (Linux
``/proc``) guards against a reused pid. A driver killed by ``kill -9`` is
therefore replaced at once by a re-run on its host, and after at most the TTL by
a re-run elsewhere (for example a cluster-mode driver restarted on another node).

Guarantees hold where conditional creates are atomic: local disks and S3 (and
S3-compatible stores that honour ``If-None-Match``). Expiry compares wall clocks
of different machines, so their skew must stay well below the TTL (NTP keeps it
far below a second). A holder paused for longer than its TTL loses its lease; it
notices at its next renewal and stops (:class:`LeaseLostError`) before writing
another checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from em_spark.storage.errors import CorruptObjectError, ObjectExistsError, StorageError
from em_spark.storage.frame import seal, unseal
from em_spark.storage.fs import (
    absolute_uri,
    delete_object,
    join,
    list_names,
    read_object,
    redact_uri,
    resolve,
    validate_name,
    write_object,
)
from em_spark.storage.names import MAX_NUMBER, NumberedNames

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["DEFAULT_TTL_SECONDS", "Lease", "LeaseLostError", "RunLock", "RunLockedError"]

DEFAULT_TTL_SECONDS = 300.0
LEASE_FORMAT = 1
_OBJECT_NAMES = NumberedNames("lease-", ".emlease")
_MAX_GENERATION = MAX_NUMBER
_ATTEMPTS = 8  # rounds of look-then-create before giving up on a lease that keeps changing


class RunLockedError(StorageError):
    """Another live process holds the run's lease; the message names it and says until when."""

    def __init__(self, message: str, lease: Lease | None = None) -> None:
        super().__init__(message)
        self.lease = lease


class LeaseLostError(StorageError):
    """This process held the run's lease but no longer does (it expired and was taken over)."""


@dataclass(frozen=True)
class Lease:
    """One generation of a run's lease."""

    run_id: str
    generation: int
    owner: str  # random id of the RunLock that wrote it
    host: str
    machine: str  # host, boot id and pid namespace: where ``pid`` means something
    pid: int
    pid_start: str | None  # the process's start time as /proc gives it, if known
    since: float  # when the holder acquired it (unix seconds)
    renewed: float
    expires: float
    released: bool = False

    def encode(self) -> bytes:
        return json.dumps({"format": LEASE_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Lease:
        """The lease in ``payload``; ``ValueError`` when it is not a lease record."""
        try:
            record = json.loads(payload.decode())
            if record.pop("format") != LEASE_FORMAT:
                raise ValueError("unknown lease format")
            lease = cls(**record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a lease record: {exc}") from None
        if not all(isinstance(v, (int, float)) for v in (lease.generation, lease.pid, lease.since, lease.expires)):
            raise ValueError("not a lease record: non-numeric fields")
        return lease

    def describe(self) -> str:
        """``owner host H pid P, since T, lease until U``."""
        return f"owner host {self.host} pid {self.pid}, since {_when(self.since)}, lease until {_when(self.expires)}"


@dataclass(frozen=True)
class _Newest:
    generation: int
    lease: Lease | None  # None: the object is damaged
    damage: str = ""
    mtime: float | None = None


class RunLock:
    """The lease on one run id. Use as a context manager, or ``acquire``/``release``.

    Parameters
    ----------
    root_uri : str
        Where runs live (the checkpoint root): a path or any ``pyarrow.fs`` URI.
    run_id : str
        A safe name (see :func:`~em_spark.storage.fs.validate_name`).
    s3_endpoint : str, optional
        Explicit S3 endpoint such as ``http://127.0.0.1:9000``.
    ttl_seconds : float
        How long a lease stays valid without renewal: the longest a re-run on
        another machine waits after the holder died without releasing.
    heartbeat_seconds : float, optional
        Interval of the background renewal started by ``with lock:`` and of the
        renewal done by :meth:`check`. Defaults to a fifth of the TTL; ``0``
        disables the background thread (then only :meth:`check` renews).
    clock : callable
        Wall-clock time in seconds (``time.time``); tests pass their own.
    """

    def __init__(
        self,
        root_uri: str,
        run_id: str,
        *,
        s3_endpoint: str | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        heartbeat_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.run_id = validate_name(run_id, "run id")  # before touching any filesystem
        self.ttl_seconds = _positive(ttl_seconds, "lock TTL (seconds)")
        if heartbeat_seconds is None:
            heartbeat_seconds = self.ttl_seconds / 5
        elif heartbeat_seconds != 0:
            heartbeat_seconds = _positive(heartbeat_seconds, "lock heartbeat (seconds)")
            if heartbeat_seconds >= self.ttl_seconds:
                raise ValueError(
                    f"lock heartbeat ({heartbeat_seconds} s) must be shorter than the lock TTL ({self.ttl_seconds} s)"
                )
        self.heartbeat_seconds = float(heartbeat_seconds)
        self._renew_after = self.heartbeat_seconds or self.ttl_seconds / 5
        self._clock = clock
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._fs, root_path = resolve(root_uri, s3_endpoint=s3_endpoint)
        self._dir = join(root_path, self.run_id, "lock")
        self._dir_uri = join(absolute_uri(root_uri), self.run_id, "lock")
        self.owner = uuid.uuid4().hex
        self._mutex = threading.RLock()
        self._held: Lease | None = None
        self._lost: str | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RunLock({redact_uri(self._dir_uri)!r}, held={self._held is not None})"

    @property
    def directory_uri(self) -> str:
        return self._dir_uri

    @property
    def lease(self) -> Lease | None:
        """The generation this lock holds, or ``None``."""
        return self._held

    # --- public -------------------------------------------------------------

    def __enter__(self) -> RunLock:
        self.acquire()
        try:
            self.start_heartbeat()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> Lease:
        """Take the run's lease, or raise :class:`RunLockedError` naming its live holder."""
        with self._mutex:
            if self._held is not None:
                raise RuntimeError(f"run {self.run_id}: this RunLock already holds the lease")
            self._lost = None
            for _ in range(_ATTEMPTS):
                newest = self._newest()
                now = self._clock()
                if newest is not None:
                    free_because = self._free_because(newest, now)
                    if free_because is None:
                        raise self._locked_error(newest)
                me = _this_process()
                lease = Lease(
                    run_id=self.run_id,
                    generation=newest.generation + 1 if newest is not None else 1,
                    owner=self.owner,
                    host=me.host,
                    machine=me.machine,
                    pid=me.pid,
                    pid_start=me.start,
                    since=now,
                    renewed=now,
                    expires=now + self.ttl_seconds,
                )
                if not self._create(lease):
                    continue  # another process changed the lease first: look again
                try:
                    won = self._confirm(lease)
                except BaseException:
                    # Unknown whether we hold it: withdraw rather than block the run until the TTL.
                    with contextlib.suppress(Exception):
                        delete_object(self._fs, self._path(lease.generation), missing_ok=True)
                    raise
                if not won:
                    continue
                self._held = lease
                if newest is not None and newest.lease is not None and not newest.lease.released:
                    self._log.warning(
                        "run %s: took over the lease of %s: %s", self.run_id, _holder(newest.lease), free_because
                    )
                elif newest is not None and newest.lease is None:
                    self._log.warning("run %s: replaced a damaged lease object: %s", self.run_id, free_because)
                self._log.debug(
                    "run %s: acquired lease generation %d until %s", self.run_id, lease.generation, _when(lease.expires)
                )
                return lease
            raise RunLockedError(
                f"run {self.run_id}: could not acquire its lease at {redact_uri(self._dir_uri)}: it changed "
                f"{_ATTEMPTS} times while trying (several processes are starting this run); "
                "wait for them, or use another run id"
            )

    def ensure_free(self) -> None:
        """Raise :class:`RunLockedError` if another process holds the run's lease now; write nothing.

        A cheap look before expensive work (loading the data) that the lease will guard: a
        second run of a running id stops at once. It does not reserve anything, so
        :meth:`acquire` must still follow, and decides any race.
        """
        with self._mutex:
            if self._held is not None:
                return
            newest = self._newest()
            if newest is not None and self._free_because(newest, self._clock()) is None:
                raise self._locked_error(newest)

    def renew(self) -> Lease:
        """Extend the lease by the TTL from now; :class:`LeaseLostError` if it was taken over."""
        with self._mutex:
            held = self._require_held()
            now = self._clock()
            lease = replace(held, generation=held.generation + 1, renewed=now, expires=now + self.ttl_seconds)
            if not self._create(lease):
                self._lose(f"generation {lease.generation} was written by another process")
            self._held = lease  # written: the next renewal must go past it, whatever follows
            if not self._confirm(lease):
                self._lose("another process wrote a newer generation")
            return lease

    def check(self) -> None:
        """Before a write that only the holder may make: raise :class:`LeaseLostError` if the lease
        was lost, and renew it when the last renewal is older than the heartbeat interval."""
        with self._mutex:
            held = self._require_held()
            if self._clock() >= held.renewed + self._renew_after:
                self.renew()

    def release(self) -> None:
        """Give the lease up (a released marker as the next generation). Never raises for I/O:
        a lease that cannot be released just expires."""
        self._stop_heartbeat()
        with self._mutex:
            held, self._held = self._held, None
            if held is None or self._lost is not None:
                return
            now = self._clock()
            marker = replace(held, generation=held.generation + 1, renewed=now, expires=now, released=True)
            try:
                if self._create(marker) and self._confirm(marker):
                    self._log.debug("run %s: released its lease", self.run_id)
                else:
                    self._log.warning("run %s: did not release the lease: another process holds it now", self.run_id)
            except Exception as exc:  # noqa: BLE001 - called from finally blocks; must not mask their error
                self._log.warning(
                    "run %s: could not release the lease (%s); it expires at %s", self.run_id, exc, _when(held.expires)
                )

    def start_heartbeat(self) -> None:
        """Renew in a daemon thread every ``heartbeat_seconds`` until :meth:`release`."""
        if not self.heartbeat_seconds or self._thread is not None:
            return
        self._require_held()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._heartbeat, args=(self._stop,), name=f"em_spark-lease-{self.run_id}", daemon=True
        )
        self._thread.start()

    # --- internals ------------------------------------------------------------

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_seconds):
            with self._mutex:
                if stop.is_set() or self._held is None:
                    return
                try:
                    self.renew()
                except LeaseLostError as exc:
                    self._log.error("%s", exc)
                    return
                except Exception as exc:  # noqa: BLE001 - transient I/O: try again at the next beat
                    self._log.warning(
                        "run %s: could not renew the lease (%s); it expires at %s unless a later renewal succeeds",
                        self.run_id,
                        exc,
                        _when(self._held.expires),
                    )

    def _stop_heartbeat(self) -> None:
        thread, stop = self._thread, self._stop
        self._thread = self._stop = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    def _require_held(self) -> Lease:
        if self._lost is not None:
            raise LeaseLostError(self._lost)
        if self._held is None:
            raise RuntimeError(f"run {self.run_id}: the lease is not held")
        return self._held

    def _lose(self, why: str) -> None:
        held, self._held = self._held, None
        assert held is not None  # (only a held lease is lost)
        newest = None
        with contextlib.suppress(Exception):
            newest = self._newest()
        now_held = (
            f"; it is now held by {_holder(newest.lease)}"
            if newest and newest.lease and not newest.lease.released
            else ""
        )
        self._lost = (
            f"run {self.run_id}: this process (host {held.host} pid {held.pid}) lost the run's lease "
            f"({why}{now_held}), so it stops before writing anything more for this run. The lease "
            f"expired at {_when(held.expires)} without renewal: was this process paused or cut off from "
            f"storage for longer than the lease TTL ({self.ttl_seconds:g} s)?"
        )
        raise LeaseLostError(self._lost)

    def _path(self, generation: int) -> str:
        return join(self._dir, _object_name(generation))

    def _generations(self) -> list[int]:
        return _OBJECT_NAMES.numbers(list_names(self._fs, self._dir))

    def _newest(self) -> _Newest | None:
        """The newest generation and its lease (``None`` inside when damaged), or ``None`` if none exists."""
        for _ in range(_ATTEMPTS):
            generations = self._generations()
            if not generations:
                return None
            generation = generations[-1]
            path = self._path(generation)
            try:
                data = read_object(self._fs, path)
            except FileNotFoundError:
                continue  # deleted after a newer generation was written: look again
            try:
                lease = Lease.decode(unseal(data))
                if lease.generation != generation or lease.run_id != self.run_id:
                    raise ValueError(f"it says generation {lease.generation} of run {lease.run_id!r}")
            except (CorruptObjectError, ValueError) as exc:
                mtime = None
                with contextlib.suppress(Exception):
                    info = self._fs.get_file_info(path)
                    mtime = info.mtime.timestamp() if info.mtime is not None else None
                return _Newest(generation, None, str(exc), mtime)
            return _Newest(generation, lease)
        raise RunLockedError(
            f"run {self.run_id}: its lease at {redact_uri(self._dir_uri)} changed {_ATTEMPTS} times while "
            "being read (another process is renewing it very fast); wait for it, or use another run id"
        )

    def _free_because(self, newest: _Newest, now: float) -> str | None:
        """Why the newest generation may be replaced by a newcomer, or ``None`` if it is live."""
        lease = newest.lease
        if lease is None:
            if newest.mtime is None or now >= newest.mtime + self.ttl_seconds:
                return f"the newest lease object is damaged ({newest.damage}) and older than the TTL"
            return None
        if lease.released:
            return "it was released"
        if now >= lease.expires:
            return f"it expired at {_when(lease.expires)} without renewal"
        if lease.machine == _this_process().machine and not _process_alive(lease.pid, lease.pid_start):
            return f"process {lease.pid} no longer exists on this machine"
        return None

    def _locked_error(self, newest: _Newest) -> RunLockedError:
        lease = newest.lease
        if lease is None:
            retry = _when((newest.mtime or self._clock()) + self.ttl_seconds)
            return RunLockedError(
                f"run {self.run_id}: its newest lease object {redact_uri(join(self._dir_uri, _object_name(newest.generation)))} "
                f"is damaged ({newest.damage}) and recent, so another process may be starting this run; "
                f"retry after {retry}, or use another run id"
            )
        until = _when(lease.expires)
        return RunLockedError(
            f"run {self.run_id} is already running ({lease.describe()}); wait for it, or use another run id; "
            f"if that process is dead on another machine, the lease expires at {until}",
            lease,
        )

    def _create(self, lease: Lease) -> bool:
        """Conditionally create ``lease``'s generation; ``False`` if another process already did."""
        if lease.generation > _MAX_GENERATION:
            raise ValueError(f"run {self.run_id}: lease generation {lease.generation} exceeds {_MAX_GENERATION}")
        path = self._path(lease.generation)
        try:
            _write(self._fs, path, seal(lease.encode()))
        except ObjectExistsError:
            # A retried request whose first attempt did succeed finds its own object.
            try:
                return Lease.decode(unseal(read_object(self._fs, path))) == lease
            except (OSError, CorruptObjectError, ValueError):
                return False
        return True

    def _confirm(self, lease: Lease) -> bool:
        """Whether the generation just created is still the newest; prune older ones if so.

        A process that read an old state may re-create a generation that had been
        deleted; a newer generation then exists, since the newest is never deleted.
        """
        generations = self._generations()
        if generations and generations[-1] != lease.generation:
            with contextlib.suppress(Exception):
                delete_object(self._fs, self._path(lease.generation), missing_ok=True)
            return False
        for older in generations:
            if older < lease.generation:
                with contextlib.suppress(Exception):  # housekeeping only
                    delete_object(self._fs, self._path(older), missing_ok=True)
        return True


# --- processes ----------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    host: str
    machine: str
    pid: int
    start: str | None


def _this_process() -> _Process:
    pid = os.getpid()
    host = socket.gethostname()
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_namespace = ""
    stat = _proc_stat(pid)
    return _Process(host, f"{host}|boot={boot}|{pid_namespace}", pid, stat[1] if stat else None)


def _process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) still runs on this machine.
    When in doubt: alive, so a live holder is never replaced; its lease still expires."""
    if os.name != "posix" or not isinstance(pid, int) or pid <= 0:
        return True  # (on Windows, os.kill(pid, 0) would send CTRL_C_EVENT)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # PermissionError: it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return start is None or started == start  # otherwise the pid was reused


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` from ``/proc/<pid>/stat``, or ``None`` where there is no /proc."""
    text = _read_text(f"/proc/{pid}/stat")
    fields = text.rpartition(")")[2].split()  # the command name in parentheses may contain spaces
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


# --- helpers --------------------------------------------------------------------


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    # One seam for tests that make racers collide.
    write_object(fs, path, data, overwrite=False)


def _object_name(generation: int) -> str:
    return _OBJECT_NAMES.name(generation)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _holder(lease: Lease) -> str:
    return f"host {lease.host} pid {lease.pid}"


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)
