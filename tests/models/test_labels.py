"""The semi-supervised EM helpers shared by the families (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

import em_spark.models.categorical as categorical_module
from em_spark.models import ModelError
from em_spark.models.labels import check_labels, clamp_to_labels, log_posterior


def test_label_helpers():
    with np.errstate(divide="ignore"):
        log_joint = np.log(np.array([[0.1, 0.3], [0.2, 0.2], [0.0, 0.5]]))
    log_resp, loglik = log_posterior(log_joint)
    np.testing.assert_allclose(np.exp(log_resp), [[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(loglik, np.log([0.4, 0.4, 0.5]))
    impossible_resp, impossible = log_posterior(np.full((1, 2), -np.inf))
    assert impossible[0] == -np.inf and not np.any(np.isnan(impossible_resp))

    labels = check_labels(np.array([-1, 0, 1]), 2)
    clamped_resp, clamped = clamp_to_labels(log_joint, log_resp, loglik, labels)
    np.testing.assert_allclose(np.exp(clamped_resp), [[0.25, 0.75], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(clamped, np.log([0.4, 0.2, 0.5]))
    assert np.exp(log_resp[1, 0]) == 0.5  # inputs untouched

    assert check_labels(None, 2) is None and check_labels(np.array([-1, -1]), 2) is None
    assert clamp_to_labels(log_joint, log_resp, loglik, None) == (log_resp, loglik)
    with pytest.raises(ModelError, match="label 2 is not a component id.*0..1 for k=2"):
        check_labels(np.array([0, 2]), 2)
    with pytest.raises(ModelError, match="integer component ids"):
        check_labels(np.array([0.5, 1.0]), 2)


def test_the_helpers_stay_importable_from_the_categorical_module():
    assert categorical_module.check_labels is check_labels
    assert categorical_module.clamp_to_labels is clamp_to_labels
    assert categorical_module.log_posterior is log_posterior


def test_check_labels_accepts_integral_floats_and_treats_any_negative_as_unknown():
    out = check_labels(np.array([0.0, -1.0, 2.0, -5.0]), 3)
    assert out.dtype == np.int64 and out.tolist() == [0, -1, 2, -5]
    assert check_labels(np.array([], dtype=np.int64), 3) is None
