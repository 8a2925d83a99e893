"""Write-back: non-FUA writes return once sent, later reads still see them, the dirty bytes
stay bounded, and a write that fails afterwards is reported by the next flush (once)."""

from __future__ import annotations

import errno
from contextlib import asynccontextmanager

import pytest
import trio

from rbdpy.client.objecter import MAX_UNCOMMITTED_PER_OBJECT, OSDError
from rbdpy.rbd import image as rbdimage
from rbdpy.testing import POOL, new_image


@asynccontextmanager
async def image_on(osd, size: int, order: int, *, writeback: bool = True,
                   max_dirty: int = rbdimage.MAX_DIRTY):
    """A new image on the (started) OSD ``osd``, with a ``max_dirty`` of our choosing."""
    async with new_image(osd.port, size, order, writeback=writeback) as (obj, img):
        img.max_dirty = max_dirty
        yield obj, img


async def test_write_returns_before_the_ack_and_reads_see_it(osd_process) -> None:
    osd = osd_process()
    osd.start()
    async with image_on(osd, 8 << 20, order=20) as (obj, img):
        data = bytearray(b"a" * 8192)
        await img.write(4096, memoryview(data))  # first write of object 0: map bit, then send
        req = obj.inflight[obj.last_tid]
        assert not req.acked.is_set()  # returned before the OSD answered
        data[:] = b"z" * 8192  # the caller may reuse its buffer: a copy went out
        for i in range(20):  # overlapping rewrites, none waited for; the last one wins
            await img.write(4096 + 100 * i, memoryview(bytes([65 + i]) * 4096))
        assert img.dirty_bytes > 0
        got = bytearray(16384)
        await img.read(0, memoryview(got))  # ordered behind the writes at the OSD
        want = bytearray(16384)
        want[4096:4096 + 8192] = b"a" * 8192
        for i in range(20):
            want[4096 + 100 * i:8192 + 100 * i] = bytes([65 + i]) * 4096
        assert got == want
        await img.flush()
        assert img.dirty_bytes == 0 and not obj.uncommitted

    osd2 = osd_process("osd1")
    osd2.start()
    async with image_on(osd2, 8 << 20, order=20, writeback=False) as (obj, img):
        await img.write(0, memoryview(b"b" * 4096))
        await img.write(0, memoryview(b"c" * 4096))  # second write: map bit already set
        assert obj.inflight[obj.last_tid].acked.is_set()  # write-through waited for it
        assert img.dirty_bytes == 0


async def test_reads_queue_behind_writes_held_back_by_the_object_limit(
        osd_process, monkeypatch) -> None:
    """With commits held, writes past the per-object limit wait in the objecter; a read of
    that object must not overtake them (it would return stale bytes)."""
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "0.3")  # the OSD inherits it
    osd = osd_process()
    osd.start()
    async with image_on(osd, 4 << 20, order=20) as (obj, img):
        n = MAX_UNCOMMITTED_PER_OBJECT + 20
        for i in range(n):
            await img.write(0, memoryview(i.to_bytes(2, "little") * 2048))
        key = (POOL, rbdimage.data_oid(img.id, 0))
        assert len(obj._deferred.get(key, ())) > 0  # some writes are held back right now
        got = bytearray(4096)
        await img.read(0, memoryview(got))
        assert got == (n - 1).to_bytes(2, "little") * 2048
        await img.flush()


async def test_dirty_bytes_stay_bounded(osd_process, monkeypatch) -> None:
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "0.2")
    osd = osd_process()
    osd.start()
    async with image_on(osd, 16 << 20, order=20, max_dirty=256 << 10) as (obj, img):
        want = bytearray(16 << 20)
        peak = 0
        for i in range(16):
            off = (i * 5 % 64) * (256 << 10)
            chunk = bytes([i + 1]) * (96 << 10)
            await img.write(off, memoryview(chunk))
            want[off:off + len(chunk)] = chunk
            peak = max(peak, img.dirty_bytes)
            assert img.dirty_bytes <= 256 << 10
        assert peak > 96 << 10  # more than one write was out at once
        one = memoryview(b"\x07" * (1 << 20))  # larger than max_dirty: goes alone
        await img.write(8 << 20, one)
        want[8 << 20:9 << 20] = one
        await img.flush()
        got = bytearray(16 << 20)
        await img.read(0, memoryview(got))
        assert got == want


async def test_failed_write_back_is_reported_by_the_next_flush_once(osd_process) -> None:
    """A real full disk: the OSD's files may not grow past 6 MiB (RLIMIT_FSIZE, EFBIG), so a
    write-back write at 16 MiB into a 32 MiB object fails after the write returned."""
    osd = osd_process()
    osd.file_size_limit = 6 << 20
    osd.start()
    async with image_on(osd, 64 << 20, order=25) as (obj, img):
        await img.write(0, memoryview(b"k" * 4096))
        await img.flush()
        for settled in (False, True):
            await img.write(16 << 20, memoryview(b"x" * (256 << 10)))  # returns: sent only
            if settled:  # the OSD's refusal arrives before the flush (replies come in order)
                await img.read(0, memoryview(bytearray(4096)))
                assert not obj.uncommitted  # nothing left for flush to wait on
            with pytest.raises(OSDError) as ei:
                await img.flush()
            assert ei.value.errno == errno.ENOSPC
            await img.flush()  # reported once, like fsync after a failed writeback
        await img.write(8192, memoryview(b"m" * 4096))  # the OSD keeps serving
        await img.flush()
        got = bytearray(12288)
        await img.read(0, memoryview(got))
        assert got == b"k" * 4096 + bytes(4096) + b"m" * 4096
    assert osd.running


async def test_a_cancelled_flush_leaves_the_failure_for_the_next_one(osd_process, monkeypatch
                                                                      ) -> None:
    """A bounded flush that times out (nbdkit's exit flush) must not swallow a write-back
    failure it never got to report: the next flush raises it."""
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "1.0")  # commits come late
    osd = osd_process()
    osd.file_size_limit = 6 << 20
    osd.start()
    async with image_on(osd, 64 << 20, order=25) as (obj, img):
        await img.write(16 << 20, memoryview(b"x" * (256 << 10)))  # will fail: EFBIG
        await img.read(0, memoryview(bytearray(4096)))  # its refusal has arrived
        await img.write(0, memoryview(b"k" * 4096))  # fine, but its commit takes 1 s
        with trio.move_on_after(0.2) as scope:
            await img.flush()
        assert scope.cancelled_caught
        with pytest.raises(OSDError) as ei:
            await img.flush()
        assert ei.value.errno == errno.ENOSPC


async def test_a_write_across_objects_fails_with_the_osds_errno(osd_process) -> None:
    """One of the two objects a FUA write spans is on a full disk (the OSD's files may not
    pass 6 MiB): the caller gets that OSDError, ENOSPC, itself; not an ExceptionGroup of
    the concurrent object writes, which the NBD edge could not turn into an errno."""
    osd = osd_process()
    osd.file_size_limit = 6 << 20
    osd.start()
    obj_size = 32 << 20
    async with image_on(osd, 2 * obj_size, order=25) as (obj, img):
        half = 128 << 10  # into holes, whole blocks: the data goes first, and fails first
        for fua in (True, False):  # FUA, then write-back (the map bits are set then too)
            with pytest.raises(OSDError) as ei:
                await img.write(obj_size - half, memoryview(b"w" * 2 * half), fua=fua)
                await img.flush()
            assert ei.value.errno == errno.ENOSPC
        got = bytearray(2 * half)
        await img.read(obj_size - half, memoryview(got))
        assert got == bytes(half) + b"w" * half  # object 1's half landed; object 0 kept none
    assert osd.running
