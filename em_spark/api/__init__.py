"""pyspark.ml-style estimators and models."""

from em_spark.api.base import EMEstimator, EMModel, EMSummary
from em_spark.api.gaussian import GaussianMixture, GaussianMixtureModel

__all__ = ["EMEstimator", "EMModel", "EMSummary", "GaussianMixture", "GaussianMixtureModel"]
