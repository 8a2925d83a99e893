"""OSD request and reply messages: the framing around an op vector (see ``proto.ops``).

Encoders take op objects and give a ``Message`` whose data section is views of the caller's
buffers; decoders take a received ``Message`` and give op objects whose bulk data are views
of the received segments. Pure (sans-I/O), shared by the client and the OSD.
"""

from __future__ import annotations

import errno
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain, Pagelist, SegmentCursor, byte_view
from rbdpy.proto.ops import (
    _OP_HEAD,
    _OP_RESULT,
    _OP_TAIL,
    _OPS,
    _REP_HEAD,
    _REQ_HEAD,
    _U16,
    _U32,
    _U64,
    FLAG_ACK,
    FLAG_COMMIT,
    FLAG_WRITE,
    MAX_OID,
    MAX_OPS,
    MAX_SNAPS,
    MSG_OSD_OP,
    MSG_OSD_OPREPLY,
    NOSNAP,
    Op,
    OpDecodeError,
    Read,
    UnknownOpError,
    _Reader,
    _str,
    _take_bytes,
    _take_views,
    slice_segments,
)

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
                mv = byte_view(it)
                parts.append(_U32.pack(len(mv)))
                trail.append(mv)
    except struct.error as e:
        raise ValueError(f"field out of range: {e}") from None
    return Message(type=MSG_OSD_OP, tid=tid, front=b"".join(parts),
                   data=bio if bio.length else None, trail=trail if trail.length else None)


def _data_views(msg: Message) -> list[memoryview]:
    return [byte_view(s) for s in msg.data_segments()]


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
                mv = byte_view(seg)
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
