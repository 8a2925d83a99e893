"""rbdpy/msgr/message.py: entity names, the crc-protected header, the footer, data sections.

The Connection tests (test_connection.py) check how a receiver acts on these on the wire:
corruption, limits, the footer's NOCRC flag. Here the encoders themselves are checked.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.crc import crc32c, crc32c_segments
from rbdpy.msgr.message import (
    ENTITY_CLIENT,
    ENTITY_MON,
    ENTITY_OSD,
    FOOTER,
    FOOTER_COMPLETE,
    FOOTER_LEN,
    FOOTER_NOCRC,
    HEADER_LEN,
    EntityName,
    Message,
    MsgHeader,
    decode_header,
    encode_footer,
    encode_header,
)
from rbdpy.msgr.payload import PAGE_SIZE, BioChain, Pagelist, Pages


@pytest.mark.parametrize("text, name", [
    ("client.4123", EntityName(ENTITY_CLIENT, 4123)),
    ("osd.0", EntityName(ENTITY_OSD, 0)),
    ("mon.2", EntityName(ENTITY_MON, 2)),
])
def test_entity_name_str_and_parse(text: str, name: EntityName) -> None:
    assert str(name) == text
    assert EntityName.parse(text) == name


@pytest.mark.parametrize("bad", ["", "osd", "osd.", "osd.-1", "osd.x", "mds.0", "0.osd"])
def test_entity_name_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        EntityName.parse(bad)


def test_unknown_entity_type_prints_its_number() -> None:
    assert str(EntityName(9, 3)) == "9.3"


u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, 2**64 - 1)


@settings(max_examples=100, deadline=None)
@given(seq=u64, tid=u64, type_=u16, priority=u16, version=u16, data_off=u16,
       front=st.binary(max_size=200), middle=st.binary(max_size=50),
       data=st.binary(max_size=5000), trail=st.binary(max_size=300),
       src=st.tuples(st.integers(0, 255), u64), pad=st.integers(0, 7))
def test_header_round_trip_at_any_offset(seq: int, tid: int, type_: int, priority: int,
                                         version: int, data_off: int, front: bytes,
                                         middle: bytes, data: bytes, trail: bytes,
                                         src: tuple[int, int], pad: int) -> None:
    pl = Pagelist()
    pl.append(trail)
    m = Message(type=type_, front=front, middle=middle, data=BioChain([data]) if data else None,
                trail=pl if trail else None, tid=tid, priority=priority, version=version,
                data_off=data_off, seq=seq)
    wire = encode_header(m, EntityName(*src))
    assert len(wire) == HEADER_LEN
    h = decode_header(b"\xee" * pad + wire, pad)
    assert h == MsgHeader(seq, tid, type_, priority, version, len(front), len(middle),
                          len(data) + len(trail), data_off, EntityName(*src))


def test_header_crc_catches_every_flipped_bit() -> None:
    m = Message(type=7, front=b"f" * 10, data=BioChain([bytes(100)]), tid=5, seq=3)
    wire = encode_header(m, EntityName(ENTITY_CLIENT, 1))
    decode_header(wire)
    for bit in range(len(wire) * 8):
        bad = bytearray(wire)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="bad header crc"):
            decode_header(bytes(bad))


def test_footer_carries_the_crc_of_each_section_over_all_payload_segments() -> None:
    pages = Pages.alloc(2 * PAGE_SIZE + 10, offset=100)
    for i, seg in enumerate(pages.segments()):
        seg[:] = bytes([i + 1]) * len(seg)
    trail = Pagelist()
    trail.encode_str("trail")
    m = Message(type=1, front=b"front", middle=b"mid", data=pages, trail=trail)
    assert m.data_len == pages.length + trail.length
    assert len(m.data_segments()) == len(pages.segments()) + len(trail.segments())
    assert m.data_bytes() == pages.tobytes() + trail.tobytes()
    foot = encode_footer(m)
    assert len(foot) == FOOTER_LEN
    assert FOOTER.unpack(foot) == (crc32c(b"front"), crc32c(b"mid"),
                                   crc32c(m.data_bytes()), FOOTER_COMPLETE)
    assert FOOTER.unpack(foot)[2] == crc32c_segments(m.data_segments())
    # without crcs: zeros and the NOCRC flag
    assert FOOTER.unpack(encode_footer(m, with_crc=False)) == (
        0, 0, 0, FOOTER_COMPLETE | FOOTER_NOCRC)


def test_message_without_data() -> None:
    m = Message(type=2)
    assert m.data_len == 0 and m.data_segments() == [] and m.data_bytes() == b""
    assert FOOTER.unpack(encode_footer(m)) == (0, 0, 0, FOOTER_COMPLETE)
    only_trail = Pagelist()
    only_trail.append(b"t")
    m.trail = only_trail
    assert m.data_len == 1 and m.data_bytes() == b"t"
