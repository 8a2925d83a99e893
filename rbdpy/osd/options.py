"""An OSD's settings, in one value built at the edge (``rbdpy osd`` in ``rbdpy.cli``).

The daemon reads nothing from the environment: whatever may be tuned or injected arrives
here, so a test or an embedding program says what it wants in one place, and what a running
OSD uses can be read off its command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rbdpy.config import ConfigError


@dataclass(frozen=True)
class OSDOptions:
    """How one OSD runs (the defaults are production's)."""

    aio: bool = True
    """Group commits synced through Linux AIO where available; False: in a worker thread
    (the fallback), e.g. to compare the two or to test the fallback on a machine with AIO."""

    commit_delay: float = 0.0
    """Fault injection (like Ceph's ``*_inject_*`` options): hold every group commit back
    this many seconds, so "applied but not yet durable" lasts long enough to act on."""

    def __post_init__(self) -> None:
        if not self.commit_delay >= 0:  # also refuses NaN
            raise ValueError(f"commit delay must be >= 0 seconds, not {self.commit_delay}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, aio: bool | None = None,
                 commit_delay: float | None = None) -> OSDOptions:
        """The values given (a command line's), else ``RBDPY_OSD_NO_AIO`` (set and not
        empty: no AIO) and ``RBDPY_OSD_COMMIT_DELAY`` (seconds), else the defaults. Called
        by the edge only, with its environment (the tests set these for the OSDs they
        start). A ConfigError names a bad variable, a ValueError a bad value given."""
        if aio is None:
            aio = not environ.get("RBDPY_OSD_NO_AIO")
        if commit_delay is None:
            raw = environ.get("RBDPY_OSD_COMMIT_DELAY", "")
            try:
                return cls(aio=aio, commit_delay=float(raw) if raw else 0.0)
            except ValueError:
                raise ConfigError(f"RBDPY_OSD_COMMIT_DELAY={raw!r}: want a number of "
                                  "seconds >= 0") from None
        return cls(aio=aio, commit_delay=commit_delay)
