"""Every object class method, fed hypothesis-made input through one real OSD process: each
reply is a success or a clean errno, the OSD never logs an unexpected failure, and it is the
same process at the end (0 crashes).

Input: random bytes, random JSON values, objects with the keys the methods read holding
values of every type, and a valid input of the method with some fields replaced or dropped
(so calls get past their first checks and build state: headers, locks, names, map bits);
some calls go to a new object, after a valid ``rbd.create`` in the same vector. Some
examples first overwrite, with a plain ``SetXattr``, the xattrs where the classes keep their
state: on those objects a class may answer EIO (state it cannot decode), on the others
never."""

from __future__ import annotations

import errno
import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.client.objecter import OSDError
from rbdpy.osd import classes
from rbdpy.proto import ops as O
from rbdpy.testing import POOL, connected

METHODS = list(classes.methods())
CLEAN = [f"o{i}" for i in range(4)]  # objects whose class state only classes write
DIRTY = [f"d{i}" for i in range(2)]  # objects whose class state a SetXattr may overwrite
STATE_ATTRS = ["lock.lock", "lock.l", classes.HEADER_ATTR, "name.img", "name."]
KEYS = ["name", "owner", "cookie", "type", "tag", "description", "id", "size", "order",
        "start", "end", "value", "objects", "snapshots", "parent", "features"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
plausible_values = (st.sampled_from(["lock", "l", "exclusive", "shared", "me", "c", "img",
                                     "abc", "", "\ud800", "x" * 300])
                    | st.integers(-2, 40) | st.sampled_from([12, 22, 25, 26, 1 << 28])
                    | st.booleans() | json_values)
plausible_args = st.dictionaries(st.sampled_from(KEYS), plausible_values, max_size=6)
raw_inputs = st.binary(max_size=64) | st.sampled_from(
    [b"", b"null", b"[1,2]", b"{", b"[" * 100_000, b'{"a": NaN}', b'"\\ud800"', b"1e999"])
VALID: dict[tuple[str, str], dict[str, object]] = {
    ("lock", "lock"): {"name": "lock", "owner": "me", "cookie": "c", "type": "exclusive",
                       "tag": "", "description": "d"},
    ("lock", "unlock"): {"name": "lock", "owner": "me", "cookie": "c"},
    ("lock", "renew"): {"name": "lock", "owner": "me", "cookie": "c", "description": "d2"},
    ("lock", "break_lock"): {"name": "lock", "owner": "me", "cookie": "c"},
    ("lock", "get_info"): {"name": "lock"},
    ("rbd", "create"): {"id": "abc", "name": "img", "size": 1 << 30, "order": 22},
    ("rbd", "set_header_fields"): {"size": 2 << 30},
    ("rbd", "dir_add"): {"name": "img", "id": "abc"},
    ("rbd", "dir_remove"): {"name": "img", "id": "abc"},
    ("rbd", "objmap_set"): {"start": 3, "end": 9, "value": 1, "objects": 256},
}


@st.composite
def near_valid(draw: st.DrawFn, method: tuple[str, str, bool]) -> bytes:
    """A valid input of ``method`` with some fields dropped or given other values."""
    args = dict(VALID.get(method[:2], {}))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        if key in args and draw(st.booleans()):
            del args[key]
        else:
            args[key] = draw(plausible_values)
    return json.dumps(args).encode()


def indata(method: tuple[str, str, bool]) -> st.SearchStrategy[bytes]:
    return (raw_inputs | json_values.map(lambda v: json.dumps(v).encode())
            | plausible_args.map(lambda v: json.dumps(v).encode()) | near_valid(method))
corruption = st.tuples(st.sampled_from(STATE_ATTRS),
                       st.binary(max_size=32) | json_values.map(lambda v: json.dumps(v).encode()))


async def test_no_class_input_crashes_the_osd_or_meets_a_bug(osd) -> None:
    pid = osd.proc.pid
    calls: dict[tuple[str, str], dict[str, int]] = {}
    fresh = [0]

    async with connected(osd.port, 120) as obj:
        async def submit(oid: str, ops: list[O.Op], write: bool) -> int:
            with trio.move_on_after(20):
                try:
                    await obj.submit(POOL, oid, ops, write=write)
                except OSDError as e:
                    return e.errno
                return 0
            raise AssertionError(f"no reply (OSD running: {osd.running}); its log ends:\n"
                                 f"{osd.log_text()[-1500:]}")

        @settings(max_examples=1000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), indata(m))),
               st.sampled_from(CLEAN + DIRTY), st.none() | corruption, st.booleans())
        def one(call: tuple[tuple[str, str, bool], bytes], oid: str,
                corrupt: tuple[str, bytes] | None, new_header: bool) -> None:
            (cls, name, write), data = call
            assert osd.running, f"the OSD died; its log ends:\n{osd.log_text()[-1500:]}"
            ops = [O.Call(cls, name, data)]
            if new_header:  # a fresh object with a valid header first, in the same vector
                fresh[0] += 1
                oid = f"h{fresh[0]}"
                ops.insert(0, O.Call("rbd", "create", json.dumps(VALID["rbd", "create"]
                                                                 ).encode()))
                write = True
            dirty = oid in DIRTY
            if dirty and corrupt is not None:
                err = trio.from_thread.run(submit, oid, [O.SetXattr(*corrupt)], True)
                assert err == 0, err
            err = trio.from_thread.run(submit, oid, ops, write)
            assert err != errno.EIO or dirty, (cls, name, data[:200], oid)
            seen = calls.setdefault((cls, name), {})
            seen[errno.errorcode.get(err, "ok")] = seen.get(errno.errorcode.get(err, "ok"),
                                                            0) + 1

        await trio.to_thread.run_sync(one)
        # the same process serves a good request after all that
        await obj.submit(POOL, "after", [O.Call("rbd", "dir_add", json.dumps(
            {"name": "n", "id": "i"}).encode())], write=True)
    assert osd.running and osd.proc.pid == pid and osd.starts == 1
    assert "failed unexpectedly" not in osd.log_text()
    assert set(calls) == {(c, m) for c, m, _w in METHODS}, "a method was never called"
    assert any("ok" in seen for seen in calls.values())
    print({f"{c}.{m}": seen for (c, m), seen in sorted(calls.items())})
