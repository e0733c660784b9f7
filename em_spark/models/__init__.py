"""Model families: pure numpy, no Spark. The engine looks families up by name in ``FAMILIES``."""

from em_spark.models.base import Block, EMFamily, ModelError, MStepResult
from em_spark.models.categorical import CategoricalMixtureFamily
from em_spark.models.gaussian import GaussianFamily
from em_spark.models.hmm import CategoricalHMMFamily, GaussianHMMFamily
from em_spark.models.kmeans import KMeansFamily
from em_spark.models.lda import LDAFamily
from em_spark.models.poisson import PoissonMixtureFamily
from em_spark.models.student_t import StudentTMixtureFamily

__all__ = [
    "FAMILIES",
    "Block",
    "CategoricalHMMFamily",
    "CategoricalMixtureFamily",
    "EMFamily",
    "GaussianFamily",
    "GaussianHMMFamily",
    "KMeansFamily",
    "LDAFamily",
    "MStepResult",
    "ModelError",
    "PoissonMixtureFamily",
    "StudentTMixtureFamily",
]

#: family name (as stored with checkpoints and models) -> family class
FAMILIES = {
    family.name: family
    for family in (
        GaussianFamily,
        KMeansFamily,
        CategoricalMixtureFamily,
        PoissonMixtureFamily,
        StudentTMixtureFamily,
        GaussianHMMFamily,
        CategoricalHMMFamily,
        LDAFamily,
    )
}
