"""Latent Dirichlet allocation fitted by variational EM: the ``lda`` family.

The model of Blei, Ng and Jordan (2003) with the variational updates of Hoffman, Blei and
Bach (2010), as scikit-learn's ``LatentDirichletAllocation`` implements them. A row of a
block is a document: its word counts over a vocabulary of V words (the columns), dense
or a ``scipy.sparse.csr_array`` (n_docs, V). Parameters are a plain dict::

    lambda   (k, V)   variational Dirichlet parameters of the topics' word distributions
                      (scikit-learn's ``components_``; pyspark.ml's ``topicsMatrix`` is its
                      transpose, unnormalized, as pyspark.ml's online optimizer returns it)
    alpha    (k,)     doc concentration: the Dirichlet prior of each document's topic shares
    eta      ()       topic concentration: the symmetric Dirichlet prior of the topics

E-step (one block, in a map task). With E[log beta] = psi(lambda) - psi(lambda.sum(1)),
each document's gamma (its topics' variational Dirichlet) starts at 1 (scikit-learn's
``random_init=False``: the E-step is a pure function of the block and the parameters) and
iterates, for all documents of the block at once, over the non-zeros only::

    phinorm[d, w] = sum_j exp(E[log theta_dj]) exp(E[log beta_jw]) + eps
    gamma[d]      = alpha + exp(E[log theta_d]) * sum_w (x_dw / phinorm[d, w]) exp(E[log beta_.w])

until its mean absolute change is below ``mean_change_tol`` or ``max_doc_update_iter``
updates; a converged document is frozen, exactly as scikit-learn stops per document. The
statistics (sample weights w multiply every document's share)::

    sstats   (k, V)  sum_d w_d exp(E[log theta_d]) x_dw / phinorm[d, w], times exp(E[log beta])
    loglik   ()      the documents' part of the variational bound (the ELBO):
                     E[log p(x | theta, beta)] + E[log p(theta | alpha)] - E[log q(theta | gamma)]
    words    ()      sum_d w_d n_d, the (weighted) number of tokens: perplexity's denominator
    weight   ()      sum_d w_d;  count  (): documents

M-step (the driver): lambda = eta + sstats. ``log_prior`` is the topics' part of the bound,
E[log p(beta | eta)] - E[log q(beta | lambda)], so ``loglik + log_prior`` is scikit-learn's
``score`` (the full ELBO), which batch variational EM never decreases (up to the inexact
per-document updates). The engine's history records ``loglik / weight``, the documents'
part per document; its SQUAREM safeguard adds ``log_prior``. Online variational Bayes is
the engine's stepwise EM (``engine.online``): s_t = (1 - rho_t) s_{t-1} + rho_t (D / |S|)
s_hat with lambda_t = eta + s_t is Hoffman's lambda_t = (1 - rho_t) lambda_{t-1} + rho_t
(eta + (D / |S|) s_hat) from step 2 on; at step 1 the engine takes rho_1 = 1 where Hoffman
(and scikit-learn) blend with the random initial lambda.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln, logsumexp, psi

from em_spark.models.base import Block, Draws, FamilyBase, ModelError, MStepResult, Params, check_count, check_k
from em_spark.models.validation import check_parameter, check_present, check_row_totals
from em_spark.stats import COUNT, LOGLIK, WEIGHT, Stats

__all__ = ["WORDS", "LDAFamily", "dirichlet_expectation"]

#: the statistics' (weighted) token count
WORDS = "words"

# scikit-learn's initial lambda: Gamma(shape 100, scale 1/100) entries, mean 1, sd 0.1
_INIT_SHAPE = 100.0
# added to phinorm, as scikit-learn does (float64 machine epsilon)
_EPS = float(np.finfo(np.float64).eps)
# non-zeros x topics per chunk of documents: the E-step's (nnz, k) temporaries stay at 8 MiB each
# (documents are independent, so chunking changes no document's result)
_CHUNK_VALUES = 1 << 20


def dirichlet_expectation(a: np.ndarray) -> np.ndarray:
    """E[log x] under Dirichlet(a) per row: psi(a) - psi(a.sum(-1)), same shape as ``a``."""
    return psi(a) - psi(np.sum(a, axis=-1, keepdims=True))


def _positive(value: Any) -> bool:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class LDAFamily(FamilyBase):
    """LDA with ``k`` topics, fitted by variational EM (batch, or online through the engine).

    Parameters
    ----------
    k : int
        Number of topics.
    doc_concentration : float, tuple of k floats, or None
        alpha, the Dirichlet prior of each document's topic shares (> 0); None: 1/k
        (scikit-learn's and pyspark.ml online's default).
    topic_concentration : float or None
        eta, the symmetric Dirichlet prior of each topic's word distribution (> 0); None: 1/k.
    max_doc_update_iter : int
        Most updates of a document's gamma per E-step (scikit-learn's name and default).
    mean_change_tol : float
        A document's gamma has converged when its mean absolute change is below this.
    """

    name: ClassVar[str] = "lda"
    sequential: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False
    supports_labels: ClassVar[bool] = False
    accepts_sparse: ClassVar[bool] = True
    component_weights_name: ClassVar[str] = "topicWeights"
    summary_params: ClassVar[tuple[str, ...]] = ("topicWeights",)

    k: int
    doc_concentration: float | tuple[float, ...] | None = None
    topic_concentration: float | None = None
    max_doc_update_iter: int = 100
    mean_change_tol: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_k(self.k, "topics"))
        alpha = self.doc_concentration
        if alpha is not None:
            values = list(alpha) if isinstance(alpha, (list, tuple, np.ndarray)) else [alpha]
            if len(values) not in (1, self.k) or not all(_positive(v) for v in values):
                raise ModelError(
                    f"docConcentration must be a number > 0 or {self.k} numbers > 0 (one per topic), got {alpha!r}; "
                    f"leave it unset for 1/k = {1 / self.k:.4g}"
                )
            object.__setattr__(
                self, "doc_concentration", float(values[0]) if len(values) == 1 else tuple(float(v) for v in values)
            )
        eta = self.topic_concentration
        if eta is not None:
            if not _positive(eta):
                raise ModelError(
                    f"topicConcentration must be a number > 0, got {eta!r}; leave it unset for 1/k = {1 / self.k:.4g}"
                )
            object.__setattr__(self, "topic_concentration", float(eta))
        iters = self.max_doc_update_iter
        if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
            raise ModelError(f"maxDocIter must be an integer >= 1 (updates of a document per E-step), got {iters!r}")
        object.__setattr__(self, "max_doc_update_iter", int(iters))
        tol = self.mean_change_tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ModelError(f"meanChangeTol must be a finite number >= 0, got {tol!r}")
        object.__setattr__(self, "mean_change_tol", float(tol))

    # -- priors ----------------------------------------------------------------------------

    def _alpha(self) -> np.ndarray:
        alpha = self.doc_concentration
        if alpha is None:
            return np.full(self.k, 1.0 / self.k)
        return np.array(alpha, dtype=np.float64) if isinstance(alpha, tuple) else np.full(self.k, float(alpha))

    def _eta(self) -> float:
        return 1.0 / self.k if self.topic_concentration is None else float(self.topic_concentration)

    # -- data checks -----------------------------------------------------------------------

    def _counts(self, block: Block, params: Params) -> sp.csr_array:
        """The block's counts as a float64 CSR array (duplicates summed), after checking them."""
        vocabulary = int(params["lambda"].shape[1])
        if block.n_features != vocabulary:
            raise ModelError(
                f"the documents have {block.n_features} count columns but the model's vocabulary has {vocabulary} "
                "words; give count vectors over the vocabulary the model was fitted with (the same "
                "CountVectorizer / HashingTF)"
            )
        return self._checked_csr(block.X)

    @staticmethod
    def _checked_csr(X: Any) -> sp.csr_array:
        csr = sp.csr_array(X, dtype=np.float64, copy=True)
        csr.sum_duplicates()
        values = csr.data
        bad = ~(np.isfinite(values) & (values >= 0) & (values == np.floor(values)))
        if bad.any():
            at = int(np.argmax(bad))
            row = int(np.searchsorted(csr.indptr, at, side="right") - 1)
            raise ModelError(
                f"document {row} has count {float(values[at])!r} for word {int(csr.indices[at])}; LDA needs "
                "non-negative integer word counts (CountVectorizer or HashingTF output), not frequencies or TF-IDF"
            )
        empty = np.flatnonzero(csr.sum(axis=1) == 0)
        if empty.size:
            raise ModelError(
                f"{empty.size} document(s) have no words (all counts 0), the first is row {int(empty[0])}; "
                "drop empty documents before fitting or scoring"
            )
        return csr

    # -- the variational E-step --------------------------------------------------------------

    def _doc_topics(
        self, X: sp.csr_array, alpha: np.ndarray, exp_beta_t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gamma (n, k), exp(E[log theta]) (n, k), phinorm (nnz,)) for the documents of ``X``,
        given alpha (k,) and exp(E[log beta]).T (V, k).

        Every document is updated at once over the non-zeros; a document stops (is frozen)
        after the update whose mean absolute change of gamma is below ``mean_change_tol``.
        """
        n, k = X.shape[0], self.k
        lengths = np.diff(X.indptr)
        beta_entries = exp_beta_t[X.indices]  # (nnz, k): exp(E[log beta]) of each non-zero's word
        gamma = np.ones((n, k))
        exp_theta = np.exp(dirichlet_expectation(gamma))
        # The documents still running, compacted: their ids, non-zeros and state. A document that
        # converges leaves them, so an update costs its running documents' non-zeros only.
        ids, data, words, beta, sizes = np.arange(n), X.data, X.indices, beta_entries, lengths
        run_gamma, run_theta = gamma, exp_theta
        indptr = X.indptr
        for _ in range(self.max_doc_update_iter):
            # (np.repeat: each document's row once per non-zero, faster than a gather by row index)
            phinorm = np.einsum("ek,ek->e", np.repeat(run_theta, sizes, axis=0), beta) + _EPS
            ratio = sp.csr_array((data / phinorm, words, indptr), shape=(ids.size, X.shape[1]))
            new = run_theta * (ratio @ exp_beta_t) + alpha
            change = np.mean(np.abs(new - run_gamma), axis=1)
            run_gamma, run_theta = new, np.exp(dirichlet_expectation(new))
            done = change < self.mean_change_tol
            if done.any():
                gamma[ids[done]], exp_theta[ids[done]] = run_gamma[done], run_theta[done]
                keep = ~done
                if not keep.any():
                    break
                entries = np.repeat(keep, sizes)
                ids, data, words, beta, sizes = ids[keep], data[entries], words[entries], beta[entries], sizes[keep]
                run_gamma, run_theta = run_gamma[keep], run_theta[keep]
                indptr = np.concatenate([[0], np.cumsum(sizes)])
        else:
            gamma[ids], exp_theta[ids] = run_gamma, run_theta  # (those stopped by max_doc_update_iter)
        phinorm = np.einsum("ek,ek->e", np.repeat(exp_theta, lengths, axis=0), beta_entries) + _EPS
        return gamma, exp_theta, phinorm

    def _doc_bound(self, X: sp.csr_array, gamma: np.ndarray, alpha: np.ndarray, log_beta_t: np.ndarray) -> np.ndarray:
        """(n,) each document's part of the variational bound at ``gamma``, given alpha (k,) and
        E[log beta].T (V, k)."""
        log_theta = dirichlet_expectation(gamma)
        lengths = np.diff(X.indptr)
        rows = np.repeat(np.arange(X.shape[0]), lengths)
        words = logsumexp(
            np.repeat(log_theta, lengths, axis=0) + log_beta_t[X.indices], axis=1
        )  # (nnz,) log sum_j theta_j beta_jw
        bound = np.bincount(rows, weights=X.data * words, minlength=X.shape[0])
        bound += np.sum((alpha - gamma) * log_theta + gammaln(gamma) - gammaln(alpha), axis=1)
        bound += gammaln(alpha.sum()) - gammaln(gamma.sum(axis=1))
        return bound

    def e_step(self, block: Block, params: Params) -> Stats:
        """The block's statistics (see the module docstring); an empty block gives zeros."""
        k, vocabulary = params["lambda"].shape
        if block.n_rows == 0:
            zero = np.zeros(())
            return Stats({"sstats": np.zeros((k, vocabulary)), LOGLIK: zero, WORDS: zero, WEIGHT: zero, COUNT: zero})
        X = self._counts(block, params)
        alpha, log_beta_t, exp_beta_t = self._expectations(params)
        w = block.weights_or_ones().astype(np.float64)
        sstats_t = np.zeros((vocabulary, k))  # (V, k), times exp(E[log beta]) at the end
        bound = np.empty(X.shape[0])
        for rows in self._chunks(X):
            chunk = X[rows]
            gamma, exp_theta, phinorm = self._doc_topics(chunk, alpha, exp_beta_t)
            entry_rows = np.repeat(w[rows], np.diff(chunk.indptr))
            ratio = sp.csr_array((chunk.data * entry_rows / phinorm, chunk.indices, chunk.indptr), shape=chunk.shape)
            sstats_t += ratio.T @ exp_theta
            bound[rows] = self._doc_bound(chunk, gamma, alpha, log_beta_t)
        return Stats(
            {
                "sstats": np.ascontiguousarray((sstats_t * exp_beta_t).T),
                LOGLIK: np.float64(w @ bound),
                WORDS: np.float64(w @ np.asarray(X.sum(axis=1)).ravel()),
                WEIGHT: np.float64(w.sum()),
                COUNT: np.float64(X.shape[0]),
            }
        )

    def draw(
        self, params: Params, n: int, rng: np.random.Generator, length: int | None = None, trials: Any = None
    ) -> Draws:
        """``n`` documents from LDA's generative model under the fitted topics E[β] (lambda's rows
        normalized): θ_d ~ Dirichlet(alpha), then ``trials`` words (one total, or one per document)
        from θ_d β; each document's component is its main topic, argmax θ_d. Dense (n, V) counts."""
        n = check_count(n, "n (the number of documents to draw)")
        if length is not None:
            raise ModelError("length applies to sequence families (HMMs); LDA draws documents (give trials=)")
        if trials is None:
            raise ModelError("LDA draws documents of a given length: pass trials= (words per document, one or n)")
        totals = check_row_totals(trials, n, "words per document")
        lam = np.asarray(params["lambda"], dtype=np.float64)
        beta = lam / lam.sum(axis=1, keepdims=True)
        theta = rng.dirichlet(np.asarray(params["alpha"], dtype=np.float64), size=n)
        words = np.clip(theta @ beta, 0.0, None)
        words /= words.sum(axis=1, keepdims=True)
        counts = rng.multinomial(totals, words).astype(np.float64)
        return Draws(counts, np.argmax(theta, axis=1).astype(np.int64))

    def score(self, block: Block, params: Params) -> dict[str, np.ndarray]:
        """Per document: ``log_resp`` (n, k) the log of its topic distribution (gamma normalized),
        ``loglik`` (n,) its part of the variational bound, ``gamma`` (n, k)."""
        X = self._counts(block, params)
        alpha, log_beta_t, exp_beta_t = self._expectations(params)
        gamma, bound = np.empty((X.shape[0], self.k)), np.empty(X.shape[0])
        for rows in self._chunks(X):
            chunk = X[rows]
            gamma[rows] = self._doc_topics(chunk, alpha, exp_beta_t)[0]
            bound[rows] = self._doc_bound(chunk, gamma[rows], alpha, log_beta_t)
        log_resp = np.log(gamma) - np.log(gamma.sum(axis=1, keepdims=True))
        return {"log_resp": log_resp, "loglik": bound, "gamma": gamma}

    def _chunks(self, X: sp.csr_array) -> Iterator[slice]:
        """Slices of consecutive documents holding about ``_CHUNK_VALUES / k`` non-zeros each (at least one document)."""
        budget = max(1, _CHUNK_VALUES // self.k)
        n, start = X.shape[0], 0
        while start < n:
            stop = int(np.searchsorted(X.indptr, X.indptr[start] + budget, side="right")) - 1
            stop = min(n, max(stop, start + 1))
            yield slice(start, stop)
            start = stop

    @staticmethod
    def _expectations(params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(alpha (k,), E[log beta].T (V, k), exp(E[log beta]).T (V, k)), once per block."""
        # C order whatever the caller's layout: sums along rows then add in one order, so a resumed
        # fit (arrays read back from a checkpoint) computes bit for bit what the live one did
        lam = np.ascontiguousarray(params["lambda"], dtype=np.float64)
        log_beta_t = np.ascontiguousarray(dirichlet_expectation(lam).T)
        return np.asarray(params["alpha"], dtype=np.float64), log_beta_t, np.exp(log_beta_t)

    def log_prior(self, params: Params) -> float:
        """E[log p(beta | eta)] - E[log q(beta | lambda)]: the topics' part of the bound."""
        lam = np.ascontiguousarray(params["lambda"], dtype=np.float64)  # (C order: see _expectations)
        eta = float(params["eta"])
        k, vocabulary = lam.shape
        log_beta = dirichlet_expectation(lam)
        value = np.sum((eta - lam) * log_beta) + np.sum(gammaln(lam)) - lam.size * gammaln(eta)
        value += k * gammaln(eta * vocabulary) - np.sum(gammaln(lam.sum(axis=1)))
        return float(value)

    # -- M-step and initialization ---------------------------------------------------------

    def m_step(self, stats: Stats, params: Params, sample: Block, rng: np.random.Generator) -> MStepResult:
        """lambda = eta + sstats (batch variational EM; online VB when the engine blends sstats)."""
        self._require_weight(stats, "topics")
        eta = float(params["eta"])
        return MStepResult(
            {
                "lambda": np.ascontiguousarray(eta + np.asarray(stats["sstats"])),
                "alpha": np.array(params["alpha"]),
                "eta": np.float64(eta),
            }
        )

    def initialize(self, sample: Block, rng: np.random.Generator) -> Params:
        """lambda ~ Gamma(100, 1/100) per entry, as scikit-learn (V from the sample's width); the
        sample's counts are checked first, so bad counts fail before any data pass."""
        self._require_sample(sample)
        self._checked_csr(sample.X)
        lam = rng.gamma(_INIT_SHAPE, 1.0 / _INIT_SHAPE, size=(self.k, sample.n_features))
        return {"lambda": lam, "alpha": self._alpha(), "eta": np.float64(self._eta())}

    # -- parameters --------------------------------------------------------------------------

    def topics(self, params: Params) -> np.ndarray:
        """(k, V) the topics' word distributions: lambda normalized per topic (E[beta] under q)."""
        lam = np.asarray(params["lambda"], dtype=np.float64)
        return lam / lam.sum(axis=1, keepdims=True)

    def component_weights(self, params: Params) -> np.ndarray:
        """(k,) each topic's share of lambda's mass (its expected tokens plus its prior)."""
        mass = np.asarray(params["lambda"], dtype=np.float64).sum(axis=1)
        return mass / math.fsum(mass)  # (exactly rounded: a relabeled model gives the same shares)

    def public_params(self, params: Params) -> dict[str, np.ndarray]:
        """``lambda`` (k, V), ``topicWeights`` (k,), ``docConcentration`` (k,), ``topicConcentration`` ()."""
        return {
            "lambda": np.array(params["lambda"], dtype=np.float64),
            "topicWeights": self.component_weights(params),
            "docConcentration": np.array(params["alpha"], dtype=np.float64),
            "topicConcentration": np.array(params["eta"], dtype=np.float64),
        }

    def params_from_public(self, arrays: Mapping[str, np.ndarray], n_features: int) -> Params:
        """Parameters from an initialModel's ``lambda`` (k, n_features), entries > 0; the priors
        are this family's (docConcentration, topicConcentration), not the initial model's."""
        check_present(arrays, ("lambda",))
        what = f"k={self.k} topics and a vocabulary of {n_features} words"
        lam = check_parameter(arrays["lambda"], "lambda", shape=(self.k, int(n_features)), what=what)
        if not np.all(lam > 0):
            raise ModelError("initialModel lambda must be > 0 everywhere (Dirichlet parameters)")
        return {"lambda": lam, "alpha": self._alpha(), "eta": np.float64(self._eta())}

    def n_parameters(self, params: Params) -> int:
        """k (V - 1): the topics' word distributions."""
        k, vocabulary = params["lambda"].shape
        return int(k * (vocabulary - 1))

    def progress(self, params: Params) -> dict[str, float]:
        """The smallest topic's share of lambda's mass."""
        return {"minWeight": float(np.min(self.component_weights(params)))}

    def relabel(self, params: Params, order: np.ndarray) -> Params:
        order = self._permutation(order)
        return {
            "lambda": np.array(params["lambda"])[order],
            "alpha": np.array(params["alpha"])[order],
            "eta": np.array(params["eta"]),
        }

    def component_distances(self, params_a: Params, params_b: Params) -> np.ndarray:
        """(k, k) Hellinger distances between the topics' word distributions (0 identical, 1 disjoint)."""
        root_a, root_b = np.sqrt(self.topics(params_a)), np.sqrt(self.topics(params_b))
        if root_a.shape[1] != root_b.shape[1]:
            raise ModelError(
                f"cannot compare topics over vocabularies of {root_a.shape[1]} and {root_b.shape[1]} words"
            )
        out = np.empty((root_a.shape[0], root_b.shape[0]))
        for i, row in enumerate(root_a):  # (k, V) at a time, not (k, k, V)
            out[i] = np.sqrt(0.5 * np.sum((root_b - row) ** 2, axis=1))
        return out

    def to_unconstrained(self, params: Params) -> dict[str, np.ndarray]:
        """log lambda (k, V); the priors are fixed."""
        return {"log_lambda": np.log(np.asarray(params["lambda"], dtype=np.float64))}

    def from_unconstrained(self, free: Mapping[str, np.ndarray], params: Params) -> Params:
        lam = np.exp(np.asarray(free["log_lambda"], dtype=np.float64))
        if not np.all(np.isfinite(lam) & (lam > 0)):
            raise ModelError("lambda out of range (overflow or underflow of exp)")
        return {"lambda": lam, "alpha": np.array(params["alpha"]), "eta": np.array(params["eta"])}
