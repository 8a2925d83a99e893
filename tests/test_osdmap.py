"""Placement: memoized targets agree with a fresh computation, for any names and maps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.osdmap import OSDInfo, OSDMap, PoolInfo


def make(n_osds: int, down: set[int], size: int) -> OSDMap:
    return OSDMap(osds={i: OSDInfo(i, "127.0.0.1", 6800 + i, up=i not in down)
                        for i in range(n_osds)},
                  pools={1: PoolInfo(1, "rbd", size=size, pg_num=32)})


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.sets(st.integers(0, 5)), st.integers(1, 3),
       st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=30))
def test_memoized_target_is_the_computed_one(n: int, down: set[int], size: int,
                                             names: list[str]) -> None:
    m = make(n, down, size)
    for name in names + names:  # the second pass is served from the memo
        pg, acting = m.object_target(1, name)
        assert pg == m.object_pg(1, name)
        assert acting == m.pg_acting(1, pg)
        assert all(i not in down for i in acting) and len(acting) <= size
        acting.append(99)  # callers may edit what they got without touching the memo
    fresh = make(n, down, size)
    assert [m.object_target(1, x) for x in names] == [fresh.object_target(1, x) for x in names]
