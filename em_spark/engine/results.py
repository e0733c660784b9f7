"""What a fit returns (batch and online EM alike), and the one derivation of a restart's random stream.

Its own module so that ``engine.loop`` (batch EM) and ``engine.online`` (stepwise EM), which
dispatches from the loop, both build the same results without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from em_spark.models.base import Params

__all__ = ["FitResult", "RestartOutcome", "restart_rng"]


def restart_rng(seed: int, *path: int) -> np.random.Generator:
    """The random stream of ``path`` (restart, then iteration or step) under ``seed``."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, *path])


@dataclass(frozen=True)
class RestartOutcome:
    """Where one restart ended."""

    params: Params
    history: list[float]
    converged: bool


@dataclass
class FitResult:
    """The best restart's outcome."""

    params: Params
    history: list[float]  # average log-likelihood per sample, one per iteration
    n_iter: int
    converged: bool
    restart: int  # which restart won (0-based)
    total_weight: float
    n_rows: int
    run_id: str
    iteration_seconds: list[float] = field(default_factory=list)
    data_fingerprint: str = ""
    observation_weight: float | None = None  # BIC's sample size (models.criteria); None: unknown (older model file)
    restarts: list[RestartOutcome] = field(default_factory=list)  # every restart, in restart order
    optimizer: str = "batch"  # "online": stepwise EM (engine.online); history is then one entry per step
    stopped_by: str = ""  # online: "heldOut" (converged on the held-out set) or "maxIter"
    held_out_history: list[float] = field(default_factory=list)  # online: held-out avgLogLik, once an epoch
    epochs: float | None = None  # online: data passes' worth of rows the steps read (steps x miniBatchFraction)

    @property
    def average_log_likelihood(self) -> float:
        return self.history[-1]

    @property
    def log_likelihood(self) -> float:
        """Total (weighted) log-likelihood, as pyspark.ml reports it."""
        return self.history[-1] * self.total_weight
