"""Soak (``pytest -m soak``): OSDs are killed with SIGKILL again and again while eight
writers stream writes of every size (some FUA, flushes now and then) through one client.
Every write eventually returns; at the end the image must equal a model of what was written,
through the same client and again after a full cluster restart through a fresh one.

This exercises what the write path promises under faults: resends after a session reset
carry the writer's bytes (the client's own copy), the OSD recognises requests it already
applied (request-id log replayed from its journal), and nothing acknowledged is lost.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from rbdpy import config
from rbdpy.client.objecter import Objecter
from rbdpy.msgr.messenger import Messenger
from rbdpy.rbd.image import Image

pytestmark = pytest.mark.soak

SIZE = 64 << 20
WORKERS = 8
REGION = SIZE // WORKERS
KILLS = int(os.environ.get("RBDPY_SOAK_KILLS", "12"))


def cli(data: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "rbdpy.cli", "--cluster", str(data), *args],
                   check=True, capture_output=True, timeout=120)


async def read_all(cfg: config.ClusterConfig) -> bytearray:
    obj = Objecter(cfg.osdmap)
    got = bytearray(SIZE)
    async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
        obj.attach(m)
        img = await Image.open(obj, cfg.osdmap.pool_by_name("rbd").id, "img")
        await img.read(0, memoryview(got))
        m.shutdown()
    return got


async def test_sigkill_of_osds_during_writes_loses_and_corrupts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    cli(data, "cluster", "up", "--osds", "2")
    try:
        cli(data, "create", "img", "--size", f"{SIZE}B", "--object-size", "1M")
        cfg = config.load(config.locate(str(data)))
        model = bytearray(SIZE)
        counts = {"writes": 0, "fua": 0, "flushes": 0, "kills": 0}
        obj = Objecter(cfg.osdmap)
        with trio.fail_after(600):
            async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
                obj.attach(m)
                img = await Image.open(obj, cfg.osdmap.pool_by_name("rbd").id, "img")
                done = trio.Event()

                async def writer(i: int) -> None:
                    rnd = random.Random(i)
                    base, n = i * REGION, 0
                    while not done.is_set():
                        size = rnd.choice([512, 4096, 12_345, 65_536, 300_000, 1 << 20])
                        off = base + rnd.randrange(REGION - size)
                        buf = bytearray(rnd.randbytes(size))
                        fua = n % 7 == 3
                        await img.write(off, memoryview(buf), fua=fua)
                        model[off:off + size] = buf
                        buf[:] = b"\xaa" * size  # the caller reuses its buffer at once
                        n += 1
                        counts["writes"] += 1
                        counts["fua"] += fua
                        if n % 40 == 0:
                            await img.flush()
                            counts["flushes"] += 1

                async def killer() -> None:
                    rnd = random.Random(99)
                    for _ in range(KILLS):
                        await trio.sleep(rnd.uniform(0.5, 2.0))
                        osd = rnd.randrange(2)
                        pid = int((data / f"osd.{osd}.pid").read_text())
                        os.kill(pid, signal.SIGKILL)
                        counts["kills"] += 1
                        await trio.sleep(rnd.uniform(0.0, 0.5))
                        await trio.to_thread.run_sync(cli, data, "cluster", "up")
                    await trio.sleep(1.0)
                    done.set()

                async with trio.open_nursery() as nursery:
                    for i in range(WORKERS):
                        nursery.start_soon(writer, i)
                    nursery.start_soon(killer)
                await img.flush()
                got = bytearray(SIZE)
                await img.read(0, memoryview(got))
                m.shutdown()
        print(counts)
        assert counts["kills"] == KILLS and counts["writes"] > 20 * KILLS
        assert got == model, "the image differs from what was written"
        cli(data, "cluster", "down")
        cli(data, "cluster", "up")
        with trio.fail_after(120):
            assert await read_all(cfg) == model, "differs after a full restart"
    finally:
        cli(data, "cluster", "down")
