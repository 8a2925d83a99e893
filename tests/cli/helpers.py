"""What the CLI process tests share: the ``rbdpy`` command, free ports, the daemons of a data
directory found in /proc by their command line (pid files may be gone or stale: that is what
these tests check), and NBD I/O through Debian's libnbd."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from rbdpy import proc
from tests.procs import stop_pid

RBDPY = [sys.executable, "-m", "rbdpy.cli"]


def rb(data: Path, *args: str, check: bool = True, timeout: float = 120
       ) -> subprocess.CompletedProcess:
    r = subprocess.run([*RBDPY, "--cluster", str(data), *args], capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def osds_of(data: Path) -> list[int]:
    """PIDs of the running OSD processes whose data lives under ``data``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or proc.start_time(int(d.name)) is None:
            continue
        argv = proc.cmdline(int(d.name)) or []
        if "osd" in argv and any(a.startswith(f"{data}/osd.") for a in argv):
            out.append(int(d.name))
    return out


def nbdkits_of(data: Path) -> list[int]:
    """PIDs of the running nbdkit processes serving the cluster in ``data``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or proc.start_time(int(d.name)) is None:
            continue
        argv = proc.cmdline(int(d.name)) or []
        if argv and argv[0].endswith("nbdkit") and f"cluster={data}/cluster.toml" in argv:
            out.append(int(d.name))
    return out


def stop_all(data: Path) -> None:
    """Stop every server and OSD of ``data`` by PID (a test's cleanup, whatever failed)."""
    for pid in [*nbdkits_of(data), *osds_of(data)]:
        stop_pid(pid, timeout=60)


def nbd(uri: str, script: str) -> str:
    """Run ``script`` with ``h``, an NBD handle connected to ``uri`` (Debian's libnbd
    binding lives in /usr/bin/python3), then shut down; what it printed."""
    code = f"import nbd\nh = nbd.NBD()\nh.connect_uri({uri!r})\n{script}\nh.shutdown()\n"
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def servers_json(data: Path) -> list[dict]:
    return json.loads(rb(data, "serve", "ls", "--format", "json").stdout)


def one_line(r: subprocess.CompletedProcess) -> str:
    """The single line a refused command printed on stderr (nothing on stdout)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and not r.stdout.strip(), (r.stdout, r.stderr)
    assert lines[0].startswith("rbdpy: "), lines
    return lines[0]
