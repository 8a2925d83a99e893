"""The exceptions of Ceph's Python bindings (python-rados, python-rbd), as rbdpy errors.

A script written for ``rados``/``rbd`` catches ``rbd.ImageNotFound``, ``rados.ObjectNotFound``
and so on; with ``import rbdpy as rados`` / ``import rbdpy as rbd`` the same names exist on
``rbdpy`` (see ``rbdpy.client.pyrados`` and ``rbdpy.rbd.pyrbd``). Each class is an
``RbdpyError`` (so an ``OSError``) carrying the errno Ceph's bindings map to it, and is built
as theirs are: ``ImageNotFound(message, errno=None)``.

The two bindings share one namespace here, so where both have a class for one errno the
context decides: image verbs raise the ``rbd`` one (``ImageNotFound``, ``ImageExists``,
``ImageBusy``), cluster and pool verbs the ``rados`` one (``ObjectNotFound``...). Names that
differ only in spelling are one class (``InvalidArgumentError`` is ``InvalidArgument``,
``TimedOut`` is ``Timeout``).
"""

from __future__ import annotations

import errno as E
import os

from rbdpy.errors import RbdpyError


class Error(RbdpyError):
    """Base of these errors (python-rbd's ``Error``/``OSError``, python-rados's ``Error``)."""

    ERRNO = E.EIO  # when built without one

    def __init__(self, message: str = "", errno: int | None = None) -> None:
        err = self.ERRNO if errno is None else errno
        super().__init__(err, message or os.strerror(err))

    def __reduce__(self):  # pickles with this class's own argument order
        return (type(self), (self.strerror, self.errno))


class PermissionError(Error):  # python-rbd's name (shadows the builtin here only)
    ERRNO = E.EPERM


class ImageNotFound(Error):
    ERRNO = E.ENOENT


class ObjectNotFound(Error):
    ERRNO = E.ENOENT


class ImageExists(Error):
    ERRNO = E.EEXIST


class ObjectExists(Error):
    ERRNO = E.EEXIST


class IOError(Error):  # python-rbd's name (shadows the builtin here only)
    ERRNO = E.EIO


class NoSpace(Error):
    ERRNO = E.ENOSPC


class IncompleteWriteError(Error):
    ERRNO = E.EIO


class InvalidArgument(Error):
    ERRNO = E.EINVAL


InvalidArgumentError = InvalidArgument  # python-rados's spelling


class ReadOnlyImage(Error):
    ERRNO = E.EROFS


class ImageBusy(Error):
    ERRNO = E.EBUSY


class ObjectBusy(Error):
    ERRNO = E.EBUSY


class FunctionNotSupported(Error):
    ERRNO = E.ENOSYS


class ArgumentOutOfRange(Error):
    ERRNO = E.EDOM


class ConnectionShutdown(Error):
    ERRNO = E.ESHUTDOWN


class Timeout(Error):
    ERRNO = E.ETIMEDOUT


TimedOut = Timeout  # python-rados's spelling


class DiskQuotaExceeded(Error):
    ERRNO = E.EDQUOT


class OperationNotSupported(Error):
    ERRNO = E.EOPNOTSUPP


class RadosStateError(Error):
    """A call that needs a connected ``Rados`` before ``connect`` or after ``shutdown``."""

    ERRNO = E.ENOTCONN


class IoctxStateError(Error):
    """A call on a closed ``Ioctx``."""

    ERRNO = E.EBADF


_COMMON: dict[int, type[Error]] = {
    E.EPERM: PermissionError, E.EIO: IOError, E.ENOSPC: NoSpace, E.EINVAL: InvalidArgument,
    E.EROFS: ReadOnlyImage, E.ENOSYS: FunctionNotSupported, E.EDOM: ArgumentOutOfRange,
    E.ESHUTDOWN: ConnectionShutdown, E.ETIMEDOUT: Timeout, E.EDQUOT: DiskQuotaExceeded,
    E.EOPNOTSUPP: OperationNotSupported,
}
RBD_ERRORS: dict[int, type[Error]] = {
    **_COMMON, E.ENOENT: ImageNotFound, E.EEXIST: ImageExists, E.EBUSY: ImageBusy}
"""errno → class for image verbs (python-rbd's ``errno_to_exception``)."""
RADOS_ERRORS: dict[int, type[Error]] = {
    **_COMMON, E.ENOENT: ObjectNotFound, E.EEXIST: ObjectExists, E.EBUSY: ObjectBusy}
"""errno → class for cluster and pool verbs (python-rados's)."""


def make_ex(err: int, message: str, table: dict[int, type[Error]]) -> Error:
    """The exception for ``err`` in ``table`` (``Error`` itself for an errno it lacks)."""
    return table.get(err, Error)(message, errno=err)


__all__ = [
    "Error", "PermissionError", "ImageNotFound", "ObjectNotFound", "ImageExists",
    "ObjectExists", "IOError", "NoSpace", "IncompleteWriteError", "InvalidArgument",
    "InvalidArgumentError", "ReadOnlyImage", "ImageBusy", "ObjectBusy", "FunctionNotSupported",
    "ArgumentOutOfRange", "ConnectionShutdown", "Timeout", "TimedOut", "DiskQuotaExceeded",
    "OperationNotSupported", "RadosStateError", "IoctxStateError",
]
