"""crc32c: the fast implementation against crcmod's reference, split, incremental, views."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.crc import crc32c, crc32c_reference, crc32c_segments


def test_check_value_both_implementations() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_reference(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0 == crc32c_reference(b"")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.binary(max_size=9000), cuts=st.lists(st.integers(0, 9000), max_size=8))
def test_fast_matches_reference_split_anywhere(data: bytes, cuts: list[int]) -> None:
    whole = crc32c(data)
    assert whole == crc32c_reference(data)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(points, points[1:])]
    fast = ref = 0
    for p in pieces:
        fast = crc32c(p, fast)
        ref = crc32c_reference(p, ref)
    assert fast == ref == whole
    assert crc32c_segments(pieces) == whole
    # mixing the implementations mid-stream agrees too
    mixed = 0
    for i, p in enumerate(pieces):
        mixed = (crc32c if i % 2 else crc32c_reference)(p, mixed)
    assert mixed == whole


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.binary(min_size=1, max_size=5000), a=st.integers(0, 5000), b=st.integers(0, 5000))
def test_memoryview_slices(data: bytes, a: int, b: int) -> None:
    a, b = sorted((a % (len(data) + 1), b % (len(data) + 1)))
    buf = bytearray(data)
    mv = memoryview(buf)[a:b]
    expect = crc32c_reference(data[a:b])
    assert crc32c(mv) == expect
    assert crc32c_reference(mv) == expect
    assert crc32c(bytes(mv)) == expect
    # a view over the middle continues an incremental crc over the prefix
    assert crc32c(memoryview(buf)[b:], crc32c(memoryview(buf)[:b])) == crc32c(data)


def test_incremental_equals_whole_large() -> None:
    import random

    rng = random.Random(1234)
    data = rng.randbytes(1 << 20)
    whole = crc32c(data)
    assert whole == crc32c_reference(data)
    crc, pos = 0, 0
    while pos < len(data):
        n = rng.randint(1, 70000)
        crc = crc32c(memoryview(data)[pos : pos + n], crc)
        pos += n
    assert crc == whole
