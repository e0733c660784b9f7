"""Filesystem resolution, safe names and object primitives over ``pyarrow.fs``.

Objects are whole byte strings written once. On a local filesystem a write goes
to a hidden temporary name and is then renamed (or hard-linked, when overwriting
is refused) onto its final name, so a reader never sees a half-written file
under the final name. S3 has no rename; there boto3 publishes each object in one
request, conditional when overwriting is refused (see :mod:`.s3`). Other
filesystems (GCS, HDFS) may publish a partial object when a writer fails, so they
are written directly. Everywhere, readers verify a checksum instead of trusting
that an object exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import urllib.parse
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from em_spark.storage import s3
from em_spark.storage.errors import CorruptObjectError, InvalidNameError, ObjectExistsError
from em_spark.storage.frame import seal, unseal

__all__ = [
    "NAME_PATTERN",
    "absolute_uri",
    "check_writable",
    "delete_object",
    "exists",
    "file_uri",
    "get_sealed",
    "join",
    "list_names",
    "local_path",
    "put_sealed",
    "read_object",
    "redact_uri",
    "resolve",
    "validate_name",
    "write_object",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")
_SECRET_QUERY_RE = re.compile(r"(?i)([?&][^=&#]*(?:key|secret|token|password|credential)[^=&#]*=)[^&#]*")


# --- names and URIs ---------------------------------------------------------


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is one safe path segment, else raise :class:`InvalidNameError`.

    Names become object keys. A key built from ``..`` or a slash escapes its
    prefix on local and S3 filesystems alike, so only a conservative alphabet is
    allowed, and ``%`` (hence any URL-encoded form) is not part of it.
    """
    if not isinstance(name, str):
        reason = f"it is a {type(name).__name__}, not a string"
    elif not name:
        reason = "it is empty"
    elif ".." in name:
        reason = "it contains '..'"
    elif len(name) > 128:
        reason = f"it has {len(name)} characters, at most 128 are allowed"
    elif _NAME_RE.fullmatch(name):  # fullmatch: `$` alone would accept a trailing newline
        return name
    elif not name[0].isascii() or not name[0].isalnum():
        reason = f"it starts with {name[0]!r}"
    else:
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "._-")))
        reason = f"it contains {bad!r}"
    raise InvalidNameError(
        f"invalid {what} {name!r}: {reason}; allowed are names matching {NAME_PATTERN} "
        "(letters, digits, '.', '_', '-', starting with a letter or digit) without '..'"
    )


def join(base: str, *names: str) -> str:
    """``base`` (a URI or a path) followed by the validated ``names`` as path segments."""
    for name in names:
        validate_name(name, "path segment")
    if not base:
        raise ValueError("cannot join names onto an empty base path")
    if not names:
        return base
    query = ""
    if _SCHEME_RE.match(base):  # keep a URI's query (e.g. ?region=...) at the end
        base, sep, rest = base.partition("?")
        query = sep + rest
    stripped = base.rstrip("/")
    if not stripped or stripped.endswith(":"):  # a root: "/", "file:///", "mock://"
        head = base if base.endswith("/") else base + "/"
    else:
        head = stripped + "/"
    return head + "/".join(names) + query


def absolute_uri(uri: str) -> str:
    """The same location, with a plain relative path made absolute."""
    return uri if _SCHEME_RE.match(uri) else os.path.abspath(uri)


def redact_uri(uri: str) -> str:
    """``uri`` with any user:password part and secret query values replaced by ``***``."""
    return _SECRET_QUERY_RE.sub(r"\1***", _USERINFO_RE.sub(r"\1***@", uri))


def resolve(uri: str, *, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for ``uri``.

    Plain paths (relative ones made absolute) and ``file://`` URIs are local (see
    :func:`local_path`); any other URI goes to ``pyarrow.fs.FileSystem.from_uri``
    (s3, gs, hdfs, ...).
    For ``s3://``, ``s3_endpoint`` (``http://host:port`` or ``https://host``, e.g. a
    MinIO server) names the endpoint; without it ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` does, and without those AWS itself is used. ``s3://`` needs
    boto3 (:class:`MissingDependencyError` otherwise); credentials come from the
    AWS default chain. ``s3_endpoint`` is ignored for other schemes.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
    if not _SCHEME_RE.match(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    local = local_path(uri)
    if local is not None:
        return pafs.LocalFileSystem(), local
    if uri.split("://", 1)[0].lower() == "s3":
        s3.require_boto3()  # fail before any work rather than at the first write
        # Passed explicitly: pyarrow's own reading of AWS_ENDPOINT_URL varies by version.
        endpoint = s3_endpoint or s3.endpoint_from_env()
        if endpoint:
            source = "an explicit endpoint" if s3_endpoint else "an endpoint from AWS_ENDPOINT_URL(_S3)"
            return _s3_with_endpoint(uri, endpoint, source)
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as exc:
        # `from None`: pyarrow's message and traceback may quote the URI with its credentials.
        raise ValueError(f"cannot open storage URI {redact_uri(uri)!r}: {_scrub(str(exc), uri)}") from None
    return filesystem, path


def local_path(uri: str) -> str | None:
    """The local path a ``file://`` URI names, read as Spark (Hadoop's ``Path``) reads it.

    Hadoop does not percent-decode a path string: ``file:///data/a%20b`` is the directory
    ``a%20b`` and ``file:///data/a b`` the directory ``a b``. pyarrow's ``from_uri`` decodes
    the first and rejects the second, so a job that hands one string to both would read
    and write two different places. Both read it literally here. ``None`` if ``uri`` is
    not a ``file:`` URI.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() != "file":
        return None
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ValueError(
                f"file URI {uri!r} names host {authority!r}; only local files are supported (file:///path)"
            )
        rest = slash + path
    if not rest.startswith("/"):
        raise ValueError(f"file URI {uri!r} must hold an absolute path (file:///path)")
    return os.path.normpath(rest) if rest != "/" else "/"


def file_uri(path: str) -> str:
    """The ``file://`` URI of a local path (made absolute), literal as :func:`local_path` reads it.

    Not ``Path.as_uri()``: it percent-encodes spaces, ``%`` and ``=``, which Spark does not
    decode, so a ``date=2026-11-22`` partition or a folder named ``a b`` would not be found.
    """
    return "file://" + os.path.abspath(path)


def check_writable(uri: str, *, s3_endpoint: str | None = None) -> None:
    """Raise :class:`OSError` with the reason unless objects can be written under ``uri``.

    Writes and deletes one small probe object, so a fit learns before it starts, not after
    an hour, that its checkpoints or model cannot be stored. Directories the probe had to
    create are removed again, so nothing is left behind.
    """
    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    created: str | None = None
    if fs.type_name == "local":
        probe_dir = path
        while not os.path.lexists(probe_dir):  # the first ancestor that exists
            created, probe_dir = probe_dir, os.path.dirname(probe_dir)
        if not os.path.isdir(probe_dir):
            kind = "a file" if os.path.isfile(probe_dir) else "not a directory"
            raise NotADirectoryError(errno.ENOTDIR, f"cannot write to {redact_uri(uri)}: {probe_dir} is {kind}")
    probe = posixpath.join(path, f".em-spark-write-probe-{uuid.uuid4().hex}")
    try:
        write_object(fs, probe, b"probe", overwrite=True)
        fs.delete_file(probe)
    except OSError as exc:
        # pyarrow's text ("Cannot create directory '/proc/x'. Detail: [errno 2] ...") as one clause
        reason = _scrub(str(exc.strerror or exc), uri).replace(". Detail: ", ": ").rstrip(".")
        raise type(exc)(exc.errno, f"cannot write to {redact_uri(uri)} ({reason})") from None
    finally:
        if created is not None:
            with contextlib.suppress(OSError):
                fs.delete_dir(created)


def _s3_with_endpoint(uri: str, endpoint: str, source: str) -> tuple[pafs.FileSystem, str]:
    parts = urllib.parse.urlsplit(uri)
    if parts.query or parts.fragment:
        raise ValueError(
            f"S3 URI {redact_uri(uri)!r}: options in the URI are not supported together with "
            f"{source}; configure them on the endpoint instead"
        )
    bucket = parts.netloc.rpartition("@")[2]
    if not bucket:
        raise ValueError(f"S3 URI {redact_uri(uri)!r} names no bucket (expected s3://bucket/prefix)")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint  # S3's own default
    ep = urllib.parse.urlsplit(endpoint)
    if ep.scheme not in ("http", "https") or not ep.netloc or ep.path not in ("", "/"):
        raise ValueError(f"S3 endpoint {redact_uri(endpoint)!r} must look like http://host:port or https://host")
    # The region is explicit too, so pyarrow and boto3 sign for the same one.
    options = {"endpoint_override": ep.netloc, "scheme": ep.scheme, "region": s3.default_region()}
    if parts.username is not None:  # s3://ACCESS:SECRET@bucket, as from_uri accepts
        options["access_key"] = urllib.parse.unquote(parts.username)
        options["secret_key"] = urllib.parse.unquote(parts.password or "")
    path = (bucket + parts.path).rstrip("/")
    return pafs.S3FileSystem(**options), path


def _scrub(message: str, uri: str) -> str:
    return message.replace(uri, redact_uri(uri))


# --- object primitives --------------------------------------------------------


def write_object(fs: pafs.FileSystem, path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` as the whole object at ``path``.

    Locally the bytes go to a hidden temporary file that is then renamed (or, when
    ``overwrite`` is false, hard-linked, which refuses an existing target) onto
    ``path``, creating parent directories. On S3 one request publishes the object,
    with ``If-None-Match: *`` when ``overwrite`` is false (see :mod:`.s3`).
    Elsewhere the object is written in place. Readers verify objects anyway (see
    :func:`~em_spark.storage.frame.unseal`). Raises :class:`ObjectExistsError` if
    ``overwrite`` is false and ``path`` exists; on local disks and S3 that holds even
    against a writer racing for the same path.
    """
    # A cheap early refusal; the write itself decides where the filesystem can.
    if not overwrite and exists(fs, path):
        raise ObjectExistsError.refused(path)
    if fs.type_name == "local":
        _write_local(fs, path, data, overwrite)
    elif fs.type_name == "s3":
        s3.put_object(fs, path, data, overwrite=overwrite)
    else:
        _write_direct(fs, path, data, overwrite)


def _write_local(fs: pafs.FileSystem, path: str, data: bytes, overwrite: bool) -> None:
    parent, base = os.path.split(path)
    fs.create_dir(parent, recursive=True)
    temp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
    try:
        with _open_output_stream(fs, temp) as out:
            out.write(data)
        if overwrite:
            fs.move(temp, path)  # rename(2): atomic, replaces the old file
        else:
            _link_exclusive(fs, temp, path)
    finally:
        with contextlib.suppress(OSError):  # cleanup must never mask the original error
            if exists(fs, temp):  # gone after a rename; still there after a link or a failure
                fs.delete_file(temp)


def _link_exclusive(fs: pafs.FileSystem, temp: str, path: str) -> None:
    """Publish ``temp`` as ``path`` only if ``path`` does not exist yet."""
    try:
        # link(2) fails when the target exists: an atomic create-if-absent, which
        # rename(2) is not (it silently replaces). The temp name is removed by the caller.
        os.link(temp, path)
    except FileExistsError:
        raise ObjectExistsError.refused(path) from None
    except OSError:
        # No hard links here (some network or FUSE filesystems): check, then rename.
        if exists(fs, path):
            raise ObjectExistsError.refused(path) from None
        fs.move(temp, path)


def _write_direct(fs: pafs.FileSystem, path: str, data: bytes, overwrite: bool) -> None:
    # Without conditional puts the existence check in write_object and this write
    # are two steps: racing writers may both succeed, the last one winning.
    try:
        stream = _open_output_stream(fs, path)
    except FileNotFoundError:
        # Filesystems with real directories (HDFS, a subtree of a disk) need the
        # parent; object stores do not, so it is created only when asked for.
        fs.create_dir(posixpath.dirname(path), recursive=True)
        stream = _open_output_stream(fs, path)
    try:
        with stream as out:
            out.write(data)
    except BaseException:
        # A failed stream may still publish what it had. When the object did not
        # exist before, remove that partial object (best effort). When overwriting,
        # leave it: the old object may still be intact, and readers verify anyway.
        if not overwrite:
            with contextlib.suppress(Exception):
                fs.delete_file(path)
        raise


def _open_output_stream(fs: pafs.FileSystem, path: str) -> pa.NativeFile:
    # One seam for tests that simulate a writer dying midway.
    return fs.open_output_stream(path)


def read_object(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole object at ``path``; ``FileNotFoundError`` if there is none."""
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not exists(fs, path):  # some filesystems report a missing key as a generic OSError
            raise FileNotFoundError(errno.ENOENT, "no object", path) from exc
        raise


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether anything (object or directory) exists at ``path``."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_names(fs: pafs.FileSystem, dir_path: str) -> list[str]:
    """Sorted base names of the objects directly inside ``dir_path``; ``[]`` if it does not exist."""
    selector = pafs.FileSelector(dir_path, allow_not_found=True, recursive=False)
    return sorted(info.base_name for info in fs.get_file_info(selector) if info.type == pafs.FileType.File)


def delete_object(fs: pafs.FileSystem, path: str, *, missing_ok: bool = False) -> None:
    """Delete the object at ``path``."""
    try:
        fs.delete_file(path)
    except OSError:
        if missing_ok and not exists(fs, path):
            return
        raise


# --- sealed objects at a URI -------------------------------------------------------


def put_sealed(uri: str, payload: bytes, overwrite: bool = False, s3_endpoint: str | None = None) -> None:
    """Write ``payload`` in a checksummed envelope (see :func:`~em_spark.storage.frame.seal`) at ``uri``."""
    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    write_object(fs, path, seal(payload), overwrite=overwrite)


def get_sealed(uri: str, s3_endpoint: str | None = None) -> bytes:
    """The verified payload of the sealed object at ``uri``; :class:`CorruptObjectError` if damaged."""
    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    data = read_object(fs, path)
    try:
        return unseal(data)
    except CorruptObjectError as exc:
        raise CorruptObjectError(f"{redact_uri(uri)}: {exc}") from None
