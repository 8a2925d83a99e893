"""The trio Messenger over real loopback sockets: cuts, replays, garbage, in-place landing."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import trio

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.messenger import Messenger, SimpleDispatcher
from rbdpy.msgr.payload import BioChain

SRV, CLI = EntityName(2, 0), EntityName(1, 1)


async def chaos_proxy(listen_port_out: list, target: tuple[str, int], seed: int,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    """Forward bytes both ways; cut both sockets after a random number of bytes."""
    rnd = random.Random(seed)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listen_port_out.append(listeners[0].socket.getsockname()[1])
    task_status.started()

    async def handle(client: trio.SocketStream) -> None:
        budget = [rnd.choice([rnd.randint(50, 5000), rnd.randint(5000, 2_000_000)])]
        try:
            server = await trio.open_tcp_stream(*target)
        except OSError:
            await client.aclose()
            return

        async def copy(a: trio.SocketStream, b: trio.SocketStream) -> None:
            while budget[0] > 0:
                data = await a.receive_some(65536)
                if not data:
                    break
                data = data[: budget[0]]
                budget[0] -= len(data)
                await b.send_all(data)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, client, server)
            nursery.start_soon(copy, server, client)
        for s in (client, server):
            s.socket.close()

    await trio.serve_listeners(handle, listeners)


async def test_exactly_once_in_order_through_a_cutting_proxy() -> None:
    n = 300
    sizes = [random.Random(i).choice([0, 10, 4096, 70_000, 300_000]) for i in range(n)]
    got, replies = [], []
    done = trio.Event()

    async def srv(peer, msg: Message) -> None:  # noqa: ANN001
        got.append((msg.tid, msg.data_bytes()))
        peer.send(Message(type=2, tid=msg.tid, front=b"r%d" % msg.tid))

    async def cli(peer, msg: Message) -> None:  # noqa: ANN001
        replies.append(msg.tid)
        if len(replies) == n:
            done.set()

    with trio.fail_after(60):
        async with Messenger(SRV, SimpleDispatcher(srv), keepalive_interval=0.5,
                             keepalive_timeout=3) as s:
            addr = await s.listen()
            async with trio.open_nursery() as nursery:
                port: list[int] = []
                await nursery.start(chaos_proxy, port, addr, 11)
                async with Messenger(CLI, SimpleDispatcher(cli), backoff=(0.005, 0.05)) as c:
                    peer = c.connect(("127.0.0.1", port[0]))
                    payloads = [os.urandom(k) for k in sizes]
                    for tid, p in enumerate(payloads):
                        peer.send(Message(type=1, tid=tid, data=BioChain([p])))
                    await done.wait()
                    c.shutdown()
                nursery.cancel_scope.cancel()
            s.shutdown()
    assert [t for t, _ in got] == list(range(n))
    assert all(d == payloads[t] for t, d in got)
    assert replies == list(range(n))


async def test_unix_socket_and_in_place_landing(tmp_path: Path) -> None:
    dest = bytearray(1 << 20)
    landed = []

    def alloc(peer, h):  # noqa: ANN001, ANN202
        return [memoryview(dest)]

    async def srv(peer, msg: Message) -> None:  # noqa: ANN001
        landed.append(all(seg.obj is dest for seg in msg.data.segments()))
        peer.send(Message(type=2, tid=msg.tid))

    done = trio.Event()

    async def cli(peer, msg: Message) -> None:  # noqa: ANN001
        done.set()

    data = os.urandom(1 << 20)
    with trio.fail_after(20):
        async with Messenger(SRV, SimpleDispatcher(srv, alloc)) as s:
            path = await s.listen_unix(str(tmp_path / "m.sock"))
            async with Messenger(CLI, SimpleDispatcher(cli)) as c:
                c.connect(path).send(Message(type=1, tid=1, data=BioChain([data])))
                await done.wait()
                c.shutdown()
            s.shutdown()
    assert landed == [True] and bytes(dest) == data


def _send_junk_until_closed(host: str, port: int, junk: bytes) -> None:
    """Blocking socket calls: run in a thread, so the server's trio loop keeps running."""
    raw = socket.create_connection((host, port))
    raw.sendall(junk)
    raw.settimeout(5)
    try:
        while raw.recv(65536):
            pass  # the server closes the connection on us
    except ConnectionResetError:
        pass
    raw.close()


async def test_garbage_connections_do_not_hurt_other_clients() -> None:
    got = []

    async def srv(peer, msg: Message) -> None:  # noqa: ANN001
        got.append(msg.tid)
        peer.send(Message(type=2, tid=msg.tid))

    replies = trio.Event()

    async def cli(peer, msg: Message) -> None:  # noqa: ANN001
        replies.set()

    with trio.fail_after(20):
        async with Messenger(SRV, SimpleDispatcher(srv)) as s:
            host, port = await s.listen()
            for junk in (b"NOT A BANNER AT ALL", b"rbdpy\x00v1" + b"\xff" * 200,
                         b"rbdpy\x00v1" + bytes(10_000)):
                await trio.to_thread.run_sync(_send_junk_until_closed, host, port, junk)
            async with Messenger(CLI, SimpleDispatcher(cli)) as c:
                c.connect((host, port)).send(Message(type=1, tid=42, front=b"hi"))
                await replies.wait()
                c.shutdown()
            s.shutdown()
    assert got == [42]


async def test_server_restart_reports_session_reset() -> None:
    resets = []
    reset_seen = trio.Event()

    async def srv(peer, msg: Message) -> None:  # noqa: ANN001
        if msg.tid == 1:
            peer.send(Message(type=2, tid=1))

    first = trio.Event()

    async def cli(peer, msg: Message) -> None:  # noqa: ANN001
        first.set()

    def on_reset(peer, dropped) -> None:  # noqa: ANN001
        resets.append([m.tid for m in dropped])
        reset_seen.set()

    with trio.fail_after(20):
        s = Messenger(SRV, SimpleDispatcher(srv))
        async with s:
            host, port = await s.listen()
            async with Messenger(CLI, SimpleDispatcher(cli, on_reset=on_reset),
                                 backoff=(0.01, 0.05)) as c:
                peer = c.connect((host, port))
                peer.send(Message(type=1, tid=1))
                await first.wait()
                s.shutdown()  # the server dies...
                await trio.sleep(0.2)
                peer.send(Message(type=1, tid=2))  # ...with this one never acked
                async with Messenger(SRV, SimpleDispatcher(srv)) as s2:  # a new incarnation
                    await s2.listen(host, port)
                    await reset_seen.wait()
                    s2.shutdown()
                c.shutdown()
    assert resets and 2 in resets[0]
