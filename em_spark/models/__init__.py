"""Model families: pure numpy, no Spark. The engine looks families up by name in ``FAMILIES``."""

from em_spark.models.base import Block, EMFamily, MStepResult, ModelError
from em_spark.models.categorical import CategoricalMixtureFamily
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily
from em_spark.models.kmeans import KMeansFamily

__all__ = ["Block", "EMFamily", "MStepResult", "ModelError", "CategoricalMixtureFamily", "GaussianFamily", "KMeansFamily", "GaussianHMMFamily", "CategoricalHMMFamily", "FAMILIES"]

#: family name (as stored with checkpoints and models) -> family class
FAMILIES = {
    family.name: family
    for family in (GaussianFamily, KMeansFamily, CategoricalMixtureFamily, GaussianHMMFamily, CategoricalHMMFamily)
}
