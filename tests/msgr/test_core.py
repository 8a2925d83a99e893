"""The sans-I/O messenger core, driven byte by byte in memory (no sockets, no clocks)."""

from __future__ import annotations

import os
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.crc import crc32c, crc32c_reference
from rbdpy.msgr.connection import (
    Connection,
    Fault,
    HandshakeDone,
    Limits,
    MessageReceived,
    PeerReset,
    Session,
    SessionRegistry,
    SessionReset,
)
from rbdpy.msgr.message import HEADER, HEADER_CRC, EntityName, Message
from rbdpy.msgr.payload import BioChain, Pagelist, Pages

CLIENT, SERVER = EntityName(1, 7), EntityName(2, 0)


def pump(a: Connection, b: Connection, chunks: list[int] | None = None,
         rnd: random.Random | None = None, direct: bool = False) -> list:
    """Move everything a has to send into b, in chunks; returns b's events."""
    events = []
    out = a.data_to_send()
    while out:
        data = b"".join(out)
        a.sent(len(data))
        pos = 0
        while pos < len(data):
            target = b.recv_target() if direct else None
            if target is not None:
                n = min(len(target), len(data) - pos)
                target[:n] = data[pos : pos + n]
                events += b.received_direct(n)
            else:
                n = rnd.randint(1, 4096) if rnd else len(data)
                events += b.feed(data[pos : pos + n])
            pos += n
        out = a.data_to_send()
    return events


def handshake(c: Connection, s: Connection) -> list:
    """Pump until both sides are open (retries included); returns every event seen."""
    events = []
    for _ in range(6):
        events += pump(c, s)
        events += pump(s, c)
        if c.open and s.open:
            return events
    raise AssertionError("handshake did not complete")


def pair(registry: SessionRegistry | None = None, session: Session | None = None,
         alloc=None):  # noqa: ANN001, ANN201
    c = Connection(CLIENT, 1, client=True, session=session or Session())
    s = Connection(SERVER, 2, client=False, registry=registry or SessionRegistry(),
                   alloc_data=alloc)
    pump(c, s)
    pump(s, c)
    assert c.open and s.open
    return c, s


def received(events: list) -> list[Message]:
    return [e.msg for e in events if isinstance(e, MessageReceived)]


payloads = st.one_of(
    st.none(),
    st.binary(max_size=9000).map(lambda b: BioChain([b]) if b else None),
    st.lists(st.binary(min_size=1, max_size=3000), max_size=5).map(BioChain),
    st.tuples(st.binary(max_size=9000), st.integers(0, 4095)).map(
        lambda t: _pages(t[0], t[1])),
    st.binary(max_size=9000).map(_pl := lambda b: _pagelist(b)),
)


def _pages(data: bytes, off: int) -> Pages:
    p = Pages.alloc(len(data), off)
    pos = 0
    for seg in p.segments():
        seg[:] = data[pos : pos + len(seg)]
        pos += len(seg)
    return p


def _pagelist(data: bytes) -> Pagelist:
    pl = Pagelist()
    pl.append(data)
    return pl


messages = st.builds(
    lambda t, front, middle, data, trail, tid: Message(
        type=t, front=front, middle=middle, data=data,
        trail=_pagelist(trail) if trail else None, tid=tid),
    st.integers(0, 0xFFFF), st.binary(max_size=300), st.binary(max_size=50), payloads,
    st.binary(max_size=600), st.integers(0, 2**64 - 1),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(messages, min_size=1, max_size=6), st.integers(0, 2**32), st.booleans())
def test_roundtrip_any_chunking(msgs: list[Message], seed: int, direct: bool) -> None:
    rnd = random.Random(seed)
    c, s = pair()
    expect = [(m.type, bytes(m.front), bytes(m.middle), m.data_bytes(), m.tid) for m in msgs]
    for m in msgs:
        c.send_message(m)
    got = received(pump(c, s, rnd=rnd, direct=direct))
    assert [(m.type, m.front, m.middle, m.data_bytes(), m.tid) for m in got] == expect
    for m in msgs:  # and back the other way
        s.send_message(Message(type=m.type, front=m.front, data=BioChain([m.data_bytes()])))
    back = received(pump(s, c, rnd=rnd))
    assert [m.data_bytes() for m in back] == [e[3] for e in expect]


def test_single_byte_feeding() -> None:
    c, s = pair()
    data = os.urandom(5000)
    c.send_message(Message(type=3, front=b"f", data=BioChain([data])))
    out = b"".join(c.data_to_send())
    c.sent(len(out))
    events = []
    for i in range(len(out)):
        events += s.feed(out[i : i + 1])
    assert [m.data_bytes() for m in received(events)] == [data]


def _frame(c: Connection, msg: Message) -> bytes:
    c.send_message(msg)
    out = b"".join(c.data_to_send())
    c.sent(len(out))
    return out


def test_flipped_byte_in_each_section_is_detected_then_replayed() -> None:
    front, middle, data = b"F" * 40, b"M" * 20, os.urandom(3000)
    # layout after the tag byte: header(49) front(40) middle(20) data(3000) footer(13)
    sections = {"header": 1 + 10, "front": 1 + 49 + 5, "middle": 1 + 49 + 40 + 3,
                "data": 1 + 49 + 60 + 1500, "footer": 1 + 49 + 60 + 3000 + 2, "tag": 0}
    for name, pos in sections.items():
        reg, sess = SessionRegistry(), Session()
        c, s = pair(reg, sess)
        wire = bytearray(_frame(c, Message(type=5, front=front, middle=middle,
                                           data=BioChain([data]))))
        wire[pos] ^= 0x40
        events = s.feed(bytes(wire))
        faults = [e for e in events if isinstance(e, Fault)]
        assert faults and not received(events), name
        assert any(w in faults[0].reason for w in (name, "tag", "crc")), faults[0].reason
        # reconnect with the same session: the message is replayed and arrives intact, once
        c2 = Connection(CLIENT, 1, client=True, session=sess, global_seq=2)
        s2 = Connection(SERVER, 2, client=False, registry=reg)
        got = received(handshake(c2, s2) + pump(c2, s2))
        assert [(m.front, m.middle, m.data_bytes()) for m in got] == [(front, middle, data)]


def test_bad_banner() -> None:
    s = Connection(SERVER, 2, client=False, registry=SessionRegistry())
    ev = s.feed(b"GET / HTTP/1.1\r\n")
    assert isinstance(ev[0], Fault) and "banner" in ev[0].reason


def test_lengths_checked_before_allocation() -> None:
    calls = []
    c, s = pair(alloc=lambda h: calls.append(h))
    s.limits = Limits(max_data=1 << 20)
    body = HEADER.pack(1, 1, 1, 0, 0, 0, 0, 60 << 20, 0, 1, 7)
    hdr = bytes([8]) + body + HEADER_CRC.pack(crc32c(body))
    tracemalloc.start()
    ev = s.feed(hdr + bytes(1000))
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(ev[0], Fault) and "data_len" in ev[0].reason
    assert not calls and peak < (1 << 20)


def test_eof_mid_message_and_replay_after_random_cuts() -> None:
    rnd = random.Random(5)
    reg, sess = SessionRegistry(), Session()
    c, s = pair(reg, sess)
    sent = [os.urandom(rnd.randint(0, 20000)) for _ in range(40)]
    for d in sent:
        c.send_message(Message(type=1, data=BioChain([d])))
    got: list[bytes] = []
    gseq = 1
    for _ in range(200):
        out = b"".join(c.data_to_send())
        if not out:
            break
        cut = rnd.randint(0, len(out))
        c.sent(cut)
        ev = s.feed(out[:cut]) + s.eof()
        got += [m.data_bytes() for m in received(ev)]
        pump(s, c)  # acks flow back on the next connection anyway
        gseq += 1
        c = Connection(CLIENT, 1, client=True, session=sess, global_seq=gseq)
        s = Connection(SERVER, 2, client=False, registry=reg)
        got += [m.data_bytes() for m in received(handshake(c, s))]
    got += [m.data_bytes() for m in received(pump(c, s))]
    assert got == sent
    pump(s, c)  # the final ack frees everything kept for replay
    assert not sess.sent and not sess.unsent


def test_server_restart_resets_session_and_client_restart_resets_peer() -> None:
    sess = Session()
    c, s = pair(SessionRegistry(), sess)
    c.send_message(Message(type=1, front=b"unacked"))
    c.data_to_send()
    # server restarted: empty registry; client reconnects with its old session
    c2 = Connection(CLIENT, 1, client=True, session=sess, global_seq=2)
    s2 = Connection(SERVER, 2, client=False, registry=SessionRegistry())
    ev = handshake(c2, s2)
    resets = [e for e in ev if isinstance(e, SessionReset)]
    assert resets and [m.front for m in resets[0].dropped] == [b"unacked"]
    assert any(isinstance(e, HandshakeDone) for e in ev)
    # client restarted: new session, new nonce, same name -> PeerReset on the server
    reg = SessionRegistry()
    pair(reg)
    c3 = Connection(CLIENT, 99, client=True, session=Session())
    s3 = Connection(SERVER, 2, client=False, registry=reg)
    assert any(isinstance(e, PeerReset) for e in handshake(c3, s3))


def test_received_data_lands_in_callers_buffer() -> None:
    dest = bytearray(10000)
    c, s = pair(alloc=lambda h: [memoryview(dest)])
    data = os.urandom(10000)
    c.send_message(Message(type=1, data=BioChain([data])))
    (m,) = received(pump(c, s, direct=True))
    assert bytes(dest) == data
    assert all(seg.obj is dest for seg in m.data.segments())


@given(st.binary(max_size=5000), st.integers(0, 5000))
def test_crc_fast_matches_reference(data: bytes, split: int) -> None:
    a, b = data[:split], data[split:]
    assert crc32c(b, crc32c(memoryview(a))) == crc32c_reference(data)
    assert crc32c_reference(b, crc32c_reference(a)) == crc32c(data)


def test_crc_check_value() -> None:
    assert crc32c(b"123456789") == crc32c_reference(b"123456789") == 0xE3069283


def test_pagelist_grows_page_by_page_and_biochain_does_not_copy() -> None:
    pl = Pagelist()
    pl.append(b"x")
    first = pl.pages[0]
    for _ in range(3000):
        pl.encode_u32(7)
    assert pl.pages[0] is first and len(pl.pages) == -(-pl.length // 4096)
    pl.release()
    assert pl.length == 0 and not pl.pages
    buf = bytearray(100)
    bc = BioChain.from_buffer(buf, 10, 50)
    buf[10] = 42
    assert bc.segments()[0][0] == 42 and bc.segments()[0].obj is buf
