"""Model families: pure numpy, no Spark. The engine looks families up by name in ``FAMILIES``."""

from em_spark.models.base import Block, EMFamily, MStepResult, ModelError
from em_spark.models.gaussian import GaussianFamily

__all__ = ["Block", "EMFamily", "MStepResult", "ModelError", "GaussianFamily", "FAMILIES"]

#: family name (as stored with checkpoints and models) -> family class
FAMILIES = {GaussianFamily.name: GaussianFamily}
