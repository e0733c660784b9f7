"""The load pass holds one block at a time: payloads beyond a budget go to a scratch file, blocks
are merged and written as they come, and the result does not depend on either."""

import os
import random

import numpy as np
import pytest

from em_spark.engine.block_codec import encode_block, merge_blocks, merge_stream
from em_spark.engine.executor_files import PartitionWriter, read_partition, write_partition
from em_spark.engine.load_summary import RowProblems
from em_spark.engine.partition_tasks import PayloadStore, assemble_partition
from em_spark.models.base import Block


def _items(n_batches=40, rows=50, d=3, seed=0):
    """(key, (payload, problems)) of a partition's batches, keys (source partition, index)."""
    rng = np.random.default_rng(seed)
    items = []
    for src in range(4):
        for idx in range(n_batches // 4):
            block = Block(rng.normal(size=(rows, d)), rng.random(rows))
            items.append(((src, idx), (encode_block(block), RowProblems(null_rows=src))))
    return items


def _assembled(items, budget, scratch):
    store = PayloadStore(str(scratch), memory_budget=budget)
    for key, (payload, problems) in items:
        store.add(key, payload, problems)
    held = store.bytes_in_memory
    return [(b.X.copy(), b.weight.copy(), p) for b, p in store.assembled()], held


@pytest.mark.parametrize("budget", [0, 10_000, 1 << 30])
def test_a_partition_assembles_the_same_whatever_the_arrival_order_and_memory_budget(tmp_path, budget):
    items = _items()
    reference, _ = _assembled(items, 1 << 30, tmp_path)
    shuffled = items[:]
    random.Random(budget).shuffle(shuffled)  # shuffle-fetch order differs between runs
    got, held = _assembled(shuffled, budget, tmp_path)
    assert held <= budget
    assert len(got) == len(reference)
    for (x, w, p), (x0, w0, p0) in zip(got, reference):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(w, w0)
        assert p == p0
    assert got[0][2] == RowProblems(null_rows=sum(range(4)) * 10)  # every batch's counts, on the first block
    assert all(p == RowProblems() for _, _, p in got[1:])
    assert os.listdir(tmp_path) == []  # the scratch file is anonymous and gone


def test_assemble_partition_matches_merging_the_sorted_batches(tmp_path):
    from em_spark.engine.block_codec import decode_block

    items = _items(seed=3)
    expected = merge_blocks([decode_block(p) for _, (p, _) in sorted(items)], 1 << 20)
    got = [b for b, _ in assemble_partition(reversed(items), str(tmp_path))]
    assert [b.n_rows for b in got] == [b.n_rows for b in expected]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.X, b.X)


def test_merge_stream_yields_a_full_block_before_reading_the_rest():
    read = []

    def blocks():
        for i in range(10):
            read.append(i)
            yield Block(np.full((4, 2), float(i)))

    stream = merge_stream(blocks(), lambda d: 8)
    first = next(stream)
    assert first.n_rows == 8 and read == [0, 1, 2]  # the third block did not fit: nothing more was read
    assert [b.n_rows for b in stream] == [8, 8, 8, 8]


def test_a_writer_fills_weights_of_earlier_blocks_with_ones(tmp_path):
    blocks = [Block(np.ones((2, 2))), Block(np.zeros((3, 2)), np.array([0.5, 2.0, 1.0]))]
    back = read_partition(write_partition(str(tmp_path), 0, blocks))
    np.testing.assert_array_equal(back[0].weight, [1.0, 1.0])
    np.testing.assert_array_equal(back[1].weight, [0.5, 2.0, 1.0])


def test_an_aborted_write_leaves_nothing(tmp_path):
    writer = PartitionWriter(str(tmp_path), 7)
    writer.add(Block(np.ones((3, 2)), np.ones(3)))
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_an_empty_partition_reads_back_as_no_blocks(tmp_path):
    assert read_partition(write_partition(str(tmp_path), 0, [])) == []


def test_a_float32_block_is_stored_and_mapped_as_float32(tmp_path):
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    back = read_partition(write_partition(str(tmp_path), 0, [Block(X)]))
    assert back[0].X.dtype == np.float32
    np.testing.assert_array_equal(back[0].X, X)
    assert os.path.getsize(tmp_path / "part-00000.x.bin") == X.nbytes
