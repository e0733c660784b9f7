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

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from em_spark.engine.load_summary import RowProblems
from em_spark.models.base import Block, sparse_rows

__all__ = [
    "DTYPES",
    "FEATURES_FIELD",
    "LABEL_FIELD",
    "WEIGHT_FIELD",
    "InputSpec",
    "block_from_arrow",
    "convert_arrow",
]

# array<double> (a row), array<array<double>> (a sequence), or for a sparse load the Vector
# column itself, which Arrow carries as its SQL struct (see _sparse_vectors)
FEATURES_FIELD = "__em_x"
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
    sparse : the features are a Vector column read as its struct (type, size, indices, values),
        into sparse blocks (CSR); dense vectors in it become CSR rows too (a family's
        ``accepts_sparse``)
    counts : every value must be a non-negative integer (a family's ``needs_counts``); other rows
        are bad (``noncount_rows``)
    """

    sequences: bool = False
    allow_missing: bool = False
    k: int | None = None
    dtype: str = "float64"
    sparse: bool = False
    counts: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.sparse and (self.sequences or self.allow_missing):
            raise ValueError("sparse blocks hold rows without missing values, not sequences")


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


def _noncount_entries(flat: np.ndarray) -> np.ndarray:
    """Mask of finite entries that are not non-negative integers (non-finite ones are bad already)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(flat) & ((flat < 0) | (flat != np.floor(flat)))


def _vectors(
    x: pa.Array, expected_features: int | None, allow_missing: bool, dtype: str = "float64", counts: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of a list<double> array as an (n_good, d) matrix of ``dtype``, and why the others failed.

    Returns (X of the good rows, good, null_row, ragged_row, nonfinite_row, overflow_row,
    noncount_row, d), masks of shape (n,); ``noncount_row`` is all False unless ``counts``.
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
    noncount_row = rows_with(_noncount_entries(flat)) & ~nonfinite_row & ~overflow_row if counts else np.zeros(n, bool)
    good = ~(null_row | ragged_row | nonfinite_row | overflow_row | noncount_row)
    if d <= 0:
        X = np.empty((0, max(d, 0)))
    elif not (null_row.any() or ragged_row.any()):
        X = flat.reshape(n, d)[good]
    else:
        # Row-wise offsets of the non-null rows, then gather the good ones.
        good_kept = good[~null_row]
        X = flat[starts[good_kept][:, None] + np.arange(d)[None, :]]
    return (
        np.ascontiguousarray(X, dtype=dtype),
        good,
        null_row,
        ragged_row,
        nonfinite_row,
        overflow_row,
        noncount_row,
        d,
    )


def _sparse_vectors(
    x: pa.Array, expected_features: int | None, dtype: str, counts: bool
) -> tuple[sp.csr_array, np.ndarray, RowProblems, int]:
    """The rows of a Vector column as an (n_good, d) CSR array of ``dtype``, never densified.

    ``x`` is the Vector's SQL struct as Arrow carries it (what ``mapInArrow`` and Arrow UDFs
    deliver for a VectorUDT column, classic and Connect alike): ``type`` int8 (0 sparse,
    1 dense), ``size`` int32 (null for dense), ``indices`` list<int32> (null for dense) and
    ``values`` list<double>. A row's length is its ``size`` (dense: the number of values).
    Entries whose bits are those of +0.0 are dropped, so a dense and a sparse copy of a row
    give the same CSR row (explicit -0.0 stays: its bits differ).

    Returns (X of the good rows, good (n,), the RowProblems of the bad ones, d).
    """
    n = len(x)
    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks()
    null_row = x.is_null().to_numpy(zero_copy_only=False).astype(bool) if x.null_count else np.zeros(n, bool)
    fields = {x.type.field(i).name: child for i, child in enumerate(x.flatten())}  # parent nulls merged
    vtype = fields["type"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    size = fields["size"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    values, indices = fields["values"], fields["indices"]

    def list_lengths(a: pa.Array) -> np.ndarray:
        return pc.list_value_length(a).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)

    value_len, index_len = list_lengths(values), list_lengths(indices)
    is_sparse_row = vtype == 0
    null_row |= ~((vtype == 0) | (vtype == 1))
    row_size = np.where(is_sparse_row, size, value_len)
    valid_sizes = row_size[~null_row]
    if expected_features is not None:
        d = int(expected_features)
    else:
        d = int(valid_sizes[0]) if valid_sizes.size else -1
    ragged_row = ~null_row & ((row_size != d) | (row_size == 0))

    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    entry_row = np.repeat(np.arange(n), value_len)
    starts = np.concatenate([[0], np.cumsum(value_len)[:-1]]).astype(np.int64)
    position = np.arange(flat.size) - starts[entry_row]
    cols = position.copy()  # dense rows: 0..len-1
    bad_index_row = is_sparse_row & ~null_row & ~ragged_row & (index_len != value_len)
    from_indices = is_sparse_row[entry_row] & ~bad_index_row[entry_row]
    if from_indices.any():
        index_flat = indices.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        index_starts = np.concatenate([[0], np.cumsum(index_len)[:-1]]).astype(np.int64)
        cols[from_indices] = index_flat[index_starts[entry_row[from_indices]] + position[from_indices]]
    # indices strictly increasing within 0..size-1: each entry above its predecessor in the row
    out_of_range = (cols < 0) | (cols >= np.maximum(row_size[entry_row], 0))
    not_increasing = np.zeros(flat.size, bool)
    not_increasing[1:] = (position[1:] > 0) & (cols[1:] <= cols[:-1])

    def rows_with(entries: np.ndarray) -> np.ndarray:
        return np.bincount(entry_row[entries], minlength=n) > 0 if entries.any() else np.zeros(n, bool)

    checked = ~null_row & ~ragged_row
    bad_index_row |= rows_with(out_of_range | not_increasing) & checked
    checked &= ~bad_index_row
    bad_entry, overflow_entry = _bad_entries(flat, False, dtype)
    nonfinite_row = rows_with(bad_entry) & checked
    overflow_row = rows_with(overflow_entry) & checked & ~nonfinite_row
    noncount_row = np.zeros(n, bool)
    if counts:
        noncount_row = rows_with(_noncount_entries(flat)) & checked & ~nonfinite_row & ~overflow_row
    good = checked & ~(nonfinite_row | overflow_row | noncount_row)

    keep = good[entry_row] & (flat.view(np.uint64) != 0)  # (+0.0 has all bits zero)
    new_row = np.cumsum(good) - 1  # a good row's index among the good rows
    per_row = np.bincount(new_row[entry_row[keep]], minlength=int(good.sum()))
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    X = sp.csr_array(
        (flat[keep].astype(dtype), cols[keep].astype(np.int32), indptr), shape=(int(good.sum()), max(d, 0))
    )
    problems = RowProblems(
        null_rows=int(null_row.sum()),
        ragged_rows=int(ragged_row.sum()),
        nonfinite_rows=int(nonfinite_row.sum()),
        overflow_rows=int(overflow_row.sum()),
        noncount_rows=int(noncount_row.sum()),
        bad_index_rows=int(bad_index_row.sum()),
    )
    return X, good, problems, d


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
    if spec.sparse:
        return _convert_sparse(batch, x, expected_features, spec)
    X, good, null_row, ragged_row, nonfinite_row, overflow_row, noncount_row, d = _vectors(
        x, expected_features, spec.allow_missing, spec.dtype, spec.counts
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
        noncount_rows=int(noncount_row.sum()),
    )
    return block, good, problems, d


def _convert_sparse(
    batch: pa.RecordBatch | pa.Table, x: pa.Array, expected_features: int | None, spec: InputSpec
) -> tuple[Block, np.ndarray, RowProblems, int]:
    """:func:`convert_arrow` of a Vector column into a sparse block (weights and labels as for dense rows)."""
    n = len(x)
    X, vector_ok, problems, d = _sparse_vectors(x, expected_features, spec.dtype, spec.counts)
    weight, bad_weight_row = _weights(batch, n)
    labels, bad_label_row = _labels(batch, n, spec.k)
    good = vector_ok & ~bad_weight_row & ~bad_label_row
    if not good[vector_ok].all():
        X = sparse_rows(X[np.flatnonzero(good[vector_ok]), :])
    block = Block(
        X,
        None if weight is None else np.ascontiguousarray(weight[good]),
        labels=None if labels is None else np.ascontiguousarray(labels[good]),
    )
    problems = replace(
        problems,
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
    sequence's weight repeated), as Block documents. When missing values are modelled, a null
    step is a step of NaN (it keeps its place in time). Labels, when given, are a list per
    sequence with one known state per step (null or negative: unknown; a null list: all unknown).
    """
    seqs = _column(batch, FEATURES_FIELD)
    n = len(seqs)
    seq_len = pc.list_value_length(seqs).to_numpy(zero_copy_only=False)
    null_seq = np.isnan(seq_len) if seq_len.dtype.kind == "f" else np.zeros(n, bool)
    seq_len = np.where(null_seq, 0, seq_len).astype(np.int64)
    observations = seqs.flatten()  # the steps of all non-null sequences, in order
    if pa.types.is_list(observations.type) or pa.types.is_large_list(observations.type):
        X_obs, obs_good, obs_null, obs_ragged, _, obs_overflow, _, d = _vectors(
            observations, expected_features, spec.allow_missing, spec.dtype
        )
        if spec.allow_missing and d > 0 and obs_null.any():  # a null step: every feature missing
            steps = np.full((len(observations), d), np.nan, dtype=spec.dtype)
            steps[obs_good] = X_obs
            obs_good = obs_good | obs_null
            X_obs = steps[obs_good]
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
    step_labels, label_length_seq, bad_label_seq = _step_labels(batch, seq_len, spec.k)
    shape_ok = ~(empty_seq | bad_seq)
    good = shape_ok & ~bad_weight_seq & ~label_length_seq & ~bad_label_seq
    keep_obs = good[seq_of_obs][obs_good]  # good sequences have only good steps
    X = X_obs[keep_obs] if not keep_obs.all() else X_obs
    lengths = seq_len[good]
    block = Block(
        np.ascontiguousarray(X),
        None if weight is None else np.repeat(weight[good], lengths),
        lengths=lengths,
        labels=None if step_labels is None else np.ascontiguousarray(step_labels[good[seq_of_obs]]),
    )
    weight_ok = shape_ok & ~bad_weight_seq
    problems = RowProblems(
        null_rows=int(empty_seq.sum()),
        ragged_rows=int((ragged_seq & ~empty_seq).sum()),
        nonfinite_rows=int((nonfinite_seq & ~empty_seq).sum()),
        overflow_rows=int((overflow_seq & ~empty_seq).sum()),
        bad_weight_rows=int((bad_weight_seq & shape_ok).sum()),
        label_length_rows=int((label_length_seq & weight_ok).sum()),
        bad_label_rows=int((bad_label_seq & weight_ok & ~label_length_seq).sum()),
    )
    return block, good, problems, d


def _step_labels(
    batch: pa.RecordBatch | pa.Table, seq_len: np.ndarray, k: int | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(labels per step (sum(seq_len),) or None, length mismatch (n,), label >= k (n,)) of a list
    label column: one known state per step of each sequence, null or negative for unknown.

    A null list leaves every step of its sequence unknown; a list whose length is not the
    sequence's is refused (a label belongs to one step: a shorter list would shift them)."""
    n = seq_len.size
    if LABEL_FIELD not in batch.schema.names:
        return None, np.zeros(n, bool), np.zeros(n, bool)
    column = _column(batch, LABEL_FIELD)
    lab_len = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    null_list = np.isnan(lab_len) if lab_len.dtype.kind == "f" else np.zeros(n, bool)
    lab_len = np.where(null_list, 0, lab_len).astype(np.int64)
    flat = column.flatten().fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    flat = np.where(flat < 0, -1, flat)
    mismatch = ~null_list & (lab_len != seq_len)
    lab_seq = np.repeat(np.arange(n), lab_len)  # the sequence of each flat label
    too_big = np.zeros(n, bool)
    if k is not None and flat.size:
        too_big = (np.bincount(lab_seq[flat >= k], minlength=n) > 0) & ~mismatch
    labels = np.full(int(seq_len.sum()), -1, dtype=np.int64)
    usable = ~null_list & ~mismatch
    if usable.any():
        step_start = np.concatenate([[0], np.cumsum(seq_len)[:-1]]).astype(np.int64)
        lab_start = np.concatenate([[0], np.cumsum(lab_len)[:-1]]).astype(np.int64)
        taken = usable[lab_seq]
        position = np.arange(flat.size) - lab_start[lab_seq]
        labels[step_start[lab_seq[taken]] + position[taken]] = flat[taken]
    return labels, mismatch, too_big
