"""S3 through a real HTTP endpoint (the moto server): the commit protocol without rename."""

from __future__ import annotations

import logging
import threading
import traceback
from types import SimpleNamespace

import numpy as np
import pytest

from em_spark.storage import (
    CheckpointStore,
    CorruptObjectError,
    ObjectExistsError,
    SequenceConflictError,
    get_sealed,
    join,
    put_sealed,
    read_object,
    resolve,
    seal,
    write_object,
)
from em_spark.storage import fs as storage_fs
from em_spark.storage import s3 as storage_s3

pytestmark = pytest.mark.s3

KEY_ID, SECRET = "testing-key-id-12345", "testing-secret-abcdef"  # set by the s3_server fixture
MiB = 2**20
SIZES = {"single-put": 1000, "multipart": 12 * MiB}


@pytest.fixture
def s3(s3_server, s3_bucket):
    """The bucket's URI and endpoint, its filesystem and path, and a raw client for inspection."""
    fs, root = resolve(s3_bucket, s3_endpoint=s3_server.endpoint)
    return SimpleNamespace(
        uri=s3_bucket, endpoint=s3_server.endpoint, fs=fs, root=root, bucket=root, raw=s3_server.client()
    )


@pytest.fixture
def no_precheck(monkeypatch):
    """Skip write_object's early existence check, so S3's conditional write alone decides."""
    monkeypatch.setattr(storage_fs, "exists", lambda fs, path: False)


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def _etag(s3, key: str) -> str:
    return s3.raw.head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"')


def _unfinished_uploads(s3) -> list:
    return s3.raw.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


# --- sealed objects ------------------------------------------------------------------


def test_put_and_get_sealed_round_trip(s3):
    uri = join(s3.uri, "models", "gmm.emm")
    put_sealed(uri, b"model bytes", s3_endpoint=s3.endpoint)
    assert get_sealed(uri, s3_endpoint=s3.endpoint) == b"model bytes"
    assert "-" not in _etag(s3, "models/gmm.emm")  # one PutObject
    with pytest.raises(ObjectExistsError):
        put_sealed(uri, b"another model", s3_endpoint=s3.endpoint)
    put_sealed(uri, b"replacement", overwrite=True, s3_endpoint=s3.endpoint)
    assert get_sealed(uri, s3_endpoint=s3.endpoint) == b"replacement"


def test_large_payload_round_trips_through_multipart(s3, monkeypatch):
    client = storage_s3.client_for(s3.fs)
    parts = []
    real_upload_part = client.upload_part
    monkeypatch.setattr(client, "upload_part", lambda **kw: parts.append(kw["PartNumber"]) or real_upload_part(**kw))
    payload = _payload(SIZES["multipart"])
    uri = join(s3.uri, "big.emm")
    put_sealed(uri, payload, s3_endpoint=s3.endpoint)
    assert parts == [1, 2]
    assert _etag(s3, "big.emm").endswith("-2")  # S3's mark of a two-part object
    assert get_sealed(uri, s3_endpoint=s3.endpoint) == payload
    assert _unfinished_uploads(s3) == []


# --- conditional creates ---------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_write_object_refuses_an_existing_key_by_itself(s3, no_precheck, size):
    """The conditional PutObject / CompleteMultipartUpload refuses, not an earlier check."""
    path = join(s3.root, "obj.bin")
    first = _payload(size, seed=1)
    write_object(s3.fs, path, first)
    with pytest.raises(ObjectExistsError, match="refusing to overwrite") as info:
        write_object(s3.fs, path, _payload(size, seed=2))
    assert isinstance(info.value, FileExistsError)
    assert read_object(s3.fs, path) == first
    assert _unfinished_uploads(s3) == []  # the refused multipart upload was aborted


@pytest.mark.parametrize("size, rounds", [(SIZES["single-put"], 5), (SIZES["multipart"], 1)], ids=SIZES.keys())
def test_two_racing_writers_cannot_both_win(s3, no_precheck, size, rounds):
    for round_ in range(rounds):
        path = join(s3.root, f"race-{round_}.bin")
        start = threading.Barrier(2)
        outcomes: dict[int, object] = {}

        def write(writer: int, path: str, start: threading.Barrier, outcomes: dict[int, object]) -> None:
            data = _payload(size, seed=writer)
            start.wait()
            try:
                write_object(s3.fs, path, data)
                outcomes[writer] = data
            except ObjectExistsError as exc:
                outcomes[writer] = exc

        threads = [threading.Thread(target=write, args=(w, path, start, outcomes)) for w in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes.values() if isinstance(o, bytes)]
        losers = [o for o in outcomes.values() if isinstance(o, ObjectExistsError)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert read_object(s3.fs, path) == winners[0]
    assert _unfinished_uploads(s3) == []


# --- crashes and torn objects ------------------------------------------------------------


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("abort_works", [True, False], ids=["writer-fails", "writer-killed"])
def test_crash_mid_upload_leaves_nothing_readers_accept(s3, monkeypatch, abort_works):
    store = CheckpointStore(s3.uri, "r1", s3_endpoint=s3.endpoint)
    store.commit(1, b"small and safe")
    client = storage_s3.client_for(s3.fs)
    real_upload_part = client.upload_part

    def dying_upload_part(**kw):
        if kw["PartNumber"] == 2:
            raise SimulatedCrash("writer died after the first part")
        return real_upload_part(**kw)

    monkeypatch.setattr(client, "upload_part", dying_upload_part)
    if not abort_works:  # a killed process cleans nothing up
        monkeypatch.setattr(client, "abort_multipart_upload", lambda **kw: (_ for _ in ()).throw(SimulatedCrash()))
    with pytest.raises(SimulatedCrash):
        store.commit(2, _payload(SIZES["multipart"]))

    assert store.sequences() == [1]  # no object at all under the new key
    with pytest.raises(FileNotFoundError):
        get_sealed(join(store.directory_uri, "ckpt-0000000002.emck"), s3_endpoint=s3.endpoint)
    latest = CheckpointStore(s3.uri, "r1", s3_endpoint=s3.endpoint).latest()
    assert (latest.sequence, latest.payload) == (1, b"small and safe")
    assert len(_unfinished_uploads(s3)) == (0 if abort_works else 1)  # invisible to readers either way


def test_torn_object_is_never_accepted_and_is_replaced(s3, caplog):
    store = CheckpointStore(s3.uri, "r1", s3_endpoint=s3.endpoint)
    store.commit(1, b"one")
    uri2 = store.commit(2, b"two")
    key2 = "r1/checkpoints/ckpt-0000000002.emck"
    # Another tool (or a non-atomic writer) left half an object under the final name.
    s3.raw.put_object(Bucket=s3.bucket, Key=key2, Body=seal(b"two")[:-1])
    with pytest.raises(CorruptObjectError, match="truncated or padded"):
        get_sealed(uri2, s3_endpoint=s3.endpoint)
    with caplog.at_level(logging.WARNING, logger="em_spark.storage.checkpoints"):
        latest = CheckpointStore(s3.uri, "r1", s3_endpoint=s3.endpoint).latest()
    assert (latest.sequence, latest.payload) == (1, b"one")
    assert "is corrupt" in caplog.text and "fell back to sequence 1" in caplog.text
    store.commit(2, b"two, again")  # the torn object is replaced, not a conflict
    assert store.latest().payload == b"two, again"


# --- the checkpoint store --------------------------------------------------------------------


def test_checkpoint_store_commit_latest_retention(s3):
    store = CheckpointStore(join(s3.uri, "runs"), "nightly-1", keep_last=2, s3_endpoint=s3.endpoint)
    assert store.latest() is None
    uris = [store.commit(seq, f"params {seq}".encode()) for seq in range(1, 5)]
    assert store.sequences() == [3, 4]
    assert uris[-1] == f"{s3.uri}/runs/nightly-1/checkpoints/ckpt-0000000004.emck"
    assert get_sealed(uris[-1], s3_endpoint=s3.endpoint) == b"params 4"
    with pytest.raises(SequenceConflictError):
        store.commit(4, b"again")
    with pytest.raises(SequenceConflictError):
        store.commit(3, b"older")
    resumed = CheckpointStore(join(s3.uri, "runs"), "nightly-1", keep_last=2, s3_endpoint=s3.endpoint)
    latest = resumed.latest()
    assert (latest.sequence, latest.payload, latest.uri) == (4, b"params 4", uris[-1])
    assert resumed.commit(5, b"params 5") and resumed.sequences() == [4, 5]


# --- endpoint and credentials -------------------------------------------------------------------


def test_resolve_uses_aws_endpoint_url_when_no_endpoint_is_given(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    fs, path = resolve(join(s3_bucket, "x"))
    options = fs.__reduce__()[1][0]
    assert options["endpoint_override"] == s3_server.endpoint.split("://")[1] and options["scheme"] == "http"
    assert path == s3_bucket[len("s3://") :] + "/x"
    uri = join(s3_bucket, "model.emm")
    put_sealed(uri, b"via the environment")
    assert get_sealed(uri) == b"via the environment"
    store = CheckpointStore(s3_bucket, "r1")
    store.commit(1, b"ckpt")
    assert store.latest().payload == b"ckpt"


def _all_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc)


def test_credentials_never_appear_in_errors_or_logs(s3, caplog, monkeypatch):
    token = "testing-session-token-67890"
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    missing = join(s3.uri, "missing.emm")
    existing = join(s3.uri, "existing.emm")
    errors: list[BaseException] = []

    def expect(error: type[BaseException], call, *args, **kwargs):
        with pytest.raises(error) as info:
            call(*args, **kwargs)
        errors.append(info.value)

    put_sealed(existing, b"x", s3_endpoint=s3.endpoint)
    expect(FileNotFoundError, get_sealed, missing, s3_endpoint=s3.endpoint)
    expect(ObjectExistsError, put_sealed, existing, b"y", s3_endpoint=s3.endpoint)
    expect(FileNotFoundError, put_sealed, "s3://em-spark-no-such-bucket/obj", b"z", s3_endpoint=s3.endpoint)
    # Credentials in the URI itself: accepted, used, and still never shown.
    in_uri = f"s3://{KEY_ID}:{SECRET}@{s3.bucket}/missing.emm"
    expect(FileNotFoundError, get_sealed, in_uri, s3_endpoint=s3.endpoint)
    with monkeypatch.context() as patched:
        patched.setattr(storage_fs, "exists", lambda fs, path: False)  # reach S3's 412
        expect(ObjectExistsError, put_sealed, existing, b"y", s3_endpoint=s3.endpoint)

    assert "Sending http request" in caplog.text and "Authorization" in caplog.text  # botocore did log
    for secret in (KEY_ID, SECRET, token):
        assert secret not in caplog.text
        for exc in errors:
            assert secret not in _all_text(exc)
