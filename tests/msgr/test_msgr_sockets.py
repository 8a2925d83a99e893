"""The trio Messenger over real sockets (127.0.0.1 and unix): replies, cuts, landing, garbage,
restarts."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
import trio

from rbdpy.crc import crc32c
from rbdpy.msgr.connection import (
    BANNER,
    CONNECT,
    CONNECT_REPLY,
    PROTOCOL_FEATURES,
    TAG_MSG,
    TAG_READY,
    Limits,
)
from rbdpy.msgr.message import HEADER, HEADER_CRC, EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.msgr.payload import BioChain, Pagelist

SRV = EntityName(2, 0)
CLI = EntityName(1, 1)
FAST = {"backoff": (0.002, 0.02)}


def payload_for(tid: int) -> bytes:
    rng = random.Random(tid)
    return rng.randbytes(rng.choice([0, 17, 4096, 9000, 70000]))


def reply_for(data: bytes) -> bytes:
    return data[::-1]


class EchoServer:
    """Records requests (tid, front, data) and answers each with the reversed data."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.bad: list[str] = []
        self.headers: list[MsgHeader] = []
        self.peer_resets: list[Peer] = []

    def alloc(self, peer: EntityName | None, h: MsgHeader) -> list[memoryview] | None:
        self.headers.append(h)
        return None

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        self.got.append(msg.tid)
        data = msg.data_bytes()
        if msg.front != f"req{msg.tid}".encode() or data != payload_for(msg.tid):
            self.bad.append(f"request {msg.tid} corrupt")
        out = bytearray(reply_for(data))
        peer.send(Message(type=2, tid=msg.tid, front=b"rep" + struct.pack("<I", crc32c(data)),
                          data=BioChain.from_buffer(out) if out else None))

    def dispatcher(self) -> SimpleDispatcher:
        return SimpleDispatcher(self.dispatch, self.alloc,
                                on_peer_reset=self.peer_resets.append)


class Collector:
    """The client side: counts replies and checks them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.got: list[int] = []
        self.bad: list[str] = []
        self.done = trio.Event()
        self.resets: list[list[int]] = []
        self.reset_event = trio.Event()

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        self.got.append(msg.tid)
        want = payload_for(msg.tid)
        if msg.data_bytes() != reply_for(want) or msg.front[3:] != struct.pack("<I", crc32c(want)):
            self.bad.append(f"reply {msg.tid} corrupt")
        if len(self.got) >= self.n:
            self.done.set()

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        self.resets.append([m.tid for m in dropped])
        self.reset_event.set()

    def dispatcher(self) -> SimpleDispatcher:
        return SimpleDispatcher(self.dispatch, on_reset=self.on_reset)


def request(tid: int) -> Message:
    data = payload_for(tid)
    if not data:
        return Message(type=1, tid=tid, front=f"req{tid}".encode())
    if tid % 3 == 0:  # a multi-segment bio plus a trail
        cut = len(data) // 3
        bio = BioChain()
        bio.append(bytearray(data[:cut]))
        bio.append(bytearray(data[cut : 2 * cut]))
        trail = Pagelist()
        trail.append(data[2 * cut :])
        return Message(type=1, tid=tid, front=f"req{tid}".encode(), data=bio, trail=trail)
    return Message(type=1, tid=tid, front=f"req{tid}".encode(),
                   data=BioChain.from_buffer(bytearray(data)))


async def _request_reply(addr_of: Callable, n: int) -> None:  # noqa: ANN001
    srv = EchoServer()
    col = Collector(n)
    with trio.fail_after(10):
        async with Messenger(SRV, srv.dispatcher()) as sm:
            addr = await addr_of(sm)
            async with Messenger(CLI, col.dispatcher(), **FAST) as cm:
                peer = cm.connect(addr)
                for i in range(n):
                    peer.send(request(i))
                await col.done.wait()
                await peer.connected.wait()
                assert peer.conn is not None and peer.conn.open
    assert srv.got == list(range(n))
    assert col.got == list(range(n))
    assert srv.bad == [] and col.bad == []
    assert not peer.session.unsent


async def test_request_reply_tcp() -> None:
    await _request_reply(lambda m: m.listen(), 500)


async def test_request_reply_unix(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / "msgr.sock")
    await _request_reply(lambda m: m.listen_unix(path), 500)


# ---- the chaos proxy -------------------------------------------------------------------------


class ChaosProxy:
    """Forwards 127.0.0.1 connections to ``upstream`` and cuts both sides after a random
    number of bytes (counted over both directions), ``cuts`` times; then passes through."""

    def __init__(self, upstream: tuple[str, int], rng: random.Random, cuts: int,
                 max_budget: int = 200_000) -> None:
        self.upstream = upstream
        self.rng = rng
        self.cuts_left = cuts
        self.cuts_done = 0
        self.max_budget = max_budget
        self.connections = 0

    async def start(self, nursery: trio.Nursery) -> tuple[str, int]:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self.handle, listeners)
        return ("127.0.0.1", port)

    async def handle(self, down: trio.SocketStream) -> None:
        self.connections += 1
        try:
            up = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await down.aclose()
            return
        left: list[int | None] = [None]
        if self.cuts_left > 0:
            self.cuts_left -= 1
            small = self.rng.random() < 0.3  # now and then inside the handshake
            left[0] = self.rng.randint(0, 300 if small else self.max_budget)

        async def pipe(a: trio.SocketStream, b: trio.SocketStream, scope: trio.CancelScope
                       ) -> None:
            try:
                while True:
                    data = await a.receive_some(65536)
                    if not data:
                        break
                    if left[0] is not None:
                        if len(data) >= left[0]:
                            if left[0]:
                                await b.send_all(data[: left[0]])
                            left[0] = 0
                            self.cuts_done += 1
                            break
                        left[0] -= len(data)
                    await b.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            scope.cancel()

        async with down, up, trio.open_nursery() as n:
            n.start_soon(pipe, down, up, n.cancel_scope)
            n.start_soon(pipe, up, down, n.cancel_scope)


@pytest.mark.parametrize("seed", range(1, 7))
async def test_chaos_proxy_exactly_once_in_order(seed: int) -> None:
    n = 300
    rng = random.Random(seed)
    srv = EchoServer()
    col = Collector(n)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, Messenger(SRV, srv.dispatcher()) as sm:
            addr = await sm.listen()
            proxy = ChaosProxy(addr, rng, cuts=60)
            paddr = await proxy.start(nursery)
            async with Messenger(CLI, col.dispatcher(), **FAST) as cm:
                peer = cm.connect(paddr)
                for i in range(n):
                    peer.send(request(i))
                    if rng.random() < 0.05:
                        await trio.sleep(0)
                await col.done.wait()
            nursery.cancel_scope.cancel()
    assert proxy.cuts_done >= 50, proxy.cuts_done
    assert srv.got == list(range(n))
    assert col.got == list(range(n))
    assert srv.bad == [] and col.bad == []
    assert col.resets == [] and srv.peer_resets == []


# ---- zero-copy landing -----------------------------------------------------------------------


async def test_data_lands_in_alloc_data_buffers() -> None:
    size, count = 1 << 20, 4
    dest = bytearray(size * count)
    landed: list[tuple[int, bool, bool]] = []
    done = trio.Event()
    conns = []

    def alloc(peer: EntityName | None, h: MsgHeader) -> list[memoryview]:
        return [memoryview(dest)[h.tid * size : (h.tid + 1) * size]]

    async def dispatch(peer: Peer, msg: Message) -> None:
        segs = msg.data.segments()
        same = all(seg.obj is dest for seg in segs)
        ok = bytes(dest[msg.tid * size : (msg.tid + 1) * size]) == payloads[msg.tid]
        landed.append((msg.tid, same, ok))
        conns.append(peer.conn)
        if len(landed) == count:
            done.set()

    rng = random.Random(4)
    payloads = [rng.randbytes(size) for _ in range(count)]
    with trio.fail_after(10):
        async with Messenger(SRV, SimpleDispatcher(dispatch, alloc)) as sm:
            addr = await sm.listen()
            async with Messenger(CLI, SimpleDispatcher(_ignore), **FAST) as cm:
                peer = cm.connect(addr)
                for i, data in enumerate(payloads):
                    peer.send(Message(type=1, tid=i, data=BioChain.from_buffer(bytearray(data))))
                await done.wait()
                copied = conns[-1].copied_bytes
    assert landed == [(i, True, True) for i in range(count)]
    # most bytes went straight from the socket into dest
    assert copied < size * count // 2, copied


async def _ignore(peer: Peer, msg: Message) -> None:
    pass


# ---- garbage peers ---------------------------------------------------------------------------


async def _recv_exact(s: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await s.receive_some(n - len(buf))
        assert chunk, "server closed during the handshake"
        buf += chunk
    return bytes(buf)


async def _until_eof(s: trio.SocketStream) -> None:
    try:
        while await s.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass  # a reset is as good as an EOF


async def _handshake_raw(addr: tuple[str, int], who: EntityName) -> trio.SocketStream:
    s = await trio.open_tcp_stream(*addr)
    await s.send_all(BANNER + CONNECT.pack(PROTOCOL_FEATURES, who.type, who.num, 12345, 1, 0,
                                           0, 0, 0))
    reply = await _recv_exact(s, len(BANNER) + CONNECT_REPLY.size)
    assert reply[: len(BANNER)] == BANNER
    assert CONNECT_REPLY.unpack(reply[len(BANNER) :])[0] == TAG_READY
    return s


def _header(seq: int, data_len: int, front_len: int = 0, good_crc: bool = True) -> bytes:
    body = HEADER.pack(seq, 1, 1, 0, 0, front_len, 0, data_len, 0, 1, 66)
    crc = crc32c(body) ^ (0 if good_crc else 1)
    return bytes([TAG_MSG]) + body + HEADER_CRC.pack(crc)


async def test_garbage_peers_dropped_while_good_client_works() -> None:
    srv = EchoServer()
    col = Collector(10**9)
    limits = Limits(max_data=1 << 20, max_front=1 << 16)
    with trio.fail_after(10):
        async with Messenger(SRV, srv.dispatcher(), limits=limits) as sm:
            addr = await sm.listen()
            async with Messenger(CLI, col.dispatcher(), **FAST) as cm:
                peer = cm.connect(addr)
                tid = 0

                async def roundtrip() -> None:
                    nonlocal tid
                    before = len(col.got)
                    peer.send(request(tid))
                    tid += 1
                    while len(col.got) == before:
                        await trio.sleep(0.001)

                await roundtrip()
                # 1: not our protocol at all
                s = await trio.open_tcp_stream(*addr)
                await s.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await _until_eof(s)
                await s.aclose()
                await roundtrip()
                # 2: a valid handshake, then a header whose crc is wrong
                s = await _handshake_raw(addr, EntityName(1, 66))
                await s.send_all(_header(1, 10, good_crc=False) + bytes(10 + 13))
                await _until_eof(s)
                await s.aclose()
                await roundtrip()
                # 3: valid header crc, huge lengths
                lies = ((60 << 20, 0), (0xFFFFFFFF, 0), (0, 60 << 20))
                for k, (data_len, front_len) in enumerate(lies):
                    s = await _handshake_raw(addr, EntityName(1, 67 + k))
                    await s.send_all(_header(1, data_len, front_len))
                    await _until_eof(s)
                    await s.aclose()
                    await roundtrip()
                # 4: random bytes right after a good handshake
                rng = random.Random(8)
                for k in range(5):
                    s = await _handshake_raw(addr, EntityName(1, 70 + k))
                    await s.send_all(bytes([rng.choice([0, 12, 200])]) + rng.randbytes(300))
                    await _until_eof(s)
                    await s.aclose()
                await roundtrip()
    assert srv.got == list(range(tid))
    assert col.got == list(range(tid))
    assert srv.bad == [] and col.bad == []
    # nothing was allocated for the liars
    assert all(h.data_len <= limits.max_data for h in srv.headers)
    assert all(h.src == CLI for h in srv.headers)


# ---- restarts --------------------------------------------------------------------------------


async def test_server_restart_same_port_resets_client_with_unacked() -> None:
    col = Collector(10**9)
    with trio.fail_after(10):
        async with Messenger(CLI, col.dispatcher(), **FAST) as cm:
            srv1 = EchoServer()
            async with Messenger(SRV, srv1.dispatcher()) as sm1:
                addr = await sm1.listen()
                peer = cm.connect(addr)
                peer.send(request(0))
                while col.got != [0]:
                    await trio.sleep(0.001)
                assert not peer.session.sent  # acked before the reply came
            # the server is gone; these can only be queued (or written into a dead socket)
            peer.send(request(1))
            peer.send(request(2))
            srv2 = EchoServer()
            async with Messenger(SRV, srv2.dispatcher()) as sm2:
                addr2 = await sm2.listen(port=addr[1])
                assert addr2 == addr
                await col.reset_event.wait()
                assert col.resets == [[1, 2]]
                assert srv2.got == []
                # the session starts over: new messages go through
                peer.send(request(3))
                while col.got != [0, 3]:
                    await trio.sleep(0.001)
    assert srv1.got == [0]
    assert srv2.got == [3]
    assert col.bad == []


async def test_client_restart_gives_server_on_peer_reset() -> None:
    srv = EchoServer()
    with trio.fail_after(10):
        async with Messenger(SRV, srv.dispatcher()) as sm:
            addr = await sm.listen()
            col1 = Collector(1)
            async with Messenger(CLI, col1.dispatcher(), **FAST) as cm1:
                cm1.connect(addr).send(request(0))
                await col1.done.wait()
            assert srv.peer_resets == []
            col2 = Collector(1)
            async with Messenger(CLI, col2.dispatcher(), **FAST) as cm2:
                assert cm2.nonce != cm1.nonce
                cm2.connect(addr).send(request(1))
                await col2.done.wait()
    assert len(srv.peer_resets) == 1
    assert srv.got == [0, 1]
    assert col2.got == [1] and col2.resets == []


async def test_keepalive_over_socket_and_close() -> None:
    srv = EchoServer()
    col = Collector(1)
    with trio.fail_after(10):
        async with Messenger(SRV, srv.dispatcher(), keepalive_interval=0.01) as sm:
            addr = await sm.listen()
            async with Messenger(CLI, col.dispatcher(), keepalive_interval=0.01, **FAST) as cm:
                peer = cm.connect(addr)
                peer.send(request(5))
                await col.done.wait()
                await trio.sleep(0.1)  # lets several keepalives flow; nothing asserted on time
                assert peer.conn is not None and peer.conn.open
                peer.close()
                while sm.incoming:
                    await trio.sleep(0.001)
                with pytest.raises(ConnectionError):
                    peer.send(request(6))
    assert srv.got == [5]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lossy_session_through_chaos_at_most_once_and_reported(seed: int) -> None:
    """Lossy: nothing is replayed, so every request is dispatched at most once, in order,
    and each one that was not acknowledged is handed back through on_reset."""
    n = 200
    rng = random.Random(seed)
    srv = EchoServer()
    col = Collector(n)
    dropped: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, Messenger(SRV, srv.dispatcher()) as sm:
            addr = await sm.listen()
            proxy = ChaosProxy(addr, rng, cuts=20, max_budget=100_000)
            paddr = await proxy.start(nursery)
            disp = SimpleDispatcher(col.dispatch,
                                    on_reset=lambda peer, msgs: dropped.extend(m.tid for m in msgs))
            async with Messenger(CLI, disp, lossy=True, **FAST) as cm:
                peer = cm.connect(paddr)


                def settled() -> set[int]:
                    return set(srv.got) | set(dropped)

                for i in range(n):
                    # a window of 8 requests in flight, so the cuts fall all along the run
                    while len(settled()) < i - 8:
                        await trio.sleep(0.001)
                    peer.send(request(i))
                # every request ends up dispatched by the server or handed back to us
                while set(srv.got) | set(dropped) != set(range(n)):
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert srv.bad == [] and col.bad == []
    assert len(srv.got) == len(set(srv.got)), "a request was dispatched twice"
    assert srv.got == sorted(srv.got)
    assert col.got == sorted(col.got) and len(col.got) == len(set(col.got))
    assert set(col.got) <= set(srv.got)
    assert proxy.cuts_done >= 10 and dropped, (proxy.cuts_done, dropped)
