"""The checkpoint state of a fit: what one checkpoint holds, its bytes, and the run's identity.

The EM loop runs the ``nInit`` restarts side by side, one data pass per round for all of them,
and commits a :class:`RunState` (every restart's own :class:`FitState`) after the round's
M-steps, so a killed run resumes as if it had never stopped. This module owns that format (``CHECKPOINT_FORMAT``): the state as
a value, :func:`encode_state` / :func:`decode_state` to and from the bytes of one checkpoint
(``em_spark.storage.pack``: JSON metadata plus arrays, no pickle), and
:func:`checkpoint_identity`, the facts a resume must match. Changing anything here changes
checkpoint bytes: bump ``CHECKPOINT_FORMAT`` when you mean to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from em_spark.engine.acceleration import STEP_MAX0
from em_spark.engine.settings import FitSettings
from em_spark.models.base import EMFamily, Params

__all__ = [
    "BUDGET_KEYS",
    "CHECKPOINT_FORMAT",
    "Cycle",
    "FitState",
    "ResumeMismatchError",
    "RunState",
    "check_identity",
    "checkpoint_identity",
    "continued",
    "decode_state",
    "encode_state",
    "params_digest",
]

#: 2: every restart's state in each checkpoint (restarts share passes). 1 (restarts one after
#: another, the best so far) is refused with a message: it cannot be continued side by side.
CHECKPOINT_FORMAT = 2


#: the settings a re-run may change to continue a run (``maxIter`` only up, ``tol`` only down):
#: neither shapes an iteration, so a run stopped under the old ones is a prefix of the longer run.
BUDGET_KEYS = ("maxIter", "tol")


class ResumeMismatchError(ValueError):
    """A run id's checkpoints were written for other data or another configuration."""


@dataclass
class Cycle:
    """Where a restart is within a SQUAREM cycle (``engine.acceleration``); see ``_Fit.iterate``.

    phase 0: the next pass evaluates ``FitState.params``, the start θ0 of a new cycle.
    phase 1: ``points`` is (θ0,); ``FitState.params`` is θ1 = M(θ0), the next pass evaluates it.
    phase 2: ``points`` is (θ0, θ1); ``FitState.params`` is θ2 = M(θ1), the fallback; the next
    pass evaluates the extrapolation from (θ0, θ1, θ2) with step ``alpha`` (< −1).
    """

    phase: int = 0
    alpha: float = -1.0
    step_max: float = STEP_MAX0  # the bound on |alpha|, adapted from cycle to cycle (engine.acceleration)
    points: tuple[Params, ...] = ()


@dataclass
class FitState:
    """One restart's state: enough to continue it as if never stopped."""

    restart: int
    iteration: int  # M-steps done in this restart
    params: Params
    initial_params: Params
    history: list[float]
    converged: bool
    cycle: Cycle | None = None  # with acceleration="squarem" only

    def restart_finished(self, max_iter: int) -> bool:
        return self.converged or self.iteration >= max_iter


@dataclass
class RunState:
    """Everything a checkpoint holds: every restart's state, in restart order, and whether the fit is done."""

    restarts: list[FitState]
    done: bool = False
    # The checkpoint's {maxIter, tol} when this run continues it under a larger budget (not stored).
    continued_from: dict[str, Any] | None = None

    def running(self, max_iter: int) -> list[FitState]:
        """The restarts that take part in the next data pass."""
        return [] if self.done else [s for s in self.restarts if not s.restart_finished(max_iter)]


def params_digest(params: Mapping[str, np.ndarray] | None) -> str | None:
    """A content hash of parameter arrays (to recognise the same initialModel)."""
    if params is None:
        return None
    h = hashlib.sha256()
    for name in sorted(params):
        arr = np.ascontiguousarray(params[name], dtype=np.float64)
        h.update(name.encode() + str(arr.shape).encode() + arr.tobytes())
    return h.hexdigest()


def checkpoint_identity(
    family: EMFamily,
    settings: FitSettings,
    fingerprint: str,
    data_identity: Mapping[str, Any] | None,
    initial_params: Params | None,
) -> dict[str, Any]:
    """What a run's checkpoints were written for; :func:`decode_state` refuses any other.

    The family's configuration, the settings that shape the result, the data (its
    fingerprint plus the caller's ``data_identity``, e.g. the columns) and the initialModel.
    """
    return {
        "family": family.config(),
        "settings": settings.identity(),
        "data": {"fingerprint": fingerprint, **dict(data_identity or {})},
        "initialModel": params_digest(initial_params),
    }


def encode_state(run: RunState, identity: dict[str, Any]) -> bytes:
    """The bytes of one checkpoint: each restart's arrays under ``r<restart>.``, its facts in ``restarts``."""
    from em_spark.storage import pack

    arrays: dict[str, np.ndarray] = {}
    restarts = []
    for state in run.restarts:
        tag = f"r{state.restart}"
        for prefix, params in (("params", state.params), ("init", state.initial_params)):
            arrays.update({f"{tag}.{prefix}.{k}": v for k, v in params.items()})
        entry: dict[str, Any] = {
            "restart": state.restart,
            "iteration": state.iteration,
            "history": state.history,
            "converged": state.converged,
        }
        if state.cycle is not None:  # (absent without acceleration)
            cycle = state.cycle
            entry["cycle"] = {
                "phase": cycle.phase,
                "alpha": cycle.alpha,
                "stepMax": cycle.step_max,
                "points": len(cycle.points),
            }
            for i, point in enumerate(cycle.points):
                arrays.update({f"{tag}.cycle{i}.{k}": v for k, v in point.items()})
        restarts.append(entry)
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "identity": identity, "restarts": restarts, "done": run.done}
    return pack(meta, arrays)


def decode_state(payload: bytes, identity: dict[str, Any], where: str) -> RunState:
    """The state in checkpoint ``payload`` (read from ``where``).

    Raises :class:`ResumeMismatchError` when it has another format or was written for
    another ``identity``, naming each difference.
    """
    from em_spark.storage import unpack

    meta, arrays = unpack(payload)
    if meta.get("format") == 1:
        raise ResumeMismatchError(
            f"checkpoint {where} has format 1 (restarts one after another, from an em_spark before restarts "
            f"shared their data passes); this em_spark writes format {CHECKPOINT_FORMAT} and cannot continue "
            "it exactly. Finish the run with the em_spark that started it, or use a new runId."
        )
    if meta.get("format") == "online-1":  # (engine.online's ONLINE_FORMAT)
        raise ResumeMismatchError(
            f"cannot resume from {where}: it holds a checkpoint of online EM (optimizer='online'), and this "
            "run uses batch EM. Use a new runId, or the optimizer that started the run."
        )
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ResumeMismatchError(
            f"checkpoint {where} has format {meta.get('format')!r}; this em_spark writes format "
            f"{CHECKPOINT_FORMAT}. Use a new runId."
        )
    old_budget, new_budget = check_identity(meta["identity"], identity, where)

    def group(prefix: str) -> Params:
        return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}

    def restart(entry: dict[str, Any]) -> FitState:
        tag = f"r{entry['restart']}"
        cycle = None
        if entry.get("cycle") is not None:
            c = entry["cycle"]
            points = tuple(group(f"{tag}.cycle{i}") for i in range(c["points"]))
            cycle = Cycle(c["phase"], float(c["alpha"]), float(c["stepMax"]), points)
        return FitState(
            restart=entry["restart"],
            iteration=entry["iteration"],
            params=group(f"{tag}.params"),
            initial_params=group(f"{tag}.init"),
            history=list(entry["history"]),
            converged=entry["converged"],
            cycle=cycle,
        )

    run = RunState([restart(entry) for entry in meta["restarts"]], done=meta["done"])
    if old_budget == new_budget:
        return run
    return replace(continued(run, new_budget["maxIter"], new_budget["tol"]), continued_from=old_budget)


def check_identity(
    stored: dict[str, Any], identity: dict[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (checkpoint's, this run's) ``{maxIter, tol}`` when a run written for ``stored`` may go on
    as ``identity``: the same in all but a larger maxIter or a smaller tol. Else
    :class:`ResumeMismatchError`, naming each difference."""
    old_budget, new_budget = _budget(stored), _budget(identity)
    if _without_budget(stored) != _without_budget(identity) or not _may_continue(old_budget, new_budget):
        keys = sorted(set(stored) | set(identity))
        diffs = [
            f"{k}: checkpoint has {stored.get(k)!r}, this run has {identity.get(k)!r}"
            for k in keys
            if stored.get(k) != identity.get(k)
        ]
        raise ResumeMismatchError(
            f"cannot resume from {where}: it was written for different data or settings ("
            + "; ".join(diffs)
            + "). Resuming would mix two fits. Use a new runId, or restore the original data and config"
            " (a run continues under a larger maxIter or a smaller tol only, everything else unchanged)."
        )
    return old_budget, new_budget


def continued(run: RunState, max_iter: int, tol: float) -> RunState:
    """``run`` (stopped under a smaller ``maxIter`` or a larger ``tol``) as it stands under ``max_iter``
    and ``tol``: what one uninterrupted run under those settings would hold at that point.

    A restart that converged under the old tol is re-judged on its last change (it stays converged
    only when that change is below ``tol`` too); one that did not converge stays so (its change was
    at least the old tol, or it was a SQUAREM fall-back pass, which is never a convergence test). The
    run is done only when it was and no restart runs on under the new settings.
    """
    restarts = []
    for state in run.restarts:
        converged = state.converged and len(state.history) > 1 and abs(state.history[-1] - state.history[-2]) < tol
        restarts.append(replace(state, converged=converged))
    reopened = RunState(restarts)
    return replace(reopened, done=run.done and not reopened.running(max_iter))


def _budget(identity: Mapping[str, Any]) -> dict[str, Any]:
    settings = identity.get("settings", {})
    return {k: settings.get(k) for k in BUDGET_KEYS}


def _without_budget(identity: Mapping[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in identity.get("settings", {}).items() if k not in BUDGET_KEYS}
    return {**identity, "settings": settings}


def _may_continue(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A run continues under ``new`` when it never stops earlier than under ``old``: maxIter up, tol down."""
    try:
        return bool(new["maxIter"] >= old["maxIter"] and new["tol"] <= old["tol"])
    except TypeError:  # (a key missing on one side)
        return False
