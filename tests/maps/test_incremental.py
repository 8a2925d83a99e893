"""OSDMap.apply and the encodings of maps and incrementals (rbdpy.maps.incremental,
rbdpy.maps.encoding): random valid histories (tests/maps/gen.py) applied one by one agree at
every epoch with what the encodings carry, a subscriber catching up from any older epoch
reaches the same map, and every invalid change is refused with a typed error."""

from __future__ import annotations

import errno
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.maps.encoding import (
    decode_incremental,
    decode_map,
    encode_incremental,
    encode_map,
)
from rbdpy.maps.errors import MapError
from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from tests.maps.gen import gen_history

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 30))
def test_apply_one_by_one_equals_the_encoded_full_map_at_each_epoch(rnd: random.Random,
                                                                    n: int) -> None:
    maps, incs = gen_history(rnd, n)
    frozen = [encode_map(m) for m in maps]
    held = decode_map(frozen[0])
    for k, inc in enumerate(incs):
        wire = encode_incremental(inc)
        got = decode_incremental(wire)
        assert got == inc and encode_incremental(got) == wire  # one encoding per value
        held = held.apply(got)  # a subscriber applying what it received
        assert held == maps[k + 1] == decode_map(encode_map(held))
        assert encode_map(held) == frozen[k + 1]
        assert held.epoch == k + 2
    # applying never edited an earlier map in place
    assert [encode_map(m) for m in maps] == frozen


@SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 25), st.data())
def test_catch_up_from_any_older_epoch_reaches_the_same_map(rnd: random.Random, n: int,
                                                           data: st.DataObject) -> None:
    maps, incs = gen_history(rnd, n)
    k = data.draw(st.integers(0, n))
    m = decode_map(encode_map(maps[k]))
    for inc in incs[k:]:
        m = m.apply(decode_incremental(encode_incremental(inc)))
    assert m == maps[-1]
    # and placement agrees on both, pg by pg
    for p in m.pools.values():
        for pg in range(min(p.pg_num, 8)):
            assert m.pg_mapping(p.id, pg) == maps[-1].pg_mapping(p.id, pg)


@SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 25))
def test_up_from_and_down_at_follow_the_up_down_history(rnd: random.Random, n: int) -> None:
    maps, _ = gen_history(rnd, n)
    for old, new in zip(maps, maps[1:]):
        for i, o in new.osds.items():
            before = old.osds.get(i)
            was_up = before is not None and before.up
            if o.up and not was_up:
                assert o.up_from == new.epoch
            elif was_up and not o.up:
                assert o.down_at == new.epoch
            elif before is not None:
                assert (o.up_from, o.down_at) == (before.up_from, before.down_at)
            assert not (o.in_ and o.auto_out)
            if o.up:
                assert o.host and o.port
        assert new.next_osd_id >= old.next_osd_id  # ids are never handed out twice


def base() -> OSDMap:
    m = OSDMap(epoch=5, osds={0: OSDInfo(0, "h", 1, up_thru=3), 1: OSDInfo(1, "h", 2),
                              2: OSDInfo(2, "h", 3, up=False)},
               pools={1: PoolInfo(1, "rbd", size=2, pg_num=8)})
    return m


def inc(**kw: object) -> Incremental:
    return Incremental(6, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "err", "words"), [
    (Incremental(5), errno.EINVAL, "does not follow epoch 5"),
    (Incremental(7), errno.EINVAL, "does not follow epoch 5"),
    (inc(osds={9: OsdChange(up=False)}), errno.ENOENT, "osd.9 does not exist"),
    (inc(new_osds=(1,)), errno.EEXIST, "osd.1 exists already"),
    (inc(removed_osds=(0,)), errno.EBUSY, "osd.0 is up"),
    (inc(removed_osds=(7,)), errno.ENOENT, "osd.7 does not exist"),
    (inc(osds={0: OsdChange(addr=("h", 9))}), errno.EINVAL, "changes only when it boots"),
    (inc(osds={0: OsdChange(nonce=4)}), errno.EINVAL, "changes only when it boots"),
    (inc(new_osds=(3,), osds={3: OsdChange(up=True)}), errno.EINVAL, "without an address"),
    (inc(osds={0: OsdChange(up_thru=2)}), errno.EINVAL, "up_thru 2 outside [3, 6]"),
    (inc(osds={0: OsdChange(up_thru=7)}), errno.EINVAL, "up_thru 7 outside [3, 6]"),
    (inc(osds={0: OsdChange(weight=float("nan"))}), errno.EINVAL, "finite"),
    (inc(osds={0: OsdChange(weight=-1.0)}), errno.EINVAL, "finite"),
    (inc(osds={2: OsdChange(up=True, addr=("h", 70000))}), errno.EINVAL, "port"),
    (inc(new_pools={2: PoolInfo(2, "rbd")}), errno.EEXIST, "taken by pool 1"),
    (inc(new_pools={2: PoolInfo(3, "x")}), errno.EINVAL, "filed under id 2"),
    (inc(new_pools={1: PoolInfo(1, "rbd", size=2, pg_num=16)}), errno.EINVAL,
     "pg_num cannot change"),
    (inc(new_pools={2: PoolInfo(2, "x", size=2, min_size=3)}), errno.EINVAL,
     "min_size 3 not in 1..size"),
    (inc(new_pools={2: PoolInfo(2, "", size=2)}), errno.EINVAL, "a name of 1 to"),
    (inc(new_pools={2: PoolInfo(2, "x", pg_num=0)}), errno.EINVAL, "pg_num 0"),
    (inc(new_pg_temp={(9, 0): (0,)}), errno.ENOENT, "no pool 9"),
    (inc(new_pg_temp={(1, 8): (0,)}), errno.EINVAL, "has 8 PGs"),
    (inc(new_pg_temp={(1, 0): (0, 0)}), errno.EINVAL, "distinct"),
    (inc(new_pg_temp={(1, 0): (0, 5)}), errno.ENOENT, "osd.5 does not exist"),
    (inc(removed_osds=(2,), new_pg_temp={(1, 0): (2,)}), errno.ENOENT, "osd.2 does not"),
])
def test_invalid_incrementals_are_refused_and_leave_the_map_alone(change: Incremental,
                                                                  err: int, words: str) -> None:
    m = base()
    before = encode_map(m)
    with pytest.raises(MapError) as ei:
        m.apply(change)
    assert ei.value.errno == err and words in str(ei.value), str(ei.value)
    assert encode_map(m) == before


def test_apply_derives_epochs_and_applies_in_order() -> None:
    m = base()
    m6 = m.apply(inc(new_osds=(3,), osds={
        3: OsdChange(up=True, addr=("10.0.0.3", 6803), nonce=7),
        0: OsdChange(up=False, up_thru=5),
        2: OsdChange(in_=False, auto_out=True)}))
    assert m6.osds[3] == OSDInfo(3, "10.0.0.3", 6803, up=True, in_=False, nonce=7, up_from=6,
                                 auto_out=True)
    assert m6.osds[0].down_at == 6 and m6.osds[0].up_thru == 5 and not m6.osds[0].up
    assert m6.osds[2].auto_out and not m6.osds[2].in_
    assert m6.osds[1] is m.osds[1]  # unchanged entries are shared, changed ones replaced
    assert m.osds[0].up and 3 not in m.osds  # the old epoch is untouched
    # mark down and remove in one epoch; its id is not handed out again
    m7 = m6.apply(Incremental(7, osds={3: OsdChange(up=False)}, removed_osds=(3,),
                              new_pg_temp={(1, 2): (1, 2)}))
    assert 3 not in m7.osds and m7.next_osd_id == 4 and m7.pg_temp == {(1, 2): (1, 2)}
    m8 = m7.apply(Incremental(8, osds={2: OsdChange(in_=True)}, new_pg_temp={(1, 2): ()},
                              new_pools={1: replace(m7.pools[1], size=3, min_size=2)}))
    assert m8.pg_temp == {} and not m8.osds[2].auto_out and m8.pools[1].size == 3
    assert m7.pools[1].size == 2


def test_default_min_size_is_a_majority() -> None:
    assert [PoolInfo(1, "p", size=s).min_size for s in range(1, 6)] == [1, 1, 2, 2, 3]
    assert PoolInfo(1, "p", size=3, min_size=1).min_size == 1
