"""The maps' errors: a change that does not apply, and bytes that do not decode."""

from __future__ import annotations

import errno

from rbdpy.errors import RbdpyError


class MapError(RbdpyError):
    """An incremental that cannot be applied to a map (wrong epoch, unknown OSD, bad value):
    EINVAL. The map it was applied to is unchanged."""

    def __init__(self, msg: str, err: int = errno.EINVAL) -> None:
        super().__init__(err, msg)


class MapDecodeError(RbdpyError):
    """Bytes that are not an encoded map or incremental (truncated, bytes left over, a value
    no map holds, an unknown version): EBADMSG, never IndexError or struct.error."""

    def __init__(self, msg: str, err: int = errno.EBADMSG) -> None:
        super().__init__(err, msg)
