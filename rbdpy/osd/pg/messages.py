"""The messages between the OSDs holding a PG (Ceph: MOSDPGQuery/Notify/Log, MOSDRepOp,
MOSDPGPush/Pull, MOSDPGScan/Backfill). Each names the PG and the interval it was sent in (the
first epoch of it); a receiver in another interval drops it, which is how every message of a
previous interval dies: the protocol restarts with each interval."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from rbdpy.osd.pg.info import PGInfo
from rbdpy.osd.pg.log import LogEntry, Missing, PGLog, Version


@dataclass(frozen=True)
class PGMessage:
    pgid: int
    interval: int


@dataclass(frozen=True)
class Query(PGMessage):
    """Primary -> any OSD of the prior set: send me your info, log and missing set.
    ``attempt`` numbers the primary's peering attempts in the interval (it starts over when
    OSDs go up or down meanwhile); answers to an earlier attempt are ignored."""

    attempt: int


@dataclass(frozen=True)
class Notify(PGMessage):
    """The answer to a Query (Ceph sends info first and the log on a second request; one
    round is enough at the log sizes kept here)."""

    attempt: int
    info: PGInfo
    log: PGLog
    missing: Missing


@dataclass(frozen=True)
class Activate(PGMessage):
    """Primary -> acting replica: adopt this authoritative log (merge it, or when
    ``backfill``, replace yours and start backfill from nothing), record ``les``; answer
    Activated once that is durable."""

    attempt: int
    log: PGLog
    backfill: bool
    les: int


@dataclass(frozen=True)
class Activated(PGMessage):
    attempt: int


@dataclass(frozen=True)
class Repop(PGMessage):
    """A client write's log entry and transaction, primary -> each acting replica. When
    ``log_only`` the replica records the entry and leaves the object (it is missing there,
    or past its backfill watermark). ``trim_to``: entries up to it are durable everywhere."""

    entry: LogEntry
    payload: Any
    log_only: bool
    trim_to: Version


@dataclass(frozen=True)
class RepopReply(PGMessage):
    version: Version
    committed: bool  # False: applied; True: durable


class PushKind(enum.IntEnum):
    PULLED = 1  # to the primary, recovering its own missing object
    SELF_BACKFILL = 2  # to the primary, backfilling itself from the authoritative copy
    RECOVER = 3  # primary -> replica, a missing object (log-based recovery)
    BACKFILL = 4  # primary -> backfill target


@dataclass(frozen=True)
class Pull(PGMessage):
    """Primary -> an OSD that may hold ``oid`` at ``need``: push it to me (as ``kind``)."""

    oid: str
    need: Version
    kind: PushKind


@dataclass(frozen=True)
class PullMiss(PGMessage):
    """The answer to a Pull when this OSD does not hold the object at that version."""

    oid: str


@dataclass(frozen=True)
class Push(PGMessage):
    """An object's whole data at ``version``; ``version`` None: remove it."""

    oid: str
    version: Version | None
    payload: Any
    kind: PushKind


@dataclass(frozen=True)
class PushReply(PGMessage):
    oid: str


@dataclass(frozen=True)
class Scan(PGMessage):
    """List your objects with ``after < oid <= until`` (None: to the end), at most ``limit``
    (0: all)."""

    after: str
    until: str | None
    limit: int


@dataclass(frozen=True)
class ScanReply(PGMessage):
    after: str
    objects: tuple[tuple[str, Version], ...]
    end: bool  # the listing reached ``until`` (or the last object)


@dataclass(frozen=True)
class BackfillProgress(PGMessage):
    """Primary -> backfill target: everything up to ``last_backfill`` is now right on you
    (None: everything; answer BackfillDone once that is durable)."""

    last_backfill: str | None


@dataclass(frozen=True)
class BackfillDone(PGMessage):
    pass
