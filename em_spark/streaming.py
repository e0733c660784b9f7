"""Structured Streaming: a model updated per micro-batch from ``foreachBatch``, its state checkpointed.

:class:`StreamingUpdate` is the function a query hands each micro-batch to
(``stream.writeStream.foreachBatch(updater)``): it runs ``model.update(batch, halfLife)`` (EM on
the batch's rows, the model's stored statistics decayed and carried over; see
:mod:`em_spark.engine.incremental`) and commits the new model, statistics included, as the run's
checkpoint numbered by the batch id (:class:`~em_spark.storage.CheckpointStore`: sealed, written
with a conditional create, verified on read). So:

- a restarted query (a new StreamingUpdate over the same ``checkpointDir`` and ``runId``) goes on
  from the model of the last committed batch;
- a micro-batch delivered again with a batch id already committed (Spark replays the last batch
  after a failure between our commit and its own) is skipped, never counted twice;
- an empty micro-batch changes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from em_spark.engine.incremental import decay_factor

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from em_spark.api.base import EMModel

__all__ = ["StreamingUpdate"]

log = logging.getLogger("em_spark")


class StreamingUpdate:
    """Update ``model`` with each micro-batch; ``updater.model`` is the latest.

    Parameters
    ----------
    model : a fitted model with stored statistics (``model.statistics``): the start when the run
        has no checkpoint yet; ignored (the checkpoint wins) when it has one
    checkpointDir, runId : where the run's committed models live (any pyarrow.fs URI; a safe name)
    halfLife : micro-batches after which a batch's data counts half (> 0; ``float('inf')`` never forgets)
    maxIter, tol : EM per micro-batch (default: the model's)
    """

    def __init__(
        self,
        model: EMModel,
        checkpointDir: str,
        runId: str,
        halfLife: float,
        *,
        maxIter: int | None = None,
        tol: float | None = None,
        keepCheckpoints: int = 3,
        s3Endpoint: str | None = None,
    ) -> None:
        from em_spark.api import model_from_bytes
        from em_spark.storage import CheckpointStore

        decay_factor(halfLife)  # refused here, before anything is read or written
        self.halfLife, self.maxIter, self.tol = halfLife, maxIter, tol
        self._store = CheckpointStore(checkpointDir, runId, keep_last=keepCheckpoints, s3_endpoint=s3Endpoint)
        self.run_id = runId
        latest = self._store.latest()
        if latest is None:
            model.require_statistics()  # an old model: the clear error now, not at the first batch
            self._model, self._last_batch = model, -1
        else:
            restored = model_from_bytes(latest.payload, latest.uri)  # (its featuresCol and weightCol saved with it)
            self._model, self._last_batch = restored, latest.sequence - 1
            log.info("run=%s streaming update resumes after micro-batch %d (%s)", runId, self._last_batch, latest.uri)

    @property
    def model(self) -> EMModel:
        """The model after the last committed micro-batch."""
        return self._model

    @property
    def lastBatchId(self) -> int:
        """The id of the last micro-batch counted (-1: none yet)."""
        return self._last_batch

    def check(self, stream: DataFrame) -> StreamingUpdate:
        """Refuse (DataValidationError naming the column) a stream without the model's feature
        columns, before the query starts; returns self, for ``foreachBatch(updater.check(stream))``."""
        self._model.check_features(stream)
        return self

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        """``foreachBatch``'s function: count the micro-batch ``batch_id`` once."""
        batch_id = int(batch_id)
        if batch_id <= self._last_batch:
            log.info(
                "run=%s micro-batch %d was already counted (last committed: %d); skipped",
                self.run_id,
                batch_id,
                self._last_batch,
            )
            return
        self._model.check_features(batch)
        if batch.isEmpty():
            return  # nothing to count; the next batch has a larger id anyway
        updated = self._model.update(batch, halfLife=self.halfLife, maxIter=self.maxIter, tol=self.tol)
        uri = self._store.commit(batch_id + 1, updated.to_bytes())  # sequence = batch id + 1 (0 is not a batch)
        self._model, self._last_batch = updated, batch_id
        statistics = updated.statistics
        log.info(
            "run=%s micro-batch %d: %d rows, statistics of %.1f effective rows committed at %s",
            self.run_id,
            batch_id,
            updated.summary.numRows,
            statistics.count if statistics is not None else float("nan"),
            uri,
        )

    def __repr__(self) -> str:
        return f"StreamingUpdate(run={self.run_id!r}, lastBatchId={self._last_batch}, halfLife={self.halfLife!r})"
