"""Commands take their JobConfig as a value: they never change the one they are given."""

import copy

import pytest

from em_spark.app.config import ConfigError, load_config
from em_spark.app.nightly import run_nightly


def test_a_nightly_run_leaves_the_config_it_was_given_unchanged(tmp_path):
    # Stops at the missing input (before Spark starts), after the night's input path is set.
    config = load_config(
        None,
        [
            "nightly.date=2026-11-22",
            "registry.modelName=events-gmm",
            f"registry.uri={(tmp_path / 'registry').as_uri()}",
            f"nightly.inputPath={(tmp_path / 'events').as_uri()}/date={{date}}",
            "input.generate=",
        ],
    )
    before = copy.deepcopy(config)
    with pytest.raises(ConfigError, match="date=2026-11-22"):
        run_nightly(config)
    assert config == before
    assert config.input.path != f"{(tmp_path / 'events').as_uri()}/date=2026-11-22"
