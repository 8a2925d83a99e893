"""The monitor's decisions (rbdpy.mon.state), table-driven: each case is a list of timed
events applied to a cluster of three booted OSDs and the states the map must then show.
Time is whatever the test says; nothing sleeps."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest

from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.mon.events import (
    CommandDone,
    Commit,
    Effect,
    Event,
    FailureCancel,
    FailureReport,
    Log,
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
    Unsubscribe,
    UpThru,
)
from rbdpy.mon.state import Monitor, MonOptions


def first_map(n: int = 3) -> OSDMap:
    """Epoch 1 as a migrated cluster has it: OSDs known, in, down until they boot."""
    return OSDMap(epoch=1, osds={i: OSDInfo(i, "127.0.0.1", 6800 + i, up=False)
                                 for i in range(n)},
                  pools={1: PoolInfo(1, "rbd", size=2, pg_num=16)})


def boot(i: int, nonce: int = 1) -> OsdBoot:
    return OsdBoot(i, "127.0.0.1", 6800 + i, nonce)


class Cluster:
    """A monitor, its clock, and what came out of it."""

    def __init__(self, n: int = 3, **opts: object) -> None:
        opts.setdefault("propose_interval", 0.0)
        self.mon = Monitor(first_map(n), 0.0, MonOptions(**opts))  # type: ignore[arg-type]
        self.effects: list[Effect] = []
        for i in range(n):
            self.at(0.0, boot(i))

    def at(self, now: float, ev: Event) -> list[Effect]:
        out = self.mon.handle(ev, now)
        self.effects += out
        return out

    @property
    def m(self) -> OSDMap:
        return self.mon.osdmap

    def state(self, i: int) -> str:
        o = self.m.osds.get(i)
        if o is None:
            return "gone"
        return ("up" if o.up else "down") + (" in" if o.in_ else " out")


def report(r: int, t: int, epoch: int = 99, **kw: object) -> FailureReport:
    return FailureReport(r, t, epoch, **kw)  # type: ignore[arg-type]


@dataclass
class Case:
    name: str
    steps: list[tuple[float, Event]]
    states: dict[int, str]
    epochs: int  # epochs made by the steps (the three boots made epochs 2..4)
    opts: dict = field(default_factory=dict)


CASES = [
    Case("nothing happens", [(1000.0, Tick())], {0: "up in", 1: "up in", 2: "up in"}, 0,
         {"report_timeout": None}),
    Case("an immediate report marks down at once", [(1.0, report(0, 1, immediate=True))],
         {1: "down in"}, 1),
    Case("a silent peer stays up within the grace",
         [(0.0, report(0, 1)), (19.9, Tick())], {1: "up in"}, 0),
    Case("a silent peer goes down after the grace", [(0.0, report(0, 1)), (20.0, Tick())],
         {1: "down in"}, 1),
    Case("the reporter's own wait counts", [(0.0, report(0, 1, failed_for=15.0)),
                                            (5.0, Tick())], {1: "down in"}, 1),
    Case("the grace is configurable", [(0.0, report(0, 1)), (3.0, Tick())], {1: "down in"}, 1,
         {"grace": 3.0}),
    Case("a report resent later keeps its first time",
         [(0.0, report(0, 1)), (15.0, report(0, 1)), (20.0, Tick())], {1: "down in"}, 1),
    Case("a withdrawn report marks nothing",
         [(0.0, report(0, 1)), (10.0, FailureCancel(0, 1)), (30.0, Tick())], {1: "up in"}, 0),
    Case("two reporters needed: one is not enough", [(0.0, report(0, 1)), (100.0, Tick())],
         {1: "up in"}, 0, {"min_reporters": 2}),
    Case("two reporters needed: the second counts from the first's time",
         [(0.0, report(0, 1)), (100.0, report(2, 1))], {1: "down in"}, 1,
         {"min_reporters": 2}),
    Case("a report from a down OSD is ignored",
         [(0.0, report(2, 0, immediate=True)), (1.0, report(0, 1, immediate=True))],
         {0: "down in", 1: "up in"}, 1),
    Case("a report about a down OSD is ignored",
         [(0.0, report(0, 1, immediate=True)), (1.0, report(2, 1, immediate=True))],
         {1: "down in"}, 1),
    Case("a report about itself is ignored", [(0.0, report(1, 1, immediate=True))],
         {1: "up in"}, 0),
    Case("a report about an instance before the last boot is ignored",
         [(0.0, report(0, 1, epoch=2, immediate=True))], {1: "up in"}, 0),
    Case("the reports of an OSD that goes down are dropped",
         [(0.0, report(0, 1)), (1.0, report(2, 0, immediate=True)), (30.0, Tick())],
         {0: "down in", 1: "up in"}, 1),
    Case("down, then out after down_out_interval",
         [(0.0, report(0, 1, immediate=True)), (599.0, Tick()), (600.0, Tick())],
         {1: "down out"}, 2),
    Case("down_out_interval is configurable",
         [(0.0, report(0, 1, immediate=True)), (5.0, Tick())], {1: "down out"}, 2,
         {"down_out_interval": 5.0}),
    Case("never out when down_out_interval is None",
         [(0.0, report(0, 1, immediate=True)), (1e9, Tick())], {1: "down in"}, 1,
         {"down_out_interval": None, "report_timeout": None}),
    Case("booting again marks an auto-out OSD in",
         [(0.0, report(0, 1, immediate=True)), (600.0, Tick()), (700.0, boot(1, 2))],
         {1: "up in"}, 3),
    Case("booting again leaves an OSD an admin marked out out",
         [(0.0, OsdOut(1)), (1.0, report(0, 1, immediate=True)), (2.0, boot(1, 2))],
         {1: "up out"}, 3),
    Case("an admin's out of an auto-out OSD keeps it out at its next boot",
         [(0.0, report(0, 1, immediate=True)), (600.0, Tick()), (601.0, OsdOut(1)),
          (700.0, boot(1, 2))], {1: "up out"}, 4),
    Case("a restart before anyone noticed: down and up in two epochs", [(5.0, boot(1, 2))],
         {1: "up in"}, 2),
    Case("a boot repeated by the same instance changes nothing", [(5.0, boot(1))],
         {1: "up in"}, 0),
    Case("flapping: each down and up is an epoch; the out timer restarts at each down",
         [(0.0, report(0, 1, immediate=True)), (300.0, boot(1, 2)),
          (301.0, report(0, 1, epoch=6, immediate=True)), (700.0, Tick()),
          (800.0, boot(1, 3)), (801.0, report(0, 1, epoch=5, immediate=True)),
          (802.0, report(2, 1, epoch=8, immediate=True)), (1401.0, Tick()),
          (1402.0, Tick())], {1: "down out"}, 6, {"report_timeout": None}),
    Case("no beacon for report_timeout: down", [(0.0, OsdBeacon(0)), (900.0, Tick())],
         {0: "down in", 1: "down in", 2: "down in"}, 1),
    Case("beacons keep an OSD up", [(600.0, OsdBeacon(0)), (900.0, Tick())],
         {0: "up in", 1: "down in"}, 1),
    Case("admin out and in", [(0.0, OsdOut(2)), (1.0, OsdIn(2))], {2: "up in"}, 2),
    Case("admin out twice is one epoch", [(0.0, OsdOut(2)), (1.0, OsdOut(2))],
         {2: "up out"}, 1),
    Case("rm of a down OSD", [(0.0, report(0, 2, immediate=True)), (1.0, OsdRm(2))],
         {2: "gone", 0: "up in"}, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decisions(case: Case) -> None:
    c = Cluster(**case.opts)
    assert c.m.epoch == 4 and all(c.state(i) == "up in" for i in range(3))
    for now, ev in case.steps:
        c.at(now, ev)
    got = {i: c.state(i) for i in case.states}
    assert got == case.states, [e for e in c.effects if isinstance(e, Commit | Log)]
    assert c.m.epoch - 4 == case.epochs
    commits = [e for e in c.effects if isinstance(e, Commit)]
    assert [e.inc.epoch for e in commits] == list(range(2, c.m.epoch + 1))


def test_a_restart_shows_as_down_then_up_with_its_epochs() -> None:
    c = Cluster()
    out = c.at(5.0, OsdBoot(1, "10.1.1.1", 7000, 2))
    commits = [e for e in out if isinstance(e, Commit)]
    assert [e.inc.epoch for e in commits] == [5, 6]
    assert not commits[0].osdmap.osds[1].up and commits[1].osdmap.osds[1].up
    o = c.m.osds[1]
    assert (o.down_at, o.up_from, o.addr, o.nonce) == (5, 6, ("10.1.1.1", 7000), 2)
    assert "osd.1 marked down: a new instance booted" in commits[0].reasons


def test_failure_reasons_are_logged_with_the_commit() -> None:
    c = Cluster(min_reporters=2)
    c.at(0.0, report(0, 2, failed_for=3.0))
    out = c.at(17.0, report(1, 2))
    (commit,) = [e for e in out if isinstance(e, Commit)]
    assert commit.reasons == ("osd.2 marked down: reported failed for 20.0 s by osd.0, osd.1",)
    ignored = c.at(18.0, report(0, 2, immediate=True))
    assert ignored == [Log("ignoring a failure report from osd.0 about osd.2: the target is "
                           "not up", "debug")]


def test_next_wakeup_names_the_earliest_deadline() -> None:
    c = Cluster(report_timeout=None)
    assert c.mon.next_wakeup() is None
    c.at(10.0, report(0, 1, failed_for=5.0))
    assert c.mon.next_wakeup() == 25.0
    c.at(25.0, Tick())
    assert c.state(1) == "down in" and c.mon.next_wakeup() == 625.0
    c = Cluster()
    assert c.mon.next_wakeup() == 900.0  # beacons due


def test_up_thru_requests_are_batched_into_one_epoch() -> None:
    c = Cluster()
    c.mon.options = MonOptions(propose_interval=1.0)  # the boots went one epoch each
    c.at(100.0, report(0, 2, immediate=True))  # epoch 5, committed at once (idle before)
    assert c.m.epoch == 5
    for t, osd in ((100.2, 0), (100.5, 1), (100.7, 0)):
        assert not [e for e in c.at(t, UpThru(osd, 5)) if isinstance(e, Commit)]
    assert c.mon.next_wakeup() == 101.0
    c.at(100.9, UpThru(2, 5))  # a down OSD's request: ignored
    out = c.at(101.0, Tick())
    (commit,) = [e for e in out if isinstance(e, Commit)]
    assert commit.inc.epoch == 6 and set(commit.inc.osds) == {0, 1}
    assert c.m.osds[0].up_thru == c.m.osds[1].up_thru == 5 and c.m.osds[2].up_thru == 0
    # recorded already: no new epoch; a wish past the newest epoch is ignored
    assert not c.at(102.0, UpThru(0, 5))
    assert isinstance(c.at(103.0, UpThru(0, 9))[0], Log) and c.m.epoch == 6


def test_burst_of_boots_shares_an_epoch() -> None:
    mon = Monitor(first_map(5), 0.0, MonOptions(propose_interval=0.5))
    assert [type(e) for e in mon.handle(boot(0), 0.0)] == [Commit]  # idle: at once
    for i in range(1, 5):
        assert mon.handle(boot(i), 0.1 * i) == []
    (commit,) = mon.handle(Tick(), 0.5)
    assert commit.inc.epoch == 3 and sorted(commit.inc.osds) == [1, 2, 3, 4]
    assert all(o.up and o.up_from == 3 for i, o in mon.osdmap.osds.items() if i)


def done(out: list[Effect]) -> CommandDone:
    (d,) = [e for e in out if isinstance(e, CommandDone)]
    return d


def test_osd_add_boot_and_rm() -> None:
    c = Cluster()
    d = done(c.at(0.0, OsdAdd(weight=2.0)))
    assert d.result == 3 and d.epoch == c.m.epoch == 5 and c.state(3) == "down out"
    assert c.m.osds[3].weight == 2.0 and c.m.osds[3].auto_out
    c.at(1.0, boot(3))  # the first boot marks a new OSD in
    assert c.state(3) == "up in" and c.m.osds[3].up_from == 6
    with pytest.raises(MonError) as ei:
        c.at(2.0, OsdRm(3))
    assert ei.value.errno == errno.EBUSY and "stop it first" in str(ei.value)
    c.at(3.0, report(0, 3, immediate=True))
    assert done(c.at(4.0, OsdRm(3))).message == "removed osd.3" and c.state(3) == "gone"
    assert done(c.at(5.0, OsdAdd())).result == 4  # ids are not handed out twice


def test_pool_commands() -> None:
    c = Cluster()
    d = done(c.at(0.0, PoolCreate("vms")))
    p = c.m.pools[d.result]
    assert (p.id, p.name, p.size, p.min_size, p.pg_num) == (2, "vms", 3, 2, 64)
    d = done(c.at(0.0, PoolCreate("two", size=2, min_size=2, pg_num=8)))
    assert (c.m.pools[3].size, c.m.pools[3].min_size, c.m.pools[3].pg_num) == (2, 2, 8)
    d = done(c.at(0.0, PoolSet("vms", "size", "4")))  # Ceph resets min_size with the size
    assert (c.m.pools[2].size, c.m.pools[2].min_size) == (4, 2)
    done(c.at(0.0, PoolSet("vms", "min_size", 3)))
    assert c.m.pools[2].min_size == 3
    epoch = c.m.epoch
    d = done(c.at(0.0, PoolSet("vms", "min_size", 3)))
    assert d.epoch == c.m.epoch == epoch and "already" in d.message


@pytest.mark.parametrize(("ev", "err", "words"), [
    (boot(7), errno.ENOENT, "osd.7 does not exist"),
    (OsdBoot(0, "", 1, 1), errno.EINVAL, "bad address"),
    (OsdBoot(0, "h", 0, 1), errno.EINVAL, "bad address"),
    (OsdRm(9), errno.ENOENT, "osd.9 does not exist"),
    (OsdIn(9), errno.ENOENT, "osd.9 does not exist"),
    (OsdOut(9), errno.ENOENT, "osd.9 does not exist"),
    (OsdRm(0), errno.EBUSY, "osd.0 is up"),
    (OsdAdd(weight=float("inf")), errno.EINVAL, "weight inf"),
    (OsdAdd(weight=-1.0), errno.EINVAL, "weight -1.0"),
    (PoolCreate("rbd"), errno.EEXIST, "pool 'rbd' exists already"),
    (PoolCreate(""), errno.EINVAL, "pool name ''"),
    (PoolCreate("a\nb"), errno.EINVAL, "printable"),
    (PoolCreate("p", size=11), errno.EINVAL, "size 11 is not between 1 and 10"),
    (PoolCreate("p", size=0), errno.EINVAL, "size 0 is not between 1 and 10"),
    (PoolCreate("p", size=2, min_size=3), errno.EINVAL, "min_size 3 is not between 1 and"),
    (PoolCreate("p", min_size=0), errno.EINVAL, "min_size 0"),
    (PoolCreate("p", pg_num=0), errno.EINVAL, "pg_num 0"),
    (PoolCreate("p", pg_num=70000), errno.EINVAL, "pg_num 70000"),
    (PoolSet("nope", "size", 2), errno.ENOENT, "no pool named 'nope'"),
    (PoolSet("rbd", "size", 11), errno.EINVAL, "size 11"),
    (PoolSet("rbd", "min_size", 3), errno.EINVAL, "min_size 3 is not between 1 and the size"),
    (PoolSet("rbd", "pg_num", 32), errno.EINVAL, "pg_num cannot change"),
    (PoolSet("rbd", "crush_rule", 1), errno.EINVAL, "unknown setting 'crush_rule'"),
    (PoolSet("rbd", "size", "two"), errno.EINVAL, "'two' is not an integer"),
    (PgTemp(0, {(9, 0): (0,)}), errno.ENOENT, "no pool 9"),
    (PgTemp(0, {(1, 16): (0,)}), errno.EINVAL, "has no PG 16"),
    (PgTemp(0, {(1, 0): (0, 1, 2)}), errno.EINVAL, "at most 2 OSDs"),
    (PgTemp(0, {(1, 0): (0, 0)}), errno.EINVAL, "at most 2 OSDs"),
    (PgTemp(0, {(1, 0): (0, 5)}), errno.ENOENT, "no osd.5"),
    (report(0, 1, failed_for=-1.0), errno.EINVAL, "failed_for -1.0"),
    (object(), errno.EINVAL, "not an event"),
])
def test_refused_events_say_why_and_change_nothing(ev: Event, err: int, words: str) -> None:
    c = Cluster()
    before = (c.m, c.mon.next_wakeup())
    with pytest.raises(MonError) as ei:
        c.at(1.0, ev)
    assert ei.value.errno == err and words in str(ei.value), str(ei.value)
    assert (c.m, c.mon.next_wakeup()) == before


def test_bad_options_are_refused() -> None:
    for kw in ({"grace": -1.0}, {"grace": float("nan")}, {"min_reporters": 0},
               {"keep_incrementals": 0}, {"down_out_interval": float("inf")}):
        with pytest.raises(MonError):
            MonOptions(**kw)  # type: ignore[arg-type]


def test_pg_temp_is_set_and_cleaned_when_redundant_or_its_osds_leave() -> None:
    c = Cluster()
    pg = 0
    up = c.m.pg_up(1, pg)
    other = next(o for o in range(3) if o not in up)
    c.at(0.0, PgTemp(up[0], {(1, pg): (other, up[0])}))
    assert c.m.pg_mapping(1, pg).acting == (other, up[0])
    c.at(0.0, PgTemp(up[0], {(1, pg): tuple(up)}))  # equal to up: dropped
    assert (1, pg) not in c.m.pg_temp
    c.at(0.0, PgTemp(up[0], {(1, pg): (other,)}))
    c.at(1.0, report(up[0], other, immediate=True))
    c.at(2.0, OsdRm(other))
    assert (1, pg) not in c.m.pg_temp  # named only a removed OSD
    out = c.at(3.0, PgTemp(other, {(1, pg): (up[0],)}))  # from a gone OSD: ignored
    assert [type(e) for e in out] == [Log] and (1, pg) not in c.m.pg_temp


def test_subscribers_get_incrementals_or_a_full_map() -> None:
    c = Cluster(keep_incrementals=3)  # epochs 2..4 made; incrementals 2..4 kept
    (s,) = c.at(0.0, Subscribe("client.1", 2))
    assert s == SendMaps("client.1", None, c.mon.incrementals[1:]) and s.last == 4
    (s,) = c.at(0.0, Subscribe("client.2", 0, onetime=True))
    assert s.full == c.m and s.incrementals == () and s.last == 4
    c.at(0.0, Subscribe("osd.0", 4))  # up to date: nothing to send yet
    out = c.at(1.0, report(0, 1, immediate=True))
    assert [type(e) for e in out] == [Commit, SendMaps, SendMaps]  # persisted before sent
    assert {e.to for e in out if isinstance(e, SendMaps)} == {"client.1", "osd.0"}
    assert all(e.incrementals == (out[0].inc,) for e in out[1:])
    c.at(2.0, Unsubscribe("osd.0"))
    out = c.at(3.0, OsdOut(1))
    assert [e.to for e in out if isinstance(e, SendMaps)] == ["client.1"]
    (s,) = c.at(4.0, Subscribe("client.3", 2))  # older than the kept incrementals
    assert s.full == c.m and c.mon.incrementals[0].epoch == 4


def test_a_restarted_monitor_resumes_from_its_map_and_restarts_its_timers() -> None:
    c = Cluster()
    c.at(0.0, report(0, 1, immediate=True))
    mon = Monitor(c.m, 500.0, MonOptions(propose_interval=0.0), c.mon.incrementals)
    assert mon.handle(Tick(), 1099.0) == []  # the down-out clock started at 500
    out = mon.handle(Tick(), 1100.0)
    assert isinstance(out[0], Commit) and not mon.osdmap.osds[1].in_
    (s,) = mon.handle(Subscribe("c", 3), 1100.0)
    assert [i.epoch for i in s.incrementals] == [4, 5, 6]
    with pytest.raises(MonError, match="not consecutive"):
        Monitor(c.m, 0.0, None, c.mon.incrementals[:1] + c.mon.incrementals[2:])
    with pytest.raises(MonError, match="incrementals end at 4"):
        Monitor(c.m, 0.0, None, c.mon.incrementals[:-1])
