"""Shared fixtures. Only tests that ask for ``spark`` start a JVM (one per session)."""

from __future__ import annotations

import os
import sys

import pytest

# Spark binds to loopback only, and its Python workers use this interpreter (a venv).
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable


@pytest.fixture(scope="session")
def spark():
    from em_spark.engine.session import get_session

    session = get_session(
        "em_spark-tests",
        "local[2]",
        {
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# --- S3: a moto server on loopback ------------------------------------------------------

_S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id-12345",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-abcdef",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata service
}
# Whatever the developer's shell says about AWS must not reach the tests.
_S3_CLEARED_ENV = ("AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3Server:
    """A running moto S3 server: ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self):
        """A boto3 client for test setup and inspection."""
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The moto S3 server for this session, with dummy AWS credentials in the environment."""
    import logging
    import threading

    # Required test dependencies (the [test] extra): a missing one must fail, never skip.
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    with pytest.MonkeyPatch.context() as env:
        for name, value in _S3_TEST_ENV.items():
            env.setenv(name, value)
        for name in _S3_CLEARED_ENV:
            env.delenv(name, raising=False)
        nowhere = str(tmp_path_factory.mktemp("aws") / "absent")  # no ~/.aws config or credentials
        env.setenv("AWS_CONFIG_FILE", nowhere)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        werkzeug_log = logging.getLogger("werkzeug")
        werkzeug_level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)  # not one line per request
        server.start()
        try:
            # moto checks If-None-Match and then stores, in two steps; S3 makes them
            # one. Serializing requests gives the emulator S3's atomicity, so races
            # between writers test the client, not the emulator.
            wsgi = server._server  # pinned moto version: see pyproject
            app, lock = wsgi.app, threading.Lock()

            def serialized(environ, start_response):
                with lock:
                    return app(environ, start_response)

            wsgi.app = serialized
            host, port = server.get_host_and_port()
            yield S3Server(f"http://{host}:{port}")
        finally:
            server.stop()
            werkzeug_log.setLevel(werkzeug_level)


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on ``s3_server``, as the base URI ``s3://<bucket>``."""
    import uuid

    name = f"em-spark-test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return f"s3://{name}"
