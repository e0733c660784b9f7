"""What every family offers the engine and the jobs, and the shared pieces they are built from:
the protocol's hooks and declared capabilities, one validator wording per problem, BIC/AIC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from em_spark.models import FAMILIES, Block, EMFamily, ModelError
from em_spark.models.base import FamilyBase
from em_spark.models.criteria import aic, bic, information_criteria
from em_spark.models.markov import MarkovChain
from em_spark.models.validation import check_parameter, check_present

RNG = np.random.default_rng(0)
SEQUENCES = Block(RNG.normal(size=(60, 2)), lengths=np.array([20, 25, 15]))
SAMPLES = {
    "gaussian": Block(RNG.normal(size=(60, 2))),
    "kmeans": Block(RNG.normal(size=(60, 2))),
    "categorical": Block(RNG.integers(0, 3, size=(60, 2)).astype(np.float64)),
    "poisson": Block(RNG.poisson(3.0, size=(60, 2)).astype(np.float64)),
    "student_t": Block(RNG.standard_t(4.0, size=(60, 2))),
    "gaussian_hmm": SEQUENCES,
    "categorical_hmm": Block(RNG.integers(0, 4, size=(60, 1)).astype(np.float64), lengths=np.array([20, 25, 15])),
    # documents as word counts (the first word at least once: no empty document)
    "lda": Block(RNG.integers(0, 4, size=(60, 8)).astype(np.float64) + np.eye(1, 8)),
}


@pytest.fixture(params=sorted(FAMILIES))
def fitted(request):
    family = FAMILIES[request.param](k=3)
    return family, family.initialize(SAMPLES[request.param], np.random.default_rng(1))


def test_every_family_implements_the_protocol_and_declares_its_capabilities(fitted):
    family, _ = fitted
    assert isinstance(family, EMFamily) and isinstance(family, FamilyBase)
    capabilities = (
        "sequential",
        "models_missing",
        "supports_labels",
        "supports_impute",
        "accepts_sparse",
        "needs_counts",
    )
    for capability in capabilities:
        assert isinstance(getattr(family, capability), bool), capability
    # sparse blocks hold rows of counts or values, never sequences or modelled missing entries
    assert not (family.accepts_sparse and (family.sequential or family.models_missing))
    # impute is there exactly when declared: callers ask supports_impute, never hasattr
    assert hasattr(family, "impute") == family.supports_impute


def test_component_weights_are_a_distribution_over_the_components(fitted):
    family, params = fitted
    weights = family.component_weights(params)
    assert weights.shape == (family.k,)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
    # its public name is declared, not guessed: the public array of that name holds the same shares
    public = family.public_params(params)
    np.testing.assert_array_equal(public[family.component_weights_name], weights)
    assert family.component_weights_name in family.summary_params
    for name in family.summary_params:  # what a fit summary prints per component
        assert public[name].shape[0] == family.k, name


def test_every_family_draws_rows_its_own_score_accepts_or_refuses_clearly(fitted):
    """What model.sample() builds on: a family's draws are data it can score (k-means alone refuses)."""
    family, params = fitted
    length = 7 if family.sequential else None
    if family.name == "kmeans":
        with pytest.raises(ModelError, match="k-means has no spread"):
            family.draw(params, 10, np.random.default_rng(0), length=length)
        return
    trials = 30 if family.name == "lda" else None  # documents need their lengths
    drawn = family.draw(params, 10, np.random.default_rng(0), length=length, trials=trials)
    rows = 70 if family.sequential else 10
    assert drawn.X.shape[0] == drawn.components.shape[0] == rows
    assert drawn.components.min() >= 0 and drawn.components.max() < family.k
    scored = family.score(Block(drawn.X, lengths=drawn.lengths), params)
    assert np.all(np.isfinite(scored["loglik"]))


def test_relabel_permutes_component_weights_and_distances_find_the_permutation(fitted):
    family, params = fitted
    order = np.array([2, 0, 1])
    moved = family.relabel(params, order)
    np.testing.assert_array_equal(family.component_weights(moved), family.component_weights(params)[order])
    distances = family.component_distances(params, moved)  # [old i, new j]: 0 where new j is old i
    assert distances.shape == (3, 3)
    np.testing.assert_allclose(distances[order, np.arange(3)], 0.0, atol=1e-9)
    with pytest.raises(ModelError, match=r"relabel needs a permutation of 0..2, got \[0, 0, 1\]"):
        family.relabel(params, [0, 0, 1])


def test_the_markov_chain_refuses_an_emission_model_without_its_hooks():
    class NoEmissions(MarkovChain):
        k = 2

    with pytest.raises(TypeError, match="abstract"):
        NoEmissions()


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ("abc", {}, r"^initialModel w must be a numeric array"),
        ([1.0, 2.0], {"shape": (3,), "what": "k=3"}, r"^initialModel w must have shape \(3,\) for k=3, got \(2,\)$"),
        ([1.0, np.inf], {}, r"^initialModel w must be finite \(no NaN or infinity\)$"),
        ([0.5, -0.1], {"min_value": 0.0}, r"^initialModel w must be non-negative, got -0.1 at index \[1\]$"),
        ([0.5, 0.2], {"simplex": True}, r"^initialModel w must sum to 1, got sum 0.7$"),
        (
            [[0.5, 0.5], [0.5, 0.2]],
            {"simplex": True},
            r"^initialModel w rows must each sum to 1; rows \[1\] sum to \[0.7\]$",
        ),
        (
            [[0.5, 0.5, 0.2, 0.7]],
            {"simplex": np.array([0, 2, 4])},
            r"^initialModel w of component 0 must sum to 1 over feature 1 \(columns 2..3\), got 0.9$",
        ),
        ([[1.0, 2.0], [0.0, 1.0]], {"positive_definite": "matrices"}, r"^initialModel w must be symmetric$"),
        (
            [np.eye(2), -np.eye(2)],
            {"positive_definite": "matrices", "unit": "state"},
            r"^initialModel w must be positive definite; states \[1\] are not$",
        ),
        ([[1.0, 1.0], [1.0, 0.0]], {"positive_definite": "variances"}, r"positive definite; components \[1\] are not$"),
    ],
)
def test_check_parameter_has_one_wording_per_problem(value, kwargs, message):
    with pytest.raises(ModelError, match=message):
        check_parameter(value, "w", **kwargs)


def test_check_parameter_renormalizes_and_symmetrizes_what_it_accepts():
    rows = check_parameter([[0.5, 0.5 + 1e-9], [0.25, 0.75]], "w", simplex=True)
    np.testing.assert_allclose(rows.sum(axis=1), [1.0, 1.0], rtol=1e-15)
    cov = check_parameter([[2.0, 0.5], [0.5 + 1e-14, 1.0]], "w", positive_definite="matrices")
    np.testing.assert_array_equal(cov, cov.T)
    with pytest.raises(ModelError, match=r"missing \['b'\]; give a and b \(got \['a'\]\)"):
        check_present({"a": 1}, ("a", "b"))


def test_information_criteria_are_scikit_learns():
    assert bic(-100.0, 5, 50.0) == 200.0 + 5 * math.log(50.0)
    assert aic(-100.0, 5) == 210.0
    assert information_criteria(-100.0, 5, 50.0) == {"bic": bic(-100.0, 5, 50.0), "aic": 210.0}
    with pytest.raises(ValueError, match="positive number of samples"):
        bic(-1.0, 1, 0.0)


def test_every_familys_statistics_scale_as_the_statistics_of_reweighted_data(fitted):
    """Stats.scaled(c), as stepwise EM scales a mini-batch to the full data: the statistics of the
    same rows with every weight times c (the row count aside: it stands for c times the rows)."""
    from em_spark.stats import COUNT

    family, params = fitted
    block = SAMPLES[family.name]
    stats = family.e_step(block, params)
    doubled = stats.scaled(2.0)
    assert doubled.keys() == stats.keys()
    for name in stats:  # exactly the sum of two copies: x * 2 == x + x in floating point
        np.testing.assert_array_equal(doubled[name], (stats + stats)[name])
    c = 0.37
    reweighted = family.e_step(Block(block.X, np.full(block.n_rows, c), lengths=block.lengths), params)
    for name in stats:
        expected = stats[name] * c if name != COUNT else stats[name]
        np.testing.assert_allclose(reweighted[name], expected, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(stats.scaled(c)[COUNT], stats[COUNT] * c)
    with pytest.raises(ValueError, match=r"scaled by a finite number >= 0, got -1.0"):
        stats.scaled(-1)
