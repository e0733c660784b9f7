"""The nightly retrain, night by night, against a local registry."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em_spark.app.config import load_config
from em_spark.app.demo_data import make_blobs
from em_spark.app.nightly import run_nightly
from em_spark.engine import spark_source
from em_spark.storage.registry import ModelRegistry

pytestmark = pytest.mark.spark


def _night(root, date, shift=0.0, seed=1, rows=4000):
    X, _, _ = make_blobs(rows, 2, 3, separation=6.0, seed=42)  # same mixture every night...
    X = X[np.random.default_rng(seed).permutation(rows)] + shift  # ...optionally shifted
    path = root / "events" / f"date={date}"
    path.mkdir(parents=True)
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1]}), path / "part-0.parquet")


def _config(root, date, **overrides):
    sets = [
        f"nightly.date={date}",
        f"registry.uri={(root / 'registry').as_uri()}",
        f"nightly.inputPath={(root / 'events').as_uri()}/date={{date}}",
        "input.generate=",
        "fit.maxIter=60",
        "nightly.freshRestarts=1",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config("conf/nightly.yaml", sets)


def test_nights_promote_keep_and_report(spark, tmp_path):
    registry = ModelRegistry((tmp_path / "registry").as_uri())
    _night(tmp_path, "2026-11-20")
    first = run_nightly(_config(tmp_path, "2026-11-20"))
    assert first["decision"] == "promoted" and first["newVersion"] == 1
    assert registry.alias("demo-gmm") == 1
    meta = registry.get("demo-gmm", 1)
    assert {"trainAvgLogLik", "holdoutAvgLogLik", "bic", "numIter", "wallSeconds"} <= set(meta.metrics)
    assert meta.run_id == "demo-gmm-2026-11-20" and meta.data_fingerprint.startswith("rows=")

    again = run_nightly(_config(tmp_path, "2026-11-20"))
    assert again["alreadyDone"] and len(registry.versions("demo-gmm")) == 1
    # the night's fit left a metrics file next to its checkpoints, as a train run does
    import json

    metrics = json.loads(
        (tmp_path / "registry" / "demo-gmm" / "checkpoints" / "demo-gmm-2026-11-20" / "metrics.json").read_text()
    )
    assert metrics["runId"] == "demo-gmm-2026-11-20" and metrics["status"] == "finished"

    _night(tmp_path, "2026-11-21", seed=2)  # same world: no drift, no retrain
    calm = run_nightly(_config(tmp_path, "2026-11-21"))
    assert calm["decision"] == "kept" and "no retrain" in calm["reason"]
    assert abs(calm["drift"]["drop"]) < 0.05 and len(registry.versions("demo-gmm")) == 1

    _night(tmp_path, "2026-11-22", shift=1.5, seed=3)  # the world moved
    moved = run_nightly(_config(tmp_path, "2026-11-22"))
    assert moved["drift"]["drop"] > 0.05 and moved["newVersion"] == 2
    assert moved["decision"] == "promoted" and registry.alias("demo-gmm") == 2
    mapping = moved["componentMapping"]
    assert sorted(m["fromFitted"] for m in mapping) == [0, 1, 2]
    new = registry.get("demo-gmm", 2)
    assert new.extra["warmStartFrom"] == 1
    # ids are stable: each component's mean moved by about the shift, not across the map
    assert all(abs(m["meanShift"] - 1.5 * np.sqrt(2)) < 0.3 for m in mapping), mapping

    _night(tmp_path, "2026-11-23", shift=-1.5, seed=4)
    gated = run_nightly(_config(tmp_path, "2026-11-23", **{"nightly.promotionTolerance": -100.0}))
    assert gated["decision"] == "kept" and "worse on the holdout" in gated["reason"]
    assert registry.alias("demo-gmm") == 2 and gated["newVersion"] == 3


def test_killed_night_resumes_and_registers_once(spark, tmp_path, monkeypatch):
    _night(tmp_path, "2026-11-20")
    real = spark_source.SparkBlockSource.e_step_many
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the restarts share each pass: this is the second one
            raise KeyboardInterrupt("driver killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", dying)
    with pytest.raises(KeyboardInterrupt):
        run_nightly(_config(tmp_path, "2026-11-20"))
    monkeypatch.setattr(spark_source.SparkBlockSource, "e_step_many", real)
    report = run_nightly(_config(tmp_path, "2026-11-20"))
    assert report["decision"] == "promoted"
    assert [v.version for v in ModelRegistry((tmp_path / "registry").as_uri()).versions("demo-gmm")] == [1]


def _sequence_night(root, date, shift=0.0, seed=1):
    from em_spark.app.demo_data import make_hmm_sequences

    X, _, _ = make_hmm_sequences(300, 30, 2, 3, separation=5.0, seed=42 + seed)
    path = root / "sequences" / f"date={date}"
    path.mkdir(parents=True)
    obs = pa.array((X + shift).tolist(), pa.list_(pa.list_(pa.float64())))
    pq.write_table(pa.table({"id": np.arange(len(X)), "obs": obs}), path / "part-0.parquet")


def test_a_hidden_markov_model_retrains_nightly_with_states_matched_to_production(spark, tmp_path):
    # The same nightly machinery for another family: holdout by whole sequences, drift per
    # sequence, states matched by their emissions so that state ids survive the retrain.
    registry = ModelRegistry((tmp_path / "registry").as_uri())
    sets = {
        "model.family": "gaussian_hmm",
        "model.k": 3,
        "model.covarianceType": "diag",
        "input.features": "obs",
        "registry.modelName": "demo-hmm",
        "nightly.inputPath": f"{(tmp_path / 'sequences').as_uri()}/date={{date}}",
        "fit.tol": 1e-4,
    }
    _sequence_night(tmp_path, "2026-11-20")
    first = run_nightly(_config(tmp_path, "2026-11-20", **sets))
    assert first["decision"] == "promoted" and registry.alias("demo-hmm") == 1
    assert first["rows"]["train"] + first["rows"]["holdout"] == 300  # sequences, never split

    _sequence_night(tmp_path, "2026-11-21", shift=1.0, seed=1)
    moved = run_nightly(_config(tmp_path, "2026-11-21", **sets))
    assert moved["drift"]["drop"] > 0.05 and moved["newVersion"] == 2
    mapping = moved["componentMapping"]
    assert sorted(m["fromFitted"] for m in mapping) == [0, 1, 2]
    # every state's mean moved by about the shift: matched to itself, not to a neighbour
    assert all(abs(m["meanShift"] - np.sqrt(2)) < 0.4 for m in mapping), mapping
    from em_spark.api import model_from_bytes

    new, old = (model_from_bytes(registry.load_bytes("demo-hmm", v)) for v in (2, 1))
    np.testing.assert_allclose(new.means, old.means + 1.0, atol=0.4)


def test_an_incremental_night_updates_production_with_tonights_rows_only(spark, tmp_path):
    import dataclasses

    from em_spark.api import model_from_bytes
    from em_spark.app.common import read_input
    from em_spark.app.nightly import holdout_mask

    registry = ModelRegistry((tmp_path / "registry").as_uri())
    incremental = {"nightly.mode": "incremental", "nightly.halfLife": 2.0}
    _night(tmp_path, "2026-11-20")
    first = run_nightly(_config(tmp_path, "2026-11-20", **incremental))  # no production yet: a full fit
    assert first["decision"] == "promoted" and first["fitMode"] == "full"
    v1 = model_from_bytes(registry.load_bytes("demo-gmm", 1))
    assert v1.statistics is not None and v1.statistics.count == first["rows"]["train"]

    _night(tmp_path, "2026-11-21", shift=1.5, seed=3, rows=3000)  # the world moved: drift, retrain
    config = _config(tmp_path, "2026-11-21", **incremental)
    moved = run_nightly(config)
    assert moved["fitMode"] == "incremental" and moved["newVersion"] == 2 and moved["decision"] == "promoted"
    v2 = model_from_bytes(registry.load_bytes("demo-gmm", 2))
    decay = 0.5 ** (1 / 2.0)
    # the statistics behind v2: v1's, decayed, plus tonight's training rows (no earlier night re-read)
    assert v2.statistics.count == pytest.approx(decay * first["rows"]["train"] + moved["rows"]["train"], rel=1e-12)
    assert registry.get("demo-gmm", 2).extra["mode"] == "incremental"
    # it is exactly production updated with tonight's training rows (ids kept: the update continues v1)
    night = dataclasses.replace(
        config, input=dataclasses.replace(config.input, path=config.nightly.inputPath.replace("{date}", "2026-11-21"))
    )
    data = read_input(spark, night)
    train = data.where(~holdout_mask(data, config.input.features, config.nightly.holdoutFraction))
    v1.setParams(featuresCol=config.input.features)
    direct = v1.update(train, halfLife=2.0, maxIter=config.fit.maxIter, tol=config.fit.tol)
    assert [m["fromFitted"] for m in moved["componentMapping"]] == [0, 1, 2]
    for name, value in direct.public_params().items():
        np.testing.assert_allclose(v2.public_params()[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
    # history still counts: each mean moved part of the way (tonight's share of the weight), not all of it
    assert all(0.2 < m["meanShift"] / (1.5 * np.sqrt(2)) < 0.9 for m in moved["componentMapping"]), moved
