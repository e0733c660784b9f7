"""Run diagnostics in pure numpy, through the family protocol only: how sure and how stable a
fit's posteriors are, how far a retrain moved from production, how well a model imputes.

- :func:`posterior_summary`: hard assignments and mean normalized entropy of the
  responsibilities on a sample (``family.score``).
- :func:`adjusted_rand_index`, :func:`matched_agreement`, :func:`posterior_stability`:
  agreement of two restarts' hard assignments (ARI is invariant to relabeling; the matched
  agreement pairs components by maximum overlap first).
- :func:`component_drift`: per-component weight shift and the family's symmetric
  ``component_distances`` between matched production and new components.
- :func:`masked_imputation_accuracy`: RMSE of ``family.impute`` on observed entries hidden at
  random, against the truth and against column means.

scikit-learn is the tests' oracle for these numbers, never imported here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from em_spark.models.base import Block, EMFamily, ImputingFamily, Params

__all__ = [
    "PosteriorSummary",
    "adjusted_rand_index",
    "component_drift",
    "hard_assignments",
    "masked_imputation_accuracy",
    "matched_agreement",
    "normalized_entropy",
    "posterior_stability",
    "posterior_summary",
]


@dataclass(frozen=True)
class PosteriorSummary:
    """A fit's posteriors on a sample: ``labels`` (n,) int, -1 where no component explains the
    row; ``entropy``: mean responsibility entropy over the explained rows, divided by log k."""

    labels: np.ndarray
    entropy: float | None


def hard_assignments(log_resp: np.ndarray) -> np.ndarray:
    """(n,) the most responsible component of each row; -1 where every log-responsibility is -inf/NaN."""
    log_resp = np.asarray(log_resp, dtype=np.float64)
    finite = np.isfinite(log_resp)
    labels = np.argmax(np.where(finite, log_resp, -np.inf), axis=1) if log_resp.size else np.empty(0, np.int64)
    return np.where(finite.any(axis=1), labels, -1).astype(np.int64)


def normalized_entropy(log_resp: np.ndarray) -> float | None:
    """Mean over rows of the responsibilities' entropy (nats) divided by log k: 0 when every row
    belongs to one component for sure, 1 when every row is spread evenly. None for no usable row;
    0 for k = 1. Rows whose responsibilities are all -inf/NaN are left out."""
    log_resp = np.asarray(log_resp, dtype=np.float64)
    k = log_resp.shape[1]
    rows = np.isfinite(log_resp).any(axis=1)
    if not rows.any():
        return None
    if k == 1:
        return 0.0
    lr = log_resp[rows]
    resp = np.exp(np.where(np.isfinite(lr), lr, -np.inf))
    terms = np.where(resp > 0, resp * np.where(np.isfinite(lr), lr, 0.0), 0.0)
    return float(np.mean(-terms.sum(axis=1)) / math.log(k))


def posterior_summary(family: EMFamily, sample: Block, params: Params) -> PosteriorSummary:
    """Hard assignments and normalized entropy of ``params``'s posteriors on ``sample``.

    ``family.score`` gives per-row (for sequence families per-observation) log-responsibilities."""
    log_resp = family.score(sample, params)["log_resp"]
    return PosteriorSummary(hard_assignments(log_resp), normalized_entropy(log_resp))


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ai, bi = ai.ravel(), bi.ravel()
    table = np.zeros((ai.max(initial=-1) + 1, bi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"assignments of different lengths: {a.shape[0]} and {b.shape[0]}")
    keep = (a >= 0) & (b >= 0)  # -1: a row neither fit explains is left out of the comparison
    return a[keep], b[keep]


def adjusted_rand_index(a: Any, b: Any) -> float:
    """Adjusted Rand index of two hard assignments (Hubert and Arabie, 1985): 1 for the same
    partition whatever the labels, about 0 for independent ones. Rows labelled -1 in either are
    left out. Same definition and special cases as scikit-learn's ``adjusted_rand_score``
    (computed from the pair confusion matrix; 1.0 when no pair disagrees, including n < 2)."""
    a, b = _paired(a, b)
    n = int(a.shape[0])
    table = _contingency(a, b)
    sum_squares = int((table.astype(object) ** 2).sum()) if table.size else 0
    rows = int((table.sum(axis=1).astype(object) ** 2).sum()) if table.size else 0
    cols = int((table.sum(axis=0).astype(object) ** 2).sum()) if table.size else 0
    tp = sum_squares - n
    fp = cols - sum_squares  # pairs together in b, apart in a
    fn = rows - sum_squares  # together in a, apart in b
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def matched_agreement(a: Any, b: Any) -> tuple[float, dict[int, int]]:
    """Fraction of rows with the same component after matching ``b``'s components to ``a``'s by
    maximum overlap (a minimum-cost assignment on the contingency table), and the matching
    (label of ``b`` -> label of ``a``). 1.0 for no rows."""
    from scipy.optimize import linear_sum_assignment

    a, b = _paired(a, b)
    if a.size == 0:
        return 1.0, {}
    a_labels, b_labels = np.unique(a), np.unique(b)
    table = _contingency(a, b)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / a.size), {int(b_labels[c]): int(a_labels[r]) for r, c in zip(rows, cols)}


def posterior_stability(best: np.ndarray, others: list[np.ndarray]) -> dict[str, Any] | None:
    """Agreement of the best restart's hard assignments with each other restart's (in order):
    ``ari`` and ``agreement`` lists, their ``minAri`` and ``meanAri``; None with no other restart."""
    if not others:
        return None
    ari = [adjusted_rand_index(best, other) for other in others]
    agreement = [matched_agreement(best, other)[0] for other in others]
    return {
        "ari": ari,
        "agreement": agreement,
        "minAri": float(min(ari)),
        "meanAri": float(np.mean(ari)),
        "restartsCompared": len(others),
    }


def component_drift(family: EMFamily, production: Params, candidate: Params) -> dict[str, Any]:
    """How far ``candidate`` (already relabeled to production's component ids) moved.

    ``weightShift`` (k,): |new share - production share| per component (``component_weights``);
    ``divergence`` (k,): the family's ``component_distances`` between component j of each
    (symmetric: Bhattacharyya for Gaussian and categorical emissions, squared center distance
    for k-means); their maxima, and ``weightTotalVariation`` = half the summed shifts."""
    shift = np.abs(
        np.asarray(family.component_weights(candidate), dtype=np.float64)
        - np.asarray(family.component_weights(production), dtype=np.float64)
    )
    distances = np.asarray(family.component_distances(production, candidate), dtype=np.float64)
    divergence = np.diag(distances)
    return {
        "weightShift": shift.tolist(),
        "maxWeightShift": float(shift.max(initial=0.0)),
        "weightTotalVariation": float(shift.sum() / 2),
        "divergence": divergence.tolist(),
        "maxDivergence": float(divergence.max(initial=0.0)),
    }


def masked_imputation_accuracy(
    family: EMFamily, params: Params, X: np.ndarray, fraction: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Hide ``fraction`` of the observed entries of ``X`` (n, d) at random, impute them with
    ``family.impute`` and compare with the hidden truth.

    Returns ``maskedEntries``, ``rmse`` (the model's), ``baselineRmse`` (each entry replaced by
    its column's mean over the entries still observed) and ``rows``. A family without
    ``supports_impute`` is a ValueError."""
    if not family.supports_impute:
        raise ValueError(f"the {family.name} family cannot impute (supports_impute is false)")
    imputing = cast(ImputingFamily, family)  # what supports_impute declares
    X = np.asarray(X, dtype=np.float64)
    observed = np.flatnonzero(~np.isnan(X).ravel())
    count = round(fraction * observed.size)
    result: dict[str, Any] = {"rows": int(X.shape[0]), "fraction": float(fraction), "maskedEntries": int(count)}
    if count == 0:
        return {**result, "rmse": None, "baselineRmse": None}
    hidden = np.sort(rng.choice(observed, size=count, replace=False))
    masked = X.copy().ravel()
    truth = masked[hidden].copy()
    masked[hidden] = np.nan
    masked = masked.reshape(X.shape)
    imputed = np.asarray(imputing.impute(Block(masked), params)["imputed"], dtype=np.float64).ravel()[hidden]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": a column with nothing left
        means = np.nanmean(masked, axis=0)
    baseline = np.broadcast_to(means, X.shape).ravel()[hidden]
    baseline = np.where(np.isnan(baseline), 0.0, baseline)  # a column with nothing left observed
    return {
        **result,
        "rmse": float(np.sqrt(np.mean((imputed - truth) ** 2))),
        "baselineRmse": float(np.sqrt(np.mean((baseline - truth) ** 2))),
    }
