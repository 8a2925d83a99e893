"""Message: header · front · middle · data (+ trail) · footer, shaped like Ceph msgr v1.

All integers are little-endian. The header carries its own crc32c so lengths can be trusted
(and checked against limits) before anything is allocated; the footer carries the crc32c of
front, middle and data, computed segment by segment over the payload views.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from rbdpy.crc import Buffer, crc32c, crc32c_segments
from rbdpy.msgr.payload import Pagelist, Payload

# entity types
ENTITY_CLIENT = 1
ENTITY_OSD = 2
ENTITY_MON = 3
_ENTITY_NAMES = {ENTITY_CLIENT: "client", ENTITY_OSD: "osd", ENTITY_MON: "mon"}
_ENTITY_TYPES = {v: k for k, v in _ENTITY_NAMES.items()}


class EntityName(NamedTuple):
    """Who is talking: ``client.4123``, ``osd.0``."""

    type: int
    num: int

    def __str__(self) -> str:
        return f"{_ENTITY_NAMES.get(self.type, self.type)}.{self.num}"

    @classmethod
    def parse(cls, s: str) -> EntityName:
        kind, _, num = s.partition(".")
        if kind not in _ENTITY_TYPES or not num.isdigit():
            raise ValueError(f"bad entity name {s!r}")
        return cls(_ENTITY_TYPES[kind], int(num))


# seq, tid, type, priority, version, front_len, middle_len, data_len, data_off, src type, src num
HEADER = struct.Struct("<QQHHHIIIHBQ")
HEADER_CRC = struct.Struct("<I")
HEADER_LEN = HEADER.size + HEADER_CRC.size
# front crc, middle crc, data crc, flags
FOOTER = struct.Struct("<IIIB")
FOOTER_LEN = FOOTER.size
FOOTER_COMPLETE = 1
FOOTER_NOCRC = 2


class MsgHeader(NamedTuple):
    """The decoded fixed header; what ``alloc_data`` is shown to decide where data lands."""

    seq: int
    tid: int
    type: int
    priority: int
    version: int
    front_len: int
    middle_len: int
    data_len: int
    data_off: int
    src: EntityName


@dataclass(eq=False, slots=True)
class Message:
    """One message. ``data`` is any payload kind; ``trail`` follows it on the wire (seed 001).

    On receive, ``data`` holds the segments the data landed in (the reader's own buffer when
    ``alloc_data`` provided one) and ``trail`` is None: the upper layer knows from the front
    where its data ends and its trail begins.
    """

    type: int
    front: Buffer = b""
    middle: Buffer = b""
    data: Payload | None = None
    trail: Pagelist | None = None
    tid: int = 0
    priority: int = 0
    version: int = 0
    data_off: int = 0
    seq: int = 0
    src: EntityName | None = None
    # cached wire encoding (tag+header, footer): computed once, reused for replays
    _wire_head: bytes | None = field(default=None, repr=False)
    _wire_foot: bytes | None = field(default=None, repr=False)
    # receive side: the BufferPool token of the data buffer, if the messenger lent one
    _pool_token: int | None = field(default=None, repr=False)

    @property
    def data_len(self) -> int:
        return (self.data.length if self.data else 0) + (self.trail.length if self.trail else 0)

    def data_segments(self) -> list[memoryview]:
        segs: list[memoryview] = []
        if self.data is not None:
            segs.extend(self.data.segments())
        if self.trail is not None:
            segs.extend(self.trail.segments())
        return segs

    def data_bytes(self) -> bytes:
        """A copy of the data section, for tests and small decodes only."""
        return b"".join(self.data_segments())


def encode_header(msg: Message, src: EntityName) -> bytes:
    body = HEADER.pack(
        msg.seq, msg.tid, msg.type, msg.priority, msg.version,
        len(msg.front), len(msg.middle), msg.data_len, msg.data_off, src.type, src.num,
    )
    return body + HEADER_CRC.pack(crc32c(body))


def decode_header(buf: Buffer, offset: int = 0) -> MsgHeader:
    """Decode and verify a header; raises ValueError on a crc mismatch."""
    fields = HEADER.unpack_from(buf, offset)
    (crc,) = HEADER_CRC.unpack_from(buf, offset + HEADER.size)
    if crc32c(memoryview(buf)[offset : offset + HEADER.size]) != crc:
        raise ValueError("bad header crc")
    return MsgHeader(*fields[:9], EntityName(fields[9], fields[10]))


def encode_footer(msg: Message, with_crc: bool = True) -> bytes:
    if not with_crc:
        return FOOTER.pack(0, 0, 0, FOOTER_COMPLETE | FOOTER_NOCRC)
    return FOOTER.pack(
        crc32c(msg.front),
        crc32c(msg.middle) if msg.middle else 0,  # the crc of nothing: 0, and no call
        crc32c_segments(msg.data_segments()),
        FOOTER_COMPLETE,
    )
