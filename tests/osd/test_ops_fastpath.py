"""The one-op fast-path request decoder agrees with the general one, intact or damaged.

(Round trips, zero copy and fuzzing of the op encoder live in test_ops.py.)"""

from __future__ import annotations

import random

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
