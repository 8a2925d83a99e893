"""Peering decisions, on their own and in scripted scenarios on the simulation: the prior set
and when a PG is down (the [A,B] -> [A] -> [] -> [B] case both ways), the authoritative log
(a stale copy is never chosen), divergent writes rolled back, backfill when logs do not
overlap (of a replica, and of a primary)."""

from __future__ import annotations

from rbdpy.osd.pg.info import PGInfo
from rbdpy.osd.pg.intervals import EpochMap, MapHistory, build_prior
from rbdpy.osd.pg.log import ZERO, Missing, PGLog, Version
from rbdpy.osd.pg.peering import PeerState, choose_auth
from rbdpy.osd.pg.states import PGState
from tests.osd.pg.scripted import (
    cluster,
    crash,
    data,
    done,
    op,
    pref,
    primary,
    restart,
    until,
)

V = Version


def _epoch(e: int, up: set[int], acting: tuple[int, ...], up_thru: dict[int, int]
           ) -> EpochMap:
    return EpochMap(e, frozenset(up), dict(up_thru), {0: acting}, 2, 1)


def test_intervals_and_prior_set() -> None:
    """[A,B] -> [A] (A's up_thru recorded: maybe rw) -> [] -> [B]: the prior set needs A."""
    h = MapHistory(_epoch(1, {0, 1}, (0, 1), {0: 1}))
    h.add(_epoch(2, {0}, (0,), {0: 1}))
    h.add(_epoch(3, {0}, (0,), {0: 2}))  # up_thru recorded: same interval
    h.add(_epoch(4, set(), (), {0: 2}))
    h.add(_epoch(5, {1}, (1,), {0: 2}))
    ivs = h.intervals(0)
    assert [(i.first, i.last, i.acting, i.maybe_went_rw) for i in ivs] == [
        (1, 1, (0, 1), True), (2, 3, (0,), True), (4, 4, (), False), (5, 5, (1,), False)]
    prior = build_prior(h, 0, since=1)
    assert prior.probe == {1} and prior.down == {0}
    # B's answer covers [A,B] (complete), not [A]: down
    assert [i.first for i in prior.blocked({1: (True, 1)})] == [2]
    # had B recorded a newer activation the older intervals would not count
    assert build_prior(h, 0, since=4).intervals == ()


def test_interval_without_up_thru_did_not_go_rw() -> None:
    h = MapHistory(_epoch(1, {0, 1}, (0, 1), {0: 1}))
    h.add(_epoch(2, {0}, (0,), {0: 1}))  # A never got up_thru 2: died first
    h.add(_epoch(3, set(), (), {0: 1}))
    h.add(_epoch(4, {1}, (1,), {0: 1}))
    prior = build_prior(h, 0, since=1)
    assert not prior.blocked({1: (True, 1)})


def test_an_answer_that_never_activated_covers_its_interval() -> None:
    """An interval whose only answering member is incomplete but never activated there (its
    les is older) wrote nothing; one that activated there (les = first) did, maybe."""
    h = MapHistory(_epoch(1, {0, 1}, (0, 1), {0: 1}))
    h.add(_epoch(2, {1}, (1,), {0: 1, 1: 2}))
    h.add(_epoch(3, {0, 1}, (0, 1), {0: 1, 1: 2}))
    prior = build_prior(h, 0, since=1)
    assert not prior.blocked({0: (True, 1), 1: (False, 1)})
    assert [i.first for i in prior.blocked({1: (False, 2)})] == [1, 2]


def _peer(les: int, lu: Version, complete: bool = True) -> PeerState:
    return PeerState(PGInfo(0, lu, lu, ZERO, les, None if complete else ""), PGLog(), Missing())


def test_choose_auth() -> None:
    states = {0: _peer(5, V(5, 9)), 1: _peer(7, V(6, 3)), 2: _peer(7, V(7, 1), False),
              3: _peer(7, V(6, 3))}
    # newest les first (not the newest last_update), never an incomplete copy; ties: me,
    # then the lowest id
    assert choose_auth(states, me=0) == 1
    assert choose_auth(states, me=3) == 3
    assert choose_auth({2: states[2]}, me=2) is None


# -- scripted scenarios --------------------------------------------------------------------------


def test_b_alone_waits_for_a_writes() -> None:
    """[A,B] -> [A] (A active alone, a write commits) -> [] -> [B]: B must not go active
    without A (down, ops wait); once A is back the write is there."""
    sim = cluster(2, 2, 1)
    a, b = pref(sim)
    assert done(sim, op(sim, "write"))
    crash(sim, b)
    sim.settle()
    w = op(sim, "append")
    assert done(sim, w) and sim.history.latest.up_thru[a] >= sim.history.latest.epoch - 1
    crash(sim, a)
    restart(sim, b)
    assert primary(sim).state() == PGState.DOWN
    r = op(sim, "read")
    assert not done(sim, r)  # waits, does not fail
    restart(sim, a)
    assert done(sim, r) and PGState.CLEAN in primary(sim).state()
    assert data(sim, a) == data(sim, b) == sim.model["obj00"]


def test_b_alone_goes_active_when_a_never_could_write() -> None:
    """[A,B] -> [A] but A dies before the monitor records its up_thru -> [] -> [B]: that
    interval wrote nothing, so B goes active alone with every committed write."""
    sim = cluster(2, 2, 1)
    a, b = pref(sim)
    assert done(sim, op(sim, "write"))
    up_thru = sim.history.latest.up_thru[a]
    sim.osds[b].crash()
    sim.mon.mark_down(b)  # A peers alone and asks for up_thru...
    sim.osds[a].crash()  # ...and dies at once
    sim.mon.mark_down(a)
    restart(sim, b)
    assert sim.history.latest.up_thru[a] == up_thru
    st = primary(sim).state()
    assert PGState.ACTIVE in st and PGState.UNDERSIZED in st
    r = op(sim, "read")
    assert done(sim, r)


def test_a_stale_copy_is_never_authoritative() -> None:
    """The first OSD in preference order misses writes while down; back, it is primary
    again with the oldest log: the others' log wins, it recovers, nothing is lost."""
    sim = cluster(3, 3, 2)
    first = pref(sim)[0]
    crash(sim, first)
    sim.settle()
    for kind in ("write", "append", "append"):
        assert done(sim, op(sim, kind))
    restart(sim, first)
    pg = primary(sim)
    assert pg.osd == first and PGState.CLEAN in pg.state()
    assert sim.stats.get("push-pulled")  # it pulled what it missed before activating
    for osd in pref(sim):
        assert data(sim, osd) == sim.model["obj00"]


def test_a_primary_whose_log_does_not_overlap_backfills_itself() -> None:
    sim = cluster(3, 3, 2, max_log=2, scan_chunk=1)
    first = pref(sim)[0]
    crash(sim, first)
    sim.settle()
    for i in range(8):
        assert done(sim, op(sim, "append", f"obj0{i % 4}"))
    restart(sim, first)
    assert sim.stats.get("push-self_backfill")
    assert PGState.CLEAN in primary(sim).state()
    for osd in pref(sim):
        for i in range(4):
            assert data(sim, osd, f"obj0{i}") == sim.model.get(f"obj0{i}")


def test_a_replica_whose_log_does_not_overlap_is_backfilled() -> None:
    sim = cluster(3, 3, 2, max_log=2, scan_chunk=1)
    last = pref(sim)[-1]
    crash(sim, last)
    sim.settle()
    assert done(sim, op(sim, "write", "obj03"))
    for i in range(6):
        assert done(sim, op(sim, "append", f"obj0{i % 3}"))
    assert done(sim, op(sim, "delete", "obj03"))  # the returning copy has it: must go
    restart(sim, last)
    assert sim.stats.get("activate-backfill") and sim.stats.get("push-backfill")
    pg = sim.osds[last].pgs[0]
    assert pg.last_backfill is None  # complete again
    assert PGState.CLEAN in primary(sim).state()
    for i in range(4):
        assert data(sim, last, f"obj0{i}") == sim.model.get(f"obj0{i}")


def test_divergent_write_rolled_back_and_applied_once() -> None:
    """The primary applies an append its replicas never get (cut off), then is marked down;
    the client resends to the new primary, which applies it; the old primary comes back,
    its divergent entry is rolled back: the append is in the object once."""
    sim = cluster(2, 2, 1)
    a, b = pref(sim)
    assert done(sim, op(sim, "write"))
    before = sim.model["obj00"]
    sim.net.isolated.add(a)  # A's messages to B are lost
    w = op(sim, "append", settle=False)
    until(sim, lambda: data(sim, a) != before)
    sim.run_until(sim.clock.now + 20)
    assert data(sim, b) == before and not done(sim, w)  # applied on A only
    sim.mon.mark_down(a)  # the failure reports
    sim.net.isolated.discard(a)
    sim.settle()
    assert done(sim, w)
    sim.mon.mark_up(a)  # wrongly marked down: boots again
    sim.settle()
    assert PGState.CLEAN in primary(sim).state()
    assert data(sim, a) == data(sim, b) == sim.model["obj00"]
    assert sim.model["obj00"] == before + w.data
    assert sim.stats.get("re-executed") == 1


def test_divergent_write_of_a_vanished_client_rolled_back() -> None:
    """The same, but the client is gone and never resends: the write never committed, so
    it is rolled back everywhere (the object is what it was)."""
    sim = cluster(2, 2, 1)
    a, b = pref(sim)
    assert done(sim, op(sim, "write", "obj01"))
    before = sim.model["obj01"]
    sim.net.isolated.add(a)
    w = op(sim, "append", "obj01", settle=False)
    until(sim, lambda: data(sim, a, "obj01") != before)
    c = sim.clients[0]
    del c.inflight[w.tid]  # the client dies
    sim.busy.discard("obj01")
    sim.mon.mark_down(a)
    sim.net.isolated.discard(a)
    sim.settle()
    sim.mon.mark_up(a)
    sim.settle()
    assert PGState.CLEAN in primary(sim).state()
    assert data(sim, a, "obj01") == data(sim, b, "obj01") == before
