"""``em-spark select``: fit a grid of k and covariance types over data loaded once; report BIC and AIC."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from em_spark.app.common import estimator_from_config, read_input, resolve_local, spark_session
from em_spark.app.config import ConfigError, JobConfig

if TYPE_CHECKING:
    from em_spark.models.base import EMFamily

__all__ = ["run_select"]


def run_select(config: JobConfig) -> dict[str, Any]:
    """Fit the configured grid once over cached data; print the table, write the JSON report."""
    from em_spark.engine.job_tags import tagged_jobs
    from em_spark.engine.selection import format_table, select_models, to_json
    from em_spark.engine.settings import FitSettings

    if config.fit.optimizer != "batch":  # refused before Spark starts or any data is read
        raise ConfigError(
            f"select fits its candidates with batch EM, but fit.optimizer is {config.fit.optimizer!r} "
            f"(in {config.source}); select with fit.optimizer: batch, then train the chosen model online"
        )
    base = estimator_from_config(config, None)
    covariance_types = config.select.covarianceTypes if base.hasParam("covarianceType") else [None]

    def make_family(k: int, covariance_type: str | None) -> EMFamily:
        candidate = base.copy().setParams(k=k, **({"covarianceType": covariance_type} if covariance_type else {}))
        return candidate.family()

    spark = spark_session(config)
    settings = FitSettings(
        max_iter=config.fit.maxIter,
        tol=config.fit.tol,
        n_init=config.fit.nInit,
        seed=config.fit.seed,
        acceleration=config.fit.acceleration,
        optimizer=config.fit.optimizer,  # (online: refused by select_models with the way out)
    )
    # loaded once, as a fit of the grid's smallest k reads it (its sample bounds k-means++ for all)
    family = make_family(min(config.select.ks), covariance_types[0])
    # every job of the grid carries one tag (the candidates' threads inherit it): a Ctrl-C stops them
    with tagged_jobs(spark, config.run.id and f"{config.run.id}-select") as tag:
        logging.getLogger("em_spark").info("select: the grid's Spark jobs carry the tag %s", tag)
        source = base.load_source(read_input(spark, config), family, label="em_spark select")
        try:
            candidates = select_models(source, config.select.ks, covariance_types, settings, make_family=make_family)
        finally:
            source.close()
    criterion = config.select.criterion
    try:
        table = format_table(candidates, criterion)
    except ValueError as exc:  # every grid point skipped
        raise ConfigError(f"select: {exc} (in {config.source})") from None
    print(table, flush=True)
    report = to_json(candidates, criterion, input=config.input.path, rows=source.summary.rows)
    output = resolve_local(config.select.outputPath)
    if output:
        from em_spark.storage import resolve, write_object

        fs, path = resolve(output, s3_endpoint=config.storage.s3Endpoint)
        write_object(fs, path, report.encode(), overwrite=True)
        print(f"em_spark select: report written to {output}", flush=True)
    return json.loads(report)
