"""Mixtures of categorical features and of count vectors: the ``categorical`` family.

Two kinds of rows, chosen by the ``kind`` hyperparameter:

``"categorical"``
    Each of the d columns is an independent categorical feature holding an integer code
    0..c_f-1 (stored as float64 in the block, like every feature). A component is a
    product of d categorical distributions, p(x | z=j) = Π_f θ_j[f, x_f]. A Bernoulli
    feature is the two-category case (a 0/1 column with c_f = 2).
``"multinomial"``
    Each row is a vector of non-negative integer counts over C categories (the C
    columns): word counts of a document, purchase counts of a customer. A component is
    one categorical distribution θ_j over the C categories and the row's likelihood is
    the multinomial Mult(x | n, θ_j) with n = Σ_c x_c, *including* its coefficient::

        log p(x | z=j) = log n! − Σ_c log x_c! + Σ_c x_c log θ_jc

    The coefficient does not depend on the parameters, so it changes neither the
    responsibilities nor the fit, but with it ``loglik`` is a true log-likelihood (and
    comparable with other count models' log-likelihoods, e.g. for BIC).

Parameters are a plain dict of float64 arrays::

    weights        (k,)     mixing weights
    probs          (k, T)   category probabilities; for "categorical" the d features'
                            distributions side by side, feature f in the columns
                            offsets[f]:offsets[f+1] (offsets = 0, cumsum(n_categories)),
                            T = Σ_f c_f; for "multinomial" T = C
    n_categories   (d,)     categorical: c_f per feature; multinomial: (C,). Stored in the
                            params (also when the config gives it) so scoring needs nothing
                            else; offsets are derived from it.

The sufficient statistics of a block (sample weights w multiply everything)::

    nk       (k,)     Σ_i w_i r_ij
    counts   (k, T)   categorical: Σ_i w_i r_ij [x_if = c] at column offsets[f] + c
                      multinomial: Σ_i w_i r_ij x_ic
    loglik, weight, count   ()

and the M-step is the MAP estimate under a symmetric Dirichlet(1 + smoothing) prior on
every categorical distribution: θ_j = (counts_j + smoothing) normalized per feature;
weights = nk / Σ nk (unless ``fix_weights``; there is no prior on the weights). EM then
never decreases the penalized objective loglik + smoothing · Σ log θ; ``loglik`` itself
is guaranteed non-decreasing only with ``smoothing=0`` (in practice it rises too).

Sparse blocks (``Block.is_sparse``, CSR count rows such as a ``CountVectorizer`` column) are
accepted for ``"multinomial"``: every pass works on the non-zeros only (``X @ log θᵀ``,
``Xᵀ @ resp``, the coefficient from the stored counts), so memory follows the non-zeros, and
the statistics equal those of the dense rows up to summation order (1e-12 relative).

Semi-supervised EM: rows of ``Block.labels`` >= 0 have a known component. Their
responsibility is one-hot on the label, and their contribution to ``loglik`` is the
complete-data log-likelihood log w_label + log p(x | label); EM then maximizes
Σ_unlabelled log Σ_j w_j p(x|j) + Σ_labelled log w_c p(x|c) (Nigam et al. 2000), which it
never decreases. See :mod:`em_spark.models.labels`, shared with the Gaussian family.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from em_spark.models.base import Block, FamilyBase, ModelError, MStepResult, Params, check_k, dense_row, sparse_rows
from em_spark.models.kernels import log0
from em_spark.models.labels import check_labels, clamp_to_labels, log_posterior
from em_spark.models.priors import check_concentration, dirichlet_log_prior, map_weights
from em_spark.models.reparam import softmax, softmax_blocks
from em_spark.models.validation import check_parameter, check_present, check_row_totals, is_number
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = [
    "INIT_MODES",
    "KINDS",
    "CategoricalMixtureFamily",
    "check_labels",
    "clamp_to_labels",
    "log_posterior",
]

KINDS = ("categorical", "multinomial")
INIT_MODES = ("random", "k-means++")

_LLOYD_MAX_ITER = 20
# inferring n_categories as max code + 1 refuses to allocate more columns than this
_MAX_INFERRED_CATEGORIES = 1_000_000
# values per row chunk of the elementwise data passes (checks, multinomial coefficient):
# 512 KiB of float64, so their temporaries stay in cache
_CHUNK_ELEMENTS = 1 << 16


# ---------------------------------------------------------------------------
# Small numeric helpers


def _offsets(n_categories: np.ndarray) -> np.ndarray:
    """(d + 1,) int64 column offsets of the features in a (k, T) probs array."""
    return np.concatenate([[0], np.cumsum(n_categories)]).astype(np.int64)


def _block_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(..., T) -> (..., T): each entry replaced by the sum over its feature's columns."""
    sums = np.add.reduceat(values, offsets[:-1], axis=-1)  # (..., d); every feature has >= 1 column
    return np.repeat(sums, np.diff(offsets), axis=-1)


def _normalize_blocks(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Divide by the per-feature sums; a feature summing to 0 stays 0 (callers repair it)."""
    sums = _block_sums(values, offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = values / sums
    return np.where(sums > 0, out, 0.0)


def _row_chunks(X: np.ndarray) -> Iterator[slice]:
    """Slices of rows of X holding about _CHUNK_ELEMENTS values each (at least one row)."""
    n, width = X.shape
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _rows_where(X: Any, mask: np.ndarray) -> Any:
    """The rows of X (dense or CSR) where ``mask`` (n,) is true."""
    return X[np.flatnonzero(mask), :] if sp.issparse(X) else X[mask]


def _weighted_column_sums(w: np.ndarray, X: Any) -> np.ndarray:
    """(T,) w @ X for dense or CSR X."""
    return np.asarray(X.T @ w) if sp.issparse(X) else w @ X


def _distinct_rows(X: Any) -> int:
    """The number of distinct rows of X (dense, or CSR in canonical form)."""
    if not sp.issparse(X):
        return int(np.unique(X, axis=0).shape[0])
    bounds = X.indptr
    return len({(X.indices[a:b].tobytes(), X.data[a:b].tobytes()) for a, b in pairwise(bounds)})


# ---------------------------------------------------------------------------
# The family


@dataclass(frozen=True)
class CategoricalMixtureFamily(FamilyBase):
    """Mixture of ``k`` products of categorical distributions, or of ``k`` multinomials.

    Parameters
    ----------
    k : int
        Number of mixture components.
    n_categories : tuple of int, or None
        "categorical": the number of categories c_f of each feature (codes 0..c_f-1).
        "multinomial": ``(C,)``, the number of count columns. None: inferred by
        :meth:`initialize` from the sample (max code + 1 per feature; the number of
        columns for counts) and stored in the params. A code that the sample did not
        contain but the full data does then fails the E-step with a message saying to
        give ``n_categories``. An int is accepted as a one-element tuple.
    kind : {"categorical", "multinomial"}
        What a row is; see the module docstring.
    smoothing : float
        Dirichlet pseudo-count added to every category count in the M-step (a MAP
        estimate), so a category a component never saw keeps a positive probability and
        new data with it scores finite. 0 gives maximum likelihood; probabilities of
        exactly 0 are then handled (log 0 = -inf, never 0 · -inf = NaN).
    init_mode : {"random", "k-means++"}
        "random": each component's distribution of each feature drawn from a flat
        Dirichlet, uniform weights. "k-means++": k-means++ seeding and Lloyd iterations on
        the one-hot codes (categorical) or the row-normalized counts (multinomial), then
        the M-step of the hard assignment. Either way, components with labelled rows in
        the sample start from their labelled rows.
    fix_weights : bool
        Keep the mixing weights at their initial values (uniform, or an initialModel's)
        instead of re-estimating them; they then do not count as free parameters. The
        textbook two-coins EM (Do & Batzoglou 2008) is this case.
    weights_prior : float
        Dirichlet concentration of the mixing weights (> 0): 1 (default) is flat, maximum
        likelihood; above 1 pulls the weights towards equal, below 1 lets components empty.
    """

    name: ClassVar[str] = "categorical"
    sequential: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = True
    #: came later: left out of config() at its default (checkpoints written before resume)
    added_fields: ClassVar[tuple[str, ...]] = ("weights_prior",)

    k: int
    n_categories: tuple[int, ...] | None = None
    kind: str = "categorical"
    smoothing: float = 1.0
    init_mode: str = "random"
    fix_weights: bool = False
    weights_prior: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "components"))
        if self.kind not in KINDS:
            raise ModelError(
                f"kind must be one of {list(KINDS)} ('categorical': one integer code per column; "
                f"'multinomial': each row a vector of counts), got {self.kind!r}"
            )
        object.__setattr__(self, "n_categories", self._checked_n_categories(self.n_categories))
        if not is_number(self.smoothing) or not math.isfinite(self.smoothing) or self.smoothing < 0:
            raise ModelError(
                f"smoothing must be a finite non-negative number (a pseudo-count added to every "
                f"category), got {self.smoothing!r}; use the default 1.0 if unsure"
            )
        object.__setattr__(self, "smoothing", float(self.smoothing))
        if self.init_mode not in INIT_MODES:
            raise ModelError(f"initMode must be one of {list(INIT_MODES)}, got {self.init_mode!r}")
        if not isinstance(self.fix_weights, (bool, np.bool_)):
            raise ModelError(f"fix_weights must be true or false, got {self.fix_weights!r}")
        object.__setattr__(self, "fix_weights", bool(self.fix_weights))
        object.__setattr__(self, "weights_prior", check_concentration(self.weights_prior, "weightsPrior"))
        if self.fix_weights and self.weights_prior != 1.0:
            raise ModelError(
                "weightsPrior has no effect with fixWeights (the weights are not estimated); drop one of them"
            )

    def _checked_n_categories(self, value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        if is_number(value):
            value = (value,)
        try:
            items = list(value)
        except TypeError:
            raise ModelError(f"n_categories must be a list of positive integers or None, got {value!r}") from None
        if not items:
            raise ModelError("n_categories must not be empty (one entry per feature), or None to infer it")
        out = []
        for f, c in enumerate(items):
            ok = is_number(c) and math.isfinite(c) and float(c) == int(c) and int(c) >= 1
            if not ok:
                raise ModelError(f"n_categories[{f}] must be a positive integer (the number of categories), got {c!r}")
            out.append(int(c))
        if self.kind == "multinomial" and len(out) != 1:
            raise ModelError(f"for kind='multinomial' n_categories is (C,), the number of count columns; got {out}")
        return tuple(out)

    @property
    def accepts_sparse(self) -> bool:  # type: ignore[override]  # per kind, where FamilyBase has a class variable
        """Count rows (``"multinomial"``) may come as sparse blocks; categorical codes are dense."""
        return self.kind == "multinomial"

    @property
    def needs_counts(self) -> bool:  # type: ignore[override]  # (as accepts_sparse)
        """``"multinomial"`` rows are counts: the loader refuses negative or non-integer values."""
        return self.kind == "multinomial"

    # -- protocol: description ------------------------------------------------

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """Copies of ``weights`` (k,), ``probs`` (k, T) and ``n_categories`` (d,)."""
        return {name: np.array(params[name], dtype=np.float64) for name in ("weights", "probs", "n_categories")}

    def feature_probs(self, params: Params) -> list[np.ndarray]:
        """Per feature f, the (k, c_f) category probabilities (views into ``probs``)."""
        offsets = _offsets(self._n_categories(params))
        return [params["probs"][:, a:b] for a, b in pairwise(offsets)]

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Bhattacharyya distances between the components of two fitted models.

        Entry [i, j] compares component i of ``a`` with component j of ``b``: the sum over
        features of −log Σ_c √(θ_a[i, f, c] θ_b[j, f, c]) (the Bhattacharyya distance of the
        product distributions; for "multinomial", of the per-count distributions). It is 0
        for identical components, symmetric, and finite (capped at about 690 per feature)
        when the supports do not overlap.
        """
        n_a, n_b = self._n_categories(params_a), self._n_categories(params_b)
        if not np.array_equal(n_a, n_b):
            raise ModelError(
                f"cannot compare models with different categories: n_categories {n_a.tolist()} vs {n_b.tolist()}"
            )
        offsets = _offsets(n_a)
        root_a = np.sqrt(np.asarray(params_a["probs"], dtype=np.float64))
        root_b = np.sqrt(np.asarray(params_b["probs"], dtype=np.float64))
        out = np.zeros((root_a.shape[0], root_b.shape[0]))
        for a, b in pairwise(offsets):
            coefficient = root_a[:, a:b] @ root_b[:, a:b].T
            out -= np.log(np.clip(coefficient, 1e-300, 1.0))
        return out

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        """Parameters with components reordered: new component j is old component ``order[j]``."""
        order = self._permutation(order)
        return {
            name: value[order].copy() if name in ("weights", "probs") else np.array(value, copy=True)
            for name, value in params.items()
        }

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest component weight: a component heading for collapse shows here first."""
        return {"minWeight": float(np.min(params["weights"]))}

    def n_parameters(self, params: Params) -> int:
        """Free parameters: (k − 1) + k Σ_f (c_f − 1); without the k − 1 when ``fix_weights``."""
        n_categories = self._n_categories(params)
        per_component = int(np.sum(n_categories - 1))
        return (0 if self.fix_weights else self.k - 1) + self.k * per_component

    # -- protocol: parameters from the user -------------------------------------

    def log_prior(self, params: Params) -> float:
        """smoothing · Σ log θ (the Dirichlet(1 + smoothing) prior of the M-step) plus the weights'
        Dirichlet log prior (0 for both flat)."""
        smoothed = float(self.smoothing * np.sum(log0(params["probs"]))) if self.smoothing > 0 else 0.0
        return smoothed + dirichlet_log_prior(params["weights"], self.weights_prior)

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """Log-weights (k,) (omitted with ``fix_weights``) and log-probabilities (k, T)."""
        free = {"log_probs": log0(params["probs"])}
        if not self.fix_weights:
            free["log_weights"] = log0(params["weights"])
        return free

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """Weights by softmax (or ``params``' fixed ones), probabilities by a softmax per feature."""
        n_categories = self._n_categories(params)
        weights = np.array(params["weights"]) if self.fix_weights else softmax(free["log_weights"])
        probs = softmax_blocks(np.asarray(free["log_probs"]), _offsets(n_categories))
        return {"weights": weights, "probs": probs, "n_categories": n_categories.astype(np.float64)}

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from an ``initialModel``'s ``weights``, ``probs`` and ``n_categories``.

        ``n_categories`` may be left out when the config gives it, for "multinomial"
        (it is the number of columns) and for a single categorical feature (it is the
        width of ``probs``). Weights and each feature's probabilities must be finite,
        non-negative and sum to 1 within 1e-6 (they are renormalized).
        """
        k, d = self.k, int(n_features)
        check_present(arrays, ("weights", "probs"), optional=("n_categories",))
        weights = check_parameter(arrays["weights"], "weights")
        probs = check_parameter(arrays["probs"], "probs")
        n_categories = self._public_n_categories(arrays, d, probs)
        offsets = _offsets(n_categories)
        what = f"k={k} and n_categories {n_categories.tolist()}"
        weights = check_parameter(weights, "weights", shape=(k,), what=what, min_value=0.0, simplex=True)
        if self.fix_weights and np.any(weights == 0):
            raise ModelError(
                "with fix_weights an initialModel weight of 0 would switch its component off for good; "
                f"give every component a positive weight, got {weights.tolist()}"
            )
        probs = check_parameter(probs, "probs", shape=(k, int(offsets[-1])), what=what, min_value=0.0, simplex=offsets)
        return {"weights": weights, "probs": probs, "n_categories": n_categories.astype(np.float64)}

    def _public_n_categories(self, arrays: Mapping[str, np.ndarray], d: int, probs: np.ndarray) -> np.ndarray:
        given = None
        if arrays.get("n_categories") is not None:
            raw = np.asarray(arrays["n_categories"], dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)) or np.any(raw < 1):
                raise ModelError(f"initialModel n_categories must be positive integers, got {raw.tolist()}")
            given = raw.astype(np.int64)
        candidates = [
            ("the config's n_categories", None if self.n_categories is None else np.array(self.n_categories)),
            ("initialModel n_categories", given),
        ]
        if self.kind == "multinomial":
            candidates.append(("the number of count columns", np.array([d])))
        elif d == 1 and probs.ndim == 2:
            candidates.append(("the width of probs", np.array([probs.shape[1]])))
        known = [(what, value) for what, value in candidates if value is not None]
        if not known:
            raise ModelError(
                f"initialModel needs n_categories (the number of categories of each of the {d} features) "
                "when the config does not give it"
            )
        what, n_categories = known[0]
        for other, value in known[1:]:
            if not np.array_equal(value, n_categories):
                raise ModelError(f"{what} {n_categories.tolist()} disagrees with {other} {value.tolist()}")
        expected = 1 if self.kind == "multinomial" else d
        if n_categories.shape != (expected,):
            raise ModelError(f"n_categories {n_categories.tolist()} does not match the data's {d} feature column(s)")
        if self.kind == "multinomial" and int(n_categories[0]) != d:
            raise ModelError(f"n_categories {n_categories.tolist()} does not match the data's {d} count columns")
        return n_categories.astype(np.int64)

    # -- data checks ---------------------------------------------------------------------

    def _n_categories(self, params: Params) -> np.ndarray:
        return np.asarray(params["n_categories"]).astype(np.int64)

    def _check_block(self, block: Block, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """(X as float64, n_categories) after checking the block's width and values."""
        n_categories = self._n_categories(params)
        expected = int(n_categories[0]) if self.kind == "multinomial" else n_categories.size
        if block.n_features != expected:
            what = "count columns" if self.kind == "multinomial" else "categorical features"
            raise ModelError(f"data has {block.n_features} features but the model has {expected} {what}")
        X = self._as_float64(block)
        self._check_values(X, n_categories)
        return X, n_categories

    def _as_float64(self, block: Block) -> Any:
        """The block's X in float64: an ndarray, or (multinomial only) a CSR array."""
        if not block.is_sparse:
            return np.asarray(block.X, dtype=np.float64)
        if self.kind != "multinomial":
            raise ModelError(
                "sparse rows are count vectors: use kind='multinomial', or give categorical codes as a dense "
                "column (an array, numeric columns, or dense Vectors)"
            )
        return block.X if block.X.dtype == np.float64 else block.X.astype(np.float64)

    def _check_values(self, X: Any, n_categories: np.ndarray) -> None:
        """Raise a ModelError naming the first column and value that is not a valid code/count."""
        if sp.issparse(X):  # multinomial counts: only the stored values can be bad
            data = X.data
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(~((data >= 0) & (data < np.inf) & (data == np.floor(data))))
            if bad.size:
                self._count_error(int(X.indices[bad[0]]), float(data[bad[0]]))
            return
        upper = np.inf if self.kind == "multinomial" else n_categories.astype(np.float64)
        # NaN fails every comparison, ±inf fails the bounds; by cache-sized row chunks, so the
        # temporaries never go to memory (counts can be wide)
        for rows in _row_chunks(X):
            chunk = X[rows]
            valid = (chunk >= 0) & (chunk < upper) & (chunk == np.floor(chunk))
            if not valid.all():
                break
        else:
            return
        bad_rows, bad_cols = np.nonzero(~valid)
        col, value = int(bad_cols[0]), float(chunk[bad_rows[0], bad_cols[0]])
        if self.kind == "multinomial":
            self._count_error(col, value)
        if not np.isfinite(n_categories[col]):  # inferring n_categories: any non-negative integer goes
            raise ModelError(
                f"categorical feature column {col} holds {value!r}, which is not a category code: codes "
                "must be non-negative integers"
            )
        c = int(n_categories[col])
        hint = ""
        if self.n_categories is None and np.isfinite(value) and value == int(value) and value >= c:
            hint = (
                f"; the number of categories ({c}) was inferred from the initialization sample, which "
                "did not contain this code: give n_categories explicitly"
            )
        raise ModelError(
            f"categorical feature column {col} holds {value!r}, which is not a category code: it must be "
            f"an integer 0..{c - 1} (n_categories[{col}] = {c}){hint}"
        )

    @staticmethod
    def _count_error(col: int, value: float) -> None:
        raise ModelError(
            f"count column {col} holds {value!r}; multinomial rows must be finite non-negative "
            "integer counts (scale rows with sample weights instead of fractional counts)"
        )

    # -- protocol: E-step and scoring --------------------------------------------

    def _log_components(self, X: Any, n_categories: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """(n, k) log p(x_i | z=j), without the multinomial coefficient (X dense, or CSR counts)."""
        n = X.shape[0]
        log_probs = log0(probs)
        if self.kind == "multinomial":
            zero = probs <= 0
            if not zero.any():
                return np.asarray(X @ log_probs.T)
            # 0 · log 0 = 0: multiply by finite logs, then mark rows using an impossible category
            out = np.asarray(X @ np.where(zero, 0.0, log_probs).T)
            used = (X > 0).astype(np.float64)
            impossible = np.asarray(used @ zero.T.astype(np.float64)) > 0
            out[impossible] = -np.inf
            return out
        log_probs_t = np.ascontiguousarray(log_probs.T)  # (T, k): a gather picks whole rows
        offsets = _offsets(n_categories)
        out = np.zeros((n, self.k))
        for f in range(n_categories.size):
            out += log_probs_t[X[:, f].astype(np.int64) + offsets[f]]
        return out

    def _log_coefficient(self, X: Any) -> np.ndarray | None:
        """(n,) log n! − Σ_c log x_c! of multinomial rows (None for categorical rows)."""
        if self.kind != "multinomial":
            return None
        if sp.issparse(X):  # from the stored counts, in the dense path's order (row by row, columns ascending)
            data = X.data
            coefficient = gammaln(np.asarray(X.sum(axis=1)).reshape(-1) + 1.0)
            large = np.flatnonzero(data >= 2)  # log 0! = log 1! = 0: only larger counts contribute
            if large.size:
                entry_row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
                coefficient -= np.bincount(entry_row[large], weights=gammaln(data[large] + 1.0), minlength=X.shape[0])
            return coefficient
        coefficient = gammaln(X.sum(axis=1) + 1.0)
        for rows in _row_chunks(X):
            chunk = X[rows]
            at, cols = np.nonzero(chunk >= 2)  # log 0! = log 1! = 0: only larger counts contribute
            if at.size:
                coefficient[rows] -= np.bincount(
                    at, weights=gammaln(chunk[at, cols] + 1.0), minlength=rows.stop - rows.start
                )
        return coefficient

    def _posterior(self, block: Block, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X, n_categories, log_resp (n, k), loglik (n,)) of a checked block, labels applied."""
        X, n_categories = self._check_block(block, params)
        labels = check_labels(block.labels, self.k)
        log_joint = self._log_components(X, n_categories, params["probs"]) + log0(params["weights"])
        log_resp, loglik = log_posterior(log_joint)
        log_resp, loglik = clamp_to_labels(log_joint, log_resp, loglik, labels)
        coefficient = self._log_coefficient(X)
        if coefficient is not None:
            loglik = loglik + coefficient
        return X, n_categories, log_resp, loglik

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of one block (see the module docstring for the fields).

        Rows with ``block.labels`` >= 0 count fully for their labelled component.
        Raises a :class:`ModelError` for an invalid code or count, and for a row of
        positive weight that has probability 0 under the model (possible only with
        ``smoothing=0`` and zeros in the initial probabilities or weights).
        """
        X, n_categories, log_resp, loglik = self._posterior(block, params)
        n = X.shape[0]
        w = None if block.weight is None else np.asarray(block.weight, dtype=np.float64)
        impossible = ~np.isfinite(loglik)
        if impossible.any():
            if w is None or np.any(w[impossible] > 0):
                raise ModelError(
                    "a row has probability 0 under every component it may belong to (a category or weight "
                    "of probability exactly 0); use smoothing > 0, or an initialModel without zeros"
                )
            # rows of weight 0 contribute nothing anyway
            log_resp = np.where(impossible[:, None], -np.inf, log_resp)
            loglik = np.where(impossible, 0.0, loglik)
        resp = np.exp(log_resp)
        wr = resp if w is None else resp * w[:, None]
        return Stats(
            {
                "nk": wr.sum(axis=0),
                "counts": self._counts(X, n_categories, wr),
                LOGLIK: np.float64(loglik.sum() if w is None else loglik @ w),
                WEIGHT: np.float64(n if w is None else w.sum()),
                COUNT: np.float64(n),
            }
        )

    def _counts(self, X: np.ndarray, n_categories: np.ndarray, wr: np.ndarray) -> np.ndarray:
        """(k, T) weighted category counts of rows X under weighted responsibilities wr (n, k)."""
        k = self.k
        if self.kind == "multinomial":
            # measured faster than wr.T @ X for long blocks; for CSR X a (T, k) sparse-dense product
            return np.asarray(X.T @ wr).T
        offsets = _offsets(n_categories)
        counts = np.empty((k, int(offsets[-1])))
        component = np.arange(k)
        for f, c in enumerate(n_categories):
            flat = X[:, f].astype(np.int64)[:, None] * k + component  # (n, k): code-major
            tally = np.bincount(flat.ravel(), weights=wr.ravel(), minlength=int(c) * k)
            counts[:, offsets[f] : offsets[f + 1]] = tally.reshape(int(c), k).T
        return counts

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """Kind "categorical": each feature's code from its component's distribution (inverse CDF of one
        uniform per entry). "multinomial": ``trials`` counts spread over the categories."""
        probs = np.asarray(params["probs"], dtype=np.float64)
        n = components.size
        if self.kind == "multinomial":
            if trials is None:
                raise ModelError(
                    "a multinomial mixture models each row's counts given the row's total: pass trials= "
                    "(one total for every row, or one per row), e.g. the totals of the rows it was fitted on"
                )
            totals = check_row_totals(trials, n, "row totals")
            return rng.multinomial(totals, probs[components]).astype(np.float64)
        self._no_trials(trials, "a categorical mixture of codes")
        offsets = _offsets(self._n_categories(params))
        uniform = rng.random((n, offsets.size - 1))
        X = np.empty((n, offsets.size - 1))
        for f, (a, b) in enumerate(pairwise(offsets)):
            cumulative = np.cumsum(probs[:, a:b], axis=1)[components]  # (n, c_f)
            X[:, f] = np.minimum((uniform[:, f, None] >= cumulative).sum(axis=1), b - a - 1)
        return X

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-row ``log_resp`` (n, k) and ``loglik`` (n,) (unweighted).

        ``loglik`` is log p(x) under the mixture (for labelled rows: log w_c + log p(x | c),
        as in the E-step). A row impossible under every component (only with zero
        probabilities, i.e. ``smoothing=0``) gets loglik -inf and the mixing weights as
        its responsibilities.
        """
        _, _, log_resp, loglik = self._posterior(block, params)
        impossible = ~np.isfinite(loglik)
        if impossible.any():
            log_resp = log_resp.copy()
            log_resp[impossible] = log0(params["weights"])
        return {"log_resp": log_resp, "loglik": loglik}

    # -- protocol: M-step ----------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """New parameters from summed statistics: the MAP estimate with ``smoothing`` pseudo-counts.

        A component whose weight share fell below 1e-10 is re-seeded from the ``sample``
        row the current model explains worst (half that row's categories, half the
        sample's overall frequencies), with weight 1/len(sample); an event says so.
        With ``fix_weights`` the weights stay as they are.
        """
        total_weight = self._require_weight(stats, "a categorical mixture")
        n_categories = self._n_categories(params)
        offsets = _offsets(n_categories)
        nk = np.asarray(stats["nk"], dtype=np.float64)
        counts = np.asarray(stats["counts"], dtype=np.float64)
        if self.fix_weights:
            weights = np.array(params["weights"], dtype=np.float64)
        else:
            weights = map_weights(nk, self.weights_prior)
        probs = _normalize_blocks(counts + self.smoothing, offsets)
        # only with smoothing 0: a component without counts of a feature (e.g. only empty
        # documents) keeps its previous probabilities there
        empty = _block_sums(counts + self.smoothing, offsets) <= 0
        probs[empty] = np.asarray(params["probs"])[empty]
        dead = self._lost_mass(nk, total_weight)
        events = []
        if dead.size:
            seeds = self._reseed_distributions(sample, params, n_categories, dead)
            for j in dead:
                events.append(
                    f"component {int(j)} lost its mass (weight {float(f'{nk[j] / total_weight:.3g}')}); re-seeded "
                    "at the sample row with the lowest likelihood"
                )
            probs[dead] = seeds
            if not self.fix_weights:
                weights[dead] = 1.0 / sample.n_rows
                weights /= weights.sum()
        return MStepResult(
            {"weights": weights, "probs": probs, "n_categories": n_categories.astype(np.float64)}, events
        )

    def _embed_rows(self, X: Any, n_categories: np.ndarray) -> Any:
        """(n, T) per-row category distributions: one-hot codes, or counts / row total (0 for empty
        rows); CSR for CSR counts."""
        if self.kind == "multinomial" and sp.issparse(X):  # the dense division, on the stored counts
            totals = np.asarray(X.sum(axis=1)).reshape(-1)[np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))]
            data = np.divide(X.data, totals, out=np.zeros_like(X.data), where=totals > 0)
            return sparse_rows(sp.csr_array((data, X.indices.copy(), X.indptr.copy()), shape=X.shape))
        if self.kind == "multinomial":
            totals = X.sum(axis=1, keepdims=True)
            return np.divide(X, totals, out=np.zeros_like(X), where=totals > 0)
        offsets = _offsets(n_categories)
        out = np.zeros((X.shape[0], int(offsets[-1])))
        rows = np.arange(X.shape[0])
        for f in range(n_categories.size):
            out[rows, X[:, f].astype(np.int64) + offsets[f]] = 1.0
        return out

    def _sample_frequencies(self, X: np.ndarray, w: np.ndarray, n_categories: np.ndarray) -> np.ndarray:
        """(T,) the sample's overall category frequencies per feature (uniform where it has none)."""
        offsets = _offsets(n_categories)
        if not w.sum() > 0:
            w = np.ones(X.shape[0])
        if self.kind == "multinomial":
            totals = _weighted_column_sums(w, X)
        else:
            totals = w @ self._embed_rows(X, n_categories)
        uniform = np.repeat(1.0 / n_categories, n_categories)
        frequencies = _normalize_blocks(totals, offsets)
        empty = _block_sums(totals, offsets) <= 0
        return np.where(empty, uniform, frequencies)

    def _reseed_distributions(
        self, sample: Block, params: Params, n_categories: np.ndarray, dead: np.ndarray
    ) -> np.ndarray:
        """(len(dead), T) new distributions: the worst-explained distinct sample rows, half-blended
        with the sample's frequencies. Ties go to the lower row index; rows of weight 0 and empty
        count rows are skipped unless nothing else is left."""
        if sample.n_rows == 0:
            raise ModelError(
                f"components {dead.tolist()} lost their mass and there is no sample to re-seed them from; decrease k"
            )
        unlabelled = Block(sample.X, sample.weight)
        X, _ = self._check_block(unlabelled, params)
        w = np.asarray(sample.weights_or_ones(), dtype=np.float64)
        order = np.argsort(self.score(unlabelled, params)["loglik"], kind="stable")
        embedded = self._embed_rows(X, n_categories)
        row_mass = np.asarray(embedded.sum(axis=1)).reshape(-1)
        usable = (w[order] > 0) & (row_mass[order] > 0)
        candidates = order[usable] if usable.any() else order
        frequencies = self._sample_frequencies(X, w, n_categories)
        seeds: list[np.ndarray] = []
        taken: list[np.ndarray] = []
        for _ in dead:
            pick = next(
                (i for i in candidates if not any(np.array_equal(dense_row(embedded, i), t) for t in taken)),
                candidates[0],
            )
            taken.append(dense_row(embedded, pick))
            seeds.append(0.5 * dense_row(embedded, pick) + 0.5 * frequencies)
        return np.array(seeds)

    # -- protocol: initialization -----------------------------------------------------

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Initial parameters from a sample held on the driver.

        Resolves ``n_categories`` (the config's, or inferred from the sample), then seeds
        by ``init_mode`` (see the class docstring). A component with labelled rows of
        positive weight in the sample instead starts from those rows' counts plus
        ``smoothing`` plus one pseudo-row of the sample's frequencies, so that component
        ids follow the labels from the first iteration.
        """
        X = self._as_float64(sample)
        w = np.asarray(sample.weights_or_ones(), dtype=np.float64)
        self._require_sample(sample)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ModelError("the sample's weights must be finite, non-negative and not all 0")
        n_categories = self._sample_n_categories(X)
        params = {"n_categories": n_categories.astype(np.float64)}
        self._check_values(X, n_categories)
        k, offsets = self.k, _offsets(n_categories)
        if self.init_mode == "random":
            weights = np.full(k, 1.0 / k)
            probs = np.concatenate([rng.dirichlet(np.ones(int(c)), size=k) for c in n_categories], axis=1)
        else:
            weights, probs = self._initialize_kmeans(X, w, n_categories, rng)
        labels = check_labels(sample.labels, k)
        if labels is not None:
            frequencies = self._sample_frequencies(X, w, n_categories)
            embedded = self._embed_rows(X, n_categories) if self.kind == "categorical" else X
            for j in range(k):
                mine = (labels == j) & (w > 0)
                if mine.any():
                    counts = _weighted_column_sums(w[mine], _rows_where(embedded, mine)) + self.smoothing + frequencies
                    probs[j] = _normalize_blocks(counts, offsets)
        if self.fix_weights:
            weights = np.full(k, 1.0 / k)
        params.update(weights=weights, probs=probs)
        return {name: params[name] for name in ("weights", "probs", "n_categories")}

    def _sample_n_categories(self, X: Any) -> np.ndarray:
        d = X.shape[1]
        if self.kind == "multinomial":
            if self.n_categories is not None and self.n_categories[0] != d:
                raise ModelError(f"n_categories {list(self.n_categories)} does not match the data's {d} count columns")
            return np.array([d], dtype=np.int64)
        if self.n_categories is not None:
            if len(self.n_categories) != d:
                raise ModelError(
                    f"n_categories gives {len(self.n_categories)} features but the data has {d} feature columns"
                )
            return np.array(self.n_categories, dtype=np.int64)
        self._check_values(X, np.full(d, np.inf))  # codes must be non-negative integers
        inferred = (X.max(axis=0) + 1).astype(np.int64)
        if inferred.sum() > _MAX_INFERRED_CATEGORIES:
            f = int(np.argmax(inferred))
            raise ModelError(
                f"categorical feature column {f} holds code {int(inferred[f]) - 1}, so inferring n_categories "
                f"would give {int(inferred.sum())} categories in all; re-code the features to 0..c-1 or give "
                "n_categories explicitly"
            )
        return inferred

    def _initialize_kmeans(
        self, X: np.ndarray, w: np.ndarray, n_categories: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weights, probs) from k-means on the embedded rows, then the M-step of the hard assignment."""
        from em_spark.models.seeding import kmeans_plusplus, lloyd

        k, offsets = self.k, _offsets(n_categories)
        embedded = self._embed_rows(X, n_categories)
        distinct = _distinct_rows(_rows_where(embedded, w > 0))
        if distinct < k:
            raise ModelError(
                f"the sample has {distinct} distinct rows (of positive weight), fewer than k={k}; decrease k"
            )
        if sp.issparse(embedded):
            # k-means on the sparse rows themselves: centering would densify them (distances do not
            # depend on the origin; seeding works from the expanded distances, see models.seeding)
            origin = np.zeros(embedded.shape[1])
            centered = embedded
        else:
            origin = (w @ embedded) / w.sum()
            centered = embedded - origin
        centers = kmeans_plusplus(centered, w, k, rng)
        assignment, centers = lloyd(centered, w, centers, _LLOYD_MAX_ITER)
        wr = (assignment[:, None] == np.arange(k)) * w[:, None]
        nk = wr.sum(axis=0)
        counts = self._counts(X, n_categories, wr)
        probs = _normalize_blocks(counts + self.smoothing, offsets)
        frequencies = self._sample_frequencies(X, w, n_categories)
        for j in np.flatnonzero((nk <= 0) | (_block_sums(counts + self.smoothing, offsets) <= 0).any(axis=1)):
            # an empty cluster (or, with smoothing 0, one of only empty rows): its center, made a distribution
            center = np.clip(centers[j] + origin, 0.0, None)
            probs[j] = _normalize_blocks(0.5 * _normalize_blocks(center, offsets) + 0.5 * frequencies, offsets)
        weights = nk / nk.sum()
        empty = nk <= 0
        if empty.any():
            weights[empty] = 1.0 / X.shape[0]
            weights /= weights.sum()
        return weights, probs
