"""Before a fit: can the executors import em_spark, and is it the client's version?

The E-step runs in the executors' Python, so em_spark must be installed there too (a cluster
library, the serverless environment's dependencies, an image, or ``SparkSession.addArtifacts``
of a zipped package on Connect). Without this check the first job of a fit fails deep inside
with ``ModuleNotFoundError: No module named 'em_spark'`` in a Python worker traceback; a
different version there can fail later, or fit something else. One tiny DataFrame-API job
(``mapInArrow`` over ``spark.range(1)``, classic and Connect alike) asks an executor, once per
session: the executors' environment does not change under a running session.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from typing import Any

from em_spark.engine.session import ConnectServerError

__all__ = ["ExecutorImportError", "check_executors", "probe_executor"]

_PROBE_SCHEMA = "version string, error string, python string"
#: the modules the executors import for loading, the E-step and scoring (numpy, scipy, pyarrow,
#: threadpoolctl come with them): a package there without its dependencies fails here, not mid-fit
_EXECUTOR_MODULES = ("em_spark.engine.partition_tasks", "em_spark.engine.executor_files", "threadpoolctl")

#: sessions whose executors were already checked (a weak set: a stopped session is forgotten)
_checked: weakref.WeakSet[Any] = weakref.WeakSet()


class ExecutorImportError(ConnectServerError):
    """The executors' Python cannot import em_spark, or imports another version of it.

    A :class:`ConnectServerError` (the Spark side cannot run this fit) so that the CLI and every
    caller that reports one report this too; raised on classic sessions as well."""


def _make_probe() -> Any:
    # Built inside a function so cloudpickle ships it by value: a module-level function would be
    # pickled by reference to this module, and unpickling it on an executor without em_spark
    # would fail with the very ModuleNotFoundError this check is meant to explain.
    modules = _EXECUTOR_MODULES

    def probe(batches: Iterator[Any]) -> Iterator[Any]:
        import importlib
        import sys

        import pyarrow as pa

        for _ in batches:
            pass
        version, error = "", ""
        try:
            # by name: this runs in the executor's Python, where em_spark may be missing
            version = str(importlib.import_module("em_spark").__version__)
            for name in modules:  # what an E-step imports there, with em_spark's own dependencies
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- any import failure is the answer, reported by the driver
            error = f"{type(exc).__name__}: {exc}"
        yield pa.RecordBatch.from_pydict({"version": [version], "error": [error], "python": [sys.executable]})

    return probe


def probe_executor(spark: Any) -> dict[str, str]:
    """``{"version", "error", "python"}`` as seen by a Python worker of ``spark``'s executors:
    ``version`` is empty when em_spark does not import there, ``error`` says why it or a module
    the E-step needs does not."""
    row = spark.range(1, numPartitions=1).mapInArrow(_make_probe(), _PROBE_SCHEMA).collect()[0]
    return {"version": row["version"], "error": row["error"], "python": row["python"]}


_FIX = (
    "install em_spark in the executors' Python environment (a cluster library, the serverless "
    "environment's dependencies, or the executors' image), or on a Spark Connect session ship it with "
    "spark.addArtifacts('em_spark.zip', pyfile=True) (a zip holding the em_spark/ package directory)"
)


def _client_version() -> str:
    # The package this module is part of is loaded (a submodule's import loads its package
    # first); read from sys.modules, which is not an import of em_spark from inside em_spark.
    return str(sys.modules[__name__.partition(".")[0]].__version__)


def check_executors(spark: Any) -> None:
    """Raise :class:`ExecutorImportError` with the fix unless the executors import this em_spark.

    One small job the first time a session is checked; nothing afterwards.
    """
    if spark in _checked:
        return
    client = _client_version()
    found = probe_executor(spark)
    if not found["version"]:
        raise ExecutorImportError(
            f"the Spark executors cannot import em_spark ({found['error']}; their Python is {found['python']}), "
            f"and the E-step runs there: {_FIX}"
        )
    if found["version"] != client:
        raise ExecutorImportError(
            f"the Spark executors run em_spark {found['version']} (their Python is {found['python']}) but this "
            f"client runs em_spark {client}; install em_spark=={client} on the executors "
            f"(or em_spark=={found['version']} on this client) so both run the same code"
        )
    if found["error"]:
        raise ExecutorImportError(
            f"the Spark executors have em_spark {found['version']} but cannot import what the E-step needs "
            f"({found['error']}; their Python is {found['python']}): install em_spark's dependencies there too "
            "(pip install em-spark brings them; a zip shipped with addArtifacts holds only em_spark itself)"
        )
    _checked.add(spark)
