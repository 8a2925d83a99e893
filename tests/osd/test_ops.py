"""The OSD op encoder/decoder: round trips at any segmentation, zero copy both ways, in-place
landing of read replies, and every malformed input answered by a typed error."""

from __future__ import annotations

import dataclasses
import errno
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain, Pages, byte_views
from rbdpy.proto import ops as O
from rbdpy.proto import osdmsg as M

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MORE = settings(SETTINGS, max_examples=250)
U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
NAME = st.text(max_size=16)
BLOB = st.binary(max_size=300)
DECODE_ERRNOS = {errno.EBADMSG, errno.EINVAL, errno.ENAMETOOLONG, errno.EOPNOTSUPP}
CLIENT = EntityName(1, 4123)
HEAD = dict(client=CLIENT, incarnation=7, epoch=3, pool=2, flags=O.FLAG_WRITE, attempt=5)


@st.composite
def payload(draw: st.DrawFn) -> object:
    """Write data in every shape a caller may hand over."""
    kind = draw(st.sampled_from(["bytes", "bytearray", "list", "bytes list", "numpy"]))
    if kind in ("list", "bytes list"):  # already segmented
        segs = draw(st.lists(st.binary(max_size=700), max_size=4))
        return [bytearray(b) for b in segs] if kind == "list" else segs
    raw = draw(st.binary(max_size=3000))
    if kind == "numpy":
        return np.frombuffer(bytearray(raw), np.uint8)
    return bytearray(raw) if kind == "bytearray" else raw


@st.composite
def cmpxattr(draw: st.DrawFn) -> O.CmpXattr:
    mode = draw(st.sampled_from([O.CMP_STRING, O.CMP_U64]))
    value = draw(U64) if mode == O.CMP_U64 else draw(BLOB)
    return O.CmpXattr(draw(NAME), draw(st.integers(O.CMP_EQ, O.CMP_LTE)), mode, value)


OP = st.one_of(
    st.builds(O.Read, U64, U64),
    st.builds(O.SparseRead, U64, U64),
    st.builds(O.Write, U64, payload()),
    st.builds(O.WriteFull, payload()),
    st.builds(O.Zero, U64, U64),
    st.builds(O.Truncate, U64),
    st.builds(O.Delete),
    st.builds(O.Create, st.booleans()),
    st.builds(O.Stat),
    st.builds(O.GetXattr, NAME),
    st.builds(O.SetXattr, NAME, BLOB),
    st.builds(O.RmXattr, NAME),
    st.builds(O.GetXattrs),
    cmpxattr(),
    st.builds(O.Call, NAME, NAME, BLOB),
    st.builds(O.ListObjects, NAME, U32),
    st.builds(O.AssertVersion, U64),
    st.builds(O.AssertExists),
    st.builds(O.Blocklist, U64, U64),
)


def norm(op: O.Op) -> tuple:
    """An op as plain comparable values, payloads joined."""
    vals = []
    for f in dataclasses.fields(op):
        v = getattr(op, f.name)
        if f.name == "data":
            v = b"".join(bytes(s) for s in byte_views(v))
        elif isinstance(v, bytearray | memoryview):
            v = bytes(v)
        vals.append((f.name, v))
    return type(op).__name__, tuple(vals)


def rechunk(msg: Message, sizes: list[int], cuts: list[int] | None = None
            ) -> tuple[list[memoryview], Message]:
    """What a receiver holds: the wire's data section (bulk then trail) split at arbitrary
    boundaries into separate buffers (chunks of ``sizes``, cycled) or, given ``cuts``, one
    received buffer handed over as views cut there; in a BioChain, with no trail."""
    wire = b"".join(msg.data_segments())
    chunks: list[memoryview] = []
    if cuts is not None:
        whole = memoryview(bytearray(wire))
        bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
        chunks = [whole[a:b] for a, b in zip(bounds, bounds[1:])]
    pos, i = 0, 0
    while cuts is None and pos < len(wire):
        n = sizes[i % len(sizes)] if sizes else len(wire)
        chunks.append(memoryview(bytearray(wire[pos : pos + n])))
        pos += n
        i += 1
    rx = Message(type=msg.type, tid=msg.tid, front=bytes(msg.front),
                 data=BioChain(chunks) if chunks else None)
    return chunks, rx


def in_chunks(v: memoryview, chunks: list[memoryview]) -> bool:
    """``v`` is a view of a received buffer (never a copy)."""
    return any(v.obj is c.obj for c in chunks) and (not len(v) or np.shares_memory(
        np.frombuffer(v, np.uint8), np.frombuffer(v.obj, np.uint8)))


def shows_changes(v: memoryview) -> bool:
    """A change to the received byte under ``v[0]`` shows through ``v`` (restored after)."""
    base = np.frombuffer(v.obj, np.uint8)
    off = np.frombuffer(v, np.uint8).ctypes.data - base.ctypes.data
    orig = v[0]
    v.obj[off] ^= 0xFF
    seen = v[0] == orig ^ 0xFF
    v.obj[off] ^= 0xFF
    return seen


SIZES = st.lists(st.integers(1, 97), max_size=6)
CUTS = st.none() | st.lists(st.integers(0, 10**6), max_size=12)  # None: separate buffers
CLIENTS = st.builds(EntityName, st.integers(0, 255), U64)
REQ = st.fixed_dictionaries({
    "tid": U64,
    "client": CLIENTS,
    "incarnation": U64,
    "epoch": U32,
    "pool": U64,
    "flags": U32,
    "oid": st.text(max_size=40),
    "snapc": st.none() | st.tuples(U64, st.lists(U64, max_size=5)),
    "snapid": U64,
    "attempt": U32,
})


def request(ops: list[O.Op], tid: int = 11, **kw: object) -> Message:
    args = {**HEAD, "oid": "rbd_data.1.0", "snapc": (4, [4, 2]), **kw}
    return M.encode_request(ops, tid=tid, **args)  # type: ignore[arg-type]


def first_op_at(oid: str = "rbd_data.1.0", nsnaps: int = 2) -> int:
    """Front offset of the first op's opcode (after head, name, snap context, n_ops)."""
    return O._REQ_HEAD.size + 4 + len(oid.encode()) + 8 + 4 + 8 * nsnaps + 2


def expect(exc_type: type[O.OpDecodeError], err: int, msg: Message) -> O.OpDecodeError:
    with pytest.raises(exc_type) as ei:
        M.decode_request(msg)
    assert ei.value.errno == err, ei.value
    assert ei.value.tid == msg.tid
    return ei.value


def patched(msg: Message, at: int, fmt: str, value: int) -> Message:
    front = bytearray(msg.front)
    struct.pack_into(fmt, front, at, value)
    return Message(type=msg.type, tid=msg.tid, front=bytes(front), data=msg.data,
                   trail=msg.trail)


# ---- requests: round trips --------------------------------------------------------------------


@MORE
@given(ops=st.lists(OP, max_size=O.MAX_OPS), kw=REQ, sizes=SIZES, cuts=CUTS)
def test_request_round_trips_at_any_segmentation(ops: list[O.Op], kw: dict, sizes: list[int],
                                                 cuts: list[int] | None) -> None:
    msg = M.encode_request(ops, **kw)
    assert msg.type == O.MSG_OSD_OP and msg.tid == kw["tid"]
    chunks, rx = rechunk(msg, sizes, cuts)
    req = M.decode_request(rx)
    for k in ("tid", "client", "incarnation", "epoch", "pool", "flags", "oid", "snapid",
              "attempt"):
        assert getattr(req, k) == kw[k], k
    snapc = kw["snapc"]
    assert (req.snapc or (0, [])) == ((snapc[0], list(snapc[1])) if snapc else (0, []))
    client = kw["client"]
    assert req.reqid == (client.type, client.num, kw["incarnation"], kw["tid"])
    assert [norm(o) for o in req.ops] == [norm(o) for o in ops]
    assert req.is_write == any(o.MUTATES for o in ops)
    for op in req.ops:  # decoded payloads are views of the received buffers
        if isinstance(op, O.Write | O.WriteFull):
            assert all(isinstance(v, memoryview) and in_chunks(v, chunks) for v in op.data)
    first = next((v for op in req.ops if isinstance(op, O.Write | O.WriteFull)
                  for v in op.data if len(v)), None)
    assert first is None or shows_changes(first)  # a change to the received bytes shows


def test_request_received_into_pages() -> None:
    """The OSD's messenger may land the data section in fresh pages at an offset."""
    body = random.Random(3).randbytes(10000)
    ops = [O.Write(4096, body), O.SetXattr("k", b"v" * 5000), O.WriteFull(body[:3])]
    msg = request(ops)
    wire = msg.data_bytes()
    pages = Pages.alloc(len(wire), offset=100)
    pos = 0
    for seg in pages.segments():
        seg[:] = wire[pos : pos + len(seg)]
        pos += len(seg)
    req = M.decode_request(Message(type=O.MSG_OSD_OP, tid=11, front=msg.front, data=pages))
    assert [norm(o) for o in req.ops] == [norm(o) for o in ops]
    assert all(any(v.obj is p.obj for p in pages.pages) for v in req.ops[0].data)


def test_layout_is_bulk_then_trail() -> None:
    buf = bytearray(b"W" * 300)
    msg = request([O.SetXattr("name", b"value"), O.Write(0, buf), O.Call("rbd", "m", b"in"),
                   O.WriteFull(b"F" * 7), O.GetXattr("x")])
    assert msg.data.length == 307 and msg.trail.tobytes() == b"namevaluerbdminx"
    assert msg.data_bytes() == b"W" * 300 + b"F" * 7 + b"namevaluerbdminx"


# ---- zero copy --------------------------------------------------------------------------------


def test_write_payloads_are_views_of_the_callers_buffers() -> None:
    buf = bytearray(random.Random(1).randbytes(20000))
    arr = np.arange(5000, dtype=np.uint32)  # not bytes-shaped: viewed as bytes, not copied
    mv = memoryview(buf)
    msg = request([O.Write(0, buf), O.Write(8, [mv[10:20], mv[100:9000]]),
                   O.WriteFull(arr), O.SetXattr("a", b"b"), O.Write(7, mv[100:5100]),
                   O.WriteFull([mv[0:10], mv[19000:]])])
    segs = msg.data.segments()
    assert isinstance(msg.data, BioChain) and [len(s) for s in segs] == [
        20000, 10, 8900, 20000, 5000, 10, 1000]
    assert all(segs[i].obj is buf for i in (0, 1, 2, 4, 5, 6))
    assert np.shares_memory(np.frombuffer(segs[3], np.uint8), arr)
    buf[150] ^= 0xFF  # a change in the caller's buffer is what goes on the wire
    buf[19999] ^= 0xFF
    arr[0] = 0xDEADBEEF
    assert segs[2][50] == buf[150] and bytes(segs[3][:4]) == struct.pack("<I", 0xDEADBEEF)
    assert segs[4][50] == buf[150] and segs[6][-1] == buf[19999]
    # the small trail (xattr name and value) follows the bulk data
    assert msg.trail is not None and msg.trail.tobytes() == b"ab"
    assert msg.data_len == 20000 + 10 + 8900 + 20000 + 5000 + 10 + 1000 + 2


@SETTINGS
@given(body=st.binary(min_size=1, max_size=3000), sizes=SIZES)
def test_decoded_payloads_are_views_of_the_received_data(body: bytes, sizes: list[int]
                                                          ) -> None:
    msg = request([O.SetXattr("k", b"v"), O.Write(5, body), O.WriteFull(body)])
    chunks, rx = rechunk(msg, sizes)
    req = M.decode_request(rx)
    for op in req.ops[1:]:
        assert b"".join(op.data) == body and all(in_chunks(v, chunks) for v in op.data)
    # flip the first received byte: the decoded write shows it (it was never copied)
    v = req.ops[1].data[0]
    before = v[0]
    chunks[0][0] ^= 0x5A
    assert v[0] == before ^ 0x5A


@SETTINGS
@given(parts=st.lists(st.binary(max_size=50), max_size=8), data=st.data())
def test_slice_segments(parts: list[bytes], data: st.DataObject) -> None:
    segs = [memoryview(bytearray(p)) for p in parts]
    whole = b"".join(parts)
    off = data.draw(st.integers(0, len(whole)))
    n = data.draw(st.integers(0, len(whole) - off))
    got = O.slice_segments(segs, off, n)
    assert b"".join(got) == whole[off : off + n]
    assert all(len(v) and any(v.obj is s.obj for s in segs) for v in got)
    with pytest.raises(O.OpDecodeError):
        O.slice_segments(segs, off, len(whole) - off + 1)
    with pytest.raises(ValueError):
        O.slice_segments(segs, -1, 1)


# ---- replies ----------------------------------------------------------------------------------


@st.composite
def sparse_out(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[bytes]]:
    data = draw(st.lists(st.binary(min_size=1, max_size=500), max_size=4))
    if draw(st.booleans()):  # any offsets, in any order
        offs = draw(st.lists(U64, min_size=len(data), max_size=len(data)))
    else:
        offs = [i * 1000 for i in range(len(data))]
    return [(o, len(d)) for o, d in zip(offs, data)], data


OUTPUTS = {
    O.Read: st.binary(max_size=3000) | st.lists(st.binary(max_size=2000), max_size=3),
    O.SparseRead: sparse_out(),
    O.Stat: st.builds(O.StatResult, U64, st.floats(allow_nan=False), U64),
    O.GetXattr: BLOB,
    O.GetXattrs: st.dictionaries(NAME, BLOB, max_size=5),
    O.Call: BLOB,
    O.ListObjects: st.tuples(st.lists(NAME, max_size=5), st.none() | NAME),
}


@st.composite
def op_results(draw: st.DrawFn) -> list[tuple[O.Op, int, object]]:
    out = []
    for op in draw(st.lists(OP, max_size=20)):
        if draw(st.integers(0, 5)) == 0:
            out.append((op, -draw(st.integers(1, 200)), None))
        else:
            strat = OUTPUTS.get(type(op))
            out.append((op, 0, draw(strat) if strat is not None else None))
    return out


def plain(op: O.Op, out: object) -> object:
    if isinstance(op, O.Read):
        return b"".join(bytes(s) for s in byte_views(out))
    if isinstance(op, O.SparseRead):
        return [tuple(e) for e in out[0]], b"".join(bytes(s) for s in byte_views(out[1]))
    if isinstance(op, O.ListObjects):
        return list(out[0]), out[1]
    return out


@MORE
@given(res=op_results(), tid=U64, result=st.integers(-2**31, 2**31 - 1), version=U64,
       flags=st.sampled_from([O.FLAG_ACK, O.FLAG_COMMIT, O.FLAG_ACK | O.FLAG_COMMIT]) | U32,
       epoch=U32, attempt=U32, sizes=SIZES, cuts=CUTS, with_results=st.booleans())
def test_reply_round_trips_at_any_segmentation(res: list, tid: int, result: int,
                                               version: int, flags: int, epoch: int,
                                               attempt: int, sizes: list[int],
                                               cuts: list[int] | None,
                                               with_results: bool) -> None:
    ops = [op for op, _r, _o in res]
    msg = M.encode_reply(tid=tid, result=result, version=version, flags=flags, epoch=epoch,
                         attempt=attempt, op_results=res if with_results else [])
    assert msg.type == O.MSG_OSD_OPREPLY and msg.trail is None
    chunks, rx = rechunk(msg, sizes, cuts)
    rep = M.decode_reply(rx, ops)
    assert (rep.tid, rep.result, rep.version, rep.flags, rep.epoch, rep.attempt) == (
        tid, result, version, flags, epoch, attempt)
    if not with_results:  # e.g. a commit or an error reply
        assert rep.results == []
        return
    assert len(rep.results) == len(ops)
    for (op, r, out), got in zip(res, rep.results, strict=True):
        assert got.result == r
        if r < 0 or not op.HAS_OUTPUT:
            assert got.out is None
            continue
        assert plain(op, got.out) == plain(op, out)
        if isinstance(op, O.Read):
            assert all(in_chunks(v, chunks) for v in got.out)
        elif isinstance(op, O.SparseRead):
            assert isinstance(got.out, O.SparseReadResult)
            assert all(in_chunks(v, chunks) for v in got.out.data)
        elif isinstance(op, O.ListObjects):
            assert isinstance(got.out, O.ListResult) and got.out.next == out[1]
        elif isinstance(op, O.Stat):
            assert isinstance(got.out, O.StatResult)


def test_a_commit_after_an_ack_and_an_error_carry_no_results() -> None:
    """(A commit the client asked for without an ack carries them: see test_daemon.)"""
    ops = [O.Write(0, b"x"), O.Stat()]
    rep = M.decode_reply(M.encode_reply(tid=3, result=0, version=9, flags=O.FLAG_COMMIT,
                                        epoch=1, attempt=0, op_results=[]), ops)
    assert rep.results == [] and rep.flags == O.FLAG_COMMIT and rep.version == 9
    rep = M.decode_reply(M.error_reply(3, errno.ENOENT, epoch=5, attempt=2), ops)
    assert (rep.result, rep.flags, rep.epoch, rep.attempt) == (
        -errno.ENOENT, O.FLAG_ACK | O.FLAG_COMMIT, 5, 2)


def test_failed_ops_outputs_are_dropped_and_empty_values_kept() -> None:
    ops = [O.Read(0, 10), O.GetXattr("k"), O.Call("c", "m", b""), O.Stat(), O.Read(0, 0),
           O.Write(0, b"x")]
    msg = M.encode_reply(tid=1, result=-errno.ENOENT, version=0, flags=O.FLAG_ACK, epoch=1,
                         attempt=0, op_results=[(ops[0], -errno.ENOENT, b"junk"),
                                                (ops[1], 0, b""), (ops[2], 0, b""),
                                                (ops[3], -errno.ENOENT, None),
                                                (ops[4], 0, b""), (ops[5], 0, None)])
    assert msg.data is None
    assert [r.out for r in M.decode_reply(msg, ops).results] == [None, b"", b"", None, [],
                                                                 None]


# ---- reads landing in the reader's buffer -----------------------------------------------------


def receive_into(msg: Message, offered: list[memoryview] | None) -> Message:
    """The messenger's receive: land the data section in the offered segments when they
    are big enough (alloc_data), else in one fresh buffer."""
    wire = msg.data_bytes()
    n = len(wire)
    if offered is None or sum(len(s) for s in offered) < n:
        offered = [memoryview(bytearray(n))]
    segs, left = [], n
    for s in offered:
        if not left:
            break
        segs.append(s[: min(len(s), left)])
        left -= len(segs[-1])
    pos = 0
    for s in segs:  # recv_into, segment by segment
        s[:] = wire[pos : pos + len(s)]
        pos += len(s)
    return Message(type=msg.type, tid=msg.tid, front=bytes(msg.front),
                   data=BioChain(segs) if segs else None)


@pytest.mark.parametrize("got_len", [9000, 4000, 0])  # full, short at EOF, nothing
def test_a_single_read_lands_in_the_readers_buffer(got_len: int) -> None:
    reader = bytearray(12000)
    dests = [memoryview(reader)[10:5000], memoryview(reader)[6000:10010]]  # 9000 bytes
    ops = [O.Read(123, 9000)]
    assert M.bulk_layout(ops) == [9000]
    data = random.Random(got_len).randbytes(got_len)
    reply = M.encode_reply(tid=8, result=0, version=1, flags=O.FLAG_ACK, epoch=1, attempt=0,
                           op_results=[(ops[0], 0, data)])
    offered = M.landing_segments(ops, [dests], reply.data_len)
    if not got_len:
        assert offered is None and reply.data is None
        return
    assert sum(len(s) for s in offered) == got_len and all(s.obj is reader for s in offered)
    rep = M.decode_reply(receive_into(reply, offered), ops)
    out = rep.results[0].out
    assert b"".join(out) == data and all(v.obj is reader for v in out)
    assert bytes(reader[10 : 10 + min(got_len, 4990)]) == data[:4990]


def test_landing_segments_for_vectors() -> None:
    a, b = bytearray(100), bytearray(50)
    ma, mb = memoryview(a), memoryview(b)
    ops = [O.Stat(), O.Read(0, 60), O.GetXattr("k"), O.Read(0, 50), O.SparseRead(0, 10)]
    assert M.bulk_layout(ops) == [0, 60, 0, 50, 10]
    dests = [None, [ma], None, [mb[:20], mb[20:]], None]
    # bytes land in place when the first read is full, and are still right when it is short
    for first in (b"1" * 60, b"1" * 7):
        reply = M.encode_reply(tid=1, result=0, version=1, flags=O.FLAG_ACK, epoch=1,
                               attempt=0, op_results=[(ops[0], 0, O.StatResult(1, 2.0, 3)),
                                                      (ops[1], 0, first),
                                                      (ops[2], 0, b"v"),
                                                      (ops[3], 0, b"2" * 50),
                                                      (ops[4], 0, ([(0, 2)], b"ss"))])
        segs = M.landing_segments(ops, dests, reply.data_len)
        assert sum(len(s) for s in segs) == reply.data_len
        assert [s.obj for s in segs[:-1]] == [a, b, b][: len(segs) - 1]
        rep = M.decode_reply(receive_into(reply, segs), ops)
        outs = [r.out for r in rep.results]
        assert b"".join(outs[1]) == first and b"".join(outs[3]) == b"2" * 50
        assert outs[4] == ([(0, 2)], [b"ss"]) and outs[2] == b"v"
        assert all(v.obj is a for v in outs[1])
        assert all(v.obj is b for v in outs[3]) == (len(first) == 60)
    # nothing placeable: a sparse read first, no destinations
    assert M.landing_segments([O.SparseRead(0, 5), O.Read(0, 5)], [None, [mb]], 9) is None
    assert M.landing_segments(ops, [None] * 5, 100) is None
    # a too small first destination: placed as far as it goes, the rest in scratch
    segs = M.landing_segments([O.Read(0, 200), O.Read(0, 5)], [[ma], [mb]], 205)
    assert [len(s) for s in segs] == [100, 105] and segs[0].obj is a


# ---- malformed requests -----------------------------------------------------------------------


def test_every_truncation_of_a_request_front() -> None:
    msg = request([O.SetXattr("k", b"v"), O.Write(3, b"abc"), O.Stat()], tid=5)
    header_end = first_op_at() - 2
    for cut in range(len(msg.front)):
        bad = Message(type=O.MSG_OSD_OP, tid=5, front=msg.front[:cut], data=msg.data,
                      trail=msg.trail)
        e = expect(O.OpDecodeError, errno.EBADMSG, bad)
        # once the header was readable the error carries it, to answer with its attempt
        assert (e.request is not None) == (cut >= header_end)
        if e.request is not None:
            assert (e.request.attempt, e.request.oid, e.request.ops) == (5, "rbd_data.1.0", [])


def test_data_section_length_must_match_the_ops() -> None:
    msg = request([O.Write(0, b"abc"), O.SetXattr("k", b"v")])
    wire = msg.data_bytes()
    for bad in (wire[:-1], wire + b"!", b""):
        e = expect(O.OpDecodeError, errno.EBADMSG, Message(
            type=O.MSG_OSD_OP, tid=11, front=msg.front,
            data=BioChain([bad]) if bad else None))
        assert e.request is not None and e.request.attempt == 5
    # a write length pointing 4 GiB past the data section
    at = first_op_at() + 4 + 8
    expect(O.OpDecodeError, errno.EBADMSG, patched(msg, at, "<I", 2**32 - 1))


UNKNOWN_OPCODES = st.integers(0, 0xFFFF).filter(lambda c: c not in O.registered_ops())
TWO_OPS = [O.Stat(), O.Write(0, b"x")]


@MORE
@given(opcode=UNKNOWN_OPCODES, tid=U64, oid=st.text(max_size=20),
       snaps=st.lists(U64, max_size=3), ops=st.lists(OP, min_size=1, max_size=5))
@example(opcode=0, tid=99, oid="rbd_data.1.0", snaps=[4, 2], ops=TWO_OPS)
@example(opcode=500, tid=99, oid="rbd_data.1.0", snaps=[4, 2], ops=TWO_OPS)
@example(opcode=O.OP_ROLLBACK, tid=99, oid="rbd_data.1.0", snaps=[4, 2], ops=TWO_OPS)
@example(opcode=O.OP_LIST_SNAPS, tid=99, oid="rbd_data.1.0", snaps=[4, 2], ops=TWO_OPS)
def test_unknown_and_reserved_opcodes_are_eopnotsupp_with_tid_and_attempt(
        opcode: int, tid: int, oid: str, snaps: list[int], ops: list[O.Op]) -> None:
    msg = request(ops, tid=tid, oid=oid, snapc=(4, snaps))
    at = first_op_at(oid, len(snaps))
    assert struct.unpack_from("<H", msg.front, at)[0] == ops[0].OPCODE
    e = expect(O.UnknownOpError, errno.EOPNOTSUPP, patched(msg, at, "<H", opcode))
    assert e.opcode == opcode and isinstance(e, O.OpDecodeError)
    assert e.request is not None and e.request.attempt == 5
    if opcode == O.OP_ROLLBACK:
        assert "rollback" in str(e)
    # the daemon answers with that errno, the tid and the attempt
    rep = M.decode_reply(M.decode_error_reply(msg, e, epoch=6), ops)
    assert (rep.tid, rep.result, rep.attempt, rep.epoch) == (tid, -errno.EOPNOTSUPP, 5, 6)


def test_header_limits() -> None:
    msg = request([O.Stat()], tid=1)
    expect(O.OpDecodeError, errno.EINVAL, patched(msg, first_op_at() - 2, "<H", O.MAX_OPS + 1))
    expect(O.OpDecodeError, errno.EINVAL, request([O.Stat()], oid="o" * (O.MAX_OID + 1)))
    expect(O.OpDecodeError, errno.EINVAL,
           patched(msg, O._REQ_HEAD.size, "<I", 2**32 - 1))  # 4 GiB name: no allocation
    expect(O.OpDecodeError, errno.EINVAL,
           patched(msg, O._REQ_HEAD.size + 4 + 12 + 8, "<I", O.MAX_SNAPS + 1))
    bad_utf8 = bytearray(request([O.Stat()], oid="ab").front)
    bad_utf8[O._REQ_HEAD.size + 4] = 0xFF
    expect(O.OpDecodeError, errno.EINVAL,
           Message(type=O.MSG_OSD_OP, tid=1, front=bytes(bad_utf8)))
    expect(O.OpDecodeError, errno.EBADMSG,
           Message(type=O.MSG_OSD_OP, tid=1, front=msg.front + b"\0"))  # trailing garbage


def test_argument_limits_and_values() -> None:
    expect(O.OpDecodeError, errno.ENAMETOOLONG, request([O.GetXattr("n" * (O.MAX_NAME + 1))]))
    expect(O.OpDecodeError, errno.ENAMETOOLONG, request([O.SetXattr("n" * 5000, b"")]))
    expect(O.OpDecodeError, errno.ENAMETOOLONG,
           request([O.SetXattr("n" * (O.MAX_NAME + 1), b"")]))
    expect(O.OpDecodeError, errno.ENAMETOOLONG, request([O.Call("c" * 256, "m", b"")]))
    expect(O.OpDecodeError, errno.ENAMETOOLONG, request([O.Call("c", "m" * 256, b"")]))
    expect(O.OpDecodeError, errno.EINVAL, request([O.ListObjects("x" * (O.MAX_OID + 1))]))
    at = first_op_at()
    op_head = 4  # opcode, op flags
    expect(O.OpDecodeError, errno.EINVAL, patched(request([O.Stat()]), at + 2, "<H", 1))
    expect(O.OpDecodeError, errno.EINVAL,
           patched(request([O.Create(True)]), at + op_head, "<B", 2))
    cmp = request([O.CmpXattr("k", O.CMP_EQ, O.CMP_STRING, b"v")])
    expect(O.OpDecodeError, errno.EINVAL, patched(cmp, at + op_head, "<B", 7))
    expect(O.OpDecodeError, errno.EINVAL, patched(cmp, at + op_head + 1, "<B", 3))
    expect(O.OpDecodeError, errno.EINVAL, patched(cmp, at + op_head + 1, "<B", O.CMP_U64))
    bad_name = request([O.RmXattr("é")])
    wire = bytearray(bad_name.data_bytes())
    wire[0] = 0xFF
    expect(O.OpDecodeError, errno.EINVAL, Message(type=O.MSG_OSD_OP, tid=11,
                                                  front=bad_name.front,
                                                  data=BioChain([wire])))


def test_op_framing_must_fit_the_op() -> None:
    at = first_op_at()
    # a stat claiming bulk data, a write claiming a trail item, a getxattr without its name
    stat = request([O.Stat(), O.Write(0, b"abc")])
    expect(O.OpDecodeError, errno.EBADMSG, patched(stat, at + 4, "<I", 1))
    write = request([O.Write(0, b"abc")])
    expect(O.OpDecodeError, errno.EBADMSG, patched(write, at + 4 + 8 + 4, "<B", 1))
    get = request([O.GetXattr("k")])
    expect(O.OpDecodeError, errno.EBADMSG, patched(get, at + 4 + 4, "<B", 0))


def test_encoder_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError):
        request([O.Stat()] * (O.MAX_OPS + 1))
    with pytest.raises(ValueError):
        request([O.Read(-1, 5)])
    with pytest.raises(ValueError):
        request([O.CmpXattr("k", 9, O.CMP_STRING, b"")])
    with pytest.raises(ValueError):
        request([O.CmpXattr("k", O.CMP_EQ, O.CMP_U64, b"not an int")])

    @dataclasses.dataclass
    class Rogue(O.Stat):
        """Not registered."""

    with pytest.raises(ValueError):
        request([Rogue()])


# ---- malformed replies ------------------------------------------------------------------------


def reply_front(ops_out: list[tuple[int, int, bytes]], nops: int | None = None) -> bytes:
    front = O._REP_HEAD.pack(0, 1, O.FLAG_ACK, 1, 0, len(ops_out) if nops is None else nops)
    for res, bulk_len, inline in ops_out:
        front += O._OP_RESULT.pack(res, bulk_len, len(inline)) + inline
    return front


def bad_reply(ops: list[O.Op], front: bytes, data: bytes = b"") -> O.OpDecodeError:
    msg = Message(type=O.MSG_OSD_OPREPLY, tid=31, front=front,
                  data=BioChain([data]) if data else None)
    with pytest.raises(O.OpDecodeError) as ei:
        M.decode_reply(msg, ops)
    assert ei.value.tid == 31 and ei.value.errno == errno.EBADMSG
    return ei.value


def test_malformed_replies() -> None:
    read, stat, w = O.Read(0, 10), O.Stat(), O.Write(0, b"")
    bad_reply([read, stat], reply_front([(0, 0, b"")]))  # 1 result for 2 ops
    bad_reply([read], reply_front([(0, 5, b"")]), b"abcd")  # data short
    bad_reply([read], reply_front([(0, 3, b"")]), b"abcd")  # data long
    bad_reply([read], reply_front([], nops=0), b"x")  # data nobody explains
    bad_reply([read], reply_front([(-5, 2, b"")]), b"ab")  # output of a failed op
    bad_reply([w], reply_front([(0, 0, b"x")]))  # output of an op without one
    bad_reply([stat], reply_front([(0, 2, O._STAT.pack(1, 2.0, 3))]), b"ab")  # bulk stat
    bad_reply([read], reply_front([(0, 1, b"i")]), b"a")  # inline read output
    bad_reply([stat], reply_front([(0, 0, b"short")]))
    sparse = O.SparseRead(0, 10)
    bad_reply([sparse], reply_front([(0, 2, struct.pack("<IQQ", 2, 0, 2))]), b"ab")
    bad_reply([sparse], reply_front([(0, 3, struct.pack("<IQQ", 1, 0, 2))]), b"abc")
    dup = struct.pack("<I", 2) + (struct.pack("<I", 1) + b"k" + struct.pack("<I", 0)) * 2
    bad_reply([O.GetXattrs()], reply_front([(0, 0, dup)]))
    bad_reply([O.GetXattrs()], reply_front([(0, 0, struct.pack("<II", 1, 1) + b"\xff"
                                            + struct.pack("<I", 0))]))
    nonext = struct.pack("<IBI", 0, 0, 1) + b"x"  # "no next page" with a marker
    bad_reply([O.ListObjects()], reply_front([(0, 0, nonext)]))
    good = M.encode_reply(tid=31, result=0, version=1, flags=O.FLAG_ACK, epoch=1, attempt=0,
                          op_results=[(stat, 0, O.StatResult(1, 2.0, 3)), (read, 0, b"abc")])
    for cut in range(len(good.front)):
        bad_reply([stat, read], bytes(good.front[:cut]), b"abc")
    bad_reply([stat, read], bytes(good.front) + b"\0", b"abc")


# ---- fuzz: nothing but typed errors -----------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(front=st.binary(max_size=400), data=st.binary(max_size=200), tid=U64)
def test_random_requests_raise_only_typed_errors(front: bytes, data: bytes, tid: int) -> None:
    msg = Message(type=O.MSG_OSD_OP, tid=tid, front=front,
                  data=BioChain([data]) if data else None)
    try:
        M.decode_request(msg)
    except O.OpDecodeError as e:
        assert e.errno in DECODE_ERRNOS and e.tid == tid


def typed_error(front: bytes, wire: bytes, tid: int, sizes: list[int] | None = None
                ) -> O.OpDecodeError | None:
    """Decode a request; any failure must be a typed error carrying the tid."""
    _, rx = rechunk(Message(type=O.MSG_OSD_OP, tid=tid, front=front,
                            data=BioChain([wire]) if wire else None), sizes or [])
    try:
        M.decode_request(rx)
    except O.OpDecodeError as e:
        assert e.errno in DECODE_ERRNOS and e.tid == tid, e
        return e
    return None


@MORE
@given(ops=st.lists(OP, min_size=1, max_size=8), kw=REQ, data=st.data())
def test_mutated_requests_raise_only_typed_errors(ops: list[O.Op], kw: dict,
                                                  data: st.DataObject) -> None:
    msg = M.encode_request(ops, **kw)
    tid, wire = kw["tid"], msg.data_bytes()
    # any strict prefix of a front is truncated; a data section one byte short or long too
    cut = data.draw(st.integers(0, len(msg.front) - 1))
    assert typed_error(bytes(msg.front[:cut]), wire, tid) is not None
    if wire:
        for bad in (wire[:-1], wire + b"\0"):
            assert typed_error(bytes(msg.front), bad, tid) is not None
    front = bytearray(msg.front)
    for _ in range(data.draw(st.integers(1, 4))):
        front[data.draw(st.integers(0, len(front) - 1))] ^= data.draw(st.integers(1, 255))
    if wire and data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(wire)))
        wire = wire[:cut] + data.draw(st.binary(max_size=8))
    typed_error(bytes(front), wire, tid, data.draw(SIZES))


@settings(max_examples=300, deadline=None)
@given(res=op_results(), data=st.data())
def test_random_and_mutated_replies_raise_only_typed_errors(res: list, data: st.DataObject
                                                            ) -> None:
    ops = [op for op, _r, _o in res]
    msg = M.encode_reply(tid=23, result=0, version=1, flags=O.FLAG_ACK, epoch=1, attempt=0,
                         op_results=res)
    front = bytearray(msg.front)
    wire = msg.data_bytes()
    if data.draw(st.booleans()):
        front = bytearray(data.draw(st.binary(max_size=300)))
        if data.draw(st.booleans()):  # and a random data section
            wire = data.draw(st.binary(max_size=200))
    elif front:
        for _ in range(data.draw(st.integers(1, 4))):
            front[data.draw(st.integers(0, len(front) - 1))] ^= data.draw(st.integers(1, 255))
    rx = Message(type=O.MSG_OSD_OPREPLY, tid=23, front=bytes(front),
                 data=BioChain([wire]) if wire else None)
    try:
        M.decode_reply(rx, ops)
    except O.OpDecodeError as e:
        assert e.errno == errno.EBADMSG and e.tid == 23


# ---- the registry -----------------------------------------------------------------------------


def test_registry() -> None:
    ops = O.registered_ops()
    names = {cls.NAME for cls in ops.values()}
    assert {"read", "sparse_read", "write", "writefull", "zero", "truncate", "delete",
            "create", "stat", "getxattr", "setxattr", "rmxattr", "getxattrs", "cmpxattr",
            "call", "list_objects", "assert_version", "blocklist_add"} <= names
    for code, cls in ops.items():
        assert code == cls.OPCODE and O.op_class(code) is cls
        assert cls.__doc__ and cls.__doc__ != O.Op.__doc__, cls
        assert not (cls.BULK_OUT and not cls.HAS_OUTPUT)
    assert not set(O.RESERVED_OPCODES) & set(ops)
    assert (O.MSG_OSD_OP, O.MSG_OSD_OPREPLY, O.NOSNAP) == (42, 43, 2**64 - 2)

    @dataclasses.dataclass
    class Twice(O.Op):
        """Collides with read."""

        OPCODE = 1

    @dataclasses.dataclass
    class Squatter(O.Op):
        """Takes the rollback opcode under another name."""

        OPCODE = O.OP_ROLLBACK
        NAME = "not_rollback"

    for cls in (Twice, Squatter):
        with pytest.raises(ValueError):
            O.register(cls)
    assert O.registered_ops() == ops


def _outcome(decode, msg: Message) -> tuple:
    try:
        req = decode(msg)
    except O.OpDecodeError as e:
        return ("error", e.errno, e.tid)
    return (req.tid, req.client, req.incarnation, req.epoch, req.pool, req.oid, req.flags,
            req.snapc, req.snapid, req.attempt, [norm(o) for o in req.ops])


@MORE
@given(op=OP, oid=st.text(max_size=40), seq=st.integers(0, 2),
       flags=st.sampled_from([0, O.FLAG_WRITE]), tid=U64, sizes=SIZES,
       flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3))
def test_one_op_fast_path_agrees_with_the_general_decoder(
        op: O.Op, oid: str, seq: int, flags: int, tid: int, sizes: list[int],
        flips: list) -> None:
    """Single-op requests without snap ids take a one-pass decoder: it must give exactly what
    the general one gives, for intact and for damaged fronts alike."""
    msg = M.encode_request([op], tid=tid, client=CLIENT, incarnation=9, epoch=3, pool=2,
                           oid=oid, flags=flags, snapc=(seq, []), attempt=1)
    _, rx = rechunk(msg, sizes)
    if not flips:
        assert M._decode_simple(rx) is not None or op.TRAIL_LIMITS
    front = bytearray(rx.front)
    for pos, val in flips:
        if pos < len(front):
            front[pos] = val
    rx.front = bytes(front)
    assert _outcome(M.decode_request, rx) == _outcome(M._decode_general, rx)
