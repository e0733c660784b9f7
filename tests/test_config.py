"""Config loading: typed sections, overrides, errors that name the key (no JVM)."""

from pathlib import Path

import pytest

from em_spark.app.config import ConfigError, load_config

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
        ("fit.tol=.nan", "'fit.tol' must be a finite number >= 0, got nan"),
        ("fit.tol=-.inf", "'fit.tol' must be a finite number >= 0, got -inf"),
        (
            "fit.numPartitions=0",
            "'fit.numPartitions' must be between 1 and 2147483647, or null for one per core, got 0",
        ),
        ("fit.numPartitions=-4", "'fit.numPartitions' must be between 1"),
        ("fit.aggregationDepth=0", "'fit.aggregationDepth' must be >= 1 (the depth of the tree reduce), got 0"),
        ("fit.initSampleSize=0", "'fit.initSampleSize' must be >= 1 (rows sampled for initialization), got 0"),
        ("nightly.date=2026-13-01", "'nightly.date' must be a date like 2026-11-22 (YYYY-MM-DD), got '2026-13-01'"),
        ("nightly.date=20261122", "'nightly.date' must be a date like 2026-11-22"),
        ("model.regCovar=.inf", "'model.regCovar' must be a finite number >= 0, got inf"),
        ("model.smoothing=.nan", "'model.smoothing' must be a finite number >= 0"),
        ("nightly.holdoutFraction=.nan", "'nightly.holdoutFraction' must be a finite number between 0 and 1"),
        ("nightly.driftThreshold=-0.1", "'nightly.driftThreshold' must be >= 0"),
        ("nightly.promotionTolerance=.inf", "'nightly.promotionTolerance' must be a finite number"),
        ("score.anomalyThreshold=-.inf", "'score.anomalyThreshold' must be a finite number, got -inf"),
        ("input.generate.separation=.nan", "'input.generate.separation' must be a finite number"),
        ("input.generate.missingFraction=1.0", "'input.generate.missingFraction' must be in [0, 1)"),
        ("input.generate.rows=0", "'input.generate.rows' must be >= 1"),
        ("input.generate.seed=-1", "'input.generate.seed' must be >= 0"),
        ("input.generate.steps=-1", "'input.generate.steps' must be >= 0"),
        ("fit.tol=1" + "0" * 400, "'fit.tol' must be a finite number"),
        ("select.ks=[2, 3, 2]", "'select.ks' lists 2 more than once"),
        ("select.covarianceTypes=[full, full]", "'select.covarianceTypes' lists 'full' more than once"),
        ("score.keepColumns=[a, '']", "'score.keepColumns' must not hold an empty name"),
        ("score.keepColumns=[a, prediction]", "'score.keepColumns' must not hold 'prediction'"),
        ("score.anomalyCol=logLikelihood", "'score.anomalyCol' must differ from the score columns"),
        ("score.keepColumns=[a, anomaly]", "'score.keepColumns' must not hold 'anomaly': score.anomalyCol is written"),
        ("score.mode=append", "'score.mode' must be 'errorifexists' or 'overwrite'"),
        ("impute.stdCol=imputed", "'impute.stdCol' must differ from impute.outputCol"),
        ("input.format=''", "'input.format' must not be empty"),
        ("input.path=' '", "'input.path' must not be empty"),
        ("input.features=[x0, x0]", "'input.features' lists 'x0' more than once"),
        ("input.features=[]", "'input.features' must be a column name or a non-empty list"),
        ("input.sequenceCol=id", "'input.sequenceCol' needs input.timeCol too: long-format sequences take both"),
        ("input.timeCol=t", "'input.timeCol' needs input.sequenceCol too"),
        ("spark.master=''", "'spark.master' must not be empty"),
        ("spark.master=local [2]", "'spark.master' must be a Spark master URL"),
        ("spark.appName=''", "'spark.appName' must not be empty"),
        ("storage.s3Endpoint=ftp://minio", "'storage.s3Endpoint' must look like http://host:port"),
        ("storage.s3Endpoint=http://minio:port", "'storage.s3Endpoint' must look like"),
        ("run.pushgateway=http://[::1", "'run.pushgateway' must be an http(s) URL"),
        ("score.registryModel=a/b", "'score.registryModel' is invalid"),
        ("model.nCategories=[3, 0]", "'model.nCategories' must be an integer >= 1, a non-empty list of them"),
        ("model.nCategories=abc", "'model.nCategories' must be an integer >= 1"),
        ("model.k=[1", "config key 'model.k' has a value that is not valid YAML, '[1': "),
        ("model.k=!!int abc", "config key 'model.k' has a value that is not valid YAML"),
        ("model.k.x=1", "config key 'model.k' is a single value, not a section"),
        ("input.generate=5", "config key 'input.generate' must be a mapping of its keys (rows, features"),
        ("spark.conf=[a]", "config key 'spark.conf' must be a mapping of names to values"),
        ("spark.conf={a: {b: 1}}", "config key 'spark.conf.a' must be a string, a number or a boolean"),
        ("spark.conf.spark.executor.memory={a: 1}", "config key 'spark.conf.spark.executor.memory' must be a string"),
        ("spark.conf.spark.x=", "config key 'spark.conf.spark.x' must be a string, a number or a boolean"),
        ("spark.conf.spark.x=.nan", "config key 'spark.conf.spark.x' must be a string, a finite number"),
        ("input.options={header: [a]}", "config key 'input.options.header' must be a string"),
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
    from em_spark.app.common import resolve_local as _resolve_local

    monkeypatch.chdir(tmp_path)
    assert _resolve_local("events/date=2026-11-22") == f"file://{tmp_path}/events/date=2026-11-22"
    assert _resolve_local("s3://bucket/x=1") == "s3://bucket/x=1"


def test_no_job_script_shadows_a_standard_library_module():
    # spark-submit puts jobs/ first on sys.path: jobs/select.py once broke every job.
    import sys

    jobs = [p.stem for p in (REPO / "jobs").glob("*.py")]
    assert not set(jobs) & set(sys.stdlib_module_names), jobs


def test_a_family_key_on_a_family_without_it_is_refused_by_name():
    from em_spark.app.common import estimator_from_config as _estimator

    config = load_config(str(REPO / "conf" / "local.yaml"), ["model.family=categorical", "model.handleMissing=model"])
    with pytest.raises(ConfigError, match="'model.handleMissing' does not apply to model.family 'categorical'"):
        _estimator(config, None)
    # the HMMs take labelCol now (a known state per step); LDA does not
    lda = load_config(str(REPO / "conf" / "local.yaml"), ["model.family=lda", "input.labelCol=y"])
    with pytest.raises(ConfigError, match="'input.labelCol' does not apply to model.family 'lda'"):
        _estimator(lda, None)
    hmm = load_config(str(REPO / "conf" / "hmm.yaml"), ["input.labelCol=y"])
    assert _estimator(hmm, None).getOrDefault("labelCol") == "y"
    # keys left at their defaults give way to the family's own defaults
    categorical = _estimator(load_config(str(REPO / "conf" / "local.yaml"), ["model.family=categorical"]), None)
    assert categorical.getOrDefault("initMode") == "random"


def test_the_lda_keys_reach_the_estimator_and_other_families_refuse_them():
    from em_spark.app.common import estimator_from_config as _estimator

    sets = ["model.family=lda", "model.k=3", "model.docConcentration=[0.1, 0.1, 0.5]", "model.topicConcentration=0.05"]
    lda = _estimator(load_config(str(REPO / "conf" / "local.yaml"), sets), None)
    family = lda.family()
    assert (family.name, family.k, family.doc_concentration, family.topic_concentration) == (
        "lda",
        3,
        (0.1, 0.1, 0.5),
        0.05,
    )
    symmetric = _estimator(
        load_config(str(REPO / "conf" / "local.yaml"), [*sets[:2], "model.docConcentration=0.2"]), None
    )
    assert symmetric.family().doc_concentration == 0.2
    gaussian = load_config(str(REPO / "conf" / "local.yaml"), ["model.topicConcentration=0.05"])
    with pytest.raises(ConfigError, match="'model.topicConcentration' does not apply to model.family 'gaussian'"):
        _estimator(gaussian, None)
    # equal entries are a choice, not a typo (two features of 3 categories each once failed too)
    categories = load_config(
        str(REPO / "conf" / "local.yaml"), ["model.family=categorical", "model.nCategories=[3, 3]"]
    )
    assert categories.model.nCategories == [3, 3]
    with pytest.raises(ConfigError, match=r"model.docConcentration' must be a number > 0 or a list of model.k=3"):
        load_config(str(REPO / "conf" / "local.yaml"), [*sets[:2], "model.docConcentration=[0.1, 0.2]"])


def test_every_config_message_is_one_line():
    from em_spark.app.config import ConfigError as Error

    assert str(Error("first line\n  second line\r\nthird")) == "first line second line third"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.k=a\nb: c"])
    assert "\n" not in str(err.value) and "config key 'model.k' has a value that is not valid YAML" in str(err.value)


def test_a_dotted_spark_property_set_from_the_command_line_is_one_key():
    # Spark property names have dots: inside spark.conf (and input.options) the rest is one name.
    config = load_config(
        None,
        [
            "spark.conf.spark.sql.shuffle.partitions=8",
            "spark.conf.spark.ui.enabled=false",
            "input.options.header=true",
            "input.options.sep=;",
        ],
    )
    assert config.spark.conf == {"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}
    assert config.input.options == {"header": "true", "sep": ";"}


def test_spark_properties_are_flat_strings(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "spark:\n  conf:\n    spark.sql.shuffle.partitions: 8\n    spark.x: 1.0e-6\n"
        "    spark.ui.enabled: false\n    spark.y: 2026-11-22\n"
    )
    assert load_config(str(path)).spark.conf == {
        "spark.sql.shuffle.partitions": "8",
        "spark.x": "1.0e-6",
        "spark.ui.enabled": "false",
        "spark.y": "2026-11-22",
    }
    path.write_text("spark:\n  conf:\n    spark:\n      sql.shuffle.partitions: 8\n")
    with pytest.raises(
        ConfigError,
        match=r"config key 'spark\.conf\.spark' must be a string, a number or a boolean "
        r"\(Spark properties and options are flat name: value pairs\), got a mapping",
    ):
        load_config(str(path))


def test_a_key_given_twice_in_the_file_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  k: 2\n  family: gaussian\n  k: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == (
        f"config key 'model.k' is given twice, at line 2 and line 4; YAML would silently keep the last, "
        f"so remove one (in {path})"
    )
    path.write_text("model: {k: 2}\nfit: {tol: 0.1}\nmodel: {k: 3}\n")
    with pytest.raises(ConfigError, match=r"config key 'model' is given twice, at line 1 and line 3"):
        load_config(str(path))
    path.write_text("spark:\n  conf:\n    spark.a: 1\n    spark.a: 2\n")
    with pytest.raises(ConfigError, match=r"config key 'spark\.conf\.spark\.a' is given twice, at line 3 and line 4"):
        load_config(str(path))
    # a YAML merge key is not a duplicate: explicit keys override merged ones
    path.write_text("model:\n  <<: {k: 2}\n  k: 3\n")
    assert load_config(str(path)).model.k == 3


def test_a_key_given_twice_in_a_set_value_is_refused():
    with pytest.raises(
        ConfigError, match=r"config key 'spark\.conf\.a' is given twice, at line 1 column 2 and line 1 column 8"
    ):
        load_config(None, ["spark.conf={a: 1, a: 2}"])


def test_string_keys_keep_the_text_yaml_would_turn_into_a_number_or_a_date(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run: {id: 0042}\nnightly: {date: 2026-11-22}\nspark: {appName: 1.50}\n")
    config = load_config(str(path))
    assert (config.run.id, config.nightly.date, config.spark.appName) == ("0042", "2026-11-22", "1.50")
    assert type(config.model.k) is int and type(config.fit.tol) is float
    config = load_config(None, ["run.id=0042", "model.k=0x10", "select.ks=[2, 3]"])
    assert config.run.id == "0042" and type(config.model.k) is int and config.model.k == 16
    assert all(type(k) is int for k in config.select.ks)


def test_unreadable_yaml_in_the_file_is_a_config_error(tmp_path):
    path = tmp_path / "job.yaml"
    for text in (
        "model: [\n",
        "nightly:\n  date: !!timestamp 2026-13-01\n",
        "model:\n  k: !!int abc\n",
        "model: !!python/name:os.system\n",
        "a: b: c\n",
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert "\n" not in str(err.value), text
    path.write_bytes(b"model:\n  k: \xff\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(path))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "conf").glob("*.yaml")))
def test_every_shipped_config_still_loads(name):
    load_config(str(REPO / "conf" / name))


@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_libyaml_and_pure_python_yaml_read_the_same(loader):
    import yaml

    from em_spark.app import config as module

    if loader == "libyaml" and not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML was built without libyaml")
    cls = module._StrictLoader if loader == "libyaml" else module._PythonLoader
    data = module._load_yaml(
        "run: {id: 0042}\nnightly: {date: 2026-13-01}\nfit: {tol: 1.0e-3, maxIter: 5}\n", "a.yaml", loader_class=cls
    )
    assert data == {"run": {"id": 0o42}, "nightly": {"date": "2026-13-01"}, "fit": {"tol": 1e-3, "maxIter": 5}}
    assert data["run"]["id"].text == "0042" and data["fit"]["tol"].text == "1.0e-3"
    with pytest.raises(
        ConfigError, match=r"^config key 'a\.b' is given twice, at line 2 and line 4; .* \(in a\.yaml\)$"
    ):
        module._load_yaml("a:\n  b: 1\n  c: 2\n  b: 3\n", "a.yaml", loader_class=cls)
    with pytest.raises(ConfigError, match=r"^config file a\.yaml is not valid YAML: .*line 2"):
        module._load_yaml("a: [\n", "a.yaml", loader_class=cls)
    with pytest.raises(ConfigError, match="nested too deeply|not valid YAML"):
        module._load_yaml("[" * 5000 + "]" * 5000, "a.yaml", loader_class=cls)
