"""Every estimator and model declares pyspark.ml's ``getX()``/``setX(value)`` accessors for its
params as real methods (visible to type checkers and IDEs), not made up at attribute lookup."""

from __future__ import annotations

import inspect

import pytest

from em_spark.api import ESTIMATORS, EMEstimator, EMModel
from em_spark.api.base import EMParams, ParamAccessors

CLASSES: list[type[EMEstimator] | type[EMModel]] = [c for est in ESTIMATORS.values() for c in (est, est._model_class)]


def _instance(cls: type[EMEstimator] | type[EMModel]) -> EMParams:
    if issubclass(cls, EMEstimator):
        return cls()
    estimator = next(est for est in ESTIMATORS.values() if est._model_class is cls)
    return cls(estimator().family(), {}, 2)


def _accessor_names(name: str) -> tuple[str, str]:
    cap = name[0].upper() + name[1:]
    return f"get{cap}", f"set{cap}"


def _declared_accessors(cls: type) -> set[str]:
    """getX/setX methods defined by em_spark classes in ``cls``'s MRO (pyspark's own left out)."""
    return {
        name
        for klass in cls.__mro__
        if klass.__module__.startswith("em_spark.")
        for name, value in vars(klass).items()
        if name[:3] in ("get", "set") and name[3:4].isupper() and inspect.isfunction(value) and name != "setParams"
    }


def test_params_have_no_attribute_lookup_fallback():
    assert "__getattr__" not in vars(EMParams)
    assert not any("__getattr__" in vars(klass) for cls in CLASSES for klass in cls.__mro__)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_param_has_a_declared_getter_and_setter(cls):
    obj = _instance(cls)
    names = sorted(p.name for p in obj.params)
    assert names, cls
    for name in names:
        getter, setter = _accessor_names(name)
        for accessor in (getter, setter):
            static = inspect.getattr_static(cls, accessor, None)
            assert inspect.isfunction(static), f"{cls.__name__}.{accessor} is not a declared method"
            assert static.__doc__ and "\n" not in static.__doc__.strip(), f"{cls.__name__}.{accessor}: one-line doc"
            hints = static.__annotations__
            assert "return" in hints, f"{cls.__name__}.{accessor} has no return type"
        assert "value" in inspect.getattr_static(cls, setter).__annotations__
        if obj.isDefined(obj.getParam(name)):  # (a CategoricalMixtureModel has no kind, smoothing, nCategories)
            assert getattr(obj, getter)() == obj.getOrDefault(name)
    # exactly the accessors of its params, no more
    assert _declared_accessors(cls) == {a for name in names for a in _accessor_names(name)}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_setters_set_and_none_resets_to_the_default(cls):
    obj = _instance(cls)
    assert obj.setSeed(11) is obj
    assert obj.getSeed() == 11 == obj.getOrDefault("seed")
    assert obj.setRunId("nightly").getRunId() == "nightly"
    assert obj.setRunId(None).getRunId() is None
    assert not obj.isSet(obj.getParam("runId"))
    with pytest.raises(TypeError):
        obj.setK("three")


def test_shared_accessors_are_declared_once():
    for klass in {k for cls in CLASSES for k in cls.__mro__ if issubclass(k, ParamAccessors)}:
        if klass is EMParams:
            continue
        assert "getMaxIter" not in vars(klass) and "setK" not in vars(klass), klass
    getters = [k for cls in CLASSES for k in cls.__mro__ if "getRegCovar" in vars(k)]
    assert {k.__name__ for k in getters} == {"HasCovariance"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_getter_answers_on_a_fresh_instance(cls):
    # A model is built from its family (fit, load); every param has a default or the family's
    # value there, so no getter raises (CategoricalMixtureModel.getKind() once did: KeyError).
    instance = _instance(cls)
    for param in instance.params:
        if not instance.hasDefault(param) and not instance.isSet(param):
            pytest.fail(f"{cls.__name__}.{param.name} has neither a default nor a value")
        getattr(instance, _accessor_names(param.name)[0])()
