"""What the PG core asks its driver to do (effects), and the few values it is given.

The core is sans-I/O: every call on a ``PG`` returns a list of effects, and the driver (the
OSD daemon, or the test simulation) carries them out *in order*, before it delivers the next
event to the same PG:

- ``Apply``: change the local store. Its records are applied in order, each atomically (one
  store transaction each); they become durable in order too, and a crash keeps any prefix of
  what was not yet durable. The driver reports durability with ``PG.committed(seq)``.
- ``Send``: a message to another OSD's copy of the PG (lossy: a connection reset drops it; an
  interval change always follows such a loss, and restarts the protocol).
- ``ExecuteOp``: run a client op now. A write is executed against the local object and handed
  back with ``PG.submit`` before the driver goes on; a read is served and answered directly.
- ``ReplyOp``: answer a client: ack (applied on every acting OSD) or commit (durable on all).
- ``ReadObject``: read an object's version and data; hand them to ``PG.object_data``.
- ``RequestUpThru``: ask the monitor to record this OSD's up_thru at ``epoch`` (or later).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rbdpy.osd.pg.log import ReqId, Version
from rbdpy.osd.pg.meta import MetaRecord


@dataclass(frozen=True)
class ObjectWrite:
    """Make ``oid`` hold ``payload`` at PG version ``version`` (the payload is the driver's:
    a shipped transaction for a client write, whole-object data for recovery)."""

    oid: str
    version: Version
    payload: Any
    whole: bool = False  # payload is the object's whole data (recovery), not a client txn


@dataclass(frozen=True)
class ObjectRemove:
    oid: str  # removing an absent object is not an error


Record = MetaRecord | ObjectWrite | ObjectRemove


@dataclass(frozen=True)
class ClientOp:
    """A client request as the core sees it; ``handle`` is the driver's (connection, tid)."""

    reqid: ReqId
    oid: str
    write: bool
    epoch: int  # the client's map epoch when it sent this
    handle: Any = None


@dataclass(frozen=True)
class Apply:
    seq: int
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Send:
    to: int
    msg: Any


@dataclass(frozen=True)
class ExecuteOp:
    op: ClientOp


@dataclass(frozen=True)
class ReplyOp:
    op: ClientOp
    result: int
    commit: bool  # False: the ack (applied on all acting); True: durable on all


@dataclass(frozen=True)
class ReadObject:
    oid: str
    token: int


@dataclass(frozen=True)
class RequestUpThru:
    epoch: int


Effect = Apply | Send | ExecuteOp | ReplyOp | ReadObject | RequestUpThru


class ObjectsView(Protocol):
    """Synchronous metadata reads of the PG's objects in the local store (applied state)."""

    def version(self, oid: str) -> Version | None:
        """The object's PG version; None when it does not exist."""

    def list(self, after: str, until: str | None, limit: int) -> list[tuple[str, Version]]:
        """Objects with ``after < oid <= until`` (no upper bound when ``until`` is None) in
        name order, at most ``limit`` of them (0: no limit)."""
