"""Executor-local block files: exact round trip, and 'not here' instead of wrong data."""

import numpy as np
import pytest

from em_spark.engine.local_blocks import read_partition, remove_partition, write_partition
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00001.json", "part-00001.w.npy", "part-00001.x.npy"]
