"""em_spark: Expectation-Maximization as distributed batch jobs on Apache Spark.

``from em_spark import GaussianMixture`` gives the pyspark.ml-style API. The pure-numpy
model families (``em_spark.models``) import without Spark, so they load lazily here.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {"CategoricalHMM", "CategoricalHMMModel", "GaussianHMM", "GaussianHMMModel", "CategoricalMixture", "CategoricalMixtureModel", "GaussianMixture", "GaussianMixtureModel", "KMeans", "KMeansModel", "EMSummary"}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        from em_spark import api

        return getattr(api, name)
    raise AttributeError(f"module 'em_spark' has no attribute {name!r}")
