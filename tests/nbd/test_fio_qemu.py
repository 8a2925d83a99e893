"""Real NBD clients against a served image: fio's nbd engine with crc32c verify, and qemu-img.

One local cluster (real OSD process, started with ``rbdpy cluster up``) serves the whole
module; every test creates its own images (1 MiB objects, so I/O crosses object boundaries)
and serves each with its own nbdkit on a unix socket. All processes are stopped by PID.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nbd.conftest import Served, needs_nbdkit, qemu_io, rbdpy, stop_osds

MIB = 1 << 20
OBJ = MIB  # object size of every image here

# fio and qemu-img come with nbdkit from scripts/install.sh: if they are missing these tests
# fail rather than skip
pytestmark = needs_nbdkit

Export = Callable[..., Served]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("cluster") / "data"
    rbdpy(data, "cluster", "up")
    try:
        yield data
    finally:
        stop_osds(data)


_names = itertools.count()


@pytest.fixture
def export(cluster: Path, tmp_path: Path) -> Iterator[Export]:
    """Makes fresh images on the module's cluster, each served by its own nbdkit."""
    made: list[Served] = []

    def make(size: str = "64M") -> Served:
        n = next(_names)
        s = Served(tmp_path / f"e{n}", name=f"img{n}", size=size, object_size=str(OBJ),
                   data=cluster)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


def nbd_pread(uri: str, offset: int, length: int) -> bytes:
    """Bytes read by libnbd on a fresh connection (an independent reader, not fio)."""
    script = f"""
import sys, nbd
h = nbd.NBD()
h.connect_uri({uri!r})
sys.stdout.buffer.write(h.pread({length}, {offset}))
h.shutdown()
"""
    r = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout) == length
    return r.stdout


# ------------------------------------------------------------------------------------- fio


def run_fio(uri: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """fio with the nbd engine; returns the process and the jobs of its JSON report."""
    out.unlink(missing_ok=True)
    cmd = ["fio", "--ioengine=nbd", f"--uri={uri}", "--verify_state_save=0",
           "--output-format=json", f"--output={out}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.exists() and out.stat().st_size, f"fio wrote no report\n{r.stdout}{r.stderr}"
    text = out.read_text()
    # fio may print engine chatter before the JSON document
    jobs = json.loads(text[text.index("{"):])["jobs"]
    return r, jobs


def assert_verified(r: subprocess.CompletedProcess, jobs: list[dict], njobs: int,
                    size: int, verify_only: bool = False) -> None:
    """fio exited 0, no job saw an error, and the verify phase really read the data back.

    (With ``--verify_only`` fio still counts the writes it replays without issuing them.)
    """
    msg = r.stdout + r.stderr
    assert r.returncode == 0, msg
    assert len(jobs) == njobs, msg
    for j in jobs:
        assert j["error"] == 0, (j["jobname"], j["error"], msg)
        if not verify_only:
            assert j["write"]["io_bytes"] == size, (j["jobname"], j["write"])
        # verify reads everything that was written; zero here would make the test vacuous
        assert j["read"]["io_bytes"] == size, (j["jobname"], j["read"])
        assert j["read"]["short_ios"] == 0 and j["write"]["short_ios"] == 0


VERIFY = ["--rw=randwrite", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1"]

# (id, fio options, first byte written, bytes per job)
CASES = [
    ("4k-qd1", ["--bs=4k", "--iodepth=1"], 0, 8 * MIB),
    ("64k-qd8", ["--bs=64k", "--iodepth=8"], 5 * 4096, 16 * MIB),  # 64k blocks straddle objects
    ("1M-qd4", ["--bs=1M", "--iodepth=4"], OBJ // 2, 32 * MIB),  # every block spans 2 objects
    ("3584-qd4-unaligned", ["--bs=3584", "--iodepth=4"], 3 * OBJ - 7 * 512, 3584 * 2400),
    ("bsrange-512-12k-qd8", ["--bsrange=512-12k", "--blockalign=512", "--iodepth=8"],
     OBJ + 512, 8 * MIB),
]


@pytest.mark.parametrize(("opts", "offset", "size"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_fio_randwrite_crc32c_verify(export: Export, tmp_path: Path, opts: list[str],
                                     offset: int, size: int) -> None:
    s = export()
    r, jobs = run_fio(s.uri, tmp_path / "fio.json", "--name=v", *VERIFY, *opts,
                      f"--offset={offset}", f"--size={size}")
    assert_verified(r, jobs, 1, size)
    # an independent reader sees fio's data exactly where asked: zeros up to the (possibly
    # unaligned) offset, a verify header (magic 0xacca, little-endian) at it, zeros after the end
    lo = max(0, offset - 8192)
    before = nbd_pread(s.uri, lo, offset - lo + 2)
    assert before[:-2] == bytes(offset - lo) and before[-2:] == b"\xca\xac"
    assert nbd_pread(s.uri, offset + size, 8192) == bytes(8192)


def test_fio_two_connections_verify_separate_regions(export: Export, tmp_path: Path) -> None:
    """numjobs=2: two fio processes, each with its own NBD connection, writing at once."""
    s = export()
    size, step, offset = 12 * MIB, 13 * MIB, OBJ - 512
    r, jobs = run_fio(s.uri, tmp_path / "fio.json", "--name=pair", *VERIFY, "--bs=16k",
                      "--iodepth=8", "--numjobs=2", f"--offset={offset}",
                      f"--offset_increment={step}", f"--size={size}")
    assert_verified(r, jobs, 2, size)
    # both regions were written, and nothing between or after them
    for k in range(2):
        assert nbd_pread(s.uri, offset + k * step, 2) == b"\xca\xac"
    gap = offset + size
    assert nbd_pread(s.uri, gap, step - size) == bytes(step - size)
    assert nbd_pread(s.uri, offset + step + size, 4096) == bytes(4096)


def test_fio_two_different_jobs_one_run(export: Export, tmp_path: Path) -> None:
    """Two unlike jobs at once on two connections: aligned 8k qd16 and unaligned 1536 qd2."""
    s = export()
    r, jobs = run_fio(s.uri, tmp_path / "fio.json",
                      "--name=a", *VERIFY, "--bs=8k", "--iodepth=16", "--offset=0",
                      f"--size={10 * MIB}",
                      "--name=b", *VERIFY, "--bs=1536", "--iodepth=2",
                      f"--offset={10 * MIB + 1536}", f"--size={1536 * 2048}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [j["jobname"] for j in jobs] == ["a", "b"]
    assert_verified(r, jobs[:1], 1, 10 * MIB)
    assert_verified(r, jobs[1:], 1, 1536 * 2048)


def test_fio_verify_only_survives_restart_and_detects_corruption(export: Export,
                                                                 tmp_path: Path) -> None:
    s = export()
    job = ["--name=v", "--rw=randwrite", "--verify=crc32c", "--verify_fatal=1", "--bs=4k",
           "--iodepth=8", f"--offset={OBJ - 4096}", f"--size={4 * MIB}"]
    r, jobs = run_fio(s.uri, tmp_path / "w.json", *job, "--do_verify=0")
    assert r.returncode == 0 and jobs[0]["error"] == 0, r.stdout + r.stderr
    assert jobs[0]["write"]["io_bytes"] == 4 * MIB and jobs[0]["read"]["io_bytes"] == 0

    # a restarted server (nbdkit flushes and exits on SIGTERM) still holds what fio wrote
    s.stop_nbdkit()
    s.serve()
    r, jobs = run_fio(s.uri, tmp_path / "v1.json", *job, "--verify_only")
    assert_verified(r, jobs, 1, 4 * MIB, verify_only=True)

    # 16 bytes in the middle of one 4k block, past its verify header: only the crc can tell
    bad = 3 * OBJ + 5 * 4096 + 1000
    qemu_io(s.uri, f"write -P 0x55 {bad} 16", "flush")
    r, jobs = run_fio(s.uri, tmp_path / "v2.json", *job, "--verify_only")
    msg = r.stdout + r.stderr
    assert r.returncode != 0, msg
    assert jobs[0]["error"] == errno.EILSEQ, (jobs[0]["error"], msg)
    assert "crc32c" in msg and "verify failed" in msg, msg
    assert f"offset {bad - bad % 4096}," in msg, msg  # the block that was overwritten


# -------------------------------------------------------------------------------- qemu-img


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"qemu-img {' '.join(args)}\n{r.stdout}{r.stderr}"
    return r


SIZE = 20 * MIB + 123 * 512  # not a multiple of the object size: the last object is partial


def make_source(path: Path) -> set[int]:
    """A raw file with random data, sparse holes and explicitly written zeros.

    Returns the objects that hold any non-zero byte.
    """
    rnd = random.Random(5)
    layout = [  # (offset, length, kind)
        (0, OBJ + OBJ // 2, "random"),  # objects 0 and half of 1
        (4 * OBJ + 100 * 1024, 600 * 1024, "random"),  # inside object 4
        (9 * OBJ + 4096, 4096, "random"),  # one 4k block of object 9
        (12 * OBJ, 2 * OBJ + 777, "zeros"),  # written zeros, not a hole: objects 12-14
        (15 * OBJ - 512, 1024, "random"),  # straddles objects 14/15
        (SIZE - 3000, 3000, "random"),  # the partial last object, 20
    ]
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, n, kind in layout:
            f.seek(off)
            f.write(rnd.randbytes(n) if kind == "random" else bytes(n))
    return {o for off, n, kind in layout if kind == "random"
            for o in range(off // OBJ, (off + n - 1) // OBJ + 1)}


def data_runs(image: str, fmt: str) -> list[tuple[int, int]]:
    """``qemu-img map`` data extents, merged, as (start, end); checks holes read as zeros."""
    m = json.loads(qemu_img("map", "--output=json", "-f", fmt, image).stdout)
    assert m and m[0]["start"] == 0
    runs: list[tuple[int, int]] = []
    for e in m:
        if e["data"]:
            assert not e["zero"], e
            if runs and runs[-1][1] == e["start"]:
                runs[-1] = (runs[-1][0], e["start"] + e["length"])
            else:
                runs.append((e["start"], e["start"] + e["length"]))
        else:
            assert e["zero"], e  # a hole of a thin image reads as zeros
    return runs


def object_runs(objs: set[int], size: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for o in sorted(objs):
        start, end = o * OBJ, min((o + 1) * OBJ, size)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def nonzero_runs(raw: bytes, block: int = 512) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in range(0, len(raw), block):
        if raw[i : i + block].strip(b"\0"):
            end = min(i + block, len(raw))
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((i, end))
    return runs


def covered(inner: list[tuple[int, int]], outer: list[tuple[int, int]]) -> bool:
    return all(any(a <= s and e <= b for a, b in outer) for s, e in inner)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_img_parallel_convert_in_out_and_map(export: Export, tmp_path: Path) -> None:
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    data_objs = make_source(src)
    s = export(size=f"{SIZE}B")
    # 8 coroutines, out-of-order writes, into the existing export
    qemu_img("convert", "-n", "-W", "-m", "8", "-f", "raw", "-O", "raw", str(src), s.uri)
    qemu_img("compare", "-f", "raw", "-F", "raw", str(src), s.uri)
    qemu_img("convert", "-W", "-m", "8", "-f", "raw", "-O", "raw", s.uri, str(back))
    assert back.stat().st_size == SIZE and sha(back) == sha(src)
    # exactly the objects with non-zero data are allocated: sparse holes and written zeros
    # (objects 12-14 apart from the straddling block) stay holes that read as zeros
    assert data_runs(s.uri, "raw") == object_runs(data_objs, SIZE)


def test_qemu_img_qcow2_round_trip_between_exports(export: Export, tmp_path: Path) -> None:
    src, q, back = tmp_path / "src.raw", tmp_path / "mid.qcow2", tmp_path / "back.raw"
    data_objs = make_source(src)
    a, b = export(size=f"{SIZE}B"), export(size=f"{SIZE}B")
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(src), a.uri)
    # export a -> qcow2: the export's holes (block status) must not become qcow2 data
    qemu_img("convert", "-f", "raw", "-O", "qcow2", a.uri, str(q))
    qemu_img("check", "-f", "qcow2", str(q))
    qruns = data_runs(str(q), "qcow2")
    assert covered(nonzero_runs(src.read_bytes()), qruns)
    assert covered(qruns, object_runs(data_objs, SIZE))
    # qcow2 -> a second, fresh export, in parallel; then both exports agree byte for byte
    qemu_img("convert", "-n", "-W", "-m", "8", "-f", "qcow2", "-O", "raw", str(q), b.uri)
    qemu_img("compare", "-f", "raw", "-F", "raw", a.uri, b.uri)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", str(q), b.uri)
    qemu_img("convert", "-f", "raw", "-O", "raw", b.uri, str(back))
    assert sha(back) == sha(src)
    assert data_runs(b.uri, "raw") == data_runs(a.uri, "raw") == object_runs(data_objs, SIZE)


def test_qemu_img_compare_sees_a_difference(export: Export, tmp_path: Path) -> None:
    """The compare used above can fail: one changed byte in the export is reported."""
    src = tmp_path / "src.raw"
    make_source(src)
    s = export(size=f"{SIZE}B")
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(src), s.uri)
    qemu_img("compare", "-f", "raw", "-F", "raw", str(src), s.uri)
    off = 7 * OBJ + 12345  # inside a hole of the source
    qemu_io(s.uri, f"write -P 0x01 {off} 1", "flush")
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), s.uri],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    # it names the first differing 512-byte sector
    assert f"Content mismatch at offset {off - off % 512}!" in r.stdout, r.stdout
