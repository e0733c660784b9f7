"""Exact EM for Gaussian mixtures with values missing at random (Ghahramani & Jordan 1994).

A NaN entry of ``X`` is a missing value. For a row with observed coordinates o and
missing coordinates m, under component j (mean μ, covariance Σ):

* the row's likelihood is the marginal N(x_o | μ_o, Σ_oo) (missing at random: the
  missingness carries no information, so it is simply integrated out);
* the missing part has the conditional distribution N(x̂_m, C) with
  x̂_m = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o) and C = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om.

The E-step's expected sufficient statistics are then those of complete data with x
replaced by x̂ (x̂_o = x_o) and the outer product corrected by C::

    nk  += w r          sum += w r (x̂ − μ)          sq += w r [(x̂ − μ)(x̂ − μ)ᵀ + C]

with C zero-padded on the observed coordinates. The statistics are taken around the
component's current mean μ, like the complete-data kernel of :mod:`gaussian`, so the
M-step is the same and never sees whether a row had gaps. A row with every entry missing
has likelihood 1 under every component: its responsibilities are the mixing weights, it
adds 0 to ``loglik`` and w r Σ to ``sq`` (x̂ = μ, C = Σ), which leaves the fixed points of
EM those of the observed data.

Two implementations of the same math, chosen by the covariance type:

:class:`FullMissing` (full and tied covariances, given as (k, d, d) matrices)
    Rows are grouped by missingness pattern; per pattern the Cholesky factor of Σ_oo of
    each component is computed once and applied to all the pattern's rows.
:class:`DiagonalMissing` (diag and spherical, given as (k, d) variances)
    The coordinates are independent within a component: x̂_m = μ_m, C = diag(σ²_m), and
    the marginal density is a product over the observed coordinates, so every row is
    handled at once with masks, without grouping.

Only rows with at least one NaN are meant to come here; complete rows stay on the fast
kernel of :class:`~em_spark.models.gaussian.GaussianFamily`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from em_spark.models.labels import clamp_to_labels, log_posterior

__all__ = ["DiagonalMissing", "FullMissing", "nan_mask", "pattern_groups"]

_LOG_2PI = math.log(2.0 * math.pi)
# Bound on the (k, rows, d) deviation arrays of one chunk (float64 elements): 4 MiB.
_CHUNK_ELEMENTS = 1 << 19


def nan_mask(X: np.ndarray) -> np.ndarray | None:
    """(n, d) bool mask of the NaN entries of X, or None when X has none.

    The common complete case costs one reduction and no temporary: a sum is NaN only if
    some entry is (or, rarely, inf − inf: then the mask is computed and found empty).
    """
    if X.size == 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        total = X.sum()
    if not np.isnan(total):
        return None
    missing = np.isnan(X)
    return missing if missing.any() else None


def pattern_groups(missing: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows grouped by missingness pattern.

    Parameters
    ----------
    missing : (n, d) bool

    Returns
    -------
    list of (pattern (d,) bool, rows (r,) int64 in increasing order), one per distinct
    row of ``missing``
    """
    if missing.shape[0] == 0:
        return []
    patterns, inverse = np.unique(missing, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(patterns.shape[0] + 1))
    return [(patterns[p], order[bounds[p] : bounds[p + 1]]) for p in range(patterns.shape[0])]


def _row_slices(n: int, k: int, d: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, k * d))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class _MissingModel:
    """What both implementations share: posteriors, statistics and imputation from ``_parts``.

    A subclass implements ``_parts(X, missing, moments)`` yielding, for groups of rows,
    ``(rows, log_joint (r, k), dev (k, r, d) | None, cond)`` where ``dev`` = x̂ − μ_j
    (around each component's mean) and ``cond`` is the conditional covariance in the
    subclass's layout; ``_add_moments`` and ``_cond_variances`` read that layout.
    """

    log_weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)

    def _parts(self, X: np.ndarray, missing: np.ndarray, moments: bool):
        raise NotImplementedError

    def _add_moments(self, dev, cond, wr, sq) -> None:
        raise NotImplementedError

    def _cond_variances(self, cond, n_rows: int) -> np.ndarray:
        raise NotImplementedError

    def log_joint(self, X: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """(n, k) log w_j + log N(x_o | μ_jo, Σ_joo) of the rows X (n, d) with NaN at ``missing``."""
        out = np.empty((X.shape[0], self.means.shape[0]))
        for rows, log_joint, _, _ in self._parts(X, missing, moments=False):
            out[rows] = log_joint
        return out

    def accumulate(
        self,
        X: np.ndarray,
        missing: np.ndarray,
        w: np.ndarray | None,
        labels: np.ndarray | None,
        sums: np.ndarray,
        sq: np.ndarray,
        nk: np.ndarray,
    ) -> float:
        """Add the rows' expected statistics to ``nk`` (k,), ``sums`` (k, d), ``sq`` (in place).

        ``sq`` is (k, d, d) for :class:`FullMissing`, (k, d) for :class:`DiagonalMissing`;
        ``labels`` (n,) (negative = unknown) or None clamps labelled rows' responsibilities.
        Returns Σ w loglik of the rows (observed-data, or complete-data for labelled rows).
        """
        loglik = 0.0
        for rows, log_joint, dev, cond in self._parts(X, missing, moments=True):
            log_resp, row_loglik = log_posterior(log_joint)
            log_resp, row_loglik = clamp_to_labels(
                log_joint, log_resp, row_loglik, None if labels is None else labels[rows]
            )
            resp = np.exp(log_resp)  # (r, k)
            if w is None:
                wr = resp.T
                loglik += float(row_loglik.sum())
            else:
                wr = (resp * w[rows, None]).T
                loglik += float(row_loglik @ w[rows])
            nk += wr.sum(axis=1)
            sums += np.einsum("kr,krd->kd", wr, dev)
            self._add_moments(dev, cond, wr, sq)
        return loglik

    def impute(
        self, X: np.ndarray, missing: np.ndarray, labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(imputed (n, d), std (n, d)): E[x_m | x_o] and its standard deviation under the mixture.

        Observed entries are returned unchanged with std 0. For a missing entry, with
        responsibilities r_j and per-component conditional mean x̂_j and variance c_j,
        the mixture's conditional mean is E = Σ_j r_j x̂_j and its variance
        Σ_j r_j (c_j + x̂_j²) − E² = Σ_j r_j (c_j + (x̂_j − E)²), computed in the second
        form, which cannot cancel.
        """
        imputed = np.array(X, dtype=np.float64)
        std = np.zeros_like(imputed)
        for rows, log_joint, dev, cond in self._parts(X, missing, moments=True):
            log_resp, row_loglik = log_posterior(log_joint)
            log_resp, _ = clamp_to_labels(log_joint, log_resp, row_loglik, None if labels is None else labels[rows])
            resp = np.exp(log_resp).T[:, :, None]  # (k, r, 1)
            x_hat = dev + self.means[:, None, :]  # (k, r, d)
            mean = (resp * x_hat).sum(axis=0)  # (r, d)
            variance = (resp * (self._cond_variances(cond, len(rows)) + np.square(x_hat - mean))).sum(axis=0)
            gaps = missing[rows]
            imputed[rows] = np.where(gaps, mean, X[rows])
            std[rows] = np.where(gaps, np.sqrt(np.clip(variance, 0.0, None)), 0.0)
        return imputed, std


class FullMissing(_MissingModel):
    """Conditional-Gaussian E-step for full covariance matrices, vectorized per missingness pattern.

    Parameters
    ----------
    log_weights : (k,) log mixing weights (-inf for a weight of 0)
    means : (k, d)
    covariances : (k, d, d) symmetric positive definite (a tied covariance broadcast to k)
    """

    def __init__(self, log_weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> None:
        self.log_weights = np.asarray(log_weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covariances = np.asarray(covariances, dtype=np.float64)

    def _pattern(self, gaps: np.ndarray):
        """Per-pattern constants: (obs, log_const (k,), L⁻¹ (k, o, o), W (k, o, m), C (k, d, d) padded)."""
        obs = ~gaps
        cov = self.covariances
        s_oo = cov[:, obs][:, :, obs]
        s_om = cov[:, obs][:, :, gaps]
        s_mm = cov[:, gaps][:, :, gaps]
        chol = np.linalg.cholesky(s_oo)  # a principal submatrix of an SPD matrix is SPD
        chol_inv = np.linalg.inv(chol)  # (k, o, o); o is at most d, and small
        half_log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        log_const = self.log_weights - half_log_det - 0.5 * int(obs.sum()) * _LOG_2PI
        # With W = L⁻¹ Σ_om: Σ_mo Σ_oo⁻¹ = Wᵀ L⁻¹ and C = Σ_mm − Wᵀ W (the Schur complement).
        W = chol_inv @ s_om
        schur = s_mm - np.swapaxes(W, 1, 2) @ W
        cond = np.zeros_like(cov)
        cond[np.ix_(np.arange(cov.shape[0]), gaps, gaps)] = 0.5 * (schur + np.swapaxes(schur, 1, 2))
        return obs, log_const, chol_inv, W, cond

    def _parts(self, X: np.ndarray, missing: np.ndarray, moments: bool):
        k, d = self.means.shape
        for gaps, pattern_rows in pattern_groups(missing):
            obs, log_const, chol_inv, W, cond = self._pattern(gaps)
            for part in _row_slices(pattern_rows.size, k, d):
                rows = pattern_rows[part]
                # e = x_o − μ_jo (k, r, o); z = L⁻¹ e, so ‖z‖² is the Mahalanobis distance on o
                e_obs = X[rows][:, obs][None, :, :] - self.means[:, None, obs]
                z = e_obs @ np.swapaxes(chol_inv, 1, 2)
                log_joint = (log_const[:, None] - 0.5 * np.einsum("kro,kro->kr", z, z)).T
                dev = None
                if moments:
                    dev = np.empty((k, rows.size, d))
                    dev[:, :, obs] = e_obs
                    dev[:, :, gaps] = z @ W  # x̂_m − μ_m = Σ_mo Σ_oo⁻¹ e = Wᵀ z, as rows
                yield rows, log_joint, dev, cond

    def _add_moments(self, dev, cond, wr, sq) -> None:
        sq += np.matmul(dev.transpose(0, 2, 1) * wr[:, None, :], dev)
        sq += wr.sum(axis=1)[:, None, None] * cond

    def _cond_variances(self, cond, n_rows: int) -> np.ndarray:
        return np.diagonal(cond, axis1=1, axis2=2)[:, None, :]  # (k, 1, d)


class DiagonalMissing(_MissingModel):
    """E-step for diagonal covariances: independent coordinates, so no per-pattern algebra.

    Parameters
    ----------
    log_weights : (k,) log mixing weights (-inf for a weight of 0)
    means : (k, d)
    variances : (k, d) positive (a spherical variance broadcast to d columns)
    """

    def __init__(self, log_weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> None:
        self.log_weights = np.asarray(log_weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.variances = np.asarray(variances, dtype=np.float64)

    def _parts(self, X: np.ndarray, missing: np.ndarray, moments: bool):
        k, d = self.means.shape
        log_norm = _LOG_2PI + np.log(self.variances)  # (k, d): per-coordinate −2 log N constant
        inv_var = 1.0 / self.variances
        for rows in _row_slices(X.shape[0], k, d):
            gaps = missing[rows]
            # x̂_m = μ_m: the deviation is 0 on the missing coordinates and they drop out
            dev = np.where(gaps[None], 0.0, X[None, rows] - self.means[:, None, :])  # (k, r, d)
            observed = (~gaps).astype(np.float64)
            maha = np.einsum("krd,kd->kr", np.square(dev), inv_var)
            log_joint = self.log_weights - 0.5 * (observed @ log_norm.T + maha.T)
            yield np.arange(rows.start, rows.stop), log_joint, dev, gaps

    def _add_moments(self, dev, cond, wr, sq) -> None:
        # C = diag(σ²) on the missing coordinates: Σ_r w r_jr [x_rd missing] σ²_jd
        sq += np.einsum("kr,krd->kd", wr, np.square(dev)) + (wr @ cond.astype(np.float64)) * self.variances

    def _cond_variances(self, cond, n_rows: int) -> np.ndarray:
        return np.where(cond[None], self.variances[:, None, :], 0.0)  # (k, r, d)
