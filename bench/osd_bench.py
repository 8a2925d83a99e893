"""Objecter → one OSD process on loopback, against local pwrite/pread in the same run.

Patterns (region spread over 4 MiB objects named like rbd data objects):
  4k randwrite qd32, flush every 256 ops · 1M seq write · 4k randread qd32 · 1M seq read
Ceiling: the same pattern with os.pwrite/os.pread (+ os.fdatasync at the flush points) on a
local file from one Python process. The last line printed is one JSON object.

    python bench/osd_bench.py [--region 512M] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from rbdpy.client.objecter import Objecter
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.msgr.messenger import Messenger
from rbdpy.proto import ops as O

OBJ = 4 << 20
TARGETS = {"4k randwrite qd32": ("ops", 5000), "1M write": ("MBps", 300),
           "4k randread qd32": ("ops", 8000), "1M read": ("MBps", 500)}


def oid(objno: int) -> str:
    return f"rbd_data.bench.{objno:016x}"


# ---- ceiling ---------------------------------------------------------------------------------


def local(path: Path, region: int, seconds: float) -> dict:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    out = {}
    try:
        buf4, buf1m = os.urandom(4096), os.urandom(1 << 20)
        rnd = random.Random(1)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(256):
                os.pwrite(fd, buf4, rnd.randrange(region // 4096) * 4096)
            os.fdatasync(fd)
            n += 256
        out["4k randwrite qd32"] = {"ops": n / (time.perf_counter() - t0)}
        n, t0, pos = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, buf1m, pos)
            pos = (pos + (1 << 20)) % region
            n += 1
        os.fdatasync(fd)
        el = time.perf_counter() - t0
        out["1M write"] = {"ops": n / el, "MBps": n * (1 << 20) / el / 1e6}
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pread(fd, 4096, rnd.randrange(region // 4096) * 4096)
            n += 1
        out["4k randread qd32"] = {"ops": n / (time.perf_counter() - t0)}
        n, t0, pos = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            os.pread(fd, 1 << 20, pos)
            pos = (pos + (1 << 20)) % region
            n += 1
        el = time.perf_counter() - t0
        out["1M read"] = {"ops": n / el, "MBps": n * (1 << 20) / el / 1e6}
    finally:
        os.close(fd)
    return out


# ---- through the objecter --------------------------------------------------------------------


async def through_osd(port: int, region: int, seconds: float) -> dict:
    m = OSDMap(osds={0: OSDInfo(0, "127.0.0.1", port)}, pools={1: PoolInfo(1, "rbd")})
    obj = Objecter(m)
    out: dict = {}
    async with Messenger(obj.me, obj) as msgr:
        obj.attach(msgr)
        buf1m = bytearray(os.urandom(1 << 20))
        # fill the region first so reads are real
        sem = trio.Semaphore(8)

        async def put(off: int) -> None:
            async with sem:
                await obj.submit(1, oid(off // OBJ), [O.Write(off % OBJ, buf1m)], write=True)

        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for off in range(0, region, 1 << 20):
                n.start_soon(put, off)
        await obj.flush()
        el = time.perf_counter() - t0
        out["1M write"] = {"ops": region / (1 << 20) / el, "MBps": region / el / 1e6}

        async def run_qd(qd: int, op) -> float:
            count = 0
            deadline = time.perf_counter() + seconds

            async def worker(i: int) -> None:
                nonlocal count
                rnd = random.Random(i)
                while time.perf_counter() < deadline:
                    await op(rnd)
                    count += 1

            t0 = time.perf_counter()
            async with trio.open_nursery() as n:
                for i in range(qd):
                    n.start_soon(worker, i)
            return count / (time.perf_counter() - t0)

        buf4 = bytearray(os.urandom(4096))
        since_flush = [0]

        async def w4(rnd: random.Random) -> None:
            off = rnd.randrange(region // 4096) * 4096
            await obj.submit(1, oid(off // OBJ), [O.Write(off % OBJ, buf4)], write=True)
            since_flush[0] += 1
            if since_flush[0] >= 256:
                since_flush[0] = 0
                await obj.flush()

        out["4k randwrite qd32"] = {"ops": await run_qd(32, w4)}
        await obj.flush()

        async def r4(rnd: random.Random) -> None:
            off = rnd.randrange(region // 4096) * 4096
            dest = bytearray(4096)
            await obj.submit(1, oid(off // OBJ), [O.Read(off % OBJ, 4096)], write=False,
                             read_into=[memoryview(dest)])

        out["4k randread qd32"] = {"ops": await run_qd(32, r4)}
        dests = [bytearray(1 << 20) for _ in range(4)]
        pos = [0]

        async def r1m(rnd: random.Random) -> None:
            off = pos[0]
            pos[0] = (pos[0] + (1 << 20)) % region
            d = dests[rnd.randrange(4)]
            await obj.submit(1, oid(off // OBJ), [O.Read(off % OBJ, 1 << 20)], write=False,
                             read_into=[memoryview(d)])

        ops = await run_qd(4, r1m)
        out["1M read"] = {"ops": ops, "MBps": ops * (1 << 20) / 1e6}
        msgr.shutdown()
    return out


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", default="512M")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    region = parse_size(args.region)
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = local(Path(tmp) / "local.img", region, args.seconds)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "rbdpy.cli", "osd", "--id", "0",
                                 "--data", str(Path(tmp) / "osd0"), "--listen",
                                 f"127.0.0.1:{port}"])
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            osd = trio.run(through_osd, port, region, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = {}
    print(f"{'pattern':<20} {'rbdpy osd':>14} {'local file':>14} {'ratio':>7} {'target':>10}")
    for name, (metric, target) in TARGETS.items():
        a, b = osd[name][metric], ceiling[name][metric]
        unit = "ops/s" if metric == "ops" else "MB/s"
        rows[name] = {"osd": a, "local": b, "ratio": round(a / b, 3), "metric": metric,
                      "target": target, "meets_target": a >= target}
        print(f"{name:<20} {a:9.0f} {unit:<4} {b:9.0f} {unit:<4} {a / b:7.2f} "
              f"{target:>5} {unit}")
    print(json.dumps({"results": rows, "region": region, "seconds": args.seconds}))


if __name__ == "__main__":
    main()
