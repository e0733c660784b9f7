"""Getting a SparkSession, classic or Spark Connect, with clear messages when it cannot be had:
no PySpark installed (:func:`require_pyspark`), no Java, a Connect server that does not answer.

A classic session runs a JVM here (Java 17+ needed); a Spark Connect session (``sc://...``, from
``spark.remote`` in a job config or the ``SPARK_REMOTE`` environment variable, as pyspark reads
it) is a gRPC client of a server elsewhere and needs no Java on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "ConnectServerError",
    "JavaNotFoundError",
    "PySparkMissingError",
    "check_java",
    "get_session",
    "parse_connect_url",
    "require_pyspark",
    "submitted_conf",
    "under_spark_submit",
]

MIN_JAVA = 17
#: the oldest Spark Connect server em_spark runs on (mapInArrow with the Arrow types it ships)
MIN_CONNECT_SERVER = (4, 0)
DEFAULT_CONNECT_PORT = 15002  # Spark Connect's default (spark.connect.grpc.binding.port)
_CONNECT_PROBE_SECONDS = 10.0


class PySparkMissingError(ModuleNotFoundError):
    """PySpark is not installed: em_spark does not depend on it, so that a runtime's own pyspark
    (Databricks, spark-submit's $SPARK_HOME/python) is never replaced by PyPI's."""


def require_pyspark(what: str) -> None:
    """Raise PySparkMissingError, one line naming ``what`` needs it and what to install, when no
    ``pyspark`` package (from pyspark, pyspark-client or a Spark runtime) can be imported.
    Looks, does not import: pyspark's own import errors (a broken install) stay pyspark's."""
    if importlib.util.find_spec("pyspark") is None:
        raise PySparkMissingError(
            f"PySpark is needed for {what} and is not installed in {sys.executable}: "
            'pip install "em-spark[spark]" for local or classic Spark, or "em-spark[connect]" for a '
            "Spark Connect client without Java; on Databricks or under spark-submit use the runtime's "
            "pyspark (install plain em-spark there)",
            name="pyspark",
        )


class JavaNotFoundError(RuntimeError):
    """Spark needs a Java runtime that is not there (or too old)."""


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.path.exists(candidate):
            return candidate
        # Spark's launcher runs $JAVA_HOME/bin/java whenever JAVA_HOME is set, so a java on
        # PATH does not help: it would fail with a shell error and a Py4J stack trace.
        on_path = shutil.which("java")
        found = f" (there is a java on PATH at {os.path.realpath(on_path)})" if on_path else ""
        raise JavaNotFoundError(
            f"JAVA_HOME is {home!r}, which has no bin/java{found}; Spark runs $JAVA_HOME/bin/java, so "
            f"point JAVA_HOME at a JDK {MIN_JAVA} or 21 install, or unset it to use java from PATH"
        )
    return shutil.which("java")


def check_java() -> int:
    """The Java major version; raise JavaNotFoundError with the fix when it is missing or too old."""
    java = _java_binary()
    fix = (
        f"Spark 4 needs Java {MIN_JAVA} or 21. Install a JDK (for example "
        "`sudo apt-get install openjdk-17-jre-headless`, or `brew install openjdk@17`) "
        "and put `java` on PATH or set JAVA_HOME."
    )
    if java is None:
        raise JavaNotFoundError(f"no Java runtime found (no `java` on PATH, JAVA_HOME unset). {fix}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(f"could not run {java} -version ({exc}). {fix}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise JavaNotFoundError(f"could not read the Java version from `{java} -version`. {fix}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise JavaNotFoundError(f"found Java {major} at {java}, which is too old. {fix}")
    return major


class ConnectServerError(RuntimeError):
    """A Spark Connect server that cannot be used: unreachable, or too old."""


def parse_connect_url(url: str) -> tuple[str, int] | None:
    """(host, port) of ``sc://host[:port][/;key=value...]``; None for ``local[...]`` (pyspark's
    in-process server, which runs a JVM here). ValueError for anything else."""
    if re.fullmatch(r"local(\[[0-9*, ]+\])?", url):
        return None
    match = re.fullmatch(r"sc://(\[[0-9a-fA-F:]+\]|[^/:;\s\[\]]+)(?::(\d{1,5}))?(?:/(?:;[^;=\s/]+=[^;\s]*)*)?", url)
    if not match:
        raise ValueError(f"not a Spark Connect URL (sc://host:port[/;param=value...]): {url!r}")
    port = int(match.group(2)) if match.group(2) else DEFAULT_CONNECT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range in {url!r}")
    return match.group(1).strip("[]"), port


def _check_server(url: str, target: tuple[str, int]) -> None:
    """Refuse quickly and clearly when nothing answers at ``target``; pyspark's own client would
    retry for minutes and then raise a gRPC error."""
    try:
        with socket.create_connection(target, timeout=_CONNECT_PROBE_SECONDS):
            pass
    except OSError as exc:
        raise ConnectServerError(
            f"cannot reach the Spark Connect server at {url} ({exc.strerror or exc}); check the host and port "
            f"(the default port is {DEFAULT_CONNECT_PORT}), that the server is running "
            "(sbin/start-connect-server.sh, or your Databricks cluster/serverless endpoint) and that this "
            "machine may connect to it"
        ) from None


def _check_server_version(spark: Any, url: str) -> None:
    version = spark.version
    found = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if found < MIN_CONNECT_SERVER:
        raise ConnectServerError(
            f"the Spark Connect server at {url} runs Spark {version}; em_spark needs Spark "
            f"{'.'.join(map(str, MIN_CONNECT_SERVER))} or newer there (use a newer runtime, or a classic session)"
        )


def _connect_session(app_name: str, url: str, conf: Mapping[str, str]) -> Any:
    from pyspark.sql import SparkSession

    try:
        target = parse_connect_url(url)
    except ValueError as exc:
        raise ConnectServerError(f"spark.remote / SPARK_REMOTE: {exc}") from None
    if target is None:
        check_java()  # pyspark starts the local server's JVM in this process
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    else:
        _check_server(url, target)
    builder = SparkSession.builder.remote(url).appName(app_name)
    for key, value in {**_SESSION_CONF, **conf}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    _check_server_version(spark, url)
    from em_spark.engine.session_loss import bound_retries

    bound_retries(spark)  # a lost server ends the fit in about a minute, not pyspark's ten
    return spark


# Set on every session em_spark builds; a job config's spark.conf wins.
_SESSION_CONF = {
    # pyspark 4.3's vectorized reader of nested Parquet columns fails on ML Vector columns
    # (UNSUPPORTED_DATATYPE when a Vector read from Parquet is scored or written back); the
    # row-based reader of nested columns reads them. Flat numeric columns stay vectorized.
    "spark.sql.parquet.enableNestedColumnVectorizedReader": "false",
}


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (its JVM is already up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def submitted_conf() -> dict[str, str]:
    """The Spark conf spark-submit hands its Python app as ``PYSPARK_REMOTE_INIT_CONF_<i>``
    (JSON groups; Spark's PythonRunner sets them only for ``spark.remote`` or
    ``spark.api.mode=connect``). Empty outside spark-submit."""
    conf: dict[str, str] = {}
    for i in range(int(os.environ.get("PYSPARK_REMOTE_INIT_CONF_LEN", "0") or 0)):
        conf.update(json.loads(os.environ.get(f"PYSPARK_REMOTE_INIT_CONF_{i}", "{}")))
    return conf


def _in_driver_connect_master() -> str | None:
    """For ``spark-submit --conf spark.api.mode=connect app.py`` without ``spark.remote``, the
    master of the Connect server to start in spark-submit's own JVM; else None. pyspark 4.3 reads
    neither setting back from spark-submit, so em_spark hands both to the builder."""
    conf = submitted_conf()
    if under_spark_submit() and conf.get("spark.api.mode", "").lower() == "connect" and "spark.remote" not in conf:
        return conf.get("spark.master", "local[*]")
    return None


def _server_jars_missing(exc: BaseException) -> ConnectServerError | None:
    """The clear error for the launcher's classpath gap, or None if ``exc`` is something else."""
    if "ClassNotFoundException: org.apache.spark.sql.connect.SparkConnectPlugin" not in str(exc):
        return None
    jars = os.path.join(os.environ.get("SPARK_HOME", "$SPARK_HOME"), "jars", "*")
    return ConnectServerError(
        "spark-submit ran with spark.api.mode=connect but its launcher left Spark's SQL and Connect server "
        "jars off the driver classpath (it treats the app as a remote client), so no Connect server can start "
        f"in the driver. Add `--conf spark.driver.extraClassPath={jars}` to the spark-submit command, or point "
        "the job at a running server with spark.remote / SPARK_REMOTE (sc://host:15002)"
    )


def get_session(
    app_name: str = "em_spark",
    master: str | None = "local[2]",
    conf: Mapping[str, str] | None = None,
    remote: str | None = None,
) -> SparkSession:
    """The active SparkSession, or a new one.

    ``remote`` (or else the ``SPARK_REMOTE`` environment variable) makes it a Spark Connect
    session (``master`` is then ignored). Under spark-submit the master and resources come from
    spark-submit and ``master`` is ignored; ``--conf spark.api.mode=connect`` gives a Connect
    session served by spark-submit's JVM (see ``_server_jars_missing`` for the classpath it
    needs). For a local session the driver binds to 127.0.0.1 (unless SPARK_LOCAL_IP says otherwise) and Python workers use this interpreter, so a virtualenv works.
    """
    require_pyspark("a SparkSession")
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    remote = remote or os.environ.get("SPARK_REMOTE")
    if remote and not under_spark_submit():
        return _connect_session(app_name, remote, conf or {})
    builder = SparkSession.builder.appName(app_name)
    in_driver_master = _in_driver_connect_master()
    if in_driver_master is not None:
        # pyspark starts the in-driver server with the builder's spark.master, else "local"
        # (one core): hand it spark-submit's --master
        builder = builder.config("spark.api.mode", "connect").config("spark.master", in_driver_master)
    if not under_spark_submit():
        check_java()
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        if master:
            builder = builder.master(master)
        builder = builder.config("spark.driver.host", os.environ["SPARK_LOCAL_IP"])
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    # JVM <-> Python worker traffic over a Unix socket: about a quarter less per-task
    # overhead (measured: 0.10 -> 0.077 s for a 2-task job). The config wins if it says otherwise.
    builder = builder.config("spark.python.unix.domain.socket.enabled", "true")
    for key, value in {**_SESSION_CONF, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    try:
        return builder.getOrCreate()
    except Exception as exc:
        clear = _server_jars_missing(exc)
        if clear is None:
            raise
        raise clear from None
