"""The shape of Ceph's python-rados / python-rbd (``rbdpy.Rados``, ``rbdpy.RBD``,
``rbdpy.Image``) against a real OSD (``rbdpy cluster up``): a script written for Ceph's
bindings runs with ``import rbdpy as rados`` / ``import rbdpy as rbd`` instead of theirs.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rbdpy
import rbdpy as rados
import rbdpy as rbd
from rbdpy.errors import RbdpyError
from rbdpy.rbd import api as rbdapi

RBDPY = [sys.executable, "-m", "rbdpy.cli"]


def cli(data: Path, *args: str) -> None:
    subprocess.run([*RBDPY, "--cluster", str(data), *args], check=True, capture_output=True,
                   timeout=120)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running one-OSD cluster's data directory."""
    d = tmp_path_factory.mktemp("pyrbd") / "data"
    cli(d, "cluster", "up")
    try:
        yield d
    finally:
        cli(d, "cluster", "down")


def test_a_python_rbd_script_runs_unchanged_but_for_its_imports(data: Path) -> None:
    """Ceph's librbdpy tutorial, step by step, plus what scripts commonly do next."""
    cluster = rados.Rados(conffile=str(data))
    cluster.connect()
    try:
        ioctx = cluster.open_ioctx("rbd")
        try:
            rbd_inst = rbd.RBD()
            size = 64 * 1024**2
            rbd_inst.create(ioctx, "myimage", size)
            assert "myimage" in rbd_inst.list(ioctx)
            image = rbd.Image(ioctx, "myimage")
            try:
                data_ = b"foo" * 200
                assert image.write(data_, 0) == 600  # bytes written, as librbd returns
                assert image.read(0, 600) == data_
                assert image.read(600, 4) == bytes(4)  # a hole reads as zeros
                st = image.stat()
                assert st["size"] == size and st["order"] == 22 and st["obj_size"] == 4 << 20
                assert st["num_objs"] == 16
                assert st["block_name_prefix"] == f"rbd_data.{image.id()}"
                assert image.size() == size
                image.resize(2 * size)
                assert image.size() == image.stat()["size"] == 2 * size
                image.write(b"tail", 2 * size - 4)
                assert image.read(2 * size - 4, 100) == b"tail"  # clipped at the end
                image.discard(0, 4096)
                assert image.read(0, 600) == bytes(600)
                image.write(b"back", 0, rbd.LIBRADOS_OP_FLAG_FADVISE_FUA)
                image.flush()
                assert image.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                assert image.is_exclusive_lock_owner()
            finally:
                image.close()
        finally:
            ioctx.close()
    finally:
        cluster.shutdown()

    # context managers all the way, as scripts written for Ceph's newer docs do
    with rados.Rados(conffile=str(data / "cluster.toml")) as cluster, \
            cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, "myimage", read_only=True) as image:
            assert image.read(0, 4) == b"back"
            assert image.read(2 * size - 4, 4) == b"tail"
        rbd.RBD().rename(ioctx, "myimage", "renamed")
        assert [i["name"] for i in rbd.RBD().list2(ioctx)] == ["renamed"]
        rbd.RBD().remove(ioctx, "renamed")
        assert rbd.RBD().list(ioctx) == []


def test_striping_as_python_rbd_asks_for_it(data: Path) -> None:
    with rados.Rados(conffile=str(data)) as cluster, cluster.open_ioctx("rbd") as ioctx:
        rbd.RBD().create(ioctx, "striped", 8 << 20, order=20, stripe_unit=64 << 10,
                         stripe_count=4)
        with rbd.Image(ioctx, "striped") as image:
            assert (image.stripe_unit(), image.stripe_count()) == (64 << 10, 4)
            assert image.features() & rbd.RBD_FEATURE_STRIPINGV2
            blob = bytes(range(256)) * 1024  # 256 KiB: across all four objects of a set
            image.write(blob, 100)
            assert image.read(100, len(blob)) == blob
        rbd.RBD().remove(ioctx, "striped")


def test_import_rbdpy_stays_cheap() -> None:
    """The bindings' names load on first use; their exceptions need no cluster code."""
    r = subprocess.run([sys.executable, "-c", "import sys, rbdpy; rbdpy.ImageNotFound; "
                        "assert 'trio' not in sys.modules; rbdpy.Image; "
                        "assert 'trio' in sys.modules"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def _raises(exc: type, err: int, fn, *args, **kw) -> BaseException:
    """``fn(*args, **kw)`` raises ``exc`` carrying ``err``, an RbdpyError (so an OSError)."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert info.value.errno == err, info.value
    assert isinstance(info.value, RbdpyError) and isinstance(info.value, OSError)
    return info.value


def test_errors_are_python_rbds_classes_with_their_errno(data: Path) -> None:
    _raises(rados.ObjectNotFound, errno.ENOENT, rados.Rados, conffile=str(data / "nope"))
    cluster = rados.Rados(conffile=str(data))
    _raises(rados.RadosStateError, errno.ENOTCONN, cluster.open_ioctx, "rbd")  # not yet
    with cluster:
        _raises(rados.ObjectNotFound, errno.ENOENT, cluster.open_ioctx, "nopool")
        assert cluster.pool_exists("rbd") and not cluster.pool_exists("nopool")
        ioctx = cluster.open_ioctx("rbd")
        r = rbd.RBD()
        r.create(ioctx, "e", 4 << 20, order=20)
        _raises(rbd.ImageExists, errno.EEXIST, r.create, ioctx, "e", 4 << 20)
        _raises(rbd.ImageNotFound, errno.ENOENT, rbd.Image, ioctx, "missing")
        _raises(rbd.ImageNotFound, errno.ENOENT, r.remove, ioctx, "missing")
        _raises(rbd.ImageNotFound, errno.ENOENT, rbd.Image, ioctx, "e", snapshot="s1")
        _raises(rbd.InvalidArgument, errno.EINVAL, r.create, ioctx, "bad", 1 << 20, order=40)
        _raises(rbd.InvalidArgument, errno.EINVAL, r.create, ioctx, "f", 1 << 20,
                features=rbd.RBD_FEATURE_JOURNALING)
        _raises(rbd.OperationNotSupported, errno.EOPNOTSUPP, r.create, ioctx, "f", 1 << 20,
                old_format=True)
        assert rbd.InvalidArgumentError is rbd.InvalidArgument and rados.TimedOut is rbd.Timeout

        with rbd.Image(ioctx, "e") as writer:
            # one writer per image: a second one fails at once, naming the holder
            busy = _raises(rbd.ImageBusy, errno.EBUSY, rbd.Image, ioctx, "e")
            assert "in use by client." in str(busy)
            _raises(rbd.ImageBusy, errno.EBUSY, r.remove, ioctx, "e")
            _raises(rbd.ImageBusy, errno.EBUSY, r.rename, ioctx, "e", "e2")
            with rbd.Image(ioctx, "e", read_only=True) as reader:  # readers are welcome
                _raises(rbd.ReadOnlyImage, errno.EROFS, reader.write, b"x", 0)
                _raises(rbd.ReadOnlyImage, errno.EROFS, reader.resize, 8 << 20)
            _raises(rbd.InvalidArgument, errno.EINVAL, writer.write, b"xx", (4 << 20) - 1)
            _raises(rbd.InvalidArgument, errno.EINVAL, writer.read, (4 << 20) + 1, 1)
            _raises(rbd.InvalidArgument, errno.EINVAL, writer.resize, 1 << 20,
                    allow_shrink=False)
            with pytest.raises(TypeError):
                writer.write("text", 0)
        _raises(rbd.InvalidArgument, errno.EINVAL, writer.read, 0, 1)  # closed
        r.remove(ioctx, "e")
        ioctx.close()
        _raises(rados.IoctxStateError, errno.EBADF, r.list, ioctx)
    _raises(rados.RadosStateError, errno.ENOTCONN, cluster.open_ioctx, "rbd")  # shut down
    assert isinstance(rbd.ImageNotFound("gone"), rbd.Error)
    assert rbd.ImageNotFound("gone").errno == errno.ENOENT


def test_close_and_shutdown_flush_and_give_the_lock_back(data: Path) -> None:
    """librbd's close flushes its cache: so do ours. An image left open is flushed by
    shutdown, and its lock given back (the next writer opens it at once)."""
    with rados.Rados(conffile=str(data)) as cluster, cluster.open_ioctx("rbd") as ioctx:
        rbd.RBD().create(ioctx, "durable", 8 << 20)
        image = rbd.Image(ioctx, "durable")
        image.write(b"closed" * 100, 1 << 20)  # write-back, no flush
        image.close()
        left_open = rbd.Image(ioctx, "durable")
        left_open.write(b"shutdown" * 100, 2 << 20)
    with rados.Rados(conffile=str(data)) as cluster, cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, "durable") as image:  # writable: the lock was given back
            assert image.read(1 << 20, 600) == b"closed" * 100
            assert image.read(2 << 20, 800) == b"shutdown" * 100
        rbd.RBD().remove(ioctx, "durable")


def test_rbdpys_own_api_keeps_working_beside_it(data: Path) -> None:
    """``rbdpy.connect`` / ``rbdpy.open_image`` are unchanged, and an Ioctx's connection
    is what they take."""
    with rbdpy.connect(str(data)) as c:
        rbdapi.create_image(c, "own", 4 << 20)
        img = rbdpy.open_image(c, "own")
        img.write(0, b"mine")
        img.flush()
        img.close()
    with rados.Rados(conffile=str(data)) as cluster, cluster.open_ioctx("rbd") as ioctx:
        assert rbdpy.open_image(ioctx.cluster, "own", read_only=True).pread(0, 4) == b"mine"
        with rbd.Image(ioctx, "own") as image:
            assert image.read(0, 4) == b"mine"
        rbd.RBD().remove(ioctx, "own")


def test_connect_with_the_osds_down_times_out(tmp_path: Path) -> None:
    d = tmp_path / "down"
    cli(d, "cluster", "up")
    cli(d, "cluster", "down")
    cluster = rados.Rados(conffile=str(d))
    _raises(rados.TimedOut, errno.ETIMEDOUT, cluster.connect, timeout=1)
    assert cluster.state == "configuring"
    cluster.shutdown()
