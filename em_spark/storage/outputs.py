"""Staged outputs: a directory of output files is replaced only by a complete new one.

A job (``score``, ``impute``) writes its new output to a *staging* location next to the output,
checks it, and only then swaps it in. All of it lives in one work directory beside the output,
``<parent>/_<name>.__em-spark/``:

``staging-<token>``
    being written, or written but not yet checked. Never published; the next run deletes it.
``ready-<token>``
    checked and complete; about to be swapped in (local and renaming filesystems).
``old-<token>``
    the previous output after the swap, being deleted.
``publish-<token>.json``
    (object stores) the manifest of a publish in progress: which files are new, which old.

The work directory's leading ``_`` hides it from Spark and pyarrow readers of the parent (an
output that is itself a partition, ``.../date=2026-11-22``, must not grow a sibling partition),
while the names inside it are plain, so Spark reads a staging location back without warning
that "all paths were ignored". It is removed once empty. The token is 32 hex digits, so
:meth:`StagedOutput.recover` only ever touches names it made.

What a reader of the output sees during an overwrite:

* **Local filesystem (Linux, glibc >= 2.28).** ``renameat2(RENAME_EXCHANGE)`` swaps the
  ready directory and the output in one step: a reader opening the output sees the whole
  old output or the whole new one, never a mix and never nothing. (A reader that already
  listed the old directory keeps reading the old files until it is done with them, or gets
  ``FileNotFoundError`` if they are deleted under it, as with any overwrite.)
* **Local without RENAME_EXCHANGE, HDFS and other renaming filesystems.** Two renames
  (output -> old, ready -> output): between them, a few microseconds long, the output path
  does not exist. A job killed right there leaves no output until the next run of the same
  command, which restores the complete new output (``ready-``) first thing.
* **Object stores (s3, s3a, gs).** No rename: the new files are copied under the output
  prefix, then the old ones are deleted. Between the two steps a reader listing the prefix
  sees **both sets of part files: every row twice (old and new values)**, and during the
  copy a growing part of the new set. Part files are named by Spark per job, so the two
  sets do not collide; ``_SUCCESS`` is copied last. A job killed in that window leaves
  the mix until the next run of the same command, which finishes the publish from the
  manifest (copies the rest, deletes the old files) before doing anything else.

A job killed at any moment therefore leaves the old output or the new one (or, on an
object store, a publish that the next run completes). One writer per output at a time:
a second run of the same command while one is running deletes the first one's staging.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import posixpath
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from em_spark.storage.errors import StorageError
from em_spark.storage.fs import exists, read_object, redact_uri, resolve, write_object

__all__ = ["SUCCESS_MARKER", "OutputStagingError", "StagedOutput", "rename_exchange_supported"]

SUCCESS_MARKER = "_SUCCESS"
_OBJECT_STORES = ("s3", "gcs")
_KINDS = ("staging", "ready", "old", "publish")


class OutputStagingError(StorageError):
    """A staged output is incomplete, or cannot be swapped in; the message says which."""


def _reached(step: str) -> None:
    """Called at each step of a publish: a seam for fault-injection tests (killed right here)."""


# --- renameat2 -------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", 95), getattr(errno, "EOPNOTSUPP", 95)}


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), looked up once; None where it does not exist."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _rename2(src: str, dst: str, flags: int) -> bool:
    """``renameat2(src, dst, flags)``: True when done, False when this system or filesystem
    does not have it (the caller falls back); any other failure raises ``OSError``."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def rename_exchange_supported(directory: str) -> bool:
    """Whether ``renameat2(RENAME_EXCHANGE)`` works in ``directory`` (tried on two empty dirs)."""
    a, b = (os.path.join(directory, f"._exchange-probe-{uuid.uuid4().hex}") for _ in range(2))
    os.mkdir(a)
    try:
        os.mkdir(b)
        try:
            return _rename2(a, b, _RENAME_EXCHANGE)
        finally:
            os.rmdir(b)
    finally:
        os.rmdir(a)


# --- names --------------------------------------------------------------------------


def _split_query(uri: str) -> tuple[str, str]:
    if "://" in uri:
        base, sep, query = uri.partition("?")
        return base, sep + query
    return uri, ""


def _storage_uri(uri: str) -> str:
    """The URI pyarrow understands for ``uri``: Hadoop's s3a:// and s3n:// are s3://."""
    scheme, sep, rest = uri.partition("://")
    return f"s3://{rest}" if sep and scheme.lower() in ("s3a", "s3n") else uri


@dataclass(frozen=True)
class _Leftover:
    kind: str
    token: str
    path: str  # inside the filesystem
    mtime: float


class StagedOutput:
    """The output at ``uri`` (a directory of files, e.g. Spark's Parquet output) and the
    staging location a new version is written to (:attr:`staging_uri`) before
    :meth:`publish` swaps it in. See the module doc for what readers see meanwhile.

    Typical use::

        out = StagedOutput(uri)
        out.recover()                  # finish or clean up what a killed run left
        write_files_to(out.staging_uri)
        out.check_staged()             # _SUCCESS present
        ...read it back...
        out.publish()                  # or out.discard() when anything failed
    """

    def __init__(self, uri: str, *, s3_endpoint: str | None = None, token: str | None = None) -> None:
        base, query = _split_query(uri)
        base = base.rstrip("/")
        parent, _, name = base.rpartition("/")
        if not name or not parent or parent.endswith((":/", "://")):
            raise ValueError(f"output {redact_uri(uri)!r} is the root of its store; name a directory inside it")
        self.uri = base + query
        self.name = name
        self.token = token or uuid.uuid4().hex
        if not re.fullmatch(r"[0-9a-f]{32}", self.token):
            raise ValueError(f"staging token must be 32 hex digits, got {self.token!r}")
        self._parent_uri, self._query = parent, query
        self.fs, self.path = resolve(_storage_uri(self.uri), s3_endpoint=s3_endpoint)
        self.path = self.path.rstrip("/") or self.path
        self.parent = posixpath.dirname(self.path)
        self.work = posixpath.join(self.parent, f"_{name}.__em-spark")
        self._work_uri = f"{parent}/_{name}.__em-spark"
        self.kind = (
            "object" if self.fs.type_name in _OBJECT_STORES else ("local" if self.fs.type_name == "local" else "rename")
        )
        self._pattern = re.compile(rf"({'|'.join(_KINDS)})-([0-9a-f]{{32}})(\.json)?")

    # -- names -------------------------------------------------------------------------
    def _sibling(self, kind: str, token: str | None = None) -> str:
        suffix = ".json" if kind == "publish" else ""
        return f"{kind}-{token or self.token}{suffix}"

    @property
    def staging_uri(self) -> str:
        """Where the new output is written (a URI of the same scheme as the output)."""
        return f"{self._work_uri}/{self._sibling('staging')}{self._query}"

    @property
    def staging_path(self) -> str:
        return posixpath.join(self.work, self._sibling("staging"))

    def exists(self) -> bool:
        """Whether there is an output now (a directory, or on object stores any object under it)."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return False
        if self.kind == "object" and info.type == pafs.FileType.Directory:
            return bool(self._files(self.path))
        return True

    def _files(self, root: str) -> list[str]:
        """Paths of the files under ``root``, relative to it, sorted."""
        selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
        infos = self.fs.get_file_info(selector)
        return sorted(posixpath.relpath(i.path, root) for i in infos if i.type == pafs.FileType.File)

    def leftovers(self) -> list[_Leftover]:
        """Staging, ready, old and publish names in this output's work directory, oldest first."""
        selector = pafs.FileSelector(self.work, allow_not_found=True, recursive=False)
        found = []
        for info in self.fs.get_file_info(selector):
            match = self._pattern.fullmatch(info.base_name)
            if match and (match.group(1) == "publish") == bool(match.group(3)):
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                found.append(_Leftover(match.group(1), match.group(2), info.path, mtime))
        return sorted(found, key=lambda x: (x.mtime, x.token))

    # -- the steps -----------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Finish or undo what a killed run of this output left; returns one line per action.

        Local and renaming filesystems: when the output is missing, the newest complete new
        output (``ready-``) is renamed into place, else the newest previous one (``old-``)
        is put back; every other leftover is deleted. Object stores: a publish with a
        manifest is finished (the rest of the new files copied, the old ones deleted); other
        staging prefixes are deleted. Staging data is never read as output.
        """
        actions: list[str] = []
        leftovers = self.leftovers()
        if self.kind == "object":
            for item in leftovers:
                if item.kind == "publish":
                    self._finish_publish(item.path)
                    actions.append(f"finished the interrupted publish {item.token} of {self.uri}")
            leftovers = [x for x in self.leftovers() if x.kind != "publish"]
        elif not self.exists():
            for kind, verb in (
                ("ready", "rolled forward the complete new output"),
                ("old", "restored the previous output"),
            ):
                candidates = [x for x in leftovers if x.kind == kind]
                if candidates:
                    chosen = candidates[-1]
                    self.fs.move(chosen.path, self.path)
                    actions.append(f"{verb} {posixpath.basename(chosen.path)} to {self.uri}")
                    leftovers = [x for x in leftovers if x is not chosen]
                    break
        for item in leftovers:
            self._delete_tree(item.path)
            actions.append(f"deleted the leftover {posixpath.basename(item.path)}")
        self._remove_work_if_empty()
        return actions

    def check_staged(self) -> None:
        """Raise :class:`OutputStagingError` unless the staging location holds a committed output."""
        marker = posixpath.join(self.staging_path, SUCCESS_MARKER)
        if not exists(self.fs, marker):
            raise OutputStagingError(
                f"the new output at {redact_uri(self.staging_uri)} has no {SUCCESS_MARKER} marker: the write did not "
                f"complete; {redact_uri(self.uri)} was left as it was"
            )

    def discard(self) -> None:
        """Delete the staging location (after a failed write or check); the output is untouched."""
        with contextlib.suppress(FileNotFoundError):
            self._delete_tree(self.staging_path)
        self._remove_work_if_empty()

    def publish(self, *, replace: bool = True) -> str:
        """Swap the checked staging output in place of the output; returns how (for the log).

        With ``replace`` false an existing output is refused (:class:`OutputStagingError`);
        locally that holds even against a writer racing for the same path (RENAME_NOREPLACE).
        """
        self.check_staged()
        if not replace and self.exists():
            raise self._appeared()
        _reached("staged")
        if self.kind == "object":
            return self._publish_object()
        return self._publish_rename(replace)

    def _appeared(self) -> OutputStagingError:
        return OutputStagingError(
            f"{redact_uri(self.uri)} exists (another writer created it while this output was written); "
            f"it was left as it was"
        )

    # -- renaming filesystems ------------------------------------------------------------
    def _publish_rename(self, replace: bool) -> str:
        ready = posixpath.join(self.work, self._sibling("ready"))
        old = posixpath.join(self.work, self._sibling("old"))
        self.fs.move(self.staging_path, ready)
        _reached("ready")
        if not self.exists() and self._rename_noreplace(ready):
            self._remove_work_if_empty()
            _reached("published")
            return "renamed into place (first write)"
        if not replace:
            self._delete_tree(ready)
            self._remove_work_if_empty()
            raise self._appeared()
        return self._publish_rename_over(ready, old)

    def _rename_noreplace(self, ready: str) -> bool:
        """Rename ``ready`` onto the (absent) output; False when the output exists after all."""
        if self.kind == "local":
            try:
                if _rename2(ready, self.path, _RENAME_NOREPLACE):
                    return True
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
        if self.exists():
            return False
        self.fs.move(ready, self.path)  # a check, then a rename: racing writers may both pass it
        return True

    def _publish_rename_over(self, ready: str, old: str) -> str:
        if self.kind == "local" and _rename2(ready, self.path, _RENAME_EXCHANGE):
            # Atomic: the output path now holds the new files, `ready` the old ones.
            _reached("exchanged")
            self.fs.move(ready, old)
            how = "swapped in atomically (renameat2 RENAME_EXCHANGE)"
        else:
            self.fs.move(self.path, old)
            _reached("between-renames")  # no output for this instant; recover() rolls forward
            self.fs.move(ready, self.path)
            how = "swapped in by two renames"
        _reached("before-cleanup")
        self._delete_tree(old)
        self._remove_work_if_empty()
        _reached("published")
        return how

    # -- object stores -------------------------------------------------------------------
    def _publish_object(self) -> str:
        new = self._files(self.staging_path)
        old = self._files(self.path)
        manifest = {"format": 1, "staging": self.staging_path, "output": self.path, "new": new, "old": old}
        manifest_path = posixpath.join(self.work, self._sibling("publish"))
        write_object(self.fs, manifest_path, json.dumps(manifest).encode(), overwrite=False)
        _reached("manifest")
        self._finish_publish(manifest_path, manifest)
        return "published (new files copied, then the old ones deleted)"

    def _finish_publish(self, manifest_path: str, manifest: dict | None = None) -> None:
        """Copy the new files, delete the old ones, remove the staging prefix and the
        manifest. Idempotent: a re-run after a kill at any point finishes the same publish."""
        if manifest is None:
            manifest = json.loads(read_object(self.fs, manifest_path))
        staging, output = manifest["staging"], manifest["output"]
        new = sorted(manifest["new"], key=lambda rel: (posixpath.basename(rel) == SUCCESS_MARKER, rel))
        staging_files = set(self._files(staging))
        for i, rel in enumerate(new):
            if rel in staging_files:  # gone only once every copy was done (the staging is deleted last)
                self.fs.copy_file(posixpath.join(staging, rel), posixpath.join(output, rel))
            _reached(f"copied-{i + 1}")
        _reached("copied")  # both sets of files are visible under the output here
        keep = set(new)
        for rel in manifest["old"]:
            if rel not in keep:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(posixpath.join(output, rel))
        _reached("old-deleted")
        self._delete_tree(staging)
        _reached("before-cleanup")
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(manifest_path)
        self._remove_work_if_empty()
        _reached("published")

    # -- helpers ---------------------------------------------------------------------------
    def _remove_work_if_empty(self) -> None:
        """Remove the work directory when nothing is left in it (on object stores: no objects but
        directory markers, which pyarrow and Hadoop may have made)."""
        if self.kind == "object":
            if exists(self.fs, self.work) and not self._files(self.work):
                with contextlib.suppress(OSError):
                    self.fs.delete_dir(self.work)
            return
        infos = self.fs.get_file_info(pafs.FileSelector(self.work, allow_not_found=True))
        if not infos and exists(self.fs, self.work):
            with contextlib.suppress(OSError):  # a concurrent writer's staging may have just appeared
                if self.kind == "local":
                    os.rmdir(self.work)
                else:
                    self.fs.delete_dir(self.work)

    def _delete_tree(self, path: str) -> None:
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type == pafs.FileType.File:
            self.fs.delete_file(path)
        elif self.kind == "local":
            shutil.rmtree(path)
        else:
            self.fs.delete_dir(path)
