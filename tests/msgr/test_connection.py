"""rbdpy/msgr/connection.py: the sans-I/O Connection and Session, driven in memory.

Bytes move between a client and a server Connection through a staging buffer that is
scribbled over after every ``feed`` (as the trio driver reuses its buffer), in random chunk
sizes, mixed with the zero-copy ``recv_target``/``received_direct`` path, and the sender may
retire only part of its output (a short ``sendmsg``). Framing, the handshake, partial feeds,
cuts, corruption, limits, restarts and replays are all injected here, byte by byte, with
property tests over every payload kind.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.msgr.connection import ACK_AFTER, DIRECT_MIN, AllocData, Connection
from rbdpy.msgr.events import (
    Closed,
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
    FOOTER_NOCRC,
    HEADER_LEN,
    EntityName,
    Message,
    MsgHeader,
    encode_header,
)
from rbdpy.msgr.payload import PAGE_SIZE, BioChain, Pagelist, Pages
from rbdpy.msgr.session import Session, SessionRegistry
from rbdpy.msgr.wire import (
    BANNER,
    CONNECT,
    CONNECT_REPLY,
    PROTOCOL_FEATURES,
    TAG_BADAUTH,
    TAG_MSG,
    TAG_WAIT,
    Limits,
)

CLIENT, SERVER = EntityName(1, 7), EntityName(2, 0)
C_NONCE, S_NONCE = 0x1111, 0x2222


def rand_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---- an in-memory wire ----------------------------------------------------------------------


class Staging:
    """The driver's reusable receive buffer: overwritten after every feed, so a Connection
    that kept a view of fed bytes instead of copying what it needs would see garbage."""

    def __init__(self) -> None:
        self.buf = bytearray(128 << 10)

    def feed(self, conn: Connection, data: memoryview) -> list:
        n = len(data)
        if n > len(self.buf):
            self.buf = bytearray(n)
        self.buf[:n] = data
        ev = conn.feed(memoryview(self.buf)[:n])
        self.buf[:n] = b"\xa5" * n
        return ev


def deliver(b: Connection, data: bytes, rnd: random.Random, staging: Staging,
            direct: bool = True) -> list:
    """Hand ``data`` to ``b`` in random chunks (1 byte included), mixing both receive paths."""
    events: list = []
    mv = memoryview(data)
    pos = 0
    while pos < len(mv) and not b.faulted:
        target = b.recv_target() if direct else None
        if target is not None and rnd.random() < 0.8:
            n = min(len(target), len(mv) - pos)
            if rnd.random() < 0.4:
                n = rnd.randint(1, n)
            target[:n] = mv[pos : pos + n]
            events += b.received_direct(n)
        else:
            r = rnd.random()
            if r < 0.25:
                n = 1
            elif r < 0.55:
                n = rnd.randint(1, 80)
            else:
                n = rnd.randint(1, 100_000)
            events += staging.feed(b, mv[pos : pos + n])
        pos += n
    return events


@dataclass
class Link:
    """One client Connection and one server Connection joined by an in-memory wire."""

    c: Connection
    s: Connection
    rnd: random.Random = field(default_factory=lambda: random.Random(0))
    direct: bool = True
    partial: bool = False  # now and then retire only a prefix of the output (short sendmsg)
    fault_rate: float = 0.0  # how often a cut side notices by fault() rather than by EOF
    cev: list = field(default_factory=list)
    sev: list = field(default_factory=list)
    staging: Staging = field(default_factory=Staging)

    def run(self, budget: int | None = None, eof_both: bool = True,
            between: Callable[[], None] | None = None) -> bool:
        """Move bytes both ways until both sides are quiet. With a ``budget``, cut the wire
        once that many bytes have crossed (the sender thinks it sent them all, the receiver
        gets only a prefix), then both sides see EOF. ``between`` runs before every step (to
        queue messages while traffic flows). Returns True if it cut."""
        for _ in range(100_000):
            if between is not None:
                between()
            moved = False
            for a, b, ev in ((self.c, self.s, self.sev), (self.s, self.c, self.cev)):
                if a.faulted:
                    continue
                out = a.data_to_send()
                if not out:
                    continue
                data = b"".join(out)
                if self.partial and self.rnd.random() < 0.5:
                    data = data[: self.rnd.randint(1, len(data))]
                a.sent(len(data))
                moved = True
                if budget is not None and len(data) >= budget:
                    ev += deliver(b, data[:budget], self.rnd, self.staging, self.direct)
                    self.cut(eof_both)
                    return True
                if budget is not None:
                    budget -= len(data)
                ev += deliver(b, data, self.rnd, self.staging, self.direct)
            if not moved:
                owed = [x for x in (self.c, self.s) if not x.faulted and x.ack_pending()]
                if not owed:
                    return False
                for x in owed:  # quiet with ACKs owed: the drivers' ack timers fire
                    x.flush_ack()
        raise AssertionError("the connections never went quiet")

    def cut(self, eof_both: bool = True) -> None:
        self.cev += self._notice(self.c)
        if eof_both:
            self.sev += self._notice(self.s)

    def _notice(self, conn: Connection) -> list:
        if self.fault_rate and self.rnd.random() < self.fault_rate:
            return conn.fault("cut")
        return conn.eof()

    def take(self) -> tuple[list, list]:
        cev, sev = self.cev, self.sev
        self.cev, self.sev = [], []
        return cev, sev


_gseq = iter(range(1, 1 << 40))


def connect(session: Session, registry: SessionRegistry, *, rnd: random.Random | None = None,
            c_alloc: AllocData | None = None, s_alloc: AllocData | None = None,
            limits: Limits | None = None,
            c_nonce: int = C_NONCE, s_nonce: int = S_NONCE, gseq: int | None = None,
            direct: bool = True, partial: bool = False, fault_rate: float = 0.0) -> Link:
    c = Connection(CLIENT, c_nonce, client=True, session=session, alloc_data=c_alloc,
                   limits=limits, global_seq=next(_gseq) if gseq is None else gseq)
    s = Connection(SERVER, s_nonce, client=False, registry=registry, alloc_data=s_alloc,
                   limits=limits)
    return Link(c, s, rnd or random.Random(0), direct, partial, fault_rate)


def open_link(session: Session | None = None, registry: SessionRegistry | None = None,
              **kw: Any) -> Link:
    link = connect(session or Session(), registry or SessionRegistry(), **kw)
    link.run()
    assert link.c.open and link.s.open, (link.cev, link.sev)
    return link


def received(events: list) -> list[Message]:
    return [e.msg for e in events if isinstance(e, MessageReceived)]


def faults(events: list) -> list[str]:
    return [e.reason for e in events if isinstance(e, Fault)]


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


# ---- messages of every payload kind ---------------------------------------------------------


@dataclass
class Expect:
    type: int
    tid: int
    priority: int
    version: int
    data_off: int
    front: bytes
    middle: bytes
    data: bytes

    @classmethod
    def of(cls, m: Message) -> Expect:
        return cls(m.type, m.tid, m.priority, m.version, m.data_off, bytes(m.front),
                   bytes(m.middle), m.data_bytes())

    def check(self, m: Message) -> None:
        assert Expect.of(m) == self
        # on receive the trail is part of the data section: the upper layer splits it
        assert m.trail is None and m.data_len == len(self.data)


def fill_pages(data: bytes, offset: int) -> Pages:
    p = Pages.alloc(len(data), offset)
    pos = 0
    for seg in p.segments():
        seg[:] = data[pos : pos + len(seg)]
        pos += len(seg)
    return p


def pagelist(data: bytes) -> Pagelist:
    pl = Pagelist()
    for i in range(0, len(data), 1000):  # grown in pieces, like an encoder would
        pl.append(data[i : i + 1000])
    return pl


SIZES = [0, 1, 7, 100, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1, 9000, 20_000, 70_000]
sizes = st.one_of(st.sampled_from(SIZES), st.integers(0, 20_000))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)

    def blob(n: int) -> bytes:
        return rand_bytes(n, rng.getrandbits(32))

    kind = draw(st.sampled_from(["none", "pages", "pagelist", "bio", "empty-bio"]))
    data = None
    if kind == "pages":
        n = draw(sizes)
        data = fill_pages(blob(n), draw(st.one_of(st.sampled_from([0, 1, 100, PAGE_SIZE - 1]),
                                                  st.integers(0, PAGE_SIZE - 1))))
    elif kind == "pagelist":
        data = pagelist(blob(draw(sizes)))
    elif kind == "empty-bio":
        data = BioChain()
    elif kind == "bio":
        shared = bytearray(blob(100_000))
        data = BioChain()
        for _ in range(draw(st.integers(1, 4))):
            n = draw(sizes)
            if draw(st.booleans()):
                off = draw(st.integers(0, len(shared) - n))
                data.append(shared, off, n)
            else:
                data.append(np.frombuffer(blob(n), dtype=np.uint8).copy())
    trail = None
    if draw(st.booleans()):
        trail = pagelist(blob(draw(st.sampled_from([0, 1, 13, PAGE_SIZE + 5]))))
    return Message(
        type=draw(st.integers(0, 0xFFFF)),
        front=blob(draw(st.sampled_from([0, 1, 50, 300]))),
        middle=blob(draw(st.sampled_from([0, 1, 40]))),
        data=data,
        trail=trail,
        tid=draw(st.integers(0, 2**64 - 1)),
        priority=draw(st.integers(0, 0xFFFF)),
        version=draw(st.integers(0, 0xFFFF)),
        data_off=draw(st.integers(0, 0xFFFF)),
    )


def plain(tag: int, data: bytes = b"", front: bytes | None = None) -> Message:
    return Message(type=1, tid=tag, front=front if front is not None else b"t%d" % tag,
                   data=BioChain([data]) if data else None)


# ---- round trips ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    up=st.lists(messages(), min_size=1, max_size=5),
    down=st.lists(messages(), max_size=5),
    rnd=st.randoms(use_true_random=False),
    direct=st.booleans(),
    with_alloc=st.booleans(),
    early=st.booleans(),
)
def test_roundtrip_every_payload_kind_any_chunking(
    up: list[Message], down: list[Message], rnd: random.Random, direct: bool, with_alloc: bool,
    early: bool,
) -> None:
    """Both directions, every payload kind (and a trail), every header field; random chunks
    mixed over both receive paths; short sends; ``early``: queued before the handshake."""
    alloc_calls: list[MsgHeader] = []

    def alloc(h: MsgHeader) -> list[memoryview]:
        alloc_calls.append(h)
        # several destination segments of odd sizes, more room than needed
        buf = bytearray(h.data_len + 1000)
        mv = memoryview(buf)
        cut1, cut2 = h.data_len // 3, h.data_len // 3 + 4097
        return [mv[:cut1], mv[cut1:cut2], mv[cut2:]]

    link = connect(Session(), SessionRegistry(), rnd=rnd, direct=direct, partial=True,
                   s_alloc=alloc if with_alloc else None)
    want_up = [Expect.of(m) for m in up]
    want_down = [Expect.of(m) for m in down]
    if early:  # numbered now, framed once the session opens
        for m in up:
            link.c.send_message(m)
    link.run()
    assert link.c.open and link.s.open
    if not early:
        for m in up:
            link.c.send_message(m)
    for m in down:
        link.s.send_message(m)
    link.run()
    cev, sev = link.take()
    assert not faults(cev + sev)
    assert [e.peer for e in of(cev, HandshakeDone)] == [SERVER]
    assert [e.peer for e in of(sev, HandshakeDone)] == [CLIENT]
    got_up, got_down = received(sev), received(cev)
    assert len(got_up) == len(want_up) and len(got_down) == len(want_down)
    for i, (w, m) in enumerate(zip(want_up, got_up)):
        w.check(m)
        assert m.src == CLIENT and m.seq == i + 1
    for i, (w, m) in enumerate(zip(want_down, got_down)):
        w.check(m)
        assert m.src == SERVER and m.seq == i + 1
    if with_alloc:
        # asked once per message with data, with its header, before the data arrived
        assert [(h.tid, h.data_len) for h in alloc_calls] == [
            (w.tid, len(w.data)) for w in want_up if w.data
        ]
        assert all(m.data.segments()[0].obj is not None for m in got_up if m.data)
        assert all(h.src == CLIENT for h in alloc_calls)
    # everything was acknowledged: nothing is kept for replay on either side
    assert not link.c.session.sent and not link.c.session.unsent
    assert not link.s.session.sent and not link.s.session.unsent


@pytest.mark.parametrize("direct", [False, True])
def test_single_byte_feeding_of_everything(direct: bool) -> None:
    """Handshake and two messages, one byte per call: through ``feed``, or (``direct``)
    through ``recv_target``/``received_direct`` whenever the connection offers it."""
    c = Connection(CLIENT, C_NONCE, client=True, session=Session())
    s = Connection(SERVER, S_NONCE, client=False, registry=SessionRegistry())
    data = rand_bytes(7 * PAGE_SIZE + 11, 1)
    c.send_message(Message(type=9, front=b"front", middle=b"mid", data=fill_pages(data, 77),
                           trail=pagelist(b"trail!")))
    c.send_message(Message(type=10))  # every section empty
    sev, cev = [], []
    directs = 0
    for _ in range(6):
        for a, b, ev in ((c, s, sev), (s, c, cev)):
            if a.ack_pending():
                a.flush_ack()  # the driver's ack timer (the exchange is one-way)
            out = b"".join(a.data_to_send())
            a.sent(len(out))
            for i in range(len(out)):
                target = b.recv_target() if direct else None
                if target is not None:
                    target[:1] = out[i : i + 1]
                    ev += b.received_direct(1)
                    directs += 1
                else:
                    ev += b.feed(out[i : i + 1])
    m1, m2 = received(sev)
    assert (m1.type, m1.front, m1.middle, m1.data_bytes()) == (9, b"front", b"mid",
                                                               data + b"trail!")
    assert (m2.type, m2.front, m2.middle, m2.data, m2.data_bytes()) == (10, b"", b"", None, b"")
    assert len(of(sev, HandshakeDone)) == len(of(cev, HandshakeDone)) == 1
    assert of(cev, HandshakeDone)[0].peer == SERVER and of(sev, HandshakeDone)[0].peer == CLIENT
    assert of(cev, HandshakeDone)[0].peer_nonce == S_NONCE
    assert not faults(cev + sev) and not c.session.sent
    if direct:  # the data went straight in until less than DIRECT_MIN was left
        assert directs == len(data) + 6 - (DIRECT_MIN - 1)
        assert s.copied_bytes == DIRECT_MIN - 1
    else:  # every data byte (trail included) went through the staging copy
        assert directs == 0 and s.copied_bytes == len(data) + 6


def test_output_is_framed_lazily_within_budgets() -> None:
    link = open_link()
    sess = link.c.session
    for i in range(5000):
        link.c.send_message(Message(type=1, tid=i, front=b"f"))
    bufs = link.c.data_to_send(max_bufs=64)
    assert 0 < len(bufs) <= 64
    # only what fitted was framed; the rest still waits, unframed, in the session
    assert len(sess.sent) < 50 and len(sess.unsent) > 4900
    # a message with more segments than the budget still goes out whole, in order
    src = [bytearray(bytes([i % 256]) * 10) for i in range(3000)]
    big = BioChain()
    for b in src:
        big.append(b)
    link.c.send_message(Message(type=9, tid=99999, data=big))
    rng = random.Random(11)
    evs: list = []
    while True:
        bufs = link.c.data_to_send(max_bufs=rng.randint(1, 40), max_bytes=rng.randint(1, 5000))
        if not bufs:
            break
        assert len(bufs) <= 40
        data = b"".join(bytes(b) for b in bufs)
        n = rng.randint(1, len(data))  # a short sendmsg
        link.c.sent(n)
        evs += deliver(link.s, data[:n], rng, link.staging)
    got = received(evs)
    assert [g.tid for g in got] == [*range(5000), 99999]
    assert got[-1].data_bytes() == b"".join(src)
    assert not faults(evs)


def test_big_front_and_middle_through_staging() -> None:
    link = open_link(rnd=random.Random(12))
    front, middle = rand_bytes(300_000, 12), rand_bytes(70_000, 13)
    link.c.send_message(Message(type=1, front=front, middle=middle))
    link.run()
    (m,) = received(link.sev)
    assert m.front == front and m.middle == middle


def test_has_output_tracks_pending_work() -> None:
    link = connect(Session(), SessionRegistry())
    assert link.c.has_output()  # banner + connect
    link.run()
    assert link.c.open and link.s.open
    assert not link.c.has_output() and not link.s.has_output()
    link.c.send_message(Message(type=1))
    assert link.c.has_output()
    link.run()  # the message, then the server's ack
    assert not link.c.has_output() and not link.s.has_output()


# ---- corruption -----------------------------------------------------------------------------

FRONT, MIDDLE = b"F" * 16, b"M" * 8
DATA = rand_bytes(40, 3)


def _corruptible(big: bool = False) -> Message:
    """A fresh copy of the same message each call. Small: 40 bytes of Pages and a 3-byte
    trail. Big: a two-segment bio over caller buffers and a trail, past DIRECT_MIN, so its data
    can arrive through ``received_direct``."""
    if not big:
        return Message(type=5, tid=55, front=FRONT, middle=MIDDLE, data=fill_pages(DATA, 4000),
                       trail=pagelist(b"xyz"))
    rng = random.Random(77)
    a, b = bytearray(rng.randbytes(12_000)), bytearray(rng.randbytes(3000))
    bio = BioChain()
    bio.append(a, 100, 11_000)
    bio.append(b)
    return Message(type=5, tid=55, front=b"front-bytes", middle=b"middle!", data=bio,
                   trail=pagelist(b"the trail"))


def _sections(m: Message) -> list[tuple[str, int, int, str]]:
    """(section, first byte, end, the reason a flipped byte there must give) along m's
    frame; the footer is its three crcs and its flags byte."""
    f0 = 1 + HEADER_LEN
    m0 = f0 + len(m.front)
    d0 = m0 + len(m.middle)
    ft = d0 + m.data_len
    assert FOOTER_LEN == 13
    return [("tag", 0, 1, "unknown tag"), ("header", 1, f0, "bad header crc"),
            ("front", f0, m0, "bad front crc"), ("middle", m0, d0, "bad middle crc"),
            ("data", d0, ft, "bad data crc"), ("footer", ft, ft + 4, "bad front crc"),
            ("footer", ft + 4, ft + 8, "bad middle crc"),
            ("footer", ft + 8, ft + 12, "bad data crc"), ("flags", ft + 12, ft + 13, "flags")]


@pytest.mark.parametrize("big", [False, True], ids=["every-byte-small", "sampled-big"])
def test_flipped_byte_anywhere_in_a_frame_is_detected_and_replayed_once(big: bool) -> None:
    """Small frame: every byte. Big frame: the first, an early, the middle and the last byte
    of each section, the data delivered from its first byte on so the direct path is used."""
    msg = _corruptible(big)
    sections = _sections(msg)
    frame_len = sections[-1][2]
    d0 = sections[4][1]
    positions = []
    for section, lo, hi, reason in sections:
        if reason == "flags":
            continue  # the footer's flags byte: see the test below
        at = range(lo, hi) if not big else sorted({lo, lo + (hi - lo) // 7, (lo + hi) // 2,
                                                   hi - 1})
        positions += [(pos, section, reason) for pos in at]
    seen_sections = set()
    direct_data = 0
    for pos, section, reason in positions:
        seen_sections.add(section)
        sess, reg = Session(), SessionRegistry()
        link = open_link(sess, reg)
        link.c.send_message(plain(1, b"before"))
        link.run()
        assert [m.tid for m in received(link.sev)] == [1]
        link.take()
        link.c.send_message(_corruptible(big))
        link.c.send_message(plain(3, b"after"))
        wire = bytearray(b"".join(link.c.data_to_send()))
        link.c.sent(len(wire))
        assert wire[0] == TAG_MSG and len(wire) > frame_len
        wire[pos] ^= 0xFF
        rnd = random.Random(pos)
        ev = deliver(link.s, bytes(wire[:d0]), rnd, link.staging)
        ev += deliver(link.s, bytes(wire[d0:]), rnd, link.staging)
        fs = faults(ev)
        assert len(fs) == 1 and reason in fs[0], (section, pos, fs)
        assert not received(ev), (section, pos)
        assert link.s.faulted and not link.s.open
        if section == "data" and link.s.copied_bytes < msg.data_len:
            direct_data += 1  # part of the data (and its crc) came through received_direct
        assert reg.get(CLIENT).in_seq == 1  # the corrupt message was not counted
        assert link.s.feed(b"more bytes") == []  # a faulted connection reads nothing more
        link.cut()  # the server drops the socket; the client sees EOF
        # reconnect: the same client session, the server's registry kept
        again = connect(sess, reg, rnd=random.Random(pos))
        again.run()
        got = received(again.sev)
        assert [m.tid for m in got] == [55, 3], (section, pos)
        Expect.of(_corruptible(big)).check(got[0])
        assert got[1].data_bytes() == b"after"
        assert not faults(again.cev + again.sev)
        assert not of(again.cev + again.sev, SessionReset | PeerReset)
        assert not sess.sent and not sess.unsent
    assert seen_sections == {"tag", "header", "front", "middle", "data", "footer"}
    assert direct_data >= (2 if big else 0)


def test_footer_flags_byte() -> None:
    """The flags byte is outside every crc. Whether a sender puts crcs in its footers is
    said once, in the handshake; so a flip of the flags byte either faults or delivers
    exactly what was sent, and a flip that sets NOCRC cannot switch the checks off."""
    for flip in (0x01, 0x02, 0xFF):
        link = open_link()
        link.c.send_message(_corruptible())
        wire = bytearray(b"".join(link.c.data_to_send()))
        link.c.sent(len(wire))
        wire[-1] ^= flip
        ev = link.s.feed(bytes(wire))
        if faults(ev):
            assert not received(ev)
        else:
            (m,) = received(ev)
            Expect.of(_corruptible()).check(m)
    # NOCRC set by a flip, and a data byte corrupted too: caught, nothing delivered
    link = open_link()
    link.c.send_message(_corruptible())
    wire = bytearray(b"".join(link.c.data_to_send()))
    wire[-1] |= FOOTER_NOCRC
    wire[1 + HEADER_LEN + len(FRONT) + len(MIDDLE)] ^= 1
    ev = link.s.feed(bytes(wire))
    assert not received(ev) and "without crcs" in faults(ev)[0]


def test_a_sender_without_crcs_says_so_in_the_handshake() -> None:
    c = Connection(CLIENT, C_NONCE, client=True, session=Session(), crc=False)
    s = Connection(SERVER, S_NONCE, client=False, registry=SessionRegistry())
    link = Link(c, s, random.Random(0), True, False, 0.0)
    link.run()
    assert c.open and s.open
    c.send_message(_corruptible())
    wire = bytearray(b"".join(c.data_to_send()))
    c.sent(len(wire))
    (m,) = received(s.feed(bytes(wire)))  # NOCRC footers accepted from this peer
    Expect.of(_corruptible()).check(m)


@pytest.mark.parametrize("side", ["client", "server"])
def test_bad_banner_each_byte(side: str) -> None:
    for pos in range(len(BANNER)):
        sess, reg = Session(), SessionRegistry()
        sess.queue(plain(1, b"queued before connecting"))
        link = connect(sess, reg)
        a, b = (link.c, link.s) if side == "client" else (link.s, link.c)
        wire = bytearray(b"".join(a.data_to_send()))
        a.sent(len(wire))
        wire[pos] ^= 0x20
        ev = b.feed(bytes(wire))
        assert len(faults(ev)) == 1 and "bad banner" in faults(ev)[0]
        assert not of(ev, HandshakeDone) and not received(ev)
        assert not b.open
        link.run()
        link.cut()
        assert not received(link.sev)
        again = connect(sess, reg)
        again.run()
        assert [m.data_bytes() for m in received(again.sev)] == [b"queued before connecting"]


def test_garbage_instead_of_a_banner() -> None:
    s = Connection(SERVER, S_NONCE, client=False, registry=SessionRegistry())
    ev = s.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert faults(ev) == ["bad banner b'GET / HT'"]


@pytest.mark.parametrize(
    "tag, reason",
    [(99, "unknown connect reply tag 99"), (TAG_WAIT, "wait"),
     (TAG_BADAUTH, "authentication rejected")],
)
def test_bad_reply_tag_faults_the_client(tag: int, reason: str) -> None:
    sess = Session()
    sess.queue(plain(1))
    link = connect(sess, SessionRegistry())
    out = b"".join(link.c.data_to_send())
    link.c.sent(len(out))
    link.sev += link.s.feed(out)
    reply = bytearray(b"".join(link.s.data_to_send()))
    assert reply[: len(BANNER)] == BANNER and len(reply) == len(BANNER) + CONNECT_REPLY.size
    reply[len(BANNER)] = tag
    ev = link.c.feed(bytes(reply))
    assert len(faults(ev)) == 1 and reason in faults(ev)[0]
    assert not link.c.open and not of(ev, HandshakeDone)
    assert list(sess.unsent) and sess.unsent[0].tid == 1  # kept for the next attempt


def test_unknown_frame_tag_and_bogus_ack() -> None:
    link = open_link()
    ev = link.s.feed(b"\x63")
    assert faults(ev) == ["unknown tag 99"]
    link = open_link()
    ev = link.s.feed(struct.pack("<BQ", 9, 5))  # ACK of seq 5: the client sent nothing
    assert len(faults(ev)) == 1 and "ack 5 for a message never sent" in faults(ev)[0]


def test_seq_gap_is_a_protocol_error() -> None:
    link = open_link()
    m = plain(1)
    m.seq = 2  # the server expects 1
    ev = link.s.feed(b"\x08" + encode_header(m, CLIENT))
    assert len(faults(ev)) == 1 and "seq 2 skips ahead of 1" in faults(ev)[0]


# ---- limits before allocation ---------------------------------------------------------------


class _Claims:
    """Something with a length but no memory: lets encode_header describe a huge section."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _huge_header(front: int = 0, middle: int = 0, data: int = 0) -> bytes:
    m = Message(type=1, seq=1, front=_Claims(front), middle=_Claims(middle))  # type: ignore
    if data:
        m.data = BioChain()
        m.data.length = data  # a claim, not a buffer
    return b"\x08" + encode_header(m, CLIENT)


@pytest.mark.parametrize(
    "field_, kw, reason",
    [("data", {"data": 60 << 20}, "data_len 62914560 over the limit 1048576"),
     ("data", {"data": 0xFFFFFFFF}, "data_len 4294967295 over the limit 1048576"),
     ("front", {"front": 60 << 20}, "front_len 62914560 over the limit 65536"),
     ("middle", {"middle": 60 << 20}, "middle_len 62914560 over the limit 65536")],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_lengths_over_limits_fault_before_allocation(
    field_: str, kw: dict, reason: str, chunked: bool
) -> None:
    calls: list[MsgHeader] = []
    limits = Limits(max_front=64 << 10, max_middle=64 << 10, max_data=1 << 20)
    link = open_link(s_alloc=lambda h: calls.append(h), limits=limits)
    wire = _huge_header(**kw) + bytes(4096)  # and some of the promised bytes
    tracemalloc.start()
    try:
        if chunked:
            ev = []
            for i in range(len(wire)):
                ev += link.s.feed(wire[i : i + 1])
        else:
            ev = link.s.feed(wire)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert faults(ev) == [reason]
    assert not received(ev)
    assert calls == []  # alloc_data was never asked
    assert peak < 64 << 10, peak  # nothing near the claimed 60 MiB (nor the 1 MiB limit)


def test_lengths_at_the_limit_are_accepted() -> None:
    limits = Limits(max_front=100, max_middle=100, max_data=10_000)
    link = open_link(limits=limits)
    link.c.send_message(Message(type=1, front=b"f" * 100, middle=b"m" * 100,
                                data=BioChain([bytes(10_000)])))
    link.run()
    (m,) = received(link.sev)
    assert len(m.front) == len(m.middle) == 100 and m.data_len == 10_000


def test_auth_length_over_limit_faults_before_allocation() -> None:
    reg = SessionRegistry()
    s = Connection(SERVER, S_NONCE, client=False, registry=reg, limits=Limits(max_auth=64))
    connect_msg = CONNECT.pack(PROTOCOL_FEATURES, 1, 7, C_NONCE, 1, 0, 0, 0, 50 << 20)
    tracemalloc.start()
    try:
        ev = s.feed(BANNER + connect_msg + bytes(1000))
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert faults(ev) == [f"auth length {50 << 20} over the limit"]
    assert peak < 64 << 10
    assert reg.get(CLIENT) is None and not s.open  # no session was made for it


# ---- truncation, EOF, cuts and replay -------------------------------------------------------


def test_eof_at_every_byte_of_a_frame_then_replay() -> None:
    sizes = [0, 5, DIRECT_MIN + 100]
    for dsize in sizes:
        msg_data = rand_bytes(dsize, dsize)
        probe = open_link()
        probe.c.send_message(Message(type=2, tid=2, front=b"ff", data=BioChain([msg_data])))
        frame_len = len(b"".join(probe.c.data_to_send()))
        step = 1 if frame_len < 200 else 37
        for cut in [*range(0, frame_len, step), frame_len - 1]:
            sess, reg = Session(), SessionRegistry()
            link = open_link(sess, reg, rnd=random.Random(cut))
            link.c.send_message(plain(1, b"one"))
            link.run()
            link.take()
            link.c.send_message(Message(type=2, tid=2, front=b"ff", data=BioChain([msg_data])))
            assert link.run(budget=cut) is True
            cev, sev = link.take()
            assert not received(sev)
            fs = faults(sev)
            assert len(fs) == 1
            assert fs[0] == ("peer closed the connection between frames" if cut == 0
                             else "peer closed the connection mid-message"), (cut, fs)
            assert len(faults(cev)) == 1 and link.c.eof() == []  # one fault per connection
            again = connect(sess, reg, rnd=random.Random(cut))
            again.run()
            got = received(again.sev)
            assert [(m.tid, m.front, m.data_bytes()) for m in got] == [(2, b"ff", msg_data)]
            assert not faults(again.cev + again.sev)


def test_eof_during_handshake_and_between_frames() -> None:
    sess, reg = Session(), SessionRegistry()
    link = connect(sess, reg)
    assert link.c.eof() and faults(link.c.eof()) == []  # the first eof faults, once
    link = open_link(sess, reg)
    assert faults(link.s.eof()) == ["peer closed the connection between frames"]


def _replay_rounds(seed: int, rounds: int) -> dict[str, int]:
    """One lossless session over ``rounds`` connections, each cut at a random byte (or
    not at all), then a last clean one; returns counters for the callers' thresholds.

    Each round the client queues messages before connecting and the server queues some
    before and some while the traffic flows (what Peer.send does); senders retire short
    prefixes of their output; a cut side notices by EOF or by ``fault()``, or (the server) not
    at all, so the next connection replaces a half-open one; now and then the client reuses
    a stale global_seq and must retry. Everything arrives exactly once, in order, intact, and
    what each side keeps for replay is exactly what the peer has not confirmed."""
    rnd = random.Random(seed)
    sess, reg = Session(), SessionRegistry()
    n_up = n_down = 0
    sent_up: list[tuple[int, bytes, bytes]] = []
    sent_down: list[tuple[int, bytes, bytes]] = []
    got_up: list[tuple[int, bytes, bytes]] = []
    got_down: list[tuple[int, bytes, bytes]] = []
    releases = quiet = cuts = 0

    def new_msg(tag: int, sink: list) -> Message:
        size = rnd.choice([0, 3, 500, PAGE_SIZE, 9000, 30_000])
        data = rand_bytes(size, tag)
        sink.append((tag, b"%d" % tag, data))
        if rnd.random() < 0.3:
            return Message(type=3, tid=tag, front=b"%d" % tag, data=fill_pages(data, 17))
        return Message(type=3, tid=tag, front=b"%d" % tag, data=BioChain([data]))

    def key(m: Message) -> tuple[int, bytes, bytes]:
        return (m.tid, bytes(m.front), m.data_bytes())

    def server_side() -> Session | None:
        """The server's session, once the client has opened it at least once. (Before that,
        a reconnect with connect_seq 0 to a session the server already queued messages on
        is taken as a client restart, a PeerReset: a server only answers, so it queues
        nothing for a client that never got its READY.)"""
        return reg.get(CLIENT) if sess.connect_seq > 0 else None

    for round_ in range(rounds):
        link = connect(sess, reg, rnd=rnd, gseq=None if rnd.random() < 0.8 else 1,
                       partial=True, fault_rate=0.3)
        for _ in range(rnd.randint(0, 4)):
            n_up += 1
            link.c.send_message(new_msg(n_up, sent_up))
        server_session = server_side()
        if server_session is not None:
            for _ in range(rnd.randint(0, 2)):
                n_down += 1
                server_session.queue(new_msg(100_000 + n_down, sent_down))
        # what each side had received before this round: its handshake tells the other
        srv_in_before = server_session.in_seq if server_session is not None else 0
        cli_in_before = sess.in_seq
        later = rnd.randint(0, 2)

        def queue_while_running() -> None:
            nonlocal n_down, later
            s = server_side()
            if later and s is not None and rnd.random() < 0.3:
                later -= 1
                n_down += 1
                s.queue(new_msg(100_000 + n_down, sent_down))

        budget = rnd.choice([rnd.randint(0, 200), rnd.randint(0, 20_000),
                             rnd.randint(0, 150_000), None])
        # sometimes the server never notices the old socket died: the new connection
        # replaces it
        cut = link.run(budget=budget, eof_both=rnd.random() < 0.7, between=queue_while_running)
        cuts += cut
        cev, sev = link.take()
        assert not of(cev + sev, SessionReset) and not of(cev + sev, PeerReset), round_
        for r in faults(cev + sev):
            assert r.startswith("peer closed the connection") or r == "cut", r
        got_up += [key(m) for m in received(sev)]
        got_down += [key(m) for m in received(cev)]
        # what each side keeps for replay is a contiguous run of seqs ending at the last one
        # queued; it holds nothing the peer lacks, and nothing the peer reported having in
        # this round's handshake (memory is released as the peer confirms)
        for own, peer_in, opened, before in (
            (sess, reg.get(CLIENT), of(cev, HandshakeDone), srv_in_before),
            (reg.get(CLIENT), sess, of(sev, HandshakeDone), cli_in_before),
        ):
            if own is None:
                continue
            kept = [m.seq for m in (*own.sent, *own.unsent)]
            assert kept == list(range(own.out_seq - len(kept) + 1, own.out_seq + 1))
            if kept and peer_in is not None:
                assert kept[0] <= peer_in.in_seq + 1
            if kept and opened:
                assert kept[0] > before
                releases += kept[0] > 1
        if not cut:  # a quiet round ends fully acknowledged, both ways
            assert not sess.sent and not sess.unsent
            assert not reg.get(CLIENT).sent and not reg.get(CLIENT).unsent
            quiet += 1
    final = connect(sess, reg, rnd=rnd)
    final.run()
    assert not faults(final.cev + final.sev)
    got_up += [key(m) for m in received(final.sev)]
    got_down += [key(m) for m in received(final.cev)]
    assert got_up == sent_up
    assert got_down == sent_down
    assert not sess.sent and not sess.unsent
    srv = reg.get(CLIENT)
    assert srv is not None and not srv.sent and not srv.unsent
    return {"cuts": cuts, "up": len(sent_up), "down": len(sent_down), "quiet": quiet,
            "releases": releases}


@pytest.mark.parametrize("seed", [2024, 1, 2, 3, 4, 5])
def test_lossless_replay_across_random_cuts_both_directions(seed: int) -> None:
    n = _replay_rounds(seed, rounds=120)
    assert n["cuts"] > 40 and n["quiet"] > 20 and n["releases"] > 40, n
    assert n["up"] > 150 and n["down"] > 100, n


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32), rounds=st.integers(0, 15))
def test_lossless_replay_after_a_few_cuts(seed: int, rounds: int) -> None:
    _replay_rounds(seed, rounds)


def test_acks_shrink_sent_as_they_arrive() -> None:
    link = open_link()
    sess = link.c.session
    for i in range(10):
        link.c.send_message(plain(i, b"x" * 100))
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    assert len(sess.sent) == 10 and not sess.unsent
    # deliver half the messages: the server's ack covers exactly those
    frame = len(wire) // 10
    link.s.feed(wire[: 5 * frame])
    assert link.s.ack_pending() and not link.s.data_to_send()  # owed, not yet due
    link.s.flush_ack()  # the driver's ack timer fired
    ack = b"".join(link.s.data_to_send())
    assert ack == struct.pack("<BQ", 9, 5)
    link.s.sent(len(ack))
    link.c.feed(ack)
    assert [m.tid for m in sess.sent] == [5, 6, 7, 8, 9]
    link.s.feed(wire[5 * frame :])
    link.run()
    assert not sess.sent


def test_acks_ride_on_outgoing_messages_and_go_alone_only_when_due() -> None:
    """An owed ACK goes out with the next message, alone only after ACK_AFTER received
    messages or when the driver's timer calls flush_ack; either way it covers them all."""
    link = open_link()
    csess, ssess = link.c.session, link.s.session
    for i in range(ACK_AFTER - 1):
        link.c.send_message(plain(i, b"x" * 10))
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    link.s.feed(wire)
    assert link.s.ack_pending() and not link.s.has_output() and not link.s.data_to_send()
    # a reply takes the ACK along: the client forgets all it sent, with no frame of its own
    link.s.send_message(plain(100, b"reply"))
    out = b"".join(link.s.data_to_send())
    assert out[:9] == struct.pack("<BQ", 9, ACK_AFTER - 1)
    link.s.sent(len(out))
    link.c.feed(out)
    assert not csess.sent and not link.s.ack_pending()
    assert link.c.ack_pending() and not link.c.has_output()  # owes the reply's ACK
    # ACK_AFTER more messages make an ACK due on its own
    for i in range(ACK_AFTER):
        link.c.send_message(plain(200 + i, b"y"))
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    assert not link.c.ack_pending()  # the reply's ACK rode on these
    link.s.feed(wire)
    assert link.s.has_output()
    assert b"".join(link.s.data_to_send()) == struct.pack("<BQ", 9, ssess.in_seq)
    assert ssess.in_seq == 2 * ACK_AFTER - 1


@pytest.mark.parametrize("size", [0, 100, 20_000, 200_000])
def test_duplicate_frame_is_dropped_without_touching_the_callers_buffer(size: int) -> None:
    """A frame already received (a replay) is read past: not delivered, not given to
    alloc_data, and the next frame is read in step. 200 KB: skipped in several chunks."""
    dests: list[bytearray] = []

    def alloc(h: MsgHeader) -> list[memoryview]:
        dests.append(bytearray(h.data_len))
        return [memoryview(dests[-1])]

    link = open_link(s_alloc=alloc)
    data = rand_bytes(size, 9)
    link.c.send_message(Message(type=1, tid=1, front=b"once",
                                data=BioChain([data]) if size else None))
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    (m,) = received(link.s.feed(wire))
    assert m.data_bytes() == data
    assert len(dests) == (1 if size else 0)  # never asked for a message without data
    if size:
        assert bytes(dests[0]) == data
        dests[0][:] = bytes(len(data))  # the reader reuses its buffer
    # the same frame again (as a replay of something already received would be), then a
    # new one
    link.c.send_message(Message(type=1, tid=2, front=b"next"))
    wire2 = b"".join(link.c.data_to_send())
    link.c.sent(len(wire2))
    ev = deliver(link.s, wire, random.Random(1), link.staging)
    assert ev == [] and len(dests) == (1 if size else 0)
    assert not size or bytes(dests[0]) == bytes(len(data))
    assert link.s.session.in_seq == 1 and not link.s.faulted
    (m2,) = received(deliver(link.s, wire2, random.Random(2), link.staging))
    assert (m2.tid, m2.front, m2.seq) == (2, b"next", 2)
    assert not faults(link.sev) and link.s.session.in_seq == 2


# ---- restarts -------------------------------------------------------------------------------


def test_server_restart_reports_session_reset_with_unacked_messages() -> None:
    sess = Session()
    link = open_link(sess, SessionRegistry())
    link.c.send_message(plain(1, b"acked"))
    link.run()
    assert not sess.sent
    # two more: the first reaches the server but its ack never comes back, the second is cut
    queued = [plain(2, b"delivered, unacked"), plain(3, b"cut"), plain(4, b"queued while down")]
    link.c.send_message(queued[0])
    link.c.send_message(queued[1])
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    assert [m.tid for m in received(link.s.feed(wire[: len(wire) - 10]))] == [2]
    link.cut()
    link.c.send_message(queued[2])
    # the server restarted: a fresh registry knows nothing of our session
    new_reg = SessionRegistry()
    again = connect(sess, new_reg)
    again.run()
    (reset,) = of(again.cev, SessionReset)
    assert reset.peer == SERVER
    assert [m.tid for m in reset.dropped] == [2, 3, 4]
    assert all(a is b for a, b in zip(reset.dropped, queued))  # the very messages
    assert not of(again.sev, PeerReset)
    assert again.c.open and again.s.open
    assert received(again.sev) == []  # nothing dropped is sent to the new server
    assert sess.connect_seq == 1 and sess.out_seq == 0
    # the fresh session works, numbering from 1
    again.c.send_message(plain(5, b"after"))
    again.run()
    (m,) = received(again.sev)
    assert (m.tid, m.seq) == (5, 1)


def test_client_restart_reports_peer_reset_on_server() -> None:
    reg = SessionRegistry()
    link = open_link(Session(), reg)
    link.c.send_message(plain(1))
    link.run()
    old = reg.get(CLIENT)
    old.queue(plain(99, b"reply the old client never got"))
    link.cut()
    # the client restarted: new Session, new nonce, same entity name
    fresh = connect(Session(), reg, c_nonce=0x9999)
    fresh.run()
    assert len(of(fresh.sev, PeerReset)) == 1 and of(fresh.sev, PeerReset)[0].peer == CLIENT
    assert reg.get(CLIENT) is not old and reg.get(CLIENT).peer_nonce == 0x9999
    assert received(fresh.cev) == []  # the old session's reply is not given to the new client
    assert not of(fresh.cev, SessionReset)
    fresh.c.send_message(plain(2))
    fresh.run()
    assert [(m.tid, m.seq) for m in received(fresh.sev)] == [(2, 1)]


def test_ready_lost_in_the_first_handshake_is_not_a_peer_reset() -> None:
    """The server accepted and answered READY, but the connection died before the client
    read it: the client retries with connect_seq 0. It did not restart, so the server must
    not report a PeerReset (upper layers drop the peer's state on that)."""
    sess, reg = Session(), SessionRegistry()
    sess.queue(plain(1, b"first"))
    link = connect(sess, reg)
    out = b"".join(link.c.data_to_send())
    link.c.sent(len(out))
    sev = link.s.feed(out)
    assert of(sev, HandshakeDone) and reg.get(CLIENT) is not None
    link.cut()  # the READY never reaches the client
    assert sess.connect_seq == 0
    again = connect(sess, reg)
    again.run()
    assert not of(again.sev, PeerReset) and not of(again.cev, SessionReset)
    assert [m.data_bytes() for m in received(again.sev)] == [b"first"]


def test_reconnect_with_a_stale_global_seq_retries() -> None:
    sess, reg = Session(), SessionRegistry()
    link = open_link(sess, reg, gseq=5)
    link.c.send_message(plain(1))
    link.run()
    link.cut()
    sess.queue(plain(2))
    again = connect(sess, reg, gseq=3)  # lower than the server has seen from this client
    again.run()
    assert again.c.open and again.c.global_seq == 6
    assert [m.tid for m in received(again.sev)] == [2]
    assert not of(again.cev + again.sev, SessionReset) and not of(again.sev, PeerReset)


def test_new_connection_replaces_a_half_open_one() -> None:
    sess, reg = Session(), SessionRegistry()
    link = open_link(sess, reg)
    link.c.send_message(plain(1))
    link.run()
    link.c.eof()  # only the client noticed the socket died
    again = connect(sess, reg)
    again.run()
    assert link.s.faulted == "replaced by a new connection from the same peer"
    assert reg.get(CLIENT).owner is again.s
    again.c.send_message(plain(2))
    again.run()
    assert [m.tid for m in received(again.sev)] == [2]


# ---- keepalive and close --------------------------------------------------------------------


@pytest.mark.parametrize("from_client", [True, False])
def test_keepalive_and_ack_carry_the_stamp(from_client: bool) -> None:
    link = open_link()
    a, a_ev_name = (link.c, "cev") if from_client else (link.s, "sev")
    b_ev_name = "sev" if from_client else "cev"
    stamp = 0x0123_4567_89AB_CDEF
    a.send_keepalive(stamp)
    link.run()
    b_ev, a_ev = getattr(link, b_ev_name), getattr(link, a_ev_name)
    assert [e.stamp for e in of(b_ev, KeepaliveReceived)] == [stamp]
    assert [e.stamp for e in of(a_ev, KeepaliveAck)] == [stamp]
    assert not of(a_ev, KeepaliveReceived) and not of(b_ev, KeepaliveAck)


def test_events_are_immutable() -> None:
    """An event means the same to every holder: the driver drops a message by consuming the
    event list, never by clearing the event's field."""
    link = open_link()
    link.c.send_message(plain(3, b"x" * 100))
    link.c.send_keepalive(1)
    link.run()
    link.s.close()
    link.run()
    events = link.cev + link.sev
    assert {type(e) for e in events} >= {HandshakeDone, MessageReceived, KeepaliveReceived,
                                         KeepaliveAck, Closed}
    for ev in events + [Fault("x"), PeerReset(CLIENT), SessionReset(CLIENT, [])]:
        with pytest.raises(FrozenInstanceError):
            ev.stamp = 0  # type: ignore[union-attr]


def test_keepalive_before_open_sends_nothing() -> None:
    link = connect(Session(), SessionRegistry())
    before = b"".join(link.c.data_to_send())
    link.c.send_keepalive(1)
    assert b"".join(link.c.data_to_send()) == before


def test_keepalives_interleave_with_a_message() -> None:
    link = open_link(rnd=random.Random(3))
    link.c.send_message(plain(1, rand_bytes(30_000, 1)))
    link.c.data_to_send()  # the message is framed first
    link.c.send_keepalive(7)
    link.run()
    assert [m.tid for m in received(link.sev)] == [1]
    assert [e.stamp for e in of(link.sev, KeepaliveReceived)] == [7]
    assert [e.stamp for e in of(link.cev, KeepaliveAck)] == [7]


def test_client_close() -> None:
    sess, reg = Session(), SessionRegistry()
    link = open_link(sess, reg)
    link.c.send_message(plain(1))
    link.run()
    link.c.close()
    assert not link.c.open
    link.run()
    assert len(of(link.sev, Closed)) == 1 and not link.s.open
    assert reg.get(CLIENT) is None  # the session is gone: nothing will be replayed
    assert link.s.eof() == []  # EOF after CLOSE is not a fault
    assert faults(link.s.feed(b"\x08")) == ["bytes after close"]


def test_server_close() -> None:
    link = open_link()
    link.s.close()
    link.run()
    assert len(of(link.cev, Closed)) == 1
    assert link.c.eof() == [] and not link.c.open


# ---- lossy sessions -------------------------------------------------------------------------


def test_lossy_fault_reports_dropped_and_replays_nothing() -> None:
    """A lossy session never replays: on a fault it reports every message sent or queued
    but never acknowledged (SessionReset.dropped) and starts over."""
    sess, reg = Session(lossy=True), SessionRegistry()
    link = open_link(sess, reg)
    assert reg.get(CLIENT).lossy
    link.c.send_message(plain(1, b"delivered and acked"))
    link.run()
    assert [m.tid for m in received(link.sev)] == [1]
    assert not sess.sent and not sess.unsent  # acked: nothing kept
    link.take()
    link.c.send_message(plain(2, b"cut in the middle"))
    wire = b"".join(link.c.data_to_send())
    link.c.sent(len(wire))
    link.c.send_message(plain(3, b"never framed"))
    sev = link.s.feed(wire[: len(wire) - 5])
    assert not received(sev)
    cev = link.c.eof()
    sev += link.s.eof()
    assert [type(e) for e in cev] == [SessionReset, Fault]  # the reset first, then the fault
    (reset,) = of(cev, SessionReset)
    assert reset.peer == SERVER
    assert [m.tid for m in reset.dropped] == [2, 3]
    assert faults(cev) == ["peer closed the connection between frames"]
    (sreset,) = of(sev, SessionReset)  # the server's lossy session ends too
    assert sreset.dropped == []
    assert not sess.sent and not sess.unsent and sess.out_seq == 0
    # the next connection starts over: nothing from before arrives
    again = connect(sess, reg)
    again.c.send_message(plain(4, b"new"))
    again.run()
    assert [(m.tid, m.seq) for m in received(again.sev)] == [(4, 1)]
    assert not of(again.cev, SessionReset)
    assert not sess.sent


# ---- data lands in the caller's buffer ------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_alloc_data_lands_in_the_callers_buffer(direct: bool) -> None:
    reader = bytearray(200_000)
    headers: list[MsgHeader] = []

    def alloc(h: MsgHeader) -> list[memoryview]:
        headers.append(h)
        mv = memoryview(reader)
        # two scattered extents of the reader's buffer, like a striped read
        return [mv[1000:41_000], mv[100_000 : 100_000 + h.data_len]]

    link = open_link(c_alloc=alloc, direct=direct, rnd=random.Random(4))
    data = rand_bytes(90_000, 4)
    link.s.send_message(Message(type=4, tid=77, front=b"reply", data=BioChain([data]),
                                trail=pagelist(b"tail")))
    link.run()
    (m,) = received(link.cev)
    assert [(h.tid, h.data_len, h.src) for h in headers] == [(77, 90_004, SERVER)]
    assert m.data_bytes() == data + b"tail"
    assert bytes(reader[1000:41_000]) == data[:40_000]
    assert bytes(reader[100_000:150_004]) == data[40_000:] + b"tail"
    assert reader[:1000] == bytes(1000) and reader[41_000:100_000] == bytes(59_000)
    assert reader[150_004:] == bytes(49_996)
    arr = np.frombuffer(reader, dtype=np.uint8)
    segs = m.data.segments()
    assert [len(s) for s in segs] == [40_000, 50_004]
    assert all(np.shares_memory(np.frombuffer(s, dtype=np.uint8), arr) for s in segs)
    assert all(s.obj is reader for s in segs)
    reader[1000] ^= 0xFF  # views, not copies: a later write shows through
    assert segs[0][0] == reader[1000]
    if direct:
        assert link.c.copied_bytes < 90_004 // 2
    else:
        assert link.c.copied_bytes == 90_004


def test_direct_receive_copies_nothing() -> None:
    reader = bytearray(1 << 20)
    link = open_link(c_alloc=lambda h: [memoryview(reader)])
    data = rand_bytes(500_000, 5)
    link.s.send_message(Message(type=4, data=BioChain([data])))
    wire = memoryview(b"".join(link.s.data_to_send()))
    head = 1 + HEADER_LEN
    ev = link.c.feed(wire[:head])  # exactly the header: the data goes to recv_target
    pos = head
    while (t := link.c.recv_target()) is not None:
        n = min(len(t), 65536)
        t[:n] = wire[pos : pos + n]
        ev += link.c.received_direct(n)
        pos += n
    ev += link.c.feed(wire[pos:])
    (m,) = received(ev)
    assert m.data_bytes() == data and bytes(reader[:500_000]) == data
    # only the tail below DIRECT_MIN went through the staging copy
    assert link.c.copied_bytes < DIRECT_MIN


def test_alloc_data_too_small_falls_back_to_fresh_memory() -> None:
    small = bytearray(10)
    link = open_link(s_alloc=lambda h: [memoryview(small)])
    data = rand_bytes(5000, 6)
    link.c.send_message(Message(type=1, data=BioChain([data])))
    link.run()
    (m,) = received(link.sev)
    assert m.data_bytes() == data and small == bytes(10)


@pytest.mark.parametrize("items", [3000, 20_000])
def test_alloc_data_with_a_multibyte_format_buffer(items: int) -> None:
    """alloc_data may hand back views of typed arrays (e.g. numpy words): lengths are
    bytes, not items; the data lands in the array and the stream stays in step."""
    words = np.zeros(items, dtype=np.uint64)  # 8 bytes an item: room for 16 KiB either way
    link = open_link(s_alloc=lambda h: [memoryview(words)] if h.tid == 1 else None)
    data = rand_bytes(16_384, 7)
    link.c.send_message(Message(type=1, tid=1, data=BioChain([data])))
    link.c.send_message(plain(2, b"next"))
    link.run()
    assert not faults(link.sev)
    m, m2 = received(link.sev)
    assert m.data_bytes() == data and m.data_len == len(data)
    assert words.tobytes()[: len(data)] == data and not words[2048:].any()
    assert (m2.tid, m2.data_bytes()) == (2, b"next")


# ---- small messages that arrive whole in one read --------------------------------------------


def _wire_of(msgs: list[Message], alloc: Callable | None = None) -> tuple[Link, memoryview]:
    link = open_link(c_alloc=alloc)
    for m in msgs:
        link.s.send_message(m)
    return link, memoryview(b"".join(link.s.data_to_send()))


@pytest.mark.parametrize("chunk", [1, 7, 4096 + 40, 1 << 20])
def test_small_messages_fed_whole_or_in_pieces_give_the_same_events(chunk: int) -> None:
    """A message lying whole in the staging buffer takes the one-go path; fed in pieces it
    takes the section-by-section path. Both must deliver the same messages and land the
    same bytes in the caller's buffer, duplicates and all."""
    reader = bytearray(24 * 8192)

    def alloc(h: MsgHeader) -> list[memoryview] | None:
        if h.type != 4:
            return None
        base = h.tid * 8192
        return [memoryview(reader)[base : base + h.data_len]]

    msgs = [Message(type=4 if i % 3 else 5, tid=i, front=rand_bytes(i % 50, i),
                    middle=b"m" * (i % 2), data=BioChain([rand_bytes(4096 + i, 100 + i)])
                    if i % 4 else None) for i in range(24)]
    link, wire = _wire_of(msgs, alloc)
    staging = Staging()
    ev: list = []
    for pos in range(0, len(wire), chunk):
        ev += staging.feed(link.c, wire[pos : pos + chunk])
    got = received(ev)
    assert not faults(ev)
    assert [(m.tid, m.type, bytes(m.front), bytes(m.middle), m.data_bytes()) for m in got] == [
        (m.tid, m.type, bytes(m.front), bytes(m.middle), m.data_bytes()) for m in msgs]
    for m in got:
        if m.type == 4 and m.data is not None:  # landed in the reader's own buffer
            assert all(s.obj is reader for s in m.data.segments())
    assert link.c.copied_bytes == sum(m.data_len for m in msgs)


def test_replayed_small_messages_are_dropped_whole() -> None:
    link, wire = _wire_of([Message(type=5, tid=i, data=BioChain([b"x" * 100]))
                           for i in range(3)])
    staging = Staging()
    assert len(received(staging.feed(link.c, wire))) == 3
    # the peer replays the same three (as after a reconnect): the receiver drops them
    frames = wire[wire.tobytes().index(bytes([TAG_MSG])):]
    assert received(staging.feed(link.c, frames)) == []
    assert link.c.session.in_seq == 3 and not link.c.faulted


@pytest.mark.parametrize("where", ["data", "footer"])
def test_corrupt_small_message_faults_before_touching_the_callers_buffer(where: str) -> None:
    reader = bytearray(8192)
    link, wire = _wire_of([Message(type=4, tid=1, front=b"reply",
                                   data=BioChain([rand_bytes(4096, 9)]))],
                          lambda h: [memoryview(reader)[: h.data_len]])
    raw = bytearray(wire)
    start = raw.index(bytes([TAG_MSG]))
    pos = start + 1 + HEADER_LEN + 5 + (100 if where == "data" else 4096 + 8)
    raw[pos] ^= 0x40
    ev = Staging().feed(link.c, memoryview(raw))
    assert received(ev) == [] and faults(ev) and "crc" in faults(ev)[0]
    assert reader == bytearray(8192)  # nothing landed
