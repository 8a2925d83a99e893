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
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from rbdpy.crc import Buffer
from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain, Pagelist, SegmentCursor

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


class OpDecodeError(Exception):
    """Malformed request or reply. ``errno`` is what the error reply should carry, ``tid``
    the message's, ``request`` the request's header fields when they were readable (its
    ``ops`` then empty) so the OSD can answer with the right attempt."""

    def __init__(self, msg: str, err: int = errno.EBADMSG, tid: int | None = None,
                 request: OSDRequest | None = None) -> None:
        super().__init__(msg)
        self.errno = err
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


class OpError(Exception):
    """An op's arguments are unacceptable at execution time (raised by the OSD)."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(msg or errno.errorcode.get(err, str(err)))
        self.errno = err


# ---- segment helpers --------------------------------------------------------------------------


def _view(b: Buffer) -> memoryview:
    mv = b if isinstance(b, memoryview) else memoryview(b)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _views(data: Buffer | Sequence[Buffer]) -> list[memoryview]:
    """One buffer or a list of buffers (anything with the buffer protocol, numpy arrays
    included) as byte views of the same memory."""
    if isinstance(data, list | tuple):
        return [_view(d) for d in data]
    return [_view(data)]  # type: ignore[arg-type]


def slice_segments(segs: Sequence[memoryview], offset: int, length: int) -> list[memoryview]:
    """Views of bytes [offset, offset+length) of a segment list, at any segment boundaries:
    no copy. Raises OpDecodeError when the segments end first."""
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
    if length:
        raise OpDecodeError("data section shorter than the ops say")
    return out


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
        self.buf = _view(buf)
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
        return b"", _views(out)  # type: ignore[arg-type]

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
        return inline, _views(data)

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
        return _views(self.data)

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
        return _views(self.data)

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
        return bytes(_view(out)), []  # type: ignore[arg-type]

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
        return bytes(_view(out)), []  # type: ignore[arg-type]

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


# ---- requests ---------------------------------------------------------------------------------


@dataclass
class OSDRequest:
    """A decoded request: header fields and the op vector."""

    tid: int
    client: EntityName
    incarnation: int
    epoch: int
    pool: int
    oid: str
    flags: int
    snapc: tuple[int, list[int]] | None
    snapid: int
    attempt: int
    ops: list[Op] = field(default_factory=list)

    @property
    def is_write(self) -> bool:
        return any(op.MUTATES for op in self.ops)

    @property
    def reqid(self) -> tuple[int, int, int, int]:
        """What identifies a request across resends: client, incarnation, tid."""
        return (self.client.type, self.client.num, self.incarnation, self.tid)


def encode_request(
    ops: Sequence[Op], *, tid: int, client: EntityName, incarnation: int, epoch: int,
    pool: int, oid: str, flags: int, snapc: tuple[int, Sequence[int]] | None = None,
    snapid: int = NOSNAP, attempt: int = 0,
) -> Message:
    """One request message: write payloads as views of the caller's buffers (data), the
    small variable parts in a Pagelist (trail). ValueError for what cannot be encoded."""
    if len(ops) > MAX_OPS:
        raise ValueError(f"at most {MAX_OPS} ops in a vector")
    seq, snaps = snapc if snapc is not None else (0, ())
    name = oid.encode()
    try:
        parts = [_REQ_HEAD.pack(client.type, client.num, incarnation, epoch, pool, flags,
                                snapid, attempt),
                 _U32.pack(len(name)), name,
                 _U64.pack(seq), _U32.pack(len(snaps)), struct.pack(f"<{len(snaps)}Q", *snaps),
                 _U16.pack(len(ops))]
        bio = BioChain()
        trail = Pagelist()
        for op in ops:
            if _OPS.get(op.OPCODE) is not type(op):
                raise ValueError(f"{type(op).__name__} is not a registered op")
            op.check()
            items = op.trail()
            if len(items) != len(op.TRAIL_LIMITS):
                raise ValueError(f"{op.NAME}: {len(items)} trail items")
            bulk_len = 0
            for b in op.bulk():
                bio.append(b)
                bulk_len += len(b)
            parts += (_OP_HEAD.pack(op.OPCODE, 0), op.FIXED.pack(*op.fixed()),
                      _OP_TAIL.pack(bulk_len, len(items)))
            for it in items:
                mv = _view(it)
                parts.append(_U32.pack(len(mv)))
                trail.append(mv)
    except struct.error as e:
        raise ValueError(f"field out of range: {e}") from None
    return Message(type=MSG_OSD_OP, tid=tid, front=b"".join(parts),
                   data=bio if bio.length else None, trail=trail if trail.length else None)


def _data_views(msg: Message) -> list[memoryview]:
    return [_view(s) for s in msg.data_segments()]


_SIMPLE_HEAD = struct.Struct(_REQ_HEAD.format + "I")  # ... then the object name's length
_SIMPLE_SNAPC = struct.Struct("<QIH")  # snap seq, 0 snap ids, n_ops


def _decode_simple(msg: Message) -> OSDRequest | None:
    """The common request in one pass: no snap ids, one op without trail items (a read or a
    write of one extent, ...). None for anything else, or anything the least bit wrong: the
    general decoder then decides (and words the error)."""
    front = msg.front
    size = len(front)
    if size < _SIMPLE_HEAD.size + _SIMPLE_SNAPC.size + _OP_HEAD.size + _OP_TAIL.size:
        return None
    ctype, cnum, inc, epoch, pool, flags, snapid, attempt, olen = _SIMPLE_HEAD.unpack_from(
        front, 0)
    pos = _SIMPLE_HEAD.size + olen
    if olen > MAX_OID or pos + _SIMPLE_SNAPC.size + _OP_HEAD.size > size:
        return None
    seq, nsnaps, nops = _SIMPLE_SNAPC.unpack_from(front, pos)
    pos += _SIMPLE_SNAPC.size
    if nsnaps or nops != 1:
        return None
    opcode, oflags = _OP_HEAD.unpack_from(front, pos)
    cls = _OPS.get(opcode)
    if cls is None or oflags or cls.TRAIL_LIMITS:
        return None
    fixed_st = cls.FIXED
    pos += _OP_HEAD.size
    if pos + fixed_st.size + _OP_TAIL.size != size:
        return None
    fixed = fixed_st.unpack_from(front, pos)
    bulk_len, n_items = _OP_TAIL.unpack_from(front, pos + fixed_st.size)
    if n_items or (bulk_len and not cls.BULK_IN):
        return None
    bulk: list[memoryview] = []
    if msg.data is not None or msg.trail is not None:
        total = 0
        for seg in msg.data_segments():
            if len(seg):
                mv = _view(seg)
                bulk.append(mv)
                total += len(mv)
        if total != bulk_len:
            return None
    elif bulk_len:
        return None
    try:
        oid = str(front[_SIMPLE_HEAD.size:_SIMPLE_HEAD.size + olen], "utf-8")
    except UnicodeDecodeError:
        return None
    try:
        op = cls.from_wire(fixed, bulk, [])
    except OpDecodeError:
        return None
    snapc = (seq, []) if flags & FLAG_WRITE or seq else None
    return OSDRequest(msg.tid, EntityName(ctype, cnum), inc, epoch, pool, oid, flags, snapc,
                      snapid, attempt, [op])


def decode_request(msg: Message) -> OSDRequest:
    """Decode a request. Write payloads become views of the received data section (any
    segmentation, no copy); trail items become small bytes/str. Raises OpDecodeError."""
    req = _decode_simple(msg)
    return req if req is not None else _decode_general(msg)


def _decode_general(msg: Message) -> OSDRequest:
    tid = msg.tid
    try:
        r = _Reader(msg.front)
        ctype, cnum, inc, epoch, pool, flags, snapid, attempt = r.unpack(_REQ_HEAD)
        olen = r.u32()
        if olen > MAX_OID:
            raise OpDecodeError(f"object name of {olen} bytes", errno.EINVAL)
        oid = _str(r.view(olen), "object name")
        seq = r.u64()
        nsnaps = r.u32()
        if nsnaps > MAX_SNAPS:
            raise OpDecodeError(f"{nsnaps} snaps in the context", errno.EINVAL)
        snaps = r.u64s(nsnaps)
    except OpDecodeError as e:
        e.tid = tid
        raise
    snapc = (seq, snaps) if flags & FLAG_WRITE or seq or snaps else None
    req = OSDRequest(tid, EntityName(ctype, cnum), inc, epoch, pool, oid, flags, snapc,
                     snapid, attempt)
    try:
        req.ops = _decode_ops(r, msg, tid)
    except OpDecodeError as e:
        e.tid, e.request = tid, req
        raise
    return req


@functools.cache
def _lens_struct(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}I")


def _decode_ops(r: _Reader, msg: Message, tid: int) -> list[Op]:
    nops = r.u16()
    if nops > MAX_OPS:
        raise OpDecodeError(f"{nops} ops in one vector", errno.EINVAL)
    raw: list[tuple[type[Op], tuple, int, list[int]]] = []
    bulk_total = trail_total = 0
    for i in range(nops):
        opcode, oflags = r.unpack(_OP_HEAD)
        cls = _OPS.get(opcode)
        if cls is None:
            raise UnknownOpError(opcode, tid)
        if oflags:
            raise OpDecodeError(f"op {i} ({cls.NAME}): unknown op flags {oflags:#x}",
                                errno.EINVAL)
        fixed = r.unpack(cls.FIXED)
        bulk_len, n_items = r.unpack(_OP_TAIL)
        if bulk_len and not cls.BULK_IN:
            raise OpDecodeError(f"op {i} ({cls.NAME}) carries {bulk_len} bulk bytes")
        if n_items != len(cls.TRAIL_LIMITS):
            raise OpDecodeError(f"op {i} ({cls.NAME}) with {n_items} trail items")
        lens = list(r.unpack(_lens_struct(n_items))) if n_items else []
        for n, (limit, err) in zip(lens, cls.TRAIL_LIMITS):
            if limit is not None and n > limit:
                raise OpDecodeError(f"op {i} ({cls.NAME}): argument of {n} bytes", err)
        raw.append((cls, fixed, bulk_len, lens))
        bulk_total += bulk_len
        trail_total += sum(lens)
    r.end()
    segs = _data_views(msg)
    total = sum(len(s) for s in segs)
    if bulk_total + trail_total != total:
        raise OpDecodeError(
            f"ops describe {bulk_total + trail_total} data bytes, message has {total}")
    # one pass: [bulk payloads in op order][trail items in op order]
    cur = SegmentCursor(segs)
    bulks = [_take_views(cur, b) if b else [] for _c, _f, b, _l in raw]
    ops: list[Op] = []
    for (cls, fixed, _b, lens), bulk in zip(raw, bulks):
        items = [_take_bytes(cur, n) if n else b"" for n in lens]
        ops.append(cls.from_wire(fixed, bulk, items))
    return ops


# ---- replies ----------------------------------------------------------------------------------


@dataclass
class OpResult:
    """One op's result (0 or -errno) and decoded output (None when it has none)."""

    result: int
    out: object = None


@dataclass
class OSDReply:
    tid: int
    result: int
    version: int
    flags: int
    epoch: int
    attempt: int
    results: list[OpResult] = field(default_factory=list)
    landed: bool = False  # client side: the data section arrived in the reader's buffers


def encode_reply(
    *, tid: int, result: int, version: int, flags: int, epoch: int, attempt: int,
    op_results: Sequence[tuple[Op, int, object]],
) -> Message:
    """``op_results``: (op, result, output) per op, or empty (errors, commit replies).
    Outputs of failed ops are dropped; bulk outputs are sent from the given views."""
    head = _REP_HEAD.pack(result, version, flags, epoch, attempt, len(op_results))
    if not op_results:  # errors and commit replies: the head is the whole front
        return Message(type=MSG_OSD_OPREPLY, tid=tid, front=head)
    parts = [head]
    bio: BioChain | None = None
    for op, res, out in op_results:
        if res < 0 or out is None or not op.HAS_OUTPUT:  # writes and failed ops
            parts.append(_OP_RESULT.pack(res, 0, 0))
            continue
        inline, bulk = op.encode_output(out)
        bulk_len = 0
        for b in bulk:
            if bio is None:
                bio = BioChain()
            bio.append(b)
            bulk_len += len(b)
        parts += (_OP_RESULT.pack(res, bulk_len, len(inline)), inline)
    return Message(type=MSG_OSD_OPREPLY, tid=tid, front=b"".join(parts),
                   data=bio if bio is not None and bio.length else None)


def error_reply(tid: int, err: int, *, epoch: int = 0, attempt: int = 0) -> Message:
    """A reply that is both ack and commit, carrying only ``-err``."""
    return encode_reply(tid=tid, result=-abs(err), version=0, flags=FLAG_ACK | FLAG_COMMIT,
                        epoch=epoch, attempt=attempt, op_results=[])


def decode_error_reply(msg: Message, e: OpDecodeError, *, epoch: int = 0) -> Message:
    """The answer to an undecodable request: its errno, tid and (if readable) attempt."""
    return error_reply(msg.tid, e.errno, epoch=epoch,
                       attempt=e.request.attempt if e.request is not None else 0)


def decode_reply(msg: Message, ops: Sequence[Op]) -> OSDReply:
    """Decode a reply to ``ops``: read outputs are views of the received data section
    (the reader's own buffer when it landed in place). Raises OpDecodeError."""
    try:
        return _decode_reply(msg, ops)
    except OpDecodeError as e:
        e.tid, e.errno = msg.tid, errno.EBADMSG  # a bad reply is a bad message, whatever part
        raise


def _decode_reply(msg: Message, ops: Sequence[Op]) -> OSDReply:
    r = _Reader(msg.front)
    result, version, flags, epoch, attempt, nops = r.unpack(_REP_HEAD)
    if nops not in (0, len(ops)):
        raise OpDecodeError(f"reply has {nops} op results for {len(ops)} ops")
    heads = []
    bulk_total = 0
    for i in range(nops):
        res, bulk_len, inline_len = r.unpack(_OP_RESULT)
        inline = r.view(inline_len)
        op = ops[i]
        if (inline_len or bulk_len) and (res < 0 or not op.HAS_OUTPUT):
            raise OpDecodeError(f"op {i} ({op.NAME}) has output it cannot have")
        if bulk_len and not op.BULK_OUT:
            raise OpDecodeError(f"op {i} ({op.NAME}) has bulk output")
        heads.append((res, bulk_len, inline))
        bulk_total += bulk_len
    r.end()
    segs = _data_views(msg)
    total = sum(len(s) for s in segs)
    if bulk_total != total:
        raise OpDecodeError(f"op results describe {bulk_total} data bytes, reply has {total}")
    cur = SegmentCursor(segs)
    results = []
    for (res, bulk_len, inline), op in zip(heads, ops):
        bulk = _take_views(cur, bulk_len) if bulk_len else []
        out = None
        if res >= 0 and op.HAS_OUTPUT and (inline or bulk or op.EMPTY_OUT_OK):
            try:
                out = op.decode_output(inline, bulk)
            except (struct.error, ValueError) as e:
                raise OpDecodeError(f"bad {op.NAME} output: {e}") from None
        results.append(OpResult(res, out))
    return OSDReply(msg.tid, result, version, flags, epoch, attempt, results)


def bulk_layout(ops: Sequence[Op]) -> list[int]:
    """Per op, the most bytes it can put in the reply's data section (reads: their
    length; 0 for ops without bulk output). The reply packs them in op order."""
    return [op.max_bulk_out() for op in ops]


def landing_segments(ops: Sequence[Op], dests: Sequence[Sequence[memoryview] | None],
                     data_len: int) -> list[memoryview] | None:
    """Where a reply's data section of ``data_len`` bytes should land: for the objecter's
    ``alloc_data``, which sees the reply header before any data arrives.

    ``dests[i]`` is where read op i's bytes belong (the reader's buffer slices). The reply
    packs bulk outputs in op order, so the leading run of reads with destinations is
    placed there, and one scratch buffer takes the rest (other ops' bulk output). A later
    read lands exactly only if every earlier one came back at full length (always so for
    a single read); either way ``decode_reply`` returns views of where the bytes really
    are, and the caller copies only when those are not its own. None when nothing can be
    placed: let the messenger allocate.
    """
    out: list[memoryview] = []
    placed = 0
    for i, (op, most) in enumerate(zip(ops, bulk_layout(ops))):
        if not most:
            continue
        dest = dests[i] if i < len(dests) and isinstance(op, Read) else None
        room = sum(len(d) for d in dest) if dest else 0
        take = min(most, room, data_len - placed)
        if take:
            out += slice_segments(dest, 0, take)  # type: ignore[arg-type]
            placed += take
        if take < most:
            break
    if not out:
        return None
    if placed < data_len:
        out.append(memoryview(bytearray(data_len - placed)))
    return out
