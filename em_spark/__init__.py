"""em_spark: Expectation-Maximization as distributed batch jobs on Apache Spark.

``from em_spark import GaussianMixture`` gives the pyspark.ml-style API. The pure-numpy
model families (``em_spark.models``) import without Spark, so they load lazily here; without
PySpark (not a dependency: see pyproject's extras) that import raises one line naming the extra.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"

__all__ = [
    "LDA",
    "CategoricalHMM",
    "CategoricalHMMModel",
    "CategoricalMixture",
    "CategoricalMixtureModel",
    "EMSummary",
    "GaussianHMM",
    "GaussianHMMModel",
    "GaussianMixture",
    "GaussianMixtureModel",
    "KMeans",
    "KMeansModel",
    "LDAModel",
    "PoissonMixture",
    "PoissonMixtureModel",
    "StudentTMixture",
    "StudentTMixtureModel",
    "__version__",
]
_API = frozenset(__all__) - {"__version__"}


def _from_import_statement() -> bool:
    """True when the caller of ``__getattr__`` is a ``from em_spark import X`` statement."""
    import dis

    frame = sys._getframe(2)  # 0: this function, 1: __getattr__, 2: who asked for the attribute
    current = None
    for instruction in dis.get_instructions(frame.f_code):
        if instruction.offset > frame.f_lasti:
            break
        current = instruction.opname
    return current == "IMPORT_FROM"


def __getattr__(name: str) -> object:
    if name in _API:
        try:
            from em_spark import api
        except ImportError as exc:
            # `from em_spark import X` turns an AttributeError into a bare "cannot import name",
            # so there the one-line PySparkMissingError goes out as it is; everywhere else
            # (hasattr, getattr with a default, em_spark.X) the answer must be an AttributeError,
            # with the same message: hasattr(em_spark, "GaussianMixture") is False without PySpark.
            if _from_import_statement():
                raise
            raise AttributeError(str(exc), name=name, obj=sys.modules[__name__]) from exc
        return getattr(api, name)
    raise AttributeError(f"module 'em_spark' has no attribute {name!r}")
