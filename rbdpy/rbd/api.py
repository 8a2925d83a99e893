"""Images for threads: the image verbs on a connected ``Rados`` and the blocking ``SyncImage``.

The split follows Ceph's Python bindings: ``rados`` is the cluster handle and I/O on objects
(``rbdpy.client.rados.Rados``), ``rbd`` puts images on top of it (this module). Every call
hands a coroutine of ``rbdpy.rbd.image`` to the Rados's cluster thread and blocks until it
is done; buffers travel as memoryviews, never copied (posted write-back writes excepted).

An open image registers its close with the Rados (``Rados.at_close``), so closing the
connection gives every lock back, and all images opened through one Rados share its
objecter: ``flush`` on any of them waits for every write of this client, which is what
makes NBD multi-conn honest.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial

import trio

from rbdpy.client.objecter import OSDError
from rbdpy.client.rados import POST_BACKLOG, Rados
from rbdpy.gather import gather
from rbdpy.msgr.payload import byte_view
from rbdpy.rbd import image as rbdimage
from rbdpy.rbd import lock as rbdlock


def create_image(rados: Rados, name: str, size: int, *, order: int = 22,
                 stripe_unit: int = 0, stripe_count: int = 1) -> str:
    return rados.run(lambda: rbdimage.create_image(
        rados.objecter, rados.pool, name, size, order=order, stripe_unit=stripe_unit,
        stripe_count=stripe_count))


def list_images(rados: Rados) -> dict[str, str]:
    """Image name → id (empty when the pool has no directory yet)."""
    async def ls() -> dict[str, str]:
        try:
            return await rbdimage.list_images(rados.objecter, rados.pool)
        except OSDError as e:
            if e.errno == errno.ENOENT:
                return {}
            raise
    return rados.run(ls)


def remove_image(rados: Rados, name: str,
                 progress: Callable[[int, int | None], None] | None = None) -> None:
    rados.run(lambda: rbdimage.remove_image(rados.objecter, rados.pool, name, progress,
                                            lease=rados.options.lock_lease))


def rename_image(rados: Rados, name: str, new_name: str) -> None:
    rados.run(lambda: rbdimage.rename_image(rados.objecter, rados.pool, name, new_name,
                                            lease=rados.options.lock_lease))


def lock_holder(rados: Rados, name: str) -> rbdlock.Holder | None:
    """Who holds the image's exclusive lock (None: nobody)."""
    async def get() -> rbdlock.Holder | None:
        image_id = await rbdimage.lookup_id(rados.objecter, rados.pool, name)
        return await rbdlock.holder_of(rados.objecter, rados.pool,
                                       rbdimage.header_oid(image_id))
    return rados.run(get)


def break_lock(rados: Rados, name: str) -> rbdlock.Holder | None:
    """Break whoever holds the image's lock; returns who that was (None: nobody)."""
    async def brk() -> rbdlock.Holder | None:
        header = rbdimage.header_oid(await rbdimage.lookup_id(rados.objecter, rados.pool, name))
        h = await rbdlock.holder_of(rados.objecter, rados.pool, header)
        if h is not None:
            await rbdlock.break_holder(rados.objecter, rados.pool, header, h)
        return h
    return rados.run(brk)


def last_break(rados: Rados, name: str) -> rbdlock.Breaker | None:
    """Who last broke a holder's lock on the image, as recorded with the break (None:
    never). A fenced holder reads it with a fresh client: the OSDs refuse its own."""
    async def get() -> rbdlock.Breaker | None:
        image_id = await rbdimage.lookup_id(rados.objecter, rados.pool, name)
        return await rbdlock.breaker_of(rados.objecter, rados.pool,
                                        rbdimage.header_oid(image_id))
    return rados.run(get)


def open_image(rados: Rados, name: str, *, read_only: bool = False, writeback: bool = True
               ) -> SyncImage:
    """Open an image; ``writeback`` as in ``rbdpy.rbd.image`` (False: write-through)."""
    img = rados.run(lambda: rbdimage.Image.open(rados.objecter, rados.pool, name,
                                                read_only=read_only, writeback=writeback,
                                                lease=rados.options.lock_lease))
    return SyncImage(rados, img)


class SyncImage:
    """Blocking face of an Image; buffers are passed through as memoryviews, never copied.

    Reads and writes inside one object take the Image's callback path (``start_read`` /
    ``start_write``: no trio task per request); the rest runs as coroutines."""

    def __init__(self, rados: Rados, img: rbdimage.Image) -> None:
        self.rados = rados
        self.image = img
        self._open = True
        rados.at_close(self.close)

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def info(self) -> rbdimage.ImageInfo:
        return self.image.info

    def read(self, offset: int, buf: bytearray | memoryview) -> None:
        img = self.image
        self.rados.run_started(img.start_read, img.read, offset, byte_view(buf))

    def read_many(self, requests: list[tuple[int, bytearray | memoryview]]) -> None:
        """Fill each ``(offset, buffer)`` concurrently (one round of the cluster thread, not
        one per buffer); raises the first error once all have ended."""
        if not requests:
            return
        img = self.image
        self.rados.run(lambda: gather(partial(img.read, off, byte_view(buf))
                                      for off, buf in requests))

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read(offset, buf)
        return bytes(buf)

    def write(self, offset: int, buf: bytes | bytearray | memoryview, fua: bool = False) -> None:
        img = self.image
        mv = byte_view(buf)
        if not fua:
            ex = img.postable(offset, len(mv))
            # posted: copied here, returns before the cluster thread sees it (bounded queue)
            if (ex is not None and self.rados.backlog < POST_BACKLOG
                    and self.rados.post(img.post_write, ex, memoryview(bytes(mv)))):
                return
        self.rados.run_started(img.start_write, img.write, offset, mv, fua)

    def discard(self, offset: int, length: int, fua: bool = False) -> None:
        self.rados.run(lambda: self.image.discard(offset, length, fua=fua))

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        self.rados.run(lambda: self.image.write_zeroes(offset, length, fua=fua))

    def flush(self, timeout: float | None = None) -> None:
        """Make every write that returned durable; with ``timeout``, give up after that
        many seconds with ETIMEDOUT (the writes stay pending: a later flush may succeed)."""
        if timeout is None:
            self.rados.run(self.image.flush)
            return

        async def bounded() -> None:
            with trio.move_on_after(timeout) as scope:
                await self.image.flush()
            if scope.cancelled_caught:
                raise OSDError(errno.ETIMEDOUT, f"flush: no commit from the OSDs in "
                               f"{timeout:g} s")
        self.rados.run(bounded)

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        if not self.image.trust_map:  # not the writer: another client may have allocated
            self.rados.run(self.image.refresh_map)
        return self.image.extents(offset, length)

    def close(self) -> None:
        """Give the image's exclusive lock back, once (flush first for durability; closing
        the Rados does this for every image still open)."""
        if self._open:
            self._open = False
            self.rados.cancel_at_close(self.close)
            self.rados.run(self.image.close)

    def resize(self, size: int) -> None:
        self.rados.run(self.image.resize, size)

    def du(self) -> int:
        return self.rados.run(self.image.du)
