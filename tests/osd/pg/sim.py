"""A seeded, in-process simulation of a replicated cluster running the PG core
(rbdpy.osd.pg), in the manner of Ceph's thrashosds around ceph_test_rados.

Everything random comes from one ``random.Random(seed)`` and happens on a virtual clock (an
event queue), so a seed replays exactly. The pieces:

- ``SimStore`` (simdisk.py): an OSD's disk. Records are applied at once (visible) and made
  durable by a commit a little later, in order; a crash keeps what was durable plus a random
  prefix of the rest (a journal torn at some record), the way rbdpy's ObjectStore replays.
- ``SimOSD``: PG cores on a store. Runs their effects; executes client ops (write: replace the
  object, append, delete; read); crashes (volatile state gone) and restarts (``PG.load``).
- ``Net``: messages with random delays, in order per link; dropped when the receiver is dead
  or restarted, when a partition cuts the link, or when the connection is reset.
- ``Mon``: the map. Marks an OSD down when it crashes (and, after a grace, when a partition
  isolates it), up when it boots, out after it stayed down a while, records up_thru on request.
  Placement: each PG has a fixed preference order; its acting set is the first ``size`` *in*
  OSDs of it that are up (down leaves a hole, out remaps), as Ceph's up set.
- ``SimClient``: issues random writes, appends, deletes and reads with reqids, one op at a time
  per object across all clients, so an in-memory model knows the exact answer to each; resends
  every op in flight whose PG changed interval (it sees every epoch, later than the OSDs) and
  on a connection reset, like the objecter.

Checked while it runs: every commit's result and every read's data against the model (a lost
committed write, a stale read, a write applied twice all show there). Checked at the end,
after healing (all OSDs up and in, no faults): every op completes, every PG is active+clean,
every acting copy of every PG holds the same objects, equal to the model, and reads of every
object return the model.
"""

from __future__ import annotations

import errno
import hashlib
import random
import zlib
from dataclasses import dataclass
from typing import Any

from rbdpy.osd.pg.effects import (
    Apply,
    ClientOp,
    ExecuteOp,
    ReadObject,
    ReplyOp,
    RequestUpThru,
    Send,
)
from rbdpy.osd.pg.intervals import EpochMap, MapHistory
from rbdpy.osd.pg.log import OpKind
from rbdpy.osd.pg.pg import PG, PGConfig
from rbdpy.osd.pg.states import PGState, state_str
from tests.osd.pg.simdisk import Clock, SimStore, View


class SimFailure(AssertionError):
    """An invariant broke; the message says which and where."""


@dataclass(frozen=True)
class SimConfig:
    n_osds: int
    size: int
    min_size: int
    pgs: int
    objects: int
    clients: int
    depth: int  # ops each client keeps in flight (on different objects)
    fault_ms: float  # how long faults are injected
    max_log: int
    scan_chunk: int
    fault_every: float  # mean ms between faults
    out_after: float  # ms down before the mon marks an OSD out
    grace: float  # ms a partition lasts before the mon marks the isolated OSD down
    commit_ms: float  # the slowest a commit (fsync) takes

    @classmethod
    def from_seed(cls, rng: random.Random, long: bool = False) -> SimConfig:
        n = rng.choice([2, 3, 3, 4, 5])
        size = rng.choice([s for s in (2, 3) if s <= n])
        min_size = rng.choice([1, size - size // 2])
        return cls(n_osds=n, size=size, min_size=min_size, pgs=rng.choice([1, 2, 3]),
                   objects=rng.randint(4, 14), clients=rng.randint(1, 3),
                   depth=rng.choice([1, 2, 4]),
                   fault_ms=(rng.uniform(5000, 15000) if long else rng.uniform(800, 2000)),
                   max_log=rng.choice([4, 8, 20, 100]), scan_chunk=rng.choice([1, 3, 16]),
                   fault_every=rng.uniform(10, 60), out_after=rng.uniform(30, 300),
                   grace=rng.uniform(5, 30), commit_ms=rng.choice([2, 6, 20]))


# -- messages to and from clients ------------------------------------------------------------


@dataclass(frozen=True)
class OpMsg:
    op: ClientOp
    kind: str  # write, append, delete, read
    data: bytes


@dataclass(frozen=True)
class OpReply:
    tid: int
    commit: bool
    result: int
    data: bytes | None = None


# -- the network ---------------------------------------------------------------------------------


class Net:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.last: dict[tuple[Any, Any], float] = {}
        self.gen: dict[frozenset, int] = {}
        self.isolated: set[int] = set()  # OSDs cut off from the other OSDs

    def cut(self, a: Any, b: Any) -> bool:
        return (isinstance(a, int) and isinstance(b, int) and a != b
                and (a in self.isolated or b in self.isolated))

    def reset(self, a: Any, b: Any) -> None:
        k = frozenset((a, b))
        self.gen[k] = self.gen.get(k, 0) + 1

    def send(self, src: Any, dst: Any, msg: Any) -> None:
        sim = self.sim
        if self.cut(src, dst):
            return
        if isinstance(dst, int) and not sim.osds[dst].alive:
            return  # connection refused
        rng = sim.rng
        delay = rng.uniform(0.05, 1.0) if rng.random() < 0.9 else rng.uniform(1, 15)
        t = max(sim.clock.now + delay, self.last.get((src, dst), 0.0) + 1e-6)
        self.last[(src, dst)] = t
        gen = self.gen.get(frozenset((src, dst)), 0)
        inc = sim.osds[dst].incarnation if isinstance(dst, int) else 0
        sim.clock.at(t, lambda: self._deliver(src, dst, msg, gen, inc))

    def _deliver(self, src: Any, dst: Any, msg: Any, gen: int, inc: int) -> None:
        sim = self.sim
        if self.gen.get(frozenset((src, dst)), 0) != gen or self.cut(src, dst):
            return
        if isinstance(dst, int):
            osd = sim.osds[dst]
            if not osd.alive or osd.incarnation != inc:
                return
            name = type(msg).__name__
            sim.trace(f"d {src}>{dst} {name}")
            sim.count(name)
            if name == "Push":
                sim.count(f"push-{msg.kind.name.lower()}")
            elif name == "Activate" and msg.backfill:
                sim.count("activate-backfill")
            osd.receive(src, msg)
        else:
            sim.clients[dst[1]].on_reply(msg)


# -- an OSD --------------------------------------------------------------------------------------


class SimOSD:
    def __init__(self, sim: Sim, osd_id: int) -> None:
        self.sim = sim
        self.id = osd_id
        self.store = SimStore(sim.cfg.pgs)
        self.alive = False
        self.incarnation = 0
        self.pgs: list[PG] = []
        self.commit_due = False
        self.checked: dict[int, int] = {}  # pgid -> interval whose activation was checked
        self.disk_speed = sim.rng.uniform(0.2, 1)  # some disks are slower than others

    def boot(self) -> None:
        sim = self.sim
        self.alive = True
        self.incarnation += 1
        self.commit_due = False
        self.pgs = []
        for pgid in range(sim.cfg.pgs):
            pg, eff = PG.load(self.id, pgid, self.store.applied[pgid].meta,
                              View(self.store, pgid), sim.pg_config)
            self.pgs.append(pg)
            self.run(pg, eff)

    def crash(self) -> None:
        self.alive = False
        self.pgs = []
        self.store.crash(self.sim.rng)

    def advance(self) -> None:
        for pg in self.pgs:
            self.run(pg, pg.advance_map(self.sim.history))

    def receive(self, src: Any, msg: Any) -> None:
        if isinstance(msg, OpMsg):
            pg = self.pgs[self.sim.pg_of(msg.op.oid)]
            self.run(pg, pg.client_op(msg.op))
        else:
            pg = self.pgs[msg.pgid]
            self.run(pg, pg.handle(src, msg))

    def run(self, pg: PG, effects: list) -> None:
        self._run(pg, effects)
        if self.alive and pg.is_active and self.checked.get(pg.pgid) != pg.interval_start:
            self.checked[pg.pgid] = pg.interval_start
            self.sim.check_active(self, pg)

    def _run(self, pg: PG, effects: list) -> None:
        sim = self.sim
        for e in effects:
            if not self.alive:
                return
            if isinstance(e, Apply):
                for rec in e.records:
                    self.store.apply(pg.pgid, e.seq, rec)
                if not self.commit_due:
                    self.commit_due = True
                    inc = self.incarnation
                    sim.clock.after(sim.rng.uniform(0.1, sim.cfg.commit_ms * self.disk_speed),
                                    lambda inc=inc: self._commit(inc))
            elif isinstance(e, Send):
                sim.net.send(self.id, e.to, e.msg)
            elif isinstance(e, ExecuteOp):
                self._execute(pg, e.op)
            elif isinstance(e, ReplyOp):
                client, tid = e.op.handle
                sim.net.send(self.id, ("client", client), OpReply(tid, e.commit, e.result))
            elif isinstance(e, ReadObject):
                inc = self.incarnation
                sim.clock.after(sim.rng.choice([0, 0, 0.05, 0.5]),
                                lambda pg=pg, e=e, inc=inc: self._read_done(inc, pg, e))
            elif isinstance(e, RequestUpThru):
                sim.mon.want_up_thru(self.id, e.epoch)
            else:
                raise TypeError(e)

    def _read_done(self, inc: int, pg: PG, e: ReadObject) -> None:
        if not self.alive or self.incarnation != inc:
            return
        o = self.store.applied[pg.pgid].objects.get(e.oid)
        self.run(pg, pg.object_data(e.token, o[0] if o else None, o[1] if o else None))

    def _commit(self, inc: int) -> None:
        if not self.alive or self.incarnation != inc:
            return
        self.commit_due = False
        for pgid, seq in self.store.commit().items():
            pg = self.pgs[pgid]
            self.run(pg, pg.committed(seq))

    def _execute(self, pg: PG, op: ClientOp) -> None:
        """Run a client op against the object as it is here (the primary's copy)."""
        sim = self.sim
        msg: OpMsg = sim.op_msgs[op.reqid]
        cur = self.store.applied[pg.pgid].objects.get(op.oid)
        if op.write:
            if op.reqid in sim.executed:
                sim.count("re-executed")  # only right if the first run was rolled back
            sim.executed.add(op.reqid)
        client, tid = op.handle
        if not op.write:
            reply = (OpReply(tid, True, 0, cur[1]) if cur is not None
                     else OpReply(tid, True, -errno.ENOENT))
            sim.net.send(self.id, ("client", client), reply)
            return
        if msg.kind == "write":
            eff = pg.submit(op, OpKind.MODIFY, msg.data, 0)
        elif msg.kind == "append":
            eff = pg.submit(op, OpKind.MODIFY, (cur[1] if cur else b"") + msg.data, 0)
        elif cur is None:
            eff = pg.submit(op, OpKind.ERROR, None, -errno.ENOENT)
        else:
            eff = pg.submit(op, OpKind.DELETE, None, 0)
        self.run(pg, eff)


# -- the monitor ---------------------------------------------------------------------------------


class Mon:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        cfg = sim.cfg
        self.up: set[int] = set()
        self.in_: set[int] = set(range(cfg.n_osds))
        self.up_thru: dict[int, int] = {}
        self.down_since: dict[int, float] = {}
        rng = sim.rng
        self.pref = [rng.sample(range(cfg.n_osds), cfg.n_osds) for _ in range(cfg.pgs)]
        self.epoch = 0

    def map(self) -> EpochMap:
        cfg = self.sim.cfg
        acting = {}
        for pgid in range(cfg.pgs):
            raw = [o for o in self.pref[pgid] if o in self.in_][:cfg.size]
            acting[pgid] = tuple(o for o in raw if o in self.up)
        return EpochMap(self.epoch, frozenset(self.up), dict(self.up_thru), acting, cfg.size,
                        cfg.min_size)

    def publish(self) -> None:
        sim = self.sim
        self.epoch += 1
        m = self.map()
        if sim.history is None:
            sim.history = MapHistory(m)
        else:
            sim.history.add(m)
        sim.trace(f"epoch {m.epoch} up={sorted(m.up)} acting={m.acting}")
        sim.count("epochs")
        for osd in sim.osds:
            if osd.alive:
                osd.advance()
        for pgid in range(sim.cfg.pgs):
            pg = sim._primary_pg(pgid)
            if pg is not None:
                for f in pg.state():
                    sim.count(f"state-{f.name.lower()}")
        for c in sim.clients:
            c.map_published(m.epoch)

    def mark_down(self, osd: int) -> None:
        if osd not in self.up:
            return
        self.up.discard(osd)
        self.down_since[osd] = self.sim.clock.now
        self.publish()
        since = self.sim.clock.now
        self.sim.clock.after(self.sim.cfg.out_after, lambda: self._maybe_out(osd, since))

    def _maybe_out(self, osd: int, since: float) -> None:
        if osd not in self.up and self.down_since.get(osd) == since and osd in self.in_:
            self.in_.discard(osd)
            self.publish()

    def mark_up(self, osd: int) -> None:
        if osd in self.up and osd in self.in_:
            return
        self.up.add(osd)
        self.in_.add(osd)
        self.down_since.pop(osd, None)
        self.publish()

    def want_up_thru(self, osd: int, epoch: int) -> None:
        sim = self.sim

        def record() -> None:
            if sim.osds[osd].alive and osd in self.up and self.up_thru.get(osd, 0) < epoch:
                self.up_thru[osd] = self.epoch
                self.publish()

        sim.clock.after(sim.rng.uniform(0.2, 4), record)


# -- a client ------------------------------------------------------------------------------------


@dataclass
class Op:
    tid: int
    reqid: tuple[int, int, int, int]
    kind: str
    oid: str
    data: bytes
    expect_result: int
    expect_data: bytes | None  # the object after (write) or as read (read)
    pgid: int
    acting: tuple[int, ...] = ()
    acked: bool = False


class SimClient:
    def __init__(self, sim: Sim, cid: int) -> None:
        self.sim = sim
        self.id = cid
        self.epoch = 0
        self.inflight: dict[int, Op] = {}
        self.tid = 0
        self.map_due: list[int] = []
        self.last_map_at = 0.0

    # maps arrive later than at the OSDs, in order
    def map_published(self, epoch: int) -> None:
        sim = self.sim
        t = max(sim.clock.now + sim.rng.uniform(0.05, 8), self.last_map_at)
        self.last_map_at = t
        sim.clock.at(t, lambda: self._new_map(epoch))

    def _new_map(self, epoch: int) -> None:
        sim = self.sim
        self.epoch = epoch
        m = sim.history.get(epoch)
        for op in list(self.inflight.values()):
            acting = m.acting_of(op.pgid)
            if acting != op.acting:
                sim.count("resend-map")
                self._send(op)

    def _send(self, op: Op) -> None:
        sim = self.sim
        m = sim.history.get(self.epoch)
        op.acting = m.acting_of(op.pgid)
        if not op.acting:
            return  # homeless until a map gives the PG a primary
        cop = ClientOp(op.reqid, op.oid, op.kind != "read", self.epoch, (self.id, op.tid))
        sim.op_msgs[op.reqid] = OpMsg(cop, op.kind, op.data)
        sim.net.send(("client", self.id), op.acting[0], sim.op_msgs[op.reqid])

    def reset(self, osd: int) -> None:
        """Our connection to ``osd`` was reset: what was in flight is lost; resend."""
        self.sim.net.reset(("client", self.id), osd)
        for op in list(self.inflight.values()):
            if op.acting and op.acting[0] == osd:
                self.sim.count("resend-reset")
                self._send(op)

    def start_op(self) -> None:
        sim = self.sim
        if not sim.issuing:
            return
        free = [o for o in sim.oids if o not in sim.busy]
        if not free:
            sim.clock.after(sim.rng.uniform(0.5, 3), self.start_op)
            return
        oid = sim.rng.choice(free)
        kind = sim.rng.choices(["write", "append", "delete", "read"], [3, 3, 1, 3])[0]
        self.issue(kind, oid)

    def issue(self, kind: str, oid: str) -> None:
        sim = self.sim
        rng = sim.rng
        cur = sim.model.get(oid)
        data = rng.randbytes(rng.randint(1, 12)) if kind in ("write", "append") else b""
        if kind == "write":
            res, after = 0, data
        elif kind == "append":
            res, after = 0, (cur or b"") + data
        elif kind == "delete":
            res, after = (0 if cur is not None else -errno.ENOENT), None
        else:
            res, after = (0 if cur is not None else -errno.ENOENT), cur
        self.tid += 1
        op = Op(self.tid, (8, self.id, 1, self.tid), kind, oid, data, res, after,
                sim.pg_of(oid))
        sim.busy.add(oid)
        self.inflight[op.tid] = op
        sim.ops_issued += 1
        self._send(op)

    def on_reply(self, r: OpReply) -> None:
        sim = self.sim
        op = self.inflight.get(r.tid)
        if op is None:
            return
        if not r.commit:
            op.acked = True
            return
        where = f"client {self.id} {op.kind} {op.oid!r} (reqid {op.reqid}) at {sim.clock.now:.3f}"
        if r.result != op.expect_result:
            raise SimFailure(f"{where}: result {r.result}, model says {op.expect_result}")
        if op.kind == "read":
            if r.result == 0 and r.data != op.expect_data:
                raise SimFailure(f"{where}: read {r.data!r}, model says {op.expect_data!r}")
        else:
            if op.expect_data is None:
                sim.model.pop(op.oid, None)
            else:
                sim.model[op.oid] = op.expect_data
        del self.inflight[r.tid]
        sim.busy.discard(op.oid)
        sim.ops_done += 1
        if sim.issuing:
            sim.clock.after(sim.rng.uniform(0, 4), self.start_op)


# -- the simulation ------------------------------------------------------------------------------


class Sim:
    def __init__(self, seed: int, cfg: SimConfig | None = None, long: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = cfg or SimConfig.from_seed(self.rng, long)
        self.pg_config = PGConfig(max_log=self.cfg.max_log, max_dups=10_000,
                                  scan_chunk=self.cfg.scan_chunk, max_recovery=4)
        self.clock = Clock()
        self.net = Net(self)
        self.history: MapHistory | None = None
        self.osds = [SimOSD(self, i) for i in range(self.cfg.n_osds)]
        self.clients = [SimClient(self, i) for i in range(self.cfg.clients)]
        self.mon = Mon(self)
        self.oids = [f"obj{i:02d}" for i in range(self.cfg.objects)]
        self.model: dict[str, bytes] = {}
        self.busy: set[str] = set()
        self.op_msgs: dict[tuple, OpMsg] = {}
        self.issuing = True
        self.ops_issued = 0
        self.ops_done = 0
        self.faults: list[str] = []
        self._digest = hashlib.blake2b(digest_size=8)
        self.stats: dict[str, int] = {}
        self.executed: set[tuple] = set()
        self.crashed: set[int] = set()

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def trace(self, s: str) -> None:
        self._digest.update(f"{self.clock.now:.6f} {s}\n".encode())

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def check_active(self, osd: SimOSD, pg: PG) -> None:
        """A primary just went active: it holds every object of the PG, so each object no
        op is in flight on must be exactly what the model says (every committed write)."""
        objs = osd.store.applied[pg.pgid].objects
        for oid in self.oids:
            if self.pg_of(oid) != pg.pgid or oid in self.busy:
                continue
            got = objs.get(oid)
            if (got[1] if got else None) != self.model.get(oid):
                raise SimFailure(
                    f"osd.{osd.id} active for pg {pg.pgid} in interval {pg.interval_start} "
                    f"at {self.clock.now:.3f}: {oid} is {got}, model says "
                    f"{self.model.get(oid)!r}")

    def pg_of(self, oid: str) -> int:
        return zlib.crc32(oid.encode()) % self.cfg.pgs

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, osd: int) -> None:
        o = self.osds[osd]
        if not o.alive:
            return
        self.faults.append(f"{self.clock.now:.1f} crash osd.{osd}")
        o.crash()
        self.crashed.add(osd)
        inc = o.incarnation
        self.clock.after(self.rng.uniform(0, 3), lambda: self._crash_seen(osd, inc))

    def _crash_seen(self, osd: int, inc: int) -> None:
        if self.osds[osd].incarnation == inc:  # not booted again meanwhile
            self.mon.mark_down(osd)

    def restart(self, osd: int) -> None:
        o = self.osds[osd]
        if o.alive or osd in self.mon.up:
            return
        self.faults.append(f"{self.clock.now:.1f} restart osd.{osd}")
        self.crashed.discard(osd)
        o.boot()
        self.mon.mark_up(osd)

    def partition(self, osd: int, ms: float) -> None:
        """Cut ``osd`` off from the other OSDs; after the grace the mon marks it down (the
        failure reports); the partition heals after ``ms`` (at least the grace), and the OSD,
        wrongly marked down, boots again."""
        if osd in self.net.isolated or not self.osds[osd].alive:
            return
        self.faults.append(f"{self.clock.now:.1f} partition osd.{osd} {ms:.1f}ms")
        self.net.isolated.add(osd)
        for other in range(self.cfg.n_osds):
            self.net.reset(osd, other)
        self.clock.after(self.cfg.grace, lambda: self._reported(osd))
        self.clock.after(max(ms, self.cfg.grace + 0.01), lambda: self._heal(osd))

    def _reported(self, osd: int) -> None:
        if osd in self.net.isolated:
            self.mon.mark_down(osd)

    def _heal(self, osd: int) -> None:
        """The partition ends; it always outlasted the grace, so the mon has marked the OSD
        down (every message lost to it is followed by an interval change), and the OSD, alive
        and wrongly marked down, boots again."""
        if osd not in self.net.isolated:
            return
        self.mon.mark_down(osd)
        self.net.isolated.discard(osd)
        if self.osds[osd].alive:
            self.mon.mark_up(osd)

    def _fault(self) -> None:
        if self.clock.now >= self.cfg.fault_ms:
            return
        rng = self.rng
        alive = [o.id for o in self.osds if o.alive]
        dead = [o.id for o in self.osds if not o.alive and o.id not in self.mon.up]
        r = rng.random()
        if r < 0.2 and len(alive) >= 2:
            # power loss: several OSDs at the same moment; they come back one by one
            n = len(alive) if rng.random() < 0.5 else rng.randint(2, len(alive))
            for osd in rng.sample(alive, n):
                self.crash(osd)
                self.clock.after(rng.uniform(5, 150), lambda osd=osd: self.restart(osd))
        elif r < 0.35 and alive:
            self.crash(rng.choice(alive))
        elif r < 0.65 and dead:
            self.restart(rng.choice(dead))
        elif r < 0.8 and alive:
            self.partition(rng.choice(alive), rng.uniform(1, 60))
        elif self.clients:
            c = rng.choice(self.clients)
            osd = rng.randrange(self.cfg.n_osds)
            self.faults.append(f"{self.clock.now:.1f} reset client.{c.id}-osd.{osd}")
            c.reset(osd)
        self.clock.after(rng.expovariate(1 / self.cfg.fault_every), self._fault)

    # -- running ---------------------------------------------------------------------------------

    def start(self, faults: bool = True, clients: bool = True) -> None:
        """Boot every OSD, publish the first map, start the clients and the faults."""
        cfg = self.cfg
        for o in self.osds:
            o.boot()
        for o in range(cfg.n_osds):
            self.mon.up.add(o)
        self.mon.publish()
        for c in self.clients:
            c.epoch = self.mon.epoch
        self.issuing = clients
        if clients:
            for c in self.clients:
                for _ in range(cfg.depth):
                    self.clock.after(self.rng.uniform(0, 2), c.start_op)
        if faults:
            self.clock.after(self.rng.uniform(0, cfg.fault_every), self._fault)

    def run(self) -> None:
        """Faults for ``fault_ms``, then heal, wait for quiet, check."""
        self.start()
        self.run_until(self.cfg.fault_ms)
        self._heal_all()
        self.issuing = False
        deadline = self.clock.now + 30_000
        while not self._quiet():
            if not self.clock.step():
                raise SimFailure(f"nothing left to do but not clean: {self._status()}")
            if self.clock.now > deadline:
                raise SimFailure(f"not clean 30 s after healing: {self._status()}")
        self._check_final()

    def run_until(self, t: float) -> None:
        while self.clock.next_at() is not None and self.clock.next_at() <= t:
            self.clock.step()

    def settle(self, limit: float = 10_000) -> None:
        """Run until nothing is due in the next ``limit`` ms (scripted tests, without faults
        or issuing clients: only far timers, such as marking an OSD out, are left)."""
        while (t := self.clock.next_at()) is not None and t <= self.clock.now + limit:
            self.clock.step()

    def _heal_all(self) -> None:
        self.faults.append(f"{self.clock.now:.1f} heal")
        for osd in list(self.net.isolated):
            self._heal(osd)
        for o in self.osds:
            if not o.alive:
                self.crashed.discard(o.id)
                self.mon.mark_down(o.id)
                o.boot()
        for o in self.osds:
            if o.id not in self.mon.up or o.id not in self.mon.in_:
                self.mon.mark_up(o.id)

    def _quiet(self) -> bool:
        if any(c.inflight for c in self.clients):
            return False
        for pgid in range(self.cfg.pgs):
            pg = self._primary_pg(pgid)
            if pg is None or not (pg.state() & PGState.CLEAN):
                return False
        return True

    def _primary_pg(self, pgid: int) -> PG | None:
        assert self.history is not None
        acting = self.history.latest.acting_of(pgid)
        if not acting or not self.osds[acting[0]].alive:
            return None
        return self.osds[acting[0]].pgs[pgid]

    def _status(self) -> str:
        parts = []
        for pgid in range(self.cfg.pgs):
            pg = self._primary_pg(pgid)
            st = state_str(pg.state()) if pg is not None else "no primary"
            acting = self.history.latest.acting_of(pgid) if self.history else ()
            parts.append(f"pg {pgid} acting {list(acting)} {st}")
        stuck = [f"client {c.id} {op.kind} {op.oid} -> {list(op.acting)}"
                 for c in self.clients for op in c.inflight.values()]
        return "; ".join(parts) + (f"; ops in flight: {stuck}" if stuck else "")

    def _check_final(self) -> None:
        assert self.history is not None
        for pgid in range(self.cfg.pgs):
            acting = self.history.latest.acting_of(pgid)
            if len(acting) != min(self.cfg.size, self.cfg.n_osds):
                raise SimFailure(f"pg {pgid}: acting {acting} after healing")
            want = {o: d for o, d in self.model.items() if self.pg_of(o) == pgid}
            copies = {}
            for osd in acting:
                objs = self.osds[osd].store.applied[pgid].objects
                got = {o: d for o, (_, d) in objs.items()}
                if got != want:
                    diff = sorted(set(got.items()) ^ set(want.items()))
                    raise SimFailure(f"pg {pgid} osd.{osd}: objects differ from the model: "
                                     f"{diff[:6]}")
                copies[osd] = objs
                heads = {self.osds[o].pgs[pgid].log.head for o in acting}
                if len(heads) != 1:
                    raise SimFailure(f"pg {pgid}: log heads differ: {heads}")
            if len({tuple(sorted(c.items())) for c in copies.values()}) != 1:
                raise SimFailure(f"pg {pgid}: copies differ (versions): {copies}")
        # read every object back through a client
        self.issuing = False
        c = self.clients[0]
        for oid in self.oids:
            c.issue("read", oid)
            while c.inflight:
                if not self.clock.step():
                    raise SimFailure(f"final read of {oid} never answered: {self._status()}")


def run_seed(seed: int, long: bool = False) -> Sim:
    sim = Sim(seed, long=long)
    try:
        sim.run()
    except SimFailure as e:
        raise SimFailure(f"seed {seed} {sim.cfg}: {e}\nfaults: {sim.faults[-30:]}") from None
    return sim
