"""From a static cluster file to the monitor's first epoch.

A data directory made before the monitor existed has a ``cluster.toml`` listing the OSDs
(id, address, weight) and pools; its map is epoch 1 forever, and every object sits where that
map's placement put it (on the primary: ``size`` was not acted on). The monitor's first map
keeps everything placement reads: the same OSD ids, weights and in-ness, the same pools with
the same ids and pg_num, so once the OSDs have booted to the monitor (which marks them up)
every object maps to the same PG and the same acting set, primary first, as before. Its
addresses are kept too (the OSDs confirm or replace them at boot).

The OSDs start *down*: the monitor has not seen them yet, and a map must not promise a
client an OSD that may not be running. Its epoch is the static epoch + 1, so whoever still
holds the static map takes the monitor's map as newer.
"""

from __future__ import annotations

from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo, check_osd, check_pool


def first_epoch(static: OSDMap) -> OSDMap:
    """The monitor's first map for a cluster whose map was ``static`` (for a data directory:
    ``first_epoch(rbdpy.config.load(path).osdmap)``). Raises MapError (EINVAL) for a static
    map no monitor map may hold (min_size above size, a negative weight...)."""
    osds = {}
    for i, o in sorted(static.osds.items()):
        osds[i] = OSDInfo(i, o.host, o.port, up=False, in_=o.in_, weight=o.weight)
        check_osd(osds[i])
    pools = {}
    for pid, p in sorted(static.pools.items()):
        pools[pid] = PoolInfo(pid, p.name, p.size, p.min_size, p.pg_num)
        check_pool(pools[pid])
    return OSDMap(static.epoch + 1, osds, pools, {}, static.next_osd_id)
