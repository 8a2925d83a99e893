"""The cluster map: OSDs, pools, placement, epochs. Pure data and functions (sans-I/O).

Placement follows Ceph's shape: an object hashes to a placement group of its pool; a PG maps
to OSDs by weighted rendezvous hashing (straw2-like): every in OSD of positive weight draws
for the PG, and the ``size`` best draws, best first, are its *raw* set. So adding or removing
one OSD changes only the raw sets that gain or lose it, and those by that one OSD, the others
keeping their order: with N equal OSDs about 1/N of the replicas move, and nothing else does.
An OSD draws best with a probability proportional to its weight: with one replica that is its
share of the PGs; with more, shares are flatter than the weights (a PG's replicas are distinct
OSDs, so a heavy one holds at most one of them). Tests: tests/maps/test_osdmap.py.

Up and acting sets, as Ceph defines them (``OSDMap::_pg_to_up_acting_osds``):

- **up** = the raw set without its down OSDs, order kept. A down OSD is *not* replaced: its
  PGs run degraded on the others until it comes back or is marked out (after the monitor's
  ``down_out_interval``), so a short restart moves no data. An out OSD (or weight 0) does not
  draw at all, so the next draw takes its place: out is what remaps.
- **acting** = the PG's ``pg_temp`` entry without its down OSDs when there is one (a primary
  asks for it while new up members are backfilled, so the PG keeps serving from OSDs that
  hold the data), else up.
- The primary is the first of acting (``up_primary`` the first of up); ``None`` when empty:
  such a PG has no OSD to serve it and its requests wait for a map that gives one.

Epochs: a map is a value. ``apply(inc)`` returns the next epoch's map and leaves this one as
it was: the objecter memoizes placement per map object, subscribers and peering hold older
epochs (past intervals are computed from them), and a monitor that fails to persist an epoch
still has its current map intact. The new map gets new dicts, while unchanged ``OSDInfo`` and
``PoolInfo`` entries are shared with the old epoch (copy-on-write per entry: O(OSDs + pools)
per epoch, small at any size a map has here); so entries of a map in use are never edited in
place either, only replaced through ``apply``.

The monitor (rbdpy.mon) makes every epoch; until the daemons and clients are wired to it, the
map still comes from the cluster file, at epoch 1 (``rbdpy.mon.migrate`` turns that map into
the monitor's first epoch). The seam the objecter calls is ``OSDMap.object_target``.
"""

from __future__ import annotations

import errno
import hashlib
import math
import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rbdpy.maps.errors import MapError

if TYPE_CHECKING:
    from rbdpy.maps.incremental import Incremental, OsdChange

# encodable ranges (rbdpy.maps.encoding): everything apply accepts can be encoded
MAX_EPOCH = 2**32 - 1
MAX_OSD_ID = 2**32 - 2
MAX_POOL_ID = 2**63 - 1
MAX_PG_NUM = 2**32 - 1
MAX_SIZE = 2**16 - 1
MAX_NAME = 2**16 - 1  # bytes of utf-8


def _h64(*parts: object) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x00")
    return struct.unpack("<Q", h.digest())[0]


def default_min_size(size: int) -> int:
    """Ceph's default ``min_size`` (``osd_pool_default_min_size = 0``): a majority."""
    return size - size // 2


@dataclass
class OSDInfo:
    id: int
    host: str
    port: int
    up: bool = True
    in_: bool = True
    weight: float = 1.0  # placement weight (straw2 draw), like a CRUSH weight
    nonce: int = 0  # the booted instance (Ceph's address nonce): a restart changes it
    up_from: int = 0  # epoch it was last marked up
    up_thru: int = 0  # newest epoch the monitor recorded it alive through (for peering)
    down_at: int = 0  # epoch it was last marked down
    auto_out: bool = False  # out by the monitor (never booted yet, or down too long), not
    #                         by an admin: booting marks it in again

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass
class PoolInfo:
    id: int
    name: str
    size: int = 1
    min_size: int = 0  # 0: Ceph's default for the size, size - size // 2
    pg_num: int = 64

    def __post_init__(self) -> None:
        if self.min_size == 0:
            self.min_size = default_min_size(self.size)


@dataclass(frozen=True)
class PGMapping:
    """A PG's up and acting sets, primary first (see the module doc)."""

    up: tuple[int, ...]
    acting: tuple[int, ...]

    @property
    def up_primary(self) -> int | None:
        return self.up[0] if self.up else None

    @property
    def primary(self) -> int | None:
        return self.acting[0] if self.acting else None


_TARGET_CACHE = 1 << 16


@dataclass
class OSDMap:
    epoch: int = 1
    osds: dict[int, OSDInfo] = field(default_factory=dict)
    pools: dict[int, PoolInfo] = field(default_factory=dict)
    # (pool, pg) -> the acting set a primary asked for while up members are backfilled
    pg_temp: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    max_osd: int = 0  # ids below it were handed out (see next_osd_id); 0 in maps made
    #                   by hand, which is why next_osd_id also looks at the ids present
    _targets: dict[tuple[int, str], tuple[int, tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False)

    def pool_by_name(self, name: str) -> PoolInfo:
        for p in self.pools.values():
            if p.name == name:
                return p
        raise KeyError(f"no pool named {name!r}")

    @property
    def next_osd_id(self) -> int:
        """The id a new OSD gets: never one an OSD of this map has or had (a removed OSD's
        id would otherwise name an empty newcomer in past intervals that peering reads)."""
        return max(self.max_osd, max(self.osds, default=-1) + 1)

    def is_up(self, osd: int) -> bool:
        info = self.osds.get(osd)
        return info is not None and info.up

    def object_pg(self, pool: int, oid: str) -> int:
        return _h64("obj", oid) % self.pools[pool].pg_num

    def pg_raw(self, pool: int, pg: int) -> list[int]:
        """The ``size`` highest straw2 draws among in OSDs of positive weight, up or down."""
        size = self.pools[pool].size
        draws = []
        for osd in self.osds.values():
            if not osd.in_ or osd.weight <= 0:
                continue
            u = (_h64("pg", pool, pg, osd.id) + 1) / 2.0**64
            draws.append((math.log(u) / osd.weight, osd.id))
        draws.sort(reverse=True)
        return [osd_id for _, osd_id in draws[:size]]

    def pg_up(self, pool: int, pg: int) -> list[int]:
        """The raw set without its down OSDs (not replaced: see the module doc)."""
        osds = self.osds
        return [o for o in self.pg_raw(pool, pg) if osds[o].up]

    def pg_mapping(self, pool: int, pg: int) -> PGMapping:
        up = tuple(self.pg_up(pool, pg))
        temp = self.pg_temp.get((pool, pg))
        if temp:
            acting = tuple(o for o in temp if self.is_up(o))
            if acting:
                return PGMapping(up, acting)
        return PGMapping(up, up)

    def pg_acting(self, pool: int, pg: int) -> list[int]:
        """The PG's acting OSDs, primary first (empty: no OSD can serve it now)."""
        return list(self.pg_mapping(pool, pg).acting)

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
            hit = cache[key] = (pg, tuple(self.pg_acting(pool, pg)))
        return hit[0], list(hit[1])

    def apply(self, inc: Incremental) -> OSDMap:
        """The map of epoch ``inc.epoch``, which must be ``self.epoch + 1``; ``self`` is not
        changed. Within the incremental: new OSDs are created (down, out, weight 1, to be
        marked in at their first boot), then OSD changes apply, then removals (an OSD must
        be down to leave), then pools, then pg_temp entries (an empty one removes).
        Raises MapError (EINVAL, ENOENT for an unknown OSD or pool, EEXIST, EBUSY)."""
        e = inc.epoch
        if e != self.epoch + 1:
            raise MapError(f"incremental for epoch {e} does not follow epoch {self.epoch}")
        check_epoch(e)
        osds = dict(self.osds)
        max_osd = self.next_osd_id
        for i in inc.new_osds:
            check_osd_id(i)
            if i in osds:
                raise MapError(f"osd.{i} exists already", errno.EEXIST)
            osds[i] = OSDInfo(i, "", 0, up=False, in_=False, auto_out=True)
            max_osd = max(max_osd, i + 1)
        for i, ch in inc.osds.items():
            cur = osds.get(i)
            if cur is None:
                raise MapError(f"osd.{i} does not exist", errno.ENOENT)
            osds[i] = _changed(cur, ch, e)
        for i in inc.removed_osds:
            cur = osds.get(i)
            if cur is None:
                raise MapError(f"osd.{i} does not exist", errno.ENOENT)
            if cur.up:
                raise MapError(f"osd.{i} is up: only a down OSD leaves the map", errno.EBUSY)
            del osds[i]
        pools = dict(self.pools)
        for pid, p in inc.new_pools.items():
            check_pool(p)
            if p.id != pid:
                raise MapError(f"pool {p.id} filed under id {pid}")
            old = pools.get(pid)
            if old is not None and old.pg_num != p.pg_num:
                raise MapError(f"pool {p.name!r}: pg_num cannot change (PGs do not split or "
                               f"merge)")
            for q in pools.values():
                if q.name == p.name and q.id != pid:
                    raise MapError(f"pool name {p.name!r} is taken by pool {q.id}",
                                   errno.EEXIST)
            pools[pid] = replace(p)  # the map's own copy: the incremental's stays apart
        pg_temp = dict(self.pg_temp)
        for key, members in inc.new_pg_temp.items():
            check_pg_temp(key, members, pools)
            if not members:
                pg_temp.pop(key, None)
                continue
            for o in members:
                if o not in osds:
                    raise MapError(f"pg_temp {key}: osd.{o} does not exist", errno.ENOENT)
            pg_temp[key] = tuple(members)
        return OSDMap(e, osds, pools, pg_temp, max_osd)


def _changed(cur: OSDInfo, ch: OsdChange, e: int) -> OSDInfo:
    """``cur`` with ``ch`` applied at epoch ``e``; up_from and down_at follow up/down."""
    host, port = cur.addr if ch.addr is None else ch.addr
    nonce = cur.nonce if ch.nonce is None else ch.nonce
    up = cur.up if ch.up is None else ch.up
    in_ = cur.in_ if ch.in_ is None else ch.in_
    auto_out = (cur.auto_out if ch.auto_out is None else ch.auto_out) and not in_
    weight = cur.weight if ch.weight is None else ch.weight
    up_thru = cur.up_thru if ch.up_thru is None else ch.up_thru
    if cur.up and up and ((host, port) != cur.addr or nonce != cur.nonce):
        raise MapError(f"osd.{cur.id} is up: its address changes only when it boots")
    if ch.up_thru is not None and not cur.up_thru <= up_thru <= e:
        raise MapError(f"osd.{cur.id}: up_thru {up_thru} outside [{cur.up_thru}, {e}]")
    up_from = e if up and not cur.up else cur.up_from
    down_at = e if cur.up and not up else cur.down_at
    new = OSDInfo(cur.id, host, port, up, in_, weight, nonce, up_from, up_thru, down_at,
                  auto_out)
    check_osd(new)
    if up and not (host and port):
        raise MapError(f"osd.{cur.id} cannot be up without an address")
    return new


def check_epoch(e: int) -> None:
    if not 1 <= e <= MAX_EPOCH:
        raise MapError(f"epoch {e} out of range")


def check_osd_id(i: int) -> None:
    if not 0 <= i <= MAX_OSD_ID:
        raise MapError(f"osd id {i} out of range")


def check_osd(o: OSDInfo) -> None:
    """The ranges an OSD entry must stay in (so that it encodes)."""
    check_osd_id(o.id)
    if not 0 <= o.port <= 0xFFFF:
        raise MapError(f"osd.{o.id}: port {o.port} out of range")
    if len(o.host.encode()) > MAX_NAME:
        raise MapError(f"osd.{o.id}: host name too long")
    if not 0 <= o.nonce < 2**64:
        raise MapError(f"osd.{o.id}: nonce out of range")
    if not (math.isfinite(o.weight) and 0 <= o.weight < 2**32):
        raise MapError(f"osd.{o.id}: weight {o.weight} is not a finite number >= 0")
    for name in ("up_from", "up_thru", "down_at"):
        if not 0 <= getattr(o, name) <= MAX_EPOCH:
            raise MapError(f"osd.{o.id}: {name} out of range")


def check_pool(p: PoolInfo) -> None:
    if not 0 <= p.id <= MAX_POOL_ID:
        raise MapError(f"pool id {p.id} out of range")
    if not p.name or len(p.name.encode()) > MAX_NAME:
        raise MapError(f"pool {p.id}: a name of 1 to {MAX_NAME} bytes is needed")
    if not 1 <= p.size <= MAX_SIZE:
        raise MapError(f"pool {p.name!r}: size {p.size} out of range")
    if not 1 <= p.min_size <= p.size:
        raise MapError(f"pool {p.name!r}: min_size {p.min_size} not in 1..size ({p.size})")
    if not 1 <= p.pg_num <= MAX_PG_NUM:
        raise MapError(f"pool {p.name!r}: pg_num {p.pg_num} out of range")


def check_pg_temp(key: tuple[int, int], members: tuple[int, ...],
                  pools: dict[int, PoolInfo]) -> None:
    pool, pg = key
    p = pools.get(pool)
    if p is None:
        raise MapError(f"pg_temp {key}: no pool {pool}", errno.ENOENT)
    if not 0 <= pg < p.pg_num:
        raise MapError(f"pg_temp {key}: pool {p.name!r} has {p.pg_num} PGs")
    if len(set(members)) != len(members) or len(members) > MAX_SIZE:
        raise MapError(f"pg_temp {key}: {members} is not a set of distinct OSDs")
    for o in members:
        check_osd_id(o)
