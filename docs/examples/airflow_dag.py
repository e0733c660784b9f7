"""Example Airflow DAG: the em_spark nightly retrain at 02:00 UTC.

Copy into your DAGs folder and adapt the connection id, paths and resources. em_spark does
not depend on Airflow; this file only shows the shape. Re-running a failed task is safe:
the job resumes the night's fit from its checkpoints and never registers a duplicate version.
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

with DAG(
    dag_id="em_spark_nightly_retrain",
    schedule="0 2 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,  # one night at a time; a second run of the same night would only report "done"
    default_args={"retries": 3, "retry_delay": timedelta(minutes=10)},
) as dag:
    SparkSubmitOperator(
        task_id="nightly_retrain",
        conn_id="spark_default",
        application="/opt/em_spark/jobs/nightly_retrain.py",
        application_args=[
            "--config",
            "/opt/em_spark/conf/nightly.yaml",
            "--set",
            "nightly.date={{ ds }}",
            "--set",
            "registry.uri=s3://my-bucket/em_spark/registry",
            "--set",
            "nightly.inputPath=s3://my-bucket/features/events/date={date}",
        ],
        conf={
            "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
            "spark.python.unix.domain.socket.enabled": "true",
        },
        # Credentials: the executors' and driver's standard AWS chain (instance role), never here.
    )
