"""One fact in one place: names and defaults are declared once and read everywhere else."""

from __future__ import annotations

from em_spark.app import config
from em_spark.models import FAMILIES
from em_spark.models.hmm import HMM_COVARIANCE_TYPES
from em_spark.models.kernels import COVARIANCE_TYPES


def test_config_takes_the_models_names():
    assert config.FAMILIES == tuple(FAMILIES)
    assert config.COVARIANCE_TYPES is COVARIANCE_TYPES
    assert config.HMM_COVARIANCE_TYPES is HMM_COVARIANCE_TYPES


def test_estimators_cover_exactly_the_families():
    from em_spark.api import ESTIMATORS

    assert list(ESTIMATORS) == list(FAMILIES)
    for name, estimator in ESTIMATORS.items():
        assert type(estimator().family()) is FAMILIES[name]
