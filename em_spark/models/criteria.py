"""Information criteria (BIC, AIC), computed in one place for every caller.

``n_samples`` is the number of observations the log-likelihood sums over, counted with their
weights: the total weight of the rows, or for sequence models the sum over sequences of
weight x steps (hmmlearn counts the steps; a sequence of weight w counts w times). Every caller
uses that one definition: ``LoadSummary.observation_weight`` on the engine side (training,
``select``, the metrics file) and the same sum in ``EMModel.criteria`` on a new DataFrame.
Lower is better for both.
"""

from __future__ import annotations

import math

__all__ = ["aic", "bic", "information_criteria"]


def bic(log_likelihood: float, n_parameters: int, n_samples: float) -> float:
    """Bayesian information criterion −2 log L + p log n (scikit-learn's definition)."""
    if not n_samples > 0:
        raise ValueError(f"BIC needs a positive number of samples, got {n_samples!r}")
    return -2.0 * log_likelihood + n_parameters * math.log(n_samples)


def aic(log_likelihood: float, n_parameters: int) -> float:
    """Akaike information criterion −2 log L + 2 p."""
    return -2.0 * log_likelihood + 2.0 * n_parameters


def information_criteria(log_likelihood: float, n_parameters: int, n_samples: float) -> dict[str, float]:
    """``{"bic": ..., "aic": ...}`` of a fit."""
    return {"bic": bic(log_likelihood, n_parameters, n_samples), "aic": aic(log_likelihood, n_parameters)}
