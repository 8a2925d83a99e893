"""The cluster map: OSDs, pools, placement. Pure data and functions (sans-I/O).

Placement follows Ceph's shape: an object hashes to a placement group of its pool; a PG maps
to its acting OSDs by weighted rendezvous hashing (straw2-like): every up+in OSD draws for the
PG, and the ``size`` best draws, best first, are its acting set. So adding or removing one OSD
changes only the acting sets that gain or lose it, and those by that one OSD, the others
keeping their order: with N equal OSDs about 1/N of the replicas move, and nothing else does.
An OSD draws best with a probability proportional to its weight: with one replica that is its
share of the PGs; with more, shares are flatter than the weights (a PG's replicas are distinct
OSDs, so a heavy one holds at most one of them). Tests: tests/maps/test_osdmap.py.

Until the monitor exists the map comes from the cluster file with epoch 1; the seam
(``OSDMap.object_target``) is what the objecter calls.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field


def _h64(*parts: object) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x00")
    return struct.unpack("<Q", h.digest())[0]


@dataclass
class OSDInfo:
    id: int
    host: str
    port: int
    up: bool = True
    in_: bool = True
    weight: float = 1.0

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass
class PoolInfo:
    id: int
    name: str
    size: int = 1
    min_size: int = 1
    pg_num: int = 64


_TARGET_CACHE = 1 << 16


@dataclass
class OSDMap:
    epoch: int = 1
    osds: dict[int, OSDInfo] = field(default_factory=dict)
    pools: dict[int, PoolInfo] = field(default_factory=dict)
    _targets: dict[tuple[int, str], tuple[int, tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False)

    def pool_by_name(self, name: str) -> PoolInfo:
        for p in self.pools.values():
            if p.name == name:
                return p
        raise KeyError(f"no pool named {name!r}")

    def object_pg(self, pool: int, oid: str) -> int:
        return _h64("obj", oid) % self.pools[pool].pg_num

    def pg_acting(self, pool: int, pg: int) -> list[int]:
        """The PG's OSDs, primary first: the ``size`` highest straw2 draws among up+in OSDs."""
        size = self.pools[pool].size
        draws = []
        for osd in self.osds.values():
            if not (osd.up and osd.in_) or osd.weight <= 0:
                continue
            u = (_h64("pg", pool, pg, osd.id) + 1) / 2.0**64
            draws.append((math.log(u) / osd.weight, osd.id))
        draws.sort(reverse=True)
        return [osd_id for _, osd_id in draws[:size]]

    def object_target(self, pool: int, oid: str) -> tuple[int, list[int]]:
        """(pg, acting OSD ids) for an object; the objecter sends to acting[0].

        Memoized per map (maps are not edited once in use: a change is a new epoch, a new
        object): placement hashes the name and draws once per OSD, which cost more than
        encoding the request it routes."""
        cache = self._targets
        key = (pool, oid)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= _TARGET_CACHE:
                cache.clear()
            pg = self.object_pg(pool, oid)
            hit = cache[key] = (pg, self.pg_acting(pool, pg))
        return hit[0], list(hit[1])
