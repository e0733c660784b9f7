"""The nInit restarts of one fit share each data pass: one pass per round for every restart still
running, each restart exactly the one run alone, and exact resume from a kill in any round."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import Killed, KilledAfter, one_after_another

from em_spark.app.demo_data import make_blobs
from em_spark.engine.loop import FitSettings, ResumeMismatchError, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import CategoricalMixtureFamily, GaussianFamily
from em_spark.models.base import Block
from em_spark.storage import CheckpointStore, pack


def _gaussian():
    X, _, _ = make_blobs(3000, 3, 4, separation=2.0, seed=7)
    return GaussianFamily(k=4, init_mode="random"), [Block(b) for b in np.array_split(X, 4)]


def _categorical():
    rng = np.random.default_rng(3)
    z = rng.integers(0, 3, 2000)
    codes = np.column_stack([(z + rng.integers(0, 2, 2000)) % 3, (2 * z + rng.integers(0, 3, 2000)) % 4])
    return CategoricalMixtureFamily(k=3, n_categories=(3, 4)), [
        Block(b) for b in np.array_split(codes.astype(float), 3)
    ]


CASES = {"gaussian": _gaussian, "categorical": _categorical}


def _source(blocks):
    return LocalBlockSource(blocks, sample_size=500, seed=11)


def _assert_same_params(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_restarts_side_by_side_are_the_restarts_one_after_another_bit_for_bit(case):
    family, blocks = CASES[case]()
    settings = FitSettings(max_iter=60, tol=1e-3, n_init=3, seed=2)
    reference = one_after_another(family, _source(blocks), settings)
    source = _source(blocks)
    result = fit_em(family, source, settings)
    assert len(result.restarts) == 3
    for outcome, (params, history) in zip(result.restarts, reference):
        assert outcome.history == history
        _assert_same_params(outcome.params, params)
    lengths = [len(history) for _, history in reference]
    assert len(set(lengths)) > 1  # the restarts converged at different rounds: the early ones dropped out
    assert source.e_step_calls == max(lengths)  # one pass per round, for every restart still running
    finals = [history[-1] for _, history in reference]
    assert result.restart == finals.index(max(finals))  # the best, the first of equals
    assert result.history == reference[result.restart][1]


def test_a_tie_keeps_the_first_restart_as_one_after_another_would():
    family, blocks = _gaussian()
    X = np.concatenate([b.X for b in blocks])
    init = GaussianFamily(k=4).initialize(_source(blocks).sample, np.random.default_rng(0))

    class Same(GaussianFamily):  # every restart starts from the same parameters
        def initialize(self, sample, rng):
            return {k: v.copy() for k, v in init.items()}

    result = fit_em(Same(k=4), _source([Block(X)]), FitSettings(max_iter=5, tol=0.0, n_init=3, seed=1))
    assert [o.history for o in result.restarts[1:]] == [result.restarts[0].history] * 2
    assert result.restart == 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("killed_after", [0, 1, 5, 20])  # 20: after the first restart dropped out
def test_a_run_killed_in_any_round_resumes_bit_identically(tmp_path, case, killed_after):
    family, blocks = CASES[case]()
    kw = dict(max_iter=60, tol=1e-3, n_init=3, seed=2)
    reference = fit_em(family, _source(blocks), FitSettings(**kw))
    rounds = max(len(o.history) for o in reference.restarts)
    settings = FitSettings(**kw, run_id="rs", checkpoint_dir=str(tmp_path))
    with pytest.raises(Killed):
        fit_em(family, KilledAfter(blocks, killed_after, sample_size=500, seed=11), settings)
    assert CheckpointStore(str(tmp_path), "rs").sequences()[-1:] == ([killed_after] if killed_after else [])
    again = _source(blocks)
    resumed = fit_em(family, again, settings)
    assert again.e_step_calls == rounds - killed_after  # only the missing rounds
    assert resumed.restart == reference.restart and resumed.history == reference.history
    for a, b in zip(resumed.restarts, reference.restarts):
        assert a.history == b.history
        _assert_same_params(a.params, b.params)


def test_squarem_restarts_share_each_pass_and_each_is_the_fit_it_would_be_alone():
    family, blocks = _gaussian()
    kw = dict(max_iter=40, tol=1e-7, seed=2, acceleration="squarem")
    source = _source(blocks)
    result = fit_em(family, source, FitSettings(**kw, n_init=3))
    sample = _source(blocks).sample
    for restart, outcome in enumerate(result.restarts):
        init = family.initialize(sample, np.random.default_rng([2, restart]))
        alone = fit_em(family, _source(blocks), FitSettings(**kw), init)  # (no M-step re-seeded anything here)
        assert outcome.history == alone.history
        _assert_same_params(outcome.params, alone.params)
    # every SQUAREM pass (θ0, θ1 or the extrapolation, whichever each restart is at) in one shared pass
    assert source.e_step_calls == max(len(o.history) for o in result.restarts)


def test_a_checkpoint_of_restarts_one_after_another_is_refused_with_what_to_do(tmp_path):
    family, blocks = _gaussian()
    settings = FitSettings(max_iter=3, tol=0.0, n_init=2, seed=1, run_id="old", checkpoint_dir=str(tmp_path))
    fit_em(family, _source(blocks), settings)
    store = CheckpointStore(str(tmp_path), "old")
    from em_spark.storage import unpack

    meta, arrays = unpack(store.latest().payload)
    old = {"format": 1, "identity": meta["identity"], "restart": 0, "iteration": 1, "history": [-1.0]}
    store.commit(store.latest().sequence + 1, pack({**old, "converged": False, "done": False, "best": None}, {}))
    with pytest.raises(ResumeMismatchError, match=r"has format 1 \(restarts one after another.*use a new runId"):
        fit_em(family, _source(blocks), settings)
