"""How to run EM, as one value: :class:`FitSettings` (everything but the family and the data).

Its own module so that the checkpoint state (``engine.state``) and the loop (``engine.loop``)
both use it without importing each other. Storage owns the checkpoint and lease policies;
their defaults come from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from em_spark.engine.acceleration import ACCELERATIONS
from em_spark.storage.checkpoints import DEFAULT_KEEP_LAST
from em_spark.storage.locks import DEFAULT_TTL_SECONDS

__all__ = ["FitSettings"]


@dataclass(frozen=True)
class FitSettings:
    """How to run EM (everything but the model family and the data)."""

    max_iter: int = 100
    tol: float = 1e-3
    n_init: int = 1
    seed: int = 0
    # "squarem": SQUAREM-accelerated EM (engine.acceleration); an iteration is still one data pass
    acceleration: str = ACCELERATIONS[0]
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
        if not (isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1):
            raise ValueError(f"keepCheckpoints must be an integer >= 1, got {self.keep_checkpoints!r}")
        ttl = self.lock_ttl_seconds
        if isinstance(ttl, bool) or not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"lockTtlSeconds must be a finite number > 0, got {ttl!r}")

    def identity(self) -> dict[str, Any]:
        """Settings that shape the result; a resume must match them exactly.

        ``acceleration`` only when not "none", so runs checkpointed before it existed still resume.
        """
        identity: dict[str, Any] = {"maxIter": self.max_iter, "tol": float(self.tol), "nInit": self.n_init}
        identity["seed"] = self.seed
        if self.acceleration != ACCELERATIONS[0]:
            identity["acceleration"] = self.acceleration
        return identity
