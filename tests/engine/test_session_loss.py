"""A Spark Connect server lost mid-fit, without a JVM: how pyspark's errors are recognized, how
long a client waits for a dead server, and what the fit tells its user. The real server
restart is tests/connect/test_connect_faults.py."""

from __future__ import annotations

import socket
import time
import types

import numpy as np
import pytest
from fakes import KilledAfter
from grpc import StatusCode
from pyspark.errors import PySparkAssertionError
from pyspark.errors.exceptions.connect import SparkConnectException, SparkConnectGrpcException
from pyspark.sql.connect.client.retries import DefaultPolicy

from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.session_loss import (
    PYSPARK_DEFAULT_WAIT_SECONDS,
    RETRY_POLICY,
    SessionLostError,
    bound_retries,
    is_session_lost,
    retry_wait_seconds,
)
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import GaussianFamily
from em_spark.models.base import Block


def _total_wait(policy: DefaultPolicy) -> float:
    return retry_wait_seconds(policy.max_retries, policy.initial_backoff, policy.backoff_multiplier, policy.max_backoff)


def test_pyspark_retries_a_dead_server_for_ten_minutes_and_em_spark_sessions_for_about_one():
    assert _total_wait(DefaultPolicy()) == PYSPARK_DEFAULT_WAIT_SECONDS  # pinned against pyspark's defaults
    bounded = DefaultPolicy(**RETRY_POLICY)
    assert 30 <= _total_wait(bounded) <= 70
    assert bounded.jitter * bounded.max_retries / 1000 <= 5  # jitter adds seconds, not minutes


@pytest.mark.parametrize(
    "error, lost",
    [
        (SparkConnectException(errorClass="NO_ACTIVE_SESSION", messageParameters={}), True),
        (SparkConnectGrpcException("failed to connect", grpc_status_code=StatusCode.UNAVAILABLE), True),
        (
            SparkConnectGrpcException(
                "[INVALID_HANDLE.SESSION_CHANGED] The existing Spark server driver instance has restarted.",
                grpc_status_code=StatusCode.INTERNAL,
            ),
            True,
        ),
        (PySparkAssertionError("Received incorrect server side session identifier for request. (a != b)"), True),
        (SparkConnectGrpcException("a task failed", grpc_status_code=StatusCode.INTERNAL), False),
        (ValueError("not Spark"), False),
    ],
)
def test_lost_sessions_are_told_from_other_errors(error, lost):
    assert is_session_lost(error) is lost


@pytest.mark.slow
def test_a_client_of_a_dead_server_gives_up_after_the_bounded_retries_with_an_error_read_as_lost():
    from pyspark.sql.connect.client import SparkConnectClient

    with socket.socket() as s:  # a port nothing listens on: the server is gone
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = SparkConnectClient(f"sc://127.0.0.1:{port}")
    try:
        bound_retries(types.SimpleNamespace(client=client))  # what em_spark does to the sessions it builds
        assert [type(p) for p in client.get_retry_policies()] == [DefaultPolicy]
        assert client.get_retry_policies()[0].max_retries == RETRY_POLICY["max_retries"]
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            client._analyze(method="spark_version")
        print(f"[session loss] gave up after {time.monotonic() - started:.1f} s")
        assert is_session_lost(caught.value), repr(caught.value)
    finally:
        client.close()  # (its exit hook then sends nothing)


def LostAfter(blocks, passes, **kw):
    """A source whose server goes away after ``passes`` data passes."""
    lost = SessionLostError("lost the Spark Connect server at sc://127.0.0.1:1, which held the cached data")
    return KilledAfter(blocks, passes, error=lost, **kw)


def test_a_lost_server_stops_the_fit_naming_the_iteration_and_the_kept_checkpoints(tmp_path):
    X, _, _ = make_blobs(2000, 2, 2, separation=4.0, seed=3)
    blocks = [Block(b) for b in np.array_split(X, 3)]
    settings = FitSettings(max_iter=5, tol=0.0, seed=1, run_id="gone", checkpoint_dir=str(tmp_path))
    with pytest.raises(SessionLostError) as caught:
        fit_em(GaussianFamily(k=2), LostAfter(blocks, 2, sample_size=500, seed=1), settings)
    message = str(caught.value)
    assert message.startswith("run gone: lost the Spark Connect server at sc://127.0.0.1:1")
    assert "in iteration 3 (restart 1/1)" in message
    assert f"the checkpoints up to iteration 2 are kept in {tmp_path}" in message
    assert "run the same command again" in message
    names = sorted(p.name for p in (tmp_path / "gone" / "checkpoints").iterdir())
    assert names == ["ckpt-0000000001.emck", "ckpt-0000000002.emck"]  # nothing written for iteration 3
    # the lease was released: the re-run (server back) resumes at once and finishes
    result = fit_em(GaussianFamily(k=2), LocalBlockSource(blocks, sample_size=500, seed=1), settings)
    assert result.n_iter == 5
    uninterrupted = fit_em(
        GaussianFamily(k=2),
        LocalBlockSource(blocks, sample_size=500, seed=1),
        FitSettings(max_iter=5, tol=0.0, seed=1),
    )
    for name, value in uninterrupted.params.items():
        assert np.array_equal(result.params[name], value)


def test_a_lost_server_before_any_checkpoint_says_a_rerun_starts_over(tmp_path):
    X, _, _ = make_blobs(500, 2, 2, separation=4.0, seed=3)
    settings = FitSettings(max_iter=3, tol=0.0, seed=1, run_id="early", checkpoint_dir=str(tmp_path))
    with pytest.raises(SessionLostError, match=r"in iteration 1 \(restart 1/1\); no iteration was checkpointed yet"):
        fit_em(GaussianFamily(k=2), LostAfter([Block(X)], 0, sample_size=200, seed=1), settings)
