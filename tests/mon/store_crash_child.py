"""Crash-test workload for rbdpy.mon.store (run as a child process, killed with SIGKILL).

``python store_crash_child.py DIR SEED KEEP FULL_EVERY`` opens the store in DIR (creating it
with an empty map at epoch 1 the first time), prints ``R <epoch>`` (flushed), then appends
epochs forever, printing ``C <epoch>`` (flushed) after each append returned: that epoch is
durable. The incremental for an epoch is ``gen_incremental(Random(seed, epoch), map)``, a
function of the seed and the map before it only, so the parent rebuilds the exact history
with :func:`model`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rbdpy.maps.incremental import Incremental  # noqa: E402
from rbdpy.maps.osdmap import OSDMap  # noqa: E402
from tests.maps.gen import gen_incremental  # noqa: E402


def incremental(seed: int, m: OSDMap) -> Incremental:
    return gen_incremental(random.Random(seed * 1_000_003 + m.epoch), m)


def model(seed: int, upto: int) -> tuple[list[OSDMap], list[Incremental]]:
    """maps[e - 1] is the map of epoch e; incs[e - 2] made epoch e."""
    maps, incs = [OSDMap(epoch=1)], []
    while maps[-1].epoch < upto:
        incs.append(incremental(seed, maps[-1]))
        maps.append(maps[-1].apply(incs[-1]))
    return maps, incs


def main() -> None:
    from rbdpy.mon.store import MonStore

    path, seed, keep, full_every = sys.argv[1], *map(int, sys.argv[2:5])
    if MonStore.exists(path):
        store = MonStore.open(path, keep=keep, full_every=full_every)
    else:
        store = MonStore.create(path, OSDMap(epoch=1), keep=keep, full_every=full_every)
    out = sys.stdout
    out.write(f"R {store.osdmap.epoch}\n")
    out.flush()
    while True:
        m = store.append(incremental(seed, store.osdmap))
        out.write(f"C {m.epoch}\n")
        out.flush()


if __name__ == "__main__":
    main()
