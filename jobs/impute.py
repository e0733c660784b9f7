"""spark-submit entry point for EM imputation of missing values with a Gaussian mixture.

    spark-submit --master local[2] jobs/impute.py --config conf/impute.yaml

Writes Parquet with the input columns plus ``imputed`` (array<double>: observed entries as
they are, each missing one replaced by its conditional expectation given the row's observed
entries under the fitted mixture) and ``imputedStd`` (its conditional standard deviation,
0 for observed entries). Fit the model first with ``em-spark train`` and
``model.handleMissing: model``.
"""

import sys

from em_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["impute", *sys.argv[1:]]))
