"""Several fits over the same data at once, their E-steps gathered into shared data passes.

Each fit runs the ordinary EM loop (:func:`~em_spark.engine.loop.fit_em`, unchanged) in a
thread of its own, on a view of the source whose ``e_step`` waits until every fit still
running has asked for its next E-step; then one ``source.e_step_many`` call (one Spark job)
computes all of them, and each fit goes on with its own statistics. A fit that converges,
fails or ends leaves the group, and the others stop waiting for it.

Why threads: the loop is plain sequential code that calls ``e_step``; gathering the calls
needs no second copy of it. Only the thread that completes a group runs the pass, so Spark
sees one job at a time. Results do not depend on the grouping: each model's statistics from
a shared pass are bit-identical to a pass of its own (``e_step_many``'s contract).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from em_spark.engine.job_tags import tag_carrying_thread
from em_spark.engine.partition_tasks import Model
from em_spark.engine.sources import BlockSource
from em_spark.models.base import EMFamily, Params
from em_spark.stats import Stats

__all__ = ["SharedPasses", "run_sharing_passes"]

T = TypeVar("T")


class _Request:
    """One fit's E-step waiting for the group's pass."""

    def __init__(self, models: Sequence[Model], label: str) -> None:
        self.models, self.label = list(models), label
        self.result: list[Stats] | None = None
        self.error: BaseException | None = None


class SharedPasses:
    """The coordinator: gathers the E-steps of the fits still running into one pass.

    ``passes`` counts the data passes run (Spark jobs, one per group), ``requests`` the
    E-steps asked for: with ``n`` fits in step, ``requests`` is about ``n`` times ``passes``.
    """

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self._lock = threading.Condition()
        self._active: list[_Member] = []
        self._pending: dict[_Member, _Request] = {}
        self.passes = 0
        self.requests = 0

    def member(self) -> _Member:
        """A view of the source for one more fit (it takes part in every pass until it leaves)."""
        view = _Member(self)
        with self._lock:
            self._active.append(view)
        return view

    def leave(self, view: _Member) -> None:
        """``view``'s fit is over: the group's pass no longer waits for it."""
        with self._lock:
            self._active.remove(view)
            ready = self._take_ready()
        if ready:
            self._run(ready)

    def request(self, view: _Member, models: Sequence[Model], label: str) -> list[Stats]:
        """``view``'s E-step: returned once the group's pass ran (run here if this is the last ask)."""
        request = _Request(models, label)
        with self._lock:
            self._pending[view] = request
            self.requests += 1
            ready = self._take_ready()
        if ready:
            self._run(ready)
        with self._lock:
            while request.result is None and request.error is None:
                self._lock.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _take_ready(self) -> list[_Request]:
        """The group's requests when every active fit has asked (held lock); else nothing."""
        if not self._pending or len(self._pending) < len(self._active):
            return []
        ready = [self._pending[view] for view in self._active if view in self._pending]
        self._pending.clear()
        return ready

    def _run(self, ready: list[_Request]) -> None:
        """One pass for all of ``ready``'s models; hand each request its own statistics (or the error)."""
        models = [model for request in ready for model in request.models]
        label = ready[0].label + (f" (+{len(models) - 1} models in the same pass)" if len(models) > 1 else "")
        try:
            results = self.source.e_step_many(models, label)
        except BaseException as exc:  # noqa: BLE001 -- every waiting fit gets the pass's error as its own
            with self._lock:
                for request in ready:
                    request.error = exc
                self._lock.notify_all()
            return
        with self._lock:
            start = 0
            for request in ready:
                request.result = results[start : start + len(request.models)]
                start += len(request.models)
            self.passes += 1
            self._lock.notify_all()


class _Member:
    """One fit's view of the shared source: facts from the source, E-steps through the group."""

    def __init__(self, group: SharedPasses) -> None:
        self._group = group

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        return self._group.request(self, [(family, params)], label)[0]

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        return self._group.request(self, models, label)

    def __getattr__(self, name: str) -> Any:  # n_features, fingerprint, sample, summary, ...
        return getattr(self._group.source, name)


class _Outcome(Generic[T]):
    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None


def run_sharing_passes(source: BlockSource, fits: Sequence[Callable[[Any], T]]) -> tuple[list[T], SharedPasses]:
    """Run ``fits`` (each called with its view of ``source``) at once, sharing every data pass.

    Returns their results in the order given (and the coordinator, for its pass counts). An
    error in one fit ends that fit only; once all have ended, the first error (in the order
    given) is raised. A fit that must fail softly catches its own errors.
    """
    group = SharedPasses(source)
    outcomes: list[_Outcome[T]] = [_Outcome() for _ in fits]
    views = [group.member() for _ in fits]  # all registered before any asks: the first pass waits for all

    def run(fit: Callable[[Any], T], view: _Member, outcome: _Outcome[T]) -> None:
        try:
            outcome.value = fit(view)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread below
            outcome.error = exc
        finally:
            group.leave(view)

    threads = [
        # the passes run in these threads: their jobs must carry the caller's run tag (engine/job_tags.py)
        tag_carrying_thread(run, (fit, view, outcome), name=f"em_spark-fit-{i}")
        for i, (fit, view, outcome) in enumerate(zip(fits, views, outcomes))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
    return [outcome.value for outcome in outcomes], group  # type: ignore[misc]  # (no error: every value is set)
