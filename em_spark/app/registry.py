"""``em-spark registry list|show|promote|rollback``: inspect and move model aliases.

The main CLI adds the parser with :func:`add_registry_parser` and runs the parsed
arguments with :func:`run_registry`. Errors are raised as
:class:`~em_spark.storage.registry.RegistryError` for the main CLI to print.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from em_spark.storage.fs import redact_uri
from em_spark.storage.registry import (
    DEFAULT_ALIAS,
    DamagedAliasEntry,
    ModelRegistry,
    ModelVersion,
    RegistryError,
)

__all__ = ["add_registry_parser", "run_registry"]


def add_registry_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``registry`` command and its sub-commands to ``subparsers``; return its parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry", required=True, metavar="URI", help="registry root: a path or file://, s3://... URI"
    )
    common.add_argument(
        "--s3-endpoint",
        dest="s3_endpoint",
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)",
    )

    registry = subparsers.add_parser("registry", help="list, show, promote and roll back registered models")
    commands = registry.add_subparsers(dest="registry_command", required=True, metavar="{list,show,promote,rollback}")

    p = commands.add_parser("list", parents=[common], help="models, or the versions of one model")
    p.add_argument("--name", help="list this model's versions (default: list the models)")
    p.add_argument("--incomplete", action="store_true", help="also list incomplete or damaged versions")

    p = commands.add_parser("show", parents=[common], help="the metadata of one version as JSON")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--version",
        default=DEFAULT_ALIAS,
        metavar="V|ALIAS",
        help=f"version number, alias or 'latest' (default: {DEFAULT_ALIAS})",
    )

    p = commands.add_parser("promote", parents=[common], help=f"point {DEFAULT_ALIAS} at a version")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True, type=int, metavar="V")
    p.add_argument("--reason", default="", metavar="TEXT")

    p = commands.add_parser("rollback", parents=[common], help=f"point {DEFAULT_ALIAS} back at its previous version")
    p.add_argument("--name", required=True)
    p.add_argument("--reason", default="", metavar="TEXT")
    return registry


def run_registry(args: argparse.Namespace) -> int:
    """Run a parsed ``registry`` command, printing to stdout; return the exit code."""
    registry = ModelRegistry(args.registry, s3_endpoint=args.s3_endpoint)
    command = args.registry_command
    if command == "list":
        if not registry.exists():
            raise RegistryError(
                f"registry {redact_uri(registry.root_uri)} does not exist; check --registry, or create it with a "
                "first registration (an `em-spark nightly` run, or ModelRegistry.register in Python)"
            )
        print(_list_versions(registry, args.name, args.incomplete) if args.name else _list_models(registry))
    elif command == "show":
        version = registry.get(args.name, args.version)
        shown = {**version.to_dict(), "aliases": _aliases_pointing_at(registry, version)}
        shown["uri"] = redact_uri(shown["uri"])  # the registry URI may carry credentials
        problems = _alias_problems(registry, args.name)
        if problems:
            shown["alias_problems"] = problems
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    elif command == "promote":
        entry = registry.promote(args.name, args.version, reason=args.reason)
        if entry.repairs is not None:
            was = f"was unknown: entry {entry.repairs} of its log is damaged; entry {entry.sequence} supersedes it"
        else:
            was = f"was {entry.previous}" if entry.previous is not None else "was not set"
        print(f"model {args.name}: {entry.alias} -> version {entry.version} ({was})")
    elif command == "rollback":
        entry = registry.rollback(args.name, reason=args.reason)
        print(f"model {args.name}: {entry.alias} rolled back to version {entry.version} (was {entry.previous})")
    else:  # argparse refuses anything else; this guards a caller building args by hand
        raise RegistryError(f"unknown registry command {command!r}")
    return 0


def _list_models(registry: ModelRegistry) -> str:
    names = registry.names()
    if not names:
        return f"no models in {redact_uri(registry.root_uri)}"
    rows = []
    notes: list[str] = []
    for name in names:
        complete = registry.versions(name)
        production, damaged = _production(registry, name)
        rows.append(
            [
                name,
                "DAMAGED" if damaged else str(production) if production is not None else "-",
                str(complete[-1].version) if complete else "-",
                str(len(complete)),
            ]
        )
        notes.extend(_alias_problems(registry, name).values())
    return "\n".join([_table(["model", DEFAULT_ALIAS, "latest", "versions"], rows), *notes])


def _list_versions(registry: ModelRegistry, name: str, incomplete: bool) -> str:
    production, damaged = _production(registry, name)
    rows = []
    for v in registry.versions(name):
        m = v.metrics
        rows.append(
            [
                ("*" if v.version == production else " ") + str(v.version),
                v.created_at,
                v.run_id,
                _metric(m.get("trainAvgLogLik"), 6),
                _metric(m.get("holdoutAvgLogLik"), 6),
                _metric(m.get("bic"), 1),
            ]
        )
    header = ["version", "created (UTC)", "run id", "train avgLogLik", "holdout avgLogLik", "BIC"]
    lines = [_table(header, rows) if rows else f"model {name}: no complete versions"]
    if damaged:
        lines.append(f"({DEFAULT_ALIAS} is unknown: its newest log entry is damaged)")
    else:
        lines.append(f"(* = {DEFAULT_ALIAS})" if production is not None else f"({DEFAULT_ALIAS} is not set)")
    lines.extend(_alias_problems(registry, name).values())
    if incomplete:
        for iv in registry.incomplete_versions(name):
            lines.append(
                f"incomplete version {iv.version} (run {iv.run_id or '?'}, claimed {iv.claimed_at or '?'}): {iv.reason}"
            )
    return "\n".join(lines)


def _production(registry: ModelRegistry, name: str) -> tuple[int | None, bool]:
    """(the production version or None, whether its newest log entry is damaged); never falls back."""
    history = registry.alias_history(name, DEFAULT_ALIAS)
    if history and history[-1].damaged:
        return None, True
    return (history[-1].version if history else None), False


def _alias_problems(registry: ModelRegistry, name: str) -> dict[str, str]:
    """For each alias with damaged log entries, one line saying what they mean and the repair."""
    problems = {}
    for alias in registry.alias_names(name):
        history = registry.alias_history(name, alias)
        damaged: list[DamagedAliasEntry] = [e for e in history if e.damaged]
        if not damaged:
            continue
        if history[-1].damaged:
            try:
                registry.alias(name, alias)
            except RegistryError as exc:
                problems[alias] = str(exc)
            continue
        listed = ", ".join(f"{e.sequence} ({redact_uri(e.uri)}: {e.problem})" for e in damaged)
        problems[alias] = (
            f"alias {alias!r} log entries damaged: {listed}; they no longer decide its value (later entries "
            f"supersede them), but a rollback cannot go back past entry {damaged[-1].sequence}"
        )
    return problems


def _aliases_pointing_at(registry: ModelRegistry, version: ModelVersion) -> list[str]:
    return [alias for alias, number in registry.aliases_of(version.name).items() if number == version.version]


def _metric(value: Any, digits: int) -> str:
    """A metric cell: fixed digits for finite numbers, the value as is otherwise, '-' if absent."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
