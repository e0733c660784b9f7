"""Arrow -> blocks conversion, the load summary as a value, and the bounded sample."""

import itertools

import numpy as np
import pyarrow as pa
import pytest

from em_spark.engine.arrow_input import (
    FEATURES_FIELD,
    LABEL_FIELD,
    WEIGHT_FIELD,
    InputSpec,
    block_from_arrow,
    convert_arrow,
)
from em_spark.engine.block_codec import decode_block, encode_block, merge_blocks
from em_spark.engine.fingerprint import unit_hashes
from em_spark.engine.load_summary import RowProblems, summarize_block
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
    return [Block(X[a:b], None if weight is None else weight[a:b]) for a, b in itertools.pairwise(edges)]


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


# ---------------------------------------------------------------------------
# Sequences (one per row), labels, and missing values modelled


NAN, INF = float("nan"), float("inf")
SEQ = InputSpec(sequences=True)


def _seq_batch(seqs, weights=None, labels=None, flat=False):
    """One sequence per row: list<list<double>>, or list<double> (one number per step) when ``flat``."""
    step = pa.float64() if flat else pa.list_(pa.float64())
    arrays, names = [pa.array(seqs, pa.list_(step))], [FEATURES_FIELD]
    if weights is not None:
        arrays.append(pa.array(weights, pa.float64()))
        names.append(WEIGHT_FIELD)
    if labels is not None:
        arrays.append(pa.array(labels, pa.int64()))
        names.append(LABEL_FIELD)
    return pa.record_batch(arrays, names=names)


def _label_batch(rows, labels):
    return pa.record_batch(
        [pa.array(rows, pa.list_(pa.float64())), pa.array(labels, pa.int64())], names=[FEATURES_FIELD, LABEL_FIELD]
    )


def _problems(p: RowProblems):
    return (p.null_rows, p.ragged_rows, p.nonfinite_rows, p.bad_weight_rows, p.bad_label_rows)


def _sequences_of(block):
    """The block's sequences as a list of (steps, d) arrays."""
    edges = np.concatenate([[0], np.cumsum(block.lengths)])
    return [block.X[a:b] for a, b in itertools.pairwise(edges)]


def _random_sequences(rng, n_seq, d=2, low=1, high=12):
    return [rng.normal(size=(int(n), d)) for n in rng.integers(low, high, size=n_seq)]


def _seq_block(seqs, seq_weights=None, labels=None):
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    X = np.concatenate(seqs) if seqs else np.empty((0, 2))
    weight = None if seq_weights is None else np.repeat(np.asarray(seq_weights, float), lengths)
    return Block(X, weight, lengths, labels)


def test_good_sequences_convert_to_stacked_steps_with_lengths():
    seqs = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]]
    block, kept, problems, d = convert_arrow(_seq_batch(seqs), spec=SEQ)
    assert d == 2 and block.weight is None and block.labels is None
    np.testing.assert_array_equal(block.X, np.concatenate([np.array(s) for s in seqs]))
    np.testing.assert_array_equal(block.lengths, [2, 1, 3])
    assert block.lengths.dtype == np.int64
    np.testing.assert_array_equal(kept, [True, True, True])
    assert problems == RowProblems()
    # block_from_arrow is the same conversion without the mask
    block2, problems2, d2 = block_from_arrow(_seq_batch(seqs), SEQ)
    np.testing.assert_array_equal(block2.X, block.X)
    np.testing.assert_array_equal(block2.lengths, block.lengths)
    assert (problems2, d2) == (problems, d)


def test_a_sequence_with_any_bad_step_is_dropped_whole_and_counted_once():
    seqs = [
        [[1.0, 2.0], [3.0, 4.0]],  # good
        None,  # null sequence
        [],  # empty sequence
        [[5.0, 6.0], None],  # a null step
        [[7.0, 8.0], [9.0]],  # a ragged step
        [[NAN, 1.0], [2.0, NAN], [INF, 0.0]],  # three bad steps: one sequence
        [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]],  # good
        [[1.0, -INF]],  # infinite
        [[1.0, None], [1.0, 2.0, 3.0]],  # a null entry and a ragged step: counted as ragged only
        [[0.5, 0.5]],  # good, length 1
    ]
    block, kept, problems, d = convert_arrow(_seq_batch(seqs), spec=SEQ)
    assert d == 2
    np.testing.assert_array_equal(kept, [True, False, False, False, False, False, True, False, False, True])
    np.testing.assert_array_equal(block.lengths, [2, 3, 1])
    np.testing.assert_array_equal(block.X, [[1, 2], [3, 4], [2, 3], [4, 5], [6, 7], [0.5, 0.5]])
    # per sequence: null+empty, ragged (2), non-finite or null step (3)
    assert _problems(problems) == (2, 2, 3, 0, 0)


def test_one_number_per_step_sequences_have_one_feature():
    seqs = [[1.0, 2.0, 3.0], [4.0], None, [NAN, 5.0], [], [5.0, None], [6.0, INF], [0.0, 1.0]]
    block, kept, problems, d = convert_arrow(_seq_batch(seqs, flat=True), spec=SEQ)
    assert d == 1 and block.n_features == 1
    np.testing.assert_array_equal(kept, [True, True, False, False, False, False, False, True])
    np.testing.assert_array_equal(block.X[:, 0], [1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(block.lengths, [3, 1, 2])
    assert _problems(problems) == (2, 0, 3, 0, 0)
    # a fitted 1-feature model reads them; a 2-feature model refuses every step as ragged
    same, kept1, _, _ = convert_arrow(_seq_batch(seqs, flat=True), expected_features=1, spec=SEQ)
    np.testing.assert_array_equal(same.X, block.X)
    np.testing.assert_array_equal(kept1, kept)
    none, kept2, problems2, d2 = convert_arrow(_seq_batch(seqs, flat=True), expected_features=2, spec=SEQ)
    assert d2 == 2 and none.n_rows == 0 and not kept2.any()
    assert none.X.shape == (0, 2) and none.lengths.size == 0
    assert problems2.null_rows == 2 and problems2.ragged_rows == 6


def test_expected_features_fix_the_step_width_of_sequences():
    seqs = [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 1.0, 2.0]]]
    # without it, the first step read sets the width: 3
    _, kept, problems, d = convert_arrow(_seq_batch(seqs), spec=SEQ)
    assert d == 3
    np.testing.assert_array_equal(kept, [True, False, False, False])
    assert problems.ragged_rows == 3
    block, kept, problems, d = convert_arrow(_seq_batch(seqs), expected_features=2, spec=SEQ)
    assert d == 2
    np.testing.assert_array_equal(kept, [False, True, True, False])
    np.testing.assert_array_equal(block.X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(block.lengths, [1, 2])
    assert problems.ragged_rows == 2


def test_sequence_weights_are_repeated_per_step_and_bad_ones_counted_per_sequence():
    seqs = [[[1.0], [2.0]], [[3.0]], [[4.0], [5.0], [6.0]], [[7.0], [8.0]], [[NAN], [1.0]], [[9.0]], None]
    weights = [2.0, None, 0.5, -1.0, -1.0, 0.0, 3.0]
    block, kept, problems, _ = convert_arrow(_seq_batch(seqs, weights), spec=SEQ)
    np.testing.assert_array_equal(kept, [True, False, True, False, False, True, False])
    np.testing.assert_array_equal(block.lengths, [2, 3, 1])
    np.testing.assert_array_equal(block.weight, [2.0, 2.0, 0.5, 0.5, 0.5, 0.0])
    # the NaN sequence with a bad weight, and the null one, count once under their shape problem
    assert _problems(problems) == (1, 0, 1, 2, 0)


def test_labels_null_or_negative_are_unknown_and_labels_not_below_k_are_counted():
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], None, [NAN, 1.0], [1.0, 1.0]]
    labels = [0, None, -3, 1, 2, 7, 5, 1]
    block, kept, problems, _ = convert_arrow(_label_batch(rows, labels), spec=InputSpec(k=2))
    np.testing.assert_array_equal(kept, [True, True, True, True, False, False, False, True])
    np.testing.assert_array_equal(block.labels, [0, -1, -1, 1, 1])
    assert block.labels.dtype == np.int64
    # the row with label 2 is a bad label; rows already dropped for their vector are not counted again
    assert _problems(problems) == (1, 0, 1, 0, 1)
    # without k (no check asked for), every label is kept as given (negatives still -1)
    block, kept, problems, _ = convert_arrow(_label_batch(rows, labels), spec=InputSpec())
    np.testing.assert_array_equal(block.labels, [0, -1, -1, 1, 2, 1])
    assert problems.bad_label_rows == 0
    summary = summarize_block(block, 10, 0, problems)
    assert summary.labelled_rows == 4


def test_labels_ride_with_their_rows_through_weights_and_the_summary():
    rows = [[1.0], [2.0], [3.0], [4.0]]
    batch = pa.record_batch(
        [
            pa.array(rows, pa.list_(pa.float64())),
            pa.array([1.0, -1.0, 2.0, 1.0]),
            pa.array([1, 0, None, 0], pa.int64()),
        ],
        names=[FEATURES_FIELD, WEIGHT_FIELD, LABEL_FIELD],
    )
    block, problems, _ = block_from_arrow(batch, InputSpec(k=2))
    np.testing.assert_array_equal(block.X[:, 0], [1.0, 3.0, 4.0])
    np.testing.assert_array_equal(block.labels, [1, -1, 0])
    np.testing.assert_array_equal(block.weight, [1.0, 2.0, 1.0])
    assert problems.bad_weight_rows == 1 and problems.bad_label_rows == 0
    s = summarize_block(block, 10, 0, problems)
    assert s.labelled_rows == 2
    order = np.argsort(s.sample.X[:, 0])
    np.testing.assert_array_equal(s.sample.labels[order], [1, -1, 0])
    # a sample without any known label carries none
    unlabelled = summarize_block(Block(block.X, labels=np.full(3, -1)), 10, 0)
    assert unlabelled.sample.labels is None and unlabelled.labelled_rows == 0


def test_allow_missing_keeps_nan_and_null_entries_and_refuses_only_infinities():
    rows = [[1.0, 2.0], [3.0, None], [NAN, 4.0], [INF, 1.0], [NAN, NAN], None, [1.0], [-INF, NAN]]
    block, kept, problems, _ = convert_arrow(_batch(rows), spec=InputSpec(allow_missing=True))
    np.testing.assert_array_equal(kept, [True, True, True, False, True, False, False, False])
    np.testing.assert_array_equal(block.X, [[1, 2], [3, NAN], [NAN, 4], [NAN, NAN]])
    assert _problems(problems) == (1, 1, 2, 0, 0)
    summary = summarize_block(block, 10, 0, problems)
    assert summary.missing_entries == 4 and summary.rows == 4
    # without allow_missing the same rows are refused
    strict, kept, problems, _ = convert_arrow(_batch(rows), spec=InputSpec())
    np.testing.assert_array_equal(kept, [True, False, False, False, False, False, False, False])
    assert problems.nonfinite_rows == 5
    assert summarize_block(strict, 10, 0).missing_entries == 0


def test_allow_missing_applies_to_the_steps_of_sequences():
    seqs = [[[1.0, None], [2.0, 3.0]], [[NAN, 1.0]], [[1.0, 2.0], [INF, 0.0]]]
    block, kept, problems, _ = convert_arrow(_seq_batch(seqs), spec=InputSpec(sequences=True, allow_missing=True))
    np.testing.assert_array_equal(kept, [True, True, False])
    np.testing.assert_array_equal(block.X, [[1, NAN], [2, 3], [NAN, 1]])
    np.testing.assert_array_equal(block.lengths, [2, 1])
    assert problems.nonfinite_rows == 1
    flat = [[1.0, None, 2.0], [NAN], [3.0, -INF]]
    block, kept, problems, _ = convert_arrow(
        _seq_batch(flat, flat=True), spec=InputSpec(sequences=True, allow_missing=True)
    )
    np.testing.assert_array_equal(kept, [True, True, False])
    np.testing.assert_array_equal(block.X[:, 0], [1, NAN, 2, NAN])
    assert problems.nonfinite_rows == 1


def test_a_null_step_is_a_step_of_nan_when_missing_values_are_modelled():
    seqs = [[[1.0, 2.0], None, [3.0, None]], [None], [[1.0, 1.0]]]
    block, kept, problems, d = convert_arrow(_seq_batch(seqs), spec=InputSpec(sequences=True, allow_missing=True))
    assert d == 2 and kept.all() and problems == RowProblems()
    np.testing.assert_array_equal(block.X, [[1, 2], [NAN, NAN], [3, NAN], [NAN, NAN], [1, 1]])
    np.testing.assert_array_equal(block.lengths, [3, 1, 1])
    # not modelled: a null step drops its sequence, counted once
    _, kept, problems, _ = convert_arrow(_seq_batch(seqs), spec=InputSpec(sequences=True))
    np.testing.assert_array_equal(kept, [False, False, True])


def _labelled_seq_batch(seqs, labels):
    batch = _seq_batch(seqs)
    return pa.RecordBatch.from_arrays(
        [*batch.columns, pa.array(labels, type=pa.list_(pa.int64()))], names=[*batch.schema.names, LABEL_FIELD]
    )


def test_step_labels_travel_per_step_and_bad_lists_drop_their_sequence():
    seqs = [[[1.0], [2.0], [3.0]], [[4.0]], [[5.0], [6.0]], [[7.0], [8.0]], [[9.0]]]
    labels = [[0, None, 2], None, [1], [1, 5], [-3]]
    spec = InputSpec(sequences=True, k=3)
    block, kept, problems, _ = convert_arrow(_labelled_seq_batch(seqs, labels), spec=spec)
    np.testing.assert_array_equal(kept, [True, True, False, False, True])
    np.testing.assert_array_equal(block.lengths, [3, 1, 1])
    np.testing.assert_array_equal(block.labels, [0, -1, 2, -1, -1])  # null list and negatives: unknown
    assert problems.label_length_rows == 1 and problems.bad_label_rows == 1
    summary = summarize_block(block, sample_size=10, seed=0, problems=problems, sequences=True)
    with pytest.raises(DataValidationError) as error:
        check_loaded(summary, 3, "featuresCol 'obs'", None, "y", False)
    assert "1 sequence(s) have a list of step labels in labelCol 'y' whose length is not the sequence's" in str(
        error.value
    )
    assert "1 sequence(s) have a state label >= k=3 in labelCol 'y'" in str(error.value)


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_labels", [False, True])
def test_block_bytes_round_trip_with_lengths_and_labels(with_weight, with_labels):
    rng = np.random.default_rng(3)
    lengths = np.array([3, 1, 4], dtype=np.int64)
    n = int(lengths.sum())
    b = Block(
        rng.normal(size=(n, 2)),
        rng.random(n) if with_weight else None,
        lengths,
        rng.integers(-1, 3, size=n) if with_labels else None,
    )
    back = decode_block(encode_block(b))
    np.testing.assert_array_equal(back.X, b.X)
    np.testing.assert_array_equal(back.lengths, lengths)
    assert back.lengths.dtype == np.int64
    for name in ("weight", "labels"):
        ours, theirs = getattr(b, name), getattr(back, name)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_array_equal(theirs, ours)
    # rows with labels but no lengths, and an empty sequence block
    rows = Block(rng.normal(size=(4, 3)), labels=np.array([0, -1, 2, 1]))
    back = decode_block(encode_block(rows))
    assert back.lengths is None
    np.testing.assert_array_equal(back.labels, rows.labels)
    empty = decode_block(encode_block(Block(np.empty((0, 2)), lengths=np.empty(0, np.int64))))
    assert empty.X.shape == (0, 2) and empty.lengths is not None and empty.lengths.size == 0


def test_sequence_summary_counts_sequences_steps_and_per_sequence_weight():
    rng = np.random.default_rng(4)
    seqs = _random_sequences(rng, 30)
    w = rng.random(30) + 0.5
    s = summarize_block(_seq_block(seqs, w), 50, seed=1)
    assert s.sequences and s.rows == 30 and s.observations == sum(len(x) for x in seqs)
    assert s.weight_sum == pytest.approx(w.sum(), rel=1e-12)  # one weight per sequence, not per step
    assert s.n_features == frozenset([2])
    assert f";steps={s.observations};" in s.data_identity
    # an empty block still says it held sequences when told so
    empty = summarize_block(Block(np.empty((0, 0))), 50, seed=1, sequences=True)
    assert empty.sequences and empty.rows == 0 and empty.sample.lengths.size == 0
    assert (s + empty).rows == 30 and (empty + s).sequences


@pytest.mark.parametrize("budget", [1, 10, 40, 200])
def test_sequence_sample_holds_whole_sequences_within_the_row_budget(budget):
    rng = np.random.default_rng(5)
    seqs = _random_sequences(rng, 60, low=3, high=15)
    s = summarize_block(_seq_block(seqs), budget, seed=2)
    sample = s.sample
    assert sample.lengths is not None and sample.lengths.size >= 1
    assert sample.n_rows <= max(budget, int(sample.lengths[0]))
    if sample.lengths.size > 1:
        assert sample.n_rows <= budget
    originals = {x.tobytes() for x in seqs}
    for seq in _sequences_of(sample):  # each sampled unit is one whole input sequence
        assert seq.tobytes() in originals
    if budget >= sum(len(x) for x in seqs):
        assert sample.lengths.size == 60


def test_a_sequence_longer_than_the_budget_is_still_sampled_alone():
    seqs = [np.arange(20.0).reshape(10, 2)]
    s = summarize_block(_seq_block(seqs), 4, seed=0)
    np.testing.assert_array_equal(s.sample.X, seqs[0])
    np.testing.assert_array_equal(s.sample.lengths, [10])


def _summarize_split(seqs, order, cuts, budget, seed, weights=None):
    """Summaries of blocks of the sequences taken in ``order``, cut at ``cuts``, summed last to first."""
    ordered = [seqs[i] for i in order]
    w = None if weights is None else [weights[i] for i in order]
    edges = [0, *cuts, len(ordered)]
    total = None
    for a, b in reversed(list(itertools.pairwise(edges))):
        if a == b:
            block = Block(np.empty((0, 2)), None if w is None else np.empty(0), np.empty(0, np.int64))
        else:
            block = _seq_block(ordered[a:b], None if w is None else w[a:b])
        s = summarize_block(block, budget, seed, sequences=True)
        total = s if total is None else total + s
    return total


@pytest.mark.parametrize("weighted", [False, True])
def test_sequence_summary_and_sample_do_not_depend_on_order_or_split(weighted):
    rng = np.random.default_rng(6)
    seqs = _random_sequences(rng, 120, low=1, high=20)
    weights = list(rng.random(120) + 0.1) if weighted else None
    whole = summarize_block(_seq_block(seqs, weights), 60, seed=9)
    assert whole.sample.n_rows <= 60 and whole.sample.lengths.size >= 2
    shuffled = rng.permutation(120)
    for order, cuts in [
        (np.arange(120), [0, 5, 5, 61, 119]),
        (shuffled, [1, 2, 3, 50, 90]),
        (shuffled[::-1], [40, 80]),
        (np.arange(120)[::-1], list(range(1, 120))),  # one sequence per block
    ]:
        parts = _summarize_split(seqs, order, cuts, 60, 9, weights)
        assert (parts.rows, parts.observations) == (whole.rows, whole.observations) == (120, whole.observations)
        assert parts.fingerprint == whole.fingerprint
        assert parts.data_identity.split(";weight=")[0] == whole.data_identity.split(";weight=")[0]
        assert parts.weight_sum == pytest.approx(whole.weight_sum, rel=1e-12)
        np.testing.assert_array_equal(parts.sample.lengths, whole.sample.lengths)
        np.testing.assert_array_equal(parts.sample.X, whole.sample.X)


def test_sequence_fingerprint_follows_step_order_not_sequence_order():
    rng = np.random.default_rng(7)
    seqs = _random_sequences(rng, 10, low=3, high=6)
    base = summarize_block(_seq_block(seqs), 5, 0).fingerprint
    # reordering the sequences keeps it
    assert summarize_block(_seq_block(seqs[::-1]), 5, 0).fingerprint == base
    assert (
        summarize_block(_seq_block(seqs[1:]), 5, 0).fingerprint
        + summarize_block(_seq_block(seqs[:1]), 5, 0).fingerprint
        & ((1 << 64) - 1)
        == base
    )
    # swapping two steps of one sequence changes it
    swapped = [x.copy() for x in seqs]
    swapped[4][[0, 2]] = swapped[4][[2, 0]]
    assert summarize_block(_seq_block(swapped), 5, 0).fingerprint != base
    # the same rows cut into other sequences change it
    block = _seq_block(seqs)
    moved = Block(block.X, lengths=np.concatenate([[block.lengths[0] + 1, block.lengths[1] - 1], block.lengths[2:]]))
    assert summarize_block(moved, 5, 0).fingerprint != base
    # and the units are the sequences
    assert unit_hashes(block).shape == (10,)
    assert unit_hashes(Block(block.X)).shape == (block.n_rows,)


def test_check_loaded_names_sequence_problems_per_sequence():
    seqs = [[[1.0, 2.0]], None, [], [[NAN, 1.0]], [[1.0, 2.0], [3.0]], [[3.0, 4.0], [5.0, 6.0]]]
    block, problems, _ = block_from_arrow(_seq_batch(seqs), SEQ)
    summary = summarize_block(block, 10, 0, problems)
    with pytest.raises(DataValidationError) as err:
        check_loaded(summary, 2, "column 'obs'", None)
    message = str(err.value)
    assert "2 sequence(s) have a null or empty sequence in column 'obs'" in message
    assert (
        "the steps' feature vectors in column 'obs' do not all have the same non-zero length (1 sequence(s) differ"
        in message
    )
    assert "1 sequence(s) contain NaN, infinite or null feature values" in message
    assert "handleMissing='model' for an HMM" in message  # sequence models marginalize missing steps
    # a clean load passes
    good, problems, _ = block_from_arrow(_seq_batch([seqs[0], seqs[5]]), SEQ)
    check_loaded(summarize_block(good, 10, 0, problems), 2, "column 'obs'", None)


def test_check_loaded_compares_k_with_the_steps_of_sequences():
    block, problems, _ = block_from_arrow(_seq_batch([[[1.0], [2.0], [3.0]]]), SEQ)
    summary = summarize_block(block, 10, 0, problems)
    check_loaded(summary, 3, "column 'obs'", None)  # one sequence, three steps: enough for 3 states
    with pytest.raises(DataValidationError, match=r"3 observation\(s\) in all, fewer than k=4 states"):
        check_loaded(summary, 4, "column 'obs'", None)
    empty, problems, _ = block_from_arrow(_seq_batch([]), SEQ)
    with pytest.raises(DataValidationError, match="no rows"):
        check_loaded(summarize_block(empty, 10, 0, problems, sequences=True), 1, "column 'obs'", None)


def test_check_loaded_names_bad_labels_and_the_label_column():
    block, problems, _ = block_from_arrow(_label_batch([[1.0], [2.0], [3.0]], [0, 3, 2]), InputSpec(k=2))
    with pytest.raises(DataValidationError) as err:
        check_loaded(summarize_block(block, 10, 0, problems), 2, "column 'f'", None, label_col="y")
    assert "2 row(s) have a label >= k=2 in labelCol 'y'" in str(err.value)
    assert "component ids 0..1, or null / -1 for unknown" in str(err.value)


def test_check_loaded_with_missing_values_refuses_only_infinities():
    rows = [[1.0, NAN], [INF, 2.0], [3.0, 4.0]]
    block, problems, _ = block_from_arrow(_batch(rows), InputSpec(allow_missing=True))
    summary = summarize_block(block, 10, 0, problems)
    with pytest.raises(DataValidationError) as err:
        check_loaded(summary, 1, "column 'f'", None, allow_missing=True)
    assert "1 row(s) contain infinite feature values in column 'f'" in str(err.value)
    assert "missing values (null or NaN) are modelled" in str(err.value)
    # NaN alone passes when missing values are modelled
    clean, problems, _ = block_from_arrow(_batch(rows[::2]), InputSpec(allow_missing=True))
    check_loaded(summarize_block(clean, 10, 0, problems), 2, "column 'f'", None, allow_missing=True)
    # and the message for row models without it offers the way to model them
    strict, problems, _ = block_from_arrow(_batch(rows))
    with pytest.raises(DataValidationError, match="handleMissing='model'"):
        check_loaded(summarize_block(strict, 10, 0, problems), 1, "column 'f'", None)
