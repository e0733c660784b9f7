"""A Connect client that ships em_spark to the executors with ``SparkSession.addArtifacts``.

Usage: python artifact_client.py URL SHIP [DATA MODEL_OUT]

Connects to URL, reports whether the executor check passes before the upload, ships em_spark,
and checks again. SHIP is a zip, uploaded with ``addArtifacts(SHIP, pyfile=True)`` (put on the
executors' Python path for this session only), or a Python file run with ``spark`` bound to the
session (the README's recipe, which builds and uploads the zip itself). With DATA, it then fits
a GaussianMixture on those Parquet files and saves it to MODEL_OUT. Prints one
``RESULT {json}`` line: ``before`` and ``after`` are "ok" or the check's error message.
"""

from __future__ import annotations

import json
import sys


def _check(spark) -> str:
    from em_spark.engine.executor_check import ExecutorImportError, check_executors

    try:
        check_executors(spark)
    except ExecutorImportError as exc:
        return str(exc)
    return "ok"


def main() -> None:
    url, archive = sys.argv[1], sys.argv[2]
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).create()
    result = {"before": _check(spark)}
    if archive.endswith(".zip"):
        spark.addArtifacts(archive, pyfile=True)
    else:
        with open(archive) as f:
            exec(compile(f.read(), archive, "exec"), {"spark": spark})
    result["after"] = _check(spark)
    if len(sys.argv) > 3 and result["after"] == "ok":
        from em_spark import GaussianMixture

        df = spark.read.parquet(sys.argv[3])
        GaussianMixture(k=2, featuresCol=["x0", "x1"], maxIter=15, seed=3).fit(df).save(sys.argv[4])
        result["saved"] = sys.argv[4]
    spark.stop()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
