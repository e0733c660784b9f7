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


def test_one_model_file_name():
    from em_spark.api import base
    from em_spark.storage import names, registry

    assert base.MODEL_FILE is names.MODEL_FILE
    assert registry.MODEL_OBJECT is names.MODEL_FILE


def test_numbered_names_are_ten_digits_and_parse_back():
    from em_spark.storage.names import MAX_NUMBER, NumberedNames

    names = NumberedNames("ckpt-", ".emck")
    assert names.name(7) == "ckpt-0000000007.emck"
    assert names.parse("ckpt-0000000007.emck") == 7
    assert names.parse(names.name(MAX_NUMBER)) == MAX_NUMBER
    for other in ("ckpt-7.emck", "ckpt-0000000007.emck.tmp", "lease-0000000007.emlease", "xckpt-0000000007.emck"):
        assert names.parse(other) is None
    assert names.numbers(["ckpt-0000000003.emck", "junk", "ckpt-0000000001.emck"]) == [1, 3]
    assert NumberedNames().name(12) == "0000000012"
    assert NumberedNames(suffix=".json.sealed").parse("0000000003.json.sealed") == 3
