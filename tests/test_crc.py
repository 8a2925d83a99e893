"""crc32c (rbdpy/crc.py): the fast library against crcmod's reference, incrementally, mixed
mid-stream, and over views of every buffer kind."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.crc import IMPLEMENTATION, crc32c, crc32c_reference, crc32c_segments


def test_fast_implementation_is_in_use() -> None:
    # the reference comparison below is only meaningful if two different codes are compared
    assert IMPLEMENTATION == "crc32c"
    assert crc32c is not crc32c_reference


@pytest.mark.parametrize("fn", [crc32c, crc32c_reference])
def test_check_value(fn) -> None:
    assert fn(b"123456789") == 0xE3069283
    assert fn(b"") == 0
    # RFC 3720 B.4 vectors (iSCSI): 32 bytes of zeros, of 0xff, and an ascending sequence
    assert fn(bytes(32)) == 0x8A9136AA
    assert fn(b"\xff" * 32) == 0x62A8AB43
    assert fn(bytes(range(32))) == 0x46DD794E


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=20_000),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
    seed=st.integers(min_value=0, max_value=0xFFFFFFFF),
)
def test_fast_matches_reference_split_anywhere(data: bytes, cuts: list[int], seed: int) -> None:
    whole = crc32c_reference(data)
    assert crc32c(data) == whole
    # incremental over random split points, each piece a memoryview slice (no copy) of a
    # writable buffer
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    mv = memoryview(bytearray(data))
    pieces = [mv[a:b] for a, b in zip(points, points[1:])]
    fast = ref = 0
    for p in pieces:
        # each slice on its own, from 0, is the crc of its bytes
        assert crc32c(p) == crc32c_reference(p) == crc32c_reference(bytes(p))
        fast = crc32c(p, fast)
        ref = crc32c_reference(p, ref)
    assert fast == ref == whole
    assert crc32c_segments(pieces) == whole
    # mixing the implementations mid-stream agrees too, whichever one starts
    for first in (0, 1):
        mixed = 0
        for i, p in enumerate(pieces):
            mixed = (crc32c if (i + first) % 2 else crc32c_reference)(p, mixed)
        assert mixed == whole
    # a nonzero starting crc continues the same way in both
    assert crc32c(data, seed) == crc32c_reference(data, seed)


def test_buffer_kinds_accepted_without_copy() -> None:
    raw = bytearray(np.random.default_rng(1).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    want = crc32c_reference(bytes(raw))
    mv = memoryview(raw)
    assert crc32c(raw) == want
    assert crc32c(mv) == want
    assert crc32c(mv[1000:50_000]) == crc32c_reference(bytes(raw[1000:50_000]))
    arr = np.frombuffer(raw, dtype=np.uint8)
    assert crc32c(memoryview(arr[7:9999])) == crc32c_reference(bytes(raw[7:9999]))
    assert crc32c_reference(mv[7:9999]) == crc32c_reference(bytes(raw[7:9999]))


def test_incremental_equals_whole_on_a_large_buffer() -> None:
    rng = random.Random(1234)
    data = rng.randbytes(4 << 20)
    mv = memoryview(data)
    # fixed odd steps, then random steps (1 byte to past 64 KiB)
    crc = 0
    for off in range(0, len(data), 65_537):
        crc = crc32c(mv[off : off + 65_537], crc)
    assert crc == crc32c(data)
    crc, pos = 0, 0
    while pos < len(data):
        n = rng.randint(1, 70_000)
        crc = crc32c(mv[pos : pos + n], crc)
        pos += n
    assert crc == crc32c(data)
    assert crc32c(data[: 1 << 20]) == crc32c_reference(data[: 1 << 20])


def test_a_single_bit_flip_changes_the_crc() -> None:
    data = bytearray(b"x" * 4096)
    base = crc32c(data)
    for bit in (0, 7, 4095 * 8, 2048 * 8 + 3):
        data[bit // 8] ^= 1 << (bit % 8)
        assert crc32c(data) != base
        data[bit // 8] ^= 1 << (bit % 8)
    assert crc32c(data) == base
