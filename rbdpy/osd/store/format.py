"""On-disk encoding of the store: journal segments and records, the checkpoint log, object
metadata, and object file names. Pure functions over bytes; the files are elsewhere.

Every record carries a crc32c of its payload and one of its header, so a torn or stale record
is recognised rather than trusted (see ``objectstore`` for how that makes crashes safe).
"""

from __future__ import annotations

import errno
import hashlib
import struct
from collections.abc import Iterator

import numpy as np

from rbdpy.crc import crc32c
from rbdpy.osd.store.errors import StoreError

# -- effective ops: what a journal record holds and replay re-applies ------------------------

OP_CREATE = 1
OP_WRITE = 2
OP_ZERO = 3
OP_TRUNCATE = 4
OP_DELETE = 5
OP_SETXATTR = 6
OP_RMXATTR = 7
OP_WRITE_DIRECT = 8  # whole blocks into holes: data went straight to the file, journal has crcs
OP_APPENDXATTR = 9  # bounded append: only the appended bytes are journaled, not the whole value

# -- structures ------------------------------------------------------------------------------

J_MAGIC = 0x4C4E524A  # "JRNL"
J_HDR = struct.Struct("<IIQQI")  # magic, payload len, seq, segment salt, payload crc; hdr crc
J_HDR_LEN = J_HDR.size + 4
S_MAGIC = 0x4745534A  # "JSEG": segment header [magic, gen, salt, crc], padded to SEG_LEN
S_HDR = struct.Struct("<IQQ")
SEG_LEN = 32
M_MAGIC = 0x4154454D  # "META"
M_HDR = struct.Struct("<III")  # magic, payload length, payload crc ... then header crc
M_HDR_LEN = M_HDR.size + 4
M_FULL = 1
M_DELTA = 2
M_PAYLOAD = struct.Struct("<BQQIQI")  # kind, ckpt seq, first journal gen, bs, max size, count
OBJ_FIXED = struct.Struct("<BQQdIH")  # present, size, version, mtime, nblocks, nxattrs
TXN_PREFIX = struct.Struct("<dH")  # mtime, number of ops
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
XATTR_LENS = struct.Struct("<HI")  # name length, value length (object records)
OPH_WRITE = struct.Struct("<BQQ")
OPH_DIRECT = struct.Struct("<BQQI")  # off, length, blocks; then one u32 crc per block
OPH_ZERO = struct.Struct("<BQQ")
OPH_TRUNC = struct.Struct("<BQ")
OPH_XATTR = struct.Struct("<BHI")
OPH_APPENDX = struct.Struct("<BHII")  # name len, data len, keep; then name, data


# -- journal segments and records -------------------------------------------------------------


def segment_header(gen: int, salt: int) -> bytes:
    """A segment's header block: [magic, gen, salt, crc] padded to SEG_LEN."""
    hdr = S_HDR.pack(S_MAGIC, gen, salt)
    return (hdr + U32.pack(crc32c(hdr))).ljust(SEG_LEN, b"\0")


def segment_salt(hdr: bytes, gen: int) -> int | None:
    """The salt in a segment header read from the file, None if it is not a valid header."""
    if len(hdr) < S_HDR.size + 4:
        return None
    magic, hgen, salt = S_HDR.unpack_from(hdr, 0)
    (crc,) = U32.unpack_from(hdr, S_HDR.size)
    if magic != S_MAGIC or hgen != gen or crc != crc32c(memoryview(hdr)[:S_HDR.size]):
        return None
    return salt


def record_header(total: int, seq: int, salt: int, pcrc: int) -> bytes:
    hdr = J_HDR.pack(J_MAGIC, total, seq, salt, pcrc)
    return hdr + U32.pack(crc32c(hdr))


def parse_record_header(hdr: bytes, salt: int) -> tuple[int, int, int] | None:
    """(payload length, seq, payload crc) of a valid record header of this segment, or None.
    The segment's random salt rejects stale records of a recycled segment and anything a
    client could have embedded in write data, even with valid crcs."""
    if len(hdr) < J_HDR_LEN:
        return None
    magic, ln, seq, rsalt, pcrc = J_HDR.unpack_from(hdr, 0)
    (hcrc,) = U32.unpack_from(hdr, J_HDR.size)
    if magic != J_MAGIC or rsalt != salt or hcrc != crc32c(memoryview(hdr)[:J_HDR.size]):
        return None
    return ln, seq, pcrc


def encode_txn(oid: str, mtime: float, ops: list[tuple]) -> list:
    """Journal payload as a buffer list: fixed fields packed, write data by reference."""
    name = oid.encode()
    iov: list = []
    cur = bytearray(U16.pack(len(name)))
    cur += name
    cur += TXN_PREFIX.pack(mtime, len(ops))
    for op in ops:
        code = op[0]
        if code == OP_WRITE:
            cur += OPH_WRITE.pack(OP_WRITE, op[1], op[3])
            iov.append(bytes(cur))
            cur = bytearray()
            iov.extend(op[2])
        elif code == OP_WRITE_DIRECT:
            cur += OPH_DIRECT.pack(OP_WRITE_DIRECT, op[1], op[2], len(op[3]))
            cur += op[3].astype("<u4").tobytes()
        elif code == OP_ZERO:
            cur += OPH_ZERO.pack(OP_ZERO, op[1], op[2])
        elif code == OP_TRUNCATE:
            cur += OPH_TRUNC.pack(OP_TRUNCATE, op[1])
        elif code in (OP_CREATE, OP_DELETE):
            cur.append(code)
        elif code == OP_SETXATTR:
            k = op[1].encode()
            cur += OPH_XATTR.pack(OP_SETXATTR, len(k), len(op[2]))
            cur += k
            cur += op[2]
        elif code == OP_RMXATTR:
            k = op[1].encode()
            cur += OPH_XATTR.pack(OP_RMXATTR, len(k), 0)
            cur += k
        elif code == OP_APPENDXATTR:
            k = op[1].encode()
            cur += OPH_APPENDX.pack(OP_APPENDXATTR, len(k), len(op[2]), op[3])
            cur += k
            cur += op[2]
        else:  # pragma: no cover
            raise AssertionError(code)
    if cur:
        iov.append(bytes(cur))
    return iov


def decode_txn(buf: memoryview) -> tuple[str, float, list[tuple]]:
    """The (oid, mtime, effective ops) of a journal payload whose crc was checked."""
    (ln,) = U16.unpack_from(buf, 0)
    pos = 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    mtime, nops = TXN_PREFIX.unpack_from(buf, pos)
    pos += TXN_PREFIX.size
    ops: list[tuple] = []
    for _ in range(nops):
        code = buf[pos]
        if code == OP_WRITE:
            _, off, n = OPH_WRITE.unpack_from(buf, pos)
            pos += OPH_WRITE.size
            ops.append((OP_WRITE, off, [buf[pos:pos + n]], n))
            pos += n
        elif code == OP_WRITE_DIRECT:
            _, off, n, nb = OPH_DIRECT.unpack_from(buf, pos)
            pos += OPH_DIRECT.size
            crcs = np.frombuffer(buf, dtype="<u4", count=nb, offset=pos).astype(np.uint32)
            ops.append((OP_WRITE_DIRECT, off, n, crcs))
            pos += 4 * nb
        elif code == OP_ZERO:
            _, off, n = OPH_ZERO.unpack_from(buf, pos)
            pos += OPH_ZERO.size
            ops.append((OP_ZERO, off, n))
        elif code == OP_TRUNCATE:
            _, size = OPH_TRUNC.unpack_from(buf, pos)
            pos += OPH_TRUNC.size
            ops.append((OP_TRUNCATE, size))
        elif code in (OP_CREATE, OP_DELETE):
            pos += 1
            ops.append((code,))
        elif code in (OP_SETXATTR, OP_RMXATTR):
            _, kl, vl = OPH_XATTR.unpack_from(buf, pos)
            pos += OPH_XATTR.size
            k = bytes(buf[pos:pos + kl]).decode()
            pos += kl
            if code == OP_SETXATTR:
                ops.append((OP_SETXATTR, k, bytes(buf[pos:pos + vl])))
                pos += vl
            else:
                ops.append((OP_RMXATTR, k))
        elif code == OP_APPENDXATTR:
            _, kl, vl, keep = OPH_APPENDX.unpack_from(buf, pos)
            pos += OPH_APPENDX.size
            k = bytes(buf[pos:pos + kl]).decode()
            pos += kl
            ops.append((OP_APPENDXATTR, k, bytes(buf[pos:pos + vl]), keep))
            pos += vl
        else:
            raise StoreError(errno.EIO, f"journal record with unknown op {code}")
    return oid, mtime, ops


# -- object metadata and the checkpoint log ---------------------------------------------------


class ObjMeta:
    """In-memory metadata of one object: size, version, mtime, xattrs (in insertion order),
    and per block a crc32c and whether it is allocated (a hole reads as zeros)."""

    __slots__ = ("size", "version", "mtime", "xattrs", "crcs", "alloc")

    def __init__(self, nblocks: int = 0) -> None:
        self.size = 0
        self.version = 0
        self.mtime = 0.0
        self.xattrs: dict[str, bytes] = {}
        self.crcs = np.zeros(nblocks, dtype=np.uint32)
        self.alloc = np.zeros(nblocks, dtype=np.bool_)

    def reserve(self, nblocks: int) -> None:
        cap = len(self.alloc)
        if nblocks <= cap:
            return
        cap = max(nblocks, 2 * cap, 16)
        crcs = np.zeros(cap, dtype=np.uint32)
        alloc = np.zeros(cap, dtype=np.bool_)
        crcs[: len(self.crcs)] = self.crcs
        alloc[: len(self.alloc)] = self.alloc
        self.crcs, self.alloc = crcs, alloc


def encode_obj(oid: str, obj: ObjMeta | None, bs: int) -> bytes:
    """An object's checkpoint record (``obj`` None: its deletion)."""
    name = oid.encode()
    if obj is None:
        return b"".join((U16.pack(len(name)), name, OBJ_FIXED.pack(0, 0, 0, 0.0, 0, 0)))
    nb = -(-obj.size // bs)
    parts = [U16.pack(len(name)), name,
             OBJ_FIXED.pack(1, obj.size, obj.version, obj.mtime, nb, len(obj.xattrs))]
    for k, v in obj.xattrs.items():
        kb = k.encode()
        parts += [XATTR_LENS.pack(len(kb), len(v)), kb, v]
    parts.append(obj.crcs[:nb].astype("<u4").tobytes())
    parts.append(np.packbits(obj.alloc[:nb]).tobytes())
    return b"".join(parts)


def decode_obj(buf: memoryview, pos: int) -> tuple[str, ObjMeta | None, int, int]:
    """Decode one object record at ``pos``: (oid, obj or None if deleted, start, end)."""
    start = pos
    (ln,) = U16.unpack_from(buf, pos)
    pos += 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    present, size, version, mtime, nb, nx = OBJ_FIXED.unpack_from(buf, pos)
    pos += OBJ_FIXED.size
    if not present:
        return oid, None, start, pos
    obj = ObjMeta(0)
    obj.size, obj.version, obj.mtime = size, version, mtime
    for _ in range(nx):
        kl, vl = XATTR_LENS.unpack_from(buf, pos)
        pos += XATTR_LENS.size
        k = bytes(buf[pos:pos + kl]).decode()
        pos += kl
        obj.xattrs[k] = bytes(buf[pos:pos + vl])
        pos += vl
    obj.crcs = np.frombuffer(buf, dtype="<u4", count=nb, offset=pos).astype(np.uint32)
    pos += 4 * nb
    nbytes = -(-nb // 8)
    bits = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=pos)
    obj.alloc = np.unpackbits(bits, count=nb).astype(np.bool_)
    pos += nbytes
    return oid, obj, start, pos


def skip_obj(buf: memoryview, pos: int) -> tuple[str, bool, int, int]:
    """Like decode_obj but only finds the record's extent: (oid, present, start, end)."""
    start = pos
    (ln,) = U16.unpack_from(buf, pos)
    pos += 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    present, _size, _ver, _mt, nb, nx = OBJ_FIXED.unpack_from(buf, pos)
    pos += OBJ_FIXED.size
    if not present:
        return oid, False, start, pos
    for _ in range(nx):
        kl, vl = XATTR_LENS.unpack_from(buf, pos)
        pos += XATTR_LENS.size + kl + vl
    pos += 4 * nb + -(-nb // 8)
    return oid, True, start, pos


def meta_record(payload: bytes) -> bytes:
    """A checkpoint log record: [magic, len, crc, header crc | payload]."""
    hdr = M_HDR.pack(M_MAGIC, len(payload), crc32c(payload))
    return hdr + U32.pack(crc32c(hdr)) + payload


def iter_meta(data: memoryview) -> Iterator[tuple]:
    """Yield (kind, seq, gen, bs, maxsize, count, payload, end) per valid record, stopping at
    the first torn or invalid one."""
    pos = 0
    while pos + M_HDR_LEN <= len(data):
        magic, ln, pcrc = M_HDR.unpack_from(data, pos)
        (hcrc,) = U32.unpack_from(data, pos + M_HDR.size)
        if magic != M_MAGIC or hcrc != crc32c(data[pos:pos + M_HDR.size]):
            return
        body = pos + M_HDR_LEN
        if body + ln > len(data) or crc32c(data[body:body + ln]) != pcrc:
            return
        payload = data[body:body + ln]
        kind, seq, gen, bs, maxsize, count = M_PAYLOAD.unpack_from(payload, 0)
        yield kind, seq, gen, bs, maxsize, count, payload, body + ln
        pos = body + ln


def file_name(oid: str) -> str:
    """A file name for an object id: readable when safe and short, else a hash."""
    if (len(oid) <= 200 and oid[0] != "." and
            all(c.isascii() and (c.isalnum() or c in "._-") for c in oid)):
        return "o_" + oid
    return "h_" + hashlib.sha256(oid.encode()).hexdigest()
