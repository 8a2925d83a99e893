"""Import, export and copy: whole images to and from files or pipes, or to a new image,
sparse every way.

Like ``rbd import`` / ``rbd export``. Import reads the source in object-sized chunks and
writes only the 4 KiB blocks that hold something, so zero runs in a raw VM image stay holes
(no object, no space: ``rbdpy du`` shows it). Export reads only what the object map says
exists, and into a regular file writes only blocks that are not zero, then sets the size,
so the copy is as sparse as the image. A pipe (``-``) gets every byte in order.

Copy (``rbd cp``) reads like export and writes like import.

All work on the blocking :class:`~rbdpy.rbd.api.SyncImage` from the calling thread.
Import (and copy) gets its concurrency from write-back: a write returns once sent, so the
next chunk is read while earlier ones travel (at most ``max_dirty`` bytes out), and the
final ``flush`` makes the whole image durable before success is reported. Export (and copy)
reads a window of chunks concurrently (``SyncImage.read_many``) and uses them in order.

File I/O errors and cluster errors propagate; the CLI cleans up (a partial image is removed,
a partial output file deleted) and reports one line.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from rbdpy.rbd.api import SyncImage
from rbdpy.rbd.image import whole_sectors

BLOCK = 4096  # zero detection granularity (rbd import's default --sparse-size)
EXPORT_WINDOW = 8  # chunks read concurrently by export
Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes or None when the total is unknown)``."""


@dataclass
class TransferStats:
    bytes: int = 0  # of image data moved (the image's size for export)
    written: int = 0  # bytes actually written to the destination (the rest were zeros)
    seconds: float = 0.0


def nonzero_runs(buf: memoryview, block: int = BLOCK) -> list[tuple[int, int]]:
    """[start, end) byte ranges of ``buf`` made of blocks that are not all zero (adjacent
    blocks merged). A last partial block counts as a block."""
    n = len(buf)
    if n == 0:
        return []
    arr = np.frombuffer(buf, dtype=np.uint8)
    full = n - n % block
    flags = []
    if full:
        flags.append(arr[:full].reshape(-1, block).any(axis=1))
    if n % block:
        flags.append(np.array([arr[full:].any()]))
    nz = np.concatenate(flags).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], nz, [0]))))
    return [(int(s) * block, min(int(e) * block, n)) for s, e in zip(edges[0::2], edges[1::2])]


def _read_full(fd: int, buf: memoryview) -> int:
    """Fill ``buf`` from ``fd`` (a pipe gives short reads); returns bytes read, < len at EOF."""
    got = 0
    while got < len(buf):
        n = os.readv(fd, [buf[got:]])
        if n == 0:
            break
        got += n
    return got


def source_size(fd: int) -> int | None:
    """Bytes a regular file or block device holds from its current position on (where the
    import reads from), which is left as it was; None for a pipe (read to EOF)."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        return None
    here = os.lseek(fd, 0, os.SEEK_CUR)
    end = os.lseek(fd, 0, os.SEEK_END)  # a block device's st_size is 0: ask for its end
    os.lseek(fd, here, os.SEEK_SET)
    return end - here


def import_into(img: SyncImage, fd: int, size: int | None, progress: Progress | None = None
                ) -> TransferStats:
    """Copy ``fd`` into ``img`` (new, all holes), from offset 0, then flush.

    ``size`` known (``source_size``): the image already has that size (in whole 512-byte
    sectors: ``whole_sectors``). Unknown (a pipe): the image grows as data arrives (doubling,
    so few header updates) and ends as long as the stream, rounded up to whole sectors
    (image sizes are; the tail reads as zeros)."""
    t0 = time.monotonic()
    chunk = max(img.info.object_size, 1 << 20)
    buf = memoryview(bytearray(chunk))
    off = written = 0
    while True:
        want = chunk if size is None else min(chunk, size - off)
        if want <= 0:
            break
        n = _read_full(fd, buf[:want])
        if size is not None and n < want:  # shrank under us, or read from the wrong place
            raise OSError(f"the source ended at {off + n} bytes, before its size {size}")
        if n == 0:
            break
        if size is None and off + n > img.size:
            img.resize(whole_sectors(max(off + n, 2 * img.size)))
        for s, e in nonzero_runs(buf[:n]):
            img.write(off + s, buf[s:e])  # write-back copies it: buf is reused at once
            written += e - s
        off += n
        if progress:
            progress(off, size)
    img.flush()
    if size is None and img.size != whole_sectors(off):
        img.resize(whole_sectors(off))
    return TransferStats(off, written, time.monotonic() - t0)


def _pieces(img: SyncImage) -> Iterator[tuple[int, int, memoryview | None]]:
    """The whole image in order, as ``(offset, length, data)`` pieces of at most one chunk:
    ``data`` is a view of what was read, or None for a hole (never read). Allocated pieces
    are read ``EXPORT_WINDOW`` at a time, concurrently; a view is valid until the next
    piece is asked for."""
    size = img.size
    chunk = max(img.info.object_size, 1 << 20)
    pieces: list[tuple[int, int, bool]] = []  # (offset, length, allocated), in order
    for off, n, alloc in img.extents(0, size) if size else []:
        end = off + n
        while off < end:
            k = min(chunk - off % chunk, end - off)  # never across a chunk boundary
            pieces.append((off, k, alloc))
            off += k
    bufs = [memoryview(bytearray(chunk)) for _ in range(EXPORT_WINDOW)]
    i = 0
    while i < len(pieces):
        window: list[tuple[int, int, bool]] = []
        reads: list[tuple[int, memoryview]] = []
        while i < len(pieces) and len(reads) < EXPORT_WINDOW:
            off, n, alloc = pieces[i]
            window.append(pieces[i])
            if alloc:
                reads.append((off, bufs[len(reads)][:n]))
            i += 1
        img.read_many(reads)
        data = iter(reads)
        for off, n, alloc in window:
            yield off, n, next(data)[1] if alloc else None


def export_from(img: SyncImage, fd: int, progress: Progress | None = None) -> TransferStats:
    """Copy all of ``img`` to ``fd``: a regular file sparsely (holes and zero blocks are
    skipped, then the size is set), anything else (pipe, block device) byte for byte."""
    t0 = time.monotonic()
    size = img.size
    sparse = stat.S_ISREG(os.fstat(fd).st_mode)
    zeros = memoryview(bytes(max(img.info.object_size, 1 << 20)))
    written = done = 0
    for off, n, data in _pieces(img):
        if sparse:
            for s, e in nonzero_runs(data) if data is not None else []:
                os.pwrite(fd, data[s:e], off + s)
                written += e - s
        else:
            _write_all(fd, data if data is not None else zeros[:n])
            written += n
        done += n
        if progress:
            progress(done, size)
    if sparse:
        os.ftruncate(fd, size)
    if sparse or stat.S_ISBLK(os.fstat(fd).st_mode):
        os.fsync(fd)  # "exported" means on the disk, as "imported" means committed
    return TransferStats(size, written, time.monotonic() - t0)


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def copy_image(src: SyncImage, dst: SyncImage, progress: Progress | None = None
               ) -> TransferStats:
    """Copy ``src`` into ``dst`` (new, all holes, at least as large), then flush: only the
    non-zero blocks of what ``src`` holds are written, so holes stay holes."""
    t0 = time.monotonic()
    written = done = 0
    for off, n, data in _pieces(src):
        for s, e in nonzero_runs(data) if data is not None else []:
            dst.write(off + s, data[s:e])  # write-back copies it: the view is reused
            written += e - s
        done += n
        if progress:
            progress(done, src.size)
    dst.flush()
    return TransferStats(src.size, written, time.monotonic() - t0)
