"""Fake data sources for the EM loop's fault tests, and its textbook reference: one copy, shared by every test file."""

from __future__ import annotations

import math

import numpy as np

from em_spark.engine.sources import LocalBlockSource


class Killed(RuntimeError):
    """The driver 'crashed'."""


class KilledAfter(LocalBlockSource):
    """A source whose data pass 'crashes the driver' after ``passes`` successful ones.

    A pass is one ``e_step`` or one ``e_step_many`` (the restarts of a fit share each pass), so
    ``passes`` counts Spark jobs. ``error`` is what the failing pass raises (default :class:`Killed`).
    """

    def __init__(self, blocks, passes: int, *, error: BaseException | None = None, **kw) -> None:
        super().__init__(blocks, **kw)
        self.passes_left = passes
        self.error = error if error is not None else Killed("driver killed")

    def e_step_many(self, models, label=""):
        self._pass()
        return super().e_step_many(models, label)

    def e_step_subset(self, models, subset, label=""):
        """Online EM's pass (one mini-batch step for every restart): killed on the same count."""
        self._pass()
        return super().e_step_subset(models, subset, label)

    def _pass(self):
        if self.passes_left == 0:
            raise self.error
        self.passes_left -= 1


def one_after_another(family, source, settings):
    """The textbook restarts x iterations loop, restarts one after another: (params, history) per restart."""
    outcomes = []
    for restart in range(settings.n_init):
        params = family.initialize(source.sample, np.random.default_rng([settings.seed, restart]))
        history: list[float] = []
        for iteration in range(settings.max_iter):
            stats = source.e_step(family, params)
            avg = stats.loglik / stats.weight
            change = avg - history[-1] if history else math.inf
            rng = np.random.default_rng([settings.seed, restart, iteration])
            params = family.m_step(stats, params, source.sample, rng).params
            history.append(avg)
            if abs(change) < settings.tol:
                break
        outcomes.append((params, history))
    return outcomes
