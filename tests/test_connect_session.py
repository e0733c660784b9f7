"""Choosing Spark Connect from a job config or SPARK_REMOTE, and the answers when it cannot be had.

No JVM here: an unreachable server is refused by em_spark before pyspark's client (which would
retry for minutes) is built, so these run as plain subprocesses of the CLI.
"""

from __future__ import annotations

import socket

import pytest

from em_spark.app.config import ConfigError, load_config
from em_spark.engine.session import DEFAULT_CONNECT_PORT, ConnectServerError, parse_connect_url
from tests.clitools import run_cli, small_workspace, snapshot


@pytest.mark.parametrize(
    "url, target",
    [
        ("sc://localhost", ("localhost", DEFAULT_CONNECT_PORT)),
        ("sc://10.0.0.5:15003", ("10.0.0.5", 15003)),
        (
            "sc://adb-123.azuredatabricks.net:443/;use_ssl=true;token=dapi1;x-databricks-cluster-id=0101",
            ("adb-123.azuredatabricks.net", 443),
        ),
        ("sc://[::1]:15002", ("::1", 15002)),
        ("local[2]", None),
    ],
)
def test_connect_urls_are_parsed_to_the_server_they_name(url, target):
    assert parse_connect_url(url) == target


@pytest.mark.parametrize("url", ["http://host:15002", "sc://", "sc://host:port", "sc://host:99999", "host:15002"])
def test_a_config_with_a_bad_spark_remote_is_one_clear_error(tmp_path, url):
    config = small_workspace(tmp_path)
    with pytest.raises(ConfigError, match=r"config key 'spark\.remote'.*sc://host:15002"):
        load_config(str(config), [f"spark.remote={url}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["config", "environment"])
def test_an_unreachable_connect_server_is_named_before_anything_is_touched(tmp_path, how):
    config = small_workspace(tmp_path)
    before = snapshot(tmp_path)
    url = f"sc://127.0.0.1:{_free_port()}"  # nothing listens there
    if how == "config":
        result = run_cli("train", "--config", str(config), "--set", f"spark.remote={url}", cwd=tmp_path)
    else:
        result = run_cli("train", "--config", str(config), cwd=tmp_path, env={"SPARK_REMOTE": url})
    result.assert_clean_error(f"cannot reach the Spark Connect server at {url}", "the server is running")
    assert snapshot(tmp_path) == before  # no checkpoint, model or lease written


def test_parameters_too_large_for_a_connect_plan_are_refused_with_the_way_out():
    import numpy as np

    from em_spark.engine.dataframe_source import CONNECT_MESSAGE_LIMIT, check_closure_size

    # np.zeros is not touched, so the 121 MiB cost no memory; only nbytes is read
    k, d = 63, 500  # 63 full 500 x 500 covariances: 120.2 MiB
    check_closure_size({"means": np.zeros((k, d)), "covariances": np.zeros((k - 2, d, d))}, "iteration 1")
    too_big = {"means": np.zeros((k, d)), "covariances": np.zeros((k, d, d))}
    assert sum(v.nbytes for v in too_big.values()) < CONNECT_MESSAGE_LIMIT  # under gRPC's limit, not its headroom
    with pytest.raises(ConnectServerError, match=r"iteration 1: .* 120 MiB; .*limits to 128 MiB.*classic session"):
        check_closure_size(too_big, "iteration 1")
