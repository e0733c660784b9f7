"""Numerical kernels shared by the families (the Gaussian mixture and HMM emissions above all): public, written once.

* ``KERNELS``: per covariance type ("full", "tied", "diag", "spherical"), a :class:`Kernel` of
  small plain functions: the shapes of covariances and second moments, the log-density pieces
  (``prepare``, ``half_mahalanobis``, ``log_det``), the moments of the E-step, the covariance of
  the M-step, the precision Cholesky factors and the re-seeding of one component.
* :func:`chunks`: the row-chunk iterator all of them run on (feature-major scratch buffers).
* Cholesky helpers: :func:`inv_lower_triangular`, :func:`cholesky_or_none`,
  :func:`not_positive_definite_components`; ``LOG_2PI``.
* :func:`log0`: log with log 0 = −inf and no warning (probabilities that may be exactly 0).
* :func:`ill_defined_covariance`: the one error text for a covariance the M-step cannot factor.

Precisions are Cholesky factors P with P Pᵀ = Σ⁻¹ (upper triangular for full and tied), so
log N(x | μ, Σ) = -½(d log 2π + ‖(x − μ) P‖²) + log det P, as in scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from em_spark.models.base import ModelError

__all__ = [
    "COVARIANCE_TYPES",
    "KERNELS",
    "LOG_2PI",
    "Kernel",
    "add_to_variances",
    "cholesky_or_none",
    "chunks",
    "ill_defined_covariance",
    "inv_lower_triangular",
    "log0",
    "normalize_log_prob",
    "not_positive_definite_components",
    "shifted_moments",
]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

LOG_2PI = math.log(2.0 * math.pi)
# Rows per chunk inside a block: the chunk's two (k, ~d, rows) scratch buffers stay in
# cache, so the elementwise passes over them are cache-hot instead of trips to memory (a
# k x n x d temporary for a 64k-row block is not), while chunks stay long enough that
# numpy's per-call overhead is small. 2 MiB measured best for d=10 (about 4.8k rows at k=5).
_SCRATCH_BYTES = 1 << 21
_MIN_CHUNK_ROWS = 256


# ---------------------------------------------------------------------------
# Linear algebra shared by all covariance types


def inv_lower_triangular(lower: np.ndarray) -> np.ndarray:
    """Inverse of a stack of lower-triangular matrices by forward substitution.

    Parameters
    ----------
    lower : ndarray of shape (..., d, d), lower triangular with non-zero diagonal

    Returns
    -------
    inverse : ndarray of shape (..., d, d), exactly lower triangular
    """
    d = lower.shape[-1]
    inverse = np.zeros_like(lower)
    for i in range(d):
        # row i of L⁻¹: (e_i − L[i, :i] L⁻¹[:i, :]) / L[i, i]; entries right of i stay 0
        row = -np.einsum("...j,...jc->...c", lower[..., i, :i], inverse[..., :i, :])
        row[..., i] += 1.0
        inverse[..., i, :] = row / lower[..., i, i, None]
    return inverse


def cholesky_or_none(matrices: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factors of a stack of matrices, or None if one is not positive definite."""
    try:
        chol = np.linalg.cholesky(matrices)
    except np.linalg.LinAlgError:
        return None
    return chol if np.all(np.isfinite(chol)) else None


def _precisions_cholesky_matrices(covariances: np.ndarray) -> np.ndarray:
    """P = (L⁻¹)ᵀ for Σ = L Lᵀ, so P Pᵀ = Σ⁻¹ and P is upper triangular (sklearn's convention).

    Raises ``np.linalg.LinAlgError`` when a matrix is not positive definite.
    """
    chol = cholesky_or_none(covariances)
    if chol is None:
        raise np.linalg.LinAlgError("not positive definite")
    return np.swapaxes(inv_lower_triangular(chol), -1, -2)


def _precisions_cholesky_variances(variances: np.ndarray) -> np.ndarray:
    if not np.all(variances > 0.0) or not np.all(np.isfinite(variances)):
        raise np.linalg.LinAlgError("non-positive variance")
    return 1.0 / np.sqrt(variances)


def not_positive_definite_components(covariances: np.ndarray, covariance_type: str) -> list[int]:
    """Indices of components whose covariance is not positive definite (error path only)."""
    if covariance_type in ("diag", "spherical"):
        bad = ~np.all(np.reshape(covariances > 0.0, (covariances.shape[0], -1)), axis=1)
        return [int(i) for i in np.flatnonzero(bad)]
    stack = covariances[None] if covariance_type == "tied" else covariances
    return [i for i in range(stack.shape[0]) if cholesky_or_none(stack[i]) is None]


# ---------------------------------------------------------------------------
# Per covariance type: small plain functions, dispatched through KERNELS.
#
# The E-step works on chunks of rows in a *feature-major* layout: a chunk's differences
# x − μ_k are stored as ``diffs`` of shape (k, width, rows), one row per feature. Every
# elementwise pass then runs along a long contiguous axis (rows), where a (k, rows, d)
# layout would make numpy loop over inner runs of only d elements, and the matrix
# products are plain GEMMs on (d, rows) panels. ``diffs`` is filled once per chunk and
# used for the Mahalanobis distances and for the moments; ``work`` is a second buffer of
# the same shape for GEMM outputs, weighted copies and squares.

# Below this many features, Σ (w r D) Dᵀ as a GEMM against a weighted copy is about twice
# as fast as numpy's syrk path for √(w r) D (√(w r) D)ᵀ on OpenBLAS (tiny output, long inner
# dimension); from about 35 features syrk wins because it does half the flops. Measured.
_SYRK_MIN_FEATURES = 36


def _scratch_width_matrix(d: int) -> int:
    # [x − μ_k ; 1]: the trailing row of ones makes one product yield sq, sum and nk.
    return d + 1


def _scratch_width_vector(d: int) -> int:
    # x − μ_k in ``diffs`` and (x − μ_k)² in ``work``: two separate buffers, because a ufunc
    # writing one view of a buffer from another view of it makes numpy copy the input first
    return d


def _fill_matrix(diffs: np.ndarray, work: np.ndarray, XT: np.ndarray, means: np.ndarray) -> None:
    d = XT.shape[0]
    np.subtract(XT[None, :, :], means[:, :, None], out=diffs[:, :d])
    diffs[:, d] = 1.0


def _fill_vector(diffs: np.ndarray, work: np.ndarray, XT: np.ndarray, means: np.ndarray) -> None:
    np.subtract(XT[None, :, :], means[:, :, None], out=diffs)
    np.square(diffs, out=work)


# ``prepare`` turns precisions_cholesky into what ``half_mahalanobis`` multiplies by; the
# factor ½ of log N is folded in here (√½ on a Cholesky factor, ½ on a squared one) so the
# chunk loop saves a pass over the (k, rows) distances.


def _prepare_full(prec_chol: np.ndarray) -> np.ndarray:
    # √½ Pᵀ, contiguous: the left factor of a GEMM on (d, rows) panels
    return np.ascontiguousarray(np.swapaxes(prec_chol, -1, -2)) * math.sqrt(0.5)


def _prepare_tied(prec_chol: np.ndarray) -> np.ndarray:
    return _prepare_full(prec_chol[None])


def _prepare_squared(prec_chol: np.ndarray) -> np.ndarray:
    return 0.5 * np.square(prec_chol)  # ½ diagonal precisions (k, d), or (k,) for spherical


def _half_mahalanobis_matrix(diffs: np.ndarray, work: np.ndarray, prepared: np.ndarray) -> np.ndarray:
    # ½‖(x − μ_k) P_k‖² = squared column norms of √½ P_kᵀ (x − μ_k): one GEMM per component
    # (batched in C); einsum's fused multiply-add reduction beats square-then-sum.
    d = prepared.shape[-1]
    whitened = np.matmul(prepared, diffs[:, :d], out=work[:, :d])
    return np.einsum("kdm,kdm->km", whitened, whitened)


def _half_mahalanobis_diag(diffs: np.ndarray, work: np.ndarray, prepared: np.ndarray) -> np.ndarray:
    return np.matmul(prepared[:, None, :], work)[:, 0, :]  # Σ_j ½ p_kj² (x_j − μ_kj)²


def _half_mahalanobis_spherical(diffs: np.ndarray, work: np.ndarray, prepared: np.ndarray) -> np.ndarray:
    return work.sum(axis=1) * prepared[:, None]


def _moments_matrix(diffs: np.ndarray, work: np.ndarray, wr: np.ndarray, sums: np.ndarray, sq: np.ndarray) -> None:
    # gram_k = [D;1] diag(w r_k) [D;1]ᵀ holds Σ w r D Dᵀ (sq) and Σ w r D (sum) in one product.
    d = sums.shape[1]
    if d < _SYRK_MIN_FEATURES:
        weighted = np.multiply(diffs, wr[:, None, :], out=work)
        gram = np.matmul(weighted, np.swapaxes(diffs, 1, 2))
    else:
        # the differences are not needed any more: scale them by √(w r) in place, then
        # S Sᵀ on one buffer is numpy's syrk path (half the flops of a GEMM)
        diffs *= np.sqrt(wr)[:, None, :]
        gram = np.matmul(diffs, np.swapaxes(diffs, 1, 2))
    sq += gram[:, :d, :d]
    sums += gram[:, :d, d]


def _moments_vector(diffs: np.ndarray, work: np.ndarray, wr: np.ndarray, sums: np.ndarray, sq: np.ndarray) -> None:
    # batched gemv: Σ w r (x − μ_k) and Σ w r (x − μ_k)²
    sums += np.matmul(diffs, wr[:, :, None])[:, :, 0]
    sq += np.matmul(work, wr[:, :, None])[:, :, 0]


def shifted_moments(
    nk: np.ndarray, sums: np.ndarray, sq: np.ndarray, old: np.ndarray, new: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sum, sq) of the same weighted rows taken around ``new`` (k, d) instead of ``old`` (k, d).

    With c = old − new: Σ w r (x − new) = sum + nk c and Σ w r (x − new)(x − new)ᵀ = sq + sum cᵀ
    + c sumᵀ + nk c cᵀ (the diagonal only for ``sq`` of shape (k, d)). Exact algebra: the
    responsibilities are those of the E-step that took them, only the origin moves.
    """
    c = np.asarray(old, dtype=np.float64) - np.asarray(new, dtype=np.float64)
    moved_sums = sums + nk[:, None] * c
    if sq.ndim == 3:
        cross = sums[:, :, None] * c[:, None, :]
        moved_sq = sq + cross + np.swapaxes(cross, 1, 2) + nk[:, None, None] * c[:, :, None] * c[:, None, :]
    else:
        moved_sq = sq + 2.0 * c * sums + nk[:, None] * np.square(c)
    return moved_sums, moved_sq


def add_to_variances(covariances: np.ndarray, value: float, covariance_type: str) -> np.ndarray:
    """Covariances (shape by type) with ``value`` added to every variance (a new array)."""
    if covariance_type in ("full", "tied"):
        d = covariances.shape[-1]
        covariances = np.array(covariances, dtype=np.float64)
        covariances[..., np.arange(d), np.arange(d)] += value
        return covariances
    return covariances + value


def _covariance_full(nk: np.ndarray, delta: np.ndarray, sq: np.ndarray, reg: float) -> np.ndarray:
    cov = sq / nk[:, None, None] - delta[:, :, None] * delta[:, None, :]
    # the small-d GEMM path gives sq symmetric only up to rounding; make it exact
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    d = cov.shape[-1]
    cov[:, np.arange(d), np.arange(d)] += reg
    return cov


def _covariance_tied(nk: np.ndarray, delta: np.ndarray, sq: np.ndarray, reg: float) -> np.ndarray:
    # Pooled scatter around each component's new mean: Σ_k (sq_k − nk δ_k δ_kᵀ) / Σ nk.
    scatter = sq.sum(axis=0) - np.einsum("k,ki,kj->ij", nk, delta, delta)
    cov = scatter / nk.sum()
    cov = 0.5 * (cov + cov.T)
    cov[np.diag_indices_from(cov)] += reg
    return cov


def _covariance_diag(nk: np.ndarray, delta: np.ndarray, sq: np.ndarray, reg: float) -> np.ndarray:
    return sq / nk[:, None] - np.square(delta) + reg


def _covariance_spherical(nk: np.ndarray, delta: np.ndarray, sq: np.ndarray, reg: float) -> np.ndarray:
    return _covariance_diag(nk, delta, sq, reg).mean(axis=1)


def _log_det_full(prec_chol: np.ndarray, d: int) -> np.ndarray:
    # P is triangular: log det P is the sum of the logs of its diagonal
    return np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)).sum(axis=-1)


def _log_det_tied(prec_chol: np.ndarray, d: int) -> np.ndarray:
    return np.log(np.diagonal(prec_chol)).sum()


def _log_det_diag(prec_chol: np.ndarray, d: int) -> np.ndarray:
    return np.log(prec_chol).sum(axis=1)


def _log_det_spherical(prec_chol: np.ndarray, d: int) -> np.ndarray:
    return d * np.log(prec_chol)


def _set_component_full(cov: np.ndarray, j: int, sample_cov: np.ndarray, reg: float) -> None:
    cov[j] = sample_cov + reg * np.eye(sample_cov.shape[0])


def _set_component_tied(cov: np.ndarray, j: int, sample_cov: np.ndarray, reg: float) -> None:
    pass  # one covariance shared by all components: a re-seeded component keeps it


def _set_component_diag(cov: np.ndarray, j: int, sample_cov: np.ndarray, reg: float) -> None:
    cov[j] = np.diagonal(sample_cov) + reg


def _set_component_spherical(cov: np.ndarray, j: int, sample_cov: np.ndarray, reg: float) -> None:
    cov[j] = np.diagonal(sample_cov).mean() + reg


@dataclass(frozen=True)
class Kernel:
    """The small functions one covariance type is made of."""

    cov_shape: Callable[[int, int], tuple[int, ...]]
    sq_shape: Callable[[int, int], tuple[int, ...]]
    scratch_width: Callable[[int], int]
    fill: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
    prepare: Callable[[np.ndarray], np.ndarray]
    half_mahalanobis: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    moments: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
    covariance: Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
    precisions_cholesky: Callable[[np.ndarray], np.ndarray]
    log_det: Callable[[np.ndarray, int], np.ndarray]
    set_component: Callable[[np.ndarray, int, np.ndarray, float], None]
    n_cov_parameters: Callable[[int, int], int]


KERNELS: dict[str, Kernel] = {
    "full": Kernel(
        cov_shape=lambda k, d: (k, d, d),
        sq_shape=lambda k, d: (k, d, d),
        scratch_width=_scratch_width_matrix,
        fill=_fill_matrix,
        prepare=_prepare_full,
        half_mahalanobis=_half_mahalanobis_matrix,
        moments=_moments_matrix,
        covariance=_covariance_full,
        precisions_cholesky=_precisions_cholesky_matrices,
        log_det=_log_det_full,
        set_component=_set_component_full,
        n_cov_parameters=lambda k, d: k * d * (d + 1) // 2,
    ),
    "tied": Kernel(
        cov_shape=lambda k, d: (d, d),
        sq_shape=lambda k, d: (k, d, d),
        scratch_width=_scratch_width_matrix,
        fill=_fill_matrix,
        prepare=_prepare_tied,
        half_mahalanobis=_half_mahalanobis_matrix,
        moments=_moments_matrix,
        covariance=_covariance_tied,
        precisions_cholesky=_precisions_cholesky_matrices,
        log_det=_log_det_tied,
        set_component=_set_component_tied,
        n_cov_parameters=lambda k, d: d * (d + 1) // 2,
    ),
    "diag": Kernel(
        cov_shape=lambda k, d: (k, d),
        sq_shape=lambda k, d: (k, d),
        scratch_width=_scratch_width_vector,
        fill=_fill_vector,
        prepare=_prepare_squared,
        half_mahalanobis=_half_mahalanobis_diag,
        moments=_moments_vector,
        covariance=_covariance_diag,
        precisions_cholesky=_precisions_cholesky_variances,
        log_det=_log_det_diag,
        set_component=_set_component_diag,
        n_cov_parameters=lambda k, d: k * d,
    ),
    "spherical": Kernel(
        cov_shape=lambda k, d: (k,),
        sq_shape=lambda k, d: (k, d),
        scratch_width=_scratch_width_vector,
        fill=_fill_vector,
        prepare=_prepare_squared,
        half_mahalanobis=_half_mahalanobis_spherical,
        moments=_moments_vector,
        covariance=_covariance_spherical,
        precisions_cholesky=_precisions_cholesky_variances,
        log_det=_log_det_spherical,
        set_component=_set_component_spherical,
        n_cov_parameters=lambda k, d: k,
    ),
}


def normalize_log_prob(log_prob: np.ndarray) -> np.ndarray:
    """Turn (k, rows) joint log-probabilities into responsibilities, in place.

    Returns the (rows,) log-normalizers log Σ_k exp(log_prob[k]) (logsumexp over k).
    """
    peak = log_prob.max(axis=0)
    log_prob -= peak
    np.exp(log_prob, out=log_prob)
    total = log_prob.sum(axis=0)
    log_prob /= total
    return peak + np.log(total)


def chunks(kernel: Kernel, X: np.ndarray, means: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (start, stop, diffs, work) over row chunks of X (n, d), ``diffs`` filled around ``means`` (k, d).

    ``diffs`` and ``work`` are (k, width, rows) views of two scratch buffers reused by
    every chunk; the chunk size keeps them cache-resident (see _SCRATCH_BYTES).
    """
    k = means.shape[0]
    n, d = X.shape
    width = kernel.scratch_width(d)
    chunk = min(n, max(_MIN_CHUNK_ROWS, _SCRATCH_BYTES // (8 * k * width)))
    if chunk == 0:
        return
    XT = np.ascontiguousarray(X.T)  # one transposed copy: chunks become (d, rows) panels
    diffs_buf = np.empty((k, width, chunk))
    work_buf = np.empty((k, width, chunk))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        diffs, work = diffs_buf[:, :, : stop - start], work_buf[:, :, : stop - start]
        kernel.fill(diffs, work, XT[:, start:stop], means)
        yield start, stop, diffs, work


def ill_defined_covariance(model: str, bad: list[int], covariance_type: str, unit: str = "component") -> ModelError:
    """The error of an M-step whose covariance is not positive definite (scikit-learn's advice).

    ``model`` names what was fitted ("Gaussian mixture"), ``bad`` the failing components
    (from :func:`not_positive_definite_components`), ``unit`` what a component is called.
    """
    if covariance_type == "tied":
        who = "the tied covariance has an"
    elif len(bad) == 1:
        who = f"{unit} {bad[0]} has an"
    else:
        who = f"{unit}s {bad} have an"
    return ModelError(
        f"Fitting the {model} failed: {who} ill-defined empirical covariance: increase regCovar, or decrease the "
        f"number of {unit}s, or scale the data (a {unit} may have collapsed onto one point or a lower-dimensional "
        "subspace)"
    )


def log0(values: np.ndarray) -> np.ndarray:
    """np.log without the divide-by-zero warning: log 0 = −inf (probabilities may be exactly 0)."""
    with np.errstate(divide="ignore"):
        return np.log(values)
