"""The objecter against a real OSD process: resubmission after restarts, no double apply."""

from __future__ import annotations

import errno
import json
import struct
from typing import TYPE_CHECKING

import pytest
import trio

from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.proto import ops as O
from rbdpy.proto import osdmsg as M

if TYPE_CHECKING:
    from tests.conftest import OSDProc

POOL = 1
BS = 4096
DIR = "rbd_directory"
ATTEMPT_AT = O._REQ_HEAD.size - 4  # the request head ends with the attempt (u32)


@pytest.fixture
def osd(osd_process):
    """A running OSD from ``osd_process`` (tests/conftest.py), stopped by PID at teardown."""
    o = osd_process()
    o.start()
    return o


def osdmap(port: int) -> OSDMap:
    return OSDMap(osds={0: OSDInfo(0, "127.0.0.1", port)}, pools={POOL: PoolInfo(POOL, "rbd")})


def block(i: int, gen: int = 0) -> bytes:
    return struct.pack("<QQ", i, gen) * (BS // 16)


def dir_add(i: int) -> O.Call:
    return O.Call("rbd", "dir_add", json.dumps({"name": f"img{i}", "id": f"id{i}"}).encode())


async def restart_in_thread(h: OSDProc) -> None:
    """kill -9 and start again on the same port, while the client keeps running."""
    h.kill9()
    await trio.to_thread.run_sync(h.start)


async def test_inflight_writes_complete_once_across_kill9_restarts(osd: OSDProc) -> None:
    """Every write submitted around two kill -9 + restarts completes, exactly once.

    Each vector adds a name to an rbd directory object (applying it twice fails with EEXIST)
    and writes a block; reads are in flight too. The objecter resends what lacks its commit
    when the OSD's session resets; the OSD answers requests it already applied from its
    persisted request ids."""
    n = 400
    obj = Objecter(osdmap(osd.port))
    done = 0
    errors: list[BaseException] = []
    enough = [trio.Event(), trio.Event()]
    reads_ok = 0
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)
        with trio.fail_after(60):
            await obj.submit(POOL, "r", [O.Write(0, block(7))], write=True, wait_commit=True)
            limit = trio.CapacityLimiter(48)

            async def one(i: int) -> None:
                nonlocal done
                async with limit:
                    try:
                        await obj.submit(POOL, DIR, [dir_add(i), O.Write(i * BS, block(i))],
                                         write=True, wait_commit=i % 2 == 0)
                        await obj.submit(POOL, f"d{i % 8}", [O.Write(i * BS, block(i, 1))],
                                         write=True)
                    except BaseException as e:
                        errors.append(e)
                        raise
                done += 1
                if done in (n // 4, n // 2):
                    enough[done // (n // 2)].set()

            async def reader() -> None:
                nonlocal reads_ok
                dest = bytearray(BS)
                while True:
                    await obj.submit(POOL, "r", [O.Read(0, BS)], write=False,
                                     read_into=[memoryview(dest)])
                    assert dest == block(7)
                    reads_ok += 1

            async def killer() -> None:
                for ev in enough:
                    await ev.wait()
                    assert obj.inflight, "nothing in flight at the kill"
                    await restart_in_thread(osd)

            async with trio.open_nursery() as nur:
                nur.start_soon(reader)
                async with trio.open_nursery() as writers:
                    writers.start_soon(killer)
                    for i in range(n):
                        writers.start_soon(one, i)
                await obj.flush()
                nur.cancel_scope.cancel()
            assert not errors and done == n and osd.starts == 3 and reads_ok > 0
            assert not obj.inflight and not obj.uncommitted
            r = await obj.submit(POOL, DIR, [O.Call("rbd", "dir_list", b""),
                                             O.Read(0, n * BS)], write=False)
            names = json.loads(r.results[0].out)
            assert names == {f"img{i}": f"id{i}" for i in range(n)}
            data = b"".join(bytes(s) for s in r.results[1].out)
            assert all(data[i * BS : (i + 1) * BS] == block(i) for i in range(n))
            for j in range(8):
                got = b"".join(bytes(s) for s in (await obj.submit(
                    POOL, f"d{j}", [O.Read(0, n * BS)], write=False)).results[0].out)
                for i in range(j, n, 8):
                    assert got[i * BS : (i + 1) * BS] == block(i, 1)
            # a name added twice really is refused: the check above could fail
            with pytest.raises(OSDError) as ei:
                await obj.submit(POOL, DIR, [dir_add(0)], write=True)
            assert ei.value.errno == errno.EEXIST
        m.shutdown()
    # and everything committed survives one more kill
    osd.kill9()
    osd.start()
    obj2 = Objecter(osdmap(osd.port))
    async with Messenger(obj2.me, obj2) as m:
        obj2.attach(m)
        with trio.fail_after(30):
            r = await obj2.submit(POOL, DIR, [O.Call("rbd", "dir_list", b"")], write=False)
            assert len(json.loads(r.results[0].out)) == n
        m.shutdown()


async def test_requests_submitted_while_the_osd_is_down_complete_after_it_starts(
        osd: OSDProc) -> None:
    obj = Objecter(osdmap(osd.port))
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)
        with trio.fail_after(30):
            await obj.submit(POOL, "x", [O.Write(0, b"old")], write=True, wait_commit=True)
            osd.kill9()
            results: dict[int, object] = {}

            async def w(i: int) -> None:
                results[i] = await obj.submit(POOL, "x", [O.Write(i, bytes([65 + i]))],
                                              write=True)

            async with trio.open_nursery() as nur:
                for i in range(20):
                    nur.start_soon(w, i)
                while len(obj.inflight) < 20:  # all queued against a dead OSD
                    await trio.sleep(0.01)
                assert not results
                await trio.to_thread.run_sync(osd.start)
            await obj.flush()
            r = await obj.submit(POOL, "x", [O.Read(0, 100)], write=False)
            assert b"".join(bytes(s) for s in r.results[0].out) == bytes(range(65, 85))
        m.shutdown()


async def test_resent_request_is_answered_not_reapplied_even_after_a_crash(
        osd: OSDProc) -> None:
    """Same client incarnation and tid, higher attempt: the OSD recognizes it, before and
    after a kill -9 (the request id is persisted with the mutation)."""
    me = EntityName(ENTITY_CLIENT, 4242)
    replies: dict[tuple[int, int], Message] = {}
    arrived = trio.Event()

    async def on_msg(peer: Peer, msg: Message) -> None:
        nonlocal arrived
        rep = M.decode_reply(msg, [dir_add(0)])
        if rep.flags & O.FLAG_COMMIT:
            replies[(msg.tid, rep.attempt)] = msg
        arrived.set()
        arrived = trio.Event()

    def req(tid: int, attempt: int, i: int) -> Message:
        return M.encode_request([dir_add(i)], tid=tid, client=me, incarnation=99, epoch=1,
                                pool=POOL, oid=DIR, flags=O.FLAG_WRITE | O.FLAG_ACK |
                                O.FLAG_COMMIT, attempt=attempt)

    async def exchange(msgs: list[Message]) -> list[int]:
        async with Messenger(me, SimpleDispatcher(on_msg), backoff=(0.01, 0.05)) as m:
            with trio.fail_after(20):
                peer = m.connect(("127.0.0.1", osd.port))
                keys = []
                for msg in msgs:
                    peer.send(msg)
                    keys.append((msg.tid, struct.unpack_from("<I", msg.front, ATTEMPT_AT)[0]))
                while not all(k in replies for k in keys):
                    await arrived.wait()
            m.shutdown()
        return [M.decode_reply(replies[k], [dir_add(0)]).result for k in keys]

    assert await exchange([req(1, 0, 1), req(1, 1, 1), req(2, 0, 2)]) == [0, 0, 0]
    osd.kill9()
    osd.start()
    # tid 1 and 2 again (applied and committed before the kill): answered, not EEXIST
    assert await exchange([req(1, 2, 1), req(2, 1, 2)]) == [0, 0]
    # a new tid for the same name is a new request: EEXIST, which shows the checks can fail
    assert await exchange([req(3, 0, 1)]) == [-errno.EEXIST]


def test_attempt_sits_at_the_end_of_the_request_head() -> None:
    msg = M.encode_request([O.Stat()], tid=1, client=EntityName(1, 1), incarnation=1,
                           epoch=1, pool=1, oid="o", flags=0, attempt=0xABCD)
    assert struct.unpack_from("<I", msg.front, ATTEMPT_AT)[0] == 0xABCD


async def test_uncommitted_writes_per_object_stay_inside_the_osd_request_id_window(
        osd_process, monkeypatch) -> None:
    """300 non-idempotent writes to one object at once while commits are held back, then
    kill -9: whatever has to be resent must still be in the OSD's request-id window (128
    per client and object), or it is applied twice (EEXIST here). The objecter keeps at most
    MAX_UNCOMMITTED_PER_OBJECT of them per object, so nothing fails and nothing repeats."""
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "0.3")
    osd = osd_process()
    osd.start()
    n = 300
    obj = Objecter(osdmap(osd.port))
    errors: list[BaseException] = []
    peak = 0
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)
        with trio.fail_after(120):
            acked = 0

            async def one(i: int) -> None:
                nonlocal acked
                try:
                    await obj.submit(POOL, DIR, [dir_add(i)], write=True)
                except BaseException as e:
                    errors.append(e)
                    raise
                acked += 1

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, sum(1 for r in obj.uncommitted.values()  # sent ones
                                         if r.oid == DIR and r.tid in obj.inflight))
                    await trio.sleep(0.001)

            async with trio.open_nursery() as outer:
                outer.start_soon(watch)
                async with trio.open_nursery() as writers:
                    for i in range(n):
                        writers.start_soon(one, i)
                    while acked < 200 or not obj.uncommitted:  # well past the window
                        await trio.sleep(0.005)
                    await restart_in_thread(osd)
                await obj.flush()
                outer.cancel_scope.cancel()
            assert not errors, errors[:3]
            assert peak <= 64
            r = await obj.submit(POOL, DIR, [O.Call("rbd", "dir_list", b"")], write=False)
            assert json.loads(r.results[0].out) == {f"img{i}": f"id{i}" for i in range(n)}
        m.shutdown()


async def test_a_write_cancelled_while_queued_behind_the_object_limit_is_never_sent(
        osd_process, monkeypatch) -> None:
    from rbdpy.client.objecter import MAX_UNCOMMITTED_PER_OBJECT as LIMIT

    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "0.5")
    osd = osd_process()
    osd.start()
    obj = Objecter(osdmap(osd.port))
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)
        with trio.fail_after(60):
            async def put(i: int) -> None:
                await obj.submit(POOL, "q", [O.Write(i * BS, block(i))], write=True)

            async with trio.open_nursery() as n:
                for i in range(LIMIT):
                    n.start_soon(put, i)
                n.start_soon(put, LIMIT)  # queued: over the limit
                while len(obj.uncommitted) <= LIMIT:
                    await trio.sleep(0.001)
                queued = [r for r in obj.uncommitted.values() if r.tid not in obj.inflight]
                assert len(queued) == 1
                cancel = trio.CancelScope()

                async def doomed() -> None:
                    with cancel:
                        await obj.submit(POOL, "q", [O.Write(0, b"never" * 100)], write=True)

                n.start_soon(doomed)
                while len(obj.uncommitted) <= LIMIT + 1:
                    await trio.sleep(0.001)
                cancel.cancel()  # while it waits in the queue
            await obj.flush()
            assert not obj.uncommitted and not obj.inflight
            r = await obj.submit(POOL, "q", [O.Read(0, (LIMIT + 1) * BS)], write=False)
            data = b"".join(bytes(s) for s in r.results[0].out)
            assert all(data[i * BS:(i + 1) * BS] == block(i) for i in range(LIMIT + 1))
            assert b"never" not in data
        m.shutdown()
