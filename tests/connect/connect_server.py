"""A Spark Connect server on 127.0.0.1 for the tests, in its own process.

Usage: python connect_server.py PORT [key=value ...]

Starts a classic local SparkSession with Spark's Connect plugin listening on PORT,
prints ``READY <port>`` once it serves, and runs until its stdin closes (the test
session ends or dies), so it never outlives the process that started it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    port = int(sys.argv[1])
    extra = dict(arg.split("=", 1) for arg in sys.argv[2:])
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(extra.pop("master", "local[2]"))
        .appName("em_spark-connect-tests")
        .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
        .config("spark.connect.grpc.binding.address", "127.0.0.1")
        .config("spark.connect.grpc.binding.port", str(port))
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.python.unix.domain.socket.enabled", "true")
    )
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe (or dies)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
