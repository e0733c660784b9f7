"""The array container: exact round trips, and refusal of anything damaged or unsafe."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct

import numpy as np
import pytest

from em_spark.storage import CorruptObjectError, UnsupportedContentError, pack, unpack
from em_spark.storage.codec import CODEC_MAGIC, CODEC_VERSION


def _small_blob() -> bytes:
    arrays = {"w": np.array([0.25, 0.75]), "n": np.array([3, 4]), "b": np.array(True)}
    return pack({"family": "gaussian", "k": 2}, arrays)


def test_round_trip_preserves_values_dtypes_shapes_and_meta():
    arrays = {
        "means": np.array([[1.0, -2.5], [np.nan, np.inf]]),
        "neg_inf": np.array([-np.inf, -0.0, 5e-324, np.finfo(np.float64).max]),
        "counts": np.array([[0, -1, 2**62]], dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.empty((0, 3)),
        "empty_bool": np.zeros(0, dtype=bool),
        "scalar": np.array(7.5),
        "int_scalar": np.array(-3, dtype=np.int64),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.array([1.5, 2.5], dtype=">f8"),
    }
    meta = {"family": "gaussian", "nested": {"a": [1, 2.5, None, True], "b": {"c": "é"}}, "history": (-np.inf, 1.0)}
    meta_out, arrays_out = unpack(pack(meta, arrays))
    assert meta_out == {**meta, "history": [-np.inf, 1.0]}  # tuples come back as lists (JSON)
    assert list(arrays_out) == list(arrays)
    for name, original in arrays.items():
        got = arrays_out[name]
        assert got.shape == original.shape, name
        assert got.dtype == original.dtype.newbyteorder("="), name
        # bitwise equality: NaN payloads, -0.0 and infinities must survive exactly
        assert got.tobytes() == np.ascontiguousarray(original, dtype=got.dtype).tobytes(), name


def test_unpacked_arrays_are_writable_independent_copies():
    blob = pack({}, {"x": np.arange(4.0)})
    _, first = unpack(blob)
    first["x"][0] = 99.0
    _, second = unpack(blob)
    assert first["x"].flags.writeable and first["x"].flags.owndata
    assert second["x"][0] == 0.0


def test_numpy_scalars_in_meta_become_plain_json():
    meta = {"n": np.int64(3), "x": np.float64(0.5), "ok": np.bool_(True), "tol": [np.float32(0.25)], "s": np.str_("a")}
    meta, _ = unpack(pack(meta, {}))
    assert meta == {"n": 3, "x": 0.5, "ok": True, "tol": [0.25], "s": "a"}
    assert type(meta["n"]) is int and type(meta["ok"]) is bool


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}], dtype=object),
        np.array(["text"]),
        np.array([1.0], dtype=np.float32),
        np.array([1], dtype=np.int32),
        np.array([1 + 2j]),
        np.array(["2026-01-01"], dtype="datetime64[D]"),
    ],
    ids=["object", "str", "float32", "int32", "complex", "datetime"],
)
def test_unsupported_dtypes_are_refused_with_the_allowed_list(value):
    with pytest.raises(UnsupportedContentError, match="only float64, int64 and bool") as info:
        pack({}, {"x": value})
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_object_dtype_message_mentions_pickle():
    with pytest.raises(UnsupportedContentError, match="pickle"):
        pack({}, {"x": np.array([None], dtype=object)})


@pytest.mark.parametrize(
    "meta, where",
    [
        ({"s": {1, 2}}, r"meta\['s'\] has type 'set'"),
        ({"a": [object()]}, r"meta\['a'\]\[0\]"),
        ({"arr": np.zeros(2)}, "store arrays in `arrays`"),
        ({1: "x"}, "non-string key 1"),
        ({"c": np.complex128(1j)}, "complex"),
        ({"b": b"raw"}, "bytes"),
    ],
)
def test_meta_that_json_cannot_represent_is_refused(meta, where):
    with pytest.raises(UnsupportedContentError, match=where):
        pack(meta, {})


def test_bad_array_names_are_refused():
    with pytest.raises(UnsupportedContentError, match="non-empty strings"):
        pack({}, {"": np.zeros(1)})


def test_a_real_pickle_file_is_refused_without_loading(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CorruptObjectError, match="pickled content is never loaded") as info:
        unpack(path.read_bytes())
    assert "Python pickle" in str(info.value)


@pytest.mark.parametrize("save", ["npy", "npz"])
def test_numpy_files_with_object_arrays_are_refused(tmp_path, save):
    buffer = io.BytesIO()
    objects = np.array([{"a": 1}, None], dtype=object)
    if save == "npy":
        np.save(buffer, objects, allow_pickle=True)
    else:
        np.savez(buffer, objects=objects)
    (tmp_path / f"x.{save}").write_bytes(buffer.getvalue())
    with pytest.raises(CorruptObjectError, match="pickled content is never loaded"):
        unpack((tmp_path / f"x.{save}").read_bytes())


def test_every_truncation_is_detected():
    blob = _small_blob()
    for length in range(len(blob)):
        with pytest.raises(CorruptObjectError):
            unpack(blob[:length])


def test_every_single_byte_flip_is_detected():
    blob = _small_blob()
    header_length = struct.unpack_from("<Q", blob, 10)[0]
    data_start = 18 + header_length
    positions = [0, 7, 8, 9, 10, 17, 18, 18 + header_length // 2, data_start - 1, data_start]
    positions += [len(blob) - 33, len(blob) - 32, len(blob) - 1]  # last data byte, checksum
    for position in positions:
        for mask in range(1, 256):
            damaged = bytearray(blob)
            damaged[position] ^= mask
            with pytest.raises(CorruptObjectError):
                unpack(bytes(damaged))
    for position in range(len(blob)):  # and one flip at every position
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(CorruptObjectError):
            unpack(bytes(damaged))


def test_appended_bytes_are_detected():
    with pytest.raises(CorruptObjectError):
        unpack(_small_blob() + b"\x00")


def test_unknown_version_is_named():
    blob = bytearray(_small_blob())
    blob[8:10] = struct.pack("<H", CODEC_VERSION + 1)
    with pytest.raises(CorruptObjectError, match="unsupported format version 2"):
        unpack(bytes(blob))


def _crafted(header: object, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    """A container with a *valid* checksum around an arbitrary header: the parser
    must not rely on the checksum for structure, only for integrity."""
    header_bytes = raw_header if raw_header is not None else json.dumps(header).encode()
    body = struct.pack("<8sHQ", CODEC_MAGIC, CODEC_VERSION, len(header_bytes)) + header_bytes + data
    return body + hashlib.sha256(body).digest()


def _entry(**overrides):
    entry = {"name": "x", "dtype": "float64", "shape": [2], "offset": 0, "nbytes": 16}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"meta": {}, "arrays": [_entry(dtype="object")]}, bytes(16), "only .* are ever loaded"),
        ({"meta": {}, "arrays": [_entry(dtype="|O")]}, bytes(16), "only .* are ever loaded"),
        ({"meta": {}, "arrays": [_entry(shape=[3])]}, bytes(16), "does not match shape"),
        ({"meta": {}, "arrays": [_entry(shape=[-2], nbytes=-16)]}, b"", "invalid shape"),
        ({"meta": {}, "arrays": [_entry(shape=[True, 2], nbytes=16)]}, bytes(16), "invalid shape"),
        ({"meta": {}, "arrays": [_entry(offset=8)]}, bytes(24), "offset 8 should be 0"),
        ({"meta": {}, "arrays": [_entry(shape=[4], nbytes=32)]}, bytes(16), "run past the data section"),
        ({"meta": {}, "arrays": [_entry()]}, bytes(24), "data section has 24"),
        ({"meta": {}, "arrays": [_entry(), _entry(offset=16)]}, bytes(32), "appears twice"),
        ({"meta": {}, "arrays": [_entry(dtype="bool", nbytes=2)]}, b"\x01\x02", "other than 0 and 1"),
        ({"meta": {}, "arrays": ["x"]}, b"", "not an object"),
        ({"meta": {}, "arrays": [_entry(name=7)]}, bytes(16), "no valid name"),
        ({"meta": [], "arrays": []}, b"", "must be an object"),
        ([1, 2], b"", "must be an object"),
    ],
)
def test_crafted_headers_with_valid_checksums_are_refused(header, data, message):
    with pytest.raises(CorruptObjectError, match=message):
        unpack(_crafted(header, data))


def test_header_that_is_not_json_is_refused():
    with pytest.raises(CorruptObjectError, match="not valid UTF-8 JSON"):
        unpack(_crafted(None, raw_header=b"\xff{"))


def test_deeply_nested_header_is_refused():
    with pytest.raises(CorruptObjectError, match="not valid UTF-8 JSON"):
        unpack(_crafted(None, raw_header=b"[" * 100_000))


def test_meta_with_nan_round_trips():
    meta, _ = unpack(pack({"loglik": float("nan")}, {}))
    assert np.isnan(meta["loglik"])


def test_header_length_past_the_end_is_refused():
    body = struct.pack("<8sHQ", CODEC_MAGIC, CODEC_VERSION, 10**6) + b"{}"
    with pytest.raises(CorruptObjectError, match="runs past the end"):
        unpack(body + hashlib.sha256(body).digest())
