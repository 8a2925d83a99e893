"""Blocking access to a cluster for threads (the nbdkit plugin, the CLI, scripts).

One background thread runs trio with the messenger and the objecter; callers in other threads
hand it coroutines with ``trio.from_thread.run`` and block (GIL released) until they finish.
All images opened through one Rados share its objecter, so ``flush`` on any of them waits
for every write of this client: that is what makes NBD multi-conn honest.

    import rbdpy
    with rbdpy.connect() as cluster:
        img = cluster.open_image("disk0")
        img.write(0, b"hello")
        img.flush()
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from rbdpy import config
from rbdpy.client.bridge import ThreadBridge
from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.gather import gather
from rbdpy.msgr.messenger import Messenger
from rbdpy.msgr.payload import byte_view
from rbdpy.rbd import image as rbdimage
from rbdpy.rbd import lock as rbdlock

log = logging.getLogger("rbdpy.rados")
T = TypeVar("T")
POST_BACKLOG = 256  # posted writes waiting for the cluster thread; beyond, writers wait


class ClusterUnavailable(Exception):
    """The OSDs did not answer in time."""


class Rados:
    def __init__(self, cfg: config.ClusterConfig, *, pool: str = "rbd") -> None:
        self.cfg = cfg
        self.objecter = Objecter(cfg.osdmap)
        self.pool = cfg.osdmap.pool_by_name(pool).id
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._bridge = ThreadBridge()
        self._images: list[rbdimage.Image] = []
        self._thread = threading.Thread(target=self._main, name="rbdpy-trio", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # noqa: BLE001 - reported to the opener
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        async with Messenger(self.objecter.me, self.objecter) as msgr:
            self.objecter.attach(msgr)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(self._bridge.serve)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
            msgr.shutdown()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the cluster thread; block until it is done."""
        return self._bridge.call(fn, *args)

    def run_started(self, start: Callable[..., bool], fn: Callable[..., Awaitable[T]],
                    *args: Any) -> T | None:
        """``run``, trying the task-free ``start(*args, done)`` first (see
        ``ThreadBridge.call_started``)."""
        return self._bridge.call_started(start, fn, *args)

    def post(self, fn: Callable[..., None], *args: Any) -> bool:
        """Queue ``fn(*args, closed)`` on the cluster thread without waiting (see
        ``ThreadBridge.post``); False if the connection is closed."""
        return self._bridge.post(fn, *args)

    @property
    def backlog(self) -> int:
        """Calls handed to the cluster thread and not yet taken up."""
        return self._bridge.backlog

    def close(self) -> None:
        """Release the images' locks (not a flush: unflushed write-back writes may be lost,
        as when a disk loses power), then stop the cluster thread."""
        if self._stop is not None and self._thread.is_alive():
            for img in list(self._images):
                try:
                    self.close_image(img)
                except Exception as e:  # noqa: BLE001 - closing anyway; the lock expires
                    log.warning("closing image %s: %s", img.info.name, e)
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(timeout=10)

    def __enter__(self) -> Rados:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- verbs ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Check every OSD answers (a cheap read), or raise ClusterUnavailable."""
        async def probe() -> None:
            with trio.move_on_after(timeout) as scope:
                try:
                    await rbdimage.list_images(self.objecter, self.pool)
                except OSDError as e:
                    if e.errno != errno.ENOENT:
                        raise
            if scope.cancelled_caught:
                addrs = ", ".join(f"{o.host}:{o.port}" for o in self.cfg.osdmap.osds.values())
                raise ClusterUnavailable(f"no answer from the OSDs ({addrs}) in {timeout:g}s")
        self.run(probe)

    def create_image(self, name: str, size: int, *, order: int = 22) -> str:
        return self.run(lambda: rbdimage.create_image(self.objecter, self.pool, name, size,
                                                      order=order))

    def list_images(self) -> dict[str, str]:
        async def ls() -> dict[str, str]:
            try:
                return await rbdimage.list_images(self.objecter, self.pool)
            except OSDError as e:
                if e.errno == errno.ENOENT:
                    return {}
                raise
        return self.run(ls)

    def remove_image(self, name: str, progress=None) -> None:  # noqa: ANN001
        self.run(lambda: rbdimage.remove_image(self.objecter, self.pool, name, progress))

    def rename_image(self, name: str, new_name: str) -> None:
        self.run(lambda: rbdimage.rename_image(self.objecter, self.pool, name, new_name))

    def close_image(self, img: rbdimage.Image) -> None:
        """Give an open image's exclusive lock back (once; ``close`` does it for all)."""
        if img in self._images:
            self._images.remove(img)
            self.run(img.close)

    def lock_holder(self, name: str) -> rbdlock.Holder | None:
        """Who holds the image's exclusive lock (None: nobody)."""
        async def get() -> rbdlock.Holder | None:
            image_id = await rbdimage.lookup_id(self.objecter, self.pool, name)
            return await rbdlock.holder_of(self.objecter, self.pool,
                                           rbdimage.header_oid(image_id))
        return self.run(get)

    def break_lock(self, name: str) -> rbdlock.Holder | None:
        """Break whoever holds the image's lock; returns who that was (None: nobody)."""
        async def brk() -> rbdlock.Holder | None:
            header = rbdimage.header_oid(await rbdimage.lookup_id(self.objecter, self.pool,
                                                                  name))
            h = await rbdlock.holder_of(self.objecter, self.pool, header)
            if h is not None:
                await rbdlock.break_holder(self.objecter, self.pool, header, h)
            return h
        return self.run(brk)

    def open_image(self, name: str, *, read_only: bool = False, writeback: bool = True
                   ) -> SyncImage:
        """Open an image; ``writeback`` as in ``rbdpy.rbd.image`` (False: write-through)."""
        img = self.run(lambda: rbdimage.Image.open(self.objecter, self.pool, name,
                                                   read_only=read_only, writeback=writeback))
        self._images.append(img)
        return SyncImage(self, img)


class SyncImage:
    """Blocking face of an Image; buffers are passed through as memoryviews, never copied.

    Reads and writes inside one object take the Image's callback path (``start_read`` /
    ``start_write``: no trio task per request); the rest runs as coroutines."""

    def __init__(self, rados: Rados, img: rbdimage.Image) -> None:
        self.rados = rados
        self.image = img

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
        """Give the image's exclusive lock back (flush first for durability)."""
        self.rados.close_image(self.image)

    def resize(self, size: int) -> None:
        self.rados.run(self.image.resize, size)

    def du(self) -> int:
        return self.rados.run(self.image.du)


def connect(cluster: str | None = None, *, pool: str = "rbd") -> Rados:
    """Connect to the cluster described by the cluster file (see ``rbdpy.config.locate``)."""
    return Rados(config.load(config.locate(cluster)), pool=pool)
