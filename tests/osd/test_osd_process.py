"""A real OSD process over loopback, driven through the objecter."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import pytest
import trio

from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.msgr.message import Message
from rbdpy.msgr.messenger import Messenger
from rbdpy.osd import ops as O
from rbdpy.testing import run_with_objecter

POOL = 1


def with_objecter(port: int, fn):  # noqa: ANN001, ANN201
    return run_with_objecter(port, fn)


async def test_every_op(osd) -> None:
    async def run(obj: Objecter, m: Messenger) -> None:
        buf = bytearray(os.urandom(20000))
        r = await obj.submit(POOL, "o", [O.Create(True), O.Write(10, memoryview(buf)[:9000]),
                                         O.SetXattr("a", b"1"), O.SetXattr("b", b"xyz")],
                             write=True, wait_commit=True)
        assert r.result == 0 and r.flags & O.FLAG_COMMIT
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "o", [O.Create(True)], write=True)
        assert ei.value.errno == errno.EEXIST
        dest = bytearray(9000)
        r = await obj.submit(POOL, "o", [O.Read(10, 9000)], write=False,
                             read_into=[memoryview(dest)])
        assert dest == buf[:9000] and r.results[0].out[0].obj is dest
        r = await obj.submit(POOL, "o", [O.Stat(), O.GetXattr("b"), O.GetXattrs(),
                                         O.SparseRead(0, 1 << 20)], write=False)
        st, xb, xs, (extents, data) = (x.out for x in r.results)
        assert st.size == 9010 and xb == b"xyz" and xs == {"a": b"1", "b": b"xyz"}
        assert sum(n for _o, n in extents) == sum(len(d) for d in data) >= 9000
        await obj.submit(POOL, "o", [O.Zero(100, 50), O.Truncate(5000), O.RmXattr("a")],
                         write=True)
        r = await obj.submit(POOL, "o", [O.Read(0, 6000), O.GetXattrs()], write=False)
        got = b"".join(r.results[0].out)
        assert len(got) == 5000 and got[110:150] == bytes(40)
        assert got[:100] == bytes(10) + bytes(buf[:90]) and r.results[1].out == {"b": b"xyz"}
        await obj.submit(POOL, "o", [O.WriteFull(b"full")], write=True)
        r = await obj.submit(POOL, "o", [O.Read(0, 100), O.Stat()], write=False)
        assert b"".join(r.results[0].out) == b"full" and r.results[1].out.size == 4
        v = r.results[1].out.version
        await obj.submit(POOL, "o", [O.AssertVersion(v), O.AssertExists()], write=False)
        with pytest.raises(OSDError):
            await obj.submit(POOL, "o", [O.AssertVersion(v + 5)], write=False)
        lock = json.dumps({"name": "l", "owner": "me", "cookie": "c"}).encode()
        await obj.submit(POOL, "o", [O.Call("lock", "lock", lock)], write=True)
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "o", [O.Call("lock", "lock", json.dumps(
                {"name": "l", "owner": "other", "cookie": "d"}).encode())], write=True)
        assert ei.value.errno == errno.EBUSY
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "o", [O.Call("nope", "x", b"")], write=False)
        assert ei.value.errno == errno.EOPNOTSUPP
        for i in range(5):
            await obj.submit(POOL, f"p{i}", [O.Write(0, b"x")], write=True)
        r = await obj.submit(POOL, "", [O.ListObjects("", 3)], write=False)
        names, nxt = r.results[0].out
        r = await obj.submit(POOL, "", [O.ListObjects(nxt, 10)], write=False)
        assert names + r.results[0].out[0] == ["o", "p0", "p1", "p2", "p3", "p4"]
        await obj.submit(POOL, "o", [O.Delete()], write=True)
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "o", [O.Stat()], write=False)
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "big", [O.Write(40 << 20, b"x")], write=True)
        assert ei.value.errno == errno.EFBIG

    await with_objecter(osd.port, run)


async def test_failing_guard_applies_nothing(osd) -> None:
    async def run(obj: Objecter, m: Messenger) -> None:
        await obj.submit(POOL, "g", [O.Write(0, b"before"), O.SetXattr("k", b"v")], write=True)
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "g", [O.Write(0, b"AFTER!"), O.CmpXattr("k", 1, 1, b"no"),
                                         O.SetXattr("k2", b"x")], write=True)
        assert ei.value.errno == errno.ECANCELED
        r = await obj.submit(POOL, "g", [O.Read(0, 6), O.GetXattrs()], write=False)
        assert b"".join(r.results[0].out) == b"before" and r.results[1].out == {"k": b"v"}

    await with_objecter(osd.port, run)


async def test_malformed_requests_get_error_replies(osd) -> None:
    async def run(obj: Objecter, m: Messenger) -> None:
        peer = m.connect(("127.0.0.1", osd.port))
        good = O.encode_request([O.Read(0, 1)], tid=9001, client=obj.me, incarnation=1,
                                epoch=1, pool=POOL, oid="x", flags=O.FLAG_READ)
        front = bytearray(good.front)
        unknown = bytearray(front)
        unknown[-(2 + 2 + 16 + 4 + 1)] = 250  # the opcode of the only op
        cases = {
            9001: (b"\x01\x02garbage", errno.EBADMSG),
            9002: (bytes(unknown), errno.EOPNOTSUPP),
            9003: (bytes(front[:20]), errno.EBADMSG),
        }
        waiters = {tid: trio.Event() for tid in cases}
        got = {}
        orig = obj.dispatch

        async def capture(p, msg: Message) -> None:  # noqa: ANN001
            if msg.tid in cases:
                got[msg.tid] = O.decode_reply(msg, []).result
                waiters[msg.tid].set()
            else:
                await orig(p, msg)

        obj.dispatch = capture  # type: ignore[method-assign]
        for tid, (f, _err) in cases.items():
            peer.send(Message(type=O.MSG_OSD_OP, tid=tid, front=f))
        for ev in waiters.values():
            await ev.wait()
        assert got == {tid: -err for tid, (_f, err) in cases.items()}
        # the daemon still serves, this client and a new one
        await obj.submit(POOL, "alive", [O.Write(0, b"yes")], write=True)

    await with_objecter(osd.port, run)
    assert osd.proc.poll() is None

    async def again(obj: Objecter, m: Messenger) -> None:
        r = await obj.submit(POOL, "alive", [O.Read(0, 3)], write=False)
        assert b"".join(r.results[0].out) == b"yes"

    await with_objecter(osd.port, again)


async def test_concurrent_unaligned_writes_lose_nothing(osd) -> None:
    rnd = random.Random(3)
    model = bytearray(1 << 20)
    writes = []
    for i in range(300):
        off = rnd.randrange(0, len(model) - 5000)
        data = bytes([i % 251 + 1]) * rnd.randint(1, 5000)
        writes.append((off, data))
        model[off : off + len(data)] = data

    async def run(obj: Objecter, m: Messenger) -> None:
        async with trio.open_nursery() as n:
            for off, data in writes:  # submitted in order; they overlap and race
                n.start_soon(lambda o=off, d=data: obj.submit(POOL, "c", [O.Write(o, d)],
                                                             write=True))
                await trio.sleep(0)
        await obj.flush()
        r = await obj.submit(POOL, "c", [O.Read(0, len(model))], write=False)
        got = b"".join(r.results[0].out)
        assert got == bytes(model[: len(got)]) and not any(model[len(got):])

    await with_objecter(osd.port, run)


async def test_flushed_writes_survive_kill9_and_nothing_torn(osd_process) -> None:  # noqa: ANN001
    o = osd_process()
    o.start()
    bs = 4096
    nblocks = 256
    flushed: dict[int, int] = {}  # block -> tid written and flushed
    written: dict[int, set[int]] = {b: set() for b in range(nblocks)}
    try:
        for round_ in range(3):
            async def writer(obj: Objecter, m: Messenger, round_=round_) -> None:
                rnd = random.Random(round_)
                pending: dict[int, int] = {}
                tid = round_ * 100000
                with trio.move_on_after(2.0):
                    while True:
                        for _ in range(rnd.randint(5, 40)):
                            tid += 1
                            b = rnd.randrange(nblocks)
                            written[b].add(tid)
                            pending[b] = tid
                            blk = tid.to_bytes(8, "little") * (bs // 8)
                            await obj.submit(POOL, "k", [O.Write(b * bs, blk)], write=True)
                        await obj.flush()
                        flushed.update(pending)
                        pending.clear()

            async def killer(round_: int = round_) -> None:
                await trio.sleep(random.Random(round_).uniform(0.3, 1.5))
                o.kill9()

            async def both(obj: Objecter, m: Messenger) -> None:
                async with trio.open_nursery() as n:
                    n.start_soon(killer)
                    with trio.move_on_after(4):
                        await writer(obj, m)
                    n.cancel_scope.cancel()

            await with_objecter(o.port, both)
            if o.proc.poll() is None:
                o.kill9()
            o.start()

            async def check(obj: Objecter, m: Messenger) -> None:
                r = await obj.submit(POOL, "k", [O.Read(0, nblocks * bs)], write=False)
                data = b"".join(r.results[0].out).ljust(nblocks * bs, b"\0")
                for b in range(nblocks):
                    blk = data[b * bs : (b + 1) * bs]
                    tid = int.from_bytes(blk[:8], "little")
                    assert blk == tid.to_bytes(8, "little") * (bs // 8), f"torn block {b}"
                    if b in flushed:
                        assert tid in written[b] and tid >= flushed[b], (b, tid, flushed[b])
                    else:
                        assert tid == 0 or tid in written[b]

            await with_objecter(o.port, check)
        assert flushed, "the writer never flushed: the test proved nothing"
    finally:
        o.stop()


async def test_bit_flip_gives_eio_and_sigterm_is_clean(osd_process, tmp_path: Path) -> None:  # noqa: ANN001, E501
    o = osd_process()
    o.start()
    try:
        async def put(obj: Objecter, m: Messenger) -> None:
            await obj.submit(POOL, "victim", [O.Write(0, b"A" * 8192)], write=True)
            await obj.submit(POOL, "other", [O.Write(0, b"B" * 100)], write=True)
            await obj.flush()

        await with_objecter(o.port, put)
        assert o.stop() == 0  # SIGTERM: commits, checkpoints, exits 0
        files = [p for p in (tmp_path / "osd0" / "store" / "objects").rglob("*")
                 if p.is_file() and "victim" in p.name]
        assert len(files) == 1
        raw = bytearray(files[0].read_bytes())
        raw[5000] ^= 1
        files[0].write_bytes(raw)
        o.start()

        async def check(obj: Objecter, m: Messenger) -> None:
            with pytest.raises(OSDError) as ei:
                await obj.submit(POOL, "victim", [O.Read(4096, 4096)], write=False)
            assert ei.value.errno == errno.EIO
            r = await obj.submit(POOL, "victim", [O.Read(0, 4096)], write=False)
            assert b"".join(r.results[0].out) == b"A" * 4096
            r = await obj.submit(POOL, "other", [O.Read(0, 100)], write=False)
            assert b"".join(r.results[0].out) == b"B" * 100

        await with_objecter(o.port, check)
    finally:
        o.stop()
