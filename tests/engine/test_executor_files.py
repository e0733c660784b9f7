"""Executor-local block files: exact round trip, and 'not here' instead of wrong data."""

import numpy as np
import pytest

from em_spark.engine.executor_files import (
    read_partition,
    remove_partition,
    write_partition,
)
from em_spark.models.base import Block


def _blocks(weighted):
    rng = np.random.default_rng(0)
    return [Block(rng.normal(size=(n, 3)), rng.random(n) if weighted else None) for n in (5, 0, 7)]


@pytest.mark.parametrize("weighted", [False, True])
def test_round_trip_gives_the_same_blocks_as_read_only_views(tmp_path, weighted):
    blocks = [b for b in _blocks(weighted) if b.n_rows]
    handle = write_partition(str(tmp_path), 3, blocks)
    back = read_partition(handle)
    assert [b.n_rows for b in back] == [5, 7]
    for a, b in zip(blocks, back):
        np.testing.assert_array_equal(a.X, b.X)
        assert not b.X.flags.writeable
        if weighted:
            np.testing.assert_array_equal(a.weight, b.weight)
        else:
            assert b.weight is None


def test_missing_or_rewritten_files_read_as_not_here(tmp_path):
    blocks = [b for b in _blocks(False) if b.n_rows]
    handle = write_partition(str(tmp_path), 0, blocks)
    newer = write_partition(str(tmp_path), 0, blocks)  # another load wrote the same partition
    assert read_partition(handle) is None
    assert read_partition(newer) is not None
    remove_partition(newer)
    assert read_partition(newer) is None
    assert not tmp_path.exists()  # the emptied directory goes too


def test_no_temporary_files_are_left_behind(tmp_path):
    write_partition(str(tmp_path), 1, [b for b in _blocks(True) if b.n_rows])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00001.json", "part-00001.w.bin", "part-00001.x.bin"]


def _sequence_blocks(weighted, labelled):
    rng = np.random.default_rng(1)
    blocks = []
    for step_counts in ([3, 1, 4], [2], [5, 5]):
        lengths = np.array(step_counts, dtype=np.int64)
        n = int(lengths.sum())
        blocks.append(
            Block(
                rng.normal(size=(n, 2)),
                np.repeat(rng.random(lengths.size), lengths) if weighted else None,
                lengths,
                rng.integers(-1, 3, size=n) if labelled else None,
            )
        )
    return blocks


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("labelled", [False, True])
def test_sequence_blocks_round_trip_with_lengths_and_labels(tmp_path, weighted, labelled):
    blocks = _sequence_blocks(weighted, labelled)
    handle = write_partition(str(tmp_path), 2, blocks)
    assert handle.block_sequences == (3, 1, 2) and handle.block_rows == (8, 2, 10)
    assert handle.has_labels == labelled
    back = read_partition(handle)
    assert len(back) == 3
    for a, b in zip(blocks, back):
        np.testing.assert_array_equal(b.X, a.X)
        np.testing.assert_array_equal(b.lengths, a.lengths)
        assert b.lengths.dtype == np.int64
        for name in ("weight", "labels"):
            ours, theirs = getattr(a, name), getattr(b, name)
            assert (ours is None) == (theirs is None)
            if ours is not None:
                np.testing.assert_array_equal(theirs, ours)
                assert not theirs.flags.writeable
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = ["part-00002.json", "part-00002.l.bin", "part-00002.x.bin"]
    expected += ["part-00002.w.bin"] if weighted else []
    expected += ["part-00002.y.bin"] if labelled else []
    assert names == sorted(expected)  # no temporary files either
    remove_partition(handle)
    assert not tmp_path.exists()


def test_blocks_without_labels_read_back_as_unknown_next_to_labelled_ones(tmp_path):
    rng = np.random.default_rng(2)
    blocks = [Block(rng.normal(size=(3, 2)), labels=np.array([0, 1, -1])), Block(rng.normal(size=(2, 2)))]
    back = read_partition(write_partition(str(tmp_path), 0, blocks))
    np.testing.assert_array_equal(back[0].labels, [0, 1, -1])
    np.testing.assert_array_equal(back[1].labels, [-1, -1])
    assert back[0].lengths is None and back[1].lengths is None


def test_inconsistent_lengths_or_labels_files_read_as_not_here(tmp_path):
    blocks = _sequence_blocks(False, True)
    handle = write_partition(str(tmp_path), 0, blocks)
    np.array([3, 1, 4, 2, 5, 4], "<i8").tofile(tmp_path / "part-00000.l.bin")  # one step moved: sums differ
    assert read_partition(handle) is None
    handle = write_partition(str(tmp_path), 0, blocks)
    np.array([3, 1, 3, 3, 5, 5], "<i8").tofile(tmp_path / "part-00000.l.bin")  # same total, other blocks
    assert read_partition(handle) is None
    handle = write_partition(str(tmp_path), 0, blocks)
    np.zeros(5, "<i8").tofile(tmp_path / "part-00000.y.bin")  # wrong number of rows
    assert read_partition(handle) is None
    handle = write_partition(str(tmp_path), 0, blocks)
    (tmp_path / "part-00000.l.bin").unlink()
    assert read_partition(handle) is None
