"""pyspark.ml-style estimators and models."""

from em_spark.api.base import EMEstimator, EMModel, EMSummary
from em_spark.api.gaussian import GaussianMixture, GaussianMixtureModel
from em_spark.api.kmeans import KMeans, KMeansModel

__all__ = ["EMEstimator", "EMModel", "EMSummary", "GaussianMixture", "GaussianMixtureModel", "KMeans", "KMeansModel"]
