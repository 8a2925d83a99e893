"""``rbdpy bench`` against a real local cluster, and the bench module through a real objecter.

Clusters are started with ``rbdpy cluster up`` and stopped by the PIDs in their pid files.
Nothing here asserts a speed: only that the ops were issued, counted and really landed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbdpy.client.objecter import Objecter
from rbdpy.msgr.messenger import Messenger
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd import bench
from rbdpy.rbd.image import Image, create_image
from rbdpy.testing import POOL, run_with_objecter
from tests.procs import stop_pid

RBDPY = [sys.executable, "-m", "rbdpy.cli"]
SUMMARY = re.compile(r"^elapsed: [\d.]+  ops: (\d+)  ops/sec: [\d.]+  bytes/sec: \d+ \(.*/s\)$")


def rb(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*RBDPY, "--cluster", str(data), *args], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One OSD for the whole module; each test makes its own image."""
    data = tmp_path_factory.mktemp("bench") / "c"
    rb(data, "cluster", "up")
    try:
        yield data
    finally:
        for p in sorted(data.glob("osd.*.pid")):
            stop_pid(int(p.read_text()))
            p.unlink(missing_ok=True)


def test_seq_write_lands_then_reads_back(cluster: Path) -> None:
    rb(cluster, "create", "w", "--size", "64M", "--object-size", "1M")
    r = rb(cluster, "bench", "w", "--io-type", "write", "--io-size", "64K", "--io-total", "8M",
           "--io-threads", "4", "--format", "json")
    res = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert (res["image"], res["io_type"], res["io_pattern"]) == ("w", "write", "seq")
    assert (res["ops"], res["write_ops"], res["read_ops"]) == (128, 128, 0)
    assert res["bytes"] == res["write_bytes"] == 8 << 20
    assert res["elapsed"] > 0 and res["ops_per_sec"] > 0
    assert "bench  type write io_size 65536 io_threads 4 bytes 8388608" in r.stderr

    # the data is there, durable, exactly where a sequential bench puts it
    assert int(rb(cluster, "du", "w", "--bytes").stdout.split()[-1]) == 8 << 20
    import rbdpy

    with rbdpy.connect(str(cluster)) as c:
        img = rbdapi.open_image(c, "w", read_only=True)
        data = img.pread(0, 8 << 20)
        block = data[: 64 << 10]
        assert block != bytes(len(block))
        assert all(data[o : o + len(block)] == block for o in range(0, len(data), len(block)))
        assert img.pread(8 << 20, 1 << 20) == bytes(1 << 20)
        assert [e[2] for e in img.extents(0, 16 << 20)] == [True, False]

    # a read bench over it, in the plain format
    r = rb(cluster, "bench", "w", "--io-type", "read", "--io-size", "64K", "--io-total", "8M")
    m = SUMMARY.match(r.stdout.strip())
    assert m and int(m.group(1)) == 128, r.stdout
    assert bench.PROGRESS_HEADER in r.stderr  # not a terminal: periodic lines, no bar
    assert "\r" not in r.stderr


def test_random_readwrite_mix(cluster: Path) -> None:
    rb(cluster, "create", "rw", "--size", "32M", "--object-size", "1M")
    r = rb(cluster, "bench", "rw", "--io-type", "readwrite", "--io-pattern", "rand",
           "--rw-mix-read", "70", "--io-total", "2M", "--format", "json", "--no-progress")
    res = json.loads(r.stdout)
    assert r.stderr == ""
    assert res["ops"] == 512 and res["read_ops"] + res["write_ops"] == 512
    assert res["read_ops"] > 0 and res["write_ops"] > 0
    used = int(rb(cluster, "du", "rw", "--bytes").stdout.split()[-1])
    assert 0 < used <= res["write_ops"] * 4096  # random offsets may repeat

    r = rb(cluster, "bench", "rw", "--io-type", "rw", "--io-total", "64K", "--rw-mix-read", "0")
    lines = r.stdout.strip().splitlines()
    assert SUMMARY.match(lines[0]) and lines[1].startswith("read_ops: 0 ")
    assert lines[2].startswith("write_ops: 16 ")


@pytest.mark.parametrize(("args", "says"), [
    ((), "--io-type is required"),
    (("--io-type", "trim"), "bad --io-type"),
    (("--io-type", "write", "--io-size", "banana"), "--io-size: bad size"),
    (("--io-type", "write", "--io-size", "0"), "--io-size must be at least"),
    (("--io-type", "write", "--io-threads", "0"), "--io-threads must be"),
    (("--io-type", "write", "--io-threads", "many"), "--io-threads: expected a whole number"),
    (("--io-type", "write", "--io-total", "1K"), "--io-total must be at least --io-size"),
    (("--io-type", "readwrite", "--rw-mix-read", "150"), "--rw-mix-read must be"),
    (("--io-type", "read", "--io-pattern", "zigzag"), "bad --io-pattern"),
    (("--io-type", "read", "--format", "xml"), "bad --format"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    # checked before connecting: no cluster needed, and none is there
    r = rb(tmp_path / "none", "bench", "img", *args, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("rbdpy: "), r.stderr
    assert says in r.stderr, r.stderr


def test_errors_that_need_the_image(cluster: Path) -> None:
    rb(cluster, "create", "tiny", "--size", "1M")
    for args, says in [(("nope", "--io-type", "read"), "no image named nope"),
                       (("tiny", "--io-type", "write", "--io-size", "2M"),
                        "larger than the image")]:
        r = rb(cluster, "bench", *args, check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr


async def test_run_bench_reports_progress_and_counts(osd_process) -> None:
    osd = osd_process()
    osd.start()
    seen: list[bench.Progress] = []

    async def run(obj: Objecter, _m: Messenger) -> tuple[bench.BenchResult, bytes]:
        await create_image(obj, POOL, "p", 16 << 20, order=20)
        img = await Image.open(obj, POOL, "p")
        spec = bench.BenchSpec("write", io_size=4096, io_threads=8, io_total=4 << 20,
                               io_pattern="rand", seed=7)
        res = await bench.run_bench(img, spec, seen.append, interval=0.001)
        back = bytearray(16 << 20)
        await img.read(0, memoryview(back))
        return res, bytes(back)

    res, back = await run_with_objecter(osd.port, run)
    assert (res.ops, res.write_ops, res.bytes) == (1024, 1024, 4 << 20)
    assert res.lat_us_p50 > 0 and res.lat_us_p99 >= res.lat_us_p50
    assert seen and all(a.ops <= b.ops <= 1024 for a, b in zip(seen, seen[1:]))
    assert all(p.total_ops == 1024 for p in seen)
    blocks = {back[o : o + 4096] for o in range(0, len(back), 4096)}
    assert len(blocks) == 2 and bytes(4096) in blocks  # the one payload, and holes


def test_formatting() -> None:
    spec = bench.BenchSpec("readwrite", io_total=1 << 20, rw_mix_read=70)
    assert spec.describe() == ("bench  type readwrite io_size 4096 io_threads 16 bytes 1048576 "
                               "pattern sequential read:write 70:30")
    p = bench.Progress(sec=3.0, ops=128, total_ops=256, ops_per_sec=1000.0,
                       bytes_per_sec=4096000.0)
    assert bench.progress_line(p) == "    3       128   1000.00   3.9 MiB/s"
    assert bench.progress_bar(p, width=10).startswith("[#####.....]  50.0%  128/256 ops")
    r = bench.BenchResult(spec, elapsed=2.0, read_ops=192, write_ops=64)
    assert bench.summary(r).splitlines() == [
        "elapsed: 2.00  ops: 256  ops/sec: 128.00  bytes/sec: 524288 (512.0 KiB/s)",
        "read_ops: 192  read_ops/sec: 96.00  read_bytes/sec: 393216",
        "write_ops: 64  write_ops/sec: 32.00  write_bytes/sec: 131072"]
    assert bench.parse_io_type("RW") == "readwrite" and bench.parse_io_pattern("random") == "rand"
    with pytest.raises(bench.BenchError):
        bench.parse_io_type("append")
