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
