"""Names, URIs and object primitives: the pieces the commit protocol stands on."""

from __future__ import annotations

import os
import pickle
import re
import sys

import pyarrow.fs as pafs
import pytest

from em_spark.storage import (
    CorruptObjectError,
    InvalidNameError,
    MissingDependencyError,
    ObjectExistsError,
    delete_object,
    exists,
    get_sealed,
    join,
    list_names,
    put_sealed,
    read_object,
    redact_uri,
    resolve,
    validate_name,
    write_object,
)
from em_spark.storage import fs as storage_fs
from em_spark.storage import s3 as s3_module
from em_spark.storage.fs import NAME_PATTERN, absolute_uri
from em_spark.storage.s3 import redact_credentials

# --- names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "a/b",
        "/abs",
        "a\\b",
        "\\",
        "%2e%2e",
        "..%2f",
        "a..b",
        "",
        " x",
        "x ",
        "a b",
        "tab\t",
        "nl\n",
        "x\n",
        "\x00",
        "-lead",
        ".hidden",
        "é",
        "a" * 129,
        "a?b",
        "a#b",
        "a:b",
        "~x",
    ],
)
def test_validate_name_rejects(name):
    with pytest.raises(InvalidNameError) as info:
        validate_name(name, "run id")
    message = str(info.value)
    assert message.startswith(f"invalid run id {name!r}")
    assert NAME_PATTERN in message


@pytest.mark.parametrize("name", ["nightly-2026-11-22", "run_1.v2", "a", "0", "A" * 128, "x.y_z-1"])
def test_validate_name_accepts(name):
    assert validate_name(name) == name


def test_validate_name_says_why():
    with pytest.raises(InvalidNameError, match="contains '..'"):
        validate_name("../etc")
    with pytest.raises(InvalidNameError, match="at most 128"):
        validate_name("a" * 129)
    with pytest.raises(InvalidNameError, match="contains '/'"):
        validate_name("a/b")
    with pytest.raises(InvalidNameError, match="not a string"):
        validate_name(7)  # type: ignore[arg-type]


def test_invalid_name_is_a_value_error():
    assert issubclass(InvalidNameError, ValueError)


# --- join, absolute_uri, redact_uri ----------------------------------------------------


@pytest.mark.parametrize(
    "base, names, expected",
    [
        ("file:///data/runs", ("r1", "checkpoints"), "file:///data/runs/r1/checkpoints"),
        ("file:///data/runs/", ("r1",), "file:///data/runs/r1"),
        ("file:///", ("r1",), "file:///r1"),
        ("/data/runs", ("r1",), "/data/runs/r1"),
        ("/data/runs//", ("r1",), "/data/runs/r1"),
        ("/", ("r1",), "/r1"),
        ("relative/dir", ("r1",), "relative/dir/r1"),
        ("s3://bucket/prefix", ("r1", "m.emm"), "s3://bucket/prefix/r1/m.emm"),
        ("s3://bucket/prefix?region=eu-west-1", ("r1",), "s3://bucket/prefix/r1?region=eu-west-1"),
        ("mock://", ("r1",), "mock://r1"),
        ("/data", (), "/data"),
    ],
)
def test_join(base, names, expected):
    assert join(base, *names) == expected


@pytest.mark.parametrize("bad", ["..", "a/b", "", "%2e%2e"])
def test_join_validates_every_segment(bad):
    with pytest.raises(InvalidNameError, match="path segment"):
        join("s3://bucket/prefix", "ok", bad)


def test_absolute_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("runs") == str(tmp_path / "runs")
    assert absolute_uri("s3://b/p") == "s3://b/p"


def test_redact_uri_hides_credentials():
    assert redact_uri("s3://AKIA:SECRET@bucket/p") == "s3://***@bucket/p"
    redacted = redact_uri("s3://bucket/p?region=x&secret_key=S3CR3T&access_key=AK&session_token=T")
    assert "S3CR3T" not in redacted and "AK&" not in redacted and "=T" not in redacted
    assert "region=x" in redacted


# --- resolve ------------------------------------------------------------------------


def test_resolve_plain_paths_become_absolute_and_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = resolve("runs/r1")
    assert fs.type_name == "local" and path == str(tmp_path / "runs" / "r1")
    fs, path = resolve(str(tmp_path))
    assert fs.type_name == "local" and path == str(tmp_path)


def test_resolve_file_uri(tmp_path):
    fs, path = resolve(f"file://{tmp_path}/")
    assert fs.type_name == "local" and path == str(tmp_path)


def test_resolve_other_schemes_go_through_pyarrow():
    fs, path = resolve("mock://bucket/x")
    assert fs.type_name == "mock" and path == "x"  # pyarrow's own reading of the URI


def test_resolve_s3_with_explicit_endpoint():
    fs, path = resolve("s3://bucket/some/prefix/", s3_endpoint="http://127.0.0.1:9000")
    options = fs.__reduce__()[1][0]
    assert fs.type_name == "s3" and path == "bucket/some/prefix"
    assert options["endpoint_override"] == "127.0.0.1:9000" and options["scheme"] == "http"


def test_resolve_s3_endpoint_without_scheme_defaults_to_https_and_takes_uri_credentials():
    fs, path = resolve("s3://AK:S%2FCRET@bucket", s3_endpoint="storage.example.com")
    options = fs.__reduce__()[1][0]
    assert path == "bucket"
    assert options["scheme"] == "https" and options["endpoint_override"] == "storage.example.com"
    assert options["access_key"] == "AK" and options["secret_key"] == "S/CRET"


def test_resolve_endpoint_is_ignored_for_other_schemes(tmp_path):
    fs, path = resolve(str(tmp_path), s3_endpoint="http://127.0.0.1:9000")
    assert fs.type_name == "local"


@pytest.mark.parametrize(
    "uri, endpoint, message",
    [
        ("s3://bucket/p?region=x", "http://h:1", "options in the URI"),
        ("s3:///p", "http://h:1", "names no bucket"),
        ("s3://bucket/p", "ftp://h:1", "must look like"),
        ("s3://bucket/p", "http://h:1/path", "must look like"),
    ],
)
def test_resolve_s3_endpoint_errors(uri, endpoint, message):
    with pytest.raises(ValueError, match=message):
        resolve(uri, s3_endpoint=endpoint)


def test_resolve_errors_never_show_credentials():
    with pytest.raises(ValueError, match="cannot open storage URI") as info:
        resolve("nosuchscheme://user:hunter2@host/path")
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.fixture
def aws_env(monkeypatch):
    """No AWS endpoint or region from the caller's environment."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _s3_options(uri, **kwargs):
    fs, _ = resolve(uri, **kwargs)
    assert fs.type_name == "s3"
    return fs.__reduce__()[1][0]


def test_resolve_s3_endpoint_precedence(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert _s3_options("s3://bucket/p")["endpoint_override"] == "generic:1"
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "https://only-s3:2")  # service-specific wins, as in the AWS SDKs
    options = _s3_options("s3://bucket/p")
    assert options["endpoint_override"] == "only-s3:2" and options["scheme"] == "https"
    assert _s3_options("s3://bucket/p", s3_endpoint="http://explicit:3")["endpoint_override"] == "explicit:3"


def test_resolve_s3_region_comes_from_the_environment(aws_env):
    assert _s3_options("s3://bucket", s3_endpoint="http://h:1")["region"] == "us-east-1"
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert _s3_options("s3://bucket", s3_endpoint="http://h:1")["region"] == "eu-west-1"
    aws_env.setenv("AWS_REGION", "ap-south-1")
    assert _s3_options("s3://bucket", s3_endpoint="http://h:1")["region"] == "ap-south-1"


def test_resolve_s3_uri_options_clash_with_an_environment_endpoint(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", "http://h:1")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        resolve("s3://bucket/p?region=x")


def test_s3_without_boto3_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    with pytest.raises(MissingDependencyError, match=re.escape("install em-spark[s3]")) as info:
        resolve("s3://bucket/p", s3_endpoint="http://127.0.0.1:9000")
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependencyError):
        put_sealed("s3://bucket/model", b"x", s3_endpoint="http://127.0.0.1:9000")
    assert resolve(str(tmp_path))[0].type_name == "local"  # other schemes do not need it


def test_redact_credentials_in_botocore_log_lines():
    line = (
        "Sending http request: <AWSPreparedRequest headers={'Authorization': b'AWS4-HMAC-SHA256 "
        "Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request, Signature=abc', "
        "'X-Amz-Security-Token': b'TOKEN123'}>\nx-amz-security-token:TOKEN123\n"
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIDEXAMPLE%2F2026&X-Amz-Security-Token=TOKEN123"
    )
    redacted = redact_credentials(line)
    assert "AKIDEXAMPLE" not in redacted and "TOKEN123" not in redacted
    assert "Sending http request" in redacted and "'Authorization': b'***'" in redacted


def test_multipart_parts_stay_within_s3_limits():
    assert s3_module._part_size(12 * 2**20) == s3_module.PART_SIZE
    huge = 200 * 2**30  # 200 GiB: 8 MiB parts would need 25,600 of them
    assert -(-huge // s3_module._part_size(huge)) <= 10_000


@pytest.mark.parametrize("uri", ["", None])
def test_resolve_refuses_empty(uri):
    with pytest.raises(ValueError):
        resolve(uri)  # type: ignore[arg-type]


# --- object primitives ------------------------------------------------------------------


class _DyingStream:
    """Writes the first ``keep`` bytes it is given, then fails like a killed writer."""

    def __init__(self, stream, keep: int):
        self._stream, self._keep = stream, keep

    def write(self, data):
        self._stream.write(bytes(data)[: self._keep])
        raise OSError("simulated crash midway through the write")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stream.close()  # like pyarrow: the partial bytes are published
        return False


@pytest.fixture
def dying_writes(monkeypatch):
    real_open = storage_fs._open_output_stream
    opened = []

    def open_dying(fs, path):
        opened.append(path)
        return _DyingStream(real_open(fs, path), keep=5)

    monkeypatch.setattr(storage_fs, "_open_output_stream", open_dying)
    return opened


def test_local_write_is_atomic_when_the_writer_dies(tmp_path, dying_writes):
    fs, root = resolve(str(tmp_path))
    target = join(root, "sub", "obj.bin")
    with pytest.raises(OSError, match="simulated crash"):
        write_object(fs, target, b"0123456789" * 10)
    assert not os.path.exists(target)
    assert os.listdir(tmp_path / "sub") == []  # the temp file was removed too
    assert len(dying_writes) == 1 and os.path.basename(dying_writes[0]).startswith(".obj.bin.tmp-")


def test_local_write_that_dies_keeps_the_previous_object(tmp_path, monkeypatch):
    fs, root = resolve(str(tmp_path))
    target = join(root, "obj.bin")
    write_object(fs, target, b"old")
    real_open = storage_fs._open_output_stream
    monkeypatch.setattr(storage_fs, "_open_output_stream", lambda f, p: _DyingStream(real_open(f, p), keep=2))
    with pytest.raises(OSError):
        write_object(fs, target, b"new content", overwrite=True)
    assert read_object(fs, target) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["obj.bin"]


def test_local_write_creates_parents_and_leaves_no_temp_files(tmp_path):
    fs, root = resolve(str(tmp_path))
    target = join(root, "a", "b", "obj.bin")
    write_object(fs, target, b"data")
    assert (tmp_path / "a" / "b" / "obj.bin").read_bytes() == b"data"
    assert os.listdir(tmp_path / "a" / "b") == ["obj.bin"]


def test_overwrite_is_refused_by_default_and_allowed_on_request(tmp_path):
    fs, root = resolve(str(tmp_path))
    target = join(root, "obj.bin")
    write_object(fs, target, b"first")
    with pytest.raises(ObjectExistsError, match="refusing to overwrite") as info:
        write_object(fs, target, b"second")
    assert isinstance(info.value, FileExistsError)
    assert read_object(fs, target) == b"first"
    write_object(fs, target, b"second", overwrite=True)
    assert read_object(fs, target) == b"second"
    assert os.listdir(tmp_path) == ["obj.bin"]


def test_exclusive_publish_is_decided_by_link_not_by_the_earlier_check(tmp_path, monkeypatch):
    """A racing writer that appears after the existence check still wins: link(2) refuses."""
    fs, root = resolve(str(tmp_path))
    target = join(root, "obj.bin")
    real_open = storage_fs._open_output_stream

    class RacedStream:
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            self.stream.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.stream.close()
            (tmp_path / "obj.bin").write_bytes(b"racer")  # lands between check and publish
            return False

    monkeypatch.setattr(storage_fs, "_open_output_stream", lambda f, p: RacedStream(real_open(f, p)))
    with pytest.raises(ObjectExistsError):
        write_object(fs, target, b"mine")
    assert (tmp_path / "obj.bin").read_bytes() == b"racer"
    assert os.listdir(tmp_path) == ["obj.bin"]


def test_write_falls_back_to_rename_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr(storage_fs.os, "link", no_links)
    fs, root = resolve(str(tmp_path))
    target = join(root, "obj.bin")
    write_object(fs, target, b"data")
    assert read_object(fs, target) == b"data"
    with pytest.raises(ObjectExistsError):
        write_object(fs, target, b"again")
    assert os.listdir(tmp_path) == ["obj.bin"]


@pytest.fixture
def remote_like(tmp_path):
    """A filesystem that is not 'local' to the code (so it takes the direct-write path,
    as S3 would) but whose objects we can inspect on disk."""
    return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), tmp_path


def test_non_local_primitives(remote_like):
    fs, disk = remote_like
    write_object(fs, "dir/obj.bin", b"payload")  # the parent is created on demand
    assert exists(fs, "dir/obj.bin") and read_object(fs, "dir/obj.bin") == b"payload"
    assert list_names(fs, "dir") == ["obj.bin"]
    with pytest.raises(ObjectExistsError):
        write_object(fs, "dir/obj.bin", b"other")
    write_object(fs, "dir/obj.bin", b"other", overwrite=True)
    assert (disk / "dir" / "obj.bin").read_bytes() == b"other"
    delete_object(fs, "dir/obj.bin")
    assert not exists(fs, "dir/obj.bin")


def test_non_local_partial_object_is_removed_when_the_writer_dies(remote_like, dying_writes):
    fs, disk = remote_like
    with pytest.raises(OSError, match="simulated crash"):
        write_object(fs, "obj.bin", b"0123456789")
    assert dying_writes == ["obj.bin"]  # written in place, no temp name
    assert not (disk / "obj.bin").exists()


def test_non_local_failed_overwrite_leaves_the_object_for_readers_to_verify(remote_like, monkeypatch):
    """Deleting after a failed overwrite could destroy an old object that was still intact."""
    fs, disk = remote_like
    write_object(fs, "obj.bin", b"old object")
    real_open = storage_fs._open_output_stream
    monkeypatch.setattr(storage_fs, "_open_output_stream", lambda f, p: _DyingStream(real_open(f, p), keep=3))
    with pytest.raises(OSError, match="simulated crash"):
        write_object(fs, "obj.bin", b"new object", overwrite=True)
    assert (disk / "obj.bin").exists()


def test_read_missing_object_raises_file_not_found(tmp_path):
    fs, root = resolve(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_object(fs, join(root, "missing"))


def test_list_names_lists_only_files_directly_inside(tmp_path):
    fs, root = resolve(str(tmp_path))
    assert list_names(fs, join(root, "does-not-exist")) == []
    (tmp_path / "b.bin").write_bytes(b"")
    (tmp_path / "a.bin").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.bin").write_bytes(b"")
    assert list_names(fs, root) == ["a.bin", "b.bin"]


def test_delete_object_missing(tmp_path):
    fs, root = resolve(str(tmp_path))
    delete_object(fs, join(root, "missing"), missing_ok=True)
    with pytest.raises(FileNotFoundError):
        delete_object(fs, join(root, "missing"))


# --- sealed objects at a URI ---------------------------------------------------------


@pytest.mark.parametrize("as_uri", [True, False], ids=["file-uri", "plain-path"])
def test_put_and_get_sealed_round_trip(tmp_path, as_uri):
    location = f"file://{tmp_path}/models/gmm" if as_uri else str(tmp_path / "models" / "gmm")
    put_sealed(location, b"model bytes")
    assert get_sealed(location) == b"model bytes"
    with pytest.raises(ObjectExistsError):
        put_sealed(location, b"another model")
    assert get_sealed(location) == b"model bytes"
    put_sealed(location, b"replacement", overwrite=True)
    assert get_sealed(location) == b"replacement"


def test_get_sealed_refuses_damaged_and_pickled_objects(tmp_path):
    location = str(tmp_path / "model")
    put_sealed(location, b"model bytes")
    data = (tmp_path / "model").read_bytes()
    (tmp_path / "model").write_bytes(data[:-3])
    with pytest.raises(CorruptObjectError, match=str(tmp_path)):
        get_sealed(location)
    (tmp_path / "model").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CorruptObjectError, match="pickled content is never loaded"):
        get_sealed(location)
