"""Incremental EM over sources: stored statistics carried into a fit on new data only.

Two views of a :class:`~em_spark.engine.sources.BlockSource`, each wrapping one without
changing the loop (as :mod:`em_spark.engine.shared_passes` does):

- :class:`RecordingSource` keeps what each pass returned, so that after ``fit_em`` the
  winning restart's last E-step (its statistics and the parameters they were taken under)
  can be read back: the sufficient statistics a saved model keeps.
- :class:`DecayedSource` adds fixed statistics of earlier data, scaled by a forgetting factor,
  to every E-step on tonight's rows: iteration t's statistics are
  ``decay * stored + E-step(tonight | params_t)``, so the M-step sees the weighted sum and a
  pass costs tonight's rows only. The stored statistics are moved into each pass's frame
  (``family.move_stats``) before they are added.

The forgetting factor follows pyspark.mllib's StreamingKMeans with ``timeUnit="batches"``:
a half-life of h updates gives ``decay = 0.5 ** (1 / h)``, so data h updates old counts half.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from em_spark.engine.partition_tasks import Model
from em_spark.engine.sources import BlockSource
from em_spark.models.base import EMFamily, Params
from em_spark.stats import Stats

__all__ = ["DecayedSource", "RecordingSource", "decay_factor", "stats_digest"]


def decay_factor(half_life: Any) -> float:
    """``0.5 ** (1 / half_life)`` (StreamingKMeans' halfLife in batches); ``inf`` keeps all history (1.0).

    Raises ValueError naming ``halfLife`` and its range for anything but a number > 0.
    """
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"halfLife must be a number of updates > 0 (e.g. 7 for a week of nightly updates, "
            f"float('inf') to never forget), got {half_life!r}"
        )
    value = float(half_life)
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"halfLife must be > 0 (updates after which old data counts half; float('inf') never forgets), "
            f"got {half_life!r}"
        )
    return 1.0 if math.isinf(value) else 0.5 ** (1.0 / value)


def stats_digest(stats: Stats) -> str:
    """A short hash of the statistics' names, shapes and values: what a resumed update must match."""
    h = hashlib.sha256()
    for name in sorted(stats):
        value = np.ascontiguousarray(stats[name], dtype="<f8")
        h.update(f"{name}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


class _View:
    """A source seen through a view: facts (n_features, fingerprint, sample, summary, close) pass through."""

    def __init__(self, source: BlockSource) -> None:
        self._source = source

    def e_step(self, family: EMFamily, params: Params, label: str = "") -> Stats:
        return self.e_step_many([(family, params)], label)[0]

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        raise NotImplementedError  # (each view defines it)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class DecayedSource(_View):
    """``source`` whose every E-step adds ``decay * stored`` (taken under ``stored_params``)."""

    def __init__(self, source: BlockSource, stored: Stats, stored_params: Params, decay: float) -> None:
        super().__init__(source)
        self.decayed = stored.scaled(decay)
        self.stored_params = stored_params

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        tonight = (
            self._source.e_step_many(models, label)
            if len(models) > 1
            else [self._source.e_step(models[0][0], models[0][1], label)]
        )
        return [
            s + family.move_stats(self.decayed, self.stored_params, params)
            for (family, params), s in zip(models, tonight, strict=True)
        ]


class RecordingSource(_View):
    """``source`` that keeps the passes :meth:`last_e_step` can ask for: their parameters and statistics.

    Restarts run in step and a stopped restart leaves the schedule, so a pass holds the restarts
    still running and pass sizes only shrink. A restart's last pass is therefore the last pass of
    its size: only that one is kept per size, so the driver holds at most nInit passes' statistics
    however many iterations run.
    """

    def __init__(self, source: BlockSource) -> None:
        super().__init__(source)
        self.passes_seen = 0
        self.kept: list[tuple[int, list[tuple[Params, Stats]]]] = []  # (0-based pass index, entries)

    def e_step_many(self, models: Sequence[Model], label: str = "") -> list[Stats]:
        if len(models) == 1:  # (a source's plain E-step, as the loop calls it for one model)
            results = [self._source.e_step(models[0][0], models[0][1], label)]
        else:
            results = self._source.e_step_many(models, label)
        entries = [(params, s) for (_, params), s in zip(models, results, strict=True)]
        if self.kept and len(self.kept[-1][1]) == len(entries):
            self.kept[-1] = (self.passes_seen, entries)  # the earlier pass of this size is no one's last
        else:
            self.kept.append((self.passes_seen, entries))
        self.passes_seen += 1
        return results

    @property
    def last_pass(self) -> list[tuple[Params, Stats]]:
        """(parameters, statistics) of every model in the most recent pass."""
        return self.kept[-1][1]

    def last_e_step(self, histories: Sequence[Sequence[float]], winner: int) -> tuple[Params, Stats] | None:
        """(parameters, statistics) of restart ``winner``'s last pass, or None when this process did not run it.

        ``histories`` are every restart's history (one entry per pass, restarts in step: the
        loop's contract). Pass i (1-based) held the restarts whose history has at least i
        entries, in restart order; the passes seen here are the last ``passes_seen``.
        """
        lengths = [len(h) for h in histories]
        last = lengths[winner]
        first_seen = max(lengths) - self.passes_seen + 1  # iteration of the first pass seen here
        index = last - first_seen
        if last == 0 or index < 0:
            return None  # resumed after the winner's last pass (or a finished run: no pass at all)
        recorded = next((entries for at, entries in self.kept if at == index), None)
        if recorded is None or len(recorded) != sum(1 for n in lengths if n >= last):
            return None  # (not the loop's schedule: never guess)
        position = sum(1 for r in range(winner) if lengths[r] >= last)
        return recorded[position]
