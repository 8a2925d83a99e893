"""The shape of Ceph's python-rbd over ``rbdpy.rbd.api``: ``RBD().create(ioctx, name, size)``,
``Image(ioctx, name)`` with ``read(offset, length) -> bytes`` and ``write(data, offset)``,
so a python-rbd script runs by changing its imports (``import rbdpy as rbd``; the ``Ioctx``
comes from ``rbdpy.Rados``, see ``rbdpy.client.pyrados``). Signatures follow python-rbd's;
errors are its classes (``rbdpy.binding_errors``), each an ``RbdpyError`` with its errno.

Differences, and what is not offered:

* One writer per image (rbdpy's exclusive lock): a writable ``Image`` of an image another
  client writes (``rbdpy up`` serving it, say) raises ``ImageBusy`` at once, where librbd
  would open it and trade the lock on each write. Open it with ``read_only=True``.
* ``write`` is write-back (as librbd with ``rbd cache``): ``flush`` makes what was written
  durable, as do ``close`` and ``Rados.shutdown`` for images still open. A write with
  ``fadvise_flags=LIBRADOS_OP_FLAG_FADVISE_FUA`` waits for the commit. A write that crosses
  the end of the image is ``InvalidArgument`` before anything is written (librbd writes
  the part inside and python-rbd raises ``IncompleteWriteError``). Reads and discards are
  clipped at the end, as librbd does.
* ``create``: format 2 only (``old_format=True`` is ``OperationNotSupported``), no
  ``data_pool``; images always have layering, exclusive-lock and object-map, and
  ``features`` may name only those (and striping), not fast-diff, deep-flatten, journaling.
* Not offered: snapshots (``snapshot=`` names none: ``ImageNotFound``), clones, ``copy``,
  ``aio_*``, advisory locks (``lock_exclusive``...), metadata, watchers, trash, mirroring,
  groups, namespaces, migration, encryption.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from rbdpy import binding_errors as be
from rbdpy.client.pyrados import LIBRADOS_OP_FLAG_FADVISE_FUA, Ioctx, translated
from rbdpy.client.rados import Rados as Cluster
from rbdpy.rbd import api as rbdapi

RBD_FEATURE_LAYERING = 1
RBD_FEATURE_STRIPINGV2 = 2
RBD_FEATURE_EXCLUSIVE_LOCK = 4
RBD_FEATURE_OBJECT_MAP = 8
RBD_FEATURE_FAST_DIFF = 16
RBD_FEATURE_DEEP_FLATTEN = 32
RBD_FEATURE_JOURNALING = 64
RBD_FEATURE_DATA_POOL = 128
_FEATURE_BITS = {"layering": RBD_FEATURE_LAYERING, "exclusive-lock": RBD_FEATURE_EXCLUSIVE_LOCK,
                 "object-map": RBD_FEATURE_OBJECT_MAP}
RBD_FEATURES_SUPPORTED = (RBD_FEATURE_LAYERING | RBD_FEATURE_STRIPINGV2
                          | RBD_FEATURE_EXCLUSIVE_LOCK | RBD_FEATURE_OBJECT_MAP)
SHUTDOWN_FLUSH = 30.0  # seconds Rados.shutdown waits for an open image's writes


def _cluster(ioctx: Ioctx) -> Cluster:
    if not isinstance(ioctx, Ioctx):
        raise TypeError(f"ioctx must be an rbdpy Ioctx (Rados.open_ioctx), not "
                        f"{type(ioctx).__name__}")
    return ioctx.cluster


def _name(value: str | bytes, what: str = "name") -> str:
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise be.InvalidArgument(f"{what} must be a string")
    return value


class RBD:
    """Image verbs on a pool (python-rbd's ``rbd.RBD``)."""

    def create(self, ioctx: Ioctx, name: str, size: int, order: int | None = None,
               old_format: bool = False, features: int | None = None,
               stripe_unit: int | None = None, stripe_count: int | None = None,
               data_pool: str | None = None) -> None:
        """A thin image of ``size`` bytes in objects of ``2**order`` bytes (default 22: 4
        MiB). ``ImageExists`` if the name is taken."""
        cluster = _cluster(ioctx)
        name = _name(name)
        if old_format:
            raise be.OperationNotSupported("format 1 images are not supported (rbdpy "
                                           "images are format 2)")
        if data_pool is not None:
            raise be.OperationNotSupported("a separate data pool is not supported")
        if features is not None and features & ~RBD_FEATURES_SUPPORTED:
            raise be.InvalidArgument(f"features {features:#x}: rbdpy images have layering, "
                                     "exclusive-lock and object-map (and striping), no others")
        with translated(be.RBD_ERRORS):
            rbdapi.create_image(cluster, name, size, order=22 if order is None else order,
                                stripe_unit=stripe_unit or 0, stripe_count=stripe_count or 1)

    def list(self, ioctx: Ioctx) -> list[str]:
        """Image names."""
        cluster = _cluster(ioctx)
        with translated(be.RBD_ERRORS):
            return sorted(rbdapi.list_images(cluster))

    def list2(self, ioctx: Ioctx) -> list[dict]:
        """``{"id": ..., "name": ...}`` per image."""
        cluster = _cluster(ioctx)
        with translated(be.RBD_ERRORS):
            ids = rbdapi.list_images(cluster)
        return [{"id": ids[n], "name": n} for n in sorted(ids)]

    def remove(self, ioctx: Ioctx, name: str,
               on_progress: Callable[[int, int], object] | None = None) -> None:
        """Delete the image and its data; ``ImageBusy`` while a writer has it open."""
        cluster = _cluster(ioctx)
        with translated(be.RBD_ERRORS):
            rbdapi.remove_image(cluster, _name(name), on_progress)

    def rename(self, ioctx: Ioctx, src: str, dest: str) -> None:
        """Rename, atomically; ``ImageExists`` if ``dest`` is taken."""
        cluster = _cluster(ioctx)
        with translated(be.RBD_ERRORS):
            rbdapi.rename_image(cluster, _name(src, "src"), _name(dest, "dest"))


class Image:
    """An open image (python-rbd's ``rbd.Image``); ``with Image(...) as image:`` closes it.

    Writable unless ``read_only``: it then holds the image's exclusive lock until
    ``close`` (``ImageBusy`` if another client holds it)."""

    def __init__(self, ioctx: Ioctx, name: str | None = None, snapshot: str | None = None,
                 read_only: bool = False, image_id: str | None = None) -> None:
        self.closed = True
        cluster = _cluster(ioctx)
        with translated(be.RBD_ERRORS):
            if name is None:
                if image_id is None:
                    raise be.InvalidArgument("an image name or image_id is needed")
                by_id = {i: n for n, i in rbdapi.list_images(cluster).items()}
                if image_id not in by_id:
                    raise be.ImageNotFound(f"no image with id {image_id}")
                name = by_id[image_id]
            name = _name(name)
            if snapshot is not None:
                raise be.ImageNotFound(f"image {name} has no snapshot {snapshot!r} (rbdpy "
                                       "has no snapshots yet)")
            self._img = rbdapi.open_image(cluster, name, read_only=read_only)
        self.ioctx = ioctx
        self.name = name
        self.read_only = read_only
        self._cluster = cluster
        self.closed = False
        cluster.at_close(self._at_shutdown)  # after the image's own: runs before it

    def __repr__(self) -> str:
        return f"rbd.Image(ioctx, {self.name!r})"

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def _open(self):
        if self.closed:
            raise be.InvalidArgument("image is closed")
        return self._img

    def close(self, _flush_timeout: float | None = None) -> None:
        """Flush (a writer's data is durable once this returns), then give the lock back.
        A flush error is raised after the lock is given back. Closing again is a no-op."""
        if self.closed:
            return
        self.closed = True
        self._cluster.cancel_at_close(self._at_shutdown)
        with translated(be.RBD_ERRORS):
            try:
                if not self.read_only:
                    self._img.flush(timeout=_flush_timeout)
            finally:
                self._img.close()

    def _at_shutdown(self) -> None:
        self.close(_flush_timeout=SHUTDOWN_FLUSH)

    # -- data -------------------------------------------------------------------------

    def read(self, offset: int, length: int, fadvise_flags: int = 0) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the image; holes are zeros);
        ``InvalidArgument`` past the end."""
        img = self._open()
        size = img.size
        if offset < 0 or length < 0 or offset > size:
            raise be.InvalidArgument(f"read {offset}~{length} outside the image ({size})")
        with translated(be.RBD_ERRORS):
            return img.pread(offset, min(length, size - offset))

    def write(self, data: bytes, offset: int, fadvise_flags: int = 0) -> int:
        """Write ``data`` (bytes, or any bytes-like object) at ``offset``; returns the
        number of bytes written. Write-back: durable at ``flush`` or ``close``, or at once
        with ``fadvise_flags=LIBRADOS_OP_FLAG_FADVISE_FUA``."""
        img = self._open()
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError("data must be a byte string") from None
        with translated(be.RBD_ERRORS):
            img.write(offset, view, fua=bool(fadvise_flags & LIBRADOS_OP_FLAG_FADVISE_FUA))
        return view.nbytes

    def discard(self, offset: int, length: int) -> None:
        """Deallocate (reads give zeros), clipped at the end of the image."""
        self._zero(offset, length, self._open().discard)

    def write_zeroes(self, offset: int, length: int, zero_flags: int = 0,
                     fadvise_flags: int = 0) -> None:
        """Zero the range (rbdpy deallocates whole objects, as discard does)."""
        self._zero(offset, length, self._open().write_zeroes,
                   bool(fadvise_flags & LIBRADOS_OP_FLAG_FADVISE_FUA))

    def _zero(self, offset: int, length: int, verb, fua: bool = False) -> None:
        size = self._img.size
        if offset < 0 or length < 0 or offset > size:
            raise be.InvalidArgument(f"{offset}~{length} outside the image ({size})")
        with translated(be.RBD_ERRORS):
            verb(offset, min(length, size - offset), fua=fua)

    def flush(self) -> None:
        """Every write that returned is durable once this returns; raises the error of a
        write-back write that failed."""
        img = self._open()
        with translated(be.RBD_ERRORS):
            img.flush()

    # -- size and facts ---------------------------------------------------------------

    def size(self) -> int:
        return self._open().size

    def resize(self, size: int, allow_shrink: bool = True) -> None:
        img = self._open()
        if not allow_shrink and size < img.size:
            raise be.InvalidArgument(f"shrinking {self.name} to {size} needs allow_shrink")
        with translated(be.RBD_ERRORS):
            img.resize(size)

    def stat(self) -> dict:
        """python-rbd's keys: size, obj_size, num_objs, order, block_name_prefix,
        parent_pool (-1), parent_name ('')."""
        info = self._open().info
        return {"size": info.size, "obj_size": info.object_size,
                "num_objs": info.num_objects, "order": info.order,
                "block_name_prefix": f"rbd_data.{info.id}", "parent_pool": -1,
                "parent_name": ""}

    def id(self) -> str:
        return self._open().info.id

    def get_name(self) -> str:
        return self.name

    def block_name_prefix(self) -> str:
        return f"rbd_data.{self.id()}"

    def old_format(self) -> bool:
        return False

    def features(self) -> int:
        info = self._open().info
        bits = sum(_FEATURE_BITS.get(f, 0) for f in info.features)
        if info.stripe_count != 1 or info.stripe_unit != info.object_size:
            bits |= RBD_FEATURE_STRIPINGV2
        return bits

    def stripe_unit(self) -> int:
        return self._open().info.stripe_unit

    def stripe_count(self) -> int:
        return self._open().info.stripe_count

    def create_timestamp(self) -> datetime:
        return datetime.fromtimestamp(self._open().info.created)

    def is_exclusive_lock_owner(self) -> bool:
        lock = self._open().image.lock
        return lock is not None and not lock.lost


__all__ = [
    "RBD", "Image", "RBD_FEATURE_LAYERING", "RBD_FEATURE_STRIPINGV2",
    "RBD_FEATURE_EXCLUSIVE_LOCK", "RBD_FEATURE_OBJECT_MAP", "RBD_FEATURE_FAST_DIFF",
    "RBD_FEATURE_DEEP_FLATTEN", "RBD_FEATURE_JOURNALING", "RBD_FEATURE_DATA_POOL",
    "RBD_FEATURES_SUPPORTED", "LIBRADOS_OP_FLAG_FADVISE_FUA",
]
