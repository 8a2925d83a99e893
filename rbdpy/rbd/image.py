"""RBD images: a header, a directory entry, an object map, and data objects.

Objects (pool ``rbd`` by default)::

    rbd_directory                  name → id (class rbd: dir_add / dir_remove / dir_list)
    rbd_header.<id>                the header (class rbd: create / get_header / set_header_fields)
    rbd_object_map.<id>            one bit per data object: does it exist?
    rbd_data.<id>.<objectno:016x>  the data, 2^order bytes each, absent = zeros

I/O maps the byte range to object extents (``layout.map_extents``) and sends one request per
object concurrently. The caller's buffer is sliced, never copied: write extents travel as
views, read replies land in the slices. Discard deletes whole objects and zeroes partial
ranges (so discard and write-zeroes both leave exact zeros); an object's map bit is set
(and acknowledged) before its first write, so ``extents`` never calls data a hole.

Write-back (default, like librbd's ``rbd cache`` in writeback mode, or a disk with a volatile
write cache, which is what an NBD server that offers FLUSH tells its clients it has): a
non-FUA write returns once its data is copied and sent, without waiting for the OSD. Reads
still see it, because an object's requests reach its OSD in order on one session and the OSD
executes them in order (the objecter queues a read behind that object's held-back writes).
At most ``max_dirty`` bytes are out unconfirmed; a writer beyond that waits. An error that
comes back later is kept and raised by the next ``flush``, as fsync reports a failed
writeback. ``writeback=False`` makes every write wait for the OSD's ack (write-through).
"""

from __future__ import annotations

import errno
import json
import logging
import operator
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import trio

from rbdpy.client.objecter import Objecter, OSDError, Request
from rbdpy.errors import RbdpyError
from rbdpy.gather import gather
from rbdpy.msgr.bufferpool import POOL_MIN, BufferPool
from rbdpy.msgr.payload import slice_segments
from rbdpy.proto import ops as O
from rbdpy.rbd.layout import Layout, ObjectExtent, map_extents
from rbdpy.rbd.lock import ImageLock, LockBusy

log = logging.getLogger("rbdpy.rbd")

DIRECTORY = "rbd_directory"
Done = Callable[[BaseException | None], None]
"""Completion of a ``start_*`` call: None when done, else the error."""
MAX_SIZE = 1 << 50  # 1 PiB: 2^28 objects of the default 4 MiB
MAX_OBJECTS = 1 << 28  # the object map holds one bit per object in one 32 MiB object (the
# OSD's rbd class refuses bits past this: ``osd.classes.MAX_OBJMAP_OBJECTS``); Ceph's
# object map stops at 256,000,000 objects
SECTOR = 512  # image sizes are whole sectors: NBD clients, qemu and the kernel count in them
MAX_DIRTY = 32 << 20  # write-back: bytes sent but not yet committed (librbd: 24 MiB dirty)
POST_MAX = POOL_MIN  # write-back writes up to this size may be posted (see ``postable``)


class ImageError(RbdpyError):
    """A user-facing image error with an errno (ENOENT, EEXIST, EINVAL, EBUSY…)."""


def header_oid(image_id: str) -> str:
    return f"rbd_header.{image_id}"


def objmap_oid(image_id: str) -> str:
    return f"rbd_object_map.{image_id}"


def data_oid(image_id: str, objectno: int) -> str:
    return f"rbd_data.{image_id}.{objectno:016x}"


@dataclass
class ImageInfo:
    name: str
    id: str
    size: int
    order: int
    stripe_unit: int
    stripe_count: int
    features: list[str]
    created: float

    @property
    def object_size(self) -> int:
        return 1 << self.order

    @property
    def num_objects(self) -> int:
        return _objects_for(self.size, self.layout)

    @property
    def layout(self) -> Layout:
        return Layout(self.order, self.stripe_unit, self.stripe_count)


def _objects_for(size: int, layout: Layout) -> int:
    if size == 0:
        return 0
    su, sc = layout.su, layout.stripe_count
    per_set = layout.object_size * sc
    sets, rest = divmod(size, per_set)
    n = sets * sc
    if rest:
        n += min(sc, -(-rest // su))
    return n


def whole_sectors(n: int) -> int:
    """``n`` rounded up to whole sectors: the image size that holds ``n`` bytes of a file
    (zeros after them), as qemu shows such a file."""
    return -(-n // SECTOR) * SECTOR


def size_limit(layout: Layout) -> int:
    """The largest image size with this layout: MAX_SIZE, or less when the objects are
    small (at most MAX_OBJECTS of them: 1 TiB of 4 KiB objects)."""
    per_set = layout.object_size * layout.stripe_count
    sets, extra = divmod(MAX_OBJECTS, layout.stripe_count)
    return min(MAX_SIZE, sets * per_set + extra * layout.su)


def _iec(n: int) -> str:
    """``n`` bytes exactly, in the largest binary unit that divides it (1 PiB, 1536 KiB)."""
    for shift, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def check_size(size: int, layout: Layout) -> None:
    """EINVAL unless ``size`` is a whole number of sectors within ``size_limit``: an odd size
    shows up rounded by the client (qemu showed a 1331-byte image as 1536 bytes), and a size
    past the limit could never have all its objects in the object map."""
    try:
        size = operator.index(size)  # an int (numpy's too), never a float
    except TypeError:
        raise ImageError(errno.EINVAL, f"bad image size {size!r}: a number of bytes") from None
    if size < 0:
        raise ImageError(errno.EINVAL, f"bad image size {size}: negative")
    if size % SECTOR:
        raise ImageError(errno.EINVAL, f"image size {size} bytes is not a multiple of "
                         f"{SECTOR} bytes (a whole number of sectors)")
    limit = size_limit(layout)
    if size > limit:
        raise ImageError(errno.EINVAL, f"image size {_iec(size)} is over the limit of "
                         f"{_iec(limit)} for {_iec(layout.object_size)} objects (an image has "
                         f"at most 2^28 objects, and at most {_iec(MAX_SIZE)})")


def _check_name(name: str) -> None:
    if not name or "/" in name or len(name) > 255:
        raise ImageError(errno.EINVAL, f"bad image name {name!r}")


async def create_image(objecter: Objecter, pool: int, name: str, size: int, *, order: int = 22,
                       stripe_unit: int = 0, stripe_count: int = 1) -> str:
    """Claim the name, then write the header; EEXIST if the name is taken."""
    _check_name(name)
    try:
        layout = Layout(order, stripe_unit, stripe_count)
    except ValueError as e:
        raise ImageError(errno.EINVAL, str(e)) from None
    check_size(size, layout)
    image_id = secrets.token_hex(6)
    try:
        await objecter.submit(pool, DIRECTORY, [O.Call("rbd", "dir_add", json.dumps(
            {"name": name, "id": image_id}).encode())], write=True)
    except OSDError as e:
        if e.errno == errno.EEXIST:
            raise ImageError(errno.EEXIST, f"image {name} exists") from None
        raise
    header = {"id": image_id, "name": name, "size": size, "order": order,
              "stripe_unit": stripe_unit or (1 << order), "stripe_count": stripe_count,
              "features": ["layering", "exclusive-lock", "object-map"], "created": time.time()}
    try:
        await objecter.submit(pool, header_oid(image_id), [O.Call("rbd", "create", json.dumps(
            header).encode())], write=True)
    except OSDError:
        await objecter.submit(pool, DIRECTORY, [O.Call("rbd", "dir_remove", json.dumps(
            {"name": name, "id": image_id}).encode())], write=True)
        raise
    await objecter.flush()
    return image_id


async def list_images(objecter: Objecter, pool: int) -> dict[str, str]:
    r = await objecter.submit(pool, DIRECTORY, [O.Call("rbd", "dir_list", b"")], write=False)
    return json.loads(r.results[0].out or b"{}")


async def lookup_id(objecter: Objecter, pool: int, name: str) -> str:
    try:
        r = await objecter.submit(pool, DIRECTORY, [O.GetXattr(f"name.{name}")], write=False)
    except OSDError as e:
        if e.errno in (errno.ENOENT, errno.ENODATA):
            raise ImageError(errno.ENOENT, f"no image named {name}") from None
        raise
    return bytes(r.results[0].out).decode()


async def remove_image(objecter: Objecter, pool: int, name: str,
                       progress: Callable[[int, int | None], None] | None = None, *,
                       lease: float | None = None) -> None:
    """Delete every data object, the map, the header, then the name (EBUSY while another
    client has the image open for writing)."""
    img = await Image.open(objecter, pool, name, lease=lease)
    await img.remove_data(progress)
    if img.lock is not None:
        img.lock.drop()  # it goes with the header
    for oid in (objmap_oid(img.id), header_oid(img.id)):
        try:
            await objecter.submit(pool, oid, [O.Delete()], write=True)
        except OSDError as e:
            if e.errno != errno.ENOENT:
                raise
    await objecter.submit(pool, DIRECTORY, [O.Call("rbd", "dir_remove", json.dumps(
        {"name": name, "id": img.id}).encode())], write=True)
    await objecter.flush()


async def rename_image(objecter: Objecter, pool: int, name: str, new_name: str, *,
                       lease: float | None = None) -> None:
    """Rename (``rbd mv``): one atomic op vector on the directory drops the old name and
    adds the new one (EEXIST: nothing changed). Refused (EBUSY) while another client has
    the image open for writing: it holds the lock this takes."""
    _check_name(new_name)
    img = await Image.open(objecter, pool, name, lease=lease)
    try:
        try:
            await objecter.submit(pool, DIRECTORY, [
                O.Call("rbd", "dir_remove", json.dumps({"name": name, "id": img.id}).encode()),
                O.Call("rbd", "dir_add", json.dumps({"name": new_name, "id": img.id}).encode()),
            ], write=True)
        except OSDError as e:
            if e.errno == errno.EEXIST:
                raise ImageError(errno.EEXIST, f"image {new_name} exists") from None
            raise
        await objecter.submit(pool, header_oid(img.id), [O.Call(
            "rbd", "set_header_fields", json.dumps({"name": new_name}).encode())], write=True)
        await objecter.flush()
    finally:
        with trio.CancelScope(shield=True):
            await img.close()


class Image:
    """An open image (async; used from the objecter's trio loop)."""

    def __init__(self, objecter: Objecter, pool: int, info: ImageInfo,
                 objmap: np.ndarray, read_only: bool = False, *, writeback: bool = True,
                 lock: ImageLock | None = None) -> None:
        self.objecter = objecter
        self.pool = pool
        self.info = info
        self.id = info.id
        self.layout = info.layout
        self.objmap = objmap  # bool per object: exists?
        self.lock = lock  # the exclusive lock of a writable open (see ``rbdpy.rbd.lock``)
        # only the lock holder's map is the truth: without the lock another client may be
        # writing, so a clear bit may be stale and holes must be read from the OSDs
        self.trust_map = lock is not None
        self.read_only = read_only
        self._map_pending: dict[int, trio.Event] = {}
        self.copied_bytes = 0  # write data copied (see ``write``)
        self.posted_writes = 0  # write-back writes that came through ``post_write``
        self._tx_pool = BufferPool(max_bytes=64 << 20)
        self._tx_lent: deque[int] = deque()
        self.writeback = writeback
        self.max_dirty = MAX_DIRTY
        self.dirty_bytes = 0  # write-back writes out and not yet committed
        self._room = trio.Event()  # set (and replaced) whenever dirty bytes drop
        self._wb_error: OSDError | None = None  # a failed write-back write, for next flush

    @classmethod
    async def open(cls, objecter: Objecter, pool: int, name: str, *, read_only: bool = False,
                   writeback: bool = True, lease: float | None = None) -> Image:
        """Open ``name``; a writable open takes the exclusive lock with this ``lease``
        (None: ``lock.LEASE``)."""
        image_id = await lookup_id(objecter, pool, name)
        lock = None
        if not read_only:  # the lock first: the map loaded after it is the truth
            lock = ImageLock(objecter, pool, header_oid(image_id), lease)
            try:
                await lock.acquire()
            except LockBusy as e:
                raise ImageError(errno.EBUSY, f"image {name} is in use by "
                                 f"{e.holder.describe()} (it holds the exclusive lock; "
                                 "read-only opens still work)") from None
            except OSDError as e:
                if e.errno != errno.ETIMEDOUT:
                    raise
                raise ImageError(errno.EBUSY, f"image {name}: {e}") from None
        try:
            try:
                r = await objecter.submit(pool, header_oid(image_id),
                                          [O.Call("rbd", "get_header", b"")], write=False)
            except OSDError as e:
                if e.errno == errno.ENOENT:
                    raise ImageError(errno.ENOENT, f"image {name} has no header") from None
                raise
            h = json.loads(r.results[0].out)
            info = ImageInfo(name, h["id"], h["size"], h["order"], h["stripe_unit"],
                             h["stripe_count"], h.get("features", []), h.get("created", 0.0))
            objmap = await cls._load_objmap(objecter, pool, info)
        except BaseException:
            if lock is not None:
                with trio.CancelScope(shield=True):
                    await lock.release()
            raise
        return cls(objecter, pool, info, objmap, read_only, writeback=writeback, lock=lock)

    async def close(self) -> None:
        """Give the exclusive lock back (after ``flush``, if the writes must be durable)."""
        if self.lock is not None:
            await self.lock.release()

    async def refresh_map(self) -> None:
        """Load the object map again (a reader's view of what the writer allocated)."""
        self.objmap = await self._load_objmap(self.objecter, self.pool, self.info)

    @staticmethod
    async def _load_objmap(objecter: Objecter, pool: int, info: ImageInfo) -> np.ndarray:
        n = info.num_objects
        raw = bytearray((n + 7) // 8)
        try:
            r = await objecter.submit(pool, objmap_oid(info.id), [O.Read(0, len(raw))],
                                      write=False)
            got = b"".join(r.results[0].out or [])
            raw[: len(got)] = got[: len(raw)]
        except OSDError as e:
            if e.errno != errno.ENOENT:
                raise
        bits = np.unpackbits(np.frombuffer(bytes(raw), dtype=np.uint8), bitorder="little")
        return bits[:n].astype(bool)

    @property
    def size(self) -> int:
        return self.info.size

    def _known_hole(self, objectno: int) -> bool:
        """The object does not exist, and our map may be trusted on that (see ``lock``)."""
        return self.trust_map and objectno < len(self.objmap) and not self.objmap[objectno]

    def _check(self, offset: int, length: int, write: bool = False) -> None:
        if write and self.read_only:
            raise ImageError(errno.EROFS, "image opened read-only")
        if write and self.lock is not None and self.lock.lost:
            raise ImageError(errno.ESHUTDOWN, "lost the image's exclusive lock to another "
                             "client: writes refused")
        if offset < 0 or length < 0 or offset + length > self.info.size:
            raise ImageError(errno.EINVAL,
                             f"range {offset}+{length} outside the image ({self.info.size})")

    # -- data path ------------------------------------------------------------------------

    async def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with image bytes at ``offset`` (holes are zeros)."""
        length = len(buf)
        self._check(offset, length)
        exts = map_extents(self.layout, offset, length)
        if len(exts) == 1:
            await self._read_extent(exts[0], buf)
            return
        await gather(partial(self._read_extent, ex, buf) for ex in exts)

    async def _read_extent(self, ex, buf: memoryview) -> None:
        dests = [buf[o : o + n] for o, n in ex.buffer_extents]
        if self._known_hole(ex.objectno):
            _zero(dests)
            return
        try:
            r = await self.objecter.submit(self.pool, data_oid(self.id, ex.objectno),
                                           [O.Read(ex.offset, ex.length)], write=False,
                                           read_into=dests)
        except OSDError as e:
            if e.errno != errno.ENOENT:
                raise
            _zero(dests)
            return
        _place_read(r, ex.length, dests)

    # -- callback data path (the NBD plugin's: no trio task per request) -------------------

    def start_read(self, offset: int, buf: memoryview, done: Done) -> bool:
        """Start ``read`` of a range inside one object and return True; ``done(err)`` is
        called on the trio thread when ``buf`` is filled (err None) or the read failed.
        False (nothing started) for ranges spanning objects: use ``read``."""
        length = len(buf)
        self._check(offset, length)
        exts = map_extents(self.layout, offset, length)
        if len(exts) != 1:
            return False
        ex = exts[0]
        dests = [buf[o : o + n] for o, n in ex.buffer_extents]
        if self._known_hole(ex.objectno):
            _zero(dests)
            done(None)
            return True
        oid = data_oid(self.id, ex.objectno)

        def fin(req: Request) -> None:
            if req.error == errno.ENOENT:
                _zero(dests)
            elif req.error:
                return done(OSDError(req.error, oid))
            else:
                _place_read(req.reply, ex.length, dests)
            done(None)

        self.objecter.start(self.pool, oid, [O.Read(ex.offset, ex.length)], write=False,
                            read_into=dests, on_done=fin)
        return True

    def start_write(self, offset: int, buf: memoryview, fua: bool, done: Done) -> bool:
        """Start ``write`` of a range inside one object whose map bit is already set, and
        return True; ``done(err)`` follows as for ``start_read``. False (nothing started)
        otherwise: use ``write``. Same copy rule as ``write``."""
        length = len(buf)
        self._check(offset, length, write=True)
        exts = map_extents(self.layout, offset, length)
        if len(exts) != 1 or not self.objmap[exts[0].objectno]:
            return False
        ex = exts[0]
        behind = self.writeback and not fua
        if behind and not self._has_room(length):
            return False  # ``write`` waits for room
        if not fua:
            buf = self._own_copy(buf)
        oid = data_oid(self.id, ex.objectno)
        op = _write_op(ex, buf)
        if behind:
            self.objecter.start(self.pool, oid, [op], write=True, wait_commit=True,
                                on_done=self._behind(oid, length))
            done(None)
            return True

        def fin(req: Request) -> None:
            done(OSDError(req.error, oid) if req.error else None)

        self.objecter.start(self.pool, oid, [op], write=True, wait_commit=fua, on_done=fin)
        return True

    def postable(self, offset: int, length: int) -> ObjectExtent | None:
        """From any thread: the object extent of a write-back write that may be *posted*
        (``post_write``: the caller returns before the trio side even sees it), or None.
        Small writes inside one object whose map bit is set, while there is room; raises
        for an out-of-range or read-only write as ``write`` does."""
        if not self.writeback or length > POST_MAX:
            return None
        self._check(offset, length, write=True)
        exts = map_extents(self.layout, offset, length)
        if len(exts) != 1 or not self.objmap[exts[0].objectno] or not self._has_room(length):
            return None
        return exts[0]

    def post_write(self, ex: ObjectExtent, data: memoryview,
                   closed: BaseException | None) -> None:
        """Trio side of a posted write: send ``data`` (the caller's copy) for extent ``ex``.

        Posted calls run in the order they were queued with every other call, so a read
        the caller makes after posting reaches the OSD after this write. If the map bit
        was cleared meanwhile, a whole-object discard (or a shrink) ran concurrently with
        this write; ordering the write before it, i.e. dropping it, is then a valid
        outcome, and sending it would leave data the map calls a hole."""
        if closed is not None:
            return  # the cluster connection is gone: the next flush fails
        self.copied_bytes += len(data)
        self.posted_writes += 1
        if not self.objmap[ex.objectno]:
            return
        oid = data_oid(self.id, ex.objectno)
        try:
            self.objecter.start(self.pool, oid, [_write_op(ex, data)], write=True,
                                wait_commit=True, on_done=self._behind(oid, ex.length))
        except Exception as e:  # nobody waits: the next flush reports it
            log.exception("posted write to %s failed to start", oid)
            if self._wb_error is None:
                self._wb_error = OSDError(errno.EIO, f"write-back to {oid}: {e}")

    async def write(self, offset: int, buf: memoryview, fua: bool = False) -> None:
        """Write ``buf`` at ``offset``; returns once sent (write-back: readable by later
        reads, durable after ``flush``), once applied (write-through), or once durable if
        ``fua``.

        The one copy on the write path is here: a non-FUA write returns before it is
        durable, and until its commit the objecter may have to send it again (OSD restart,
        primary moved), while the caller may reuse its buffer as soon as we return (nbdkit
        frees it). So it is copied once; FUA writes wait for the commit and send the
        caller's memory as is."""
        length = len(buf)
        self._check(offset, length, write=True)
        if self.writeback and not fua:
            await self._write_behind(offset, buf)
            return
        if not fua:
            buf = self._own_copy(buf)
        exts = map_extents(self.layout, offset, length)
        if len(exts) == 1:
            await self._write_extent(exts[0], buf, fua)
            return
        await gather(partial(self._write_extent, ex, buf, fua) for ex in exts)

    async def _write_behind(self, offset: int, buf: memoryview) -> None:
        """Write-back ``write``: wait for room, copy, set missing map bits (acked: ``extents``
        and hole reads trust them), send every extent and return without waiting."""
        length = len(buf)
        while not self._has_room(length):
            await self._room.wait()
        buf = self._own_copy(buf)
        exts = map_extents(self.layout, offset, length)
        fresh = [ex.objectno for ex in exts if not self.objmap[ex.objectno]]
        if len(fresh) == 1:
            await self._mark_exists(fresh[0])
        elif fresh:
            await gather(partial(self._mark_exists, objno) for objno in fresh)
        for ex in exts:
            oid = data_oid(self.id, ex.objectno)
            self.objecter.start(self.pool, oid, [_write_op(ex, buf)], write=True,
                                wait_commit=True, on_done=self._behind(oid, ex.length))

    def _has_room(self, length: int) -> bool:
        """Whether a write-back write of ``length`` may go now (one always may when nothing
        is out, however large)."""
        return not self.dirty_bytes or self.dirty_bytes + length <= self.max_dirty

    def _behind(self, oid: str, length: int) -> Callable[[Request], None]:
        """Count a write-back write as dirty until its commit; its completion callback
        gives the room back and keeps a failure for the next ``flush``."""
        self.dirty_bytes += length

        def fin(req: Request) -> None:
            self.dirty_bytes -= length
            if req.error == errno.ESHUTDOWN and self.lock is not None:
                self.lock.lost = True  # fenced: another client broke our lock
            if req.error and self._wb_error is None:
                self._wb_error = OSDError(req.error, f"write-back to {oid}")
                log.warning("write-back to %s failed: %s; the next flush reports it", oid,
                            errno.errorcode.get(req.error, req.error))
            self._room.set()
            self._room = trio.Event()

        return fin

    def _own_copy(self, buf: memoryview) -> memoryview:
        """The one copy of a non-FUA write (see ``write``), counted in ``copied_bytes``.
        Large ones go to a recycled buffer: fresh multi-MiB allocations cost an mmap and a
        page fault per 4 KiB. Earlier copies go back to the pool once nothing references
        them any more (committed, and acknowledged by the messenger)."""
        self.copied_bytes += len(buf)
        if len(buf) < POOL_MIN:
            return memoryview(bytes(buf))
        lent, pool = self._tx_lent, self._tx_pool
        while lent and pool.try_give_back(lent[0]):
            lent.popleft()
        while len(lent) > 256:  # something keeps old writes alive: stop tracking them
            pool.forget(lent.popleft())
        token, owned = pool.take(len(buf))
        owned[:] = buf
        lent.append(token)
        return owned

    async def _write_extent(self, ex, buf: memoryview, fua: bool) -> None:
        await self._mark_exists(ex.objectno)
        await self.objecter.submit(self.pool, data_oid(self.id, ex.objectno),
                                   [_write_op(ex, buf)], write=True, wait_commit=fua)

    async def _mark_exists(self, objectno: int) -> None:
        """Set the object's map bit (acked) before its first write ever goes out."""
        if self.objmap[objectno]:
            return
        pending = self._map_pending.get(objectno)
        if pending is not None:
            await pending.wait()
            if self.objmap[objectno]:
                return
        ev = self._map_pending[objectno] = trio.Event()
        try:
            await self._set_map(objectno, objectno + 1, True)
        finally:
            ev.set()
            self._map_pending.pop(objectno, None)

    async def _set_map(self, start: int, end: int, value: bool) -> None:
        await self.objecter.submit(self.pool, objmap_oid(self.id), [O.Call(
            "rbd", "objmap_set", json.dumps({"start": start, "end": end, "value": int(value),
                                             "objects": len(self.objmap)}).encode())],
            write=True)  # objects: from the header; the OSD refuses a range outside it
        self.objmap[start:end] = value

    async def discard(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Deallocate: whole objects are deleted, partial ranges zeroed (reads give zeros)."""
        self._check(offset, length, write=True)
        exts = map_extents(self.layout, offset, length)
        await gather(partial(self._discard_extent, ex, fua) for ex in exts)

    write_zeroes = discard  # both leave exact zeros on every byte of the range

    async def _discard_extent(self, ex, fua: bool) -> None:
        if self._known_hole(ex.objectno):
            return
        oid = data_oid(self.id, ex.objectno)
        whole = ex.offset == 0 and ex.length == self._object_len(ex.objectno)
        try:
            if whole:
                await self.objecter.submit(self.pool, oid, [O.Delete()], write=True,
                                           wait_commit=fua)
            else:
                await self.objecter.submit(self.pool, oid, [O.Zero(ex.offset, ex.length)],
                                           write=True, wait_commit=fua)
        except OSDError as e:
            if e.errno != errno.ENOENT:
                raise
        if whole:
            await self._set_map(ex.objectno, ex.objectno + 1, False)

    def _object_len(self, objectno: int) -> int:
        """Bytes of the image stored in this object (the last one may be short)."""
        osz = self.layout.object_size
        if self.layout.stripe_count == 1:
            return max(0, min(osz, self.info.size - objectno * osz))
        return osz

    async def flush(self) -> None:
        """Every write that returned before this call is durable; raises the error of a
        write-back write that failed since the last flush (reported once). A flush that
        is cancelled (a bounded one timed out) reports nothing: the next flush does."""
        try:
            await self.objecter.flush()
        except Exception:
            self._wb_error = None  # the error raised here reports it
            raise
        err, self._wb_error = self._wb_error, None
        if err is not None:
            raise err

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, allocated) runs from the object map: no round trip at all."""
        self._check(offset, length)
        out: list[tuple[int, int, bool]] = []
        for ex in map_extents(self.layout, offset, length):
            alloc = bool(ex.objectno < len(self.objmap) and self.objmap[ex.objectno])
            for boff, n in ex.buffer_extents:
                start = offset + boff
                if out and out[-1][2] == alloc and out[-1][0] + out[-1][1] == start:
                    out[-1] = (out[-1][0], out[-1][1] + n, alloc)
                else:
                    out.append((start, n, alloc))
        out.sort()
        return out

    # -- management -----------------------------------------------------------------------

    async def resize(self, size: int) -> None:
        if self.read_only:
            raise ImageError(errno.EROFS, "image opened read-only")
        check_size(size, self.layout)
        old = self.info.size
        if size < old:
            if self.layout.stripe_count != 1:
                raise ImageError(errno.EOPNOTSUPP, "shrinking a striped image")
            osz = self.layout.object_size
            first_gone = -(-size // osz)
            for objno in range(first_gone, len(self.objmap)):
                if self.objmap[objno]:
                    await self._delete_object(objno)
            if size % osz and self.objmap[size // osz]:
                await self.objecter.submit(self.pool, data_oid(self.id, size // osz),
                                           [O.Truncate(size % osz)], write=True)
        await self.objecter.submit(self.pool, header_oid(self.id), [O.Call(
            "rbd", "set_header_fields", json.dumps({"size": size}).encode())], write=True)
        self.info.size = size
        n = self.info.num_objects
        if n > len(self.objmap):
            self.objmap = np.concatenate([self.objmap, np.zeros(n - len(self.objmap), bool)])
        else:
            self.objmap = self.objmap[:n].copy()
        await self.objecter.flush()

    async def _delete_object(self, objno: int) -> None:
        try:
            await self.objecter.submit(self.pool, data_oid(self.id, objno), [O.Delete()],
                                       write=True)
        except OSDError as e:
            if e.errno != errno.ENOENT:
                raise
        await self._set_map(objno, objno + 1, False)

    async def remove_data(self, progress=None) -> None:
        if not self.trust_map:
            await self.refresh_map()
        present = np.flatnonzero(self.objmap).tolist()
        sem = trio.Semaphore(32)
        done = 0

        async def one(objno: int) -> None:
            nonlocal done
            async with sem:
                await self._delete_object(objno)
            done += 1
            if progress:
                progress(done, len(present))

        await gather(partial(one, objno) for objno in present)

    async def du(self) -> int:
        """Bytes actually allocated on the OSDs (sparse objects count their data only)."""
        total = 0
        for objno in np.flatnonzero(self.objmap).tolist():
            try:
                r = await self.objecter.submit(self.pool, data_oid(self.id, objno), [O.Call(
                    "rbd", "allocated", b"")], write=False)
                total += int(r.results[0].out or b"0")
            except OSDError as e:
                if e.errno != errno.ENOENT:
                    raise
        return total


def _write_op(ex, buf: memoryview) -> O.Write:
    """The Write op of one object extent: views of the (caller's or copied) buffer."""
    return O.Write(ex.offset, [buf[o : o + n] for o, n in ex.buffer_extents])


def _place_read(r, length: int, dests: list[memoryview]) -> None:
    """Put a read reply's data in ``dests``: usually it landed there already; zero what the
    object did not have."""
    got = r.results[0].out or []
    if r.landed:  # the messenger received straight into dests; zero what was short
        n = sum(len(g) for g in got)
        if n < length:
            _zero(slice_segments(dests, n, length - n))
        return
    _land(got, dests)


def _zero(dests: list[memoryview]) -> None:
    for d in dests:
        d[:] = bytes(len(d))


def _land(got: list[memoryview], dests: list[memoryview]) -> None:
    """Reply data normally landed in ``dests`` already (alloc_data); else copy it there.

    A short read (the object ends early) leaves the rest of the range as zeros.
    """
    di, doff = 0, 0
    for seg in got:
        pos = 0
        while pos < len(seg):
            d = dests[di]
            n = min(len(d) - doff, len(seg) - pos)
            src = seg[pos : pos + n]
            if not _same_memory(src, d[doff : doff + n]):
                d[doff : doff + n] = src
            pos += n
            doff += n
            if doff == len(d):
                di, doff = di + 1, 0
    # zero-fill what the object did not have
    while di < len(dests):
        d = dests[di]
        d[doff:] = bytes(len(d) - doff)
        di, doff = di + 1, 0


def _same_memory(a: memoryview, b: memoryview) -> bool:
    """Whether two equal-length views are the very same bytes (data landed in place)."""
    if len(a) == 0:
        return True
    return _addr(a) == _addr(b)


def _addr(v: memoryview) -> int:
    return np.frombuffer(v, np.uint8).__array_interface__["data"][0]
