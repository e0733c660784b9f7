"""Arrow -> blocks conversion, the load summary as a value, and the bounded sample."""

import numpy as np
import pyarrow as pa
import pytest

from em_spark.engine.blocks import (
    FEATURES_FIELD,
    WEIGHT_FIELD,
    block_from_arrow,
    convert_arrow,
    decode_block,
    encode_block,
    merge_blocks,
    summarize_block,
)
from em_spark.engine.validation import DataValidationError, check_loaded
from em_spark.models.base import Block


def _batch(rows, weights=None):
    arrays, names = [pa.array(rows, pa.list_(pa.float64()))], [FEATURES_FIELD]
    if weights is not None:
        arrays.append(pa.array(weights, pa.float64()))
        names.append(WEIGHT_FIELD)
    return pa.record_batch(arrays, names=names)


def test_clean_batch_converts_without_copying_rows_out_of_order():
    rows = np.arange(12.0).reshape(6, 2)
    block, problems, d = block_from_arrow(_batch(rows.tolist()))
    assert d == 2 and block.weight is None
    np.testing.assert_array_equal(block.X, rows)
    assert problems.null_rows == problems.ragged_rows == problems.nonfinite_rows == 0


def test_bad_rows_are_counted_by_kind_and_dropped():
    rows = [[1.0, 2.0], None, [3.0, float("nan")], [4.0, 5.0, 6.0], [7.0, 8.0], [1.0, None], [], [9.0, 10.0]]
    weights = [1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, None]
    block, problems, _ = block_from_arrow(_batch(rows, weights))
    np.testing.assert_array_equal(block.X, [[1.0, 2.0]])
    assert (problems.null_rows, problems.ragged_rows, problems.nonfinite_rows, problems.bad_weight_rows) == (1, 2, 2, 2)


def test_scoring_conversion_fixes_the_expected_length_and_reports_kept_rows():
    block, kept, _, _ = convert_arrow(_batch([[1.0, 2.0, 3.0], [1.0, 2.0], None]), expected_features=2)
    np.testing.assert_array_equal(kept, [False, True, False])
    np.testing.assert_array_equal(block.X, [[1.0, 2.0]])


def test_block_bytes_round_trip_exactly():
    rng = np.random.default_rng(0)
    for weight in (None, rng.random(5)):
        b = Block(rng.normal(size=(5, 3)), weight)
        back = decode_block(encode_block(b))
        np.testing.assert_array_equal(back.X, b.X)
        assert (back.weight is None) == (weight is None)
        if weight is not None:
            np.testing.assert_array_equal(back.weight, weight)


def test_merge_blocks_keeps_row_order_and_respects_the_size_limit():
    blocks = [Block(np.full((n, 1), float(i))) for i, n in enumerate([3, 3, 5, 1])]
    merged = merge_blocks(blocks, max_rows=6)
    assert [b.n_rows for b in merged] == [6, 6]
    np.testing.assert_array_equal(np.concatenate([b.X for b in merged]), np.concatenate([b.X for b in blocks]))


def _split(X, cuts, weight=None):
    edges = [0, *cuts, len(X)]
    return [Block(X[a:b], None if weight is None else weight[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("weighted", [False, True])
def test_summary_and_sample_do_not_depend_on_how_the_data_is_split(weighted):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    w = rng.random(500) if weighted else None
    whole = summarize_block(Block(X, w), 50, seed=7)
    parts = None
    for b in reversed(_split(X, [0, 17, 17, 200, 499], w)):  # includes empty blocks, reversed order
        s = summarize_block(b, 50, seed=7)
        parts = s if parts is None else parts + s
    assert parts.rows == whole.rows == 500
    assert parts.fingerprint == whole.fingerprint
    assert parts.weight_sum == pytest.approx(whole.weight_sum, rel=1e-12)
    np.testing.assert_array_equal(parts.sample.X, whole.sample.X)
    assert parts.sample.n_rows == 50


def test_sample_changes_with_the_seed_and_fingerprint_changes_with_the_data():
    X = np.random.default_rng(2).normal(size=(300, 2))
    a, b = summarize_block(Block(X), 20, seed=1), summarize_block(Block(X), 20, seed=2)
    assert not np.array_equal(a.sample.X, b.sample.X)
    X2 = X.copy()
    X2[0, 0] = np.nextafter(X2[0, 0], 1.0)
    assert summarize_block(Block(X2), 20, seed=1).fingerprint != a.fingerprint


def test_zero_weight_rows_are_never_sampled():
    X = np.arange(20.0).reshape(10, 2)
    w = np.array([0.0] * 9 + [1.0])
    s = summarize_block(Block(X, w), 5, seed=0)
    np.testing.assert_array_equal(s.sample.X, X[9:])


@pytest.mark.parametrize(
    "rows, k, message",
    [
        ([None, [1.0, 2.0]], 1, "null feature vector"),
        ([[1.0], [1.0, 2.0]], 1, "same non-zero length"),
        ([[float("inf"), 1.0], [1.0, 2.0]], 1, "NaN, infinite"),
        ([[1.0, 2.0]], 2, "fewer than k=2"),
        ([], 1, "no rows"),
    ],
)
def test_validation_names_the_problem_and_the_fix(rows, k, message):
    block, problems, _ = block_from_arrow(_batch(rows))
    with pytest.raises(DataValidationError, match=message):
        check_loaded(summarize_block(block, 10, 0, problems), k, "column 'features'", None)


def test_validation_rejects_negative_weights_naming_the_column():
    block, problems, _ = block_from_arrow(_batch([[1.0], [2.0]], [1.0, -2.0]))
    with pytest.raises(DataValidationError, match="weightCol 'w'"):
        check_loaded(summarize_block(block, 10, 0, problems), 1, "column 'features'", "w")
