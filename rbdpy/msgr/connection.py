"""The messenger's sans-I/O core: one Connection per socket.

Bytes go in (``feed`` from a staging buffer, or ``recv_target``/``received_direct`` when the
next bytes belong in a data segment the upper layer provided), events come out; buffers to
send come out of ``data_to_send`` and are retired with ``sent(n)``. No sockets, threads or
clocks live here, so every byte boundary, fault and reconnect can be tested deterministically.

The receive side is a state machine over the sections of the stream (banner, connect or
connect reply, then frames): each state names the section it waits for, and a table maps it
to the handler of that section. Sessions and the handshake's decisions live in
``session.py``, the wire vocabulary in ``wire.py``, the events in ``events.py``.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import ClassVar

from rbdpy.crc import crc32c
from rbdpy.msgr.bufferpool import POOL_MIN, BufferPool
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
from rbdpy.msgr.message import (
    FOOTER_LEN,
    HEADER_LEN,
    EntityName,
    Message,
    MsgHeader,
    decode_header,
    encode_footer,
    encode_header,
)
from rbdpy.msgr.payload import BioChain, Pages, SegmentCursor, byte_view, slice_segments
from rbdpy.msgr.session import (
    Accept,
    Connect,
    Known,
    Reply,
    Session,
    SessionRegistry,
    accept,
    on_reply,
)
from rbdpy.msgr.wire import (
    BANNER,
    CONNECT,
    CONNECT_FLAG_LOSSY,
    CONNECT_REPLY,
    FEATURE_NOCRC,
    HEADER_LENGTHS,
    LENGTHS_AT,
    PROTOCOL_FEATURES,
    TAG_ACK,
    TAG_CLOSE,
    TAG_KEEPALIVE,
    TAG_KEEPALIVE_ACK,
    TAG_MSG,
    TAG_READY,
    TAG_RESETSESSION,
    TAG_RETRY_GLOBAL,
    TAG_RETRY_SESSION,
    TAG_U64,
    U64,
    Limits,
    ProtocolError,
    check_footer,
)

log = logging.getLogger("rbdpy.msgr")

ACK_AFTER = 16
"""Received messages after which an ACK frame goes out even with nothing to ride on."""

DIRECT_MIN = 8192
"""Data segments with at least this much left are ``recv_into``'d directly; smaller pieces
come through the staging buffer (one small copy is cheaper than one more syscall)."""


AllocData = Callable[[MsgHeader], list[memoryview] | None]



class RecvState(enum.Enum):
    """What the receive side waits for next: a section of the stream, handled whole."""

    BANNER = "banner"
    CONNECT = "connect"  # accepting side: the peer's connect record
    CONNECT_AUTH = "connect auth"  # ... and its authenticator
    REPLY = "reply"  # connecting side: the acceptor's verdict
    REPLY_AUTH = "reply auth"
    TAG = "tag"  # the session is open: the next frame's tag byte
    U64 = "u64"  # the value of an ACK, KEEPALIVE or KEEPALIVE_ACK
    HEADER = "header"
    FRONT = "front"
    MIDDLE = "middle"
    DATA = "data"  # not a section: streamed into the data segments as it arrives
    FOOTER = "footer"
    DONE = "done"  # the peer closed the session: nothing may follow

    # members are singletons, equal only to themselves: hash them by identity too, in C
    # (Enum's own __hash__ is a Python function, paid on every _ON_SECTION lookup)
    __hash__ = object.__hash__


# the states of the per-read loops, as plain names: an attribute of an Enum class costs there
_TAG, _DATA, _FOOTER, _DONE = RecvState.TAG, RecvState.DATA, RecvState.FOOTER, RecvState.DONE
_MID_MESSAGE = frozenset(
    {RecvState.HEADER, RecvState.FRONT, RecvState.MIDDLE, RecvState.DATA, RecvState.FOOTER}
)


class Connection:
    """The protocol on one socket: handshake, then MSG/ACK/KEEPALIVE/CLOSE frames."""

    def __init__(
        self,
        me: EntityName,
        nonce: int,
        *,
        client: bool,
        session: Session | None = None,
        registry: SessionRegistry | None = None,
        alloc_data: AllocData | None = None,
        limits: Limits | None = None,
        global_seq: int = 1,
        crc: bool = True,
        auth: bytes = b"",
        pool: BufferPool | None = None,
    ) -> None:
        if client and session is None:
            raise ValueError("a connecting side needs its session")
        if not client and registry is None:
            raise ValueError("an accepting side needs a session registry")
        self.me = me
        self.nonce = nonce
        self.client = client
        self.session = session
        self.registry = registry
        self.alloc_data = alloc_data
        self.limits = limits or Limits()
        self.global_seq = global_seq
        self.crc = crc
        self.auth = auth
        self.pool = pool
        self._pool_token: int | None = None
        self._peer_nocrc = False
        self.open = False
        self.faulted: str | None = None
        self.peer: EntityName | None = session.peer if session else None
        self.copied_bytes = 0  # data bytes that went through the staging copy (counted)
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._acked_out = 0
        self._ack_now = False
        self._events: list[Event] = []
        # receive side
        self._state = RecvState.BANNER
        self._want = len(BANNER)
        self._buf = bytearray(64)
        self._have = 0
        self._u64_tag = 0
        self._hdr: MsgHeader | None = None
        self._front: bytes = b""
        self._middle: bytes = b""
        self._data_payload: Pages | BioChain | None = None
        self._data_cursor: SegmentCursor | None = None
        self._data_crc = 0
        self._skip = False
        self._last_data_len = 0
        self._pending_connect: tuple | None = None
        self._push(memoryview(BANNER))
        if client:
            self._send_connect()

    # -- sending ------------------------------------------------------------------------

    def _push(self, buf: memoryview | bytes) -> None:
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        if len(mv):
            self._out.append(mv)
            self._out_bytes += len(mv)

    def _features(self) -> int:
        return PROTOCOL_FEATURES | (0 if self.crc else FEATURE_NOCRC)

    def _send_connect(self) -> None:
        s = self.session
        assert s is not None
        self._push(
            CONNECT.pack(
                self._features(), self.me.type, self.me.num, self.nonce, self.global_seq,
                s.connect_seq, s.in_seq, CONNECT_FLAG_LOSSY if s.lossy else 0, len(self.auth),
            )
            + self.auth
        )

    def send_message(self, msg: Message) -> None:
        """Queue a message on the session (it is framed when output is next asked for)."""
        assert self.session is not None
        self.session.queue(msg)

    def send_keepalive(self, stamp: int) -> None:
        if self.open:
            self._push(TAG_U64.pack(TAG_KEEPALIVE, stamp))

    def close(self) -> None:
        """Tell the peer we are done with the session (no replay after this)."""
        if self.open:
            self._push(bytes([TAG_CLOSE]))
            self.open = False

    def _frame(self, msg: Message) -> None:
        if msg._wire_head is None:
            msg._wire_head = bytes([TAG_MSG]) + encode_header(msg, self.me)
            msg._wire_foot = encode_footer(msg, self.crc)
        self._push(msg._wire_head)
        self._push(msg.front)
        self._push(msg.middle)
        for seg in msg.data_segments():
            self._push(seg)
        self._push(msg._wire_foot)

    def data_to_send(self, max_bufs: int = 1024, max_bytes: int = 8 << 20) -> list[memoryview]:
        """The next buffers to write, in order: a prefix of at most ``max_bufs`` views.

        Messages are framed lazily, only as far as the budget reaches, so a deep queue costs
        nothing until its turn (and a ``sendmsg`` never sees more than the iovec limit).
        """
        s = self.session
        if self.open and s is not None and not self.faulted:
            if s.in_seq > self._acked_out and (s.unsent or self._out or self._ack_due(s)):
                self._acked_out = s.in_seq
                self._ack_now = False
                self._push(TAG_U64.pack(TAG_ACK, s.in_seq))
            unsent, out = s.unsent, self._out
            while unsent and len(out) < max_bufs and self._out_bytes < max_bytes:
                msg = unsent.popleft()
                self._frame(msg)
                # lossy too: an unacked message must be reported in SessionReset.dropped
                s.sent.append(msg)
        if len(self._out) <= max_bufs:
            return list(self._out)
        return list(islice(self._out, max_bufs))

    def has_output(self) -> bool:
        s = self.session
        return bool(
            self._out
            or (self.open and s is not None
                and (s.unsent or (s.in_seq > self._acked_out and self._ack_due(s))))
        )

    # Acknowledgements ride on outgoing frames. Alone, an ACK frame costs both sides a
    # syscall and the peer a wakeup, for every message of a request/reply exchange (at
    # queue depth 1 that was a third of an OSD's CPU per 4 KiB read): so one goes out on its
    # own only once ACK_AFTER messages wait for it, or when the driver's ack timer calls
    # ``flush_ack`` (it must, or a peer waiting for room in its backlog would wait forever).

    def ack_pending(self) -> bool:
        """Received messages the peer has not been told about yet."""
        s = self.session
        return self.open and s is not None and s.in_seq > self._acked_out

    def flush_ack(self) -> None:
        """Make a pending acknowledgement due now (the driver's ack timer fired)."""
        self._ack_now = True

    def _ack_due(self, s: Session) -> bool:
        return self._ack_now or s.in_seq - self._acked_out >= ACK_AFTER

    def sent(self, n: int) -> None:
        """``n`` bytes of ``data_to_send()`` went out."""
        self._out_bytes -= n
        out = self._out
        while n:
            head = out[0]
            if n >= len(head):
                n -= len(head)
                out.popleft()
            else:
                out[0] = head[n:]
                n = 0

    # -- receiving ----------------------------------------------------------------------

    def recv_target(self) -> memoryview | None:
        """Where the next ``recv_into`` should go directly, or None to use a staging buffer.

        Inside a data section with a big enough piece of a destination segment left, the bytes
        land in the upper layer's buffer with no copy.
        """
        if self._state is _DATA and not self._skip:
            cur = self._data_cursor.current()  # type: ignore[union-attr]
            if len(cur) >= DIRECT_MIN:
                return cur
        return None

    def staging_hint(self, size: int) -> int:
        """How much a staging ``recv_into`` should ask for.

        After a message with a big data section, the next one probably has one too: ask only
        for a little more than its header, so the data goes to ``recv_target`` instead of
        being copied out of the staging buffer.
        """
        return min(size, 1024) if self._last_data_len >= DIRECT_MIN * 4 else size

    def received_direct(self, n: int) -> list[Event]:
        """``n`` bytes were received into ``recv_target()``."""
        cur = self._data_cursor
        assert cur is not None
        if self.crc:
            self._data_crc = crc32c(cur.current()[:n], self._data_crc)
        cur.advance(n)
        if cur.remaining == 0:
            self._state, self._want, self._have = _FOOTER, FOOTER_LEN, 0
        return self._take_events()

    def feed(self, data: memoryview | bytes) -> list[Event]:
        """Bytes arrived (from a staging buffer the caller may reuse afterwards)."""
        if self.faulted:
            return []
        mv = data if isinstance(data, memoryview) else memoryview(data)
        pos, n = 0, len(mv)
        on_section = self._ON_SECTION  # each state's handler of its whole section
        try:
            while pos < n and not self.faulted:
                st = self._state
                if st is _TAG and mv[pos] == TAG_MSG and self._have == 0:
                    end = self._whole_message(mv, pos, n)
                    if end:
                        pos = end
                        continue
                if st is _DATA:
                    pos = self._feed_data(mv, pos)
                    continue
                if st is _DONE:
                    raise ProtocolError("bytes after close")
                want = self._want
                if self._have == 0 and n - pos >= want:
                    # the whole section is in the staging buffer: parse it in place
                    on_section[st](self, mv[pos : pos + want])
                    pos += want
                    continue
                take = min(want - self._have, n - pos)
                if len(self._buf) < want:
                    self._buf = bytearray(max(want, 2 * len(self._buf)))
                self._buf[self._have : self._have + take] = mv[pos : pos + take]
                self._have += take
                pos += take
                if self._have == want:
                    self._have = 0
                    on_section[st](self, memoryview(self._buf)[:want])
        except ProtocolError as e:
            log.warning("protocol error from %s: %s", self.peer, e)
            self._fault(str(e))
        return self._take_events()

    def eof(self) -> list[Event]:
        """The peer closed the socket."""
        if not self.faulted and self._state is not _DONE:
            where = "mid-message" if self._state in _MID_MESSAGE else "between frames"
            self._fault(f"peer closed the connection {where}")
        return self._take_events()

    def fault(self, reason: str) -> list[Event]:
        """The driver saw the transport fail (socket error, keepalive timeout)."""
        self._fault(reason)
        return self._take_events()

    def _take_events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def _fault(self, reason: str) -> None:
        if self.faulted:
            return
        self.faulted = reason
        self.open = False
        if self._pool_token is not None and self.pool is not None:
            # the message will never be whole; the pool sees our views and just drops it
            self.pool.give_back(self._pool_token)
            self._pool_token = None
        s = self.session
        if s is not None and s.lossy and s.owner is self:
            # lossy: nothing is replayed, so everything not yet answered is the caller's to redo
            self._events.append(SessionReset(self.peer, s.reset()))
        log.info("connection to %s faulted: %s", self.peer, reason)
        self._events.append(Fault(reason))

    def _feed_data(self, mv: memoryview, pos: int) -> int:
        cur = self._data_cursor
        assert cur is not None
        take = min(cur.remaining, len(mv) - pos)
        done = 0
        while done < take:
            dst = cur.current()
            k = min(len(dst), take - done)
            chunk = mv[pos + done : pos + done + k]
            if not self._skip:
                dst[:k] = chunk
                self.copied_bytes += k
            if self.crc:
                self._data_crc = crc32c(chunk, self._data_crc)
            cur.advance(k)
            done += k
        if cur.remaining == 0:
            self._state, self._want, self._have = _FOOTER, FOOTER_LEN, 0
        return pos + take

    def _expect(self, state: RecvState, want: int) -> None:
        self._state, self._want = state, want

    # -- handshake ----------------------------------------------------------------------

    def _on_banner(self, buf: memoryview) -> None:
        if bytes(buf) != BANNER:
            raise ProtocolError(f"bad banner {bytes(buf)!r}")
        if self.client:
            self._expect(RecvState.REPLY, CONNECT_REPLY.size)
        else:
            self._expect(RecvState.CONNECT, CONNECT.size)

    def _on_connect_record(self, buf: memoryview) -> None:
        fields = CONNECT.unpack(buf)
        if fields[-1] > self.limits.max_auth:
            raise ProtocolError(f"auth length {fields[-1]} over the limit")
        self._pending_connect = fields
        if fields[-1]:
            self._expect(RecvState.CONNECT_AUTH, fields[-1])
        else:
            self._on_connect(fields, b"")

    def _on_connect_auth(self, buf: memoryview) -> None:
        assert self._pending_connect is not None
        self._on_connect(self._pending_connect, bytes(buf))

    def _on_reply_record(self, buf: memoryview) -> None:
        fields = CONNECT_REPLY.unpack(buf)
        if fields[-1] > self.limits.max_auth:
            raise ProtocolError(f"auth length {fields[-1]} over the limit")
        self._pending_connect = fields
        if fields[-1]:
            self._expect(RecvState.REPLY_AUTH, fields[-1])
        else:
            self._on_reply(fields, b"")

    def _on_reply_auth(self, buf: memoryview) -> None:
        assert self._pending_connect is not None
        self._on_reply(self._pending_connect, bytes(buf))

    def _on_connect(self, f: tuple, auth: bytes) -> None:
        """Accepting side: carry out ``session.accept``'s verdict on a peer's connect."""
        features, ptype, pnum, pnonce, gseq, cseq, peer_in_seq, flags, _alen = f
        peer = EntityName(ptype, pnum)
        self.peer = peer
        self._peer_nocrc = bool(features & FEATURE_NOCRC)
        reg = self.registry
        assert reg is not None
        lossy = bool(flags & CONNECT_FLAG_LOSSY)
        s = reg.get(peer)
        verdict = accept(Connect(gseq, cseq, pnonce, lossy), None if s is None else Known.of(s))
        if verdict is Accept.RETRY_GLOBAL:
            assert s is not None
            return self._refuse(TAG_RETRY_GLOBAL, s.peer_global_seq, 0)
        if verdict is Accept.RESET_SESSION:
            return self._refuse(TAG_RESETSESSION, 0, 0)
        if verdict is Accept.RETRY_SESSION:
            assert s is not None
            return self._refuse(TAG_RETRY_SESSION, 0, s.connect_seq)
        if verdict is Accept.NEW or verdict is Accept.REPLACE:
            if verdict is Accept.REPLACE:
                self._events.append(PeerReset(peer))
            s = Session(lossy=lossy, peer=peer, peer_nonce=pnonce)
            reg.sessions[peer] = s
        elif verdict is Accept.RESTART:
            self._events.append(PeerReset(peer))
            s.reset()  # type: ignore[union-attr]
        assert s is not None  # NEW, REPLACE, RESTART or RESUME: the session opens
        s.peer_global_seq = gseq
        s.connect_seq = cseq + 1
        if isinstance(s.owner, Connection) and s.owner is not self:
            s.owner._fault("replaced by a new connection from the same peer")
        s.owner = self
        self.session = s
        s.requeue_sent(peer_in_seq)
        self._acked_out = s.in_seq
        self._reply(TAG_READY, self.global_seq, s.connect_seq, s.in_seq)
        self._opened(peer, pnonce)

    def _refuse(self, tag: int, gseq: int, cseq: int) -> None:
        """Reply with a verdict other than READY and wait for the peer's next connect."""
        self._reply(tag, gseq, cseq, 0)
        self._expect(RecvState.CONNECT, CONNECT.size)

    def _reply(self, tag: int, gseq: int, cseq: int, in_seq: int) -> None:
        self._push(
            CONNECT_REPLY.pack(
                tag, self._features(), self.me.type, self.me.num, self.nonce, gseq, cseq,
                in_seq, 0, 0,
            )
        )

    def _on_reply(self, f: tuple, auth: bytes) -> None:
        """Connecting side: carry out ``session.on_reply``'s reading of the acceptor's reply."""
        tag, features, ptype, pnum, pnonce, gseq, cseq, peer_in_seq, _flags, _alen = f
        self._peer_nocrc = bool(features & FEATURE_NOCRC)
        s = self.session
        assert s is not None
        peer = EntityName(ptype, pnum)
        step = on_reply(tag, s.peer_nonce, pnonce, s.lossy)
        if step is Reply.OPEN or step is Reply.OPEN_RESET:
            if step is Reply.OPEN_RESET:
                self._session_reset(peer)
            s.peer, s.peer_nonce = peer, pnonce
            s.connect_seq = cseq
            s.owner = self
            s.requeue_sent(peer_in_seq)
            self._acked_out = s.in_seq
            self._opened(peer, pnonce)
            return
        if step is Reply.RESET:
            self._session_reset(peer)
        elif step is Reply.RETRY_SESSION:
            s.connect_seq = cseq
        elif step is Reply.RETRY_GLOBAL:
            self.global_seq = gseq + 1
        elif step is Reply.WAIT:
            raise ProtocolError("peer asked us to wait")
        elif step is Reply.BADAUTH:
            raise ProtocolError("authentication rejected by peer")
        else:
            raise ProtocolError(f"unknown connect reply tag {tag}")
        self._send_connect()
        self._expect(RecvState.REPLY, CONNECT_REPLY.size)

    def _session_reset(self, peer: EntityName) -> None:
        s = self.session
        assert s is not None
        dropped = s.reset()
        s.peer_nonce = 0
        self._events.append(SessionReset(peer, dropped))

    def _opened(self, peer: EntityName, nonce: int) -> None:
        self.peer = peer
        self.open = True
        self._expect(_TAG, 1)
        self._events.append(HandshakeDone(peer, nonce))

    # -- frames -------------------------------------------------------------------------

    def _on_tag(self, buf: memoryview) -> None:
        tag = buf[0]
        if tag == TAG_MSG:
            self._expect(RecvState.HEADER, HEADER_LEN)
        elif tag in (TAG_ACK, TAG_KEEPALIVE, TAG_KEEPALIVE_ACK):
            self._u64_tag = tag
            self._expect(RecvState.U64, 8)
        elif tag == TAG_CLOSE:
            self.open = False
            self._state = _DONE
            if self.session is not None and self.registry is not None and self.peer:
                self.registry.remove(self.peer)
            self._events.append(Closed())
        else:
            raise ProtocolError(f"unknown tag {tag}")

    def _on_u64(self, buf: memoryview) -> None:
        (v,) = U64.unpack(buf)
        tag = self._u64_tag
        s = self.session
        assert s is not None
        if tag == TAG_ACK:
            if v > s.out_seq:
                raise ProtocolError(f"ack {v} for a message never sent (last {s.out_seq})")
            s.acked(v)
        elif tag == TAG_KEEPALIVE:
            self._push(TAG_U64.pack(TAG_KEEPALIVE_ACK, v))
            self._events.append(KeepaliveReceived(v))
        else:
            self._events.append(KeepaliveAck(v))
        self._expect(_TAG, 1)

    def _whole_message(self, mv: memoryview, pos: int, n: int) -> int:
        """A message lying whole in the staging buffer at ``pos`` (tag byte included), handled
        in one go: where the next frame starts, or 0 if it is not all there yet.

        Small messages (a 4 KiB read reply, a 4 KiB write request) nearly always arrive whole;
        walking them through the section-by-section states cost more than the rest of their
        handling. Same checks, same copies, same events as the general path."""
        hpos = pos + 1
        if n - hpos < HEADER_LEN:
            return 0
        fields = HEADER_LENGTHS.unpack_from(mv, hpos + LENGTHS_AT)
        front_len, middle_len, data_len = fields
        fpos = hpos + HEADER_LEN
        mpos = fpos + front_len
        dpos = mpos + middle_len
        tpos = dpos + data_len
        end = tpos + FOOTER_LEN
        if end > n:
            return 0
        try:
            h = decode_header(mv, hpos)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        skip = self._admit_header(h)
        front = bytes(mv[fpos:mpos]) if front_len else b""
        middle = bytes(mv[mpos:dpos]) if middle_len else b""
        data = mv[dpos:tpos]
        self._last_data_len = data_len
        check_footer(h, mv[tpos:end], front, middle,
                     crc32c(data) if self.crc and data_len else 0, self.crc, self._peer_nocrc)
        if skip:
            return end
        payload = None
        if data_len:
            payload, segs = self._data_destination(h)
            off = 0
            for seg in segs:
                k = len(seg)
                seg[:] = data[off : off + k]
                off += k
            self.copied_bytes += data_len
        self._deliver(h, front, middle, payload)
        return end

    def _on_header(self, buf: memoryview) -> None:
        try:
            h = decode_header(buf)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        self._skip = self._admit_header(h)
        self._hdr = h
        self._front = self._middle = b""
        self._expect(RecvState.FRONT, h.front_len)
        if h.front_len == 0:
            self._after_front()

    def _on_front(self, buf: memoryview) -> None:
        self._front = bytes(buf)  # small, and it must outlive the staging buffer
        self._after_front()

    def _on_middle(self, buf: memoryview) -> None:
        self._middle = bytes(buf)
        self._start_data()

    def _admit_header(self, h: MsgHeader) -> bool:
        """Limits and sequence checks of a verified header; True if it is a replayed
        duplicate to read past and drop."""
        lim = self.limits
        if h.front_len > lim.max_front:
            raise ProtocolError(f"front_len {h.front_len} over the limit {lim.max_front}")
        if h.middle_len > lim.max_middle:
            raise ProtocolError(f"middle_len {h.middle_len} over the limit {lim.max_middle}")
        if h.data_len > lim.max_data:
            raise ProtocolError(f"data_len {h.data_len} over the limit {lim.max_data}")
        s = self.session
        assert s is not None
        if h.seq <= s.in_seq:
            return True  # a replayed duplicate: read it past, deliver nothing
        if h.seq != s.in_seq + 1 and not s.lossy:
            raise ProtocolError(f"seq {h.seq} skips ahead of {s.in_seq + 1}")
        return False

    def _after_front(self) -> None:
        assert self._hdr is not None
        self._expect(RecvState.MIDDLE, self._hdr.middle_len)
        if self._hdr.middle_len == 0:
            self._start_data()

    def _start_data(self) -> None:
        h = self._hdr
        assert h is not None
        self._data_crc = 0
        n = h.data_len
        self._last_data_len = n
        payload: Pages | BioChain | None = None
        if n and self._skip:
            segs = [memoryview(bytearray(min(n, 65536)))]
            segs = segs * ((n + len(segs[0]) - 1) // len(segs[0]))
            self._data_cursor = SegmentCursor(slice_segments(segs, 0, n, partial=True))
        elif n:
            payload, segs = self._data_destination(h)
            self._data_cursor = SegmentCursor(segs)
        self._data_payload = payload
        if n:
            self._expect(_DATA, n)
        else:
            self._expect(_FOOTER, FOOTER_LEN)

    def _data_destination(self, h: MsgHeader) -> tuple[BioChain, list[memoryview]]:
        """Where a message's data goes: the upper layer's segments (alloc_data), else a
        pooled or fresh buffer; as a payload and its segments clipped to ``data_len``."""
        n = h.data_len
        segs = self.alloc_data(h) if self.alloc_data else None
        if segs is not None:
            segs = [byte_view(s) for s in segs]  # lengths in bytes, whatever the item format
        if segs is not None and sum(len(s) for s in segs) >= n:
            payload = BioChain(slice_segments(segs, 0, n, partial=True))
        elif self.pool is not None and n >= POOL_MIN:
            # no destination offered: a pooled buffer (see BufferPool), handed back
            # by the driver once the message is dispatched
            self._pool_token, view = self.pool.take(n)
            payload = BioChain([view])
        else:
            # no destination offered (or too small): one fresh buffer, bounded by
            # max_data; contiguous so it is filled by a few large recv_into calls
            payload = BioChain([memoryview(bytearray(n))])
        return payload, payload.segments()

    def _on_footer(self, buf: memoryview) -> None:
        h = self._hdr
        assert h is not None and self.session is not None
        check_footer(h, buf, self._front, self._middle, self._data_crc, self.crc,
                     self._peer_nocrc)
        self._expect(_TAG, 1)
        self._data_cursor = None  # its views would pin a pooled buffer
        if self._skip:
            self._skip = False
            return
        payload, self._data_payload = self._data_payload, None
        self._deliver(h, self._front, self._middle, payload)

    def _deliver(self, h: MsgHeader, front: bytes, middle: bytes, payload: BioChain | None
                 ) -> None:
        assert self.session is not None
        self.session.in_seq = h.seq
        msg = Message(
            type=h.type, front=front, middle=middle, data=payload, tid=h.tid,
            priority=h.priority, version=h.version, data_off=h.data_off, seq=h.seq, src=h.src,
        )
        msg._pool_token, self._pool_token = self._pool_token, None
        self._events.append(MessageReceived(msg))

    # the handler of each state's section (DATA streams through _feed_data and
    # received_direct instead; DONE takes nothing)
    _ON_SECTION: ClassVar[dict[RecvState, Callable[[Connection, memoryview], None]]] = {
        RecvState.BANNER: _on_banner,
        RecvState.CONNECT: _on_connect_record,
        RecvState.CONNECT_AUTH: _on_connect_auth,
        RecvState.REPLY: _on_reply_record,
        RecvState.REPLY_AUTH: _on_reply_auth,
        RecvState.TAG: _on_tag,
        RecvState.U64: _on_u64,
        RecvState.HEADER: _on_header,
        RecvState.FRONT: _on_front,
        RecvState.MIDDLE: _on_middle,
        RecvState.FOOTER: _on_footer,
    }
