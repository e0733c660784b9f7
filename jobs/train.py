"""spark-submit entry point for training.

    spark-submit --master local[2] jobs/train.py --config conf/local.yaml [--set model.k=5]

A thin shim over ``em_spark.cli`` (the same as ``em-spark train``; the work is in ``em_spark.app.train``). The
em_spark package must be importable by the driver and executor Python (pip install it
on the image, or ship it with --py-files).
"""

import sys

from em_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
