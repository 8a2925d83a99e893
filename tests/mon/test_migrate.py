"""Migration of a data directory made before the monitor (rbdpy.mon.migrate): once its OSDs
have booted to the monitor, every object maps to the same PG and acting set as before, so
every image and byte stays where it is."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from rbdpy import config
from rbdpy.maps.errors import MapError
from rbdpy.maps.osdmap import OSDMap
from rbdpy.mon.events import Commit, OsdBoot, OsdOut, Tick
from rbdpy.mon.migrate import first_epoch
from rbdpy.mon.state import Monitor, MonOptions
from rbdpy.mon.store import MonStore

# what 'rbdpy cluster up --osds 4' wrote before the monitor (rbdpy.config.dump), plus a
# second pool and weights as a user may have edited them
OLD_CLUSTER_TOML = """\
# rbdpy cluster file (written by 'rbdpy cluster up')
[cluster]
epoch = 1

[[osds]]
id = 0
host = "127.0.0.1"
port = 41001
data = "osd.0"
weight = 1.0

[[osds]]
id = 1
host = "127.0.0.1"
port = 41002
data = "osd.1"
weight = 1.0

[[osds]]
id = 2
host = "127.0.0.1"
port = 41003
data = "osd.2"
weight = 2.0

[[osds]]
id = 3
host = "127.0.0.1"
port = 41004
data = "osd.3"
weight = 0.5

[[pools]]
id = 1
name = "rbd"
size = 3
min_size = 1
pg_num = 64

[[pools]]
id = 4
name = "vms"
size = 1
min_size = 1
pg_num = 16
"""

SAMPLE = (["rbd_directory", "rbd_info", "rbd_id.vm1", "rbd_header.1a2b3c4d5e6f"]
          + [f"rbd_data.1a2b3c4d5e6f.{n:016x}" for n in range(1500)]
          + [f"rbd_data.{i:012x}.{n:016x}" for i in range(20) for n in range(0, 4000, 97)])


def old_data_dir(tmp_path: Path) -> config.ClusterConfig:
    d = tmp_path / "rbdpy-data"
    d.mkdir()
    (d / config.FILE_NAME).write_text(OLD_CLUSTER_TOML)
    return config.load(d / config.FILE_NAME)


def placements(m: OSDMap) -> dict[tuple[int, str], tuple[int, list[int]]]:
    return {(pool, oid): m.object_target(pool, oid) for pool in m.pools for oid in SAMPLE}


def boot_all(first: OSDMap, ports: dict[int, int] | None = None) -> Monitor:
    mon = Monitor(first, 0.0, MonOptions(propose_interval=0.5))
    for i, o in sorted(first.osds.items()):
        mon.handle(OsdBoot(i, o.host, (ports or {}).get(i, o.port), nonce=1000 + i), 0.1 * i)
    mon.handle(Tick(), 1.0)
    assert all(o.up for o in mon.osdmap.osds.values())
    return mon


def test_the_first_epoch_keeps_osds_pools_and_placement(tmp_path: Path) -> None:
    cfg = old_data_dir(tmp_path)
    static = cfg.osdmap
    before = placements(static)
    first = first_epoch(static)
    assert first.epoch == 2 and first.next_osd_id == 4 and first.pg_temp == {}
    assert {i: (o.addr, o.weight, o.in_, o.up) for i, o in first.osds.items()} == {
        i: (o.addr, o.weight, True, False) for i, o in static.osds.items()}
    assert first.pools == static.pools
    assert all(acting == [] for _pg, acting in placements(first).values())  # none booted
    # booted to the monitor, at the addresses of the file or at new ones: same placement
    assert placements(boot_all(first).osdmap) == before
    moved = {0: 42001, 3: 42004}
    mon = boot_all(first, moved)
    assert placements(mon.osdmap) == before
    assert mon.osdmap.osds[0].addr == ("127.0.0.1", 42001)
    # objects spread over every OSD, and the replicas too: the sample means something
    assert {a[0] for _pg, a in before.values()} == {0, 1, 2, 3}
    assert {len(a) for (pool, _), (_pg, a) in before.items() if pool == 1} == {3}


def test_same_placement_with_an_osd_out_on_both_sides(tmp_path: Path) -> None:
    static = old_data_dir(tmp_path).osdmap
    mon = boot_all(first_epoch(static))
    (commit, done) = mon.handle(OsdOut(2), 2.0)
    assert isinstance(commit, Commit)
    static.osds[2].in_ = False
    static._targets.clear()  # the static map was edited after use: drop its memo
    assert placements(mon.osdmap) == placements(static)


def test_the_first_epoch_goes_through_the_store(tmp_path: Path) -> None:
    first = first_epoch(old_data_dir(tmp_path).osdmap)
    MonStore.create(tmp_path / "mon", first).close()
    s = MonStore.open(tmp_path / "mon")
    assert s.osdmap == first
    s.close()


def test_a_static_map_no_monitor_map_may_hold_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / config.FILE_NAME).write_text(OLD_CLUSTER_TOML.replace("size = 3\nmin_size = 1",
                                                               "size = 3\nmin_size = 4"))
    with pytest.raises(MapError) as ei:
        first_epoch(config.load(d / config.FILE_NAME).osdmap)
    assert ei.value.errno == errno.EINVAL and "min_size 4" in str(ei.value)
