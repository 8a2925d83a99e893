"""AioSync: fdatasync through Linux AIO, awaited on the trio loop, against real files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from rbdpy.osd.aiosync import AioSync


@pytest.fixture
def aio():
    a = AioSync.open()
    if a is None:  # this is what the OSD checks too: it then syncs in a thread
        pytest.skip("no Linux AIO on this machine")
    yield a
    a.close()


async def test_many_syncs_at_once_all_complete(aio: AioSync, tmp_path: Path) -> None:
    fds = []
    for i in range(40):  # more than one task reaps for all, and the reaping is handed on
        fd = os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT)
        os.pwrite(fd, os.urandom(64 << 10), 0)
        fds.append(fd)
    done: list[int] = []

    async def one(fd: int) -> None:
        await aio.fdatasync(fd)
        done.append(fd)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for fd in fds:
                n.start_soon(one, fd)
    assert sorted(done) == sorted(fds)
    for fd in fds:
        os.close(fd)


async def test_errors_are_those_of_fdatasync(aio: AioSync, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    with pytest.raises(OSError) as ei:
        await aio.fdatasync(fd)  # closed
    assert ei.value.errno == errno.EBADF
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as ei:
            os.fdatasync(r)
        want = ei.value.errno
        with pytest.raises(OSError) as ei:
            await aio.fdatasync(r)  # a pipe cannot be synced
        assert ei.value.errno == want
    finally:
        os.close(r)
        os.close(w)


async def test_a_cancelled_wait_leaves_the_others_working(aio: AioSync, tmp_path: Path
                                                         ) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        with trio.CancelScope() as scope:
            scope.cancel()
            await aio.fdatasync(fd)  # submitted, then the wait is cancelled at once
        for _ in range(3):
            with trio.fail_after(30):
                await aio.fdatasync(fd)
    finally:
        os.close(fd)
