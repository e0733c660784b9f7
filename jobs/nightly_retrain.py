"""spark-submit entry point for the nightly retrain.

    spark-submit jobs/nightly_retrain.py --config conf/nightly.yaml --set nightly.date=2026-11-22

Reads the night's data, checks drift against the production model, retrains when needed
(warm start from production plus fresh restarts), gates promotion on a holdout, keeps
component ids stable, and writes a report next to the model. Re-running the same night
resumes an interrupted run or reports that the night is already done.
"""

import sys

from em_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
