"""One OSD's copy of a placement group: the sans-I/O state machine the OSD daemon drives.

A ``PG`` holds this OSD's persistent state of the PG (log, missing set, last_epoch_started,
backfill watermark) and, for the current interval, its role: the *primary* peers
(``peering.PrimaryPeering``), then serves client ops (``replication.ReplicatedPrimary``) and
recovers the others (``recovery.Recovery``); a *replica* follows the primary; a *stray* (not
in the acting set) only answers queries, pulls and scans. Every interval change drops all of
that volatile state and starts over; messages of older intervals are dropped on arrival.

Entry points (each returns the effects to carry out, see ``effects``): ``advance_map``,
``handle`` (a message from another OSD), ``client_op``, ``submit`` (a write executed during
ExecuteOp), ``committed`` (the store made everything up to an Apply's seq durable),
``object_data`` (a ReadObject's answer). The sub-machines reach back here for the helpers
below (send, apply, persist): the same listener shape as Ceph's PeeringState/PG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rbdpy.osd.pg import peering, recovery, replication
from rbdpy.osd.pg.effects import (
    Apply,
    ClientOp,
    Effect,
    ObjectRemove,
    ObjectsView,
    ObjectWrite,
    ReadObject,
    Record,
    Send,
)
from rbdpy.osd.pg.errors import PGError
from rbdpy.osd.pg.info import PGInfo
from rbdpy.osd.pg.intervals import Interval, MapHistory
from rbdpy.osd.pg.log import (
    DEFAULT_MAX_DUPS,
    ZERO,
    LogEntry,
    Missing,
    MissingItem,
    OpKind,
    PGLog,
    Version,
    last_complete,
    reconcile,
)
from rbdpy.osd.pg.messages import PGMessage
from rbdpy.osd.pg.meta import P_LOG, Loaded, MetaTxn, load, vkey
from rbdpy.osd.pg.states import PGState, Role


@dataclass(frozen=True)
class PGConfig:
    """Bounds: how much history a PG keeps (longer logs let a returning OSD recover from the
    log instead of a backfill; dups bound how late a resend is still recognised) and how much
    recovery runs at once."""

    max_log: int = 3000  # entries kept once durable everywhere (Ceph's osd_min_pg_log_entries)
    max_dups: int = DEFAULT_MAX_DUPS
    scan_chunk: int = 64  # objects per backfill scan
    max_recovery: int = 8  # objects pushed or pulled at once


class PG:
    """See the module docstring. Build with ``PG.load``."""

    def __init__(self, osd: int, pgid: int, objects: ObjectsView, state: Loaded,
                 config: PGConfig = PGConfig()) -> None:
        self.osd = osd
        self.pgid = pgid
        self.objects = objects
        self.config = config
        # persistent
        self.log: PGLog = state.log
        self.missing: Missing = state.missing
        self.les = state.les
        self.last_backfill: str | None = state.last_backfill
        # volatile
        self.history: MapHistory | None = None
        self.interval: Interval | None = None
        self.role = Role.NONE
        self._up: frozenset[int] = frozenset()
        self.peering: peering.PrimaryPeering | None = None
        self.backend: replication.ReplicatedPrimary | None = None
        self.recovery: recovery.Recovery | None = None
        self.replica_active = False
        self._waiting: list[ClientOp] = []
        self._seq = 0
        self._committed = 0
        self._on_commit: dict[int, list[tuple[int, Callable[[], None]]]] = {}
        self._reads: dict[int, tuple[int, Callable[[Version | None, Any], None]]] = {}
        self._token = 0
        self._attempt = 0
        self._out: list[Effect] = []

    @classmethod
    def load(cls, osd: int, pgid: int, kv: Mapping[str, bytes], objects: ObjectsView,
             config: PGConfig = PGConfig()) -> tuple[PG, list[Effect]]:
        """The PG from its persisted keys (none: a PG this OSD never held), its missing set
        made true to the objects on disk (``log.reconcile``); the effects finish removals a
        crash interrupted."""
        state = load(kv, config.max_dups)
        pg = cls(osd, pgid, objects, state, config)
        fixed, torn = reconcile(pg.log, pg.missing, objects.version, pg.last_backfill)
        if fixed != pg.missing or torn is not None:
            t = MetaTxn()
            if torn is not None:
                t.delete(vkey(P_LOG, torn.version))
            t.replace_missing(pg.missing, fixed)
            pg.missing = fixed
            pg.apply([t.record()])
        pg.resolve_deletes()
        return pg, pg._flush()

    # -- what others read -----------------------------------------------------------------

    @property
    def interval_start(self) -> int:
        return self.interval.first if self.interval is not None else 0

    @property
    def acting(self) -> tuple[int, ...]:
        return self.interval.acting if self.interval is not None else ()

    @property
    def is_active(self) -> bool:
        return self.backend is not None

    def info(self) -> PGInfo:
        return PGInfo(self.pgid, self.log.head, last_complete(self.log, self.missing),
                      self.log.tail, self.les, self.last_backfill)

    def state(self) -> PGState:
        """This PG's state as its primary reports it (empty on other OSDs)."""
        if self.role is not Role.PRIMARY or self.interval is None or self.history is None:
            return PGState(0)
        size = self.history.latest.size
        if self.backend is None:
            return self.peering.state() if self.peering is not None else PGState.PEERING
        s = PGState.ACTIVE
        assert self.recovery is not None
        s |= self.recovery.state()
        if len(self.acting) < size:
            s |= PGState.UNDERSIZED | PGState.DEGRADED
        if not s & (PGState.DEGRADED | PGState.RECOVERING | PGState.BACKFILLING):
            s |= PGState.CLEAN
        return s

    # -- entry points ----------------------------------------------------------------------

    def advance_map(self, history: MapHistory) -> list[Effect]:
        """A new latest epoch (or the first map after load)."""
        self.history = history
        cur = history.current(self.pgid)
        up = history.latest.up
        if self.interval is None or cur.first != self.interval.first:
            self._new_interval(cur)
        else:
            self.interval = cur
            if self.peering is not None:
                if up != self._up:  # someone peering may need came or went: ask again
                    self._attempt += 1
                    self.peering = peering.PrimaryPeering(self, self._attempt)
                    self._up = up
                    self.peering.start()
                else:
                    self.peering.map_advanced()
        self._up = up
        return self._flush()

    def handle(self, frm: int, msg: PGMessage) -> list[Effect]:
        """A message from OSD ``frm``; dropped when it belongs to another interval."""
        if (self.interval is None or msg.pgid != self.pgid
                or msg.interval != self.interval.first):
            return []
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, frm, msg)
        return self._flush()

    def client_op(self, op: ClientOp) -> list[Effect]:
        """A client request. Dropped when the client's map is older than this interval or
        this OSD is not the primary (the client resends when it sees the new map); waits
        while the PG is not active."""
        if (self.role is not Role.PRIMARY or self.interval is None
                or op.epoch < self.interval.first):
            return []
        if self.backend is None:
            self._waiting.append(op)
        else:
            self.backend.client_op(op)
        return self._flush()

    def submit(self, op: ClientOp, kind: OpKind, payload: Any, result: int) -> list[Effect]:
        """The outcome of executing a write (during its ExecuteOp): the change to make (kind
        and the driver's transaction), and the result the client gets."""
        if self.backend is None:
            raise PGError("submit without an active primary")
        self.backend.submit(op, kind, payload, result)
        return self._flush()

    def committed(self, seq: int) -> list[Effect]:
        """Every Apply up to ``seq`` is durable."""
        for s in range(self._committed + 1, seq + 1):
            for start, fn in self._on_commit.pop(s, ()):
                if start == self.interval_start:
                    fn()
        self._committed = max(self._committed, seq)
        return self._flush()

    def object_data(self, token: int, version: Version | None, payload: Any) -> list[Effect]:
        """A ReadObject's answer (version None: the object does not exist)."""
        got = self._reads.pop(token, None)
        if got is not None and got[0] == self.interval_start:
            got[1](version, payload)
        return self._flush()

    # -- helpers for the sub-machines --------------------------------------------------------

    def emit(self, e: Effect) -> None:
        self._out.append(e)

    def send(self, to: int, msg: PGMessage) -> None:
        self._out.append(Send(to, msg))

    def apply(self, records: list[Record], on_commit: Callable[[], None] | None = None) -> int:
        """Emit an Apply; ``on_commit`` runs once it is durable, if still in this interval."""
        self._seq += 1
        self._out.append(Apply(self._seq, tuple(records)))
        if on_commit is not None:
            self.on_commit(self._seq, on_commit)
        return self._seq

    def on_commit(self, seq: int, fn: Callable[[], None]) -> None:
        if seq <= self._committed:
            fn()
        else:
            self._on_commit.setdefault(seq, []).append((self.interval_start, fn))

    def read_object(self, oid: str, fn: Callable[[Version | None, Any], None]) -> None:
        """Emit a ReadObject; ``fn`` gets its answer, if still in this interval."""
        self._token += 1
        self._reads[self._token] = (self.interval_start, fn)
        self._out.append(ReadObject(oid, self._token))

    def append_entry(self, e: LogEntry, payload: Any, log_only: bool, trim_to: Version
                     ) -> int:
        """Record a write locally: the entry (and any missing-set change) first, then the
        object change. Without the change when ``log_only`` (the primary knows the object is
        missing here, or past where backfill has reached: its data comes later) or when the
        object is missing here. A write carrying data to an object past this OSD's persisted
        watermark is applied: the primary sends data only once it pushed the object (in
        order, before this), and moves the watermark after. Returns the Apply's seq."""
        self.log.append(e)
        t = MetaTxn()
        t.entry(e)
        self._trim(t, trim_to)
        records: list[Record] = []
        beyond = self.last_backfill is not None and e.oid > self.last_backfill
        if e.changes_object and not (log_only and beyond):
            item = self.missing.get(e.oid)
            if item is not None or log_only:
                new = (MissingItem(e.version, ZERO, deleted=True)
                       if e.kind is OpKind.DELETE else MissingItem(e.version, ZERO))
                if item is not None and not item.deleted:
                    new = MissingItem(new.need, item.have, new.deleted)
                self.missing[e.oid] = new
                t.missing(e.oid, new)
            elif e.kind is OpKind.MODIFY:
                records.append(ObjectWrite(e.oid, e.version, payload))
            else:
                records.append(ObjectRemove(e.oid))
        seq = self.apply([t.record(), *records])
        if self.missing and any(it.deleted for it in self.missing.values()):
            self.resolve_deletes()
        return seq

    def _trim(self, t: MetaTxn, to: Version) -> None:
        if to > self.log.tail:
            gone, dropped = self.log.trim(to)
            if gone:
                t.trimmed(gone, dropped, self.log)

    def trim(self, to: Version) -> None:
        t = MetaTxn()
        self._trim(t, to)
        if t:
            self.apply([t.record()])

    def adopt(self, log: PGLog, missing: Missing, last_backfill: str | None = None,
              les: int | None = None, on_commit: Callable[[], None] | None = None) -> None:
        """Replace the log and missing set (a merge, or the start of a backfill), then
        resolve delete items."""
        t = MetaTxn()
        t.replace_log(self.log, log)
        t.replace_missing(self.missing, missing)
        self.log, self.missing = log, missing
        self.last_backfill = last_backfill
        if les is not None:
            self.les = les
        t.info(self.les, self.last_backfill)
        self.apply([t.record()], on_commit)
        self.resolve_deletes()

    def resolve_deletes(self) -> None:
        """Remove the objects the missing set says must not exist, then forget the items."""
        gone = [o for o, it in self.missing.items() if it.deleted]
        if not gone:
            return
        t = MetaTxn()
        for oid in gone:
            del self.missing[oid]
            t.missing(oid, None)
        self.apply([*(ObjectRemove(o) for o in gone), t.record()])

    def recovered(self, oid: str, version: Version | None, payload: Any,
                  on_commit: Callable[[], None] | None = None) -> None:
        """A pushed object: write it (or remove it), then drop its missing item if that is
        what was needed (object first: an interrupted write leaves the item in place)."""
        rec: Record = (ObjectRemove(oid) if version is None
                       else ObjectWrite(oid, version, payload, whole=True))
        records: list[Record] = [rec]
        item = self.missing.get(oid)
        if item is not None and version is not None and version >= item.need:
            del self.missing[oid]
            t = MetaTxn()
            t.missing(oid, None)
            records.append(t.record())
        self.apply(records, on_commit)

    def set_backfill(self, last_backfill: str | None,
                     on_commit: Callable[[], None] | None = None) -> None:
        self.last_backfill = last_backfill
        t = MetaTxn()
        t.info(self.les, last_backfill)
        self.apply([t.record()], on_commit)

    def set_les(self, les: int, on_commit: Callable[[], None] | None = None) -> None:
        self.les = les
        t = MetaTxn()
        t.info(les, self.last_backfill)
        self.apply([t.record()], on_commit)

    def become_active(self, peer_missing: dict[int, Missing], backfill: set[int]) -> None:
        """Peering is done on every acting OSD: serve the ops that waited, start recovery."""
        self.peering = None
        self.recovery = recovery.Recovery(self, peer_missing, backfill)
        self.backend = replication.ReplicatedPrimary(self, self.recovery)
        waiting, self._waiting = self._waiting, []
        for op in waiting:
            self.backend.client_op(op)
        self.recovery.kick()

    # -- internals -------------------------------------------------------------------------

    def _new_interval(self, cur: Interval) -> None:
        self.interval = cur
        self.peering = None
        self.backend = None
        self.recovery = None
        self.replica_active = False
        self._waiting = []  # clients resend on the interval change
        self._reads.clear()
        if cur.primary == self.osd:
            self.role = Role.PRIMARY
            self._attempt += 1
            self.peering = peering.PrimaryPeering(self, self._attempt)
            self.peering.start()
        elif self.osd in cur.acting:
            self.role = Role.REPLICA
        else:
            self.role = Role.STRAY

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out


_HANDLERS: dict[type, Callable[[PG, int, Any], None]] = {
    **peering.HANDLERS,
    **replication.HANDLERS,
    **recovery.HANDLERS,
}
