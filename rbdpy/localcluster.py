"""A local cluster under one data directory: OSD processes, pid files, logs, cluster.toml.

``rbdpy cluster up`` writes ``DIR/cluster.toml`` on first use (ports on 127.0.0.1 picked
free) and starts one ``rbdpy osd`` process per OSD in its own session, so it outlives the
command; ``down`` stops them by the PIDs in their pid files (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rbdpy import config
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo


class ClusterError(Exception):
    pass


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Running. A zombie has exited (only its parent, maybe a slow init, has yet to reap
    it), so it does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # the name may hold spaces
    except OSError:
        return False  # gone between the two checks


def init(data_dir: Path, osds: int = 1, pg_num: int = 64, replicas: int = 1
         ) -> config.ClusterConfig:
    """The cluster file for ``data_dir``: loaded if present, else written fresh."""
    path = data_dir / config.FILE_NAME
    if path.exists():
        return config.load(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    m = OSDMap(epoch=1)
    for i in range(osds):
        m.osds[i] = OSDInfo(i, "127.0.0.1", _free_port())
    m.pools[1] = PoolInfo(1, "rbd", size=min(replicas, osds), pg_num=pg_num)
    cfg = config.ClusterConfig(path, m, {i: data_dir / f"osd.{i}" for i in range(osds)})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config.dump(cfg))
    os.replace(tmp, path)
    return cfg


def pid_file(cfg: config.ClusterConfig, osd_id: int) -> Path:
    return cfg.dir / f"osd.{osd_id}.pid"


def osd_pid(cfg: config.ClusterConfig, osd_id: int) -> int | None:
    try:
        pid = int(pid_file(cfg, osd_id).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def up(cfg: config.ClusterConfig, *, timeout: float = 30.0, log_level: str = "info") -> None:
    """Start every OSD that is not running; wait until all accept connections."""
    started = []
    for o in cfg.osdmap.osds.values():
        if osd_pid(cfg, o.id) is not None:
            continue
        if port_open(o.host, o.port):
            raise ClusterError(f"port {o.host}:{o.port} of osd.{o.id} is taken by another "
                               "process")
        logf = open(cfg.dir / f"osd.{o.id}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "rbdpy.cli", "--log-level", log_level, "osd", "--id",
             str(o.id), "--data", str(cfg.osd_data[o.id]), "--listen", f"{o.host}:{o.port}"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
        )
        logf.close()
        pid_file(cfg, o.id).write_text(f"{proc.pid}\n")
        started.append((o, proc))
    deadline = time.monotonic() + timeout
    for o, proc in started:
        while not port_open(o.host, o.port):
            if proc.poll() is not None:
                raise ClusterError(f"osd.{o.id} exited with status {proc.returncode}; see "
                                   f"{cfg.dir / f'osd.{o.id}.log'}")
            if time.monotonic() > deadline:
                raise ClusterError(f"osd.{o.id} did not start listening in {timeout:g}s")
            time.sleep(0.05)


def down(cfg: config.ClusterConfig, *, timeout: float = 30.0) -> list[int]:
    """Stop the OSDs by their pid files: SIGTERM (they commit and exit), SIGKILL if stuck."""
    stopped = []
    for o in cfg.osdmap.osds.values():
        pid = osd_pid(cfg, o.id)
        if pid is None:
            pid_file(cfg, o.id).unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        pid_file(cfg, o.id).unlink(missing_ok=True)
        stopped.append(o.id)
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(cfg: config.ClusterConfig) -> list[tuple[int, str, int | None, bool]]:
    """(osd id, address, pid or None, answering) per OSD."""
    out = []
    for o in cfg.osdmap.osds.values():
        pid = osd_pid(cfg, o.id)
        out.append((o.id, f"{o.host}:{o.port}", pid, port_open(o.host, o.port)))
    return out
