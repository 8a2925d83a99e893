"""The product as users meet it: real OSD processes, real nbdkit, qemu-io, qemu-img, fio, libnbd.

Every process is started through the CLI (``rbdpy cluster up``, ``rbdpy serve``) and stopped
by the PID it recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

from tests.nbd.conftest import RBDPY, Served, needs_nbdkit, qemu_io, rbdpy, stop_osds
from tests.procs import pid_alive, stop_pid, wait_for

pytestmark = needs_nbdkit


def test_qemu_io_patterns_across_objects(served: Served) -> None:
    mib = 1 << 20
    qemu_io(
        served.uri,
        f"write -P 0x11 {mib - 700} 1500",  # straddles objects 0/1, unaligned
        f"write -P 0x22 {3 * mib - 1} {2 * mib + 3}",  # spans three objects
        "write -P 0x33 12345 1",
        f"read -P 0x11 {mib - 700} 1500",
        f"read -P 0x22 {3 * mib - 1} {2 * mib + 3}",
        "read -P 0x33 12345 1",
        "read -P 0 0 12345",
        f"read -P 0 {10 * mib} 65536",  # never written: thin, zeros
    )
    # discard and write-zeroes (whole and partial objects) read back as zeros
    qemu_io(
        served.uri,
        f"discard {3 * mib - 1} {2 * mib + 3}",
        f"read -P 0 {3 * mib - 1} {2 * mib + 3}",
        f"write -z {mib - 100} 200",
        f"read -P 0 {mib - 100} 200",
        f"read -P 0x11 {mib - 700} 600",
        f"read -P 0x11 {mib + 100} 700",
        "flush",
    )


def test_nbdkit_refuses_out_of_range_requests_before_the_plugin(served: Served) -> None:
    """What nbdkit guarantees: it checks every request's range against the size the plugin
    reported and answers an out-of-range one itself, without calling the plugin (nbdkit
    1.32, server/protocol.c: EINVAL for read and trim, ENOSPC for write and write-zeroes, as
    the NBD spec suggests; a zero-length request is EINVAL too). qemu-io and libnbd refuse
    such requests on the client side, so this client turns libnbd's checks off
    (``set_strict_mode(0)``) to put them on the wire. ENOSPC for the writes also shows the
    plugin was not called: its own range check (tests/rbd/test_image_ranges.py) says
    EINVAL. The image is unchanged and the server keeps serving."""
    script = f"""
import errno, nbd
h = nbd.NBD()
h.set_strict_mode(0)  # no client-side range checks: the requests reach nbdkit
h.connect_uri({served.uri!r})
size = h.get_size()
tail = bytes([0x5a]) * 4096
h.pwrite(tail, size - 4096)
h.flush()
calls = [
    ("read straddling the end", lambda: h.pread(4096, size - 512)),
    ("read past the end", lambda: h.pread(512, size)),
    ("read far past the end", lambda: h.pread(512, 1 << 62)),
    ("zero-length read", lambda: h.pread(0, 0)),
    ("write straddling the end", lambda: h.pwrite(bytes([1]) * 4096, size - 512)),
    ("write past the end", lambda: h.pwrite(bytes([1]) * 512, size)),
    ("write wrapping 2**64", lambda: h.pwrite(bytes([1]) * 4096, (1 << 64) - 512)),
    ("write-zeroes straddling the end", lambda: h.zero(4096, size - 512)),
    ("trim straddling the end", lambda: h.trim(4096, size - 512)),
]
for what, call in calls:
    try:
        call()
        print(what, "OK")
    except nbd.Error as e:
        print(what, errno.errorcode.get(e.errnum, e.errnum))
h.flush()
print("tail kept", h.pread(4096, size - 4096) == tail)
h.pwrite(bytes([0x44]) * 4096, 0)
print("still serving", h.pread(4096, 0) == bytes([0x44]) * 4096)
"""
    r = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "read straddling the end EINVAL",
        "read past the end EINVAL",
        "read far past the end EINVAL",
        "zero-length read EINVAL",
        "write straddling the end ENOSPC",
        "write past the end ENOSPC",
        "write wrapping 2**64 ENOSPC",
        "write-zeroes straddling the end ENOSPC",
        "trim straddling the end EINVAL",
        "tail kept True",
        "still serving True",
    ], r.stdout + r.stderr
    # and from a fresh connection: the image's last bytes are what was written before
    qemu_io(served.uri, f"read -P 0x5a {(64 << 20) - 4096} 4096", "read -P 0x44 0 4096",
            ro=True)


def _make_raw(path: Path, size: int, seed: int) -> None:
    """Random data and long zero runs, interleaved."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        pos = 0
        while pos < size:
            n = min(rnd.choice([256 << 10, 1 << 20, 3 << 20]), size - pos)
            if rnd.random() < 0.5:
                f.write(rnd.randbytes(n))
            else:
                f.seek(n, os.SEEK_CUR)
            pos += n
        f.truncate(size)


def test_qemu_img_convert_in_and_out(served: Served, tmp_path: Path) -> None:
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    _make_raw(src, 64 << 20, seed=7)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                    served.uri], check=True, timeout=300)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", served.uri, str(back)],
                   check=True, timeout=300)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), served.uri],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256(back.read_bytes()).digest()
    # zero runs stayed unallocated: used space is at most the data in the source (per object)
    data_objects = set()
    raw = src.read_bytes()
    for i in range(0, len(raw), 1 << 20):
        if raw[i : i + (1 << 20)].count(0) != min(1 << 20, len(raw) - i):
            data_objects.add(i >> 20)
    used = int(rbdpy(served.dir, "du", served.name, "--bytes").stdout.split()[-1])
    nonzero_blocks = sum(1 for i in range(0, len(raw), 4096) if raw[i : i + 4096].strip(b"\0"))
    assert nonzero_blocks * 4096 <= used <= len(data_objects) << 20
    # and qemu-img map reports the all-zero objects as holes
    import json

    m = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "-f", "raw", served.uri],
                                  capture_output=True, text=True, check=True).stdout)
    holes = sum(e["length"] for e in m if not e["data"])
    assert holes >= (64 - len(data_objects)) << 20


def test_extents_through_libnbd(served: Served) -> None:
    qemu_io(served.uri, f"write -P 0x55 {5 << 20} 4096", "flush")
    script = f"""
import nbd
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri({served.uri!r})
ext = []
def cb(meta, off, entries, err):
    ext.extend(zip(entries[0::2], entries[1::2]))
h.block_status(h.get_size(), 0, cb)
pos = 0
for length, flags in ext:
    print(pos, length, flags)
    pos += length
"""
    r = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    runs = [tuple(map(int, ln.split())) for ln in r.stdout.splitlines()]
    data = [(o, n) for o, n, f in runs if not f & 1]
    assert data == [(5 << 20, 1 << 20)]
    assert all(f == 3 for o, n, f in runs if (o, n) not in data)


def test_fio_verify_randwrite(served: Served) -> None:
    r = subprocess.run(
        ["fio", "--name=v", "--ioengine=nbd", f"--uri={served.uri}", "--rw=randwrite",
         "--bs=4k", "--iodepth=16", "--size=16M", "--verify=crc32c", "--do_verify=1",
         "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify" not in r.stderr.lower(), r.stderr


def test_two_connections_flush_visible(served: Served) -> None:
    script = f"""
import nbd
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri({served.uri!r}); b.connect_uri({served.uri!r})
assert a.can_multi_conn()
a.pwrite(b"x" * 4096, 8192)
a.flush()
assert b.pread(4096, 8192) == b"x" * 4096
print("ok")
"""
    r = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_flushed_data_survives_kill9_of_everything(served: Served) -> None:
    qemu_io(served.uri, "write -P 0x66 0 3M", f"write -P 0x77 {40 << 20} 100000", "flush")
    os.kill(served.nbdkit_pid(), signal.SIGKILL)
    for pid in served.osd_pids():
        os.kill(pid, signal.SIGKILL)
    for pid in [*served.osd_pids(), served.nbdkit_pid()]:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    rbdpy(served.dir, "cluster", "up")
    served.serve()
    qemu_io(served.uri, "read -P 0x66 0 3M", f"read -P 0x77 {40 << 20} 100000",
            f"read -P 0 {3 << 20} 4096")


def test_missing_image_is_a_clear_startup_error(served: Served, tmp_path: Path) -> None:
    r = rbdpy(served.dir, "serve", "nope", "--socket", str(tmp_path / "x.sock"), check=False)
    assert r.returncode != 0
    assert "no image named nope" in r.stdout + r.stderr


def test_cli_user_errors_are_one_line(tmp_path: Path) -> None:
    r = rbdpy(tmp_path / "nowhere", "ls", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*RBDPY, "create", "x", "--size", "ten"], capture_output=True, text=True)
    assert r.returncode != 0 and "bad size" in r.stderr and "Traceback" not in r.stderr


def test_write_through_serve_and_a_bad_writeback_value(served: Served, tmp_path: Path) -> None:
    sock, pidfile = tmp_path / "wt.sock", tmp_path / "wt.pid"
    rbdpy(served.dir, "create", "wt", "--size", "1M")  # served.name is locked by its server
    rbdpy(served.dir, "serve", "wt", "--socket", str(sock), "--pidfile", str(pidfile),
          "--write-through")
    deadline = time.monotonic() + 30
    while not (sock.exists() and pidfile.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        assert b"writeback=0" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        uri = f"nbd+unix:///?socket={sock}"
        qemu_io(uri, "write -P 0x3c 12345 200000", "flush")
        qemu_io(uri, "read -P 0x3c 12345 200000", "read -P 0 0 12345")
    finally:
        os.kill(pid, signal.SIGTERM)
    plugin = Path(__file__).resolve().parents[2] / "nbdplugin" / "rbdpy_nbd.py"
    r = subprocess.run(["nbdkit", "-U", "-", "python", str(plugin), f"cluster={served.dir}",
                        f"image={served.name}", "writeback=maybe", "--run", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "writeback='maybe': want a boolean" in r.stderr, r.stderr


def test_one_writing_server_per_image_and_readers_see_its_new_objects(
        served: Served, tmp_path: Path) -> None:
    """A second writable server is refused (the exclusive lock); a read-only one serves
    what the writer wrote after the reader started, holes included (before the lock, its
    object map, loaded at start, called those objects holes: it read zeros)."""
    w2pid = tmp_path / "w2.pid"
    r = rbdpy(served.dir, "serve", served.name, "--socket", str(tmp_path / "w2.sock"),
              "--pidfile", str(w2pid), check=False)
    if w2pid.exists():  # it started after all: stop it before failing
        stop_pid(int(w2pid.read_text()))
    assert r.returncode != 0
    assert f"image {served.name} is in use by client." in r.stderr
    rm = rbdpy(served.dir, "rm", served.name, check=False)
    assert rm.returncode == 1 and "is in use by client." in rm.stderr
    sock, pidfile = tmp_path / "ro.sock", tmp_path / "ro.pid"
    rbdpy(served.dir, "serve", served.name, "--readonly", "--socket", str(sock),
          "--pidfile", str(pidfile))
    wait_for(pidfile)
    wait_for(sock)
    ro = f"nbd+unix:///?socket={sock}"
    try:
        qemu_io(served.uri, f"write -P 0x4d {5 << 20} 100000", "flush")  # a new object
        qemu_io(ro, f"read -P 0x4d {5 << 20} 100000", f"read -P 0 {6 << 20} 4096", ro=True)
        m = subprocess.run(["qemu-img", "map", "-f", "raw", "--output=json", ro],
                           capture_output=True, text=True, check=True, timeout=60)
        data = [(e["start"], e["length"]) for e in json.loads(m.stdout) if e["data"]]
        assert data == [(5 << 20, 1 << 20)]  # the object the writer allocated
    finally:
        stop_pid(int(pidfile.read_text()))


def test_a_full_disk_is_enospc_to_the_client_across_objects(tmp_path: Path) -> None:
    """The OSD's files may not grow past 3 MiB (RLIMIT_FSIZE, inherited from ``cluster up``:
    a real "file too large", which the OSD reports as ENOSPC). A FUA write spanning two 4 MiB
    objects fails in object 0 only: the client must see ENOSPC, not EIO (the concurrent
    object writes once failed as an ExceptionGroup, which the errno edge did not know), and
    the server goes on serving."""
    data = tmp_path / "data"
    limit = 3 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    subprocess.run([*RBDPY, "--cluster", str(data), "cluster", "up"], check=True,
                   capture_output=True, timeout=120, preexec_fn=small_files)
    try:
        served = Served(tmp_path, size="16M", object_size="4M", data=data)
        try:
            mib = 1 << 20
            r = qemu_io(served.uri, f"write -f -P 0x5a {4 * mib - 128 * 1024} {256 * 1024}",
                        check=False)
            out = r.stdout + r.stderr
            assert "No space left on device" in out, out
            qemu_io(served.uri, "write -f -P 0x33 0 4096", "read -P 0x33 0 4096",
                    f"read -P 0x5a {4 * mib} {128 * 1024}")  # object 1's part landed
        finally:
            served.stop()
    finally:
        stop_osds(data)
