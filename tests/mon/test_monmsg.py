"""Monitor messages (rbdpy.proto.monmsg): every kind round-trips, and any bytes either decode
to something that encodes back to them or raise MonMsgDecodeError (EBADMSG)."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.msgr.message import Message
from rbdpy.proto import monmsg
from rbdpy.proto.monmsg import MonMsgDecodeError
from tests.maps.gen import gen_history

u32 = st.integers(0, 2**32 - 1)
text = st.text(max_size=40)
json_val = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | text,
                        lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(text, c, max_size=3), max_leaves=8)

simple = st.one_of(
    st.builds(monmsg.Boot, u32, text, st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1)),
    st.builds(monmsg.Failure, u32, u32, u32,
              st.floats(0, 1e9, allow_nan=False, allow_infinity=False), st.booleans()),
    st.builds(monmsg.Beacon, u32),
    st.builds(monmsg.Subscribe, u32, st.booleans()),
    st.builds(monmsg.Alive, u32, u32),
    st.builds(lambda p, rest: monmsg.Command({"prefix": p, **rest}), text,
              st.dictionaries(text.filter(lambda k: k != "prefix"), json_val, max_size=3)),
    st.builds(monmsg.CommandReply, st.integers(0, 2**31 - 1), text, u32,
              st.none() | st.integers(0, 2**63 - 1)),
)


def wire(m: Message) -> Message:
    """As the receiver sees it: a fresh Message with the same type and front bytes."""
    return Message(type=m.type, tid=m.tid, front=bytes(m.front))


@settings(max_examples=300, deadline=None)
@given(simple, st.integers(0, 2**64 - 1))
def test_round_trip(m: monmsg.MonMsg, tid: int) -> None:
    msg = monmsg.encode(m, tid)
    assert msg.tid == tid
    assert monmsg.decode(wire(msg)) == m


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(0, 8), st.booleans())
def test_map_round_trip(rnd: random.Random, n: int, with_full: bool) -> None:
    maps, incs = gen_history(rnd, n)
    m = monmsg.MapUpdate(maps[-1] if with_full else None, tuple(incs))
    assert monmsg.decode(wire(monmsg.encode(m))) == m


def decodes_or_refuses(mtype: int, buf: bytes) -> None:
    try:
        out = monmsg.decode(Message(type=mtype, front=buf))
    except MonMsgDecodeError as e:
        assert e.errno == errno.EBADMSG
        return
    if mtype != monmsg.MSG_MON_COMMAND:  # JSON has more than one spelling of a value
        assert bytes(monmsg.encode(out).front) == buf


TYPES = [monmsg.MSG_OSD_BOOT, monmsg.MSG_OSD_FAILURE, monmsg.MSG_OSD_BEACON,
         monmsg.MSG_MON_SUBSCRIBE, monmsg.MSG_OSD_ALIVE, monmsg.MSG_OSD_MAP,
         monmsg.MSG_MON_COMMAND, monmsg.MSG_MON_COMMAND_ACK]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(TYPES), st.binary(max_size=120))
def test_random_bytes(mtype: int, buf: bytes) -> None:
    decodes_or_refuses(mtype, buf)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(simple, st.builds(lambda r: monmsg.MapUpdate(
    gen_history(r, 3)[0][-1], tuple(gen_history(r, 2)[1])), st.randoms(use_true_random=False))),
    st.data())
def test_truncations_and_bit_flips(m: monmsg.MonMsg, data: st.DataObject) -> None:
    msg = monmsg.encode(m)
    buf = bytes(msg.front)
    cut = data.draw(st.integers(0, max(0, len(buf) - 1)))
    decodes_or_refuses(msg.type, buf[:cut])
    if buf:
        at = data.draw(st.integers(0, len(buf) - 1))
        flipped = bytearray(buf)
        flipped[at] ^= 1 << data.draw(st.integers(0, 7))
        decodes_or_refuses(msg.type, bytes(flipped))


@pytest.mark.parametrize("mtype, buf, words", [
    (99, b"", "not a monitor message"),
    (monmsg.MSG_OSD_BEACON, b"\0\0\0", "truncated"),
    (monmsg.MSG_OSD_BEACON, b"\0\0\0\0\0", "left over"),
    (monmsg.MSG_MON_COMMAND, b"\x02\0\0\0[]", "prefix"),
    (monmsg.MSG_MON_COMMAND, b"\x01\0\0\0{", "not JSON"),
    (monmsg.MSG_OSD_BOOT, b"\0" * 14 + b"\xff\0\0\0", "overruns"),
])
def test_malformed_says_what(mtype: int, buf: bytes, words: str) -> None:
    with pytest.raises(MonMsgDecodeError, match=words):
        monmsg.decode(Message(type=mtype, front=buf))
