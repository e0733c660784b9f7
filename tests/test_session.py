"""A machine without Java gets a message with the fix, not a Py4J stack trace."""

import pytest

from em_spark.engine import session


def test_missing_java_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(session.JavaNotFoundError, match="Install a JDK"):
        session.check_java()


def test_too_old_java_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(session.JavaNotFoundError, match="Java 11 .* too old"):
        session.check_java()


def test_cli_prints_the_java_message_without_a_traceback(monkeypatch, tmp_path, capsys):
    from pyspark.sql import SparkSession

    from em_spark.cli import main

    # Even when the test session's JVM is up, a fresh process would have no session.
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--set", "input.generate.rows=100"])
    err = capsys.readouterr().err
    assert code == 2 and "no Java runtime found" in err and "Traceback" not in err
