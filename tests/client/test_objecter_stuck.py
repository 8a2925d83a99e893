"""The objecter when no OSD answers: ``waiting`` (whom its requests wait for, and how many)
and ``abort`` (fail them all, now and from now on). The OSD's port has nobody listening, so
every request stays in flight."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from rbdpy.client.objecter import MAX_UNCOMMITTED_PER_OBJECT, Objecter, OSDError
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.msgr.messenger import Messenger
from rbdpy.proto import ops as O

POOL = 1


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


async def test_waiting_names_the_osd_and_abort_fails_everything() -> None:
    port = _dead_port()
    obj = Objecter(OSDMap(osds={0: OSDInfo(0, "127.0.0.1", port)},
                          pools={POOL: PoolInfo(POOL, "rbd")}))
    results: list[object] = []
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)

        async def call(oid: str, ops: list, write: bool, **kw: object) -> None:
            try:
                results.append(await obj.submit(POOL, oid, ops, write=write, **kw))
            except OSDError as e:
                results.append(e.errno)

        async with trio.open_nursery() as n:
            n.start_soon(call, "r", [O.Read(0, 10)], False)
            for i in range(MAX_UNCOMMITTED_PER_OBJECT + 2):  # two held back behind the rest
                n.start_soon(call, "w", [O.Write(i, b"x")], True)
            await trio.sleep(0.2)
            early = obj.last_tid
            assert obj.waiting(0) is None  # nothing was there before the first request
            w = obj.waiting(early)
            assert w is not None
            assert (w.by_osd, w.homeless, w.queued) == ({0: MAX_UNCOMMITTED_PER_OBJECT + 1},
                                                        0, 2)
            assert w.writes == MAX_UNCOMMITTED_PER_OBJECT + 2 and w.oldest_tid == 1
            assert w.targets(obj.osdmap) == f"osd.0 (127.0.0.1:{port})"
            assert w.describe(obj.osdmap) == (
                f"waiting for osd.0 (127.0.0.1:{port}): {MAX_UNCOMMITTED_PER_OBJECT + 1} "
                f"requests; queued behind those: 2 requests ({MAX_UNCOMMITTED_PER_OBJECT + 2}"
                " writes)")
            n.start_soon(call, "r2", [O.Read(0, 1)], False)
            await trio.sleep(0.05)
            assert obj.waiting(early).total == w.total  # newer requests are not counted yet

            assert obj.abort(errno.ESHUTDOWN) == MAX_UNCOMMITTED_PER_OBJECT + 2
        assert results == [errno.ESHUTDOWN] * (MAX_UNCOMMITTED_PER_OBJECT + 4)
        assert not obj.inflight and not obj.uncommitted and obj.waiting(obj.last_tid) is None
        with pytest.raises(OSDError) as e:  # from now on, at once
            await obj.submit(POOL, "later", [O.Write(0, b"y")], write=True, wait_commit=True)
        assert e.value.errno == errno.ESHUTDOWN and obj.aborted_writes == \
            MAX_UNCOMMITTED_PER_OBJECT + 3
        await obj.flush()  # nothing left to wait for
        m.shutdown()


async def test_abort_leaves_a_read_whose_reply_is_landing_in_its_buffer() -> None:
    """A read whose data is being received into the caller's buffer is not failed: the
    caller would get the buffer back while the messenger still writes into it."""
    obj = Objecter(OSDMap(osds={0: OSDInfo(0, "127.0.0.1", _dead_port())},
                          pools={POOL: PoolInfo(POOL, "rbd")}))
    async with Messenger(obj.me, obj, backoff=(0.01, 0.05)) as m:
        obj.attach(m)
        buf = memoryview(bytearray(10))
        got: list[int] = []
        req = obj.start(POOL, "r", [O.Read(0, 10)], write=False, read_into=[buf],
                        on_done=lambda r: got.append(r.error))
        req.landed = True  # as alloc_data marks it when the reply header arrives
        assert obj.abort(errno.ESHUTDOWN) == 0
        assert got == [] and obj.inflight == {req.tid: req}
        m.shutdown()
