"""Random valid incrementals for a map: shared by the Hypothesis tests (``st.randoms()``) and
the monitor store's crash child (``random.Random(seed)``), so both walk the same kinds of
histories: OSDs created, booted with new addresses and nonces, marked down, in, out,
reweighted, given up_thru, removed once down; pools created and resized; pg_temp entries set
and cleared.
"""

from __future__ import annotations

import random

from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.osdmap import OSDMap, PoolInfo

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.5)


def gen_incremental(rnd: random.Random, m: OSDMap) -> Incremental:
    """An incremental that ``m.apply`` accepts (often several changes, sometimes none); a
    function of ``rnd``'s state and ``m``'s value (dicts are walked in key order, since a
    decoded map's order differs from an applied one's)."""
    e = m.epoch + 1
    new_osds = tuple(range(m.next_osd_id, m.next_osd_id + rnd.choice((0, 0, 0, 1, 2))))
    changes: dict[int, OsdChange] = {}
    booted: set[int] = set()
    for i in [*sorted(m.osds), *new_osds]:  # sorted: a function of the map's value
        if rnd.random() < 0.6:
            continue
        cur = m.osds.get(i)
        up = cur is not None and cur.up
        ch: dict = {}
        if not up and rnd.random() < 0.6:
            ch.update(up=True, addr=(rnd.choice(("127.0.0.1", "::1", "osd.example")),
                                     rnd.randint(1, 65535)), nonce=rnd.getrandbits(64))
            booted.add(i)
        elif up and rnd.random() < 0.4:
            ch["up"] = False
        if rnd.random() < 0.4:
            ch["in_"] = rnd.random() < 0.6
        if rnd.random() < 0.2:
            ch["auto_out"] = rnd.random() < 0.5
        if rnd.random() < 0.2:
            ch["weight"] = rnd.choice(WEIGHTS)
        if cur is not None and rnd.random() < 0.3:
            ch["up_thru"] = rnd.randint(cur.up_thru, e)
        changes[i] = OsdChange(**ch)
    removable = [i for i, o in sorted(m.osds.items())
                 if not o.up and i not in booted and rnd.random() < 0.15]
    removable += [i for i, ch in changes.items() if ch.up is False and rnd.random() < 0.3]
    removed = tuple(sorted(set(removable)))
    pools: dict[int, PoolInfo] = {}
    if rnd.random() < 0.1 or not m.pools:
        pid = max(m.pools, default=0) + 1
        size = rnd.randint(1, 4)
        pools[pid] = PoolInfo(pid, f"pool{pid}", size, rnd.randint(1, size),
                              rnd.choice((1, 8, 32, 64)))
    for _, p in sorted(m.pools.items()):
        if rnd.random() < 0.1:
            size = rnd.randint(1, 4)
            pools[p.id] = PoolInfo(p.id, p.name, size, rnd.randint(1, size), p.pg_num)
    temps: dict[tuple[int, int], tuple[int, ...]] = {}
    remaining = sorted((set(m.osds) | set(new_osds)) - set(removed))
    for key in sorted(m.pg_temp):
        if rnd.random() < 0.3:
            temps[key] = ()
    if m.pools and remaining:
        for _ in range(rnd.choice((0, 0, 1, 3))):
            p = m.pools[rnd.choice(sorted(m.pools))]
            members = rnd.sample(remaining, rnd.randint(1, min(len(remaining), 4)))
            temps[(p.id, rnd.randrange(p.pg_num))] = tuple(members)
    return Incremental(e, new_osds, changes, removed, pools, temps)


def gen_history(rnd: random.Random, n: int, first: OSDMap | None = None
                ) -> tuple[list[OSDMap], list[Incremental]]:
    """``n`` incrementals from ``first`` (default: an empty map at epoch 1) and the maps
    they make: maps[k + 1] = maps[k].apply(incs[k])."""
    maps = [first or OSDMap(epoch=1)]
    incs = []
    for _ in range(n):
        inc = gen_incremental(rnd, maps[-1])
        incs.append(inc)
        maps.append(maps[-1].apply(inc))
    return maps, incs
