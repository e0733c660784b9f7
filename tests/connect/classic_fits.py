"""The reference fits on a classic local[2] session, in a process of their own.

Usage: python classic_fits.py DATA_ROOT OUT_ROOT

A classic session and a Spark Connect client in one Python process interfere (a Connect
session switches pyspark's functions to Connect for the whole process), so the Connect
tests get their classic references from this script: each fit of connect_data.FITS on the same
Parquet files, saved under OUT_ROOT/<name>.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from connect_data import DATASETS, FITS, SPARK_CONF


def main() -> None:
    data_root, out_root = sys.argv[1], sys.argv[2]
    import em_spark
    from em_spark.engine.session import get_session

    spark = get_session("em_spark-classic-reference", "local[2]", {**SPARK_CONF, "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    paths = {name: os.path.join(data_root, name) for name in DATASETS}
    for name, (estimator, params, data) in FITS.items():
        df = spark.read.parquet(paths[data])
        model = getattr(em_spark, estimator)(**params).fit(df)
        model.save(os.path.join(out_root, name))
        print(f"FIT {name} {model.summary.numIter} {model.summary.logLikelihood!r}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
