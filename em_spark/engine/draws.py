"""Drawing rows (or sequences) from fitted parameters as a DataFrame, in map tasks.

The family draws (:meth:`~em_spark.models.base.EMFamily.draw`); this module only spreads the
work: task ``p`` of ``spark.range(tasks)`` draws units ``[p * per_task, (p + 1) * per_task)``
with the generator ``default_rng([seed, p])``, so the rows are a function of the seed, ``n``
and ``length`` alone (not of the cluster, the partitioning or the transport: DataFrame APIs
only, so a Spark Connect session draws the same rows). The parameters travel in the closure.

Columns: a row family writes its features as the model reads them (one double column per
name when the model was fitted on a list of columns, else one ``array<double>`` column)
plus ``component`` (int); a sequence family writes ``id`` (long), one ``array<array<double>>``
column of steps and ``states`` (array<int>).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from em_spark.engine.dataframe_source import check_closure_size, is_connect
from em_spark.models.base import EMFamily, Params

__all__ = ["ROWS_PER_TASK", "draw_frame"]

#: rows a task draws at most (for sequences: steps), so a task's arrays stay around 10-100 MB
ROWS_PER_TASK = 200_000


def _schema(family: EMFamily, features: str | Sequence[str]) -> str:
    if family.sequential:
        return f"id long, `{features}` array<array<double>>, states array<int>"
    if isinstance(features, str):
        return f"`{features}` array<double>, component int"
    return ", ".join(f"`{name}` double" for name in features) + ", component int"


def _units_per_task(family: EMFamily, length: int | None) -> int:
    return max(1, ROWS_PER_TASK // (length or 1)) if family.sequential else ROWS_PER_TASK


def _task_trials(trials: Any, start: int, stop: int) -> Any:
    """The row totals of the task's rows: one total for all, or the task's slice of per-row totals."""
    if trials is None or np.ndim(trials) == 0:
        return trials
    return np.asarray(trials)[start:stop]


def _draw_tasks(
    family: EMFamily,
    params: Params,
    n: int,
    seed: int,
    features: str | Sequence[str],
    length: int | None,
    trials: Any,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    per_task = _units_per_task(family, length)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column(0).to_numpy():
                start, stop = int(task) * per_task, min(n, (int(task) + 1) * per_task)
                rng = np.random.default_rng([seed, int(task)])
                drawn = family.draw(params, stop - start, rng, length=length, trials=_task_trials(trials, start, stop))
                yield _record_batch(family, features, drawn.X, drawn.components, start, length)

    return run


def _record_batch(
    family: EMFamily,
    features: str | Sequence[str],
    X: np.ndarray,
    components: np.ndarray,
    start: int,
    length: int | None,
) -> pa.RecordBatch:
    d = X.shape[1]
    if family.sequential:
        assert length is not None  # the family's draw refuses sequences without a length
        n = X.shape[0] // length
        steps = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d).cast(pa.list_(pa.float64()))
        offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32))
        observations = pa.ListArray.from_arrays(offsets, steps)
        states = pa.ListArray.from_arrays(offsets, pa.array(components.astype(np.int32)))
        ids = pa.array(np.arange(start, start + n, dtype=np.int64))
        return pa.RecordBatch.from_arrays([ids, observations, states], names=["id", str(features), "states"])
    component = pa.array(components.astype(np.int32))
    if isinstance(features, str):
        rows = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d).cast(pa.list_(pa.float64()))
        return pa.RecordBatch.from_arrays([rows, component], names=[features, "component"])
    columns = [pa.array(np.ascontiguousarray(X[:, j])) for j in range(d)]
    return pa.RecordBatch.from_arrays([*columns, component], names=[*features, "component"])


def draw_frame(
    spark: SparkSession,
    family: EMFamily,
    params: Params,
    n: int,
    seed: int,
    features: str | Sequence[str],
    length: int | None = None,
    trials: Any = None,
) -> DataFrame:
    """``n`` rows (sequence families: ``n`` sequences of ``length`` steps) drawn from ``params``,
    with their components (state paths), as a lazily evaluated DataFrame (see the module docstring).

    The arguments are checked on the driver first, by drawing no rows, so a bad ``length`` or
    ``trials`` is one ModelError before any job runs. ``trials`` (multinomial rows) is one total
    or ``n`` of them."""
    family.draw(params, 0, np.random.default_rng(0), length=length, trials=_task_trials(trials, 0, 0))
    if trials is not None and np.ndim(trials) > 0 and np.shape(trials) != (n,):
        from em_spark.models.base import ModelError

        raise ModelError(f"trials must be one row total or {n} of them (one per row), got shape {np.shape(trials)}")
    per_task = _units_per_task(family, length)
    tasks = max(1, -(-n // per_task))
    run = _draw_tasks(family, params, n, seed, features, length, trials)
    if is_connect(spark):
        check_closure_size(params, "drawing rows")
    return spark.range(tasks, numPartitions=tasks).mapInArrow(run, _schema(family, features))
