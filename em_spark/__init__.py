"""em_spark: Expectation-Maximization as distributed batch jobs on Apache Spark.

``from em_spark import GaussianMixture`` gives the pyspark.ml-style API. The pure-numpy
model families (``em_spark.models``) import without Spark, so they load lazily here; without
PySpark (not a dependency: see pyproject's extras) that import raises one line naming the extra.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
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
    "__version__",
]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> object:
    if name in _API:
        from em_spark import api

        return getattr(api, name)
    raise AttributeError(f"module 'em_spark' has no attribute {name!r}")
