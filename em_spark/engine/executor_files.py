"""A partition's blocks kept in a file on the executor, mapped into the Python workers.

Why: a cached PySpark RDD is streamed from the JVM to the Python worker and unpickled on
every task, which on 1M x 10 rows costs more than the E-step itself. Written once per
partition during the load pass, the same rows are then read through the OS page cache
(``np.load(mmap_mode="r")``), shared by all Python workers of the executor, with no copy.

The file is an acceleration, never the source of truth: a reader that finds it missing
or inconsistent says so, and the engine falls back to the Spark-managed blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass

import numpy as np

from em_spark.models.base import Block

__all__ = ["LocalPartition", "read_partition", "remove_partition", "write_partition"]

# path -> (signature, blocks): mappings stay open in a reused Python worker, so an
# iteration does not even pay the page-table setup again.
_OPEN: dict[str, tuple[tuple, list[Block]]] = {}


@dataclass(frozen=True)
class LocalPartition:
    """Where one partition's blocks were written, and what a reader must find there."""

    index: int
    directory: str
    rows: int
    n_features: int
    block_rows: tuple[int, ...]
    has_weight: bool
    token: str  # unique per write: a stale file from an earlier write is never mistaken for this one
    block_sequences: tuple[int, ...] | None = None  # sequences per block, for sequence data
    has_labels: bool = False

    @property
    def stem(self) -> str:
        return os.path.join(self.directory, f"part-{self.index:05d}")


def _publish(tmp_path: str, path: str) -> None:
    os.replace(tmp_path, path)  # atomic on POSIX: readers see the whole file or none


def write_partition(directory: str, index: int, blocks: list[Block]) -> LocalPartition:
    """Write the blocks of partition ``index`` under ``directory``; return its handle.

    Layout: ``part-NNNNN.x.npy`` (rows, d) float64 or float32 as the blocks are, optionally ``.w.npy`` (rows,) weights,
    ``.l.npy`` (sequences,) lengths and ``.y.npy`` (rows,) labels, then ``.json`` last,
    naming the token of this write: the json is the commit marker.
    """
    os.makedirs(directory, exist_ok=True)
    d = blocks[0].n_features if blocks else 0
    has_weight = any(b.weight is not None for b in blocks)
    sequences = any(b.lengths is not None for b in blocks)
    has_labels = any(b.labels is not None for b in blocks)
    token = uuid.uuid4().hex
    handle = LocalPartition(
        index=index,
        directory=directory,
        rows=sum(b.n_rows for b in blocks),
        n_features=d,
        block_rows=tuple(b.n_rows for b in blocks),
        has_weight=has_weight,
        token=token,
        # (the blocks of a partition of sequences all have lengths)
        block_sequences=tuple(b.lengths.size for b in blocks if b.lengths is not None) if sequences else None,
        has_labels=has_labels,
    )
    stem = handle.stem
    X = np.concatenate([b.X for b in blocks]) if blocks else np.empty((0, d))
    # X keeps the blocks' dtype (float32 blocks: half the file and half the page cache).
    _save(f"{stem}.x.npy", np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64), token)
    if has_weight:
        _save(f"{stem}.w.npy", np.concatenate([b.weights_or_ones() for b in blocks]), token)
    if sequences:
        _save(f"{stem}.l.npy", np.concatenate([b.lengths for b in blocks]).astype(np.int64), token)
    if has_labels:
        labels = [b.labels if b.labels is not None else np.full(b.n_rows, -1, np.int64) for b in blocks]
        _save(f"{stem}.y.npy", np.concatenate(labels).astype(np.int64), token)
    meta = {
        "token": token,
        "rows": handle.rows,
        "d": d,
        "block_rows": list(handle.block_rows),
        "has_weight": has_weight,
    }
    tmp = f"{stem}.json.{token}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    _publish(tmp, f"{stem}.json")
    return handle


def _save(path: str, array: np.ndarray, token: str) -> None:
    tmp = f"{path}.{token}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    _publish(tmp, path)


def read_partition(handle: LocalPartition) -> list[Block] | None:
    """The partition's blocks as read-only views of mapped files, or None if not here."""
    stem = handle.stem
    try:
        signature = tuple(os.stat(f"{stem}{ext}").st_mtime_ns for ext in (".json", ".x.npy"))
    except FileNotFoundError:
        return None
    cached = _OPEN.get(stem)
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        with open(f"{stem}.json") as f:
            meta = json.load(f)
        if meta["token"] != handle.token:
            return None  # written by another load of the same data set; not ours
        X = np.load(f"{stem}.x.npy", mmap_mode="r", allow_pickle=False)
        W = np.load(f"{stem}.w.npy", mmap_mode="r", allow_pickle=False) if handle.has_weight else None
        L = np.load(f"{stem}.l.npy", allow_pickle=False) if handle.block_sequences is not None else None
        Y = np.load(f"{stem}.y.npy", mmap_mode="r", allow_pickle=False) if handle.has_labels else None
    except (OSError, ValueError, KeyError):
        return None
    if (
        X.shape != (handle.rows, handle.n_features)
        or (W is not None and W.shape != (handle.rows,))
        or (Y is not None and Y.shape != (handle.rows,))
        or (
            L is not None
            and handle.block_sequences is not None  # (L is read exactly when there are sequences)
            and (L.shape != (sum(handle.block_sequences),) or int(L.sum()) != handle.rows)
        )
    ):
        return None
    blocks, start, seq_start = [], 0, 0
    for i, n in enumerate(handle.block_rows):
        lengths = None
        if L is not None and handle.block_sequences is not None:
            n_seq = handle.block_sequences[i]
            lengths = L[seq_start : seq_start + n_seq]
            seq_start += n_seq
            if int(lengths.sum()) != n:
                return None  # the lengths do not cut this write's blocks: not ours
        rows = slice(start, start + n)
        blocks.append(Block(X[rows], None if W is None else W[rows], lengths, None if Y is None else Y[rows]))
        start += n
    _OPEN[stem] = (signature, blocks)
    return blocks


def remove_partition(handle: LocalPartition) -> None:
    """Delete the partition's files (best effort) and forget open mappings."""
    stem = handle.stem
    _OPEN.pop(stem, None)
    for ext in (".json", ".x.npy", ".w.npy", ".l.npy", ".y.npy"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{stem}{ext}")
    with contextlib.suppress(OSError):  # not empty yet (other partitions) or already gone
        os.rmdir(handle.directory)
