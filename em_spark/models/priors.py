"""Conjugate priors for MAP EM, with hmmlearn's semantics: Dirichlet priors on probability vectors
(start and transition probabilities) and a normal / inverse-Wishart-style prior on Gaussian means
and covariances (hmmlearn's ``means_prior``, ``means_weight``, ``covars_prior``, ``covars_weight``).

Each M-step here is the exact maximizer of (expected complete-data log-likelihood + log prior), and
each ``*_log_prior`` is that prior's log density up to a constant, so EM never decreases
loglik + log_prior (the engine's history reports the log-likelihood; accelerated EM compares the sum).

Gaussian prior, per state j with occupancy n_j, scatter S_j around the new mean and
md_j = μ_j − m0 (``means_prior`` m0, ``means_weight`` λ, ``covars_prior`` ψ, ``covars_weight`` w)::

    μ_j = (λ m0 + Σ γ x) / (λ + n_j)
    full:      Σ_j = (ψ I + λ md md' + S_j) / (max(w − d, 0) + n_j)
    tied:      Σ   = (ψ I + Σ_j (λ md md' + S_j)) / (max(w − d, 0) + Σ_j n_j)
    diag:      σ²_jf = (ψ + λ md_f² + S_jf) / max(max(w − 1, 0) + n_j, 1e-5)
    spherical: σ²_j = the mean over f of the diag estimate

which are hmmlearn's updates (with its ``covars_prior`` as ψ I for full and tied), and the prior
whose MAP they are: log p = Σ_j [−½ c log|Σ_j| − ½ tr(ψ Σ_j⁻¹) − ½ λ md_j' Σ_j⁻¹ md_j] with
c = max(w − d, 0) (full; tied counts its one Σ once), max(w − 1, 0) per dimension (diag) and
d max(w − 1, 0) (spherical). The defaults (λ = 0, ψ = 0, w = 1) are no prior: maximum likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from em_spark.models.base import ModelError
from em_spark.models.validation import is_number

__all__ = ["GaussianPrior", "check_concentration", "dirichlet_log_prior", "dirichlet_map", "map_weights"]


def _finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def check_concentration(value: Any, name: str) -> float:
    """A Dirichlet concentration as a float > 0, or a ModelError naming the key."""
    if not _finite_number(value) or value <= 0:
        raise ModelError(
            f"{name} must be a finite number > 0 (a Dirichlet concentration; 1 is a flat prior), got {value!r}"
        )
    return float(value)


def dirichlet_map(counts: np.ndarray, concentration: float, current: np.ndarray) -> np.ndarray:
    """Rows of max(counts + α − 1, 0), normalized (hmmlearn's start/transition update). An entry of
    ``current`` that is exactly 0 stays 0 (a structural zero: no data can reach it), and a row with
    nothing left keeps ``current``'s row."""
    values = np.maximum(np.asarray(counts, dtype=np.float64) + concentration - 1.0, 0.0)
    values = np.where(np.asarray(current) == 0, 0.0, values)
    totals = values.sum(axis=-1, keepdims=True)
    return np.where(totals > 0, values / np.where(totals > 0, totals, 1.0), current)


def map_weights(nk: np.ndarray, concentration: float) -> np.ndarray:
    """(k,) mixing weights under a symmetric Dirichlet(α) prior: the maximizer of
    Σ_j nk_j log w_j + (α − 1) Σ_j log w_j, max(nk + α − 1, 0) normalized (α < 1 can empty a
    component: a sparse mixture). For α = 1 (flat), or when nothing would be left, nk / Σ nk."""
    nk = np.asarray(nk, dtype=np.float64)
    if concentration != 1.0:
        concentrated = np.maximum(nk + concentration - 1.0, 0.0)
        if concentrated.sum() > 0:
            return concentrated / concentrated.sum()
    return nk / nk.sum()


def dirichlet_log_prior(probs: np.ndarray, concentration: float) -> float:
    """(α − 1) Σ log p over the entries that are not structural zeros (0 for α = 1)."""
    if concentration == 1.0:
        return 0.0
    probs = np.asarray(probs, dtype=np.float64)
    return float((concentration - 1.0) * np.log(probs[probs > 0]).sum())


@dataclass(frozen=True)
class GaussianPrior:
    """hmmlearn's prior on Gaussian means and covariances (see the module docstring); scalars, the
    mean prior broadcast to every state and feature."""

    means_prior: float = 0.0
    means_weight: float = 0.0
    covars_prior: float = 0.0
    covars_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, hmmlearn in (
            ("means_prior", "meansPrior"),
            ("means_weight", "meansWeight"),
            ("covars_prior", "covarsPrior"),
            ("covars_weight", "covarsWeight"),
        ):
            value = getattr(self, name)
            if not _finite_number(value) or (name != "means_prior" and value < 0):
                what = "a finite number" if name == "means_prior" else "a finite number >= 0"
                raise ModelError(f"{hmmlearn} must be {what} (hmmlearn's {name}), got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def active(self) -> bool:
        """Whether this prior changes anything (else the M-step is maximum likelihood)."""
        return self.means_weight > 0 or self.covars_prior > 0 or self.covars_weight > 1.0

    def m_step(
        self, nk: np.ndarray, sums: np.ndarray, sq: np.ndarray, old_means: np.ndarray, covariance_type: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(means (k, d), covariances by type) from occupancies nk (k,), sums (k, d) and sq
        ((k, d, d) or (k, d)) taken around ``old_means``; no regularization added."""
        lam, m0 = self.means_weight, self.means_prior
        d = old_means.shape[1]
        obs = sums + nk[:, None] * old_means
        means = (lam * m0 + obs) / (lam + nk)[:, None]
        c = means - old_means  # the scatter moves from the old means to the new ones
        md = means - m0
        if sq.ndim == 3:
            cross = sums[:, :, None] * c[:, None, :]
            scatter = sq - cross - np.swapaxes(cross, 1, 2) + nk[:, None, None] * c[:, :, None] * c[:, None, :]
            numerator = scatter + lam * md[:, :, None] * md[:, None, :]
            psi = self.covars_prior * np.eye(d)
            weight = max(self.covars_weight - d, 0.0)
            if covariance_type == "tied":
                cov = (psi + numerator.sum(axis=0)) / (weight + nk.sum())
            else:
                cov = (psi + numerator) / (weight + nk)[:, None, None]
            return means, 0.5 * (cov + np.swapaxes(cov, -1, -2))
        scatter = sq - 2.0 * c * sums + nk[:, None] * np.square(c)
        denominator = np.maximum(max(self.covars_weight - 1.0, 0.0) + nk, 1e-5)[:, None]
        cov = (self.covars_prior + lam * np.square(md) + scatter) / denominator
        return means, (cov.mean(axis=1) if covariance_type == "spherical" else cov)

    def log_prior(self, means: np.ndarray, covariances: np.ndarray, covariance_type: str) -> float:
        """The prior's log density up to a constant (0 when it is not ``active``)."""
        if not self.active:
            return 0.0
        lam, psi = self.means_weight, self.covars_prior
        md = np.asarray(means, dtype=np.float64) - self.means_prior
        k, d = md.shape
        cov = np.asarray(covariances, dtype=np.float64)
        if covariance_type in ("full", "tied"):
            matrices = np.broadcast_to(cov, (k, d, d)) if covariance_type == "tied" else cov
            inverse = np.linalg.inv(matrices)
            log_det = np.linalg.slogdet(cov)[1]
            c = max(self.covars_weight - d, 0.0)
            total = -0.5 * c * np.sum(log_det) - 0.5 * psi * np.trace(np.linalg.inv(cov), axis1=-2, axis2=-1).sum()
            return float(total - 0.5 * lam * np.einsum("ki,kij,kj->", md, inverse, md))
        c = max(self.covars_weight - 1.0, 0.0)
        variances = cov[:, None] * np.ones(d) if covariance_type == "spherical" else cov
        return float(np.sum(-0.5 * c * np.log(variances) - (psi + lam * np.square(md)) / (2.0 * variances)))
