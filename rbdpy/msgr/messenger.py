"""The trio driver around the sans-I/O Connection: sockets, tasks, timers, reconnects.

Everything protocol-shaped lives in ``connection.py``; this module only moves bytes: it
``sendmsg``s the connection's buffer list (no joining), ``recv_into``s either the
upper layer's own data segments or a staging buffer, runs keepalives, and reconnects with
backoff, replaying the session.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import socket as _stdsocket
import sys
import termios
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from rbdpy.errors import RbdpyError
from rbdpy.msgr.bufferpool import BufferPool
from rbdpy.msgr.connection import Connection
from rbdpy.msgr.events import (
    Closed,
    Event,
    Fault,
    HandshakeDone,
    KeepaliveAck,
    KeepaliveReceived,
    MessageReceived,
    PeerReset,
    SessionReset,
)
from rbdpy.msgr.message import EntityName, Message, MsgHeader
from rbdpy.msgr.session import Session, SessionRegistry
from rbdpy.msgr.wire import Limits

log = logging.getLogger("rbdpy.msgr")

IOV_MAX = 1024
STAGING = 256 << 10
YIELD_EVERY = 8
"""Socket calls a busy reader or writer makes in a row before it lets other tasks run."""
LOWAT_MIN = 128 << 10
"""While at least this much of a data section's current destination segment is still due,
the reader sets SO_RCVLOWAT to it (at most LOWAT_MAX) before waiting: epoll then reports the
socket once that much arrived, not at every segment the sender's kernel queued. Those bytes
are promised by the already-checked header, so the wait ends; EOF and errors end it too, and
the kernel wakes early if its receive window would close. Measured on 1 MiB messages over
loopback: ~3x fewer reader wakeups, and the *sender* (whose kernel runs the loopback
receive path and the wakeups) 230 -> 210-250 from 290-430 us of system time per MiB; the
bench ratio went from 0.68-0.76 to 0.90-0.93 of raw."""
LOWAT_MAX = 512 << 10
"""The highest SO_RCVLOWAT the reader sets, however much of the segment is still due (see
LOWAT_MIN): Linux grows a socket's receive buffer to hold its mark, so the cap bounds that
memory, and the reader still wakes for every LOWAT_MAX bytes to checksum what arrived."""

Address = tuple[str, int] | str
"""(host, port) for TCP, or a filesystem path for a unix socket."""


class Dispatcher(Protocol):
    """What the upper layer (OSD, objecter) gives the messenger."""

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        """Where the data of this incoming message should land (None: fresh pages)."""

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        """A message arrived, in order. Keep it short: spawn work that takes long."""

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        """Our session with ``peer`` was lost; ``dropped`` were never acknowledged."""

    def on_peer_reset(self, peer: Peer) -> None:
        """``peer`` restarted and opened a fresh session."""


class Peer:
    """A session with one peer, and whatever connection carries it right now."""

    def __init__(self, msgr: Messenger, session: Session, addr: Address | None) -> None:
        self.msgr = msgr
        self.session = session
        self.addr = addr
        self.conn: Connection | None = None
        self.closed = False
        self.connected = trio.Event()
        self._wake = trio.Event()
        self._room: trio.Event | None = None

    @property
    def name(self) -> EntityName | None:
        return self.session.peer

    def send(self, msg: Message) -> None:
        """Queue a message; it is numbered now and sent (or replayed) when connected."""
        if self.closed:
            raise ConnectionError(f"session with {self.name} is closed")
        self.session.queue(msg)
        self._wake.set()

    def kick(self) -> None:
        self._wake.set()

    async def wait_for_room(self, limit: int) -> None:
        """Flow control for producers: return once fewer than ``limit`` messages are queued or
        unacknowledged (acks arrive with the peer's traffic; a reset empties the backlog)."""
        while self.session.backlog() >= limit and not self.closed:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _made_room(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def close(self) -> None:
        """End the session: tell the peer (best effort) and stop reconnecting."""
        self.closed = True
        if self.conn is not None:
            self.conn.close()
        self._wake.set()

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.addr}>"


class Messenger:
    """Listens, connects, sends and dispatches; use as ``async with Messenger(...) as m``."""

    def __init__(
        self,
        me: EntityName,
        dispatcher: Dispatcher,
        *,
        limits: Limits | None = None,
        crc: bool = True,
        lossy: bool = False,
        keepalive_interval: float = 5.0,
        keepalive_timeout: float = 20.0,
        ack_delay: float = 0.005,
        backoff: tuple[float, float] = (0.02, 2.0),
        auth: bytes = b"",
    ) -> None:
        self.me = me
        self.dispatcher = dispatcher
        self.limits = limits or Limits()
        self.crc = crc
        self.lossy = lossy
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.ack_delay = ack_delay  # longest an owed ACK waits for a frame to ride on
        self.backoff = backoff
        self.auth = auth
        self.nonce = random.getrandbits(63) | 1
        self.registry = SessionRegistry()
        self.incoming: dict[EntityName, Peer] = {}
        self.outgoing: dict[Address, Peer] = {}
        self.listeners: list[trio.SocketListener] = []
        self.copied_bytes = 0
        self.rx_pool = BufferPool()
        self._global_seq = 0
        # dispatch outlives the connection that read the message (see _dispatch_events)
        self._dispatch_scopes: set[trio.CancelScope] = set()
        self._dispatch_locks: weakref.WeakKeyDictionary[Session, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: trio.Nursery | None = None

    async def __aenter__(self) -> Messenger:
        self._nursery_cm = trio.open_nursery()
        outer = await self._nursery_cm.__aenter__()
        self._nursery = await outer.start(self._run)
        return self

    async def _run(
        self, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own nursery for every socket task, so ``shutdown`` cancels them and only them
        (not the body of the caller's ``async with``)."""
        async with trio.open_nursery() as inner:
            task_status.started(inner)
            await trio.sleep_forever()

    async def __aexit__(self, *exc: object) -> bool | None:
        self.shutdown()
        return await self._nursery_cm.__aexit__(*exc)  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """Stop every listener and connection of this messenger."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        for scope in list(self._dispatch_scopes):
            scope.cancel()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "use the messenger as an async context manager"
        return self._nursery

    # -- listening ------------------------------------------------------------------------

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Accept connections on TCP; returns the bound address (port 0 picks one)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        return self._serve_listeners(listeners)

    async def listen_unix(self, path: str) -> str:
        sock = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        await sock.bind(path)
        sock.listen(128)
        self._serve_listeners([trio.SocketListener(sock)])
        return path

    def _serve_listeners(self, listeners: list[trio.SocketListener]) -> tuple[str, int]:
        self.listeners.extend(listeners)
        for lst in listeners:
            self.nursery.start_soon(self._accept_loop, lst)
        addr = listeners[0].socket.getsockname()
        return addr if isinstance(addr, str) else (addr[0], addr[1])

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                self.nursery.start_soon(self._run_incoming, stream)

    async def _run_incoming(self, stream: trio.SocketStream) -> None:
        _tune(stream.socket)
        conn = self._new_connection(client=False, session=None)
        try:
            await self._drive(None, conn, stream.socket)
        finally:
            await _aclose(stream)

    # -- connecting -----------------------------------------------------------------------

    def connect(self, addr: Address, *, lossy: bool | None = None) -> Peer:
        """The session to ``addr`` (created on first use); it (re)connects in the background."""
        peer = self.outgoing.get(addr)
        if peer is None or peer.closed:
            session = Session(lossy=self.lossy if lossy is None else lossy)
            peer = Peer(self, session, addr)
            self.outgoing[addr] = peer
            self.nursery.start_soon(self._run_outgoing, peer)
        return peer

    async def _run_outgoing(self, peer: Peer) -> None:
        delay = self.backoff[0]
        while not peer.closed:
            try:
                sock = await _open(peer.addr)  # type: ignore[arg-type]
            except OSError as e:
                log.debug("connect failed", extra={"addr": peer.addr, "error": str(e)})
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff[1])
                continue
            conn = self._new_connection(client=True, session=peer.session)
            try:
                handshook = await self._drive(peer, conn, sock)
            finally:
                sock.close()
            if handshook:
                delay = self.backoff[0]
            elif not peer.closed:
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff[1])

    def _new_connection(self, *, client: bool, session: Session | None) -> Connection:
        self._global_seq += 1
        holder: list[Connection] = []

        def alloc(h: MsgHeader) -> list[memoryview] | None:
            return self.dispatcher.alloc_data(holder[0].peer, h)

        conn = Connection(
            self.me, self.nonce, client=client, session=session,
            registry=None if client else self.registry, alloc_data=alloc, limits=self.limits,
            global_seq=self._global_seq, crc=self.crc, auth=self.auth, pool=self.rx_pool,
        )
        holder.append(conn)
        return conn

    # -- one connection's life ------------------------------------------------------------

    async def _drive(self, peer: Peer | None, conn: Connection, sock: trio.socket.SocketType
                     ) -> bool:
        """Run reader, writer and keepalive until the connection faults; True if it opened."""
        state = _Driven(peer)
        try:
            async with trio.open_nursery() as nursery:
                state.nursery = nursery
                for task in (self._reader, self._writer):
                    nursery.start_soon(self._guard, task, state, conn, sock)
                nursery.start_soon(self._keepalive, state, conn)
                nursery.start_soon(self._acker, state, conn)
        finally:
            self.copied_bytes += conn.copied_bytes
            conn.copied_bytes = 0
            if state.peer is not None:
                state.peer._made_room()
            if state.peer is not None and state.peer.conn is conn:
                state.peer.conn = None
                state.peer.connected = trio.Event()
        return state.opened

    async def _guard(self, task: Callable[..., Awaitable[None]], state: _Driven,
                     conn: Connection, sock: trio.socket.SocketType) -> None:
        """Run one side of the connection; whatever ends it ends the whole connection."""
        try:
            await task(state, conn, sock)
        except RbdpyError:
            raise  # an upper layer's error while dispatching, not the socket's
        except OSError as e:
            await self._handle(state, conn, conn.fault(f"socket error: {e}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            await self._handle(state, conn, conn.fault(f"socket closed: {e}"))
        finally:
            state.nursery.cancel_scope.cancel()  # type: ignore[union-attr]

    async def _reader(self, state: _Driven, conn: Connection, sock: trio.socket.SocketType
                      ) -> None:
        staging = memoryview(bytearray(STAGING))
        raw = state.raw = _raw(sock)
        recv_into = raw.recv_into
        streak = 0
        # SO_RCVLOWAT while the rest of a big data section is due: see LOWAT_MIN. 0: off
        lowat = 1 if raw.family in (_stdsocket.AF_INET, _stdsocket.AF_INET6) else 0
        while True:
            if streak >= YIELD_EVERY:  # busy socket: still let other tasks (and cancel) in
                streak = 0  # (here, never between a read and the dispatch of its events)
                await trio.lowlevel.checkpoint()
            target = conn.recv_target()
            direct = target is not None
            if not direct:
                target = staging[: conn.staging_hint(STAGING)]
            try:
                n = recv_into(target)
            except BlockingIOError:
                if lowat:
                    want = min(len(target), LOWAT_MAX) if direct and len(target) >= LOWAT_MIN \
                        else 1
                    if want != lowat:
                        lowat = state.lowat = _set_lowat(raw, want)
                await trio.lowlevel.wait_readable(raw)
                streak = 0
                continue
            events = (conn.received_direct(n) if direct else conn.feed(target[:n])) if n \
                else conn.eof()
            streak += 1
            state.last_rx = trio.current_time()
            if events:
                await self._dispatch_events(state, conn, events)
                # let the tasks those events woke run before reading on: a caller sends
                # its next request now, not after up to YIELD_EVERY more reads (at 1 MiB
                # reads through nbdkit that delay emptied the OSD's queue: -35% IOPS)
                streak = YIELD_EVERY
            if state.peer is not None:
                state.peer._made_room()  # acks may have come in: let producers re-check
            if not state.ack_armed and conn.ack_pending():
                state.ack_armed = True  # an ACK is owed: it rides on our next frame, or
                state.ack_wake.set()  # goes alone when the ack timer fires (Connection)
            if conn.has_output():
                if state.peer is not None:
                    state.peer.kick()
                else:
                    state.wake.set()
            if conn.faulted or not n or state.finished:
                return

    async def _dispatch_events(self, state: _Driven, conn: Connection, events: list[Event]
                               ) -> None:
        """Handle what one read produced. Its messages are already counted as received (and
        may be acked), so a fault of this connection must not cut their dispatch short: only
        ``shutdown`` does. A per-session lock keeps dispatch in order while a replaced
        connection finishes dispatching and its successor starts."""
        with trio.CancelScope(shield=True) as scope:
            self._dispatch_scopes.add(scope)
            try:
                if self.nursery.cancel_scope.cancel_called:
                    scope.cancel()
                if conn.session is None:
                    await self._handle(state, conn, events)
                    return
                lock = self._dispatch_locks.get(conn.session)
                if lock is None:
                    lock = self._dispatch_locks[conn.session] = trio.Lock()
                try:  # uncontended (nearly always): no scheduler pass, unlike ``async with``
                    lock.acquire_nowait()
                except trio.WouldBlock:
                    await lock.acquire()
                try:
                    await self._handle(state, conn, events)
                finally:
                    lock.release()
            finally:
                self._dispatch_scopes.discard(scope)

    async def _writer(self, state: _Driven, conn: Connection, sock: trio.socket.SocketType
                      ) -> None:
        raw = _raw(sock)
        sendmsg = raw.sendmsg
        streak = 0
        while True:
            if conn.faulted or state.finished:
                return
            peer = state.peer
            if peer is not None and peer.conn is not conn and conn.open:
                return  # replaced by a newer connection of the same session
            bufs = conn.data_to_send(IOV_MAX)
            if not bufs:
                if peer is not None and peer.closed and not conn.open:
                    return
                wake = peer._wake if peer is not None else state.wake
                await wake.wait()
                if peer is not None and peer._wake is wake:
                    peer._wake = trio.Event()
                elif state.wake is wake:
                    state.wake = trio.Event()
                continue
            try:
                n = sendmsg(bufs)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
                streak = 0
                continue
            conn.sent(n)
            streak += 1
            if streak >= YIELD_EVERY:
                streak = 0
                await trio.lowlevel.checkpoint()

    async def _keepalive(self, state: _Driven, conn: Connection) -> None:
        """Every ``keepalive_interval``, ask the peer for a sign of life; any byte read counts
        as one. A peer silent for more than ``keepalive_timeout`` is dropped at the next tick,
        so within ``keepalive_timeout + keepalive_interval`` of its last byte."""
        while True:
            await trio.sleep(self.keepalive_interval)
            idle = trio.current_time() - state.last_rx
            if idle > self.keepalive_timeout and state.lowat > 1 and state.raw is not None \
                    and _queued(state.raw):
                state.last_rx = trio.current_time()  # arriving, below the reader's low mark
                idle = 0.0
            if idle > self.keepalive_timeout:
                await self._handle(state, conn, conn.fault(f"no data from peer for {idle:.1f}s"))
                state.nursery.cancel_scope.cancel()  # type: ignore[union-attr]
                return
            conn.send_keepalive(int(trio.current_time() * 1e6))
            if state.peer is not None:
                state.peer.kick()

    async def _acker(self, state: _Driven, conn: Connection) -> None:
        """Send an owed ACK alone once it waited ``ack_delay`` with nothing to ride on."""
        while True:
            await state.ack_wake.wait()
            state.ack_wake = trio.Event()
            await trio.sleep(self.ack_delay)
            state.ack_armed = False
            if conn.ack_pending():
                conn.flush_ack()
                if state.peer is not None:
                    state.peer.kick()
                else:
                    state.wake.set()

    async def _handle(self, state: _Driven, conn: Connection, events: list[Event]) -> None:
        """Act on ``events`` in order, consuming the list: each event is popped before it is
        handled, so once a message's dispatch returns, nothing here references it and its
        pooled buffer can go back (see BufferPool)."""
        d = self.dispatcher
        events.reverse()  # popped from the end: first event first
        while events:
            ev = events.pop()
            if isinstance(ev, MessageReceived):
                msg = ev.msg
                del ev  # the event holds the message: ours must not outlive dispatch
                token = msg._pool_token
                await d.dispatch(state.peer, msg)  # type: ignore[arg-type]
                if token is not None:
                    del msg  # if the dispatcher kept nothing, its buffer is free again
                    self.rx_pool.give_back(token)
            elif isinstance(ev, HandshakeDone):
                state.opened = True
                peer = state.peer
                if peer is None:  # accepting side: find or make the Peer for this session
                    assert conn.session is not None
                    peer = self.incoming.get(ev.peer)
                    if peer is None or peer.session is not conn.session:
                        peer = Peer(self, conn.session, None)
                        self.incoming[ev.peer] = peer
                    state.peer = peer
                    state.wake.set()
                if peer.conn is not None and peer.conn is not conn:
                    peer.conn.fault("replaced by a new connection")
                peer.conn = conn
                peer.connected.set()
                peer.kick()
            elif isinstance(ev, SessionReset):
                d.on_reset(state.peer or self._orphan(conn), ev.dropped)
            elif isinstance(ev, PeerReset):
                old = self.incoming.pop(ev.peer, None)
                if old is not None:
                    d.on_peer_reset(old)
            elif isinstance(ev, Fault):
                pass  # logged by the connection; the reconnect loop or the peer takes over
            elif isinstance(ev, Closed):
                if state.peer is not None:
                    state.peer.closed = True
                    self.incoming.pop(conn.peer, None)  # type: ignore[arg-type]
                state.finished = True
            elif isinstance(ev, KeepaliveReceived | KeepaliveAck):
                pass

    def _orphan(self, conn: Connection) -> Peer:
        assert conn.session is not None
        return Peer(self, conn.session, None)


class _Driven:
    """Per-connection driver state shared by its reader, writer and keepalive tasks."""

    def __init__(self, peer: Peer | None) -> None:
        self.peer = peer
        self.opened = False
        self.last_rx = trio.current_time()
        self.wake = trio.Event()
        self.finished = False
        self.nursery: trio.Nursery | None = None
        self.lowat = 1  # the reader's SO_RCVLOWAT: above 1, data can queue unread a while
        self.ack_armed = False  # the ack timer runs (see Messenger._acker)
        self.ack_wake = trio.Event()
        self.raw: _stdsocket.socket | None = None


def _raw(sock: trio.socket.SocketType) -> _stdsocket.socket:
    """The non-blocking stdlib socket under trio's wrapper. The drivers call it directly and
    wait with ``trio.lowlevel.wait_readable/wait_writable`` only when it would block: trio's
    own socket methods pass through the scheduler (a checkpoint, one ``epoll_wait``) on
    every call, even one that succeeds at once, which measured about a third of the
    messenger's CPU per MiB."""
    raw = getattr(sock, "_sock", None)  # trio keeps it there in every release since 0.1
    if not isinstance(raw, _stdsocket.socket):
        raise RuntimeError("this trio version hides its stdlib socket; rbdpy needs it")
    return raw


def _set_lowat(raw: _stdsocket.socket, want: int) -> int:
    """Set SO_RCVLOWAT; returns the value now in force, or 0 if the kernel refused (the
    reader then never tries again, and waits as it would without it)."""
    try:
        raw.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVLOWAT, want)
    except OSError as e:
        log.debug("SO_RCVLOWAT not available (%s): reading without it", e)
        return 0
    return want


def _queued(raw: _stdsocket.socket) -> int:
    """Bytes the kernel holds for ``raw`` that nobody has read yet (FIONREAD)."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(raw.fileno(), termios.FIONREAD, buf)
    except OSError:
        return 0
    return int.from_bytes(buf, sys.byteorder)


def _tune(sock: trio.socket.SocketType) -> None:
    if sock.family in (_stdsocket.AF_INET, _stdsocket.AF_INET6):
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)


async def _open(addr: Address) -> trio.socket.SocketType:
    if isinstance(addr, str):
        sock = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
        try:
            await sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock
    stream = await trio.open_tcp_stream(addr[0], addr[1])
    _tune(stream.socket)
    return stream.socket


async def _aclose(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


DispatchFn = Callable[[Peer, Message], Awaitable[None]]


class SimpleDispatcher:
    """A Dispatcher from plain callables: handy for tools, tests and benchmarks."""

    def __init__(
        self,
        dispatch: DispatchFn,
        alloc_data: Callable[[EntityName | None, MsgHeader], list[memoryview] | None]
        | None = None,
        on_reset: Callable[[Peer, list[Message]], None] | None = None,
        on_peer_reset: Callable[[Peer], None] | None = None,
    ) -> None:
        self._dispatch = dispatch
        self._alloc = alloc_data
        self._on_reset = on_reset
        self._on_peer_reset = on_peer_reset

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        return self._alloc(peer, header) if self._alloc else None

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        await self._dispatch(peer, msg)

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        if self._on_reset:
            self._on_reset(peer, dropped)

    def on_peer_reset(self, peer: Peer) -> None:
        if self._on_peer_reset:
            self._on_peer_reset(peer)
