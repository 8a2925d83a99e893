"""rbdpy/msgr/messenger.py: the trio driver over real sockets (127.0.0.1 and unix).

Request/reply traffic over TCP and unix sockets, two clients, a proxy that cuts (and resets)
connections, in-place receives on both sides, garbage peers, server and client restarts,
keepalive and close, a lossy session, and producer flow control. Every test runs under
``trio.fail_after``; every server listens on loopback only.
"""

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
from rbdpy.msgr.connection import Connection
from rbdpy.msgr.events import KeepaliveReceived
from rbdpy.msgr.message import (
    HEADER,
    HEADER_CRC,
    EntityName,
    Message,
    MsgHeader,
    encode_header,
)
from rbdpy.msgr.messenger import Address, Messenger, Peer, SimpleDispatcher
from rbdpy.msgr.payload import BioChain, Pagelist
from rbdpy.msgr.session import Session
from rbdpy.msgr.wire import Limits

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
    headers: list[MsgHeader] = field(default_factory=list)

    def alloc(self, peer: EntityName | None, h: MsgHeader) -> None:
        self.headers.append(h)  # and no buffer offered: the messenger allocates

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
        return SimpleDispatcher(self.dispatch, alloc_data=self.alloc,
                                on_reset=lambda p, d: self.resets.append(d),
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
    """A request and what the server must record of it. Every third one is sent as a
    two-segment bio over separate buffers plus a trail (scatter-gather on the wire)."""
    data = rand_bytes(size, tid)
    front = b"req %d" % tid
    if tid % 3 == 0 and size >= 3:
        cut = size // 3
        bio = BioChain()
        bio.append(bytearray(data[:cut]))
        bio.append(bytearray(data[cut : 2 * cut]))
        trail = Pagelist()
        trail.append(data[2 * cut :])
        msg = Message(type=REQ, tid=tid, front=front, data=bio, trail=trail)
    else:
        msg = Message(type=REQ, tid=tid, front=front, data=BioChain([data]))
    return msg, (tid, crc32c(data), front)


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
                assert peer.conn is not None and peer.conn.open
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
    """Forwards bytes between a client and the real server (both on 127.0.0.1), and after a
    random number of bytes (both directions counted; now and then inside the handshake)
    closes both sockets, or resets them. Every connection, or only the first ``cuts``; then
    it passes everything through."""

    def __init__(self, target: tuple[str, int], seed: int, cuts: int | None = None,
                 max_budget: int = 1_500_000) -> None:
        self.target = target
        self.rnd = random.Random(seed)
        self.cuts_left = cuts
        self.max_budget = max_budget
        self.connections = 0
        self.cuts = 0
        self.forwarded = 0

    def budget(self) -> int | None:
        """Bytes this connection may carry before it is cut (None: never cut)."""
        if self.cuts_left is not None:
            if self.cuts_left <= 0:
                return None
            self.cuts_left -= 1
        r = self.rnd
        return min(self.max_budget, r.choice([
            r.randint(0, 300), r.randint(300, 30_000), r.randint(30_000, 300_000),
            r.randint(300_000, 1_500_000)]))

    async def run(
        self, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
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
                while left is None or left > 0:
                    data = await src.receive_some(65536)
                    if not data:
                        break
                    if left is not None:
                        data = data[:left]
                        left -= len(data)
                    self.forwarded += len(data)
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            cancel()

        async with trio.open_nursery() as nursery:
            cancel = nursery.cancel_scope.cancel
            nursery.start_soon(pipe, down, up, cancel)
            nursery.start_soon(pipe, up, down, cancel)
        if left is not None and left <= 0:
            self.cuts += 1
        for s in (down, up):
            if abort:  # a reset instead of an orderly close
                s.socket.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            s.socket.close()


@pytest.mark.parametrize("seed, yield_in_dispatch",
                         [(1, False), (2, True), (3, True), (4, False), (5, True), (6, False)])
async def test_exactly_once_in_order_through_a_cutting_proxy(
    seed: int, yield_in_dispatch: bool
) -> None:
    n = 300
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
    assert proxy.cuts >= 30, (proxy.cuts, proxy.connections)
    assert srv.got == want  # every request exactly once, in order, intact
    assert cli.replies == list(range(n))  # every reply too
    assert all(cli.landed)
    assert not cli.resets and not srv.resets and not srv.peer_resets


# ---- data lands in the caller's buffer ------------------------------------------------------


async def test_data_lands_in_the_receivers_buffers_both_ways() -> None:
    """Like a write and a read: a request's data lands in the server's buffer (alloc_data on
    the accepting side), and the reply's in the reader's own buffer, each in its slice."""
    reader = bytearray(8 << 20)
    inbox = bytearray(8 << 20)
    arr = np.frombuffer(reader, dtype=np.uint8)
    extent = 1 << 20
    results: dict[int, Message] = {}
    requests: dict[int, Message] = {}
    alloc_peers: set = set()
    done = trio.Event()

    def request_data(tid: int, size: int) -> bytes:
        return rand_bytes(size, 500 + tid)

    def server_alloc(peer: EntityName | None, h: MsgHeader) -> list[memoryview]:
        alloc_peers.add(peer)
        base = h.tid * extent
        return [memoryview(inbox)[base : base + h.data_len]]

    async def serve(peer: Peer, msg: Message) -> None:
        requests[msg.tid] = msg
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
        async with Messenger(SRV, SimpleDispatcher(serve, alloc_data=server_alloc)) as server:
            addr = await server.listen()
            async with Messenger(CLI, SimpleDispatcher(got, alloc_data=alloc), **FAST) as c:
                peer = c.connect(addr)
                for tid, size in enumerate(sizes):
                    peer.send(Message(type=REQ, tid=tid, front=struct.pack("<I", size),
                                      data=BioChain([request_data(tid, size)])))
                await done.wait()
                c.shutdown()
            server.shutdown()
        # big data was received in place, not copied, on both sides
        assert c.copied_bytes < sum(sizes) // 4
        assert server.copied_bytes < sum(sizes) // 4
    assert alloc_peers == {CLI}
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
        sent = request_data(tid, size)
        assert bytes(inbox[base : base + size]) == sent
        assert not any(inbox[base + size : base + extent])
        assert requests[tid].data_bytes() == sent
        assert all(seg.obj is inbox for seg in requests[tid].data.segments())


# ---- garbage peers --------------------------------------------------------------------------


async def _raw_client(addr: Address, me: EntityName) -> tuple[trio.SocketStream, Connection]:
    """A hand-driven client: a sans-I/O Connection over a raw stream, up to 'open'."""
    if isinstance(addr, str):
        stream = await trio.open_unix_socket(addr)
    else:
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
    return stream, conn


async def _raw_handshake(addr: tuple[str, int], me: EntityName) -> trio.SocketStream:
    return (await _raw_client(addr, me))[0]


async def _dropped(stream: trio.SocketStream) -> bool:
    """True once the server closed the connection (whatever it sent before that)."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return True


def _huge(data: int = 0, front: int = 0) -> bytes:
    """A message frame's tag and header, crc and all, claiming bytes that never come."""
    body = HEADER.pack(1, 0, REQ, 0, 0, front, 0, data, 0, 1, 50)
    return b"\x08" + body + HEADER_CRC.pack(crc32c(body))


async def _junk(addr: tuple[str, int], data: bytes, *, eof: bool = False) -> None:
    """Connect, send ``data`` (and EOF), and wait until the server drops the connection."""
    s = await trio.open_tcp_stream(*addr)
    await s.send_all(data)
    if eof:
        await s.send_eof()
    assert await _dropped(s)


async def test_garbage_peers_are_dropped_and_others_keep_working() -> None:
    srv = Server()
    cli = Client(expect=10**9)
    limits = Limits(max_data=1 << 20, max_front=1 << 16)
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

                # 1: not our protocol at all; our banner, then a connect that is all 0xff
                # (an auth length over the limit), or all zeros (a connect from entity 0.0,
                # then zero bytes: unknown tag 0)
                await _junk(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await _junk(addr, b"rbdpy\x00v1" + b"\xff" * 200)
                await _junk(addr, b"rbdpy\x00v1" + bytes(10_000))
                await roundtrip()

                # 2: a valid handshake, then a header whose crc is wrong
                s = await _raw_handshake(addr, EntityName(1, 50))
                hdr = bytearray(encode_header(Message(type=REQ, seq=1), EntityName(1, 50)))
                hdr[3] ^= 0x10
                await s.send_all(b"\x08" + bytes(hdr))
                assert await _dropped(s)
                await roundtrip()

                # 3: valid headers (crc and all) claiming lengths over the limits: 60 MiB and
                # 4 GiB of data over a 1 MiB limit, a 60 MiB front over 64 KiB
                for k, lie in enumerate(({"data": 60 << 20}, {"data": 0xFFFFFFFF},
                                         {"front": 60 << 20})):
                    s = await _raw_handshake(addr, EntityName(1, 51 + k))
                    await s.send_all(_huge(**lie) + bytes(10_000))
                    assert await _dropped(s)
                await roundtrip()

                # 4: an unknown frame tag after the handshake, random bytes after it, and
                # garbage mid-handshake
                s = await _raw_handshake(addr, EntityName(1, 60))
                await s.send_all(b"\xee" * 64)
                assert await _dropped(s)
                rng = random.Random(8)
                for k in range(5):
                    s = await _raw_handshake(addr, EntityName(1, 70 + k))
                    await s.send_all(bytes([rng.choice([0, 12, 200])]) + rng.randbytes(300))
                    assert await _dropped(s)
                await _junk(addr, b"rbdpy\x00v1" + b"\xff" * 7, eof=True)
                await roundtrip()

                # the good client never noticed: same connection, nothing reset or replayed
                assert peer.conn is good_conn and good_conn.open
                assert cli.replies == list(range(tid))
                assert [g[0] for g in srv.got] == list(range(tid))
                assert srv.peers == {CLI}
                assert not cli.resets and not srv.resets and not srv.peer_resets
                # nothing was asked of alloc_data for the liars: only the good client's data
                assert {h.src for h in srv.headers} == {CLI}
                assert all(h.data_len <= limits.max_data for h in srv.headers)
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


async def test_client_restart_gives_server_on_peer_reset() -> None:
    srv = Server()
    with trio.fail_after(8):
        async with Messenger(SRV, srv.dispatcher()) as server:
            addr = await server.listen()
            cli1 = Client(expect=1)
            async with Messenger(CLI, cli1.dispatcher(), **FAST) as c1:
                c1.connect(addr).send(request(0, 100)[0])
                await cli1.done.wait()
                c1.shutdown()
            assert srv.peer_resets == []
            # the same entity name, a new incarnation (nonce): the old session is stale
            cli2 = Client(expect=1)
            async with Messenger(CLI, cli2.dispatcher(), **FAST) as c2:
                assert c2.nonce != c1.nonce
                c2.connect(addr).send(request(1, 100)[0])
                await cli2.done.wait()
                c2.shutdown()
            server.shutdown()
    assert len(srv.peer_resets) == 1
    assert [g[0] for g in srv.got] == [0, 1]
    assert cli2.replies == [1] and cli2.resets == []


# ---- keepalive, close, lossy sessions -------------------------------------------------------


async def test_close_ends_the_session_on_both_sides() -> None:
    srv = Server()
    cli = Client(expect=1)
    with trio.fail_after(8):
        async with Messenger(SRV, srv.dispatcher()) as server:
            addr = await server.listen()
            async with Messenger(CLI, cli.dispatcher(), **FAST) as client:
                peer = client.connect(addr)
                peer.send(request(5, 100)[0])
                await cli.done.wait()
                assert peer.conn is not None and peer.conn.open
                peer.close()
                while server.incoming:  # the server forgets the closed session
                    await trio.sleep(0.001)
                with pytest.raises(ConnectionError):
                    peer.send(request(6, 100)[0])
                client.shutdown()
            server.shutdown()
    assert [g[0] for g in srv.got] == [5]


KA_INTERVAL, KA_TIMEOUT = 1.0, 4.0
"""The keepalive tests run on trio's MockClock, so these are virtual seconds: a peer silent
since its last byte is dropped once KA_TIMEOUT has passed, at the first keepalive tick after
that, so no later than KA_TIMEOUT + KA_INTERVAL."""


def _autojump(clock: trio.testing.MockClock) -> None:
    """From now on, jump the clock to the next deadline whenever every task waits. Only once
    the listener is bound (trio binds a unix socket in a thread, and a jump while it works
    would fire the test's own deadline); over a unix socket a sent byte is readable at once,
    so the clock never jumps while one is in flight."""
    clock.autojump_threshold = 0


def _keepalive_server() -> Messenger:
    return Messenger(SRV, SimpleDispatcher(_ignore), keepalive_interval=KA_INTERVAL,
                     keepalive_timeout=KA_TIMEOUT)


async def test_a_silent_peer_is_dropped_within_the_keepalive_bound(
        mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A peer that completes the handshake and then never sends a byte (not even keepalive
    acks) is dropped after KA_TIMEOUT and no later than KA_TIMEOUT + KA_INTERVAL."""
    with trio.fail_after(100 * KA_TIMEOUT):
        async with _keepalive_server() as server:
            path = await server.listen_unix(str(tmp_path / "ka.sock"))
            _autojump(mock_clock)
            start = trio.current_time()  # the server's last byte from the peer comes after
            stream, _conn = await _raw_client(path, EntityName(1, 80))
            opened = trio.current_time()  # ... and before this
            assert await _dropped(stream)  # reads the server's keepalives, answers nothing
            dropped = trio.current_time()
            server.shutdown()
    assert dropped - start > KA_TIMEOUT
    assert dropped - opened <= KA_TIMEOUT + KA_INTERVAL


async def test_a_peer_that_only_answers_keepalives_is_never_dropped(
        mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The same peer, answering each keepalive and sending nothing else, stays connected for
    ten times the bound: a keepalive ack is proof of life."""
    acked: list[int] = []
    run_for = 10 * (KA_TIMEOUT + KA_INTERVAL)

    async def answer(stream: trio.SocketStream, conn: Connection) -> None:
        while data := await stream.receive_some(4096):
            stamps = [e.stamp for e in conn.feed(data) if isinstance(e, KeepaliveReceived)]
            acked.extend(stamps)
            out = b"".join(conn.data_to_send())
            assert len(out) == 9 * len(stamps)  # KEEPALIVE_ACKs (tag, stamp), nothing else
            conn.sent(len(out))
            await stream.send_all(out)
        raise AssertionError(f"dropped after {trio.current_time() - start:.1f}s")

    with trio.fail_after(100 * KA_TIMEOUT):
        async with _keepalive_server() as server:
            path = await server.listen_unix(str(tmp_path / "ka.sock"))
            _autojump(mock_clock)
            stream, conn = await _raw_client(path, EntityName(1, 81))
            start = trio.current_time()
            with trio.move_on_after(run_for) as scope:
                await answer(stream, conn)
            assert scope.cancelled_caught and conn.open and not conn.faulted
            assert len(acked) >= run_for / KA_INTERVAL - 1  # the server kept asking
            await stream.aclose()
            server.shutdown()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lossy_session_through_chaos_at_most_once_and_reported(seed: int) -> None:
    """Lossy: nothing is replayed, so every request is dispatched at most once, in order,
    and each one that was not acknowledged is handed back through on_reset."""
    n = 200
    srv = Server()
    cli = Client(expect=n)
    dropped: list[int] = []
    with trio.fail_after(10):
        async with Messenger(SRV, srv.dispatcher()) as server:
            target = await server.listen()
            async with trio.open_nursery() as nursery:
                proxy = ChaosProxy(target, seed, cuts=20, max_budget=100_000)
                paddr = await nursery.start(proxy.run)
                disp = SimpleDispatcher(
                    cli.dispatch, alloc_data=cli.alloc,
                    on_reset=lambda peer, msgs: dropped.extend(m.tid for m in msgs))
                async with Messenger(CLI, disp, lossy=True, **FAST) as client:
                    peer = client.connect(paddr)

                    def settled() -> set[int]:
                        return {g[0] for g in srv.got} | set(dropped)

                    for i in range(n):
                        # a window of 8 requests in flight, so the cuts fall all along the run
                        while len(settled()) < i - 8:
                            await trio.sleep(0.001)
                        peer.send(request(i, [0, 17, 4096, 9000, 70_000][i % 5])[0])
                    # every request ends up dispatched by the server or handed back to us
                    while settled() != set(range(n)):
                        await trio.sleep(0.001)
                    client.shutdown()
                nursery.cancel_scope.cancel()
            server.shutdown()
    got = [g[0] for g in srv.got]
    assert len(got) == len(set(got)), "a request was dispatched twice"
    assert got == sorted(got)
    assert cli.replies == sorted(cli.replies) and len(cli.replies) == len(set(cli.replies))
    assert set(cli.replies) <= set(got) and all(cli.landed)
    assert proxy.cuts >= 10 and dropped, (proxy.cuts, dropped)


# ---- producer flow control ------------------------------------------------------------------


async def test_wait_for_room_bounds_the_backlog_and_everything_arrives() -> None:
    """Peer.wait_for_room: a producer is held back while its backlog is full, and released
    as the peer's acks come in (no polling). The receiver never replies and the window (4)
    is below ACK_AFTER, so only its ack timer releases the producer (without: deadlock)."""
    got: list[int] = []

    async def on_msg(peer: Peer, msg: Message) -> None:
        got.append(msg.tid)

    payload = BioChain.from_buffer(bytearray(64 << 10))
    with trio.fail_after(30):
        async with Messenger(SRV, SimpleDispatcher(on_msg)) as server, \
                Messenger(CLI, SimpleDispatcher(_ignore), **FAST) as client:
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


async def test_wait_for_room_waits_while_the_peer_is_unreachable() -> None:
    with stdsocket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    with trio.fail_after(30):
        async with Messenger(CLI, SimpleDispatcher(_ignore), **FAST) as client:
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


async def _ignore(peer: Peer, msg: Message) -> None:
    pass


# ---- big data sections and the reader's low-water mark ---------------------------------------


async def _framed_big_message(addr: tuple[str, int], me: EntityName, data: bytes
                              ) -> tuple[trio.SocketStream, bytes]:
    """A hand-driven client, handshake done, and the bytes of one REQ message carrying
    ``data`` (the tests pace those bytes themselves)."""
    stream, conn = await _raw_client(addr, me)
    conn.send_message(Message(type=REQ, tid=7, data=BioChain.from_buffer(data)))
    return stream, b"".join(conn.data_to_send())


async def test_a_slowly_arriving_data_section_is_delivered_and_not_taken_for_a_dead_peer(
) -> None:
    """The reader waits for a big data section with SO_RCVLOWAT (up to 512 KiB): epoll stays
    quiet while less than that is queued, so its reads, and the keepalive clock they feed,
    stop. Bytes dribbling in more slowly than the keepalive timeout must still count as a
    live peer, and the message must arrive whole."""
    got: list[bytes] = []
    done = trio.Event()

    async def dispatch(peer: Peer, msg: Message) -> None:
        got.append(msg.data_bytes())
        done.set()

    data = rand_bytes(1 << 20, 11)
    with trio.fail_after(15):
        async with Messenger(SRV, SimpleDispatcher(dispatch), keepalive_interval=0.05,
                             keepalive_timeout=0.3) as server:
            addr = await server.listen()
            stream, frame = await _framed_big_message(addr, EntityName(1, 60), data)
            head = len(frame) - len(data) - 13  # tag+header before the data, footer after
            await stream.send_all(frame[: head + (64 << 10)])
            pos, piece = head + (64 << 10), 16 << 10
            while pos < len(frame):  # 16 KiB every 40 ms: 512 KiB take ~1.3 s > 0.3 s
                await stream.send_all(frame[pos: pos + piece])
                pos += piece
                await trio.sleep(0.04)
            await done.wait()
            assert got == [data]
            await stream.aclose()
            server.shutdown()


async def test_a_peer_gone_mid_data_section_is_dropped_at_once() -> None:
    """EOF in the middle of a big data section ends the reader's low-water-mark wait: the
    connection is dropped at once, not after the (here 30 s) keepalive timeout."""
    async def dispatch(peer: Peer, msg: Message) -> None:
        raise AssertionError("a truncated message was dispatched")

    with trio.fail_after(5):
        async with Messenger(SRV, SimpleDispatcher(dispatch), keepalive_timeout=30) as server:
            addr = await server.listen()
            stream, frame = await _framed_big_message(addr, EntityName(1, 61),
                                                      rand_bytes(1 << 20, 12))
            await stream.send_all(frame[: 300 << 10])
            await trio.sleep(0.2)  # the reader is now waiting for the rest
            await stream.send_eof()
            assert await _dropped(stream)
            server.shutdown()
