"""Stepwise (mini-batch) EM: ``optimizer="online"`` (Cappé & Moulines 2009; Liang & Klein 2009).

For step t = 1, 2, ... and each restart, from one pass over a mini-batch of the data::

    s_hat = E-step of the step's slices under theta_{t-1}, scaled by W / w(slices)   (W: the data's weight)
    rho_t = 1 at t = 1, else (t + learningOffset) ** -learningDecay
    s_t   = (1 - rho_t) s_{t-1} + rho_t s_hat
    theta_t = M-step(s_t)

The mini-batch is a Bernoulli sample of the data's slices (``engine.minibatch``) drawn from the seed
and the step, so a fit is reproducible for a seed and partitioning. With ``tol > 0`` a fixed
held-out set of slices (``FitSettings.held_out_fraction`` of them, never trained on) is evaluated
once per epoch (every ``ceil(1 / miniBatchFraction)`` steps, in the same pass as that step's
mini-batch) and a restart has converged when its held-out average log-likelihood changed by less
than ``tol`` over the epoch; with ``tol = 0`` every restart runs ``maxIter`` steps. Each step
commits every restart's (theta_t, s_t, t, histories), so a killed fit resumes bit for bit.

What it guarantees instead of batch EM's monotone log-likelihood: with kappa in (0.5, 1] the step
sizes satisfy sum rho_t = inf and sum rho_t^2 < inf, the conditions under which stepwise EM
converges to a stationary point of the log-likelihood; no single step is promised to improve it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from em_spark.engine.minibatch import Subset, SubsetStats
from em_spark.engine.results import FitResult, RestartOutcome, restart_rng
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import BlockSource
from em_spark.engine.state import ResumeMismatchError, check_identity
from em_spark.models.base import EMFamily, Params
from em_spark.stats import Stats

__all__ = ["ONLINE_FORMAT", "OnlineRun", "OnlineState", "fit_online", "step_size"]

log = logging.getLogger("em_spark")

#: the checkpoint format of an online fit (its own: it holds each restart's statistics s_t)
ONLINE_FORMAT = "online-1"


def step_size(step: int, offset: float, decay: float) -> float:
    """rho_t: 1 at the first step (s_1 = s_hat: there is nothing to blend with), then (t + tau)^-kappa."""
    return 1.0 if step == 1 else float((step + offset) ** -decay)


@dataclass
class OnlineState:
    """One restart of an online fit after ``step`` steps: enough to continue it exactly."""

    restart: int
    step: int
    params: Params  # theta_step
    initial_params: Params
    stats: Stats | None  # s_step (None before the first step, or while every mini-batch was empty)
    history: list[float]  # per step: the mini-batch's average log-likelihood under theta_{step-1}
    held_out: list[float]  # per evaluation: the held-out set's average log-likelihood
    converged: bool

    def finished(self, max_iter: int) -> bool:
        return self.converged or self.step >= max_iter


@dataclass
class OnlineRun:
    """Every restart's state, in restart order, and whether the fit is done."""

    restarts: list[OnlineState]
    done: bool = False

    def running(self, max_iter: int) -> list[OnlineState]:
        return [] if self.done else [s for s in self.restarts if not s.finished(max_iter)]


def fit_online(
    family: EMFamily,
    source: BlockSource,
    settings: FitSettings,
    initial_params: Params | None,
    identity: dict,
    store: Any,
) -> Any:
    """Fit ``family`` to ``source`` with stepwise EM; resume from ``store`` (a CheckpointStore or
    None) when it has a checkpoint written for ``identity``. Returns an ``engine.results.FitResult``."""
    fit = _OnlineFit(family, source, settings, initial_params, identity, store)
    run = fit.start_or_resume()
    while running := run.running(settings.max_iter):
        # restarts in step share each pass; they are out of step only after a continuation under a
        # smaller tol reopened one that had stopped, which then catches up alone (one subset a pass)
        first = min(state.step for state in running)
        run = fit.step(run, [state for state in running if state.step == first])
    return fit.result(fit.finish(run))


class _OnlineFit:
    """One online fit's fixed context and its steps."""

    def __init__(
        self,
        family: EMFamily,
        source: BlockSource,
        settings: FitSettings,
        initial_params: Params | None,
        identity: dict,
        store: Any,
    ) -> None:
        self.family, self.source, self.settings, self.initial_params = family, source, settings, initial_params
        self.identity, self.store = identity, store
        self.run_id = settings.run_id or ""
        self.logger = logging.LoggerAdapter(log, {"run_id": self.run_id})
        self.total_weight = float(source.summary.weight_sum)
        self.epoch_steps = math.ceil(1.0 / settings.mini_batch_fraction)  # steps per pass over the data
        self.sequence = -1
        self.seconds: list[float] = []

    # -- the algorithm ---------------------------------------------------------------------

    def step(self, run: OnlineRun, running: list[OnlineState]) -> OnlineRun:
        """Step t of every running restart from one pass over step t's mini-batch, committed."""
        settings = self.settings
        started = time.perf_counter()
        t = running[0].step + 1  # (they are in step: see fit_online)
        evaluate = settings.held_out_fraction > 0 and (t - 1) % self.epoch_steps == 0
        subset = Subset(settings.seed, t, settings.mini_batch_fraction, settings.held_out_fraction, evaluate)
        label = f"em_spark run={self.run_id} online step={t}/{settings.max_iter}"
        got = self.source.e_step_subset([(self.family, state.params) for state in running], subset, label)
        stepped = {state.restart: self._step(state, i, got, evaluate) for i, state in enumerate(running)}
        run = replace(run, restarts=[stepped.get(s.restart, s) for s in run.restarts])
        self._commit(t, run)
        self.seconds.append(time.perf_counter() - started)
        for i, state in enumerate(running):
            self._log_step(stepped[state.restart], got, i, evaluate)
        return run

    def _step(self, state: OnlineState, i: int, got: SubsetStats, evaluate: bool) -> OnlineState:
        """Restart ``state`` after step t: blend its statistics with the mini-batch's, then the M-step."""
        settings, t = self.settings, state.step + 1
        batch = got.batch.items[i] if got.batch is not None else None
        stats, params, history = state.stats, state.params, state.history
        if batch is not None and batch.weight > 0:  # (an empty mini-batch, on tiny data, changes nothing)
            s_hat = batch.scaled(self.total_weight / batch.weight)  # as if the whole data looked like it
            rho = step_size(t, settings.learning_offset, settings.learning_decay)
            stats = s_hat if stats is None else stats.scaled(1.0 - rho) + s_hat.scaled(rho)
            rng = restart_rng(settings.seed, state.restart, state.step)
            step = self.family.m_step(stats, params, self.source.sample, rng)
            for event in step.events:
                self.logger.warning("run=%s restart=%d step=%d: %s", self.run_id, state.restart + 1, t, event)
            params, history = step.params, [*history, batch.loglik / batch.weight]
        held_out, converged = state.held_out, False
        if evaluate and got.held is not None and got.held.items[i].weight > 0:
            held = got.held.items[i]
            held_out = [*held_out, held.loglik / held.weight]
            converged = len(held_out) > 1 and abs(held_out[-1] - held_out[-2]) < settings.tol
        return replace(
            state, step=t, params=params, stats=stats, history=history, held_out=held_out, converged=converged
        )

    # -- start, resume, finish ---------------------------------------------------------------

    def start_or_resume(self) -> OnlineRun:
        settings = self.settings
        latest = self.store.latest() if self.store is not None else None
        if latest is not None:
            run = decode_online(latest.payload, self.identity, latest.uri, settings)
            self.sequence = latest.sequence
            self.logger.info(
                "run=%s resuming online EM from %s: step %d%s",
                self.run_id,
                latest.uri,
                max(s.step for s in run.restarts),
                " (already finished)" if run.done else "",
            )
            return run

        restarts = []
        for restart in range(settings.n_init):
            if restart == 0 and self.initial_params is not None:
                init = {k: np.array(v, dtype=np.float64) for k, v in self.initial_params.items()}
            else:
                init = self.family.initialize(self.source.sample, restart_rng(settings.seed, restart))
            restarts.append(OnlineState(restart, 0, init, init, None, [], [], False))
        self.logger.info(
            "run=%s starting online EM: %s k=%d, maxIter=%d steps, miniBatchFraction=%g (%d steps an epoch), "
            "learningOffset=%g, learningDecay=%g, nInit=%d, seed=%d; %s",
            self.run_id,
            self.family.name,
            self.family.k,
            settings.max_iter,
            settings.mini_batch_fraction,
            self.epoch_steps,
            settings.learning_offset,
            settings.learning_decay,
            settings.n_init,
            settings.seed,
            self._stopping_rule(),
        )
        return OnlineRun(restarts)

    def _stopping_rule(self) -> str:
        settings = self.settings
        if settings.held_out_fraction > 0:
            return (
                f"converged when the held-out set ({settings.held_out_fraction:.3g} of the data, not trained on) "
                f"changes by < tol={settings.tol:g} per epoch, else after maxIter steps"
            )
        return "tol=0: no held-out set, every restart runs maxIter steps"

    def stopped_by(self, state: OnlineState) -> str:
        return "heldOut" if state.converged else "maxIter"

    def finish(self, run: OnlineRun) -> OnlineRun:
        if not run.done:
            run = replace(run, done=True)
            self._commit(self.settings.max_iter + 1, run)
        for state in run.restarts:
            log.info(
                "run=%s restart=%d/%d online EM stopped by %s after %d steps (%.2f epochs)%s",
                self.run_id,
                state.restart + 1,
                self.settings.n_init,
                "convergence on the held-out set" if state.converged else f"maxIter={self.settings.max_iter}",
                state.step,
                state.step * self.settings.mini_batch_fraction,
                f", held-out avgLogLik={state.held_out[-1]:.8f}" if state.held_out else "",
                extra={
                    "run_id": self.run_id,
                    "em_event": {
                        "event": "online_stop",
                        "run_id": self.run_id,
                        "restart": state.restart + 1,
                        "steps": state.step,
                        "stoppedBy": self.stopped_by(state),
                        "heldOutAvgLogLik": state.held_out[-1] if state.held_out else None,
                    },
                },
            )
        return run

    def result(self, run: OnlineRun) -> Any:
        """The best restart: the highest last held-out average log-likelihood (with a held-out
        set), else the highest last mini-batch estimate; the first of equals."""

        def score(state: OnlineState) -> float:
            values = state.held_out or state.history
            return values[-1] if values else -math.inf

        best = run.restarts[0]
        for state in run.restarts[1:]:
            if score(state) > score(best):
                best = state
        summary = self.source.summary
        return FitResult(
            params=best.params,
            history=best.history,
            n_iter=best.step,
            converged=best.converged,
            restart=best.restart,
            total_weight=float(summary.weight_sum),
            n_rows=int(summary.rows),
            run_id=self.run_id,
            iteration_seconds=self.seconds,
            data_fingerprint=self.source.fingerprint,
            observation_weight=float(summary.observation_weight),
            restarts=[RestartOutcome(s.params, s.history, s.converged) for s in run.restarts],
            optimizer="online",
            stopped_by=self.stopped_by(best),
            held_out_history=list(best.held_out),
            epochs=best.step * self.settings.mini_batch_fraction,
        )

    def _commit(self, sequence: int, run: OnlineRun) -> None:
        if self.store is not None:
            self.sequence = max(sequence, self.sequence + 1)
            self.store.commit(self.sequence, encode_online(run, self.identity))

    def _log_step(self, state: OnlineState, got: SubsetStats, i: int, evaluate: bool) -> None:
        settings, seconds = self.settings, self.seconds[-1]
        batch = got.batch.items[i] if got.batch is not None else None
        avg = state.history[-1] if state.history else math.nan
        held = state.held_out[-1] if evaluate and state.held_out else None
        rho = step_size(state.step, settings.learning_offset, settings.learning_decay)
        log.info(
            "run=%s restart=%d/%d step=%d/%d rho=%.4f batchRows=%d batchAvgLogLik=%.8f%s seconds=%.2f%s",
            self.run_id,
            state.restart + 1,
            settings.n_init,
            state.step,
            settings.max_iter,
            rho,
            0 if batch is None else int(batch.count),
            avg,
            "" if held is None else f" heldOutAvgLogLik={held:.8f}",
            seconds,
            " converged (held-out)" if state.converged else "",
            extra={
                "run_id": self.run_id,
                "em_event": {
                    "event": "iteration",
                    "optimizer": "online",
                    "run_id": self.run_id,
                    "restart": state.restart + 1,
                    "restarts": settings.n_init,
                    "iteration": state.step,
                    "maxIter": settings.max_iter,
                    "avgLogLik": float(avg),
                    "heldOutAvgLogLik": held,
                    "rho": rho,
                    "batchRows": 0 if batch is None else int(batch.count),
                    "seconds": seconds,
                    "converged": bool(state.converged),
                },
                "em_weights": np.asarray(self.family.component_weights(state.params), dtype=np.float64).tolist(),
            },
        )


# -- the checkpoint's bytes ------------------------------------------------------------------


def encode_online(run: OnlineRun, identity: dict[str, Any]) -> bytes:
    """One checkpoint: each restart's params, initial params and statistics, and its facts."""
    from em_spark.storage import pack

    arrays: dict[str, np.ndarray] = {}
    entries = []
    for state in run.restarts:
        tag = f"r{state.restart}"
        groups = [("params", state.params), ("init", state.initial_params)]
        if state.stats is not None:
            groups.append(("stats", dict(state.stats)))
        for prefix, values in groups:
            arrays.update({f"{tag}.{prefix}.{k}": np.asarray(v) for k, v in values.items()})
        entries.append(
            {
                "restart": state.restart,
                "step": state.step,
                "history": state.history,
                "heldOut": state.held_out,
                "converged": state.converged,
                "hasStats": state.stats is not None,
            }
        )
    return pack({"format": ONLINE_FORMAT, "identity": identity, "restarts": entries, "done": run.done}, arrays)


def decode_online(payload: bytes, identity: dict[str, Any], where: str, settings: FitSettings) -> OnlineRun:
    """The online run in checkpoint ``payload``; ResumeMismatchError when written for another
    identity (naming the differences) or by a batch fit. A larger maxIter or smaller tol continues it."""
    from em_spark.storage import unpack

    meta, arrays = unpack(payload)
    if meta.get("format") != ONLINE_FORMAT:
        raise ResumeMismatchError(
            f"cannot resume from {where}: it holds a checkpoint of format {meta.get('format')!r} (a batch EM "
            f"fit), not of online EM ({ONLINE_FORMAT!r}). Use a new runId, or the optimizer that started the run."
        )
    check_identity(meta["identity"], identity, where)

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}

    restarts = []
    for entry in meta["restarts"]:
        tag = f"r{entry['restart']}"
        held = list(entry["heldOut"])
        # re-judged under this run's tol (a smaller one continues a restart the old one stopped)
        converged = entry["converged"] and len(held) > 1 and abs(held[-1] - held[-2]) < settings.tol
        restarts.append(
            OnlineState(
                restart=entry["restart"],
                step=entry["step"],
                params=group(f"{tag}.params"),
                initial_params=group(f"{tag}.init"),
                stats=Stats(group(f"{tag}.stats")) if entry["hasStats"] else None,
                history=list(entry["history"]),
                held_out=held,
                converged=converged,
            )
        )
    run = OnlineRun(restarts)
    return replace(run, done=meta["done"] and not run.running(settings.max_iter))
