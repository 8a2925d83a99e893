"""The monitor under random events (Hypothesis): whatever OSDs, admins and subscribers send,
in any order and at any times, it refuses only with MonError, its epochs are consecutive and
each Commit's incremental applies to the previous map to give that Commit's map, a
subscriber that applies what it is sent holds the monitor's map, and one arriving late from
any older epoch catches up to the same map."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rbdpy.maps.encoding import decode_incremental, decode_map, encode_incremental, encode_map
from rbdpy.maps.osdmap import OSDMap
from rbdpy.mon.events import (
    Commit,
    FailureCancel,
    FailureReport,
    MonError,
    OsdAdd,
    OsdBeacon,
    OsdBoot,
    OsdIn,
    OsdOut,
    OsdRm,
    PgTemp,
    PoolCreate,
    PoolSet,
    SendMaps,
    Subscribe,
    Tick,
    UpThru,
)
from rbdpy.mon.state import Monitor, MonOptions
from tests.mon.test_state import first_map

osd = st.integers(0, 5)
epoch = st.integers(0, 40)
boots = st.builds(OsdBoot, osd, st.just("127.0.0.1"), st.integers(6800, 6805),
                  st.integers(1, 4))
failures = st.builds(FailureReport, osd, osd, st.sampled_from([0, 3, 99]),
                     st.sampled_from([0.0, 5.0, 30.0]),
                     st.booleans())
events = st.one_of(
    boots, boots, failures, failures,
    st.builds(OsdBeacon, osd),
    st.builds(FailureCancel, osd, osd),
    st.builds(UpThru, osd, epoch),
    st.builds(PgTemp, osd, st.dictionaries(st.tuples(st.integers(1, 2), st.integers(0, 17)),
                                            st.lists(osd, max_size=3).map(tuple), max_size=2)),
    st.builds(OsdAdd, st.sampled_from([0.0, 1.0, 2.0])),
    st.builds(OsdRm, osd), st.builds(OsdIn, osd), st.builds(OsdOut, osd),
    st.builds(PoolCreate, st.sampled_from(["rbd", "p2", "p3"]), st.none() | st.integers(0, 4),
              st.none() | st.integers(0, 3), st.none() | st.sampled_from([8, 16])),
    st.builds(PoolSet, st.sampled_from(["rbd", "p2"]), st.sampled_from(["size", "min_size"]),
              st.integers(0, 4)),
    st.builds(Tick),
    st.builds(Subscribe, st.sampled_from(["late.1", "late.2"]), epoch, st.booleans()),
)


def apply_sends(held: OSDMap | None, send: SendMaps) -> OSDMap:
    """What a subscriber does with a SendMaps: take the full map, apply the incrementals
    (decoded from their encoding, as they would arrive)."""
    m = decode_map(encode_map(send.full)) if send.full is not None else held
    assert m is not None
    for inc in send.incrementals:
        m = m.apply(decode_incremental(encode_incremental(inc)))
    return m


@settings(max_examples=int(os.environ.get("RBDPY_MON_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.05, 1.0, 25.0, 400.0]), events),
                min_size=5, max_size=80),
       st.sampled_from([0.0, 0.1, 1.0]), st.integers(1, 6), st.sets(st.integers(0, 2)))
def test_random_events(steps: list, propose_interval: float, keep: int,
                       booted: set[int]) -> None:
    mon = Monitor(first_map(3), 0.0, MonOptions(propose_interval=propose_interval,
                                                keep_incrementals=keep, min_reporters=1))
    now = 0.0
    maps = {1: mon.osdmap}
    sub = mon.osdmap
    mon.handle(Subscribe("sub", sub.epoch), now)
    for i in sorted(booted):  # some OSDs up from the start (propose_interval may batch them)
        for e in mon.handle(OsdBoot(i, "127.0.0.1", 6800 + i, 1), now):
            if isinstance(e, Commit):
                maps[e.inc.epoch] = e.osdmap
            elif isinstance(e, SendMaps):
                sub = apply_sends(sub, e)
    late: dict[str, OSDMap | None] = {}
    for dt, ev in steps:
        now += dt
        before = max(maps)
        try:
            out = mon.handle(ev, now)
        except MonError:
            continue
        if isinstance(ev, Subscribe):  # it holds that epoch (one newer than ours: ours)
            late[ev.who] = maps[min(ev.have, max(maps))] if ev.have else None
        for e in out:
            if isinstance(e, Commit):
                prev = maps[e.inc.epoch - 1]
                assert prev.apply(e.inc) == e.osdmap
                maps[e.inc.epoch] = e.osdmap
            elif isinstance(e, SendMaps):
                if e.to == "sub":
                    sub = apply_sends(sub, e)
                else:
                    late[e.to] = apply_sends(late[e.to], e)
        assert sub == mon.osdmap == maps[max(maps)]
        for o in mon.osdmap.osds.values():
            assert not o.up or (o.host and o.port)
        if isinstance(ev, Subscribe) and ev.have < before:  # onetime: the map when asked
            assert late[ev.who] == (maps[before] if ev.onetime else mon.osdmap)
    # a pending epoch is committed once propose_interval has passed
    mon.handle(Tick(), now + propose_interval)
    assert mon.view() is mon.osdmap
    now += propose_interval
    # a Tick at next_wakeup() always moves it on (a driver never spins on a past deadline)
    for _ in range(10):
        wake = mon.next_wakeup()
        if wake is None:
            break
        assert wake > now
        now = wake
        mon.handle(Tick(), now)
    assert sorted(maps) == list(range(1, max(maps) + 1))
    event(f"epochs made: {min(max(maps) // 5 * 5, 30)}+")
