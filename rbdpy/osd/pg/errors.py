"""The placement group core's errors: a request the PG state cannot take, and bytes that do
not decode."""

from __future__ import annotations

import errno

from rbdpy.errors import RbdpyError


class PGError(RbdpyError):
    """A call the PG state refuses (a log entry out of order, an empty object name): EINVAL.
    The state it was made on is unchanged."""

    def __init__(self, msg: str, err: int = errno.EINVAL) -> None:
        super().__init__(err, msg)


class PGDecodeError(PGError):
    """Bytes that are not an encoded PG log, entry, missing set or info: EBADMSG when they are
    truncated, have bytes left over or lengths that do not add up; EINVAL when a field holds a
    value no PG state has (an unknown op kind, versions out of order). Never IndexError,
    struct.error or UnicodeDecodeError."""

    def __init__(self, msg: str, err: int = errno.EBADMSG) -> None:
        super().__init__(msg, err)
