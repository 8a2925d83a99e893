"""The receive BufferPool: unclaimed data sections reuse buffers, but never one that a
dispatcher still holds (a kept message's bytes must not change under it)."""

from __future__ import annotations

import numpy as np
import trio

from rbdpy.msgr.bufferpool import POOL_MIN, BufferPool
from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.msgr.payload import BioChain

SRV, CLI = EntityName(2, 0), EntityName(1, 1)
SIZE = 3 * POOL_MIN + 123


def payload(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def test_pool_reuses_only_unreferenced_buffers() -> None:
    pool = BufferPool()
    tok, view = pool.take(SIZE)
    assert len(view) == SIZE and pool.lent == 1
    keep = view[10:20]
    del view
    pool.give_back(tok)  # a slice survives: must not be reused
    assert pool.refused == 1 and pool.lent == 0
    tok2, view2 = pool.take(SIZE)
    assert pool.reused == 0  # a fresh buffer, the kept slice's memory is untouched
    del keep, view2
    pool.give_back(tok2)
    tok3, _v = pool.take(SIZE)
    assert pool.reused == 1 and pool.refused == 1
    pool.give_back(12345)  # unknown tokens are ignored


async def run(keep_messages: bool) -> tuple[Messenger, list[Message], list[bytes]]:
    kept: list[Message] = []
    seen: list[bytes] = []

    async def on_msg(peer: Peer, msg: Message) -> None:
        seen.append(msg.data_bytes())
        if keep_messages:
            kept.append(msg)

    async def ignore(peer: Peer, msg: Message) -> None:
        pass

    with trio.fail_after(30):
        async with Messenger(SRV, SimpleDispatcher(on_msg)) as server, \
                Messenger(CLI, SimpleDispatcher(ignore), backoff=(0.002, 0.02)) as client:
            addr = await server.listen("127.0.0.1", 0)
            peer = client.connect(addr)
            for i in range(20):
                await peer.wait_for_room(2)
                peer.send(Message(type=7, tid=i, data=BioChain.from_buffer(payload(i))))
            while len(seen) < 20:
                await trio.sleep(0.01)
            server.shutdown()
            client.shutdown()
    return server, kept, seen


async def test_dropped_messages_recycle_their_buffers() -> None:
    server, _kept, seen = await run(keep_messages=False)
    assert seen == [payload(i) for i in range(20)]
    assert server.rx_pool.reused >= 10  # steady state: one or two buffers go round
    assert server.rx_pool.refused == 0 and server.rx_pool.lent == 0


async def test_kept_messages_are_never_overwritten() -> None:
    server, kept, seen = await run(keep_messages=True)
    assert seen == [payload(i) for i in range(20)]
    assert [m.data_bytes() for m in kept] == [payload(i) for i in range(20)]
    assert server.rx_pool.reused == 0 and server.rx_pool.refused == 20


def test_try_give_back_keeps_referenced_buffers_lent() -> None:
    pool = BufferPool()
    tok, view = pool.take(SIZE)
    assert not pool.try_give_back(tok) and pool.lent == 1  # our view is alive
    del view
    assert pool.try_give_back(tok) and pool.lent == 0
    assert pool.try_give_back(tok)  # already back: nothing to do
    tok2, view2 = pool.take(SIZE)
    assert pool.reused == 1
    pool.forget(tok2)
    del view2
    assert pool.lent == 0 and pool.take(SIZE) and pool.reused == 1  # forgotten: not reused
