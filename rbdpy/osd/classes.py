"""Object classes: methods that run on the OSD, inside the request's transaction.

A ``call(cls, method, indata)`` op runs one registered method against its object. The method
reads the object through the context and queues mutations into the very transaction the rest
of the op vector builds, so a class method is atomic with the ops around it, and two clients
racing through a method (create an image name, take a lock) are serialized by the OSD.

Methods take and return bytes; the classes here use JSON for their small structures (the
header and directory are off the data path). Input comes from any client, so every method
checks its shape and types (``_args``, ``_str``, ``_int``) and refuses with EINVAL: an
exception of any other kind is a bug, which the daemon answers with EIO. State stored in
xattrs that plain ``SetXattr`` ops can also write is checked the same way (EIO, as Ceph's
classes answer state they cannot decode).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

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


def methods() -> Iterator[tuple[str, str, bool]]:
    """Every registered (class, method, write), e.g. for tests that call them all."""
    for (cls, name), (_fn, write) in sorted(_REGISTRY.items()):
        yield cls, name, write


def _j(data: bytes) -> Any:
    try:
        return json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise ClsError(errno.EINVAL, "method input is not JSON") from None


def _args(data: bytes) -> dict[str, Any]:
    """A method's input: a JSON object (empty input: no arguments)."""
    a = _j(data)
    if not isinstance(a, dict):
        raise ClsError(errno.EINVAL, f"method input must be a JSON object, not {_kind(a)}")
    return a


def _kind(v: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), "?")


def _check_str(v: Any, what: str) -> str:
    """``v`` if it is a string that can be encoded (JSON may carry lone surrogates)."""
    if not isinstance(v, str):
        raise ClsError(errno.EINVAL, f"{what} must be a string, not {_kind(v)}")
    try:
        v.encode()
    except UnicodeEncodeError:
        raise ClsError(errno.EINVAL, f"{what} is not valid unicode") from None
    return v


def _str(a: dict[str, Any], key: str, default: str = "") -> str:
    return _check_str(a.get(key, default), key)


def _int(a: dict[str, Any], key: str, default: int = 0, *, lo: int = 0,
         hi: int | None = None) -> int:
    """An integer argument in [lo, hi] (JSON booleans and numbers with a fraction are not)."""
    v = a.get(key, default)
    if type(v) is not int:
        raise ClsError(errno.EINVAL, f"{key} must be an integer, not {_kind(v)}")
    if v < lo or (hi is not None and v > hi):
        raise ClsError(errno.EINVAL, f"{key} {v} outside [{lo}, {hi if hi is not None else ''}]")
    return v


def _stored(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object this class stored in an xattr (EIO if it is not one: a client may have
    overwritten it with a plain ``SetXattr``)."""
    try:
        v = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        v = None
    if not isinstance(v, dict):
        raise ClsError(errno.EIO, f"stored {what} is not a JSON object")
    return v


def _out(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


# ---- lock: advisory exclusive/shared locks with cookies (like Ceph's cls_lock) -------------


def _locks(ctx: ClsContext, name: str) -> dict[str, Any]:
    raw = ctx.getxattr(f"lock.{name}")
    if not raw:
        return {"type": None, "holders": {}}
    st = _stored(raw, f"lock {name}")
    holders = st.get("holders")
    if not isinstance(holders, dict) or not all(isinstance(h, dict) for h in holders.values()):
        raise ClsError(errno.EIO, f"stored lock {name} has no holders table")
    return st


def _lock_name(a: dict[str, Any]) -> str:
    return _str(a, "name", "lock")


def _holder(a: dict[str, Any]) -> str:
    return f"{_str(a, 'owner')}/{_str(a, 'cookie')}"


@method("lock", "lock", write=True)
def lock_lock(ctx: ClsContext, indata: bytes) -> bytes:
    """Take lock ``name`` as ``owner``/``cookie``; EBUSY if incompatible, EEXIST if held."""
    a = _args(indata)
    name, kind = _lock_name(a), _str(a, "type", "exclusive")
    if kind not in ("exclusive", "shared"):
        raise ClsError(errno.EINVAL, "lock type must be exclusive or shared")
    holder = _holder(a)
    tag, desc = _str(a, "tag"), _str(a, "description")
    st = _locks(ctx, name)
    if holder in st["holders"]:
        raise ClsError(errno.EEXIST, "already held by this owner and cookie")
    if st["holders"] and (kind == "exclusive" or st.get("type") == "exclusive"):
        raise ClsError(errno.EBUSY, "lock is held")
    if not ctx.exists():
        ctx.create(False)
    st["type"] = kind
    st["holders"][holder] = {"tag": tag, "desc": desc}
    ctx.setxattr(f"lock.{name}", _out(st))
    return b""


def _held(ctx: ClsContext, a: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(lock name, holder key, lock state) for a call naming a holder that holds the lock;
    ENOENT if it does not (any more)."""
    name, holder = _lock_name(a), _holder(a)
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
    return _drop_holder(ctx, _args(indata))


@method("lock", "renew", write=True)
def lock_renew(ctx: ClsContext, indata: bytes) -> bytes:
    """Replace the description of a lock ``owner``/``cookie`` holds (its lease); ENOENT if
    it does not hold it any more (broken), so the holder learns it lost the lock."""
    a = _args(indata)
    desc = _str(a, "description")
    name, holder, st = _held(ctx, a)
    st["holders"][holder]["desc"] = desc
    ctx.setxattr(f"lock.{name}", _out(st))
    return b""


@method("lock", "break_lock", write=True)
def lock_break(ctx: ClsContext, indata: bytes) -> bytes:
    """Remove a lock; with ``owner`` and ``cookie``, only that holder's (ENOENT if it does
    not hold it), so a breaker that looked at the lock breaks what it saw, nothing newer."""
    a = _args(indata)
    if "owner" in a or "cookie" in a:
        return _drop_holder(ctx, a)
    name = _lock_name(a)
    if ctx.getxattr(f"lock.{name}") is None:
        raise ClsError(errno.ENOENT, "no such lock")
    ctx.rmxattr(f"lock.{name}")
    return b""


@method("lock", "get_info", write=False)
def lock_info(ctx: ClsContext, indata: bytes) -> bytes:
    name = _lock_name(_args(indata))
    if not ctx.exists():
        raise ClsError(errno.ENOENT, "no such object")
    return _out(_locks(ctx, name))


# ---- rbd: image header and directory -------------------------------------------------------

HEADER_ATTR = "rbd.header"
MIN_ORDER, MAX_ORDER = 12, 25  # 4 KiB .. 32 MiB objects (``rbd.layout.Layout``)
MAX_OBJMAP_OBJECTS = 1 << 28  # bits of a 32 MiB object map (the store's object size limit)


def _check_header_fields(h: dict[str, Any]) -> None:
    """The header fields the OSD and the image layer compute with must have their types."""
    if "id" in h and not _str(h, "id"):
        raise ClsError(errno.EINVAL, "the image id is empty")
    if "name" in h:
        _str(h, "name")
    if "size" in h:
        _int(h, "size")
    if "order" in h:
        _int(h, "order", lo=MIN_ORDER, hi=MAX_ORDER)


def _header(ctx: ClsContext) -> dict[str, Any]:
    raw = ctx.getxattr(HEADER_ATTR) if ctx.exists() else None
    if raw is None:
        raise ClsError(errno.ENOENT, "no image header")
    return _stored(raw, "image header")


@method("rbd", "create", write=True)
def rbd_create(ctx: ClsContext, indata: bytes) -> bytes:
    """Create an image header exclusively: EEXIST if one is there."""
    h = _args(indata)
    for key in ("id", "size", "order"):
        if key not in h:
            raise ClsError(errno.EINVAL, f"header needs {key}")
    _check_header_fields(h)
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
    changes = _args(indata)
    _check_header_fields(changes)
    h = _header(ctx)
    if "id" in changes and changes["id"] != h.get("id"):
        raise ClsError(errno.EINVAL, "the image id never changes")
    h.update(changes)
    ctx.setxattr(HEADER_ATTR, _out(h))
    return _out(h)


@method("rbd", "dir_add", write=True)
def rbd_dir_add(ctx: ClsContext, indata: bytes) -> bytes:
    """Map name → id in the directory object; EEXIST if the name is taken."""
    a = _args(indata)
    name, image_id = _str(a, "name"), _str(a, "id")
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
    a = _args(indata)
    name, image_id = _str(a, "name"), _str(a, "id")
    cur = ctx.getxattr(f"name.{name}") if ctx.exists() else None
    if cur is None:
        raise ClsError(errno.ENOENT, f"no image {name}")
    if image_id and cur != image_id.encode():
        raise ClsError(errno.ESTALE, "name now refers to another image")
    ctx.rmxattr(f"name.{name}")
    return b""


@method("rbd", "dir_list", write=False)
def rbd_dir_list(ctx: ClsContext, indata: bytes) -> bytes:
    if not ctx.exists():
        return _out({})
    return _out({k[5:]: v.decode(errors="replace")  # a SetXattr may have put any bytes
                 for k, v in ctx.getxattrs().items() if k.startswith("name.")})


@method("rbd", "objmap_set", write=True)
def rbd_objmap_set(ctx: ClsContext, indata: bytes) -> bytes:
    """Set bits [start, end) of an object-map object to ``value`` (atomic on the OSD).

    ``objects`` is the image's object count, which the caller has from the header (this
    method sees only the map object, and the header may live on another OSD): the range
    must lie inside it and inside what a map object can hold (``MAX_OBJMAP_OBJECTS``, all
    a caller that does not state it is held to)."""
    a = _args(indata)
    objects = min(_int(a, "objects", MAX_OBJMAP_OBJECTS), MAX_OBJMAP_OBJECTS)
    start, end = _int(a, "start", hi=objects), _int(a, "end", hi=objects)
    value = a.get("value", False)
    if type(value) not in (bool, int) or value not in (0, 1):
        raise ClsError(errno.EINVAL, "value must be 0, 1, true or false")
    if start > end:
        raise ClsError(errno.EINVAL, f"object-map range [{start}, {end}) is reversed")
    if start == end:
        return b""
    b0, b1 = start // 8, (end - 1) // 8 + 1
    cur = np.zeros(b1 - b0, dtype=np.uint8)
    if ctx.exists() and ctx.stat()[0] > b0:
        got = ctx.read(b0, b1 - b0)
        cur[: len(got)] = np.frombuffer(got, dtype=np.uint8)
    set_bits(cur, start - 8 * b0, end - 8 * b0, bool(value))
    ctx.write(b0, cur.tobytes())
    return b""


def set_bits(bitmap: np.ndarray, start: int, end: int, value: bool) -> None:
    """Set bits [start, end) of ``bitmap`` (uint8; bit i is bit i % 8 of byte i // 8, as
    ``np.unpackbits(bitorder="little")`` reads it): masks on the two edge bytes and one
    slice for the whole bytes between, so a range of millions of objects costs a memset."""
    if start >= end:
        return
    first, last = start // 8, (end - 1) // 8
    head = (0xFF << (start % 8)) & 0xFF
    tail = 0xFF >> (7 - (end - 1) % 8)
    edges = [(first, head & tail)] if first == last else [(first, head), (last, tail)]
    for i, mask in edges:
        bitmap[i] = bitmap[i] | mask if value else bitmap[i] & (~mask & 0xFF)
    if last - first > 1:
        bitmap[first + 1 : last] = 0xFF if value else 0


@method("rbd", "allocated", write=False)
def rbd_allocated(ctx: ClsContext, indata: bytes) -> bytes:
    """Bytes of this object that are allocated (its holes take no space)."""
    if not ctx.exists():
        raise ClsError(errno.ENOENT, "no such object")
    return str(ctx.allocated()).encode()
