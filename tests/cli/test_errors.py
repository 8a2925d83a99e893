"""One line, not a traceback (and not a wrong line): the cluster path, the log level, du of
a missing image, an expired lease, export into a closed pipe, a device or a directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import RBDPY, Cli, run


def one_line(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def test_the_cluster_file_may_have_any_name(cluster: Path, rb: Cli, tmp_path: Path) -> None:
    rb("create", "named", "--size", "1M")
    try:
        conf = cluster / "mycluster.conf"  # beside the OSD data its paths are relative to
        shutil.copy(cluster / "cluster.toml", conf)
        assert run("--cluster", str(conf), "ls").stdout.split() == ["named"]
        assert run("--cluster", str(conf), "cluster", "status").stdout.count(" up ") == 1
        junk = tmp_path / "junk.conf"
        junk.write_text("not = [toml\n")
        err = one_line(run("--cluster", str(junk), "ls", check=False))
        assert err.startswith(f"rbdpy: {junk} is not a cluster file (TOML)"), err
        err = one_line(run("--cluster", str(junk / "sub"), "ls", check=False))
        assert err == f"rbdpy: cluster path {junk / 'sub'}: Not a directory", err
        one_line(run("--cluster", str(junk / "sub"), "cluster", "status", check=False))
    finally:
        rb("rm", "named")


def test_a_bad_log_level_is_refused(rb: Cli) -> None:
    r = rb("--log-level", "bogus", "ls", check=False)  # was taken, and ls ran
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_du_of_a_missing_image_prints_only_the_error(rb: Cli) -> None:
    r = rb("du", "NOSUCH", check=False)
    assert one_line(r) == "rbdpy: no image named NOSUCH" and r.stdout == ""


HOLD = """
import os, sys, rbdpy
from rbdpy.rbd import api
with rbdpy.connect(sys.argv[1]) as c:
    img = api.open_image(c, "held")
    img.write(0, b"x")
    img.flush()
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_an_expired_lease_says_so(cluster: Path, rb: Cli) -> None:
    """A holder killed with -9 leaves its lock; once its lease runs out, ``lock ls`` says
    that (it said "lease ends in -209 s") and what it means."""
    rb("create", "held", "--size", "1M")
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(cluster)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "RBDPY_LOCK_LEASE": "1"})
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "holding"
        assert ", lease ends in " in rb("lock", "ls", "held").stdout
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        deadline = time.monotonic() + 60
        while "expired" not in (out := rb("lock", "ls", "held").stdout):
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
        assert out.startswith("locked by client.") and f" pid {p.pid}, lease expired " in out
        assert " s ago: the holder is presumed dead, the next writer to open the image " \
            "breaks the lock and takes over (cookie " in out, out
        assert "-" not in out.split("lease expired ")[1].split(" s ago")[0]
        rb("resize", "held", "--size", "2M")  # a writer: it takes over, as said
        assert rb("lock", "ls", "held").stdout.strip() == "image held is not locked"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        rb("rm", "held")


def test_export_into_a_closed_pipe_is_quiet(cluster: Path, rb: Cli) -> None:
    """``export vm - | head``: the reader goes away; exit 141 (SIGPIPE's), no message, as
    ``info | head`` already did."""
    rb("create", "piped", "--size", "16M")  # more than a pipe holds, so a write fails
    try:
        p = subprocess.Popen([*RBDPY, "--cluster", str(cluster), "export", "piped", "-"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.read(10) == bytes(10)
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141 and err == "", err
    finally:
        rb("rm", "piped")


def test_export_to_devices_and_not_to_directories(rb: Cli, tmp_path: Path) -> None:
    rb("create", "dev", "--size", "4M")
    try:
        rb("export", "dev", "/dev/null")  # a character device: written, not refused
        assert one_line(rb("export", "dev", str(tmp_path), check=False)) == \
            f"rbdpy: {tmp_path} is a directory (export to a file name)"
        existing = tmp_path / "f.raw"
        existing.write_bytes(b"keep")
        err = one_line(rb("export", "dev", str(existing), check=False))
        assert "exists (remove it first" in err and existing.read_bytes() == b"keep"
    finally:
        rb("rm", "dev")
