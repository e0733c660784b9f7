"""The protocol every model family implements, and the block of rows it works on.

The Spark engine knows only this module; it never imports a family. A family is a
small frozen dataclass holding its hyperparameters (so it pickles cheaply to the
executors) whose methods are pure numpy functions of a block and parameters.

Parameters are a plain ``dict[str, np.ndarray]``: that is what the engine
broadcasts, checkpoints (without pickle) and hands back to the API layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from em_spark.stats import WEIGHT, Stats

__all__ = [
    "DEAD_FRACTION",
    "Block",
    "Draws",
    "EMFamily",
    "FamilyBase",
    "ImputingFamily",
    "MStepResult",
    "ModelError",
    "Params",
    "check_count",
    "check_k",
    "dense_row",
    "family_config",
    "sparse_rows",
]

#: A component (state) whose share of the total weight falls below this has lost its mass.
#: components of a model when none is given (estimators and job configs)
DEFAULT_K = 2
DEAD_FRACTION = 1e-10

Params = dict  # dict[str, np.ndarray]; kept as a plain dict so it serializes without pickle


class ModelError(ValueError):
    """A model cannot be fitted or used as asked; the message says what to change."""


def family_config(family: Any) -> dict[str, Any]:
    """A family's JSON-able hyperparameters: its name and every dataclass field (tuples as lists).

    Families are frozen dataclasses whose fields are exactly their hyperparameters, so this is
    both what a checkpoint compares on resume and what rebuilds the family when a model loads.
    A field named in the family's ``added_fields`` (one added after checkpoints and models were
    already written) is left out while it holds its default, so those still resume and load as
    they are (a missing field rebuilds at its default).
    """
    added = getattr(family, "added_fields", ())
    values = {
        f.name: getattr(family, f.name)
        for f in fields(family)
        if not (f.name in added and getattr(family, f.name) == f.default)
    }
    return {"name": family.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}


def check_count(n: Any, what: str) -> int:
    """``n`` as a non-negative int, or a ModelError naming ``what``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ModelError(f"{what} must be a non-negative integer, got {n!r}")
    return int(n)


def check_k(k: Any, what: str = "components") -> int:
    """``k`` as a positive int, or a ModelError naming what k counts."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ModelError(f"k must be a positive integer (the number of {what}), got {k!r}")
    return int(k)


@dataclass(frozen=True)
class Block:
    """A block of rows, the unit of work of the E-step.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), float64 or float32, finite (NaN where missing
        values are modelled); or, for families that accept sparse blocks (``accepts_sparse``), a
        ``scipy.sparse.csr_array`` of that shape and dtype with sorted indices and no duplicates
        (a *sparse block*: memory proportional to the non-zeros; see :func:`sparse_rows`).
        float32 (the load's ``dtype="float32"``) is a storage precision only: it halves memory
        and disk, but every family widens each value to float64 before any arithmetic (the
        Gaussian kernels chunk by chunk, the others per block), so the
        statistics are float64 and equal those of the float32-rounded data computed in
        float64. Truly float32 arithmetic would lose ~7 digits in sums over millions of rows.
    weight : ndarray of shape (n_rows,), float64, non-negative, or None for unit weights
        (for sequences: one weight per observation; families use the first of each sequence)
    lengths : ndarray of shape (n_sequences,), int64, or None
        For sequence families (HMMs): ``X`` holds the observations of consecutive sequences,
        ``lengths`` how many each has. A sequence is never split across blocks.
    labels : ndarray of shape (n_rows,), int64, or None
        Known components for semi-supervised EM; -1 where unknown.
    """

    X: np.ndarray
    weight: np.ndarray | None = None
    lengths: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if sp.issparse(self.X) and not isinstance(self.X, sp.csr_array):
            raise ValueError(f"a sparse Block.X must be a scipy.sparse.csr_array, got {type(self.X).__name__}")
        if self.X.ndim != 2:
            raise ValueError(f"Block.X must be 2-D (n_rows, n_features), got shape {self.X.shape}")
        n = self.X.shape[0]
        if self.weight is not None and self.weight.shape != (n,):
            raise ValueError(f"Block.weight must have shape ({n},), got {self.weight.shape}")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"Block.labels must have shape ({n},), got {self.labels.shape}")
        if self.lengths is not None and int(np.sum(self.lengths)) != n:
            raise ValueError(f"Block.lengths must sum to the {n} rows of X, got {int(np.sum(self.lengths))}")

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def is_sparse(self) -> bool:
        """X is a ``scipy.sparse.csr_array`` (a sparse block), not a dense ndarray."""
        return isinstance(self.X, sp.csr_array)

    @property
    def n_stored(self) -> int:
        """Values X holds: its non-zeros for a sparse block, n_rows x n_features for a dense one."""
        return int(self.X.nnz) if isinstance(self.X, sp.csr_array) else int(self.X.size)

    def weights_or_ones(self) -> np.ndarray:
        """(n_rows,) sample weights, ones when none were given."""
        return np.ones(self.n_rows) if self.weight is None else self.weight

    def take(self, rows: np.ndarray) -> Block:
        """The sub-block of the given row indices (or boolean mask); not for sequence blocks."""
        if self.lengths is not None:
            raise ValueError("cannot take rows of a sequence block: that would split sequences")
        if self.is_sparse:  # (row indices, whichever the scipy version's sparse-array indexing rules)
            mask_or_index = np.asarray(rows)
            X = self.X[np.flatnonzero(mask_or_index) if mask_or_index.dtype == bool else mask_or_index, :]
        else:
            X = self.X[rows]
        return Block(
            X,
            None if self.weight is None else self.weight[rows],
            labels=None if self.labels is None else self.labels[rows],
        )

    @staticmethod
    def concat(blocks: list[Block], n_features: int) -> Block:
        """Rows (and sequences) of all blocks in order; an empty (0, n_features) block for an empty list."""
        if not blocks:
            return Block(np.empty((0, n_features)))
        kinds = {b.is_sparse for b in blocks}
        if len(kinds) > 1:
            raise ValueError("cannot concatenate sparse blocks with dense blocks: a fit's blocks are all one kind")
        X: Any
        if kinds == {True}:
            X = sparse_rows(sp.vstack([b.X for b in blocks], format="csr"))
        else:
            X = np.concatenate([b.X for b in blocks])
        weight = None
        if any(b.weight is not None for b in blocks):
            weight = np.concatenate([b.weights_or_ones() for b in blocks])
        lengths = None
        if any(b.lengths is not None for b in blocks):
            if not all(b.lengths is not None for b in blocks):
                raise ValueError("cannot concatenate sequence blocks with row blocks")
            lengths = np.concatenate([b.lengths for b in blocks])
        labels = None
        if any(b.labels is not None for b in blocks):
            labels = np.concatenate([b.labels if b.labels is not None else np.full(b.n_rows, -1) for b in blocks])
        return Block(X, weight, lengths, labels)


@dataclass(frozen=True)
class Draws:
    """Rows (or whole sequences) drawn from a model by :meth:`EMFamily.draw`.

    Attributes
    ----------
    X : ndarray (n_rows, n_features), float64: the rows, or the steps of consecutive sequences
    components : ndarray (n_rows,), int64: the component of each row (the hidden state of each step)
    lengths : ndarray (n_sequences,), int64, for sequence families (None for rows)
    """

    X: np.ndarray
    components: np.ndarray
    lengths: np.ndarray | None = None


def sparse_rows(X: Any) -> sp.csr_array:
    """``X`` (any scipy sparse matrix or array) as a sparse block's X: a ``csr_array`` with sorted
    indices and no duplicates, int32 indices (a block holds fewer than 2**31 non-zeros)."""
    X = sp.csr_array(X)
    if not X.has_canonical_format:
        X = X.copy()  # sorting in place would touch the caller's arrays
        X.sum_duplicates()  # (also sorts the indices)
    if X.indices.dtype != np.int32 or X.indptr.dtype != np.int32:
        if X.nnz >= 2**31 or X.shape[1] >= 2**31:
            raise ValueError(f"a sparse block holds at most 2**31 - 1 non-zeros and columns, got {X.nnz}, {X.shape}")
        X = sp.csr_array((X.data, X.indices.astype(np.int32), X.indptr.astype(np.int32)), shape=X.shape)
    return X


def dense_row(X: Any, i: int) -> np.ndarray:
    """Row ``i`` of X (an ndarray, or a sparse block's CSR array) as a dense (n_features,) vector."""
    return X[[i], :].toarray()[0] if sp.issparse(X) else X[i]


@dataclass
class MStepResult:
    """What an M-step returns: new parameters and what it had to repair, for the log."""

    params: Params
    events: list[str] = field(default_factory=list)


@runtime_checkable
class EMFamily(Protocol):
    """One family of latent-variable models, seen by the engine.

    All methods are pure: they never mutate their arguments, and given the same
    inputs (including the generator's state) return bit-identical results.
    """

    # Read-only properties: a family is a frozen dataclass, and some of these are class variables.
    @property
    def name(self) -> str:
        """Short stable name, stored with checkpoints and models ("gaussian", ...)."""

    @property
    def k(self) -> int:
        """Number of mixture components / hidden states."""

    @property
    def sequential(self) -> bool:
        """The data are sequences: blocks carry ``lengths`` and hold whole sequences, and the
        loader reads one sequence per row (never splitting one across blocks)."""

    @property
    def accepts_sparse(self) -> bool:
        """The family's methods accept sparse blocks (``Block.is_sparse``: X a CSR array) as well as
        dense ones, with memory proportional to the non-zeros. The loader then reads a Vector
        features column without densifying it, and every block of such a fit is sparse."""

    @property
    def needs_counts(self) -> bool:
        """Every value of ``X`` must be a non-negative integer count (multinomial rows, word counts):
        the loader counts the rows that are not and refuses them, naming the column, before
        iteration 1; scoring gives them null outputs."""

    @property
    def models_missing(self) -> bool:
        """``X`` may hold NaN for entries to be modelled as missing (the loader then keeps them
        instead of refusing the row)."""

    @property
    def supports_labels(self) -> bool:
        """``Block.labels`` (semi-supervised EM) are honoured; the loader refuses a label column otherwise."""

    @property
    def supports_impute(self) -> bool:
        """The family has ``impute(block, params) -> {"imputed": (n, d), "std": (n, d)}``, filling
        NaN entries by their conditional expectation (an optional capability, declared here so
        callers never probe for the method)."""

    @property
    def component_weights_name(self) -> str:
        """The public name of what :meth:`component_weights` returns ("weights"; HMMs
        "startProb"): the label of the component shares in metrics and the report."""

    @property
    def summary_params(self) -> tuple[str, ...]:
        """Public parameters indexed by component that a fit summary prints per component."""

    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters; two families with equal config fit identically."""

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """Initial parameters from a bounded sample of the data (held on the driver)."""

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Full parameters from user-facing arrays (an ``initialModel``); validates them."""

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """The user-facing arrays (for the Gaussian: weights, means, covariances)."""

    def e_step(self, block: Block, params: Params) -> Stats:
        """Sufficient statistics of one block, including ``loglik``, ``weight``, ``count``.

        Must accept an empty block (returning zero statistics) and be additive:
        ``e_step(a + b) == e_step(a) + e_step(b)`` up to rounding, for any split.
        """

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """New parameters from the summed statistics.

        ``params`` are the parameters the statistics were computed under; ``sample``
        and ``rng`` are there to re-seed a component that lost all its mass.
        """

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """``stats``, taken by an E-step under ``old``, laid out as an E-step under ``new`` lays
        them out (the same responsibilities; only a frame such as the Gaussian's per-component
        shift moves), so that they add to statistics taken under ``new``. Exact."""

    def relabel_stats(self, stats: Stats, order: np.ndarray) -> Stats:
        """Statistics with components reordered as :meth:`relabel` reorders the parameters."""

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per-row outputs: ``log_resp`` (n, k) log-responsibilities and ``loglik`` (n,)."""

    def n_parameters(self, params: Params) -> int:
        """Number of free parameters, for BIC and AIC (:mod:`em_spark.models.criteria`)."""

    def component_weights(self, params: Params) -> np.ndarray:
        """(k,) each component's share, for logs and metrics: mixing weights (HMMs: startprob)."""

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        """Parameters with components reordered: new component j is old component ``order[j]``."""

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) dissimilarities, entry [i, j] between component i of ``a`` and j of ``b``
        (0 for identical components), for matching components across fits."""

    def progress(self, params: Params) -> dict[str, float]:
        """A few numbers worth a glance in the per-iteration log line, e.g. ``minWeight``."""

    def log_prior(self, params: Params) -> float:
        """The log prior density (up to a constant) whose MAP estimate the M-step is; 0 for maximum
        likelihood. EM never decreases ``loglik + log_prior``: accelerated EM's safeguard compares that."""

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """The free parameters in coordinates where every finite value is feasible (log-weights,
        log-variances, Cholesky factors with log diagonals: :mod:`em_spark.models.reparam`),
        for accelerated EM's extrapolation (``em_spark.engine.acceleration``)."""

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        """Full parameters from :meth:`to_unconstrained` coordinates; ``params`` (a feasible point
        of the same fit) supplies what is not free (e.g. fixed weights). Raises ModelError when
        ``free`` maps to no usable parameters."""

    def draw(
        self, params: Params, n: int, rng: np.random.Generator, length: int | None = None, trials: Any = None
    ) -> Draws:
        """``n`` rows drawn from the model with their components (sequence families: ``n``
        sequences of ``length`` steps with their state paths). ``trials``: the row totals of
        count vectors that the model conditions on (a multinomial mixture), one int or (n,).
        A ModelError names an argument the family does not take or a model that cannot draw."""


class ImputingFamily(EMFamily, Protocol):
    """A family whose ``supports_impute`` is true: it has ``impute``."""

    def impute(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """``imputed`` (n, d): the NaN entries filled by their conditional expectation; ``std`` (n, d)."""


class FamilyBase:
    """What every family repeats, written once: its config, the relabel permutation check,
    the dead-component threshold and the "no weight" / "empty sample" errors.

    Families are frozen dataclasses deriving from this (it has no fields of its own).
    """

    name: ClassVar[str]
    k: int
    #: optional capabilities, declared (see :class:`EMFamily`)
    supports_impute: ClassVar[bool] = False
    accepts_sparse: ClassVar[bool] = False
    needs_counts: ClassVar[bool] = False
    component_weights_name: ClassVar[str] = "weights"
    summary_params: ClassVar[tuple[str, ...]] = ("weights",)

    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters, including the family name."""
        return family_config(self)

    def component_weights(self, params: Params) -> np.ndarray:
        """(k,) the mixing weights."""
        return params["weights"]

    def log_prior(self, params: Params) -> float:
        """0: maximum likelihood (families with a prior override this)."""
        return 0.0

    def move_stats(self, stats: Stats, old: Params, new: Params) -> Stats:
        """``stats`` unchanged: counts and responsibilities do not depend on a frame (families
        whose statistics are taken around the parameters, e.g. the Gaussian's means, override it)."""
        return stats

    def relabel_stats(self, stats: Stats, order: np.ndarray) -> Stats:
        """Every per-component array (first axis of length k) in ``order``; totals unchanged.
        Families with other per-component axes (an HMM's transition counts) override it."""
        order = self._permutation(order)
        return Stats(
            {name: value[order] if value.ndim and value.shape[0] == self.k else value for name, value in stats.items()}
        )

    def draw(
        self, params: Params, n: int, rng: np.random.Generator, length: int | None = None, trials: Any = None
    ) -> Draws:
        """A mixture's draw: each row's component from the mixing weights, then its row from
        that component (:meth:`_draw_rows`, the family's). Sequence families override this."""
        n = check_count(n, "n (the number of rows to draw)")
        if length is not None:
            raise ModelError(f"length applies to sequence families (HMMs); a {self.name} mixture draws rows")
        weights = np.asarray(self.component_weights(params), dtype=np.float64)
        components = rng.choice(self.k, size=n, p=weights / weights.sum()).astype(np.int64)
        return Draws(self._draw_rows(params, components, rng, trials), components)

    def _draw_rows(self, params: Params, components: np.ndarray, rng: np.random.Generator, trials: Any) -> np.ndarray:
        """(n, d) one row from each row's component (n,). Mixture families implement it."""
        raise ModelError(f"the {self.name} family cannot draw rows")

    @staticmethod
    def _no_trials(trials: Any, what: str) -> None:
        """The error of ``trials`` given to a family whose rows are not count vectors of a fixed total."""
        if trials is not None:
            raise ModelError(f"trials applies to multinomial count rows; {what} draws its rows without it")

    def _permutation(self, order: Any) -> np.ndarray:
        """``order`` as an array, or a ModelError unless it is a permutation of 0..k-1."""
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(self.k)):
            raise ModelError(f"relabel needs a permutation of 0..{self.k - 1}, got {order.tolist()}")
        return order

    @staticmethod
    def _lost_mass(mass: np.ndarray, total: float) -> np.ndarray:
        """Indices of the components whose mass is below DEAD_FRACTION of ``total``."""
        return np.flatnonzero(mass < DEAD_FRACTION * total)

    @staticmethod
    def _no_weight(what: str, units: str = "rows") -> ModelError:
        """The error of an M-step given statistics of no data (``what``: "a Gaussian mixture")."""
        return ModelError(
            f"the statistics carry no weight (no {units}, or all their weights are 0); "
            f"cannot estimate {what} from no data"
        )

    def _require_weight(self, stats: Stats, what: str) -> float:
        """The statistics' total weight, or the "no weight" error when it is not positive."""
        total_weight = float(stats[WEIGHT])
        if not total_weight > 0:
            raise self._no_weight(what)
        return total_weight

    @staticmethod
    def _require_sample(sample: Block) -> None:
        """The "empty sample" error of an initialization from no rows."""
        if sample.n_rows == 0:
            raise ModelError("cannot initialize from an empty sample; is the data empty?")
