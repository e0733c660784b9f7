"""Semi-supervised EM: helpers shared by the families that honour ``Block.labels``.

Rows with a label >= 0 have a known component. Their responsibility is one-hot on the
label and their contribution to ``loglik`` is the complete-data log-likelihood
log w_label + log p(x | label); EM then maximizes
Σ_unlabelled log Σ_j w_j p(x|j) + Σ_labelled log w_c p(x|c) (Nigam et al. 2000), which it
never decreases. Nothing here knows about a particular family.
"""

from __future__ import annotations

import numpy as np

from em_spark.models.base import ModelError

__all__ = ["check_labels", "clamp_to_labels", "log_posterior"]


def check_labels(labels: np.ndarray | None, k: int) -> np.ndarray | None:
    """The block's labels as int64, or None when no row is labelled.

    Any negative label means "unknown" (the convention is -1); a label >= k raises a
    :class:`ModelError`. Returning None for an all-unknown block lets callers skip the
    labelled path entirely.
    """
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.size == 0:
        return None
    if not np.issubdtype(labels.dtype, np.integer):
        as_int = labels.astype(np.int64)
        if not np.array_equal(as_int, labels):
            bad = labels[as_int != labels][0]
            raise ModelError(f"labels must be integer component ids (or -1 for unknown), got {bad!r}")
        labels = as_int
    top = int(labels.max())
    if top < 0:
        return None
    if top >= k:
        raise ModelError(f"label {top} is not a component id: labels must be -1 (unknown) or 0..{k - 1} for k={k}")
    return labels.astype(np.int64, copy=False)


def log_posterior(log_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log_resp (n, k), loglik (n,)) from joint log-probabilities log w_j + log p(x_i | j) (n, k).

    ``loglik`` is the logsumexp over components, computed around each row's maximum. A row
    impossible under every component (all -inf) gets loglik -inf and log_resp all -inf
    (never NaN); callers decide what to do with such rows.
    """
    peak = log_joint.max(axis=1, keepdims=True)
    finite_peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        log_norm = np.log(np.exp(log_joint - finite_peak).sum(axis=1, keepdims=True)) + finite_peak
    safe_norm = np.where(np.isfinite(log_norm), log_norm, 0.0)
    return log_joint - safe_norm, log_norm[:, 0]


def clamp_to_labels(
    log_joint: np.ndarray, log_resp: np.ndarray, loglik: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Semi-supervised EM: make the responsibilities of labelled rows one-hot on their label.

    Parameters
    ----------
    log_joint : (n, k) log w_j + log p(x_i | z=j)
    log_resp, loglik : (n, k), (n,) the unsupervised posterior and per-row log-likelihood
    labels : (n,) int, negative = unknown, as returned by :func:`check_labels` (or None)

    Returns
    -------
    (log_resp, loglik), new arrays: for a row i with label c >= 0, log_resp[i] is 0 at c and
    -inf elsewhere, and loglik[i] = log_joint[i, c] = log w_c + log p(x_i | c), the
    complete-data log-likelihood of the row with its known component. Unlabelled rows
    are unchanged. With ``labels`` None the inputs are returned as they are.
    """
    if labels is None:
        return log_resp, loglik
    known = np.flatnonzero(labels >= 0)
    if known.size == 0:
        return log_resp, loglik
    log_resp = log_resp.copy()
    loglik = loglik.copy()
    which = labels[known]
    log_resp[known] = -np.inf
    log_resp[known, which] = 0.0
    loglik[known] = log_joint[known, which]
    return log_resp, loglik
