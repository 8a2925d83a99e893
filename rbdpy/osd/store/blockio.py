"""Low-level file I/O of the store: fallocate, complete pwritev, directory fsync, per-block
crc32c over segmented data, and the one mapping from an OS error to the StoreError a client
sees.

Why a single mapping: a full disk shows up as ENOSPC, a quota as EDQUOT and a file-size limit
(RLIMIT_FSIZE, a filesystem's maximum) as EFBIG, in whichever file the store happens to be
writing (object data, journal, checkpoint log). To a client they all mean the same thing, "no
space for this", and they must read the same wherever they struck.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

import numpy as np

from rbdpy.crc import crc32c
from rbdpy.msgr.payload import byte_views, slice_segments
from rbdpy.osd.store.errors import StoreError

IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
try:
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except AttributeError:  # pragma: no cover - not Linux
    _fallocate = None

HAVE_FALLOCATE = _fallocate is not None

# what "out of space" looks like to a writer: a full filesystem, a quota, a file-size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def store_error(e: OSError, what: str) -> StoreError:
    """The StoreError for an OS error while writing ``what``: ENOSPC for any form of "no
    space" (``NO_SPACE``), EIO for anything else. Used by every write path of the store
    (object data, its space reservation, the journal, checkpoints)."""
    if e.errno in NO_SPACE:
        return StoreError(errno.ENOSPC, f"{what}: {e.strerror}")
    return StoreError(errno.EIO, f"{what}: {e}")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) (Python only has posix_fallocate, without hole punching)."""
    if _fallocate is None:  # pragma: no cover
        raise OSError(errno.EOPNOTSUPP, "fallocate")
    if _fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def pwritev_all(fd: int, iov: list, pos: int, total: int = -1) -> None:
    """pwritev the whole buffer list, chunked by IOV_MAX, continuing after short writes.
    ``total``, when the caller knows it, is the byte count (the common case is then one
    call and one comparison)."""
    if total >= 0 and len(iov) <= IOV_MAX:
        n = os.pwritev(fd, iov, pos)
        if n == total:
            return
        iov, pos = _after(iov, n), pos + n
    while iov:
        chunk = iov[:IOV_MAX]
        want = sum(len(b) for b in chunk)
        n = os.pwritev(fd, chunk, pos)
        pos += n
        if n == want:
            iov = iov[IOV_MAX:]
            continue
        if n == 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        iov = _after(chunk, n) + iov[IOV_MAX:]  # resume mid-buffer after what was written


def pwrite_pieces(fd: int, iov: list, pos: int, total: int, piece: int) -> None:
    """Write ``total`` bytes of ``iov`` at ``pos`` in calls of at most ``piece`` bytes,
    aligned to multiples of ``piece`` in the file.

    Why: the kernel sizes page-cache folios by the length of each write call, so one 1 MiB
    pwritev leaves 1 MiB folios behind, and every later 4 KiB overwrite in such a folio
    costs several times the kernel CPU of one in a small folio (ext4 walks all its buffers,
    writeback writes the whole folio). Object files take many small overwrites later;
    splitting large writes costs a few syscalls per MiB once."""
    if not piece or total <= piece - pos % piece:
        pwritev_all(fd, iov, pos, total)
        return
    segs = byte_views(iov)
    done = 0
    while done < total:
        n = min(piece - (pos + done) % piece, total - done)
        pwritev_all(fd, slice_segments(segs, done, n, partial=True), pos + done, n)
        done += n


def _after(iov: list, n: int) -> list:
    """What is left of a buffer list after its first ``n`` bytes were written."""
    for i, b in enumerate(iov):
        if n < len(b):
            return [memoryview(b)[n:], *iov[i + 1:]]
        n -= len(b)
    return []


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
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


def zero_fill(mv: memoryview) -> None:
    if len(mv):
        np.frombuffer(mv, dtype=np.uint8)[:] = 0


def copy_into(blk: bytearray, at: int, segs: list[memoryview], start: int, end: int) -> None:
    """Copy bytes [start, end) of a segmented payload into ``blk`` at ``at``."""
    for p in slice_segments(segs, start, end - start, partial=True):
        blk[at:at + len(p)] = p
        at += len(p)


def crc_blocks(pieces: list[memoryview], nblocks: int, bs: int) -> list[int]:
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
