"""Every exception the storage layer raises on purpose, in one place.

Each one derives from the builtin a caller would naturally catch (``ValueError``
for bad data or names, ``FileExistsError`` for a refused overwrite) and from
:class:`StorageError`, so ``except StorageError`` catches all of them.
"""

from __future__ import annotations

__all__ = [
    "CorruptObjectError",
    "InvalidNameError",
    "MissingDependencyError",
    "ObjectExistsError",
    "SequenceConflictError",
    "StorageError",
    "UnsupportedContentError",
]


class StorageError(Exception):
    """Base class of the storage layer's own errors."""


class CorruptObjectError(StorageError, ValueError):
    """Stored bytes failed verification (magic, version, length, bounds or checksum),
    or are a format that is never loaded (pickle, .npy/.npz). The message says which."""


class UnsupportedContentError(StorageError, TypeError, ValueError):
    """A value cannot be stored: an array dtype other than float64/int64/bool, or
    metadata JSON cannot represent. Both a TypeError and a ValueError, as callers
    may reasonably expect either."""


class InvalidNameError(StorageError, ValueError):
    """A run id, model name or other path segment is not a safe single name."""


class ObjectExistsError(StorageError, FileExistsError):
    """Refused to overwrite an existing object."""

    @classmethod
    def refused(cls, path: str) -> ObjectExistsError:
        """The error for refusing to overwrite the object at ``path``."""
        return cls(f"refusing to overwrite existing object {path!r}")


class SequenceConflictError(ObjectExistsError):
    """A valid checkpoint already exists at this sequence or at a later one."""


class MissingDependencyError(StorageError, ImportError):
    """A storage URI needs an optional package that is not installed; the message
    names the extra to install."""
