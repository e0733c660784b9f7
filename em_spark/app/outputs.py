"""How ``score`` and ``impute`` replace their output: refuse early, write staged, swap in whole.

Checks that need no Spark run before a session starts: the save mode, an output that
overlaps what the job reads (input, model, checkpoints), the model (see :mod:`em_spark.app.score`), the feature
count of a list of columns, and ``errorifexists`` against an existing output. The data's
feature count for a Vector or array column is checked once the input is read, before
anything is written. The new output then goes to a staging sibling, is read back, and only
then replaces the old one (:mod:`em_spark.storage.outputs`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from em_spark.app.config import ConfigError

if TYPE_CHECKING:
    from em_spark.storage.outputs import StagedOutput

__all__ = ["check_feature_count", "prepare_output", "refuse_overlap", "save_mode", "write_staged"]

log = logging.getLogger("em_spark")

_MODES = {"errorifexists": "errorifexists", "error": "errorifexists", "overwrite": "overwrite"}


def save_mode(mode: str, key: str) -> str:
    """``errorifexists`` or ``overwrite`` (Spark's names; ``error`` is ``errorifexists``)."""
    normalized = _MODES.get(str(mode).lower())
    if normalized is None:
        raise ConfigError(f"config key {key!r} is {mode!r}; use errorifexists or overwrite")
    return normalized


def _comparable(uri: str) -> tuple[str, list[str]]:
    """(scheme, path segments) of a URI, for comparing locations: local paths resolved
    (symlinks too), Hadoop's s3a/s3n taken as s3, no query, no empty segments."""
    base = uri.partition("?")[0] if "://" in uri else uri
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "file", base
    scheme = scheme.lower()
    if scheme in ("s3a", "s3n"):
        scheme = "s3"
    if scheme == "file":
        rest = os.path.realpath(rest if rest.startswith("/") else os.path.abspath(rest))
    return scheme, [s for s in rest.split("/") if s]


def _overlaps(a: str, b: str) -> bool:
    (scheme_a, path_a), (scheme_b, path_b) = _comparable(a), _comparable(b)
    n = min(len(path_a), len(path_b))
    return scheme_a == scheme_b and path_a[:n] == path_b[:n]


def refuse_overlap(output: str, key: str, others: dict[str, str | None]) -> None:
    """ConfigError when ``output`` is, contains or lies inside one of ``others`` (what the job
    reads): replacing the output would delete it."""
    from em_spark.storage.fs import redact_uri

    for label, uri in others.items():
        if uri and _overlaps(output, uri):
            raise ConfigError(
                f"{key} {redact_uri(output)} overlaps {label} {redact_uri(uri)}: writing the output there would "
                f"delete what this job reads; choose a {key} outside it"
            )


def check_feature_count(
    model_features: int, data_counts: Sequence[int], features: Any, model_name: str, *, per_step: bool = False
) -> None:
    """ConfigError when the data's feature count (``data_counts``, most common first) does not
    include the model's: every row would be unscorable, a whole-input problem."""
    from em_spark.engine.spark_source import describe_features

    if not data_counts or model_features in data_counts:
        return
    unit = " per step" if per_step else ""
    raise ConfigError(
        f"the model {model_name} has {model_features} features{unit} but input.features "
        f"({describe_features(features)}) has {data_counts[0]}{unit}; score with a model trained on these "
        f"features, or set input.features to the {model_features} the model was trained on"
    )


def prepare_output(output: str, mode: str, mode_key: str, s3_endpoint: str | None) -> StagedOutput:
    """The staged output for ``output``, after finishing what a killed run left there; an
    existing output with ``errorifexists`` is refused here, before any work."""
    from em_spark.storage.fs import redact_uri
    from em_spark.storage.outputs import StagedOutput

    try:
        staged = StagedOutput(output, s3_endpoint=s3_endpoint)
    except ValueError as exc:
        raise ConfigError(f"{mode_key.replace('.mode', '.outputPath')}: {exc}") from None
    for action in staged.recover():
        log.warning("%s: %s (left by an earlier run that was stopped)", redact_uri(output), action)
    if mode == "errorifexists" and staged.exists():
        raise ConfigError(
            f"the output {redact_uri(output)} already exists and {mode_key} is errorifexists; choose another "
            f"output path or set {mode_key}: overwrite to replace it"
        )
    return staged


def write_staged(staged: Any, mode: str, write: Callable[[str], None], read_back: Callable[[str], Any]) -> Any:
    """``write(uri)`` the new output to the staging location, ``read_back(uri)`` it (its result is
    returned), then swap it in; on any failure the staging is deleted and the output untouched."""
    from em_spark.storage.fs import redact_uri

    try:
        write(staged.staging_uri)
        staged.check_staged()
        result = read_back(staged.staging_uri)
        how = staged.publish(replace=mode == "overwrite")
    except BaseException:
        try:
            staged.discard()
        except Exception:  # noqa: BLE001 -- never mask the original error
            log.warning(
                "could not delete the staging output %s; the next run deletes it", redact_uri(staged.staging_uri)
            )
        raise
    log.info("new output %s %s", redact_uri(staged.uri), how)
    return result
