"""Export names: a server serves each of its images under the image's name, the first also
as the default export "", and refuses any other name (before, every name served the one
image). One server can serve several images (``image=`` repeated on one Rados): each export
is its own image, and multi-conn holds per export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.nbd.conftest import Served, needs_nbdkit, rbdpy, stop_osds
from tests.nbd.nbdkit_server import Nbdkit, nbdsh

pytestmark = needs_nbdkit


def test_one_server_serves_several_images_by_name_and_refuses_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rbdpy(data, "cluster", "up")
    try:
        rbdpy(data, "create", "a", "--size", "1M")
        rbdpy(data, "create", "b", "--size", "2M")
        srv = Nbdkit(tmp_path, data, "image=a", "image=b")
        try:
            ls = subprocess.run(["nbdinfo", "--list", "--json", srv.uri()],
                                capture_output=True, text=True, timeout=60)
            assert ls.returncode == 0, ls.stderr
            exports = {e["export-name"]: e["export-size"]
                       for e in json.loads(ls.stdout)["exports"]}
            assert exports == {"a": 1 << 20, "b": 2 << 20}
            script = f"""
import nbd
def conn(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix({str(srv.sock)!r})
    return h
a, b, b2, dflt = conn("a"), conn("b"), conn("b"), conn("")
assert (a.get_size(), b.get_size(), dflt.get_size()) == (1 << 20, 2 << 20, 1 << 20)
assert b.can_multi_conn()
a.pwrite(b"A" * 4096, 0)
b.pwrite(b"B" * 4096, 0)
b.flush()
assert b2.pread(4096, 0) == b"B" * 4096  # another connection to b sees b's flushed write
a.flush()
assert dflt.pread(4096, 0) == b"A" * 4096  # "" is a
try:
    conn("nope")
except nbd.Error as e:
    print("refused:", e)
"""
            r = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "refused:" in r.stdout, r.stdout
            err = srv.stderr()
            refused = [ln for ln in err.splitlines() if "nope" in ln]
            assert refused and all("ENOENT: no export named 'nope' (this server serves a, b)"
                                   in ln for ln in refused), err
            assert "Traceback" not in err, err
        finally:
            srv.stop()
    finally:
        stop_osds(data)


def test_rbdpy_serve_answers_to_its_image_name_and_the_default_only(served: Served) -> None:
    """What ``rbdpy up`` prints and the README use: ``-N disk0`` (the image's name) and
    ``nbd://127.0.0.1:10809`` (the default export) reach the image; another name is
    refused."""
    base = f"nbd+unix:///{{}}?socket={served.sock}"
    r = nbdsh(base.format(served.name), "h.pwrite(b'n' * 512, 0); h.flush()")
    assert r.returncode == 0, r.stderr
    r = nbdsh(base.format(""), "assert h.pread(512, 0) == b'n' * 512")
    assert r.returncode == 0, r.stderr
    r = nbdsh(base.format("disk1"), "h.pread(512, 0)")
    assert r.returncode != 0 and "disk1" in r.stderr, r.stderr
