"""rbdpy.client.rados: the blocking API the nbdkit plugin uses, against a real OSD process."""

from __future__ import annotations

import errno
import random
import signal
import threading
from pathlib import Path

import pytest

from rbdpy.client.objecter import OSDError
from rbdpy.client.rados import Rados
from rbdpy.config import ClusterConfig
from rbdpy.rbd import api as rbdapi
from rbdpy.testing import single_osd_map


def _rados(port: int) -> Rados:
    return Rados(ClusterConfig(Path("unused.toml"), single_osd_map(port), {}), pool="rbd")


def _with_image(osd_process, size: int) -> tuple:
    """A started OSD and a client on it with a new image "img" (order 20) opened."""
    osd = osd_process()
    osd.start()
    r = _rados(osd.port)
    rbdapi.create_image(r, "img", size, order=20)
    return osd, r, rbdapi.open_image(r, "img")


def _after_kill9(osd, length: int) -> bytes:
    """kill -9 the OSD, start it again and read the image's first ``length`` bytes."""
    osd.kill9()
    osd.start()
    r = _rados(osd.port)
    try:
        return rbdapi.open_image(r, "img", read_only=True).pread(0, length)
    finally:
        r.close()


def test_posted_small_writes_are_read_back_and_survive_kill9(osd_process) -> None:
    """Small write-back writes are *posted* (the writer returns before the cluster thread
    sees them): reads made afterwards, from any thread, still see them, and after flush
    they survive kill -9 of the OSD."""
    osd, r, img = _with_image(osd_process, 8 << 20)
    try:
        img.write(0, b"\0" * 4096)  # sets the map bit of object 0 (not posted)
        want = bytearray(8 << 20)
        want[0:4096] = bytes(4096)
        lock = threading.Lock()
        errors: list[str] = []

        def writer(seed: int) -> None:
            rnd = random.Random(seed)
            for i in range(200):
                off = rnd.randrange(0, (1 << 20) - 8192)  # object 0 only: postable
                data = rnd.randbytes(rnd.randrange(1, 8192))
                with lock:  # the model's order is the order writes returned
                    img.write(off, data)
                    want[off:off + len(data)] = data
                    if img.pread(off, len(data)) != data:  # read right after the post
                        errors.append(f"writer {seed} write {i} at {off}: read differs")
                        return

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert img.image.posted_writes > 400  # most went through post_write
        assert img.pread(0, 1 << 20) == want[:1 << 20]
        img.flush()
    finally:
        r.close()
    assert _after_kill9(osd, 8 << 20) == want


def test_close_returns_when_the_osd_is_gone(osd_process) -> None:
    """Closing releases the image's lock, best effort: with the OSD killed it must still
    return (the next writer breaks the lock), not wait for an answer forever."""
    osd, r, img = _with_image(osd_process, 1 << 20)
    img.write(0, b"x", fua=True)
    osd.kill9()
    t = threading.Thread(target=r.close)
    t.start()
    t.join(60)
    assert not t.is_alive()


def test_a_bounded_flush_gives_up_while_the_osd_is_stopped_and_succeeds_after(
        osd_process) -> None:
    """nbdkit's exit flush is bounded (a cluster gone for good must not hang it): with the
    OSD stopped the flush fails with ETIMEDOUT, keeping the writes, which a later flush
    makes durable."""
    osd, r, img = _with_image(osd_process, 1 << 20)
    try:
        img.write(0, b"y" * 5000, fua=True)
        osd.proc.send_signal(signal.SIGSTOP)
        try:
            img.write(100, b"late")  # write-back: returns, its commit cannot come
            with pytest.raises(OSDError) as e:
                img.flush(timeout=1.0)
            assert e.value.errno == errno.ETIMEDOUT
        finally:
            osd.proc.send_signal(signal.SIGCONT)
        img.flush(timeout=60)
    finally:
        r.close()
    assert _after_kill9(osd, 5000) == b"y" * 100 + b"late" + b"y" * 4896
