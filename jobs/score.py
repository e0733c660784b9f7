"""spark-submit entry point for scoring with a saved model.

    spark-submit --master local[2] jobs/score.py --config conf/local.yaml

Writes Parquet with the input columns plus prediction, probability and logLikelihood.
"""

import sys

from em_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
