"""Image reads land in the caller's buffer; what an object does not hold reads as zeros."""

from __future__ import annotations

import trio

from rbdpy.client.objecter import Objecter
from rbdpy.msgr.messenger import Messenger
from rbdpy.rbd import image as rbdimage
from rbdpy.testing import POOL, single_osd_map


async def test_short_object_and_holes_read_as_zeros_in_a_dirty_buffer(osd_process) -> None:  # noqa: ANN001
    osd = osd_process()
    osd.start()
    obj = Objecter(single_osd_map(osd.port))
    async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
        obj.attach(m)
        with trio.fail_after(60):
            await rbdimage.create_image(obj, POOL, "img", 8 << 20, order=20)
            img = await rbdimage.Image.open(obj, POOL, "img")
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
        m.shutdown()


async def test_large_writes_recycle_their_copies_without_mixing_data(osd_process) -> None:  # noqa: ANN001
    osd = osd_process()
    osd.start()
    obj = Objecter(single_osd_map(osd.port))
    chunk = 192 << 10
    async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
        obj.attach(m)
        with trio.fail_after(60):
            await rbdimage.create_image(obj, POOL, "img", 64 << 20, order=22)
            img = await rbdimage.Image.open(obj, POOL, "img")
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
        m.shutdown()
