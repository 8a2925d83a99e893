"""The replicated write path (Ceph's ``ReplicatedBackend`` and the op handling of
``PrimaryLogPG``), as decisions: events in, effects out.

On the active primary a client write is
- answered from the log when its reqid is there (a resend: the stored result, never applied
  twice; if that write is still in flight, the resend waits for its replies);
- held while its object is missing on, or being recovered or backfilled to, an acting OSD
  (the object jumps the recovery queue; Ceph's wait_for_degraded_object);
- otherwise executed (``ExecuteOp``), then ``submit``: the primary assigns the next version
  ``(epoch, counter)``, appends the entry and applies the transaction locally, and sends
  entry + transaction to every other acting OSD (entry only where the object is missing or
  past the backfill watermark).

Each acting OSD answers twice, applied and durable. The client gets its *ack* once every acting
OSD applied the write and its *commit* only once every acting OSD has it durable (the golden
rule: a committed write is then in every later authoritative log), in version order. A read
waits for the in-flight writes to its object, so it never returns data that could still be
rolled back. Ops that arrive while the PG is not active wait (``min_size`` gates activation: a
PG below it waits, it does not fail).

Entries durable on every acting OSD may be trimmed once the log holds more than ``max_log``;
the trim point travels with the next write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rbdpy.osd.pg.effects import ClientOp, ExecuteOp, ReplyOp
from rbdpy.osd.pg.log import ZERO, LogEntry, OpKind, ReqId, Version
from rbdpy.osd.pg.messages import Repop, RepopReply

if TYPE_CHECKING:
    from rbdpy.osd.pg.pg import PG
    from rbdpy.osd.pg.recovery import Recovery


@dataclass
class InFlight:
    """A write sent to the acting set, and who has yet to apply it and make it durable."""

    entry: LogEntry
    ops: list[ClientOp]  # the request and resends of it waiting for the same answers
    need_applied: set[int]
    need_commit: set[int]
    acked: bool = False


@dataclass
class ReplicatedPrimary:
    """The active primary's write path for one interval."""

    pg: PG
    recovery: Recovery
    inflight: dict[Version, InFlight] = field(default_factory=dict)
    waiting: list[ClientOp] = field(default_factory=list)
    executing: dict[ReqId, list[ClientOp]] = field(default_factory=dict)
    writes_to: dict[str, int] = field(default_factory=dict)  # oid -> writes in flight
    trim_to: Version = ZERO

    def client_op(self, op: ClientOp) -> None:
        self.waiting.append(op)
        self.kick()

    def kick(self) -> None:
        """Start what can start, in arrival order; an op waits behind an earlier waiting op
        on the same object."""
        blocked: set[str] = set()
        still: list[ClientOp] = []
        for op in self.waiting:
            if op.oid in blocked or not self._try(op):
                blocked.add(op.oid)
                still.append(op)
        self.waiting = still

    def _try(self, op: ClientOp) -> bool:
        """Start ``op``, or say it must wait (False)."""
        pg = self.pg
        if not op.write:
            if self.writes_to.get(op.oid):
                return False
            pg.emit(ExecuteOp(op))
            return True
        if op.reqid in self.executing:
            self.executing[op.reqid].append(op)
            return True
        dup = pg.log.lookup(op.reqid)
        if dup is not None:
            version, result = dup
            if version in self.inflight:
                self.inflight[version].ops.append(op)
                self._answer(self.inflight[version])
            else:
                pg.emit(ReplyOp(op, result, commit=False))
                pg.emit(ReplyOp(op, result, commit=True))
            return True
        if self.recovery.blocks_write(op.oid):
            return False
        self.executing[op.reqid] = []
        self.writes_to[op.oid] = self.writes_to.get(op.oid, 0) + 1  # reads wait from now
        pg.emit(ExecuteOp(op))
        return True

    def submit(self, op: ClientOp, kind: OpKind, payload: Any, result: int) -> None:
        pg = self.pg
        assert pg.history is not None
        dups = self.executing.pop(op.reqid, [])
        version = Version(pg.history.latest.epoch, pg.log.head.counter + 1)
        prior = pg.objects.version(op.oid) or ZERO
        entry = LogEntry(version, op.oid, kind, prior, op.reqid, result)
        payload = payload if kind is OpKind.MODIFY else None
        seq = pg.append_entry(entry, payload, False, pg.log.tail)
        acting = pg.acting
        for osd in acting[1:]:
            log_only = not self.recovery.sends_data(osd, op.oid)
            pg.send(osd, Repop(pg.pgid, pg.interval_start, entry,
                               None if log_only else payload, log_only, self.trim_to))
        f = InFlight(entry, [op, *dups], set(acting[1:]), set(acting))
        self.inflight[version] = f
        pg.on_commit(seq, lambda: self._replied(pg.osd, version, True))
        self._complete()

    def on_reply(self, frm: int, msg: RepopReply) -> None:
        self._replied(frm, msg.version, msg.committed)

    def _replied(self, osd: int, version: Version, committed: bool) -> None:
        f = self.inflight.get(version)
        if f is None or self.pg.backend is not self:
            return
        (f.need_commit if committed else f.need_applied).discard(osd)
        if committed:
            f.need_applied.discard(osd)  # durable implies applied
        self._complete()

    def _complete(self) -> None:
        """Answer what is answerable, in version order; then trim and start waiting ops."""
        done = False
        for f in self.inflight.values():
            if f.acked:
                continue
            if f.need_applied:
                break
            f.acked = True
            for op in f.ops:
                self.pg.emit(ReplyOp(op, f.entry.result, commit=False))
        while self.inflight:
            version, f = next(iter(self.inflight.items()))
            if f.need_commit or not f.acked:
                break
            del self.inflight[version]
            n = self.writes_to[f.entry.oid] - 1
            if n:
                self.writes_to[f.entry.oid] = n
            else:
                del self.writes_to[f.entry.oid]
            for op in f.ops:
                self.pg.emit(ReplyOp(op, f.entry.result, commit=True))
            self._maybe_trim(version)
            done = True
        if done:
            self.kick()

    def _answer(self, f: InFlight) -> None:
        """A resend joined ``f``: give it the ack now if the others had it."""
        if f.acked:
            self.pg.emit(ReplyOp(f.ops[-1], f.entry.result, commit=False))

    def _maybe_trim(self, durable: Version) -> None:
        """Keep at most ``max_log`` entries, trimming only what is durable everywhere."""
        log = self.pg.log
        over = len(log) - self.pg.config.max_log
        if over <= 0:
            return
        to = min(durable, log.entries[over - 1].version)
        if to > log.tail:
            self.trim_to = to
            self.pg.trim(to)


# -- the replica side ---------------------------------------------------------------------------


def _on_repop(pg: PG, frm: int, msg: Repop) -> None:
    """Record the entry and apply the change; answer applied now and durable later."""
    if not pg.replica_active or frm != pg.acting[0] or msg.entry.version <= pg.log.head:
        return
    seq = pg.append_entry(msg.entry, msg.payload, msg.log_only, msg.trim_to)
    start, version = pg.interval_start, msg.entry.version
    pg.send(frm, RepopReply(pg.pgid, start, version, False))
    pg.on_commit(seq, lambda: pg.send(frm, RepopReply(pg.pgid, start, version, True)))


def _on_repop_reply(pg: PG, frm: int, msg: RepopReply) -> None:
    if pg.backend is not None:
        pg.backend.on_reply(frm, msg)


HANDLERS: dict[type, Any] = {Repop: _on_repop, RepopReply: _on_repop_reply}
