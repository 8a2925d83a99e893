"""Tests for rbdpy.osd.store: semantics, a model-based property test, real kill -9 crashes,
checksums, and full-disk behaviour."""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.osd.store import CmpOp, ObjectStore, StoreError, Transaction

HERE = Path(__file__).parent
BS = 4096

_spec = importlib.util.spec_from_file_location("store_crash_child", HERE / "store_crash_child.py")
crash_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_child)


def abandon(store: ObjectStore) -> None:
    """Drop a store without committing or checkpointing: what kill -9 leaves (the page cache
    keeps everything the process wrote)."""
    store.abandon()


def err(exc_info) -> int:
    return exc_info.value.errno


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(tmp_path / "s", max_object_size=1 << 20)
    yield s
    s.close()


def pattern(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# -- mutations -------------------------------------------------------------------------------


def test_write_read_stat(store):
    r = store.apply("a", Transaction().write(100, b"hello"))
    assert r.seq == 1 and r.version == 1
    assert store.exists("a") and not store.exists("b")
    st_ = store.stat("a")
    assert st_.size == 105 and st_.version == 1 and abs(st_.mtime - time.time()) < 5
    assert store.read("a", 0, 200) == bytes(100) + b"hello"
    assert store.read("a", 103, 10) == b"lo"  # short at EOF
    assert store.read("a", 105, 10) == b"" and store.read("a", 500, 10) == b""
    out = bytearray(8)
    assert store.read("a", 98, 100, memoryview(out)) == 7
    assert bytes(out[:7]) == b"\0\0hello"


def test_write_segments_and_unaligned(store):
    base = pattern(5 * BS, 1)
    store.apply("a", Transaction().write(0, base))
    segs = [memoryview(pattern(700, 2)), b"x" * 5000, bytearray(b"y" * 3)]
    store.apply("a", Transaction().write(BS - 100, segs))
    want = bytearray(base)
    joined = b"".join(bytes(s) for s in segs)
    want[BS - 100:BS - 100 + len(joined)] = joined
    assert store.read("a", 0, 10 * BS) == want
    for off, ln in [(1, 10), (BS - 1, 2), (BS, BS), (123, 3 * BS + 7), (0, 5 * BS)]:
        assert store.read("a", off, ln) == want[off:off + ln]
        buf = bytearray(ln)
        assert store.read("a", off, ln, buf) == ln and buf == want[off:off + ln]


def test_write_many_segments_over_block_boundaries(store):
    data = pattern(3 * BS + 10, 3)
    segs = [memoryview(data)[i:i + 333] for i in range(0, len(data), 333)]
    store.apply("a", Transaction().write(BS, segs))
    assert store.read("a", BS, len(data)) == data
    assert store.read("a", 0, BS) == bytes(BS)


def test_writefull(store):
    store.apply("a", Transaction().write(0, pattern(3 * BS)))
    store.apply("a", Transaction().writefull(b"abc"))
    assert store.stat("a").size == 3 and store.read("a", 0, 100) == b"abc"
    store.apply("a", Transaction().truncate(2 * BS))  # the old tail must not come back
    assert store.read("a", 0, 2 * BS) == b"abc" + bytes(2 * BS - 3)
    store.apply("b", Transaction().writefull(b""))
    assert store.stat("b").size == 0


def test_zero_and_holes(store):
    data = pattern(8 * BS, 4)
    store.apply("a", Transaction().write(0, data))
    store.apply("a", Transaction().zero(BS + 10, 3 * BS))
    want = bytearray(data)
    want[BS + 10:4 * BS + 10] = bytes(3 * BS)
    assert store.read("a", 0, 8 * BS) == want
    ext, payload = store.sparse_read("a", 0, 8 * BS)
    assert ext == [(0, 2 * BS), (4 * BS, 4 * BS)]  # blocks 2, 3 became holes
    assert payload == want[:2 * BS] + want[4 * BS:]
    # zero never extends; a zero of a missing object is a no-op
    store.apply("a", Transaction().zero(7 * BS, 10 * BS))
    assert store.stat("a").size == 8 * BS
    assert store.sparse_read("a", 0, 8 * BS)[0] == [(0, 2 * BS), (4 * BS, 3 * BS)]
    store.apply("nope", Transaction().zero(0, 10))
    assert not store.exists("nope")


def test_sparse_files_take_no_space(store, tmp_path):
    store.apply("a", Transaction().write(900 << 10, b"x" * BS))
    store.apply("a", Transaction().truncate(1 << 20))
    assert store.read("a", 0, 1 << 20) == bytes(900 << 10) + b"x" * BS + bytes(120 << 10)
    assert store.sparse_read("a", 0, 1 << 20) == ([(900 << 10, BS)], b"x" * BS)
    store.close()
    blocks = sum(os.stat(p).st_blocks for p in (tmp_path / "s" / "objects").rglob("o_a"))
    assert blocks * 512 <= 2 * BS
    s = ObjectStore(tmp_path / "s", max_object_size=1 << 20)
    assert s.sparse_read("a", 0, 1 << 20)[0] == [(900 << 10, BS)]
    s.apply("a", Transaction().zero(0, 1 << 20))
    assert s.sparse_read("a", 0, 1 << 20) == ([], b"")
    s.close()


def test_sparse_read_clipping(store):
    store.apply("a", Transaction().write(BS, pattern(2 * BS)).write(5 * BS, b"z" * 10))
    ext, data = store.sparse_read("a", BS + 5, 10 * BS)
    assert ext == [(BS + 5, 2 * BS - 5), (5 * BS, 10)]
    assert data == pattern(2 * BS)[5:] + b"z" * 10
    assert store.extents("a") == [(BS, 2 * BS), (5 * BS, 10)]


def test_truncate(store):
    data = pattern(3 * BS, 5)
    store.apply("a", Transaction().write(0, data))
    store.apply("a", Transaction().truncate(BS + 100))
    assert store.read("a", 0, 3 * BS) == data[:BS + 100]
    store.apply("a", Transaction().truncate(3 * BS))  # grows with zeros, not old bytes
    assert store.read("a", 0, 3 * BS) == data[:BS + 100] + bytes(2 * BS - 100)
    store.apply("a", Transaction().write(BS + 200, b"q"))
    assert store.read("a", BS, 300) == data[BS:BS + 100] + bytes(100) + b"q" + bytes(99)
    store.apply("new", Transaction().truncate(10))
    assert store.read("new", 0, 100) == bytes(10)


def test_create_delete(store):
    store.apply("a", Transaction().create(exclusive=True))
    assert store.stat("a").size == 0
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().create(exclusive=True))
    assert err(e) == errno.EEXIST
    store.apply("a", Transaction().create())
    store.apply("a", Transaction().write(0, b"abc").setxattr("k", b"v"))
    store.apply("a", Transaction().delete())
    assert not store.exists("a")
    for f in (lambda: store.stat("a"), lambda: store.read("a", 0, 1),
              lambda: store.getxattr("a", "k"), lambda: store.sparse_read("a", 0, 1),
              lambda: store.apply("a", Transaction().delete())):
        with pytest.raises(StoreError) as e:
            f()
        assert err(e) == errno.ENOENT
    store.apply("a", Transaction().write(5, b"x"))  # re-created: nothing old comes back
    assert store.read("a", 0, 10) == bytes(5) + b"x"
    assert store.getxattrs("a") == {}
    # delete then re-create inside one transaction
    store.apply("a", Transaction().delete().write(0, b"new"))
    assert store.read("a", 0, 10) == b"new"


def test_xattrs(store):
    store.apply("a", Transaction().setxattr("x", b"1").setxattr("y", b"\0\xff"))
    assert store.getxattr("a", "y") == b"\0\xff"
    assert store.getxattrs("a") == {"x": b"1", "y": b"\0\xff"}
    store.apply("a", Transaction().rmxattr("x"))
    with pytest.raises(StoreError) as e:
        store.getxattr("a", "x")
    assert err(e) == errno.ENODATA
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().rmxattr("x"))
    assert err(e) == errno.ENODATA
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().setxattr("big", bytes(70000)))
    assert err(e) == errno.E2BIG
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().setxattr("", b""))
    assert err(e) == errno.EINVAL


def test_appendxattr_journals_the_tail_only_and_survives_replay(tmp_path):
    """A bounded log in an xattr: each append keeps the last ``keep`` bytes, is journaled
    as the appended bytes only, moves the xattr last, and replays to the same value."""
    p = tmp_path / "s"
    s = ObjectStore(p)
    s.apply("a", Transaction().setxattr("first", b"f"))
    jpos = s._jpos
    s.apply("a", Transaction().appendxattr("log", b"abc", 6))
    small = s._jpos - jpos
    for i in range(10):
        s.apply("a", Transaction().appendxattr("log", bytes([48 + i]) * 3, 6))
    assert s.getxattr("a", "log") == b"888999"
    s.apply("a", Transaction().setxattr("first", b"g"))  # keeps its place
    assert list(s.getxattrs("a")) == ["first", "log"]
    s.apply("a", Transaction().appendxattr("first", b"", 4))  # moves it last
    assert list(s.getxattrs("a")) == ["log", "first"]
    jpos = s._jpos
    s.apply("a", Transaction().appendxattr("log", b"x" * 3, 6000))
    assert s._jpos - jpos == small  # the record holds the appended bytes, not the value
    assert s.getxattr("a", "log") == b"888999xxx"
    s.apply("b", Transaction().appendxattr("log", b"12", 2))  # creates the object
    for bad, code in (((b"abc", 2), errno.EINVAL), ((b"", 70000), errno.E2BIG)):
        with pytest.raises(StoreError) as e:
            s.apply("a", Transaction().appendxattr("log", *bad))
        assert err(e) == code
    s.commit()
    s.checkpoint()
    s.apply("a", Transaction().appendxattr("log", b"yz", 4))
    s.apply("a", Transaction().appendxattr("first", b"h", 4))
    want = {o: list(s.getxattrs(o).items()) for o in ("a", "b")}
    assert want["a"] == [("log", b"xxyz"), ("first", b"gh")]
    abandon(s)  # kill -9: the checkpoint holds the values, replay redoes the last appends
    s = ObjectStore(p)
    assert {o: list(s.getxattrs(o).items()) for o in ("a", "b")} == want
    s.close()
    s = ObjectStore(p)
    assert {o: list(s.getxattrs(o).items()) for o in ("a", "b")} == want
    s.close()


def test_large_writes_reach_the_file_in_aligned_pieces(tmp_path, monkeypatch):
    """Big writes go to object files in calls of at most data_write_piece bytes, aligned in
    the file (small page-cache folios keep later small overwrites cheap), journaled or
    direct, and read back whole."""
    s = ObjectStore(tmp_path / "s", data_write_piece=16 * BS)
    calls: list[tuple[int, int]] = []
    real = os.pwritev

    def spy(fd, iov, pos):
        if fd != s._journal.fd:
            calls.append((pos, sum(len(b) for b in iov)))
        return real(fd, iov, pos)

    monkeypatch.setattr(os, "pwritev", spy)
    data = pattern(100 * BS, 3)
    s.apply("a", Transaction().write(3 * BS, [memoryview(data)[:7 * BS],
                                              memoryview(data)[7 * BS:]]))  # direct
    s.apply("a", Transaction().write(5 * BS + 10, data))  # journaled, unaligned edges
    piece = 16 * BS
    assert len(calls) > 10 and all(p // piece == (p + n - 1) // piece for p, n in calls)
    want = bytearray(bytes(3 * BS) + data)
    want[5 * BS + 10:5 * BS + 10 + len(data)] = data
    assert s.read("a", 0, 1 << 20) == want
    s.close()


def test_versions_increase(store):
    v1 = store.apply("a", Transaction().write(0, b"a")).version
    v2 = store.apply("b", Transaction().write(0, b"a")).version
    v3 = store.apply("a", Transaction().write(0, b"b")).version
    assert v1 < v2 < v3 and store.stat("a").version == v3
    # no mutation: no new version, no journal record
    r = store.apply("a", Transaction().assert_exists())
    assert r.version == v3 and r.seq == v3
    store.apply("a", Transaction().delete())
    assert store.apply("a", Transaction().create()).version > v3  # never reused


def test_efbig_einval(store):
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().write((1 << 20) - 1, b"ab"))
    assert err(e) == errno.EFBIG
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().truncate((1 << 20) + 1))
    assert err(e) == errno.EFBIG
    store.apply("a", Transaction().write((1 << 20) - 2, b"ab"))  # exactly up to the limit
    assert store.stat("a").size == 1 << 20
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().write(-1, b"x"))
    assert err(e) == errno.EINVAL
    with pytest.raises(StoreError) as e:
        store.read("a", -1, 1)
    assert err(e) == errno.EINVAL
    with pytest.raises(StoreError) as e:
        store.apply("", Transaction().create())
    assert err(e) == errno.EINVAL


def test_every_object_name_the_wire_accepts_fits_the_store(tmp_path):
    """The wire refuses names over proto.ops.MAX_OID with EINVAL; the store takes the key
    the OSD makes of any accepted name ("<pool>.<name>", u64 pool), through replay and
    checkpoint, and refuses a longer key with the same EINVAL. (It refused keys over 1024
    bytes, names the wire had accepted.)"""
    from rbdpy.proto.ops import MAX_OID

    key = f"{2**64 - 1}." + "n" * MAX_OID
    s = ObjectStore(tmp_path / "s")
    s.apply(key, Transaction().write(0, b"x").setxattr("k", b"v"))
    with pytest.raises(StoreError) as e:
        s.apply(key + "n", Transaction().create())
    assert err(e) == errno.EINVAL
    abandon(s)
    s = ObjectStore(tmp_path / "s")  # replayed from the journal
    assert s.read(key, 0, 9) == b"x" and s.list_objects() == ([key], None)
    s.close()  # checkpointed
    s = ObjectStore(tmp_path / "s")
    assert s.read(key, 0, 9) == b"x" and s.getxattr(key, "k") == b"v"
    s.close()


# -- guards and atomicity ---------------------------------------------------------------------


def test_guards(store):
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().assert_exists().write(0, b"x"))
    assert err(e) == errno.ENOENT and not store.exists("a")
    v = store.apply("a", Transaction().write(0, b"x").setxattr("s", b"abc")
                    .setxattr("n", b"10")).version
    store.apply("a", Transaction().assert_version(v).write(0, b"y"))
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().assert_version(v).write(0, b"z"))
    assert err(e) == errno.ECANCELED
    ok = [("s", CmpOp.EQ, b"abc"), ("s", CmpOp.NE, b"abd"), ("s", CmpOp.GT, b"abb"),
          ("s", CmpOp.GTE, b"abc"), ("s", CmpOp.LT, b"b"), ("s", CmpOp.LTE, b"abc"),
          ("missing", CmpOp.EQ, b""), ("n", CmpOp.GT, 9), ("n", "lte", 10), ("n", CmpOp.EQ, 10),
          ("n", CmpOp.LT, 100), ("missing", CmpOp.EQ, 0), ("n", CmpOp.GT, b"1")]
    for name, op, val in ok:
        store.apply("a", Transaction().cmpxattr(name, op, val))
    bad = [("s", CmpOp.EQ, b"abd"), ("s", CmpOp.NE, b"abc"), ("s", CmpOp.GT, b"abc"),
           ("s", CmpOp.LT, b"abc"), ("n", CmpOp.LT, 10), ("n", CmpOp.GTE, 11),
           ("n", CmpOp.NE, 10), ("n", CmpOp.LT, 9)]  # 10 < 9 is false numerically
    for name, op, val in bad:
        with pytest.raises(StoreError) as e:
            store.apply("a", Transaction().cmpxattr(name, op, val).write(0, b"!"))
        assert err(e) == errno.ECANCELED, (name, op, val)
    with pytest.raises(StoreError) as e:
        store.apply("a", Transaction().cmpxattr("s", CmpOp.EQ, 1))
    assert err(e) == errno.EINVAL
    assert store.read("a", 0, 1) == b"y"


def test_failed_guard_mid_txn_changes_nothing(store):
    store.apply("a", Transaction().write(0, pattern(3 * BS, 7)).setxattr("k", b"1"))
    before = (store.stat("a"), store.read("a", 0, 4 * BS), store.getxattrs("a"))
    seq = store.applied_seq
    t = (Transaction().write(10, b"X" * 2 * BS).truncate(BS).setxattr("k", b"2")
         .zero(0, 100).rmxattr("k").cmpxattr("k", CmpOp.EQ, b"2"))  # k was removed: fails
    with pytest.raises(StoreError) as e:
        store.apply("a", t)
    assert err(e) == errno.ECANCELED
    # the guard saw the txn's own earlier effects: with setxattr after, it passes
    assert (store.stat("a"), store.read("a", 0, 4 * BS), store.getxattrs("a")) == before
    assert store.applied_seq == seq
    for bad, code in [(Transaction().write(0, b"x").delete().delete(), errno.ENOENT),
                      (Transaction().write(0, b"x").write(1 << 20, b"x"), errno.EFBIG),
                      (Transaction().setxattr("z", b"1").create(exclusive=True), errno.EEXIST)]:
        with pytest.raises(StoreError) as e:
            store.apply("a", bad)
        assert err(e) == code
    assert (store.stat("a"), store.read("a", 0, 4 * BS), store.getxattrs("a")) == before
    store.apply("a", Transaction().setxattr("k", b"2").cmpxattr("k", CmpOp.EQ, b"2"))


def test_list_paging(store):
    names = sorted(f"obj{i:03d}" for i in random.Random(1).sample(range(1000), 25))
    for n in reversed(names):
        store.apply(n, Transaction().create())
    got, marker = [], None
    while True:
        page, marker = store.list_objects(marker, 7)
        got += page
        if marker is None:
            break
    assert got == names
    assert store.list_objects(names[-1], 10) == ([], None)
    assert store.list_objects(None, 25) == (names, None)
    assert store.list_objects("obj", 2) == (names[:2], names[1])
    store.apply(names[3], Transaction().delete())
    assert names[3] not in store.list_objects(None, 100)[0]


# -- durability -------------------------------------------------------------------------------


def test_reopen_and_replay(tmp_path):
    p = tmp_path / "s"
    s = ObjectStore(p, journal_max=64 << 10)
    want = {}
    for i in range(200):
        oid = f"o{i % 7}"
        data = pattern(random.Random(i).randrange(1, 3 * BS), i)
        off = random.Random(-i).randrange(0, 8 * BS)
        s.apply(oid, Transaction().write(off, data).setxattr("i", str(i).encode()))
        w = want.setdefault(oid, bytearray())
        w.extend(bytes(max(0, off + len(data) - len(w))))
        w[off:off + len(data)] = data
        if i % 13 == 0:
            s.commit()  # checkpoints happen here (journal_max is small)
    seq = s.applied_seq
    abandon(s)  # kill -9: the last transactions were never committed, still replayed
    s = ObjectStore(p, journal_max=64 << 10)
    assert s.applied_seq == seq == s.committed_seq()
    for oid, w in want.items():
        assert s.read(oid, 0, 1 << 20) == w
    s.close()
    s = ObjectStore(p)
    assert s.applied_seq == seq and len(list(p.glob("journal.0*"))) == 1
    assert {oid: s.read(oid, 0, 1 << 20) for oid in want} == want
    s.close()


def test_torn_journal_tail_drops_only_the_torn_txn(tmp_path):
    p = tmp_path / "s"
    s = ObjectStore(p)
    s.apply("a", Transaction().write(0, b"1" * BS))
    s.apply("a", Transaction().write(BS, b"2" * BS))
    s.commit()
    jpos = s._jpos
    s.apply("b", Transaction().write(0, b"3" * BS).setxattr("x", b"y"))
    jfile = s._journal.segment_path(s._journal.gen)
    abandon(s)
    with open(jfile, "r+b") as f:  # tear the last record at several points
        for cut in (jpos + 2000, jpos + 30, jpos + 10):
            f.truncate(cut)
            s = ObjectStore(p)
            assert s.applied_seq == 2 and not s.exists("b")
            assert s.read("a", 0, 3 * BS) == b"1" * BS + b"2" * BS
            abandon(s)
    s = ObjectStore(p)
    s.apply("c", Transaction().write(0, b"4"))  # appends after the valid records
    s.close()
    s = ObjectStore(p)
    assert s.applied_seq == 3 and s.read("c", 0, 1) == b"4" and not s.exists("b")
    s.close()


def test_forged_record_in_write_data_is_not_replayed(tmp_path):
    """A torn long record overwritten by a shorter one leaves client data at a record
    boundary; a record forged in that data (valid magic, seq and crcs) must not replay."""
    import struct

    from rbdpy.crc import crc32c
    from rbdpy.osd.store import format as fmt

    payload = b"".join(bytes(b) for b in fmt.encode_txn(
        "evil", 0.0, [(fmt.OP_CREATE,), (fmt.OP_WRITE, 0, [memoryview(b"EVIL")], 4)]))
    hdr = fmt.J_HDR.pack(fmt.J_MAGIC, len(payload), 3, 0, crc32c(payload))
    forged = hdr + struct.pack("<I", crc32c(hdr)) + payload
    p = tmp_path / "s"
    s = ObjectStore(p)
    s.apply("a", Transaction().write(0, b"1"))
    P = s._jpos
    k = 100
    s.apply("a", Transaction().write(0, b"a" * k + forged + b"b" * 1000))
    jfile = s._journal.segment_path(s._journal.gen)
    abandon(s)
    data_at = P + fmt.J_HDR_LEN + 2 + len("a") + fmt.TXN_PREFIX.size + fmt.OPH_WRITE.size
    os.truncate(jfile, data_at + k + len(forged) + 10)  # torn in the trailing b's
    s = ObjectStore(p)
    assert s.applied_seq == 1
    s.apply("a", Transaction().write(0, b"c" * k))  # seq 2 again, shorter, same place
    assert s._jpos == data_at + k
    abandon(s)
    assert Path(jfile).read_bytes()[data_at + k:data_at + k + len(forged)] == forged
    s = ObjectStore(p)
    assert s.applied_seq == 2 and not s.exists("evil")
    assert s.read("a", 0, 200) == b"c" * k
    s.close()


def test_replay_repairs_torn_data_block(tmp_path):
    p = tmp_path / "s"
    s = ObjectStore(p)
    s.apply("a", Transaction().write(0, pattern(4 * BS, 1)))
    s.checkpoint()
    s.apply("a", Transaction().write(BS, pattern(2 * BS, 2)))
    path = s._files.path("a")[1]
    abandon(s)
    with open(path, "r+b") as f:  # a kill in the middle of the data pwrite
        f.seek(BS + 1000)
        f.write(b"\xee" * 5000)
    s = ObjectStore(p)
    assert s.read("a", 0, 4 * BS) == pattern(4 * BS, 1)[:BS] + pattern(2 * BS, 2) + \
        pattern(4 * BS, 1)[3 * BS:]
    s.close()


@pytest.mark.parametrize("between", ["zero", "delete", "truncate"])
def test_replay_keeps_later_direct_write(tmp_path, between):
    """A large write into holes goes to the data file before its (crc-only) journal record;
    replaying an earlier journaled write of the same blocks must not clobber it."""
    p = tmp_path / "s"
    s = ObjectStore(p, direct_write_min=4 * BS)
    s.apply("a", Transaction().write(0, b"\1" * 8 * BS))
    s.checkpoint()
    s.apply("a", Transaction().write(2 * BS + 5, b"old" * 100))  # journaled with data
    s.apply("a", {"zero": Transaction().zero(0, 8 * BS),
                  "delete": Transaction().delete(),
                  "truncate": Transaction().truncate(BS + 7)}[between])
    direct = pattern(6 * BS, 11)
    s.apply("a", Transaction().write(2 * BS, direct))  # direct: blocks 2..7 are holes now
    assert s.applied_seq == 4
    want = s.read("a", 0, 9 * BS)
    assert want[2 * BS:] == direct
    abandon(s)
    s = ObjectStore(p, direct_write_min=4 * BS)
    assert s.applied_seq == 4 and s.read("a", 0, 9 * BS) == want
    s.close()
    s = ObjectStore(p)
    assert s.read("a", 0, 9 * BS) == want
    s.close()


def test_direct_write_without_journal_record_is_absent(tmp_path, monkeypatch):
    p = tmp_path / "s"
    s = ObjectStore(p, direct_write_min=4 * BS)
    s.apply("a", Transaction().write(0, b"x" * BS))
    real = os.pwritev

    def full(fd, bufs, pos):
        if fd == s._journal.fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(StoreError) as e:  # data reached the file, the record did not
        s.apply("a", Transaction().write(4 * BS, b"D" * 8 * BS))
    assert err(e) == errno.ENOSPC
    monkeypatch.setattr(os, "pwritev", real)
    assert s.stat("a").size == BS and s.sparse_read("a", 0, 1 << 20)[0] == [(0, BS)]
    s.apply("a", Transaction().truncate(12 * BS))  # the blocks are holes: zeros, not "D"
    assert s.read("a", 0, 12 * BS) == b"x" * BS + bytes(11 * BS)
    abandon(s)
    s = ObjectStore(p)
    assert s.read("a", 0, 12 * BS) == b"x" * BS + bytes(11 * BS)
    s.close()


def test_bit_flip_gives_eio(tmp_path, caplog):
    p = tmp_path / "s"
    s = ObjectStore(p)
    data = pattern(6 * BS, 9)
    s.apply("a", Transaction().write(0, data))
    path = s._files.path("a")[1]
    s.close()
    with open(path, "r+b") as f:
        f.seek(2 * BS + 77)
        b = f.read(1)
        f.seek(2 * BS + 77)
        f.write(bytes([b[0] ^ 0x10]))
    s = ObjectStore(p)
    caplog.set_level(logging.ERROR, logger="rbdpy.osd.store")
    for off, ln in [(2 * BS, BS), (2 * BS + 77, 1), (0, 6 * BS), (BS + 5, 2 * BS)]:
        with pytest.raises(StoreError) as e:
            s.read("a", off, ln)
        assert err(e) == errno.EIO
    out = bytearray(b"\xaa" * 3 * BS)
    with pytest.raises(StoreError):
        s.read("a", BS, 3 * BS, out)
    assert out == bytes(3 * BS)  # never hands out the bad bytes
    with pytest.raises(StoreError):
        s.sparse_read("a", 0, 6 * BS)
    assert "crc mismatch" in caplog.text and "block 2" in caplog.text
    assert s.read("a", 0, 2 * BS) == data[:2 * BS]
    assert s.read("a", 3 * BS, 3 * BS) == data[3 * BS:]
    # a partial write into the bad block refuses (nothing applied) rather than bless it ...
    with pytest.raises(StoreError) as e:
        s.apply("a", Transaction().write(2 * BS + 10, b"x"))
    assert err(e) == errno.EIO
    # ... while a whole-block overwrite repairs it
    s.apply("a", Transaction().write(2 * BS, b"r" * BS))
    assert s.read("a", 0, 6 * BS) == data[:2 * BS] + b"r" * BS + data[3 * BS:]
    s.close()


def test_checkpoint_log_compaction(tmp_path):
    p = tmp_path / "s"
    s = ObjectStore(p)
    for round_ in range(5):
        for i in range(10):
            s.apply(f"o{i}", Transaction().write(round_ * BS, bytes([round_ + i]) * BS))
        if round_ == 4:
            s.apply("o3", Transaction().delete())
        s.checkpoint()
    meta = p / "meta"
    before = meta.stat().st_size
    with s._commit_lock:
        s._meta.compact()
    assert meta.stat().st_size < before
    s.apply("o0", Transaction().setxattr("after", b"1"))
    s.checkpoint()  # appends to the compacted log
    abandon(s)
    s = ObjectStore(p)
    assert s.list_objects(None, 100)[0] == sorted(f"o{i}" for i in range(10) if i != 3)
    assert s.read("o4", 4 * BS, BS) == bytes([8]) * BS
    assert s.read("o0", 0, 5 * BS) == b"".join(bytes([r]) * BS for r in range(5))
    assert s.getxattr("o0", "after") == b"1"
    s.close()


# -- full disk --------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [False, True])
def test_enospc_in_journal(tmp_path, monkeypatch, partial):
    p = tmp_path / "s"
    s = ObjectStore(p)
    s.apply("a", Transaction().write(0, pattern(2 * BS, 1)).setxattr("k", b"v"))
    before = (s.stat("a"), s.read("a", 0, 4 * BS), s.applied_seq)
    real = os.pwritev

    def full(fd, bufs, pos):
        if fd == s._journal.fd:
            if partial:  # some bytes make it, then the disk is full
                real(fd, [memoryview(bufs[0])[:10]], pos)
                return 10
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bufs, pos)

    def refuse(fd, bufs, pos):
        if fd == s._journal.fd and pos > before_pos:
            raise OSError(errno.ENOSPC, "No space left on device")
        return full(fd, bufs, pos)

    before_pos = s._jpos
    monkeypatch.setattr(os, "pwritev", refuse if partial else full)
    for oid, t in [("a", Transaction().write(BS, b"x" * 3 * BS)),
                   ("new", Transaction().write(0, b"y" * BS)),
                   ("a", Transaction().delete())]:
        with pytest.raises(StoreError) as e:
            s.apply(oid, t)
        assert err(e) == errno.ENOSPC
    assert (s.stat("a"), s.read("a", 0, 4 * BS), s.applied_seq) == before
    assert not s.exists("new") and s._jpos == before_pos
    jfile = s._journal.segment_path(s._journal.gen)
    assert os.path.getsize(jfile) == before_pos  # the partial record is gone
    monkeypatch.setattr(os, "pwritev", real)
    s.apply("b", Transaction().write(0, b"ok"))
    abandon(s)
    s = ObjectStore(p)
    assert s.read("a", 0, 4 * BS) == before[1] and s.read("b", 0, 9) == b"ok"
    assert not s.exists("new") and s.applied_seq == before[2] + 1
    s.close()


def test_enospc_in_data_preallocation(tmp_path, monkeypatch):
    from rbdpy.osd.store import blockio

    s = ObjectStore(tmp_path / "s")
    s.apply("a", Transaction().write(0, b"a" * BS))

    def nospace(fd, mode, off, ln):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blockio, "fallocate", nospace)
    with pytest.raises(StoreError) as e:
        s.apply("a", Transaction().write(8 * BS, b"b" * BS))
    assert err(e) == errno.ENOSPC
    s.apply("a", Transaction().write(0, b"c" * BS))  # overwrite needs no new space
    assert s.stat("a").size == BS and s.read("a", 0, BS) == b"c" * BS
    monkeypatch.undo()
    s.close()


REAL_FULL_DISK = textwrap.dedent("""
    import errno, resource, signal, sys
    from rbdpy.osd.store import ObjectStore, StoreError, Transaction
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    s = ObjectStore(sys.argv[1], journal_max=1 << 30)
    n = 0
    while True:
        try:
            s.apply(f"o{n % 8}", Transaction().write((n // 8) * 8192, bytes([n % 251]) * 8192))
        except StoreError as e:
            assert e.errno == errno.ENOSPC, e
            break
        n += 1
    assert n > 50
    for i in range(n):  # still consistent and serving reads
        assert s.read(f"o{i % 8}", (i // 8) * 8192, 8192) == bytes([i % 251]) * 8192
    assert s.commit() == n
    try:
        s.apply("o0", Transaction().write(0, b"z" * 8192))
        raise AssertionError("journal should still be full")
    except StoreError as e:
        assert e.errno == errno.ENOSPC
    s.checkpoint()  # a checkpoint starts a new journal segment: room again
    s.apply("o0", Transaction().write(0, b"z" * 8192))
    n += 1
    s.close()
    print(n)
""")


def test_real_file_size_limit_is_enospc(tmp_path):
    """RLIMIT_FSIZE makes the kernel fail the journal write (EFBIG, SIGXFSZ ignored)."""
    r = subprocess.run([sys.executable, "-c", REAL_FULL_DISK, str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    n = int(r.stdout)
    s = ObjectStore(tmp_path / "s")
    assert s.applied_seq == n
    assert s.read("o0", 0, 8192) == b"z" * 8192
    for i in range(1, n - 1):
        assert s.read(f"o{i % 8}", (i // 8) * 8192, 8192) == bytes([i % 251]) * 8192
    s.close()


REAL_FULL_DATA_FILE = textwrap.dedent("""
    import errno, resource, signal, sys
    from rbdpy.osd.store import ObjectStore, StoreError, Transaction
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    s = ObjectStore(sys.argv[1], journal_max=1 << 30)
    s.apply("big", Transaction().write(0, b"a" * 4096))
    for off in (2 << 20, (1 << 20) - 2048):  # past the limit; straddling it
        try:  # small: journaled, so the data file is written only after the journal
            s.apply("big", Transaction().write(off, b"b" * 4096))
            raise AssertionError("the data file may not grow past 1 MiB")
        except StoreError as e:
            assert e.errno == errno.ENOSPC, e
    s.apply("big", Transaction().write(4096, b"c" * 4096))  # the store goes on serving
    assert s.read("big", 0, 8192) == b"a" * 4096 + b"c" * 4096
    assert s.stat("big").size == 8192
    s.commit()
    s.close()
""")


def test_a_data_file_that_may_not_grow_is_enospc_before_journaling(tmp_path):
    """The journal has room but the object's file may not grow (RLIMIT_FSIZE here; any
    filesystem limit alike): the transaction fails with ENOSPC before it is journaled, and
    the store keeps serving. (Reserving with KEEP_SIZE did not check the limit: the data
    write failed after journaling, and the store refused everything until reopened.)"""
    r = subprocess.run([sys.executable, "-c", REAL_FULL_DATA_FILE, str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    s = ObjectStore(tmp_path / "s")  # replays to the same state: the refused writes absent
    assert s.stat("big").size == 8192
    assert s.read("big", 0, 8192) == b"a" * 4096 + b"c" * 4096
    s.close()


REAL_FULL_CHECKPOINT = textwrap.dedent("""
    import errno, resource, signal, sys
    from rbdpy.osd.store import ObjectStore, StoreError, Transaction
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    s = ObjectStore(sys.argv[1], max_object_size=64 << 20)
    for i in range(40):  # metadata only: 16384 block crcs each, no data written
        s.apply(f"o{i}", Transaction().truncate(64 << 20))
    try:  # its record of these objects (66 KiB each) cannot fit under the 1 MiB limit
        s.checkpoint()
        raise AssertionError("the checkpoint log may not grow past 1 MiB")
    except StoreError as e:
        assert e.errno == errno.ENOSPC, e
    s.apply("o0", Transaction().write(0, b"x"))  # the store goes on serving
    assert s.commit() == 41
    s.abandon()
""")


def test_a_checkpoint_log_that_may_not_grow_is_enospc(tmp_path):
    """A file-size limit hit by the checkpoint log (EFBIG from the kernel, as in the other
    files) is ENOSPC like everywhere else; it was EIO. The journal keeps everything."""
    r = subprocess.run([sys.executable, "-c", REAL_FULL_CHECKPOINT, str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    s = ObjectStore(tmp_path / "s", max_object_size=64 << 20)
    assert s.applied_seq == 41 and len(s) == 40
    assert s.stat("o39").size == 64 << 20 and s.read("o0", 0, 2) == b"x\0"
    s.close()  # checkpoints now
    s = ObjectStore(tmp_path / "s", max_object_size=64 << 20)
    assert s.applied_seq == 41 and s.read("o0", 0, 2) == b"x\0"
    s.close()


@pytest.mark.parametrize("site", ["journal segment", "checkpoint log"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO],
                         ids=errno.errorcode.get)
def test_checkpoint_maps_errors_like_every_write(tmp_path, monkeypatch, site, code):
    """A checkpoint's writes (its new journal segment's header, its record in the log) map
    errors as the data and journal writes do: ENOSPC for any "no space" (a quota's EDQUOT
    cannot be produced here without quotas: injected as a real errno where the write is
    made), EIO for the rest. The checkpoint said EIO for EDQUOT and EFBIG."""
    import struct

    from rbdpy.osd.store import format as fmt

    s = ObjectStore(tmp_path / "s")
    s.apply("a", Transaction().write(0, b"a" * BS))
    magic = struct.pack("<I", fmt.S_MAGIC if site == "journal segment" else fmt.M_MAGIC)
    real = os.pwritev

    def failing(fd, bufs, pos):
        if bytes(memoryview(bufs[0])[:4]) == magic:
            raise OSError(code, os.strerror(code))
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "pwritev", failing)
    with pytest.raises(StoreError) as e:
        s.checkpoint()
    assert err(e) == (errno.EIO if code == errno.EIO else errno.ENOSPC)
    monkeypatch.undo()
    s.apply("a", Transaction().write(BS, b"b" * BS))
    s.checkpoint()
    s.close()
    s = ObjectStore(tmp_path / "s")
    assert s.read("a", 0, 3 * BS) == b"a" * BS + b"b" * BS
    s.close()


# -- group commit and threads -----------------------------------------------------------------


def test_group_commit_from_another_thread(tmp_path):
    p = tmp_path / "s"
    s = ObjectStore(p, journal_max=256 << 10)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def committer():
        try:
            while not stop.is_set():
                seen.append(s.commit())
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=committer)
    t.start()
    want: dict[str, bytearray] = {}
    rnd = random.Random(5)
    try:
        for i in range(3000):
            oid = f"o{i % 5}"
            r = rnd.random()
            if r < 0.02 and oid in want:
                s.apply(oid, Transaction().delete())
                del want[oid]
                continue
            w = want.setdefault(oid, bytearray())
            if r < 0.05:
                size = rnd.randrange(64 * BS)
                s.apply(oid, Transaction().truncate(size))
                del w[size:]
                w.extend(bytes(size - len(w)))
                continue
            off = (i * 7919 % 64) * BS
            s.apply(oid, Transaction().write(off, bytes([i % 256]) * BS))
            w.extend(bytes(max(0, off + BS - len(w))))
            w[off:off + BS] = bytes([i % 256]) * BS
            if i % 500 == 0:
                assert s.read(oid, 0, 1 << 20) == w
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert seen == sorted(seen) and len(seen) > 1
    final = s.commit()
    assert final == 3000 == s.committed_seq()
    abandon(s)
    s = ObjectStore(p)
    assert s.list_objects(None, 10)[0] == sorted(want)
    for oid, w in want.items():
        assert s.read(oid, 0, 1 << 20) == w
    s.close()


# -- model-based property test ----------------------------------------------------------------

MBS = 512
MMAX = 8 * MBS

names = st.sampled_from(["x", "y", "z"])
small = st.one_of(st.integers(0, MMAX + MBS), st.integers(0, 9).map(lambda k: k * MBS))
payload = st.one_of(st.binary(min_size=0, max_size=3 * MBS),
                    st.integers(1, 4).flatmap(lambda k: st.binary(min_size=k * MBS,
                                                                  max_size=k * MBS)))
op_st = st.one_of(
    st.tuples(st.just("write"), small, payload),
    st.tuples(st.just("writefull"), payload),
    st.tuples(st.just("zero"), small, st.integers(0, 4 * MBS)),
    st.tuples(st.just("truncate"), small),
    st.tuples(st.just("create"), st.booleans()),
    st.tuples(st.just("delete")),
    st.tuples(st.just("setxattr"), names, st.binary(max_size=8)),
    st.tuples(st.just("rmxattr"), names),
    st.tuples(st.just("appendxattr"), names, st.binary(max_size=5), st.integers(0, 12)),
    st.tuples(st.just("cmpxattr"), names, st.sampled_from(list(CmpOp)),
              st.one_of(st.binary(max_size=3), st.integers(0, 20))),
    st.tuples(st.just("assert_exists")),
    st.tuples(st.just("assert_version"), st.integers(0, 3)),
)
cmd_st = st.one_of(
    st.tuples(st.just("txn"), st.sampled_from(["a", "b", "c"]), st.lists(op_st, max_size=4)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("crash")),
)


class ModelStore:
    """What the store should do, written as plainly as possible."""

    def __init__(self) -> None:
        self.objs: dict[str, tuple[bytearray, dict[str, bytes], int]] = {}
        self.seq = 0

    def apply(self, oid: str, ops: list[tuple]) -> int | None:
        """Returns the errno of a failure, or None; applies nothing on failure."""
        cur = self.objs.get(oid)
        pre_version = cur[2] if cur else 0
        data = bytearray(cur[0]) if cur else None
        xattrs = dict(cur[1]) if cur else None
        mutated = False
        for op in ops:
            k = op[0]
            if k == "assert_exists":
                if data is None:
                    return errno.ENOENT
                continue
            if k == "assert_version":
                if pre_version != op[1]:
                    return errno.ECANCELED
                continue
            if k == "cmpxattr":
                if data is None:
                    return errno.ENOENT
                _, name, cmp, val = op
                have = xattrs.get(name)
                if isinstance(val, int):
                    try:
                        h = int(have.decode("ascii")) if have else 0
                    except (UnicodeDecodeError, ValueError):
                        return errno.EINVAL
                else:
                    h = have if have is not None else b""
                ok = {CmpOp.EQ: h == val, CmpOp.NE: h != val, CmpOp.GT: h > val,
                      CmpOp.GTE: h >= val, CmpOp.LT: h < val, CmpOp.LTE: h <= val}[cmp]
                if not ok:
                    return errno.ECANCELED
                continue
            mutated = True
            if k == "create":
                if data is not None and op[1]:
                    return errno.EEXIST
            elif k in ("write", "writefull"):
                off, b = (op[1], op[2]) if k == "write" else (0, op[1])
                if off + len(b) > MMAX:
                    return errno.EFBIG
                if k == "writefull":
                    data = bytearray(b)
                    xattrs = xattrs if xattrs is not None else {}
                    continue
                if data is None:
                    data, xattrs = bytearray(), {}
                if b:
                    if len(data) < off + len(b):
                        data.extend(bytes(off + len(b) - len(data)))
                    data[off:off + len(b)] = b
                continue
            elif k == "zero":
                if op[1] + op[2] > MMAX:
                    return errno.EFBIG
                if data is not None:
                    end = min(op[1] + op[2], len(data))
                    if op[1] < end:
                        data[op[1]:end] = bytes(end - op[1])
                continue
            elif k == "truncate":
                if op[1] > MMAX:
                    return errno.EFBIG
                if data is None:
                    data, xattrs = bytearray(), {}
                if op[1] < len(data):
                    del data[op[1]:]
                else:
                    data.extend(bytes(op[1] - len(data)))
                continue
            elif k == "delete":
                if data is None:
                    return errno.ENOENT
                data = xattrs = None
                continue
            elif k == "setxattr":
                if data is None:
                    data, xattrs = bytearray(), {}
                xattrs[op[1]] = op[2]
                continue
            elif k == "appendxattr":
                if len(op[2]) > op[3]:
                    return errno.EINVAL
                if data is None:
                    data, xattrs = bytearray(), {}
                old = xattrs.pop(op[1], b"")  # moves it last, whatever it keeps
                xattrs[op[1]] = (old + op[2])[-op[3]:] if op[3] else b""
                continue
            elif k == "rmxattr":
                if data is None:
                    return errno.ENOENT
                if op[1] not in xattrs:
                    return errno.ENODATA
                del xattrs[op[1]]
                continue
            if data is None:
                data, xattrs = bytearray(), {}
        if mutated:
            self.seq += 1
            if data is None:
                self.objs.pop(oid, None)
            else:
                self.objs[oid] = (data, xattrs, self.seq)
        return None


def build(ops: list[tuple]) -> Transaction:
    t = Transaction()
    for op in ops:
        getattr(t, op[0])(*op[1:])
    return t


def check_same(s: ObjectStore, m: ModelStore) -> None:
    assert s.list_objects(None, 100) == (sorted(m.objs), None)
    assert s.applied_seq == m.seq
    for oid, (data, xattrs, version) in m.objs.items():
        stat = s.stat(oid)
        assert (stat.size, stat.version) == (len(data), version)
        assert list(s.getxattrs(oid).items()) == list(xattrs.items())  # order too
        assert s.read(oid, 0, MMAX * 2) == data
        for off in (0, 1, MBS - 1, MBS + 3, 3 * MBS):
            buf = bytearray(MBS + 7)
            n = s.read(oid, off, len(buf), buf)
            assert buf[:n] == data[off:off + len(buf)]
        ext, blob = s.sparse_read(oid, 0, MMAX)
        pos = 0
        rebuilt = bytearray(len(data))
        last = -1
        for o, ln in ext:
            assert o > last and ln > 0 and o + ln <= len(data)
            rebuilt[o:o + ln] = blob[pos:pos + ln]
            pos += ln
            last = o + ln
        assert pos == len(blob) and rebuilt == data  # holes are zeros


@settings(max_examples=int(os.environ.get("RBDPY_MODEL_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmds=st.lists(cmd_st, min_size=1, max_size=40))
def test_model(tmp_path_factory, cmds):
    p = tmp_path_factory.mktemp("model") / "s"
    kw = dict(max_object_size=MMAX, block_size=MBS, journal_max=4 * MBS,
              direct_write_min=2 * MBS, data_write_piece=2 * MBS)
    s = ObjectStore(p, **kw)
    m = ModelStore()
    try:
        for cmd in cmds:
            if cmd[0] == "txn":
                _, oid, ops = cmd
                want = m.apply(oid, ops)
                try:
                    r = s.apply(oid, build(ops))
                except StoreError as e:
                    assert e.errno == want, (ops, e)
                else:
                    assert want is None, (ops, want)
                    assert r.seq == m.seq
                    if oid in m.objs:
                        assert r.version == m.objs[oid][2]
                    data = m.objs.get(oid, (b"",))[0]
                    if oid in m.objs:
                        assert s.read(oid, 0, MMAX) == data
            elif cmd[0] == "commit":
                assert s.commit() == m.seq
            elif cmd[0] == "reopen":
                s.close()
                s = ObjectStore(p, **kw)
            else:
                abandon(s)
                s = ObjectStore(p, **kw)
            if cmd[0] != "txn":
                check_same(s, m)
        check_same(s, m)
    finally:
        s.close()


# -- real crashes -----------------------------------------------------------------------------


def run_child_and_kill(path: Path, seed: int, delay: float) -> tuple[int, int, str]:
    """Run the workload, SIGKILL it ``delay`` s after it opened the store (or while it opens,
    if negative); return (seq it opened at, last committed seq it printed, stderr)."""
    proc = subprocess.Popen([sys.executable, str(HERE / "store_crash_child.py"), str(path),
                             str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if delay < 0:
            time.sleep(-delay)
        else:
            line = proc.stdout.readline()
            assert line.startswith(b"R "), (line, proc.stderr.read())
            time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        out, errout = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert alive or delay < 0, errout.decode()
    text = (b"" if delay < 0 else line) + out
    committed = 0
    opened = -1
    for ln in text.decode().splitlines():
        if ln.startswith("C "):
            committed = max(committed, int(ln.split()[1]))
        elif ln.startswith("R "):
            opened = int(ln.split()[1])
    return opened, committed, errout.decode()


def test_kill9_crash_consistency(tmp_path):
    seed = int(os.environ.get("RBDPY_CRASH_SEED", "20240611"))
    path = tmp_path / "crash"
    model = crash_child.Model(seed)
    rnd = random.Random(seed)
    deadline = time.monotonic() + 25
    iterations = 0
    committed_total = 0
    while iterations < 12 and (iterations < 6 or time.monotonic() < deadline):
        delay = rnd.choice([rnd.uniform(0.01, 0.3), rnd.uniform(0.3, 1.2), -rnd.uniform(0.1,
                                                                                         0.4)])
        opened, committed, errout = run_child_and_kill(path, seed, delay)
        assert "Traceback" not in errout, errout
        s = ObjectStore(path, max_object_size=crash_child.MAX_OBJ,
                        journal_max=crash_child.JOURNAL_MAX)
        try:
            m = s.applied_seq
            assert m >= committed, (m, committed)  # nothing committed is lost
            assert m >= model.seq  # recovery never goes backwards
            if opened >= 0:
                assert m >= opened
            model.advance(m)  # the state must be exactly the prefix 1..m
            assert s.list_objects(None, 100)[0] == sorted(model.objs)
            for oid in crash_child.OIDS:
                if oid not in model.objs:
                    continue
                want = model.objs[oid]
                assert s.stat(oid).size == len(want)
                assert s.stat(oid).version == model.versions[oid]
                got = s.read(oid, 0, crash_child.MAX_OBJ)
                if got != want:
                    bad = next(i for i in range(len(want)) if got[i] != want[i]) // BS
                    pytest.fail(f"{oid} block {bad} differs after recovery to seq {m}: "
                                f"got {got[bad * BS:bad * BS + 24].hex()} "
                                f"want {want[bad * BS:bad * BS + 24].hex()}")
                assert s.getxattrs(oid) == model.xattrs[oid]
            committed_total = max(committed_total, committed)
        finally:
            abandon(s)  # leave it exactly as found for the next child
        iterations += 1
    assert model.seq > 200 and committed_total > 0
