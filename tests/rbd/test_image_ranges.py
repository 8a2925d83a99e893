"""The Image API's range checks (``Image._check``): a request not inside ``[0, size]`` is
refused whole with ``ImageError`` EINVAL before anything is sent, so nothing is read into the
caller's buffer and nothing is written; a zero-length request inside the image (its end
included) is a no-op.

These checks guard every caller of the Python API and the CLI. NBD clients never reach them
with a bad range: nbdkit refuses those before calling the plugin (tests/nbd/test_nbd.py).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest

from rbdpy.rbd.image import Image, ImageError
from rbdpy.testing import new_image

SIZE = 4 << 20  # four 1 MiB objects
ORDER = 20
TAIL = 64 << 10  # the image's last bytes, written before the bad requests

# (offset, length) outside the image: straddling its end, just past it, far past it, from a
# negative offset, and a sum that wraps to a small number in 64-bit arithmetic (an NBD
# server in C must not accept it; Python's ints do not wrap, the check must not either)
BAD = [
    (SIZE - 512, 4096),
    (SIZE, 1),
    (SIZE + (1 << 30), 512),
    (-512, 1024),
    (-1, 1),
    ((1 << 64) - 512, 4096),
    ((1 << 63) - 1, 2),
]


def _refused(fn: Callable[..., object], *args: object) -> None:
    with pytest.raises(ImageError) as e:
        fn(*args)
    assert e.value.errno == errno.EINVAL


async def _arefused(fn: Callable[..., Awaitable[object]], *args: object, **kw: object) -> None:
    with pytest.raises(ImageError) as e:
        await fn(*args, **kw)
    assert e.value.errno == errno.EINVAL


def _never(err: BaseException | None) -> None:
    raise AssertionError(f"a refused request completed ({err!r})")


async def _contents(img: Image) -> bytearray:
    buf = bytearray(SIZE)
    await img.read(0, memoryview(buf))
    return buf


async def test_out_of_range_requests_are_einval_and_change_nothing(osd_process) -> None:
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, SIZE, ORDER) as (obj, img):
        want = bytearray(SIZE)
        want[:4096] = b"\x11" * 4096
        want[SIZE - TAIL:] = b"\x5a" * TAIL
        await img.write(0, memoryview(want[:4096]), fua=True)
        await img.write(SIZE - TAIL, memoryview(want[SIZE - TAIL:]), fua=True)
        objmap = img.objmap.copy()
        tid = obj.last_tid

        for off, n in BAD:
            buf = bytearray(b"\xee" * n)
            await _arefused(img.read, off, memoryview(buf))
            _refused(img.start_read, off, memoryview(buf), _never)
            assert buf == b"\xee" * n  # not a byte landed in the caller's buffer
            data = memoryview(b"\x77" * n)
            for fua in (False, True):  # write-back and FUA take different paths
                await _arefused(img.write, off, data, fua=fua)
                _refused(img.start_write, off, data, fua, _never)
            _refused(img.postable, off, n)
            await _arefused(img.discard, off, n)
            await _arefused(img.write_zeroes, off, n, fua=True)
            _refused(img.extents, off, n)
        # a negative length, even one that brings the end back inside the image
        for off, n in [(0, -1), (SIZE, -4096), (SIZE - 4096, -1)]:
            await _arefused(img.discard, off, n)
            await _arefused(img.write_zeroes, off, n)
            _refused(img.extents, off, n)

        assert obj.last_tid == tid  # no request of any kind went out
        assert (img.objmap == objmap).all()
        await img.flush()
        assert await _contents(img) == want


async def test_zero_length_inside_is_a_no_op_and_past_the_end_is_einval(osd_process) -> None:
    osd = osd_process()
    osd.start()
    async with new_image(osd.port, SIZE, ORDER) as (obj, img):
        await img.write(SIZE - 4096, memoryview(b"\x5a" * 4096), fua=True)
        tid = obj.last_tid
        empty = memoryview(bytearray())
        for off in (0, SIZE // 2, SIZE):  # the end itself is inside: [SIZE, SIZE) is empty
            await img.read(off, empty)
            assert not img.start_read(off, empty, _never)  # nothing to start
            await img.write(off, empty)
            await img.write(off, empty, fua=True)
            await img.discard(off, 0)
            await img.write_zeroes(off, 0, fua=True)
            assert img.extents(off, 0) == []
        assert obj.last_tid == tid
        for off in (SIZE + 1, -1):
            await _arefused(img.read, off, empty)
            await _arefused(img.write, off, empty)
            await _arefused(img.discard, off, 0)
        assert obj.last_tid == tid
        tail = bytearray(4096)
        await img.read(SIZE - 4096, memoryview(tail))
        assert tail == b"\x5a" * 4096
