"""The CLI verbs against a real local cluster, and ``rbdpy up`` end to end."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rbdpy
from rbdpy.client.objecter import OSDError
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd.image import ImageError
from tests.procs import pid_alive, stop_pid

RBDPY = [sys.executable, "-m", "rbdpy.cli"]


def rb(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*RBDPY, "--cluster", str(data), *args], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_verbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # this process renews every 1 s: a stall of 2 s still leaves its lease valid when the
    # CLI processes below look at it
    monkeypatch.setenv("RBDPY_LOCK_LEASE", "3")
    data = tmp_path / "c"
    rb(data, "cluster", "up", "--osds", "2")
    try:
        st = rb(data, "cluster", "status").stdout
        assert st.count(" up ") == 2, st
        rb(data, "create", "a", "--size", "100M", "--object-size", "1M")
        rb(data, "create", "b", "--size", "1G")
        assert rb(data, "ls").stdout.split() == ["a", "b"]
        r = rb(data, "create", "a", "--size", "1M", check=False)
        assert r.returncode == 1 and r.stderr.strip() == "rbdpy: image a exists"
        info = json.loads(rb(data, "info", "a", "--format", "json").stdout)
        assert (info["size"], info["order"], info["objects"]) == (100 << 20, 20, 100)

        with rbdpy.connect(str(data)) as c:
            img = rbdapi.open_image(c, "a")
            img.write((99 << 20) + 5, b"tail!" * 1000)
            img.write(0, b"head")
            img.flush()
        used = int(rb(data, "du", "a", "--bytes").stdout.split()[-1])
        assert used == 4 + 5 + 5000  # allocated blocks, clipped to each object's size

        rb(data, "resize", "a", "--size", "200M")
        assert json.loads(rb(data, "info", "a", "--format", "json").stdout)["size"] == 200 << 20
        r = rb(data, "resize", "a", "--size", "50M", check=False)
        assert r.returncode == 1 and "--allow-shrink" in r.stderr
        rb(data, "resize", "a", "--size", "50M", "--allow-shrink")
        with rbdpy.connect(str(data)) as c:
            img = rbdapi.open_image(c, "a")
            assert img.size == 50 << 20
            assert img.pread(0, 4) == b"head"
            img.resize(100 << 20)  # grow back: the shrunk-away tail must read as zeros
            assert img.pread((99 << 20) + 5, 5000) == bytes(5000)
        assert int(rb(data, "du", "a", "--bytes").stdout.split()[-1]) == 4

        # the exclusive lock, as `rbd lock ls` / `rbd lock rm` show and break it
        assert rb(data, "lock", "ls", "b").stdout.strip() == "image b is not locked"
        with rbdpy.connect(str(data)) as c:
            img = rbdapi.open_image(c, "b")
            img.write(0, b"mine")
            img.flush()
            ls = rb(data, "lock", "ls", "b").stdout
            assert ls.startswith(f"locked by client.{c.objecter.me.num} on ")
            assert f" pid {os.getpid()}, lease ends in " in ls
            r = rb(data, "resize", "b", "--size", "2G", check=False)
            assert r.returncode == 1 and "image b is in use by client." in r.stderr
            assert "broke the lock of client." in rb(data, "lock", "break", "b").stdout
            # fenced first: the OSDs refuse its requests at once, reads included
            with pytest.raises(OSDError) as e:
                img.pread(0, 4)
            assert e.value.errno == errno.ESHUTDOWN
            deadline = time.monotonic() + 10  # the holder learns it at its next renewal
            while not img.image.lock.lost and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(ImageError) as e:
                img.write(0, b"late")  # refused before it is even sent
            assert e.value.errno == errno.ESHUTDOWN
        rb(data, "resize", "b", "--size", "2G")  # free again
        with rbdpy.connect(str(data)) as c:
            assert rbdapi.open_image(c, "b", read_only=True).pread(0, 4) == b"mine"
        r = rb(data, "lock", "break", "b", check=False)
        assert r.returncode == 1 and r.stdout.strip() == "image b is not locked"

        rb(data, "rm", "a")
        assert rb(data, "ls").stdout.split() == ["b"]
        r = rb(data, "info", "a", check=False)
        assert r.returncode == 1 and "no image named a" in r.stderr
    finally:
        rb(data, "cluster", "down")
    r = rb(data, "ls", "--timeout", "1", check=False)
    assert r.returncode == 1 and "cluster up" in r.stderr and "Traceback" not in r.stderr


needs_nbdkit = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit missing")


class Up:
    """``rbdpy up`` on ``data`` and ``port``, returned once it says "serving" (printed once
    nbdkit accepts connections). A thread collects what it prints: nbdkit shares its
    stderr, so one of nbdkit's lines may run into "serving image" (a line starting
    "nbdkit: serving image" once made a readline loop wait forever)."""

    def __init__(self, data: Path, port: int, size: str = "1G", timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([*RBDPY, "up", "--data", str(data), "--port", str(port),
                                      "--size", size], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while "serving image" not in "".join(self._out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"rbdpy up did not serve:\n{self.output()}")
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.append(line)

    def output(self) -> str:
        """All it printed so far; everything once it has exited (and nbdkit with it)."""
        if self.proc.poll() is not None:
            self._reader.join(timeout=30)
        return "".join(self._out)


@needs_nbdkit
def test_up_serves_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    data, port = tmp_path / "d", free_port()
    uri = f"nbd://127.0.0.1:{port}"

    def stop(up: Up) -> str:
        osd_pids = [int(p.read_text()) for p in data.glob("osd.*.pid")]
        up.proc.send_signal(signal.SIGINT)
        try:
            up.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            raise
        out = up.output()
        assert up.proc.returncode == 0, out
        assert not any(pid_alive(p) for p in osd_pids)
        return out

    proc = Up(data, port)
    try:
        w = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "flush",
                            uri], capture_output=True, text=True, timeout=60)
        assert w.returncode == 0 and "failed" not in w.stdout, w.stdout + w.stderr
    finally:
        out = stop(proc)
    assert "created image disk0" in out and "nbd-client 127.0.0.1" in out
    proc = Up(data, port)
    try:
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 64k", uri],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "failed" not in r.stdout, r.stdout + r.stderr
    finally:
        out = stop(proc)
    assert "created image" not in out


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


@needs_nbdkit
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_everything_on_sigterm_and_sigint(tmp_path: Path, sig: int) -> None:
    """SIGTERM is what kill, timeout and systemd send: ``up`` must stop as on Ctrl-C
    (nbdkit first, whose exit flushes the image, then the OSDs) and exit 0. Python's default
    SIGTERM ended it at once: nbdkit followed (--exit-with-parent), the OSDs (their own
    session, so they outlive ``cluster up``) stayed orphaned. The writes are not flushed by
    the client: they reach the disk on the way down."""
    data, port = tmp_path / "d", free_port()
    up = Up(data, port, size="64M")
    proc = up.proc
    osd_pids = [int(p.read_text()) for p in data.glob("osd.*.pid")]
    nbdkit = [c for c in children(proc.pid)
              if Path(f"/proc/{c}/comm").read_text().strip() == "nbdkit"]
    try:
        assert osd_pids and len(nbdkit) == 1
        script = f"""
import nbd
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:{port}")
h.pwrite(bytes([0x5a]) * 65536, 1 << 20)
h.pwrite(bytes([0xa5]) * 4096, (64 << 20) - 4096)
h.shutdown()
"""
        w = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True,
                           timeout=60)
        assert w.returncode == 0, w.stderr
        proc.send_signal(sig)
        proc.wait(timeout=120)
        out = up.output()
        assert proc.returncode == 0, out
        assert "stopped nbdkit and 1 OSD(s)" in out, out
        assert not pid_alive(nbdkit[0])
        assert not any(pid_alive(p) for p in osd_pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in [*nbdkit, *osd_pids]:
            stop_pid(p)
    rb(data, "cluster", "up")
    try:
        with rbdpy.connect(str(data)) as c:
            img = rbdapi.open_image(c, "disk0", read_only=True)
            assert img.pread(1 << 20, 65536) == bytes([0x5a]) * 65536
            assert img.pread((64 << 20) - 4096, 4096) == bytes([0xa5]) * 4096
    finally:
        rb(data, "cluster", "down")


def _raw_source(path: Path, seed: int = 3) -> bytes:
    """Random data and zero runs, unaligned (the last zero run is a whole 4 MiB object)."""
    rng = random.Random(seed)
    mib = 1 << 20
    data = (rng.randbytes(mib + 321) + bytes(2 * mib) + rng.randbytes(5000)
            + bytes(9 * mib) + rng.randbytes(77))
    path.write_bytes(data)
    return data


def test_import_and_export_verbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rbd import`` / ``rbd export`` as users run them: files (sparse both ways), pipes,
    and the errors that must leave nothing behind; then ``cp`` and ``mv``."""
    monkeypatch.setenv("RBDPY_LOCK_LEASE", "3")  # our own holder must look alive to the CLI
    data = tmp_path / "c"
    src = tmp_path / "vm.raw"
    want = _raw_source(src)
    want += bytes(-len(want) % 512)  # the image is whole sectors: zeros after the file's end
    rb(data, "cluster", "up")
    try:
        rb(data, "import", str(src))  # named after the file, like rbd import
        assert rb(data, "ls").stdout.split() == ["vm.raw"]
        rb(data, "import", str(src), "disk", "--object-size", "1M")
        info = json.loads(rb(data, "info", "disk", "--format", "json").stdout)
        assert (info["size"], info["order"]) == (len(want), 20)
        used = int(rb(data, "du", "disk", "--bytes").stdout.split()[-1])
        assert used < len(want) - 10 * (1 << 20)  # the zero runs are holes
        # an import that returned is durable: kill -9 the OSD and start it again
        killed = int((data / "osd.0.pid").read_text())
        os.kill(killed, signal.SIGKILL)
        rb(data, "cluster", "up")
        assert int((data / "osd.0.pid").read_text()) != killed
        out = tmp_path / "out.raw"
        rb(data, "export", "disk", str(out))
        assert out.read_bytes() == want
        assert os.stat(out).st_blocks * 512 < len(want) - 10 * (1 << 20)  # sparse

        # pipes: stdin in (size unknown), stdout out (every byte)
        with open(src, "rb") as f:
            r = subprocess.run([*RBDPY, "--cluster", str(data), "import", "-", "piped"],
                               stdin=f, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([*RBDPY, "--cluster", str(data), "export", "piped", "-"],
                           capture_output=True, timeout=120)
        assert r.returncode == 0 and r.stdout == want, r.stderr
        assert json.loads(rb(data, "info", "piped", "--format", "json").stdout)["size"] == \
            len(want)

        # cp (sparse, identical) and mv (atomic rename; refused onto a name or while in use)
        rb(data, "cp", "disk", "copy")
        used_copy = int(rb(data, "du", "copy", "--bytes").stdout.split()[-1])
        # the same but for the last block: the copy's runs to the image's (sector) end
        assert 0 <= used_copy - int(rb(data, "du", "disk", "--bytes").stdout.split()[-1]) < 512
        info = json.loads(rb(data, "info", "copy", "--format", "json").stdout)
        assert (info["size"], info["order"]) == (len(want), 20)
        rb(data, "mv", "copy", "moved")
        r = subprocess.run([*RBDPY, "--cluster", str(data), "export", "moved", "-"],
                           capture_output=True, timeout=120)
        assert r.returncode == 0 and r.stdout == want, r.stderr
        r = rb(data, "mv", "moved", "disk", check=False)
        assert r.returncode == 1 and r.stderr.strip() == "rbdpy: image disk exists"
        with rbdpy.connect(str(data)) as c:
            rbdapi.open_image(c, "moved")  # a writer holds it
            r = rb(data, "mv", "moved", "other", check=False)
            assert r.returncode == 1 and "image moved is in use by client." in r.stderr
        assert "moved" in rb(data, "ls").stdout.split()
        rb(data, "rm", "moved")

        # errors: one line each, nothing left behind, nothing overwritten
        r = rb(data, "import", str(src), "disk", check=False)
        assert r.returncode == 1 and r.stderr.strip() == "rbdpy: image disk exists"
        r = rb(data, "export", "disk", str(out), check=False)
        assert r.returncode == 1 and "exists" in r.stderr and out.read_bytes() == want
        r = rb(data, "export", "nope", str(tmp_path / "nope.raw"), check=False)
        assert r.returncode == 1 and "no image named nope" in r.stderr
        assert not (tmp_path / "nope.raw").exists()
        r = rb(data, "import", str(tmp_path / "missing.raw"), "m", check=False)
        assert r.returncode == 1 and r.stderr.startswith("rbdpy: cannot open ")
        r = rb(data, "import", "-", check=False)
        assert r.returncode == 1 and "needs an image name" in r.stderr
        assert sorted(rb(data, "ls").stdout.split()) == ["disk", "piped", "vm.raw"]
    finally:
        rb(data, "cluster", "down")


def test_a_failed_or_interrupted_import_removes_the_partial_image(tmp_path: Path) -> None:
    """The OSD's files may not grow past 2 MiB (RLIMIT_FSIZE from ``cluster up``, which the
    OSD reports as ENOSPC): importing 8 MiB of data fails, and the half-written image is
    removed. Then Ctrl-C (SIGINT) in the middle of an import from a pipe: removed too."""
    import resource

    data = tmp_path / "c"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    subprocess.run([*RBDPY, "--cluster", str(data), "cluster", "up"], check=True,
                   capture_output=True, timeout=120, preexec_fn=small_files)
    try:
        src = tmp_path / "big.raw"
        src.write_bytes(random.Random(4).randbytes(8 << 20))
        r = rb(data, "import", str(src), "big", check=False)
        assert r.returncode == 1, r.stderr
        assert "import of" in r.stderr and "failed" in r.stderr, r.stderr
        assert "removed the partial image big" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert rb(data, "ls").stdout.split() == []

        p = subprocess.Popen([*RBDPY, "--cluster", str(data), "import", "-", "cut"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdin is not None and p.stderr is not None
        p.stdin.write(b"x" * 65536)  # some data, then the pipe stays open: the import waits
        p.stdin.flush()
        deadline = time.monotonic() + 60
        while "locked by" not in rb(data, "lock", "ls", "cut", check=False).stdout:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == 130
        p.stdin.close()
        assert "interrupted; removed the partial image cut" in err, err
        assert rb(data, "ls").stdout.split() == []
    finally:
        rb(data, "cluster", "down")


def _loop_device(backing: Path) -> str:
    """Attach ``backing`` as a loop block device (root only); skips, saying why, if this
    machine cannot (no loop driver, no privilege)."""
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"no loop block device here: {r.stderr.strip()}")
    return r.stdout.strip()


def test_import_from_and_export_to_a_block_device(tmp_path: Path) -> None:
    """A block device's fstat size is 0: the import must ask for its end, and read from
    the start afterwards (it once read from the end and imported an image of zeros)."""
    data = tmp_path / "c"
    want = _raw_source(tmp_path / "src.raw", seed=5)
    size = len(want) + (-len(want)) % 4096  # a device is whole sectors
    (tmp_path / "in.img").write_bytes(want + bytes(size - len(want)))
    with open(tmp_path / "out.img", "wb") as f:
        f.truncate(size)
    devs: list[str] = []
    rb(data, "cluster", "up")
    try:
        devs.append(_loop_device(tmp_path / "in.img"))
        devs.append(_loop_device(tmp_path / "out.img"))
        rb(data, "import", devs[0], "dev")
        assert json.loads(rb(data, "info", "dev", "--format", "json").stdout)["size"] == size
        rb(data, "export", "dev", str(tmp_path / "copy.raw"))
        assert (tmp_path / "copy.raw").read_bytes()[: len(want)] == want
        rb(data, "export", "dev", devs[1])  # an existing block device is written, not refused
        subprocess.run(["losetup", "-d", devs.pop()], check=True, timeout=60)
        assert (tmp_path / "out.img").read_bytes()[: len(want)] == want
    finally:
        for d in devs:
            subprocess.run(["losetup", "-d", d], timeout=60)
        rb(data, "cluster", "down")
