"""Model selection: fit a grid of component counts and covariance types, rank by BIC or AIC.

The data is loaded, validated and cached once; every candidate is fitted on the same
cached blocks, all at once, sharing each data pass (:mod:`em_spark.engine.shared_passes`:
one Spark job per round for every candidate still running), and its criteria come from one
more shared pass under the final parameters (so they are the log-likelihood of the fitted
model, not of the parameters one M-step before it). Each candidate's fit is exactly the fit
it would be alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from em_spark.engine.loop import fit_em
from em_spark.engine.settings import FitSettings
from em_spark.engine.shared_passes import run_sharing_passes
from em_spark.models import EMFamily, GaussianFamily
from em_spark.models.base import ModelError
from em_spark.models.criteria import information_criteria

__all__ = ["Candidate", "format_table", "select_models"]

log = logging.getLogger("em_spark")


@dataclass
class Candidate:
    k: int
    covarianceType: str | None  # None for families without covariance types
    avgLogLik: float
    bic: float
    aic: float
    nParameters: int
    numIter: int
    converged: bool
    seconds: float  # from the start of select until this candidate's fit ended (candidates share passes)
    skipped: str | None = None  # why this grid point was not fitted (too few rows, a failed fit); metrics are NaN

    @classmethod
    def not_fitted(cls, k: int, covariance_type: str | None, reason: str) -> Candidate:
        nan = float("nan")
        return cls(
            k=k,
            covarianceType=covariance_type,
            avgLogLik=nan,
            bic=nan,
            aic=nan,
            nParameters=0,
            numIter=0,
            converged=False,
            seconds=0.0,
            skipped=reason,
        )


def select_models(
    source: Any,
    ks: Sequence[int],
    covariance_types: Sequence[str | None],
    settings: FitSettings,
    *,
    reg_covar: float = GaussianFamily.reg_covar,
    init_mode: str = GaussianFamily.init_mode,
    make_family: Callable[[int, str | None], EMFamily] | None = None,
) -> list[Candidate]:
    """Fit every (k, covariance type) on ``source``; return the candidates in grid order.

    A grid point that cannot be fitted (k above the number of rows, or a fit that fails
    with a :class:`~em_spark.models.base.ModelError`) stays in the list with its reason in
    ``skipped``, so the table shows it instead of silently leaving it out.

    ``make_family(k, covariance_type)`` builds each candidate (default: a Gaussian mixture);
    give ``covariance_types=[None]`` for a family without them. BIC's sample size is
    ``LoadSummary.observation_weight`` (:mod:`em_spark.models.criteria`).
    """
    if settings.optimizer != "batch":
        # the candidates share batch EM's full passes; a mini-batch step has no place in that round
        raise ValueError(
            f"select fits its candidates with batch EM; optimizer={settings.optimizer!r} is not supported "
            "here. Select with the default optimizer, then fit the chosen model online."
        )
    summary = source.summary
    n = summary.observation_weight
    if make_family is None:

        def make_family(k: int, covariance_type: str | None) -> EMFamily:
            assert covariance_type is not None  # the Gaussian grid names its covariance types
            return GaussianFamily(k=k, covariance_type=covariance_type, reg_covar=reg_covar, init_mode=init_mode)

    grid = [(k, covariance_type) for covariance_type in covariance_types for k in ks]
    skipped: dict[tuple[int, str | None], str] = {}
    for k, covariance_type in grid:
        if k > summary.observations:
            skipped[k, covariance_type] = f"only {summary.observations} rows"
            log.warning("select: skipping k=%d: %s", k, skipped[k, covariance_type])
    to_fit = [point for point in grid if point not in skipped]
    families = {point: make_family(*point) for point in to_fit}
    started = time.perf_counter()

    def fit(point: tuple[int, str | None]) -> Callable[[Any], tuple[Any, float] | str]:
        def run(view: Any) -> tuple[Any, float] | str:
            k, covariance_type = point
            try:
                result = fit_em(families[point], view, settings)
            except ModelError as exc:
                log.warning("select: k=%d %s failed: %s", k, covariance_type or families[point].name, exc)
                return f"fit failed: {exc}"
            return result, time.perf_counter() - started

        return run

    # Every candidate's iterations share the data passes (one Spark job per round for all
    # the candidates still running), and so do the criteria passes under the final parameters.
    outcomes, group = run_sharing_passes(source, [fit(point) for point in to_fit])
    fitted = {point: outcome for point, outcome in zip(to_fit, outcomes) if not isinstance(outcome, str)}
    for point, outcome in zip(to_fit, outcomes):
        if isinstance(outcome, str):
            skipped[point] = outcome
    final = (
        source.e_step_many(
            [(families[point], result.params) for point, (result, _) in fitted.items()], "em_spark select criteria"
        )
        if fitted
        else []
    )
    log.info(
        "select: %d candidates fitted in %d shared data passes (%d E-steps), %.1f s",
        len(fitted),
        group.passes,
        group.requests,
        time.perf_counter() - started,
    )
    criteria_stats = dict(zip(fitted, final))
    candidates = []
    for point in grid:
        k, covariance_type = point
        if point in skipped:
            candidates.append(Candidate.not_fitted(k, covariance_type, skipped[point]))
            continue
        family, (result, seconds), stats = families[point], fitted[point], criteria_stats[point]
        p = family.n_parameters(result.params)
        criteria = information_criteria(stats.loglik, p, n)
        candidate = Candidate(
            k=k,
            covarianceType=covariance_type,
            avgLogLik=stats.loglik / stats.weight,
            bic=criteria["bic"],
            aic=criteria["aic"],
            nParameters=p,
            numIter=result.n_iter,
            converged=result.converged,
            seconds=seconds,
        )
        log.info(
            "select: k=%d %s avgLogLik=%.6f BIC=%.1f AIC=%.1f (%d iterations, done after %.1f s)",
            k,
            covariance_type or family.name,
            candidate.avgLogLik,
            candidate.bic,
            candidate.aic,
            candidate.numIter,
            candidate.seconds,
        )
        candidates.append(candidate)
    return candidates


def best(candidates: list[Candidate], criterion: str) -> Candidate:
    """The fitted candidate with the lowest criterion (the earlier one on a tie)."""
    fitted = [c for c in candidates if c.skipped is None]
    if not fitted:
        reasons = "; ".join(
            f"k={c.k}{' ' + c.covarianceType if c.covarianceType else ''}: {c.skipped}" for c in candidates
        )
        raise ValueError(f"no candidate of the grid could be fitted ({reasons}); choose smaller select.ks")
    return min(fitted, key=lambda c: getattr(c, criterion))


def format_table(candidates: list[Candidate], criterion: str) -> str:
    """A table a person can read, the chosen candidate marked with ``*``, skipped ones with their reason."""
    chosen = best(candidates, criterion)
    header = f"{'':2}{'k':>3}  {'covariance':<10} {'avgLogLik':>12} {'BIC':>14} {'AIC':>14} {'params':>7} {'iter':>5}"
    lines = [header]
    for c in candidates:
        if c.skipped is not None:
            lines.append(f"{'':2}{c.k:>3}  {c.covarianceType or '-':<10} skipped: {c.skipped}")
            continue
        mark = "*" if c is chosen else ""
        lines.append(
            f"{mark:2}{c.k:>3}  {c.covarianceType or '-':<10} {c.avgLogLik:>12.5f} {c.bic:>14.1f} {c.aic:>14.1f} "
            f"{c.nParameters:>7} {c.numIter:>5}{'' if c.converged else ' (not converged)'}"
        )
    setting = f", covarianceType={chosen.covarianceType}" if chosen.covarianceType else ""
    lines.append(f"* chosen by lowest {criterion.upper()}: k={chosen.k}{setting}")
    return "\n".join(lines)


def _json_candidate(c: Candidate) -> dict[str, Any]:
    # NaN is not JSON: a skipped candidate's metrics are null.
    return {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(c).items()}


def to_json(candidates: list[Candidate], criterion: str, **context: Any) -> str:
    chosen = best(candidates, criterion)
    return json.dumps(
        {
            "criterion": criterion,
            "chosen": _json_candidate(chosen),
            "candidates": [_json_candidate(c) for c in candidates],
            **context,
        },
        indent=2,
        allow_nan=False,
    )
