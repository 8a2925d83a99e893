"""Scripted scenarios on the simulation (no random faults, no random clients): build a small
cluster, then crash, restart and issue ops by hand and let it settle."""

from __future__ import annotations

from rbdpy.osd.pg.pg import PG
from tests.osd.pg.sim import Op, Sim, SimConfig


def cluster(n: int, size: int, min_size: int, *, max_log: int = 100, objects: int = 4,
            scan_chunk: int = 2) -> Sim:
    cfg = SimConfig(n_osds=n, size=size, min_size=min_size, pgs=1, objects=objects,
                    clients=1, depth=1, fault_ms=0, max_log=max_log, scan_chunk=scan_chunk,
                    fault_every=1e9, out_after=1e9, grace=5, commit_ms=2)
    sim = Sim(0, cfg)
    sim.start(faults=False, clients=False)
    sim.settle()
    return sim


def pref(sim: Sim) -> list[int]:
    """The PG's OSDs in preference order: the first up one is the primary."""
    return sim.mon.pref[0]


def op(sim: Sim, kind: str, oid: str = "obj00", settle: bool = True) -> Op:
    c = sim.clients[0]
    c.issue(kind, oid)
    o = c.inflight[c.tid]
    if settle:
        sim.settle()
    return o


def until(sim: Sim, cond, limit: float = 1000) -> None:  # noqa: ANN001
    """Step until ``cond()`` holds (AssertionError if it does not within ``limit`` ms)."""
    end = sim.clock.now + limit
    while not cond():
        assert sim.clock.step() and sim.clock.now <= end, "condition never held"


def done(sim: Sim, o: Op) -> bool:
    return o.tid not in sim.clients[0].inflight


def crash(sim: Sim, osd: int) -> None:
    sim.osds[osd].crash()
    sim.mon.mark_down(osd)


def restart(sim: Sim, osd: int) -> None:
    sim.restart(osd)
    sim.settle()


def primary(sim: Sim) -> PG:
    pg = sim._primary_pg(0)
    assert pg is not None
    return pg


def data(sim: Sim, osd: int, oid: str = "obj00") -> bytes | None:
    got = sim.osds[osd].store.applied[0].objects.get(oid)
    return got[1] if got else None
