"""Recovery and backfill on an active primary, and what the other OSDs do for them.

*Log-based recovery*: peering left each acting replica a missing set (objects whose entries
it has but whose data it lacks). The primary pushes each such object whole (``ReadObject``,
then ``Push``), a few at a time, an object some write waits for first. The object counts as
recovered on a replica once it answers; until then writes to it wait (``blocks_write``), so
no write can reach a replica before the object it changes.

*Backfill*: a replica whose log does not overlap the authoritative one (or whose copy was
left incomplete) took the log and starts from nothing (``last_backfill`` = ""). The primary
walks its objects in name order, ``scan_chunk`` at a time: it asks the target for its objects
in the same range (``Scan``), pushes every object that differs, removes every object the
primary does not have, then moves the target's watermark (``BackfillProgress``, persisted
there). Writes to objects up to the range being handled carry data to the target; writes past
it carry only the log entry (the scan will copy the object); writes to an object whose push is
under way wait for it. At the end the watermark is None: the copy is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rbdpy.osd.pg.log import Missing, Version
from rbdpy.osd.pg.messages import (
    BackfillDone,
    BackfillProgress,
    Pull,
    PullMiss,
    Push,
    PushKind,
    PushReply,
    Scan,
    ScanReply,
)
from rbdpy.osd.pg.states import PGState

if TYPE_CHECKING:
    from rbdpy.osd.pg.pg import PG


@dataclass
class Backfill:
    """The primary's progress on one backfill target."""

    lbs: str | None = ""  # objects up to here are handled (None: all): writes carry data
    scanning: bool = False
    chunk_end: str | None = None
    pending: set[str] = field(default_factory=set)  # pushes of this chunk not answered yet
    finishing: bool = False  # the last progress is sent: waiting for BackfillDone


class Recovery:
    """Recovery and backfill state of an active primary for one interval."""

    def __init__(self, pg: PG, peer_missing: dict[int, Missing], backfill: set[int]) -> None:
        self.pg = pg
        self.peer_missing = {p: m.copy() for p, m in peer_missing.items() if m}
        self.backfills = {p: Backfill() for p in sorted(backfill)}
        self.pushing: dict[str, set[int]] = {}  # oid -> replicas whose answer is awaited
        self.priority: list[str] = []

    def state(self) -> PGState:
        s = PGState(0)
        if self.peer_missing or self.pushing:
            s |= PGState.RECOVERING | PGState.DEGRADED
        if self.backfills:
            s |= PGState.BACKFILLING | PGState.DEGRADED
        return s

    # -- what the write path asks --------------------------------------------------------------

    def blocks_write(self, oid: str) -> bool:
        """Whether a write to ``oid`` must wait (it is missing or being pushed somewhere);
        if so, its recovery goes first."""
        if oid in self.pushing or any(oid in b.pending for b in self.backfills.values()):
            return True
        if any(oid in m for m in self.peer_missing.values()):
            if oid not in self.priority:
                self.priority.append(oid)
                self.kick()
            return True
        return False

    def sends_data(self, peer: int, oid: str) -> bool:
        """Whether a write to ``oid`` carries its data to ``peer`` (else only the entry)."""
        m = self.peer_missing.get(peer)
        if m is not None and oid in m:
            return False
        b = self.backfills.get(peer)
        return b is None or b.lbs is None or oid <= b.lbs

    # -- log-based recovery ----------------------------------------------------------------------

    def kick(self) -> None:
        pg = self.pg
        wanted = dict.fromkeys(self.priority)
        for m in self.peer_missing.values():
            wanted.update(dict.fromkeys(sorted(m)))
        for oid in wanted:
            if len(self.pushing) >= pg.config.max_recovery:
                break
            if oid in self.pushing:
                continue
            targets = {p for p, m in self.peer_missing.items() if oid in m}
            if not targets:
                continue
            self.pushing[oid] = targets
            pg.read_object(oid, lambda v, data, oid=oid: self._push(oid, v, data))
        self.priority = [o for o in self.priority if o not in self.pushing
                         and any(o in m for m in self.peer_missing.values())]
        for peer, b in self.backfills.items():
            if not (b.scanning or b.pending or b.finishing):
                self._scan(peer, b)

    def _push(self, oid: str, version: Version | None, data: Any) -> None:
        pg = self.pg
        for peer in sorted(self.pushing.get(oid, ())):
            pg.send(peer, Push(pg.pgid, pg.interval_start, oid, version, data,
                               PushKind.RECOVER))

    def on_push_reply(self, frm: int, msg: PushReply) -> None:
        oid = msg.oid
        b = self.backfills.get(frm)
        if b is not None:
            if oid in b.pending:
                b.pending.discard(oid)
                if not b.pending and not b.scanning:
                    self._progress(frm, b)
                self._unblocked()
            return
        waiting = self.pushing.get(oid)
        if waiting is None or frm not in waiting:
            return
        waiting.discard(frm)
        m = self.peer_missing.get(frm)
        if m is not None:
            m.pop(oid, None)
            if not m:
                del self.peer_missing[frm]
        if not waiting:
            del self.pushing[oid]
            self._unblocked()
        self.kick()

    def _unblocked(self) -> None:
        if self.pg.backend is not None:
            self.pg.backend.kick()

    # -- backfill --------------------------------------------------------------------------------

    def _scan(self, peer: int, b: Backfill) -> None:
        pg = self.pg
        assert b.lbs is not None
        mine = pg.objects.list(b.lbs, None, pg.config.scan_chunk)
        b.chunk_end = mine[-1][0] if len(mine) == pg.config.scan_chunk else None
        b.scanning = True
        pg.send(peer, Scan(pg.pgid, pg.interval_start, b.lbs, b.chunk_end, 0))

    def on_scan_reply(self, frm: int, msg: ScanReply) -> None:
        pg = self.pg
        b = self.backfills.get(frm)
        if b is None or not b.scanning or msg.after != b.lbs:
            return
        b.scanning = False
        theirs = dict(msg.objects)
        mine = dict(pg.objects.list(msg.after, b.chunk_end, 0))
        for oid in sorted(theirs.keys() | mine.keys()):
            m = mine.get(oid)
            if m is None:
                b.pending.add(oid)
                pg.send(frm, Push(pg.pgid, pg.interval_start, oid, None, None,
                                  PushKind.BACKFILL))
            elif theirs.get(oid) != m:
                b.pending.add(oid)
                pg.read_object(oid, lambda v, data, oid=oid: pg.send(frm, Push(
                    pg.pgid, pg.interval_start, oid, v, data, PushKind.BACKFILL)))
        b.lbs = b.chunk_end
        if not b.pending:
            self._progress(frm, b)

    def _progress(self, peer: int, b: Backfill) -> None:
        pg = self.pg
        pg.send(peer, BackfillProgress(pg.pgid, pg.interval_start, b.lbs))
        if b.lbs is None:
            b.finishing = True
        else:
            self._scan(peer, b)

    def on_backfill_done(self, frm: int) -> None:
        b = self.backfills.get(frm)
        if b is not None and b.finishing:
            del self.backfills[frm]


# -- handlers on every OSD of the PG -------------------------------------------------------------


def _on_push(pg: PG, frm: int, msg: Push) -> None:
    if msg.kind in (PushKind.PULLED, PushKind.SELF_BACKFILL):
        if pg.peering is not None:
            pg.peering.on_push(frm, msg)
        return
    if not pg.replica_active or frm != pg.acting[0]:
        return
    pg.recovered(msg.oid, msg.version, msg.payload)
    pg.send(frm, PushReply(pg.pgid, pg.interval_start, msg.oid))


def _on_push_reply(pg: PG, frm: int, msg: PushReply) -> None:
    if pg.recovery is not None:
        pg.recovery.on_push_reply(frm, msg)


def _on_pull(pg: PG, frm: int, msg: Pull) -> None:
    """Send the object if this OSD holds it at the version asked for."""
    start = pg.interval_start

    def got(version: Version | None, data: Any) -> None:
        if version == msg.need:
            pg.send(frm, Push(pg.pgid, start, msg.oid, version, data, msg.kind))
        else:
            pg.send(frm, PullMiss(pg.pgid, start, msg.oid))

    pg.read_object(msg.oid, got)


def _on_pull_miss(pg: PG, frm: int, msg: PullMiss) -> None:
    if pg.peering is not None:
        pg.peering.on_pull_miss(frm, msg)


def _on_scan(pg: PG, frm: int, msg: Scan) -> None:
    objs = pg.objects.list(msg.after, msg.until, msg.limit)
    end = msg.limit == 0 or len(objs) < msg.limit
    pg.send(frm, ScanReply(pg.pgid, pg.interval_start, msg.after, tuple(objs), end))


def _on_scan_reply(pg: PG, frm: int, msg: ScanReply) -> None:
    if pg.peering is not None:
        pg.peering.on_scan_reply(frm, msg)
    elif pg.recovery is not None:
        pg.recovery.on_scan_reply(frm, msg)


def _on_backfill_progress(pg: PG, frm: int, msg: BackfillProgress) -> None:
    if not pg.replica_active or frm != pg.acting[0]:
        return
    start = pg.interval_start
    done = None
    if msg.last_backfill is None:
        def done() -> None:
            pg.send(frm, BackfillDone(pg.pgid, start))
    pg.set_backfill(msg.last_backfill, done)


def _on_backfill_done(pg: PG, frm: int, msg: BackfillDone) -> None:
    if pg.recovery is not None:
        pg.recovery.on_backfill_done(frm)


HANDLERS: dict[type, Any] = {
    Push: _on_push,
    PushReply: _on_push_reply,
    Pull: _on_pull,
    PullMiss: _on_pull_miss,
    Scan: _on_scan,
    ScanReply: _on_scan_reply,
    BackfillProgress: _on_backfill_progress,
    BackfillDone: _on_backfill_done,
}
