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
