"""Build the three Grafana dashboards of em_spark (executive, on-call, debug) with
grafana-foundation-sdk and write them as JSON next to this file.

    python docs/monitoring/dashboards/generate.py          # rewrite the JSON files
    python docs/monitoring/dashboards/generate.py --check  # exit 1 if a committed file differs

Every query uses only metrics em_spark pushes (em_spark/app/metrics.py). The on-call
dashboard shows each alert rule's own expression, read from docs/monitoring/alerts.yml, so
edit that file and re-run this script. tests/test_prometheus_stack.py evaluates every panel's
query against a real Prometheus, and tests/test_dashboards.py checks the committed JSON is
this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "alerts.yml"
# The datasource's uid as provisioned (docs/monitoring/grafana/provisioning/datasources/).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RUN = '{job="em_spark",run_id="$run_id"}'  # one run of the debug dashboard
MODEL = 'model=~"$model"'


def _query(expr: str, legend: str = "", instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).datasource(DATASOURCE).ref_id(ref)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def _stat(title: str, expr: str, unit: str, legend: str = "", description: str = "") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(expr, legend, instant=True))
        .unit(unit)
        .height(5)
        .span(6)
    )


def _series(title: str, targets: list[tuple[str, str]], unit: str, description: str = "", span: int = 12) -> Any:
    panel = timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
    for i, (expr, legend) in enumerate(targets):
        panel = panel.with_target(_query(expr, legend, ref=chr(ord("A") + i)))
    return panel.height(8).span(span)


def _table(title: str, expr: str, description: str = "", span: int = 12) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(expr, instant=True).format("table"))  # type: ignore[arg-type]
        .height(8)
        .span(span)
    )


def _bars(title: str, expr: str, legend: str, unit: str, description: str = "") -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(expr, legend, instant=True))
        .unit(unit)
        .height(8)
        .span(12)
    )


def _variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
    )


def _base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["em_spark"])
        .refresh("1m")
        .time("now-30d", "now")
        .timezone("utc")
        .editable()
    )


def executive() -> dashboard.Dashboard:
    """Is the model refreshed, how fast, and is it getting better: one row per model."""
    latest_night = (
        f"and on (model, run_id) (em_spark_nightly_timestamp_seconds{{{MODEL}}}"
        " == on (model) group_left max by (model) (em_spark_nightly_timestamp_seconds))"
    )
    return (
        _base("em-spark-executive", "em_spark: executive", "Nightly retrains of each registered model over 30 days.")
        .with_variable(
            _variable("model", "model", "label_values(em_spark_nightly_success, model)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_panel(
            _stat(
                "Job success rate (30 days)",
                f"sum by (model) (last_over_time(em_spark_nightly_success{{{MODEL}}}[30d]))"
                f" / count by (model) (last_over_time(em_spark_nightly_success{{{MODEL}}}[30d]))",
                "percentunit",
                "{{model}}",
                "Nights whose last attempt finished, over nights attempted (a re-run replaces its night).",
            )
        )
        .with_panel(
            _stat(
                "Time since the last successful run",
                f"time() - max by (model) (em_spark_nightly_success_timestamp_seconds{{{MODEL}}})",
                "s",
                "{{model}}",
                "Pages at 26 hours (EmSparkNoSuccessfulRun).",
            )
        )
        .with_panel(
            _stat(
                "Promotions (30 days)",
                f"sum by (model) (last_over_time(em_spark_nightly_promoted{{{MODEL}}}[30d]))",
                "none",
                "{{model}}",
                "Nights that promoted a new version to production.",
            )
        )
        .with_panel(
            _stat(
                "Production version",
                f"max by (model) (em_spark_nightly_production_version{{{MODEL}}} {latest_night})",
                "none",
                "{{model}}",
                "After the latest night.",
            )
        )
        .with_panel(
            _series(
                "Retrain latency (fit wall time)",
                [(f'em_spark_wall_seconds{{job="em_spark",{MODEL}}}', "{{model}} {{run_id}}")],
                "s",
                "Wall seconds of each night's fit.",
            )
        )
        .with_panel(
            _series(
                "Validation delta against production",
                [(f"em_spark_nightly_validation_delta{{{MODEL}}}", "{{model}} {{run_id}}")],
                "none",
                "New version's holdout avg log-likelihood minus production's on the same holdout (nats/row); "
                "below -promotionTolerance the gate keeps production.",
            )
        )
    )


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def on_call() -> dashboard.Dashboard:
    """What is wrong right now: the alerts, their expressions, and the signals behind them."""
    board = (
        _base("em-spark-on-call", "em_spark: on-call", "Failed, long, unconverged and collapsing runs; drift; alerts.")
        .time("now-2d", "now")
        .with_panel(
            _table(
                "Firing and pending alerts",
                'ALERTS{alertname=~"EmSpark.*"}',
                "From docs/monitoring/alerts.yml; each rule's runbook_url says what to do.",
                span=24,
            )
        )
        .with_panel(
            _table(
                "Failed nightly runs (24 h)",
                "time() - em_spark_nightly_failure_timestamp_seconds < 86400",
                "Seconds since the failure, by model, night and error class.",
            )
        )
        .with_panel(
            _table(
                "Failed runs (24 h)",
                'time() - em_spark_run_failure_timestamp_seconds{job="em_spark"} < 86400',
                "Seconds since the failure, by run and error class.",
            )
        )
        .with_panel(
            _series(
                "Run wall time",
                [
                    ('em_spark_wall_seconds{job="em_spark"}', "{{run_id}}"),
                    (
                        'time() - em_spark_run_started_timestamp_seconds{job="em_spark"}'
                        ' unless on (job, run_id) em_spark_finished_timestamp_seconds{job="em_spark"}',
                        "{{run_id}} (running)",
                    ),
                ],
                "s",
                "Finished runs' wall seconds, and running runs' age.",
            )
        )
        .with_panel(
            _series(
                "Not converged (1) per run",
                [('1 - em_spark_converged{job="em_spark"}', "{{run_id}}")],
                "none",
                "1: the best restart hit maxIter.",
            )
        )
        .with_panel(
            _series(
                "Smallest component weight",
                [('em_spark_min_component_weight{job="em_spark"}', "{{run_id}}")],
                "percentunit",
                "Below 0.01 a component is collapsing.",
            )
        )
        .with_panel(
            _series(
                "Drift",
                [
                    ("em_spark_nightly_drift_avg_log_likelihood_drop", "{{model}} drop"),
                    ("em_spark_nightly_drift_threshold", "{{model}} threshold"),
                    ("em_spark_nightly_max_weight_shift", "{{model}} max weight shift"),
                    ("em_spark_nightly_max_component_divergence", "{{model}} max divergence"),
                ],
                "none",
                "Per night: the avg log-likelihood drop (nats/row) against its threshold, and how the components moved.",
            )
        )
    )
    for rule in _alert_rules():
        board = board.with_panel(
            _table(
                f"Alert expression: {rule['alert']} ({rule['labels']['severity']})",
                rule["expr"].strip(),
                f"The rule's own expression (docs/monitoring/alerts.yml); runbook: {rule['annotations']['runbook_url']}",
            )
        )
    return board


def debug() -> dashboard.Dashboard:
    """One run in detail: pick it with $run_id."""
    return (
        _base("em-spark-debug", "em_spark: debug (one run)", "One run's fit: likelihood, iterations, time, components.")
        .with_variable(_variable("run_id", "run", 'label_values(em_spark_iterations{job="em_spark"}, run_id)'))
        .with_panel(_stat("Average log-likelihood", f"em_spark_avg_log_likelihood{RUN}", "none"))
        .with_panel(_stat("Log-likelihood", f"em_spark_log_likelihood{RUN}", "none"))
        .with_panel(_stat("Iterations (best restart)", f"em_spark_iterations{RUN}", "none"))
        .with_panel(_stat("Converged", f"em_spark_converged{RUN}", "bool_yes_no"))
        .with_panel(_stat("Seconds per iteration", f"em_spark_seconds_per_iteration{RUN}", "s"))
        .with_panel(_stat("Iteration seconds (best restart)", f"em_spark_iteration_seconds_total{RUN}", "s"))
        .with_panel(_stat("Wall seconds", f"em_spark_wall_seconds{RUN}", "s"))
        .with_panel(
            _stat(
                "Executor core-seconds",
                f"em_spark_executor_core_seconds{RUN}",
                "s",
                description="Classic sessions only: a Spark Connect client sees no task metrics.",
            )
        )
        .with_panel(
            _bars("Component weights", f"em_spark_component_weight{RUN}", "component {{component}}", "percentunit")
        )
        .with_panel(
            _bars(
                "Drift from production per component",
                f"em_spark_drift_weight_shift{RUN} or em_spark_drift_component_divergence{RUN}",
                "component {{component}} {{__name__}}",
                "none",
                "Nightly retrains only: weight shift and symmetric divergence of each component.",
            )
        )
        .with_panel(
            _stat(
                "Posterior entropy",
                f"em_spark_posterior_entropy{RUN}",
                "percentunit",
                description="Mean responsibility entropy / log k on the initialization sample: 0 sure, 1 uniform.",
            )
        )
        .with_panel(
            _stat(
                "Stability across restarts (ARI min / mean)",
                f"em_spark_posterior_stability_ari_min{RUN} or em_spark_posterior_stability_ari_mean{RUN}",
                "none",
                "{{__name__}}",
                "Adjusted Rand index of the best restart's hard assignments against each other restart's.",
            )
        )
        .with_panel(_stat("Restarts", f"em_spark_restarts{RUN}", "none"))
        .with_panel(_stat("Components (k)", f"em_spark_components{RUN}", "none"))
        .with_panel(_stat("Rows", f"em_spark_rows{RUN}", "none"))
        .with_panel(_stat("BIC", f"em_spark_bic{RUN}", "none"))
    )


DASHBOARDS = {"executive.json": executive, "on-call.json": on_call, "debug.json": debug}


def render(build: Any) -> str:
    """The dashboard as the JSON text committed (sorted keys: a stable diff)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        text, path = render(build), HERE / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (re-run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
