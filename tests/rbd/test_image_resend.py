"""A write that returned before it was durable must be resent with *its* data.

NBD (nbdkit) frees the write buffer as soon as ``pwrite`` returns, and a non-FUA write
returns at the OSD's ack. If the object's primary then changes before the commit, the
objecter resends the write to the new primary: what it sends must be the bytes the caller
wrote, not whatever the caller's buffer holds by then. Two real OSD processes; the commit is
held back (``RBDPY_OSD_COMMIT_DELAY``) so the window is wide open, deterministically.
"""

from __future__ import annotations

import pytest
import trio

from rbdpy.client.objecter import Objecter
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.msgr.messenger import Messenger
from rbdpy.rbd import image as rbdimage

POOL = 1


def _map(epoch: int, ports: list[int], out: set[int] = frozenset()) -> OSDMap:
    # out, not down, moves a PG (a down OSD leaves a hole, as in Ceph: rbdpy.maps.osdmap)
    osds = {i: OSDInfo(i, "127.0.0.1", p, in_=i not in out) for i, p in enumerate(ports)}
    return OSDMap(epoch=epoch, osds=osds, pools={POOL: PoolInfo(POOL, "rbd")})


@pytest.mark.parametrize("size", [8192, 256 << 10])  # a plain copy; a pooled copy
async def test_primary_change_before_commit_resends_the_written_bytes(osd_process, monkeypatch,
                                                                      size: int
                                                                      ) -> None:
    monkeypatch.setenv("RBDPY_OSD_COMMIT_DELAY", "1.5")
    procs = [osd_process("osd0", 0), osd_process("osd1", 1)]
    for p in procs:
        p.start()
    ports = [p.port for p in procs]
    obj = Objecter(_map(1, ports))
    async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
        obj.attach(m)
        with trio.fail_after(60):
            await rbdimage.create_image(obj, POOL, "img", 64 << 20, order=20)
            img = await rbdimage.Image.open(obj, POOL, "img")
            # an object whose primary is osd.0 now and osd.1 once osd.0 is marked out
            objno = next(n for n in range(64) if obj.osdmap.object_target(
                POOL, rbdimage.data_oid(img.id, n))[1][0] == 0)
            off = objno << 20
            buf = bytearray(b"A" * size)
            await img.write(off + 4096, memoryview(buf))  # returns at the ack: not durable
            assert obj.uncommitted, "the commit delay did not hold the write back"
            buf[:] = b"B" * len(buf)  # the caller reuses its buffer, as nbdkit does
            for k in range(1, 4):  # more writes meanwhile: none may recycle the first's copy
                await img.write((60 + k) << 20, memoryview(bytearray(b"C" * size)))
            obj.update_map(_map(2, ports, out={0}))  # primary moves: resend to osd.1
            await img.flush()
            assert not obj.uncommitted
            got = bytearray(len(buf))
            await img.read(off + 4096, memoryview(got))
            assert got == b"A" * len(buf)
            assert img.copied_bytes == 4 * len(buf)  # one justified copy per write
        m.shutdown()
