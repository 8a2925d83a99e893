"""The OSD's crash-safe object store: a write-ahead journal in front of sparse data files.

Why this shape
--------------
The OSD acks a write when it is *applied* (visible to reads) and commits it when it is
*durable*. The store mirrors that split: :meth:`ObjectStore.apply` appends one journal record
(``pwritev``, no fsync) and then writes the same bytes into the object's data file, so reads
are served by the page cache at once; :meth:`ObjectStore.commit` is a single ``fdatasync`` of
the journal that makes every transaction applied so far durable (group commit).

Files under the store directory::

    meta                 checkpoint log: records [magic, len, crc, hdr-crc | payload]; a FULL
                         record holds every object's metadata, DELTA records hold the objects
                         changed since the previous checkpoint (or their deletion). Compacted
                         (rewritten as one FULL record, tmp + fsync + rename) when it grows.
    journal.<gen>        write-ahead journal segments, one per checkpoint epoch: a header
                         [magic, gen, random salt, crc], then records [magic, len, seq, salt,
                         crc, hdr-crc | oid, mtime, effective ops incl. write data]. Retired
                         segments are recycled (``journal.spare``) under a new salt.
    objects/<xx>/<name>  one sparse data file per object (``xx`` = a crc32c bucket).

Object metadata (size, version, mtime, xattrs, a numpy ``uint32`` crc32c per block, a bool
"allocated" per block) lives in memory; it is rebuilt on open from the checkpoint log plus a
replay of the journal. Blocks that are not allocated are holes: they are never read from the
file (they read as zeros whatever the file holds) and take no space.

Crash safety (``kill -9`` at any instant)
-----------------------------------------
* The journal record of a transaction is complete in the page cache before its data file is
  touched, so any data-file change the process made is described by a surviving record, and a
  record torn by the kill never reached a data file. Replay on open re-applies every record
  after the checkpoint, in order, which also repairs a data block torn by a killed ``pwritev``.
  Replay stops at the first invalid record (bad magic/salt/crc/sequence), and new records
  overwrite from there, so the recovered state is always a *prefix* of the applied sequence:
  a transaction is entirely present or entirely absent, and every committed one is present.
* Large writes of whole blocks into holes (``direct_write_min``, 64 KiB) skip the double
  write: the data goes to the object file first, then a record with only the block crcs. A
  kill in between leaves holes (the transaction is absent); ``commit`` fdatasyncs those files
  before the journal. Since that data exists only in the file, replay (two passes) never lets
  an earlier record overwrite blocks a later direct write filled, and defers unlink, ftruncate
  and hole punching to the end, when the final state is known.
* Data is written to files in whole blocks; every block carries a crc32c over its full
  ``block_size`` bytes (bytes past the object's end count as zeros). Every read verifies it;
  a mismatch raises ``StoreError(EIO)`` and logs, it never returns wrong bytes.
* Checkpoint (when a journal segment exceeds ``journal_max``, from :meth:`commit`): rotate to a
  new segment under the lock, snapshot the metadata of the objects changed since the last
  checkpoint, then (lock released, applies continue) fdatasync the old segment and the changed
  data files, append a DELTA record to ``meta`` and fdatasync it, and only then retire the old
  segments. A kill anywhere in between leaves the old segments to replay.

Not covered: power loss (as opposed to a process kill) can let the page cache write back a data
block overwritten by a transaction whose journal record was not yet durable; such a block then
fails its crc and reads as ``EIO`` (detected, never wrong bytes), though its committed content is
lost. Guarding against that needs copy-on-write or deferred in-place writes.

Threads: ``apply``/``read``/... may run on one thread while ``commit`` runs on another
(``trio.to_thread``); a lock guards the in-memory state and ``commit`` holds it only briefly,
never across an fsync. A caller that does the syncs itself (the OSD, through Linux AIO) uses
``begin_commit`` / ``end_commit``, which hold only the commit lock in between.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import ctypes.util
import enum
import errno
import logging
import operator
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rbdpy.crc import Buffer, crc32c
from rbdpy.errors import RbdpyError

log = logging.getLogger("rbdpy.osd.store")

__all__ = [
    "ApplyResult",
    "CmpOp",
    "ObjectStat",
    "ObjectStore",
    "StoreError",
    "Transaction",
]


class StoreError(RbdpyError):
    """A store failure with an ``errno`` the OSD can put in its reply."""

    def __str__(self) -> str:
        return f"[{errno.errorcode.get(self.errno, self.errno)}] {self.strerror}"


class CmpOp(enum.IntEnum):
    """cmpxattr operators (numbered as Ceph's CEPH_OSD_CMPXATTR_OP_*)."""

    EQ = 1
    NE = 2
    GT = 3
    GTE = 4
    LT = 5
    LTE = 6


_CMP = {
    CmpOp.EQ: lambda a, b: a == b,
    CmpOp.NE: lambda a, b: a != b,
    CmpOp.GT: lambda a, b: a > b,
    CmpOp.GTE: lambda a, b: a >= b,
    CmpOp.LT: lambda a, b: a < b,
    CmpOp.LTE: lambda a, b: a <= b,
}


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What apply did: the object's new version and the journal sequence to wait for."""

    version: int
    seq: int


@dataclass(frozen=True, slots=True)
class ObjectStat:
    size: int
    mtime: float
    version: int


# -- transactions ------------------------------------------------------------------------------

# mutations (journaled) ...
_CREATE = 1
_WRITE = 2
_ZERO = 3
_TRUNCATE = 4
_DELETE = 5
_SETXATTR = 6
_RMXATTR = 7
_WRITE_DIRECT = 8  # whole blocks into holes: data went straight to the file, journal has crcs
_APPENDXATTR = 9  # bounded append: only the appended bytes are journaled, not the whole value
# ... and builder-only ops (expanded or evaluated by apply, never journaled)
_CREATE_EXCL = 20
_WRITEFULL = 21
_CMPXATTR = 30
_ASSERT_VERSION = 31
_ASSERT_EXISTS = 32
_CREATING_OPS = frozenset({_CREATE, _CREATE_EXCL, _WRITE, _WRITEFULL, _TRUNCATE, _SETXATTR,
                           _APPENDXATTR})

_GUARDS = frozenset({_CMPXATTR, _ASSERT_VERSION, _ASSERT_EXISTS})

MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 << 10
MAX_OID = 1024


def _segments(data: Buffer | Sequence[Buffer]) -> tuple[list[memoryview], int]:
    """Normalise a payload (one buffer or several network segments) to byte memoryviews."""
    if isinstance(data, bytes | bytearray | memoryview):
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        return ([mv] if mv.nbytes else []), mv.nbytes
    segs = []
    n = 0
    for d in data:
        mv = memoryview(d)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if mv.nbytes:
            segs.append(mv)
            n += mv.nbytes
    return segs, n


class Transaction:
    """Mutations and guards for one object, applied in order, all or nothing.

    Guards are evaluated against the state the earlier ops of the same transaction produced
    (``assert_version`` against the version before the transaction); any failure aborts the
    whole transaction before anything takes effect. Payload buffers are referenced, not copied,
    until ``apply`` returns.
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def __len__(self) -> int:
        return len(self.ops)

    def creates(self) -> bool:
        """Whether applying this transaction can bring a missing object into existence."""
        return any(op[0] in _CREATING_OPS for op in self.ops)

    def create(self, exclusive: bool = False) -> Transaction:
        """Create the object (EEXIST if ``exclusive`` and it exists)."""
        self.ops.append((_CREATE_EXCL,) if exclusive else (_CREATE,))
        return self

    def write(self, offset: int, data: Buffer | Sequence[Buffer]) -> Transaction:
        """Write bytes at ``offset`` (creating the object and extending it as needed)."""
        segs, n = _segments(data)
        self.ops.append((_WRITE, operator.index(offset), segs, n))
        return self

    def writefull(self, data: Buffer | Sequence[Buffer]) -> Transaction:
        """Replace the whole content: the object becomes exactly ``data``."""
        segs, n = _segments(data)
        self.ops.append((_WRITEFULL, 0, segs, n))
        return self

    def zero(self, offset: int, length: int) -> Transaction:
        """Zero a range (whole blocks become holes); never extends the object."""
        self.ops.append((_ZERO, operator.index(offset), operator.index(length)))
        return self

    def truncate(self, size: int) -> Transaction:
        """Set the size; shrinking discards data, growing adds a hole. Creates the object."""
        self.ops.append((_TRUNCATE, operator.index(size)))
        return self

    def delete(self) -> Transaction:
        """Remove the object (ENOENT if absent)."""
        self.ops.append((_DELETE,))
        return self

    def setxattr(self, name: str, value: Buffer) -> Transaction:
        self.ops.append((_SETXATTR, name, bytes(value)))
        return self

    def rmxattr(self, name: str) -> Transaction:
        """Remove an xattr (ENODATA if it is not set)."""
        self.ops.append((_RMXATTR, name))
        return self

    def appendxattr(self, name: str, data: Buffer, keep: int) -> Transaction:
        """Append ``data`` to an xattr (a missing one counts as empty) and keep only the last
        ``keep`` bytes of the result; creates the object. Moves the xattr last in the order
        of ``getxattrs`` (so a set of such logs is ordered by last use).

        Why not setxattr with the new value: the journal record then carries only ``data``,
        so a small log that grows with every write (the OSD's request ids) costs a few bytes
        per transaction instead of its whole size."""
        self.ops.append((_APPENDXATTR, name, bytes(data), operator.index(keep)))
        return self

    def cmpxattr(self, name: str, op: CmpOp | int | str, value: Buffer | int) -> Transaction:
        """Guard on an xattr: bytes ``value`` compares bytes (a missing xattr is b""), an int
        compares as u64 with the xattr parsed as ASCII decimal (missing is 0). ECANCELED if
        false, EINVAL if the xattr is not a number in u64 mode."""
        if isinstance(op, str):
            op = CmpOp[op.upper()]
        val = value if isinstance(value, int) else bytes(value)
        self.ops.append((_CMPXATTR, name, CmpOp(op), val))
        return self

    def assert_version(self, version: int) -> Transaction:
        """Guard: the object's version before this transaction is ``version`` (0 = absent)."""
        self.ops.append((_ASSERT_VERSION, operator.index(version)))
        return self

    def assert_exists(self) -> Transaction:
        """Guard: the object exists at this point of the transaction (ENOENT otherwise)."""
        self.ops.append((_ASSERT_EXISTS,))
        return self


# -- on-disk formats ---------------------------------------------------------------------------

_J_MAGIC = 0x4C4E524A  # "JRNL"
_J_HDR = struct.Struct("<IIQQI")  # magic, payload len, seq, segment salt, payload crc; hdr crc
_J_HDR_LEN = _J_HDR.size + 4
_S_MAGIC = 0x4745534A  # "JSEG": segment header [magic, gen, salt, crc], padded to _SEG_LEN
_S_HDR = struct.Struct("<IQQ")
_SEG_LEN = 32
_M_MAGIC = 0x4154454D  # "META"
_M_HDR = struct.Struct("<III")  # magic, payload length, payload crc ... then header crc
_M_HDR_LEN = _M_HDR.size + 4
_M_FULL = 1
_M_DELTA = 2
_M_PAYLOAD = struct.Struct("<BQQIQI")  # kind, ckpt seq, first journal gen, bs, max size, count
_OBJ_FIXED = struct.Struct("<BQQdIH")  # present, size, version, mtime, nblocks, nxattrs
_TXN_PREFIX = struct.Struct("<dH")  # mtime, number of ops
_U16 = struct.Struct("<H")
_OP_WRITE = struct.Struct("<BQQ")
_OP_DIRECT = struct.Struct("<BQQI")  # off, length, blocks; then one u32 crc per block
_OP_ZERO = struct.Struct("<BQQ")
_OP_TRUNC = struct.Struct("<BQ")
_OP_XATTR = struct.Struct("<BHI")
_OP_APPENDX = struct.Struct("<BHII")  # name len, data len, keep; then name, data

_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
try:
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - not Linux
    _fallocate = None


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) (Python only has posix_fallocate, without hole punching)."""
    if _fallocate is None:  # pragma: no cover
        raise OSError(errno.EOPNOTSUPP, "fallocate")
    if _fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _pwritev_all(fd: int, iov: list, pos: int, total: int = -1) -> None:
    """pwritev the whole buffer list, chunked by IOV_MAX, continuing after short writes.
    ``total``, when the caller knows it, is the byte count (the common case is then one
    call and one comparison)."""
    if total >= 0 and len(iov) <= _IOV_MAX:
        n = os.pwritev(fd, iov, pos)
        if n == total:
            return
        iov, pos = _after(iov, n), pos + n
    while iov:
        chunk = iov[:_IOV_MAX]
        want = sum(len(b) for b in chunk)
        n = os.pwritev(fd, chunk, pos)
        pos += n
        if n == want:
            iov = iov[_IOV_MAX:]
            continue
        if n == 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        rest: list = []
        for i, b in enumerate(chunk):  # skip what was written, resume mid-buffer
            if n >= len(b):
                n -= len(b)
                continue
            rest = [memoryview(b)[n:], *chunk[i + 1:]]
            break
        iov = rest + iov[_IOV_MAX:]


def _pwrite_pieces(fd: int, iov: list, pos: int, total: int, piece: int) -> None:
    """Write ``total`` bytes of ``iov`` at ``pos`` in calls of at most ``piece`` bytes,
    aligned to multiples of ``piece`` in the file.

    Why: the kernel sizes page-cache folios by the length of each write call, so one 1 MiB
    pwritev leaves 1 MiB folios behind, and every later 4 KiB overwrite in such a folio
    costs several times the kernel CPU of one in a small folio (ext4 walks all its buffers,
    writeback writes the whole folio). Object files take many small overwrites later;
    splitting large writes costs a few syscalls per MiB once."""
    if not piece or total <= piece - pos % piece:
        _pwritev_all(fd, iov, pos, total)
        return
    segs = [b if isinstance(b, memoryview) else memoryview(b) for b in iov]
    done = 0
    while done < total:
        n = min(piece - (pos + done) % piece, total - done)
        _pwritev_all(fd, _slice(segs, done, done + n), pos + done, n)
        done += n


def _after(iov: list, n: int) -> list:
    """What is left of a buffer list after its first ``n`` bytes were written."""
    for i, b in enumerate(iov):
        if n < len(b):
            return [memoryview(b)[n:], *iov[i + 1:]]
        n -= len(b)
    return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_name(oid: str) -> str:
    """A file name for an object id: readable when safe and short, else a hash."""
    if (len(oid) <= 200 and oid[0] != "." and
            all(c.isascii() and (c.isalnum() or c in "._-") for c in oid)):
        return "o_" + oid
    import hashlib

    return "h_" + hashlib.sha256(oid.encode()).hexdigest()


class _Obj:
    """In-memory metadata of one object."""

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


def _encode_obj(oid: str, obj: _Obj | None, bs: int) -> bytes:
    name = oid.encode()
    if obj is None:
        return b"".join((_U16.pack(len(name)), name, _OBJ_FIXED.pack(0, 0, 0, 0.0, 0, 0)))
    nb = -(-obj.size // bs)
    parts = [_U16.pack(len(name)), name,
             _OBJ_FIXED.pack(1, obj.size, obj.version, obj.mtime, nb, len(obj.xattrs))]
    for k, v in obj.xattrs.items():
        kb = k.encode()
        parts += [struct.pack("<HI", len(kb), len(v)), kb, v]
    parts.append(obj.crcs[:nb].astype("<u4").tobytes())
    parts.append(np.packbits(obj.alloc[:nb]).tobytes())
    return b"".join(parts)


def _decode_obj(buf: memoryview, pos: int) -> tuple[str, _Obj | None, int, int]:
    """Decode one object record at ``pos``: (oid, obj or None if deleted, start, end)."""
    start = pos
    (ln,) = _U16.unpack_from(buf, pos)
    pos += 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    present, size, version, mtime, nb, nx = _OBJ_FIXED.unpack_from(buf, pos)
    pos += _OBJ_FIXED.size
    if not present:
        return oid, None, start, pos
    obj = _Obj(0)
    obj.size, obj.version, obj.mtime = size, version, mtime
    for _ in range(nx):
        kl, vl = struct.unpack_from("<HI", buf, pos)
        pos += 6
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


def _meta_record(payload: bytes) -> bytes:
    hdr = _M_HDR.pack(_M_MAGIC, len(payload), crc32c(payload))
    return hdr + struct.pack("<I", crc32c(hdr)) + payload


def _iter_meta(data: memoryview):
    """Yield (kind, seq, gen, bs, maxsize, count, payload, body offset, end) per valid record."""
    pos = 0
    while pos + _M_HDR_LEN <= len(data):
        magic, ln, pcrc = _M_HDR.unpack_from(data, pos)
        (hcrc,) = struct.unpack_from("<I", data, pos + _M_HDR.size)
        if magic != _M_MAGIC or hcrc != crc32c(data[pos:pos + _M_HDR.size]):
            return
        body = pos + _M_HDR_LEN
        if body + ln > len(data) or crc32c(data[body:body + ln]) != pcrc:
            return
        payload = data[body:body + ln]
        kind, seq, gen, bs, maxsize, count = _M_PAYLOAD.unpack_from(payload, 0)
        yield kind, seq, gen, bs, maxsize, count, payload, body + ln
        pos = body + ln


class _TxnState:
    """Per-transaction scratch for applying effective ops to the data file."""

    __slots__ = ("obj", "bc", "prepared", "replay")

    def __init__(self, obj: _Obj | None, prepared: dict[int, bytearray], replay: bool) -> None:
        self.obj = obj
        self.bc: dict[int, bytearray] = {}  # blocks partially written in this txn (full image)
        self.prepared = prepared  # pre-txn verified images of blocks we will merge into
        self.replay = replay


# -- the store ---------------------------------------------------------------------------------


@dataclass
class CommitPlan:
    """What one commit covers (see ``ObjectStore.begin_commit``)."""

    seq: int  # durable once this commit's syncs are done
    journal_fd: int  # fdatasync it last
    jpos: int
    direct: set[str]  # objects whose direct-written data must be durable before the journal
    direct_paths: list[str]  # their files: open each read-only and fdatasync it (may be gone)


class ObjectStore:
    """A synchronous, crash-safe object store (see the module docstring for the design)."""

    def __init__(self, path: str | os.PathLike, *, max_object_size: int = 32 << 20,
                 block_size: int = 4096, journal_max: int = 64 << 20,
                 max_open_files: int = 256, direct_write_min: int = 64 << 10,
                 data_write_piece: int = 64 << 10) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise StoreError(errno.EINVAL, "block_size must be a power of two")
        self.path = os.fspath(path)
        self.max_object_size = max_object_size
        self.block_size = block_size
        self.journal_max = journal_max
        self.direct_write_min = direct_write_min  # 0 disables the direct path
        self.data_write_piece = data_write_piece  # see _pwrite_pieces; 0: one call per write
        self._max_fds = max(4, max_open_files)
        self._bs = block_size
        self._zero = memoryview(bytes(block_size))
        self._objs: dict[str, _Obj] = {}
        self._sorted: list[str] = []
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()  # in-memory state, fds, journal append position
        self._commit_lock = threading.Lock()  # one commit/checkpoint at a time
        self._seq = 0  # last journaled (applied) sequence
        self._durable = 0
        self._dirty: set[str] = set()  # objects changed since the last checkpoint snapshot
        self._new_dirs: set[str] = set()  # bucket dirs with new entries since the checkpoint
        self._failed: StoreError | None = None
        self._direct_pending: set[str] = set()  # files with direct writes not yet fdatasync'd
        self._protect: dict[str, dict[int, int]] | None = None  # replay: block -> last direct
        self._replay_idx = 0
        self._closed = False
        self._prealloc = _fallocate is not None
        self._punch = _fallocate is not None
        self._jfd = -1
        self._old_jfds: list[int] = []  # segments of failed checkpoints, still to replay
        self._jgen = 0
        self._jpos = 0
        self._jsalt = 0
        self._meta_fd = -1
        self._meta_full_size = 0
        self._objdir = os.path.join(self.path, "objects")
        self._open()

    # -- open / recovery ----------------------------------------------------------------------

    def _jpath(self, gen: int) -> str:
        return os.path.join(self.path, f"journal.{gen:016d}")

    def _open(self) -> None:
        os.makedirs(self._objdir, exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(self._objdir, f"{i:02x}"), exist_ok=True)
        meta_path = os.path.join(self.path, "meta")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(meta_path + ".tmp")
        if not os.path.exists(meta_path):
            if any(n.startswith("journal.") for n in os.listdir(self.path)):
                raise StoreError(errno.EIO, f"{self.path}: journal without meta")
            self._write_full_meta(meta_path, 0, 1, [])
        self._meta_fd = os.open(meta_path, os.O_RDWR | os.O_CLOEXEC)
        data = memoryview(_read_all(self._meta_fd))
        seq, gen, end = 0, 1, 0
        for kind, rseq, rgen, bs, _mx, count, payload, rend in _iter_meta(data):
            if bs != self._bs:
                raise StoreError(errno.EINVAL, f"store has block_size {bs}, not {self._bs}")
            if kind == _M_FULL:
                self._objs.clear()
                self._meta_full_size = rend - end
            pos = _M_PAYLOAD.size
            for _ in range(count):
                oid, obj, _s, pos = _decode_obj(payload, pos)
                if obj is None:
                    self._objs.pop(oid, None)
                else:
                    self._objs[oid] = obj
            seq, gen, end = rseq, rgen, rend
        if end < len(data):
            log.warning("%s: dropping %d bytes of torn checkpoint log", meta_path, len(data) - end)
            os.ftruncate(self._meta_fd, end)
        del data
        self._sorted = sorted(self._objs)
        self._seq = self._durable = seq
        gens = sorted(int(n.split(".", 1)[1]) for n in os.listdir(self.path)
                      if n.startswith("journal.") and n.split(".", 1)[1].isdigit())
        for g in gens:
            if g < gen:
                os.unlink(self._jpath(g))
        gens = [g for g in gens if g >= gen]
        active, end = gen, _SEG_LEN
        records: list[tuple[int, str, float, list[tuple]]] = []
        for i, g in enumerate(gens):
            active = g
            end, gap = self._scan_segment(g, seq + 1 + len(records), records)
            if gap:
                for later in gens[i + 1:]:
                    log.error("journal %d follows a sequence gap; moved aside", later)
                    os.rename(self._jpath(later), self._jpath(later) + ".corrupt")
                break
        self._replay(records)
        self._jgen = active
        self._jfd = os.open(self._jpath(active), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        salt = _segment_salt(self._jfd, active)
        if salt is None:  # new, or its header never made it: nothing in it can be valid
            self._jsalt = self._init_segment(self._jfd, active)
            self._jpos = _SEG_LEN
        else:
            self._jsalt = salt
            self._jpos = end  # past it: torn or stale (recycled segment), overwritten
        os.fdatasync(self._jfd)  # what was replayed from the page cache is now durable
        _fsync_dir(self.path)
        self._durable = self._seq

    def _scan_segment(self, gen: int, expected: int, out: list) -> tuple[int, bool]:
        """Collect the records of one journal segment that continue the sequence.

        Returns (end of the valid records, whether a sequence gap was found). Scanning stops at
        the first torn/invalid record or at one with an older sequence: segments are recycled,
        so stale records of an earlier use may follow the live ones. Nothing is truncated; the
        active segment is simply overwritten from the valid end."""
        fd = os.open(self._jpath(gen), os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            salt = _segment_salt(fd, gen)
            if salt is None:
                return _SEG_LEN, False
            pos = _SEG_LEN
            gap = False
            n = 0
            while pos < size:
                rec = self._read_record(fd, pos, size, salt)
                if rec is None:
                    break
                seq, payload, rlen = rec
                if seq != expected:
                    if seq > expected:
                        log.error("journal %d: sequence gap at offset %d (%d, expected %d)",
                                  gen, pos, seq, expected)
                        gap = True
                    break
                out.append((seq, *_decode_txn(payload)))
                expected += 1
                pos += rlen
                n += 1
            if n:
                os.fdatasync(fd)  # replayed from the page cache: make it durable now
            return pos, gap
        finally:
            os.close(fd)

    def _replay(self, records: list[tuple[int, str, float, list[tuple]]]) -> None:
        """Re-apply journal records over the checkpointed state.

        The data files already hold what the killed process wrote, so replay must not destroy
        data a *later* record relies on: direct writes (whose data is only in the file) protect
        their blocks from every earlier record's file writes, and destructive file operations
        (unlink, ftruncate, hole punching) wait until the end, when the final state is known."""
        if not records:
            return
        bs = self._bs
        prot: dict[str, dict[int, int]] = {}
        for idx, (_seq, oid, _mtime, ops) in enumerate(records):
            for op in ops:
                if op[0] == _WRITE_DIRECT:
                    p = prot.setdefault(oid, {})
                    for b in range(op[1] // bs, (op[1] + op[2]) // bs):
                        p[b] = idx
        self._protect = prot
        touched: set[str] = set()
        try:
            for idx, (seq, oid, mtime, ops) in enumerate(records):
                self._replay_idx = idx
                self._apply_ops(oid, ops, seq, mtime, {}, replay=True)
                self._seq = seq
                touched.add(oid)
        finally:
            self._protect = None
        for oid in sorted(touched):  # now the destructive part, from the final state
            obj = self._objs.get(oid)
            if obj is None:
                self._close_fd(oid)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(oid)[1])
                continue
            fd = self._fd(oid)
            os.ftruncate(fd, obj.size)
            nb = -(-obj.size // bs)
            holes = np.concatenate(([0], (~obj.alloc[:nb]).view(np.int8), [0]))
            edges = np.flatnonzero(np.diff(holes))
            for s0, e0 in zip(edges[0::2].tolist(), edges[1::2].tolist()):
                self._punch_range(oid, s0 * bs, (e0 - s0) * bs)
        log.info("replayed %d journal records up to seq %d", len(records), self._seq)

    @staticmethod
    def _read_record(fd: int, pos: int, size: int, salt: int
                     ) -> tuple[int, memoryview, int] | None:
        """A valid record at ``pos`` or None. The segment's random salt in every record
        header rejects stale records of a recycled segment and anything a client could have
        embedded in write data (e.g. the tail of a torn record), even with valid crcs."""
        if size - pos < _J_HDR_LEN:
            return None
        hdr = os.pread(fd, _J_HDR_LEN, pos)
        magic, ln, seq, rsalt, pcrc = _J_HDR.unpack_from(hdr, 0)
        (hcrc,) = struct.unpack_from("<I", hdr, _J_HDR.size)
        if (magic != _J_MAGIC or rsalt != salt
                or hcrc != crc32c(memoryview(hdr)[:_J_HDR.size])):
            return None
        if ln > size - pos - _J_HDR_LEN:
            return None
        payload = os.pread(fd, ln, pos + _J_HDR_LEN)
        if len(payload) != ln or crc32c(payload) != pcrc:
            return None
        return seq, memoryview(payload), _J_HDR_LEN + ln

    # -- helpers ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(errno.EBADF, "store is closed")

    def _path(self, oid: str) -> tuple[str, str]:
        bucket = os.path.join(self._objdir, f"{crc32c(oid.encode()) & 0xFF:02x}")
        return bucket, os.path.join(bucket, _file_name(oid))

    def _fd(self, oid: str) -> int:
        fd = self._fds.get(oid)
        if fd is not None:
            self._fds.move_to_end(oid)
            return fd
        fd = os.open(self._path(oid)[1], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fds[oid] = fd
        if len(self._fds) > self._max_fds:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_fd(self, oid: str) -> None:
        fd = self._fds.pop(oid, None)
        if fd is not None:
            os.close(fd)

    def _get(self, oid: str) -> _Obj:
        obj = self._objs.get(oid)
        if obj is None:
            raise StoreError(errno.ENOENT, f"no object {oid!r}")
        return obj

    def _eio(self, oid: str, block: int, want: int, got: int) -> StoreError:
        log.error("crc mismatch: object %r block %d (offset %d): stored %08x, read %08x",
                  oid, block, block * self._bs, want, got)
        return StoreError(errno.EIO, f"checksum mismatch in {oid!r} block {block}")

    def _read_block_raw(self, oid: str, obj: _Obj, b: int) -> bytearray:
        """A block's full image from its file (bytes past EOF/size as zeros), unverified."""
        bs = self._bs
        valid = min(bs, obj.size - b * bs)
        blk = bytearray(bs)
        if valid > 0:
            os.preadv(self._fd(oid), [memoryview(blk)[:valid]], b * bs)
        return blk

    # -- apply --------------------------------------------------------------------------------

    def apply(self, oid: str, txn: Transaction) -> ApplyResult:
        """Validate, journal and apply ``txn`` to object ``oid``, atomically.

        On any StoreError nothing was applied. The result's ``seq`` is durable once
        ``commit()`` (or ``committed_seq()``) reaches it."""
        with self._lock:
            res = self._apply_locked(oid, txn)
        if self._jpos > 2 * self.journal_max and not self._commit_lock.locked():
            self.commit()  # nobody is committing: keep the journal bounded ourselves
        return res

    def _apply_locked(self, oid: str, txn: Transaction) -> ApplyResult:
        self._check_open()
        if self._failed is not None:
            raise StoreError(self._failed.errno, f"store failed earlier: {self._failed}")
        if not isinstance(oid, str) or not oid or len(oid.encode()) > MAX_OID:
            raise StoreError(errno.EINVAL, "bad object id")
        if len(txn.ops) > 0xFFFF:
            raise StoreError(errno.EINVAL, "too many ops in one transaction")
        obj = self._objs.get(oid)
        ops, mutates, prepared, prealloc, direct = self._prepare(oid, obj, txn)
        if not mutates:
            return ApplyResult(obj.version if obj is not None else 0, self._seq)
        mtime = time.time()
        seq = self._seq + 1
        # a direct write's own pwritev fails before journaling; give its blocks back if so
        allocated = prealloc if direct else self._preallocate(oid, obj, prealloc)
        try:
            if direct:
                ops = self._write_direct(oid, ops)
            self._journal(seq, oid, mtime, ops)
        except StoreError:
            self._undo_prealloc(oid, obj, allocated)
            raise
        try:
            version = self._apply_ops(oid, ops, seq, mtime, prepared, replay=False)
        except OSError as e:
            self._failed = StoreError(errno.EIO, f"data write failed after journaling: {e}")
            log.critical("object %r: %s; store must be reopened", oid, self._failed)
            raise self._failed from e
        self._seq = seq
        return ApplyResult(version, seq)

    def _write_direct(self, oid: str, ops: list[tuple]) -> list[tuple]:
        """Write the data of a direct write to the object's file *before* journaling it.

        Its blocks are holes, so nothing committed is overwritten; if we die before the journal
        record is complete, the blocks stay holes and the transaction is simply absent. The
        record then carries only the block crcs, halving the bytes written for large fresh
        writes. ``commit`` fdatasyncs these files before the journal."""
        bs = self._bs
        out = []
        for op in ops:
            if op[0] != _WRITE_DIRECT:
                out.append(op)
                continue
            _, off, segs, n = op
            if len(segs) == 1:
                mv = segs[0]
                crcs = [crc32c(mv[i:i + bs]) for i in range(0, n, bs)]
            else:
                crcs = _crc_blocks(segs, n // bs, bs)
            try:
                _pwrite_pieces(self._fd(oid), segs, off, n, self.data_write_piece)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise StoreError(errno.ENOSPC, f"object data: {e.strerror}") from None
                raise StoreError(errno.EIO, f"object data write: {e}") from None
            out.append((_WRITE_DIRECT, off, n, np.array(crcs, dtype=np.uint32)))
        return out

    def _prepare(self, oid: str, obj: _Obj | None, txn: Transaction
                 ) -> tuple[list[tuple], bool, dict[int, bytearray], list[tuple[int, int]], bool]:
        """Evaluate guards and validate every op against a simulated state; no side effects
        except reading (and verifying) the blocks partial writes will merge into.

        Returns the effective ops to journal, whether the txn mutates, the verified blocks,
        the block ranges written (for preallocation) and whether the one write in it goes
        the direct way (large, whole blocks, all holes; see _write_direct)."""
        bs = self._bs
        maxsize = self.max_object_size
        exists = obj is not None
        pre_version = obj.version if obj is not None else 0
        size = obj.size if obj is not None else 0
        xattrs = obj.xattrs if obj is not None else {}
        xcopied = False
        fresh = obj is None  # pre-txn blocks no longer matter once the object is re-created
        pre_nb = len(obj.alloc) if obj is not None else 0
        ops: list[tuple] = []
        mutates = False
        edges: set[int] = set()
        prealloc: list[tuple[int, int]] = []
        big = False  # a write large enough to maybe go the direct way

        def edge(b: int) -> None:
            if not fresh and b < pre_nb:
                edges.add(b)

        for op in txn.ops:
            code = op[0]
            if code in _GUARDS:
                if code == _ASSERT_EXISTS:
                    if not exists:
                        raise StoreError(errno.ENOENT, f"no object {oid!r}")
                elif code == _ASSERT_VERSION:
                    if pre_version != op[1]:
                        raise StoreError(errno.ECANCELED,
                                         f"version is {pre_version}, expected {op[1]}")
                else:
                    if not exists:
                        raise StoreError(errno.ENOENT, f"no object {oid!r}")
                    _, name, cmp, value = op
                    cur = xattrs.get(name)
                    if isinstance(value, int):
                        try:
                            have = int(cur.decode("ascii")) if cur else 0
                        except (UnicodeDecodeError, ValueError):
                            raise StoreError(errno.EINVAL,
                                             f"xattr {name!r} is not a number") from None
                        ok = _CMP[cmp](have, value)
                    else:
                        ok = _CMP[cmp](cur if cur is not None else b"", value)
                    if not ok:
                        raise StoreError(errno.ECANCELED, f"cmpxattr {name!r} failed")
                continue
            mutates = True
            if code in (_CREATE, _CREATE_EXCL):
                if exists and code == _CREATE_EXCL:
                    raise StoreError(errno.EEXIST, f"object {oid!r} exists")
                if not exists:
                    ops.append((_CREATE,))
                    exists = True
            elif code in (_WRITE, _WRITEFULL):
                _, off, segs, n = op
                if code == _WRITEFULL:
                    off = 0
                if off < 0:
                    raise StoreError(errno.EINVAL, "negative offset")
                end = off + n
                if end > maxsize:
                    raise StoreError(errno.EFBIG, f"write past {maxsize} bytes")
                if not exists:
                    ops.append((_CREATE,))
                    exists = True
                if n:
                    b0, b1 = off // bs, (end - 1) // bs
                    if n >= self.direct_write_min:
                        big = True
                    if off % bs:
                        edge(b0)
                    if end % bs and end < size:
                        edge(b1)
                    prealloc.append((b0, b1))
                    ops.append((_WRITE, off, segs, n))
                    size = max(size, end)
                if code == _WRITEFULL and size != n:
                    if n % bs:
                        edge(n // bs)
                    ops.append((_TRUNCATE, n))
                    size = n
            elif code == _ZERO:
                _, off, length = op
                if off < 0 or length < 0:
                    raise StoreError(errno.EINVAL, "negative offset or length")
                if off + length > maxsize:
                    raise StoreError(errno.EFBIG, f"zero past {maxsize} bytes")
                end = min(off + length, size)
                if exists and off < end:
                    if off % bs:
                        edge(off // bs)
                    if end % bs and end < size:
                        edge(end // bs)
                    ops.append((_ZERO, off, end - off))
            elif code == _TRUNCATE:
                new = op[1]
                if new < 0:
                    raise StoreError(errno.EINVAL, "negative size")
                if new > maxsize:
                    raise StoreError(errno.EFBIG, f"truncate past {maxsize} bytes")
                if not exists:
                    ops.append((_CREATE,))
                    exists = True
                if new != size:
                    if new < size and new % bs:
                        edge(new // bs)
                    ops.append((_TRUNCATE, new))
                    size = new
            elif code == _DELETE:
                if not exists:
                    raise StoreError(errno.ENOENT, f"no object {oid!r}")
                ops.append((_DELETE,))
                exists, size, xattrs, xcopied, fresh = False, 0, {}, True, True
                prealloc.clear()
            elif code in (_SETXATTR, _RMXATTR, _APPENDXATTR):
                name = op[1]
                if not isinstance(name, str) or not name or len(name.encode()) > MAX_XATTR_NAME:
                    raise StoreError(errno.EINVAL, "bad xattr name")
                if code != _RMXATTR:
                    if code == _APPENDXATTR and not 0 <= len(op[2]) <= op[3]:
                        raise StoreError(errno.EINVAL, "appendxattr keeps less than it appends")
                    if len(op[2]) > MAX_XATTR_VALUE or (code == _APPENDXATTR
                                                        and op[3] > MAX_XATTR_VALUE):
                        raise StoreError(errno.E2BIG, f"xattr value over {MAX_XATTR_VALUE}")
                    if not exists:
                        ops.append((_CREATE,))
                        exists = True
                else:
                    if not exists:
                        raise StoreError(errno.ENOENT, f"no object {oid!r}")
                    if name not in xattrs:
                        raise StoreError(errno.ENODATA, f"no xattr {name!r}")
                if not xcopied:
                    xattrs, xcopied = dict(xattrs), True
                if code == _SETXATTR:
                    xattrs[name] = op[2]
                elif code == _APPENDXATTR:
                    xattrs[name] = _appended(xattrs.pop(name, b""), op[2], op[3])
                else:
                    del xattrs[name]
                ops.append(op)
            else:
                raise StoreError(errno.EINVAL, f"unknown op {code}")
        prepared: dict[int, bytearray] = {}
        if edges and obj is not None:
            for b in sorted(edges):
                if b * bs < obj.size and obj.alloc[b]:
                    prepared[b] = self._verified_block(oid, obj, b)
        direct = False
        if self.direct_write_min and big:
            data_ops = [i for i, o in enumerate(ops) if o[0] in (_WRITE, _ZERO, _TRUNCATE,
                                                                   _DELETE)]
            if len(data_ops) == 1 and ops[data_ops[0]][0] == _WRITE:
                _, off, segs, n = ops[data_ops[0]]
                b0, b1 = off // bs, (off + n) // bs - 1
                if (n >= self.direct_write_min and not off % bs and not n % bs and
                        (obj is None or b0 >= len(obj.alloc)
                         or not obj.alloc[b0:b1 + 1].any())):
                    ops[data_ops[0]] = (_WRITE_DIRECT, off, segs, n)
                    direct = True
        return ops, mutates, prepared, prealloc, direct

    def _verified_block(self, oid: str, obj: _Obj, b: int) -> bytearray:
        blk = self._read_block_raw(oid, obj, b)
        got = crc32c(blk)
        want = int(obj.crcs[b])
        if got != want:
            raise self._eio(oid, b, want, got)
        return blk

    def _preallocate(self, oid: str, obj: _Obj | None, ranges: list[tuple[int, int]]
                     ) -> list[tuple[int, int]]:
        """Reserve disk space for blocks about to be filled, so a full disk (or a file that
        may not grow) fails the transaction before it is journaled rather than while
        writing the data file."""
        if not self._prealloc or not ranges:
            return []
        bs = self._bs
        todo: list[tuple[int, int]] = []
        for b0, b1 in ranges:
            if obj is None or b0 >= len(obj.alloc):
                todo.append((b0, b1))
                continue
            if b0 == b1:  # the common small write: one block, no numpy temporaries
                if not obj.alloc[b0]:
                    todo.append((b0, b0))
                continue
            seg = obj.alloc[b0:b1 + 1]
            if len(seg) == b1 - b0 + 1 and seg.all():
                continue
            holes = np.ones(b1 - b0 + 1, dtype=np.bool_)
            holes[: len(seg)] = ~seg
            idx = np.flatnonzero(np.diff(np.concatenate(([0], holes.view(np.int8), [0]))))
            for s, e in zip(idx[0::2].tolist(), idx[1::2].tolist()):
                todo.append((b0 + s, b0 + e - 1))
        if not todo:
            return []
        fd = self._fd(oid)
        done: list[tuple[int, int]] = []
        for b0, b1 in todo:
            try:
                # mode 0, not KEEP_SIZE: the file may grow here, as the whole-block data
                # write would make it, so a limit on its size (RLIMIT_FSIZE, the
                # filesystem's maximum) fails now, before the journal, and not in that
                # data write, after it, which would leave the store failed. The file's
                # size means nothing to reads (the object's size is in its metadata)
                fallocate(fd, 0, b0 * bs, (b1 - b0 + 1) * bs)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self._prealloc = False
                    return done
                self._undo_prealloc(oid, obj, done)
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise StoreError(errno.ENOSPC, f"no space for object data: {e}") from None
                raise StoreError(errno.EIO, f"fallocate: {e}") from None
            done.append((b0, b1))
        return done

    def _undo_prealloc(self, oid: str, obj: _Obj | None, ranges: list[tuple[int, int]]) -> None:
        """Give back space reserved for a transaction that was not applied (best effort)."""
        if obj is None:
            self._close_fd(oid)
            with contextlib.suppress(OSError):
                os.unlink(self._path(oid)[1])
            return
        if not self._punch:
            return
        bs = self._bs
        for b0, b1 in ranges:
            for b in range(b0, b1 + 1):  # only blocks that are still holes
                if b >= len(obj.alloc) or not obj.alloc[b]:
                    with contextlib.suppress(OSError):
                        fallocate(self._fd(oid), _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                                  b * bs, bs)

    def _journal(self, seq: int, oid: str, mtime: float, ops: list[tuple]) -> None:
        """Append one record; on failure truncate it away so the journal stays clean."""
        iov = _encode_txn(oid, mtime, ops)
        pcrc = 0
        total = 0
        for b in iov:
            pcrc = crc32c(b, pcrc)
            total += len(b)
        hdr = _J_HDR.pack(_J_MAGIC, total, seq, self._jsalt, pcrc)
        hdr += struct.pack("<I", crc32c(hdr))
        pos = self._jpos
        try:
            _pwritev_all(self._jfd, [hdr, *iov], pos, _J_HDR_LEN + total)
        except OSError as e:
            try:
                os.ftruncate(self._jfd, pos)
            except OSError as e2:
                self._failed = StoreError(errno.EIO, f"cannot roll back journal: {e2}")
                log.critical("%s", self._failed)
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                log.warning("journal full (%s): transaction on %r refused", e, oid)
                raise StoreError(errno.ENOSPC, f"journal: {e.strerror}") from None
            raise StoreError(errno.EIO, f"journal write: {e}") from None
        self._jpos = pos + _J_HDR_LEN + total

    def _apply_ops(self, oid: str, ops: list[tuple], seq: int, mtime: float,
                   prepared: dict[int, bytearray], *, replay: bool) -> int:
        """Carry out effective ops on the data file and the metadata (also used by replay)."""
        st = _TxnState(self._objs.get(oid), prepared, replay)
        for op in ops:
            code = op[0]
            if code == _WRITE:
                self._do_write(oid, st, op[1], op[2], op[3])
            elif code == _WRITE_DIRECT:
                _, off, n, crcs = op
                b0, b1 = off // self._bs, (off + n) // self._bs - 1
                obj = st.obj
                obj.reserve(b1 + 1)
                obj.crcs[b0:b1 + 1] = crcs
                obj.alloc[b0:b1 + 1] = True
                obj.size = max(obj.size, off + n)
                self._forget(st, b0, b1)
                if not st.replay:
                    self._direct_pending.add(oid)
            elif code == _ZERO:
                self._do_zero(oid, st, op[1], op[2])
            elif code == _TRUNCATE:
                self._do_truncate(oid, st, op[1])
            elif code == _CREATE:
                if st.obj is None:
                    st.obj = _Obj(0)
                    self._objs[oid] = st.obj
                    bisect.insort(self._sorted, oid)
                    self._fd(oid)
                    self._new_dirs.add(self._path(oid)[0])
            elif code == _DELETE:
                if st.obj is not None:
                    del self._objs[oid]
                    i = bisect.bisect_left(self._sorted, oid)
                    del self._sorted[i]
                    st.obj = None
                    st.bc.clear()
                    st.prepared.clear()
                self._close_fd(oid)
                if not st.replay:  # replay unlinks at the end, if still deleted
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(oid)[1])
            elif code == _SETXATTR:
                st.obj.xattrs[op[1]] = op[2]
            elif code == _RMXATTR:
                st.obj.xattrs.pop(op[1], None)
            elif code == _APPENDXATTR:
                xattrs = st.obj.xattrs
                xattrs[op[1]] = _appended(xattrs.pop(op[1], b""), op[2], op[3])
        self._dirty.add(oid)
        if st.obj is not None:
            st.obj.version = seq
            st.obj.mtime = mtime
        return seq

    def _base(self, oid: str, st: _TxnState, b: int) -> bytearray:
        """The current full image of block ``b`` for a partial update."""
        blk = st.bc.get(b)
        if blk is not None:
            return blk
        blk = st.prepared.pop(b, None)
        if blk is None:
            obj = st.obj
            if b < len(obj.alloc) and obj.alloc[b] and b * self._bs < obj.size:
                # Written earlier in this txn (trusted), or replay (crcs are rebuilt as we go).
                blk = self._read_block_raw(oid, obj, b)
            else:
                blk = bytearray(self._bs)
        st.bc[b] = blk
        return blk

    def _forget(self, st: _TxnState, b0: int, b1: int) -> None:
        """Blocks b0..b1 were replaced wholesale: drop cached images."""
        for d in (st.bc, st.prepared):
            if d:
                for b in [b for b in d if b0 <= b <= b1]:
                    del d[b]

    def _do_write(self, oid: str, st: _TxnState, off: int, segs: list[memoryview],
                  n: int) -> None:
        bs = self._bs
        obj = st.obj
        end = off + n
        if n == bs and not off % bs and len(segs) == 1:  # one whole block: the usual 4 KiB
            b = off // bs
            obj.reserve(b + 1)
            if st.bc or st.prepared:
                self._forget(st, b, b)
            self._write_blocks(oid, st, b, segs, 1)
            obj.crcs[b] = crc32c(segs[0])
            obj.alloc[b] = True
            if end > obj.size:
                obj.size = end
            return
        b0, b1 = off // bs, (end - 1) // bs
        obj.reserve(b1 + 1)
        iov: list = []
        crcs: list[int] = []
        pos = 0  # position within the payload
        b = b0
        if off % bs or end < (b0 + 1) * bs:  # partial first block
            blk = self._base(oid, st, b0)
            k = min(end, (b0 + 1) * bs) - off
            _copy_into(blk, off - b0 * bs, segs, 0, k)
            iov.append(blk)
            crcs.append(crc32c(blk))
            pos = k
            b += 1
        nfull = max(0, min(b1 + 1, end // bs) - b)
        if nfull:
            if len(segs) == 1:
                mv = segs[0][pos:pos + nfull * bs]
                iov.append(mv)
                crcs.extend(crc32c(mv[i:i + bs]) for i in range(0, nfull * bs, bs))
            else:
                pieces = _slice(segs, pos, pos + nfull * bs)
                iov.extend(pieces)
                crcs.extend(_crc_blocks(pieces, nfull, bs))
            self._forget(st, b, b + nfull - 1)
            pos += nfull * bs
            b += nfull
        if b <= b1:  # partial last block
            blk = self._base(oid, st, b1)
            _copy_into(blk, 0, segs, pos, n)
            iov.append(blk)
            crcs.append(crc32c(blk))
        self._write_blocks(oid, st, b0, iov, b1 - b0 + 1)
        if b0 == b1:
            obj.crcs[b0] = crcs[0]
            obj.alloc[b0] = True
        else:
            obj.crcs[b0:b1 + 1] = crcs
            obj.alloc[b0:b1 + 1] = True
        obj.size = max(obj.size, end)

    def _do_zero(self, oid: str, st: _TxnState, off: int, length: int) -> None:
        obj = st.obj
        if obj is None:
            return
        bs = self._bs
        end = min(off + length, obj.size)
        if off >= end:
            return
        b0, b1 = off // bs, (end - 1) // bs
        # whole blocks: those fully inside [off, end), the object's last block counting as
        # whole when the range runs to the object's end (bytes past the end are zeros anyway)
        f0 = -(-off // bs)
        f1 = (end // bs - 1) if end < obj.size or end % bs == 0 else b1
        for b in {b0, b1}:
            if f0 <= b <= f1:
                continue
            if b < len(obj.alloc) and obj.alloc[b]:
                blk = self._base(oid, st, b)
                lo = max(off, b * bs) - b * bs
                hi = min(end, (b + 1) * bs) - b * bs
                blk[lo:hi] = self._zero[: hi - lo]
                self._write_blocks(oid, st, b, [blk], 1)
                obj.crcs[b] = crc32c(blk)
        if f0 <= f1:
            f1c = min(f1, len(obj.alloc) - 1)
            if f0 <= f1c and obj.alloc[f0:f1c + 1].any():
                if not st.replay:  # replay punches at the end
                    self._punch_range(oid, f0 * bs, (f1c - f0 + 1) * bs)
                obj.alloc[f0:f1c + 1] = False
            self._forget(st, f0, f1)

    def _write_blocks(self, oid: str, st: _TxnState, b0: int, iov: list, nblocks: int
                      ) -> None:
        """pwritev ``nblocks`` whole blocks starting at block b0. During replay, blocks that
        a later direct write fills are skipped: the file already holds that later data."""
        bs = self._bs
        prot = self._protect.get(oid) if st.replay and self._protect else None
        if prot:
            idx = self._replay_idx
            fd = self._fd(oid)
            b = b0
            for buf in iov:
                mv = memoryview(buf)
                for i in range(0, len(mv), bs):
                    if prot.get(b, -1) <= idx:
                        _pwritev_all(fd, [mv[i:i + bs]], b * bs)
                    b += 1
            return
        _pwrite_pieces(self._fd(oid), iov, b0 * bs, nblocks * bs, self.data_write_piece)

    def _punch_range(self, oid: str, off: int, length: int) -> None:
        if not self._punch:
            return
        try:
            fallocate(self._fd(oid), _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, off, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._punch = False  # holes are tracked in metadata; the space just stays used

    def _do_truncate(self, oid: str, st: _TxnState, new: int) -> None:
        obj = st.obj
        bs = self._bs
        old = obj.size
        if new < old:
            nb = -(-new // bs)
            if nb < len(obj.alloc):
                obj.alloc[nb:] = False
            self._forget(st, nb, 1 << 62)
            if new % bs:
                p = new // bs
                if obj.alloc[p]:
                    blk = self._base(oid, st, p)
                    blk[new % bs:] = self._zero[: bs - new % bs]
                    obj.crcs[p] = crc32c(blk)
                    if st.replay:
                        self._write_blocks(oid, st, p, [blk], 1)
            if not st.replay:  # replay truncates at the end (later direct data lives there)
                os.ftruncate(self._fd(oid), new)
        else:
            obj.reserve(-(-new // bs))  # arrays always cover the size (new blocks are holes)
        obj.size = new

    # -- commit / checkpoint ------------------------------------------------------------------

    def commit(self) -> int:
        """Make everything applied so far durable with one fdatasync; return the durable seq.

        Safe to call from another thread while ``apply`` runs; checkpoints when the journal
        segment has grown past ``journal_max``."""
        with self._commit_lock:
            plan = self._plan_commit()
            if plan is None:
                return self._durable
            ok = False
            try:
                if plan.seq > self._durable:
                    for oid in plan.direct:  # direct data must be durable before its record
                        self._sync_object_file(oid)
                    os.fdatasync(plan.journal_fd)
                ok = True
            except OSError as e:
                raise StoreError(errno.EIO, f"commit: {e}") from None
            finally:
                self._settle_commit(plan, ok)
            if plan.jpos >= self.journal_max:
                self._checkpoint_quietly()
            return self._durable

    # the same commit in two halves, for a caller that does the syncs itself and awaits
    # them (the OSD, with ``rbdpy.osd.aiosync``): ``begin_commit``, then fdatasync every
    # file of ``CommitPlan.direct_paths`` and then ``journal_fd``, then ``end_commit``

    def begin_commit(self) -> CommitPlan | None:
        """Hold the commit lock until ``end_commit`` and say what to sync; None (nothing
        held) if a commit or checkpoint is under way elsewhere, or the store is closed:
        call ``commit`` then."""
        if not self._commit_lock.acquire(blocking=False):
            return None
        try:
            plan = self._plan_commit()
        except BaseException:
            self._commit_lock.release()
            raise
        if plan is None:
            self._commit_lock.release()
        return plan

    def end_commit(self, plan: CommitPlan, synced: bool) -> int:
        """``synced``: the plan's files and then its journal were fdatasynced. Releases the
        commit lock; returns the durable seq. A due checkpoint is ``checkpoint_if_due``'s
        (it can take a while: run it off the caller's loop)."""
        try:
            self._settle_commit(plan, synced)
        finally:
            self._commit_lock.release()
        return self._durable

    def checkpoint_if_due(self) -> int:
        """Checkpoint if the journal segment has grown past ``journal_max``."""
        with self._commit_lock:
            if self._jpos >= self.journal_max and not self._closed:
                self._checkpoint_quietly()
            return self._durable

    def _plan_commit(self) -> CommitPlan | None:
        with self._lock:
            if self._closed:
                return None
            direct, self._direct_pending = self._direct_pending, set()
            return CommitPlan(self._seq, self._jfd, self._jpos, direct,
                              [self._path(oid)[1] for oid in sorted(direct)])

    def _settle_commit(self, plan: CommitPlan, synced: bool) -> None:
        if synced:
            self._durable = max(self._durable, plan.seq)
        else:
            with self._lock:
                self._direct_pending |= plan.direct

    def _checkpoint_quietly(self) -> None:
        try:
            self._checkpoint()
        except StoreError as e:  # the commit itself succeeded; retried next time
            log.warning("checkpoint failed, journal keeps growing: %s", e)

    def _sync_object_file(self, oid: str) -> None:
        """fdatasync an object's file through a private fd (the LRU may close its own)."""
        try:
            fd = os.open(self._path(oid)[1], os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # deleted since; that delete is journaled
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def committed_seq(self) -> int:
        return self._durable

    @property
    def applied_seq(self) -> int:
        """The last sequence applied (journaled, visible to reads), durable or not."""
        return self._seq

    def checkpoint(self) -> int:
        """Force a checkpoint now (the journal restarts empty); returns the durable seq."""
        with self._commit_lock:
            self._checkpoint()
            return self._durable

    def _checkpoint(self) -> None:
        """Persist metadata and data files up to now; drop the journal segments it covers.

        Called with the commit lock held. Only the snapshot happens under the state lock."""
        with self._lock:
            if self._closed or (not self._dirty and self._jpos <= _SEG_LEN):
                return
            seq = self._seq
            old_fd, old_gen = self._jfd, self._jgen
            try:
                new_fd, salt = self._new_segment(old_gen + 1)
            except OSError as e:
                raise StoreError(errno.ENOSPC if e.errno == errno.ENOSPC else errno.EIO,
                                 f"new journal segment: {e}") from None
            self._jfd, self._jgen, self._jpos = new_fd, old_gen + 1, _SEG_LEN
            self._jsalt = salt
            dirty, self._dirty = self._dirty, set()
            new_dirs, self._new_dirs = self._new_dirs, set()
            bs = self._bs
            snaps = [(oid, _encode_obj(oid, self._objs.get(oid), bs),
                      oid in self._objs) for oid in sorted(dirty)]
        try:
            os.fdatasync(old_fd)
            self._durable = max(self._durable, seq)
            _fsync_dir(self.path)  # the new segment's directory entry
            for oid, _rec, present in snaps:
                if present:
                    self._sync_object_file(oid)
            for d in new_dirs:
                _fsync_dir(d)
            body = [_M_PAYLOAD.pack(_M_DELTA, seq, old_gen + 1, bs, self.max_object_size,
                                    len(snaps))]
            body += [rec for _oid, rec, _p in snaps]
            record = _meta_record(b"".join(body))
            end = os.fstat(self._meta_fd).st_size
            try:
                _pwritev_all(self._meta_fd, [record], end)
                os.fdatasync(self._meta_fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._meta_fd, end)
                raise
        except OSError as e:
            with self._lock:  # the next checkpoint must cover these objects again
                self._dirty |= dirty
                self._new_dirs |= new_dirs
            self._old_jfds.append(old_fd)  # its segment is still needed until a checkpoint
            raise StoreError(errno.ENOSPC if e.errno == errno.ENOSPC else errno.EIO,
                             f"checkpoint: {e}") from None
        os.close(old_fd)
        while self._old_jfds:
            os.close(self._old_jfds.pop())
        self._retire_segments(old_gen)
        if end + len(record) > max(4 << 20, 4 * self._meta_full_size):
            self._compact_meta()

    def _new_segment(self, gen: int) -> tuple[int, int]:
        """Open journal segment ``gen`` with a fresh salt, recycling the spare: overwriting
        allocated blocks makes each commit's fdatasync cheaper, and freeing a big file (with
        discard) is slow."""
        spare = os.path.join(self.path, "journal.spare")
        path = self._jpath(gen)
        try:
            os.rename(spare, path)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            return fd, self._init_segment(fd, gen)
        except OSError:
            os.close(fd)
            raise

    @staticmethod
    def _init_segment(fd: int, gen: int) -> int:
        salt = int.from_bytes(os.urandom(8), "little")
        hdr = _S_HDR.pack(_S_MAGIC, gen, salt)
        hdr += struct.pack("<I", crc32c(hdr))
        _pwritev_all(fd, [hdr.ljust(_SEG_LEN, b"\0")], 0)
        return salt

    def _retire_segments(self, upto: int) -> None:
        """Drop the segments a checkpoint made redundant, keeping the newest as the spare."""
        spare = os.path.join(self.path, "journal.spare")
        gens = sorted(int(n.split(".", 1)[1]) for n in os.listdir(self.path)
                      if n.startswith("journal.") and n.split(".", 1)[1].isdigit())
        for g in reversed([g for g in gens if g <= upto]):
            path = self._jpath(g)
            try:
                if (not os.path.exists(spare)
                        and os.stat(path).st_size <= 2 * self.journal_max + (1 << 20)):
                    os.rename(path, spare)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def _compact_meta(self) -> None:
        """Rewrite the checkpoint log as one FULL record (tmp, fsync, rename, fsync dir)."""
        data = memoryview(_read_all(self._meta_fd))
        recs: dict[str, memoryview] = {}
        seq = gen = 0
        for kind, rseq, rgen, _bs, _mx, count, payload, _end in _iter_meta(data):
            if kind == _M_FULL:
                recs.clear()
            pos = _M_PAYLOAD.size
            for _ in range(count):
                oid, present, start, pos = _skip_obj(payload, pos)
                if present:
                    recs[oid] = payload[start:pos]
                else:
                    recs.pop(oid, None)
            seq, gen = rseq, rgen
        path = os.path.join(self.path, "meta")
        size = self._write_full_meta(path, seq, gen, [recs[k] for k in sorted(recs)])
        old = self._meta_fd
        self._meta_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.close(old)
        self._meta_full_size = size

    def _write_full_meta(self, path: str, seq: int, gen: int, recs: list) -> int:
        body = [_M_PAYLOAD.pack(_M_FULL, seq, gen, self._bs, self.max_object_size, len(recs))]
        record = _meta_record(b"".join([*body, *recs]))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwritev_all(fd, [record], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(self.path)
        return len(record)

    def close(self) -> None:
        """Commit, checkpoint (so the next open replays nothing) and release every fd."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.commit()
                self.checkpoint()
        finally:
            with self._commit_lock, self._lock:
                self._closed = True
                for fd in self._fds.values():
                    os.close(fd)
                self._fds.clear()
                os.close(self._jfd)
                os.close(self._meta_fd)
                for fd in self._old_jfds:
                    os.close(fd)
                self._old_jfds.clear()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads --------------------------------------------------------------------------------

    def read(self, oid: str, offset: int, length: int,
             out: memoryview | bytearray | None = None) -> bytes | int:
        """Read ``length`` bytes at ``offset`` (short past the end; holes are zeros).

        Every block read is checked against its crc32c: EIO rather than wrong bytes. With
        ``out`` the bytes land there (at most ``len(out)``) and the count is returned."""
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            if offset < 0 or length < 0:
                raise StoreError(errno.EINVAL, "negative offset or length")
            n = max(0, min(offset + length, obj.size) - offset)
            if out is not None:
                dst = memoryview(out).cast("B") if not isinstance(out, bytearray) else \
                    memoryview(out)
                n = min(n, len(dst))
                if n:
                    try:
                        self._read_into(oid, obj, offset, n, dst[:n])
                    except StoreError:
                        _zero_fill(dst[:n])
                        raise
                return n
            if n == 0:
                return b""
            bs = self._bs
            b0, b1 = offset // bs, (offset + n - 1) // bs
            end = offset + n
            if (offset % bs == 0 and (end % bs == 0 or end == obj.size)
                    and (obj.alloc[b0] if b0 == b1 else obj.alloc[b0:b1 + 1].all())):
                data = os.pread(self._fd(oid), n, offset)  # one copy, straight to bytes
                if len(data) < n:
                    data += bytes(n - len(data))
                self._verify(oid, obj, b0, memoryview(data), n)
                return data
            buf = bytearray(n)
            self._read_into(oid, obj, offset, n, memoryview(buf))
            return bytes(buf)

    def _verify(self, oid: str, obj: _Obj, b0: int, mv: memoryview, n: int) -> None:
        """Check the crcs of consecutive whole blocks starting at block b0 held in mv[:n]
        (the last block may stop at the object's end: the rest counts as zeros)."""
        bs = self._bs
        if n <= bs:
            got = crc32c(mv[:n])
            if n < bs:
                got = crc32c(self._zero[: bs - n], got)
            want = int(obj.crcs[b0])
            if got != want:
                raise self._eio(oid, b0, want, got)
            return
        got_l = [crc32c(mv[i:i + bs]) for i in range(0, n, bs)]
        tail = n % bs
        if tail:
            got_l[-1] = crc32c(self._zero[: bs - tail], got_l[-1])
        got = np.array(got_l, dtype=np.uint32)
        want = obj.crcs[b0:b0 + len(got_l)]
        bad = np.flatnonzero(got != want)
        if len(bad):
            i = int(bad[0])
            raise self._eio(oid, b0 + i, int(want[i]), int(got[i]))

    def _read_into(self, oid: str, obj: _Obj, off: int, n: int, dst: memoryview) -> None:
        bs = self._bs
        end = off + n
        b0, b1 = off // bs, (end - 1) // bs
        seg = obj.alloc[b0:b1 + 1]
        if seg.all():
            self._read_run(oid, obj, b0, b1, off, end, dst)
            return
        if not seg.any():
            _zero_fill(dst)
            return
        cuts = (np.flatnonzero(np.diff(seg.view(np.int8))) + 1).tolist()
        bounds = [0, *cuts, len(seg)]
        for i in range(len(bounds) - 1):
            rb0, rb1 = b0 + bounds[i], b0 + bounds[i + 1] - 1
            lo, hi = max(off, rb0 * bs), min(end, (rb1 + 1) * bs)
            d = dst[lo - off:hi - off]
            if seg[bounds[i]]:
                self._read_run(oid, obj, rb0, rb1, lo, hi, d)
            else:
                _zero_fill(d)

    def _read_run(self, oid: str, obj: _Obj, rb0: int, rb1: int, lo: int, hi: int,
                  dst: memoryview) -> None:
        """Read [lo, hi) of allocated blocks rb0..rb1 into dst, verifying whole blocks.

        Middle blocks land straight in ``dst``; a partially requested edge block goes
        through a scratch block so it can be checked whole. One preadv for the lot."""
        bs = self._bs
        size = obj.size
        start = rb0 * bs
        stop = min((rb1 + 1) * bs, size)  # valid bytes of the run
        iov: list = []
        head = tail = None
        d_lo = 0  # dst position for the first direct byte
        if lo != start or (rb0 == rb1 and hi != stop):
            head = bytearray(min(bs, stop - start))
            iov.append(head)
            d_lo = (rb0 + 1) * bs - lo
            first_direct = rb0 + 1
        else:
            first_direct = rb0
        last_direct = rb1
        if rb1 > rb0 and hi != stop:
            tail = bytearray(stop - rb1 * bs)
            last_direct = rb1 - 1
        direct = None
        if first_direct <= last_direct:
            direct_end = min((last_direct + 1) * bs, stop)
            direct = dst[d_lo:d_lo + direct_end - first_direct * bs]
            iov.append(direct)
        if tail is not None:
            iov.append(tail)
        want = stop - start
        got = os.preadv(self._fd(oid), iov, start)
        if got < want:  # file shorter than it should be: zeros, then the crc decides
            pos = 0
            for b in iov:
                if pos + len(b) > got:
                    _zero_fill(memoryview(b)[max(0, got - pos):])
                pos += len(b)
        if head is not None:
            self._verify(oid, obj, rb0, memoryview(head), len(head))
        if direct is not None:
            self._verify(oid, obj, first_direct, direct, len(direct))
        if tail is not None:
            self._verify(oid, obj, rb1, memoryview(tail), len(tail))
        if head is not None:
            h_lo = lo - start
            h_hi = min(hi - start, len(head))
            dst[: h_hi - h_lo] = memoryview(head)[h_lo:h_hi]
        if tail is not None:
            k = hi - rb1 * bs
            dst[len(dst) - k:] = memoryview(tail)[:k]

    def sparse_read(self, oid: str, offset: int, length: int
                    ) -> tuple[list[tuple[int, int]], bytes]:
        """The allocated extents (block granularity, clipped to the range and the object's
        size) and their bytes concatenated; holes in between are left out."""
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            if offset < 0 or length < 0:
                raise StoreError(errno.EINVAL, "negative offset or length")
            extents = self._extents(obj, offset, length)
            total = sum(ln for _o, ln in extents)
            buf = bytearray(total)
            mv = memoryview(buf)
            pos = 0
            for o, ln in extents:
                self._read_into(oid, obj, o, ln, mv[pos:pos + ln])
                pos += ln
            return extents, bytes(buf)

    def _extents(self, obj: _Obj, offset: int, length: int) -> list[tuple[int, int]]:
        bs = self._bs
        end = min(offset + length, obj.size)
        if offset >= end:
            return []
        b0, b1 = offset // bs, (end - 1) // bs
        seg = obj.alloc[b0:b1 + 1]
        edges = np.flatnonzero(np.diff(np.concatenate(([0], seg.view(np.int8), [0]))))
        out = []
        for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            lo = max(offset, (b0 + s) * bs)
            hi = min(end, (b0 + e) * bs)
            out.append((lo, hi - lo))
        return out

    def extents(self, oid: str, offset: int = 0, length: int | None = None
                ) -> list[tuple[int, int]]:
        """Allocated extents only (no data), for NBD block status / sparse copies."""
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            return self._extents(obj, offset, obj.size if length is None else length)

    def stat(self, oid: str) -> ObjectStat:
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            return ObjectStat(obj.size, obj.mtime, obj.version)

    def exists(self, oid: str) -> bool:
        return oid in self._objs

    def getxattr(self, oid: str, name: str) -> bytes:
        with self._lock:
            self._check_open()
            v = self._get(oid).xattrs.get(name)
            if v is None:
                raise StoreError(errno.ENODATA, f"no xattr {name!r} on {oid!r}")
            return v

    def getxattrs(self, oid: str) -> dict[str, bytes]:
        with self._lock:
            self._check_open()
            return dict(self._get(oid).xattrs)

    def list_objects(self, start_after: str | None = None, max_entries: int = 1000
                     ) -> tuple[list[str], str | None]:
        """A sorted page of object ids after ``start_after``; the marker for the next page is
        None when this page reaches the end."""
        with self._lock:
            self._check_open()
            i = 0 if start_after is None else bisect.bisect_right(self._sorted, start_after)
            page = self._sorted[i:i + max(0, max_entries)]
            more = i + len(page) < len(self._sorted)
            return page, (page[-1] if more and page else None)

    def __len__(self) -> int:
        return len(self._objs)


# -- module helpers ----------------------------------------------------------------------------


def _segment_salt(fd: int, gen: int) -> int | None:
    """The salt from a journal segment's header, None if the header is not valid."""
    hdr = os.pread(fd, _S_HDR.size + 4, 0)
    if len(hdr) < _S_HDR.size + 4:
        return None
    magic, hgen, salt = _S_HDR.unpack_from(hdr, 0)
    (crc,) = struct.unpack_from("<I", hdr, _S_HDR.size)
    if magic != _S_MAGIC or hgen != gen or crc != crc32c(memoryview(hdr)[:_S_HDR.size]):
        return None
    return salt


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while pos < size:
        b = os.pread(fd, min(size - pos, 64 << 20), pos)
        if not b:
            break
        chunks.append(b)
        pos += len(b)
    return b"".join(chunks)


def _appended(old: bytes, data: bytes, keep: int) -> bytes:
    """The value of an xattr after appendxattr (the same computation at apply and replay)."""
    new = old + data
    return new[len(new) - keep:] if len(new) > keep else new


def _zero_fill(mv: memoryview) -> None:
    if len(mv):
        np.frombuffer(mv, dtype=np.uint8)[:] = 0


def _slice(segs: list[memoryview], start: int, end: int) -> list[memoryview]:
    """The pieces of a segmented payload covering [start, end)."""
    out = []
    pos = 0
    for s in segs:
        n = len(s)
        if pos + n > start and pos < end:
            out.append(s[max(0, start - pos):min(n, end - pos)])
        pos += n
        if pos >= end:
            break
    return out


def _copy_into(blk: bytearray, at: int, segs: list[memoryview], start: int, end: int) -> None:
    for p in _slice(segs, start, end):
        blk[at:at + len(p)] = p
        at += len(p)


def _crc_blocks(pieces: list[memoryview], nblocks: int, bs: int) -> list[int]:
    """Per-block crc32c over block-aligned data given as arbitrary pieces."""
    out = []
    crc = 0
    fill = 0
    for p in pieces:
        i = 0
        while i < len(p):
            k = min(bs - fill, len(p) - i)
            crc = crc32c(p[i:i + k], crc)
            fill += k
            i += k
            if fill == bs:
                out.append(crc)
                crc = fill = 0
    assert len(out) == nblocks
    return out


def _skip_obj(buf: memoryview, pos: int) -> tuple[str, bool, int, int]:
    """Like _decode_obj but only finds the record's extent: (oid, present, start, end)."""
    start = pos
    (ln,) = _U16.unpack_from(buf, pos)
    pos += 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    present, _size, _ver, _mt, nb, nx = _OBJ_FIXED.unpack_from(buf, pos)
    pos += _OBJ_FIXED.size
    if not present:
        return oid, False, start, pos
    for _ in range(nx):
        kl, vl = struct.unpack_from("<HI", buf, pos)
        pos += 6 + kl + vl
    pos += 4 * nb + -(-nb // 8)
    return oid, True, start, pos


def _encode_txn(oid: str, mtime: float, ops: list[tuple]) -> list:
    """Journal payload as a buffer list: fixed fields packed, write data by reference."""
    name = oid.encode()
    iov: list = []
    cur = bytearray(_U16.pack(len(name)))
    cur += name
    cur += _TXN_PREFIX.pack(mtime, len(ops))
    for op in ops:
        code = op[0]
        if code == _WRITE:
            cur += _OP_WRITE.pack(_WRITE, op[1], op[3])
            iov.append(bytes(cur))
            cur = bytearray()
            iov.extend(op[2])
        elif code == _WRITE_DIRECT:
            cur += _OP_DIRECT.pack(_WRITE_DIRECT, op[1], op[2], len(op[3]))
            cur += op[3].astype("<u4").tobytes()
        elif code == _ZERO:
            cur += _OP_ZERO.pack(_ZERO, op[1], op[2])
        elif code == _TRUNCATE:
            cur += _OP_TRUNC.pack(_TRUNCATE, op[1])
        elif code in (_CREATE, _DELETE):
            cur.append(code)
        elif code == _SETXATTR:
            k = op[1].encode()
            cur += _OP_XATTR.pack(_SETXATTR, len(k), len(op[2]))
            cur += k
            cur += op[2]
        elif code == _RMXATTR:
            k = op[1].encode()
            cur += _OP_XATTR.pack(_RMXATTR, len(k), 0)
            cur += k
        elif code == _APPENDXATTR:
            k = op[1].encode()
            cur += _OP_APPENDX.pack(_APPENDXATTR, len(k), len(op[2]), op[3])
            cur += k
            cur += op[2]
        else:  # pragma: no cover
            raise AssertionError(code)
    if cur:
        iov.append(bytes(cur))
    return iov


def _decode_txn(buf: memoryview) -> tuple[str, float, list[tuple]]:
    (ln,) = _U16.unpack_from(buf, 0)
    pos = 2
    oid = bytes(buf[pos:pos + ln]).decode()
    pos += ln
    mtime, nops = _TXN_PREFIX.unpack_from(buf, pos)
    pos += _TXN_PREFIX.size
    ops: list[tuple] = []
    for _ in range(nops):
        code = buf[pos]
        if code == _WRITE:
            _, off, n = _OP_WRITE.unpack_from(buf, pos)
            pos += _OP_WRITE.size
            ops.append((_WRITE, off, [buf[pos:pos + n]], n))
            pos += n
        elif code == _WRITE_DIRECT:
            _, off, n, nb = _OP_DIRECT.unpack_from(buf, pos)
            pos += _OP_DIRECT.size
            crcs = np.frombuffer(buf, dtype="<u4", count=nb, offset=pos).astype(np.uint32)
            ops.append((_WRITE_DIRECT, off, n, crcs))
            pos += 4 * nb
        elif code == _ZERO:
            _, off, n = _OP_ZERO.unpack_from(buf, pos)
            pos += _OP_ZERO.size
            ops.append((_ZERO, off, n))
        elif code == _TRUNCATE:
            _, size = _OP_TRUNC.unpack_from(buf, pos)
            pos += _OP_TRUNC.size
            ops.append((_TRUNCATE, size))
        elif code in (_CREATE, _DELETE):
            pos += 1
            ops.append((code,))
        elif code in (_SETXATTR, _RMXATTR):
            _, kl, vl = _OP_XATTR.unpack_from(buf, pos)
            pos += _OP_XATTR.size
            k = bytes(buf[pos:pos + kl]).decode()
            pos += kl
            if code == _SETXATTR:
                ops.append((_SETXATTR, k, bytes(buf[pos:pos + vl])))
                pos += vl
            else:
                ops.append((_RMXATTR, k))
        elif code == _APPENDXATTR:
            _, kl, vl, keep = _OP_APPENDX.unpack_from(buf, pos)
            pos += _OP_APPENDX.size
            k = bytes(buf[pos:pos + kl]).decode()
            pos += kl
            ops.append((_APPENDXATTR, k, bytes(buf[pos:pos + vl]), keep))
            pos += vl
        else:
            raise StoreError(errno.EIO, f"journal record with unknown op {code}")
    return oid, mtime, ops
