"""The store's one error type: every failure carries the errno the OSD puts in its reply."""

from __future__ import annotations

import errno

from rbdpy.errors import RbdpyError


class StoreError(RbdpyError):
    """A store failure with an ``errno`` the OSD can put in its reply."""

    def __str__(self) -> str:
        return f"[{errno.errorcode.get(self.errno, self.errno)}] {self.strerror}"
