"""Config loading: typed sections, overrides, errors that name the key (no JVM)."""

from pathlib import Path

import pytest

from em_spark.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_shipped_configs_load(name):
    config = load_config(str(REPO / "conf" / name))
    assert config.model.family == "gaussian"


def test_embedded_default_is_the_demo():
    config = load_config()
    assert config.input.generate is not None and config.spark.master == "local[2]"


def test_overrides_are_typed_yaml_values():
    config = load_config(str(REPO / "conf" / "local.yaml"), ["model.k=5", "fit.tol=1e-6", "input.features=[a, b]"])
    assert (config.model.k, config.fit.tol, config.input.features) == (5, 1e-6, ["a", "b"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kk=3", "unknown config key 'model.kk' (did you mean model.k?)"),
        ("model.k=three", "'model.k' must be an integer"),
        ("model.k=0", "'model.k' must be >= 1"),
        ("model.covarianceType=banana", "'model.covarianceType' must be one of"),
        ("fit.tol=-1", "'fit.tol' must be >= 0"),
        ("run.id=../../etc", "'run.id' is invalid"),
        ("output.overwrite=maybe", "'output.overwrite' must be true or false"),
        ("model", "expects key=value"),
        ("run.logLevel=LOUD", "'run.logLevel' must be DEBUG, INFO, WARNING or ERROR"),
        ("model.family=gmm", "'model.family' must be one of gaussian, kmeans"),
        ("model.handleMissing=ignore", "'model.handleMissing' must be 'error' or 'model'"),
        ("model.kind=poisson", "'model.kind' must be 'categorical' or 'multinomial'"),
    ],
)
def test_bad_values_name_the_offending_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(str(REPO / "conf" / "local.yaml"), [override])
    assert message in str(err.value)


def test_missing_config_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_relative_paths_become_file_uris_that_spark_can_read(tmp_path, monkeypatch):
    from em_spark.cli import _resolve_local

    monkeypatch.chdir(tmp_path)
    assert _resolve_local("events/date=2026-11-22") == f"file://{tmp_path}/events/date=2026-11-22"
    assert _resolve_local("s3://bucket/x=1") == "s3://bucket/x=1"


def test_no_job_script_shadows_a_standard_library_module():
    # spark-submit puts jobs/ first on sys.path: jobs/select.py once broke every job.
    import sys

    jobs = [p.stem for p in (REPO / "jobs").glob("*.py")]
    assert not set(jobs) & set(sys.stdlib_module_names), jobs


def test_a_family_key_on_a_family_without_it_is_refused_by_name():
    from em_spark.cli import _estimator

    config = load_config(str(REPO / "conf" / "local.yaml"), ["model.family=categorical", "model.handleMissing=model"])
    with pytest.raises(ConfigError, match="'model.handleMissing' does not apply to model.family 'categorical'"):
        _estimator(config, None)
    hmm = load_config(str(REPO / "conf" / "hmm.yaml"), ["input.labelCol=y"])
    with pytest.raises(ConfigError, match="'input.labelCol' does not apply to model.family 'gaussian_hmm'"):
        _estimator(hmm, None)
    # keys left at their defaults give way to the family's own defaults
    categorical = _estimator(load_config(str(REPO / "conf" / "local.yaml"), ["model.family=categorical"]), None)
    assert categorical.getOrDefault("initMode") == "random"
