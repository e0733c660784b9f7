"""A safe, self-describing container for JSON metadata plus named numpy arrays.

Layout (all integers little-endian)::

    magic b"EMSPARK\\x00" | version (uint16) | header length (uint64)
    | header: UTF-8 JSON {"meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    | raw array bytes, C order, little-endian, in header order, back to back
    | SHA-256 of everything above

Only float64, int64 and bool arrays are stored, and nothing is ever unpickled:
loading a container can build numbers and JSON values, never Python objects.
The checksum detects damage; the parser still checks every length, offset and
dtype itself, so a crafted container with a valid checksum cannot misdirect it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from em_spark.storage._integrity import DIGEST_SIZE, check_digest, digest, wrong_magic
from em_spark.storage.errors import CorruptObjectError, UnsupportedContentError

__all__ = ["CODEC_MAGIC", "CODEC_VERSION", "pack", "unpack"]

CODEC_MAGIC = b"EMSPARK\x00"
CODEC_VERSION = 1
_PREFIX = struct.Struct("<8sHQ")  # magic, version, header length

# The stored dtype names and their on-disk (little-endian) layouts.
_DTYPES = {
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("|b1"),
}


def pack(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> bytes:
    """Encode ``meta`` (JSON-able; numpy scalars are converted) and ``arrays``.

    Raises :class:`UnsupportedContentError` for an array dtype other than
    float64/int64/bool or for metadata JSON cannot represent.
    """
    if not isinstance(meta, Mapping):
        raise UnsupportedContentError(f"meta must be a mapping, got {type(meta).__name__}")
    directory, chunks, offset = [], [], 0
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise UnsupportedContentError(f"array names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        dtype_name = _stored_dtype_name(name, array)
        raw = array.astype(_DTYPES[dtype_name], copy=False).tobytes(order="C")
        directory.append(
            {"name": name, "dtype": dtype_name, "shape": list(array.shape), "offset": offset, "nbytes": len(raw)}
        )
        chunks.append(raw)
        offset += len(raw)
    header = {"meta": to_jsonable(meta, "meta"), "arrays": directory}
    # allow_nan: metadata such as a log-likelihood history may hold -inf or NaN;
    # Python's json reads these back exactly (they are not strict JSON).
    header_bytes = json.dumps(header, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")
    body = b"".join([_PREFIX.pack(CODEC_MAGIC, CODEC_VERSION, len(header_bytes)), header_bytes, *chunks])
    return body + digest(body)


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode a container into ``(meta, arrays)``; arrays are writable copies.

    Raises :class:`CorruptObjectError` naming the check that failed.
    """
    data = bytes(data)
    if not data.startswith(CODEC_MAGIC):
        raise wrong_magic(data, CODEC_MAGIC, "container")
    if len(data) < _PREFIX.size + DIGEST_SIZE:
        raise CorruptObjectError(
            f"container: truncated ({len(data)} bytes, the smallest valid one has {_PREFIX.size + DIGEST_SIZE})"
        )
    _, version, header_length = _PREFIX.unpack_from(data)
    if version != CODEC_VERSION:
        raise CorruptObjectError(
            f"container: unsupported format version {version} (this em_spark reads version {CODEC_VERSION})"
        )
    body_end = len(data) - DIGEST_SIZE
    check_digest(memoryview(data)[:body_end], data[body_end:], "container")
    data_start = _PREFIX.size + header_length
    if data_start > body_end:
        raise CorruptObjectError(
            f"container: header length {header_length} runs past the end of the data "
            f"({body_end - _PREFIX.size} bytes available)"
        )
    try:
        header = json.loads(data[_PREFIX.size : data_start].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise CorruptObjectError(f"container: header is not valid UTF-8 JSON ({exc})") from None
    well_formed = isinstance(header, dict) and isinstance(header.get("meta"), dict)
    if not (well_formed and isinstance(header.get("arrays"), list)):
        raise CorruptObjectError('container: header must be an object with a "meta" object and an "arrays" list')

    section = memoryview(data)[data_start:body_end]
    arrays: dict[str, np.ndarray] = {}
    position = 0
    for index, entry in enumerate(header["arrays"]):
        name, dtype, shape, nbytes = _checked_entry(index, entry, position, len(section))
        if name in arrays:
            raise CorruptObjectError(f"container: array name {name!r} appears twice")
        raw = np.frombuffer(section[position : position + nbytes], dtype=dtype)
        if dtype.kind == "b" and raw.view(np.uint8).max(initial=0) > 1:
            raise CorruptObjectError(f"container: bool array {name!r} holds bytes other than 0 and 1")
        # astype to the native byte order always copies: the result is writable and
        # independent of ``data``.
        arrays[name] = raw.reshape(shape).astype(dtype.newbyteorder("="), copy=True)
        position += nbytes
    if position != len(section):
        raise CorruptObjectError(f"container: arrays take {position} bytes but the data section has {len(section)}")
    return header["meta"], arrays


def _stored_dtype_name(name: str, array: np.ndarray) -> str:
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "f" and size == 8:
        return "float64"
    if kind == "i" and size == 8:
        return "int64"
    if kind == "b":
        return "bool"
    hint = " (object arrays would need pickle, which is never used)" if kind == "O" else ""
    raise UnsupportedContentError(
        f"array {name!r} has dtype {array.dtype}{hint}; only float64, int64 and bool arrays "
        "can be stored: convert it first, e.g. with .astype(np.float64)"
    )


def to_jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (numpy scalars converted), or a clear error."""
    if isinstance(value, np.generic):  # before float/int: np.float64 subclasses float
        value = value.item()
        if isinstance(value, np.generic) or not isinstance(value, (bool, int, float, str)):
            raise UnsupportedContentError(f"{where} is a numpy {type(value).__name__}, which JSON cannot represent")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # json.dumps would silently turn 1 into "1": refuse rather than change keys.
                raise UnsupportedContentError(f"{where} has a non-string key {key!r}; JSON object keys are strings")
            out[key] = to_jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    hint = "; store arrays in `arrays`, not in meta" if isinstance(value, np.ndarray) else ""
    raise UnsupportedContentError(f"{where} has type {type(value).__name__!r}, which JSON cannot represent{hint}")


def _checked_entry(index: int, entry: Any, position: int, section_size: int) -> tuple[str, np.dtype, tuple, int]:
    """Validate one directory entry against the data section; return its parts."""
    where = f"container: array entry {index}"
    if not isinstance(entry, dict):
        raise CorruptObjectError(f"{where} is not an object")
    name, dtype_name, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    if not isinstance(name, str) or not name:
        raise CorruptObjectError(f"{where} has no valid name")
    where = f"container: array {name!r}"
    if dtype_name not in _DTYPES:
        raise CorruptObjectError(f"{where} has dtype {dtype_name!r}; only {sorted(_DTYPES)} are ever loaded")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CorruptObjectError(f"{where} has an invalid shape {shape!r}")
    if not _is_count(offset) or not _is_count(nbytes):
        raise CorruptObjectError(f"{where} has an invalid offset or size ({offset!r}, {nbytes!r})")
    dtype = _DTYPES[dtype_name]
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise CorruptObjectError(f"{where}: size {nbytes} does not match shape {shape} of {dtype_name}")
    if offset != position:
        raise CorruptObjectError(f"{where}: offset {offset} should be {position} (arrays are stored back to back)")
    if position + nbytes > section_size:
        raise CorruptObjectError(
            f"{where}: bytes {offset}..{offset + nbytes} run past the data section ({section_size} bytes)"
        )
    return name, dtype, tuple(shape), nbytes


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
