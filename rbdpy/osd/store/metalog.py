"""The checkpoint log ``meta``: where object metadata lives between opens.

Records [magic, len, crc, hdr-crc | payload] (``format``): a FULL record holds every object's
metadata, a DELTA record the objects changed since the previous checkpoint (or their
deletion). Loading applies them in order up to the first torn one. When the log has grown
well past its last FULL record it is compacted into one (tmp + fsync + rename), so opening
stays fast however many checkpoints were taken.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from rbdpy.osd.store import format as fmt
from rbdpy.osd.store.blockio import fsync_dir, pwritev_all, read_all
from rbdpy.osd.store.errors import StoreError

log = logging.getLogger(__name__)


class MetaLog:
    """The open checkpoint log of a store (``path``/meta)."""

    def __init__(self, path: str, block_size: int, max_object_size: int) -> None:
        self.dir = path
        self.path = os.path.join(path, "meta")
        self.bs = block_size
        self.max_object_size = max_object_size
        self.fd = -1
        self.full_size = 0  # bytes of the last FULL record: compaction is due at a multiple
        self.size = 0  # bytes after the last append

    def load(self, journal_exists: bool) -> tuple[dict[str, fmt.ObjMeta], int, int]:
        """Open (creating an empty log in a new store) and read it: (objects, the sequence
        the checkpoints cover, the first journal generation to replay). A torn tail, left by
        a kill while appending, is cut off."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path + ".tmp")
        if not os.path.exists(self.path):
            if journal_exists:
                raise StoreError(errno.EIO, f"{self.dir}: journal without meta")
            self.write_full(0, 1, [])
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        data = memoryview(read_all(self.fd))
        objs: dict[str, fmt.ObjMeta] = {}
        seq, gen, end = 0, 1, 0
        for kind, rseq, rgen, bs, _mx, count, payload, rend in fmt.iter_meta(data):
            if bs != self.bs:
                raise StoreError(errno.EINVAL, f"store has block_size {bs}, not {self.bs}")
            if kind == fmt.M_FULL:
                objs.clear()
                self.full_size = rend - end
            pos = fmt.M_PAYLOAD.size
            for _ in range(count):
                oid, obj, _s, pos = fmt.decode_obj(payload, pos)
                if obj is None:
                    objs.pop(oid, None)
                else:
                    objs[oid] = obj
            seq, gen, end = rseq, rgen, rend
        if end < len(data):
            log.warning("%s: dropping %d bytes of torn checkpoint log", self.path,
                        len(data) - end)
            os.ftruncate(self.fd, end)
        return objs, seq, gen

    def append_delta(self, seq: int, gen: int, recs: list[bytes]) -> None:
        """Append a DELTA record (object records from ``format.encode_obj``) and make it
        durable; on an OSError the log is cut back to where it was and the error propagates."""
        body = [fmt.M_PAYLOAD.pack(fmt.M_DELTA, seq, gen, self.bs, self.max_object_size,
                                   len(recs)), *recs]
        record = fmt.meta_record(b"".join(body))
        end = os.fstat(self.fd).st_size
        try:
            pwritev_all(self.fd, [record], end)
            os.fdatasync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, end)
            raise
        self.size = end + len(record)

    def compact_if_due(self) -> None:
        """Compact once the log is four times its last FULL record (and at least 4 MiB)."""
        if self.size > max(4 << 20, 4 * self.full_size):
            self.compact()

    def compact(self) -> None:
        """Rewrite the log as one FULL record (tmp, fsync, rename, fsync dir)."""
        data = memoryview(read_all(self.fd))
        recs: dict[str, memoryview] = {}
        seq = gen = 0
        for kind, rseq, rgen, _bs, _mx, count, payload, _end in fmt.iter_meta(data):
            if kind == fmt.M_FULL:
                recs.clear()
            pos = fmt.M_PAYLOAD.size
            for _ in range(count):
                oid, present, start, pos = fmt.skip_obj(payload, pos)
                if present:
                    recs[oid] = payload[start:pos]
                else:
                    recs.pop(oid, None)
            seq, gen = rseq, rgen
        self.write_full(seq, gen, [recs[k] for k in sorted(recs)])
        old = self.fd
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        os.close(old)

    def write_full(self, seq: int, gen: int, recs: list) -> None:
        body = fmt.M_PAYLOAD.pack(fmt.M_FULL, seq, gen, self.bs, self.max_object_size,
                                  len(recs))
        record = fmt.meta_record(b"".join([body, *recs]))
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            pwritev_all(fd, [record], 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        fsync_dir(self.dir)
        self.full_size = len(record)

    def close(self) -> None:
        os.close(self.fd)
