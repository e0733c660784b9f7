"""Sufficient statistics as values.

An E-step over one block of rows returns a :class:`Stats`; the statistics of a
data set are the sum of the statistics of any split of it. That additivity is
what lets the engine run the E-step as independent map tasks and combine them
with a tree reduce, and it is tested directly for every model family.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["COUNT", "LOGLIK", "WEIGHT", "Stats", "StatsTuple", "sum_stats"]

# Keys every family's statistics carry; the engine reads only these.
LOGLIK = "loglik"  # sum over rows of w_i * log p(x_i | params), shape ()
WEIGHT = "weight"  # sum over rows of w_i (the effective number of samples), shape ()
COUNT = "count"  # number of rows, shape ()


@dataclass(frozen=True, eq=False)
class Stats(Mapping[str, np.ndarray]):
    """An immutable bag of named float64 arrays with ``zero`` and ``+``.

    Parameters
    ----------
    arrays : mapping of str to array-like
        Each value is converted to a float64 array and made read-only.
    """

    arrays: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        frozen = {}
        for name, value in self.arrays.items():
            arr = np.array(value, dtype=np.float64)  # always a private copy
            arr.setflags(write=False)
            frozen[name] = arr
        object.__setattr__(self, "arrays", frozen)

    # Mapping interface -------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    # Value semantics -----------------------------------------------------
    def zero(self) -> Stats:
        """Statistics of no data: same names and shapes, all zeros."""
        return Stats({k: np.zeros_like(v) for k, v in self.arrays.items()})

    def __add__(self, other: Stats) -> Stats:
        if not isinstance(other, Stats):
            return NotImplemented
        if self.arrays.keys() != other.arrays.keys():
            raise ValueError(
                f"cannot add statistics with different fields: {sorted(self.arrays)} vs {sorted(other.arrays)}"
            )
        out = {}
        for k, v in self.arrays.items():
            w = other.arrays[k]
            if v.shape != w.shape:
                raise ValueError(f"cannot add statistics: field {k!r} has shape {v.shape} vs {w.shape}")
            out[k] = v + w
        return Stats(out)

    def scaled(self, factor: float) -> Stats:
        """Every array times ``factor`` (a finite float >= 0): the statistics of the same rows with
        their weights scaled. ``count`` scales too: it is then the effective number of rows behind
        them. Stepwise EM (``engine.online``) blends ``s.scaled(1 - rho) + s_hat.scaled(rho)``; an
        update (``engine.incremental``) weighs stored statistics by a forgetting factor."""
        factor = float(factor)
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"statistics can only be scaled by a finite number >= 0, got {factor!r}")
        return Stats({k: v * factor for k, v in self.arrays.items()})

    def allclose(self, other: Stats, rtol: float = 1e-10, atol: float = 1e-12) -> bool:
        """True when both have the same fields and every array agrees within tolerance."""
        return self.arrays.keys() == other.arrays.keys() and all(
            np.allclose(v, other.arrays[k], rtol=rtol, atol=atol) for k, v in self.arrays.items()
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.arrays.items())
        return f"Stats({fields})"

    # Convenience for the engine -----------------------------------------
    @property
    def loglik(self) -> float:
        return float(self.arrays[LOGLIK])

    @property
    def weight(self) -> float:
        return float(self.arrays[WEIGHT])

    @property
    def count(self) -> float:
        return float(self.arrays[COUNT])


@dataclass(frozen=True)
class StatsTuple:
    """The statistics of several models over the same rows, added model by model.

    What one shared data pass returns: ``items[i]`` are the statistics under model ``i``, so
    the tuple of any split adds up to the tuple of the whole, as each :class:`Stats` does.
    """

    items: tuple[Stats, ...]

    def __add__(self, other: StatsTuple) -> StatsTuple:
        if not isinstance(other, StatsTuple):
            return NotImplemented
        if len(self.items) != len(other.items):
            raise ValueError(f"cannot add statistics of {len(self.items)} and {len(other.items)} models")
        return StatsTuple(tuple(a + b for a, b in zip(self.items, other.items)))

    def __len__(self) -> int:
        return len(self.items)


def sum_stats(values: Iterable[Stats]) -> Stats | None:
    """Sum in iteration order (deterministic); ``None`` for an empty iterable."""
    total = None
    for value in values:
        total = value if total is None else total + value
    return total
