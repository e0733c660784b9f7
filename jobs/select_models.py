"""spark-submit entry point for model selection.

    spark-submit jobs/select_models.py --config conf/local.yaml --set 'select.ks=[2,3,4,5]'

Fits every (k, covariance type) of the grid on the same cached data and prints a table of
BIC and AIC with the chosen candidate; ``select.outputPath`` gets the same as JSON.
"""

import sys

from em_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
