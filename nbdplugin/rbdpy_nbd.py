"""nbdkit python plugin serving an rbdpy image: thin, callbacks → Image calls, errors → errno.

    nbdkit python nbdplugin/rbdpy_nbd.py cluster=rbdpy-data image=disk0 [readonly=1]

nbdkit embeds Debian's /usr/bin/python3, so this file first puts the project's virtualenv
(``.venv`` beside ``nbdplugin/``, or ``$RBDPY_VENV``) on sys.path with ``site.addsitedir``,
which also honours the editable install's ``.pth``. The cluster is probed in ``get_ready``
(before nbdkit forks) so a wrong image or a dead cluster is a clear startup error; the real
connection, with its background trio thread, is made in ``after_fork`` because threads do
not survive nbdkit's fork.
"""

import errno
import glob
import os
import site
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import nbdkit


def _add_venv() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.environ.get("RBDPY_VENV") or os.path.join(root, ".venv")
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for sp in glob.glob(os.path.join(venv, "lib", ver, "site-packages")):
        site.addsitedir(sp)
    if root not in sys.path:
        sys.path.append(root)


_add_venv()

from rbdpy import config as rconfig  # noqa: E402
from rbdpy.client.objecter import OSDError  # noqa: E402
from rbdpy.client.rados import ClusterUnavailable, Rados  # noqa: E402
from rbdpy.rbd import api as rbdapi  # noqa: E402
from rbdpy.rbd.image import ImageError  # noqa: E402

API_VERSION = 2
T = TypeVar("T")
Handle = dict[str, bool]  # what open() returns; nbdkit hands it back to every callback

_cfg = {"cluster": None, "image": None, "readonly": False, "pool": "rbd", "writeback": True}
_state = {"rados": None, "image": None}


def config(key: str, value: str) -> None:
    if key in ("cluster", "image", "pool"):
        _cfg[key] = value
    elif key in ("readonly", "writeback"):
        if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise RuntimeError(f"{key}={value!r}: want a boolean (1/0, true/false, on/off)")
        _cfg[key] = value.lower() in ("1", "true", "yes", "on")
    else:
        raise RuntimeError(f"unknown parameter {key!r} "
                           "(want cluster=, image=, pool=, readonly=, writeback=)")


def config_complete() -> None:
    if not _cfg["image"]:
        raise RuntimeError("image= is required")


def config_help() -> str:
    return ("cluster=PATH   cluster file or data directory (default $RBDPY_CLUSTER or "
            "./rbdpy-data)\nimage=NAME     image to serve\nreadonly=1     refuse writes\n"
            "writeback=0    writes wait for the OSD (default 1: they return once sent; "
            "flush\n               makes them durable and reports any that failed)")


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def _open_image() -> tuple[Rados, rbdapi.SyncImage]:
    cfg = rconfig.load(rconfig.locate(_cfg["cluster"]))
    rados = Rados(cfg, pool=_cfg["pool"], options=rconfig.ClientOptions.from_env())
    try:
        rados.wait_ready(timeout=10)
        img = rbdapi.open_image(rados, _cfg["image"], read_only=_cfg["readonly"],
                               writeback=_cfg["writeback"])
    except BaseException:
        rados.close()
        raise
    return rados, img


def get_ready() -> None:
    """Fail at startup, with one clear line, if the image or the cluster is not there."""
    try:
        rados, img = _open_image()
    except (rconfig.ConfigError, ClusterUnavailable, ImageError) as e:
        raise RuntimeError(f"rbdpy: {e}") from None
    nbdkit.debug(f"rbdpy: image {_cfg['image']} size {img.size}")
    rados.close()


def after_fork() -> None:
    _state["rados"], _state["image"] = _open_image()


CLEANUP_FLUSH_TIMEOUT = 30.0  # nbdkit exits even when the OSDs are gone for good


def cleanup() -> None:
    if _state["rados"] is not None:
        try:
            _state["image"].flush(timeout=CLEANUP_FLUSH_TIMEOUT)
        except (OSDError, ImageError) as e:
            nbdkit.debug(f"rbdpy: final flush failed: {e}")
            print(f"rbdpy: final flush failed, unflushed writes are lost: {e}",
                  file=sys.stderr)
        finally:
            _state["rados"].close()


def open(readonly: bool) -> Handle:  # the name nbdkit calls
    if _state["image"] is None:
        _state["rados"], _state["image"] = _open_image()
    return {"readonly": readonly or _cfg["readonly"]}


def get_size(h: Handle) -> int:
    return _state["image"].size


def block_size(h: Handle) -> tuple[int, int, int]:
    # minimum 1 (any byte range works), preferred 4 KiB, maximum 32 MiB (nbdkit's own cap)
    return (1, 4096, 32 * 1024 * 1024)


def can_write(h: Handle) -> bool:
    return not h["readonly"]


def can_flush(h: Handle) -> bool:
    return True


def can_trim(h: Handle) -> bool:
    return True


def can_zero(h: Handle) -> bool:
    return True


def can_fast_zero(h: Handle) -> bool:
    return True


def can_fua(h: Handle) -> int:
    return nbdkit.FUA_NATIVE


def can_multi_conn(h: Handle) -> bool:
    return True  # one objecter per nbdkit process: flush covers every connection's writes


def can_extents(h: Handle) -> bool:
    return True


def is_rotational(h: Handle) -> bool:
    return False


def _errno_edge(fn: Callable[..., T]) -> Callable[..., T]:
    """Typed errors inside become errno values here: set_error, then raise (never a fake
    success with an unfilled buffer)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any) -> T:
        try:
            return fn(*args)
        except OSError as e:  # rbdpy's errors (RbdpyError) included: each has its errno
            err = e.errno
            nbdkit.set_error(err if isinstance(err, int) and err > 0 else errno.EIO)
            raise

    return wrapper


@_errno_edge
def pread(h: Handle, buf: bytearray, offset: int, flags: int) -> None:
    _state["image"].read(offset, buf)


@_errno_edge
def pwrite(h: Handle, buf: memoryview, offset: int, flags: int) -> None:
    _state["image"].write(offset, buf, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def flush(h: Handle, flags: int) -> None:
    _state["image"].flush()


@_errno_edge
def trim(h: Handle, count: int, offset: int, flags: int) -> None:
    _state["image"].discard(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def zero(h: Handle, count: int, offset: int, flags: int) -> None:
    # always fast: whole objects are deleted, partial ranges zeroed on the OSD, no data sent
    _state["image"].write_zeroes(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def extents(h: Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    runs = _state["image"].extents(offset, count)
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(off, n, 0 if alloc else hole) for off, n, alloc in runs]
