"""Decoding maps and incrementals (rbdpy.maps.encoding) never fails with anything but
MapDecodeError (EBADMSG): random bytes, every truncation, bit flips and hand-made malformed
encodings. Round trips of valid values are in test_incremental.py."""

from __future__ import annotations

import errno
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.errors import RbdpyError
from rbdpy.maps.encoding import (
    decode_incremental,
    decode_map,
    encode_incremental,
    encode_map,
)
from rbdpy.maps.errors import MapDecodeError
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from tests.maps.gen import gen_history

DECODERS = (decode_map, decode_incremental)


def decodes_or_refuses(buf: bytes) -> None:
    for decode in DECODERS:
        try:
            value = decode(buf)
        except MapDecodeError as e:
            assert e.errno == errno.EBADMSG and isinstance(e, RbdpyError)
        else:  # whatever decodes is canonical: it encodes back to the same bytes
            enc = encode_map if decode is decode_map else encode_incremental
            assert enc(value) == buf  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(buf: bytes) -> None:
    decodes_or_refuses(buf)
    decodes_or_refuses(b"OMAP\x01" + buf)
    decodes_or_refuses(b"OINC\x01" + buf)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 12), st.data())
def test_truncations_and_bit_flips_of_valid_encodings(rnd: random.Random, n: int,
                                                      data: st.DataObject) -> None:
    maps, incs = gen_history(rnd, n)
    for buf in (encode_map(maps[-1]), encode_incremental(incs[-1])):
        for cut in range(len(buf)):
            with pytest.raises(MapDecodeError):
                (decode_map if buf[:4] == b"OMAP" else decode_incremental)(buf[:cut])
        flips = data.draw(st.lists(st.integers(0, len(buf) * 8 - 1), min_size=1, max_size=3))
        b = bytearray(buf)
        for bit in flips:
            b[bit // 8] ^= 1 << (bit % 8)
        decodes_or_refuses(bytes(b))
        decodes_or_refuses(buf + b"\x00")


def one_osd_map() -> bytes:
    return encode_map(OSDMap(epoch=3, osds={0: OSDInfo(0, "h", 7)},
                             pools={1: PoolInfo(1, "rbd", size=2)}))


OSD_AT = 4 + 1 + 8 + 4  # head, epoch + max_osd, osd count
OSD_FIXED = OSD_AT + 4 + 2 + 1  # id, host length, "h"


def patched(at: int, fmt: str, value: object) -> bytes:
    b = bytearray(one_osd_map())
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


@pytest.mark.parametrize(("buf", "words"), [
    (b"", "truncated"),
    (b"OINC\x01", "magic"),
    (b"OMAP\x02" + one_osd_map()[5:], "version 2 is not understood"),
    (one_osd_map() + b"\x00", "1 bytes left over"),
    (patched(4 + 1, "<I", 0), "epoch 0 out of range"),
    (patched(OSD_AT - 4, "<I", 10**6), "items cannot fit"),
    (patched(OSD_FIXED + 2 + 8, "<B", 8), "unknown flags"),
    (patched(OSD_FIXED + 2 + 8 + 1, "<d", float("nan")), "finite number"),
    (patched(OSD_FIXED + 2 + 8 + 1, "<d", -2.0), "finite number"),
    (patched(OSD_FIXED, "<H", 0), "up without an address"),
    (patched(OSD_AT + 4, "<H", 200), "truncated string"),
    (patched(OSD_AT + 6, "<B", 0xFF), "not utf-8"),
    (one_osd_map()[:-8 - 4] + struct.pack("<HHI", 2, 3, 64) + b"\0\0\0\0",
     "min_size 3 not in 1..size"),
    (one_osd_map()[:-8 - 4] + struct.pack("<HHI", 2, 0, 64) + b"\0\0\0\0", "min_size 0"),
])
def test_malformed_maps_say_what_is_wrong(buf: bytes, words: str) -> None:
    with pytest.raises(MapDecodeError) as ei:
        decode_map(buf)
    assert ei.value.errno == errno.EBADMSG and words in str(ei.value), str(ei.value)


def test_duplicate_keys_are_refused() -> None:
    b = one_osd_map()
    osd = b[OSD_AT:OSD_AT + 4 + 2 + 1 + 2 + 8 + 1 + 8 + 12]
    two = b[:OSD_AT - 4] + struct.pack("<I", 2) + osd + osd + b[OSD_AT + len(osd):]
    with pytest.raises(MapDecodeError, match="osd 0 after 0: keys out of order or twice"):
        decode_map(two)


def one_change() -> bytes:
    from rbdpy.maps.incremental import Incremental, OsdChange

    return encode_incremental(Incremental(2, osds={0: OsdChange(up=True)}))


CHANGE_AT = 4 + 1 + 4 + 4 + 4  # head, epoch, no new OSDs, one change


def patched_inc(at: int, fmt: str, value: object) -> bytes:
    b = bytearray(one_change())
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


@pytest.mark.parametrize(("buf", "words"), [
    (patched_inc(CHANGE_AT + 4 + 1, "<B", 2), "bool of value 2"),
    (patched_inc(CHANGE_AT + 4, "<B", 0x80), "unknown change fields"),
    (patched_inc(CHANGE_AT + 4, "<B", 0x24), "truncated"),  # weight, up_thru: no bytes
    (one_change()[:9] + struct.pack("<III", 2, 5, 5) + one_change()[13:], "listed twice"),
    (one_change()[:9] + struct.pack("<II", 1, 2**32 - 1) + one_change()[13:], "out of range"),
])
def test_malformed_incrementals_say_what_is_wrong(buf: bytes, words: str) -> None:
    with pytest.raises(MapDecodeError) as ei:
        decode_incremental(buf)
    assert ei.value.errno == errno.EBADMSG and words in str(ei.value), str(ei.value)
