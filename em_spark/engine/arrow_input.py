"""From Arrow record batches to validated numpy blocks: what the load pass reads.

Pure numpy/pyarrow: runs inside Spark's Python workers during the load pass (and when
scoring), and in tests without a JVM. The input DataFrame is first projected onto the
columns named here (``FEATURES_FIELD``, ``WEIGHT_FIELD``, ``LABEL_FIELD``); an
:class:`InputSpec` says how to read them (rows or sequences, missing values modelled or
not, labels up to k). Nothing here raises on bad rows: each conversion returns the valid
rows as a :class:`~em_spark.models.base.Block` and counts the others in a
:class:`~em_spark.engine.load_summary.RowProblems`, so the driver can raise one clear
error before iteration 1 instead of a stack trace from an executor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from em_spark.engine.load_summary import RowProblems
from em_spark.models.base import Block

__all__ = [
    "DTYPES",
    "FEATURES_FIELD",
    "LABEL_FIELD",
    "WEIGHT_FIELD",
    "InputSpec",
    "block_from_arrow",
    "convert_arrow",
]

FEATURES_FIELD = "__em_x"  # array<double> (a row) or array<array<double>> (a sequence)
WEIGHT_FIELD = "__em_w"  # double, the sample weight of a row or sequence (absent: unit weights)
LABEL_FIELD = "__em_y"  # long, a known component (null or negative: unknown)

#: the storage dtypes of a block's X; float64 is the default, float32 halves memory and disk
DTYPES = ("float64", "float32")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class InputSpec:
    """How the load pass reads rows, as the family's protocol flags ask.

    sequences : each row holds one sequence (a list of feature vectors, or of numbers)
    allow_missing : NaN or null entries inside a vector are kept (as NaN) to be modelled
    k : components, to refuse labels that are not component ids (None: no label column)
    dtype : "float64" or "float32", the dtype of the blocks' X. Rows are validated in float64;
        with float32, a finite value beyond float32's range is a bad row (``overflow_rows``),
        never an infinity inside a block.
    """

    sequences: bool = False
    allow_missing: bool = False
    k: int | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


def block_from_arrow(batch: pa.RecordBatch | pa.Table, spec: InputSpec = InputSpec()) -> tuple[Block, RowProblems, int]:
    """Convert the ``FEATURES_FIELD`` (and optional weight and label) columns.

    Returns
    -------
    block : Block holding only the valid rows (or whole valid sequences)
    problems : RowProblems, counts of dropped rows (or sequences)
    n_features : int, length of the first non-null vector (-1 when there is none)
    """
    block, _, problems, d = convert_arrow(batch, spec=spec)
    return block, problems, d


def _bad_entries(flat: np.ndarray, allow_missing: bool, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(non-finite, overflowing) masks of float64 entries: a null entry converts to NaN, so one
    test covers both; when missing values are modelled, NaN and null are kept and only
    infinities are refused. ``overflowing``: finite, but beyond float32's range (dtype float32)."""
    nonfinite = np.isinf(flat) if allow_missing else ~np.isfinite(flat)
    if dtype == "float32":
        with np.errstate(invalid="ignore"):
            overflow = np.abs(flat) > _FLOAT32_MAX  # (NaN compares False; infinities are non-finite already)
        return nonfinite, overflow & ~nonfinite
    return nonfinite, np.zeros(flat.shape, bool)


def _vectors(
    x: pa.Array, expected_features: int | None, allow_missing: bool, dtype: str = "float64"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of a list<double> array as an (n_good, d) matrix of ``dtype``, and why the others failed.

    Returns (X of the good rows, good, null_row, ragged_row, nonfinite_row, overflow_row, d), masks
    of shape (n,).
    """
    n = len(x)
    lengths = pc.list_value_length(x).to_numpy(zero_copy_only=False)  # NaN where null
    null_row = np.isnan(lengths) if lengths.dtype.kind == "f" else np.zeros(n, bool)
    lengths = np.where(null_row, -1, lengths).astype(np.int64)
    valid_lengths = lengths[~null_row]
    if expected_features is not None:
        d = int(expected_features)
    else:
        d = int(valid_lengths[0]) if valid_lengths.size else -1
    ragged_row = ~null_row & ((lengths != d) | (lengths == 0))

    values = x.flatten()  # the entries of all non-null vectors, in row order
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad_entry, overflow_entry = _bad_entries(flat, allow_missing, dtype)
    kept_lengths = lengths[~null_row]
    starts = np.concatenate([[0], np.cumsum(kept_lengths)[:-1]]).astype(np.int64)

    def rows_with(entries: np.ndarray) -> np.ndarray:
        rows = np.zeros(n, bool)
        if entries.any():
            row_of_entry = np.repeat(np.arange(kept_lengths.size), kept_lengths)
            rows[~null_row] = np.bincount(row_of_entry[entries], minlength=kept_lengths.size) > 0
            rows &= ~ragged_row
        return rows

    nonfinite_row = rows_with(bad_entry)
    overflow_row = rows_with(overflow_entry) & ~nonfinite_row
    good = ~(null_row | ragged_row | nonfinite_row | overflow_row)
    if d <= 0:
        X = np.empty((0, max(d, 0)))
    elif not (null_row.any() or ragged_row.any()):
        X = flat.reshape(n, d)[good]
    else:
        # Row-wise offsets of the non-null rows, then gather the good ones.
        good_kept = good[~null_row]
        X = flat[starts[good_kept][:, None] + np.arange(d)[None, :]]
    return np.ascontiguousarray(X, dtype=dtype), good, null_row, ragged_row, nonfinite_row, overflow_row, d


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    column = batch.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _weights(batch: pa.RecordBatch | pa.Table, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    if WEIGHT_FIELD not in batch.schema.names:
        return None, np.zeros(n, bool)
    w = _column(batch, WEIGHT_FIELD).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # null -> NaN
    return w, ~(np.isfinite(w) & (w >= 0))


def _labels(batch: pa.RecordBatch | pa.Table, n: int, k: int | None) -> tuple[np.ndarray | None, np.ndarray]:
    if LABEL_FIELD not in batch.schema.names:
        return None, np.zeros(n, bool)
    y = _column(batch, LABEL_FIELD).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    y = np.where(y < 0, -1, y)
    return y, (y >= k) if k is not None else np.zeros(n, bool)


def convert_arrow(
    batch: pa.RecordBatch | pa.Table,
    expected_features: int | None = None,
    spec: InputSpec = InputSpec(),
) -> tuple[Block, np.ndarray, RowProblems, int]:
    """Like :func:`block_from_arrow`, also returning the (n,) mask of rows (sequences) kept.

    ``expected_features`` fixes the vector length (when scoring with a fitted model);
    otherwise the first non-null vector sets it.
    """
    if spec.sequences:
        return _convert_sequences(batch, expected_features, spec)
    x = _column(batch, FEATURES_FIELD)
    n = len(x)
    X, good, null_row, ragged_row, nonfinite_row, overflow_row, d = _vectors(
        x, expected_features, spec.allow_missing, spec.dtype
    )
    weight, bad_weight_row = _weights(batch, n)
    labels, bad_label_row = _labels(batch, n, spec.k)
    vector_ok = good
    good = good & ~bad_weight_row & ~bad_label_row
    if not good[vector_ok].all():
        X = X[good[vector_ok]]
    block = Block(
        X,
        None if weight is None else np.ascontiguousarray(weight[good]),
        labels=None if labels is None else np.ascontiguousarray(labels[good]),
    )
    problems = RowProblems(
        null_rows=int(null_row.sum()),
        ragged_rows=int(ragged_row.sum()),
        nonfinite_rows=int(nonfinite_row.sum()),
        overflow_rows=int(overflow_row.sum()),
        bad_weight_rows=int((bad_weight_row & vector_ok).sum()),
        bad_label_rows=int((bad_label_row & vector_ok & ~bad_weight_row).sum()),
    )
    return block, good, problems, d


def _convert_sequences(
    batch: pa.RecordBatch | pa.Table, expected_features: int | None, spec: InputSpec
) -> tuple[Block, np.ndarray, RowProblems, int]:
    """One sequence per row: list<list<double>> (vectors) or list<double> (one number per step).

    A sequence with any bad observation is dropped whole (a sequence is never split); the
    counts in RowProblems are of sequences. The block's weight is per observation (each
    sequence's weight repeated), as Block documents.
    """
    seqs = _column(batch, FEATURES_FIELD)
    n = len(seqs)
    seq_len = pc.list_value_length(seqs).to_numpy(zero_copy_only=False)
    null_seq = np.isnan(seq_len) if seq_len.dtype.kind == "f" else np.zeros(n, bool)
    seq_len = np.where(null_seq, 0, seq_len).astype(np.int64)
    observations = seqs.flatten()  # the steps of all non-null sequences, in order
    if pa.types.is_list(observations.type) or pa.types.is_large_list(observations.type):
        X_obs, obs_good, _, obs_ragged, _, obs_overflow, d = _vectors(
            observations, expected_features, spec.allow_missing, spec.dtype
        )
    else:  # one number per step: a 1-feature sequence
        values = observations.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        d = 1 if expected_features is None else int(expected_features)
        obs_ragged = np.full(values.size, d != 1)
        nonfinite, obs_overflow = _bad_entries(values, spec.allow_missing, spec.dtype)
        obs_good = ~nonfinite & ~obs_overflow & ~obs_ragged
        X_obs = values[obs_good].reshape(-1, 1) if d == 1 else np.empty((0, max(d, 0)))
        X_obs = X_obs.astype(spec.dtype, copy=False)
    # Per sequence: any ragged (or null) step, any non-finite step.
    seq_of_obs = np.repeat(np.flatnonzero(~null_seq), seq_len[~null_seq])
    ragged_seq = np.bincount(seq_of_obs[obs_ragged], minlength=n) > 0
    bad_seq = np.bincount(seq_of_obs[~obs_good], minlength=n) > 0
    empty_seq = null_seq | (seq_len == 0)
    # one reason per sequence: non-finite (bad in any precision) before a float32 overflow
    nonfinite_seq = (np.bincount(seq_of_obs[~obs_good & ~obs_overflow], minlength=n) > 0) & ~ragged_seq
    overflow_seq = (np.bincount(seq_of_obs[obs_overflow], minlength=n) > 0) & ~ragged_seq & ~nonfinite_seq
    weight, bad_weight_seq = _weights(batch, n)
    shape_ok = ~(empty_seq | bad_seq)
    good = shape_ok & ~bad_weight_seq
    keep_obs = good[seq_of_obs][obs_good]  # good sequences have only good steps
    X = X_obs[keep_obs] if not keep_obs.all() else X_obs
    lengths = seq_len[good]
    block = Block(
        np.ascontiguousarray(X),
        None if weight is None else np.repeat(weight[good], lengths),
        lengths=lengths,
    )
    problems = RowProblems(
        null_rows=int(empty_seq.sum()),
        ragged_rows=int((ragged_seq & ~empty_seq).sum()),
        nonfinite_rows=int((nonfinite_seq & ~empty_seq).sum()),
        overflow_rows=int((overflow_seq & ~empty_seq).sum()),
        bad_weight_rows=int((bad_weight_seq & shape_ok).sum()),
    )
    return block, good, problems, d
