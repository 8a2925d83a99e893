"""The NBD server when things fail, as a user sees it: the OSDs gone (requests wait and the
server says for whom; a stop is bounded and says what was lost), a startup that cannot work
(one line, not a traceback), and a server fenced by ``rbdpy lock break`` (one line saying
so, then one short line per failed request).

nbdkit runs the plugin directly (``tests/nbd/nbdkit_server.py``), in the foreground, so its
stderr is what the tests read; every process is stopped by its PID.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nbd.conftest import needs_nbdkit, osd_pids, rbdpy, stop_osds
from tests.nbd.nbdkit_server import PLUGIN, Nbdkit, nbdsh, nbdsh_bg

pytestmark = needs_nbdkit
MIB = 1 << 20


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    """A local cluster (``rbdpy cluster up``) with image ``vm`` (8 MiB, 1 MiB objects)."""
    data = tmp_path / "data"
    rbdpy(data, "cluster", "up")
    try:
        rbdpy(data, "create", "vm", "--size", "8M", "--object-size", "1M")
        yield data
    finally:
        stop_osds(data)


def _tracebacks(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "Traceback" in ln or ln.startswith(" ")]


def test_a_server_stops_in_bounded_time_without_the_osds_and_says_what_it_lost(
        cluster: Path, tmp_path: Path) -> None:
    """The OSDs are gone, a client's flush waits for them and another write was never
    flushed. SIGTERM: nbdkit ends (before, it waited forever for the flush, which kept it
    from ever reaching its cleanup), exit 0, and one line says how many writes were lost and
    whom they waited for. The waiting flush fails with ESHUTDOWN."""
    srv = Nbdkit(tmp_path, cluster, "image=vm", "stop-timeout=3")
    try:
        r = nbdsh(srv.uri(), f"h.pwrite(b'a' * 4096, {MIB}); h.flush()")
        assert r.returncode == 0, r.stderr
        stop_osds(cluster)
        r = nbdsh(srv.uri(), f"h.pwrite(b'b' * 4096, {MIB})", timeout=60)  # write-back
        assert r.returncode == 0, r.stderr
        flusher = nbdsh_bg(srv.uri(), "h.flush()")
        try:
            srv.wait_line("waiting for osd.0")  # the flush waits
            assert flusher.poll() is None
            srv.proc.send_signal(signal.SIGTERM)
            try:
                rc = srv.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("nbdkit did not stop:\n" + srv.stderr()) from None
            assert rc == 0, srv.stderr()
            out, err = flusher.communicate(timeout=60)
            assert flusher.returncode != 0 and "shutdown" in err, err
        finally:
            if flusher.poll() is None:
                flusher.kill()
                flusher.wait()
        lines = [ln for ln in srv.stderr().splitlines() if ln.startswith("rbdpy: ")]
        assert len(lines) == 1, srv.stderr()
        assert "1 write could not be flushed and is lost" in lines[0], lines[0]
        assert "osd.0 (127.0.0.1:" in lines[0], lines[0]
        assert not _tracebacks(srv.stderr()), srv.stderr()
    finally:
        srv.stop()


def test_requests_wait_for_the_osds_and_the_server_says_for_which(
        cluster: Path, tmp_path: Path) -> None:
    """With the OSDs down a client still connects at once (size and flags are known), its
    requests wait, nothing fails, and every few seconds the server logs which OSDs it waits
    for and how many requests; once the OSDs are back the requests complete and the server
    says so. Before, it said nothing at all."""
    srv = Nbdkit(tmp_path, cluster, "image=vm")
    try:
        r = nbdsh(srv.uri(), f"h.pwrite(b'q' * 4096, {3 * MIB}); h.flush()")
        assert r.returncode == 0, r.stderr
        stop_osds(cluster)
        info = subprocess.run(["nbdinfo", "--no-content", "--json", srv.uri()],
                              capture_output=True, text=True, timeout=60)
        assert info.returncode == 0 and '"export-size": 8388608' in info.stdout, info
        client = nbdsh_bg(srv.uri(), f"assert h.pread(4096, {3 * MIB}) == b'q' * 4096\n"
                          f"h.pwrite(b'r' * 512, 0); h.flush(); print('done')")
        try:
            line = srv.wait_line("waiting for osd.0 (127.0.0.1:")
            assert "1 request" in line, line
            assert client.poll() is None  # waiting, not failed
            rbdpy(cluster, "cluster", "up")
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0 and out.strip() == "done", err
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        srv.wait_line("the OSDs answer again")
        r = nbdsh(srv.uri(), "assert h.pread(512, 0) == b'r' * 512")
        assert r.returncode == 0, r.stderr
        assert not _tracebacks(srv.stderr()), srv.stderr()
    finally:
        srv.stop()


def _start_fails(data: Path, *params: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nbdkit", "-U", "-", "python", str(PLUGIN), f"cluster={data}",
                           *params, "--run", "true"], capture_output=True, text=True,
                          timeout=120)


def test_a_server_that_cannot_start_says_why_in_one_line(cluster: Path,
                                                          tmp_path: Path) -> None:
    """A missing image, an image in use, the OSDs down: nbdkit run directly prints one line
    and exits with status 2, no traceback (before: nbdkit's multi-line Python traceback);
    ``rbdpy serve`` passes that line on."""
    r = _start_fails(cluster, "image=nope")
    assert (r.returncode, r.stderr) == (2, "rbdpy: no image named nope\n"), r
    r = rbdpy(cluster, "serve", "nope", "--socket", str(tmp_path / "x.sock"), check=False)
    assert r.returncode != 0 and "rbdpy: no image named nope" in r.stderr, r.stderr
    assert not _tracebacks(r.stderr), r.stderr

    srv = Nbdkit(tmp_path, cluster, "image=vm")
    try:
        r = _start_fails(cluster, "image=vm")
        assert r.returncode == 2, r
        assert r.stderr.startswith("rbdpy: image vm is in use by client."), r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr
    finally:
        srv.stop()

    stop_osds(cluster)
    r = _start_fails(cluster, "image=vm")
    assert r.returncode == 2, r
    assert r.stderr.startswith("rbdpy: no answer from the OSDs (127.0.0.1:"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr

    r = _start_fails(cluster, "image=vm", "stop-timeout=soon")
    assert r.returncode != 0 and not _tracebacks(r.stderr), r.stderr
    assert "stop-timeout='soon': want seconds" in r.stderr


def test_a_fenced_server_says_so_once_and_each_failed_request_in_one_line(
        cluster: Path, tmp_path: Path) -> None:
    """``rbdpy lock break`` fences the server: one line says it was fenced, by whom (the
    breaker's note, written with the break) and that it must be restarted; every failed
    request is one short errno line (before: a traceback per request)."""
    srv = Nbdkit(tmp_path, cluster, "image=vm")
    try:
        r = nbdsh(srv.uri(), "h.pwrite(b'a' * 4096, 0); h.flush()")
        assert r.returncode == 0, r.stderr
        rbdpy(cluster, "lock", "break", "vm")
        for script in ("h.pwrite(b'b' * 4096, 0); h.flush()", "h.pread(4096, 0)",
                       "h.pwrite(b'c' * 4096, 0)", "h.pread(4096, 0)"):
            r = nbdsh(srv.uri(), script)
            assert r.returncode != 0 and "endpoint shutdown" in r.stderr, r.stderr
        line = srv.wait_line("was fenced")
        fenced = [ln for ln in srv.stderr().splitlines() if "fenced" in ln]
        assert fenced == [line], srv.stderr()
        assert "was fenced by client." in line and " pid " in line, line
        assert "(rbdpy lock break, " in line and "must be restarted" in line, line
        errors = [ln for ln in srv.stderr().splitlines() if ": error: " in ln]
        assert len(errors) >= 4 and all("ESHUTDOWN" in ln for ln in errors), srv.stderr()
        assert not _tracebacks(srv.stderr()), srv.stderr()
    finally:
        srv.stop()
    assert osd_pids(cluster)  # the OSDs were not touched
