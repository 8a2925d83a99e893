"""What a PG reports of itself: this OSD's role in the current interval, and the states a
primary reports (Ceph's names, so ``pg ls`` reads the same)."""

from __future__ import annotations

import enum


class Role(enum.Enum):
    NONE = 0  # no map yet
    PRIMARY = 1
    REPLICA = 2
    STRAY = 3  # not in the acting set: answers queries, pulls and scans only


class PGState(enum.Flag):
    PEERING = enum.auto()
    DOWN = enum.auto()  # a past interval that may hold acked writes has no OSD up
    INCOMPLETE = enum.auto()  # no complete copy to be authoritative
    PEERED = enum.auto()  # peered, but fewer than min_size acting: no I/O
    UNFOUND = enum.auto()  # an object the primary needs is on no reachable OSD
    ACTIVE = enum.auto()
    CLEAN = enum.auto()
    DEGRADED = enum.auto()
    UNDERSIZED = enum.auto()
    RECOVERING = enum.auto()
    BACKFILLING = enum.auto()


def state_str(s: PGState) -> str:
    """``active+clean``, ``peering+unfound``..."""
    return "+".join(f.name.lower() for f in PGState if f in s) or "unknown"
