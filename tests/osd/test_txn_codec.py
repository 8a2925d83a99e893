"""Transaction encode/decode, the form a primary ships to its replicas: a decoded transaction
applies with the same result as the original (whatever segments its payload arrives in), the
payload is never copied, and malformed input only ever raises TxnDecodeError."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.errors import RbdpyError
from rbdpy.osd.store import CmpOp, ObjectStore, StoreError, Transaction, TxnDecodeError

BS = 512
MAX = 8 * BS
KW = dict(max_object_size=MAX, block_size=BS, journal_max=4 * BS, direct_write_min=2 * BS,
          data_write_piece=2 * BS)


def cut(data: bytes, at: list[int]) -> list[bytes]:
    """``data`` as segments cut at the given points (some may be empty)."""
    points = sorted(min(p, len(data)) for p in at)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


names = st.sampled_from(["x", "y", "z"])
offsets = st.one_of(st.integers(0, MAX + BS), st.integers(0, 9).map(lambda k: k * BS),
                    st.integers(-2, -1))
sizes = st.one_of(st.integers(0, 3 * BS), st.integers(1, 4).map(lambda k: k * BS))
# random bytes rather than st.binary, which is mostly zeros: a zero range one byte off
# must show
payloads = st.builds(lambda n, seed: random.Random(seed).randbytes(n), sizes, st.integers())
segmented = st.builds(cut, payloads, st.lists(st.integers(0, 4 * BS), max_size=3))
op_st = st.one_of(
    st.tuples(st.just("write"), offsets, segmented),
    st.tuples(st.just("writefull"), segmented),
    st.tuples(st.just("zero"), offsets, st.integers(-1, 4 * BS)),
    st.tuples(st.just("truncate"), offsets),
    st.tuples(st.just("create"), st.booleans()),
    st.tuples(st.just("delete")),
    st.tuples(st.just("setxattr"), names, st.binary(max_size=8)),
    st.tuples(st.just("rmxattr"), names),
    st.tuples(st.just("appendxattr"), names, st.binary(max_size=5), st.integers(0, 6)),
    st.tuples(st.just("cmpxattr"), names, st.sampled_from(list(CmpOp)),
              st.one_of(st.binary(max_size=3), st.integers(0, 20),
                        st.just(2**64 - 1))),
    st.tuples(st.just("assert_exists")),
    st.tuples(st.just("assert_version"), st.integers(0, 30)),
)
txn_st = st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(op_st, max_size=5))


def build(ops: list[tuple]) -> Transaction:
    t = Transaction()
    for op in ops:
        getattr(t, op[0])(*op[1:])
    return t


def outcome(store: ObjectStore, oid: str, txn: Transaction) -> tuple:
    try:
        r = store.apply(oid, txn)
    except StoreError as e:
        return ("error", e.errno)
    return ("ok", r.version, r.seq)


def state(store: ObjectStore) -> dict:
    """Everything a client can see of the store but mtimes (each store stamps its own)."""
    out: dict = {"seq": store.applied_seq}
    for oid in store.list_objects(None, 100)[0]:
        s = store.stat(oid)
        out[oid] = (s.size, s.version, list(store.getxattrs(oid).items()),
                    store.read(oid, 0, 2 * MAX), store.extents(oid))
    return out


def shipped(txn: Transaction, at: list[int]) -> Transaction:
    """``txn`` after the trip to a replica: encoded, payload re-cut into other segments
    (bytearrays, as received), decoded."""
    header, segs = txn.encode()
    data = b"".join(bytes(s) for s in segs)
    return Transaction.decode(bytes(header), [bytearray(p) for p in cut(data, at)])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(txns=st.lists(st.tuples(txn_st, st.lists(st.integers(0, 4 * BS), max_size=3)),
                     min_size=1, max_size=25))
def test_a_shipped_transaction_applies_with_the_same_result(tmp_path_factory, txns):
    base = tmp_path_factory.mktemp("ship")
    a = ObjectStore(base / "a", **KW)
    b = ObjectStore(base / "b", **KW)
    try:
        for (oid, ops), at in txns:
            direct = outcome(a, oid, build(ops))
            assert outcome(b, oid, shipped(build(ops), at)) == direct, ops
        assert state(b) == state(a)
        b.abandon()  # what B journaled from the decoded views replays to the same state
        b = ObjectStore(base / "b", **KW)
        assert state(b) == state(a)
    finally:
        a.close()
        b.close()


def test_encoding_does_not_copy_the_payload_nor_does_decoding(tmp_path):
    src = bytearray(b"A" * 3 * BS)
    header, segs = Transaction().write(BS, [src, b"tail"]).setxattr("k", b"v").encode()
    assert segs[0].obj is src  # a view of the caller's buffer
    recv = bytearray(b"".join(bytes(s) for s in segs))
    txn = Transaction.decode(header, [recv])
    recv[:3] = b"new"  # lands in the decoded transaction: it holds views of recv
    s = ObjectStore(tmp_path / "s", **KW)
    s.apply("o", txn)
    assert s.read("o", BS, 3 * BS + 4) == b"new" + b"A" * (3 * BS - 3) + b"tail"
    assert s.getxattr("o", "k") == b"v"
    s.close()


def test_values_that_cannot_be_encoded_are_einval():
    for t in (Transaction().setxattr(b"k", b"v"),  # type: ignore[arg-type]
              Transaction().rmxattr("\udc80"),
              Transaction().write(2**63, b"x"),
              Transaction().cmpxattr("k", CmpOp.EQ, -1),
              Transaction().cmpxattr("k", CmpOp.EQ, 2**64)):
        with pytest.raises(StoreError) as e:
            t.encode()
        assert e.value.errno == errno.EINVAL


def test_malformed_encodings():
    header, segs = Transaction().write(0, b"abc").setxattr("k", b"v").encode()
    cases = [
        (header[:-1], segs, errno.EBADMSG),  # truncated
        (header + b"\0", segs, errno.EBADMSG),  # a byte after the last op
        (header, [b"ab"], errno.EBADMSG),  # data shorter than the writes
        (header, [b"abcd"], errno.EBADMSG),  # data no op uses
        (b"\x02" + header[1:], segs, errno.EBADMSG),  # another codec version
        (header[:5] + b"\xee" + header[6:], segs, errno.EINVAL),  # unknown op
        (b"\x01\xff\xff\xff\xff", [], errno.EBADMSG),  # more ops than bytes
    ]
    for h, s, code in cases:
        with pytest.raises(TxnDecodeError) as e:
            Transaction.decode(h, s)
        assert e.value.errno == code, (h, s)
        assert isinstance(e.value, RbdpyError)


def decodes_or_typed_error(header: bytes, segs: list[bytes]) -> None:
    try:
        Transaction.decode(header, segs)
    except TxnDecodeError as e:
        assert e.errno in (errno.EBADMSG, errno.EINVAL)


@settings(max_examples=400, deadline=None)
@given(header=st.binary(max_size=120), segs=st.lists(st.binary(max_size=40), max_size=3))
def test_decoding_random_bytes_raises_only_the_typed_error(header, segs):
    decodes_or_typed_error(header, segs)
    decodes_or_typed_error(b"\x01" + header, segs)  # past the version byte


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_st, min_size=1, max_size=5), data=st.data())
def test_decoding_damaged_encodings_raises_only_the_typed_error(ops, data):
    header, segs = build(ops).encode()
    payload = b"".join(bytes(s) for s in segs)
    n = data.draw(st.integers(0, len(header) - 1))
    with pytest.raises(TxnDecodeError):  # a strict prefix of a header is never valid
        Transaction.decode(header[:n], [payload])
    if payload:
        with pytest.raises(TxnDecodeError):
            Transaction.decode(header, [payload[:data.draw(st.integers(0, len(payload) - 1))]])
    i = data.draw(st.integers(0, len(header) - 1))
    flipped = header[:i] + bytes([header[i] ^ data.draw(st.integers(1, 255))]) + header[i + 1:]
    decodes_or_typed_error(flipped, [payload])
