"""Past intervals (rbdpy.maps.intervals): the [A,B] -> [A] -> [] -> [B] case peering must get
right, min_size, pg_temp, and random histories cut into intervals correctly."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbdpy.maps.errors import MapError
from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.intervals import Interval, is_new_interval, past_intervals
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from tests.maps.gen import gen_history

A, B = 0, 1


def two_osds(min_size: int = 0) -> tuple[OSDMap, int]:
    """Epoch 1: A and B up, pool 1 of size 2; and a PG whose primary is A."""
    m = OSDMap(epoch=1, osds={A: OSDInfo(A, "h", 1, up_from=1), B: OSDInfo(B, "h", 2,
                                                                             up_from=1)},
               pools={1: PoolInfo(1, "rbd", size=2, min_size=min_size, pg_num=8)})
    pg = next(pg for pg in range(8) if m.pg_acting(1, pg) == [A, B])
    return m, pg


def run(m: OSDMap, *steps: dict[int, OsdChange]) -> list[OSDMap]:
    maps = [m]
    for ch in steps:
        maps.append(maps[-1].apply(Incremental(maps[-1].epoch + 1, osds=ch)))
    return maps


def test_an_interval_whose_primary_got_up_thru_recorded_maybe_went_rw() -> None:
    """A and B; B dies; A asks for up_thru and gets it (it may have acked writes alone);
    A dies; B comes back alone: peering must see that [A] maybe went rw, so B alone must
    not go active without A's writes."""
    m, pg = two_osds()
    maps = run(m, {A: OsdChange(up_thru=1)},  # 2: A alive through 1: [A,B] went rw
               {B: OsdChange(up=False)},  # 3: acting [A]
               {A: OsdChange(up_thru=3)},  # 4: A alive through 3
               {A: OsdChange(up=False)},  # 5: nobody
               {B: OsdChange(up=True)})  # 6: B alone
    assert past_intervals(maps, 1, pg) == [
        Interval(1, 2, (A, B), (A, B), True),
        Interval(3, 4, (A,), (A,), True),
        Interval(5, 5, (), (), False),
        Interval(6, 6, (B,), (B,), False),  # the current one: B has no up_thru yet
    ]


def test_an_interval_that_ended_before_up_thru_was_recorded_did_not_go_rw() -> None:
    m, pg = two_osds()
    maps = run(m, {A: OsdChange(up_thru=1)}, {B: OsdChange(up=False)},
               {A: OsdChange(up=False)},  # A died before the mon recorded its up_thru
               {B: OsdChange(up=True)})
    got = past_intervals(maps, 1, pg)
    assert [(i.first, i.last, i.acting, i.maybe_went_rw) for i in got] == [
        (1, 2, (A, B), True), (3, 3, (A,), False), (4, 4, (), False), (5, 5, (B,), False)]
    assert got[1].primary == A and got[2].primary is None


def test_below_min_size_an_interval_cannot_go_rw() -> None:
    m, pg = two_osds(min_size=2)
    maps = run(m, {A: OsdChange(up_thru=1)}, {B: OsdChange(up=False)},
               {A: OsdChange(up_thru=3)})
    assert [i.maybe_went_rw for i in past_intervals(maps, 1, pg)] == [True, False]


def test_pg_temp_and_pool_changes_start_intervals_and_up_thru_alone_does_not() -> None:
    m, pg = two_osds()
    m = m.apply(Incremental(2, new_osds=(2,), osds={2: OsdChange(up=True, addr=("h", 3),
                                                                 in_=True)}))
    maps = [m, m.apply(Incremental(3, osds={A: OsdChange(up_thru=2)}))]
    maps.append(maps[-1].apply(Incremental(4, new_pg_temp={(1, pg): (B, A)})))
    maps.append(maps[-1].apply(Incremental(5, new_pools={1: PoolInfo(1, "rbd", 2, 2, 8)})))
    assert not is_new_interval(maps[0], maps[1], 1, pg)
    assert is_new_interval(maps[1], maps[2], 1, pg)
    got = past_intervals(maps, 1, pg)
    assert [(i.first, i.last) for i in got] == [(2, 3), (4, 4), (5, 5)]
    assert got[1].up_primary == m.pg_mapping(1, pg).up_primary and got[1].primary == B


def test_maps_must_be_consecutive_and_epochs_before_the_pool_have_no_interval() -> None:
    m, pg = two_osds()
    later = m.apply(Incremental(2)).apply(Incremental(3))
    with pytest.raises(MapError) as ei:
        past_intervals([m, later], 1, pg)
    assert ei.value.errno == errno.EINVAL
    empty = OSDMap(epoch=1, osds=dict(m.osds))
    maps = [empty, empty.apply(Incremental(2, new_pools={1: m.pools[1]}))]
    assert past_intervals(maps, 1, pg) == [Interval(2, 2, (A, B), (A, B), False)]
    assert past_intervals(maps, 2, 0) == [] and past_intervals(maps, 1, 99) == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 30), st.data())
def test_random_histories_cut_into_maximal_intervals(rnd: random.Random, n: int,
                                                     data: st.DataObject) -> None:
    maps, _ = gen_history(rnd, n)
    pool = data.draw(st.sampled_from(sorted(maps[-1].pools)))
    pg = data.draw(st.integers(0, maps[-1].pools[pool].pg_num - 1))
    got = past_intervals(maps, pool, pg)
    by_epoch = {m.epoch: m for m in maps}
    having = [m.epoch for m in maps if pool in m.pools]
    assert [e for i in got for e in range(i.first, i.last + 1)] == having  # a partition
    for i in got:
        for e in range(i.first, i.last + 1):
            mp = by_epoch[e].pg_mapping(pool, pg)
            assert (mp.up, mp.acting) == (i.up, i.acting)
            if e > i.first:
                assert not is_new_interval(by_epoch[e - 1], by_epoch[e], pool, pg)
        last = by_epoch[i.last]
        want = bool(i.acting) and len(i.acting) >= last.pools[pool].min_size and \
            last.osds[i.acting[0]].up_thru >= i.first
        assert i.maybe_went_rw == want
    for a, b in zip(got, got[1:]):
        assert is_new_interval(by_epoch[a.last], by_epoch[b.first], pool, pg)
