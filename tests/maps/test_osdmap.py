"""Placement (``rbdpy.maps.osdmap``): the claims of its docstring, and the memo.

Exact properties (any map, checked with Hypothesis): adding or removing one OSD changes only
the acting sets that gain or lose it, and those by that one OSD, the others keeping their
order. Statistical properties (fixed maps, so the hashes and the result are the same on every
run): the moved share, the spread over OSDs and the weights. Their bounds are five standard
deviations of a uniformly random assignment with the same expected shares (binomial counts;
a PG's replicas being distinct OSDs only narrows the real spread): a hash that ignores the
weights, clumps PGs on some OSDs or reshuffles on a change is off by much more, while a fair
one stays inside them (the chance to step outside is below 1e-6 per count).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.maps.osdmap import OSDInfo, OSDMap, PGMapping, PoolInfo, _h64

SIGMAS = 5


def make(n_osds: int, out: set[int], size: int, pg_num: int = 32,
         weights: dict[int, float] | None = None) -> OSDMap:
    w = weights or {}
    return OSDMap(osds={i: OSDInfo(i, "127.0.0.1", 6800 + i, in_=i not in out,
                                   weight=w.get(i, 1.0))
                        for i in range(n_osds)},
                  pools={1: PoolInfo(1, "rbd", size=size, pg_num=pg_num)})


def placements(m: OSDMap) -> list[list[int]]:
    return [m.pg_acting(1, pg) for pg in range(m.pools[1].pg_num)]


def binomial_bounds(trials: int, p: float) -> tuple[float, float]:
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    return mean - SIGMAS * sd, mean + SIGMAS * sd


def assert_only_its_sets_change(before: list[int], after: list[int], gone: int) -> None:
    """``after`` is ``before``'s PG with OSD ``gone`` no longer eligible (removed, down, out
    or weight 0): unchanged unless ``gone`` was in it; else ``gone`` leaves, the others keep
    their order, and at most one OSD joins, at the end (the next draw in line)."""
    if gone not in before:
        assert after == before
        return
    kept = [o for o in before if o != gone]
    assert after[: len(kept)] == kept
    assert len(after) - len(kept) <= 1 and gone not in after


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 3), st.data())
def test_one_osd_more_or_less_moves_only_the_pgs_that_hold_it(n: int, size: int,
                                                              data: st.DataObject) -> None:
    weights = data.draw(st.dictionaries(st.integers(0, n - 1),
                                        st.sampled_from([0.5, 1.0, 2.0, 3.0])))
    out = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    x = data.draw(st.sampled_from(sorted(set(range(n)) - out)))
    m = make(n, out, size, pg_num=64, weights=weights)
    before = placements(m)
    for how in ("down", "out", "weight 0", "removed"):
        m2 = make(n, out, size, pg_num=64, weights=weights)
        if how == "down":
            m2.osds[x].up = False
        elif how == "out":
            m2.osds[x].in_ = False
        elif how == "weight 0":
            m2.osds[x].weight = 0
        else:
            del m2.osds[x]
        after = placements(m2)
        # read backwards, the same relation is adding x (a new OSD when "removed")
        for b, a in zip(before, after, strict=True):
            assert_only_its_sets_change(b, a, x)


def test_one_osd_of_n_moves_about_one_nth_of_the_placements() -> None:
    """Removing one of N equal OSDs moves each replica it held, 1/N of all of them; adding
    one to N moves 1/(N+1). Moved = replicas placed on an OSD that did not hold the PG."""
    pg_num = 1024
    for size in (1, 3):
        for n in (4, 8, 16):
            full = placements(make(n, set(), size, pg_num))
            # each replica moves with probability 1/N: binomial over pg_num * size
            lo, hi = binomial_bounds(pg_num * size, 1 / n)
            for x in (0, n - 1):
                less = placements(make(n, {x}, size, pg_num))
                for changed in (moved(full, less), moved(less, full)):  # x out, x back in
                    assert lo <= changed <= hi, (size, n, x, changed)
                    assert pg_num * size * 0.5 / n <= changed <= pg_num * size * 2 / n
            grown = placements(make(n + 1, set(), size, pg_num))
            lo, hi = binomial_bounds(pg_num * size, 1 / (n + 1))
            assert lo <= moved(full, grown) <= hi, (size, n)


def moved(before: list[list[int]], after: list[list[int]]) -> int:
    return sum(len(set(a) - set(b)) for b, a in zip(before, after, strict=True))


def test_pgs_spread_evenly_over_equal_osds() -> None:
    """8 equal OSDs, 1024 PGs: each OSD's count of replicas is binomial(1024 * size, 1/8)
    in a fair assignment (mean 128 * size; for size 1 the bound is 128 +- 53)."""
    pg_num, n = 1024, 8
    for size in (1, 2, 3):
        counts = count(placements(make(n, set(), size, pg_num)), n)
        lo, hi = binomial_bounds(pg_num * size, 1 / n)
        assert all(lo <= c <= hi for c in counts), (size, counts)
        primaries = count([acting[:1] for acting in placements(make(n, set(), size, pg_num))],
                          n)
        lo, hi = binomial_bounds(pg_num, 1 / n)
        assert all(lo <= c <= hi for c in primaries), (size, primaries)


def test_an_osd_of_weight_two_gets_twice_the_pgs() -> None:
    """Straw2 draws: an OSD of weight w is first with probability w / (sum of weights), so
    with one replica its share of PGs is proportional to its weight. 8 OSDs weighing
    1, 2, 1, 2, ... (sum 12) and 4096 PGs: 341 and 683 expected, each within 5 sd."""
    pg_num, n = 4096, 8
    weights = {i: 1.0 + i % 2 for i in range(n)}
    total = sum(weights.values())
    counts = count(placements(make(n, set(), 1, pg_num, weights)), n)
    for i, c in enumerate(counts):
        lo, hi = binomial_bounds(pg_num, weights[i] / total)
        assert lo <= c <= hi, (i, counts)
    # the light OSDs together: binomial(4096, 1/3), 1365 +- 151; the heavy ones the rest
    light, heavy = sum(counts[0::2]), sum(counts[1::2])
    lo, hi = binomial_bounds(pg_num, 4 / total)
    assert (pg_num - hi) / hi <= heavy / light <= (pg_num - lo) / lo, counts  # 1.70 .. 2.37
    # and a weight-0 OSD gets nothing
    weights[0] = 0
    assert count(placements(make(n, set(), 3, pg_num, weights)), n)[0] == 0


def count(acting_sets: list[list[int]], n: int) -> list[int]:
    c = [0] * n
    for acting in acting_sets:
        for o in acting:
            c[o] += 1
    return c


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.sets(st.integers(0, 5)), st.integers(1, 3),
       st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=30))
def test_memoized_target_is_the_computed_one(n: int, out: set[int], size: int,
                                             names: list[str]) -> None:
    m = make(n, out, size)
    for name in names + names:  # the second pass is served from the memo
        pg, acting = m.object_target(1, name)
        assert pg == m.object_pg(1, name)
        assert acting == m.pg_acting(1, pg)
        assert all(i not in out for i in acting) and len(acting) <= size
        acting.append(99)  # callers may edit what they got without touching the memo
    fresh = make(n, out, size)
    assert [m.object_target(1, x) for x in names] == [fresh.object_target(1, x) for x in names]


# -- up and acting sets (Ceph's _pg_to_up_acting_osds) ------------------------------------------


def pre_epoch_acting(m: OSDMap, pool: int, pg: int) -> list[int]:
    """Placement as it was before maps had epochs: the best draws among up+in OSDs."""
    draws = []
    for osd in m.osds.values():
        if osd.up and osd.in_ and osd.weight > 0:
            u = (_h64("pg", pool, pg, osd.id) + 1) / 2.0**64
            draws.append((math.log(u) / osd.weight, osd.id))
    draws.sort(reverse=True)
    return [i for _, i in draws[:m.pools[pool].size]]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10), st.integers(1, 4), st.data())
def test_placement_with_every_osd_up_is_what_it_was(n: int, size: int,
                                                    data: st.DataObject) -> None:
    """Maps from before epochs never had a down OSD: for them nothing moves."""
    weights = data.draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from([0, 0.5, 2.0])))
    out = data.draw(st.sets(st.integers(0, n - 1)))
    m = make(n, out, size, pg_num=64, weights=weights)
    for pg in range(64):
        assert m.pg_acting(1, pg) == pre_epoch_acting(m, 1, pg) == m.pg_up(1, pg)
        assert m.pg_raw(1, pg) == m.pg_acting(1, pg)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.integers(1, 4), st.data())
def test_a_down_osd_leaves_a_hole_and_an_out_osd_is_replaced(n: int, size: int,
                                                             data: st.DataObject) -> None:
    """Down: the PG's up set loses the OSD and nobody takes its place (a short outage moves
    no data). Out: the next draw takes its place."""
    x = data.draw(st.integers(0, n - 1))
    m = make(n, set(), size, pg_num=64)
    down = make(n, set(), size, pg_num=64)
    down.osds[x].up = False
    out = make(n, {x}, size, pg_num=64)
    for pg in range(64):
        before = m.pg_up(1, pg)
        assert down.pg_raw(1, pg) == before
        assert down.pg_up(1, pg) == [o for o in before if o != x] == down.pg_acting(1, pg)
        assert out.pg_up(1, pg) == pre_epoch_acting(down, 1, pg)
        mapping = down.pg_mapping(1, pg)
        assert mapping.primary == (mapping.acting[0] if mapping.acting else None)


def test_pg_temp_overrides_acting_without_its_down_osds() -> None:
    m = make(4, set(), 2, pg_num=8)
    up = m.pg_up(1, 3)
    other = next(o for o in range(4) if o not in up)
    m.pg_temp[(1, 3)] = (other, up[0])
    got = m.pg_mapping(1, 3)
    assert got.up == tuple(up) and got.up_primary == up[0]
    assert got.acting == (other, up[0]) and got.primary == other
    assert m.pg_acting(1, 4) == m.pg_up(1, 4)  # other PGs: acting = up
    m.osds[other].up = False
    assert m.pg_mapping(1, 3).acting == (up[0],)
    m.osds[up[0]].up = False  # every pg_temp member down: acting falls back to up
    assert m.pg_mapping(1, 3).acting == tuple(m.pg_up(1, 3)) == (up[1],)
    for o in m.osds.values():
        o.up = False
    assert m.pg_mapping(1, 3) == PGMapping((), ())
    assert m.pg_mapping(1, 3).primary is None and m.object_target(1, "x")[1] == []
