"""The ordered tree reduce: same result as a sequential sum, whatever the level count."""

import numpy as np
import pytest

from em_spark.engine.reduce import ordered_tree_reduce, reduce_collected
from em_spark.stats import Stats, sum_stats

pytestmark = pytest.mark.spark


@pytest.mark.parametrize("partitions, depth", [(1, 2), (4, 2), (23, 2), (23, 3), (40, 1)])
def test_tree_reduce_adds_in_partition_order(spark, partitions, depth):
    rng = np.random.default_rng(partitions)
    # values spanning many magnitudes, so the order of additions shows in the last bits
    values = [Stats({"x": rng.normal(size=3) * 10.0 ** rng.integers(-8, 8, size=3)}) for _ in range(partitions)]
    rdd = spark.sparkContext.parallelize(list(enumerate(values)), partitions)
    indexed = rdd.mapPartitionsWithIndex(lambda i, it: [(i, v) for _, v in it])
    total = ordered_tree_reduce(indexed, Stats.__add__, depth)
    if depth == 1 or partitions <= 4:  # no intermediate level: exactly the sequential sum
        np.testing.assert_array_equal(total["x"], sum_stats(values)["x"])
    else:
        np.testing.assert_allclose(total["x"], sum_stats(values)["x"], rtol=1e-12)
    again = ordered_tree_reduce(indexed, Stats.__add__, depth)
    np.testing.assert_array_equal(total["x"], again["x"])


def test_tree_reduce_of_no_values_is_none(spark):
    empty = spark.sparkContext.parallelize([], 3).mapPartitionsWithIndex(lambda i, it: [])
    assert ordered_tree_reduce(empty, Stats.__add__, 2) is None


@pytest.mark.parametrize("partitions, depth", [(1, 2), (4, 2), (23, 2), (23, 3), (40, 1), (100, 2)])
def test_reduce_of_collected_values_matches_the_rdd_tree_bit_for_bit(spark, partitions, depth):
    rng = np.random.default_rng(partitions + depth)
    values = [Stats({"x": rng.normal(size=3) * 10.0 ** rng.integers(-8, 8, size=3)}) for _ in range(partitions)]
    present = [(i, v) for i, v in enumerate(values) if i % 7 != 3]  # some partitions hold nothing
    rdd = spark.sparkContext.parallelize(present, partitions)
    indexed = rdd.mapPartitionsWithIndex(lambda i, it: [(i, v) for _, v in it])
    by_index = dict(indexed.collect())
    collected = reduce_collected(reversed(list(by_index.items())), Stats.__add__, partitions, depth)
    np.testing.assert_array_equal(collected["x"], ordered_tree_reduce(indexed, Stats.__add__, depth)["x"])
