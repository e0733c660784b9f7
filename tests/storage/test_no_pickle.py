"""Nothing loaded from storage is unpickled: a model or checkpoint crafted to run code when
unpickled is refused, with a checksum that verifies and without one, and the code never runs."""

import io
import pickle

import numpy as np
import pytest

from em_spark.engine.loop import FitSettings, fit_em
from em_spark.engine.sources import LocalBlockSource
from em_spark.models import Block, GaussianFamily
from em_spark.storage import CorruptObjectError
from em_spark.storage.frame import seal


class _Exploit:
    """Unpickling this creates a marker file: proof that untrusted bytes ran as code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(marker, how: str) -> bytes:
    if how == "raw pickle":
        return pickle.dumps({"weights": _Exploit(marker)})
    if how == "sealed pickle":  # a valid checksum around a pickle: integrity is not trust
        return seal(pickle.dumps(_Exploit(marker)))
    buffer = io.BytesIO()  # an .npz whose array needs pickle to load
    np.savez(buffer, weights=np.array([_Exploit(marker)], dtype=object))
    return seal(buffer.getvalue())


HOW = ["raw pickle", "sealed pickle", "sealed npz with objects"]


@pytest.mark.parametrize("how", HOW)
def test_a_crafted_model_file_is_refused_and_never_executed(tmp_path, how):
    from em_spark.api import GaussianMixtureModel, load_model

    marker = tmp_path / "pwned"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.emsp").write_bytes(_crafted(str(marker), how))
    for load in (GaussianMixtureModel.load, load_model):
        with pytest.raises((CorruptObjectError, ValueError)) as info:
            load((tmp_path / "model").as_uri())
        assert "pickle" in str(info.value) or "checksum" in str(info.value) or "not an em_spark" in str(info.value)
    assert not marker.exists()


def _finished_run(tmp_path):
    X = np.random.default_rng(0).normal(size=(300, 2))
    settings = FitSettings(max_iter=4, tol=0.0, run_id="run", checkpoint_dir=tmp_path.as_uri(), keep_checkpoints=10)
    clean = fit_em(GaussianFamily(2), LocalBlockSource([Block(X)]), settings)
    newest = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    return X, settings, clean, newest


def test_a_pickle_in_place_of_the_newest_checkpoint_is_skipped_as_corrupt(tmp_path, caplog):
    # No valid checksum: it is damage, so resume falls back to the previous checkpoint.
    X, settings, clean, newest = _finished_run(tmp_path)
    marker = tmp_path / "pwned"
    newest.write_bytes(_crafted(str(marker), "raw pickle"))
    again = fit_em(GaussianFamily(2), LocalBlockSource([Block(X)]), settings)
    assert not marker.exists()
    assert "corrupt" in caplog.text and "fell back" in caplog.text
    for name, value in clean.params.items():
        np.testing.assert_array_equal(again.params[name], value)


@pytest.mark.parametrize("how", ["sealed pickle", "sealed npz with objects"])
def test_a_checksummed_checkpoint_holding_a_pickle_is_refused_loudly(tmp_path, how):
    # A valid checksum around pickled content was written on purpose: refuse, do not resume past it.
    X, settings, _, newest = _finished_run(tmp_path)
    marker = tmp_path / "pwned"
    newest.write_bytes(_crafted(str(marker), how))
    with pytest.raises(CorruptObjectError, match="pickle"):
        fit_em(GaussianFamily(2), LocalBlockSource([Block(X)]), settings)
    assert not marker.exists()
