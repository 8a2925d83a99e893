"""The op encoder: round trips through arbitrarily re-chunked data sections, zero copy, fuzz."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.payload import BioChain
from rbdpy.osd import ops as O

names = st.text(min_size=1, max_size=20)
blobs = st.binary(max_size=3000)
op_strategy = st.one_of(
    st.builds(O.Read, st.integers(0, 2**40), st.integers(0, 2**24)),
    st.builds(O.SparseRead, st.integers(0, 2**40), st.integers(0, 2**24)),
    st.builds(O.Write, st.integers(0, 2**40), blobs),
    st.builds(O.WriteFull, blobs),
    st.builds(O.Zero, st.integers(0, 2**40), st.integers(0, 2**30)),
    st.builds(O.Truncate, st.integers(0, 2**40)),
    st.builds(O.Delete),
    st.builds(O.Create, st.booleans()),
    st.builds(O.Stat),
    st.builds(O.GetXattr, names),
    st.builds(O.SetXattr, names, blobs),
    st.builds(O.RmXattr, names),
    st.builds(O.GetXattrs),
    st.builds(O.CmpXattr, names, st.integers(1, 6), st.just(O.CMP_STRING), blobs),
    st.builds(O.CmpXattr, names, st.integers(1, 6), st.just(O.CMP_U64),
              st.integers(0, 2**64 - 1)),
    st.builds(O.Call, names, names, blobs),
    st.builds(O.ListObjects, st.text(max_size=10), st.integers(0, 5000)),
    st.builds(O.AssertVersion, st.integers(0, 2**64 - 1)),
    st.builds(O.AssertExists),
)


def rechunk(msg: Message, rnd: random.Random) -> Message:
    """What the receiver sees: the data section as arbitrary segments, no trail."""
    data = b"".join(msg.data_segments())
    segs, pos = [], 0
    while pos < len(data):
        n = rnd.randint(1, 700)
        segs.append(memoryview(bytearray(data[pos : pos + n])))
        pos += n
    return Message(type=msg.type, tid=msg.tid, front=bytes(msg.front),
                   data=BioChain(segs) if segs else None)


def norm(op: O.Op) -> tuple:
    d = dict(vars(op))
    for k in ("data",):
        if k in d:
            v = d[k]
            d[k] = b"".join(v) if isinstance(v, list) else bytes(v)
    return type(op).__name__, tuple(sorted(d.items()))


@settings(max_examples=150, deadline=None)
@given(st.lists(op_strategy, max_size=8), st.integers(0, 2**32), st.text(max_size=40),
       st.integers(0, 2**32))
def test_request_roundtrip(ops: list, tid: int, oid: str, seed: int) -> None:
    msg = O.encode_request(ops, tid=tid, client=EntityName(1, 5), incarnation=9, epoch=3,
                           pool=2, oid=oid, flags=O.FLAG_WRITE, snapc=(4, [3, 2]),
                           attempt=1)
    req = O.decode_request(rechunk(msg, random.Random(seed)))
    assert (req.tid, req.oid, req.pool, req.epoch, req.attempt, req.snapc) == (
        tid, oid, 2, 3, 1, (4, [3, 2]))
    assert [norm(o) for o in req.ops] == [norm(o) for o in ops]


def test_write_payload_is_never_copied() -> None:
    buf = bytearray(random.Random(1).randbytes(10000))
    mv = memoryview(buf)
    msg = O.encode_request([O.Write(0, mv[100:5000]), O.Write(9, [mv[6000:7000], mv[8000:]])],
                           tid=1, client=EntityName(1, 1), incarnation=1, epoch=1, pool=1,
                           oid="x", flags=O.FLAG_WRITE)
    arr = np.frombuffer(buf, np.uint8)
    for seg in msg.data.segments():
        assert np.shares_memory(np.frombuffer(seg, np.uint8), arr)
    # decoded write data are views into the received segments
    rx = rechunk(msg, random.Random(2))
    req = O.decode_request(rx)
    rx_arrays = [np.frombuffer(s, np.uint8) for s in rx.data.segments()]
    for op in req.ops:
        for v in op.data:
            assert any(np.shares_memory(np.frombuffer(v, np.uint8), a) for a in rx_arrays)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_reply_roundtrip(tid: int, seed: int) -> None:
    rnd = random.Random(seed)
    data = rnd.randbytes(rnd.randint(0, 5000))
    ops = [O.Read(0, len(data)), O.Stat(), O.GetXattrs(), O.Call("c", "m", b""),
           O.ListObjects("", 3), O.SparseRead(0, 100), O.Write(0, b"x")]
    outs = [data, O.StatResult(7, 1.5, 9), {"a": b"1", "b": b""}, b"out", (["a", "b"], "b"),
            ([(0, 3), (10, 2)], b"abcde"), None]
    msg = O.encode_reply(tid=tid, result=0, version=4, flags=O.FLAG_ACK, epoch=1, attempt=0,
                         op_results=list(zip(ops, [0] * len(ops), outs)))
    rep = O.decode_reply(rechunk(msg, rnd), ops)
    got = [r.out for r in rep.results]
    assert b"".join(got[0]) == data and got[1] == outs[1] and got[2] == outs[2]
    assert got[3] == b"out" and got[4] == (["a", "b"], "b")
    assert got[5][0] == [(0, 3), (10, 2)] and b"".join(got[5][1]) == b"abcde"


def test_unknown_opcode_carries_errno_and_tid() -> None:
    msg = O.encode_request([O.Stat()], tid=77, client=EntityName(1, 1), incarnation=1, epoch=1,
                           pool=1, oid="x", flags=0)
    front = bytearray(msg.front)
    front[-(2 + 2 + 4 + 1)] = 200  # the Stat op's opcode
    with pytest.raises(O.UnknownOpError) as ei:
        O.decode_request(Message(type=O.MSG_OSD_OP, tid=77, front=bytes(front)))
    assert ei.value.errno == errno.EOPNOTSUPP and ei.value.tid == 77


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_garbage_only_raises_typed_errors(front: bytes, data: bytes) -> None:
    msg = Message(type=O.MSG_OSD_OP, tid=1, front=front,
                  data=BioChain([data]) if data else None)
    try:
        O.decode_request(msg)
    except O.OpDecodeError as e:
        assert e.errno in (errno.EBADMSG, errno.EINVAL, errno.EOPNOTSUPP, errno.ENAMETOOLONG)


def test_truncations_of_a_real_request_raise_typed_errors() -> None:
    msg = O.encode_request([O.SetXattr("k", b"v"), O.Write(3, b"abc")], tid=5,
                           client=EntityName(1, 1), incarnation=1, epoch=1, pool=1, oid="obj",
                           flags=O.FLAG_WRITE)
    data = b"".join(msg.data_segments())
    for cut in range(len(msg.front)):
        with pytest.raises(O.OpDecodeError):
            O.decode_request(Message(type=42, tid=5, front=msg.front[:cut],
                                     data=BioChain([data])))
    with pytest.raises(O.OpDecodeError):
        O.decode_request(Message(type=42, tid=5, front=msg.front, data=BioChain([data[:-1]])))


def _outcome(decode, msg: Message) -> tuple:
    try:
        req = decode(msg)
    except O.OpDecodeError as e:
        return ("error", e.errno, e.tid)
    return (req.tid, req.client, req.incarnation, req.epoch, req.pool, req.oid, req.flags,
            req.snapc, req.snapid, req.attempt, [norm(o) for o in req.ops])


@settings(max_examples=300, deadline=None)
@given(op_strategy, st.text(max_size=40), st.integers(0, 2), st.sampled_from([0, O.FLAG_WRITE]),
       st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                       max_size=3))
def test_one_op_fast_path_agrees_with_the_general_decoder(
        op: O.Op, oid: str, seq: int, flags: int, seed: int, flips: list) -> None:
    """Single-op requests without snap ids take a one-pass decoder: it must give exactly what
    the general one gives, for intact and for damaged fronts alike."""
    msg = O.encode_request([op], tid=seed, client=EntityName(1, 5), incarnation=9, epoch=3,
                           pool=2, oid=oid, flags=flags, snapc=(seq, []), attempt=1)
    rx = rechunk(msg, random.Random(seed))
    if not flips:
        assert O._decode_simple(rx) is not None or op.TRAIL_LIMITS
    front = bytearray(rx.front)
    for pos, val in flips:
        if pos < len(front):
            front[pos] = val
    rx.front = bytes(front)
    assert _outcome(O.decode_request, rx) == _outcome(O._decode_general, rx)
