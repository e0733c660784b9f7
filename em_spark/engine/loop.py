"""The EM loop: restarts, convergence, per-iteration checkpoints and exact resume.

Spark-agnostic: it asks a :class:`BlockSource` for the summed statistics of the data
under some parameters (one Spark job each for the real source) and does everything
else on the driver. Given the same data, family and settings, a run that is killed
and resumed ends with bit-identical parameters to one that never stopped, because
everything random is derived from ``(seed, restart, iteration)`` and the full state
after every round of M-steps is committed before the next E-step starts.

The ``nInit`` restarts run side by side: each round is one data pass (``source.e_step_many``,
one Spark job) for every restart still running, and a restart that converged or reached
``maxIter`` drops out. Each restart's trajectory is exactly the one it would have alone (the
shared pass gives each model its own statistics bit for bit), so the result is the one of
restarts run one after another; inside ``select`` (``engine.shared_passes``) the restarts of
every candidate join the same pass.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from em_spark.engine.acceleration import backtrack, extrapolate, grown, shrunk, step_length
from em_spark.engine.results import FitResult, RestartOutcome
from em_spark.engine.results import restart_rng as _rng
from em_spark.engine.session_loss import SessionLostError
from em_spark.engine.settings import FitSettings
from em_spark.engine.sources import (
    BlockSource,
    LocalBlockSource,  # noqa: F401  re-export: tests/golden/make_golden.py (main) imports it from here
)
from em_spark.engine.state import (
    Cycle,
    FitState,
    ResumeMismatchError,
    RunState,
    checkpoint_identity,
    decode_state,
    encode_state,
)
from em_spark.models.base import EMFamily, MStepResult, Params
from em_spark.stats import Stats

__all__ = [
    "FitResult",
    "FitSettings",
    "RestartOutcome",
    "ResumeMismatchError",  # raised by fit_em (defined with the checkpoint format in engine.state)
    "fit_em",
    "new_run_id",
    "run_lock",
]

log = logging.getLogger("em_spark")


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


class _LeasedCheckpoints:
    """A run's CheckpointStore that commits only while this process holds the run's lease."""

    def __init__(self, store: Any, lock: Any) -> None:
        self._store, self._lock = store, lock

    def latest(self) -> Any:
        return self._store.latest()

    def commit(self, sequence: int, payload: bytes) -> str:
        # LeaseLostError if another process took the run over (this one was paused past
        # the TTL); renews the lease when the heartbeat interval has passed.
        self._lock.check()
        return self._store.commit(sequence, payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def fit_em(
    family: EMFamily,
    source: BlockSource,
    settings: FitSettings,
    initial_params: Params | None = None,
    *,
    data_identity: Mapping[str, Any] | None = None,
) -> FitResult:
    """Fit ``family`` to ``source`` with EM; resume from checkpoints when the run id has them.

    With checkpoints, the fit holds the run id's lease (:class:`~em_spark.storage.RunLock`)
    from before it reads them until it ends, so two processes never fit one run at once: the
    second raises :class:`~em_spark.storage.RunLockedError` naming the first. The lease of a
    driver killed without releasing it is taken over at once by a re-run on the same machine,
    and elsewhere once it expires (``settings.lock_ttl_seconds`` after its last renewal).

    Parameters
    ----------
    initial_params : full parameters for restart 0 (an ``initialModel``); later restarts,
        and restart 0 without it, are seeded by ``family.initialize`` on the sample.
    data_identity : extra facts about the input that a resume must match (for example
        the feature and weight columns); the data fingerprint is always included.
    """
    settings = replace(settings, run_id=settings.run_id or new_run_id())
    if not settings.checkpoint_dir:
        return _fit_em(family, source, settings, initial_params, data_identity=data_identity)
    with run_lock(settings) as lock:  # released on return and on any error; a killed driver's lease expires
        return _fit_em(family, source, settings, initial_params, data_identity=data_identity, lock=lock)


def run_lock(settings: FitSettings) -> Any:
    """The lease of ``settings.run_id`` under ``settings.checkpoint_dir``, not yet taken (a context manager)."""
    from em_spark.storage import RunLock

    assert settings.checkpoint_dir is not None and settings.run_id is not None  # (callers check both)
    return RunLock(
        settings.checkpoint_dir,
        settings.run_id,
        s3_endpoint=settings.s3_endpoint,
        ttl_seconds=settings.lock_ttl_seconds,
        logger=logging.LoggerAdapter(log, {"run_id": settings.run_id}),
    )


def _fit_em(
    family: EMFamily,
    source: BlockSource,
    settings: FitSettings,
    initial_params: Params | None,
    *,
    data_identity: Mapping[str, Any] | None,
    lock: Any = None,
) -> FitResult:
    """The fit itself; ``lock``, when given, is held and guards every checkpoint commit.

    The restarts x iterations loop of scikit-learn's ``BaseMixture.fit_predict`` with the
    restarts side by side, so that each iteration is one data pass for all of them; written
    over a :class:`~em_spark.engine.state.RunState` so that it can start from a checkpoint
    after any round, or already done.
    """
    fit = _Fit(family, source, settings, initial_params, data_identity, lock)
    if settings.optimizer == "online":
        from em_spark.engine.online import fit_online

        return fit_online(family, source, settings, initial_params, fit.identity, fit.store)
    run = fit.start_or_resume()
    while running := run.running(settings.max_iter):  # iterations, each one pass for every restart still running
        run = fit.iterate(run, running)
    return fit.result(fit.finish(run))


class _Fit:
    """One fit's fixed context (family, data, settings, checkpoints, logger) and its steps."""

    def __init__(
        self,
        family: EMFamily,
        source: BlockSource,
        settings: FitSettings,
        initial_params: Params | None,
        data_identity: Mapping[str, Any] | None,
        lock: Any,
    ) -> None:
        self.family, self.source, self.settings, self.initial_params = family, source, settings, initial_params
        self.run_id = settings.run_id or new_run_id()
        self.logger = logging.LoggerAdapter(log, {"run_id": self.run_id})
        self.identity = checkpoint_identity(family, settings, source.fingerprint, data_identity, initial_params)
        self.store = self._checkpoints(lock)
        self.sequence = -1  # the last checkpoint committed or resumed from (sequences only increase)
        self.seconds: list[float] = []  # per iteration run by this process (not those before a resume)

    def _checkpoints(self, lock: Any) -> Any:
        """The run's CheckpointStore (guarded by ``lock`` when given), or None without a checkpointDir."""
        settings = self.settings
        if not settings.checkpoint_dir:
            return None
        from em_spark.storage import CheckpointStore

        store = CheckpointStore(
            settings.checkpoint_dir,
            self.run_id,
            keep_last=settings.keep_checkpoints,
            s3_endpoint=settings.s3_endpoint,
            logger=self.logger,
        )
        return _LeasedCheckpoints(store, lock) if lock is not None else store

    def _commit(self, sequence: int, run: RunState) -> None:
        """Commit ``run`` as checkpoint ``sequence``, or after the last one when a continued run
        (larger maxIter, smaller tol) has already used that number."""
        if self.store is not None:
            self.sequence = max(sequence, self.sequence + 1)
            self.store.commit(self.sequence, encode_state(run, self.identity))

    def start_or_resume(self) -> RunState:
        """The latest checkpoint's state when the run has one; else every restart at iteration 0."""
        settings, run_id = self.settings, self.run_id
        latest = self.store.latest() if self.store is not None else None
        if latest is not None:
            run = decode_state(latest.payload, self.identity, latest.uri)
            self.sequence = latest.sequence
            running = run.running(settings.max_iter)
            if run.continued_from is not None:
                self.logger.info(
                    "run=%s continuing under maxIter=%d, tol=%g (its checkpoints had maxIter=%d, tol=%g)",
                    run_id,
                    settings.max_iter,
                    settings.tol,
                    run.continued_from["maxIter"],
                    run.continued_from["tol"],
                )
            self.logger.info(
                "run=%s resuming from %s: restart %s/%d, iteration %d%s",
                run_id,
                latest.uri,
                ",".join(str(s.restart + 1) for s in running) or "-",  # the ones still running
                settings.n_init,
                max(s.iteration for s in run.restarts),
                " (already finished)" if run.done else "",
            )
            return run
        run = RunState([self._fresh_restart(restart) for restart in range(settings.n_init)])
        self.logger.info(
            "run=%s starting: %s k=%d, %d features, maxIter=%d, tol=%g, nInit=%d, seed=%d%s",
            run_id,
            self.family.name,
            self.family.k,
            self.source.n_features,
            settings.max_iter,
            settings.tol,
            settings.n_init,
            settings.seed,
            f", checkpoints in {settings.checkpoint_dir}" if self.store is not None else "",
        )
        return run

    def _fresh_restart(self, restart: int) -> FitState:
        """Restart ``restart`` before its first E-step: the initialModel for restart 0, else seeded."""
        if restart == 0 and self.initial_params is not None:
            init = {k: np.array(v, dtype=np.float64) for k, v in self.initial_params.items()}
        else:
            init = self.family.initialize(self.source.sample, _rng(self.settings.seed, restart))
        return FitState(restart, 0, init, init, [], False)

    def iterate(self, run: RunState, running: list[FitState]) -> RunState:
        """One data pass for the ``running`` restarts and each one's step on the driver, committed
        (as checkpoint number ``iteration``: the running restarts are in step) before it returns.

        Plain EM: the M-step. SQUAREM (``settings.acceleration``): see :meth:`_squarem_step`.
        Either way one iteration is one pass, ``history`` has one entry per pass and never
        decreases, and ``params`` is the next point plain EM would evaluate from there.
        """
        started = time.perf_counter()
        points = [self._point(state) for state in running]
        stats = self._e_steps(running, points)
        steps = {
            state.restart: self._step(state, point, s) for state, point, s in zip(running, points, stats, strict=True)
        }
        restarts = [steps[state.restart][0] if state.restart in steps else state for state in run.restarts]
        run = replace(run, restarts=restarts)
        self._commit(running[0].iteration + 1, run)
        self.seconds.append(time.perf_counter() - started)
        for state, avg, change in steps.values():
            self._log_iteration(state, avg, change)
            if state.restart_finished(self.settings.max_iter):
                self._log_restart(state)
        return run

    def _point(self, state: FitState) -> Params:
        """The parameters ``state``'s next pass evaluates: its params, or SQUAREM's extrapolation."""
        cycle = state.cycle
        if self.settings.acceleration != "squarem" or cycle is None or cycle.phase != 2:
            return state.params
        point = extrapolate(self.family, (cycle.points[0], cycle.points[1], state.params), cycle.alpha)
        assert point is not None  # (the step was chosen feasible in the pass before)
        return point

    def _step(self, state: FitState, point: Params, stats: Stats) -> tuple[FitState, float, float]:
        """``state`` after the pass at ``point`` gave ``stats``: (new state, avg log-likelihood, change)."""
        if self.settings.acceleration == "squarem":
            return self._squarem_step(state, point, stats)
        avg = stats.loglik / stats.weight
        change = avg - state.history[-1] if state.history else math.inf
        state = replace(
            state,
            iteration=state.iteration + 1,
            params=self._m_step(state, stats, point).params,
            history=[*state.history, avg],
            converged=abs(change) < self.settings.tol,
        )
        return state, avg, change

    def _e_steps(self, running: list[FitState], points: list[Params]) -> list[Stats]:
        """The summed statistics of the data under each of ``points``, from one pass (iteration
        ``running[0].iteration + 1`` of the running restarts)."""
        settings = self.settings
        which = ",".join(str(state.restart + 1) for state in running)
        label = f"em_spark run={self.run_id} restart={which}/{settings.n_init} iter={running[0].iteration + 1}"
        try:
            if len(points) == 1:  # (a source's plain E-step: what fakes and older sources implement)
                return [self.source.e_step(self.family, points[0], label)]
            return self.source.e_step_many([(self.family, point) for point in points], label)
        except SessionLostError as exc:
            raise SessionLostError(self._lost_message(running, exc)) from None

    def _m_step(self, state: FitState, stats: Stats, params: Params) -> MStepResult:
        """The M-step after the pass of iteration ``state.iteration + 1``; its events are logged."""
        settings = self.settings
        step = self.family.m_step(
            stats, params, self.source.sample, _rng(settings.seed, state.restart, state.iteration)
        )
        for event in step.events:
            self.logger.warning(
                "run=%s restart=%d iter=%d: %s", self.run_id, state.restart + 1, state.iteration + 1, event
            )
        return step

    def _squarem_step(self, state: FitState, point: Params, stats: Stats) -> tuple[FitState, float, float]:
        """One pass of SQUAREM (``engine.acceleration``) at ``point`` (:meth:`_point`), which gave
        ``stats``: (new state, avg log-likelihood, change).

        A cycle is three passes: at θ0 (giving θ1 = M(θ0)), at θ1 (θ2 = M(θ1), then the step α),
        at the extrapolation θ'. θ' is kept when its log-likelihood (plus ``family.log_prior``, for
        a MAP M-step) is no lower than θ1's, the last recorded, and the cycle ends with the
        stabilizing EM step M(θ'), the next cycle's θ0. Otherwise the pass records the last value
        again, is not a convergence test, and the next cycle starts from θ2 (plain EM). An M-step that had
        to repair something (a re-seeded component) ends the cycle: the next starts from its
        result. The state committed after each pass holds the cycle, so a resume is exact.
        """
        family, settings = self.family, self.settings
        cycle = state.cycle or Cycle()
        last = state.history[-1] if state.history else -math.inf
        avg = stats.loglik / stats.weight
        # EM never decreases loglik + log_prior (the MAP objective; = loglik without a prior): compare that
        gain = avg - last
        if cycle.phase == 2:
            gain += (family.log_prior(point) - family.log_prior(cycle.points[1])) / float(stats.weight)
        if cycle.phase == 2 and not gain >= 0:  # (NaN: rejected as well)
            self.logger.info(
                "run=%s restart=%d iter=%d: extrapolation (step %.3g) lowered the objective by %.3g "
                "per sample; falling back to the plain EM step",
                self.run_id,
                state.restart + 1,
                state.iteration + 1,
                cycle.alpha,
                -gain,
            )
            state = replace(  # the next pass evaluates θ2 (params), as plain EM would
                state,
                iteration=state.iteration + 1,
                history=[*state.history, last],
                converged=False,
                cycle=Cycle(step_max=shrunk(cycle.step_max, cycle.alpha)),
            )
            return state, avg, avg - last
        step = self._m_step(state, stats, point)
        if step.events:
            cycle = Cycle(step_max=cycle.step_max)
        elif cycle.phase == 2:
            cycle = Cycle(step_max=grown(cycle.step_max, cycle.alpha))
        elif cycle.phase == 0:
            cycle = Cycle(1, step_max=cycle.step_max, points=(point,))
        else:
            points = (cycle.points[0], point, step.params)
            cycle = self._next_step(points, step_length(family, points, cycle.step_max), cycle.step_max)
        change = avg - last if state.history else math.inf
        state = replace(
            state,
            iteration=state.iteration + 1,
            params=step.params,
            history=[*state.history, avg],
            converged=abs(change) < settings.tol,
            cycle=cycle,
        )
        return state, avg, change

    def _next_step(self, points: tuple[Params, Params, Params], alpha: float, step_max: float) -> Cycle:
        """The cycle that tries step ``alpha`` from ``points`` (halving past infeasible steps),
        or a new cycle from θ2 (plain EM) when the step is −1."""
        if alpha == -1.0:
            return Cycle(step_max=grown(step_max, alpha))
        while alpha < -1.0:
            if extrapolate(self.family, points, alpha) is not None:
                return Cycle(2, alpha, step_max, points[:2])
            alpha = backtrack(alpha)
        return Cycle(step_max=step_max)

    def _lost_message(self, running: list[FitState], exc: SessionLostError) -> str:
        """What a fit whose session died between iterations tells its user: what was lost, what is kept."""
        settings = self.settings
        iteration = running[0].iteration
        which = ", ".join(str(state.restart + 1) for state in running)
        where = f"iteration {iteration + 1} (restart{'s' if len(running) > 1 else ''} {which}/{settings.n_init})"
        if self.store is None:
            kept = "no checkpoints are kept (no checkpointDir), so a re-run starts over"
        elif iteration > 0:
            kept = (
                f"the checkpoints up to iteration {iteration} are kept in {settings.checkpoint_dir}; "
                "run the same command again (with the server up) to resume from there"
            )
        else:
            kept = "no iteration was checkpointed yet, so a re-run starts from the beginning"
        return f"run {self.run_id}: {exc} in {where}; {kept}"

    def _log_iteration(self, state: FitState, avg: float, change: float) -> None:
        """The progress line of the iteration just done, with its fields for JSON logs and metrics."""
        settings, run_id, seconds = self.settings, self.run_id, self.seconds[-1]
        progress = self.family.progress(state.params)
        extra = "".join(f" {key}={value:.4g}" for key, value in progress.items())
        weights = self.family.component_weights(state.params)
        # `log`, not the adapter: before Python 3.13 a LoggerAdapter drops the call's `extra`.
        # em_event: the line's fields, for JSON logs and em_spark.app.metrics; em_weights: for metrics only.
        log.info(
            "run=%s restart=%d/%d iter=%d/%d avgLogLik=%.8f change=%+.3e seconds=%.2f%s%s",
            run_id,
            state.restart + 1,
            settings.n_init,
            state.iteration,
            settings.max_iter,
            avg,
            change,
            seconds,
            extra,
            " converged" if state.converged else "",
            extra={
                "run_id": run_id,
                "em_event": {
                    "event": "iteration",
                    "run_id": run_id,
                    "restart": state.restart + 1,
                    "restarts": settings.n_init,
                    "iteration": state.iteration,
                    "maxIter": settings.max_iter,
                    "avgLogLik": float(avg),
                    "change": float(change),
                    "seconds": seconds,
                    "converged": bool(state.converged),
                    **{key: float(value) for key, value in progress.items()},
                },
                "em_weights": np.asarray(weights, dtype=np.float64).tolist(),
            },
        )

    def _log_restart(self, state: FitState) -> None:
        """The restart's posteriors on the sample (hard assignments, entropy), for run metrics:
        ``em_event`` {"event": "restart", ...} and ``em_assignments`` on the record. Never fails the fit."""
        from em_spark.models.diagnostics import posterior_summary

        try:
            posterior = posterior_summary(self.family, self.source.sample, state.params)
        except Exception as exc:  # noqa: BLE001 -- a diagnostic; the fit's own errors surface elsewhere
            self.logger.warning("run=%s restart=%d: no posterior summary: %s", self.run_id, state.restart + 1, exc)
            return
        log.info(
            "run=%s restart=%d/%d finished: %d iterations, avgLogLik=%.8f, posterior entropy %s",
            self.run_id,
            state.restart + 1,
            self.settings.n_init,
            state.iteration,
            state.history[-1] if state.history else math.nan,
            "n/a" if posterior.entropy is None else f"{posterior.entropy:.4f}",
            extra={
                "run_id": self.run_id,
                "em_event": {
                    "event": "restart",
                    "run_id": self.run_id,
                    "restart": state.restart + 1,
                    "iterations": state.iteration,
                    "avgLogLik": float(state.history[-1]) if state.history else None,
                    "converged": bool(state.converged),
                    "entropy": posterior.entropy,
                },
                "em_assignments": posterior.labels,
            },
        )

    def finish(self, run: RunState) -> RunState:
        """The done state, committed (after every iteration's sequence number), so a re-run of a
        finished run returns its result without an E-step."""
        if not run.done:
            run = replace(run, done=True)
            self._commit(self.settings.max_iter + 1, run)
        return run

    def result(self, run: RunState) -> FitResult:
        """The best restart of a done state: scikit-learn keeps the highest final lower bound
        (the first of equals, as restarts one after another would)."""
        best = run.restarts[0]
        for state in run.restarts[1:]:
            if state.history[-1] > best.history[-1]:
                best = state
        return FitResult(
            params=best.params,
            history=best.history,
            n_iter=len(best.history),
            converged=best.converged,
            restart=best.restart,
            total_weight=float(self.source.summary.weight_sum),
            n_rows=int(self.source.summary.rows),
            run_id=self.run_id,
            iteration_seconds=self.seconds,
            data_fingerprint=self.source.fingerprint,
            observation_weight=float(self.source.summary.observation_weight),
            restarts=[RestartOutcome(s.params, s.history, s.converged) for s in run.restarts],
        )
