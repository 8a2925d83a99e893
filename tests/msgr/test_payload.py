"""rbdpy/msgr/payload.py: Pages, Pagelist, BioChain, and the SegmentCursor that walks them."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.msgr.payload import PAGE_SIZE, BioChain, Pagelist, Pages, SegmentCursor


def _rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---- Pagelist ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=3 * PAGE_SIZE), max_size=30))
def test_pagelist_grows_page_by_page(chunks: list[bytes]) -> None:
    pl = Pagelist()
    total = 0
    for c in chunks:
        pl.append(c)
        total += len(c)
        assert pl.length == total
        assert len(pl.pages) == math.ceil(total / PAGE_SIZE)
        assert all(len(p) == PAGE_SIZE for p in pl.pages)
    assert pl.tobytes() == b"".join(chunks)
    segs = pl.segments()
    assert [len(s) for s in segs[:-1]] == [PAGE_SIZE] * (len(segs) - 1)
    assert sum(len(s) for s in segs) == total


def test_pagelist_never_reallocates_earlier_pages() -> None:
    pl = Pagelist()
    pl.append(b"A" * 10)
    page0 = pl.pages[0]
    view0 = memoryview(page0)  # an exported buffer: a resize of page0 would raise BufferError
    kept = []
    data = _rand(PAGE_SIZE * 50 + 123, seed=3)
    for i in range(0, len(data), 777):
        pl.append(data[i : i + 777])
        kept.append(pl.pages[-1])
    assert pl.pages[0] is page0
    # every page object seen while growing is still the very page in the list
    assert all(any(p is k for p in pl.pages) for k in kept)
    assert len(pl.pages) == math.ceil((10 + len(data)) / PAGE_SIZE)
    assert bytes(view0[:10]) == b"A" * 10
    assert pl.tobytes() == b"A" * 10 + data
    # segments are views of the pages themselves, not copies
    segs = pl.segments()
    assert segs[0].obj is page0
    page0[0] = ord("Z")
    assert bytes(segs[0][:1]) == b"Z"


def test_pagelist_encoders_and_exact_page_boundaries() -> None:
    pl = Pagelist()
    pl.append(b"x" * (PAGE_SIZE - 3))
    pl.encode_u32(0xDEADBEEF)  # straddles the page boundary
    assert len(pl.pages) == 2
    pl.encode_u8(7)
    pl.encode_u64(1 << 60)
    pl.encode_str("héllo")
    pl.encode_bytes(b"")
    pl.encode_bytes(b"\x00\x01")
    raw = pl.tobytes()
    body = raw[PAGE_SIZE - 3 :]
    assert struct.unpack_from("<IBQI", body) == (0xDEADBEEF, 7, 1 << 60, len("héllo".encode()))
    assert body[17:23] == "héllo".encode()
    assert body[23:] == b"\0\0\0\0" + b"\2\0\0\0\x00\x01"
    # exactly one full page: no empty extra page
    one = Pagelist()
    one.append(bytes(PAGE_SIZE))
    assert len(one.pages) == 1 and len(one.segments()) == 1
    one.append(b"")
    assert len(one.pages) == 1 and one.length == PAGE_SIZE
    one.append(b"\1")
    assert len(one.pages) == 2 and [len(s) for s in one.segments()] == [PAGE_SIZE, 1]
    one.append(bytes(PAGE_SIZE - 1))  # the second page exactly full: still two
    assert len(one.pages) == 2 and one.length == 2 * PAGE_SIZE


def test_pagelist_release_and_reuse() -> None:
    pl = Pagelist()
    pl.append(_rand(3 * PAGE_SIZE + 5))
    old_pages = pl.pages
    snapshot = [bytes(p) for p in old_pages]
    pl.release()
    assert pl.length == 0 and pl.pages == [] and pl.segments() == [] and pl.tobytes() == b""
    pl.append(b"again")
    assert pl.tobytes() == b"again"
    assert len(pl.pages) == 1
    assert all(pl.pages[0] is not p for p in old_pages)  # a fresh page, the old ones dropped
    pl.append(b"!" * PAGE_SIZE)
    assert pl.length == 5 + PAGE_SIZE and len(pl.pages) == 2
    # reuse writes only to its own pages: the released ones are untouched
    assert [bytes(p) for p in old_pages] == snapshot


def test_pagelist_accepts_views_and_numpy() -> None:
    src = np.arange(3000, dtype=np.uint32)  # 12000 bytes, non-byte format
    pl = Pagelist()
    pl.append(memoryview(src))
    pl.append(memoryview(bytearray(b"abc"))[1:])
    assert pl.length == 12002
    assert pl.tobytes() == src.tobytes() + b"bc"


# ---- BioChain ------------------------------------------------------------------------------


def test_biochain_segments_are_views_of_the_callers_buffer() -> None:
    buf = bytearray(_rand(20_000, seed=5))
    arr = np.zeros(10_000, dtype=np.uint8)
    bio = BioChain()
    bio.append(buf, 100, 5000)
    bio.append(arr, 10, 1000)
    bio.append(buf, 19_000)  # to the end
    bio.append(buf, 50, 0)  # empty extents add no segment
    bio.append(memoryview(buf)[6000:6010])  # a view is taken as it is
    assert bio.length == 5000 + 1000 + 1000 + 10
    assert len(bio.segments()) == 4
    assert all(isinstance(s, memoryview) for s in bio.segments())
    segs = bio.segments()
    assert np.shares_memory(np.frombuffer(segs[0], np.uint8), np.frombuffer(buf, np.uint8))
    assert np.shares_memory(np.frombuffer(segs[1], np.uint8), arr)
    # writes to the source show through the segments, and the other way round
    buf[100] ^= 0xFF
    assert segs[0][0] == buf[100]
    arr[10] = 42
    assert segs[1][0] == 42
    segs[2][0] = 7
    assert buf[19_000] == 7
    buf[6005] = 0x5A
    assert segs[3][5] == 0x5A
    assert bio.tobytes() == (bytes(buf[100:5100]) + arr[10:1010].tobytes()
                             + bytes(buf[19_000:]) + bytes(buf[6000:6010]))


def test_biochain_from_buffer_and_bounds() -> None:
    buf = bytearray(100)
    b = BioChain.from_buffer(buf, 10, 20)
    assert b.length == 20 and b.segments()[0].obj is buf
    assert BioChain.from_buffer(buf).length == 100
    for off, ln in [(-1, 5), (90, 20), (50, -10)]:
        with pytest.raises(ValueError):
            BioChain.from_buffer(buf, off, ln)
        with pytest.raises(ValueError):
            BioChain().append(buf, off, ln)
    # a multi-byte-format buffer is addressed in bytes
    words = np.arange(10, dtype=np.uint64)
    wb = BioChain.from_buffer(words, 8, 16)
    assert wb.length == 16 and wb.tobytes() == words[1:3].tobytes()
    wb.segments()[0][0] = 0xAB  # still a view: the write lands in the caller's words
    assert words[1] == 0xAB


# ---- Pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 100, PAGE_SIZE - 1])
@pytest.mark.parametrize("length", [0, 1, PAGE_SIZE - 1, PAGE_SIZE, 3 * PAGE_SIZE + 17])
def test_pages_with_offset(offset: int, length: int) -> None:
    p = Pages.alloc(length, offset)
    assert len(p.pages) == math.ceil((offset + length) / PAGE_SIZE)
    segs = p.segments()
    assert sum(len(s) for s in segs) == length
    if length:
        assert len(segs[0]) == min(length, PAGE_SIZE - offset)
    else:
        assert segs == []
    # fill through the segments and read back from the pages themselves
    data = _rand(length, seed=offset + length)
    pos = 0
    for s in segs:
        s[:] = data[pos : pos + len(s)]
        pos += len(s)
    assert p.tobytes() == data
    flat = b"".join(bytes(pg) for pg in p.pages)
    assert flat[offset : offset + length] == data


def test_pages_are_views_and_validate() -> None:
    pages = [bytearray(PAGE_SIZE), bytearray(PAGE_SIZE)]
    p = Pages(pages, PAGE_SIZE, offset=10)
    segs = p.segments()
    assert [len(s) for s in segs] == [PAGE_SIZE - 10, 10]
    pages[1][9] = 99
    assert segs[1][9] == 99
    with pytest.raises(ValueError):
        Pages(pages, 2 * PAGE_SIZE - 9, offset=10)
    with pytest.raises(ValueError):
        Pages(pages, 10, offset=PAGE_SIZE)
    with pytest.raises(ValueError):
        Pages(pages, 10, offset=-1)


# ---- SegmentCursor -------------------------------------------------------------------------


def _segs(sizes: list[int]) -> tuple[list[memoryview], bytes]:
    data = _rand(sum(sizes), seed=len(sizes))
    out, pos = [], 0
    for n in sizes:
        out.append(memoryview(bytearray(data[pos : pos + n])))
        pos += n
    return out, data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), max_size=8))
def test_cursor_stops_and_resumes_at_every_byte(sizes: list[int]) -> None:
    segs, data = _segs(sizes)
    total = len(data)
    for stop in range(total + 1):
        cur = SegmentCursor(segs)
        assert cur.remaining == total
        # walk to ``stop`` one byte at a time, checking the byte under the cursor each step
        for i in range(stop):
            assert cur.current()[0] == data[i]
            cur.advance(1)
        assert cur.remaining == total - stop
        # the rest, as views, is exactly the remaining bytes, and the cursor's current()
        # starts there
        assert b"".join(cur.views()) == data[stop:]
        if stop < total:
            assert bytes(cur.current()) and data[stop:].startswith(bytes(cur.current()))
        else:
            assert len(cur.current()) == 0
        # resume in one go
        cur.advance(total - stop)
        assert cur.remaining == 0 and len(cur.current()) == 0 and list(cur.views()) == []
        with pytest.raises(ValueError):
            cur.advance(1)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=300), max_size=10),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=20),
)
def test_cursor_fills_segments_in_random_steps(sizes: list[int], steps: list[int]) -> None:
    segs, data = _segs(sizes)
    dst = [memoryview(bytearray(len(s))) for s in segs]
    cur = SegmentCursor(dst)
    pos, i = 0, 0
    while cur.remaining:
        want = min(steps[i % len(steps)], cur.remaining)
        i += 1
        while want:  # like recv_into: at most the current segment at a time
            t = cur.current()
            k = min(len(t), want)
            t[:k] = data[pos : pos + k]
            cur.advance(k)
            pos += k
            want -= k
    # written through the cursor's views: the destination buffers themselves hold the data
    assert b"".join(bytes(d) for d in dst) == data


def test_cursor_skips_empty_segments() -> None:
    segs = [memoryview(b""), memoryview(b"ab"), memoryview(b""), memoryview(b""), memoryview(b"c")]
    cur = SegmentCursor(segs)
    assert len(cur.segs) == 2
    cur.advance(2)
    assert bytes(cur.current()) == b"c"
    cur.advance(1)
    assert cur.remaining == 0
    assert SegmentCursor([]).remaining == 0
    assert len(SegmentCursor([memoryview(b"")]).current()) == 0
