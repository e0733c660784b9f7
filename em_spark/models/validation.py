"""One validator for user-supplied arrays (initial models, public params), one wording per problem.

Every family checks an ``initialModel`` with :func:`check_parameter` (pomegranate v1's
``_check_parameter`` is the pattern): numeric, shape, finite, lower bound, summing to 1
(then renormalized exactly), symmetric positive definite (then symmetrized). Each problem
has one message, whichever family finds it, naming the array and what it should be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from em_spark.models.base import ModelError
from em_spark.models.kernels import cholesky_or_none

__all__ = [
    "HANDLE_MISSING",
    "SUM_TOLERANCE",
    "check_handle_missing",
    "check_parameter",
    "check_present",
    "check_row_totals",
    "is_number",
]

#: user-given probabilities must sum to 1 within this (they are then renormalized exactly)
SUM_TOLERANCE = 1e-6
#: how a family that can model missing values treats NaN entries (the ``handleMissing`` param)
HANDLE_MISSING = ("error", "model")


def is_number(value: Any) -> bool:
    """A real number given as a hyperparameter: int or float (numpy's too), never a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_handle_missing(value: Any) -> str:
    """``handleMissing`` as given, or a ModelError naming the choices."""
    if value not in HANDLE_MISSING:
        raise ModelError(f"handleMissing must be one of {list(HANDLE_MISSING)}, got {value!r}")
    return str(value)


def check_row_totals(trials: Any, n: int, what: str) -> np.ndarray:
    """(n,) int64 row totals of drawn count vectors from one total or n of them, or a ModelError
    naming ``what`` a total is ("row totals", "words per document")."""
    totals = np.broadcast_to(np.asarray(trials), (n,))
    if np.any(totals < 0) or not np.all(totals == np.round(totals)):
        raise ModelError(f"trials must be non-negative integers ({what}), got {trials!r}")
    return totals.astype(np.int64)


def check_present(arrays: Mapping[str, Any], names: Sequence[str], optional: Sequence[str] = ()) -> None:
    """A ModelError naming the arrays of ``names`` missing from ``arrays``."""
    missing = [name for name in names if name not in arrays]
    if missing:
        wanted = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        extra = f" (and {', '.join(optional)})" if optional else ""
        raise ModelError(f"initialModel is missing {missing}; give {wanted}{extra} (got {sorted(arrays)})")


def check_parameter(
    value: Any,
    name: str,
    *,
    shape: tuple[int, ...] | None = None,
    what: str = "",
    finite: bool = True,
    min_value: float | None = None,
    simplex: bool | np.ndarray = False,
    positive_definite: str | None = None,
    unit: str = "component",
) -> np.ndarray:
    """``value`` as a new float64 array, checked; a :class:`ModelError` naming the problem otherwise.

    Parameters
    ----------
    name : the array's user-facing name ("weights", "transMat")
    shape : the required shape; ``what`` says what it follows from ("k=3 and 2 features")
    finite : refuse NaN and infinities
    min_value : refuse entries below it (0: "non-negative")
    simplex : True: the array (1-D) or each row (along the last axis) must sum to 1 within
        ``SUM_TOLERANCE``; it is returned renormalized. An (F + 1,) int array of column
        offsets: each row's F groups of columns ``offsets[f]:offsets[f + 1]`` must each sum to 1.
    positive_definite : "matrices": the last two axes hold symmetric positive definite
        matrices (one, or one per ``unit``); returned exactly symmetrized. "variances": every
        entry is a variance, > 0 (rows, or entries of a 1-D array, are the ``unit``s).
    """
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"initialModel {name} must be a numeric array: {exc}") from None
    if shape is not None and array.shape != tuple(shape):
        raise ModelError(f"initialModel {name} must have shape {tuple(shape)}{_for(what)}, got {array.shape}")
    if finite and not np.all(np.isfinite(array)):
        raise ModelError(f"initialModel {name} must be finite (no NaN or infinity)")
    if min_value is not None and np.any(array < min_value):
        at = np.unravel_index(int(np.argmax(array < min_value)), array.shape)
        bound = "non-negative" if min_value == 0 else f">= {min_value}"
        raise ModelError(f"initialModel {name} must be {bound}, got {float(array[at])!r} at index {list(map(int, at))}")
    if simplex is not False:
        array = _simplex(array, name, None if simplex is True else np.asarray(simplex, dtype=np.int64), unit)
    if positive_definite == "matrices":
        array = _positive_definite_matrices(array, name, what, unit)
    elif positive_definite == "variances":
        bad = ~np.all(np.reshape(array > 0.0, (array.shape[0], -1)), axis=1) if array.ndim else ~(array > 0.0)
        if np.any(bad):
            _not_positive_definite(name, what, unit, [int(i) for i in np.flatnonzero(bad)] if array.ndim else None)
    elif positive_definite is not None:
        raise ValueError(f"positive_definite must be 'matrices' or 'variances', got {positive_definite!r}")
    return array


def _for(what: str) -> str:
    return f" for {what}" if what else ""


def _simplex(array: np.ndarray, name: str, offsets: np.ndarray | None, unit: str) -> np.ndarray:
    """``array`` renormalized to sum to 1 (per row; per group of columns with ``offsets``)."""
    if offsets is not None:
        sums = np.add.reduceat(array, offsets[:-1], axis=-1)  # (k, F); every group has >= 1 column
        bad = np.argwhere(np.abs(sums - 1.0) > SUM_TOLERANCE)
        if bad.size and sums.shape[-1] == 1:
            _rows_do_not_sum_to_one(name, np.flatnonzero(np.abs(sums[:, 0] - 1.0) > SUM_TOLERANCE), sums[:, 0])
        if bad.size:
            j, f = (int(v) for v in bad[0])
            raise ModelError(
                f"initialModel {name} of {unit} {j} must sum to 1 over feature {f} (columns "
                f"{offsets[f]}..{offsets[f + 1] - 1}), got {sums[j, f]:.8g}"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            return array / np.repeat(sums, np.diff(offsets), axis=-1)
    sums = array.sum(axis=-1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if np.any(off):
        if array.ndim == 1:
            raise ModelError(f"initialModel {name} must sum to 1, got sum {float(sums):.8g}")
        _rows_do_not_sum_to_one(name, np.flatnonzero(off), sums)
    return array / sums[..., None] if array.ndim > 1 else array / sums


def _rows_do_not_sum_to_one(name: str, bad: np.ndarray, sums: np.ndarray) -> None:
    raise ModelError(
        f"initialModel {name} rows must each sum to 1; rows {bad.tolist()} sum to "
        f"{[float(f'{s:.8g}') for s in sums[bad]]}"
    )


def _positive_definite_matrices(array: np.ndarray, name: str, what: str, unit: str) -> np.ndarray:
    scale = np.max(np.abs(array))
    if not np.allclose(array, np.swapaxes(array, -1, -2), rtol=1e-8, atol=1e-12 * scale):
        raise ModelError(f"initialModel {name} must be symmetric{_for(what)}")
    array = 0.5 * (array + np.swapaxes(array, -1, -2))
    if cholesky_or_none(array) is None:
        stack = array[None] if array.ndim == 2 else array
        bad = [i for i in range(stack.shape[0]) if cholesky_or_none(stack[i]) is None]
        _not_positive_definite(name, what, unit, None if array.ndim == 2 else bad)
    return array


def _not_positive_definite(name: str, what: str, unit: str, bad: list[int] | None) -> None:
    which = "" if bad is None else f"; {unit}s {bad} are not"
    raise ModelError(f"initialModel {name} must be positive definite{_for(what)}{which}")
