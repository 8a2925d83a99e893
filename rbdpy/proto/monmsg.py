"""Monitor messages: what OSDs, clients and admins send the monitor, and what it answers.

Pure (sans-I/O) encode/decode between these dataclasses and messenger ``Message``s; every
body sits in the front section. Decoding checks every length against the bytes present
before slicing, and anything malformed raises ``MonMsgDecodeError`` (EBADMSG), never
IndexError or struct.error. Maps travel in rbdpy.maps.encoding's format.

Message types take Ceph's numbers for the same messages, none of which rbdpy used before
(MSG_OSD_OP 42 and MSG_OSD_OPREPLY 43 are the others):

=====================  ===  ==========================================================
MSG_MON_SUBSCRIBE       15  subscriber -> mon: I hold epoch N, send what is newer
MSG_OSD_MAP             41  mon -> subscriber: a full map and/or incrementals
MSG_MON_COMMAND         50  admin -> mon: a JSON command, ``{"prefix": "osd out", "id": 3}``
MSG_MON_COMMAND_ACK     51  mon -> admin: errno, epoch, text (same tid as the command)
MSG_OSD_BOOT            71  OSD -> mon: I run at host:port as instance ``nonce``
MSG_OSD_FAILURE         72  OSD -> mon: I cannot reach that OSD
MSG_OSD_ALIVE           73  OSD -> mon: record my up_thru (Ceph's MOSDAlive)
MSG_OSD_BEACON          79  OSD -> mon: I am alive
=====================  ===  ==========================================================
"""

from __future__ import annotations

import errno
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from rbdpy.errors import RbdpyError
from rbdpy.maps.encoding import (
    decode_incremental,
    decode_map,
    encode_incremental,
    encode_map,
)
from rbdpy.maps.errors import MapDecodeError
from rbdpy.maps.incremental import Incremental
from rbdpy.maps.osdmap import OSDMap
from rbdpy.msgr.message import Message

MSG_MON_SUBSCRIBE = 15
MSG_OSD_MAP = 41
MSG_MON_COMMAND = 50
MSG_MON_COMMAND_ACK = 51
MSG_OSD_BOOT = 71
MSG_OSD_FAILURE = 72
MSG_OSD_ALIVE = 73
MSG_OSD_BEACON = 79

MAX_HOST = 255  # bytes of a boot address' host
MAX_TEXT = 1 << 20  # bytes of a command or a reply's text
MAX_MAP_PARTS = 100_000  # incrementals in one map message

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_BOOT = struct.Struct("<IHQ")  # osd, port, nonce (then the host)
_FAILURE = struct.Struct("<IIIdB")  # reporter, target, epoch, failed_for, immediate
_BEACON = struct.Struct("<I")
_SUBSCRIBE = struct.Struct("<IB")  # have, onetime
_ALIVE = struct.Struct("<II")  # osd, want
_ACK = struct.Struct("<iIq")  # errno, epoch, result (-1: none)


class MonMsgDecodeError(RbdpyError):
    """Bytes that are not the monitor message their type says (EBADMSG)."""

    def __init__(self, msg: str, err: int = errno.EBADMSG) -> None:
        super().__init__(err, msg)


@dataclass(frozen=True)
class Boot:
    osd: int
    host: str
    port: int
    nonce: int


@dataclass(frozen=True)
class Failure:
    """``immediate``: connection refused or reset; else heartbeats missing ``failed_for`` s.
    ``epoch`` is the reporter's map."""

    reporter: int
    target: int
    epoch: int
    failed_for: float = 0.0
    immediate: bool = False


@dataclass(frozen=True)
class Beacon:
    osd: int


@dataclass(frozen=True)
class Subscribe:
    """The sender holds epoch ``have`` (0: none); ``onetime``: only what is newer now."""

    have: int
    onetime: bool = False


@dataclass(frozen=True)
class Alive:
    """Up_thru request: record the OSD alive through at least epoch ``want``."""

    osd: int
    want: int


@dataclass(frozen=True)
class MapUpdate:
    """``full`` (when the receiver is too far behind) and/or ``incrementals``, oldest first."""

    full: OSDMap | None = None
    incrementals: tuple[Incremental, ...] = field(default=())


@dataclass(frozen=True)
class Command:
    """An admin command as Ceph's mon commands are: a JSON object with a ``prefix``."""

    cmd: dict[str, Any]


@dataclass(frozen=True)
class CommandReply:
    """``err`` 0 or an errno; ``epoch``: the map holding the change; ``result``: a new id."""

    err: int
    text: str
    epoch: int = 0
    result: int | None = None


MonMsg = Boot | Failure | Beacon | Subscribe | Alive | MapUpdate | Command | CommandReply


def _str(s: str, limit: int, what: str) -> bytes:
    b = s.encode()
    if len(b) > limit:
        raise ValueError(f"{what}: {len(b)} bytes, at most {limit}")
    return _U32.pack(len(b)) + b


def encode(m: MonMsg, tid: int = 0) -> Message:
    """The Message carrying ``m`` (``tid`` pairs a command with its reply)."""
    if isinstance(m, Boot):
        return Message(type=MSG_OSD_BOOT, tid=tid, front=_BOOT.pack(m.osd, m.port, m.nonce)
                       + _str(m.host, MAX_HOST, "host"))
    if isinstance(m, Failure):
        return Message(type=MSG_OSD_FAILURE, tid=tid, front=_FAILURE.pack(
            m.reporter, m.target, m.epoch, m.failed_for, m.immediate))
    if isinstance(m, Beacon):
        return Message(type=MSG_OSD_BEACON, tid=tid, front=_BEACON.pack(m.osd))
    if isinstance(m, Subscribe):
        return Message(type=MSG_MON_SUBSCRIBE, tid=tid, front=_SUBSCRIBE.pack(m.have, m.onetime))
    if isinstance(m, Alive):
        return Message(type=MSG_OSD_ALIVE, tid=tid, front=_ALIVE.pack(m.osd, m.want))
    if isinstance(m, MapUpdate):
        parts = [_U8.pack(m.full is not None)]
        if m.full is not None:
            full = encode_map(m.full)
            parts += [_U32.pack(len(full)), full]
        parts.append(_U32.pack(len(m.incrementals)))
        for inc in m.incrementals:
            b = encode_incremental(inc)
            parts += [_U32.pack(len(b)), b]
        return Message(type=MSG_OSD_MAP, tid=tid, front=b"".join(parts))
    if isinstance(m, Command):
        return Message(type=MSG_MON_COMMAND, tid=tid,
                       front=_str(json.dumps(m.cmd, sort_keys=True), MAX_TEXT, "command"))
    if isinstance(m, CommandReply):
        result = -1 if m.result is None else m.result
        return Message(type=MSG_MON_COMMAND_ACK, tid=tid,
                       front=_ACK.pack(m.err, m.epoch, result) + _str(m.text, MAX_TEXT, "text"))
    raise TypeError(f"not a monitor message: {m!r}")


class _Reader:
    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def fail(self, msg: str) -> MonMsgDecodeError:
        return MonMsgDecodeError(f"{self.what}: {msg}")

    def fixed(self, s: struct.Struct) -> tuple:
        if self.pos + s.size > len(self.buf):
            raise self.fail(f"truncated at byte {self.pos}")
        v = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def blob(self, limit: int) -> memoryview:
        (n,) = self.fixed(_U32)
        if n > limit or self.pos + n > len(self.buf):
            raise self.fail(f"a {n}-byte field overruns the message")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def str(self, limit: int) -> str:
        try:
            return str(self.blob(limit), "utf-8")
        except UnicodeDecodeError:
            raise self.fail("text is not utf-8") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} bytes left over")


def decode(msg: Message) -> MonMsg:
    """The monitor message ``msg`` carries; MonMsgDecodeError if malformed or not one."""
    kind = _DECODERS.get(msg.type)
    if kind is None:
        raise MonMsgDecodeError(f"message type {msg.type} is not a monitor message")
    what, fn = kind
    r = _Reader(memoryview(bytes(msg.front)), what)
    out = fn(r)
    r.end()
    return out


def _boot(r: _Reader) -> Boot:
    osd, port, nonce = r.fixed(_BOOT)
    return Boot(osd, r.str(MAX_HOST), port, nonce)


def _failure(r: _Reader) -> Failure:
    reporter, target, epoch, failed_for, immediate = r.fixed(_FAILURE)
    if immediate > 1 or not (math.isfinite(failed_for) and failed_for >= 0):
        raise r.fail(f"immediate {immediate}, failed_for {failed_for}")
    return Failure(reporter, target, epoch, failed_for, bool(immediate))


def _subscribe(r: _Reader) -> Subscribe:
    have, onetime = r.fixed(_SUBSCRIBE)
    if onetime > 1:
        raise r.fail(f"onetime flag {onetime}")
    return Subscribe(have, bool(onetime))


def _map(r: _Reader) -> MapUpdate:
    (has_full,) = r.fixed(_U8)
    if has_full > 1:
        raise r.fail(f"full-map flag {has_full}")
    try:
        full = decode_map(r.blob(len(r.buf))) if has_full else None
        (n,) = r.fixed(_U32)
        if n > MAX_MAP_PARTS or n * 4 > len(r.buf) - r.pos:
            raise r.fail(f"{n} incrementals")
        incs = tuple(decode_incremental(r.blob(len(r.buf))) for _ in range(n))
    except MapDecodeError as e:
        raise r.fail(str(e)) from None
    return MapUpdate(full, incs)


def _command(r: _Reader) -> Command:
    text = r.str(MAX_TEXT)
    try:
        cmd = json.loads(text)
    except ValueError:
        raise r.fail("not JSON") from None
    if not isinstance(cmd, dict) or not isinstance(cmd.get("prefix"), str):
        raise r.fail("want a JSON object with a string 'prefix'")
    return Command(cmd)


def _ack(r: _Reader) -> CommandReply:
    err, epoch, result = r.fixed(_ACK)
    if err < 0:
        raise r.fail(f"errno {err}")
    return CommandReply(err, r.str(MAX_TEXT), epoch, None if result == -1 else result)


_DECODERS = {
    MSG_OSD_BOOT: ("osd boot", _boot),
    MSG_OSD_FAILURE: ("osd failure", _failure),
    MSG_OSD_BEACON: ("osd beacon", lambda r: Beacon(*r.fixed(_BEACON))),
    MSG_MON_SUBSCRIBE: ("mon subscribe", _subscribe),
    MSG_OSD_ALIVE: ("osd alive", lambda r: Alive(*r.fixed(_ALIVE))),
    MSG_OSD_MAP: ("osd map", _map),
    MSG_MON_COMMAND: ("mon command", _command),
    MSG_MON_COMMAND_ACK: ("mon command ack", _ack),
}
