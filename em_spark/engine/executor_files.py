"""A partition's blocks kept in a file on the executor, mapped into the Python workers.

Why: a cached PySpark RDD is streamed from the JVM to the Python worker and unpickled on
every task, which on 1M x 10 rows costs more than the E-step itself. Written once per
partition during the load pass, the same rows are then read through the OS page cache
(``np.memmap``), shared by all Python workers of the executor, with no copy.

The file is an acceleration, never the source of truth: a reader that finds it missing
or inconsistent says so, and the engine falls back to the Spark-managed blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from em_spark.models.base import Block, sparse_rows

__all__ = [
    "LocalPartition",
    "PartitionWriter",
    "executor_root",
    "read_partition",
    "remove_partition",
    "write_partition",
]

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
    nnz: int | None = None  # sparse blocks: the non-zeros of all blocks (None: dense blocks)

    @property
    def stem(self) -> str:
        return os.path.join(self.directory, f"part-{self.index:05d}")


def _publish(tmp_path: str, path: str) -> None:
    os.replace(tmp_path, path)  # atomic on POSIX: readers see the whole file or none


def executor_root() -> str:
    """This executor's own directory (Spark's files root), for block and scratch files; a
    temporary directory when there is none (a worker outside Spark, a test)."""
    try:
        from pyspark import SparkFiles

        root = SparkFiles.getRootDirectory()
    except Exception:  # noqa: BLE001 -- no Spark files root in this worker: a temporary directory serves
        root = None
    return root or tempfile.gettempdir()


_EXTENSIONS = (".x.bin", ".w.bin", ".l.bin", ".y.bin", ".i.bin", ".p.bin")


class PartitionWriter:
    """Writes one partition's blocks to its files as they come, holding none of them.

    Layout: ``part-NNNNN.x.bin`` (rows, d) raw little-endian values in the blocks' dtype,
    optionally ``.w.bin`` (rows,) float64 weights, ``.l.bin`` (sequences,) int64 lengths and
    ``.y.bin`` (rows,) int64 labels, then ``.json`` last (shape, dtype, block sizes and the token
    of this write): the json is the commit marker. Raw files, not ``.npy``, because the row count
    is known only at the end; the json says how to map them.

    Sparse blocks (CSR) keep disk and memory proportional to their non-zeros: ``.x.bin`` holds
    the values of all blocks (nnz,), ``.i.bin`` their int32 column indices (nnz,) and ``.p.bin``
    each block's own int32 indptr (rows + 1 per block, each starting at 0), so a reader maps
    every block's three arrays as views, without rebasing.

    Why streaming: the load pass used to hold a partition several times over (its payloads,
    the decoded blocks, the merged blocks and one concatenated copy), so a task's memory grew
    with the data; now it holds one block.
    """

    def __init__(self, directory: str, index: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory, self.index = directory, index
        self.token = uuid.uuid4().hex
        self.stem = os.path.join(directory, f"part-{index:05d}")
        self._files: dict[str, Any] = {}
        self.rows, self.n_features, self.dtype = 0, 0, "<f8"
        self.block_rows: list[int] = []
        self.block_sequences: list[int] = []
        self.has_weight = self.has_labels = self.sequences = self.sparse = False
        self.nnz = 0

    def _append(self, ext: str, array: np.ndarray) -> None:
        f = self._files.get(ext)
        if f is None:
            f = self._files[ext] = open(f"{self.stem}{ext}.{self.token}.tmp", "wb")  # noqa: SIM115 -- closed by commit/abort
        f.write(np.ascontiguousarray(array).tobytes())

    def add(self, block: Block) -> None:
        """Append ``block``'s rows (a block of a partition of sequences has lengths, all do)."""
        if not block.n_rows:
            return
        if not self.block_rows:
            self.n_features, self.dtype = block.n_features, block.X.dtype.newbyteorder("<").str
            self.sequences, self.sparse = block.lengths is not None, block.is_sparse
        if (
            block.n_features != self.n_features
            or (block.lengths is not None) != self.sequences
            or block.is_sparse != self.sparse
        ):
            raise ValueError(
                "a partition's blocks must share their features and their kind (rows or sequences, dense or sparse)"
            )
        if self.sparse:
            X = sparse_rows(block.X)
            self._append(".x.bin", X.data.astype(self.dtype, copy=False))
            self._append(".i.bin", X.indices.astype("<i4", copy=False))
            self._append(".p.bin", X.indptr.astype("<i4", copy=False))
            self.nnz += int(X.nnz)
        else:
            self._append(".x.bin", block.X.astype(self.dtype, copy=False))
        # weights and labels: present in one block, present for all (ones, -1 for those before)
        if block.weight is not None and not self.has_weight:
            self.has_weight = True
            self._append(".w.bin", np.ones(self.rows))
        if self.has_weight:
            self._append(".w.bin", block.weights_or_ones().astype("<f8", copy=False))
        if block.labels is not None and not self.has_labels:
            self.has_labels = True
            self._append(".y.bin", np.full(self.rows, -1, "<i8"))
        if self.has_labels:
            labels = block.labels if block.labels is not None else np.full(block.n_rows, -1)
            self._append(".y.bin", labels.astype("<i8", copy=False))
        if block.lengths is not None:
            self._append(".l.bin", block.lengths.astype("<i8", copy=False))
            self.block_sequences.append(block.lengths.size)
        self.rows += block.n_rows
        self.block_rows.append(block.n_rows)

    def commit(self) -> LocalPartition:
        """Publish the files (the json last) and return the partition's handle."""
        if ".x.bin" not in self._files:  # an empty partition still has its (empty) rows file
            self._append(".x.bin", np.empty((0, self.n_features)))
        for ext, f in list(self._files.items()):
            f.close()
            _publish(f"{self.stem}{ext}.{self.token}.tmp", f"{self.stem}{ext}")
        self._files.clear()
        meta = {
            "token": self.token,
            "rows": self.rows,
            "d": self.n_features,
            "dtype": self.dtype,
            "block_rows": self.block_rows,
            "has_weight": self.has_weight,
        }
        if self.sparse:
            meta["nnz"] = self.nnz
        tmp = f"{self.stem}.json.{self.token}.tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f)
        _publish(tmp, f"{self.stem}.json")
        return LocalPartition(
            index=self.index,
            directory=self.directory,
            rows=self.rows,
            n_features=self.n_features,
            block_rows=tuple(self.block_rows),
            has_weight=self.has_weight,
            token=self.token,
            block_sequences=tuple(self.block_sequences) if self.sequences else None,
            has_labels=self.has_labels,
            nnz=self.nnz if self.sparse else None,
        )

    def abort(self) -> None:
        """Remove what this write left (best effort): nothing half-written stays."""
        for ext, f in list(self._files.items()):
            f.close()
            with contextlib.suppress(OSError):
                os.remove(f"{self.stem}{ext}.{self.token}.tmp")
        self._files.clear()


def write_partition(directory: str, index: int, blocks: Iterable[Block]) -> LocalPartition:
    """Write the blocks of partition ``index`` under ``directory`` (streaming); return its handle."""
    writer = PartitionWriter(directory, index)
    try:
        for block in blocks:
            writer.add(block)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _map(path: str, dtype: str, shape: tuple[int, ...], mmap: bool = True) -> np.ndarray:
    """A raw file as a read-only array of ``shape`` (a mapping unless ``mmap`` is False).

    Raises ValueError when the file's size is not exactly that of ``shape``."""
    if os.path.getsize(path) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise ValueError(f"{path} does not hold {shape} values of {dtype}")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)  # an empty file cannot be mapped
    if not mmap:
        return np.fromfile(path, dtype=dtype).reshape(shape)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def read_partition(handle: LocalPartition) -> list[Block] | None:
    """The partition's blocks as read-only views of mapped files, or None if not here."""
    stem = handle.stem
    try:
        # the files' times and the handle asking: a cached mapping answers only the handle it was checked for
        signature = (*(os.stat(f"{stem}{ext}").st_mtime_ns for ext in (".json", ".x.bin")), handle)
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
        n_rows, d = handle.rows, handle.n_features
        if (meta["rows"], meta["d"]) != (n_rows, d) or meta.get("nnz") != handle.nnz:
            return None
        if handle.nnz is not None:
            return _read_sparse(handle, meta, signature)
        X = _map(f"{stem}.x.bin", meta.get("dtype", "<f8"), (n_rows, d))
        W = _map(f"{stem}.w.bin", "<f8", (n_rows,)) if handle.has_weight else None
        L = None
        if handle.block_sequences is not None:
            L = _map(f"{stem}.l.bin", "<i8", (sum(handle.block_sequences),), mmap=False)
        Y = _map(f"{stem}.y.bin", "<i8", (n_rows,)) if handle.has_labels else None
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


def _read_sparse(handle: LocalPartition, meta: dict[str, Any], signature: tuple) -> list[Block] | None:
    """The sparse blocks of a partition (see :class:`PartitionWriter`), each X a CSR array over
    views of the mapped values, indices and its own indptr; None when the files do not cut into
    this write's blocks."""
    import scipy.sparse as sp

    stem, nnz, d = handle.stem, int(handle.nnz or 0), handle.n_features
    try:
        values = _map(f"{stem}.x.bin", meta.get("dtype", "<f8"), (nnz,))
        indices = _map(f"{stem}.i.bin", "<i4", (nnz,))
        pointers = _map(f"{stem}.p.bin", "<i4", (handle.rows + len(handle.block_rows),))
        W = _map(f"{stem}.w.bin", "<f8", (handle.rows,)) if handle.has_weight else None
        Y = _map(f"{stem}.y.bin", "<i8", (handle.rows,)) if handle.has_labels else None
    except (OSError, ValueError):
        return None
    blocks, start, p, z = [], 0, 0, 0
    for n in handle.block_rows:
        indptr = pointers[p : p + n + 1]
        block_nnz = int(indptr[-1])
        if int(indptr[0]) != 0 or z + block_nnz > nnz:
            return None
        X = sp.csr_array((values[z : z + block_nnz], indices[z : z + block_nnz], indptr), shape=(n, d))
        rows = slice(start, start + n)
        blocks.append(Block(X, None if W is None else W[rows], labels=None if Y is None else Y[rows]))
        start, p, z = start + n, p + n + 1, z + block_nnz
    if z != nnz:
        return None
    _OPEN[stem] = (signature, blocks)
    return blocks


def remove_partition(handle: LocalPartition) -> None:
    """Delete the partition's files (best effort) and forget open mappings."""
    stem = handle.stem
    _OPEN.pop(stem, None)
    for ext in (".json", *_EXTENSIONS):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{stem}{ext}")
    with contextlib.suppress(OSError):  # not empty yet (other partitions) or already gone
        os.rmdir(handle.directory)
