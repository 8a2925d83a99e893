"""The OSD daemon as a real process, driven over loopback by the objecter (and by hand)."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import pytest
import trio

from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.msgr.payload import BioChain
from rbdpy.proto import ops as O
from rbdpy.proto import osdmsg as M
from rbdpy.testing import connected
from tests.procs import stop_pid

POOL = 1
BS = 4096


def client(port: int, timeout: float = 30, *, client_id: int | None = None):
    return connected(port, timeout, client_id=client_id)


async def read(obj: Objecter, oid: str, off: int, n: int) -> bytes:
    r = await obj.submit(POOL, oid, [O.Read(off, n)], write=False)
    return b"".join(bytes(s) for s in r.results[0].out or [])


async def expect_err(err: int, coro) -> None:
    with pytest.raises(OSDError) as ei:
        await coro
    assert ei.value.errno == err, ei.value


# ---- every op -------------------------------------------------------------------------------


async def test_every_op(osd) -> None:
    port = osd.port
    async with client(port) as obj:
        s = POOL
        # create / exclusive create
        r = await obj.submit(s, "o", [O.Create(False)], write=True, wait_commit=True)
        assert r.result == 0 and r.flags & O.FLAG_COMMIT and r.version > 0
        await obj.submit(s, "o", [O.Create(False)], write=True)  # non-exclusive: fine
        await expect_err(errno.EEXIST, obj.submit(s, "o", [O.Create(True)], write=True))
        # one vector creating a new object exclusively, writing it and setting xattrs
        buf = bytearray(os.urandom(20000))
        r = await obj.submit(s, "v", [O.Create(True), O.Write(10, memoryview(buf)[:9000]),
                                      O.SetXattr("a", b"1"), O.SetXattr("b", b"xyz")],
                             write=True, wait_commit=True)
        assert r.result == 0 and r.flags & O.FLAG_COMMIT
        # mixed read and write vectors
        r = await obj.submit(s, "v", [O.Stat(), O.GetXattr("b"), O.GetXattrs(),
                                      O.SparseRead(0, 1 << 20)], write=False)
        st, xb, xs, (extents, data) = (x.out for x in r.results)
        assert st.size == 9010 and xb == b"xyz" and xs == {"a": b"1", "b": b"xyz"}
        assert sum(n for _o, n in extents) == sum(len(d) for d in data) >= 9000
        await obj.submit(s, "v", [O.Zero(100, 50), O.Truncate(5000), O.RmXattr("a")],
                         write=True)
        r = await obj.submit(s, "v", [O.Read(0, 6000), O.GetXattrs()], write=False)
        got = b"".join(r.results[0].out)
        assert len(got) == 5000 and got[110:150] == bytes(40)
        assert got[:100] == bytes(10) + bytes(buf[:90]) and r.results[1].out == {"b": b"xyz"}
        # write (unaligned, from a slice of a bigger buffer) and read into the reader's buffer
        src = bytearray(os.urandom(3 * BS))
        await obj.submit(s, "o", [O.Write(1000, memoryview(src)[5:9005])], write=True)
        dest = bytearray(9000)
        r = await obj.submit(s, "o", [O.Read(1000, 9000)], write=False,
                             read_into=[memoryview(dest)])
        assert dest == src[5:9005] and r.results[0].out[0].obj is dest
        assert await read(obj, "o", 0, 1000) == bytes(1000)
        assert await read(obj, "o", 9990, 100) == bytes(src[8995:9005])  # short at EOF
        # stat
        r = await obj.submit(s, "o", [O.Stat()], write=False)
        st = r.results[0].out
        assert st.size == 10000 and st.version == r.version and st.mtime > 0
        # xattrs: set, get, getall, rm, missing
        await obj.submit(s, "o", [O.SetXattr("a", b"1"), O.SetXattr("n", b"41"),
                                  O.SetXattr("e", b"")], write=True)
        r = await obj.submit(s, "o", [O.GetXattr("a"), O.GetXattr("e"), O.GetXattrs()],
                             write=False)
        assert [x.out for x in r.results] == [b"1", b"", {"a": b"1", "e": b"",
                                                          "n": b"41"}]
        await obj.submit(s, "o", [O.RmXattr("e")], write=True)
        await expect_err(errno.ENODATA, obj.submit(s, "o", [O.GetXattr("e")], write=False))
        await expect_err(errno.EINVAL, obj.submit(s, "o", [O.SetXattr("_x", b"")],
                                                  write=True))
        # guards that hold (bytes; u64 against a decimal xattr) in read and write vectors
        await obj.submit(s, "o", [O.CmpXattr("a", 1, O.CMP_STRING, b"1"),
                                  O.CmpXattr("n", 3, O.CMP_U64, 40),
                                  O.CmpXattr("n", 6, O.CMP_U64, 41)], write=False)
        await obj.submit(s, "o", [O.CmpXattr("a", 2, O.CMP_STRING, b"2"),
                                  O.SetXattr("a", b"2")], write=True)
        r = await obj.submit(s, "o", [O.GetXattr("a")], write=False)
        assert r.results[0].out == b"2"
        # zero (never grows), truncate (shrink and grow), sparse read
        await obj.submit(s, "o", [O.Zero(2000, 500), O.Zero(9000, 50000)], write=True)
        got = await read(obj, "o", 0, 20000)
        model = bytearray(10000)
        model[1000:10000] = src[5:9005]
        model[2000:2500] = bytes(500)
        model[9000:] = bytes(1000)
        assert got == model
        await obj.submit(s, "o", [O.Truncate(3000)], write=True)
        await obj.submit(s, "o", [O.Truncate(8 * BS)], write=True)
        got = await read(obj, "o", 0, 1 << 20)
        assert got == bytes(model[:3000]) + bytes(8 * BS - 3000)
        await obj.submit(s, "sp", [O.Write(0, b"a" * BS), O.Write(1 << 20, b"b" * 10)],
                         write=True)
        r = await obj.submit(s, "sp", [O.SparseRead(0, 2 << 20)], write=False)
        extents, data = r.results[0].out
        joined = b"".join(bytes(d) for d in data)
        assert sum(n for _o, n in extents) == len(joined)
        assert extents[0][0] == 0 and extents[-1][0] + extents[-1][1] == (1 << 20) + 10
        assert all(o + n <= (1 << 20) or o >= (1 << 20) - BS for o, n in extents[:-1])
        assert joined.startswith(b"a" * BS) and joined.endswith(b"b" * 10)
        # writefull replaces data (and size)
        await obj.submit(s, "o", [O.WriteFull(b"full")], write=True)
        assert await read(obj, "o", 0, 100) == b"full"
        # version and existence guards
        r = await obj.submit(s, "o", [O.Stat()], write=False)
        v = r.results[0].out.version
        assert r.results[0].out.size == 4
        await obj.submit(s, "o", [O.AssertVersion(v), O.AssertExists()], write=False)
        await expect_err(errno.ERANGE, obj.submit(s, "o", [O.AssertVersion(v + 1)],
                                                  write=False))
        await expect_err(errno.ENOENT, obj.submit(s, "none", [O.AssertExists()],
                                                  write=False))
        # class calls: lock (write) and rbd directory (write + read)
        lk = {"name": "l", "owner": "me", "cookie": "c"}
        await obj.submit(s, "o", [O.Call("lock", "lock", json.dumps(lk).encode())],
                         write=True)
        for other in ({**lk, "owner": "other"}, {**lk, "owner": "other", "cookie": "d"}):
            await expect_err(errno.EBUSY, obj.submit(s, "o", [O.Call(
                "lock", "lock", json.dumps(other).encode())], write=True))

        def call(m: str, **a: str) -> O.Call:
            return O.Call("lock", m, json.dumps(a).encode())

        async def holders() -> dict:
            r = await obj.submit(s, "o", [call("get_info", name="l")], write=False)
            return json.loads(r.results[0].out)["holders"]

        # renew rewrites the holder's description; another cookie's renew finds nothing
        await obj.submit(s, "o", [call("renew", **lk, description="lease 2")], write=True)
        assert (await holders())["me/c"]["desc"] == "lease 2"
        await expect_err(errno.ENOENT, obj.submit(s, "o", [call(
            "renew", **{**lk, "cookie": "x"}, description="no")], write=True))
        # a break naming a holder that is not the holder changes nothing; break + lock of
        # the holder seen is one atomic take-over
        other = {**lk, "owner": "other"}
        await expect_err(errno.ENOENT, obj.submit(s, "o", [
            call("break_lock", name="l", owner="me", cookie="x"), call("lock", **other)],
            write=True))
        assert list(await holders()) == ["me/c"]
        await obj.submit(s, "o", [call("break_lock", name="l", owner="me", cookie="c"),
                                  call("lock", **other)], write=True)
        assert list(await holders()) == ["other/c"]
        await expect_err(errno.ENOENT, obj.submit(s, "o", [call("renew", **lk)], write=True))
        r = await obj.submit(s, "dir", [O.Call("rbd", "dir_add", json.dumps(
            {"name": "img", "id": "abc"}).encode())], write=True)
        assert r.results[0].out == b""
        r = await obj.submit(s, "dir", [O.Call("rbd", "dir_list", b"")], write=False)
        assert json.loads(r.results[0].out) == {"img": "abc"}
        await expect_err(errno.EOPNOTSUPP, obj.submit(s, "o", [O.Call("nope", "m", b"")],
                                                      write=False))
        # listing pages through the pool
        for i in range(5):
            await obj.submit(s, f"p{i}", [O.Write(0, b"x")], write=True)
        names: list[str] = []
        marker = ""
        while True:
            r = await obj.submit(s, "", [O.ListObjects(marker, 3)], write=False)
            page, nxt = r.results[0].out
            assert len(page) <= 3
            names += page
            if nxt is None:
                break
            marker = nxt
        assert names == sorted(["o", "v", "sp", "dir", "p0", "p1", "p2", "p3", "p4"])
        # delete
        await obj.submit(s, "o", [O.Delete()], write=True)
        await expect_err(errno.ENOENT, obj.submit(s, "o", [O.Stat()], write=False))
        await expect_err(errno.ENOENT, obj.submit(s, "o", [O.Read(0, 1)], write=False))
        await expect_err(errno.ENOENT, obj.submit(s, "o", [O.Delete()], write=True))
        for off in (40 << 20, 64 << 20):  # past the 32 MiB object size limit
            await expect_err(errno.EFBIG, obj.submit(s, "big", [O.Write(off, b"x")],
                                                     write=True))
        await obj.flush()


async def test_failing_guard_leaves_the_whole_vector_unapplied(osd) -> None:
    port = osd.port
    async with client(port) as obj:
        await obj.submit(POOL, "g", [O.Write(0, b"before" * 1000), O.SetXattr("k", b"v")],
                         write=True)
        r = await obj.submit(POOL, "g", [O.Stat()], write=False)
        st0 = r.results[0].out
        rest = [O.Write(0, b"AFTER!" * 2000), O.SetXattr("k2", b"x"), O.RmXattr("k"),
                O.Truncate(10), O.Zero(0, 100), O.Call("rbd", "dir_add", json.dumps(
                    {"name": "n", "id": "i"}).encode())]
        for pos in (0, 1, 3, len(rest)):  # first, after the write, in the middle, last
            vec = [*rest[:pos], O.CmpXattr("k", 1, O.CMP_STRING, b"no"), *rest[pos:]]
            await expect_err(errno.ECANCELED, obj.submit(POOL, "g", vec, write=True))
            vec = [*rest[:pos], O.AssertVersion(st0.version + 7), *rest[pos:]]
            await expect_err(errno.ERANGE, obj.submit(POOL, "g", vec, write=True))
        r = await obj.submit(POOL, "g", [O.Read(0, 1 << 20), O.GetXattrs(), O.Stat()],
                             write=False)
        assert b"".join(r.results[0].out) == b"before" * 1000
        assert r.results[1].out == {"k": b"v"}
        assert r.results[2].out.version == st0.version and r.results[2].out.size == 6000
        # the same vector with a guard that holds applies all of it
        await obj.submit(POOL, "g", [O.CmpXattr("k", 1, O.CMP_STRING, b"v"), *rest],
                         write=True)
        r = await obj.submit(POOL, "g", [O.Read(0, 100), O.GetXattrs()], write=False)
        assert b"".join(r.results[0].out) == bytes(10)
        assert set(r.results[1].out) == {"k2", "name.n"}


# ---- crashes --------------------------------------------------------------------------------


def stamp(wid: int, objno: int, blk: int) -> bytes:
    """A 4 KiB block that names the write, object and block it belongs to."""
    return struct.pack("<QII", wid, objno, blk) * (BS // 16)


def parse_block(raw: bytes, objno: int, blk: int) -> int:
    """The write id a block came from (0 = never written); fails on torn/foreign data."""
    if raw == bytes(BS):
        return 0
    wid = struct.unpack_from("<Q", raw)[0]
    assert raw == stamp(wid, objno, blk), f"torn or foreign block {objno}/{blk}"
    return wid


class CrashModel:
    """What was written where (write ids) and what was flushed; checks a recovered object.

    Two writers run at once: bursts of concurrent writes over the first ``nobj`` objects of
    ``nblk`` blocks, and one-at-a-time writes (each acked before the next) over one more
    object of ``seq_nblk`` blocks. Each flushes after every burst."""

    def __init__(self, nobj: int, nblk: int, seq_nblk: int = 256) -> None:
        self.nobj, self.nblk, self.seq = nobj, nblk, nobj
        self.nblks = [nblk] * nobj + [seq_nblk]
        self.oids = [f"rbd_data.k9.{i:016x}" for i in range(nobj + 1)]
        self.written: dict[tuple[int, int], set[int]] = {}
        self.flushed: dict[tuple[int, int], int] = {}
        self.latest: dict[tuple[int, int], int] = {}
        self.wid = 0
        self.kills_with_inflight = 0

    async def write(self, obj: Objecter, o: int, b: int) -> None:
        self.wid += 1  # wid order == tid order: no checkpoint before submit sends
        wid = self.wid
        self.written.setdefault((o, b), set()).add(wid)
        self.latest[(o, b)] = wid
        await obj.submit(POOL, self.oids[o], [O.Write(b * BS, stamp(wid, o, b))], write=True)

    async def stream(self, obj: Objecter, rnd: random.Random, flushed_enough: trio.Event,
                     kill_after: int) -> None:
        """Bursts of concurrent block writes, each burst followed by a flush."""
        nflush = 0
        while True:
            async with trio.open_nursery() as n:
                for _ in range(rnd.randint(8, 48)):
                    n.start_soon(self.write, obj, rnd.randrange(self.nobj),
                                 rnd.randrange(self.nblk))
            await self.flush(obj)
            nflush += 1
            if nflush >= kill_after:
                flushed_enough.set()

    async def sequential(self, obj: Objecter, rnd: random.Random,
                         flushed_enough: trio.Event, kill_after: int) -> None:
        """Block writes one at a time (acked, not committed), a flush after every 5-40."""
        nflush = 0
        while True:
            for _ in range(rnd.randint(5, 40)):
                await self.write(obj, self.seq, rnd.randrange(self.nblks[self.seq]))
            await self.flush(obj)
            nflush += 1
            if nflush >= kill_after:
                flushed_enough.set()

    async def flush(self, obj: Objecter) -> None:
        # every write in latest has its tid (see write), so the flush covers it
        snap = dict(self.latest)
        await obj.flush()
        self.flushed.update(snap)

    async def crash_round(self, port: int, h, seed: int) -> None:
        rnd, seq_rnd = random.Random(seed), random.Random(seed + 1000)
        flushed_enough = [trio.Event(), trio.Event()]
        self.latest = {}  # writes cut off by the last kill were never acked: not flushed
        async with client(port) as obj, trio.open_nursery() as n:
            n.start_soon(self.stream, obj, rnd, flushed_enough[0], rnd.randint(2, 6))
            n.start_soon(self.sequential, obj, seq_rnd, flushed_enough[1],
                         seq_rnd.randint(1, 3))
            for ev in flushed_enough:
                await ev.wait()
            while not obj.uncommitted:  # kill with writes in flight
                await trio.sleep(0)
            self.kills_with_inflight += 1
            h.kill9()
            n.cancel_scope.cancel()

    async def check(self, obj: Objecter) -> None:
        for o, oid in enumerate(self.oids):
            nblk = self.nblks[o]
            try:
                data = await read(obj, oid, 0, nblk * BS)
            except OSDError as e:
                assert e.errno == errno.ENOENT and not any(k[0] == o for k in self.flushed)
                continue
            data = data.ljust(nblk * BS, b"\0")
            for b in range(nblk):
                w = parse_block(data[b * BS : (b + 1) * BS], o, b)
                if (o, b) in self.flushed:  # the flushed version or a later one
                    assert w >= self.flushed[(o, b)] and w in self.written[(o, b)], (o, b, w)
                else:
                    assert w == 0 or w in self.written[(o, b)]


@pytest.fixture(params=["aio", "thread"])
def osd_either_sync(request, osd_process, monkeypatch):
    """An OSD whose group commits are synced through Linux AIO, or in a worker thread (its
    fallback); the log says which it uses."""
    if request.param == "thread":
        monkeypatch.setenv("RBDPY_OSD_NO_AIO", "1")
    o = osd_process()
    o.start()
    if request.param == "aio" and "commits=aio" not in o.log_text():
        pytest.skip(f"no Linux AIO here: {o.log_text()[-500:]}")
    assert f"commits={request.param}" in o.log_text(), o.log_text()[-2000:]
    return o


async def test_kill9_keeps_flushed_writes_and_tears_nothing(osd_either_sync) -> None:
    port, h = osd_either_sync.port, osd_either_sync
    model = CrashModel(3, 48)
    for seed in range(3):
        await model.crash_round(port, h, seed)
        h.start()
        async with client(port) as obj:
            await model.check(obj)
    assert model.kills_with_inflight == 3
    assert sum(k[0] < model.nobj for k in model.flushed) > model.nobj * model.nblk // 2
    assert any(k[0] == model.seq for k in model.flushed), "no one-at-a-time write flushed"


async def test_flipped_byte_is_eio_and_other_objects_still_served(osd) -> None:
    port, data, h = osd.port, osd.data, osd
    blocks = [bytes([65 + i]) * BS for i in range(3)]
    async with client(port) as obj:
        await obj.submit(POOL, "victim", [O.Write(0, b"".join(blocks))], write=True)
        await obj.submit(POOL, "other", [O.Write(0, b"B" * 100)], write=True)
        await obj.flush()
    assert h.stop() == 0
    files = [p for p in (data / "store" / "objects").rglob("*")
             if p.is_file() and "victim" in p.name]
    assert len(files) == 1
    with open(files[0], "r+b") as f:
        f.seek(BS + 123)
        b = f.read(1)
        f.seek(BS + 123)
        f.write(bytes([b[0] ^ 0x10]))
    h.start()
    async with client(port) as obj:
        await expect_err(errno.EIO, obj.submit(POOL, "victim", [O.Read(BS, BS)], write=False))
        await expect_err(errno.EIO, obj.submit(POOL, "victim", [O.Read(0, 3 * BS)],
                                               write=False))
        await expect_err(errno.EIO, obj.submit(POOL, "victim", [O.Read(BS + 4000, 10)],
                                               write=False))
        assert await read(obj, "victim", 0, BS) == blocks[0]
        assert await read(obj, "victim", 2 * BS, BS) == blocks[2]
        assert await read(obj, "other", 0, 100) == b"B" * 100
        await obj.submit(POOL, "new", [O.Write(0, b"n")], write=True, wait_commit=True)
        assert await read(obj, "new", 0, 1) == b"n"
    assert h.running


async def test_sigterm_commits_and_exits_zero(osd) -> None:
    port, h = osd.port, osd
    payload = {i: os.urandom(BS + i) for i in range(40)}
    async with client(port) as obj:
        for i, d in payload.items():  # acked (applied), no flush
            await obj.submit(POOL, f"t{i}", [O.Write(i, d)], write=True)
        assert h.stop() == 0
    assert "osd stopped cleanly" in h.log_text()
    h.start()
    async with client(port) as obj:
        for i, d in payload.items():
            assert await read(obj, f"t{i}", 0, 1 << 20) == bytes(i) + d


# ---- options --------------------------------------------------------------------------------


def test_options_come_from_the_command_line_over_the_environment(tmp_path, monkeypatch) -> None:
    """``rbdpy osd`` builds the OSD's options: its flags win over RBDPY_OSD_* (which the
    tests set for the OSDs they start), and a bad value is one line, not a traceback."""
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "0.5")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, "-m", "rbdpy.cli", "--log-level", "info", "osd", "--id", "0",
            "--data", str(tmp_path / "osd"), "--listen", f"127.0.0.1:{port}"]
    for flags, want in ((["--no-aio"], "commits=thread commit_delay=0.5"),
                        (["--no-aio", "--commit-delay", "0.25"],
                         "commits=thread commit_delay=0.25")):
        with subprocess.Popen([*base, *flags], stderr=subprocess.PIPE, text=True) as p:
            try:
                line = ""
                while "osd listening" not in line and p.poll() is None:
                    line = p.stderr.readline()
                assert want in line, line
            finally:
                stop_pid(p.pid)
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "soon")
    for flags, err in (([], "RBDPY_OSD_COMMIT_DELAY='soon'"),
                       (["--commit-delay", "-1"], "commit delay must be >= 0")):
        r = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.startswith("rbdpy: ") and err in r.stderr, r


# ---- malformed requests ---------------------------------------------------------------------


async def test_malformed_requests_get_error_replies(osd) -> None:
    port, h = osd.port, osd
    replies: dict[int, Message] = {}
    arrived = trio.Event()

    async def on_msg(peer: Peer, msg: Message) -> None:
        nonlocal arrived
        replies[msg.tid] = msg
        arrived.set()
        arrived = trio.Event()

    me = EntityName(ENTITY_CLIENT, 777)
    kw = dict(client=me, incarnation=1, epoch=1, pool=POOL, flags=O.FLAG_READ)
    good = M.encode_request([O.Read(0, 1)], tid=1, oid="x", **kw)
    unknown = bytearray(good.front)
    struct.pack_into("<H", unknown, O._REQ_HEAD.size + 4 + 1 + 8 + 4 + 2, 999)
    huge = M.encode_request([O.Stat()], tid=1, oid="h" * (1 << 20), **kw)
    w = M.encode_request([O.Write(0, b"abcdef")], tid=1, oid="x", **kw)
    too_many = bytearray(good.front)
    struct.pack_into("<H", too_many, O._REQ_HEAD.size + 4 + 1 + 8 + 4, O.MAX_OPS + 1)
    unknown_byte = bytearray(good.front)
    unknown_byte[-(2 + 2 + 16 + 4 + 1)] = 250  # the opcode of the only op, from the end
    cases = {
        101: (Message(type=O.MSG_OSD_OP, front=b"\x01\x02garbage"), errno.EBADMSG),
        102: (Message(type=O.MSG_OSD_OP, front=bytes(unknown)), errno.EOPNOTSUPP),
        103: (Message(type=O.MSG_OSD_OP, front=huge.front), errno.EINVAL),
        104: (Message(type=O.MSG_OSD_OP, front=bytes(good.front[:30])), errno.EBADMSG),
        105: (Message(type=O.MSG_OSD_OP, front=w.front, data=BioChain([b"abc"])),
              errno.EBADMSG),  # 3 data bytes where the op says 6
        106: (Message(type=O.MSG_OSD_OP, front=bytes(too_many)), errno.EINVAL),
        107: (Message(type=O.MSG_OSD_OP, front=random.Random(1).randbytes(3000)), None),
        108: (Message(type=O.MSG_OSD_OP, front=bytes(good.front[:20])), errno.EBADMSG),
        109: (Message(type=O.MSG_OSD_OP, front=bytes(unknown_byte)), errno.EOPNOTSUPP),
    }
    async with Messenger(me, SimpleDispatcher(on_msg)) as m:
        with trio.fail_after(30):
            peer = m.connect(("127.0.0.1", port))
            await peer.connected.wait()  # the messenger handshake is done
            for tid, (msg, _err) in cases.items():
                msg.tid = tid
                peer.send(msg)
            while not set(cases) <= set(replies):
                await arrived.wait()
            for tid, (_msg, err) in cases.items():
                rep = M.decode_reply(replies[tid], [])
                assert rep.flags & O.FLAG_ACK and rep.flags & O.FLAG_COMMIT
                if err is None:
                    assert rep.result < 0
                else:
                    assert rep.result == -err, (tid, rep.result)
            # the same session still works for a well-formed request
            ok = M.encode_request([O.Write(0, b"still")], tid=200, oid="alive",
                                  **{**kw, "flags": O.FLAG_WRITE | O.FLAG_ACK})
            peer.send(ok)
            while 200 not in replies:
                await arrived.wait()
            assert M.decode_reply(replies[200], [O.Write(0, b"")]).result == 0
        m.shutdown()
    assert h.running
    async with client(port) as obj:  # and another client is served
        assert await read(obj, "alive", 0, 5) == b"still"


async def test_a_malformed_class_call_is_einval_and_the_same_osd_serves_on(osd) -> None:
    """A class method fed input of the wrong shape (valid JSON, not the object it expects)
    answers EINVAL; it used to raise AttributeError out of the op loop and kill the OSD,
    which the objecter's resend then killed again after every restart."""
    pid = osd.proc.pid

    def call(method: str, indata: bytes) -> list[O.Op]:
        return [O.Call("rbd", method, indata)]

    async with client(osd.port, timeout=20) as obj:
        for bad in (b"[1,2]", b'"name"', b"7", b'{"name": ["n"], "id": "i"}',
                    b'{"name": "n", "id": 5}'):
            await expect_err(errno.EINVAL, obj.submit(POOL, "dir", call("dir_add", bad),
                                                      write=True))
        await expect_err(errno.EINVAL, obj.submit(POOL, "m", call(
            "objmap_set", b'{"start": "a", "end": 2}'), write=True))
        await obj.submit(POOL, "dir", call("dir_add", json.dumps(
            {"name": "n", "id": "i"}).encode()), write=True)
        r = await obj.submit(POOL, "dir", call("dir_list", b""), write=False)
        assert json.loads(r.results[0].out) == {"n": "i"}
    assert osd.running and osd.proc.pid == pid and osd.starts == 1


# ---- concurrency ----------------------------------------------------------------------------


async def test_concurrent_unaligned_writes_lose_no_update(osd) -> None:
    port = osd.port
    rnd = random.Random(7)
    size = 600_000
    # non-overlapping: a random partition of [0, size) written by two clients at once
    cuts = sorted(rnd.sample(range(1, size), 199))
    ranges = list(zip([0, *cuts], [*cuts, size]))
    rnd.shuffle(ranges)
    src = os.urandom(size)
    # overlapping: random ranges over one object, applied in submission order
    over = []
    for i in range(250):
        off = rnd.randrange(0, size - 9000)
        over.append((off, bytes([i % 255 + 1]) * rnd.randint(1, 9000)))
    order: list[int] = []
    # overlapping, each started (and given its tid) before the next: model in that order
    seq_size = 1 << 20
    seq = []
    seq_model = bytearray(seq_size)
    for i in range(300):
        off = rnd.randrange(0, seq_size - 5000)
        data = bytes([i % 251 + 1]) * rnd.randint(1, 5000)
        seq.append((off, data))
        seq_model[off : off + len(data)] = data
    async with client(port) as a, client(port) as b:
        async def put(obj: Objecter, lo: int, hi: int) -> None:
            await obj.submit(POOL, "nov", [O.Write(lo, memoryview(src)[lo:hi])], write=True)

        async def put_over(i: int) -> None:
            off, data = over[i]
            order.append(i)  # no checkpoint between this and the tid being assigned
            await a.submit(POOL, "ovl", [O.Write(off, data)], write=True)

        async def put_in_order() -> None:
            async with trio.open_nursery() as n:
                for off, data in seq:
                    n.start_soon(lambda o=off, d=data: b.submit(POOL, "seq", [O.Write(o, d)],
                                                               write=True))
                    await trio.sleep(0)

        async with trio.open_nursery() as n:
            for k, (lo, hi) in enumerate(ranges):
                n.start_soon(put, (a, b)[k % 2], lo, hi)
            for i in range(len(over)):
                n.start_soon(put_over, i)
            n.start_soon(put_in_order)
        await a.flush()
        await b.flush()
        assert await read(b, "nov", 0, 1 << 20) == src
        model = bytearray(size)
        for i in order:
            off, data = over[i]
            model[off : off + len(data)] = data
        got = await read(b, "ovl", 0, 1 << 20)
        end = max(off + len(d) for off, d in over)
        assert len(got) == end and got == bytes(model[:end])
        got = await read(a, "seq", 0, seq_size)
        end = max(off + len(d) for off, d in seq)
        assert len(got) == end and got == bytes(seq_model[:end])
    assert sorted(order) == list(range(len(over)))



async def test_a_write_waiting_for_its_commit_gets_one_reply_with_its_outputs(osd) -> None:
    """Writes submitted with wait_commit ask for no ack (as Ceph clients ask only for
    ONDISK): the OSD sends the commit alone, and it carries the op outputs the ack would
    have carried; a write that waits only for the ack still gets both replies."""
    async with client(osd.port) as obj:
        replies: list[tuple[int, int]] = []
        dispatch = obj.dispatch

        async def counting(peer: Peer, msg: Message) -> None:
            replies.append((msg.tid, M.decode_reply(msg, obj.inflight[msg.tid].ops).flags
                            if msg.tid in obj.inflight else -1))
            await dispatch(peer, msg)

        obj.dispatch = counting  # type: ignore[method-assign]
        hdr = json.dumps({"id": "x", "size": 1 << 20, "order": 22}).encode()
        await obj.submit(POOL, "h", [O.Call("rbd", "create", hdr)], write=True,
                         wait_commit=True)
        replies.clear()
        r = await obj.submit(POOL, "h", [O.Call("rbd", "set_header_fields",
                                               json.dumps({"size": 2 << 20}).encode())],
                             write=True, wait_commit=True)
        assert json.loads(bytes(r.results[0].out))["size"] == 2 << 20
        assert [f for _, f in replies] == [O.FLAG_COMMIT]  # one reply, the commit
        replies.clear()
        await obj.submit(POOL, "h", [O.Write(0, b"abc")], write=True)  # waits for the ack
        await obj.flush()
        assert sorted(f for _, f in replies) == [O.FLAG_ACK, O.FLAG_COMMIT]


async def test_a_blocklisted_client_is_refused_everything_until_it_expires(osd) -> None:
    """Fencing (``Blocklist``): once the fencer has the (committed) reply, every request of
    that client fails with ESHUTDOWN, reads too, across an OSD restart; others are served.
    When the entry expires (the fencer chose when: ``until``), the client is served again.
    No timing is asserted: the client polls until served, and must not be before ``until``."""
    now = int(time.time())
    async with client(osd.port) as a, client(osd.port) as b:
        await a.submit(POOL, "o", [O.Write(0, b"a")], write=True)
        await b.submit(POOL, "osd_blocklist", [O.Blocklist(a.me.num, now + 3600)],
                       write=True, wait_commit=True, osd=0)
        await expect_err(errno.ESHUTDOWN, a.submit(POOL, "o", [O.Write(0, b"x")],
                                                   write=True))
        await expect_err(errno.ESHUTDOWN, a.submit(POOL, "o", [O.Read(0, 1)], write=False))
        assert await read(b, "o", 0, 1) == b"a"
        # an entry already expired fences nothing; with other ops it is not a fence at all
        await b.submit(POOL, "osd_blocklist", [O.Blocklist(b.me.num, now - 1)],
                       write=True, wait_commit=True, osd=0)
        assert await read(b, "o", 0, 1) == b"a"
        await expect_err(errno.EOPNOTSUPP, b.submit(POOL, "o", [
            O.Write(0, b"y"), O.Blocklist(b.me.num, now + 3600)], write=True))
        a_num = a.me.num
    osd.kill9()
    osd.start()
    async with client(osd.port, client_id=a_num) as a2, client(osd.port) as b2:
        await expect_err(errno.ESHUTDOWN, a2.submit(POOL, "o", [O.Read(0, 1)], write=False))
        assert await read(b2, "o", 0, 1) == b"a"
        until = int(time.time()) + 2  # a short fence this time
        await fence(b2, a2.me.num, until)
        assert await served_again(a2) == b"a"
        assert time.time() >= until, "served before its entry expired"
        await a2.submit(POOL, "o", [O.Write(0, b"A")], write=True, wait_commit=True)
    osd.kill9()  # and the expired entry does not come back with a restart
    osd.start()
    async with client(osd.port, client_id=a_num) as a3:
        assert await read(a3, "o", 0, 1) == b"A"


async def fence(obj: Objecter, num: int, until: int) -> None:
    await obj.submit(POOL, "osd_blocklist", [O.Blocklist(num, until)], write=True,
                     wait_commit=True, osd=0)


async def served_again(obj: Objecter, oid: str = "o", deadline: float = 60) -> bytes:
    """Poll with reads while they are refused (ESHUTDOWN); the first served read's byte."""
    with trio.fail_after(deadline):
        while True:
            try:
                return await read(obj, oid, 0, 1)
            except OSDError as e:
                assert e.errno == errno.ESHUTDOWN, e
            await trio.sleep(0.1)


async def test_fencing_a_client_again_after_its_entry_expired_holds_across_a_restart(
        osd) -> None:
    """A new entry for a client whose old one expired (while it sent nothing, so the OSD
    still had the old one in memory) is the entry: on disk too, so it survives a restart.
    It used to be removed in the very transaction that wrote it, as the old one's cleanup."""
    async with client(osd.port) as a, client(osd.port) as b:
        await a.submit(POOL, "o", [O.Write(0, b"a")], write=True)
        until = int(time.time()) + 1
        await fence(b, a.me.num, until)
        while time.time() <= until:  # let it expire, with no request from a
            await trio.sleep(0.1)
        await fence(b, a.me.num, int(time.time()) + 3600)
        await expect_err(errno.ESHUTDOWN, a.submit(POOL, "o", [O.Read(0, 1)], write=False))
        # and the other way round: a fence that already expired unfences, as on disk
        await fence(b, a.me.num, int(time.time()) - 1)
        assert await read(a, "o", 0, 1) == b"a"
        await fence(b, a.me.num, int(time.time()) + 3600)
        a_num = a.me.num
    osd.kill9()
    osd.start()
    async with client(osd.port, client_id=a_num) as a2:
        await expect_err(errno.ESHUTDOWN, a2.submit(POOL, "o", [O.Read(0, 1)], write=False))
