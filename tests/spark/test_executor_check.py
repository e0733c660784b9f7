"""The executor check on a classic session: its executors import this em_spark, and a session
is checked by one small job, once (the Connect cases are in tests/connect/test_executor_check.py)."""

from __future__ import annotations

import pytest

import em_spark
from em_spark.engine.executor_check import check_executors, probe_executor

pytestmark = pytest.mark.spark


def test_classic_executors_report_this_em_spark_and_a_checked_session_runs_no_second_job(spark):
    found = probe_executor(spark)
    assert found["version"] == em_spark.__version__ and found["error"] == "", found
    check_executors(spark)  # the first check of this session (or an earlier fit's): one job at most
    sc = spark.sparkContext

    def jobs_of(group, action):
        sc.setJobGroup(group, group)
        try:
            action()
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        return sc.statusTracker().getJobIdsForGroup(group)

    assert jobs_of("em_spark-check-again", lambda: check_executors(spark)) == []
    assert len(jobs_of("em_spark-probe", lambda: probe_executor(spark))) == 1  # what a first check costs
