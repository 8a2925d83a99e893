"""The modular OSD op encoder (seed 001): one class per op, fixed fields in the front,
variable-length data after the data section's bulk payloads, in the trail.

Request on the wire::

    front  = request head · object name · snap context · n_ops ·
             per op: opcode u16 · flags u16 · the op's fixed fields · bulk_len u32 ·
                     n_trail u8 · trail item lengths u32…
    data   = [bulk payloads in op order: write data, as BioChain views of the caller's
              buffer — never copied] [trail: a Pagelist of names, values, class input…]

Reply::

    front  = reply head · per op: result i32 · bulk_len u32 · inline_len u32 · inline bytes
    data   = bulk outputs in op order (read data), so a single read's reply can land
             straight in the reader's buffer (the objecter's ``alloc_data``).

Everything here is pure (sans-I/O). Decoders validate every length against what is really
there and raise ``OpDecodeError`` (EBADMSG/EINVAL) or ``UnknownOpError`` (EOPNOTSUPP), always
carrying the tid when it was readable, so the OSD can answer instead of dying.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rbdpy.crc import Buffer
from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain, Pagelist

MSG_OSD_OP = 42
MSG_OSD_OPREPLY = 43

FLAG_ACK = 1 << 0  # request: want the ack reply / reply: this is the ack (applied)
FLAG_COMMIT = 1 << 1  # request: want the commit reply / reply: this is the commit (durable)
FLAG_READ = 1 << 2
FLAG_WRITE = 1 << 3

NOSNAP = 2**64 - 2

MAX_OPS = 64
MAX_NAME = 4096
MAX_OID = 2048
MAX_SNAPS = 1024

_REQ_HEAD = struct.Struct("<BQQIQIQI")  # client type, num, incarnation, epoch, pool, flags,
#                                          snapid, attempt
_REP_HEAD = struct.Struct("<iQIIIH")  # result, version, flags, epoch, attempt, n_ops
_OP_HEAD = struct.Struct("<HH")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OP_RESULT = struct.Struct("<iII")


class OpDecodeError(Exception):
    """Malformed request or reply; ``errno`` is what the reply should carry."""

    def __init__(self, msg: str, err: int = errno.EBADMSG, tid: int | None = None) -> None:
        super().__init__(msg)
        self.errno = err
        self.tid = tid


class UnknownOpError(OpDecodeError):
    def __init__(self, opcode: int, tid: int | None = None) -> None:
        super().__init__(f"unknown opcode {opcode}", errno.EOPNOTSUPP, tid)
        self.opcode = opcode


class OpError(Exception):
    """An op's arguments are unacceptable at execution time."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(msg or errno.errorcode.get(err, str(err)))
        self.errno = err


def _views(data: Buffer | Sequence[Buffer]) -> list[memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        data = [data]
    out = []
    for d in data:
        mv = d if isinstance(d, memoryview) else memoryview(d)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        out.append(mv)
    return out


def slice_segments(segs: Sequence[memoryview], offset: int, length: int) -> list[memoryview]:
    """Views of bytes [offset, offset+length) of a segment list: no copy."""
    out: list[memoryview] = []
    for s in segs:
        n = len(s)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        out.append(s[offset : offset + take])
        length -= take
        offset = 0
        if length == 0:
            break
    if length:
        raise OpDecodeError("data section shorter than the ops say")
    return out


# ---- the op classes ---------------------------------------------------------------------------

_OPS: dict[int, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    if cls.OPCODE in _OPS:
        raise ValueError(f"opcode {cls.OPCODE} registered twice")
    _OPS[cls.OPCODE] = cls
    return cls


@dataclass
class Op:
    """Base: subclasses declare OPCODE, FIXED (struct for fixed fields) and MUTATES."""

    OPCODE: ClassVar[int] = 0
    FIXED: ClassVar[struct.Struct] = struct.Struct("<")
    MUTATES: ClassVar[bool] = False
    N_TRAIL: ClassVar[int] = 0
    BULK_OUT: ClassVar[bool] = False  # its output travels in the reply's data section

    def fixed(self) -> tuple:
        return ()

    def bulk(self) -> list[memoryview]:
        return []

    def trail(self) -> list[bytes]:
        return []

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(*fixed)  # type: ignore[call-arg]

    # reply side: an op's output → (inline bytes, bulk views) and back
    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return b"", []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return None


def _str(b: bytes, what: str) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        raise OpDecodeError(f"{what} is not utf-8", errno.EINVAL) from None


@register
@dataclass
class Read(Op):
    """Read [offset, offset+length); the reply's bulk data is the bytes (short at EOF)."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 1
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    BULK_OUT: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return b"", _views(out) if out is not None else []  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return bulk


@register
@dataclass
class SparseRead(Op):
    """Like read, but only the allocated extents: map inline, their bytes packed in bulk."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 2
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    BULK_OUT: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        extents, data = out  # type: ignore[misc]
        inline = _U32.pack(len(extents)) + b"".join(
            struct.pack("<QQ", o, n) for o, n in extents)
        return inline, _views(data)

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        (n,) = _U32.unpack_from(inline, 0)
        if len(inline) != 4 + 16 * n:
            raise OpDecodeError("bad sparse-read extent map")
        extents = [struct.unpack_from("<QQ", inline, 4 + 16 * i) for i in range(n)]
        if sum(e[1] for e in extents) != sum(len(b) for b in bulk):
            raise OpDecodeError("sparse-read data does not match its extent map")
        return extents, bulk


@register
@dataclass
class Write(Op):
    """Write ``data`` at ``offset``; the payload travels as views of the caller's buffer."""

    offset: int = 0
    data: Buffer | list[memoryview] = b""
    OPCODE: ClassVar[int] = 3
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    MUTATES: ClassVar[bool] = True

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
    """Replace the whole object with ``data``."""

    data: Buffer | list[memoryview] = b""
    OPCODE: ClassVar[int] = 4
    MUTATES: ClassVar[bool] = True

    def bulk(self) -> list[memoryview]:
        return _views(self.data)

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(bulk)


@register
@dataclass
class Zero(Op):
    """Zero a range (never grows the object)."""

    offset: int = 0
    length: int = 0
    OPCODE: ClassVar[int] = 5
    FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.offset, self.length)


@register
@dataclass
class Truncate(Op):
    size: int = 0
    OPCODE: ClassVar[int] = 6
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (self.size,)


@register
@dataclass
class Delete(Op):
    OPCODE: ClassVar[int] = 7
    MUTATES: ClassVar[bool] = True


@register
@dataclass
class Create(Op):
    """Create the object; with ``exclusive`` an existing one is EEXIST."""

    exclusive: bool = False
    OPCODE: ClassVar[int] = 8
    FIXED: ClassVar[struct.Struct] = struct.Struct("<B")
    MUTATES: ClassVar[bool] = True

    def fixed(self) -> tuple:
        return (int(self.exclusive),)

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(bool(fixed[0]))


@dataclass
class StatResult:
    size: int
    mtime: float
    version: int


_STAT = struct.Struct("<QdQ")


@register
@dataclass
class Stat(Op):
    OPCODE: ClassVar[int] = 9

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        st: StatResult = out  # type: ignore[assignment]
        return _STAT.pack(st.size, st.mtime, st.version), []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        if len(inline) != _STAT.size:
            raise OpDecodeError("bad stat output")
        return StatResult(*_STAT.unpack(inline))


@register
@dataclass
class GetXattr(Op):
    name: str = ""
    OPCODE: ClassVar[int] = 10
    N_TRAIL: ClassVar[int] = 1

    def trail(self) -> list[bytes]:
        return [self.name.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"))

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return bytes(out), []  # type: ignore[call-overload]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return bytes(inline)


@register
@dataclass
class SetXattr(Op):
    name: str = ""
    value: bytes = b""
    OPCODE: ClassVar[int] = 11
    N_TRAIL: ClassVar[int] = 2
    MUTATES: ClassVar[bool] = True

    def trail(self) -> list[bytes]:
        return [self.name.encode(), bytes(self.value)]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"), trail[1])


@register
@dataclass
class RmXattr(Op):
    name: str = ""
    OPCODE: ClassVar[int] = 12
    N_TRAIL: ClassVar[int] = 1
    MUTATES: ClassVar[bool] = True

    def trail(self) -> list[bytes]:
        return [self.name.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "xattr name"))


def _encode_map(d: dict[str, bytes]) -> bytes:
    pl = Pagelist()
    pl.encode_u32(len(d))
    for k in sorted(d):
        pl.encode_str(k)
        pl.encode_bytes(d[k])
    return pl.tobytes()


def _decode_map(buf: memoryview) -> dict[str, bytes]:
    r = _Reader(buf)
    out = {}
    for _ in range(r.u32()):
        k = _str(r.take(r.u32()), "xattr name")
        out[k] = r.take(r.u32())
    r.end()
    return out


@register
@dataclass
class GetXattrs(Op):
    OPCODE: ClassVar[int] = 13

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return _encode_map(out), []  # type: ignore[arg-type]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return _decode_map(inline)


CMP_STRING = 1
CMP_U64 = 2


@register
@dataclass
class CmpXattr(Op):
    """A guard: the whole vector fails with ECANCELED unless ``xattr <op> value`` holds.

    ``op`` is 1..6 (EQ NE GT GTE LT LTE, Ceph's numbering); ``mode`` compares as bytes or
    as unsigned integers.
    """

    name: str = ""
    op: int = 1
    mode: int = CMP_STRING
    value: bytes | int = b""
    OPCODE: ClassVar[int] = 14
    FIXED: ClassVar[struct.Struct] = struct.Struct("<BB")
    N_TRAIL: ClassVar[int] = 2

    def fixed(self) -> tuple:
        return (self.op, self.mode)

    def trail(self) -> list[bytes]:
        v = _U64.pack(self.value) if self.mode == CMP_U64 else bytes(self.value)  # type: ignore
        return [self.name.encode(), v]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        op, mode = fixed
        if not 1 <= op <= 6 or mode not in (CMP_STRING, CMP_U64):
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
    """Run object class method ``cls.method`` on the OSD with ``indata``; output inline."""

    cls: str = ""
    method: str = ""
    indata: bytes = b""
    OPCODE: ClassVar[int] = 15
    N_TRAIL: ClassVar[int] = 3

    def trail(self) -> list[bytes]:
        return [self.cls.encode(), self.method.encode(), bytes(self.indata)]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "class"), _str(trail[1], "method"), trail[2])

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        return bytes(out or b""), []  # type: ignore[call-overload]

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        return bytes(inline)


@register
@dataclass
class ListObjects(Op):
    """A page of the pool's object names after ``start_after``; output (names, next)."""

    start_after: str = ""
    max_entries: int = 1000
    OPCODE: ClassVar[int] = 16
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    N_TRAIL: ClassVar[int] = 1

    def fixed(self) -> tuple:
        return (self.max_entries,)

    def trail(self) -> list[bytes]:
        return [self.start_after.encode()]

    @classmethod
    def from_wire(cls, fixed: tuple, bulk: list[memoryview], trail: list[bytes]) -> Op:
        return cls(_str(trail[0], "list marker"), fixed[0])

    def encode_output(self, out: object) -> tuple[bytes, list[memoryview]]:
        names, nxt = out  # type: ignore[misc]
        pl = Pagelist()
        pl.encode_u32(len(names))
        for n in names:
            pl.encode_str(n)
        pl.encode_u8(nxt is not None)
        pl.encode_str(nxt or "")
        return pl.tobytes(), []

    def decode_output(self, inline: memoryview, bulk: list[memoryview]) -> object:
        r = _Reader(inline)
        names = [_str(r.take(r.u32()), "name") for _ in range(r.u32())]
        has = r.u8()
        nxt = _str(r.take(r.u32()), "marker")
        r.end()
        return names, (nxt if has else None)


@register
@dataclass
class AssertVersion(Op):
    """A guard: ERANGE (like Ceph) unless the object's version equals ``version``."""

    version: int = 0
    OPCODE: ClassVar[int] = 17
    FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")

    def fixed(self) -> tuple:
        return (self.version,)


@register
@dataclass
class AssertExists(Op):
    OPCODE: ClassVar[int] = 18


# reserved for the snapshot work: rollback, list-snaps, snap-trim
OP_ROLLBACK = 32
OP_LIST_SNAPS = 33


# ---- requests ---------------------------------------------------------------------------------


@dataclass
class OSDRequest:
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


def encode_request(
    ops: Sequence[Op], *, tid: int, client: EntityName, incarnation: int, epoch: int,
    pool: int, oid: str, flags: int, snapc: tuple[int, list[int]] | None = None,
    snapid: int = NOSNAP, attempt: int = 0,
) -> Message:
    if len(ops) > MAX_OPS:
        raise ValueError(f"at most {MAX_OPS} ops in a vector")
    front = bytearray(_REQ_HEAD.pack(client.type, client.num, incarnation, epoch, pool, flags,
                                     snapid, attempt))
    name = oid.encode()
    front += _U32.pack(len(name)) + name
    seq, snaps = snapc if snapc is not None else (0, [])
    front += _U64.pack(seq) + _U32.pack(len(snaps)) + b"".join(_U64.pack(s) for s in snaps)
    front += _U16.pack(len(ops))
    bio = BioChain()
    trail = Pagelist()
    for op in ops:
        bulk = op.bulk()
        items = op.trail()
        front += _OP_HEAD.pack(op.OPCODE, 0) + op.FIXED.pack(*op.fixed())
        front += _U32.pack(sum(len(b) for b in bulk)) + _U8.pack(len(items))
        for it in items:
            front += _U32.pack(len(it))
            trail.append(it)
        for b in bulk:
            bio.append(b)
    return Message(type=MSG_OSD_OP, tid=tid, front=bytes(front),
                   data=bio if bio.length else None, trail=trail if trail.length else None)


class _Reader:
    """Bounds-checked little-endian reader over a buffer."""

    def __init__(self, buf: Buffer, tid: int | None = None) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.tid = tid

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise OpDecodeError("truncated", tid=self.tid)

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

    def take(self, n: int) -> bytes:
        self._need(n)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise OpDecodeError("trailing garbage", tid=self.tid)


def _data_segments(msg: Message) -> list[memoryview]:
    return msg.data_segments()


def decode_request(msg: Message) -> OSDRequest:
    """Decode a request; bulk payloads become views into the received data (no copy)."""
    tid = msg.tid
    r = _Reader(msg.front, tid)
    ctype, cnum, inc, epoch, pool, flags, snapid, attempt = r.unpack(_REQ_HEAD)
    olen = r.u32()
    if olen > MAX_OID:
        raise OpDecodeError(f"object name of {olen} bytes", errno.EINVAL, tid)
    oid = r.take(olen)
    try:
        oid_s = oid.decode()
    except UnicodeDecodeError:
        raise OpDecodeError("object name is not utf-8", errno.EINVAL, tid) from None
    seq = r.u64()
    nsnaps = r.u32()
    if nsnaps > MAX_SNAPS:
        raise OpDecodeError(f"{nsnaps} snaps in the context", errno.EINVAL, tid)
    snaps = [r.u64() for _ in range(nsnaps)]
    nops = r.u16()
    if nops > MAX_OPS:
        raise OpDecodeError(f"{nops} ops in one vector", errno.EINVAL, tid)
    raw = []
    for _ in range(nops):
        opcode, _oflags = r.unpack(_OP_HEAD)
        cls = _OPS.get(opcode)
        if cls is None:
            raise UnknownOpError(opcode, tid)
        fixed = r.unpack(cls.FIXED)
        bulk_len = r.u32()
        n_items = r.u8()
        if n_items != cls.N_TRAIL:
            raise OpDecodeError(f"{cls.__name__} with {n_items} trail items", tid=tid)
        lens = [r.u32() for _ in range(n_items)]
        if any(n > MAX_NAME for n in lens[:1]) and cls is not Call:
            raise OpDecodeError("name too long", errno.ENAMETOOLONG, tid)
        raw.append((cls, fixed, bulk_len, lens))
    r.end()
    segs = _data_segments(msg)
    total = sum(len(s) for s in segs)
    bulk_total = sum(b for _, _, b, _ in raw)
    trail_total = sum(sum(ls) for _, _, _, ls in raw)
    if bulk_total + trail_total != total:
        raise OpDecodeError(
            f"ops describe {bulk_total + trail_total} data bytes, message has {total}", tid=tid)
    ops: list[Op] = []
    bpos, tpos = 0, bulk_total
    for cls, fixed, bulk_len, lens in raw:
        bulk = slice_segments(segs, bpos, bulk_len) if bulk_len else []
        bpos += bulk_len
        items = []
        for n in lens:
            items.append(b"".join(slice_segments(segs, tpos, n)) if n else b"")
            tpos += n
        try:
            ops.append(cls.from_wire(fixed, bulk, items))
        except OpDecodeError as e:
            e.tid = tid
            raise
    return OSDRequest(tid, EntityName(ctype, cnum), inc, epoch, pool, oid_s, flags,
                      (seq, snaps) if flags & FLAG_WRITE or seq or snaps else None, snapid,
                      attempt, ops)


# ---- replies ----------------------------------------------------------------------------------


@dataclass
class OpResult:
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


def encode_reply(
    *, tid: int, result: int, version: int, flags: int, epoch: int, attempt: int,
    op_results: Sequence[tuple[Op, int, object]],
) -> Message:
    """``op_results``: (op, result, output) per op, or empty (errors, commit replies)."""
    front = bytearray(_REP_HEAD.pack(result, version, flags, epoch, attempt, len(op_results)))
    bio = BioChain()
    for op, res, out in op_results:
        inline, bulk = op.encode_output(out) if res >= 0 and out is not None else (b"", [])
        front += _OP_RESULT.pack(res, sum(len(b) for b in bulk), len(inline)) + inline
        for b in bulk:
            bio.append(b)
    return Message(type=MSG_OSD_OPREPLY, tid=tid, front=bytes(front),
                   data=bio if bio.length else None)


def error_reply(tid: int, err: int, *, epoch: int = 0, attempt: int = 0) -> Message:
    """A reply that is both ack and commit, carrying only ``-err``."""
    return encode_reply(tid=tid, result=-abs(err), version=0, flags=FLAG_ACK | FLAG_COMMIT,
                        epoch=epoch, attempt=attempt, op_results=[])


def decode_reply(msg: Message, ops: Sequence[Op]) -> OSDReply:
    r = _Reader(msg.front, msg.tid)
    result, version, flags, epoch, attempt, nops = r.unpack(_REP_HEAD)
    if nops not in (0, len(ops)):
        raise OpDecodeError(f"reply has {nops} op results for {len(ops)} ops", tid=msg.tid)
    segs = _data_segments(msg)
    total = sum(len(s) for s in segs)
    results = []
    pos = 0
    for i in range(nops):
        res, bulk_len, inline_len = r.unpack(_OP_RESULT)
        r._need(inline_len)
        inline = r.buf[r.pos : r.pos + inline_len]
        r.pos += inline_len
        if pos + bulk_len > total:
            raise OpDecodeError("reply data shorter than its ops say", tid=msg.tid)
        bulk = slice_segments(segs, pos, bulk_len) if bulk_len else []
        pos += bulk_len
        out = None
        if res >= 0 and (inline_len or bulk_len or ops[i].BULK_OUT):
            try:
                out = ops[i].decode_output(inline, bulk)
            except struct.error:
                raise OpDecodeError("bad op output", tid=msg.tid) from None
        results.append(OpResult(res, out))
    r.end()
    if pos != total:
        raise OpDecodeError("reply carries unexplained data", tid=msg.tid)
    return OSDReply(msg.tid, result, version, flags, epoch, attempt, results)


def bulk_layout(ops: Sequence[Op]) -> list[int]:
    """Per op, the most bulk reply data it can bring (reads): for reader buffers."""
    return [op.length if isinstance(op, Read) else 0 for op in ops]  # type: ignore[attr-defined]
