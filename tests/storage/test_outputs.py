"""Staged outputs: the output is replaced only by a complete new one, on local disks and S3,
and a publish killed at any step leaves the old output or the new one (finished by recover)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from em_spark.storage import outputs
from em_spark.storage.outputs import OutputStagingError, StagedOutput, rename_exchange_supported

OLD = {"part-00000-aaa.parquet": b"old rows 0", "date=1/part-00001-aaa.parquet": b"old rows 1", "_SUCCESS": b""}
NEW = {"part-00000-bbb.parquet": b"new rows 0", "date=2/part-00001-bbb.parquet": b"new rows 1", "_SUCCESS": b""}

LOCAL_STEPS = ["staged", "ready", "exchanged", "before-cleanup", "published"]
FALLBACK_STEPS = ["staged", "ready", "between-renames", "before-cleanup", "published"]
OBJECT_STEPS = ["staged", "manifest", "copied-1", "copied-2", "copied", "old-deleted", "before-cleanup", "published"]


class Killed(BaseException):
    """Stands for the process dying at a step (nothing after it runs)."""


def _put(fs: pafs.FileSystem, root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = f"{root}/{rel}"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(data)


def _read(fs: pafs.FileSystem, root: str) -> dict[str, bytes]:
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(root) + 1 :]] = f.read()
    return out


def _siblings(fs: pafs.FileSystem, parent: str) -> list[str]:
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)))


def _kill_at(monkeypatch, step: str) -> None:
    def reached(name: str) -> None:
        if name == step:
            raise Killed(step)

    monkeypatch.setattr(outputs, "_reached", reached)


def test_this_machine_has_rename_exchange(tmp_path):
    # The atomic local swap needs glibc >= 2.28 and a filesystem with RENAME_EXCHANGE (ext4, xfs, tmpfs).
    assert rename_exchange_supported(str(tmp_path))


def test_first_write_is_one_rename_and_leaves_no_staging(tmp_path):
    out = StagedOutput((tmp_path / "scored").as_uri())
    assert out.staging_uri.startswith((tmp_path / "_scored.__em-spark" / "staging-").as_uri()) and not out.exists()
    _put(out.fs, out.staging_path, NEW)
    out.publish()
    assert _read(out.fs, out.path) == NEW and _siblings(out.fs, str(tmp_path)) == ["scored"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_overwrite_swaps_in_the_new_output(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(outputs, "_rename2", lambda src, dst, flags: False)
    out = StagedOutput(str(tmp_path / "scored"))
    _put(out.fs, out.path, OLD)
    _put(out.fs, out.staging_path, NEW)
    how = out.publish()
    assert ("atomically" in how) == exchange
    assert _read(out.fs, out.path) == NEW and _siblings(out.fs, str(tmp_path)) == ["scored"]


def test_an_incomplete_staging_is_refused_and_the_output_kept(tmp_path):
    out = StagedOutput(str(tmp_path / "scored"))
    _put(out.fs, out.path, OLD)
    _put(out.fs, out.staging_path, {"part-0.parquet": b"half"})  # no _SUCCESS: the write did not finish
    with pytest.raises(OutputStagingError, match="no _SUCCESS marker"):
        out.publish()
    out.discard()
    assert _read(out.fs, out.path) == OLD and _siblings(out.fs, str(tmp_path)) == ["scored"]


@pytest.mark.parametrize("previous", [True, False], ids=["overwrite", "first-write"])
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_killed_at_any_step_leaves_old_or_new_and_recover_cleans_up(tmp_path, monkeypatch, exchange, previous):
    if not exchange:
        monkeypatch.setattr(outputs, "_rename2", lambda src, dst, flags: False)
    for step in FALLBACK_STEPS if not exchange else LOCAL_STEPS:
        root = tmp_path / f"{step}"
        root.mkdir()
        out = StagedOutput(str(root / "scored"))
        if previous:
            _put(out.fs, out.path, OLD)
        _put(out.fs, out.staging_path, NEW)
        _kill_at(monkeypatch, step)
        with contextlib.suppress(Killed):
            out.publish()
        monkeypatch.setattr(outputs, "_reached", lambda name: None)
        seen = _read(out.fs, out.path)
        if step == "between-renames" and previous:
            assert seen == {}, "the one instant of the two-rename fallback without an output"
        else:
            assert seen in ((OLD if previous else {}), NEW), step
        # The next run of the same command first recovers: the output is whole, nothing else is left.
        actions = StagedOutput(str(root / "scored")).recover()
        after = _read(out.fs, out.path)
        if seen:
            assert after == seen, (step, actions)  # an output that is there is never changed by recovery
        else:  # no output: the checked new one is rolled forward (first write, or between the renames)
            assert after == (NEW if step != "staged" else {}), (step, actions)
        assert _siblings(out.fs, str(root)) == (["scored"] if after else []), step


def test_recover_touches_only_its_own_names(tmp_path):
    (tmp_path / "scored").mkdir()
    work = tmp_path / "_scored.__em-spark"
    work.mkdir()
    for name in ("staging-notahextoken", "other-" + "a" * 32, "keep"):
        (work / name).mkdir()
    for name in ("scored.__staging-" + "a" * 32, "_other.__em-spark"):
        (tmp_path / name).mkdir()
    StagedOutput(str(tmp_path / "scored")).recover()
    assert len(list(work.iterdir())) == 3 and len(list(tmp_path.iterdir())) == 4


def test_the_root_of_a_store_is_refused(tmp_path):
    for uri in ("file:///", "s3://bucket", "/"):
        with pytest.raises(ValueError, match="root of its store"):
            StagedOutput(uri)


# --- S3 (moto): publish the new files, then delete the old ones --------------------------------


def _s3(s3_server, uri: str) -> StagedOutput:
    return StagedOutput(uri, s3_endpoint=s3_server.endpoint)


def test_s3_overwrite_publishes_then_deletes_the_old_files(s3_server, s3_bucket):
    out = _s3(s3_server, f"{s3_bucket}/scored/t1")
    _put(out.fs, out.path, OLD)
    _put(out.fs, out.staging_path, NEW)
    seen_between = {}

    def reached(step):
        if step == "copied":
            seen_between.update(_read(out.fs, out.path))

    outputs._reached, real = reached, outputs._reached
    try:
        out.publish()
    finally:
        outputs._reached = real
    assert _read(out.fs, out.path) == NEW
    # What a reader sees between the copy and the delete: both sets of part files.
    assert seen_between == {**OLD, **NEW}
    assert _siblings(out.fs, out.parent) == ["t1"]


def test_s3_a_first_write_through_the_s3a_scheme(s3_server, s3_bucket):
    out = _s3(s3_server, f"{s3_bucket.replace('s3://', 's3a://')}/scored/t1")
    assert out.staging_uri.startswith("s3a://") and out.kind == "object" and not out.exists()
    _put(out.fs, out.staging_path, NEW)
    out.publish()
    assert _read(out.fs, out.path) == NEW and _siblings(out.fs, out.parent) == ["t1"]


def test_s3_killed_at_any_step_is_finished_by_the_next_run(s3_server, s3_bucket, monkeypatch):
    for step in OBJECT_STEPS:
        out = _s3(s3_server, f"{s3_bucket}/{step}/scored")
        _put(out.fs, out.path, OLD)
        _put(out.fs, out.staging_path, NEW)
        _kill_at(monkeypatch, step)
        with contextlib.suppress(Killed):
            out.publish()
        monkeypatch.setattr(outputs, "_reached", lambda name: None)
        seen = _read(out.fs, out.path)
        # Old files all there until the copy is done; new files all there after it.
        assert set(OLD) <= set(seen) or set(NEW) <= set(seen), step
        actions = _s3(s3_server, f"{s3_bucket}/{step}/scored").recover()
        expected = OLD if step == "staged" else NEW  # a manifest means the publish is finished
        assert _read(out.fs, out.path) == expected, (step, actions)
        assert _siblings(out.fs, out.parent) == ["scored"], step


def test_sibling_names_carry_the_output_name_and_the_run_token(tmp_path):
    out = StagedOutput(str(tmp_path / "scored"), token="c" * 32)
    assert Path(out.staging_path) == tmp_path / "_scored.__em-spark" / ("staging-" + "c" * 32)
    with pytest.raises(ValueError, match="32 hex digits"):
        StagedOutput(str(tmp_path / "scored"), token="../x")


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2-noreplace", "check-then-rename"])
def test_without_replace_an_output_that_appeared_meanwhile_is_kept(tmp_path, monkeypatch, noreplace):
    if not noreplace:
        monkeypatch.setattr(outputs, "_rename2", lambda src, dst, flags: False)
    out = StagedOutput(str(tmp_path / "scored"))
    _put(out.fs, out.staging_path, NEW)
    real_exists = StagedOutput.exists
    calls = []

    def racing_exists(self):  # another writer publishes right after the first check
        calls.append(1)
        if len(calls) == 2:
            _put(self.fs, self.path, OLD)
        return real_exists(self)

    monkeypatch.setattr(StagedOutput, "exists", racing_exists)
    with pytest.raises(OutputStagingError, match="another writer"):
        out.publish(replace=False)
    assert _read(out.fs, out.path) == OLD
    assert _siblings(out.fs, str(tmp_path)) == ["scored"]
