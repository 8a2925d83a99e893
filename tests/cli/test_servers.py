"""Servers a user can list and stop: ``serve`` prints its address, ``serve ls`` lists the
running servers of the cluster, ``serve stop`` stops them with their exit flush, and
``cluster down`` refuses while they run (``--force`` stops them first) (issue 14)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import rbdpy
from rbdpy.rbd import api as rbdapi
from tests.cli.helpers import (
    free_port,
    nbd,
    one_line,
    osds_of,
    rb,
    servers_json,
    stop_all,
)
from tests.procs import pid_alive
from tests.test_cli import Up, needs_nbdkit


def serve(data: Path, *args: str) -> int:
    """``rbdpy serve ...``: the PID of the server it started, from the line it prints."""
    out = rb(data, "serve", *args).stdout.strip()
    m = re.fullmatch(r"serving \S+ at \S+ \((socket \S+, )?pid (\d+), (writable|read-only)\)",
                     out)
    assert m, out
    return int(m.group(2))


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"{pid} still runs"
        time.sleep(0.05)


@needs_nbdkit
def test_serve_ls_and_stop(tmp_path: Path) -> None:
    data = tmp_path / "c"
    rb(data, "cluster", "up")
    pids: list[int] = []
    try:
        rb(data, "create", "a", "--size", "64M")
        rb(data, "create", "b", "--size", "64M")
        p1, p2, p3 = free_port(), free_port(), free_port()
        sock = tmp_path / "b.sock"

        out = rb(data, "serve", "a", "--port", str(p1)).stdout
        assert f"serving a at nbd://127.0.0.1:{p1}/a (pid " in out and "writable" in out
        rw = int(re.search(r"pid (\d+)", out).group(1))
        pids.append(rw)
        ro = serve(data, "a", "--readonly", "--port", str(p2))  # the same image again
        pids.append(ro)
        out = rb(data, "serve", "b", "--socket", str(sock)).stdout
        assert f"at nbd+unix:///b?socket={sock} (socket {sock}, pid " in out, out
        sb = int(re.search(r"pid (\d+)", out).group(1))
        pids.append(sb)
        assert len({rw, ro, sb}) == 3 and all(pid_alive(p) for p in pids)

        listed = servers_json(data)
        assert {(s["image"], s["address"], s["pid"], s["readonly"]) for s in listed} == {
            ("a", f"nbd://127.0.0.1:{p1}/a", rw, False),
            ("a", f"nbd://127.0.0.1:{p2}/a", ro, True),
            ("b", f"nbd+unix:///b?socket={sock}", sb, False)}
        # each server its own pid file: the second server of a did not overwrite the first's
        assert {int(Path(s["pidfile"]).read_text()) for s in listed} == {rw, ro, sb}
        table = rb(data, "serve", "ls").stdout.splitlines()
        assert table[0].split() == ["image", "mode", "pid", "address"] and len(table) == 4
        assert f"a      rw    {rw:<7}  nbd://127.0.0.1:{p1}/a" in table

        # written without a flush: stopping the server flushes (nbdkit's exit, the plugin's
        # cleanup), before serve stop returns
        nbd(f"nbd://127.0.0.1:{p1}/a", "h.pwrite(b'\\x5a' * 65536, 1 << 20)")
        out = rb(data, "serve", "stop", f"127.0.0.1:{p1}").stdout
        assert out == f"stopped a at nbd://127.0.0.1:{p1}/a (pid {rw})\n"
        assert not pid_alive(rw) and pid_alive(ro)
        with rbdpy.connect(str(data)) as c:
            img = rbdapi.open_image(c, "a", read_only=True)
            assert img.pread(1 << 20, 65536) == b"\x5a" * 65536

        # a server that died (kill -9) is not listed, and its record goes
        os.kill(sb, signal.SIGKILL)
        wait_gone(sb)
        assert [s["pid"] for s in servers_json(data)] == [ro]
        assert len(list((data / "servers").glob("*.json"))) == 1

        # cluster down refuses while a server runs, naming it, and stops nothing
        line = one_line(rb(data, "cluster", "down", check=False))
        assert f"a at nbd://127.0.0.1:{p2}/a (pid {ro})" in line and "--force" in line
        assert pid_alive(ro) and osds_of(data)

        sb = serve(data, "b", "--port", str(p3))
        pids.append(sb)
        assert "no running server of nosuch" in one_line(
            rb(data, "serve", "stop", "nosuch", check=False))
        assert rb(data, "serve", "stop", "b").stdout.startswith(f"stopped b at nbd://127.0.0.1:{p3}/b")
        assert pid_alive(ro) and not pid_alive(sb)
        out = rb(data, "serve", "stop", "--all").stdout
        assert out == f"stopped a at nbd://127.0.0.1:{p2}/a (pid {ro})\n"
        assert rb(data, "serve", "ls").stdout == "" and servers_json(data) == []

        # cluster down --force: the servers first (one line each), then the OSDs
        rw = serve(data, "a", "--port", str(p1))
        pids.append(rw)
        osds = osds_of(data)
        out = rb(data, "cluster", "down", "--force").stdout.splitlines()
        assert out == [f"stopped a at nbd://127.0.0.1:{p1}/a (pid {rw})",
                       "cluster down: stopped 1 OSD(s)"]
        assert not pid_alive(rw) and not any(pid_alive(p) for p in osds)
    finally:
        stop_all(data)


@needs_nbdkit
def test_the_server_of_up_is_listed_and_stopping_it_ends_up(tmp_path: Path) -> None:
    data, port = tmp_path / "d", free_port()
    up = Up(data, port, size="64M")
    try:
        [s] = servers_json(data)
        assert (s["image"], s["address"], s["readonly"]) == (
            "disk0", f"nbd://127.0.0.1:{port}/disk0", False)
        assert json.loads(json.dumps(s))["pid"] != up.proc.pid  # nbdkit, not up itself
        out = rb(data, "serve", "stop", "disk0").stdout
        assert out == f"stopped disk0 at nbd://127.0.0.1:{port}/disk0 (pid {s['pid']})\n"
        up.proc.wait(timeout=120)
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGTERM)
            up.proc.wait(timeout=120)
        stop_all(data)
    assert up.proc.returncode == 0, up.output()
    assert "stopped nbdkit and 1 OSD(s)" in up.output()
    assert not osds_of(data) and servers_json(data) == []


def test_every_option_of_cluster_serve_and_up_has_help() -> None:
    import argparse

    from rbdpy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb in ("cluster", "osd", "serve", "up"):
        missing = [a.dest for a in sub.choices[verb]._actions if not a.help]
        assert not missing, f"{verb}: {missing}"
