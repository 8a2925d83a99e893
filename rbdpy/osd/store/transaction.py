"""A transaction on one object: the value the OSD builds from an op vector, encodes to ship to
its replicas, and the store checks and applies.

``prepare`` checks a transaction against an object's metadata without touching any file: one
check per op (``_CHECKS``) runs against a simulated state that the earlier ops of the same
transaction produced, and the result is the list of *effective* ops the journal records.
Sans-I/O: the store reads the blocks partial writes merge into afterwards, and only if the
checks passed.
"""

from __future__ import annotations

import enum
import errno
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rbdpy.crc import Buffer
from rbdpy.msgr.payload import byte_view, byte_views, slice_segments
from rbdpy.osd.store.errors import StoreError
from rbdpy.osd.store.format import (
    OP_APPENDXATTR,
    OP_CREATE,
    OP_DELETE,
    OP_RMXATTR,
    OP_SETXATTR,
    OP_TRUNCATE,
    OP_WRITE,
    OP_WRITE_DIRECT,
    OP_ZERO,
    ObjMeta,
)
from rbdpy.proto.ops import MAX_OID

# builder-only ops: expanded or evaluated by ``prepare``, never journaled
OP_CREATE_EXCL = 20
OP_WRITEFULL = 21
OP_CMPXATTR = 30
OP_ASSERT_VERSION = 31
OP_ASSERT_EXISTS = 32
_CREATING_OPS = frozenset({OP_CREATE, OP_CREATE_EXCL, OP_WRITE, OP_WRITEFULL, OP_TRUNCATE,
                           OP_SETXATTR, OP_APPENDXATTR})
_GUARDS = frozenset({OP_CMPXATTR, OP_ASSERT_VERSION, OP_ASSERT_EXISTS})

MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 << 10
MAX_OPS = 0xFFFF  # the journal record counts its ops in a u16
# The OSD keys an object "<pool>.<name>" (u64 pool), and every name the wire accepts
# (proto.ops.MAX_OID, whose decoder refuses longer ones with EINVAL) must fit, or a name
# would pass one layer and fail the other. Nothing else bounds a key here: a long one gets
# a hashed file name, and records count its bytes in a u16.
MAX_KEY = MAX_OID + len(f"{2**64 - 1}.")


class CmpOp(enum.IntEnum):
    """cmpxattr operators (numbered as Ceph's CEPH_OSD_CMPXATTR_OP_*)."""

    EQ = 1
    NE = 2
    GT = 3
    GTE = 4
    LT = 5
    LTE = 6


_CMP = {
    CmpOp.EQ: operator.eq,
    CmpOp.NE: operator.ne,
    CmpOp.GT: operator.gt,
    CmpOp.GTE: operator.ge,
    CmpOp.LT: operator.lt,
    CmpOp.LTE: operator.le,
}


class TxnDecodeError(StoreError):
    """An encoded transaction that cannot be decoded: EBADMSG when it is malformed
    (truncated, lengths that do not add up, bytes left over), EINVAL when a field holds a
    value no transaction has (an unknown op or operator)."""

    def __init__(self, msg: str, err: int = errno.EBADMSG) -> None:
        super().__init__(err, msg)


def appended(old: bytes, data: bytes, keep: int) -> bytes:
    """The value of an xattr after appendxattr (the same computation at apply and replay)."""
    new = old + data
    return new[len(new) - keep:] if len(new) > keep else new


# -- the value ---------------------------------------------------------------------------------


class Transaction:
    """Mutations and guards for one object, applied in order, all or nothing.

    Guards are evaluated against the state the earlier ops of the same transaction produced
    (``assert_version`` against the version before the transaction); any failure aborts the
    whole transaction before anything takes effect. Payload buffers are referenced, not copied,
    until ``apply`` returns (or, for an encoded transaction, until its segments are sent).
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def __len__(self) -> int:
        return len(self.ops)

    def creates(self) -> bool:
        """Whether applying this transaction can bring a missing object into existence."""
        return any(op[0] in _CREATING_OPS for op in self.ops)

    def create(self, exclusive: bool = False) -> Transaction:
        """Create the object (EEXIST if ``exclusive`` and it exists)."""
        self.ops.append((OP_CREATE_EXCL,) if exclusive else (OP_CREATE,))
        return self

    def write(self, offset: int, data: Buffer | Sequence[Buffer]) -> Transaction:
        """Write bytes at ``offset`` (creating the object and extending it as needed).
        ``data`` is one buffer or a list of them (network segments)."""
        segs = byte_views(data, drop_empty=True)
        self.ops.append((OP_WRITE, operator.index(offset), segs, sum(len(s) for s in segs)))
        return self

    def writefull(self, data: Buffer | Sequence[Buffer]) -> Transaction:
        """Replace the whole content: the object becomes exactly ``data``."""
        segs = byte_views(data, drop_empty=True)
        self.ops.append((OP_WRITEFULL, 0, segs, sum(len(s) for s in segs)))
        return self

    def zero(self, offset: int, length: int) -> Transaction:
        """Zero a range (whole blocks become holes); never extends the object."""
        self.ops.append((OP_ZERO, operator.index(offset), operator.index(length)))
        return self

    def truncate(self, size: int) -> Transaction:
        """Set the size; shrinking discards data, growing adds a hole. Creates the object."""
        self.ops.append((OP_TRUNCATE, operator.index(size)))
        return self

    def delete(self) -> Transaction:
        """Remove the object (ENOENT if absent)."""
        self.ops.append((OP_DELETE,))
        return self

    def setxattr(self, name: str, value: Buffer) -> Transaction:
        self.ops.append((OP_SETXATTR, name, bytes(value)))
        return self

    def rmxattr(self, name: str) -> Transaction:
        """Remove an xattr (ENODATA if it is not set)."""
        self.ops.append((OP_RMXATTR, name))
        return self

    def appendxattr(self, name: str, data: Buffer, keep: int) -> Transaction:
        """Append ``data`` to an xattr (a missing one counts as empty) and keep only the last
        ``keep`` bytes of the result; creates the object. Moves the xattr last in the order
        of ``getxattrs`` (so a set of such logs is ordered by last use).

        Why not setxattr with the new value: the journal record then carries only ``data``,
        so a small log that grows with every write (the OSD's request ids) costs a few bytes
        per transaction instead of its whole size."""
        self.ops.append((OP_APPENDXATTR, name, bytes(data), operator.index(keep)))
        return self

    def cmpxattr(self, name: str, op: CmpOp | int | str, value: Buffer | int) -> Transaction:
        """Guard on an xattr: bytes ``value`` compares bytes (a missing xattr is b""), an int
        compares as u64 with the xattr parsed as ASCII decimal (missing is 0). ECANCELED if
        false, EINVAL if the xattr is not a number in u64 mode."""
        if isinstance(op, str):
            op = CmpOp[op.upper()]
        val = value if isinstance(value, int) else bytes(value)
        self.ops.append((OP_CMPXATTR, name, CmpOp(op), val))
        return self

    def assert_version(self, version: int) -> Transaction:
        """Guard: the object's version before this transaction is ``version`` (0 = absent)."""
        self.ops.append((OP_ASSERT_VERSION, operator.index(version)))
        return self

    def assert_exists(self) -> Transaction:
        """Guard: the object exists at this point of the transaction (ENOENT otherwise)."""
        self.ops.append((OP_ASSERT_EXISTS,))
        return self

    # -- codec: to ship a transaction to another store --------------------------------------

    def encode(self) -> tuple[bytes, list[memoryview]]:
        """The transaction as a header and the write payloads (the views this transaction
        holds: no copy). ``decode`` of the two, however the payload bytes are re-cut into
        segments on the way, gives a transaction that applies with the same result. Values
        that cannot be encoded (a non-str name, an int out of range) raise StoreError(EINVAL).
        """
        return _encode(self.ops)

    @classmethod
    def decode(cls, header: Buffer, segments: Buffer | Sequence[Buffer] = ()) -> Transaction:
        """The transaction ``encode`` gave ``header`` and ``segments`` for. Write payloads
        are views of ``segments`` (keep them alive while the transaction is). Anything
        malformed raises TxnDecodeError."""
        txn = cls()
        txn.ops = _decode(byte_view(header), byte_views(segments, drop_empty=True))
        return txn


# -- codec -------------------------------------------------------------------------------------
#
# header: u8 codec version, u32 op count, then per op a u8 code and its fields (little-endian;
# names and xattr values inline with u32 lengths); write payloads follow in the segments, in
# op order, their lengths in the header.

_CODEC_VERSION = 1
_HEAD = struct.Struct("<BI")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U8 = struct.Struct("<B")
_I64X2 = struct.Struct("<qq")
_I64_U64 = struct.Struct("<qQ")
_CMP_BYTES, _CMP_INT = 0, 1


def _pack(st: struct.Struct, *vals: object) -> bytes:
    try:
        return st.pack(*vals)
    except struct.error as e:
        raise StoreError(errno.EINVAL, f"transaction value out of range: {e}") from None


def _name(name: object) -> bytes:
    if not isinstance(name, str):
        raise StoreError(errno.EINVAL, f"xattr name {name!r} is not a str")
    try:
        b = name.encode()
    except UnicodeEncodeError:
        raise StoreError(errno.EINVAL, "xattr name is not valid unicode") from None
    return _U32.pack(len(b)) + b


def _encode(ops: list[tuple]) -> tuple[bytes, list[memoryview]]:
    out = bytearray(_HEAD.pack(_CODEC_VERSION, len(ops)))
    segs: list[memoryview] = []
    for op in ops:
        code = op[0]
        out.append(code)
        if code == OP_WRITE:
            out += _pack(_I64_U64, op[1], op[3])
            segs.extend(op[2])
        elif code == OP_WRITEFULL:
            out += _pack(_U64, op[3])
            segs.extend(op[2])
        elif code == OP_ZERO:
            out += _pack(_I64X2, op[1], op[2])
        elif code in (OP_TRUNCATE, OP_ASSERT_VERSION):
            out += _pack(_I64, op[1])
        elif code == OP_SETXATTR:
            out += _name(op[1]) + _U32.pack(len(op[2])) + op[2]
        elif code == OP_RMXATTR:
            out += _name(op[1])
        elif code == OP_APPENDXATTR:
            out += _name(op[1]) + _pack(_I64, op[3]) + _U32.pack(len(op[2])) + op[2]
        elif code == OP_CMPXATTR:
            out += _name(op[1]) + _U8.pack(op[2])
            if isinstance(op[3], int):
                out += _U8.pack(_CMP_INT) + _pack(_U64, op[3])
            else:
                out += _U8.pack(_CMP_BYTES) + _U32.pack(len(op[3])) + op[3]
        elif code not in (OP_CREATE, OP_CREATE_EXCL, OP_DELETE, OP_ASSERT_EXISTS):
            raise StoreError(errno.EINVAL, f"unknown op {code}")
    return bytes(out), segs


class _Reader:
    """Bounds-checked reads from the header: never an IndexError or struct.error."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise TxnDecodeError(f"transaction header ends at {len(self.buf)}, "
                                 f"{n} bytes wanted at {self.pos}")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def one(self, st: struct.Struct) -> int:
        return st.unpack(self.take(st.size))[0]

    def blob(self) -> bytes:
        return bytes(self.take(self.one(_U32)))

    def name(self) -> str:
        try:
            return str(self.take(self.one(_U32)), "utf-8")
        except UnicodeDecodeError:
            raise TxnDecodeError("xattr name is not utf-8") from None


def _decode(buf: memoryview, segs: list[memoryview]) -> list[tuple]:
    r = _Reader(buf)
    version, nops = r.unpack(_HEAD)
    if version != _CODEC_VERSION:
        raise TxnDecodeError(f"transaction codec version {version}, not {_CODEC_VERSION}")
    if nops > len(buf) - _HEAD.size:  # every op takes at least its code byte
        raise TxnDecodeError(f"{nops} ops in a header of {len(buf)} bytes")
    total = sum(len(s) for s in segs)
    used = 0
    ops: list[tuple] = []
    for _ in range(nops):
        code = r.one(_U8)
        if code in (OP_WRITE, OP_WRITEFULL):
            off, n = r.unpack(_I64_U64) if code == OP_WRITE else (0, r.one(_U64))
            if n > total - used:
                raise TxnDecodeError(f"write of {n} bytes with {total - used} left in the data")
            ops.append((code, off, slice_segments(segs, used, n), n))
            used += n
        elif code == OP_ZERO:
            ops.append((code, *r.unpack(_I64X2)))
        elif code in (OP_TRUNCATE, OP_ASSERT_VERSION):
            ops.append((code, r.one(_I64)))
        elif code == OP_SETXATTR:
            ops.append((code, r.name(), r.blob()))
        elif code == OP_RMXATTR:
            ops.append((code, r.name()))
        elif code == OP_APPENDXATTR:
            name, keep = r.name(), r.one(_I64)
            ops.append((code, name, r.blob(), keep))
        elif code == OP_CMPXATTR:
            name, cmp, kind = r.name(), r.one(_U8), r.one(_U8)
            try:
                cop = CmpOp(cmp)
            except ValueError:
                raise TxnDecodeError(f"unknown cmpxattr operator {cmp}", errno.EINVAL) from None
            if kind == _CMP_INT:
                val: int | bytes = r.one(_U64)
            elif kind == _CMP_BYTES:
                val = r.blob()
            else:
                raise TxnDecodeError(f"unknown cmpxattr value kind {kind}", errno.EINVAL)
            ops.append((code, name, cop, val))
        elif code in (OP_CREATE, OP_CREATE_EXCL, OP_DELETE, OP_ASSERT_EXISTS):
            ops.append((code,))
        else:
            raise TxnDecodeError(f"unknown op {code}", errno.EINVAL)
    if r.pos != len(buf):
        raise TxnDecodeError(f"{len(buf) - r.pos} bytes after the last op")
    if used != total:
        raise TxnDecodeError(f"{total - used} data bytes no op uses")
    return ops


# -- checks ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What a transaction does to one object, as ``prepare`` found it."""

    ops: list[tuple]  # the effective ops to journal and apply
    mutates: bool  # False: guards only (no record, no new version)
    edges: list[int]  # blocks partial writes merge into: read and verify them first
    prealloc: list[tuple[int, int]]  # block ranges written (reserve their space first)
    direct: bool  # its one write goes straight to holes in the file (see ObjectStore)


class _Sim:
    """The object as the ops checked so far leave it."""

    __slots__ = ("oid", "bs", "maxsize", "direct_min", "exists", "pre_version", "size",
                 "xattrs", "xcopied", "fresh", "pre_nb", "ops", "edges", "prealloc", "big")

    def __init__(self, oid: str, obj: ObjMeta | None, bs: int, maxsize: int,
                 direct_min: int) -> None:
        self.oid, self.bs, self.maxsize, self.direct_min = oid, bs, maxsize, direct_min
        self.exists = obj is not None
        self.pre_version = obj.version if obj is not None else 0
        self.size = obj.size if obj is not None else 0
        self.xattrs = obj.xattrs if obj is not None else {}
        self.xcopied = False  # xattrs is still the object's own dict: copy before changing
        self.fresh = obj is None  # pre-txn blocks no longer matter once (re-)created
        self.pre_nb = len(obj.alloc) if obj is not None else 0
        self.ops: list[tuple] = []
        self.edges: set[int] = set()
        self.prealloc: list[tuple[int, int]] = []
        self.big = False  # a write large enough to maybe go the direct way

    def edge(self, b: int) -> None:
        """Block ``b`` is partly overwritten: its current content must be read first."""
        if not self.fresh and b < self.pre_nb:
            self.edges.add(b)

    def need(self) -> None:
        if not self.exists:
            raise StoreError(errno.ENOENT, f"no object {self.oid!r}")

    def create(self) -> None:
        if not self.exists:
            self.ops.append((OP_CREATE,))
            self.exists = True

    def own_xattrs(self) -> dict[str, bytes]:
        if not self.xcopied:
            self.xattrs, self.xcopied = dict(self.xattrs), True
        return self.xattrs

    def write(self, off: int, segs: list[memoryview], n: int) -> None:
        if off < 0:
            raise StoreError(errno.EINVAL, "negative offset")
        end = off + n
        if end > self.maxsize:
            raise StoreError(errno.EFBIG, f"write past {self.maxsize} bytes")
        self.create()
        if n:
            bs = self.bs
            b0, b1 = off // bs, (end - 1) // bs
            if n >= self.direct_min:
                self.big = True
            if off % bs:
                self.edge(b0)
            if end % bs and end < self.size:
                self.edge(b1)
            self.prealloc.append((b0, b1))
            self.ops.append((OP_WRITE, off, segs, n))
            self.size = max(self.size, end)


def _assert_exists(s: _Sim, op: tuple) -> None:
    s.need()


def _assert_version(s: _Sim, op: tuple) -> None:
    if s.pre_version != op[1]:
        raise StoreError(errno.ECANCELED, f"version is {s.pre_version}, expected {op[1]}")


def _cmpxattr(s: _Sim, op: tuple) -> None:
    s.need()
    _, name, cmp, value = op
    cur = s.xattrs.get(name)
    if isinstance(value, int):
        try:
            have = int(cur.decode("ascii")) if cur else 0
        except (UnicodeDecodeError, ValueError):
            raise StoreError(errno.EINVAL, f"xattr {name!r} is not a number") from None
        ok = _CMP[cmp](have, value)
    else:
        ok = _CMP[cmp](cur if cur is not None else b"", value)
    if not ok:
        raise StoreError(errno.ECANCELED, f"cmpxattr {name!r} failed")


def _create(s: _Sim, op: tuple) -> None:
    s.create()


def _create_excl(s: _Sim, op: tuple) -> None:
    if s.exists:
        raise StoreError(errno.EEXIST, f"object {s.oid!r} exists")
    s.create()


def _write(s: _Sim, op: tuple) -> None:
    s.write(op[1], op[2], op[3])


def _writefull(s: _Sim, op: tuple) -> None:
    n = op[3]
    s.write(0, op[2], n)
    if s.size != n:
        if n % s.bs:
            s.edge(n // s.bs)
        s.ops.append((OP_TRUNCATE, n))
        s.size = n


def _zero(s: _Sim, op: tuple) -> None:
    _, off, length = op
    if off < 0 or length < 0:
        raise StoreError(errno.EINVAL, "negative offset or length")
    if off + length > s.maxsize:
        raise StoreError(errno.EFBIG, f"zero past {s.maxsize} bytes")
    end = min(off + length, s.size)
    if s.exists and off < end:
        if off % s.bs:
            s.edge(off // s.bs)
        if end % s.bs and end < s.size:
            s.edge(end // s.bs)
        s.ops.append((OP_ZERO, off, end - off))


def _truncate(s: _Sim, op: tuple) -> None:
    new = op[1]
    if new < 0:
        raise StoreError(errno.EINVAL, "negative size")
    if new > s.maxsize:
        raise StoreError(errno.EFBIG, f"truncate past {s.maxsize} bytes")
    s.create()
    if new != s.size:
        if new < s.size and new % s.bs:
            s.edge(new // s.bs)
        s.ops.append((OP_TRUNCATE, new))
        s.size = new


def _delete(s: _Sim, op: tuple) -> None:
    s.need()
    s.ops.append((OP_DELETE,))
    s.exists, s.size, s.xattrs, s.xcopied, s.fresh = False, 0, {}, True, True
    s.prealloc.clear()


def _xattr_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_XATTR_NAME:
        raise StoreError(errno.EINVAL, "bad xattr name")


def _setxattr(s: _Sim, op: tuple) -> None:
    _xattr_name(op[1])
    if len(op[2]) > MAX_XATTR_VALUE:
        raise StoreError(errno.E2BIG, f"xattr value over {MAX_XATTR_VALUE}")
    s.create()
    s.own_xattrs()[op[1]] = op[2]
    s.ops.append(op)


def _appendxattr(s: _Sim, op: tuple) -> None:
    _, name, data, keep = op
    _xattr_name(name)
    if not 0 <= len(data) <= keep:
        raise StoreError(errno.EINVAL, "appendxattr keeps less than it appends")
    if len(data) > MAX_XATTR_VALUE or keep > MAX_XATTR_VALUE:
        raise StoreError(errno.E2BIG, f"xattr value over {MAX_XATTR_VALUE}")
    s.create()
    xattrs = s.own_xattrs()
    xattrs[name] = appended(xattrs.pop(name, b""), data, keep)
    s.ops.append(op)


def _rmxattr(s: _Sim, op: tuple) -> None:
    _xattr_name(op[1])
    s.need()
    if op[1] not in s.xattrs:
        raise StoreError(errno.ENODATA, f"no xattr {op[1]!r}")
    del s.own_xattrs()[op[1]]
    s.ops.append(op)


def check_key(oid: object) -> None:
    """EINVAL unless ``oid`` can name an object in the store."""
    if not isinstance(oid, str) or not oid or len(oid.encode()) > MAX_KEY:
        raise StoreError(errno.EINVAL, "bad object id")


# one check per op: raises the StoreError that refuses the transaction, or updates the
# simulated object and appends the op's effective ops
_CHECKS: dict[int, Callable[[_Sim, tuple], None]] = {
    OP_ASSERT_EXISTS: _assert_exists,
    OP_ASSERT_VERSION: _assert_version,
    OP_CMPXATTR: _cmpxattr,
    OP_CREATE: _create,
    OP_CREATE_EXCL: _create_excl,
    OP_WRITE: _write,
    OP_WRITEFULL: _writefull,
    OP_ZERO: _zero,
    OP_TRUNCATE: _truncate,
    OP_DELETE: _delete,
    OP_SETXATTR: _setxattr,
    OP_APPENDXATTR: _appendxattr,
    OP_RMXATTR: _rmxattr,
}


def prepare(oid: str, obj: ObjMeta | None, txn: Transaction, *, block_size: int,
         max_object_size: int, direct_write_min: int) -> Plan:
    """Check ``txn`` on object ``oid`` (metadata ``obj``, None if absent) and work out its
    effective ops; StoreError if any check fails. ``oid`` passed ``check_key``. Whether
    its write goes the direct way: a single data op writing whole blocks, at least
    ``direct_write_min`` bytes, all holes."""
    if len(txn.ops) > MAX_OPS:
        raise StoreError(errno.EINVAL, "too many ops in one transaction")
    s = _Sim(oid, obj, block_size, max_object_size, direct_write_min)
    mutates = False
    for op in txn.ops:
        check = _CHECKS.get(op[0])
        if check is None:
            raise StoreError(errno.EINVAL, f"unknown op {op[0]}")
        if op[0] not in _GUARDS:
            mutates = True
        check(s, op)
    ops = s.ops
    direct = False
    if direct_write_min and s.big:
        data_ops = [i for i, o in enumerate(ops)
                    if o[0] in (OP_WRITE, OP_ZERO, OP_TRUNCATE, OP_DELETE)]
        if len(data_ops) == 1 and ops[data_ops[0]][0] == OP_WRITE:
            _, off, segs, n = ops[data_ops[0]]
            bs = block_size
            b0, b1 = off // bs, (off + n) // bs - 1
            if (n >= direct_write_min and not off % bs and not n % bs and
                    (obj is None or b0 >= len(obj.alloc) or not obj.alloc[b0:b1 + 1].any())):
                ops[data_ops[0]] = (OP_WRITE_DIRECT, off, segs, n)
                direct = True
    return Plan(ops, mutates, sorted(s.edges), s.prealloc, direct)
