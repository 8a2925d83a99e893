"""Object class methods: the object map's bit updates, against a real OSD process, and the
bit arithmetic they use against numpy's own bit unpacking."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.osd.classes import MAX_OBJMAP_OBJECTS, set_bits
from rbdpy.proto import ops as O
from rbdpy.testing import POOL, connected


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.data(), st.booleans())
def test_set_bits_sets_exactly_the_range(raw: bytes, data: st.DataObject, value: bool) -> None:
    nbits = 8 * len(raw)
    start = data.draw(st.integers(0, nbits))
    end = data.draw(st.integers(start, nbits))
    want = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
    want[start:end] = value
    got = np.frombuffer(raw, np.uint8).copy()
    set_bits(got, start, end, value)
    assert got.tobytes() == np.packbits(want, bitorder="little").tobytes()


async def objmap_set(obj: Objecter, oid: str, **args: object) -> None:
    await obj.submit(POOL, oid, [O.Call("rbd", "objmap_set", json.dumps(args).encode())],
                     write=True)


async def bitmap(obj: Objecter, oid: str, nbits: int) -> np.ndarray:
    r = await obj.submit(POOL, oid, [O.Read(0, (nbits + 7) // 8)], write=False)
    raw = b"".join(bytes(s) for s in r.results[0].out).ljust((nbits + 7) // 8, b"\0")
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:nbits]


async def test_objmap_set_stays_inside_the_images_objects(osd) -> None:
    """The range must lie inside the image's object count (which the image layer states
    from the header) and inside what a map object can hold; the bits inside are set exactly.
    The old method took any range up to 2**30 bits and set them one by one in Python."""
    pid = osd.proc.pid
    async with connected(osd.port, 60) as obj:
        for bad in ({"start": 5, "end": 11, "value": 1, "objects": 10},
                    {"start": 11, "end": 11, "value": 1, "objects": 10},
                    {"start": 0, "end": MAX_OBJMAP_OBJECTS + 1, "value": 1},
                    {"start": 7, "end": 3, "value": 1, "objects": 10},
                    {"start": 0, "end": 3, "value": 2, "objects": 10},
                    {"start": 0, "end": 3, "value": 1, "objects": -1}):
            with pytest.raises(OSDError) as ei:
                await objmap_set(obj, "map", **bad)
            assert ei.value.errno == errno.EINVAL, bad
        with pytest.raises(OSDError) as ei:
            await obj.submit(POOL, "map", [O.Stat()], write=False)
        assert ei.value.errno == errno.ENOENT  # none of them wrote anything
        model = np.zeros(100, dtype=np.uint8)
        for start, end, value in ((3, 4, 1), (0, 100, 1), (9, 17, 0), (50, 99, 0),
                                  (98, 100, 0), (60, 61, 1), (10, 10, 1)):
            await objmap_set(obj, "map", start=start, end=end, value=value, objects=100)
            model[start:end] = value
            assert (await bitmap(obj, "map", 100) == model).all(), (start, end, value)
        # a large image's whole map in one call (numpy: one memset, not a loop per bit)
        n = 1 << 24
        await objmap_set(obj, "big", start=1, end=n, value=True, objects=n)
        got = await bitmap(obj, "big", n)
        assert not got[0] and got[1:].all()
        await objmap_set(obj, "big", start=0, end=n - 3, value=False, objects=n)
        assert (await bitmap(obj, "big", n)).nonzero()[0].tolist() == [n - 3, n - 2, n - 1]
    assert osd.running and osd.proc.pid == pid


async def test_a_method_after_one_that_created_the_object_in_the_same_vector(osd) -> None:
    """A class that created the object earlier in the vector makes it exist for the next
    method, whose data reads then see an empty object (they used to stat the store and get
    ENOENT; found by tests/osd/test_cls_fuzz.py)."""
    lock = {"name": "m", "owner": "me", "cookie": "c"}
    async with connected(osd.port, 60) as obj:
        await obj.submit(POOL, "new", [
            O.Call("lock", "lock", json.dumps(lock).encode()),
            O.Call("rbd", "objmap_set", json.dumps({"start": 9, "end": 12, "value": 1,
                                                    "objects": 16}).encode()),
            O.Call("rbd", "allocated", b"")], write=True)
        assert (await bitmap(obj, "new", 16)).nonzero()[0].tolist() == [9, 10, 11]
