"""Objecter resubmission and the OSD's duplicate detection, with a real OSD process."""

from __future__ import annotations

import json
import os

import trio

from rbdpy.client.objecter import Objecter
from rbdpy.msgr.message import Message
from rbdpy.msgr.messenger import Messenger
from rbdpy.osd import ops as O
from rbdpy.testing import POOL, run_with_objecter


async def test_inflight_writes_complete_across_an_osd_kill9(osd_process) -> None:  # noqa: ANN001
    o = osd_process()
    o.start()
    blocks = {i: os.urandom(4096) for i in range(400)}

    async def run(obj: Objecter, m: Messenger) -> None:
        done = []

        async def one(i: int) -> None:
            await obj.submit(POOL, f"obj{i % 7}", [O.Write((i // 7) * 4096, blocks[i])],
                             write=True, wait_commit=True)
            done.append(i)

        async with trio.open_nursery() as n:
            for i in blocks:
                n.start_soon(one, i)
            while len(done) < 50:
                await trio.sleep(0.001)
            o.kill9()  # with most requests still in flight
            await trio.sleep(0.3)
            o.start()  # a new incarnation: our session is reset and everything is resent
        assert sorted(done) == sorted(blocks)
        for i, data in blocks.items():
            r = await obj.submit(POOL, f"obj{i % 7}", [O.Read((i // 7) * 4096, 4096)],
                                 write=False)
            assert b"".join(r.results[0].out) == data, i

    await run_with_objecter(o.port, run)


async def test_a_resent_request_is_answered_not_applied_twice(osd_process) -> None:  # noqa: ANN001
    o = osd_process()
    o.start()
    add = json.dumps({"name": "img", "id": "abc"}).encode()

    async def send_raw(obj: Objecter, m: Messenger, attempt: int) -> int:
        """The same request (same client incarnation and tid) as a resend would carry."""
        got = trio.Event()
        result = []
        orig = obj.dispatch

        async def capture(peer, msg: Message) -> None:  # noqa: ANN001
            if msg.tid == 4242:
                result.append(O.decode_reply(msg, [O.Call("rbd", "dir_add", add)]).result)
                got.set()
            else:
                await orig(peer, msg)

        obj.dispatch = capture  # type: ignore[method-assign]
        obj.incarnation = 777
        req = O.encode_request([O.Call("rbd", "dir_add", add)], tid=4242, client=obj.me,
                               incarnation=777, epoch=1, pool=POOL, oid="rbd_directory",
                               flags=O.FLAG_WRITE | O.FLAG_ACK | O.FLAG_COMMIT,
                               attempt=attempt)
        m.connect(("127.0.0.1", o.port)).send(req)
        await got.wait()
        return result[0]

    me = []

    async def first(obj: Objecter, m: Messenger) -> int:
        me.append(obj.me)
        return await send_raw(obj, m, 0)

    assert await run_with_objecter(o.port, first) == 0
    o.stop()
    o.start()  # the reqid table must survive a restart

    async def resend(obj: Objecter, m: Messenger) -> int:
        obj.me = me[0]
        return await send_raw(obj, m, 1)

    assert await run_with_objecter(o.port, resend) == 0  # answered from the table

    async def fresh(obj: Objecter, m: Messenger) -> None:
        import pytest

        from rbdpy.client.objecter import OSDError

        with pytest.raises(OSDError):  # a *new* request for the same name is refused
            await obj.submit(POOL, "rbd_directory", [O.Call("rbd", "dir_add", add)],
                             write=True)

    await run_with_objecter(o.port, fresh)
