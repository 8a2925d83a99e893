"""The modular OSD op encoder (seed 001): one class per op, fixed fields in the front,
variable-length data in the data section: bulk payloads first, then the trail.

Request (``MSG_OSD_OP``) on the wire, little-endian::

    front = head: client type u8 · client num u64 · incarnation u64 · map epoch u32 ·
                  pool u64 · flags u32 · read snapid u64 · attempt u32
            object name: u32 len · utf-8
            snap context: seq u64 · u32 count · snap ids u64…
            n_ops u16 · per op: opcode u16 · op flags u16 (reserved, 0) · the op's fixed
                                fields · bulk_len u32 · n_trail u8 · trail item lens u32…
    data  = [bulk payloads in op order: write/writefull data, a BioChain of views of the
             caller's buffer, never copied] [trail: a Pagelist of names, values, class
             input, list marker… in op order]

Reply (``MSG_OSD_OPREPLY``, same tid)::

    front = result i32 · object version u64 · flags u32 (ACK applied, COMMIT durable; may
            be both) · epoch u32 · attempt u32 · n_ops u16 (0 or the request's count) ·
            per op: result i32 · bulk_len u32 · inline_len u32 · inline output
            (stat, xattr values, class output, listings, sparse-read extent map)
    data  = bulk outputs in op order (read data, sparse-read packed data), so a single
            read's reply lands straight in the reader's buffer (``landing_segments``).

Everything here is pure (sans-I/O). Decoders check every length against what is really
there before slicing and raise ``OpDecodeError`` (EBADMSG, EINVAL, ENAMETOOLONG) or
``UnknownOpError`` (EOPNOTSUPP), carrying the tid, and for requests the header fields
(``.request``) once they were readable, so the OSD can answer the client instead of dying.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from rbdpy.crc import Buffer
from rbdpy.errors import RbdpyError
from rbdpy.msgr.payload import (
    SegmentCursor,
    ShortSegments,
    byte_view,
    byte_views,
)
from rbdpy.msgr.payload import slice_segments as _slice_segments

if TYPE_CHECKING:
    from rbdpy.proto.osdmsg import OSDRequest

MSG_OSD_OP = 42
MSG_OSD_OPREPLY = 43

# request flags: what the client wants; reply flags: what this reply is
FLAG_ACK = 1 << 0  # request: want the ack reply / reply: applied (visible to reads)
FLAG_COMMIT = 1 << 1  # request: want the commit reply / reply: durable
FLAG_READ = 1 << 2
FLAG_WRITE = 1 << 3

NOSNAP = 2**64 - 2  # read the head object (Ceph's CEPH_NOSNAP)

# decode limits: checked before anything is sliced or allocated
MAX_OPS = 64
MAX_OID = 2048  # object name bytes (also a list marker)
MAX_NAME = 4096  # xattr name bytes
MAX_CLS_NAME = 255  # object class and method name bytes
MAX_SNAPS = 1024  # snap ids in one snap context

_REQ_HEAD = struct.Struct("<BQQIQIQI")  # client type, num, incarnation, epoch, pool, flags,
#                                          read snapid, attempt
_REP_HEAD = struct.Struct("<iQIIIH")  # result, version, flags, epoch, attempt, n_ops
_OP_HEAD = struct.Struct("<HH")  # opcode, op flags
_OP_TAIL = struct.Struct("<IB")  # bulk_len, n_trail
_OP_RESULT = struct.Struct("<iII")  # result, bulk_len, inline_len
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EXTENT = struct.Struct("<QQ")


# ---- errors -----------------------------------------------------------------------------------


class OpDecodeError(RbdpyError):
    """Malformed request or reply. ``errno`` is what the error reply should carry, ``tid``
    the message's, ``request`` the request's header fields when they were readable (its
    ``ops`` then empty) so the OSD can answer with the right attempt."""

    def __init__(self, msg: str, err: int = errno.EBADMSG, tid: int | None = None,
                 request: OSDRequest | None = None) -> None:
        super().__init__(err, msg)
        self.tid = tid
        self.request = request


class UnknownOpError(OpDecodeError):
    """An opcode this OSD does not implement (or reserved, like the snapshot ops)."""

    def __init__(self, opcode: int, tid: int | None = None,
                 request: OSDRequest | None = None) -> None:
        what = RESERVED_OPCODES.get(opcode)
        super().__init__(f"unknown opcode {opcode}" if what is None else
                         f"{what} (opcode {opcode}) is not implemented",
                         errno.EOPNOTSUPP, tid, request)
        self.opcode = opcode


class OpError(RbdpyError):
    """An op's arguments are unacceptable at execution time (raised by the OSD)."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or errno.errorcode.get(err, str(err)))


# ---- segment helpers --------------------------------------------------------------------------


def slice_segments(segs: Sequence[memoryview], offset: int, length: int) -> list[memoryview]:
    """``msgr.payload.slice_segments`` for decoders: running short is a malformed message."""
    try:
        return _slice_segments(segs, offset, length)
    except ShortSegments:
        raise OpDecodeError("data section shorter than the ops say") from None


def _take_views(cur: SegmentCursor, n: int) -> list[memoryview]:
    """The next ``n`` bytes as views (the sequential form of ``slice_segments``)."""
    out: list[memoryview] = []
    while n:
        v = cur.current()
        if not v:
            raise OpDecodeError("data section shorter than the ops say")
        if len(v) > n:
            v = v[:n]
        out.append(v)
        cur.advance(len(v))
        n -= len(v)
    return out


def _take_bytes(cur: SegmentCursor, n: int) -> bytes:
    """Small trail items become bytes: they are names and arguments, not bulk data."""
    views = _take_views(cur, n)
    return bytes(views[0]) if len(views) == 1 else b"".join(views)


def _str(b: Buffer, what: str) -> str:
    try:
        return bytes(b).decode()
    except UnicodeDecodeError:
        raise OpDecodeError(f"{what} is not utf-8", errno.EINVAL) from None


class _Reader:
    """Bounds-checked little-endian reader over a front."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer) -> None:
        self.buf = byte_view(buf)
        self.pos = 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise OpDecodeError(f"truncated at byte {self.pos} (need {n} more)")

    def unpack(self, st: struct.Struct) -> tuple:
        self._need(st.size)
        v = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def u64s(self, n: int) -> list[int]:
        self._need(8 * n)
        v = list(struct.unpack_from(f"<{n}Q", self.buf, self.pos))
        self.pos += 8 * n
        return v

    def view(self, n: int) -> memoryview:
        self._need(n)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def take(self, n: int) -> bytes:
        return bytes(self.view(n))

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise OpDecodeError(f"{len(self.buf) - self.pos} bytes of trailing garbage")


def _pack_blob(b: Buffer) -> bytes:
    return _U32.pack(len(b)) + bytes(b)


# ---- the op classes and their registry --------------------------------------------------------

_OPS: dict[int, type[Op]] = {}

# opcodes kept free for the snapshot work (not implemented: decode says EOPNOTSUPP)
OP_ROLLBACK = 32
OP_LIST_SNAPS = 33
OP_SNAP_TRIM = 34
RESERVED_OPCODES = {OP_ROLLBACK: "rollback", OP_LIST_SNAPS: "list_snaps",
                    OP_SNAP_TRIM: "snap_trim"}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make ``cls`` decodable under its OPCODE."""
    code = cls.OPCODE
    if not 0 < code <= 0xFFFF:
        raise ValueError(f"opcode {code} out of range")
    if code in _OPS:
        raise ValueError(f"opcode {code} registered twice ({_OPS[code].__name__})")
    if code in RESERVED_OPCODES and RESERVED_OPCODES[code] != cls.NAME:
        raise ValueError(f"opcode {code} is reserved for {RESERVED_OPCODES[code]}")
    if len(cls.TRAIL_LIMITS) > 255:
        raise ValueError("at most 255 trail items per op")
    _OPS[code] = cls
    return cls


def op_class(opcode: int) -> type[Op] | None:
    """The registered class for an opcode, or None."""
    return _OPS.get(opcode)


def registered_ops() -> dict[int, type[Op]]:
    return dict(_OPS)


@dataclass
class Op:
    """Base of every op. A subclass declares its wire shape in class variables and
    overrides the hooks it needs; the framing (lengths, order, limits) is done once, by
    ``encode_request``/``decode_request`` and ``encode_reply``/``decode_reply``."""

    OPCODE: ClassVar[int] = 0
    NAME: ClassVar[str] = ""
    FIXED: ClassVar[struct.Struct] = struct.Struct("<")  # fixed fields in the front
    MUTATES: ClassVar[bool] = False
    BULK_IN: ClassVar[bool] = False  # carries bulk request data (write payloads)
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = ()  # (max len, errno)
    HAS_OUTPUT: ClassVar[bool] = False  # returns something in the reply
    BULK_OUT: ClassVar[bool] = False  # …part of which travels in the reply's data section
    EMPTY_OUT_OK: ClassVar[bool] = False  # an empty output is a value (b"", no bytes read)

    # request side
    def fixed(self) -> tuple:
        """Values for FIXED."""
        return ()

    def bulk(self) -> list[memoryview]:
        """Bulk request data: views of the caller's memory."""
        return []

    def trail(self) -> list[Buffer]:
        """Variable-length arguments, one item per TRAIL_LIMITS entry."""
        return []

    def check(self) -> None:
        """Raise ValueError for arguments that cannot be encoded (a caller's bug)."""

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(*fixed)

    # reply side
    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        """(inline bytes for the front, bulk views for the data section)."""
        return b"", []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return None

    def max_bulk_out(self) -> int:
        """The most reply data bytes this op can bring (for landing reads in place)."""
        return 0


_NAME_LIMIT = (MAX_NAME, errno.ENAMETOOLONG)
_CLS_LIMIT = (MAX_CLS_NAME, errno.ENAMETOOLONG)
_OID_LIMIT = (MAX_OID, errno.EINVAL)
_UNLIMITED = (None, 0)


@register
@dataclass
class Read(Op):
    """Read [offset, offset+length). Front: offset u64, length u64. Reply: the bytes in the
    data section (short at the end of the object); decoded as views of the received data."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 1
    NAME: ClassVar[str] = "read"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    HAS_OUTPUT: ClassVar[bool] = True
    BULK_OUT: ClassVar[bool] = True
    EMPTY_OUT_OK: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return b"", byte_views(out)  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> list[memoryview]:
        if inline:
            raise OpDecodeError("read output has inline bytes")
        return bulk

    def max_bulk_out(self) -> int:
        return self.length


class SparseReadResult(NamedTuple):
    """The allocated extents (offset, length) of a range and their bytes, packed."""

    extents: list[tuple[int, int]]
    data: list[memoryview]


@register
@dataclass
class SparseRead(Op):
    """Read only the allocated extents of [offset, offset+length). Front: offset u64,
    length u64. Reply: the extent map inline (u32 count, (offset u64, length u64)…), the
    extents' bytes packed in the data section; decoded as a SparseReadResult."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 2
    NAME: ClassVar[str] = "sparse_read"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    HAS_OUTPUT: ClassVar[bool] = True
    BULK_OUT: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        extents, data = out  # type: ignore[misc]
        inline = _U32.pack(len(extents)) + b"".join(_EXTENT.pack(o, n) for o, n in extents)
        return inline, byte_views(data)

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> SparseReadResult:
        r = _Reader(inline)
        n = r.u32()
        if len(inline) != 4 + _EXTENT.size * n:
            raise OpDecodeError("bad sparse-read extent map")
        extents = [r.unpack(_EXTENT) for _ in range(n)]
        if sum(e[1] for e in extents) != sum(len(b) for b in bulk):
            raise OpDecodeError("sparse-read data does not match its extent map")
        return SparseReadResult(extents, bulk)

    def max_bulk_out(self) -> int:
        return self.length


@register
@dataclass
class Write(Op):
    """Write ``data`` at ``offset``. Front: offset u64. Data: the payload as views of the
    caller's buffer (one buffer or a list of them), never copied; decoded as views of the
    received data section."""

    offset: int = 0
    data: Buffer | list[memoryview] = b""
    OPCODE: ClassVar[int] = 3
    NAME: ClassVar[str] = "write"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    MUTATES: ClassVar[bool] = True
    BULK_IN: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset,)

    def bulk(self) -> list[memoryview]:
        return byte_views(self.data)

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(fixed[0], bulk)

    @property
    def length(self) -> int:
        return sum(len(v) for v in self.bulk())


@register
@dataclass
class WriteFull(Op):
    """Replace the whole object with ``data``. Front: nothing. Data: the payload, as for
    write."""

    data: Buffer | list[memoryview] = b""
    OPCODE: ClassVar[int] = 4
    NAME: ClassVar[str] = "writefull"
    MUTATES: ClassVar[bool] = True
    BULK_IN: ClassVar[bool] = True

    def bulk(self) -> list[memoryview]:
        return byte_views(self.data)

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(bulk)


@register
@dataclass
class Zero(Op):
    """Zero [offset, offset+length) (never grows the object). Front: offset u64,
    length u64."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 5
    NAME: ClassVar[str] = "zero"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)


@register
@dataclass
class Truncate(Op):
    """Set the object's size (grows with zeros or cuts). Front: size u64."""

    size: int = 0
    OPCODE: ClassVar[int] = 6
    NAME: ClassVar[str] = "truncate"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.size,)


@register
@dataclass
class Delete(Op):
    """Remove the object (ENOENT if missing). No arguments."""

    OPCODE: ClassVar[int] = 7
    NAME: ClassVar[str] = "delete"
    MUTATES: ClassVar[bool] = True


@register
@dataclass
class Create(Op):
    """Create the object; with ``exclusive`` an existing one is EEXIST. Front: u8 0/1."""

    exclusive: bool = False
    OPCODE: ClassVar[int] = 8
    NAME: ClassVar[str] = "create"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<B")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (int(bool(self.exclusive)),)

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        if fixed[0] > 1:
            raise OpDecodeError("create's exclusive flag must be 0 or 1", errno.EINVAL)
        return cls(bool(fixed[0]))


@dataclass
class StatResult:
    """What stat returns."""

    size: int
    mtime: float
    version: int


_STAT = struct.Struct("<QdQ")


@register
@dataclass
class Stat(Op):
    """Size, mtime and version of the object. No arguments. Reply: inline size u64,
    mtime f64, version u64; decoded as a StatResult."""

    OPCODE: ClassVar[int] = 9
    NAME: ClassVar[str] = "stat"
    HAS_OUTPUT: ClassVar[bool] = True

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        st: StatResult = out  # type: ignore[assignment]
        return _STAT.pack(st.size, st.mtime, st.version), []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> StatResult:
        if len(inline) != _STAT.size:
            raise OpDecodeError("bad stat output")
        return StatResult(*_STAT.unpack(inline))


@register
@dataclass
class GetXattr(Op):
    """One xattr's value (ENODATA if missing). Trail: the name. Reply: the value inline,
    decoded as bytes (b"" for an empty value)."""

    name: str = ""
    OPCODE: ClassVar[int] = 10
    NAME: ClassVar[str] = "getxattr"
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (_NAME_LIMIT,)
    HAS_OUTPUT: ClassVar[bool] = True
    EMPTY_OUT_OK: ClassVar[bool] = True

    def trail(self) -> list[Buffer]:
        return [self.name.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"))

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return bytes(byte_view(out)), []  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> bytes:
        return bytes(inline)


@register
@dataclass
class SetXattr(Op):
    """Set an xattr. Trail: the name, then the value."""

    name: str = ""
    value: bytes = b""
    OPCODE: ClassVar[int] = 11
    NAME: ClassVar[str] = "setxattr"
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (_NAME_LIMIT, _UNLIMITED)
    MUTATES: ClassVar[bool] = True

    def trail(self) -> list[Buffer]:
        return [self.name.encode(), self.value]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"), trail[1])


@register
@dataclass
class RmXattr(Op):
    """Remove an xattr. Trail: the name."""

    name: str = ""
    OPCODE: ClassVar[int] = 12
    NAME: ClassVar[str] = "rmxattr"
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (_NAME_LIMIT,)
    MUTATES: ClassVar[bool] = True

    def trail(self) -> list[Buffer]:
        return [self.name.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"))


def _encode_map(d: dict[str, bytes]) -> bytes:
    parts = [_U32.pack(len(d))]
    for k in sorted(d):
        parts += (_pack_blob(k.encode()), _pack_blob(d[k]))
    return b"".join(parts)


def _decode_map(buf: memoryview) -> dict[str, bytes]:
    r = _Reader(buf)
    out: dict[str, bytes] = {}
    for _ in range(r.u32()):
        k = _str(r.view(r.u32()), "xattr name")
        if k in out:
            raise OpDecodeError(f"xattr {k!r} twice in one map")
        out[k] = r.take(r.u32())
    r.end()
    return out


@register
@dataclass
class GetXattrs(Op):
    """All (visible) xattrs. No arguments. Reply: inline u32 count, (u32 len · name,
    u32 len · value)… sorted by name; decoded as a dict."""

    OPCODE: ClassVar[int] = 13
    NAME: ClassVar[str] = "getxattrs"
    HAS_OUTPUT: ClassVar[bool] = True

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return _encode_map(out), []  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> dict[str, bytes]:
        return _decode_map(inline)


# cmpxattr operators (Ceph's numbering) and comparison modes
CMP_EQ, CMP_NE, CMP_GT, CMP_GTE, CMP_LT, CMP_LTE = range(1, 7)
CMP_STRING = 1
CMP_U64 = 2


@register
@dataclass
class CmpXattr(Op):
    """A guard: the whole vector fails with ECANCELED unless ``xattr <op> value`` holds.

    ``op`` is CMP_EQ…CMP_LTE; ``mode`` CMP_STRING compares bytes, CMP_U64 unsigned
    integers. Front: op u8, mode u8. Trail: the name, then the value (u64 mode: 8 bytes).
    """

    name: str = ""
    op: int = CMP_EQ
    mode: int = CMP_STRING
    value: bytes | int = b""
    OPCODE: ClassVar[int] = 14
    NAME: ClassVar[str] = "cmpxattr"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<BB")
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (_NAME_LIMIT, _UNLIMITED)

    def fixed(self) -> tuple:
        return (self.op, self.mode)

    def check(self) -> None:
        if not CMP_EQ <= self.op <= CMP_LTE or self.mode not in (CMP_STRING, CMP_U64):
            raise ValueError(f"bad cmpxattr operator {self.op} or mode {self.mode}")
        if (self.mode == CMP_U64) != isinstance(self.value, int):
            raise ValueError("cmpxattr: u64 mode takes an int, string mode bytes")

    def trail(self) -> list[Buffer]:
        v = _U64.pack(self.value) if isinstance(self.value, int) else self.value
        return [self.name.encode(), v]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        op, mode = fixed
        if not CMP_EQ <= op <= CMP_LTE or mode not in (CMP_STRING, CMP_U64):
            raise OpDecodeError("bad cmpxattr operator or mode", errno.EINVAL)
        value: bytes | int = trail[1]
        if mode == CMP_U64:
            if len(trail[1]) != 8:
                raise OpDecodeError("u64 cmpxattr value must be 8 bytes", errno.EINVAL)
            value = _U64.unpack(trail[1])[0]
        return cls(_str(trail[0], "xattr name"), op, mode, value)


@register
@dataclass
class Call(Op):
    """Run object class method ``cls.method`` on the OSD with ``indata``. Trail: class
    name, method name, input. Reply: the method's output inline, decoded as bytes."""

    cls: str = ""
    method: str = ""
    indata: bytes = b""
    OPCODE: ClassVar[int] = 15
    NAME: ClassVar[str] = "call"
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (
        _CLS_LIMIT, _CLS_LIMIT, _UNLIMITED)
    HAS_OUTPUT: ClassVar[bool] = True
    EMPTY_OUT_OK: ClassVar[bool] = True

    def trail(self) -> list[Buffer]:
        return [self.cls.encode(), self.method.encode(), self.indata]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "class name"), _str(trail[1], "method name"), trail[2])

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return bytes(byte_view(out)), []  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> bytes:
        return bytes(inline)


class ListResult(NamedTuple):
    """One page of a pool listing; ``next`` is the marker for the next page, or None."""

    names: list[str]
    next: str | None


@register
@dataclass
class ListObjects(Op):
    """A page of the pool's object names after ``start_after`` (pool-level: the request's
    object name is ignored). Front: max_entries u32. Trail: the marker. Reply: inline
    u32 count, (u32 len · name)…, u8 has-next, u32 len · next marker; a ListResult."""

    start_after: str = ""
    max_entries: int = 1000
    OPCODE: ClassVar[int] = 16
    NAME: ClassVar[str] = "list_objects"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    TRAIL_LIMITS: ClassVar[tuple[tuple[int | None, int], ...]] = (_OID_LIMIT,)
    HAS_OUTPUT: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.max_entries,)

    def trail(self) -> list[Buffer]:
        return [self.start_after.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "list marker"), fixed[0])

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        names, nxt = out  # type: ignore[misc]
        parts = [_U32.pack(len(names))]
        parts += (_pack_blob(n.encode()) for n in names)
        parts += (_U8.pack(nxt is not None), _pack_blob((nxt or "").encode()))
        return b"".join(parts), []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> ListResult:
        r = _Reader(inline)
        names = [_str(r.view(r.u32()), "object name") for _ in range(r.u32())]
        has = r.u8()
        nxt = _str(r.view(r.u32()), "list marker")
        r.end()
        if has > 1 or (not has and nxt):
            raise OpDecodeError("bad list continuation")
        return ListResult(names, nxt if has else None)


@register
@dataclass
class AssertVersion(Op):
    """A guard: ERANGE (like Ceph) unless the object's version equals ``version``.
    Front: version u64."""

    version: int = 0
    OPCODE: ClassVar[int] = 17
    NAME: ClassVar[str] = "assert_version"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")

    def fixed(self) -> tuple:
        return (self.version,)


@register
@dataclass
class AssertExists(Op):
    """A guard: ENOENT unless the object exists. No arguments."""

    OPCODE: ClassVar[int] = 18
    NAME: ClassVar[str] = "assert_exists"


@register
@dataclass
class Blocklist(Op):
    """Fence a client: until ``until`` (seconds since the epoch) this OSD refuses every
    request from client ``client_num`` with ESHUTDOWN (Ceph's ``osd blocklist add``). It
    acts on the OSD, not on the object the request names, and must be the only op of its
    vector. Front: client_num u64, until u64."""

    client_num: int = 0
    until: int = 0
    OPCODE: ClassVar[int] = 19
    NAME: ClassVar[str] = "blocklist_add"
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.client_num, self.until)
