"""The sealed envelope around checkpoint and model payloads."""

from __future__ import annotations

import pickle

import pytest

from em_spark.storage import CorruptObjectError, seal, unseal
from em_spark.storage.frame import FRAME_MAGIC


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 3])
def test_round_trip(payload):
    assert unseal(seal(payload)) == payload


def test_accepts_bytes_like():
    assert unseal(bytearray(seal(memoryview(b"abc")))) == b"abc"


def test_every_truncation_and_every_flip_is_detected():
    sealed = seal(b"payload bytes")
    for length in range(len(sealed)):
        with pytest.raises(CorruptObjectError):
            unseal(sealed[:length])
    for position in range(len(sealed)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(sealed)
            damaged[position] ^= mask
            with pytest.raises(CorruptObjectError):
                unseal(bytes(damaged))


@pytest.mark.parametrize(
    "data, message",
    [
        (seal(b"abc") + b"!", "header says the payload has 3 bytes but 4 follow"),
        (seal(b"abc")[:-1], "header says the payload has 3 bytes but 2 follow"),
        (FRAME_MAGIC + b"\x00", "truncated header"),
        (b"NOTSEAL!" + bytes(40), "wrong magic"),
        (seal(b"abc")[:-1] + b"d", "checksum mismatch"),
        (pickle.dumps([1, 2]), "pickled content is never loaded"),
    ],
)
def test_failures_say_what_failed(data, message):
    with pytest.raises(CorruptObjectError, match=message):
        unseal(data)
