"""Message data payloads: pages, pagelist, bio chain, and the trail.

A message's data section is one of these, optionally followed by a trail (seed 001). All of
them present the same face to the messenger: ``length`` and ``segments()``, a list of
memoryviews whose concatenation is the payload. Sending hands those views to ``sendmsg``;
receiving ``recv_into``s writable views. Nothing here copies the caller's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

from rbdpy.crc import Buffer

PAGE_SIZE = 4096


# ---- segment lists: the one place that normalises and slices them ------------------------------


class ShortSegments(ValueError):
    """A slice reaches past the end of its segment list."""


def byte_view(buf: Buffer) -> memoryview:
    """``buf`` as a flat view of bytes (numpy arrays and typed views included): no copy."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def byte_views(data: Buffer | Sequence[Buffer], *, drop_empty: bool = False) -> list[memoryview]:
    """One buffer or a list of buffers as byte views of the same memory."""
    items = data if isinstance(data, list | tuple) else (data,)
    views = [byte_view(d) for d in items]  # type: ignore[arg-type]
    return [v for v in views if len(v)] if drop_empty else views


def slice_segments(segs: Sequence[memoryview], offset: int, length: int, *,
                   partial: bool = False) -> list[memoryview]:
    """Views of bytes [offset, offset+length) of a segment list, cut at any segment
    boundary: no copy. Raises ShortSegments when the segments end first, unless
    ``partial`` (then the views cover what there is)."""
    if offset < 0 or length < 0:
        raise ValueError("negative offset or length")
    out: list[memoryview] = []
    for s in segs:
        if not length:
            break
        n = len(s)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append(s[offset : offset + take])
        length -= take
        offset = 0
    if length and not partial:
        raise ShortSegments("segments end before the slice does")
    return out



class Pages:
    """A vector of page-sized buffers with the data starting ``offset`` bytes into the first.

    Used when the receiver allocates fresh memory for incoming data (the OSD receiving a write
    it did not expect, a reply with no reader buffer).
    """

    __slots__ = ("pages", "offset", "length")

    def __init__(self, pages: list[Buffer], length: int, offset: int = 0) -> None:
        if not 0 <= offset < PAGE_SIZE:
            raise ValueError("page offset must be inside the first page")
        room = sum(len(p) for p in pages) - offset
        if length > room:
            raise ValueError(f"{length} bytes do not fit in {len(pages)} pages")
        self.pages = [byte_view(p) for p in pages]
        self.offset = offset
        self.length = length

    @classmethod
    def alloc(cls, length: int, offset: int = 0) -> Pages:
        """Fresh zeroed pages enough for ``length`` bytes starting at ``offset``."""
        n = (offset + length + PAGE_SIZE - 1) // PAGE_SIZE
        return cls([bytearray(PAGE_SIZE) for _ in range(n)], length, offset)

    def segments(self) -> list[memoryview]:
        out: list[memoryview] = []
        left = self.length
        start = self.offset
        for page in self.pages:
            if left <= 0:
                break
            seg = page[start : start + left]
            out.append(seg)
            left -= len(seg)
            start = 0
        return out

    def tobytes(self) -> bytes:
        """A copy, for tests and small decodes only."""
        return b"".join(self.segments())


class Pagelist:
    """An append-only buffer that grows one whole page at a time (seed 000).

    For encodes whose size is unknown in advance (op trails, big listings): no reallocation
    and no copy of what is already encoded, however large it grows. ``release()`` drops the
    pages so the pagelist can be reused.
    """

    __slots__ = ("pages", "length", "_tail_room")

    def __init__(self) -> None:
        self.pages: list[bytearray] = []
        self.length = 0
        self._tail_room = 0

    def append(self, data: Buffer) -> None:
        src = byte_view(data)
        pos = 0
        n = len(src)
        while pos < n:
            if self._tail_room == 0:
                self.pages.append(bytearray(PAGE_SIZE))
                self._tail_room = PAGE_SIZE
            page = self.pages[-1]
            at = PAGE_SIZE - self._tail_room
            take = min(self._tail_room, n - pos)
            page[at : at + take] = src[pos : pos + take]
            pos += take
            self._tail_room -= take
            self.length += take

    # encoding helpers: little-endian, like the rest of the wire format
    def encode_u8(self, v: int) -> None:
        self.append(struct.pack("<B", v))

    def encode_u32(self, v: int) -> None:
        self.append(struct.pack("<I", v))

    def encode_u64(self, v: int) -> None:
        self.append(struct.pack("<Q", v))

    def encode_bytes(self, b: Buffer) -> None:
        """A u32 length followed by the bytes."""
        self.encode_u32(len(b))
        self.append(b)

    def encode_str(self, s: str) -> None:
        self.encode_bytes(s.encode())

    def segments(self) -> list[memoryview]:
        out = []
        left = self.length
        for page in self.pages:
            take = min(PAGE_SIZE, left)
            out.append(memoryview(page)[:take])
            left -= take
        return out

    def release(self) -> None:
        self.pages = []
        self.length = 0
        self._tail_room = 0

    def tobytes(self) -> bytes:
        return b"".join(self.segments())


class BioChain:
    """Chained segments, each a view over the caller's memory (seed 001): never a copy.

    The nbdkit plugin's pread/pwrite buffer is sliced into per-object extents, and each extent
    becomes one or more segments here, so a write goes from the caller's buffer to the socket
    and a read from the socket into the caller's buffer.
    """

    __slots__ = ("segs", "length")

    def __init__(self, segs: Iterable[Buffer] = ()) -> None:
        self.segs: list[memoryview] = []
        self.length = 0
        for s in segs:
            self.append(s)

    @classmethod
    def from_buffer(cls, buf: Buffer, offset: int = 0, length: int | None = None) -> BioChain:
        mv = byte_view(buf)
        end = len(mv) if length is None else offset + length
        if offset < 0 or end > len(mv) or end < offset:
            raise ValueError("bio segment outside its buffer")
        return cls([mv[offset:end]])

    def append(self, buf: Buffer, offset: int = 0, length: int | None = None) -> None:
        mv = byte_view(buf)
        end = len(mv) if length is None else offset + length
        if offset < 0 or end > len(mv) or end < offset:
            raise ValueError("bio segment outside its buffer")
        if end > offset:
            self.segs.append(mv[offset:end])
            self.length += end - offset

    def segments(self) -> list[memoryview]:
        return self.segs

    def tobytes(self) -> bytes:
        return b"".join(self.segs)


Payload = Pages | Pagelist | BioChain


class SegmentCursor:
    """A position inside a list of segments that can stop and resume at any byte.

    Both directions use it: the sender to know which views remain after a partial
    ``sendmsg``, the receiver to know which view the next ``recv_into`` fills.
    """

    __slots__ = ("segs", "idx", "off", "remaining")

    def __init__(self, segs: list[memoryview]) -> None:
        self.segs = [s for s in segs if len(s)]
        self.idx = 0
        self.off = 0
        self.remaining = sum(len(s) for s in self.segs)

    def current(self) -> memoryview:
        """The unconsumed part of the current segment (empty when done)."""
        if self.idx >= len(self.segs):
            return memoryview(b"")
        return self.segs[self.idx][self.off :]

    def advance(self, n: int) -> None:
        if n > self.remaining:
            raise ValueError("advance past the end of the segments")
        self.remaining -= n
        while n:
            seg_left = len(self.segs[self.idx]) - self.off
            if n < seg_left:
                self.off += n
                return
            n -= seg_left
            self.idx += 1
            self.off = 0
        while self.idx < len(self.segs) and self.off == len(self.segs[self.idx]):
            self.idx += 1
            self.off = 0

    def views(self) -> Iterator[memoryview]:
        """The remaining bytes as views, first one possibly partial."""
        if self.idx < len(self.segs):
            yield self.segs[self.idx][self.off :]
            yield from self.segs[self.idx + 1 :]
