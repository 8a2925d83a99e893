"""The trio Messenger over real loopback sockets: TCP and unix, a cutting proxy, garbage
peers, in-place receives, and a server restart. Every test runs under ``trio.fail_after``."""

from __future__ import annotations

import random
import socket as stdsocket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from rbdpy.crc import crc32c
from rbdpy.msgr.connection import Connection, Limits, Session
from rbdpy.msgr.message import EntityName, Message, MsgHeader, encode_header
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.msgr.payload import BioChain, Pagelist

SRV, CLI, CLI2 = EntityName(2, 0), EntityName(1, 1), EntityName(1, 2)
FAST = {"backoff": (0.002, 0.02)}
REQ, REPLY = 1, 2


def rand_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def reply_size(tid: int) -> int:
    return [0, 16, 5000, 40_000][tid % 4]


def reply_data(tid: int) -> bytes:
    return rand_bytes(reply_size(tid), 1_000_000 + tid)


@dataclass
class Server:
    """A dispatcher that records requests and answers each with a reply carrying data."""

    yield_in_dispatch: bool = False
    got: list[tuple[int, int, bytes]] = field(default_factory=list)
    peers: set = field(default_factory=set)
    resets: list = field(default_factory=list)
    peer_resets: list = field(default_factory=list)

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        if self.yield_in_dispatch:
            await trio.sleep(0)  # a dispatcher may await (a lock, a channel, the store)
        self.got.append((msg.tid, crc32c(msg.data_bytes()), bytes(msg.front)))
        self.peers.add(msg.src)
        trail = Pagelist()
        trail.encode_u64(msg.tid)
        peer.send(Message(type=REPLY, tid=msg.tid, front=b"re:" + bytes(msg.front),
                          data=BioChain([reply_data(msg.tid)]), trail=trail))

    def dispatcher(self) -> SimpleDispatcher:
        return SimpleDispatcher(self.dispatch, on_reset=lambda p, d: self.resets.append(d),
                                on_peer_reset=self.peer_resets.append)


@dataclass
class Client:
    """Records replies; reply data lands in per-tid buffers the client owns."""

    expect: int = 0
    replies: list[int] = field(default_factory=list)
    buffers: dict[int, bytearray] = field(default_factory=dict)
    landed: list[bool] = field(default_factory=list)
    resets: list[list[Message]] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)

    def alloc(self, peer: EntityName | None, h: MsgHeader) -> list[memoryview]:
        buf = self.buffers.setdefault(h.tid, bytearray(h.data_len))
        return [memoryview(buf)]

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        assert msg.type == REPLY and msg.front.startswith(b"re:")
        data = msg.data_bytes()
        assert data[:-8] == reply_data(msg.tid) and data[-8:] == struct.pack("<Q", msg.tid)
        buf = self.buffers[msg.tid]
        # the data went straight into the client's buffer: the message only holds views
        self.landed.append(bytes(buf) == data and all(s.obj is buf for s in msg.data.segments()))
        self.replies.append(msg.tid)
        if len(self.replies) >= self.expect:
            self.done.set()

    def dispatcher(self) -> SimpleDispatcher:
        return SimpleDispatcher(self.dispatch, alloc_data=self.alloc,
                                on_reset=lambda p, d: self.resets.append(d))


def request(tid: int, size: int) -> tuple[Message, tuple[int, int, bytes]]:
    data = rand_bytes(size, tid)
    front = b"req %d" % tid
    return Message(type=REQ, tid=tid, front=front, data=BioChain([data])), (
        tid, crc32c(data), front)


# ---- plain traffic --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_many_messages_with_replies(transport: str, tmp_path: Path) -> None:
    n = 400
    sizes = [0, 1, 100, 4096, 9000, 70_000]
    srv, cli = Server(), Client(expect=n)
    with trio.fail_after(8):
        async with Messenger(SRV, srv.dispatcher()) as server:
            if transport == "tcp":
                addr = await server.listen()
                assert addr[0] == "127.0.0.1"
            else:
                addr = await server.listen_unix(str(tmp_path / "msgr.sock"))
            async with Messenger(CLI, cli.dispatcher(), **FAST) as client:
                peer = client.connect(addr)
                assert client.connect(addr) is peer  # one session per address
                want = []
                for i in range(n):
                    msg, w = request(i, sizes[i % len(sizes)])
                    peer.send(msg)
                    want.append(w)
                    if i % 50 == 0:
                        await trio.sleep(0)  # let some go out while more are queued
                await cli.done.wait()
                assert srv.got == want
                assert cli.replies == list(range(n))
                assert all(cli.landed)
                assert srv.peers == {CLI}
                assert not cli.resets and not srv.resets and not srv.peer_resets
                await trio.testing.wait_all_tasks_blocked()
                assert not peer.session.sent and not peer.session.unsent  # all acked
                client.shutdown()
            server.shutdown()


async def test_two_clients_share_a_server(tmp_path: Path) -> None:
    srv = Server()
    clients = [Client(expect=100), Client(expect=100)]
    with trio.fail_after(8):
        async with Messenger(SRV, srv.dispatcher()) as server:
            addr = await server.listen()
            async with (
                Messenger(CLI, clients[0].dispatcher(), **FAST) as m1,
                Messenger(CLI2, clients[1].dispatcher(), **FAST) as m2,
            ):
                for k, m in enumerate((m1, m2)):
                    p = m.connect(addr)
                    for i in range(100):
                        p.send(request(k * 1000 + i, 300)[0])
                for c in clients:
                    await c.done.wait()
                assert clients[0].replies == list(range(100))
                assert clients[1].replies == list(range(1000, 1100))
                assert srv.peers == {CLI, CLI2}
                m1.shutdown()
                m2.shutdown()
            server.shutdown()


# ---- a proxy that cuts connections ----------------------------------------------------------


class ChaosProxy:
    """Forwards bytes between a client and the real server, and after a random number of
    bytes (both directions counted) closes both sockets, every time, for every connection."""

    def __init__(self, target: tuple[str, int], seed: int) -> None:
        self.target = target
        self.rnd = random.Random(seed)
        self.connections = 0
        self.cuts = 0
        self.forwarded = 0

    def budget(self) -> int:
        r = self.rnd
        return r.choice([r.randint(1, 300), r.randint(300, 30_000),
                         r.randint(30_000, 300_000), r.randint(300_000, 1_500_000)])

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, down: trio.SocketStream) -> None:
        try:
            up = await trio.open_tcp_stream(*self.target)
        except OSError:
            await down.aclose()
            return
        self.connections += 1
        left = self.budget()
        abort = self.rnd.random() < 0.5

        async def pipe(src: trio.SocketStream, dst: trio.SocketStream,
                       cancel: Callable[[], None]) -> None:
            nonlocal left
            try:
                while left > 0:
                    data = await src.receive_some(65536)
                    if not data:
                        break
                    data = data[:left]
                    left -= len(data)
                    self.forwarded += len(data)
                    await dst.send_all(data)
                if left <= 0:
                    self.cuts += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            cancel()

        async with trio.open_nursery() as nursery:
            cancel = nursery.cancel_scope.cancel
            nursery.start_soon(pipe, down, up, cancel)
            nursery.start_soon(pipe, up, down, cancel)
        for s in (down, up):
            if abort:  # a reset instead of an orderly close
                s.socket.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            s.socket.close()


@pytest.mark.parametrize("seed, yield_in_dispatch", [(1, False), (2, True), (3, True)])
async def test_exactly_once_in_order_through_a_cutting_proxy(
    seed: int, yield_in_dispatch: bool
) -> None:
    n = 150
    rnd = random.Random(seed)
    sizes = [rnd.choice([0, 10, 4096, 20_000, 70_000, 200_000]) for _ in range(n)]
    srv, cli = Server(yield_in_dispatch=yield_in_dispatch), Client(expect=n)
    with trio.fail_after(9):
        async with Messenger(SRV, srv.dispatcher()) as server:
            target = await server.listen()
            async with trio.open_nursery() as nursery:
                proxy = ChaosProxy(target, seed)
                paddr = await nursery.start(proxy.run)
                async with Messenger(CLI, cli.dispatcher(), **FAST) as client:
                    peer = client.connect(paddr)
                    want = []
                    for i in range(n):
                        msg, w = request(i, sizes[i])
                        want.append(w)
                        peer.send(msg)
                        if rnd.random() < 0.3:
                            await trio.sleep(0.001)
                    with trio.move_on_after(7):
                        await cli.done.wait()
                    s = server.registry.get(CLI)
                    assert cli.done.is_set(), (
                        f"stalled: the server counted {s and s.in_seq} requests received but "
                        f"dispatched {len(srv.got)}; the client got {len(cli.replies)} replies"
                    )
                    client.shutdown()
                nursery.cancel_scope.cancel()
            server.shutdown()
    assert proxy.cuts >= 8, (proxy.cuts, proxy.connections)
    assert srv.got == want  # every request exactly once, in order, intact
    assert cli.replies == list(range(n))  # every reply too
    assert all(cli.landed)
    assert not cli.resets and not srv.resets and not srv.peer_resets


# ---- data lands in the caller's buffer ------------------------------------------------------


async def test_reply_data_lands_in_the_readers_buffer() -> None:
    """Like a read: the reader owns one buffer; each reply's data lands in its own slice."""
    reader = bytearray(8 << 20)
    arr = np.frombuffer(reader, dtype=np.uint8)
    extent = 1 << 20
    results: dict[int, Message] = {}
    done = trio.Event()

    async def serve(peer: Peer, msg: Message) -> None:
        size = struct.unpack("<I", msg.front)[0]
        peer.send(Message(type=REPLY, tid=msg.tid, data=BioChain([rand_bytes(size, msg.tid)])))

    def alloc(peer: EntityName | None, h: MsgHeader) -> list[memoryview]:
        base = h.tid * extent
        return [memoryview(reader)[base : base + h.data_len]]

    async def got(peer: Peer, msg: Message) -> None:
        results[msg.tid] = msg
        if len(results) == 8:
            done.set()

    sizes = [1, 100, 4096, 8192, 65_536, 300_000, 1 << 20, 777_777]
    with trio.fail_after(8):
        async with Messenger(SRV, SimpleDispatcher(serve)) as server:
            addr = await server.listen()
            async with Messenger(CLI, SimpleDispatcher(got, alloc_data=alloc), **FAST) as c:
                peer = c.connect(addr)
                for tid, size in enumerate(sizes):
                    peer.send(Message(type=REQ, tid=tid, front=struct.pack("<I", size)))
                await done.wait()
                c.shutdown()
            server.shutdown()
        assert c.copied_bytes < sum(sizes) // 4  # big data was received in place, not copied
    for tid, size in enumerate(sizes):
        base = tid * extent
        want = rand_bytes(size, tid)
        assert bytes(reader[base : base + size]) == want  # filled in place
        assert not arr[base + size : base + extent].any()  # and nothing past its slice
        msg = results[tid]
        assert msg.data_bytes() == want
        for seg in msg.data.segments():
            assert seg.obj is reader
            assert np.shares_memory(np.frombuffer(seg, dtype=np.uint8), arr)


# ---- garbage peers --------------------------------------------------------------------------


async def _raw_handshake(addr: tuple[str, int], me: EntityName) -> trio.SocketStream:
    """A hand-driven client: a sans-I/O Connection over a raw stream, up to 'open'."""
    stream = await trio.open_tcp_stream(*addr)
    conn = Connection(me, random.getrandbits(62) | 1, client=True, session=Session())
    out = b"".join(conn.data_to_send())
    conn.sent(len(out))
    await stream.send_all(out)
    while not conn.open:
        data = await stream.receive_some(4096)
        assert data, "server closed during the handshake"
        conn.feed(data)
    assert not conn.faulted
    return stream


async def _dropped(stream: trio.SocketStream) -> bool:
    """True once the server closed the connection (whatever it sent before that)."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return True


def _huge(data_len: int) -> bytes:
    m = Message(type=REQ, seq=1)
    m.data = BioChain()
    m.data.length = data_len  # only claimed by the header
    return b"\x08" + encode_header(m, EntityName(1, 50))


async def test_garbage_peers_are_dropped_and_others_keep_working() -> None:
    srv = Server()
    cli = Client(expect=10**9)
    limits = Limits(max_data=1 << 20)
    with trio.fail_after(8):
        async with Messenger(SRV, srv.dispatcher(), limits=limits) as server:
            addr = await server.listen()
            async with Messenger(CLI, cli.dispatcher(), **FAST) as client:
                peer = client.connect(addr)
                tid = 0

                async def roundtrip() -> None:
                    nonlocal tid
                    start = len(cli.replies)
                    for _ in range(5):
                        peer.send(request(tid, 5000)[0])
                        tid += 1
                    while len(cli.replies) < start + 5:
                        await trio.sleep(0.001)

                await roundtrip()
                good_conn = peer.conn
                assert good_conn is not None and good_conn.open

                # 1: not our protocol at all
                s = await trio.open_tcp_stream(*addr)
                await s.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await _dropped(s)
                await roundtrip()

                # 2: a valid handshake, then a header whose crc is wrong
                s = await _raw_handshake(addr, EntityName(1, 50))
                hdr = bytearray(encode_header(Message(type=REQ, seq=1), EntityName(1, 50)))
                hdr[3] ^= 0x10
                await s.send_all(b"\x08" + bytes(hdr))
                assert await _dropped(s)
                await roundtrip()

                # 3: a valid header (crc and all) claiming 60 MiB of data over a 1 MiB limit
                s = await _raw_handshake(addr, EntityName(1, 51))
                await s.send_all(_huge(60 << 20) + bytes(10_000))
                assert await _dropped(s)
                await roundtrip()

                # 4: an unknown frame tag after the handshake, and garbage mid-handshake
                s = await _raw_handshake(addr, EntityName(1, 52))
                await s.send_all(b"\xee" * 64)
                assert await _dropped(s)
                s = await trio.open_tcp_stream(*addr)
                await s.send_all(b"rbdpy\x00v1" + b"\xff" * 7)
                await s.send_eof()
                assert await _dropped(s)
                await roundtrip()

                # the good client never noticed: same connection, nothing reset or replayed
                assert peer.conn is good_conn and good_conn.open
                assert cli.replies == list(range(tid))
                assert [g[0] for g in srv.got] == list(range(tid))
                assert srv.peers == {CLI}
                assert not cli.resets and not srv.resets and not srv.peer_resets
                client.shutdown()
            server.shutdown()


# ---- server restart -------------------------------------------------------------------------


async def test_server_restart_reports_unacked_messages_to_on_reset() -> None:
    cli = Client(expect=20)
    srv1, srv2 = Server(), Server()
    reset_seen = trio.Event()

    def on_reset(peer: Peer, dropped: list[Message]) -> None:
        cli.resets.append(dropped)
        assert peer.addr == addr
        reset_seen.set()

    dispatcher = SimpleDispatcher(cli.dispatch, alloc_data=cli.alloc, on_reset=on_reset)
    with trio.fail_after(8):
        async with Messenger(CLI, dispatcher, **FAST) as client:
            async with Messenger(SRV, srv1.dispatcher()) as server1:
                addr = await server1.listen()
                peer = client.connect(addr)
                for i in range(20):
                    peer.send(request(i, 3000)[0])
                await cli.done.wait()  # every reply arrived, so every request was acked
                server1.shutdown()
            # the server is gone; the client keeps queueing while it retries
            unacked = [request(100 + i, 1000)[0] for i in range(7)]
            for m in unacked:
                peer.send(m)
            await trio.sleep(0.05)  # a few refused reconnects
            assert not cli.resets
            async with Messenger(SRV, srv2.dispatcher()) as server2:
                assert await server2.listen(port=addr[1]) == addr
                await reset_seen.wait()
                (dropped,) = cli.resets
                assert dropped == unacked  # the very messages, in order, and nothing acked
                # the session starts over with the new server and works
                cli.expect, cli.done = 21, trio.Event()
                peer.send(request(200, 10)[0])
                await cli.done.wait()
                assert [g[0] for g in srv2.got] == [200]
                assert cli.replies[-1] == 200
                server2.shutdown()
            client.shutdown()
    assert [g[0] for g in srv1.got] == list(range(20))
