"""The map history peering needs, in the PG core's own minimal types, and the prior set.

``EpochMap`` is what peering reads of one map epoch: which OSDs are up, each OSD's
``up_thru``, each PG's acting set (primary first) and the pool's size and min_size. A
``MapHistory`` holds consecutive epochs and cuts each PG's run of them into *intervals*:
maximal runs with the same acting set. (The daemon adapts ``rbdpy.maps`` epochs to these; the
core stays independent of how the monitor represents them.)

An interval *maybe went rw* (Ceph's ``PastIntervals``) when its OSDs could have acknowledged
writes: it had a primary, at least min_size OSDs, and the monitor had recorded the primary's
``up_thru`` at or past the interval's first epoch by the interval's last epoch. A primary asks
for that record before it activates, so an interval that ended before it (the [A,B] -> [A] ->
[] -> [B] case where A died before the monitor recorded it) served no write, and any other may
have.

The *prior set* of a peering are those intervals since the last activation known
(``last_epoch_started``), and the OSDs to ask: the current acting set and every up OSD of those
intervals. Because a write commits only once every acting OSD has it durable, one OSD from
each such interval that is still complete holds every write the interval acknowledged; an
interval with none reachable blocks peering (the PG is *down*) until one comes back.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from rbdpy.osd.pg.errors import PGError


@dataclass(frozen=True)
class EpochMap:
    """One map epoch, as far as PG peering is concerned."""

    epoch: int
    up: frozenset[int]
    up_thru: Mapping[int, int]
    acting: Mapping[int, tuple[int, ...]]  # pgid -> acting set, primary first (no down OSDs)
    size: int
    min_size: int

    def acting_of(self, pgid: int) -> tuple[int, ...]:
        return self.acting.get(pgid, ())

    def is_up(self, osd: int) -> bool:
        return osd in self.up


@dataclass(frozen=True)
class Interval:
    """A run of epochs ``[first, last]`` in which a PG kept the same acting set."""

    first: int
    last: int
    acting: tuple[int, ...]
    maybe_went_rw: bool
    min_size: int

    @property
    def primary(self) -> int | None:
        return self.acting[0] if self.acting else None


def maybe_went_rw(acting: tuple[int, ...], first: int, last_map: EpochMap, min_size: int
                  ) -> bool:
    """Whether an interval starting at ``first`` whose last epoch is ``last_map`` could have
    acknowledged writes (see the module docstring)."""
    if not acting or len(acting) < min_size:
        return False
    return last_map.up_thru.get(acting[0], 0) >= first


@dataclass
class _PGIntervals:
    upto: int  # epochs up to this one are cut into ``intervals``
    intervals: list[Interval] = field(default_factory=list)


class MapHistory:
    """Consecutive map epochs, oldest first, and each PG's intervals over them (computed on
    demand and extended as epochs are added)."""

    def __init__(self, first: EpochMap) -> None:
        self._first = first.epoch
        self._maps: list[EpochMap] = [first]
        self._cache: dict[int, _PGIntervals] = {}

    @property
    def latest(self) -> EpochMap:
        return self._maps[-1]

    @property
    def first_epoch(self) -> int:
        return self._first

    def get(self, epoch: int) -> EpochMap:
        i = epoch - self._first
        if not 0 <= i < len(self._maps):
            raise PGError(f"no map for epoch {epoch}", errno.ENOENT)
        return self._maps[i]

    def add(self, m: EpochMap) -> None:
        """Append the next epoch (its number must follow the latest)."""
        if m.epoch != self.latest.epoch + 1:
            raise PGError(f"epoch {m.epoch} does not follow {self.latest.epoch}")
        self._maps.append(m)

    def intervals(self, pgid: int) -> list[Interval]:
        """The PG's intervals, oldest first; the last is the current one (its ``last`` is the
        latest epoch, its ``maybe_went_rw`` what the latest map says)."""
        c = self._cache.get(pgid)
        if c is None:
            c = self._cache[pgid] = _PGIntervals(self._first - 1)
        latest = self.latest.epoch
        ivs = c.intervals
        for e in range(c.upto + 1, latest + 1):
            m = self.get(e)
            acting = m.acting_of(pgid)
            if ivs and ivs[-1].acting == acting:
                cur = ivs[-1]
                ivs[-1] = replace(cur, last=e, maybe_went_rw=maybe_went_rw(
                    acting, cur.first, m, cur.min_size))
            else:
                ivs.append(Interval(e, e, acting, maybe_went_rw(acting, e, m, m.min_size),
                                    m.min_size))
        c.upto = latest
        return ivs

    def current(self, pgid: int) -> Interval:
        return self.intervals(pgid)[-1]


@dataclass(frozen=True)
class PriorSet:
    """Who a peering primary must hear from (Ceph's ``PastIntervals::PriorSet``)."""

    since: int  # intervals that ended before this epoch (the last activation known) are done
    intervals: tuple[Interval, ...]  # the past intervals that maybe went rw since then
    probe: frozenset[int]  # up OSDs to query: the current acting set and those intervals' up
    down: frozenset[int]  # down OSDs of those intervals

    def blocked(self, answers: Mapping[int, tuple[bool, int]]) -> list[Interval]:
        """The intervals peering must wait for (the PG is down) given ``answers``: queried
        OSD -> (whether its copy is complete, its last_epoch_started). An interval is covered
        by one answer from its acting set that is complete (it has every write the interval
        acknowledged: those were durable on all of it), or that never activated in it (its
        les is older than the interval: no OSD of an interval serves a write before every one
        has durably recorded the activation, so the interval wrote nothing). Otherwise the
        writes may be on none of the answers: wait for an OSD of that interval."""
        out = []
        for i in self.intervals:
            if not any((a := answers.get(o)) is not None and (a[0] or a[1] < i.first)
                       for o in i.acting):
                out.append(i)
        return out


def build_prior(history: MapHistory, pgid: int, since: int) -> PriorSet:
    """The prior set of the PG's current interval, for a last activation at epoch ``since``."""
    ivs = history.intervals(pgid)
    cur, past = ivs[-1], ivs[:-1]
    latest = history.latest
    chosen = tuple(i for i in past if i.maybe_went_rw and i.last >= since)
    probe = set(cur.acting)
    down: set[int] = set()
    for i in chosen:
        for o in i.acting:
            (probe if latest.is_up(o) else down).add(o)
    return PriorSet(since, chosen, frozenset(probe), frozenset(down))
