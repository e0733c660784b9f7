"""``em-spark``: the command line. Parses arguments, runs the command's module in
:mod:`em_spark.app`, and prints an expected error as one line (exit code 2)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from em_spark.app.common import setup_logging
from em_spark.app.config import ConfigError, load_config
from em_spark.app.report import run_report
from em_spark.app.score import run_impute, run_score
from em_spark.app.select import run_select
from em_spark.app.train import run_train

__all__ = ["main", "run_impute", "run_report", "run_score", "run_select", "run_train"]

#: the commands that run Spark; `report`, `registry` and `slo` read files only (a saved model
#: for `report` still needs PySpark: models are pyspark.ml classes, see em_spark.api)
_SPARK_COMMANDS = frozenset({"train", "score", "nightly", "select", "impute"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="em-spark", description="Expectation-Maximization on Apache Spark.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "fit a model and save it"),
        ("score", "score data with a saved model"),
        ("nightly", "the nightly retrain: drift check, warm-started retrain, holdout gate, registry"),
        ("select", "fit a grid of k and covariance types; report BIC and AIC, choose the best"),
        ("impute", "fill missing entries with their conditional expectation under a Gaussian mixture"),
        ("report", "draw a run: log-likelihood, component weights, clusters (report.png, report.html)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config (default: the embedded demo config)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set model.k=5 (repeatable)",
        )
    report = sub.choices["report"]
    report.add_argument(
        "source", help="a run id (found under run.checkpointDir), a run's metrics.json, or a saved model"
    )
    report.add_argument("--output", default="em-spark-report", help="directory for report.png and report.html")
    report.add_argument("--data", help="Parquet data to draw as a scatter colored by component (at most 3 features)")
    report.add_argument("--features", help="feature columns of --data, e.g. x0,x1 (default: the model's featuresCol)")
    report.add_argument("--rows", type=int, default=5000, help="rows of --data to draw (default 5000)")
    report.add_argument("--model", help="saved model to color the scatter with (default: the run's output.modelPath)")
    from em_spark.app.registry import add_registry_parser

    add_registry_parser(sub)
    # --- slo (em_spark.app.slo) ---
    from em_spark.app.slo import add_slo_parser

    add_slo_parser(sub)
    # --- end slo
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from em_spark.engine.loop import ResumeMismatchError
    from em_spark.engine.session import ConnectServerError, JavaNotFoundError, PySparkMissingError, require_pyspark
    from em_spark.engine.session_loss import SessionLostError  # a Connect server lost mid-fit
    from em_spark.engine.validation import DataValidationError
    from em_spark.models.base import ModelError
    from em_spark.storage import StorageError
    from em_spark.storage.registry import RegistryError

    expected = (
        ConfigError,
        DataValidationError,
        ResumeMismatchError,
        ModelError,
        PySparkMissingError,
        JavaNotFoundError,
        ConnectServerError,
        SessionLostError,
        FileExistsError,
        RegistryError,
        StorageError,
    )
    try:
        if args.command == "registry":
            from em_spark.app.registry import run_registry

            setup_logging()
            return run_registry(args)
        if args.command == "slo":  # --- slo (em_spark.app.slo): reads the registry, no config, no Spark
            from em_spark.app.slo import run_slo

            setup_logging()
            return run_slo(args)
        if args.command in _SPARK_COMMANDS:
            require_pyspark(f"em-spark {args.command}")  # before the config: nothing is read or written
        config = load_config(args.config, args.overrides)
        setup_logging(config.run.logFormat, getattr(logging, config.run.logLevel))
        if args.command == "train":
            run_train(config)
        elif args.command == "score":
            run_score(config)
        elif args.command == "select":
            run_select(config)
        elif args.command == "impute":
            run_impute(config)
        elif args.command == "report":
            run_report(config, args.source, args.output, args.data, args.features, args.rows, args.model)
        else:
            from em_spark.app.nightly import run_nightly

            run_nightly(config)
    except expected as exc:
        print(f"em-spark: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _is_analysis_error(exc):
            # Spark's message, without the JVM stack trace some versions append after it.
            first = str(exc).split("\n\tat ", 1)[0].split("\nJVM stacktrace:", 1)[0]
            print(f"em-spark: error: Spark could not read or write the data: {_one_line(first)}", file=sys.stderr)
            return 2
        raise
    finally:
        _stop_session()
    return 0


def _is_analysis_error(exc: Exception) -> bool:
    """Spark could not read or write the data (pyspark's AnalysisException, classic or Connect)."""
    if "pyspark" not in sys.modules:  # raised before Spark was used, or there is no PySpark
        return False
    from pyspark.errors import AnalysisException

    return isinstance(exc, AnalysisException)


def _one_line(message: str) -> str:
    """An error message as the one line the CLI promises."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _stop_session() -> None:
    """Stop the SparkSession a command used, so Python workers are not torn down mid-write at exit."""
    import sys as _sys

    if "pyspark.sql" not in _sys.modules:
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


if __name__ == "__main__":
    sys.exit(main())
