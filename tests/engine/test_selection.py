"""Model selection over a grid, without a JVM: BIC picks the true number of components."""

import json

import numpy as np
import pytest

from em_spark.app.config import ConfigError, load_config
from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings
from em_spark.engine.selection import best, format_table, select_models, to_json
from em_spark.engine.sources import LocalBlockSource
from em_spark.models.base import Block


def test_bic_chooses_the_true_number_of_components_and_the_table_marks_it():
    X, _, _ = make_blobs(4000, 2, 3, separation=6.0, seed=11)
    source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=1)
    candidates = select_models(
        source, [1, 2, 3, 4, 5], ["full", "spherical"], FitSettings(max_iter=200, tol=1e-6, seed=1)
    )
    assert len(candidates) == 10
    chosen = best(candidates, "bic")
    assert (chosen.k, chosen.covarianceType) == (3, "full")
    table = format_table(candidates, "bic")
    marked = [line.split() for line in table.splitlines() if line.startswith("*") and "chosen" not in line]
    assert marked == [["*", "3", "full", *marked[0][3:]]] and "chosen by lowest BIC: k=3" in table
    report = json.loads(to_json(candidates, "bic", rows=4000))
    assert report["chosen"]["k"] == 3 and len(report["candidates"]) == 10
    # BIC is -2 loglik + p log n, with loglik under the fitted parameters
    c = candidates[2]
    assert c.bic == pytest.approx(-2 * c.avgLogLik * 4000 + c.nParameters * np.log(4000))


def test_select_config_is_validated():
    with pytest.raises(ConfigError, match="'select.ks' must be a list of integers"):
        load_config("conf/local.yaml", ["select.ks=[a, b]"])
    with pytest.raises(ConfigError, match="'select.criterion' must be 'bic' or 'aic'"):
        load_config("conf/local.yaml", ["select.criterion=mdl"])
    assert load_config("conf/local.yaml", ["select.ks=[2, 3]"]).select.ks == [2, 3]


def test_selection_takes_any_family_and_counts_steps_for_sequence_bic():
    # A grid over the number of HMM states: no covariance column, BIC's n = the steps.
    from em_spark.app.demo_data import make_hmm_sequences
    from em_spark.engine.loop import FitSettings
    from em_spark.engine.selection import format_table, select_models
    from em_spark.engine.sources import LocalBlockSource
    from em_spark.models import Block, GaussianHMMFamily

    X, _, _ = make_hmm_sequences(200, 20, 2, 3, separation=5.0, seed=3)
    block = Block(X.reshape(-1, 2), lengths=np.full(200, 20))
    source = LocalBlockSource([block], sample_size=2000, seed=0)
    candidates = select_models(
        source,
        [2, 3, 4],
        [None],
        FitSettings(max_iter=30, tol=1e-4, seed=0),
        make_family=lambda k, _: GaussianHMMFamily(k=k, covariance_type="diag"),
    )
    assert [c.k for c in candidates] == [2, 3, 4] and all(c.covarianceType is None for c in candidates)
    for c in candidates:
        assert c.bic == pytest.approx(-2.0 * c.avgLogLik * 200 + c.nParameters * np.log(4000))
    assert min(candidates, key=lambda c: c.bic).k == 3
    assert "chosen by lowest BIC: k=3\n" in format_table(candidates, "bic") + "\n"


def test_bic_sample_size_is_weight_times_steps_for_weighted_sequences_and_adds_over_splits():
    # One definition (models.criteria): a sequence of weight w and T steps counts w*T observations,
    # in the load summary (training, select, metrics) as in EMModel.criteria's DataFrame pass.
    from em_spark.app.demo_data import make_hmm_sequences
    from em_spark.engine.load_summary import summarize_block
    from em_spark.models import GaussianHMMFamily

    X, _, _ = make_hmm_sequences(60, 10, 2, 2, separation=5.0, seed=4)
    lengths = np.random.default_rng(0).integers(1, 10, size=60)
    steps = X.reshape(-1, 2)[: lengths.sum()]
    w_seq = np.random.default_rng(1).uniform(0.5, 3.0, size=60)
    block = Block(steps, weight=np.repeat(w_seq, lengths), lengths=lengths)
    expected = float(np.sum(w_seq * lengths))
    whole = summarize_block(block, 0, 0)
    assert whole.observation_weight == pytest.approx(expected, rel=1e-12)
    cut = int(lengths[:30].sum())  # a split between sequences
    first = Block(steps[:cut], weight=np.repeat(w_seq[:30], lengths[:30]), lengths=lengths[:30])
    rest = Block(steps[cut:], weight=np.repeat(w_seq[30:], lengths[30:]), lengths=lengths[30:])
    split = summarize_block(first, 0, 0) + summarize_block(rest, 0, 0)
    assert split.observation_weight == pytest.approx(expected, rel=1e-12)

    source = LocalBlockSource([block], sample_size=500, seed=0)
    (candidate,) = select_models(
        source,
        [2],
        [None],
        FitSettings(max_iter=5, tol=0.0, seed=0),
        make_family=lambda k, _: GaussianHMMFamily(k=k, covariance_type="diag"),
    )
    total_ll = candidate.avgLogLik * float(np.sum(w_seq))
    assert candidate.bic == pytest.approx(-2.0 * total_ll + candidate.nParameters * np.log(expected), rel=1e-12)


def test_candidates_share_each_data_pass_and_each_fit_is_the_fit_it_would_be_alone():
    from em_spark.engine.loop import fit_em
    from em_spark.models import GaussianFamily

    X, _, _ = make_blobs(3000, 2, 3, separation=3.0, seed=5)
    ks, types = [1, 2, 3, 4], ["full", "diag"]
    settings = FitSettings(max_iter=60, tol=1e-6, seed=3)
    shared_source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=1)
    candidates = select_models(shared_source, ks, types, settings)
    alone = {}
    for covariance_type in types:
        for k in ks:
            source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=1)
            alone[k, covariance_type] = (
                fit_em(GaussianFamily(k=k, covariance_type=covariance_type), source, settings),
                source,
            )
    separate_passes = sum(source.e_step_calls + 1 for _, source in alone.values())  # + its criteria pass
    for c in candidates:
        result, source = alone[c.k, c.covarianceType]
        assert (c.numIter, c.converged) == (result.n_iter, result.converged)
        stats = source.e_step(GaussianFamily(k=c.k, covariance_type=c.covarianceType), result.params)
        assert c.avgLogLik == stats.loglik / stats.weight  # bit for bit: the same fit, the same criteria
    # one pass per round of the longest fit, plus one for every candidate's criteria
    assert shared_source.e_step_calls == max(c.numIter for c in candidates) + 1
    assert shared_source.e_step_calls * 2 < separate_passes


def test_a_failing_candidate_leaves_the_others_fitting_and_an_unexpected_error_stops_select():
    from em_spark.models import GaussianFamily
    from em_spark.models.base import ModelError

    X, _, _ = make_blobs(600, 2, 2, seed=2)
    source = LocalBlockSource([Block(X)], seed=1)

    class Failing(GaussianFamily):
        def m_step(self, stats, params, sample, rng):
            raise ModelError("the component collapsed")

    def make(k, covariance_type):
        return Failing(k=k) if k == 2 else GaussianFamily(k=k, covariance_type=covariance_type)

    candidates = select_models(source, [1, 2, 3], ["full"], FitSettings(max_iter=20, seed=0), make_family=make)
    assert [c.skipped for c in candidates] == [None, "fit failed: the component collapsed", None]
    assert all(np.isfinite(c.bic) for c in candidates if c.skipped is None)

    class Broken(GaussianFamily):
        def m_step(self, stats, params, sample, rng):
            raise RuntimeError("bug in a family")

    with pytest.raises(RuntimeError, match="bug in a family"):
        select_models(
            source,
            [1, 2, 3],
            ["full"],
            FitSettings(max_iter=20, seed=0),
            make_family=lambda k, c: Broken(k=k) if k == 3 else GaussianFamily(k=k, covariance_type=c),
        )


def test_squarem_candidates_with_restarts_share_the_passes_and_each_fit_is_the_fit_it_would_be_alone():
    # SQUAREM's passes (θ0, θ1, the extrapolation) and every restart of every candidate join one pass per round.
    from em_spark.engine.loop import fit_em
    from em_spark.models import GaussianFamily

    X, _, _ = make_blobs(2000, 2, 3, separation=2.5, seed=6)
    ks, types = [2, 3, 4], ["full", "diag"]
    settings = FitSettings(max_iter=40, tol=1e-6, seed=3, n_init=2, acceleration="squarem")
    shared_source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=1)
    candidates = select_models(shared_source, ks, types, settings)
    separate_passes = 0
    for c in candidates:
        source = LocalBlockSource([Block(b) for b in np.array_split(X, 3)], seed=1)
        family = GaussianFamily(k=c.k, covariance_type=c.covarianceType)
        result = fit_em(family, source, settings)
        separate_passes += source.e_step_calls + 1  # + its criteria pass
        assert (c.numIter, c.converged) == (result.n_iter, result.converged)
        stats = source.e_step(family, result.params)
        assert c.avgLogLik == stats.loglik / stats.weight  # bit for bit
    assert shared_source.e_step_calls * 3 < separate_passes


def test_select_refuses_the_online_optimizer_before_spark_starts_and_train_takes_it():
    from em_spark.app.common import estimator_from_config
    from em_spark.app.select import run_select

    config = load_config("conf/local.yaml", ["fit.optimizer=online"])
    with pytest.raises(ConfigError, match="select fits its candidates with batch EM, but fit.optimizer is 'online'"):
        run_select(config)  # (no Spark session exists in this JVM-free test: the check comes first)
    online = load_config(
        "conf/local.yaml", ["fit.optimizer=online", "fit.miniBatchFraction=0.2", "fit.learningDecay=0.7"]
    )
    estimator = estimator_from_config(online, None)
    settings = estimator.fit_settings()
    assert (settings.optimizer, settings.mini_batch_fraction, settings.learning_decay) == ("online", 0.2, 0.7)
    with pytest.raises(ConfigError, match=r"fit.learningDecay.*in \(0.5, 1\]"):
        load_config("conf/local.yaml", ["fit.learningDecay=0.5"])
    with pytest.raises(ConfigError, match="fit.acceleration"):
        load_config("conf/local.yaml", ["fit.optimizer=online", "fit.acceleration=squarem"])
