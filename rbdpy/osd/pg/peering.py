"""Peering (Ceph's ``PeeringState``, reduced): how a new primary brings the OSDs of a PG to
agree on its history before it serves a write.

1. *Get info*: ask every OSD of the prior set (``intervals.build_prior``: the acting set and
   every up OSD of the past intervals that maybe went rw since the last known activation) for
   its info, log and missing set.
2. *Down*: if some such interval has no OSD among the answers holding a complete copy, the
   writes it acknowledged may be on none of them: wait (state down) until the map brings one
   back. Never go active without it: that is the [A,B] -> [A] -> [] -> [B] case.
3. *Choose the authoritative log* (``choose_auth``): among complete copies, the newest
   ``last_epoch_started``, then the newest ``last_update``. A copy being backfilled is never
   chosen, nor is a copy whose log stops short (a stale replica).
4. The primary makes itself complete: it merges the authoritative log into its own (divergent
   entries rolled back, their objects missing) or, when the logs do not overlap, takes that log
   and backfills itself from the authoritative copy (scan in name order, pull what differs);
   then it pulls every object it misses from an OSD that has it at the needed version (none
   reachable: *unfound*, wait for the map).
5. For each acting replica it computes the missing set the replica will have after merging
   (the same ``merge_log`` the replica runs), or marks it for backfill when the logs do not
   overlap or the copy is incomplete.
6. Fewer than min_size acting: stay *peered*, no I/O. Otherwise make sure the map records this
   OSD's ``up_thru`` at or past the interval's start (``RequestUpThru``, wait for the map), so
   later peerings know this interval may have written.
7. *Activate*: each replica adopts the log, records ``last_epoch_started``, answers once that
   is durable; with every answer in (and its own record durable) the primary is active.

Ceph lets a primary activate while it still misses objects (an op on one waits for its
recovery) and uses pg_temp so that a primary needing backfill is not primary meanwhile; here a
primary completes itself before activating, which is simpler and only slower.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rbdpy.osd.pg.effects import ObjectRemove, RequestUpThru
from rbdpy.osd.pg.info import PGInfo
from rbdpy.osd.pg.intervals import build_prior
from rbdpy.osd.pg.log import Missing, NoOverlap, PGLog, Version, merge_log
from rbdpy.osd.pg.messages import (
    Activate,
    Activated,
    Notify,
    Pull,
    PullMiss,
    Push,
    PushKind,
    Query,
    Scan,
    ScanReply,
)
from rbdpy.osd.pg.states import PGState, Role

if TYPE_CHECKING:
    from rbdpy.osd.pg.pg import PG


class Phase(enum.Enum):
    GET_INFO = 1
    DOWN = 2
    INCOMPLETE = 3
    SELF_BACKFILL = 4
    PULL = 5
    UNFOUND = 6
    PEERED = 7
    WAIT_UP_THRU = 8
    ACTIVATING = 9


@dataclass(frozen=True)
class PeerState:
    """What one OSD answered (or the primary's own state)."""

    info: PGInfo
    log: PGLog
    missing: Missing


def choose_auth(states: dict[int, PeerState], me: int) -> int | None:
    """The OSD whose log is authoritative: among complete copies, the newest
    last_epoch_started, then the newest last_update; ties go to ``me`` (no transfer), then
    the lowest id. None when no copy is complete."""
    best: tuple | None = None
    who = None
    for osd, st in states.items():
        if not st.info.complete:
            continue
        key = (st.info.les, st.info.last_update, osd == me, -osd)
        if best is None or key > best:
            best, who = key, osd
    return who


def peer_plan(peer: PeerState, auth_log: PGLog) -> Missing | None:
    """The objects a peer will miss after merging ``auth_log`` (what it must be pushed), or
    None when it must be backfilled (incomplete copy, or logs that do not overlap)."""
    if not peer.info.complete:
        return None
    try:
        res = merge_log(peer.log, peer.missing, auth_log)
    except NoOverlap:
        return None
    return Missing(res.missing.needs_data())


class PrimaryPeering:
    """One peering attempt of a primary in one interval (restarted from scratch when the set
    of up OSDs changes while it runs)."""

    def __init__(self, pg: PG, attempt: int) -> None:
        self.pg = pg
        self.attempt = attempt
        self.phase = Phase.GET_INFO
        self.states: dict[int, PeerState] = {}
        self.waiting: set[int] = set()
        self.since = 0
        self.auth: int | None = None
        self.peer_missing: dict[int, Missing] = {}
        self.backfill: set[int] = set()
        self.activated: set[int] = set()
        self.self_activated = False
        # self backfill
        self._scan_pending = False
        self._chunk_end: str | None = None
        self._chunk_pulls: set[str] = set()
        # pulls of the primary's own missing objects: oid -> OSDs left to try
        self._pulls: dict[str, list[int]] = {}
        self._pulling: set[str] = set()

    # -- reporting -------------------------------------------------------------------------

    def state(self) -> PGState:
        return {
            Phase.DOWN: PGState.DOWN,
            Phase.INCOMPLETE: PGState.INCOMPLETE,
            Phase.UNFOUND: PGState.PEERING | PGState.UNFOUND,
            Phase.PEERED: PGState.PEERED | PGState.UNDERSIZED | PGState.DEGRADED,
            Phase.SELF_BACKFILL: PGState.PEERING | PGState.BACKFILLING,
        }.get(self.phase, PGState.PEERING)

    # -- 1. get info -------------------------------------------------------------------------

    def start(self) -> None:
        pg = self.pg
        assert pg.history is not None and pg.interval is not None
        # our own les bounds the history to look at only if our copy is complete
        self.since = pg.les if pg.last_backfill is None else 0
        prior = build_prior(pg.history, pg.pgid, self.since)
        self.states[pg.osd] = self._own()
        self.waiting = set(prior.probe) - {pg.osd}
        for osd in sorted(self.waiting):
            pg.send(osd, Query(pg.pgid, pg.interval_start, self.attempt))
        self._maybe_evaluate()

    def _own(self) -> PeerState:
        pg = self.pg
        return PeerState(pg.info(), pg.log, pg.missing)

    def on_notify(self, frm: int, msg: Notify) -> None:
        if frm not in self.waiting or msg.attempt != self.attempt:
            return
        self.waiting.discard(frm)
        self.states[frm] = PeerState(msg.info, msg.log, msg.missing)
        self._maybe_evaluate()

    def _maybe_evaluate(self) -> None:
        if self.phase is Phase.GET_INFO and not self.waiting:
            self._evaluate()

    # -- 2.-4. down, authoritative log, the primary complete -------------------------------------

    def _evaluate(self) -> None:
        pg = self.pg
        assert pg.history is not None
        complete = {o for o, st in self.states.items() if st.info.complete}
        since = max([self.since, *(self.states[o].info.les for o in complete)])
        prior = build_prior(pg.history, pg.pgid, since)
        answers = {o: (st.info.complete, st.info.les) for o, st in self.states.items()}
        if prior.blocked(answers):
            self.phase = Phase.DOWN
            return
        auth = choose_auth(self.states, pg.osd)
        if auth is None:
            self.phase = Phase.INCOMPLETE
            return
        self.auth = auth
        if auth == pg.osd:
            self._own_complete()
            return
        auth_st = self.states[auth]
        if pg.last_backfill is None and pg.log.head >= auth_st.log.tail:
            res = merge_log(pg.log, pg.missing, auth_st.log, pg.objects.version)
            pg.adopt(res.log, res.missing, None)
            self._own_complete()
        else:
            self._start_self_backfill(auth_st)

    def _start_self_backfill(self, auth_st: PeerState) -> None:
        """Our copy cannot be merged: take the authoritative log, and the authoritative
        copy's missing set (its stale objects are recovered from others later), then compare
        our objects with its, chunk by chunk in name order."""
        pg = self.pg
        self.phase = Phase.SELF_BACKFILL
        pg.adopt(auth_st.log.copy(), auth_st.missing.copy(), last_backfill="")
        self._next_scan()

    def _next_scan(self) -> None:
        pg = self.pg
        assert self.auth is not None and pg.last_backfill is not None
        self._scan_pending = True
        pg.send(self.auth, Scan(pg.pgid, pg.interval_start, pg.last_backfill, None,
                                pg.config.scan_chunk))

    def on_scan_reply(self, frm: int, msg: ScanReply) -> None:
        pg = self.pg
        if (self.phase is not Phase.SELF_BACKFILL or frm != self.auth or not self._scan_pending
                or msg.after != pg.last_backfill):
            return
        self._scan_pending = False
        end = None if msg.end or not msg.objects else msg.objects[-1][0]
        self._chunk_end = end
        theirs = dict(msg.objects)
        mine = dict(pg.objects.list(msg.after, end, 0))
        removals = []
        for oid in sorted(theirs.keys() | mine.keys()):
            if oid in pg.missing:
                continue  # the authoritative copy is stale there too: pulled from others later
            t, m = theirs.get(oid), mine.get(oid)
            if t is None:
                removals.append(oid)
            elif t != m:
                self._chunk_pulls.add(oid)
                pg.send(frm, Pull(pg.pgid, pg.interval_start, oid, t, PushKind.SELF_BACKFILL))
        if removals:
            pg.apply([ObjectRemove(o) for o in removals])
        self._chunk_maybe_done()

    def _chunk_maybe_done(self) -> None:
        if self._chunk_pulls or self._scan_pending:
            return
        pg = self.pg
        pg.set_backfill(self._chunk_end)
        if self._chunk_end is None:
            self._own_complete()
        else:
            self._next_scan()

    def _own_complete(self) -> None:
        """Our log is the authoritative one: pull the objects we miss."""
        pg = self.pg
        self.phase = Phase.PULL
        for oid, item in sorted(pg.missing.needs_data().items()):
            self._pulls[oid] = self._sources(oid, item.need)
        self._pull_more()

    def _sources(self, oid: str, need: Version) -> list[int]:
        """Every OSD that answered, likeliest holders first (complete copies whose log
        reaches ``need`` and that do not miss the object); any may answer PullMiss."""
        me = self.pg.osd

        def rank(osd: int) -> tuple:
            st = self.states[osd]
            likely = (st.info.complete and st.info.last_update >= need
                      and oid not in st.missing)
            return (not likely, osd)

        return sorted((o for o in self.states if o != me), key=rank)

    def _pull_more(self) -> None:
        pg = self.pg
        for oid in list(self._pulls):
            if len(self._pulling) >= pg.config.max_recovery:
                break
            if oid in self._pulling:
                continue
            item = pg.missing.get(oid)
            if item is None:
                del self._pulls[oid]
                continue
            left = self._pulls[oid]
            if not left:
                self.phase = Phase.UNFOUND  # wait for the map to bring someone who has it
                return
            self._pulling.add(oid)
            pg.send(left.pop(0), Pull(pg.pgid, pg.interval_start, oid, item.need,
                                      PushKind.PULLED))
        if not self._pulls and not self._pulling:
            self._plan_peers()

    def on_push(self, frm: int, msg: Push) -> None:
        pg = self.pg
        if msg.kind is PushKind.SELF_BACKFILL and self.phase is Phase.SELF_BACKFILL:
            if msg.oid in self._chunk_pulls and msg.version is not None:
                self._chunk_pulls.discard(msg.oid)
                pg.recovered(msg.oid, msg.version, msg.payload)
                self._chunk_maybe_done()
        elif msg.kind is PushKind.PULLED and self.phase is Phase.PULL:
            item = pg.missing.get(msg.oid)
            if msg.oid in self._pulling and item is not None and msg.version == item.need:
                self._pulling.discard(msg.oid)
                self._pulls.pop(msg.oid, None)
                pg.recovered(msg.oid, msg.version, msg.payload)
                self._pull_more()

    def on_pull_miss(self, frm: int, msg: PullMiss) -> None:
        if self.phase is Phase.PULL and msg.oid in self._pulling:
            self._pulling.discard(msg.oid)
            self._pull_more()
        elif self.phase is Phase.SELF_BACKFILL and msg.oid in self._chunk_pulls:
            self.phase = Phase.INCOMPLETE  # the source changed under us: wait for the map

    # -- 5.-7. the replicas, up_thru, activation -------------------------------------------------

    def _plan_peers(self) -> None:
        pg = self.pg
        assert pg.interval is not None
        for osd in pg.acting[1:]:
            plan = peer_plan(self.states[osd], pg.log)
            if plan is None:
                self.backfill.add(osd)
            else:
                self.peer_missing[osd] = plan
        if len(pg.acting) < pg.interval.min_size:
            self.phase = Phase.PEERED
            return
        self.phase = Phase.WAIT_UP_THRU
        self.map_advanced()

    def map_advanced(self) -> None:
        """A new epoch in the same interval, with the same OSDs up."""
        pg = self.pg
        if self.phase is not Phase.WAIT_UP_THRU:
            return
        assert pg.history is not None
        if pg.history.latest.up_thru.get(pg.osd, 0) >= pg.interval_start:
            self._activate()
        else:
            pg.emit(RequestUpThru(pg.interval_start))

    def _activate(self) -> None:
        """Record the activation here first, and send the log to the replicas only once
        that is durable: everything applied before it is then durable too, so every entry a
        replica takes from this log has its data durable on this OSD (else a crash here could
        leave replicas with entries whose data is nowhere: unfound forever)."""
        pg = self.pg
        self.phase = Phase.ACTIVATING
        pg.set_les(pg.interval_start, self._self_activated)

    def _self_activated(self) -> None:
        if self.pg.peering is not self:
            return  # an earlier attempt's record
        pg = self.pg
        start = pg.interval_start
        for osd in pg.acting[1:]:
            pg.send(osd, Activate(pg.pgid, start, self.attempt, pg.log.copy(),
                                  osd in self.backfill, start))
        self.self_activated = True
        self._maybe_active()

    def on_activated(self, frm: int, msg: Activated) -> None:
        if self.phase is Phase.ACTIVATING and msg.attempt == self.attempt:
            self.activated.add(frm)
            self._maybe_active()

    def _maybe_active(self) -> None:
        pg = self.pg
        if self.self_activated and self.activated >= set(pg.acting[1:]):
            pg.become_active(self.peer_missing, self.backfill)


# -- what every OSD of the PG answers --------------------------------------------------------


def _on_query(pg: PG, frm: int, msg: Query) -> None:
    if frm == pg.acting[0]:
        pg.replica_active = False  # the primary peers again: a new Activate will follow
    pg.send(frm, Notify(pg.pgid, pg.interval_start, msg.attempt, pg.info(), pg.log.copy(),
                        pg.missing.copy()))


def _on_notify(pg: PG, frm: int, msg: Notify) -> None:
    if pg.peering is not None:
        pg.peering.on_notify(frm, msg)


def _on_activate(pg: PG, frm: int, msg: Activate) -> None:
    """A replica adopts the primary's log: replaced (backfill from nothing) or merged (the
    same merge the primary computed its plan with); once durable, it answers."""
    if pg.role is not Role.REPLICA or frm != pg.acting[0] or pg.replica_active:
        return
    pg.replica_active = True

    def done() -> None:
        pg.send(frm, Activated(pg.pgid, pg.interval_start, msg.attempt))

    if msg.backfill:
        pg.adopt(msg.log.copy(), Missing(), last_backfill="", les=msg.les, on_commit=done)
    else:
        res = merge_log(pg.log, pg.missing, msg.log, pg.objects.version)
        pg.adopt(res.log, res.missing, pg.last_backfill, les=msg.les, on_commit=done)


def _on_activated(pg: PG, frm: int, msg: Activated) -> None:
    if pg.peering is not None:
        pg.peering.on_activated(frm, msg)


HANDLERS: dict[type, Any] = {
    Query: _on_query,
    Notify: _on_notify,
    Activate: _on_activate,
    Activated: _on_activated,
}
