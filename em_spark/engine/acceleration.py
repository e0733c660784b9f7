"""SQUAREM's extrapolation (Varadhan & Roland 2008, scheme S3), on a family's unconstrained coordinates.

From three consecutive EM points θ0, θ1 = M(θ0), θ2 = M(θ1), in the coordinates of
``family.to_unconstrained``: r = θ1 − θ0, v = θ2 − 2θ1 + θ0, step α = −‖r‖/‖v‖ clamped to
[−step_max, −1], and the extrapolated point θ' = θ0 − 2αr + α²v (α = −1 gives θ2 exactly).
An infeasible θ' (non-finite, or refused by the family) halves α towards −1
(:func:`backtrack`; no data pass). The loop (``engine.loop``) evaluates θ' in one data pass
and keeps it only when its log-likelihood is no lower than θ1's, the last one recorded;
otherwise it falls back to θ2, the plain EM point. ``step_max`` adapts as in the R package
SQUAREM (``squarem1``): it grows 4x after a cycle whose step reached it. Two changes,
measured on the overlapping mixtures of tests/engine/test_squarem.py and
bench/bench_squarem.py: it starts at 4, not the package's 1 (worst pass ratio to plain EM 2.5x
against 1.8x), and a rejected step sets it to a quarter of that step (not below 1), where the
package shrinks it only when the step had reached it: steps of about −10 kept failing under the
bound 16, each a wasted pass (20k x 4, K=3, tol 1e-6: 58 passes against 38). Pure numpy, no Spark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from em_spark.models.base import EMFamily, ModelError, Params

__all__ = ["ACCELERATIONS", "STEP_FACTOR", "STEP_MAX0", "backtrack", "extrapolate", "grown", "shrunk", "step_length"]

#: the values of the ``acceleration`` setting; the first is the default
ACCELERATIONS = ("none", "squarem")

#: the largest |α| of a restart's first cycle, and its growth factor (R SQUAREM's step.max0, mstep)
STEP_MAX0 = 4.0
STEP_FACTOR = 4.0

#: backtracking stops (falls back to θ2) once α is this close to −1
_MIN_STEP_GAP = 1e-2


def _flat(free: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(free[name], dtype=np.float64)) for name in sorted(free)])


def _unflat(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name in sorted(like):
        shape = np.shape(like[name])
        size = math.prod(shape)
        out[name] = vector[at : at + size].reshape(shape)
        at += size
    return out


def _differences(t0: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, v); a coordinate the three points share exactly (e.g. −inf: a probability 0) moves by 0."""
    same = (t0 == t1) & (t1 == t2)
    with np.errstate(invalid="ignore"):
        r = np.where(same, 0.0, t1 - t0)
        v = np.where(same, 0.0, t2 - 2.0 * t1 + t0)
    return r, v


def step_length(family: EMFamily, points: tuple[Params, Params, Params], step_max: float) -> float:
    """S3's α = −‖r‖/‖v‖ clamped to [−step_max, −1]; −1 (no extrapolation) when undefined (v = 0, non-finite)."""
    r, v = _differences(*(_flat(family.to_unconstrained(p)) for p in points))
    norm_r, norm_v = float(np.linalg.norm(r)), float(np.linalg.norm(v))
    if not (math.isfinite(norm_r) and math.isfinite(norm_v)) or norm_v == 0.0:
        return -1.0
    return -min(max(norm_r / norm_v, 1.0), step_max)


def grown(step_max: float, alpha: float) -> float:
    """``step_max`` after a kept cycle with step ``alpha``: 4x when the step reached it."""
    return step_max * STEP_FACTOR if alpha == -step_max else step_max


def shrunk(step_max: float, alpha: float) -> float:
    """``step_max`` after a rejected step ``alpha``: 4x below that step (not below 1)."""
    return max(1.0, min(step_max, -alpha) / STEP_FACTOR)


def backtrack(alpha: float) -> float:
    """The next step after an infeasible one: halfway towards −1; −1 (fall back to θ2) once close."""
    alpha = (alpha - 1.0) / 2.0
    return -1.0 if alpha > -1.0 - _MIN_STEP_GAP else alpha


def extrapolate(family: EMFamily, points: tuple[Params, Params, Params], alpha: float) -> Params | None:
    """θ' for step ``alpha`` < −1 as full parameters, or None when they are infeasible
    (non-finite, or the family's ``from_unconstrained`` refuses them)."""
    free = [family.to_unconstrained(p) for p in points]
    t0, t1, t2 = (_flat(f) for f in free)
    r, v = _differences(t0, t1, t2)
    shared = (t0 == t1) & (t1 == t2)
    with np.errstate(over="ignore", invalid="ignore"):
        vector = np.where(shared, t0, t0 - 2.0 * alpha * r + alpha * alpha * v)
    if not np.all(np.isfinite(vector) | shared):
        return None
    try:
        with np.errstate(all="ignore"):
            params = family.from_unconstrained(_unflat(vector, free[2]), points[2])
    except (ModelError, np.linalg.LinAlgError):
        return None
    if not all(np.all(np.isfinite(value) | (np.asarray(points[2][name]) == value)) for name, value in params.items()):
        return None
    return params
