"""Sparse (CSR) blocks through the engine without a JVM: Arrow Vector structs -> CSR blocks with
bad rows counted, take/concat, the codec and the executor files (bytes follow the non-zeros),
fingerprint and sample equal to those of the dense copy of the same rows."""

import itertools
import os

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from em_spark.engine.arrow_input import FEATURES_FIELD, WEIGHT_FIELD, InputSpec, convert_arrow
from em_spark.engine.block_codec import decode_block, encode_block, merge_stream, target_block_rows
from em_spark.engine.executor_files import read_partition, write_partition
from em_spark.engine.fingerprint import row_hashes
from em_spark.engine.load_summary import summarize_block
from em_spark.engine.validation import DataValidationError, check_loaded
from em_spark.models.base import Block, sparse_rows

# What mapInArrow delivers for a pyspark.ml VectorUDT column (checked against a live session in
# tests/spark/test_sparse_input.py): the UDT's SQL struct.
VECTOR_STRUCT = pa.struct(
    [
        pa.field("type", pa.int8(), nullable=False),
        pa.field("size", pa.int32()),
        pa.field("indices", pa.list_(pa.int32())),
        pa.field("values", pa.list_(pa.float64())),
    ]
)


def sparse(size, indices, values):
    return {"type": 0, "size": size, "indices": list(indices), "values": list(values)}


def dense(values):
    return {"type": 1, "size": None, "indices": None, "values": list(values)}


def vector_batch(rows, weights=None):
    arrays, names = [pa.array(rows, VECTOR_STRUCT)], [FEATURES_FIELD]
    if weights is not None:
        arrays.append(pa.array(weights, pa.float64()))
        names.append(WEIGHT_FIELD)
    return pa.record_batch(arrays, names=names)


def random_counts(n, d, density, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random_array(
        (n, d), density=density, format="csr", rng=rng, data_sampler=lambda size: rng.integers(1, 6, size)
    )
    return sparse_rows(X.astype(np.float64))


def as_vectors(X):
    """Rows of a CSR array as Vector structs: sparse ones, and every third row dense."""
    rows = []
    for i in range(X.shape[0]):
        a, b = X.indptr[i], X.indptr[i + 1]
        if i % 3 == 2:
            rows.append(dense(X[[i], :].toarray()[0]))
        else:
            rows.append(sparse(X.shape[1], X.indices[a:b], X.data[a:b]))
    return rows


SPARSE = InputSpec(sparse=True)


def test_vector_structs_become_the_csr_rows_they_hold_sparse_or_dense():
    X = random_counts(40, 30, 0.1)
    block, kept, problems, d = convert_arrow(vector_batch(as_vectors(X)), spec=SPARSE)
    assert block.is_sparse and kept.all() and d == 30 and problems == type(problems)()
    assert block.X.has_canonical_format and block.X.indices.dtype == np.int32
    np.testing.assert_array_equal(block.X.toarray(), X.toarray())
    assert block.X.nnz == X.nnz  # the zeros of the dense rows are not stored


def test_float32_sparse_blocks_keep_float32_values():
    block, _, _, _ = convert_arrow(vector_batch([sparse(4, [1], [2.5])]), spec=InputSpec(sparse=True, dtype="float32"))
    assert block.X.dtype == np.float32 and block.X.toarray().tolist() == [[0.0, 2.5, 0.0, 0.0]]


def test_bad_vectors_are_counted_by_reason_and_dropped():
    rows = [
        sparse(4, [0, 2], [1.0, 3.0]),  # good
        None,  # null
        sparse(5, [0], [1.0]),  # ragged: size 5
        dense([1.0, 2.0]),  # ragged: 2 values
        sparse(4, [2, 1], [1.0, 1.0]),  # indices not increasing
        sparse(4, [1, 1], [1.0, 1.0]),  # duplicate index
        sparse(4, [4], [1.0]),  # index out of range
        sparse(4, [0, 1], [1.0]),  # indices and values differ in length
        sparse(4, [3], [float("nan")]),  # non-finite
        dense([0.0, float("inf"), 0.0, 1.0]),  # non-finite
        sparse(4, [1], [-1.0]),  # not a count
        dense([0.0, 0.5, 0.0, 1.0]),  # not a count
        dense([0.0, 0.0, 7.0, 0.0]),  # good
        sparse(4, [1], [2.0]),  # good row, bad weight
    ]
    weights = [1.0] * 13 + [-1.0]
    spec = InputSpec(sparse=True, counts=True)
    block, kept, problems, d = convert_arrow(vector_batch(rows, weights), spec=spec)
    assert d == 4
    np.testing.assert_array_equal(np.flatnonzero(kept), [0, 12])
    np.testing.assert_array_equal(block.X.toarray(), [[1.0, 0, 3.0, 0], [0, 0, 7.0, 0]])
    assert (problems.null_rows, problems.ragged_rows, problems.bad_index_rows) == (1, 2, 4)
    assert (problems.nonfinite_rows, problems.noncount_rows, problems.bad_weight_rows) == (2, 2, 1)
    # without the counts rule, negative and fractional values are fine
    _, kept, problems, _ = convert_arrow(vector_batch(rows, weights), spec=SPARSE)
    assert problems.noncount_rows == 0 and kept[[10, 11]].all()


def test_the_counts_rule_holds_for_dense_rows_too_and_names_the_column_and_fix():
    batch = pa.record_batch([pa.array([[1.0, 2.0], [1.0, -2.0], [0.5, 0.0]], pa.list_(pa.float64()))], [FEATURES_FIELD])
    block, kept, problems, _ = convert_arrow(batch, spec=InputSpec(counts=True))
    assert problems.noncount_rows == 2 and kept.tolist() == [True, False, False] and not block.is_sparse
    summary = summarize_block(block, 10, 0, problems)
    with pytest.raises(
        DataValidationError,
        match=r"2 row\(s\) have a negative or non-integer value in column 'x'.*"
        r"non-negative integer counts: drop or round those rows",
    ):
        check_loaded(summary, 1, "column 'x'", None)


def test_scoring_fixes_the_width_and_marks_other_sizes_unscorable():
    rows = [sparse(4, [1], [1.0]), sparse(3, [1], [1.0]), None, dense([1.0, 0, 0, 2.0])]
    block, kept, _, _ = convert_arrow(vector_batch(rows), expected_features=4, spec=SPARSE)
    assert kept.tolist() == [True, False, False, True] and block.X.shape == (2, 4)


def test_take_and_concat_of_sparse_blocks_are_sparse_and_mixing_kinds_is_refused():
    X = random_counts(20, 7, 0.3)
    block = Block(X, np.arange(20.0), labels=np.arange(20) % 3 - 1)
    for rows in (np.array([3, 1, 19]), np.arange(20) % 4 == 0):
        part = block.take(rows)
        assert part.is_sparse
        np.testing.assert_array_equal(part.X.toarray(), X.toarray()[rows])
        np.testing.assert_array_equal(part.weight, block.weight[rows])
        np.testing.assert_array_equal(part.labels, block.labels[rows])
    whole = Block.concat([block.take(np.arange(0, 8)), block.take(np.arange(8, 20))], 7)
    assert whole.is_sparse and whole.X.has_canonical_format
    np.testing.assert_array_equal(whole.X.toarray(), X.toarray())
    with pytest.raises(ValueError, match="cannot concatenate sparse blocks with dense blocks"):
        Block.concat([block, Block(X.toarray())], 7)
    with pytest.raises(ValueError, match="csr_array"):
        Block(sp.coo_array(X))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("weighted", [False, True])
def test_codec_round_trips_sparse_blocks_exactly_in_bytes_that_follow_the_non_zeros(dtype, weighted):
    X = random_counts(50, 1000, 0.01).astype(dtype)
    block = Block(sparse_rows(X), np.linspace(0, 1, 50) if weighted else None)
    data = encode_block(block)
    back = decode_block(data)
    assert back.is_sparse and back.X.dtype == np.dtype(dtype)
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(back.X, name), getattr(block.X, name))
    assert (back.weight is None) == (not weighted)
    itemsize = np.dtype(dtype).itemsize
    assert len(data) == 25 + 8 + X.nnz * (itemsize + 4) + 51 * 4 + (50 * 8 if weighted else 0)
    assert len(data) < 50 * 1000 * 8 / 20


def test_sparse_blocks_merge_by_non_zeros_per_row():
    X = random_counts(3000, 50_000, 20 / 50_000)  # ~20 non-zeros per row
    pieces = [Block(X[a : a + 100, :]) for a in range(0, 3000, 100)]
    asked = []
    merged = list(merge_stream(pieces, lambda width: asked.append(width) or 1000))
    assert asked == [-(-pieces[0].X.nnz // 100)]  # the first block's non-zeros per row, not its 50,000 columns
    assert [b.n_rows for b in merged] == [1000, 1000, 1000] and all(b.is_sparse for b in merged)
    whole = sp.vstack([b.X for b in merged], format="csr")
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(X, name))
    assert target_block_rows(20) == 52428  # a dense 50,000-wide block would get 1024 rows


@pytest.mark.parametrize("weighted", [False, True])
def test_executor_files_of_sparse_blocks_are_csr_views_sized_by_the_non_zeros(tmp_path, weighted):
    X = random_counts(300, 50_000, 5 / 50_000)
    blocks = [Block(X[a:b, :], np.linspace(0.5, 1, b - a) if weighted else None) for a, b in ((0, 120), (120, 300))]
    handle = write_partition(str(tmp_path), 2, blocks)
    back = read_partition(handle)
    assert back is not None and [b.n_rows for b in back] == [120, 180]
    for a, b in zip(blocks, back):
        assert b.is_sparse and not b.X.data.flags.writeable  # read-only views of the mapped files
        for name in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(b.X, name), getattr(a.X, name))
        if weighted:
            np.testing.assert_array_equal(b.weight, a.weight)
    on_disk = sum(os.path.getsize(p) for p in tmp_path.iterdir() if p.suffix == ".bin")
    expected = X.nnz * (8 + 4) + (300 + 2) * 4 + (300 * 8 if weighted else 0)
    assert on_disk == expected and on_disk < 300 * 50_000 * 8 / 1000
    # a dense partition's handle does not read a sparse partition's files, nor the other way round
    from dataclasses import replace

    assert read_partition(replace(handle, nnz=None)) is None


def test_a_sparse_block_fingerprints_and_samples_as_its_dense_copy():
    X = random_counts(400, 60, 0.05, seed=3)
    rng = np.random.default_rng(0)
    weight, labels = rng.random(400), rng.integers(-1, 3, 400)
    for kwargs in ({}, {"weight": weight}, {"weight": weight, "labels": labels}):
        sparse_block, dense_block = Block(X, **kwargs), Block(X.toarray(), **kwargs)
        np.testing.assert_array_equal(row_hashes(sparse_block), row_hashes(dense_block))
        a = summarize_block(sparse_block, 50, seed=7)
        b = summarize_block(dense_block, 50, seed=7)
        assert a.data_identity == b.data_identity
        assert a.sample.is_sparse and not b.sample.is_sparse
        np.testing.assert_array_equal(a.sample.X.toarray(), b.sample.X)


def test_the_sparse_sample_does_not_depend_on_how_the_rows_are_split():
    X = random_counts(500, 40, 0.1, seed=4)
    whole = summarize_block(Block(X), 60, seed=1)
    for cuts in ([100, 250], [1, 2, 499]):
        edges = [0, *cuts, 500]
        parts = [summarize_block(Block(X[a:b, :]), 60, seed=1) for a, b in itertools.pairwise(edges)]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        assert total.data_identity == whole.data_identity
        np.testing.assert_array_equal(total.sample.X.toarray(), whole.sample.X.toarray())
