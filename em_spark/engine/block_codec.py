"""Blocks in transit from the Arrow load pass into the RDD: raw bytes, and block sizes.

:func:`encode_block` / :func:`decode_block` turn a block into little-endian bytes and
back (no pickle): the load pass ships each Arrow batch's block this way. The receiving
partition then regroups its many small blocks into a few of :func:`target_block_rows`
rows with :func:`merge_blocks`, so that numpy, not per-block Python, dominates the E-step.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from em_spark.models.base import Block, sparse_rows

__all__ = ["decode_block", "encode_block", "merge_blocks", "merge_stream", "target_block_rows"]

_HEADER = struct.Struct("<qqBq")  # rows, features, flags, sequences
_HAS_WEIGHT, _HAS_LENGTHS, _HAS_LABELS, _X_FLOAT32 = 1, 2, 4, 8  # (payloads without _X_FLOAT32: X is <f8)
_X_SPARSE = 16  # X is CSR: after the header, <q non-zeros, then values, <i4 indices, <i4 indptr (rows + 1)
_NNZ = struct.Struct("<q")


def encode_block(block: Block) -> bytes:
    """A block as raw little-endian bytes (no pickle): X (float32 kept as <f4, else <f8; a sparse
    block's X as its CSR arrays, so the bytes grow with the non-zeros), then weight, lengths,
    labels if present."""
    n, d = block.X.shape
    flags = (
        (_HAS_WEIGHT if block.weight is not None else 0)
        | (_HAS_LENGTHS if block.lengths is not None else 0)
        | (_HAS_LABELS if block.labels is not None else 0)
        | (_X_FLOAT32 if block.X.dtype == np.float32 else 0)
        | (_X_SPARSE if block.is_sparse else 0)
    )
    n_seq = 0 if block.lengths is None else block.lengths.size
    x_dtype = "<f4" if flags & _X_FLOAT32 else "<f8"
    if block.is_sparse:
        X = sparse_rows(block.X)
        parts = [
            _HEADER.pack(n, d, flags, n_seq),
            _NNZ.pack(X.nnz),
            X.data.astype(x_dtype, copy=False).tobytes(),
            X.indices.astype("<i4", copy=False).tobytes(),
            X.indptr.astype("<i4", copy=False).tobytes(),
        ]
    else:
        parts = [_HEADER.pack(n, d, flags, n_seq), block.X.astype(x_dtype, copy=False).tobytes()]
    if block.weight is not None:
        parts.append(block.weight.astype("<f8", copy=False).tobytes())
    if block.lengths is not None:
        parts.append(block.lengths.astype("<i8", copy=False).tobytes())
    if block.labels is not None:
        parts.append(block.labels.astype("<i8", copy=False).tobytes())
    return b"".join(parts)


def decode_block(data: bytes) -> Block:
    n, d, flags, n_seq = _HEADER.unpack_from(data, 0)
    off = _HEADER.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal off
        out = np.frombuffer(data, dtype=dtype, count=count, offset=off).copy()
        off += out.itemsize * count
        return out

    x_dtype = "<f4" if flags & _X_FLOAT32 else "<f8"
    X: Any
    if flags & _X_SPARSE:
        (nnz,) = _NNZ.unpack_from(data, off)
        off += _NNZ.size
        values, indices, indptr = take(x_dtype, nnz), take("<i4", nnz), take("<i4", n + 1)
        X = sp.csr_array((values, indices, indptr), shape=(n, d))
    else:
        X = take(x_dtype, n * d).reshape(n, d)
    weight = take("<f8", n) if flags & _HAS_WEIGHT else None
    lengths = take("<i8", n_seq) if flags & _HAS_LENGTHS else None
    labels = take("<i8", n) if flags & _HAS_LABELS else None
    return Block(X, weight, lengths, labels)


def target_block_rows(n_features: int, budget_values: int = 1 << 20) -> int:
    """Rows per block: about 8 MB of features, between 1k and 64k rows.

    Large enough that numpy/BLAS dominates the per-block Python cost, small enough
    that the E-step's (rows x components) temporaries stay cache- and memory-friendly.
    For sparse blocks ``n_features`` is the non-zeros per row (see :func:`merge_stream`).
    """
    return int(min(65536, max(1024, budget_values // max(n_features, 1))))


def merge_blocks(blocks: Iterable[Block], max_rows: int) -> list[Block]:
    """Concatenate consecutive blocks while the result stays within ``max_rows``."""
    return list(merge_stream(blocks, lambda _: max_rows))


def merge_stream(blocks: Iterable[Block], max_rows: Callable[[int], int] = target_block_rows) -> Iterator[Block]:
    """:func:`merge_blocks` as a stream: each merged block is yielded as soon as it is full, so
    at most one merged block is held. ``max_rows(width)`` is asked with the first block: its
    number of features, or for a sparse block its mean non-zeros per row (rounded up), since a
    sparse block's memory and E-step cost follow its non-zeros."""
    pending: list[Block] = []
    pending_rows, limit = 0, 0
    for b in blocks:
        if not pending and not limit:
            limit = max_rows(-(-b.n_stored // max(b.n_rows, 1)) if b.is_sparse else b.n_features)
        if pending and pending_rows + b.n_rows > limit:
            yield Block.concat(pending, pending[0].n_features)
            pending, pending_rows = [], 0
        pending.append(b)
        pending_rows += b.n_rows
    if pending:
        yield pending[0] if len(pending) == 1 else Block.concat(pending, pending[0].n_features)
