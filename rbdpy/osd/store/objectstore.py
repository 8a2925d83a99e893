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

Modules: ``transaction`` (the Transaction value and its checks), ``format`` (on-disk
encoding), ``journal`` (segments, scan), ``metalog`` (the checkpoint log), ``objdata`` (object
files: block writes, verified reads, space), ``blockio`` (syscall helpers, errno mapping);
this one ties them together: apply, replay, commit, checkpoint, reads.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass

from rbdpy.msgr.payload import byte_view
from rbdpy.osd.store import format as fmt
from rbdpy.osd.store.blockio import fsync_dir, store_error, zero_fill
from rbdpy.osd.store.errors import StoreError
from rbdpy.osd.store.format import (
    OP_APPENDXATTR,
    OP_CREATE,
    OP_DELETE,
    OP_RMXATTR,
    OP_SETXATTR,
    OP_TRUNCATE,
    OP_WRITE,
    OP_WRITE_DIRECT,
    OP_ZERO,
    ObjMeta,
)
from rbdpy.osd.store.journal import Journal, Record, protected_blocks
from rbdpy.osd.store.metalog import MetaLog
from rbdpy.osd.store.objdata import DataFiles, TxnState
from rbdpy.osd.store.transaction import Transaction, appended, check_key, prepare

log = logging.getLogger(__name__)


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
        self._bs = block_size
        self._objs: dict[str, ObjMeta] = {}
        self._sorted: list[str] = []
        self._lock = threading.Lock()  # in-memory state, fds, journal append position
        self._commit_lock = threading.Lock()  # one commit/checkpoint at a time
        self._seq = 0  # last journaled (applied) sequence
        self._durable = 0
        self._dirty: set[str] = set()  # objects changed since the last checkpoint snapshot
        self._new_dirs: set[str] = set()  # bucket dirs with new entries since the checkpoint
        self._failed: StoreError | None = None
        self._direct_pending: set[str] = set()  # files with direct writes not yet fdatasync'd
        self._closed = False
        self._files = DataFiles(os.path.join(self.path, "objects"), block_size,
                                max_open_files, data_write_piece)
        self._journal = Journal(self.path)
        self._meta = MetaLog(self.path, block_size, max_object_size)
        self._open()

    @property
    def _jpos(self) -> int:
        """Bytes in the active journal segment (tests measure records with it)."""
        return self._journal.pos

    # -- open / recovery ----------------------------------------------------------------------

    def _open(self) -> None:
        self._files.make_dirs()
        self._objs, seq, gen = self._meta.load(self._journal.exists())
        self._sorted = sorted(self._objs)
        self._seq = self._durable = seq
        records, active, end = self._journal.scan(gen, seq + 1)
        self._replay(records)
        self._journal.open_active(active, end)
        self._durable = self._seq

    def _replay(self, records: list[Record]) -> None:
        """Re-apply journal records over the checkpointed state.

        The data files already hold what the killed process wrote, so replay must not destroy
        data a *later* record relies on: direct writes (whose data is only in the file) protect
        their blocks from every earlier record's file writes, and destructive file operations
        (unlink, ftruncate, hole punching) wait until the end, when the final state is known."""
        if not records:
            return
        prot = protected_blocks(records, self._bs)
        touched: set[str] = set()
        for idx, (seq, oid, mtime, ops) in enumerate(records):
            self._apply_ops(oid, ops, seq, mtime, {}, replay=True, protect=prot.get(oid),
                            idx=idx)
            self._seq = seq
            touched.add(oid)
        files = self._files
        for oid in sorted(touched):  # now the destructive part, from the final state
            obj = self._objs.get(oid)
            if obj is None:
                files.unlink(oid)
                continue
            os.ftruncate(files.fd(oid), obj.size)
            files.punch_holes(oid, obj)
        log.info("replayed %d journal records up to seq %d", len(records), self._seq)

    # -- helpers ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(errno.EBADF, "store is closed")

    def _get(self, oid: str) -> ObjMeta:
        obj = self._objs.get(oid)
        if obj is None:
            raise StoreError(errno.ENOENT, f"no object {oid!r}")
        return obj

    # -- apply --------------------------------------------------------------------------------

    def apply(self, oid: str, txn: Transaction) -> ApplyResult:
        """Validate, journal and apply ``txn`` to object ``oid``, atomically.

        On any StoreError nothing was applied. The result's ``seq`` is durable once
        ``commit()`` (or ``committed_seq()``) reaches it."""
        with self._lock:
            res = self._apply_locked(oid, txn)
        if self._journal.pos > 2 * self.journal_max and not self._commit_lock.locked():
            self.commit()  # nobody is committing: keep the journal bounded ourselves
        return res

    def _apply_locked(self, oid: str, txn: Transaction) -> ApplyResult:
        self._check_open()
        if self._failed is not None:
            raise StoreError(self._failed.errno, f"store failed earlier: {self._failed}")
        check_key(oid)
        obj = self._objs.get(oid)
        p = prepare(oid, obj, txn, block_size=self._bs, max_object_size=self.max_object_size,
                 direct_write_min=self.direct_write_min)
        if not p.mutates:
            return ApplyResult(obj.version if obj is not None else 0, self._seq)
        files = self._files
        prepared: dict[int, bytearray] = {}
        if p.edges and obj is not None:  # the blocks partial writes merge into, verified
            for b in p.edges:
                if b * self._bs < obj.size and obj.alloc[b]:
                    prepared[b] = files.verified_block(oid, obj, b)
        mtime = time.time()
        seq = self._seq + 1
        ops = p.ops
        # a direct write's own pwritev fails before journaling; give its blocks back if so
        allocated = p.prealloc if p.direct else files.preallocate(oid, obj, p.prealloc)
        try:
            if p.direct:
                ops = self._write_direct(oid, ops)
            self._journal_txn(seq, oid, mtime, ops)
        except StoreError:
            files.undo_prealloc(oid, obj, allocated)
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
        out = []
        for op in ops:
            if op[0] != OP_WRITE_DIRECT:
                out.append(op)
                continue
            _, off, segs, n = op
            out.append((OP_WRITE_DIRECT, off, n, self._files.write_direct(oid, off, segs, n)))
        return out

    def _journal_txn(self, seq: int, oid: str, mtime: float, ops: list[tuple]) -> None:
        """Append the record of one transaction; StoreError (and a clean journal) if not."""
        journal = self._journal
        try:
            journal.append(seq, fmt.encode_txn(oid, mtime, ops))
        except OSError as e:
            if journal.rollback_error is not None:
                self._failed = StoreError(
                    errno.EIO, f"cannot roll back journal: {journal.rollback_error}")
                log.critical("%s", self._failed)
            err = store_error(e, "journal")
            if err.errno == errno.ENOSPC:
                log.warning("journal full (%s): transaction on %r refused", e, oid)
            raise err from None

    def _apply_ops(self, oid: str, ops: list[tuple], seq: int, mtime: float,
                   prepared: dict[int, bytearray], *, replay: bool,
                   protect: dict[int, int] | None = None, idx: int = 0) -> int:
        """Carry out effective ops on the data file and the metadata (also used by replay)."""
        files = self._files
        st = TxnState(oid, self._objs.get(oid), prepared, replay, protect, idx)
        for op in ops:
            code = op[0]
            if code == OP_WRITE:
                files.write(st, op[1], op[2], op[3])
            elif code == OP_WRITE_DIRECT:
                files.fill_direct(st, op[1], op[2], op[3])
                if not replay:
                    self._direct_pending.add(oid)
            elif code == OP_ZERO:
                files.zero(st, op[1], op[2])
            elif code == OP_TRUNCATE:
                files.truncate(st, op[1])
            elif code == OP_CREATE:
                if st.obj is None:
                    st.obj = ObjMeta(0)
                    self._objs[oid] = st.obj
                    bisect.insort(self._sorted, oid)
                    files.fd(oid)
                    self._new_dirs.add(files.path(oid)[0])
            elif code == OP_DELETE:
                if st.obj is not None:
                    del self._objs[oid]
                    i = bisect.bisect_left(self._sorted, oid)
                    del self._sorted[i]
                    st.obj = None
                    st.bc.clear()
                    st.prepared.clear()
                if replay:  # replay unlinks at the end, if still deleted
                    files.close_fd(oid)
                else:
                    files.unlink(oid)
            elif code == OP_SETXATTR:
                st.obj.xattrs[op[1]] = op[2]
            elif code == OP_RMXATTR:
                st.obj.xattrs.pop(op[1], None)
            elif code == OP_APPENDXATTR:
                xattrs = st.obj.xattrs
                xattrs[op[1]] = appended(xattrs.pop(op[1], b""), op[2], op[3])
        self._dirty.add(oid)
        if st.obj is not None:
            st.obj.version = seq
            st.obj.mtime = mtime
        return seq

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
                        self._files.sync(oid)
                    os.fdatasync(plan.journal_fd)
                ok = True
            except OSError as e:
                # an fsync that failed is not "no space": what was applied may be lost
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
            if self._journal.pos >= self.journal_max and not self._closed:
                self._checkpoint_quietly()
            return self._durable

    def _plan_commit(self) -> CommitPlan | None:
        with self._lock:
            if self._closed:
                return None
            direct, self._direct_pending = self._direct_pending, set()
            return CommitPlan(self._seq, self._journal.fd, self._journal.pos, direct,
                              [self._files.path(oid)[1] for oid in sorted(direct)])

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
        journal = self._journal
        with self._lock:
            if self._closed or (not self._dirty and journal.empty()):
                return
            seq = self._seq
            try:
                old_fd, old_gen = journal.rotate()
            except OSError as e:
                raise store_error(e, "new journal segment") from None
            dirty, self._dirty = self._dirty, set()
            new_dirs, self._new_dirs = self._new_dirs, set()
            snaps = [(oid, fmt.encode_obj(oid, self._objs.get(oid), self._bs),
                      oid in self._objs) for oid in sorted(dirty)]
        try:
            os.fdatasync(old_fd)
            self._durable = max(self._durable, seq)
            fsync_dir(self.path)  # the new segment's directory entry
            for oid, _rec, present in snaps:
                if present:
                    self._files.sync(oid)
            for d in new_dirs:
                fsync_dir(d)
            self._meta.append_delta(seq, old_gen + 1, [rec for _oid, rec, _p in snaps])
        except OSError as e:
            with self._lock:  # the next checkpoint must cover these objects again
                self._dirty |= dirty
                self._new_dirs |= new_dirs
            journal.old_fds.append(old_fd)  # its segment is still needed until a checkpoint
            raise store_error(e, "checkpoint") from None
        os.close(old_fd)
        journal.release_old()
        journal.retire(old_gen, 2 * self.journal_max + (1 << 20))
        self._meta.compact_if_due()

    def close(self) -> None:
        """Commit, checkpoint (so the next open replays nothing) and release every fd."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.commit()
                self.checkpoint()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Release every fd without committing or checkpointing: what ``kill -9`` leaves
        (the page cache keeps what was written). Crash tests open the store again after it."""
        with self._commit_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            self._files.close()
            self._journal.close()
            self._meta.close()

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
                dst = byte_view(out)
                n = min(n, len(dst))
                if n:
                    try:
                        self._files.read_into(oid, obj, offset, n, dst[:n])
                    except StoreError:
                        zero_fill(dst[:n])
                        raise
                return n
            if n == 0:
                return b""
            return self._files.read_bytes(oid, obj, offset, n)

    def sparse_read(self, oid: str, offset: int, length: int
                    ) -> tuple[list[tuple[int, int]], bytes]:
        """The allocated extents (block granularity, clipped to the range and the object's
        size) and their bytes concatenated; holes in between are left out."""
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            if offset < 0 or length < 0:
                raise StoreError(errno.EINVAL, "negative offset or length")
            extents = self._files.extents(obj, offset, length)
            total = sum(ln for _o, ln in extents)
            buf = bytearray(total)
            mv = memoryview(buf)
            pos = 0
            for o, ln in extents:
                self._files.read_into(oid, obj, o, ln, mv[pos:pos + ln])
                pos += ln
            return extents, bytes(buf)

    def extents(self, oid: str, offset: int = 0, length: int | None = None
                ) -> list[tuple[int, int]]:
        """Allocated extents only (no data), for NBD block status / sparse copies."""
        with self._lock:
            self._check_open()
            obj = self._get(oid)
            return self._files.extents(obj, offset, obj.size if length is None else length)

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
