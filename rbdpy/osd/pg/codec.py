"""Little-endian building blocks for the PG encodings (log, missing set, info): a writer, and
a reader that checks every length before it reads, so that malformed bytes raise
PGDecodeError and nothing else."""

from __future__ import annotations

import errno
import struct

from rbdpy.osd.pg.errors import PGDecodeError
from rbdpy.proto.ops import MAX_OID

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_VERSION = struct.Struct("<IQ")  # epoch, counter
_REQID = struct.Struct("<BQQQ")  # entity type, entity num, incarnation, tid


class Writer:
    """Appends encoded fields to one bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf += _U8.pack(v)

    def u32(self, v: int) -> None:
        self.buf += _U32.pack(v)

    def u64(self, v: int) -> None:
        self.buf += _U64.pack(v)

    def i64(self, v: int) -> None:
        self.buf += _I64.pack(v)

    def version(self, v: tuple[int, int]) -> None:
        self.buf += _VERSION.pack(*v)

    def reqid(self, r: tuple[int, int, int, int]) -> None:
        self.buf += _REQID.pack(*r)

    def oid(self, s: str) -> None:
        b = s.encode()
        self.buf += _U16.pack(len(b))
        self.buf += b

    def opt_str(self, s: str | None) -> None:
        """A string that may be absent (u8 flag, then u16 length and utf-8)."""
        if s is None:
            self.u8(0)
        else:
            self.u8(1)
            self.oid(s)

    def bytes(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Reads fields off a buffer; a short buffer or a bad value is a PGDecodeError."""

    __slots__ = ("_mv", "_pos", "what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        self._mv = memoryview(data).cast("B")
        self._pos = 0
        self.what = what

    def _take(self, s: struct.Struct) -> tuple:
        end = self._pos + s.size
        if end > len(self._mv):
            raise PGDecodeError(f"{self.what}: truncated at byte {self._pos}")
        v = s.unpack_from(self._mv, self._pos)
        self._pos = end
        return v

    def u8(self) -> int:
        return self._take(_U8)[0]

    def u32(self) -> int:
        return self._take(_U32)[0]

    def u64(self) -> int:
        return self._take(_U64)[0]

    def i64(self) -> int:
        return self._take(_I64)[0]

    def version(self) -> tuple[int, int]:
        return self._take(_VERSION)

    def reqid(self) -> tuple[int, int, int, int]:
        return self._take(_REQID)

    def oid(self, allow_empty: bool = False) -> str:
        (n,) = self._take(_U16)
        if (n == 0 and not allow_empty) or n > MAX_OID:
            raise PGDecodeError(f"{self.what}: object name of {n} bytes", errno.EINVAL)
        end = self._pos + n
        if end > len(self._mv):
            raise PGDecodeError(f"{self.what}: truncated object name")
        raw = bytes(self._mv[self._pos:end])
        self._pos = end
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise PGDecodeError(f"{self.what}: object name is not utf-8", errno.EINVAL) from None

    def opt_str(self) -> str | None:
        """A string that may be absent; present, it may be empty."""
        flag = self.u8()
        if flag == 0:
            return None
        if flag != 1:
            raise PGDecodeError(f"{self.what}: bad presence flag {flag}", errno.EINVAL)
        return self.oid(allow_empty=True)

    def count(self, min_item: int) -> int:
        """A u32 item count, checked against the bytes left (each item takes ``min_item``)."""
        n = self.u32()
        if n * min_item > len(self._mv) - self._pos:
            raise PGDecodeError(f"{self.what}: {n} items cannot fit in what is left")
        return n

    def magic(self, expect: int) -> None:
        got = self.u8()
        if got != expect:
            raise PGDecodeError(f"{self.what}: unknown encoding {got}", errno.EINVAL)

    def done(self) -> None:
        if self._pos != len(self._mv):
            raise PGDecodeError(f"{self.what}: {len(self._mv) - self._pos} bytes left over")
