"""Payload kinds: Pagelist growth and reuse, BioChain views, SegmentCursor, Pages offsets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.msgr.payload import PAGE_SIZE, BioChain, Pagelist, Pages, SegmentCursor


def _ceil(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE


def test_pagelist_grows_a_page_at_a_time_and_keeps_page_zero() -> None:
    pl = Pagelist()
    pl.append(b"x")
    first = pl.pages[0]
    expect = bytearray(b"x")
    for i in range(3000):
        chunk = bytes([i % 251]) * (i % 37 + 1)
        pl.append(chunk)
        expect += chunk
        assert pl.pages[0] is first  # never reallocated
        assert len(pl.pages) == _ceil(pl.length)
        assert all(len(p) == PAGE_SIZE for p in pl.pages)
    assert pl.length == len(expect)
    assert pl.tobytes() == bytes(expect)
    segs = pl.segments()
    assert [len(s) for s in segs[:-1]] == [PAGE_SIZE] * (len(segs) - 1)
    assert sum(len(s) for s in segs) == pl.length
    # segments are views of the pages themselves
    segs[0][0:1] = b"Z"
    assert first[0:1] == b"Z"


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=3 * PAGE_SIZE), max_size=20))
def test_pagelist_any_appends(chunks: list[bytes]) -> None:
    pl = Pagelist()
    for c in chunks:
        pl.append(c)
    joined = b"".join(chunks)
    assert pl.length == len(joined)
    assert len(pl.pages) == _ceil(len(joined))
    assert pl.tobytes() == joined


def test_pagelist_exact_page_boundaries() -> None:
    pl = Pagelist()
    pl.append(bytes(PAGE_SIZE))
    assert len(pl.pages) == 1
    pl.append(b"")
    assert len(pl.pages) == 1
    pl.append(b"a")
    assert len(pl.pages) == 2
    pl.append(bytes(PAGE_SIZE - 1))
    assert len(pl.pages) == 2 and pl.length == 2 * PAGE_SIZE


def test_pagelist_encoders_and_release_reuse() -> None:
    pl = Pagelist()
    pl.encode_u8(7)
    pl.encode_u32(0x01020304)
    pl.encode_u64(2**40 + 5)
    pl.encode_str("hé")
    pl.encode_bytes(b"\x00\x01")
    expect = (
        b"\x07" + (0x01020304).to_bytes(4, "little") + (2**40 + 5).to_bytes(8, "little")
        + (3).to_bytes(4, "little") + "hé".encode() + (2).to_bytes(4, "little") + b"\x00\x01"
    )
    assert pl.tobytes() == expect
    old_pages = pl.pages
    pl.release()
    assert pl.length == 0 and pl.pages == [] and pl.segments() == [] and pl.tobytes() == b""
    # the released pages are not touched by reuse
    snapshot = bytes(old_pages[0][: len(expect)])
    pl.append(b"new" * 3000)
    assert pl.tobytes() == b"new" * 3000
    assert len(pl.pages) == _ceil(9000)
    assert pl.pages[0] is not old_pages[0]
    assert bytes(old_pages[0][: len(expect)]) == snapshot


def test_biochain_shares_memory_with_caller() -> None:
    buf = bytearray(range(256)) * 64
    bio = BioChain.from_buffer(buf, 100, 5000)
    assert bio.length == 5000
    assert bio.tobytes() == bytes(buf[100:5100])
    buf[100] = 0xEE
    assert bio.segments()[0][0] == 0xEE
    bio.segments()[0][1] = 0xDD
    assert buf[101] == 0xDD

    other = bytearray(b"abcdefgh")
    bio.append(other, 2, 3)
    bio.append(other, 0, 0)  # empty: no segment
    bio.append(memoryview(other)[6:])
    assert len(bio.segments()) == 3
    assert bio.length == 5000 + 3 + 2
    other[2:5] = b"XYZ"
    assert bio.tobytes().endswith(b"XYZgh")
    for seg in bio.segments():
        assert isinstance(seg, memoryview)


def test_biochain_non_byte_formats_and_bounds() -> None:
    import array

    arr = array.array("I", [1, 2, 3, 4])
    bio = BioChain.from_buffer(arr)
    assert bio.length == 16
    assert bio.tobytes() == arr.tobytes()
    bio.segments()[0][0] = 9
    assert arr[0] == 9
    with pytest.raises(ValueError):
        BioChain.from_buffer(bytearray(10), 5, 6)
    with pytest.raises(ValueError):
        BioChain.from_buffer(bytearray(10), -1, 2)
    with pytest.raises(ValueError):
        BioChain().append(bytearray(10), 8, 3)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(lens=st.lists(st.integers(0, 40), max_size=8))
def test_segment_cursor_stop_resume_every_byte(lens: list[int]) -> None:
    bufs = [bytearray(bytes([i + 1]) * n) for i, n in enumerate(lens)]
    total = sum(lens)
    joined = b"".join(bufs)
    for stop in range(total + 1):
        cur = SegmentCursor([memoryview(b) for b in bufs])
        assert cur.remaining == total
        got = bytearray()
        # consume up to `stop` one byte at a time through current()
        while len(got) < stop:
            c = cur.current()
            assert len(c) > 0
            got += c[:1]
            cur.advance(1)
        assert cur.remaining == total - stop
        assert b"".join(bytes(v) for v in cur.views()) == joined[stop:]
        # resume: take the rest in the largest pieces current() offers
        while cur.remaining:
            c = cur.current()
            got += c
            cur.advance(len(c))
        assert bytes(got) == joined
        assert len(cur.current()) == 0
        assert list(cur.views()) == []
        with pytest.raises(ValueError):
            cur.advance(1)


def test_segment_cursor_writes_land_in_caller_memory() -> None:
    a, b = bytearray(5), bytearray(7)
    cur = SegmentCursor([memoryview(a), memoryview(bytearray(0)), memoryview(b)])
    src = bytes(range(1, 13))
    pos = 0
    for step in (3, 4, 5):
        while step:
            dst = cur.current()
            k = min(len(dst), step)
            dst[:k] = src[pos : pos + k]
            cur.advance(k)
            pos += k
            step -= k
    assert bytes(a) + bytes(b) == src


def test_pages_with_offset() -> None:
    p = Pages.alloc(10000, offset=100)
    assert len(p.pages) == _ceil(10100)
    segs = p.segments()
    assert [len(s) for s in segs] == [PAGE_SIZE - 100, PAGE_SIZE, 10000 - (2 * PAGE_SIZE - 100)]
    assert sum(len(s) for s in segs) == 10000
    segs[0][0:1] = b"Q"
    assert p.pages[0][100:101] == b"Q"
    assert p.tobytes()[:1] == b"Q"

    raw = [bytearray(bytes([i]) * PAGE_SIZE) for i in range(3)]
    p2 = Pages(raw, 5000, offset=4000)
    data = p2.tobytes()
    assert data == b"\x00" * 96 + b"\x01" * PAGE_SIZE + b"\x02" * (5000 - 96 - PAGE_SIZE)
    raw[1][0] = 0x77
    assert p2.tobytes()[96] == 0x77
    with pytest.raises(ValueError):
        Pages(raw, 3 * PAGE_SIZE, offset=1)
    with pytest.raises(ValueError):
        Pages(raw, 10, offset=PAGE_SIZE)
    empty = Pages.alloc(0)
    assert empty.segments() == [] and empty.length == 0
