"""Helpers shared by the codec and the frame: the checksum and format sniffing."""

from __future__ import annotations

import hashlib
import hmac

from em_spark.storage.errors import CorruptObjectError

DIGEST_SIZE = 32  # SHA-256

# Leading bytes of formats that can carry pickled Python objects. They are
# recognised only to refuse them with a clear message, never to load them.
_FOREIGN_FORMATS = (
    (b"\x80", "a Python pickle"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"PK\x03\x04", "a zip archive (numpy .npz?)"),
)


def digest(data: bytes | memoryview) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def check_digest(data: bytes | memoryview, expected: bytes, what: str) -> None:
    """Raise :class:`CorruptObjectError` unless ``digest(data) == expected``."""
    if not hmac.compare_digest(digest(data), bytes(expected)):
        raise CorruptObjectError(f"{what}: SHA-256 checksum mismatch (the object is damaged or truncated)")


def wrong_magic(data: bytes, expected_magic: bytes, what: str) -> CorruptObjectError:
    """The error for data that does not start with ``expected_magic``, naming a
    recognised unsafe format (pickle, .npy, .npz) when the data looks like one."""
    for prefix, description in _FOREIGN_FORMATS:
        if data.startswith(prefix):
            return CorruptObjectError(
                f"{what}: data looks like {description}, not an em_spark object; pickled content is never loaded"
            )
    return CorruptObjectError(
        f"{what}: wrong magic bytes {bytes(data[: len(expected_magic)])!r}, expected {expected_magic!r}"
    )
