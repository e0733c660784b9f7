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
    from em_spark.session import get_session

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
