"""dtype="float32": blocks stored in float32, validated in float64, statistics in float64.

The reference for every family is the float64 E-step of the same, float32-rounded, data:
widening is exact, so the two may differ only by the order of float64 additions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from em_spark.engine.arrow_input import FEATURES_FIELD, InputSpec, block_from_arrow
from em_spark.engine.block_codec import decode_block, encode_block
from em_spark.engine.executor_files import read_partition, write_partition
from em_spark.engine.load_summary import summarize_block
from em_spark.engine.validation import DataValidationError, check_loaded
from em_spark.models import FAMILIES, Block, GaussianFamily
from em_spark.models.compiled import KERNEL_ENV

RNG = np.random.default_rng(12)


def _rows(X: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({FEATURES_FIELD: pa.array([list(map(float, r)) for r in X])})


def test_the_codec_keeps_float32_rows_float32_and_float64_payloads_unchanged():
    X = RNG.normal(size=(7, 3))
    block = Block(X.astype(np.float32), RNG.random(7), labels=np.arange(7) % 2)
    back = decode_block(encode_block(block))
    assert back.X.dtype == np.float32
    np.testing.assert_array_equal(back.X, block.X)
    np.testing.assert_array_equal(back.weight, block.weight)
    np.testing.assert_array_equal(back.labels, block.labels)
    # float64 payloads are as before (no flag): 8 bytes per value, so old payloads still decode
    wide = encode_block(Block(X))
    assert len(wide) - len(encode_block(Block(X.astype(np.float32)))) == 4 * X.size
    assert decode_block(wide).X.dtype == np.float64
    np.testing.assert_array_equal(decode_block(wide).X, X)


def test_arrow_rows_are_validated_in_float64_then_rounded_to_float32():
    X = RNG.normal(size=(50, 4)) * 1e3
    block, problems, d = block_from_arrow(_rows(X), InputSpec(dtype="float32"))
    assert (block.X.dtype, d, block.n_rows) == (np.float32, 4, 50)
    np.testing.assert_array_equal(block.X, X.astype(np.float32))
    assert problems.overflow_rows == 0
    wide, _, _ = block_from_arrow(_rows(X))
    assert wide.X.dtype == np.float64  # the default stays float64


@pytest.mark.parametrize("sequences", [False, True])
def test_a_finite_value_beyond_float32_is_a_counted_bad_row_never_an_infinity(sequences):
    X = RNG.normal(size=(6, 2))
    X[1, 0] = 1e39  # finite in float64, inf in float32
    X[4, 1] = -3.5e38
    X[5, 0] = np.inf  # a non-finite row stays counted as such
    if sequences:
        batch = pa.RecordBatch.from_pydict(
            {FEATURES_FIELD: pa.array([[list(map(float, r)) for r in X[i : i + 2]] for i in range(0, 6, 2)])}
        )
    else:
        batch = _rows(X)
    spec = InputSpec(sequences=sequences, dtype="float32")
    block, problems, _ = block_from_arrow(batch, spec)
    assert np.isfinite(block.X).all()
    if sequences:  # sequences 0 and 2 hold an overflow, sequence 2 an infinity as well
        assert (problems.overflow_rows, problems.nonfinite_rows, block.n_rows) == (1, 1, 2)
    else:
        assert (problems.overflow_rows, problems.nonfinite_rows, block.n_rows) == (2, 1, 3)
    # float64 keeps those rows: they are finite
    _, wide, _ = block_from_arrow(batch, InputSpec(sequences=sequences))
    assert wide.overflow_rows == 0
    summary = summarize_block(block, 10, 0, problems, sequences=sequences)
    with pytest.raises(DataValidationError, match=r"overflows float32.*use dtype='float64' or rescale"):
        check_loaded(summary, 2, "column 'x'", None)


def test_an_unknown_dtype_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"dtype must be one of \['float64', 'float32'\], got 'float16'"):
        InputSpec(dtype="float16")


def test_executor_files_store_float32_rows_in_half_the_bytes(tmp_path):
    X = RNG.normal(size=(3000, 10))
    sizes = {}
    for dtype in (np.float64, np.float32):
        blocks = [Block(X[:1000].astype(dtype)), Block(X[1000:].astype(dtype))]
        handle = write_partition(str(tmp_path / np.dtype(dtype).name), 0, blocks)
        back = read_partition(handle)
        assert back is not None and all(b.X.dtype == dtype for b in back)
        np.testing.assert_array_equal(np.concatenate([b.X for b in back]), X.astype(dtype))
        sizes[dtype] = (tmp_path / np.dtype(dtype).name / "part-00000.x.bin").stat().st_size
    assert sizes[np.float32] == sizes[np.float64] // 2  # raw values, no header


def test_the_fingerprint_and_sample_of_a_float32_block_are_those_of_its_rounded_values():
    X = RNG.normal(size=(200, 3))
    narrow = summarize_block(Block(X.astype(np.float32)), 50, 0)
    rounded = summarize_block(Block(X.astype(np.float32).astype(np.float64)), 50, 0)
    assert narrow.data_identity == rounded.data_identity
    assert narrow.sample.X.dtype == np.float64  # initialization runs in float64 on the driver
    np.testing.assert_array_equal(narrow.sample.X, rounded.sample.X)


def _assert_float64_stats_agree(family, params, block32):
    rounded = Block(
        block32.X.astype(np.float64),
        block32.weight,
        None if block32.lengths is None else block32.lengths,
        block32.labels,
    )
    got, want = family.e_step(block32, params), family.e_step(rounded, params)
    assert set(got) == set(want)
    for name in want:
        assert np.asarray(got[name]).dtype == np.float64, name
        np.testing.assert_allclose(
            got[name], want[name], rtol=1e-12, atol=1e-12 * np.abs(want[name]).max(), err_msg=name
        )


@pytest.mark.parametrize("kernel", ["compiled", "numpy"])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
@pytest.mark.parametrize("missing", [False, True])
def test_gaussian_statistics_of_float32_rows_are_the_float64_statistics_of_the_rounded_rows(
    monkeypatch, kernel, covariance_type, missing
):
    monkeypatch.setenv(KERNEL_ENV, kernel)
    X = RNG.normal(size=(3000, 10)) + np.repeat(RNG.normal(scale=5, size=(5, 10)), 600, axis=0)
    if missing:
        X[RNG.random(X.shape) < 0.05] = np.nan
    family = GaussianFamily(k=5, covariance_type=covariance_type, handle_missing="model" if missing else "error")
    params = family.initialize(Block(np.nan_to_num(X[::7])), np.random.default_rng(0))
    weight = RNG.random(3000)
    labels = np.where(RNG.random(3000) < 0.1, RNG.integers(0, 5, 3000), -1)
    _assert_float64_stats_agree(family, params, Block(X.astype(np.float32), weight, labels=labels))


SAMPLES = {
    "kmeans": lambda: Block(RNG.normal(size=(400, 3)).astype(np.float32)),
    "categorical": lambda: Block(RNG.integers(0, 4, size=(400, 3)).astype(np.float32), RNG.random(400)),
    "gaussian_hmm": lambda: Block(RNG.normal(size=(400, 2)).astype(np.float32), lengths=np.array([150, 200, 50])),
    "categorical_hmm": lambda: Block(
        RNG.integers(0, 4, size=(400, 1)).astype(np.float32), lengths=np.array([150, 200, 50])
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_other_family_gives_float64_statistics_from_float32_rows(name):
    block = SAMPLES[name]()
    family = FAMILIES[name](k=3)
    params = family.initialize(Block(block.X.astype(np.float64), lengths=block.lengths), np.random.default_rng(1))
    _assert_float64_stats_agree(family, params, block)
