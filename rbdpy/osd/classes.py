"""Object classes: methods that run on the OSD, inside the request's transaction.

A ``call(cls, method, indata)`` op runs one registered method against its object. The method
reads the object through the context and queues mutations into the very transaction the rest
of the op vector builds, so a class method is atomic with the ops around it, and two clients
racing through a method (create an image name, take a lock) are serialized by the OSD.

Methods take and return bytes; the classes here use JSON for their small structures (the
header and directory are off the data path).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any, Protocol

from rbdpy.errors import RbdpyError


class ClsError(RbdpyError):
    """A method refused: carries the errno the op reports."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or errno.errorcode.get(err, str(err)))


class ClsContext(Protocol):
    """What a method may do to its object (implemented by the OSD)."""

    def exists(self) -> bool: ...
    def stat(self) -> tuple[int, int, int]: ...  # size, mtime_ns, version
    def read(self, offset: int, length: int) -> bytes: ...
    def getxattr(self, name: str) -> bytes | None: ...
    def getxattrs(self) -> dict[str, bytes]: ...
    def create(self, exclusive: bool) -> None: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def writefull(self, data: bytes) -> None: ...
    def setxattr(self, name: str, value: bytes) -> None: ...
    def rmxattr(self, name: str) -> None: ...
    def remove(self) -> None: ...
    def allocated(self) -> int: ...


Method = Callable[[ClsContext, bytes], bytes]
_REGISTRY: dict[tuple[str, str], tuple[Method, bool]] = {}


def method(cls: str, name: str, *, write: bool) -> Callable[[Method], Method]:
    """Register ``cls.name``; ``write`` says whether it may mutate (so reads stay cheap)."""

    def deco(fn: Method) -> Method:
        _REGISTRY[(cls, name)] = (fn, write)
        return fn

    return deco


def lookup(cls: str, name: str) -> tuple[Method, bool]:
    try:
        return _REGISTRY[(cls, name)]
    except KeyError:
        raise ClsError(errno.EOPNOTSUPP, f"no method {cls}.{name}") from None


def _j(data: bytes) -> Any:
    try:
        return json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ClsError(errno.EINVAL, "method input is not JSON") from None


def _out(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


# ---- lock: advisory exclusive/shared locks with cookies (like Ceph's cls_lock) -------------


def _locks(ctx: ClsContext, name: str) -> dict[str, Any]:
    raw = ctx.getxattr(f"lock.{name}")
    return json.loads(raw) if raw else {"type": None, "holders": {}}


@method("lock", "lock", write=True)
def lock_lock(ctx: ClsContext, indata: bytes) -> bytes:
    """Take lock ``name`` as ``owner``/``cookie``; EBUSY if incompatible, EEXIST if held."""
    a = _j(indata)
    name, kind = a.get("name", "lock"), a.get("type", "exclusive")
    if kind not in ("exclusive", "shared"):
        raise ClsError(errno.EINVAL, "lock type must be exclusive or shared")
    holder = f"{a.get('owner', '')}/{a.get('cookie', '')}"
    st = _locks(ctx, name)
    if holder in st["holders"]:
        raise ClsError(errno.EEXIST, "already held by this owner and cookie")
    if st["holders"] and (kind == "exclusive" or st["type"] == "exclusive"):
        raise ClsError(errno.EBUSY, "lock is held")
    if not ctx.exists():
        ctx.create(False)
    st["type"] = kind
    st["holders"][holder] = {"tag": a.get("tag", ""), "desc": a.get("description", "")}
    ctx.setxattr(f"lock.{name}", _out(st))
    return b""


def _held(ctx: ClsContext, a: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(lock name, holder key, lock state) for a call naming a holder that holds the lock;
    ENOENT if it does not (any more)."""
    name = a.get("name", "lock")
    holder = f"{a.get('owner', '')}/{a.get('cookie', '')}"
    st = _locks(ctx, name)
    if holder not in st["holders"]:
        raise ClsError(errno.ENOENT, "not held by this owner and cookie")
    return name, holder, st


def _drop_holder(ctx: ClsContext, a: dict[str, Any]) -> bytes:
    name, holder, st = _held(ctx, a)
    del st["holders"][holder]
    if st["holders"]:
        ctx.setxattr(f"lock.{name}", _out(st))
    else:
        ctx.rmxattr(f"lock.{name}")
    return b""


@method("lock", "unlock", write=True)
def lock_unlock(ctx: ClsContext, indata: bytes) -> bytes:
    return _drop_holder(ctx, _j(indata))


@method("lock", "renew", write=True)
def lock_renew(ctx: ClsContext, indata: bytes) -> bytes:
    """Replace the description of a lock ``owner``/``cookie`` holds (its lease); ENOENT if
    it does not hold it any more (broken), so the holder learns it lost the lock."""
    a = _j(indata)
    name, holder, st = _held(ctx, a)
    st["holders"][holder]["desc"] = a.get("description", "")
    ctx.setxattr(f"lock.{name}", _out(st))
    return b""


@method("lock", "break_lock", write=True)
def lock_break(ctx: ClsContext, indata: bytes) -> bytes:
    """Remove a lock; with ``owner`` and ``cookie``, only that holder's (ENOENT if it does
    not hold it), so a breaker that looked at the lock breaks what it saw, nothing newer."""
    a = _j(indata)
    if "owner" in a or "cookie" in a:
        return _drop_holder(ctx, a)
    name = a.get("name", "lock")
    if ctx.getxattr(f"lock.{name}") is None:
        raise ClsError(errno.ENOENT, "no such lock")
    ctx.rmxattr(f"lock.{name}")
    return b""


@method("lock", "get_info", write=False)
def lock_info(ctx: ClsContext, indata: bytes) -> bytes:
    a = _j(indata)
    if not ctx.exists():
        raise ClsError(errno.ENOENT, "no such object")
    return _out(_locks(ctx, a.get("name", "lock")))


# ---- rbd: image header and directory -------------------------------------------------------

HEADER_ATTR = "rbd.header"


@method("rbd", "create", write=True)
def rbd_create(ctx: ClsContext, indata: bytes) -> bytes:
    """Create an image header exclusively: EEXIST if one is there."""
    h = _j(indata)
    for key in ("id", "size", "order"):
        if key not in h:
            raise ClsError(errno.EINVAL, f"header needs {key}")
    if ctx.exists():
        raise ClsError(errno.EEXIST, "image header exists")
    ctx.create(True)
    h.setdefault("snapshots", [])
    h.setdefault("parent", None)
    ctx.setxattr(HEADER_ATTR, _out(h))
    return b""


@method("rbd", "get_header", write=False)
def rbd_get_header(ctx: ClsContext, indata: bytes) -> bytes:
    raw = ctx.getxattr(HEADER_ATTR) if ctx.exists() else None
    if raw is None:
        raise ClsError(errno.ENOENT, "no image header")
    return raw


@method("rbd", "set_header_fields", write=True)
def rbd_set_fields(ctx: ClsContext, indata: bytes) -> bytes:
    """Update some header fields (size on resize, features…) atomically."""
    raw = ctx.getxattr(HEADER_ATTR) if ctx.exists() else None
    if raw is None:
        raise ClsError(errno.ENOENT, "no image header")
    h = json.loads(raw)
    changes = _j(indata)
    if "id" in changes and changes["id"] != h["id"]:
        raise ClsError(errno.EINVAL, "the image id never changes")
    h.update(changes)
    ctx.setxattr(HEADER_ATTR, _out(h))
    return _out(h)


@method("rbd", "dir_add", write=True)
def rbd_dir_add(ctx: ClsContext, indata: bytes) -> bytes:
    """Map name → id in the directory object; EEXIST if the name is taken."""
    a = _j(indata)
    name, image_id = a.get("name"), a.get("id")
    if not name or not image_id:
        raise ClsError(errno.EINVAL, "dir_add needs name and id")
    if not ctx.exists():
        ctx.create(False)
    if ctx.getxattr(f"name.{name}") is not None:
        raise ClsError(errno.EEXIST, f"image {name} exists")
    ctx.setxattr(f"name.{name}", image_id.encode())
    return b""


@method("rbd", "dir_remove", write=True)
def rbd_dir_remove(ctx: ClsContext, indata: bytes) -> bytes:
    a = _j(indata)
    name = a.get("name", "")
    cur = ctx.getxattr(f"name.{name}") if ctx.exists() else None
    if cur is None:
        raise ClsError(errno.ENOENT, f"no image {name}")
    if a.get("id") and cur.decode() != a["id"]:
        raise ClsError(errno.ESTALE, "name now refers to another image")
    ctx.rmxattr(f"name.{name}")
    return b""


@method("rbd", "dir_list", write=False)
def rbd_dir_list(ctx: ClsContext, indata: bytes) -> bytes:
    if not ctx.exists():
        return _out({})
    return _out({k[5:]: v.decode() for k, v in ctx.getxattrs().items() if k.startswith("name.")})


@method("rbd", "objmap_set", write=True)
def rbd_objmap_set(ctx: ClsContext, indata: bytes) -> bytes:
    """Set bits [start, end) of an object-map object to ``value`` (atomic on the OSD)."""
    a = _j(indata)
    start, end, value = int(a.get("start", 0)), int(a.get("end", 0)), bool(a.get("value"))
    if not 0 <= start <= end or end - start > (1 << 30):
        raise ClsError(errno.EINVAL, "bad object-map range")
    if start == end:
        return b""
    b0, b1 = start // 8, (end - 1) // 8 + 1
    size = ctx.stat()[0] if ctx.exists() else 0
    cur = bytearray(ctx.read(b0, b1 - b0)) if size > b0 else bytearray()
    cur.extend(bytes(b1 - b0 - len(cur)))
    for bit in range(start, end):
        i, m = bit // 8 - b0, 1 << (bit % 8)
        cur[i] = cur[i] | m if value else cur[i] & ~m
    ctx.write(b0, bytes(cur))
    return b""


@method("rbd", "allocated", write=False)
def rbd_allocated(ctx: ClsContext, indata: bytes) -> bytes:
    """Bytes of this object that are allocated (its holes take no space)."""
    if not ctx.exists():
        raise ClsError(errno.ENOENT, "no such object")
    return str(ctx.allocated()).encode()
