"""A PG's intervals over a run of map epochs (Ceph's ``PastIntervals``), for peering.

An interval is a maximal run of epochs in which the PG's up and acting sets (so both
primaries), and its pool's size, min_size and pg_num stay the same. Peering asks of each
past interval whether it *maybe went rw*: whether its OSDs might have acknowledged writes
that the current ones lack. That needs a primary, an acting set of at least min_size (below
it a PG does not go active), and the primary's ``up_thru`` in the interval's last map at or
past the interval's first epoch: a primary asks the monitor to record its up_thru before it
activates a PG in a new interval, so an interval that ended before the monitor recorded it
(the [A,B] -> [A] -> [] -> [B] case where A died at once) never served a write, and one where
it did might have. ``maybe`` because the PG may still not have activated; it is the safe side.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from rbdpy.maps.errors import MapError
from rbdpy.maps.osdmap import OSDMap, PGMapping


@dataclass(frozen=True)
class Interval:
    first: int
    last: int
    up: tuple[int, ...]
    acting: tuple[int, ...]
    maybe_went_rw: bool

    @property
    def primary(self) -> int | None:
        return self.acting[0] if self.acting else None

    @property
    def up_primary(self) -> int | None:
        return self.up[0] if self.up else None


def _key(m: OSDMap, pool: int, pg: int) -> tuple[PGMapping, int, int, int] | None:
    p = m.pools.get(pool)
    if p is None or pg >= p.pg_num:
        return None
    return m.pg_mapping(pool, pg), p.size, p.min_size, p.pg_num


def is_new_interval(old: OSDMap, new: OSDMap, pool: int, pg: int) -> bool:
    """Whether the PG's interval changes between two maps (Ceph's is_new_interval)."""
    return _key(old, pool, pg) != _key(new, pool, pg)


def maybe_went_rw(last_map: OSDMap, first: int, pool: int, acting: tuple[int, ...]) -> bool:
    """The rule for an interval [first, last_map.epoch] with ``acting`` (see module doc)."""
    if not acting or len(acting) < last_map.pools[pool].min_size:
        return False
    primary = last_map.osds.get(acting[0])
    return primary is not None and primary.up_thru >= first


def past_intervals(maps: Sequence[OSDMap], pool: int, pg: int) -> list[Interval]:
    """The PG's intervals over ``maps`` (consecutive epochs, oldest first), oldest first. The
    last one is the current interval: its ``last`` is the newest epoch given and its
    ``maybe_went_rw`` says what is known so far. Epochs before the pool exists (or has the
    PG) have no interval. A gap in the epochs is a MapError (EINVAL): a missing epoch could
    hide an interval."""
    for a, b in zip(maps, maps[1:]):
        if b.epoch != a.epoch + 1:
            raise MapError(f"maps of epochs {a.epoch} and {b.epoch} are not consecutive",
                           errno.EINVAL)
    out: list[Interval] = []
    start = 0
    key = None
    for k, m in enumerate(maps):
        cur = _key(m, pool, pg)
        if k and cur != key and key is not None:
            out.append(_interval(maps, start, k - 1, pool, key[0]))
        if cur != key:
            start = k
            key = cur
    if key is not None:
        out.append(_interval(maps, start, len(maps) - 1, pool, key[0]))
    return out


def _interval(maps: Sequence[OSDMap], i: int, j: int, pool: int, mapping: PGMapping
              ) -> Interval:
    first, last = maps[i].epoch, maps[j].epoch
    return Interval(first, last, mapping.up, mapping.acting,
                    maybe_went_rw(maps[j], first, pool, mapping.acting))
