"""LDA's E-step kernel against scikit-learn's, from the same initial topics, on one core.

    python bench/bench_lda.py [--docs 20000] [--vocabulary 5000] [--k 20] [--length 100] [--iters 5]

A synthetic corpus drawn from an LDA model (``--docs`` documents of Poisson(``--length``) tokens
over ``--vocabulary`` words, ``--k`` sparse topics), as CSR. Both implementations run batch
variational EM from the same initial lambda for ``--iters`` iterations with one BLAS thread:
em_spark's ``LDAFamily.e_step`` over blocks of 4096 documents (what one map task does) plus the
driver M-step, and scikit-learn's ``_e_step(random_init=False)`` (its per-document loop, n_jobs=1)
plus the same M-step. Printed: seconds per iteration (median) and the perplexity after the last
iteration (exp of minus the bound per token; the two must agree to ~1e-7).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_facts, machine_lines


def corpus(docs: int, vocabulary: int, k: int, length: int, seed: int = 0) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    beta = rng.dirichlet(np.full(vocabulary, 0.05), size=k)
    theta = rng.dirichlet(np.full(k, 0.2), size=docs)
    counts = np.array([rng.multinomial(rng.poisson(length) + 1, t @ beta) for t in theta], dtype=np.float64)
    return sp.csr_array(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--vocabulary", type=int, default=5_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.decomposition._online_lda_fast import _dirichlet_expectation_2d
    from threadpoolctl import threadpool_limits

    from em_spark.models import Block, LDAFamily
    from em_spark.models.lda import WORDS
    from em_spark.stats import LOGLIK, sum_stats

    facts = machine_facts()
    X = corpus(args.docs, args.vocabulary, args.k, args.length)
    log(f"corpus: {X.shape[0]} docs x {X.shape[1]} words, {X.nnz} non-zeros, {int(X.sum())} tokens")
    family = LDAFamily(k=args.k)
    init = family.initialize(Block(X[:10]), np.random.default_rng(1))
    blocks = [Block(X[i : i + 4096]) for i in range(0, X.shape[0], 4096)]

    with threadpool_limits(limits=1, user_api="blas"):
        params, ours = init, []
        for _ in range(args.iters):
            started = time.perf_counter()
            stats = sum_stats(family.e_step(b, params) for b in blocks)
            assert stats is not None
            params = family.m_step(stats, params, blocks[0], np.random.default_rng(0)).params
            ours.append(time.perf_counter() - started)
        final = sum_stats(family.e_step(b, params) for b in blocks)
        assert final is not None
        our_perplexity = math.exp(-(final[LOGLIK] + family.log_prior(params)) / final[WORDS])

        lda = LatentDirichletAllocation(n_components=args.k, learning_method="batch", n_jobs=1)
        lda._init_latent_vars(X.shape[1])
        lda.n_features_in_ = X.shape[1]
        lda.components_ = init["lambda"].copy()
        lda.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(lda.components_))
        theirs = []
        for _ in range(args.iters):
            started = time.perf_counter()
            _, sstats = lda._e_step(X, cal_sstats=True, random_init=False)
            lda.components_ = lda.topic_word_prior_ + sstats
            lda.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(lda.components_))
            theirs.append(time.perf_counter() - started)
        their_perplexity = lda.perplexity(X)

    print(machine_lines(facts))
    print(f"| implementation | s / iteration (median of {args.iters}) | perplexity after {args.iters} |")
    print("|---|---|---|")
    print(
        f"| em_spark LDAFamily.e_step, blocks of 4096 docs, 1 thread | {statistics.median(ours):.3f} | {our_perplexity:.6f} |"
    )
    print(f"| scikit-learn _e_step, n_jobs=1 | {statistics.median(theirs):.3f} | {their_perplexity:.6f} |")
    print(f"relative perplexity gap: {abs(our_perplexity / their_perplexity - 1):.2e}")


if __name__ == "__main__":
    main()
