"""Component matching across retrains: a permuted model maps back to the reference ids."""

import numpy as np
import pytest

from em_spark.app.demo_data import make_blobs
from em_spark.app.nightly import match_components
from em_spark.models import GaussianFamily
from em_spark.models.base import Block


@pytest.mark.parametrize("cov_type", ["full", "diag", "spherical", "tied"])
def test_a_permuted_and_slightly_moved_model_is_matched_back(cov_type):
    X, _, _ = make_blobs(3000, 3, 4, seed=2)
    family = GaussianFamily(k=4, covariance_type=cov_type)
    reference = family.initialize(Block(X), np.random.default_rng(0))
    shuffled = family.relabel(reference, [2, 3, 0, 1])
    moved = dict(shuffled, means=shuffled["means"] + 0.01)
    order, distance = match_components(family, reference, moved)
    np.testing.assert_array_equal(order, [2, 3, 0, 1])
    relabeled = family.relabel(moved, order)
    np.testing.assert_allclose(relabeled["means"], reference["means"] + 0.01)
    assert np.all(distance < 0.01)


def test_relabel_refuses_a_non_permutation():
    family = GaussianFamily(k=3)
    params = family.initialize(Block(np.random.default_rng(0).normal(size=(100, 2))), np.random.default_rng(0))
    with pytest.raises(ValueError, match="permutation"):
        family.relabel(params, [0, 0, 1])
