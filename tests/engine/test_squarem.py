"""SQUAREM-accelerated EM (acceleration="squarem") without a JVM: fewer passes to the same fixed
point, a log-likelihood that never decreases for every family, and exact resume mid-cycle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fakes import Killed, KilledAfter

from em_spark.app.demo_data import make_blobs, make_hmm_sequences
from em_spark.engine.acceleration import backtrack, extrapolate, grown, shrunk, step_length
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import (
    CategoricalHMMFamily,
    CategoricalMixtureFamily,
    GaussianFamily,
    GaussianHMMFamily,
    KMeansFamily,
    PoissonMixtureFamily,
    StudentTMixtureFamily,
)
from em_spark.models.base import Block

# ---------------------------------------------------------------------------
# data


def _rows(X: np.ndarray, n_blocks: int = 4) -> LocalBlockSource:
    return LocalBlockSource([Block(b) for b in np.array_split(X, n_blocks)], sample_size=500, seed=11)


def _sequences(X: np.ndarray, n_blocks: int = 3) -> LocalBlockSource:
    """(sequences, steps, d) or (sequences, steps) as blocks of whole sequences."""
    blocks = []
    for part in np.array_split(X, n_blocks):
        n, t = part.shape[:2]
        blocks.append(Block(part.reshape(n * t, -1).astype(np.float64), lengths=np.full(n, t)))
    return LocalBlockSource(blocks, sample_size=500, seed=11)


def overlapping_gaussians() -> np.ndarray:
    X, _, _ = make_blobs(4000, 4, 3, separation=1.0, seed=3)
    return X


def overlapping_counts() -> np.ndarray:
    """Three Poisson components whose rates are close (1.5-2.5x apart): plain EM needs many passes."""
    rng = np.random.default_rng(8)
    rates = np.array([[2.0, 3.0, 1.0], [3.0, 2.0, 1.5], [2.5, 2.5, 2.5]])
    z = rng.choice(3, size=3000, p=[0.4, 0.35, 0.25])
    return rng.poisson(rates[z]).astype(np.float64)


def overlapping_categorical() -> np.ndarray:
    """Codes of 6 features (4 categories each) from 3 latent classes that differ little."""
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(4, 2.0), size=(3, 6))  # (k, features, categories)
    z = rng.choice(3, size=3000, p=[0.5, 0.3, 0.2])
    u = rng.random((3000, 6, 1))
    return (u > np.cumsum(probs[z], axis=2)).sum(axis=2).clip(max=3).astype(np.float64)


def categorical_chain(sequences: int = 60, steps: int = 50) -> np.ndarray:
    """(sequences, steps) symbols 0..4 of a sticky 3-state chain."""
    rng = np.random.default_rng(8)
    trans = np.full((3, 3), 0.1) + np.eye(3) * 0.7
    emission = rng.dirichlet(np.full(5, 1.0), size=3)
    states = np.empty((sequences, steps), dtype=np.int64)
    states[:, 0] = rng.integers(3, size=sequences)
    for t in range(1, steps):
        states[:, t] = [rng.choice(3, p=trans[s]) for s in states[:, t - 1]]
    return np.array([[rng.choice(5, p=emission[s]) for s in row] for row in states])


def with_missing(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    rng = np.random.default_rng(2)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    return X


def _case(name: str) -> tuple[object, LocalBlockSource]:
    gaussians = overlapping_gaussians()
    if name == "gaussian-missing":
        return GaussianFamily(k=3, handle_missing="model"), _rows(with_missing(gaussians))
    if name.startswith("gaussian-"):
        return GaussianFamily(k=3, covariance_type=name.split("-")[1]), _rows(gaussians)
    if name == "kmeans":
        return KMeansFamily(k=3), _rows(gaussians)
    if name == "categorical":
        # smoothing 0: maximum likelihood, so the log-likelihood itself is what EM never decreases
        return CategoricalMixtureFamily(3, (4,) * 6, smoothing=0.0), _rows(overlapping_categorical())
    if name.startswith("student_t-"):
        return StudentTMixtureFamily(3, covariance_type=name.split("-")[1], dof=5.0), _rows(gaussians)
    if name == "poisson":
        return PoissonMixtureFamily(3, smoothing=0.0), _rows(overlapping_counts())
    if name.startswith("gaussian_hmm-"):
        X, _, _ = make_hmm_sequences(40, 50, 2, 3, separation=1.5, seed=4)
        return GaussianHMMFamily(3, covariance_type=name.split("-")[1]), _sequences(X)
    assert name == "categorical_hmm"
    return CategoricalHMMFamily(3, n_categories=5), _sequences(categorical_chain()[..., None])


FAMILY_CASES = [
    "gaussian-full",
    "gaussian-diag",
    "gaussian-spherical",
    "gaussian-tied",
    "gaussian-missing",
    "kmeans",
    "categorical",
    "poisson",
    "student_t-full",
    "student_t-diag",
    "gaussian_hmm-full",
    "gaussian_hmm-diag",
    "gaussian_hmm-tied",
    "gaussian_hmm-spherical",
    "categorical_hmm",
]


# ---------------------------------------------------------------------------
# the extrapolation itself


def test_the_s3_step_lands_on_the_limit_of_a_geometric_sequence():
    # θ_n = θ* + c ρ^n: r = c(ρ-1), v = c(ρ-1)^2, α = -1/(1-ρ), θ' = θ* exactly (Varadhan & Roland, eq. 9)
    family = KMeansFamily(k=2)
    limit = np.array([[1.0, -2.0], [3.0, 0.5]])
    c = np.array([[0.7, 0.1], [-0.4, 2.0]])
    points = tuple({"centers": limit + c * 0.9**n, "weights": np.full(2, 0.5)} for n in range(3))
    alpha = step_length(family, points, step_max=np.inf)
    assert alpha == pytest.approx(-1 / (1 - 0.9), rel=1e-9)
    assert step_length(family, points, step_max=4.0) == -4.0  # clamped to the cycle's bound
    moved = extrapolate(family, points, alpha)
    np.testing.assert_allclose(moved["centers"], limit, rtol=0, atol=1e-12)


def test_step_length_is_at_most_minus_one_and_backtracking_ends_at_minus_one():
    family = KMeansFamily(k=1)
    nearly_done = tuple({"centers": np.array([[1.0 + 0.1**n]]), "weights": np.ones(1)} for n in (1, 2, 3))
    assert step_length(family, nearly_done, 100.0) == pytest.approx(-1 / 0.9)
    standing = tuple({"centers": np.array([[1.0]]), "weights": np.ones(1)} for _ in range(3))
    assert step_length(family, standing, 100.0) == -1.0  # v = 0: no extrapolation
    assert grown(4.0, -4.0) == 16.0 and grown(4.0, -2.0) == 4.0
    assert shrunk(16.0, -16.0) == 4.0 and shrunk(16.0, -10.0) == 2.5 and shrunk(4.0, -2.0) == 1.0
    alpha, steps = -40.0, 0
    while alpha < -1:
        alpha, steps = backtrack(alpha), steps + 1
    assert alpha == -1.0 and steps < 15


@pytest.mark.parametrize("name", FAMILY_CASES)
def test_unconstrained_coordinates_map_back_to_the_same_parameters(name):
    family, source = _case(name)
    params = family.initialize(source.sample, np.random.default_rng(0))
    back = family.from_unconstrained(family.to_unconstrained(params), params)
    assert set(back) == set(params)
    for key in params:
        np.testing.assert_allclose(back[key], params[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_an_extrapolation_past_the_simplex_still_gives_probabilities():
    family = CategoricalMixtureFamily(2, (3,))

    def make(p):
        return {
            "weights": np.array([p, 1 - p]),
            "probs": np.tile([0.2, 0.3, 0.5], (2, 1)),
            "n_categories": np.ones(1) * 3,
        }

    moved = extrapolate(family, (make(0.6), make(0.8), make(0.9)), -30.0)  # linearly: weight 0.6 + 30 * ... > 1
    assert moved is not None and np.all(moved["weights"] > 0) and moved["weights"].sum() == pytest.approx(1)


# ---------------------------------------------------------------------------
# fewer passes, same fixed point


@pytest.mark.parametrize("name", ["gaussian-full", "categorical"])
def test_squarem_reaches_plain_em_log_likelihood_with_at_most_half_the_passes(name):
    family, _ = _case(name)
    tol = 1e-8
    plain_source, fast_source = _case(name)[1], _case(name)[1]
    plain = fit_em(family, plain_source, FitSettings(max_iter=5000, tol=tol, seed=1))
    fast = fit_em(family, fast_source, FitSettings(max_iter=5000, tol=tol, seed=1, acceleration="squarem"))
    assert plain.converged and fast.converged
    assert plain.n_iter >= 100  # the case is as hard as the claim needs
    assert fast_source.e_step_calls == fast.n_iter  # one iteration is one data pass
    assert 2 * fast.n_iter <= plain.n_iter, (plain.n_iter, fast.n_iter)
    assert fast.history[-1] >= plain.history[-1] - tol


@pytest.mark.parametrize(
    "name, tol, max_iter",
    [
        # a change of the average log-likelihood of 1e-12 still leaves parameters ~1e-6 away (it
        # is quadratic near the optimum), for either driver: stop near rounding noise instead
        ("gaussian-full", 1e-14, 5000),
        # this one has a flat direction (weights move 3e-6 while the log-likelihood moves 1e-14):
        # no tol on the log-likelihood stops within 1e-6, so a quarter of plain EM's passes instead
        ("categorical", 0.0, 375),
    ],
)
def test_squarem_ends_at_plain_em_fixed_point(name, tol, max_iter):
    family, _ = _case(name)
    # plain EM run until its changes are rounding noise: the fixed point to 1e-8 or so
    fixed = fit_em(family, _case(name)[1], FitSettings(max_iter=1500, tol=0.0, seed=1))
    fast = fit_em(family, _case(name)[1], FitSettings(max_iter=max_iter, tol=tol, seed=1, acceleration="squarem"))
    assert fast.converged or tol == 0
    for key in family.public_params(fixed.params):
        np.testing.assert_allclose(fast.params[key], fixed.params[key], rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", FAMILY_CASES)
def test_every_family_runs_under_squarem_and_its_log_likelihood_never_decreases(name):
    family, source = _case(name)
    result = fit_em(family, source, FitSettings(max_iter=300, tol=1e-7, seed=2, acceleration="squarem"))
    history = np.asarray(result.history)
    assert np.all(np.isfinite(history)) and len(history) == result.n_iter == source.e_step_calls
    assert np.all(np.diff(history) >= -1e-12 * np.abs(history[1:])), np.diff(history).min()
    assert all(np.all(np.isfinite(v)) for v in result.params.values())
    plain = fit_em(family, _case(name)[1], FitSettings(max_iter=300, tol=1e-7, seed=2))
    # same start; no worse in passes than plain EM, beyond one unfinished cycle
    assert result.n_iter <= plain.n_iter + 3, (result.n_iter, plain.n_iter)


@dataclass(frozen=True)
class Misleading(GaussianFamily):
    """A Gaussian mixture whose extrapolated parameters are always bad (means shifted far)."""

    def from_unconstrained(self, free, params):
        out = super().from_unconstrained(free, params)
        return {**out, "means": out["means"] + 5.0}


def test_a_rejected_extrapolation_costs_its_pass_and_nothing_else():
    # every extrapolation lowers the log-likelihood, so SQUAREM must reduce to plain EM plus the
    # wasted passes, each recording the previous value again (the history never decreases)
    X = overlapping_gaussians()
    fast = fit_em(
        Misleading(k=3, covariance_type="diag"),
        _rows(X),
        FitSettings(max_iter=30, tol=0.0, seed=1, acceleration="squarem"),
    )
    history = np.asarray(fast.history)
    assert np.all(np.diff(history) >= 0)
    repeated = np.flatnonzero(np.diff(history) == 0)
    assert repeated.size >= 3  # some passes were rejected extrapolations
    accepted = [h for i, h in enumerate(fast.history) if i == 0 or h != fast.history[i - 1]]
    plain = fit_em(
        GaussianFamily(k=3, covariance_type="diag"), _rows(X), FitSettings(max_iter=len(accepted), tol=0.0, seed=1)
    )
    assert accepted == plain.history  # bit for bit: the same points were evaluated
    for key in plain.params:
        np.testing.assert_array_equal(fast.params[key], plain.params[key], err_msg=key)


# ---------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("killed_after", [1, 2, 3, 4, 5, 7, 8])
def test_a_run_killed_at_any_pass_of_a_cycle_resumes_bit_identically(tmp_path, killed_after):
    family, source = _case("gaussian-full")
    kw = dict(max_iter=9, tol=0.0, n_init=2, seed=4, acceleration="squarem")
    reference = fit_em(family, source, FitSettings(**kw))
    settings = FitSettings(**kw, run_id="sq", checkpoint_dir=str(tmp_path))
    with pytest.raises(Killed):
        fit_em(family, KilledAfter(source.blocks, killed_after, sample_size=500, seed=11), settings)
    again = LocalBlockSource(source.blocks, sample_size=500, seed=11)
    resumed = fit_em(family, again, settings)
    assert again.e_step_calls == 9 - killed_after  # only the missing passes were run (both restarts in each)
    assert resumed.history == reference.history and resumed.restart == reference.restart
    for key in reference.params:
        np.testing.assert_array_equal(resumed.params[key], reference.params[key], err_msg=key)


def test_resuming_with_another_acceleration_is_refused_naming_it(tmp_path):
    family, source = _case("gaussian-diag")
    settings = FitSettings(max_iter=4, tol=0.0, seed=4, run_id="acc", checkpoint_dir=str(tmp_path))
    fit_em(family, source, settings)
    with pytest.raises(ResumeMismatchError, match="acceleration"):
        fit_em(family, source, FitSettings(**{**settings.__dict__, "acceleration": "squarem"}))


def test_an_unknown_acceleration_is_a_clear_error():
    with pytest.raises(ValueError, match=r"acceleration must be one of \['none', 'squarem'\], got 'fast'"):
        FitSettings(acceleration="fast")


# ---------------------------------------------------------------------------
# the option


def test_every_estimator_takes_acceleration_default_none_and_passes_it_to_the_engine():
    from em_spark.api import ESTIMATORS, GaussianMixture

    for estimator in ESTIMATORS.values():
        assert estimator().getAcceleration() == "none" == estimator().fit_settings().acceleration
        # (LDA's default optimizer is pyspark.ml's "online", which takes no acceleration)
        chosen = estimator(acceleration="squarem", optimizer="batch")
        assert chosen.fit_settings().acceleration == "squarem" == chosen.getAcceleration()
        assert chosen.setAcceleration(None).getAcceleration() == "none"
    with pytest.raises(ValueError, match="acceleration must be one of"):
        GaussianMixture().setAcceleration("fast").fit_settings()


def test_the_config_key_fit_acceleration_reaches_the_estimator_and_is_checked():
    from em_spark.app.common import estimator_from_config
    from em_spark.app.config import ConfigError, load_config

    local = str(Path(__file__).resolve().parents[2] / "conf" / "local.yaml")
    assert estimator_from_config(load_config(local), None).getAcceleration() == "none"
    config = load_config(local, ["fit.acceleration=squarem"])
    assert estimator_from_config(config, None).fit_settings().acceleration == "squarem"
    with pytest.raises(ConfigError, match="'fit.acceleration' must be one of none, squarem; got 'fast'"):
        load_config(local, ["fit.acceleration=fast"])
