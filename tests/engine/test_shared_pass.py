"""One data pass for several models: ``e_step_many`` gives each model's ``e_step``, bit for bit."""

import numpy as np
import pytest

from em_spark.engine.sources import LocalBlockSource
from em_spark.models import (
    Block,
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
)
from em_spark.stats import Stats, StatsTuple


def _assert_same(a: Stats, b: Stats) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _blocks(rng, make, sizes):
    return [make(rng, n) for n in sizes]


def _rows(rng, n):
    return Block(rng.normal(size=(n, 3)) + rng.integers(0, 3, size=(n, 1)) * 4.0)


def _codes(rng, n):
    return Block(np.column_stack([rng.integers(0, 3, n), rng.integers(0, 4, n)]).astype(float))


def _sequences(make):
    def build(rng, n):
        block = make(rng, n * 10)
        return Block(block.X, lengths=np.full(n, 10))

    return build


CASES = {
    "gaussian, every covariance type and k": (
        _rows,
        [
            GaussianFamily(k=3),
            GaussianFamily(k=2, covariance_type="diag"),
            GaussianFamily(k=4, covariance_type="tied"),
            GaussianFamily(k=1, covariance_type="spherical"),
            KMeansFamily(k=3),
        ],
    ),
    "categorical mixtures": (
        _codes,
        [CategoricalMixtureFamily(k=2, n_categories=(3, 4)), CategoricalMixtureFamily(k=3, n_categories=(3, 4))],
    ),
    "hmms": (_sequences(_rows), [GaussianHMMFamily(k=2), GaussianHMMFamily(k=3, covariance_type="diag")]),
    "categorical hmms": (_sequences(_codes), [CategoricalHMMFamily(2, n_categories=4)]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_one_pass_gives_every_models_statistics_bit_for_bit(case):
    make, families = CASES[case]
    rng = np.random.default_rng(11)
    blocks = _blocks(rng, make, [300, 1, 257, 40])
    if case == "categorical hmms":
        blocks = [Block(b.X[:, :1], lengths=b.lengths) for b in blocks]
    source = LocalBlockSource(blocks)
    # two restarts of each family: different parameters over the same rows
    models = [(f, f.initialize(source.sample, np.random.default_rng(seed))) for f in families for seed in (1, 2)]
    alone = [source.e_step(family, params) for family, params in models]
    calls = source.e_step_calls
    shared = source.e_step_many(models)
    assert source.e_step_calls == calls + 1  # one pass for all of them
    assert len(shared) == len(models)
    for a, b in zip(shared, alone):
        _assert_same(a, b)


def test_statistics_of_several_models_add_model_by_model_and_refuse_a_different_count():
    one = Stats({"loglik": 1.0, "weight": 2.0, "count": 2.0})
    two = Stats({"loglik": -3.0, "weight": 1.0, "count": 1.0})
    total = StatsTuple((one, two)) + StatsTuple((two, one))
    assert [s.loglik for s in total.items] == [-2.0, -2.0] and len(total) == 2
    with pytest.raises(ValueError, match="cannot add statistics of 2 and 1 models"):
        StatsTuple((one, two)) + StatsTuple((one,))
