"""Binary encoding of full maps and incrementals (sans-I/O: bytes in, values out).

Little-endian, versioned, compact: a 4-byte magic (``OMAP`` for a full map, ``OINC`` for an
incremental), a version byte, then the fields; dict entries sorted by key, so equal values
encode to equal bytes (the decoder wants that order, so each value has one encoding).
Strings are a u16 length and utf-8. Epochs and OSD ids are u32, pool ids u64, weights f64. A
version this code does not know is refused, not guessed at.

Decoding checks every length against what is left before reading and every value against
what a map may hold (the checks ``OSDMap.apply`` makes), so malformed input raises
``MapDecodeError`` (EBADMSG) and nothing else: truncated, bytes left over, keys out of order
or twice, a bool that is neither 0 nor 1, a weight that is not a finite number >= 0,
min_size > size. No checksum here: the messenger and the monitor's store frame these bytes
with theirs.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import TypeVar

from rbdpy.maps.errors import MapDecodeError, MapError
from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.osdmap import (
    OSDInfo,
    OSDMap,
    PoolInfo,
    check_epoch,
    check_osd,
    check_osd_id,
    check_pg_temp,
    check_pool,
)

MAP_MAGIC = b"OMAP"
INC_MAGIC = b"OINC"
VERSION = 1

_HEAD = struct.Struct("<4sB")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_MAPHEAD = struct.Struct("<II")  # epoch, max_osd
_OSD = struct.Struct("<HQBdIII")  # (after id and host) port, nonce, flags, weight, epochs
_POOL = struct.Struct("<HHI")  # (after id and name) size, min_size, pg_num
_TEMP = struct.Struct("<QIH")  # pool, pg, member count

_UP, _IN, _AUTO_OUT = 1, 2, 4

# OsdChange fields present in a change, in encoding order
_CH_FIELDS = ("addr", "nonce", "up", "in_", "auto_out", "weight", "up_thru")

T = TypeVar("T")


# -- encoding ---------------------------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return _U16.pack(len(b)) + b


def _osd(o: OSDInfo) -> bytes:
    flags = (_UP if o.up else 0) | (_IN if o.in_ else 0) | (_AUTO_OUT if o.auto_out else 0)
    return b"".join([_U32.pack(o.id), _str(o.host),
                     _OSD.pack(o.port, o.nonce, flags, o.weight, o.up_from, o.up_thru,
                               o.down_at)])


def _pool(p: PoolInfo) -> bytes:
    return b"".join([_U64.pack(p.id), _str(p.name), _POOL.pack(p.size, p.min_size, p.pg_num)])


def _temps(temps: dict) -> list[bytes]:
    out = [_U32.pack(len(temps))]
    for (pool, pg), members in sorted(temps.items()):
        out.append(_TEMP.pack(pool, pg, len(members)))
        out += [_U32.pack(o) for o in members]
    return out


def _ids(ids: tuple[int, ...]) -> list[bytes]:
    return [_U32.pack(len(ids)), *(_U32.pack(i) for i in ids)]


def _change(i: int, ch: OsdChange) -> bytes:
    mask = 0
    out = [b""]
    for bit, name in enumerate(_CH_FIELDS):
        v = getattr(ch, name)
        if v is None:
            continue
        mask |= 1 << bit
        if name == "addr":
            out += [_str(v[0]), _U16.pack(v[1])]
        elif name == "nonce":
            out.append(_U64.pack(v))
        elif name == "weight":
            out.append(_F64.pack(v))
        elif name == "up_thru":
            out.append(_U32.pack(v))
        else:
            out.append(_U8.pack(int(v)))
    out[0] = _U32.pack(i) + _U8.pack(mask)
    return b"".join(out)


def encode_map(m: OSDMap) -> bytes:
    try:
        parts = [_HEAD.pack(MAP_MAGIC, VERSION), _MAPHEAD.pack(m.epoch, m.max_osd),
                 _U32.pack(len(m.osds))]
        parts += [_osd(m.osds[i]) for i in sorted(m.osds)]
        parts.append(_U32.pack(len(m.pools)))
        parts += [_pool(m.pools[i]) for i in sorted(m.pools)]
        parts += _temps(m.pg_temp)
    except (struct.error, UnicodeEncodeError) as e:
        raise MapError(f"map of epoch {m.epoch} holds a value out of range: {e}") from None
    return b"".join(parts)


def encode_incremental(inc: Incremental) -> bytes:
    try:
        parts = [_HEAD.pack(INC_MAGIC, VERSION), _U32.pack(inc.epoch), *_ids(inc.new_osds),
                 _U32.pack(len(inc.osds))]
        parts += [_change(i, inc.osds[i]) for i in sorted(inc.osds)]
        parts += _ids(inc.removed_osds)
        parts.append(_U32.pack(len(inc.new_pools)))
        parts += [_pool(inc.new_pools[i]) for i in sorted(inc.new_pools)]
        parts += _temps(dict(inc.new_pg_temp))
    except (struct.error, UnicodeEncodeError, TypeError) as e:
        raise MapError(f"incremental {inc.epoch} holds a value out of range: {e}") from None
    return b"".join(parts)


# -- decoding ---------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from a buffer; every failure is a MapDecodeError."""

    def __init__(self, buf: bytes | bytearray | memoryview, what: str) -> None:
        self.buf = memoryview(buf).cast("B")
        self.pos = 0
        self.what = what

    def fail(self, msg: str) -> MapDecodeError:
        return MapDecodeError(f"{self.what}: {msg} (at byte {self.pos})")

    def fixed(self, s: struct.Struct) -> tuple:
        if self.pos + s.size > len(self.buf):
            raise self.fail("truncated")
        v = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def u8(self) -> int:
        return self.fixed(_U8)[0]

    def u32(self) -> int:
        return self.fixed(_U32)[0]

    def bool(self) -> bool:
        v = self.u8()
        if v > 1:
            raise self.fail(f"bool of value {v}")
        return bool(v)

    def str(self) -> str:
        (n,) = self.fixed(_U16)
        if self.pos + n > len(self.buf):
            raise self.fail("truncated string")
        try:
            s = str(self.buf[self.pos:self.pos + n], "utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not utf-8") from None
        self.pos += n
        return s

    def count(self, min_item: int) -> int:
        """An item count, refused at once when the bytes left cannot hold that many."""
        n = self.u32()
        if n * min_item > len(self.buf) - self.pos:
            raise self.fail(f"{n} items cannot fit in {len(self.buf) - self.pos} bytes")
        return n

    def items(self, min_item: int, read: Callable[[], tuple[object, T]], kind: str
              ) -> dict:
        """Entries in increasing key order (the one order the encoder writes, so each value
        has one encoding and a key cannot come twice)."""
        out: dict = {}
        last = None
        for _ in range(self.count(min_item)):
            key, value = read()
            if last is not None and key <= last:
                raise self.fail(f"{kind} {key} after {last}: keys out of order or twice")
            out[key] = value
            last = key
        return out

    def ids(self) -> tuple[int, ...]:
        ids = tuple(self.u32() for _ in range(self.count(_U32.size)))
        if len(set(ids)) != len(ids):
            raise self.fail("an OSD id listed twice")
        return ids

    def head(self, magic: bytes) -> None:
        got, version = self.fixed(_HEAD)
        if got != magic:
            raise self.fail(f"magic {bytes(got)!r}, want {magic!r}")
        if version != VERSION:
            raise self.fail(f"encoding version {version} is not understood (want {VERSION})")

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} bytes left over")

    def osd(self) -> tuple[int, OSDInfo]:
        i = self.u32()
        host = self.str()
        port, nonce, flags, weight, up_from, up_thru, down_at = self.fixed(_OSD)
        if flags & ~(_UP | _IN | _AUTO_OUT):
            raise self.fail(f"osd.{i}: unknown flags {flags:#x}")
        o = OSDInfo(i, host, port, bool(flags & _UP), bool(flags & _IN), weight, nonce,
                    up_from, up_thru, down_at, bool(flags & _AUTO_OUT))
        self.check(check_osd, o)
        if o.up and not (host and port):
            raise self.fail(f"osd.{i} is up without an address")
        return i, o

    def pool(self) -> tuple[int, PoolInfo]:
        pid = self.fixed(_U64)[0]
        name = self.str()
        size, min_size, pg_num = self.fixed(_POOL)
        if min_size == 0:
            raise self.fail(f"pool {pid}: min_size 0")
        p = PoolInfo(pid, name, size, min_size, pg_num)
        self.check(check_pool, p)
        return pid, p

    def temp(self) -> tuple[tuple[int, int], tuple[int, ...]]:
        pool, pg, n = self.fixed(_TEMP)
        if n * _U32.size > len(self.buf) - self.pos:
            raise self.fail("truncated pg_temp")
        return (pool, pg), tuple(self.u32() for _ in range(n))

    def change(self) -> tuple[int, OsdChange]:
        i = self.u32()
        mask = self.u8()
        if mask >> len(_CH_FIELDS):
            raise self.fail(f"osd.{i}: unknown change fields {mask:#x}")
        vals: dict[str, object] = {}
        for bit, name in enumerate(_CH_FIELDS):
            if not mask & (1 << bit):
                continue
            if name == "addr":
                vals[name] = (self.str(), self.fixed(_U16)[0])
            elif name == "nonce":
                vals[name] = self.fixed(_U64)[0]
            elif name == "weight":
                w = self.fixed(_F64)[0]
                if not (math.isfinite(w) and 0 <= w < 2**32):
                    raise self.fail(f"osd.{i}: weight {w}")
                vals[name] = w
            elif name == "up_thru":
                vals[name] = self.u32()
            else:
                vals[name] = self.bool()
        return i, OsdChange(**vals)  # type: ignore[arg-type]

    def check(self, check: Callable[[T], None], value: T) -> None:
        try:
            check(value)
        except MapError as e:
            raise self.fail(str(e)) from None


def decode_map(buf: bytes | bytearray | memoryview) -> OSDMap:
    r = _Reader(buf, "osdmap")
    r.head(MAP_MAGIC)
    epoch, max_osd = r.fixed(_MAPHEAD)
    r.check(check_epoch, epoch)
    osds = r.items(4 + 2 + _OSD.size, r.osd, "osd")
    pools = r.items(8 + 2 + _POOL.size, r.pool, "pool")
    temps = r.items(_TEMP.size, r.temp, "pg_temp")
    for key, members in temps.items():
        try:
            check_pg_temp(key, members, pools)
        except MapError as e:
            raise r.fail(str(e)) from None
        if not members:
            raise r.fail(f"pg_temp {key} empty")
    r.end()
    return OSDMap(epoch, osds, pools, temps, max_osd)


def decode_incremental(buf: bytes | bytearray | memoryview) -> Incremental:
    r = _Reader(buf, "incremental")
    r.head(INC_MAGIC)
    epoch = r.u32()
    r.check(check_epoch, epoch)
    new_osds = r.ids()
    for i in new_osds:
        r.check(check_osd_id, i)
    changes = r.items(4 + 1, r.change, "osd change")
    for i in changes:
        r.check(check_osd_id, i)
    removed = r.ids()
    for i in removed:
        r.check(check_osd_id, i)
    pools = r.items(8 + 2 + _POOL.size, r.pool, "pool")
    temps = r.items(_TEMP.size, r.temp, "pg_temp")
    for key, members in temps.items():
        if len(set(members)) != len(members):
            raise r.fail(f"pg_temp {key}: an OSD listed twice")
    r.end()
    return Incremental(epoch, new_osds, changes, removed, pools, temps)
