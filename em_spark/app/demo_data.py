"""Demo data (no Spark): synthetic Gaussian blobs (optionally with missing entries), sequences
from a Gaussian hidden Markov model and Poisson counts, written with pyarrow; and real English
text as word counts, from the corpora that ship inside gensim's wheel (``load_text_corpus``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "TEXT_CORPORA",
    "TextCorpus",
    "load_text_corpus",
    "make_blobs",
    "make_contaminated_blobs",
    "make_hmm_sequences",
    "make_poisson_counts",
    "write_blobs",
    "write_sequences",
]

#: real text inside gensim's wheel (gensim/test/test_data): the Lee background corpus (300 news
#: articles from the Australian Broadcasting Corporation) and 250 stemmed English Wikipedia articles
TEXT_CORPORA = {"lee": "lee_background.cor", "wiki": "head500.noblanks.cor"}


def make_blobs(
    rows: int, features: int, components: int, separation: float = 6.0, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows from a mixture of ``components`` Gaussians with random covariances.

    Returns
    -------
    X : ndarray (rows, features); labels : ndarray (rows,); truth : dict of weights, means, covariances
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 5.0))
    means = rng.normal(scale=separation, size=(components, features))
    matrices = []
    for _ in range(components):
        A = rng.normal(size=(features, features)) / np.sqrt(features)
        matrices.append(A @ A.T + 0.5 * np.eye(features))
    covariances = np.array(matrices)
    labels = rng.choice(components, size=rows, p=weights)
    chol = np.linalg.cholesky(covariances)
    z = rng.standard_normal((rows, features))
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
    return X, labels, {"weights": weights, "means": means, "covariances": covariances}


def make_poisson_counts(
    rows: int, features: int, components: int, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Counts from a mixture of ``components`` products of Poisson distributions, with rates
    between 0.5 and 20 drawn log-uniformly (events per user per day, say).

    Returns
    -------
    X : ndarray (rows, features) of integer counts as float64; labels : ndarray (rows,);
    truth : dict of weights (components,) and rates (components, features)
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 5.0))
    rates = np.exp(rng.uniform(np.log(0.5), np.log(20.0), size=(components, features)))
    labels = rng.choice(components, size=rows, p=weights)
    X = rng.poisson(rates[labels]).astype(np.float64)
    return X, labels, {"weights": weights, "rates": rates}


def make_contaminated_blobs(
    rows: int = 3000, outlier_fraction: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Three unit-variance Gaussian clusters in 2-d (means (0, 0), (8, 0), (4, 7)) whose first
    ``outlier_fraction`` of rows are replaced by gross outliers, uniform over [-40, 50]².

    Returns X (rows, 2) (the outliers first) and the true means (3, 2)."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [8.0, 0.0], [4.0, 7.0]])
    X = means[rng.choice(3, size=rows)] + rng.normal(size=(rows, 2))
    outliers = int(outlier_fraction * rows)
    X[:outliers] = rng.uniform(-40.0, 50.0, size=(outliers, 2))
    return X, means


def write_blobs(
    uri: str,
    rows: int,
    features: int,
    components: int,
    separation: float = 6.0,
    seed: int = 42,
    s3_endpoint: str | None = None,
    missing_fraction: float = 0.0,
) -> None:
    """Write blobs as Parquet columns x0..x{d-1} plus the true ``component`` to ``uri``/part-0.parquet.

    With ``missing_fraction`` > 0 that share of the entries, chosen at random, are null.
    """
    X, labels, _ = make_blobs(rows, features, components, separation, seed)
    missing = np.random.default_rng(seed + 1).random(X.shape) < missing_fraction
    columns = {f"x{j}": pa.array(X[:, j], mask=missing[:, j]) for j in range(features)}
    _write(uri, pa.table({**columns, "component": labels.astype(np.int32)}), s3_endpoint)


def make_hmm_sequences(
    sequences: int, steps: int, features: int, states: int, separation: float = 4.0, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sequences of ``steps`` observations from a Gaussian HMM with sticky transitions.

    Returns
    -------
    X : ndarray (sequences, steps, features); paths : ndarray (sequences, steps) of states;
    truth : dict of startProb, transMat, means, covariances
    """
    rng = np.random.default_rng(seed)
    start = rng.dirichlet(np.full(states, 5.0))
    trans = rng.dirichlet(np.full(states, 1.0), size=states) * 0.3 + np.eye(states) * 0.7
    means = rng.normal(scale=separation, size=(states, features))
    covariances = np.array([np.eye(features) * rng.uniform(0.5, 1.5) for _ in range(states)])
    paths = np.empty((sequences, steps), dtype=np.int64)
    paths[:, 0] = rng.choice(states, size=sequences, p=start)
    cumulative = np.cumsum(trans, axis=1)
    for t in range(1, steps):
        u = rng.random(sequences)[:, None]
        paths[:, t] = np.minimum((u > cumulative[paths[:, t - 1]]).sum(axis=1), states - 1)
    chol = np.linalg.cholesky(covariances)
    z = rng.standard_normal((sequences, steps, features))
    X = means[paths] + np.einsum("stij,stj->sti", chol[paths], z)
    return X, paths, {"startProb": start, "transMat": trans, "means": means, "covariances": covariances}


def write_sequences(
    uri: str,
    sequences: int,
    steps: int,
    features: int,
    states: int,
    separation: float = 4.0,
    seed: int = 42,
    s3_endpoint: str | None = None,
) -> None:
    """Write HMM sequences as Parquet, one per row: ``id`` and ``obs`` (array<array<double>>)."""
    X, _, _ = make_hmm_sequences(sequences, steps, features, states, separation, seed)
    step = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), features).cast(pa.list_(pa.float64()))
    offsets = pa.array(np.arange(0, (sequences + 1) * steps, steps, dtype=np.int32))
    obs = pa.ListArray.from_arrays(offsets, step)
    _write(uri, pa.table({"id": pa.array(np.arange(sequences)), "obs": obs}), s3_endpoint)


def _write(uri: str, table: pa.Table, s3_endpoint: str | None) -> None:
    from em_spark.storage.fs import resolve

    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/.part-0.parquet.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, f"{path}/part-0.parquet")


@dataclass(frozen=True)
class TextCorpus:
    """Word counts of a corpus split into training and held-out documents.

    train : scipy.sparse.csr_array (n_train, V) of counts; held_out : csr_array (n_held_out, V),
    counted over the training vocabulary (words unseen in training dropped, then empty documents);
    vocabulary : the V words, column j is ``vocabulary[j]``
    """

    train: Any
    held_out: Any
    vocabulary: list[str]


def load_text_corpus(
    name: str = "lee", held_out_fraction: float = 0.2, min_docs: int = 2, max_doc_fraction: float = 0.5, seed: int = 0
) -> TextCorpus:
    """A real English corpus from gensim's wheel (``TEXT_CORPORA``) as word counts.

    Each line is a document, tokenized by gensim's ``simple_preprocess`` (lower case, 2-15
    letters) without gensim's English stop words. The vocabulary is the words of the training
    documents that appear in at least ``min_docs`` of them and in at most ``max_doc_fraction``;
    a seeded permutation picks the held-out documents. Needs gensim (a test dependency)."""
    from importlib import resources

    import scipy.sparse as sp

    try:
        from gensim.parsing.preprocessing import STOPWORDS
        from gensim.utils import simple_preprocess
    except ImportError:
        raise ImportError("load_text_corpus reads the corpora inside gensim's wheel: pip install gensim") from None
    if name not in TEXT_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(TEXT_CORPORA)}")
    text = (
        resources.files("gensim")
        .joinpath("test")
        .joinpath("test_data")
        .joinpath(TEXT_CORPORA[name])
        .read_text(encoding="utf-8")
    )
    docs = [[w for w in simple_preprocess(line) if w not in STOPWORDS] for line in text.splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(docs))
    n_held_out = round(held_out_fraction * len(docs))
    train_docs = [docs[i] for i in sorted(order[n_held_out:])]
    held_docs = [docs[i] for i in sorted(order[:n_held_out])]
    doc_freq: dict[str, int] = {}
    for doc in train_docs:
        for word in set(doc):
            doc_freq[word] = doc_freq.get(word, 0) + 1
    limit = max_doc_fraction * len(train_docs)
    vocabulary = sorted(w for w, f in doc_freq.items() if min_docs <= f <= limit)
    column = {w: j for j, w in enumerate(vocabulary)}

    def counts(documents: list[list[str]]) -> Any:
        rows, cols = [], []
        for i, doc in enumerate(documents):
            ids = [column[w] for w in doc if w in column]
            rows += [i] * len(ids)
            cols += ids
        shape = (len(documents), len(vocabulary))
        matrix = sp.csr_array(
            (np.ones(len(rows)), (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))), shape=shape
        )
        matrix.sum_duplicates()
        return matrix[np.flatnonzero(matrix.sum(axis=1) > 0)]

    return TextCorpus(counts(train_docs), counts(held_docs), vocabulary)
