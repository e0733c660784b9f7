"""pyspark.ml-style estimators and models."""

from em_spark.api.base import EMEstimator, EMModel, EMSummary
from em_spark.api.categorical import CategoricalMixture, CategoricalMixtureModel
from em_spark.api.gaussian import GaussianMixture, GaussianMixtureModel
from em_spark.api.hmm import CategoricalHMM, CategoricalHMMModel, GaussianHMM, GaussianHMMModel
from em_spark.api.kmeans import KMeans, KMeansModel

__all__ = [
    "CategoricalHMM",
    "CategoricalHMMModel",
    "CategoricalMixture",
    "CategoricalMixtureModel",
    "EMEstimator",
    "EMModel",
    "EMSummary",
    "GaussianHMM",
    "GaussianHMMModel",
    "GaussianMixture",
    "GaussianMixtureModel",
    "KMeans",
    "KMeansModel",
]
