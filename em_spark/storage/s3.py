"""S3 writes through boto3: atomic publication and conditional creates.

pyarrow reads, lists and deletes S3 objects, but it cannot write one safely: it
has no conditional put, and a failed output stream still publishes what it had.
So every write to an ``S3FileSystem`` goes through boto3, to the same endpoint,
region and credentials as the filesystem:

* Up to ``MULTIPART_THRESHOLD`` (8 MiB) bytes: one ``PutObject``. S3 stores it
  whole or not at all.
* Larger: a multipart upload. The object does not exist until
  ``CompleteMultipartUpload`` succeeds; any failure before that aborts the upload
  (best effort). A writer killed outright leaves at most an unfinished upload,
  which readers never see (a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
  reclaims its storage).
* ``overwrite=False`` sends ``If-None-Match: *`` with the ``PutObject`` or with the
  ``CompleteMultipartUpload``. S3 decides atomically, so of two writers racing for
  one key exactly one succeeds; the other gets 412 ``PreconditionFailed`` and
  :class:`ObjectExistsError`. A 409 ``ConditionalRequestConflict`` (a concurrent
  conditional write still in flight) is retried, as AWS recommends, and if it
  persists is also reported as :class:`ObjectExistsError`.

Why one object per key, not a payload plus a commit marker: AWS (since August
2024) and the moto server pinned for the tests honour ``If-None-Match`` on
``CompleteMultipartUpload`` (``tests/storage/test_s3.py`` checks it), so a single
key is exclusive at every size. A two-object protocol would double the requests,
leave orphaned payloads to collect, and make every reader follow an indirection.
Readers still verify each object's checksum (see :mod:`~em_spark.storage.frame`),
so even a store that ignores the condition can never hand out a torn object; it
only loses the race guarantee (last writer wins), as older MinIO releases do.

Credentials come only from boto3's default chain (environment, shared profile,
container or instance role) or from the filesystem itself when its URI carried
them; they never enter a message. botocore's DEBUG logs print request headers,
which hold the access key id and any session token, so a filter on those loggers
redacts them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypedDict

import pyarrow.fs as pafs

from em_spark.storage.errors import MissingDependencyError, ObjectExistsError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = [
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "client_for",
    "default_region",
    "endpoint_from_env",
    "put_object",
    "require_boto3",
]

MULTIPART_THRESHOLD = 8 * 2**20
PART_SIZE = 8 * 2**20  # S3 wants >= 5 MiB for every part but the last
_MAX_PARTS = 10_000  # S3's limit per upload
_CONFLICT_RETRIES = 4

_log = logging.getLogger(__name__)


# --- configuration --------------------------------------------------------------


def require_boto3() -> ModuleType:
    """The ``boto3`` module, or :class:`MissingDependencyError` saying how to get it."""
    try:
        import boto3
    except ImportError:
        raise MissingDependencyError(
            "s3:// storage needs boto3 (for conditional and multipart writes), which is not "
            "installed: install em-spark[s3], e.g. pip install 'em-spark[s3]'"
        ) from None
    return boto3


def endpoint_from_env() -> str | None:
    """The S3 endpoint the AWS SDKs would use from the environment, if any.

    ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``, as in the AWS SDKs.
    """
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def default_region() -> str:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def client_for(fs: pafs.S3FileSystem) -> S3Client:
    """A boto3 S3 client for the endpoint, region and credentials of ``fs``."""
    options = fs.__reduce__()[1][0]  # the constructor arguments, as pickling sees them
    if options.get("role_arn"):
        raise ValueError(
            "em_spark writes to S3 with boto3, which does not assume a role named in the "
            "filesystem options; configure the role in an AWS profile (AWS_PROFILE) instead"
        )
    endpoint = options.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme') or 'https'}://{endpoint}"
    explicit = tuple(options.get(k) or None for k in ("access_key", "secret_key", "session_token"))
    return _cached_client(
        endpoint,
        fs.region or default_region(),
        explicit,
        bool(options.get("anonymous")),
        bool(options.get("force_virtual_addressing")),
        options.get("tls_ca_file_path") or None,
        _environment_fingerprint(),
    )


def _environment_fingerprint() -> str:
    # A cached client keeps the credentials it resolved; key the cache on the
    # variables that change them, hashed so the cache holds no further copies.
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()


@functools.lru_cache(maxsize=16)  # creating a client costs ~0.1 s; clients are thread-safe
def _cached_client(
    endpoint: str | None,
    region: str,
    explicit: tuple[str | None, ...],
    anonymous: bool,
    virtual: bool,
    ca_file: str | None,
    _env: str,
) -> S3Client:
    boto3 = require_boto3()
    import botocore
    from botocore.config import Config

    _install_log_redaction()
    access_key, secret_key, session_token = explicit
    config = Config(
        retries={"mode": "standard"},
        signature_version=botocore.UNSIGNED if anonymous else None,
        # pyarrow addresses custom endpoints path-style (MinIO needs it); match it.
        s3={"addressing_style": "virtual" if virtual or not endpoint else "path"},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        verify=ca_file,
        config=config,
    )


# --- writes -----------------------------------------------------------------------


def put_object(fs: pafs.S3FileSystem, path: str, data: bytes, *, overwrite: bool) -> None:
    """Publish ``data`` as the object at ``path`` (``bucket/key``) all at once.

    Raises :class:`ObjectExistsError` if ``overwrite`` is false and the key exists
    (decided by S3, not by an earlier check), ``FileNotFoundError`` for a missing
    bucket and ``OSError`` for any other failure.
    """
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise ValueError(f"S3 path {path!r} must be bucket/key")
    client = client_for(fs)
    condition: _Condition = {} if overwrite else {"IfNoneMatch": "*"}
    error_types = _error_types()
    try:
        if len(data) <= MULTIPART_THRESHOLD:
            _log.debug("PutObject s3://%s/%s (%d bytes, conditional=%s)", bucket, key, len(data), not overwrite)
            _retry_conflicts(lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **condition))
        else:
            _put_multipart(client, bucket, key, data, condition)
    except error_types as exc:
        raise _translate(exc, bucket, key) from exc


class _Condition(TypedDict, total=False):
    """The conditional-write arguments of PutObject and CompleteMultipartUpload."""

    IfNoneMatch: str


def _put_multipart(client: S3Client, bucket: str, key: str, data: bytes, condition: _Condition) -> None:
    part_size = _part_size(len(data))
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")["UploadId"]
    _log.debug(
        "multipart upload of s3://%s/%s: %d bytes in %d parts (conditional=%s)",
        bucket,
        key,
        len(data),
        -(-len(data) // part_size),
        bool(condition),
    )
    try:
        parts: list[CompletedPartTypeDef] = []
        for number, start in enumerate(range(0, len(data), part_size), start=1):
            response = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data[start : start + part_size],
                ChecksumAlgorithm="CRC32",
            )
            part: CompletedPartTypeDef = {"PartNumber": number, "ETag": response["ETag"]}
            if response.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            parts.append(part)
        _retry_conflicts(
            lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )
        )
    except BaseException:
        # Also on KeyboardInterrupt: an unfinished upload is invisible but still billed.
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _part_size(size: int) -> int:
    return max(PART_SIZE, -(-size // _MAX_PARTS))


def _retry_conflicts(call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while S3 answers 409 ConditionalRequestConflict."""
    client_error = _error_types()[0]
    for attempt in range(_CONFLICT_RETRIES - 1):
        try:
            return call()
        except client_error as exc:
            if _code(exc) != "ConditionalRequestConflict":
                raise
        time.sleep(0.05 * 2**attempt)
    return call()


def _error_types() -> tuple[type[Exception], type[Exception]]:
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _translate(exc: Exception, bucket: str, key: str) -> OSError:
    """The storage layer's error for a botocore one. botocore messages name the
    operation, the error code and the endpoint, never credentials."""
    code = _code(exc)
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    where = f"s3://{bucket}/{key}"
    if code == "PreconditionFailed" or status == 412:
        return ObjectExistsError.refused(f"{bucket}/{key}")
    if code == "ConditionalRequestConflict":
        return ObjectExistsError(f"refusing to overwrite {where}: another writer is creating it concurrently")
    if code == "NoSuchBucket":
        return FileNotFoundError(errno.ENOENT, f"no such bucket {bucket!r}", where)
    return OSError(f"S3 write of {where} failed: {exc}")


# --- log redaction ----------------------------------------------------------------

_SECRET_PATTERNS = (
    # headers as botocore prints them: {'Authorization': b'AWS4-HMAC-SHA256 Credential=AKID/...'}
    re.compile(r"(?i)((?:authorization|x-amz-security-token)['\"]?\s*:\s*b?['\"])[^'\"]*"),
    # the canonical request botocore.auth prints: one "name:value" line per header
    re.compile(r"(?im)^(x-amz-security-token:).*$"),
    # anything else carrying a SigV4 credential scope or presigned-URL credentials
    re.compile(r"(?i)((?:\bCredential|X-Amz-Credential|X-Amz-Security-Token|AWSAccessKeyId)=)[^/&\s,'\"]*"),
)
_REDACTED_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.awsrequest", "botocore.hooks")


def redact_credentials(text: str) -> str:
    """``text`` with AWS credentials in request headers or query strings replaced by ``***``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_credentials(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACTION = _RedactCredentials()


def _install_log_redaction() -> None:
    # A logger's filters apply to the records it creates, so each emitting logger gets one.
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)
