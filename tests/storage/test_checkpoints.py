"""The checkpoint store: commit, fall back past torn objects, retention."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from em_spark.storage import (
    CheckpointStore,
    CorruptObjectError,
    InvalidNameError,
    ObjectExistsError,
    SequenceConflictError,
    get_sealed,
    seal,
)
from em_spark.storage import checkpoints as checkpoints_module
from em_spark.storage import fs as storage_fs

LOGGER = "em_spark.storage.checkpoints"


@dataclass
class Place:
    """Where a store lives, and where its checkpoints land on disk."""

    make: Callable[..., CheckpointStore]
    root: Path
    readable_uris: bool  # whether the returned URIs resolve on their own

    def dir(self, run_id: str = "r1") -> Path:
        return self.root / run_id / "checkpoints"

    def obj(self, sequence: int, run_id: str = "r1") -> Path:
        return self.dir(run_id) / f"ckpt-{sequence:010d}.emck"


@pytest.fixture(params=["file-uri", "plain-path", "relative-path", "non-local"])
def place(request, tmp_path, monkeypatch) -> Place:
    root = tmp_path / "runs"
    kind = request.param
    if kind == "file-uri":
        return Place(lambda run_id="r1", **kw: CheckpointStore(f"file://{root}", run_id, **kw), root, True)
    if kind == "plain-path":
        return Place(lambda run_id="r1", **kw: CheckpointStore(str(root), run_id, **kw), root, True)
    if kind == "relative-path":
        monkeypatch.chdir(tmp_path)
        return Place(lambda run_id="r1", **kw: CheckpointStore("runs", run_id, **kw), root, True)
    # A filesystem the code does not treat as local, so commits take the direct-write
    # path an object store takes, while the objects stay inspectable on disk.
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(checkpoints_module, "resolve", lambda uri, s3_endpoint=None: (subtree, "runs"))
    return Place(lambda run_id="r1", **kw: CheckpointStore("remote://bucket/runs", run_id, **kw), root, False)


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_commit_then_latest_round_trip(place):
    store = place.make()
    assert store.latest() is None and store.sequences() == []
    uri1 = store.commit(1, b"params one")
    uri2 = store.commit(2, b"params two")
    latest = store.latest()
    assert (latest.sequence, latest.payload, latest.uri) == (2, b"params two", uri2)
    assert store.sequences() == [1, 2]
    assert uri2.endswith("/r1/checkpoints/ckpt-0000000002.emck")
    assert place.obj(2).exists() and place.obj(1).exists()
    if place.readable_uris:
        assert get_sealed(uri1) == b"params one"  # the URI is absolute and usable as is
    assert not [n for n in os.listdir(place.dir()) if n.startswith(".")]


def test_objects_on_disk_are_sealed_payloads(place):
    place.make().commit(0, b"abc")
    assert place.obj(0).read_bytes() == seal(b"abc")


def test_a_new_store_instance_resumes_from_the_same_objects(place):
    place.make().commit(5, b"five")
    assert place.make().latest().payload == b"five"


def test_torn_latest_falls_back_to_the_previous_with_a_warning(place, caplog):
    store = place.make()
    for sequence in (1, 2, 3):
        store.commit(sequence, f"p{sequence}".encode())
    _truncate(place.obj(3))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        latest = place.make().latest()
    assert (latest.sequence, latest.payload) == (2, b"p2")
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ckpt-0000000003.emck" in record.getMessage()
    assert "fell back to sequence 2" in record.getMessage()
    assert "r1" in record.getMessage()


def test_garbage_at_a_higher_sequence_is_ignored(place, caplog):
    store = place.make()
    store.commit(3, b"good")
    place.obj(9).write_bytes(b"\x00garbage that is not a sealed object")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        latest = store.latest()
    assert (latest.sequence, latest.payload) == (3, b"good")
    assert "ckpt-0000000009.emck" in caplog.text and "fell back to sequence 3" in caplog.text


def test_names_that_do_not_look_like_checkpoints_are_ignored(place):
    store = place.make()
    store.commit(2, b"two")
    decoys = ["notes.txt", "ckpt-12.emck", "ckpt-0000000007.emck.bak", ".ckpt-0000000008.emck.tmp-1"]
    decoys += ["ckpt-000000000a.emck", "ckpt-00000000001.emck"]
    for name in decoys:
        (place.dir() / name).write_bytes(seal(b"decoy"))
    assert store.sequences() == [2]
    assert store.latest().payload == b"two"


def test_all_corrupt_gives_none_with_a_warning(place, caplog):
    store = place.make()
    store.commit(1, b"one")
    _truncate(place.obj(1), keep=3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.latest() is None
    assert "no valid checkpoint remains" in caplog.text


def test_retention_keeps_keep_last_newest(place):
    store = place.make(keep_last=3)
    for sequence in range(1, 7):
        store.commit(sequence, b"x")
        assert store.sequences() == list(range(max(1, sequence - 2), sequence + 1))


def test_keep_last_one_never_deletes_the_one_just_committed(place):
    store = place.make(keep_last=1)
    for sequence in (10, 20, 30):
        store.commit(sequence, str(sequence).encode())
        assert store.sequences() == [sequence]
        assert store.latest().payload == str(sequence).encode()


def test_retention_counts_only_valid_checkpoints(place):
    store = place.make(keep_last=3)
    for sequence in (1, 2, 3):
        store.commit(sequence, b"x")
    _truncate(place.obj(2))
    place.make(keep_last=3).commit(4, b"x")  # a fresh process: nothing is known to be valid
    # 4, 3 and 1 are the three newest valid ones; the torn 2 goes.
    assert store.sequences() == [1, 3, 4]


def test_commit_replaces_a_torn_object_at_the_same_sequence(place, caplog):
    store = place.make()
    store.commit(1, b"one")
    store.commit(2, b"two, first attempt")
    _truncate(place.obj(2))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.commit(2, b"two, second attempt")
    assert "replacing corrupt checkpoint" in caplog.text
    latest = store.latest()
    assert (latest.sequence, latest.payload) == (2, b"two, second attempt")


def test_commit_over_a_valid_object_is_refused(place):
    store = place.make()
    store.commit(1, b"one")
    with pytest.raises(SequenceConflictError, match="already exists") as info:
        store.commit(1, b"other")
    assert isinstance(info.value, ObjectExistsError) and isinstance(info.value, FileExistsError)
    assert store.latest().payload == b"one"


def test_commit_below_a_newer_valid_checkpoint_is_refused(place):
    """A run restarted from scratch under the same id would otherwise be shadowed by latest()."""
    store = place.make(keep_last=2)
    for sequence in range(5):
        store.commit(sequence, b"first run")
    with pytest.raises(SequenceConflictError, match="newer valid checkpoint 4"):
        place.make().commit(0, b"second run")
    assert store.sequences() == [3, 4]


def test_commit_below_only_corrupt_newer_objects_is_allowed(place):
    store = place.make()
    store.commit(3, b"three")
    place.obj(9).write_bytes(b"garbage")
    store.commit(4, b"four")
    assert store.latest().payload == b"four"
    assert 9 in store.sequences()  # objects above the committed sequence are left alone


def test_run_id_with_dots_is_refused_before_anything_is_written(tmp_path):
    before = sorted(os.listdir(tmp_path.parent))
    for run_id in ["..", "../evil", "a/../b", "%2e%2e", "", "a/b"]:
        with pytest.raises(InvalidNameError, match="run id"):
            CheckpointStore(str(tmp_path / "runs"), run_id)
    assert sorted(os.listdir(tmp_path.parent)) == before
    assert os.listdir(tmp_path) == []


def test_constructing_a_store_writes_nothing(tmp_path):
    CheckpointStore(str(tmp_path / "runs"), "r1")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("keep_last", [0, -1, True, 1.5, "3"])
def test_keep_last_is_validated(tmp_path, keep_last):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(str(tmp_path), "r1", keep_last=keep_last)


@pytest.mark.parametrize(
    "sequence, error",
    [(-1, ValueError), (10**10, ValueError), (True, TypeError), (1.0, TypeError), ("1", TypeError)],
)
def test_sequence_is_validated(tmp_path, sequence, error):
    with pytest.raises(error):
        CheckpointStore(str(tmp_path), "r1").commit(sequence, b"x")
    assert not (tmp_path / "r1").exists()


def test_numpy_integer_sequences_are_accepted(tmp_path):
    import numpy as np

    store = CheckpointStore(str(tmp_path), "r1")
    store.commit(np.int64(7), b"x")
    assert store.latest().sequence == 7 and type(store.latest().sequence) is int


def test_a_writer_dying_midway_leaves_the_previous_checkpoint_current(place, monkeypatch):
    store = place.make()
    store.commit(1, b"one")
    real_open = storage_fs._open_output_stream

    class Dying:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.stream.close()
            return False

        def write(self, data):
            self.stream.write(bytes(data)[:10])
            raise OSError("killed")

    monkeypatch.setattr(storage_fs, "_open_output_stream", lambda fs, path: Dying(real_open(fs, path)))
    with pytest.raises(OSError, match="killed"):
        store.commit(2, b"two")
    monkeypatch.undo()
    assert store.latest().payload == b"one"
    store.commit(2, b"two")
    assert store.latest().payload == b"two"


def test_a_commit_that_reads_back_damaged_raises_and_prunes_nothing(place, monkeypatch):
    store = place.make(keep_last=1)
    store.commit(1, b"one")
    real_write = checkpoints_module.write_object

    def write_one_byte_short(fs, path, data, overwrite=False):
        real_write(fs, path, data[:-1], overwrite=overwrite)

    monkeypatch.setattr(checkpoints_module, "write_object", write_one_byte_short)
    with pytest.raises(CorruptObjectError, match="damaged right after it was written"):
        store.commit(2, b"two")
    assert store.sequences() == [1, 2]
    assert store.latest().payload == b"one"


def test_pruning_failure_is_reported_but_the_commit_stands(place, monkeypatch, caplog):
    store = place.make(keep_last=1)
    store.commit(1, b"one")

    def refuse(*args, **kwargs):
        raise PermissionError("delete denied")

    monkeypatch.setattr(checkpoints_module, "delete_object", refuse)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.commit(2, b"two")
    assert "pruning older checkpoints failed" in caplog.text and "delete denied" in caplog.text
    assert store.latest().payload == b"two"


def test_read_errors_other_than_damage_propagate(place, monkeypatch):
    """A network error is not a torn checkpoint: falling back past it would resume from stale state."""
    store = place.make()
    store.commit(1, b"one")

    def unreachable(fs, path):
        raise ConnectionError("storage unreachable")

    monkeypatch.setattr(checkpoints_module, "read_object", unreachable)
    with pytest.raises(ConnectionError):
        store.latest()


def test_warnings_go_to_the_given_logger(tmp_path, caplog):
    logger = logging.getLogger("em_spark.tests.custom")
    store = CheckpointStore(str(tmp_path), "r1", logger=logger)
    store.commit(1, b"one")
    store.commit(2, b"two")
    _truncate(tmp_path / "r1" / "checkpoints" / "ckpt-0000000002.emck")
    with caplog.at_level(logging.WARNING, logger="em_spark.tests.custom"):
        store.latest()
    assert [r.name for r in caplog.records] == ["em_spark.tests.custom"]


def test_logs_and_repr_never_show_credentials(tmp_path, monkeypatch, caplog):
    subtree = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(checkpoints_module, "resolve", lambda uri, s3_endpoint=None: (subtree, "runs"))
    store = CheckpointStore("s3://AKIA:hunter2@bucket/runs", "r1")
    store.commit(1, b"one")
    store.commit(2, b"two")
    _truncate(tmp_path / "runs" / "r1" / "checkpoints" / "ckpt-0000000002.emck")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        store.latest()
        store.commit(2, b"two again")
    assert caplog.records and "hunter2" not in caplog.text
    assert "hunter2" not in repr(store)
