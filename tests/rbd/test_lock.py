"""The exclusive lock: one writer, readers that trust no cached map, dead holders broken."""

from __future__ import annotations

import errno
import json
import time
from dataclasses import replace

import pytest
import trio

from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.rbd import image as rbdimage
from rbdpy.rbd import lock as rlock
from rbdpy.testing import POOL, connected, new_image


def test_who_may_be_presumed_dead() -> None:
    now = 1000.0
    me = rlock.Here("here", "boot1", "pid:[1]", 7)
    h = rlock.Holder("client.1", "c", "here", 42, 77, now + 10, "boot1", "pid:[1]")

    def judge(h: rlock.Holder, pid_alive: bool = True, held_here: bool = False,
              here: rlock.Here = me) -> str:
        return rlock.assess(h, here, now=now, pid_alive=pid_alive, held_here=held_here)

    assert judge(h) == rlock.ALIVE  # its process runs (and its lease is valid)
    assert judge(h, pid_alive=False) == rlock.DEAD  # killed: known at once
    assert judge(replace(h, expires=now - 1)) == rlock.DEAD  # lease ran out
    assert judge(replace(h, boot="boot0"), pid_alive=True) == rlock.DEAD  # host rebooted
    # another host, or another container on this one: only its lease can tell
    assert judge(h, pid_alive=False, here=replace(me, host="there")) == rlock.UNKNOWN
    assert judge(replace(h, pidns="pid:[2]"), pid_alive=False) == rlock.UNKNOWN
    # this very process: dead unless one of its openers still keeps that cookie
    mine = replace(h, pid=7)
    assert judge(mine, held_here=True) == rlock.ALIVE
    assert judge(mine) == rlock.DEAD
    # a description nobody can read: unknown (and without a lease, never presumed dead)
    assert judge(rlock.Holder("client.1", "c"), pid_alive=False) == rlock.UNKNOWN


def test_pid_start_time_names_one_process() -> None:
    import os

    start = rlock._proc_start(os.getpid())
    assert start and rlock._pid_alive(os.getpid(), start)
    assert not rlock._pid_alive(os.getpid(), start + 1)  # a recycled pid
    assert not rlock._pid_alive(2**22 + 12345, 0)  # above pid_max: no such process


async def _read(img: rbdimage.Image, off: int, n: int) -> bytes:
    buf = bytearray(b"\xee" * n)
    await img.read(off, memoryview(buf))
    return bytes(buf)


async def _start_read(img: rbdimage.Image, off: int, n: int) -> bytes:
    buf = bytearray(b"\xee" * n)
    done = trio.Event()
    errs: list = []

    def fin(err: BaseException | None) -> None:
        errs.append(err)
        done.set()

    assert img.start_read(off, memoryview(buf), fin)
    await done.wait()
    assert errs == [None]
    return bytes(buf)


async def test_one_writer_and_readers_see_what_it_allocates_after_they_opened(
        osd_process) -> None:
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, 16 << 20, order=20) as (_obj, img), \
            connected(osd.port) as other:
        assert img.trust_map and img.lock is not None and img.lock.held
        with pytest.raises(rbdimage.ImageError) as e:
            await rbdimage.Image.open(other, POOL, "img")
        assert e.value.errno == errno.EBUSY
        assert f"in use by client.{_obj.me.num} on " in str(e.value)
        with pytest.raises(rbdimage.ImageError) as e:
            await rbdimage.remove_image(other, POOL, "img")
        assert e.value.errno == errno.EBUSY

        ro = await rbdimage.Image.open(other, POOL, "img", read_only=True)
        assert not ro.trust_map and ro.lock is None
        # objects 5 and 9 are allocated after the reader loaded its map (holes in it)
        await img.write(5 << 20, memoryview(b"q" * 1000), fua=True)
        await img.write((9 << 20) + 7, memoryview(b"w" * 3000))  # write-back, then flush
        await img.flush()
        assert not ro.objmap[5] and not ro.objmap[9]
        assert await _read(ro, 5 << 20, 1000) == b"q" * 1000
        assert await _start_read(ro, (9 << 20) + 7, 3000) == b"w" * 3000
        assert await _read(ro, 6 << 20, 100) == bytes(100)  # a real hole: ENOENT -> zeros
        await ro.refresh_map()
        assert ro.extents(4 << 20, 2 << 20) == [(4 << 20, 1 << 20, False),
                                                (5 << 20, 1 << 20, True)]
        assert await ro.du() == 1000 + 3000 + 7  # refreshed too: both objects counted
        await img.close()
        assert not img.lock.held
        img2 = await rbdimage.Image.open(other, POOL, "img")  # released: the next writer
        assert img2.lock.held and img2.objmap[5] and img2.objmap[9]


async def test_an_abandoned_opener_in_this_process_does_not_lock_the_image_forever(
        osd_process) -> None:
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, 4 << 20, order=20) as (_obj, img):
        await img.write(0, memoryview(b"a" * 10), fua=True)
    # its client shut down without closing the image: the lock is still on the header
    async with connected(osd.port) as obj:
        img2 = await rbdimage.Image.open(obj, POOL, "img")
        assert img2.lock.held and await _read(img2, 0, 10) == b"a" * 10


async def test_a_holder_on_another_host_is_waited_out_unless_it_renews(
        osd_process) -> None:
    """Liveness on another host cannot be checked: the opener waits for the holder's lease
    and takes (fences, breaks) the lock only if it ran out unrenewed; a holder that renews
    meanwhile is alive, and the open fails with EBUSY."""
    osd = osd_process()
    osd.start()
    async with connected(osd.port) as obj, connected(osd.port) as remote:
        await rbdimage.create_image(obj, POOL, "img", 4 << 20, order=20)
        header = rbdimage.header_oid(await rbdimage.lookup_id(obj, POOL, "img"))
        who = {"owner": f"client.{remote.me.num}", "cookie": "k"}

        def desc(lease: float) -> str:
            return json.dumps({"host": "elsewhere", "pid": 1, "expires": time.time() + lease})

        await remote.submit(POOL, header, [rlock.lock_call(
            "lock", **who, type="exclusive", description=desc(2.0))], write=True)
        renewing = True

        async def renew() -> None:
            while renewing:
                await trio.sleep(0.2)
                await remote.submit(POOL, header, [rlock.lock_call(
                    "renew", **who, description=desc(2.0))], write=True)

        async with trio.open_nursery() as n:
            n.start_soon(renew)
            with pytest.raises(rbdimage.ImageError) as e:
                await rbdimage.Image.open(obj, POOL, "img")
            assert e.value.errno == errno.EBUSY
            assert f"client.{remote.me.num} on elsewhere pid 1" in str(e.value)
            renewing = False
        img = await rbdimage.Image.open(obj, POOL, "img")  # waits ~2 s, then takes it
        assert img.lock.held
        r = await obj.submit(POOL, header, [rlock.lock_call("get_info")], write=False)
        assert list(json.loads(r.results[0].out)["holders"]) == [
            f"{img.lock.owner}/{img.lock.cookie}"]
        # and the one it took over from was fenced first
        with pytest.raises(rbdimage.OSDError) as e:
            await remote.submit(POOL, header, [rlock.lock_call("get_info")], write=False)
        assert e.value.errno == errno.ESHUTDOWN


async def test_a_holder_whose_lock_was_broken_refuses_writes(osd_process) -> None:
    osd = osd_process()
    osd.start()
    # a 0.6 s lease, renewed every 0.2 s
    async with new_image(osd.port, 4 << 20, order=20, lease=0.6) as (obj, img):
        await img.write(0, memoryview(b"before"), fua=True)
        lk = img.lock
        await obj.submit(img.pool, rbdimage.header_oid(img.id), [rlock.lock_call(
            "break_lock", owner=lk.owner, cookie=lk.cookie)], write=True)  # `lock break`
        with trio.fail_after(5):
            while not lk.lost:
                await trio.sleep(0.05)
        with pytest.raises(rbdimage.ImageError) as e:
            await img.write(0, memoryview(b"after"))
        assert e.value.errno == errno.ESHUTDOWN
        assert await _read(img, 0, 6) == b"before"


async def test_a_stalled_holder_is_fenced_before_its_lock_is_taken(osd_process) -> None:
    """A holder presumed dead may only be stalled. Its lock is taken only after every OSD
    fenced its client, so its late writes fail (ESHUTDOWN) instead of landing behind the
    new holder's back, even before it notices anything itself."""
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, 4 << 20, order=20) as (_obj, img), \
            connected(osd.port) as other:
        await img.write(0, memoryview(b"old"), fua=True)
        while img.lock._scope is None:
            await trio.sleep(0.01)
        img.lock._scope.cancel()  # it stalls: no more renewals, so it reads as dead
        img2 = await rbdimage.Image.open(other, POOL, "img")
        assert img2.lock.held and not img.lock.lost  # the stalled one has not noticed
        with pytest.raises(rbdimage.OSDError) as e:
            await img.write(0, memoryview(b"late"), fua=True)
        assert e.value.errno == errno.ESHUTDOWN
        await img.write(0, memoryview(b"LATE"))  # write-back: the failure comes at flush
        with pytest.raises(rbdimage.OSDError) as e:
            await img.flush()
        assert e.value.errno == errno.ESHUTDOWN and img.lock.lost
        assert await _read(img2, 0, 4) == b"old\0"
        await img2.write(0, memoryview(b"new"), fua=True)
        assert await _read(img2, 0, 3) == b"new"


async def test_a_lock_is_not_taken_while_an_osd_cannot_fence_its_holder(
        osd_process, monkeypatch) -> None:
    """Every OSD must refuse the old holder before its lock changes hands: with one OSD
    down, taking over fails with a clear error (the lock stays), and works once it is up."""
    monkeypatch.setattr(rlock, "FENCE_TIMEOUT", 1.0)
    osds = [osd_process("a", 0), osd_process("b", 1)]
    for o in osds:
        o.start()
    osdmap = OSDMap(osds={i: OSDInfo(i, "127.0.0.1", o.port) for i, o in enumerate(osds)},
                    pools={POOL: PoolInfo(POOL, "rbd")})

    def primary(oid: str) -> int:
        return osdmap.object_target(POOL, oid)[1][0]

    async with connected(osdmap) as obj:
        # an image whose directory entry, header and object map share one OSD: the other
        # can go down and opening still reaches everything but the fence
        for i in range(100):
            await rbdimage.create_image(obj, POOL, f"img{i}", 4 << 20, order=20)
            image_id = await rbdimage.lookup_id(obj, POOL, f"img{i}")
            home = {primary(o) for o in (rbdimage.DIRECTORY, rbdimage.header_oid(image_id),
                                         rbdimage.objmap_oid(image_id))}
            if len(home) == 1:
                break
        name = f"img{i}"
        img = await rbdimage.Image.open(obj, POOL, name)  # abandoned below: presumed dead
        header = rbdimage.header_oid(img.id)
    other = osds[1 - home.pop()]
    other.kill9()
    async with connected(osdmap) as obj:
        with pytest.raises(rbdimage.ImageError) as e:
            await rbdimage.Image.open(obj, POOL, name)
        assert e.value.errno == errno.EBUSY and "not every OSD answered" in str(e.value)
        assert (await rlock.holder_of(obj, POOL, header)).cookie == img.lock.cookie
        other.start()
        img2 = await rbdimage.Image.open(obj, POOL, name)
        assert img2.lock.held
