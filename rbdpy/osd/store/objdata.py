"""Object data: one sparse file per object, written in whole blocks, every block checked
against the crc32c its metadata holds.

``DataFiles`` owns the files (paths, an LRU of open fds, space reservation, hole punching,
sync) and carries out the data part of effective ops (write, zero, truncate, a direct write's
metadata) on a file and the object's ``ObjMeta`` together. Blocks not allocated are holes:
never read from the file (they read as zeros whatever it holds) and take no space. Reads
verify every block they touch and raise EIO rather than return bytes that fail their crc.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections import OrderedDict

import numpy as np

from rbdpy.crc import crc32c
from rbdpy.msgr.payload import slice_segments
from rbdpy.osd.store import blockio
from rbdpy.osd.store.blockio import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    copy_into,
    crc_blocks,
    pwrite_pieces,
    pwritev_all,
    store_error,
    zero_fill,
)
from rbdpy.osd.store.errors import StoreError
from rbdpy.osd.store.format import ObjMeta, file_name

log = logging.getLogger(__name__)

_PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


class TxnState:
    """Per-transaction scratch for applying effective ops to one object's data file."""

    __slots__ = ("oid", "obj", "bc", "prepared", "replay", "protect", "idx")

    def __init__(self, oid: str, obj: ObjMeta | None, prepared: dict[int, bytearray],
                 replay: bool, protect: dict[int, int] | None = None, idx: int = 0) -> None:
        self.oid = oid
        self.obj = obj
        self.bc: dict[int, bytearray] = {}  # blocks partially written in this txn (full image)
        self.prepared = prepared  # pre-txn verified images of blocks we will merge into
        self.replay = replay
        self.protect = protect  # replay: block -> index of the last record direct-writing it
        self.idx = idx  # replay: index of this record


class DataFiles:
    """The object files under ``objdir`` (``objdir/<xx>/<name>``, ``xx`` a crc32c bucket)."""

    def __init__(self, objdir: str, block_size: int, max_open_files: int,
                 data_write_piece: int) -> None:
        self.objdir = objdir
        self.bs = block_size
        self.data_write_piece = data_write_piece  # see pwrite_pieces; 0: one call per write
        self.zeros = memoryview(bytes(block_size))  # one block of zeros
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.max_fds = max(4, max_open_files)
        self.prealloc = blockio.HAVE_FALLOCATE  # off once the filesystem says it cannot
        self.punch = blockio.HAVE_FALLOCATE

    def make_dirs(self) -> None:
        os.makedirs(self.objdir, exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(self.objdir, f"{i:02x}"), exist_ok=True)

    # -- files --------------------------------------------------------------------------------

    def path(self, oid: str) -> tuple[str, str]:
        """(bucket directory, file path) of an object."""
        bucket = os.path.join(self.objdir, f"{crc32c(oid.encode()) & 0xFF:02x}")
        return bucket, os.path.join(bucket, file_name(oid))

    def fd(self, oid: str) -> int:
        fd = self.fds.get(oid)
        if fd is not None:
            self.fds.move_to_end(oid)
            return fd
        fd = os.open(self.path(oid)[1], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.fds[oid] = fd
        if len(self.fds) > self.max_fds:
            _, old = self.fds.popitem(last=False)
            os.close(old)
        return fd

    def close_fd(self, oid: str) -> None:
        fd = self.fds.pop(oid, None)
        if fd is not None:
            os.close(fd)

    def unlink(self, oid: str) -> None:
        self.close_fd(oid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(oid)[1])

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def sync(self, oid: str) -> None:
        """fdatasync an object's file through a private fd (the LRU may close its own)."""
        try:
            fd = os.open(self.path(oid)[1], os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # deleted since; that delete is journaled
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    # -- space --------------------------------------------------------------------------------

    def preallocate(self, oid: str, obj: ObjMeta | None, ranges: list[tuple[int, int]]
                    ) -> list[tuple[int, int]]:
        """Reserve disk space for blocks about to be filled, so a full disk (or a file that
        may not grow) fails the transaction before it is journaled rather than while
        writing the data file. Returns the ranges reserved (for ``undo_prealloc``)."""
        if not self.prealloc or not ranges:
            return []
        bs = self.bs
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
        fd = self.fd(oid)
        done: list[tuple[int, int]] = []
        for b0, b1 in todo:
            try:
                # mode 0, not KEEP_SIZE: the file may grow here, as the whole-block data
                # write would make it, so a limit on its size (RLIMIT_FSIZE, the
                # filesystem's maximum) fails now, before the journal, and not in that
                # data write, after it, which would leave the store failed. The file's
                # size means nothing to reads (the object's size is in its metadata)
                blockio.fallocate(fd, 0, b0 * bs, (b1 - b0 + 1) * bs)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self.prealloc = False
                    return done
                self.undo_prealloc(oid, obj, done)
                raise store_error(e, "reserving object data") from None
            done.append((b0, b1))
        return done

    def undo_prealloc(self, oid: str, obj: ObjMeta | None, ranges: list[tuple[int, int]]
                      ) -> None:
        """Give back space reserved for a transaction that was not applied (best effort)."""
        if obj is None:
            self.close_fd(oid)
            with contextlib.suppress(OSError):
                os.unlink(self.path(oid)[1])
            return
        if not self.punch:
            return
        bs = self.bs
        for b0, b1 in ranges:
            for b in range(b0, b1 + 1):  # only blocks that are still holes
                if b >= len(obj.alloc) or not obj.alloc[b]:
                    with contextlib.suppress(OSError):
                        blockio.fallocate(self.fd(oid), _PUNCH, b * bs, bs)

    def punch_range(self, oid: str, off: int, length: int) -> None:
        if not self.punch:
            return
        try:
            blockio.fallocate(self.fd(oid), _PUNCH, off, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self.punch = False  # holes are tracked in metadata; the space just stays used

    def punch_holes(self, oid: str, obj: ObjMeta) -> None:
        """Punch every hole of the object's metadata into its file (end of replay)."""
        bs = self.bs
        nb = -(-obj.size // bs)
        holes = np.concatenate(([0], (~obj.alloc[:nb]).view(np.int8), [0]))
        edges = np.flatnonzero(np.diff(holes))
        for s0, e0 in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            self.punch_range(oid, s0 * bs, (e0 - s0) * bs)

    # -- writes -------------------------------------------------------------------------------

    def write_direct(self, oid: str, off: int, segs: list[memoryview], n: int
                     ) -> np.ndarray:
        """Write whole blocks into holes of the file, before any journal record describes
        them; returns their crcs. StoreError (nothing applied) if the write fails."""
        bs = self.bs
        if len(segs) == 1:
            mv = segs[0]
            crcs = [crc32c(mv[i:i + bs]) for i in range(0, n, bs)]
        else:
            crcs = crc_blocks(segs, n // bs, bs)
        try:
            pwrite_pieces(self.fd(oid), segs, off, n, self.data_write_piece)
        except OSError as e:
            raise store_error(e, "object data") from None
        return np.array(crcs, dtype=np.uint32)

    def fill_direct(self, st: TxnState, off: int, n: int, crcs: np.ndarray) -> None:
        """The metadata of a direct write (its data is in the file already)."""
        bs = self.bs
        b0, b1 = off // bs, (off + n) // bs - 1
        obj = st.obj
        obj.reserve(b1 + 1)
        obj.crcs[b0:b1 + 1] = crcs
        obj.alloc[b0:b1 + 1] = True
        obj.size = max(obj.size, off + n)
        _forget(st, b0, b1)

    def write(self, st: TxnState, off: int, segs: list[memoryview], n: int) -> None:
        bs = self.bs
        obj = st.obj
        end = off + n
        if n == bs and not off % bs and len(segs) == 1:  # one whole block: the usual 4 KiB
            b = off // bs
            obj.reserve(b + 1)
            if st.bc or st.prepared:
                _forget(st, b, b)
            self._write_blocks(st, b, segs, 1)
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
            blk = self._base(st, b0)
            k = min(end, (b0 + 1) * bs) - off
            copy_into(blk, off - b0 * bs, segs, 0, k)
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
                pieces = slice_segments(segs, pos, nfull * bs, partial=True)
                iov.extend(pieces)
                crcs.extend(crc_blocks(pieces, nfull, bs))
            _forget(st, b, b + nfull - 1)
            pos += nfull * bs
            b += nfull
        if b <= b1:  # partial last block
            blk = self._base(st, b1)
            copy_into(blk, 0, segs, pos, n)
            iov.append(blk)
            crcs.append(crc32c(blk))
        self._write_blocks(st, b0, iov, b1 - b0 + 1)
        if b0 == b1:
            obj.crcs[b0] = crcs[0]
            obj.alloc[b0] = True
        else:
            obj.crcs[b0:b1 + 1] = crcs
            obj.alloc[b0:b1 + 1] = True
        obj.size = max(obj.size, end)

    def zero(self, st: TxnState, off: int, length: int) -> None:
        obj = st.obj
        if obj is None:
            return
        bs = self.bs
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
                blk = self._base(st, b)
                lo = max(off, b * bs) - b * bs
                hi = min(end, (b + 1) * bs) - b * bs
                blk[lo:hi] = self.zeros[: hi - lo]
                self._write_blocks(st, b, [blk], 1)
                obj.crcs[b] = crc32c(blk)
        if f0 <= f1:
            f1c = min(f1, len(obj.alloc) - 1)
            if f0 <= f1c and obj.alloc[f0:f1c + 1].any():
                if not st.replay:  # replay punches at the end
                    self.punch_range(st.oid, f0 * bs, (f1c - f0 + 1) * bs)
                obj.alloc[f0:f1c + 1] = False
            _forget(st, f0, f1)

    def truncate(self, st: TxnState, new: int) -> None:
        obj = st.obj
        bs = self.bs
        old = obj.size
        if new < old:
            nb = -(-new // bs)
            if nb < len(obj.alloc):
                obj.alloc[nb:] = False
            _forget(st, nb, 1 << 62)
            if new % bs:
                p = new // bs
                if obj.alloc[p]:
                    blk = self._base(st, p)
                    blk[new % bs:] = self.zeros[: bs - new % bs]
                    obj.crcs[p] = crc32c(blk)
                    if st.replay:
                        self._write_blocks(st, p, [blk], 1)
            if not st.replay:  # replay truncates at the end (later direct data lives there)
                os.ftruncate(self.fd(st.oid), new)
        else:
            obj.reserve(-(-new // bs))  # arrays always cover the size (new blocks are holes)
        obj.size = new

    def _base(self, st: TxnState, b: int) -> bytearray:
        """The current full image of block ``b`` for a partial update."""
        blk = st.bc.get(b)
        if blk is not None:
            return blk
        blk = st.prepared.pop(b, None)
        if blk is None:
            obj = st.obj
            if b < len(obj.alloc) and obj.alloc[b] and b * self.bs < obj.size:
                # Written earlier in this txn (trusted), or replay (crcs are rebuilt as we go).
                blk = self.read_block_raw(st.oid, obj, b)
            else:
                blk = bytearray(self.bs)
        st.bc[b] = blk
        return blk

    def _write_blocks(self, st: TxnState, b0: int, iov: list, nblocks: int) -> None:
        """pwritev ``nblocks`` whole blocks starting at block b0. During replay, blocks that
        a later direct write fills are skipped: the file already holds that later data."""
        bs = self.bs
        prot = st.protect if st.replay else None
        if prot:
            idx = st.idx
            fd = self.fd(st.oid)
            b = b0
            for buf in iov:
                mv = memoryview(buf)
                for i in range(0, len(mv), bs):
                    if prot.get(b, -1) <= idx:
                        pwritev_all(fd, [mv[i:i + bs]], b * bs)
                    b += 1
            return
        pwrite_pieces(self.fd(st.oid), iov, b0 * bs, nblocks * bs, self.data_write_piece)

    # -- reads --------------------------------------------------------------------------------

    def read_block_raw(self, oid: str, obj: ObjMeta, b: int) -> bytearray:
        """A block's full image from its file (bytes past EOF/size as zeros), unverified."""
        bs = self.bs
        valid = min(bs, obj.size - b * bs)
        blk = bytearray(bs)
        if valid > 0:
            os.preadv(self.fd(oid), [memoryview(blk)[:valid]], b * bs)
        return blk

    def verified_block(self, oid: str, obj: ObjMeta, b: int) -> bytearray:
        blk = self.read_block_raw(oid, obj, b)
        got = crc32c(blk)
        want = int(obj.crcs[b])
        if got != want:
            raise self._eio(oid, b, want, got)
        return blk

    def _eio(self, oid: str, block: int, want: int, got: int) -> StoreError:
        log.error("crc mismatch: object %r block %d (offset %d): stored %08x, read %08x",
                  oid, block, block * self.bs, want, got)
        return StoreError(errno.EIO, f"checksum mismatch in {oid!r} block {block}")

    def read_bytes(self, oid: str, obj: ObjMeta, offset: int, n: int) -> bytes:
        """``n`` (> 0) bytes at ``offset``, inside the object's size, verified."""
        bs = self.bs
        b0, b1 = offset // bs, (offset + n - 1) // bs
        end = offset + n
        if (offset % bs == 0 and (end % bs == 0 or end == obj.size)
                and (obj.alloc[b0] if b0 == b1 else obj.alloc[b0:b1 + 1].all())):
            data = os.pread(self.fd(oid), n, offset)  # one copy, straight to bytes
            if len(data) < n:
                data += bytes(n - len(data))
            self._verify(oid, obj, b0, memoryview(data), n)
            return data
        buf = bytearray(n)
        self.read_into(oid, obj, offset, n, memoryview(buf))
        return bytes(buf)

    def _verify(self, oid: str, obj: ObjMeta, b0: int, mv: memoryview, n: int) -> None:
        """Check the crcs of consecutive whole blocks starting at block b0 held in mv[:n]
        (the last block may stop at the object's end: the rest counts as zeros)."""
        bs = self.bs
        if n <= bs:
            got = crc32c(mv[:n])
            if n < bs:
                got = crc32c(self.zeros[: bs - n], got)
            want = int(obj.crcs[b0])
            if got != want:
                raise self._eio(oid, b0, want, got)
            return
        got_l = [crc32c(mv[i:i + bs]) for i in range(0, n, bs)]
        tail = n % bs
        if tail:
            got_l[-1] = crc32c(self.zeros[: bs - tail], got_l[-1])
        got = np.array(got_l, dtype=np.uint32)
        want = obj.crcs[b0:b0 + len(got_l)]
        bad = np.flatnonzero(got != want)
        if len(bad):
            i = int(bad[0])
            raise self._eio(oid, b0 + i, int(want[i]), int(got[i]))

    def read_into(self, oid: str, obj: ObjMeta, off: int, n: int, dst: memoryview) -> None:
        """Bytes [off, off+n) (inside the object's size) into ``dst``, verified; holes as
        zeros."""
        bs = self.bs
        end = off + n
        b0, b1 = off // bs, (end - 1) // bs
        seg = obj.alloc[b0:b1 + 1]
        if seg.all():
            self._read_run(oid, obj, b0, b1, off, end, dst)
            return
        if not seg.any():
            zero_fill(dst)
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
                zero_fill(d)

    def _read_run(self, oid: str, obj: ObjMeta, rb0: int, rb1: int, lo: int, hi: int,
                  dst: memoryview) -> None:
        """Read [lo, hi) of allocated blocks rb0..rb1 into dst, verifying whole blocks.

        Middle blocks land straight in ``dst``; a partially requested edge block goes
        through a scratch block so it can be checked whole. One preadv for the lot."""
        bs = self.bs
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
        got = os.preadv(self.fd(oid), iov, start)
        if got < want:  # file shorter than it should be: zeros, then the crc decides
            pos = 0
            for b in iov:
                if pos + len(b) > got:
                    zero_fill(memoryview(b)[max(0, got - pos):])
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

    def extents(self, obj: ObjMeta, offset: int, length: int) -> list[tuple[int, int]]:
        """The allocated extents of [offset, offset+length), clipped to the object's size."""
        bs = self.bs
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


def _forget(st: TxnState, b0: int, b1: int) -> None:
    """Blocks b0..b1 were replaced wholesale: drop cached images."""
    for d in (st.bc, st.prepared):
        if d:
            for b in [b for b in d if b0 <= b <= b1]:
                del d[b]
