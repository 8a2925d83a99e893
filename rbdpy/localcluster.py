"""A local cluster under one data directory: OSD processes, pid files, logs, cluster.toml.

``rbdpy cluster up`` writes ``DIR/cluster.toml`` on first use (ports on 127.0.0.1 picked
free) and starts one ``rbdpy osd`` process per OSD in its own session, so it outlives the
command; ``down`` stops them by the PIDs in their pid files (SIGTERM, then SIGKILL).

``osd.N.pid`` holds the PID alone (what scripts and ``kill $(cat ...)`` expect);
``osd.N.start`` holds that PID and its start time. A PID counts as the OSD only while
``/proc/PID`` is that daemon for this data directory (``rbdpy.proc``): otherwise the pid file
is stale, replaced on ``up`` and never signalled on ``down``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rbdpy import config
from rbdpy import proc as rproc
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


def start_file(cfg: config.ClusterConfig, osd_id: int) -> Path:
    """``PID START``: the start time of the OSD process ``up`` started with that PID."""
    return cfg.dir / f"osd.{osd_id}.start"


@dataclass
class Started:
    """An OSD process this run started: what ``stop`` may signal, and nothing else."""

    osd_id: int
    pid: int
    start: int | None
    popen: subprocess.Popen | None = None


def _recorded_start(cfg: config.ClusterConfig, osd_id: int, pid: int) -> int | None:
    """The start time recorded for ``pid``; None when unknown (no record, or a record of
    another PID: a pid file written by an older rbdpy), and the command line decides."""
    try:
        rec_pid, rec_start = start_file(cfg, osd_id).read_text().split()
        return int(rec_start) if int(rec_pid) == pid else None
    except (OSError, ValueError):
        return None


def _osd_argv(cfg: config.ClusterConfig, osd_id: int, pid: int):
    """Matches the command line ``up`` starts: ``... -m rbdpy.cli ... osd --id N --data
    DIR/osd.N ...`` with this cluster's data directory for that OSD."""
    def matches(argv: list[str]) -> bool:
        data = rproc.option(argv, "--data")
        return (argv[1:3] == ["-m", "rbdpy.cli"] and "osd" in argv
                and rproc.option(argv, "--id") == str(osd_id) and data is not None
                and rproc.same_path(pid, data, cfg.osd_data[osd_id]))
    return matches


def is_osd(cfg: config.ClusterConfig, osd_id: int, pid: int, start: int | None) -> bool:
    """``pid`` is osd.``osd_id`` of this cluster (started at ``start`` when known)."""
    return rproc.is_ours(pid, start, _osd_argv(cfg, osd_id, pid))


def osd_pid(cfg: config.ClusterConfig, osd_id: int) -> int | None:
    """The PID of the running OSD, from its pid file; None when that file is missing or
    stale (its PID is gone, or is now some other process)."""
    try:
        pid = int(pid_file(cfg, osd_id).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_osd(cfg, osd_id, pid, _recorded_start(cfg, osd_id, pid)) else None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def up(cfg: config.ClusterConfig, *, timeout: float = 30.0, log_level: str = "info",
       started: list[Started] | None = None) -> list[Started]:
    """Start every OSD that is not running; wait until all accept connections. Returns what
    it started, also appended to ``started`` as it goes (so a caller interrupted meanwhile
    knows). Every port is checked before anything starts; on any failure, or an interrupt,
    the OSDs this call started are stopped again before the error goes up."""
    started = [] if started is None else started
    mine: list[Started] = []
    todo = [o for o in cfg.osdmap.osds.values() if osd_pid(cfg, o.id) is None]
    for o in todo:
        if port_open(o.host, o.port):
            raise ClusterError(f"port {o.host}:{o.port} of osd.{o.id} is taken by another "
                               "process")
    try:
        for o in todo:
            logf = open(cfg.dir / f"osd.{o.id}.log", "ab")  # noqa: SIM115 - handed to the child
            p = subprocess.Popen(
                [sys.executable, "-m", "rbdpy.cli", "--log-level", log_level, "osd", "--id",
                 str(o.id), "--data", str(cfg.osd_data[o.id]), "--listen",
                 f"{o.host}:{o.port}"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            )
            logf.close()
            s = Started(o.id, p.pid, rproc.start_time(p.pid), p)  # set at fork, kept by exec
            mine.append(s)
            started.append(s)
            _write(start_file(cfg, o.id), f"{s.pid} {s.start}\n")
            _write(pid_file(cfg, o.id), f"{s.pid}\n")
        deadline = time.monotonic() + timeout
        for s in mine:
            o = cfg.osdmap.osds[s.osd_id]
            while not port_open(o.host, o.port):
                assert s.popen is not None
                if s.popen.poll() is not None:
                    raise ClusterError(f"osd.{o.id} exited with status {s.popen.returncode}; "
                                       f"see {cfg.dir / f'osd.{o.id}.log'}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"osd.{o.id} did not start listening in {timeout:g}s")
                time.sleep(0.05)
    except BaseException:
        stop(cfg, mine, timeout=timeout)
        for s in mine:
            started.remove(s)
        raise
    return mine


def down(cfg: config.ClusterConfig, *, timeout: float = 30.0) -> list[int]:
    """Stop the OSDs by their pid files: SIGTERM (they commit and exit), SIGKILL if stuck.
    A stale pid file (its PID gone or now another process) is removed, never signalled."""
    running = []
    for o in cfg.osdmap.osds.values():
        pid = osd_pid(cfg, o.id)
        if pid is None:
            pid_file(cfg, o.id).unlink(missing_ok=True)
            start_file(cfg, o.id).unlink(missing_ok=True)
        else:
            running.append(Started(o.id, pid, rproc.start_time(pid)))
    return stop(cfg, running, timeout=timeout)


def stop(cfg: config.ClusterConfig, osds: list[Started], *, timeout: float = 30.0
         ) -> list[int]:
    """Stop exactly these OSD processes (each still that process: same PID, same start
    time), all at once: SIGTERM, then SIGKILL for those still there after ``timeout``.
    Returns the ids of those that were running."""
    live = [s for s in osds if is_osd(cfg, s.osd_id, s.pid, s.start)]
    for s in live:
        _signal(s.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_same(s) for s in live) and time.monotonic() < deadline:
        for s in live:
            _reap(s.pid)
        time.sleep(0.05)
    for s in live:
        if _same(s):
            _signal(s.pid, signal.SIGKILL)
        _reap(s.pid)
        if _pid_in(pid_file(cfg, s.osd_id)) == s.pid:  # not replaced by a newer start
            pid_file(cfg, s.osd_id).unlink(missing_ok=True)
            start_file(cfg, s.osd_id).unlink(missing_ok=True)
    return [s.osd_id for s in live]


def _same(s: Started) -> bool:
    began = rproc.start_time(s.pid)
    return began is not None and (s.start is None or began == s.start)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


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
