"""How to run EM, as one value: :class:`FitSettings` (everything but the family and the data).

Its own module so that the checkpoint state (``engine.state``) and the loop (``engine.loop``)
both use it without importing each other. Storage owns the checkpoint and lease policies;
their defaults come from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from em_spark.engine.acceleration import ACCELERATIONS
from em_spark.storage.checkpoints import DEFAULT_KEEP_LAST
from em_spark.storage.locks import DEFAULT_TTL_SECONDS

__all__ = ["OPTIMIZERS", "FitSettings"]

#: "batch": every iteration is one pass over all the data (engine.loop); "online": stepwise EM,
#: every step an E-step on a mini-batch of the data (engine.online)
OPTIMIZERS = ("batch", "online")


@dataclass(frozen=True)
class FitSettings:
    """How to run EM (everything but the model family and the data)."""

    max_iter: int = 100
    tol: float = 1e-3
    n_init: int = 1
    seed: int = 0
    # "squarem": SQUAREM-accelerated EM (engine.acceleration); an iteration is still one data pass
    acceleration: str = ACCELERATIONS[0]
    # "online": stepwise EM (engine.online); an iteration is then one mini-batch step
    optimizer: str = OPTIMIZERS[0]
    # online only (pyspark.ml's online LDA names): the share of the data each step reads, in (0, 1];
    # rho_t = (t + learningOffset) ** -learningDecay, the weight of step t's statistics
    mini_batch_fraction: float = 0.05
    # tau (>= 0) and kappa (in (0.5, 1]: the sum of rho_t diverges, that of rho_t^2 converges). Not
    # LDA's 1024 / 0.51: a mini-batch's EM statistics are already a fair estimate of the full data's,
    # so early steps need little damping (bench/bench_online.py)
    learning_offset: float = 2.0
    learning_decay: float = 0.6
    run_id: str | None = None
    checkpoint_dir: str | None = None
    keep_checkpoints: int = DEFAULT_KEEP_LAST
    s3_endpoint: str | None = None
    # How long the run's lease outlives a driver that died without releasing it (see
    # em_spark.storage.locks). Not part of identity(): a resume may change it.
    lock_ttl_seconds: float = DEFAULT_TTL_SECONDS

    def __post_init__(self) -> None:
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ValueError(f"maxIter must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0 and math.isfinite(self.tol)):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if not (isinstance(self.n_init, int) and self.n_init >= 1):
            raise ValueError(f"nInit must be an integer >= 1, got {self.n_init!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.acceleration not in ACCELERATIONS:
            raise ValueError(f"acceleration must be one of {list(ACCELERATIONS)}, got {self.acceleration!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_range("miniBatchFraction", self.mini_batch_fraction, lambda v: 0 < v <= 1, "in (0, 1]")
        _check_range("learningOffset", self.learning_offset, lambda v: v >= 0, ">= 0 (tau)")
        _check_range("learningDecay", self.learning_decay, lambda v: 0.5 < v <= 1, "in (0.5, 1] (kappa)")
        if self.optimizer == "online" and self.acceleration != ACCELERATIONS[0]:
            raise ValueError(
                f"acceleration={self.acceleration!r} accelerates batch EM; optimizer='online' takes none. "
                "Set one of them back to its default."
            )
        if not (isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1):
            raise ValueError(f"keepCheckpoints must be an integer >= 1, got {self.keep_checkpoints!r}")
        ttl = self.lock_ttl_seconds
        if isinstance(ttl, bool) or not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"lockTtlSeconds must be a finite number > 0, got {ttl!r}")

    @property
    def held_out_fraction(self) -> float:
        """Online EM's held-out share of the data (never trained on; convergence is judged on it):
        one mini-batch's worth, at most a tenth; none with ``tol == 0`` (then maxIter steps run)."""
        if self.optimizer != "online" or self.tol == 0:
            return 0.0
        return min(float(self.mini_batch_fraction), 0.1)

    def identity(self) -> dict[str, Any]:
        """Settings that shape the result; a resume must match them exactly.

        ``acceleration`` only when not "none", so runs checkpointed before it existed still resume.
        """
        identity: dict[str, Any] = {"maxIter": self.max_iter, "tol": float(self.tol), "nInit": self.n_init}
        identity["seed"] = self.seed
        if self.acceleration != ACCELERATIONS[0]:
            identity["acceleration"] = self.acceleration
        if self.optimizer != OPTIMIZERS[0]:  # (absent for batch EM: its older checkpoints still resume)
            identity["optimizer"] = self.optimizer
            identity["miniBatchFraction"] = float(self.mini_batch_fraction)
            identity["learningOffset"] = float(self.learning_offset)
            identity["learningDecay"] = float(self.learning_decay)
            identity["heldOutFraction"] = self.held_out_fraction  # (tol 0 and > 0 train on different rows)
        return identity


def _check_range(key: str, value: Any, test: Callable[[float], bool], allowed: str) -> None:
    """A finite number that passes ``test``, or a ValueError naming ``key`` and what is ``allowed``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and test(float(value))):
        raise ValueError(f"{key} must be a finite number {allowed}, got {value!r}")
