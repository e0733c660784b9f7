"""Storage: bytes, arrays, names and commits over ``pyarrow.fs``.

Knows nothing about Spark or models. The public pieces:

* :mod:`.codec` -- ``pack``/``unpack``: JSON metadata plus float64/int64/bool arrays, no pickle.
* :mod:`.frame` -- ``seal``/``unseal``: a checksummed envelope around any payload.
* :mod:`.fs` -- ``resolve``, safe names, object primitives, ``put_sealed``/``get_sealed``.
* :mod:`.s3` -- S3 writes through boto3 (the ``s3`` extra): atomic, conditional creates.
* :mod:`.checkpoints` -- ``CheckpointStore``: per-run checkpoints with retention and fallback.
* :mod:`.locks` -- ``RunLock``: a lease, so only one live process works on a run id.
"""

from em_spark.storage.checkpoints import Checkpoint, CheckpointStore
from em_spark.storage.codec import pack, to_jsonable, unpack
from em_spark.storage.errors import (
    CorruptObjectError,
    InvalidNameError,
    MissingDependencyError,
    ObjectExistsError,
    SequenceConflictError,
    StorageError,
    UnsupportedContentError,
)
from em_spark.storage.frame import seal, unseal
from em_spark.storage.fs import (
    check_writable,
    delete_object,
    exists,
    file_uri,
    get_sealed,
    join,
    list_names,
    local_path,
    put_sealed,
    read_object,
    redact_uri,
    resolve,
    validate_name,
    write_object,
)
from em_spark.storage.locks import LeaseLostError, RunLock, RunLockedError

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CorruptObjectError",
    "InvalidNameError",
    "LeaseLostError",
    "MissingDependencyError",
    "ObjectExistsError",
    "RunLock",
    "RunLockedError",
    "SequenceConflictError",
    "StorageError",
    "UnsupportedContentError",
    "check_writable",
    "delete_object",
    "exists",
    "file_uri",
    "get_sealed",
    "join",
    "list_names",
    "local_path",
    "pack",
    "put_sealed",
    "read_object",
    "redact_uri",
    "resolve",
    "seal",
    "to_jsonable",
    "unpack",
    "unseal",
    "validate_name",
    "write_object",
]
