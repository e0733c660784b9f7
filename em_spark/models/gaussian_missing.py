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

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np

from em_spark.models.kernels import LOG_2PI, inv_lower_triangular
from em_spark.models.labels import clamp_to_labels, log_posterior

__all__ = ["DiagonalMissing", "FullMissing", "nan_mask", "pattern_groups"]

# Bound on the (k, rows, d) deviation arrays of one chunk (float64 elements): 4 MiB.
_CHUNK_ELEMENTS = 1 << 19
# A missingness pattern with at least this many rows gets its own matrix products;
# smaller ones are batched with the others that miss as many coordinates.
_LARGE_PATTERN_ROWS = 64


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
    n = missing.shape[0]
    if n == 0:
        return []
    # Each row's pattern as 64-bit words (little bit order), so grouping sorts integers:
    # np.unique(missing, axis=0) sorts rows as opaque records, many times slower.
    packed = np.packbits(missing, axis=1, bitorder="little")
    width = -(-packed.shape[1] // 8) * 8
    words = np.zeros((n, width), dtype=np.uint8)
    words[:, : packed.shape[1]] = packed
    codes = words.view(np.uint64)
    if codes.shape[1] == 1:
        _, first, inverse = np.unique(codes[:, 0], return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(first.size + 1))
    return [(missing[first[p]], order[bounds[p] : bounds[p + 1]]) for p in range(first.size)]


#: (rows, log_joint (r, k), dev (k, r, d), cond in the implementation's layout): see _MissingModel
_Part = tuple[np.ndarray, np.ndarray, np.ndarray, Any]


def _row_slices(n: int, k: int, d: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, k * d))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


class _MissingModel(ABC):
    """What both implementations share: posteriors, statistics and imputation from ``_parts``.

    A subclass implements ``_parts(X, missing)`` yielding, for groups of rows,
    ``(rows, log_joint (r, k), dev (k, r, d), cond)`` where ``dev`` = x̂ − μ_j (around
    each component's mean) and ``cond`` is the conditional covariance in the subclass's
    layout; ``_add_moments`` and ``_cond_variances`` read that layout.
    """

    log_weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)

    @abstractmethod
    def _parts(self, X: np.ndarray, missing: np.ndarray) -> Iterator[_Part]:
        """See the class docstring."""

    @abstractmethod
    def _add_moments(self, dev: np.ndarray, cond: Any, wr: np.ndarray, sq: np.ndarray) -> None:
        """See the class docstring."""

    @abstractmethod
    def _cond_variances(self, cond: Any, n_rows: int) -> np.ndarray:
        """See the class docstring."""

    def log_joint(self, X: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """(n, k) log w_j + log N(x_o | μ_jo, Σ_joo) of the rows X (n, d) with NaN at ``missing``."""
        out = np.empty((X.shape[0], self.means.shape[0]))
        for rows, log_joint, _, _ in self._parts(X, missing):
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
        for rows, log_joint, dev, cond in self._parts(X, missing):
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
            self._add_weighted(dev, cond, wr, sums, sq)
        return loglik

    def accumulate_posterior(
        self, X: np.ndarray, missing: np.ndarray, wgamma: np.ndarray, sums: np.ndarray, sq: np.ndarray
    ) -> None:
        """Add the expected ``sums`` (k, d) and ``sq`` of rows X (n, d) whose weighted posteriors
        ``wgamma`` (k, n) come from elsewhere (an HMM's forward-backward), in place."""
        for rows, _, dev, cond in self._parts(X, missing):
            self._add_weighted(dev, cond, wgamma[:, rows], sums, sq)

    def _add_weighted(self, dev: np.ndarray, cond: Any, wr: np.ndarray, sums: np.ndarray, sq: np.ndarray) -> None:
        sums += np.matmul(wr[:, None, :], dev)[:, 0, :]
        self._add_moments(dev, cond, wr, sq)

    def impute(
        self, X: np.ndarray, missing: np.ndarray, labels: np.ndarray | None, resp: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(imputed (n, d), std (n, d)): E[x_m | x_o] and its standard deviation under the mixture.

        ``resp`` (n, k), when given, are the rows' component (state) posteriors to use instead of
        the mixture's own (an HMM's forward-backward posteriors, which also weigh the neighbours).

        Observed entries are returned unchanged with std 0. For a missing entry, with
        responsibilities r_j and per-component conditional mean x̂_j and variance c_j,
        the mixture's conditional mean is E = Σ_j r_j x̂_j and its variance
        Σ_j r_j (c_j + x̂_j²) − E² = Σ_j r_j (c_j + (x̂_j − E)²), computed in the second
        form, which cannot cancel.
        """
        imputed = np.array(X, dtype=np.float64)
        std = np.zeros_like(imputed)
        given = resp
        for rows, log_joint, dev, cond in self._parts(X, missing):
            if given is None:
                log_resp, row_loglik = log_posterior(log_joint)
                labelled = None if labels is None else labels[rows]
                log_resp, _ = clamp_to_labels(log_joint, log_resp, row_loglik, labelled)
                r = np.exp(log_resp).T[:, :, None]  # (k, r, 1)
            else:
                r = given[rows].T[:, :, None]
            x_hat = dev + self.means[:, None, :]  # (k, r, d)
            mean = (r * x_hat).sum(axis=0)  # (r, d)
            variance = (r * (self._cond_variances(cond, len(rows)) + np.square(x_hat - mean))).sum(axis=0)
            gaps = missing[rows]
            imputed[rows] = np.where(gaps, mean, X[rows])
            std[rows] = np.where(gaps, np.sqrt(np.clip(variance, 0.0, None)), 0.0)
        return imputed, std


class FullMissing(_MissingModel):
    """Conditional-Gaussian E-step for full covariance matrices, vectorized over missingness patterns.

    Works from the precision Λ = Σ⁻¹, so the per-pattern algebra is on the m × m block of
    the m *missing* coordinates (usually few) rather than on Σ_oo. With the block inverse:

        Σ_mo Σ_oo⁻¹ = −Λ_mm⁻¹ Λ_mo          C = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om = Λ_mm⁻¹
        log det Σ_oo = log det Σ + log det Λ_mm
        (x_o − μ_o)ᵀ Σ_oo⁻¹ (x_o − μ_o) = (x̂ − μ)ᵀ Λ (x̂ − μ)

    (the last because x̂_m minimizes the quadratic form over x_m, and its minimum is the
    marginal's). The distance is then the squared norm of (x̂ − μ)ᵀ P with P Pᵀ = Λ, a
    sum of squares as in the complete-data kernel, which cannot cancel. Λ_mo (x_o − μ_o)
    is read off one product e0 Λ over all rows (e0 = x − μ with 0 on missing coordinates),
    so per row only m-sized pieces are gathered.

    A pattern with many rows (at least ``_LARGE_PATTERN_ROWS``) gets its constants once
    and applied to its rows by matrix products. The many small patterns of scattered gaps
    are batched instead, all those with the same number of missing coordinates at once:
    their constants are computed as one stack and each row picks its own (a Python loop
    over thousands of patterns would cost more than their algebra).

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
        chol = np.linalg.cholesky(self.covariances)
        # P = L⁻ᵀ for Σ = L Lᵀ: P Pᵀ = Λ; contiguous, so products with it are plain GEMMs
        self.prec_chol = np.ascontiguousarray(np.swapaxes(inv_lower_triangular(chol), 1, 2))
        precisions = self.prec_chol @ np.swapaxes(self.prec_chol, 1, 2)
        self.precisions = 0.5 * (precisions + np.swapaxes(precisions, 1, 2))
        self.half_log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)  # ½ log det Σ (k,)

    def _constants(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The per-pattern, per-component constants of P patterns that all miss m coordinates.

        Parameters
        ----------
        patterns : (P, d) bool, True = missing; every row has the same number m of True

        Returns
        -------
        gaps (P, m) missing coordinate indices; log_const (k, P) = log π − ½ log det Σ_oo
        − ½ o log 2π; C = Λ_mm⁻¹ (k, P, m, m), the conditional covariance of the missing
        coordinates.
        """
        n_patterns, d = patterns.shape
        m = int(patterns[0].sum())
        gaps = np.argsort(~patterns, axis=1, kind="stable")[:, :m]  # the missing (True) coordinates
        if m == d:  # nothing observed: the marginal is the empty product, exactly 1, and C = Σ
            log_const = np.repeat(self.log_weights[:, None], n_patterns, axis=1)
            return gaps, log_const, np.repeat(self.covariances[:, None], n_patterns, axis=1)
        lam_mm = self.precisions[:, gaps[:, :, None], gaps[:, None, :]]  # (k, P, m, m)
        chol_mm = np.linalg.cholesky(lam_mm)  # a principal submatrix of an SPD matrix is SPD
        chol_mm_inv = inv_lower_triangular(chol_mm)
        cond = np.swapaxes(chol_mm_inv, 2, 3) @ chol_mm_inv  # Λ_mm⁻¹ = L⁻ᵀ L⁻¹
        half_log_det_oo = self.half_log_det[:, None] + np.log(np.diagonal(chol_mm, axis1=2, axis2=3)).sum(axis=2)
        log_const = self.log_weights[:, None] - half_log_det_oo - 0.5 * (d - m) * LOG_2PI
        return gaps, log_const, cond

    def _parts(self, X: np.ndarray, missing: np.ndarray) -> Iterator[_Part]:
        small: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for gaps, rows in pattern_groups(missing):
            if rows.size >= _LARGE_PATTERN_ROWS:
                yield from self._large_pattern_parts(X, gaps, rows)
            else:
                small.setdefault(int(gaps.sum()), []).append((gaps, rows))
        for n_missing in sorted(small):
            yield from self._small_pattern_parts(X, missing, small[n_missing])

    def _observed_deviations(self, X_rows: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(e0 (k, r, d), g (k, r, d)): x − μ with 0 on the missing coordinates, and e0 Λ.

        On a missing coordinate, g holds (Λ_mo (x_o − μ_o)), the input of the regression.
        """
        e0 = np.where(gaps[None], 0.0, X_rows[None] - self.means[:, None, :])
        return e0, e0 @ self.precisions  # Λ symmetric: rows of e0 Λ are (Λ e0)ᵀ

    def _log_joint(self, dev: np.ndarray, log_const: np.ndarray) -> np.ndarray:
        """(r, k) log π + log N(x_o) from the deviations x̂ − μ (k, r, d) and log_const (k, r) or (k, 1)."""
        whitened = dev @ self.prec_chol  # (k, r, d)
        return (log_const - 0.5 * np.einsum("krd,krd->kr", whitened, whitened)).T

    def _large_pattern_parts(self, X: np.ndarray, gaps: np.ndarray, pattern_rows: np.ndarray) -> Iterator[_Part]:
        """One pattern: its constants applied to all its rows by matrix products."""
        k, d = self.means.shape
        gap_idx, log_const, cond = self._constants(gaps[None])
        gap = gap_idx[0]
        for part in _row_slices(pattern_rows.size, k, 2 * d):
            rows = pattern_rows[part]
            dev, g = self._observed_deviations(X[rows], gaps[None])
            dev[:, :, gap] = -(g[:, :, gap] @ cond[:, 0])  # x̂_m − μ_m = −Λ_mm⁻¹ Λ_mo (x_o − μ_o)
            yield rows, self._log_joint(dev, log_const), dev, (cond, gap_idx, None)

    def _small_pattern_parts(
        self, X: np.ndarray, missing: np.ndarray, members: list[tuple[np.ndarray, np.ndarray]]
    ) -> Iterator[_Part]:
        """Patterns with the same number of missing coordinates, each row picking its pattern's constants."""
        k, d = self.means.shape
        patterns = np.stack([gaps for gaps, _ in members])
        all_rows = np.concatenate([rows for _, rows in members])  # grouped by pattern
        all_pattern = np.repeat(np.arange(len(members)), [rows.size for _, rows in members])
        m = int(patterns[0].sum())
        for part in _row_slices(all_rows.size, k, m * m + 2 * d):  # per row: a gathered (m, m) C
            rows = all_rows[part]
            used, pattern = np.unique(all_pattern[part], return_inverse=True)
            gap_idx, log_const, cond = self._constants(patterns[used])
            dev, g = self._observed_deviations(X[rows], missing[rows])
            gap = np.broadcast_to(gap_idx[pattern], (k, rows.size, m))
            e_gap = -np.einsum("krab,krb->kra", cond[:, pattern], np.take_along_axis(g, gap, axis=2))
            np.put_along_axis(dev, gap, e_gap, axis=2)
            yield rows, self._log_joint(dev, log_const[:, pattern]), dev, (cond, gap_idx, pattern)

    def _add_moments(self, dev: np.ndarray, cond: Any, wr: np.ndarray, sq: np.ndarray) -> None:
        k, d = self.means.shape
        sq += np.matmul(dev.transpose(0, 2, 1) * wr[:, None, :], dev)
        # + Σ_rows w r C of the row's pattern, zero-padded: scatter the (k, P, m, m) blocks
        cond, gap_idx, pattern = cond
        n_patterns = cond.shape[1]
        if pattern is None:
            mass = wr.sum(axis=1)[:, None]  # (k, 1)
        else:
            mass = np.stack([np.bincount(pattern, weights=wr[j], minlength=n_patterns) for j in range(k)])
        flat = (np.arange(k)[:, None, None, None] * d + gap_idx[None, :, :, None]) * d + gap_idx[None, :, None, :]
        weighted = (mass[:, :, None, None] * cond).ravel()
        sq += np.bincount(flat.ravel(), weights=weighted, minlength=k * d * d).reshape(k, d, d)

    def _cond_variances(self, cond: Any, n_rows: int) -> np.ndarray:
        k, d = self.means.shape
        cond, gap_idx, pattern = cond
        pattern = np.zeros(n_rows, dtype=np.int64) if pattern is None else pattern
        out = np.zeros((k, n_rows, d))
        gap = gap_idx[pattern]
        variances = np.diagonal(cond, axis1=2, axis2=3)[:, pattern]  # (k, r, m)
        np.put_along_axis(out, np.broadcast_to(gap, (k, *gap.shape)), variances, axis=2)
        return out


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

    def _parts(self, X: np.ndarray, missing: np.ndarray) -> Iterator[_Part]:
        k, d = self.means.shape
        log_norm = LOG_2PI + np.log(self.variances)  # (k, d): per-coordinate −2 log N constant
        inv_var = 1.0 / self.variances
        for rows in _row_slices(X.shape[0], k, d):
            gaps = missing[rows]
            # x̂_m = μ_m: the deviation is 0 on the missing coordinates and they drop out
            dev = np.where(gaps[None], 0.0, X[None, rows] - self.means[:, None, :])  # (k, r, d)
            observed = (~gaps).astype(np.float64)
            maha = np.einsum("krd,kd->kr", np.square(dev), inv_var)
            log_joint = self.log_weights - 0.5 * (observed @ log_norm.T + maha.T)
            yield np.arange(rows.start, rows.stop), log_joint, dev, gaps

    def _add_moments(self, dev: np.ndarray, cond: Any, wr: np.ndarray, sq: np.ndarray) -> None:
        # C = diag(σ²) on the missing coordinates: Σ_r w r_jr [x_rd missing] σ²_jd
        sq += np.einsum("kr,krd->kd", wr, np.square(dev)) + (wr @ cond.astype(np.float64)) * self.variances

    def _cond_variances(self, cond: Any, n_rows: int) -> np.ndarray:
        return np.where(cond[None], self.variances[:, None, :], 0.0)  # (k, r, d)
