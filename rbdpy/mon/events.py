"""What the monitor's state machine takes in (events) and gives out (effects).

Events come from OSDs (boot, beacon, failure reports, up_thru and pg_temp requests), from
clients and OSDs subscribing to the map, from admins (commands), or are just the passing of
time (``Tick``). Effects are for the driver to carry out, in order: ``Commit`` (persist this
epoch: everything after it in the list may reveal it), ``SendMaps``, ``CommandDone``, ``Log``.
A refused event raises ``MonError`` with an errno for the reply and changes nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field

from rbdpy.errors import RbdpyError
from rbdpy.maps.incremental import Incremental
from rbdpy.maps.osdmap import OSDMap


class MonError(RbdpyError):
    """A refused event or command: the errno and message go back to the sender."""

    def __init__(self, msg: str, err: int = errno.EINVAL) -> None:
        super().__init__(err, msg)


# -- from OSDs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OsdBoot:
    """An OSD process started and listens at host:port; ``nonce`` tells its instances apart
    (a restart makes a new one), like the nonce of a Ceph address."""

    osd: int
    host: str
    port: int
    nonce: int


@dataclass(frozen=True)
class OsdBeacon:
    """An up OSD is alive (sent every few seconds; silence past report_timeout is down)."""

    osd: int


@dataclass(frozen=True)
class FailureReport:
    """``reporter`` cannot reach ``target``. ``immediate``: the connection was refused or
    reset (the process is gone), else heartbeats are missing since ``failed_for`` seconds.
    ``epoch`` is the reporter's map: a report from before the target's last boot is about an
    earlier instance."""

    reporter: int
    target: int
    epoch: int
    failed_for: float = 0.0
    immediate: bool = False


@dataclass(frozen=True)
class FailureCancel:
    """``reporter`` hears ``target`` again: its report is withdrawn."""

    reporter: int
    target: int


@dataclass(frozen=True)
class UpThru:
    """A primary asks to have its up_thru recorded >= ``want`` (the first epoch of an
    interval) before it activates a PG in it (see rbdpy.maps.intervals)."""

    osd: int
    want: int


@dataclass(frozen=True)
class PgTemp:
    """A primary asks for acting sets other than up (while up members are backfilled);
    an empty tuple drops the PG's entry."""

    osd: int
    pgs: Mapping[tuple[int, int], tuple[int, ...]]


# -- from subscribers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribe:
    """``who`` holds epoch ``have`` (0: no map) and wants what is newer, then (unless
    ``onetime``) every new epoch as it is made."""

    who: str
    have: int
    onetime: bool = False


@dataclass(frozen=True)
class Unsubscribe:
    who: str


@dataclass(frozen=True)
class Tick:
    """Nothing happened but time: the driver sends it at ``Monitor.next_wakeup()``."""


# -- admin commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OsdAdd:
    """A new OSD id (down and out: its first boot marks it in)."""

    weight: float = 1.0


@dataclass(frozen=True)
class OsdRm:
    osd: int


@dataclass(frozen=True)
class OsdIn:
    osd: int


@dataclass(frozen=True)
class OsdOut:
    osd: int


@dataclass(frozen=True)
class PoolCreate:
    name: str
    size: int | None = None  # default min(3, number of OSDs)
    min_size: int | None = None  # default size - size // 2
    pg_num: int | None = None  # default MonOptions.default_pg_num


@dataclass(frozen=True)
class PoolSet:
    name: str
    var: str  # size | min_size
    value: int | str


Command = OsdAdd | OsdRm | OsdIn | OsdOut | PoolCreate | PoolSet
Event = (OsdBoot | OsdBeacon | FailureReport | FailureCancel | UpThru | PgTemp | Subscribe
         | Unsubscribe | Tick | Command)


# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    """A new epoch: persist ``inc`` and ``osdmap`` before acting on later effects."""

    inc: Incremental
    osdmap: OSDMap
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class SendMaps:
    """Bring subscriber ``to`` up to date: ``full`` (when it is too far behind for the
    incrementals kept) or ``incrementals``, oldest first."""

    to: str
    full: OSDMap | None = None
    incrementals: tuple[Incremental, ...] = field(default=())

    @property
    def last(self) -> int:
        """The epoch the subscriber holds once it has applied these."""
        if self.incrementals:
            return self.incrementals[-1].epoch
        assert self.full is not None
        return self.full.epoch


@dataclass(frozen=True)
class CommandDone:
    """A command succeeded; its change is in the map as of ``epoch``. ``result`` is the new
    OSD id or pool id for the commands that create one."""

    command: Command
    epoch: int
    message: str
    result: int | None = None


@dataclass(frozen=True)
class Log:
    """A line for the cluster log (``debug``: an event ignored, and why)."""

    message: str
    level: str = "info"


Effect = Commit | SendMaps | CommandDone | Log
