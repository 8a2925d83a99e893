"""Admin commands from their JSON form (Ceph's mon command style) to the monitor's events.

``{"prefix": "osd out", "id": 3}`` becomes ``OsdOut(3)``. Pure: a bad command raises
MonError (EINVAL, or ENOTSUP for an unknown prefix), which the daemon sends back as the reply.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from rbdpy.mon.events import (
    Command,
    MonError,
    OsdAdd,
    OsdIn,
    OsdOut,
    OsdRm,
    PoolCreate,
    PoolSet,
)


def _int(cmd: dict[str, Any], key: str, optional: bool = False) -> Any:
    v = cmd.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise MonError(f"{cmd['prefix']}: want an integer {key!r}, got {v!r}")
    return v


def _str(cmd: dict[str, Any], key: str) -> str:
    v = cmd.get(key)
    if not isinstance(v, str):
        raise MonError(f"{cmd['prefix']}: want a string {key!r}, got {v!r}")
    return v


def _weight(cmd: dict[str, Any]) -> OsdAdd:
    w = cmd.get("weight", 1.0)
    if not isinstance(w, (int, float)) or isinstance(w, bool):
        raise MonError(f"osd add: want a number 'weight', got {w!r}")
    return OsdAdd(float(w))


def _pool_set(cmd: dict[str, Any]) -> PoolSet:
    val = cmd.get("val")
    if not isinstance(val, (int, str)) or isinstance(val, bool):
        raise MonError(f"osd pool set: want an integer or string 'val', got {val!r}")
    return PoolSet(_str(cmd, "pool"), _str(cmd, "var"), val)


_PARSERS: dict[str, Callable[[dict[str, Any]], Command]] = {
    "osd add": _weight,
    "osd rm": lambda c: OsdRm(_int(c, "id")),
    "osd in": lambda c: OsdIn(_int(c, "id")),
    "osd out": lambda c: OsdOut(_int(c, "id")),
    "osd pool create": lambda c: PoolCreate(_str(c, "pool"), _int(c, "size", True),
                                            _int(c, "min_size", True),
                                            _int(c, "pg_num", True)),
    "osd pool set": _pool_set,
}


def parse_command(cmd: dict[str, Any]) -> Command:
    """The event for a JSON command (see the module doc)."""
    prefix = cmd.get("prefix")
    parse = _PARSERS.get(prefix) if isinstance(prefix, str) else None
    if parse is None:
        raise MonError(f"unknown command {prefix!r} (known: {', '.join(sorted(_PARSERS))})",
                       errno.ENOTSUP)
    return parse(cmd)
