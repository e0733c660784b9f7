"""A checksummed envelope for any payload: ``seal`` and ``unseal``.

Layout::

    magic (8 bytes) | payload length (uint64, little-endian) | SHA-256(payload) | payload

Stores on object storage cannot trust that an object which exists is complete:
S3 publishes a partial object when a writer fails, and a local partial file stays
visible. The envelope lets any reader tell a whole object from a torn one without
understanding the payload.
"""

from __future__ import annotations

import struct

from em_spark.storage._integrity import DIGEST_SIZE, check_digest, digest, wrong_magic
from em_spark.storage.errors import CorruptObjectError

__all__ = ["FRAME_MAGIC", "seal", "unseal"]

FRAME_MAGIC = b"EMSEALv1"  # the last two bytes are the frame version
_LENGTH = struct.Struct("<Q")
_HEADER_SIZE = len(FRAME_MAGIC) + _LENGTH.size + DIGEST_SIZE


def seal(payload: bytes) -> bytes:
    """Wrap ``payload`` in the envelope."""
    payload = bytes(payload)
    return FRAME_MAGIC + _LENGTH.pack(len(payload)) + digest(payload) + payload


def unseal(data: bytes) -> bytes:
    """The payload of a sealed object; :class:`CorruptObjectError` if anything is off."""
    data = bytes(data)
    if not data.startswith(FRAME_MAGIC):
        raise wrong_magic(data, FRAME_MAGIC, "sealed object")
    if len(data) < _HEADER_SIZE:
        raise CorruptObjectError(f"sealed object: truncated header ({len(data)} bytes, need at least {_HEADER_SIZE})")
    (length,) = _LENGTH.unpack_from(data, len(FRAME_MAGIC))
    actual = len(data) - _HEADER_SIZE
    if length != actual:
        raise CorruptObjectError(
            f"sealed object: header says the payload has {length} bytes but {actual} follow (truncated or padded)"
        )
    expected = data[len(FRAME_MAGIC) + _LENGTH.size : _HEADER_SIZE]
    payload = data[_HEADER_SIZE:]
    check_digest(payload, expected, "sealed object")
    return payload
