"""``em-spark slo``: a model's service levels over the last N days, from what the registry holds.

A night of model ``M`` is the run id ``M-<date>`` (em_spark.app.nightly). Under
``<registry>/M/`` a night leaves:

* ``runs/M-<date>/report.json`` when it finished (the night's decision, timings, the new
  version's metrics and production's on the same holdout): the night **succeeded**;
* otherwise, if its fit started, ``checkpoints/M-<date>/`` (the default checkpoint place) or a
  claimed version of that run id: the night **failed** (or is still running). A night that
  failed before its fit started (say, its input was missing) leaves nothing here: the
  Pushgateway's ``em_spark_nightly_success`` and the EmSparkNoSuccessfulRun alert see those.

From the nights in the window (``until - days + 1`` .. ``until``, by the night's date) and the
production alias log:

* job success rate: succeeded nights / nights attempted;
* retrain latency: the night's total seconds (``timings.total``) of the nights that fitted a
  new version: p50, p90 (linear interpolation between order statistics, numpy's default) and max;
* convergence rate: of those nights, the share whose fit converged before maxIter;
* validation delta against production: the new version's holdout average log-likelihood minus
  production's on the same holdout (nats/row; negative: worse), per night, with mean, min, last;
* time to rollback: for each rollback of ``production`` in the window, the seconds from the
  alias entry that put the rolled-back version in production to the rollback (alias log times
  have one-second resolution).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from em_spark.app.config import ConfigError
from em_spark.storage.fs import exists, join, read_object, redact_uri, resolve, write_object
from em_spark.storage.registry import DEFAULT_ALIAS, ModelRegistry, RegistryError

__all__ = ["add_slo_parser", "compute_slo", "human_table", "run_slo"]

REPORT_FILE = "report.json"  # as em_spark.app.nightly writes it
FORMAT = 1


def add_slo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``slo`` command to ``subparsers``; return its parser."""
    p = subparsers.add_parser("slo", help="service levels of a model's nightly retrains, from the registry")
    p.add_argument("--registry", required=True, metavar="URI", help="registry root: a path or file://, s3://... URI")
    p.add_argument("--name", required=True, metavar="MODEL", help="the registered model")
    p.add_argument("--days", type=int, default=30, help="window in days, ending with --until (default 30)")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="last night of the window (default: today, UTC)")
    p.add_argument("--output", default="slo.json", metavar="PATH|URI", help="JSON file to write (default slo.json)")
    p.add_argument("--s3-endpoint", dest="s3_endpoint", metavar="URL", help="S3-compatible endpoint")
    return p


def run_slo(args: argparse.Namespace) -> int:
    """Compute, print the table, write the JSON; return the exit code."""
    until = _parse_date(args.until) if args.until else None
    slo = compute_slo(args.registry, args.name, days=args.days, until=until, s3_endpoint=args.s3_endpoint)
    fs, path = resolve(args.output, s3_endpoint=args.s3_endpoint)
    write_object(fs, path, (json.dumps(slo, indent=2, allow_nan=False) + "\n").encode(), overwrite=True)
    print(human_table(slo))
    print(f"written to {redact_uri(args.output)}")
    return 0


def _parse_date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--until must be a date like 2026-11-30, got {text!r}") from None


def _subdirectories(fs: pafs.FileSystem, path: str) -> list[str]:
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.Directory)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _utc(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def compute_slo(
    registry_uri: str,
    name: str,
    *,
    days: int = 30,
    until: datetime.date | None = None,
    s3_endpoint: str | None = None,
) -> dict[str, Any]:
    """The service-level document of ``name`` (see the module docstring); RegistryError for
    an empty or missing registry or an unknown model, ConfigError for ``days`` <= 0."""
    if days <= 0:
        raise ConfigError(f"--days must be a positive number of days, got {days}")
    until = until or datetime.datetime.now(datetime.timezone.utc).date()
    first = until - datetime.timedelta(days=days - 1)
    registry = ModelRegistry(registry_uri, s3_endpoint=s3_endpoint)
    where = redact_uri(registry.root_uri)
    if not registry.exists() or not registry.names():
        raise RegistryError(f"registry {where} holds no models; check --registry (nightly runs register them)")
    registry.versions(name)  # an unknown model: RegistryError naming the models there are

    model_uri = join(registry.root_uri, name)
    fs, _ = resolve(model_uri, s3_endpoint=s3_endpoint)
    pattern = re.compile(re.escape(name) + r"-(\d{4}-\d{2}-\d{2})")
    started = set(_subdirectories(fs, resolve(join(model_uri, "checkpoints"), s3_endpoint=s3_endpoint)[1]))
    started |= {v.run_id for v in registry.incomplete_versions(name) if v.run_id}
    started |= {v.run_id for v in registry.versions(name)}
    run_ids = set(_subdirectories(fs, resolve(join(model_uri, "runs"), s3_endpoint=s3_endpoint)[1])) | started

    nights = []
    for run_id in sorted(run_ids):
        match = pattern.fullmatch(run_id)
        if not match:
            continue
        try:
            date = datetime.date.fromisoformat(match.group(1))
        except ValueError:
            continue
        if not first <= date <= until:
            continue
        report_path = resolve(join(model_uri, "runs", run_id, REPORT_FILE), s3_endpoint=s3_endpoint)[1]
        if not exists(fs, report_path):
            nights.append({"date": date.isoformat(), "runId": run_id, "status": "failed"})
            continue
        try:
            report = json.loads(read_object(fs, report_path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(
                f"the night report {redact_uri(join(model_uri, 'runs', run_id))} is damaged: {exc}"
            ) from None
        nights.append(_night(report, date, run_id))

    retrained = [n for n in nights if n.get("newVersion") is not None]
    latencies = [float(n["latencySeconds"]) for n in retrained if n.get("latencySeconds") is not None]
    converged = [n["converged"] for n in retrained if n.get("converged") is not None]
    deltas = [float(n["validationDelta"]) for n in retrained if n.get("validationDelta") is not None]
    succeeded = [n for n in nights if n["status"] == "succeeded"]
    rollbacks = _rollbacks(registry, name, first, until)
    seconds_to_rollback = [r["secondsFromPromotion"] for r in rollbacks if r["secondsFromPromotion"] is not None]
    return {
        "format": FORMAT,
        "model": name,
        "registry": where,
        "window": {"from": first.isoformat(), "until": until.isoformat(), "days": days},
        "jobSuccess": {
            "attempted": len(nights),
            "succeeded": len(succeeded),
            "failed": len(nights) - len(succeeded),
            "rate": len(succeeded) / len(nights) if nights else None,
        },
        "retrainLatencySeconds": {
            "retrains": len(retrained),
            "p50": _percentile(latencies, 50),
            "p90": _percentile(latencies, 90),
            "max": max(latencies) if latencies else None,
        },
        "convergence": {
            "fits": len(converged),
            "converged": sum(bool(c) for c in converged),
            "rate": sum(bool(c) for c in converged) / len(converged) if converged else None,
        },
        "validationDelta": {
            "nights": len(deltas),
            "mean": float(np.mean(deltas)) if deltas else None,
            "min": min(deltas) if deltas else None,
            "last": deltas[-1] if deltas else None,
        },
        "timeToRollback": {
            "rollbacks": len(rollbacks),
            "maxSeconds": max(seconds_to_rollback) if seconds_to_rollback else None,
            "meanSeconds": float(np.mean(seconds_to_rollback)) if seconds_to_rollback else None,
            "events": rollbacks,
        },
        "nights": nights,
    }


def _night(report: dict[str, Any], date: datetime.date, run_id: str) -> dict[str, Any]:
    metrics = report.get("metrics") or {}
    new = metrics.get("new") or {}
    production = metrics.get("productionOnSameHoldout")
    holdout = new.get("holdoutAvgLogLik")
    return {
        "date": date.isoformat(),
        "runId": run_id,
        "status": "succeeded",
        "decision": report.get("decision"),
        "newVersion": report.get("newVersion"),
        "productionAfter": report.get("productionAfter"),
        "latencySeconds": (report.get("timings") or {}).get("total"),
        "converged": new.get("converged"),
        "iterations": new.get("numIter"),
        "validationDelta": None if holdout is None or production is None else float(holdout) - float(production),
    }


def _rollbacks(registry: ModelRegistry, name: str, first: datetime.date, until: datetime.date) -> list[dict[str, Any]]:
    history = registry.alias_history(name) if DEFAULT_ALIAS in registry.alias_names(name) else []
    out = []
    for i, entry in enumerate(history):
        if entry.damaged or entry.action != "rollback" or not first <= _utc(entry.at).date() <= until:
            continue
        # The entry that put the rolled-back version (entry.previous) in production: the newest before.
        since = next(
            (e for e in reversed(history[:i]) if not e.damaged and e.version == entry.previous),
            None,
        )
        seconds = None if since is None else (_utc(entry.at) - _utc(since.at)).total_seconds()
        out.append(
            {
                "at": entry.at,
                "fromVersion": entry.previous,
                "toVersion": entry.version,
                "promotedAt": None if since is None else since.at,
                "secondsFromPromotion": seconds,
                "reason": entry.reason,
            }
        )
    return out


def _cell(value: Any, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def human_table(slo: dict[str, Any]) -> str:
    """The service levels as the few lines a person reads."""
    w, job, lat = slo["window"], slo["jobSuccess"], slo["retrainLatencySeconds"]
    conv, delta, rb = slo["convergence"], slo["validationDelta"], slo["timeToRollback"]
    rate = None if job["rate"] is None else 100 * job["rate"]
    conv_rate = None if conv["rate"] is None else 100 * conv["rate"]
    rows = [
        ("job success rate", f"{_cell(rate, 1, '%')} ({job['succeeded']} of {job['attempted']} nights)"),
        (
            "retrain latency",
            f"p50 {_cell(lat['p50'], 1, ' s')}, p90 {_cell(lat['p90'], 1, ' s')}, max {_cell(lat['max'], 1, ' s')}"
            f" ({lat['retrains']} retrains)",
        ),
        ("convergence rate", f"{_cell(conv_rate, 1, '%')} ({conv['converged']} of {conv['fits']} fits)"),
        (
            "validation delta",
            f"mean {_cell(delta['mean'], 4)}, min {_cell(delta['min'], 4)}, last {_cell(delta['last'], 4)}"
            f" nats/row vs production ({delta['nights']} nights)",
        ),
        (
            "time to rollback",
            f"max {_cell(rb['maxSeconds'], 0, ' s')}, mean {_cell(rb['meanSeconds'], 0, ' s')}"
            f" ({rb['rollbacks']} rollbacks)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    head = f"model {slo['model']}: service levels {w['from']} .. {w['until']} ({w['days']} days)"
    lines = [head, *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
    failed = [n["date"] for n in slo["nights"] if n["status"] == "failed"]
    if failed:
        lines.append(f"  failed nights: {', '.join(failed)}")
    return "\n".join(lines)
