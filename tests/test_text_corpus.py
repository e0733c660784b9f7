"""The real-text corpora for the topic models: word counts from gensim's wheel, split reproducibly."""

import numpy as np
import pytest

from em_spark.app.demo_data import TEXT_CORPORA, load_text_corpus


@pytest.mark.parametrize("name", sorted(TEXT_CORPORA))
def test_a_corpus_loads_as_counts_over_the_training_vocabulary(name):
    corpus = load_text_corpus(name)
    n_train, vocabulary = corpus.train.shape
    assert vocabulary == len(corpus.vocabulary) == len(set(corpus.vocabulary)) > 1000
    assert corpus.held_out.shape[1] == vocabulary and corpus.held_out.shape[0] > 0.15 * (n_train / 0.8)
    for counts in (corpus.train, corpus.held_out):
        assert counts.dtype == np.float64 and np.all(counts.data >= 1) and np.all(counts.data == np.round(counts.data))
        assert np.all(np.asarray(counts.sum(axis=1)) > 0)  # no empty document
        assert counts.has_canonical_format
    document_frequency = np.asarray((corpus.train > 0).sum(axis=0))
    assert document_frequency.min() >= 2 and document_frequency.max() <= 0.5 * n_train


def test_the_split_is_a_function_of_the_seed():
    a, b, c = load_text_corpus("lee", seed=1), load_text_corpus("lee", seed=1), load_text_corpus("lee", seed=2)
    assert (a.train != b.train).nnz == 0 and a.vocabulary == b.vocabulary
    assert a.vocabulary != c.vocabulary
    with pytest.raises(ValueError, match="unknown corpus 'reuters'; choose one of"):
        load_text_corpus("reuters")
