"""The op encoder/decoder (sans-I/O): round trips at any chunking, zero-copy, fuzzing."""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain
from rbdpy.osd import ops as O

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
NAME = st.text(max_size=12)
BLOB = st.binary(max_size=300)
SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cmpxattr(draw: st.DrawFn) -> O.CmpXattr:
    mode = draw(st.sampled_from([O.CMP_STRING, O.CMP_U64]))
    value = draw(U64) if mode == O.CMP_U64 else draw(BLOB)
    return O.CmpXattr(draw(NAME), draw(st.integers(1, 6)), mode, value)


@st.composite
def write_data(draw: st.DrawFn) -> bytes | list[bytes]:
    if draw(st.booleans()):
        return draw(st.binary(max_size=3000))
    return draw(st.lists(st.binary(max_size=700), max_size=4))  # already segmented


OP = st.one_of(
    st.builds(O.Read, U64, U64),
    st.builds(O.SparseRead, U64, U64),
    st.builds(O.Write, U64, write_data()),
    st.builds(O.WriteFull, write_data()),
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
)


def norm(op: O.Op) -> tuple:
    """An op as comparable plain values (write payloads joined)."""
    vals = []
    for k, v in vars(op).items():
        if k == "data":
            v = b"".join(bytes(s) for s in O._views(v))
        vals.append((k, v))
    return (type(op).__name__, tuple(vals))


def rechunk(segs: list[memoryview], cuts: list[int]) -> tuple[bytearray, BioChain]:
    """The data section as one received buffer, handed over as views cut at ``cuts``."""
    blob = bytearray(b"".join(segs))
    bounds = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    mv = memoryview(blob)
    return blob, BioChain([mv[a:b] for a, b in zip(bounds, bounds[1:])])


def received(msg: Message, cuts: list[int]) -> tuple[bytearray, Message]:
    blob, bio = rechunk(msg.data_segments(), cuts)
    return blob, Message(type=msg.type, tid=msg.tid, front=bytes(msg.front),
                         data=bio if bio.length else None, trail=None)


REQ = st.fixed_dictionaries({
    "tid": U64,
    "client": st.builds(EntityName, st.integers(0, 255), U64),
    "incarnation": U64,
    "epoch": U32,
    "pool": U64,
    "flags": U32,
    "oid": st.text(max_size=40),
    "snapc": st.none() | st.tuples(U64, st.lists(U64, max_size=5)),
    "snapid": U64,
    "attempt": U32,
})
CUTS = st.lists(st.integers(0, 10**6), max_size=12)


@SETTINGS
@given(ops=st.lists(OP, max_size=O.MAX_OPS), kw=REQ, cuts=CUTS)
def test_request_round_trip_at_any_chunking(ops: list[O.Op], kw: dict, cuts: list[int]
                                            ) -> None:
    msg = O.encode_request(ops, **kw)
    assert msg.type == O.MSG_OSD_OP and msg.tid == kw["tid"]
    blob, rx = received(msg, cuts)
    req = O.decode_request(rx)
    assert [norm(op) for op in req.ops] == [norm(op) for op in ops]
    for k in ("tid", "client", "incarnation", "epoch", "pool", "flags", "oid", "snapid",
              "attempt"):
        assert getattr(req, k) == kw[k], k
    want_snapc = kw["snapc"] or (0, [])
    assert (req.snapc or (0, [])) == (want_snapc[0], list(want_snapc[1]))
    assert req.is_write == any(op.MUTATES for op in ops)
    # decoded write payloads are views into the received buffer, never copies
    if blob:
        arr = np.frombuffer(blob, np.uint8)
        for op in req.ops:
            if isinstance(op, O.Write | O.WriteFull):
                for seg in op.data:
                    assert isinstance(seg, memoryview)
                    assert np.shares_memory(np.frombuffer(seg, np.uint8), arr)
        first = next((op for op in req.ops if isinstance(op, O.Write | O.WriteFull)
                      and any(len(s) for s in op.data)), None)
        if first is not None:  # a change to the received bytes shows through
            seg = next(s for s in first.data if len(s))
            off = np.frombuffer(seg, np.uint8).ctypes.data - arr.ctypes.data
            orig = seg[0]
            blob[off] ^= 0xFF
            assert seg[0] == orig ^ 0xFF


def test_write_payload_is_a_view_of_the_callers_buffer() -> None:
    buf = bytearray(b"a" * 10000)
    arr = np.frombuffer(buf, np.uint8)
    mv = memoryview(buf)
    msg = O.encode_request([O.Write(7, mv[100:5100]), O.SetXattr("k", b"v"),
                            O.WriteFull([mv[0:10], mv[9000:]])],
                           tid=1, client=EntityName(1, 1), incarnation=1, epoch=1, pool=1,
                           oid="o", flags=O.FLAG_WRITE)
    segs = msg.data.segments()
    assert [len(s) for s in segs] == [5000, 10, 1000]
    for s in segs:
        assert np.shares_memory(np.frombuffer(s, np.uint8), arr)
    buf[100] = ord("Z")
    buf[9999] = ord("Y")
    assert segs[0][0] == ord("Z") and segs[2][-1] == ord("Y")
    # the small trail (xattr name and value) follows the bulk data
    assert msg.trail is not None and msg.trail.tobytes() == b"kv"
    assert msg.data_len == 6012


OUTPUT = {
    O.Read: st.lists(st.binary(max_size=2000), max_size=3),
    O.GetXattr: st.binary(min_size=1, max_size=100),
    O.Call: st.binary(min_size=1, max_size=100),
    O.GetXattrs: st.dictionaries(NAME, BLOB, max_size=5),
    O.Stat: st.builds(O.StatResult, U64, st.floats(allow_nan=False), U64),
    O.ListObjects: st.tuples(st.lists(NAME, max_size=5), st.none() | NAME),
}


@st.composite
def sparse_output(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[bytes]]:
    data = draw(st.lists(st.binary(min_size=1, max_size=500), max_size=4))
    offs = draw(st.lists(U64, min_size=len(data), max_size=len(data)))
    return [(o, len(d)) for o, d in zip(offs, data)], data


@st.composite
def op_results(draw: st.DrawFn) -> list[tuple[O.Op, int, object]]:
    ops = draw(st.lists(OP, max_size=20))
    out = []
    for op in ops:
        if draw(st.integers(0, 4)) == 0:
            out.append((op, -draw(st.integers(1, 200)), None))
            continue
        strat = sparse_output() if isinstance(op, O.SparseRead) else OUTPUT.get(type(op))
        out.append((op, 0, draw(strat) if strat is not None else None))
    return out


def norm_out(op: O.Op, out: object) -> object:
    if isinstance(op, O.Read):
        return b"".join(bytes(s) for s in out or [])
    if isinstance(op, O.SparseRead):
        return [tuple(e) for e in out[0]], b"".join(bytes(s) for s in out[1])
    if isinstance(op, O.ListObjects):
        return tuple(out[0]), out[1]
    return out


@SETTINGS
@given(res=op_results(), head=st.tuples(st.integers(-2**31, 2**31 - 1), U64, U32, U32, U32),
       tid=U64, cuts=CUTS, with_results=st.booleans())
def test_reply_round_trip_at_any_chunking(res: list, head: tuple, tid: int, cuts: list[int],
                                          with_results: bool) -> None:
    result, version, flags, epoch, attempt = head
    ops = [op for op, _r, _o in res]
    msg = O.encode_reply(tid=tid, result=result, version=version, flags=flags, epoch=epoch,
                         attempt=attempt, op_results=res if with_results else [])
    blob, rx = received(msg, cuts)
    rep = O.decode_reply(rx, ops)
    assert (rep.tid, rep.result, rep.version, rep.flags, rep.epoch, rep.attempt) == (
        tid, result, version, flags, epoch, attempt)
    if not with_results:
        assert rep.results == []
        return
    assert len(rep.results) == len(ops)
    for (op, r, out), got in zip(res, rep.results):
        assert got.result == r
        if r < 0 or out is None:
            assert got.out in (None, []), (op, got)
        else:
            assert norm_out(op, got.out) == norm_out(op, out), op
    # read data in the reply are views into the received buffer (they land in place)
    arr = np.frombuffer(blob, np.uint8) if blob else None
    for op, got in zip(ops, rep.results):
        if isinstance(op, O.Read) and got.out and arr is not None:
            for seg in got.out:
                assert np.shares_memory(np.frombuffer(seg, np.uint8), arr)


def test_empty_xattr_and_call_output_decode_as_empty_bytes() -> None:
    ops = [O.GetXattr("k"), O.Call("c", "m", b""), O.Write(0, b"x")]
    msg = O.encode_reply(tid=5, result=0, version=1, flags=O.FLAG_ACK, epoch=1, attempt=0,
                         op_results=[(ops[0], 0, b""), (ops[1], 0, b""), (ops[2], 0, None)])
    rep = O.decode_reply(msg, ops)
    assert [r.out for r in rep.results] == [b"", b"", None]


# ---- fuzzing: malformed input raises OpDecodeError and nothing else --------------------------


def _decode_req(front: bytes, data: bytes, tid: int = 77) -> O.OSDRequest | None:
    msg = Message(type=O.MSG_OSD_OP, tid=tid, front=front,
                  data=BioChain([data]) if data else None)
    try:
        return O.decode_request(msg)
    except O.OpDecodeError as e:
        assert e.errno in (errno.EBADMSG, errno.EINVAL, errno.EOPNOTSUPP,
                           errno.ENAMETOOLONG), e
        assert e.tid == tid
        return None


@settings(max_examples=400, deadline=None)
@given(front=st.binary(max_size=400), data=st.binary(max_size=100))
def test_random_request_fronts_raise_only_op_decode_error(front: bytes, data: bytes) -> None:
    _decode_req(front, data)


@SETTINGS
@given(ops=st.lists(OP, min_size=1, max_size=8), kw=REQ, data=st.data())
def test_truncated_or_mutated_requests_raise_only_op_decode_error(
        ops: list[O.Op], kw: dict, data: st.DataObject) -> None:
    msg = O.encode_request(ops, **kw)
    front, body = bytes(msg.front), msg.data_bytes()
    cut = data.draw(st.integers(0, len(front) - 1))
    with pytest.raises(O.OpDecodeError):  # any strict prefix of a front is truncated
        O.decode_request(Message(type=O.MSG_OSD_OP, tid=kw["tid"], front=front[:cut],
                                 data=BioChain([body]) if body else None))
    if body:  # the data section one byte short or long
        for bad in (body[:-1], body + b"\0"):
            with pytest.raises(O.OpDecodeError):
                O.decode_request(Message(type=O.MSG_OSD_OP, tid=kw["tid"], front=front,
                                         data=BioChain([bad])))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(front) - 1),
                                          st.integers(1, 255)), min_size=1, max_size=4))
    mutated = bytearray(front)
    for i, x in flips:
        mutated[i] ^= x
    _decode_req(bytes(mutated), body, kw["tid"] % 2**64)


def _opcode_at(oid: str, nsnaps: int) -> int:
    return O._REQ_HEAD.size + 4 + len(oid.encode()) + 8 + 4 + 8 * nsnaps + 2


@SETTINGS
@given(opcode=st.integers(0, 0xFFFF), tid=U64, oid=st.text(max_size=20),
       snaps=st.lists(U64, max_size=3), ops=st.lists(OP, min_size=1, max_size=5))
def test_unknown_opcode_is_eopnotsupp_with_tid(opcode: int, tid: int, oid: str,
                                               snaps: list[int], ops: list[O.Op]) -> None:
    assume(opcode not in O._OPS)
    msg = O.encode_request(ops, tid=tid, client=EntityName(1, 2), incarnation=3, epoch=4,
                           pool=1, oid=oid, flags=O.FLAG_WRITE, snapc=(1, snaps))
    front = bytearray(msg.front)
    at = _opcode_at(oid, len(snaps))
    assert struct.unpack_from("<H", front, at)[0] == ops[0].OPCODE
    struct.pack_into("<H", front, at, opcode)
    with pytest.raises(O.UnknownOpError) as ei:
        O.decode_request(Message(type=O.MSG_OSD_OP, tid=tid, front=bytes(front),
                                 data=msg.data, trail=msg.trail))
    assert ei.value.errno == errno.EOPNOTSUPP and ei.value.tid == tid
    assert ei.value.opcode == opcode
    assert isinstance(ei.value, O.OpDecodeError)


def test_limits_are_checked_before_allocation() -> None:
    kw = dict(tid=9, client=EntityName(1, 1), incarnation=1, epoch=1, pool=1,
              flags=O.FLAG_WRITE)
    msg = O.encode_request([O.Stat()], oid="x" * (O.MAX_OID + 1), **kw)
    with pytest.raises(O.OpDecodeError) as ei:
        O.decode_request(msg)
    assert ei.value.errno == errno.EINVAL and ei.value.tid == 9
    # a name length claiming 4 GiB with nothing behind it
    front = bytearray(O.encode_request([O.Stat()], oid="x", **kw).front)
    struct.pack_into("<I", front, O._REQ_HEAD.size, 2**32 - 1)
    with pytest.raises(O.OpDecodeError) as ei:
        O.decode_request(Message(type=O.MSG_OSD_OP, tid=9, front=bytes(front)))
    assert ei.value.errno == errno.EINVAL
    msg = O.encode_request([O.SetXattr("n" * (O.MAX_NAME + 1), b"")], oid="x", **kw)
    with pytest.raises(O.OpDecodeError) as ei:
        O.decode_request(msg)
    assert ei.value.errno == errno.ENAMETOOLONG
    with pytest.raises(ValueError):
        O.encode_request([O.Stat()] * (O.MAX_OPS + 1), oid="x", **kw)


@settings(max_examples=300, deadline=None)
@given(front=st.binary(max_size=300), data=st.binary(max_size=200),
       ops=st.lists(OP, max_size=5))
def test_random_reply_fronts_raise_only_op_decode_error(front: bytes, data: bytes,
                                                        ops: list[O.Op]) -> None:
    msg = Message(type=O.MSG_OSD_OPREPLY, tid=3, front=front,
                  data=BioChain([data]) if data else None)
    try:
        O.decode_reply(msg, ops)
    except O.OpDecodeError as e:
        assert e.tid == 3
