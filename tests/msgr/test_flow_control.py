"""Peer.wait_for_room: a producer is held back while its backlog is full, and released as
the peer's acks come in (no polling)."""

from __future__ import annotations

import socket as stdsocket

import trio

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.messenger import Messenger, SimpleDispatcher
from rbdpy.msgr.payload import BioChain

SRV, CLI = EntityName(2, 0), EntityName(1, 1)


async def test_backlog_is_bounded_and_everything_arrives() -> None:
    got: list[int] = []

    async def on_msg(peer, msg: Message) -> None:  # noqa: ANN001
        got.append(msg.tid)

    async def ignore(peer, msg: Message) -> None:  # noqa: ANN001
        pass

    payload = BioChain.from_buffer(bytearray(64 << 10))
    with trio.fail_after(30):
        async with Messenger(SRV, SimpleDispatcher(on_msg)) as server, \
                Messenger(CLI, SimpleDispatcher(ignore), backoff=(0.002, 0.02)) as client:
            addr = await server.listen("127.0.0.1", 0)
            peer = client.connect(addr)
            worst = 0
            for tid in range(300):
                await peer.wait_for_room(4)
                assert peer.session.backlog() < 4
                peer.send(Message(type=7, tid=tid, data=payload))
                worst = max(worst, peer.session.backlog())
            while len(got) < 300:
                await trio.sleep(0.01)
            assert got == list(range(300))
            assert worst <= 4
            server.shutdown()
            client.shutdown()


async def test_waits_while_the_peer_is_unreachable() -> None:
    with stdsocket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def ignore(peer, msg: Message) -> None:  # noqa: ANN001
        pass

    with trio.fail_after(30):
        async with Messenger(CLI, SimpleDispatcher(ignore), backoff=(0.002, 0.02)) as client:
            peer = client.connect(("127.0.0.1", port))
            for tid in range(3):
                peer.send(Message(type=7, tid=tid))
            await peer.wait_for_room(4)  # 3 queued: room for one more
            peer.send(Message(type=7, tid=3))
            with trio.move_on_after(0.3) as scope:
                await peer.wait_for_room(4)
            assert scope.cancelled_caught, "returned although nothing was acknowledged"
            assert peer.session.backlog() == 4
            client.shutdown()
