"""A tree reduce whose result does not depend on task timing.

``RDD.treeReduce`` merges partial results inside ``reduceByKey`` in shuffle-fetch
order, so float sums can differ in the last bits from run to run (and between a
run with a retried task and one without). Here every level groups partial results
by ``partition_index // fan_in`` and adds them in index order, so the same data and
partitioning always give bit-identical statistics. Like ``treeReduce``, the driver
only ever receives ``fan_in``-ish values, never one per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

T = TypeVar("T")

__all__ = ["fan_in_for", "ordered_tree_reduce", "reduce_collected"]


def fan_in_for(num_partitions: int, depth: int) -> int:
    """Values combined per group so that ``depth`` levels reach one value (like treeReduce)."""
    if depth < 1:
        raise ValueError(f"aggregationDepth must be >= 1, got {depth}")
    return max(2, math.ceil(num_partitions ** (1.0 / depth)))


def _add_in_order(pairs: Iterable[tuple[int, T]], add: Callable[[T, T], T]) -> T | None:
    total: T | None = None
    for _, value in sorted(pairs, key=lambda p: p[0]):
        total = value if total is None else add(total, value)
    return total


def ordered_tree_reduce(indexed: Any, add: Callable[[T, T], T], depth: int = 2) -> T | None:
    """Reduce an RDD of ``(partition_index, value)`` pairs deterministically.

    Parameters
    ----------
    indexed : RDD of (int, T), at most one pair per partition index
    add : associative combine (rounding aside), e.g. ``Stats.__add__``
    depth : like ``treeReduce``'s depth: levels of combining before the driver

    Returns the combined value, or None when the RDD holds no pairs.
    """
    n = indexed.getNumPartitions()
    fan_in = fan_in_for(n, depth)
    level = indexed
    # Combine on the executors while more groups remain than the driver should take
    # (the same condition as RDD.treeAggregate: a level must pay for its shuffle).
    while n > fan_in + n / fan_in:
        n = math.ceil(n / fan_in)
        groups = n

        def regroup(pairs: Iterator[tuple[int, T]], fan_in: int = fan_in) -> Iterator[tuple[int, tuple[int, T]]]:
            for index, value in pairs:
                yield index // fan_in, (index, value)

        level = (
            level.mapPartitions(regroup)
            .groupByKey(groups, partitionFunc=lambda key: key)
            .mapValues(lambda pairs: _add_in_order(pairs, add))
        )
    return _add_in_order(level.collect(), add)


def reduce_collected(
    pairs: Iterable[tuple[int, T]], add: Callable[[T, T], T], num_partitions: int, depth: int = 2
) -> T | None:
    """:func:`ordered_tree_reduce`'s result from the ``(partition_index, value)`` pairs already on
    the driver (one small value per partition, as a DataFrame ``collect`` returns them).

    The pairs are combined in the same groups and the same order as the RDD version's levels
    (``index // fan_in``, in index order, ``fan_in`` from ``num_partitions`` and ``depth``),
    so the same per-partition values give a bit-identical result either way.
    """
    n = num_partitions
    fan_in = fan_in_for(n, depth)
    level = list(pairs)
    while n > fan_in + n / fan_in:
        n = math.ceil(n / fan_in)
        groups: dict[int, list[tuple[int, T]]] = {}
        for index, value in level:
            groups.setdefault(index // fan_in, []).append((index, value))
        # every group has a member, so no sum is None
        level = [(group, cast(T, _add_in_order(members, add))) for group, members in groups.items()]
    return _add_in_order(level, add)
