"""pyspark.ml-style estimators and models, and lookups by name for config-driven jobs.

They are pyspark.ml classes, so without PySpark importing this package raises the one-line
PySparkMissingError that says what to install (the rest of em_spark imports without it)."""

from typing import Any

from em_spark.engine.session import require_pyspark

require_pyspark("em_spark's estimators and models (em_spark.api)")

from em_spark.api.base import EMEstimator, EMModel, EMSummary
from em_spark.api.categorical import CategoricalMixture, CategoricalMixtureModel
from em_spark.api.gaussian import GaussianMixture, GaussianMixtureModel
from em_spark.api.hmm import CategoricalHMM, CategoricalHMMModel, GaussianHMM, GaussianHMMModel
from em_spark.api.kmeans import KMeans, KMeansModel
from em_spark.api.lda import LDA, LDAModel
from em_spark.api.poisson import PoissonMixture, PoissonMixtureModel
from em_spark.api.student_t import StudentTMixture, StudentTMixtureModel
from em_spark.models import (
    FAMILIES,
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    EMFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
    LDAFamily,
    PoissonMixtureFamily,
    StudentTMixtureFamily,
)

__all__ = [
    "ESTIMATORS",
    "LDA",
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
    "LDAModel",
    "PoissonMixture",
    "PoissonMixtureModel",
    "StudentTMixture",
    "StudentTMixtureModel",
    "load_model",
    "model_from_bytes",
]

_ESTIMATOR_OF: dict[type[EMFamily], type[EMEstimator]] = {
    GaussianFamily: GaussianMixture,
    KMeansFamily: KMeans,
    CategoricalMixtureFamily: CategoricalMixture,
    PoissonMixtureFamily: PoissonMixture,
    StudentTMixtureFamily: StudentTMixture,
    GaussianHMMFamily: GaussianHMM,
    CategoricalHMMFamily: CategoricalHMM,
    LDAFamily: LDA,
}

#: family name (``model.family`` in a job config) -> estimator class; the names (and their
#: order) are the models' FAMILIES keys
ESTIMATORS: dict[str, type[EMEstimator]] = {name: _ESTIMATOR_OF[family] for name, family in FAMILIES.items()}

_MODELS: dict[str, type[EMModel]] = {est._model_class.__name__: est._model_class for est in ESTIMATORS.values()}


def model_from_bytes(data: bytes, where: str = "<bytes>") -> EMModel:
    """A saved model of any family, as the class it was saved from (no pickle involved)."""
    from em_spark.storage import unpack

    meta, _ = unpack(data)
    name: Any = meta.get("modelClass")  # from the file: any JSON value
    cls = _MODELS.get(name)
    if cls is None:
        raise ValueError(f"{where} holds a {meta.get('modelClass')!r}, not a model em_spark knows: {sorted(_MODELS)}")
    return cls.from_bytes(data, where)


def load_model(path: str, s3Endpoint: str | None = None) -> EMModel:
    """Load a model saved by ``model.save(path)``, whatever its family."""
    from em_spark.api.base import MODEL_FILE
    from em_spark.storage import get_sealed
    from em_spark.storage.fs import join

    uri = join(path, MODEL_FILE)
    return model_from_bytes(get_sealed(uri, s3_endpoint=s3Endpoint), uri)
