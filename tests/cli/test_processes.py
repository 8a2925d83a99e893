"""The CLI touches only the processes it started: a stale pid file is replaced, never
signalled; a second ``up`` refuses and leaves the first alone; a failed start stops exactly
what that run started (issue 14). Every daemon here is a real process, checked in /proc."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from rbdpy import config, localcluster
from tests.cli.helpers import RBDPY, free_port, nbd, one_line, osds_of, rb, stop_all
from tests.procs import pid_alive, stop_pid
from tests.test_cli import Up, needs_nbdkit


def test_cluster_up_replaces_a_stale_pid_file(tmp_path: Path) -> None:
    """After a reboot the PID in osd.0.pid may belong to anything: ``cluster up`` trusted it
    (said "1 OSD(s)", started nothing, every command then timed out)."""
    data, other = tmp_path / "c", tmp_path / "other"
    rb(data, "cluster", "up")
    rb(data, "cluster", "down")
    rb(other, "cluster", "up")  # an OSD of another cluster: our command line, not our data
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        [other_osd] = osds_of(other)
        for stranger in (sleeper.pid, other_osd):
            (data / "osd.0.pid").write_text(f"{stranger}\n")
            out = rb(data, "cluster", "up").stdout
            assert len(osds_of(data)) == 1, f"no OSD started: {out}"
            [osd] = osds_of(data)
            assert int((data / "osd.0.pid").read_text()) == osd != stranger
            assert "(1 started)" in out, out
            assert " up " in rb(data, "cluster", "status").stdout
            rb(data, "create", f"img{stranger}", "--size", "1M")  # the cluster answers
            rb(data, "cluster", "down")
            assert not pid_alive(osd) and not osds_of(data)
            assert sleeper.poll() is None and pid_alive(other_osd)  # never signalled
    finally:
        stop_pid(sleeper.pid)
        sleeper.wait()
        stop_all(other)
        stop_all(data)


def test_cluster_down_never_signals_a_stale_pid(tmp_path: Path) -> None:
    """``cluster down`` sent SIGTERM to whatever process had the PID of the pid file."""
    data = tmp_path / "c"
    localcluster.init(data)
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (data / "osd.0.pid").write_text(f"{sleeper.pid}\n")
        out = rb(data, "cluster", "down").stdout  # it waited for what it signalled to end
        assert sleeper.poll() is None, "cluster down signalled an unrelated process"
        assert out.strip() == "cluster down: stopped 0 OSD(s)"
        assert not (data / "osd.0.pid").exists()  # stale: removed
    finally:
        stop_pid(sleeper.pid)
        sleeper.wait()


def test_an_osd_of_this_directory_with_another_start_time_is_not_ours(tmp_path: Path) -> None:
    """The start time recorded at start tells a reused PID from ours even when the command
    line matches (the same OSD started again by hand, say)."""
    data = tmp_path / "c"
    rb(data, "cluster", "up")
    try:
        cfg = config.load(data / "cluster.toml")
        [osd] = osds_of(data)
        assert localcluster.osd_pid(cfg, 0) == osd
        pid, start = (data / "osd.0.start").read_text().split()
        assert int(pid) == osd
        (data / "osd.0.start").write_text(f"{osd} {int(start) + 1}\n")
        assert localcluster.osd_pid(cfg, 0) is None
        (data / "osd.0.start").unlink()  # no record (an older rbdpy): the command line decides
        assert localcluster.osd_pid(cfg, 0) == osd
    finally:
        stop_all(data)


def test_cluster_up_checks_every_port_before_starting_any_osd(tmp_path: Path) -> None:
    data = tmp_path / "c"
    cfg = localcluster.init(data, osds=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", cfg.osdmap.osds[1].port))
        s.listen()
        try:
            r = rb(data, "cluster", "up", check=False)
            assert not osds_of(data), "osd.0 was left running"
        finally:
            stop_all(data)
    assert f"127.0.0.1:{cfg.osdmap.osds[1].port}" in one_line(r)


def up_cmd(data: Path, port: int, *more: str) -> list[str]:
    return [*RBDPY, "up", "--data", str(data), "--port", str(port), "--size", "64M", *more]


@needs_nbdkit
def test_a_second_up_refuses_and_touches_nothing(tmp_path: Path) -> None:
    """It used to fail on "disk0 in use" and then run ``cluster down``, stopping the first
    one's OSD under its server."""
    data, port = tmp_path / "d", free_port()
    first = Up(data, port, size="64M")
    try:
        osds = osds_of(data)
        uri = f"nbd://127.0.0.1:{port}/disk0"
        nbd(uri, "h.pwrite(b'first' * 100, 4096)\nh.flush()")
        for p in (port, free_port()):  # the same port (up run twice), or another one
            r = subprocess.run(up_cmd(data, p), capture_output=True, text=True, timeout=120)
            assert osds and osds_of(data) == osds and first.proc.poll() is None, r.stdout
            line = one_line(r)
            assert "already running" in line and f"pid {first.proc.pid}" in line, line
            assert uri in line, line
        assert nbd(uri, "print(h.pread(500, 4096).hex())").strip() == (b"first" * 100).hex()
    finally:
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=120)
        stop_all(data)
    assert first.proc.returncode == 0, first.output()
    assert "stopped nbdkit and 1 OSD(s)" in first.output()
    assert not osds_of(data)


@needs_nbdkit
@pytest.mark.parametrize("cluster_running", [False, True])
def test_up_with_a_taken_port_starts_nothing(tmp_path: Path, cluster_running: bool) -> None:
    """It printed "serving ... at P" (another program's port), then failed and stopped the
    OSDs, including those it had not started."""
    data = tmp_path / "d"
    if cluster_running:
        rb(data, "cluster", "up")
    before = osds_of(data)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            r = subprocess.run(up_cmd(data, port), capture_output=True, text=True,
                               timeout=120)
        assert osds_of(data) == before, r.stdout
        assert "serving" not in r.stdout
        line = one_line(r)
        assert f"port {port}" in line and "in use" in line, line
    finally:
        stop_all(data)


@needs_nbdkit
@pytest.mark.parametrize("cluster_running", [False, True])
def test_a_failed_up_stops_exactly_what_it_started(tmp_path: Path, cluster_running: bool
                                                   ) -> None:
    """A bad image name fails after the OSDs are up: the ones this run started stop again,
    the ones ``cluster up`` started keep running."""
    data = tmp_path / "d"
    if cluster_running:
        rb(data, "cluster", "up")
    before = osds_of(data)
    try:
        r = subprocess.run(up_cmd(data, free_port(), "--name", "bad/name"),
                           capture_output=True, text=True, timeout=120)
        assert osds_of(data) == before and all(pid_alive(p) for p in before), r.stdout
        assert "bad image name 'bad/name'" in one_line(r)
    finally:
        stop_all(data)
