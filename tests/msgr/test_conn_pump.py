"""The sans-I/O Connection pumped in memory: any chunking, corruption, limits, replay, resets."""

from __future__ import annotations

import random
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.crc import crc32c
from rbdpy.msgr.connection import (
    BANNER,
    CONNECT,
    PROTOCOL_FEATURES,
    TAG_MSG,
    Closed,
    Connection,
    Fault,
    HandshakeDone,
    KeepaliveAck,
    KeepaliveReceived,
    Limits,
    MessageReceived,
    PeerReset,
    Session,
    SessionRegistry,
    SessionReset,
)
from rbdpy.msgr.message import HEADER, HEADER_CRC, HEADER_LEN, EntityName, Message, MsgHeader
from rbdpy.msgr.payload import PAGE_SIZE, BioChain, Pagelist, Pages

CLI = EntityName(1, 5)
SRV = EntityName(2, 0)

Chunker = Callable[[], int]


def chunker(rng: random.Random) -> Chunker:
    def next_size() -> int:
        r = rng.random()
        if r < 0.3:
            return 1
        if r < 0.6:
            return rng.randint(1, 64)
        return rng.randint(1, 30000)

    return next_size


def deliver(dst: Connection, data: bytes, chunk: Chunker | None = None, direct: bool = True
            ) -> list:
    """Feed ``data`` to ``dst`` in chunks, using recv_target/received_direct when offered."""
    ev: list = []
    pos = 0
    while pos < len(data) and not dst.faulted:
        k = min(chunk() if chunk else len(data), len(data) - pos)
        tgt = dst.recv_target() if direct else None
        if tgt is not None:
            k = min(k, len(tgt))
            tgt[:k] = data[pos : pos + k]
            ev += dst.received_direct(k)
        else:
            ev += dst.feed(data[pos : pos + k])
        pos += k
    return ev


def take_output(src: Connection, limit: int | None = None) -> bytes:
    """What ``src`` would write now (at most ``limit`` bytes), retired with ``sent``."""
    data = b"".join(bytes(b) for b in src.data_to_send())
    if limit is not None:
        data = data[:limit]
    src.sent(len(data))
    return data


class Pair:
    """A client and a server Connection wired back to back, with their events."""

    def __init__(self, *, session: Session | None = None, registry: SessionRegistry | None = None,
                 cnonce: int = 111, snonce: int = 222, climits: Limits | None = None,
                 slimits: Limits | None = None, calloc=None, salloc=None,  # noqa: ANN001
                 rng: random.Random | None = None, direct: bool = True) -> None:
        self.session = session if session is not None else Session()
        self.registry = registry if registry is not None else SessionRegistry()
        self.cnonce, self.snonce = cnonce, snonce
        self.c = Connection(CLI, cnonce, client=True, session=self.session, limits=climits,
                            alloc_data=calloc)
        self.s = Connection(SRV, snonce, client=False, registry=self.registry, limits=slimits,
                            alloc_data=salloc)
        self.cev: list = []
        self.sev: list = []
        self.chunk = chunker(rng) if rng else None
        self.rng = rng
        self.direct = direct

    def step(self, src: Connection, dst: Connection, out: list) -> bool:
        limit = None
        if self.rng is not None and self.rng.random() < 0.5:
            limit = self.rng.randint(1, 20000)
        data = take_output(src, limit)
        if data:
            out += deliver(dst, data, self.chunk, self.direct)
        return bool(data)

    def pump(self, rounds: int = 100000) -> None:
        for _ in range(rounds):
            moved = self.step(self.c, self.s, self.sev)
            moved |= self.step(self.s, self.c, self.cev)
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def received(self, side: str) -> list[Message]:
        evs = self.sev if side == "s" else self.cev
        return [e.msg for e in evs if isinstance(e, MessageReceived)]

    @property
    def server_session(self) -> Session:
        s = self.registry.get(CLI)
        assert s is not None
        return s


def kinds(evs: list) -> list[str]:
    return [type(e).__name__ for e in evs]


def faults(evs: list) -> list[str]:
    return [e.reason for e in evs if isinstance(e, Fault)]


# ---- message generation ---------------------------------------------------------------------


def make_payload(kind: str, rng: random.Random, size: int):  # noqa: ANN201
    data = rng.randbytes(size)
    if kind == "none" or (size == 0 and kind != "empty-bio"):
        return None, b""
    if kind == "pages":
        p = Pages.alloc(size, offset=rng.randrange(PAGE_SIZE))
        pos = 0
        for seg in p.segments():
            seg[:] = data[pos : pos + len(seg)]
            pos += len(seg)
        return p, data
    if kind == "pagelist":
        pl = Pagelist()
        pos = 0
        while pos < size:
            n = rng.randint(1, 5000)
            pl.append(data[pos : pos + n])
            pos += n
        return pl, data
    if kind == "empty-bio":
        return BioChain(), b""
    # multi-segment bio over caller buffers, at offsets inside bigger buffers
    bio = BioChain()
    pos = 0
    while pos < size:
        n = min(rng.randint(1, 12000), size - pos)
        pad = rng.randint(0, 100)
        buf = bytearray(rng.randbytes(pad)) + bytearray(data[pos : pos + n]) + bytearray(7)
        bio.append(buf, pad, n)
        pos += n
    return bio, data


@st.composite
def messages(draw, max_size: int = 20000):  # noqa: ANN001, ANN201
    kind = draw(st.sampled_from(["none", "pages", "pagelist", "bio", "empty-bio"]))
    size = draw(st.one_of(st.sampled_from([0, 1, PAGE_SIZE, 8192, 9000, max_size]),
                          st.integers(0, max_size)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    payload, data = make_payload(kind, rng, size)
    trail_bytes = b""
    trail = None
    if draw(st.booleans()):
        trail = Pagelist()
        trail_bytes = rng.randbytes(draw(st.sampled_from([0, 3, 5000])))
        trail.append(trail_bytes)
    front = rng.randbytes(draw(st.sampled_from([0, 1, 50, 300])))
    middle = rng.randbytes(draw(st.sampled_from([0, 0, 7, 100])))
    msg = Message(type=draw(st.integers(0, 0xFFFF)), front=front, middle=middle, data=payload,
                  trail=trail, tid=draw(st.integers(0, 2**64 - 1)),
                  priority=draw(st.integers(0, 0xFFFF)), version=draw(st.integers(0, 0xFFFF)),
                  data_off=draw(st.integers(0, 0xFFFF)))
    return msg, data + trail_bytes


def expect_same(got: Message, sent: Message, data: bytes, src: EntityName) -> None:
    assert got.type == sent.type and got.tid == sent.tid
    assert got.priority == sent.priority and got.version == sent.version
    assert got.data_off == sent.data_off and got.seq == sent.seq
    assert bytes(got.front) == bytes(sent.front)
    assert bytes(got.middle) == bytes(sent.middle)
    assert got.data_bytes() == data
    assert got.data_len == len(data)
    assert got.src == src
    assert got.trail is None


def handshake(p: Pair) -> None:
    p.pump()
    assert p.c.open and p.s.open
    assert any(isinstance(e, HandshakeDone) and e.peer == SRV for e in p.cev)
    assert any(isinstance(e, HandshakeDone) and e.peer == CLI for e in p.sev)


# ---- round trips -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    c2s=st.lists(messages(), max_size=5),
    s2c=st.lists(messages(), max_size=5),
    seed=st.integers(0, 2**32),
    direct=st.booleans(),
    early=st.booleans(),
)
def test_roundtrip_any_payload_any_chunking(c2s, s2c, seed, direct, early) -> None:  # noqa: ANN001
    p = Pair(rng=random.Random(seed), direct=direct)
    if early:  # queued before the handshake: framed once the session opens
        for m, _ in c2s:
            p.c.send_message(m)
    handshake(p)
    if not early:
        for m, _ in c2s:
            p.c.send_message(m)
    for m, _ in s2c:
        p.s.send_message(m)
    p.pump()
    got_s, got_c = p.received("s"), p.received("c")
    assert len(got_s) == len(c2s) and len(got_c) == len(s2c)
    for got, (m, data) in zip(got_s, c2s):
        expect_same(got, m, data, CLI)
    for got, (m, data) in zip(got_c, s2c):
        expect_same(got, m, data, SRV)
    assert [m.seq for m in got_s] == list(range(1, len(c2s) + 1))
    assert not faults(p.cev + p.sev)
    # everything acked by now
    assert not p.session.sent and not p.session.unsent
    assert not p.server_session.sent and not p.server_session.unsent


def test_byte_at_a_time_both_paths() -> None:
    rng = random.Random(5)
    bio_buf = bytearray(rng.randbytes(40000))
    for direct in (False, True):
        p = Pair(direct=direct)
        p.chunk = lambda: 1
        handshake(p)
        pl = Pagelist()
        pl.encode_str("trail")
        m = Message(type=3, front=b"f", middle=b"m", tid=9,
                    data=BioChain.from_buffer(bio_buf, 10, 30000), trail=pl)
        p.c.send_message(m)
        p.pump()
        (got,) = p.received("s")
        expect_same(got, m, bytes(bio_buf[10:30010]) + pl.tobytes(), CLI)
        if direct:  # most of the data went straight into the destination buffer
            assert p.s.copied_bytes < 30000 // 2
        else:
            assert p.s.copied_bytes == 30000 + pl.length


# ---- corruption ------------------------------------------------------------------------------


def _bio_message() -> tuple[Message, bytes]:
    rng = random.Random(77)
    a, b = bytearray(rng.randbytes(12000)), bytearray(rng.randbytes(3000))
    bio = BioChain()
    bio.append(a, 100, 11000)
    bio.append(b)
    trail = Pagelist()
    trail.encode_str("the trail")
    m = Message(type=17, front=b"front-bytes", middle=b"middle!", data=bio, trail=trail, tid=42)
    return m, bytes(a[100:11100]) + bytes(b) + trail.tobytes()


SECTIONS = {
    # name: (offset inside the message frame, reason substring)
    "tag": (lambda m: 0, "unknown tag"),
    "header": (lambda m: 1 + 5, "bad header crc"),
    "header-crc": (lambda m: HEADER_LEN, "bad header crc"),
    "front": (lambda m: 1 + HEADER_LEN + 3, "bad front crc"),
    "middle": (lambda m: 1 + HEADER_LEN + len(m.front) + 2, "bad middle crc"),
    "data": (lambda m: 1 + HEADER_LEN + len(m.front) + len(m.middle) + 9000, "bad data crc"),
    "trail": (lambda m: 1 + HEADER_LEN + len(m.front) + len(m.middle) + m.data_len - 1,
              "bad data crc"),
    "footer-front": (lambda m: 1 + HEADER_LEN + len(m.front) + len(m.middle) + m.data_len,
                     "bad front crc"),
    "footer-middle": (lambda m: 1 + HEADER_LEN + len(m.front) + len(m.middle) + m.data_len + 5,
                      "bad middle crc"),
    "footer-data": (lambda m: 1 + HEADER_LEN + len(m.front) + len(m.middle) + m.data_len + 11,
                    "bad data crc"),
}


def _replay_and_check(p: Pair, m: Message, data: bytes, seed: int) -> Pair:
    """Reconnect with the same session (and the server's registry) and expect ``m`` once."""
    p.c.fault("test: the socket went away")
    q = Pair(session=p.session, registry=p.registry, rng=random.Random(seed))
    q.pump()
    assert not faults(q.cev + q.sev), faults(q.cev + q.sev)
    assert not any(isinstance(e, SessionReset | PeerReset) for e in q.cev + q.sev)
    (got,) = q.received("s")
    expect_same(got, m, data, CLI)
    assert not q.session.sent and not q.session.unsent
    return q


@pytest.mark.parametrize("section", sorted(SECTIONS))
@pytest.mark.parametrize("seed", [1, 2])
def test_flipped_byte_faults_then_replay_delivers_once(section: str, seed: int) -> None:
    p = Pair(rng=random.Random(seed))
    handshake(p)
    m, data = _bio_message()
    p.c.send_message(m)
    wire = bytearray(take_output(p.c))
    frame_len = 1 + HEADER_LEN + len(m.front) + len(m.middle) + m.data_len + 13
    assert len(wire) == frame_len and wire[0] == TAG_MSG
    where, reason = SECTIONS[section]
    wire[where(m)] ^= 0xA5
    evs = deliver(p.s, bytes(wire), p.chunk)
    assert not any(isinstance(e, MessageReceived) for e in evs)
    (why,) = faults(evs)
    assert reason in why
    assert p.s.faulted and not p.s.open
    assert p.server_session.in_seq == 0
    # nothing more is accepted on the faulted connection
    assert p.s.feed(b"\x08" * 10) == []
    _replay_and_check(p, m, data, seed)


@pytest.mark.parametrize("who", ["client", "server"])
def test_flipped_banner(who: str) -> None:
    p = Pair()
    m, data = _bio_message()
    p.c.send_message(m)
    src, dst = (p.c, p.s) if who == "client" else (p.s, p.c)
    wire = bytearray(take_output(src))
    assert wire.startswith(BANNER)
    wire[3] ^= 0x01
    evs = deliver(dst, bytes(wire), lambda: 3)
    (why,) = faults(evs)
    assert "bad banner" in why
    assert not any(isinstance(e, MessageReceived | HandshakeDone) for e in evs)
    if who == "server":
        p.s.fault("test: the client hung up")
    _replay_and_check(p, m, data, 3)


def test_bad_connect_auth_length_over_limit() -> None:
    reg = SessionRegistry()
    s = Connection(SRV, 1, client=False, registry=reg, limits=Limits(max_auth=16))
    connect = CONNECT.pack(PROTOCOL_FEATURES, CLI.type, CLI.num, 5, 1, 0, 0, 0, 1 << 30)
    evs = s.feed(BANNER + connect)
    (why,) = faults(evs)
    assert "auth length" in why
    assert reg.get(CLI) is None


# ---- limits ----------------------------------------------------------------------------------


def _raw_header(seq: int, front: int, middle: int, data: int) -> bytes:
    body = HEADER.pack(seq, 1, 7, 0, 0, front, middle, data, 0, CLI.type, CLI.num)
    return body + HEADER_CRC.pack(crc32c(body))


@pytest.mark.parametrize(
    "lens, reason",
    [
        ((0, 0, 60 << 20), "data_len"),
        ((60 << 20, 0, 0), "front_len"),
        ((0, 60 << 20, 0), "middle_len"),
        ((0, 0, 0xFFFFFFFF), "data_len"),
    ],
)
def test_lengths_over_limits_fault_before_allocation(lens, reason: str) -> None:  # noqa: ANN001
    calls: list[MsgHeader] = []

    def alloc(h: MsgHeader) -> list[memoryview]:
        calls.append(h)
        return [memoryview(bytearray(h.data_len))]

    lim = Limits(max_front=1 << 20, max_middle=1 << 20, max_data=1 << 20)
    p = Pair(slimits=lim, salloc=alloc)
    handshake(p)
    wire = bytes([TAG_MSG]) + _raw_header(1, *lens)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        evs = deliver(p.s, wire + bytes(4096), lambda: 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (why,) = faults(evs)
    assert reason in why and "over the limit" in why
    assert calls == []
    assert peak < 256 << 10, peak
    assert not any(isinstance(e, MessageReceived) for e in evs)


def test_encode_header_with_faked_lengths_is_rejected_too() -> None:
    from rbdpy.msgr.message import encode_header

    class Huge:
        length = 60 << 20

        def segments(self) -> list[memoryview]:  # never reached
            raise AssertionError

    called = []
    p = Pair(slimits=Limits(max_data=1 << 20), salloc=lambda h: called.append(h))
    handshake(p)
    m = Message(type=1, data=Huge(), seq=1)  # type: ignore[arg-type]
    evs = p.s.feed(bytes([TAG_MSG]) + encode_header(m, CLI))
    assert "data_len 62914560 over the limit 1048576" in faults(evs)[0]
    assert called == []


def test_lengths_at_the_limit_are_fine() -> None:
    p = Pair(slimits=Limits(max_front=100, max_middle=100, max_data=50000))
    handshake(p)
    m = Message(type=1, front=bytes(100), middle=bytes(100),
                data=BioChain.from_buffer(bytearray(50000)))
    p.c.send_message(m)
    p.pump()
    assert len(p.received("s")) == 1 and not faults(p.sev)


# ---- eof, acks, replay -----------------------------------------------------------------------


def test_eof_mid_message_and_between_frames() -> None:
    p = Pair()
    handshake(p)
    m, _ = _bio_message()
    p.c.send_message(m)
    wire = take_output(p.c)
    evs = p.s.feed(wire[: len(wire) // 2])
    assert evs == []
    evs = p.s.eof()
    assert not any(isinstance(e, MessageReceived) for e in evs)
    assert "mid-message" in faults(evs)[0]
    assert p.s.eof() == []  # only once

    q = Pair()
    handshake(q)
    assert "between frames" in faults(q.c.eof())[0]
    # eof in the handshake
    r = Connection(SRV, 1, client=False, registry=SessionRegistry())
    r.feed(BANNER[:3])
    assert faults(r.eof())


def test_sent_shrinks_after_acks() -> None:
    p = Pair()
    handshake(p)
    for i in range(3):
        p.c.send_message(Message(type=1, tid=i))
    p.sev += deliver(p.s, take_output(p.c))
    assert len(p.session.sent) == 3
    ack_wire = take_output(p.s)  # carries ACK 3
    for i in range(3, 5):
        p.c.send_message(Message(type=1, tid=i))
    p.sev += deliver(p.s, take_output(p.c))
    assert [m.seq for m in p.session.sent] == [1, 2, 3, 4, 5]
    p.cev += deliver(p.c, ack_wire)
    assert [m.seq for m in p.session.sent] == [4, 5]
    p.pump()
    assert len(p.session.sent) == 0
    assert [m.tid for m in p.received("s")] == list(range(5))


def test_ack_for_unsent_message_faults() -> None:
    p = Pair()
    handshake(p)
    evs = p.c.feed(struct.pack("<BQ", 9, 5))
    assert "never sent" in faults(evs)[0]


def _msg(side: str, i: int, rng: random.Random) -> tuple[Message, bytes]:
    size = rng.choice([0, 10, 3000, 9000, 20000])
    data = rng.randbytes(size)
    buf = bytearray(data)
    payload = BioChain.from_buffer(buf) if size else None
    return Message(type=2, tid=i, front=f"{side}{i}".encode(), data=payload), data


def _cut_run(seed: int, cuts: int, per_round: int = 6) -> None:
    rng = random.Random(seed)
    session, registry = Session(), SessionRegistry()
    sent_c: list[tuple[Message, bytes]] = []
    sent_s: list[tuple[Message, bytes]] = []
    got_c: list[Message] = []
    got_s: list[Message] = []
    for rnd in range(cuts + 1):
        p = Pair(session=session, registry=registry, rng=rng)
        last = rnd == cuts
        budget = {"c": 10**12 if last else rng.randint(0, 60000),
                  "s": 10**12 if last else rng.randint(0, 60000)}
        for _ in range(rng.randint(0, per_round)):
            m = _msg("c", len(sent_c), rng)
            sent_c.append(m)
            session.queue(m[0])
        cut = False
        for _ in range(100000):
            if rng.random() < 0.3 and registry.get(CLI) is not None:
                m = _msg("s", len(sent_s), rng)
                sent_s.append(m)
                registry.get(CLI).queue(m[0])  # what Peer.send does
            moved = False
            for src, dst, side, evs in ((p.c, p.s, "c", p.sev), (p.s, p.c, "s", p.cev)):
                data = take_output(src, rng.randint(1, 30000))
                moved |= bool(data)
                arrive = data[: budget[side]]
                budget[side] -= len(arrive)
                evs += deliver(dst, arrive, p.chunk, rng.random() < 0.7)
                if len(arrive) < len(data):
                    cut = True
            assert not faults(p.cev + p.sev)
            if cut or (not moved and (last or rng.random() < 0.5)):
                break
        got_s += p.received("s")
        got_c += p.received("c")
        assert not any(isinstance(e, SessionReset | PeerReset) for e in p.cev + p.sev)
        if not last:
            # the socket dies: each side notices in its own way
            if rng.random() < 0.5:
                p.c.eof()
            else:
                p.c.fault("cut")
            p.s.eof() if rng.random() < 0.5 else p.s.fault("cut")
    assert [m.tid for m in got_s] == list(range(len(sent_c)))
    assert [m.tid for m in got_c] == list(range(len(sent_s)))
    for got, (m, data) in zip(got_s, sent_c):
        expect_same(got, m, data, CLI)
    for got, (m, data) in zip(got_c, sent_s):
        expect_same(got, m, data, SRV)
    assert not session.sent and not session.unsent
    srv = registry.get(CLI)
    assert srv is not None and not srv.sent and not srv.unsent


@pytest.mark.parametrize("seed", range(6))
def test_lossless_replay_after_many_cuts(seed: int) -> None:
    _cut_run(seed, cuts=100)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32), cuts=st.integers(0, 15))
def test_lossless_replay_after_cuts_hypothesis(seed: int, cuts: int) -> None:
    _cut_run(seed, cuts)


# ---- resets ----------------------------------------------------------------------------------


def test_server_restart_resets_client_session_with_unacked_dropped() -> None:
    p = Pair()
    handshake(p)
    m1, m2, m3 = (Message(type=1, tid=i) for i in range(3))
    p.c.send_message(m1)
    p.pump()
    assert p.session.sent == type(p.session.sent)()  # m1 acked
    p.c.send_message(m2)
    take_output(p.c)  # written, but the server dies before reading it
    p.c.send_message(m3)  # queued only
    p.c.eof()
    q = Pair(session=p.session, registry=SessionRegistry(), snonce=999)
    q.pump()
    resets = [e for e in q.cev if isinstance(e, SessionReset)]
    assert len(resets) == 1 and resets[0].peer == SRV
    assert [m.tid for m in resets[0].dropped] == [1, 2]
    assert resets[0].dropped[0] is m2 and resets[0].dropped[1] is m3
    assert q.c.open and q.s.open
    assert q.received("s") == []  # nothing replayed into the new session
    q.c.send_message(Message(type=1, tid=10))
    q.pump()
    (got,) = q.received("s")
    assert got.tid == 10 and got.seq == 1
    assert not any(isinstance(e, PeerReset) for e in q.sev)


def test_client_restart_gives_server_peer_reset() -> None:
    p = Pair()
    handshake(p)
    p.c.send_message(Message(type=1, tid=1))
    p.pump()
    p.s.send_message(Message(type=1, tid=2))  # the server has something for the old client
    take_output(p.s)
    old = p.server_session
    p.c.fault("client process died")
    p.s.eof()
    q = Pair(session=Session(), registry=p.registry, cnonce=4242)
    q.pump()
    assert [type(e) for e in q.sev].count(PeerReset) == 1
    assert [e.peer for e in q.sev if isinstance(e, PeerReset)] == [CLI]
    assert q.server_session is not old
    assert q.received("c") == []  # the old session's message is not delivered to the new one
    q.c.send_message(Message(type=1, tid=3))
    q.pump()
    assert [m.tid for m in q.received("s")] == [3]
    assert not any(isinstance(e, SessionReset) for e in q.cev)


def test_reconnect_same_session_no_reset_events() -> None:
    p = Pair()
    handshake(p)
    p.c.fault("x")
    p.s.fault("x")
    q = Pair(session=p.session, registry=p.registry)
    q.pump()
    assert not any(isinstance(e, SessionReset | PeerReset | Fault) for e in q.cev + q.sev)
    assert q.c.open and q.s.open


# ---- keepalive, close, lossy ------------------------------------------------------------------


def test_keepalive_stamp_round_trip() -> None:
    p = Pair()
    p.c.send_keepalive(1)  # not open yet: ignored
    handshake(p)
    stamp = 0x1122334455667788
    p.c.send_keepalive(stamp)
    p.s.send_keepalive(7)
    p.pump()
    assert [e.stamp for e in p.sev if isinstance(e, KeepaliveReceived)] == [stamp]
    assert [e.stamp for e in p.cev if isinstance(e, KeepaliveAck)] == [stamp]
    assert [e.stamp for e in p.cev if isinstance(e, KeepaliveReceived)] == [7]
    assert [e.stamp for e in p.sev if isinstance(e, KeepaliveAck)] == [7]


def test_close_gives_closed_and_forgets_session() -> None:
    p = Pair()
    handshake(p)
    p.c.send_message(Message(type=1, tid=1))
    p.pump()
    p.c.close()
    assert not p.c.open
    p.pump()
    assert [e for e in p.sev if isinstance(e, Closed)] == [Closed()]
    assert p.registry.get(CLI) is None
    assert not p.s.open
    # bytes after the close are a protocol error
    assert "after close" in faults(p.s.feed(b"\x0a"))[0]


def test_lossy_fault_resets_and_replays_nothing() -> None:
    sess = Session(lossy=True)
    p = Pair(session=sess)
    handshake(p)
    m1, m2, m3 = (Message(type=1, tid=i, front=b"x") for i in range(3))
    p.c.send_message(m1)
    p.pump()
    assert [m.tid for m in p.received("s")] == [0]
    p.c.send_message(m2)
    take_output(p.c)  # lost in flight
    p.c.send_message(m3)  # never framed
    evs = p.c.fault("cut")
    assert kinds(evs) == ["SessionReset", "Fault"]
    dropped = evs[0].dropped
    assert m3 in dropped and m1 not in dropped
    assert m2 in dropped, "a lossy session should report in-flight unacked messages too"
    assert not sess.sent and not sess.unsent and sess.out_seq == 0
    p.s.eof()
    q = Pair(session=sess, registry=p.registry)
    q.pump()
    assert q.received("s") == []  # nothing replayed
    m4 = Message(type=1, tid=4)
    q.c.send_message(m4)
    q.pump()
    assert [(m.tid, m.seq) for m in q.received("s")] == [(4, 1)]
    assert not any(isinstance(e, SessionReset) for e in q.cev)


# ---- in-place landing ------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_alloc_data_buffer_filled_in_place(direct: bool) -> None:
    dest = bytearray(b"\xee" * 40000)
    headers: list[MsgHeader] = []

    def alloc(h: MsgHeader) -> list[memoryview]:
        headers.append(h)
        return [memoryview(dest)[100:]]

    rng = random.Random(9)
    p = Pair(salloc=alloc, rng=rng, direct=direct)
    handshake(p)
    src = bytearray(rng.randbytes(30000))
    trail = Pagelist()
    trail.encode_str("tail")
    m = Message(type=5, tid=77, front=b"hdr", data=BioChain.from_buffer(src), trail=trail)
    p.c.send_message(m)
    p.pump()
    (got,) = p.received("s")
    n = 30000 + trail.length
    assert len(headers) == 1 and headers[0].data_len == n and headers[0].tid == 77
    assert bytes(dest[100 : 100 + n]) == bytes(src) + trail.tobytes()
    assert dest[:100] == b"\xee" * 100 and dest[100 + n :] == b"\xee" * (40000 - 100 - n)
    segs = got.data.segments()
    assert sum(len(s) for s in segs) == n
    for seg in segs:
        assert seg.obj is dest
    dest[100] ^= 0xFF
    assert segs[0][0] == dest[100]
    if direct:
        assert p.s.copied_bytes < n


def test_alloc_data_multiple_segments_and_fallbacks() -> None:
    a, b, c = bytearray(5000), bytearray(4000), bytearray(30000)
    plan: list = [
        [memoryview(a), memoryview(b)[1000:], memoryview(c)],  # more than enough
        [memoryview(a)],  # too small: fresh buffer instead
        None,  # nothing offered: fresh buffer
    ]

    def alloc(h: MsgHeader):  # noqa: ANN202
        return plan.pop(0)

    p = Pair(salloc=alloc, rng=random.Random(1))
    handshake(p)
    rng = random.Random(2)
    payloads = [rng.randbytes(20000) for _ in range(3)]
    for data in payloads:
        p.c.send_message(Message(type=1, data=BioChain.from_buffer(bytearray(data))))
    p.pump()
    got = p.received("s")
    assert [g.data_bytes() for g in got] == payloads
    s0 = got[0].data.segments()
    assert [seg.obj for seg in s0] == [a, b, c]
    assert [len(seg) for seg in s0] == [5000, 3000, 12000]
    assert bytes(a) + bytes(b[1000:]) + bytes(c[:12000]) == payloads[0]
    for g in got[1:]:
        assert all(seg.obj is not a for seg in g.data.segments())
    assert plan == []


def test_alloc_data_not_called_for_empty_data_or_duplicates() -> None:
    calls = []
    p = Pair(salloc=lambda h: calls.append(h.seq))
    handshake(p)
    p.c.send_message(Message(type=1, front=b"no data"))
    p.c.send_message(Message(type=1, data=BioChain.from_buffer(bytearray(100))))
    p.pump()
    assert calls == [2]


# ---- duplicates, sequencing, output budgets --------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, 200_000])
def test_duplicate_frame_is_read_past_silently(size: int) -> None:
    calls = []
    p = Pair(salloc=lambda h: calls.append(h.seq))
    handshake(p)
    data = random.Random(size).randbytes(size)
    m = Message(type=1, tid=1, front=b"once",
                data=BioChain.from_buffer(bytearray(data)) if size else None)
    p.c.send_message(m)
    wire = take_output(p.c)
    nxt = Message(type=1, tid=2, front=b"next")
    p.c.send_message(nxt)
    wire2 = take_output(p.c)
    evs = deliver(p.s, wire + wire + wire2, chunker(random.Random(3)))
    got = [e.msg for e in evs if isinstance(e, MessageReceived)]
    assert [g.tid for g in got] == [1, 2]
    assert got[0].data_bytes() == data
    assert not faults(evs)
    assert calls == ([1] if size else [])  # nothing allocated for the duplicate


def test_seq_skipping_ahead_faults() -> None:
    p = Pair()
    handshake(p)
    evs = p.s.feed(bytes([TAG_MSG]) + _raw_header(3, 0, 0, 0) + bytes(13))
    assert "skips ahead" in faults(evs)[0]
    assert not any(isinstance(e, MessageReceived) for e in evs)


def test_output_is_framed_lazily_within_budgets() -> None:
    p = Pair()
    handshake(p)
    for i in range(5000):
        p.c.send_message(Message(type=1, tid=i, front=b"f"))
    bufs = p.c.data_to_send(max_bufs=64)
    assert 0 < len(bufs) <= 64
    assert len(p.session.sent) < 50 and len(p.session.unsent) > 4900
    # a message with more segments than the budget still goes out whole, in order
    src = [bytearray(bytes([i % 256]) * 10) for i in range(3000)]
    big = BioChain()
    for b in src:
        big.append(b)
    p.c.send_message(Message(type=9, tid=99999, data=big))
    rng = random.Random(11)
    evs: list = []
    while True:
        bufs = p.c.data_to_send(max_bufs=rng.randint(1, 40), max_bytes=rng.randint(1, 5000))
        if not bufs:
            break
        data = b"".join(bytes(b) for b in bufs)
        n = rng.randint(1, len(data))
        p.c.sent(n)
        evs += deliver(p.s, data[:n], chunker(rng))
    got = [e.msg for e in evs if isinstance(e, MessageReceived)]
    assert [g.tid for g in got] == [*range(5000), 99999]
    assert got[-1].data_bytes() == b"".join(src)
    assert not faults(evs)


def test_big_front_and_middle_through_staging() -> None:
    rng = random.Random(12)
    p = Pair(rng=rng)
    handshake(p)
    front, middle = rng.randbytes(300_000), rng.randbytes(70_000)
    m = Message(type=1, front=front, middle=middle)
    p.c.send_message(m)
    p.pump()
    (got,) = p.received("s")
    assert got.front == front and got.middle == middle


def test_has_output_tracks_pending_work() -> None:
    p = Pair()
    assert p.c.has_output()  # banner + connect
    handshake(p)
    assert not p.c.has_output() and not p.s.has_output()
    p.c.send_message(Message(type=1))
    assert p.c.has_output()
    p.pump()
    assert not p.c.has_output() and not p.s.has_output()
