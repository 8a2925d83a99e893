"""The monitor's store: its maps on disk, crash-safe (I/O; the state machine stays free of it).

Under the data directory, one file per record, each written to a temporary name, fsynced,
renamed into place, and the directory fsynced, before ``append`` returns (the pattern of the
OSD store's checkpoint log, rbdpy/osd/store/metalog.py). A rename is atomic, so after a
crash (kill -9, power loss) every record file is whole or absent, never torn:

    full.<epoch>   a full map (framed encode_map), written every ``full_every`` epochs
    inc.<epoch>    the incremental that made <epoch> (framed encode_incremental)
    *.tmp          a write a crash cut short: removed at open
    lock           flock'ed while a monitor uses the directory

Opening loads the newest full map and applies the incrementals after it, which must follow
without a gap; the ``keep`` newest incrementals are kept (and served to subscribers) and
older ones, and older full maps, deleted. So a restarted monitor resumes at the last epoch
``append`` returned for, or at the one after if it was killed after the rename. Each file is
framed with its length and crc32c; a file that fails them is damage, not a crash, and the
store refuses to open (EIO) rather than silently forget epochs that clients may have seen.
An fsync error is fail-stop (the kernel may have dropped the pages): the store refuses any
further append, and the monitor must restart from what is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections import deque
from pathlib import Path

from rbdpy.crc import crc32c
from rbdpy.errors import RbdpyError
from rbdpy.maps.encoding import decode_incremental, decode_map, encode_incremental, encode_map
from rbdpy.maps.errors import MapDecodeError, MapError
from rbdpy.maps.incremental import Incremental
from rbdpy.maps.osdmap import OSDMap
from rbdpy.osd.store.blockio import fsync_dir  # the same directory sync the OSD store uses

_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32c of the payload
_MAGIC = b"RMON"


class MonStoreError(RbdpyError):
    """The store cannot be created, opened or written: EEXIST, ENOENT, EBUSY (another
    monitor has it), EIO (damaged files, or a failed write or fsync)."""

    def __init__(self, msg: str, err: int = errno.EIO) -> None:
        super().__init__(err, msg)


def _name(kind: str, epoch: int) -> str:
    return f"{kind}.{epoch:010d}"


def _epochs(path: Path, kind: str) -> list[int]:
    out = []
    for p in path.iterdir():
        stem, dot, num = p.name.partition(".")
        if stem == kind and dot and num.isdigit() and len(num) == 10:
            out.append(int(num))
    return sorted(out)


class MonStore:
    """Use ``create`` or ``open``; ``osdmap`` is the newest durable map, ``incrementals``
    the kept ones ending at it."""

    def __init__(self, path: Path, lock_fd: int, osdmap: OSDMap, incs: list[Incremental],
                 full_epoch: int, keep: int, full_every: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self.osdmap = osdmap
        self._incs: deque[Incremental] = deque(incs, maxlen=keep)
        self._full_epoch = full_epoch
        self.keep = keep
        self.full_every = full_every
        self._failed: str | None = None

    @property
    def incrementals(self) -> tuple[Incremental, ...]:
        return tuple(self._incs)

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        p = Path(path)
        return p.is_dir() and bool(_epochs(p, "full"))

    @classmethod
    def create(cls, path: str | os.PathLike, first: OSDMap, *, keep: int = 500,
               full_every: int = 100) -> MonStore:
        """A new store whose first epoch is ``first`` (EEXIST if one is there)."""
        p = Path(path)
        new_dir = not p.exists()
        p.mkdir(parents=True, exist_ok=True)
        if new_dir:
            fsync_dir(p.parent)
        lock = cls._lock(p)
        try:
            cls._clean_tmp(p)
            if _epochs(p, "full") or _epochs(p, "inc"):
                raise MonStoreError(f"{p} holds a monitor store already", errno.EEXIST)
            store = cls(p, lock, first, [], first.epoch, keep, full_every)
            store._write(_name("full", first.epoch), encode_map(first))
        except BaseException:
            os.close(lock)
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, keep: int = 500,
             full_every: int = 100) -> MonStore:
        """The store at ``path`` as the last durable append left it."""
        p = Path(path)
        if not p.is_dir():
            raise MonStoreError(f"no monitor store at {p}", errno.ENOENT)
        lock = cls._lock(p)
        try:
            cls._clean_tmp(p)
            fulls = _epochs(p, "full")
            if not fulls:
                raise MonStoreError(f"no monitor store at {p} (no full map)", errno.ENOENT)
            full_epoch = fulls[-1]
            m = cls._read_map(p / _name("full", full_epoch), full_epoch)
            inc_epochs = _epochs(p, "inc")
            later = [e for e in inc_epochs if e > full_epoch]
            if later and later != list(range(full_epoch + 1, later[-1] + 1)):
                raise MonStoreError(f"{p}: incrementals after the full map of epoch "
                                    f"{full_epoch} have a gap: {later}")
            incs: list[Incremental] = []
            for e in reversed([e for e in inc_epochs if e <= full_epoch]):  # the kept window
                if len(incs) == keep or (incs and e != incs[-1].epoch - 1) or (
                        not incs and e != full_epoch):
                    break
                incs.append(cls._read_inc(p / _name("inc", e), e))
            incs.reverse()
            for e in later:
                inc = cls._read_inc(p / _name("inc", e), e)
                try:
                    m = m.apply(inc)
                except MapError as err:
                    raise MonStoreError(f"{p}: incremental {e} does not apply: {err}") from None
                incs.append(inc)
            store = cls(p, lock, m, incs[-keep:], full_epoch, keep, full_every)
        except BaseException:
            os.close(lock)
            raise
        store._prune()
        return store

    @staticmethod
    def _lock(p: Path) -> int:
        fd = os.open(p / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MonStoreError(f"{p} is in use by another monitor", errno.EBUSY) from None
        return fd

    @staticmethod
    def _clean_tmp(p: Path) -> None:
        for f in p.glob("*.tmp"):
            f.unlink()

    @staticmethod
    def _read(path: Path) -> memoryview:
        data = path.read_bytes()
        if len(data) < _FRAME.size:
            raise MonStoreError(f"{path}: {len(data)} bytes, not a record")
        magic, length, crc = _FRAME.unpack_from(data)
        body = memoryview(data)[_FRAME.size:]
        if magic != _MAGIC or length != len(body) or crc32c(body) != crc:
            raise MonStoreError(f"{path}: damaged (bad magic, length or crc32c)")
        return body

    @classmethod
    def _read_map(cls, path: Path, epoch: int) -> OSDMap:
        try:
            m = decode_map(cls._read(path))
        except MapDecodeError as e:
            raise MonStoreError(f"{path}: {e}") from None
        if m.epoch != epoch:
            raise MonStoreError(f"{path} holds epoch {m.epoch}")
        return m

    @classmethod
    def _read_inc(cls, path: Path, epoch: int) -> Incremental:
        try:
            inc = decode_incremental(cls._read(path))
        except MapDecodeError as e:
            raise MonStoreError(f"{path}: {e}") from None
        if inc.epoch != epoch:
            raise MonStoreError(f"{path} holds epoch {inc.epoch}")
        return inc

    # -- writing ------------------------------------------------------------------------------

    def append(self, inc: Incremental) -> OSDMap:
        """Make epoch ``inc.epoch`` durable and return its map; raises MapError (nothing
        written) if ``inc`` does not apply, MonStoreError if the disk fails."""
        if self._failed:
            raise MonStoreError(f"{self.path}: no more writes after a failed one "
                                f"({self._failed}); restart the monitor")
        new = self.osdmap.apply(inc)
        self._write(_name("inc", inc.epoch), encode_incremental(inc))
        self.osdmap = new
        self._incs.append(inc)
        if new.epoch - self._full_epoch >= self.full_every:
            self._write(_name("full", new.epoch), encode_map(new))
            self._full_epoch = new.epoch
            self._prune()
        return new

    def _write(self, name: str, payload: bytes) -> None:
        """tmp + fsync + rename + fsync(dir): whole or absent after any crash."""
        final = self.path / name
        tmp = self.path / (name + ".tmp")
        record = _FRAME.pack(_MAGIC, len(payload), crc32c(payload)) + payload
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(record)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            fsync_dir(self.path)
        except OSError as e:
            self._failed = f"{name}: {e.strerror}"
            raise MonStoreError(f"{self.path}: writing {name} failed: {e.strerror}",
                                e.errno or errno.EIO) from None

    def _prune(self) -> None:
        """Delete full maps older than the newest and incrementals older than the window.
        Not fsynced: a deletion a crash undoes leaves only an old file the next open
        ignores or deletes again."""
        oldest_kept = self._incs[0].epoch if self._incs else self.osdmap.epoch + 1
        for e in _epochs(self.path, "full"):
            if e < self._full_epoch:
                (self.path / _name("full", e)).unlink()
        for e in _epochs(self.path, "inc"):
            if e < min(oldest_kept, self._full_epoch + 1):
                (self.path / _name("inc", e)).unlink()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = -1
