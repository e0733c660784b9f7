"""One fact in one place: names and defaults are declared once and read everywhere else."""

from __future__ import annotations

from em_spark.app import config
from em_spark.models import FAMILIES
from em_spark.models.hmm import HMM_COVARIANCE_TYPES
from em_spark.models.kernels import COVARIANCE_TYPES


def test_config_takes_the_models_names():
    assert tuple(FAMILIES) == config.FAMILIES
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


def _estimator_defaults(estimator) -> dict:
    return {p.name: estimator.getOrDefault(p) for p in estimator.params if estimator.hasDefault(p)}


def test_estimator_signatures_state_the_param_defaults():
    import inspect

    from em_spark.api import ESTIMATORS

    for estimator_class in ESTIMATORS.values():
        defaults = _estimator_defaults(estimator_class())
        for name, parameter in inspect.signature(estimator_class.__init__).parameters.items():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name in defaults:
                assert parameter.default == defaults[name], (estimator_class.__name__, name)


def test_config_defaults_are_the_estimators_and_the_families():
    from em_spark.api import ESTIMATORS
    from em_spark.engine.loop import FitSettings
    from em_spark.models import CategoricalMixtureFamily, GaussianFamily

    job = config.JobConfig()
    gaussian = _estimator_defaults(ESTIMATORS["gaussian"]())
    assert job.model.family == "gaussian"
    for key in ("k", "covarianceType", "regCovar", "initMode", "handleMissing"):
        assert getattr(job.model, key) == gaussian[key], key
    for key in ("maxIter", "tol", "nInit", "seed", "aggregationDepth", "initSampleSize"):
        assert getattr(job.fit, key) == gaussian[key], key
    assert job.run.keepCheckpoints == gaussian["keepCheckpoints"]
    assert job.model.kind == _estimator_defaults(ESTIMATORS["categorical"]())["kind"]

    family = GaussianFamily(k=job.model.k)
    assert (family.covariance_type, family.reg_covar, family.init_mode, family.handle_missing) == (
        job.model.covarianceType,
        job.model.regCovar,
        job.model.initMode,
        job.model.handleMissing,
    )
    assert CategoricalMixtureFamily(k=2).kind == job.model.kind
    settings = FitSettings()
    assert (settings.max_iter, settings.tol, settings.n_init, settings.seed, settings.keep_checkpoints) == (
        job.fit.maxIter,
        job.fit.tol,
        job.fit.nInit,
        job.fit.seed,
        job.run.keepCheckpoints,
    )


def test_estimators_build_their_family_with_its_defaults():
    from em_spark.api import ESTIMATORS

    for name, estimator_class in ESTIMATORS.items():
        family = estimator_class().family()
        assert family == FAMILIES[name](k=family.k), name
