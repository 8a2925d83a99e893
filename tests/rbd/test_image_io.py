"""Image reads land in the caller's buffer; what an object does not hold reads as zeros."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio

from rbdpy.rbd import image as rbdimage
from rbdpy.testing import new_image


@asynccontextmanager
async def fresh_image(osd_process, size: int, order: int):
    """A new image on a fresh one-OSD cluster, with the objecter driving it (60 s bound)."""
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, size, order) as (obj, img):
        yield obj, img


async def test_short_object_and_holes_read_as_zeros_in_a_dirty_buffer(osd_process) -> None:
    async with fresh_image(osd_process, 8 << 20, order=20) as (obj, img):
        await img.write(5000, memoryview(b"x" * 100), fua=True)  # object 0 ends at 5100
        buf = bytearray(b"\xff" * (3 << 20))  # objects 0 (short), 1 and 2 (holes)
        await img.read(0, memoryview(buf))
        want = bytearray(3 << 20)
        want[5000:5100] = b"x" * 100
        assert buf == want
        # a single-object read that lands in place, then zero-fills past the object's end
        one = bytearray(b"\xff" * 8192)
        await img.read(4096, memoryview(one))
        assert one == want[4096:4096 + 8192]


async def test_large_writes_recycle_their_copies_without_mixing_data(osd_process) -> None:
    chunk = 192 << 10
    async with fresh_image(osd_process, 64 << 20, order=22) as (obj, img):
        want = bytearray(64 << 20)
        sem = trio.Semaphore(16)

        async def one(i: int, off: int) -> None:
            buf = bytearray(bytes([i % 251]) * chunk)  # the caller's, changed on return
            async with sem:
                await img.write(off, memoryview(buf))
            buf[:] = b"\xee" * chunk

        async with trio.open_nursery() as n:  # 16 in flight: copies queued, unsent, unacked
            for i in range(200):
                off = (i * 7 % 300) * chunk  # each offset written once
                want[off:off + chunk] = bytes([i % 251]) * chunk
                n.start_soon(one, i, off)
        await img.flush()
        got = bytearray(64 << 20)
        await img.read(0, memoryview(got))
        assert got == want
        assert img._tx_pool.reused > 0  # the copies did go round
        assert img.copied_bytes == 200 * chunk


async def test_callback_path_reads_and_writes_like_the_coroutines(osd_process) -> None:
    """start_read/start_write (the NBD plugin's path) against the same OSD: holes answer at
    once with zeros, ranges across objects and first writes to an object are declined (the
    coroutine path handles them), FUA completes only once durable, bad ranges raise."""
    async with fresh_image(osd_process, 4 << 20, order=20) as (obj, img):
        results: list = []
        done = results.append

        hole = bytearray(b"\xff" * 4096)
        tid = obj.last_tid
        assert img.start_read(8192, memoryview(hole), done)
        assert results == [None] and hole == bytes(4096)  # completed inside the call
        assert obj.last_tid == tid  # no request: the object map says it is a hole

        across = memoryview(bytearray(8192))
        assert not img.start_read((1 << 20) - 4096, across, done)  # two objects
        assert not img.start_write(0, memoryview(b"a" * 10), False, done)  # map bit unset
        assert obj.last_tid == tid and len(results) == 1

        await img.write(0, memoryview(b"a" * 10))  # sets the bit, the slow way
        data = bytearray(b"b" * 5000)
        fin = trio.Event()
        assert img.start_write(100, memoryview(data), False, lambda e: (done(e), fin.set()))
        data[:] = b"z" * 5000  # the caller reuses its buffer at once: a copy was sent
        await fin.wait()
        fin = trio.Event()
        fua_seen: list[int] = []

        def fua_done(e: BaseException | None) -> None:
            fua_seen.append(len(obj.uncommitted))
            done(e)
            fin.set()

        assert img.start_write(9000, memoryview(b"c" * 100), True, fua_done)
        await fin.wait()
        assert fua_seen == [0]  # every write committed when the FUA one completed

        got = bytearray(b"\xff" * 12000)
        fin = trio.Event()
        assert img.start_read(0, memoryview(got), lambda e: (done(e), fin.set()))
        await fin.wait()
        want = bytearray(12000)
        want[0:10] = b"a" * 10
        want[100:5100] = b"b" * 5000
        want[9000:9100] = b"c" * 100
        assert got == want
        assert results == [None] * 4

        try:
            img.start_read(4 << 20, memoryview(bytearray(1)), done)
        except rbdimage.ImageError as e:
            assert e.errno == 22
        else:
            raise AssertionError("out-of-range read was started")
