"""The simulation's clock and disks (see sim.py): an event queue on virtual time, and an OSD's
store, whose records are applied at once and made durable in order by a later commit; a crash
keeps what was durable plus a random prefix of the rest (a journal torn at some record), the
way rbdpy's ObjectStore replays."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rbdpy.osd.pg.effects import ObjectRemove, ObjectWrite
from rbdpy.osd.pg.log import Version
from rbdpy.osd.pg.meta import MetaRecord

# -- the event queue -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._q, (max(t, self.now), self._n, fn))

    def after(self, dt: float, fn: Callable[[], None]) -> None:
        self.at(self.now + dt, fn)

    def next_at(self) -> float | None:
        return self._q[0][0] if self._q else None

    def step(self) -> bool:
        if not self._q:
            return False
        self.now, _, fn = heapq.heappop(self._q)
        fn()
        return True


# -- an OSD's disk -------------------------------------------------------------------------------


@dataclass
class Disk:
    objects: dict[str, tuple[Version, bytes]] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)

    def copy(self) -> Disk:
        return Disk(dict(self.objects), dict(self.meta))

    def do(self, rec: Any) -> None:
        if isinstance(rec, MetaRecord):
            self.meta.update(rec.set)
            for k in rec.rm:
                self.meta.pop(k, None)
        elif isinstance(rec, ObjectWrite):
            self.objects[rec.oid] = (rec.version, rec.payload)
        elif isinstance(rec, ObjectRemove):
            self.objects.pop(rec.oid, None)
        else:
            raise TypeError(rec)


class SimStore:
    """Applied (visible) and durable state per PG; pending records between them."""

    def __init__(self, pgs: int) -> None:
        self.durable = [Disk() for _ in range(pgs)]
        self.applied = [Disk() for _ in range(pgs)]
        self.pending: list[tuple[int, int, Any]] = []  # (pgid, apply seq, record)

    def apply(self, pgid: int, seq: int, rec: Any) -> None:
        self.applied[pgid].do(rec)
        self.pending.append((pgid, seq, rec))

    def commit(self) -> dict[int, int]:
        """Everything pending becomes durable; returns pgid -> last seq made durable."""
        done: dict[int, int] = {}
        for pgid, seq, rec in self.pending:
            self.durable[pgid].do(rec)
            done[pgid] = seq
        self.pending.clear()
        return done

    def crash(self, rng: random.Random) -> None:
        """Keep a random prefix of the pending records, lose the rest."""
        keep = rng.randint(0, len(self.pending)) if rng.random() < 0.5 else 0
        for pgid, _, rec in self.pending[:keep]:
            self.durable[pgid].do(rec)
        self.pending.clear()
        self.applied = [d.copy() for d in self.durable]


class View:
    """The PG core's ObjectsView over a store's applied state."""

    def __init__(self, store: SimStore, pgid: int) -> None:
        self.store = store
        self.pgid = pgid

    def version(self, oid: str) -> Version | None:
        o = self.store.applied[self.pgid].objects.get(oid)
        return o[0] if o is not None else None

    def list(self, after: str, until: str | None, limit: int) -> list[tuple[str, Version]]:
        objs = self.store.applied[self.pgid].objects
        out = []
        for oid in sorted(objs):
            if oid <= after or (until is not None and oid > until):
                continue
            out.append((oid, objs[oid][0]))
            if limit and len(out) >= limit:
                break
        return out
