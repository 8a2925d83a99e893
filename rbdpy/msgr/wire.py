"""The messenger's wire vocabulary: banner, handshake records, frame tags, limits, and the
pure checks a received message passes before it is delivered.

Shared by the Connection (which sends and parses them) and the handshake rules in
``session.py``; nothing here holds state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rbdpy.crc import crc32c
from rbdpy.msgr.message import FOOTER, FOOTER_NOCRC, MsgHeader

BANNER = b"rbdpy\x00v1"
PROTOCOL_FEATURES = 0x1
FEATURE_NOCRC = 0x2  # "my footers carry no crcs": said once, in the handshake

# connect reply tags (the acceptor's verdict on a connect)
TAG_READY = 1
TAG_RESETSESSION = 2
TAG_RETRY_SESSION = 3
TAG_RETRY_GLOBAL = 4
TAG_WAIT = 5
TAG_BADAUTH = 6
# frame tags (once the session is open)
TAG_CLOSE = 7
TAG_MSG = 8
TAG_ACK = 9
TAG_KEEPALIVE = 10
TAG_KEEPALIVE_ACK = 11

# features, entity type, entity num, nonce, global_seq, connect_seq, in_seq, flags, auth_len
CONNECT = struct.Struct("<QBQQIIQBI")
# tag, then the same fields as CONNECT
CONNECT_REPLY = struct.Struct("<BQBQQIIQBI")
CONNECT_FLAG_LOSSY = 1
U64 = struct.Struct("<Q")
TAG_U64 = struct.Struct("<BQ")  # ACK, KEEPALIVE, KEEPALIVE_ACK: a tag and one u64

# front_len, middle_len, data_len inside the header (after seq, tid, type, priority, version):
# read before the header is decoded, to see whether a whole message is in the buffer
HEADER_LENGTHS = struct.Struct("<III")
LENGTHS_AT = struct.calcsize("<QQHHH")


@dataclass(frozen=True)
class Limits:
    """Maxima checked against the header before anything is allocated."""

    max_front: int = 16 << 20
    max_middle: int = 16 << 20
    max_data: int = 64 << 20
    max_auth: int = 4096


class ProtocolError(Exception):
    """A peer broke the protocol; the connection faults with this reason."""


def check_footer(h: MsgHeader, buf: memoryview, front: bytes, middle: bytes,
                 data_crc_seen: int, crc: bool, peer_nocrc: bool) -> None:
    """A message's footer against its sections (``crc``: we check crcs; ``peer_nocrc``: the
    peer said in the handshake that its footers carry none)."""
    front_crc, middle_crc, data_crc, flags = FOOTER.unpack(buf)
    if flags & FOOTER_NOCRC and not peer_nocrc:
        # the flags byte has no crc of its own: a flip that set NOCRC would otherwise
        # switch the checks off for exactly the message it damaged
        raise ProtocolError(f"footer without crcs from a peer that sends them (seq {h.seq})")
    if crc and not flags & FOOTER_NOCRC:
        if crc32c(front) != front_crc:
            raise ProtocolError(f"bad front crc (seq {h.seq})")
        # (the crc of nothing is 0: an empty middle, the usual one, costs no call)
        if (crc32c(middle) if middle else 0) != middle_crc:
            raise ProtocolError(f"bad middle crc (seq {h.seq})")
        if data_crc_seen != data_crc:
            raise ProtocolError(f"bad data crc (seq {h.seq})")
