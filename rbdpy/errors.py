"""The one base of rbdpy's errors.

Every error that can reach a user carries an errno: the nbdkit plugin hands it to
``nbdkit.set_error``, the CLI prints the message, and an OSD puts it in its reply. Deriving
from ``OSError`` gives each the standard ``errno``/``strerror`` fields, so one ``except
RbdpyError`` (or a plain ``except OSError`` at the NBD edge) reports any of them the same way.
Inside, code catches the specific subclass.
"""

from __future__ import annotations

import os


class RbdpyError(OSError):
    """An rbdpy failure with an errno; ``str()`` is the message alone (no "[Errno N]")."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or os.strerror(err))

    def __str__(self) -> str:
        return str(self.strerror)
