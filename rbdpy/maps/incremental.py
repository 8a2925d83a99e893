"""An incremental: what changes from one epoch of the OSDMap to the next (Ceph's
``OSDMap::Incremental``). The monitor builds one per epoch, persists it and sends it to
subscribers, who apply it to the map they hold (``OSDMap.apply``).

Values are absolute (``up=False``, ``weight=2.0``), not Ceph's xor'ed state bits: applying an
incremental twice to the same map gives the same result, and one reads what it does.
``up_from`` and ``down_at`` are not carried: ``apply`` sets them to the epoch that marks an
OSD up or down, so they cannot disagree with the up/down history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from rbdpy.maps.osdmap import PoolInfo


@dataclass(frozen=True)
class OsdChange:
    """New values for some of one OSD's fields; ``None`` leaves a field as it is."""

    addr: tuple[str, int] | None = None  # set at boot (with up=True and a new nonce)
    nonce: int | None = None
    up: bool | None = None
    in_: bool | None = None
    auto_out: bool | None = None
    weight: float | None = None
    up_thru: int | None = None

    def merged(self, later: OsdChange) -> OsdChange:
        """This change followed by ``later`` (its set fields win)."""
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        vals.update({f.name: v for f in fields(later)
                     if (v := getattr(later, f.name)) is not None})
        return OsdChange(**vals)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class Incremental:
    epoch: int
    new_osds: tuple[int, ...] = ()  # created down and out, marked in at their first boot
    osds: Mapping[int, OsdChange] = field(default_factory=dict)
    removed_osds: tuple[int, ...] = ()  # each must be down once ``osds`` is applied
    new_pools: Mapping[int, PoolInfo] = field(default_factory=dict)  # created or replaced
    new_pg_temp: Mapping[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    # ^ (pool, pg) -> acting set asked for; () removes the entry

    def is_empty(self) -> bool:
        """Nothing changes but the epoch."""
        return not (self.new_osds or self.osds or self.removed_osds or self.new_pools
                    or self.new_pg_temp)
