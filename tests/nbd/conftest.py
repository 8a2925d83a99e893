"""Shared helpers for the NBD tests: a real local cluster started through the CLI, nbdkit
serving an image on a unix socket, every process stopped by the PID it recorded.

Test modules import the helpers as ``tests.nbd.conftest``: under the project's
``--import-mode=importlib`` pytest registers this file by that name (rootdir-relative) before
it collects the test modules beside it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import stop_pid, wait_for

RBDPY = [sys.executable, "-m", "rbdpy.cli"]
needs_nbdkit = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit missing")


def rbdpy(cluster: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*RBDPY, "--cluster", str(cluster), *args], capture_output=True,
                          text=True, check=check, timeout=120)


def osd_pids(data: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(data.glob("osd.*.pid"))]


def stop_osds(data: Path) -> None:
    for pid in osd_pids(data):
        stop_pid(pid)
    for p in data.glob("osd.*.pid"):
        p.unlink()


class Served:
    """One image served by nbdkit on a unix socket under ``root``.

    Without ``data`` it brings up a cluster of its own in ``root/data`` and ``stop`` stops
    that cluster too; with ``data`` it creates its image on that running cluster and ``stop``
    stops only its nbdkit.
    """

    def __init__(self, root: Path, name: str = "disk", size: str = "64M",
                 object_size: str = "1M", data: Path | None = None) -> None:
        self.owns_cluster = data is None
        self.dir = root / "data" if data is None else data
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        self.sock = root / "nbd.sock"
        self.pidfile = root / "nbdkit.pid"
        if self.owns_cluster:
            rbdpy(self.dir, "cluster", "up")
        try:
            rbdpy(self.dir, "create", name, "--size", size, "--object-size", object_size)
            self.serve()
        except BaseException:  # the fixture never gets to stop() what it started
            self.stop()
            raise

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def serve(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        rbdpy(self.dir, "serve", self.name, "--socket", str(self.sock), "--pidfile",
              str(self.pidfile))
        wait_for(self.pidfile)
        wait_for(self.sock)

    def nbdkit_pid(self) -> int:
        return int(self.pidfile.read_text())

    def osd_pids(self) -> list[int]:
        return osd_pids(self.dir)

    def stop_nbdkit(self) -> None:
        if self.pidfile.exists():
            stop_pid(self.nbdkit_pid())
            self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        self.stop_nbdkit()
        if self.owns_cluster:
            stop_osds(self.dir)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def qemu_io(uri: str, *cmds: str, check: bool = True, ro: bool = False
            ) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw", *(["-r"] if ro else [])]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run([*args, uri], capture_output=True, text=True, timeout=120)
    if check:
        bad = [ln for ln in (r.stdout + r.stderr).splitlines()
               if "failed" in ln or "Pattern verification" in ln]
        assert r.returncode == 0 and not bad, r.stdout + r.stderr
    return r

