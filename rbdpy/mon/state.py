"""The monitor's state machine (sans-I/O, like h11): events in, effects out, time passed in
as ``now``. No clocks, sockets, threads or files: the driver feeds ``handle(event, now)``,
carries out the effects in order and sends a ``Tick`` at ``next_wakeup()``. Tests run it
with any clock they like.

It holds the authoritative OSDMap and decides its changes as Ceph's OSDMonitor does:

- **boot**: an OSD registers its address and instance nonce and is marked up (and in again
  if it was out by the monitor's choice, never by an admin's). A new instance of an OSD the
  map still has up is first marked down in an epoch of its own, so every PG sees it restart.
- **failures**: a report of a refused or reset connection marks the target down at once;
  otherwise the target goes down once ``min_reporters`` up OSDs have reported it for
  ``grace`` seconds (``failed_for`` counts time the reporter already waited). Reports from
  OSDs that are not up, about OSDs that are not up, or about an instance older than the
  target's last boot are ignored; a report is withdrawn by ``FailureCancel``. An up OSD that
  sends no beacon for ``report_timeout`` is marked down too (one OSD alone has no peers to
  report it).
- **out**: a down, in OSD is marked out (``auto_out``) after ``down_out_interval``; only out
  remaps its PGs (see rbdpy.maps.osdmap).
- **up_thru**: a primary's request is recorded as the newest epoch (>= what it wants).
- **batching**: decisions accumulate in a pending incremental, committed as one epoch at
  most every ``propose_interval`` (Ceph's paxos_propose_interval): a lone change commits at
  once, a burst (OSDs booting together, up_thru requests after a map change) shares an epoch.
  Commands commit at once, so their reply names the epoch that holds them.
- **subscriptions**: a subscriber at epoch E gets the incrementals E+1..current, or the full
  map when E is older than the ``keep_incrementals`` kept; then every new epoch.

Timers (report ages, beacons, down-since) are volatile, as in Ceph: a restarted monitor starts
them afresh from the map it loaded. Decisions read the *projected* map (committed map plus
pending changes), so nothing is decided twice while an epoch is pending.

Mon HA later: put a replicated log (Paxos/Raft) between ``_commit``'s two halves. The leader
runs this machine; a commit becomes "propose ``inc``" (the Commit effect, which a single mon
simply persists), and every replica, the leader included, applies an incremental only once
the log has committed it (``OSDMap.apply`` is deterministic, so all replicas hold the same
maps). Followers forward OSD and admin messages to the leader; on election the new leader
rebuilds the pending state from scratch (timers restart, as here after a restart). Epoch
numbers then come from the log, and a proposal that loses the leadership is discarded.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.osdmap import MAX_OSD_ID, OSDMap, PoolInfo, default_min_size
from rbdpy.mon.events import (
    Command,
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

MAX_PG_NUM = 65536  # Ceph's mon_max_pool_pg_num
MAX_POOL_NAME = 255


@dataclass(frozen=True)
class MonOptions:
    """The monitor's settings (Ceph's names and defaults in the comments)."""

    grace: float = 20.0  # osd_heartbeat_grace
    down_out_interval: float | None = 600.0  # mon_osd_down_out_interval; None: never
    report_timeout: float | None = 900.0  # mon_osd_report_timeout; None: never
    min_reporters: int = 1  # mon_osd_min_down_reporters (2 in Ceph; small clusters here)
    propose_interval: float = 0.1  # paxos_propose_interval (1 s in Ceph)
    keep_incrementals: int = 500  # mon_min_osdmap_epochs
    default_pg_num: int = 64
    max_pool_size: int = 10

    def __post_init__(self) -> None:
        for name in ("grace", "propose_interval", "down_out_interval", "report_timeout"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise MonError(f"{name} = {v}: want a finite number of seconds >= 0")
        for name in ("min_reporters", "keep_incrementals", "default_pg_num", "max_pool_size"):
            if getattr(self, name) < 1:
                raise MonError(f"{name} = {getattr(self, name)}: want at least 1")


class _Pending:
    """The next epoch's changes as they are decided, and why (for the cluster log).
    ``version`` counts the changes, so the projected map is recomputed only after one."""

    def __init__(self) -> None:
        self.new_osds: list[int] = []
        self.osds: dict[int, OsdChange] = {}
        self.removed: list[int] = []
        self.pools: dict[int, PoolInfo] = {}
        self.pg_temp: dict[tuple[int, int], tuple[int, ...]] = {}
        self.reasons: list[str] = []
        self.version = 0

    def __bool__(self) -> bool:
        return bool(self.new_osds or self.osds or self.removed or self.pools or self.pg_temp)

    def change(self, osd: int, reason: str | None = None, **fields: Any) -> None:
        self.osds[osd] = self.osds.get(osd, OsdChange()).merged(OsdChange(**fields))
        self._note(reason)

    def add_osd(self, osd: int, reason: str) -> None:
        self.new_osds.append(osd)
        self._note(reason)

    def remove_osd(self, osd: int, reason: str) -> None:
        self.removed.append(osd)
        for key, members in self.pg_temp.items():
            if osd in members:
                self.pg_temp[key] = tuple(o for o in members if o != osd)
        self._note(reason)

    def set_pool(self, pool: PoolInfo, reason: str) -> None:
        self.pools[pool.id] = pool
        self._note(reason)

    def set_pg_temp(self, key: tuple[int, int], members: tuple[int, ...]) -> None:
        self.pg_temp[key] = members
        self._note(None)

    def _note(self, reason: str | None) -> None:
        self.version += 1
        if reason:
            self.reasons.append(reason)

    def build(self, epoch: int) -> Incremental:
        return Incremental(epoch, tuple(self.new_osds), dict(self.osds), tuple(self.removed),
                           dict(self.pools), dict(self.pg_temp))


class Monitor:
    """The OSDMap's only writer (see the module doc)."""

    def __init__(self, osdmap: OSDMap, now: float, options: MonOptions | None = None,
                 incrementals: Sequence[Incremental] = ()) -> None:
        """``incrementals``: the newest ones kept (by the store), ending at ``osdmap``."""
        self.options = options or MonOptions()
        self.osdmap = osdmap
        self._incs: deque[Incremental] = deque(maxlen=self.options.keep_incrementals)
        for a, b in zip(incrementals, incrementals[1:]):
            if b.epoch != a.epoch + 1:
                raise MonError(f"incrementals {a.epoch} and {b.epoch} are not consecutive")
        if incrementals and incrementals[-1].epoch != osdmap.epoch:
            raise MonError(f"incrementals end at {incrementals[-1].epoch}, the map is at "
                           f"{osdmap.epoch}")
        self._incs.extend(incrementals)
        self._now = now
        self._pending = _Pending()
        self._view: tuple[int, OSDMap] | None = None  # (pending version, projected map)
        self._last_commit: float | None = None
        self._failures: dict[int, dict[int, float]] = {}  # target -> reporter -> since
        self._beacons: dict[int, float] = {}  # up OSD -> last beacon (or boot, or start)
        self._down_since: dict[int, float] = {}  # down+in OSD -> when we saw it go down
        self._subs: dict[str, int] = {}  # subscriber -> epoch it has been sent
        self._handlers: dict[type, Callable[[Any, list[Effect]], None]] = {
            OsdBoot: self._boot, OsdBeacon: self._beacon, FailureReport: self._failure,
            FailureCancel: self._cancel, UpThru: self._up_thru, PgTemp: self._pg_temp,
            Subscribe: self._subscribe, Unsubscribe: self._unsubscribe, Tick: _nothing,
            OsdAdd: self._osd_add, OsdRm: self._osd_rm, OsdIn: self._osd_in,
            OsdOut: self._osd_out, PoolCreate: self._pool_create, PoolSet: self._pool_set,
        }
        self._track()

    # -- the driver's interface ---------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Take one event at time ``now``; return the effects to carry out, in order. Raises
        MonError (nothing changed) for an event or command that is refused."""
        handler = self._handlers.get(type(event))
        if handler is None:
            raise MonError(f"not an event the monitor takes: {event!r}")
        self._now = max(self._now, now)
        effects: list[Effect] = []
        handler(event, effects)
        self._timers()
        # deadlines compare as next_wakeup computes them (now >= start + interval), so a
        # Tick at the time it names always finds them due, whatever the float rounding
        if self._pending and (self._last_commit is None or
                              self._now >= self._last_commit + self.options.propose_interval):
            self._commit(effects)
        return effects

    def next_wakeup(self) -> float | None:
        """When a Tick is due (a pending epoch, a grace, a timeout), or None."""
        o = self.options
        times = []
        if self._pending:
            times.append((self._last_commit or 0.0) + o.propose_interval)
        for reports in self._failures.values():
            if len(reports) >= o.min_reporters:
                times.append(min(reports.values()) + o.grace)
        if o.report_timeout is not None:
            times += [t + o.report_timeout for t in self._beacons.values()]
        if o.down_out_interval is not None:
            times += [t + o.down_out_interval for t in self._down_since.values()]
        return min(times, default=None)

    @property
    def incrementals(self) -> tuple[Incremental, ...]:
        """The incrementals kept for subscribers, oldest first, ending at the current epoch."""
        return tuple(self._incs)

    def view(self) -> OSDMap:
        """The committed map with the pending changes applied (what decisions read)."""
        p = self._pending
        if not p:
            return self.osdmap
        if self._view is None or self._view[0] != p.version:
            self._view = (p.version, self.osdmap.apply(p.build(self.osdmap.epoch + 1)))
        return self._view[1]

    # -- epochs -------------------------------------------------------------------------------

    def _commit(self, effects: list[Effect]) -> None:
        if not self._pending:
            return
        m = self.osdmap
        inc = self._pending.build(m.epoch + 1)
        reasons = tuple(self._pending.reasons)
        self._pending = _Pending()
        self._view = None  # versions start again with the new pending epoch
        new = m.apply(inc)
        stale = _stale_temps(new)
        if stale:  # Ceph's clean_temps: entries now equal to up, or naming removed OSDs
            inc = replace(inc, new_pg_temp={**inc.new_pg_temp, **stale})
            new = m.apply(inc)
        self.osdmap = new
        self._incs.append(inc)
        self._last_commit = self._now
        effects.append(Commit(inc, new, reasons))
        self._track()
        for who, have in self._subs.items():
            effects.append(self._maps_since(who, have))
            self._subs[who] = new.epoch

    def _track(self) -> None:
        """Start and stop the volatile timers to match the committed map."""
        now = self._now
        for i, o in self.osdmap.osds.items():
            if o.up:
                self._beacons.setdefault(i, now)
                self._down_since.pop(i, None)
            else:
                self._beacons.pop(i, None)
                if o.in_:
                    self._down_since.setdefault(i, now)
                else:
                    self._down_since.pop(i, None)
        for d in (self._beacons, self._down_since):
            for i in [i for i in d if i not in self.osdmap.osds]:
                del d[i]
        for target in list(self._failures):
            reports = {r: t for r, t in self._failures[target].items() if self.osdmap.is_up(r)}
            if reports and self.osdmap.is_up(target):
                self._failures[target] = reports
            else:
                del self._failures[target]

    def _timers(self) -> None:
        now, o = self._now, self.options
        for target in sorted(self._failures):
            self._check_failure(target)
        view = self.view()
        if o.report_timeout is not None:
            for i, t in sorted(self._beacons.items()):
                if now >= t + o.report_timeout and view.is_up(i):
                    self._mark_down(i, f"osd.{i} marked down: no beacon for {now - t:.1f} s")
                    del self._beacons[i]  # acted on: not a deadline for next_wakeup
        view = self.view()
        if o.down_out_interval is not None:
            for i, t in sorted(self._down_since.items()):
                info = view.osds.get(i)
                if (info is not None and not info.up and info.in_
                        and now >= t + o.down_out_interval):
                    self._pending.change(i, f"osd.{i} marked out: down for {now - t:.1f} s",
                                         in_=False, auto_out=True)
                    del self._down_since[i]

    def _mark_down(self, osd: int, reason: str) -> None:
        self._pending.change(osd, reason, up=False)
        self._failures.pop(osd, None)

    def _check_failure(self, target: int) -> None:
        reports = self._failures.get(target)
        if not reports or len(reports) < self.options.min_reporters:
            return
        since = min(reports.values())
        if self._now >= since + self.options.grace:
            waited = self._now - since
            who = ", ".join(f"osd.{r}" for r in sorted(reports))
            self._mark_down(target, f"osd.{target} marked down: reported failed for "
                                    f"{waited:.1f} s by {who}")

    def _maps_since(self, who: str, have: int) -> SendMaps:
        if self._incs and have >= self._incs[0].epoch - 1:
            return SendMaps(who, None, tuple(i for i in self._incs if i.epoch > have))
        return SendMaps(who, self.osdmap)

    # -- OSDs ---------------------------------------------------------------------------------

    def _boot(self, ev: OsdBoot, effects: list[Effect]) -> None:
        info = self.view().osds.get(ev.osd)
        if info is None:
            raise MonError(f"osd.{ev.osd} does not exist (add it first)", errno.ENOENT)
        if not (ev.host and 1 <= ev.port <= 0xFFFF and 0 <= ev.nonce < 2**64
                and len(ev.host.encode()) <= 255):
            raise MonError(f"osd.{ev.osd} boot: bad address {ev.host}:{ev.port} or nonce")
        addr = (ev.host, ev.port)
        if info.up and info.addr == addr and info.nonce == ev.nonce:
            effects.append(Log(f"osd.{ev.osd} boot repeated by the same instance", "debug"))
            return
        if self.osdmap.is_up(ev.osd):  # a new instance: the old one goes down in its epoch
            self._mark_down(ev.osd, f"osd.{ev.osd} marked down: a new instance booted")
            self._commit(effects)
            info = self.view().osds[ev.osd]
        fields: dict[str, Any] = {"up": True, "addr": addr, "nonce": ev.nonce}
        reason = f"osd.{ev.osd} up at {ev.host}:{ev.port}"
        if not info.in_ and info.auto_out:
            fields["in_"] = True
            reason += ", marked in"
        self._pending.change(ev.osd, reason, **fields)
        self._failures.pop(ev.osd, None)
        self._beacons[ev.osd] = self._now

    def _is_up(self, osd: int) -> bool:
        """Up in the committed map and not about to be marked down."""
        return self.osdmap.is_up(osd) and self.view().is_up(osd)

    def _beacon(self, ev: OsdBeacon, effects: list[Effect]) -> None:
        if self._is_up(ev.osd):
            self._beacons[ev.osd] = self._now
        else:
            effects.append(Log(f"ignoring a beacon from osd.{ev.osd}, which is not up",
                               "debug"))

    def _failure(self, ev: FailureReport, effects: list[Effect]) -> None:
        r, t = ev.reporter, ev.target
        if not (math.isfinite(ev.failed_for) and ev.failed_for >= 0):
            raise MonError(f"failure report: failed_for {ev.failed_for}")
        why = None
        if r == t:
            why = "about itself"
        elif not self._is_up(r):
            why = "the reporter is not up"
        elif not self._is_up(t):
            why = "the target is not up"
        elif ev.epoch < self.osdmap.osds[t].up_from:
            why = (f"it is about an instance before epoch {self.osdmap.osds[t].up_from} "
                   f"(the report has epoch {ev.epoch})")
        if why:
            effects.append(Log(f"ignoring a failure report from osd.{r} about osd.{t}: {why}",
                               "debug"))
            return
        if ev.immediate:
            self._mark_down(t, f"osd.{t} marked down: osd.{r} reports its connection "
                               f"refused or reset")
            return
        since = self._now - ev.failed_for
        reports = self._failures.setdefault(t, {})
        reports[r] = min(reports.get(r, since), since)

    def _cancel(self, ev: FailureCancel, effects: list[Effect]) -> None:
        reports = self._failures.get(ev.target, {})
        if reports.pop(ev.reporter, None) is not None and not reports:
            del self._failures[ev.target]

    def _up_thru(self, ev: UpThru, effects: list[Effect]) -> None:
        m = self.osdmap
        why = None
        if not self._is_up(ev.osd):
            why = "it is not up"
        elif ev.want > m.epoch:
            why = f"epoch {ev.want} is past the newest, {m.epoch}"
        elif self.view().osds[ev.osd].up_thru >= ev.want:
            return  # recorded already (or pending): the map it needs is on its way
        if why:
            effects.append(Log(f"ignoring osd.{ev.osd}'s up_thru request: {why}", "debug"))
            return
        self._pending.change(ev.osd, f"osd.{ev.osd} up_thru {m.epoch}", up_thru=m.epoch)

    def _pg_temp(self, ev: PgTemp, effects: list[Effect]) -> None:
        if not self._is_up(ev.osd):
            effects.append(Log(f"ignoring osd.{ev.osd}'s pg_temp request: it is not up",
                               "debug"))
            return
        v = self.view()
        for (pool, pg), members in ev.pgs.items():
            p = v.pools.get(pool)
            if p is None:
                raise MonError(f"pg_temp: no pool {pool}", errno.ENOENT)
            if not 0 <= pg < p.pg_num:
                raise MonError(f"pg_temp: pool {p.name!r} has no PG {pg}")
            if len(set(members)) != len(members) or len(members) > p.size:
                raise MonError(f"pg_temp {pool}.{pg:x}: {members} is not a set of at most "
                               f"{p.size} OSDs")
            for o in members:
                if o not in v.osds:
                    raise MonError(f"pg_temp {pool}.{pg:x}: no osd.{o}", errno.ENOENT)
        for key, members in ev.pgs.items():
            if tuple(members) != v.pg_temp.get(key, ()):
                self._pending.set_pg_temp(key, tuple(members))

    # -- subscribers --------------------------------------------------------------------------

    def _subscribe(self, ev: Subscribe, effects: list[Effect]) -> None:
        cur = self.osdmap.epoch
        if ev.have < cur:
            effects.append(self._maps_since(ev.who, ev.have))
        elif ev.have > cur:
            effects.append(Log(f"{ev.who} holds epoch {ev.have}, newer than ours ({cur})",
                               "warning"))
        if ev.onetime:
            self._subs.pop(ev.who, None)
        else:
            self._subs[ev.who] = cur

    def _unsubscribe(self, ev: Unsubscribe, effects: list[Effect]) -> None:
        self._subs.pop(ev.who, None)

    # -- admin commands -----------------------------------------------------------------------

    def _done(self, ev: Command, effects: list[Effect], message: str,
              result: int | None = None) -> None:
        self._commit(effects)
        effects.append(CommandDone(ev, self.osdmap.epoch, message, result))

    def _osd(self, osd: int) -> Any:
        info = self.view().osds.get(osd)
        if info is None:
            raise MonError(f"osd.{osd} does not exist", errno.ENOENT)
        return info

    def _osd_add(self, ev: OsdAdd, effects: list[Effect]) -> None:
        if not (math.isfinite(ev.weight) and 0 <= ev.weight < 2**32):
            raise MonError(f"osd add: weight {ev.weight} is not a finite number >= 0")
        i = self.view().next_osd_id
        if i > MAX_OSD_ID:
            raise MonError("osd add: no OSD id left", errno.ENOSPC)
        self._pending.add_osd(i, f"osd.{i} added")
        if ev.weight != 1.0:
            self._pending.change(i, weight=float(ev.weight))
        self._done(ev, effects, f"added osd.{i} (down and out until it boots)", i)

    def _osd_rm(self, ev: OsdRm, effects: list[Effect]) -> None:
        if self._osd(ev.osd).up:
            raise MonError(f"osd.{ev.osd} is up: stop it first (it is then marked down)",
                           errno.EBUSY)
        self._pending.remove_osd(ev.osd, f"osd.{ev.osd} removed")
        self._done(ev, effects, f"removed osd.{ev.osd}")

    def _osd_in(self, ev: OsdIn, effects: list[Effect]) -> None:
        if self._osd(ev.osd).in_:
            self._done(ev, effects, f"osd.{ev.osd} is already in")
            return
        self._pending.change(ev.osd, f"osd.{ev.osd} marked in", in_=True)
        self._done(ev, effects, f"marked in osd.{ev.osd}")

    def _osd_out(self, ev: OsdOut, effects: list[Effect]) -> None:
        info = self._osd(ev.osd)
        if not info.in_ and not info.auto_out:
            self._done(ev, effects, f"osd.{ev.osd} is already out")
            return
        # out by an admin: no longer marked in by its next boot
        self._pending.change(ev.osd, f"osd.{ev.osd} marked out", in_=False, auto_out=False)
        self._done(ev, effects, f"marked out osd.{ev.osd}")

    def _check_sizes(self, name: str, size: int, min_size: int) -> None:
        top = self.options.max_pool_size
        if not 1 <= size <= top:
            raise MonError(f"pool {name!r}: size {size} is not between 1 and {top}")
        if not 1 <= min_size <= size:
            raise MonError(f"pool {name!r}: min_size {min_size} is not between 1 and the "
                           f"size ({size})")

    def _pool_create(self, ev: PoolCreate, effects: list[Effect]) -> None:
        v = self.view()
        name = ev.name
        if not (name and name.isprintable() and len(name.encode()) <= MAX_POOL_NAME):
            raise MonError(f"pool name {name!r}: want 1 to {MAX_POOL_NAME} printable bytes")
        if any(p.name == name for p in v.pools.values()):
            raise MonError(f"pool {name!r} exists already", errno.EEXIST)
        size = min(3, max(1, len(v.osds))) if ev.size is None else ev.size
        min_size = default_min_size(size) if ev.min_size is None else ev.min_size
        self._check_sizes(name, size, min_size)
        pg_num = self.options.default_pg_num if ev.pg_num is None else ev.pg_num
        if not 1 <= pg_num <= MAX_PG_NUM:
            raise MonError(f"pool {name!r}: pg_num {pg_num} is not between 1 and {MAX_PG_NUM}")
        pid = max(v.pools, default=0) + 1
        self._pending.set_pool(PoolInfo(pid, name, size, min_size, pg_num),
                               f"pool {name!r} created (id {pid}, size {size}, min_size "
                               f"{min_size}, pg_num {pg_num})")
        self._done(ev, effects, f"pool {name!r} created", pid)

    def _pool_set(self, ev: PoolSet, effects: list[Effect]) -> None:
        v = self.view()
        p = next((p for p in v.pools.values() if p.name == ev.name), None)
        if p is None:
            raise MonError(f"no pool named {ev.name!r}", errno.ENOENT)
        try:
            value = int(ev.value)
        except (TypeError, ValueError):
            raise MonError(f"pool set {ev.var}: {ev.value!r} is not an integer") from None
        if ev.var == "size":  # Ceph resets min_size to the new size's default
            new = replace(p, size=value, min_size=default_min_size(value) if value > 0 else 1)
        elif ev.var == "min_size":
            new = replace(p, min_size=value)
        elif ev.var == "pg_num":
            raise MonError("pg_num cannot change: PGs do not split or merge here")
        else:
            raise MonError(f"pool set: unknown setting {ev.var!r} (size, min_size)")
        self._check_sizes(p.name, new.size, new.min_size)
        if new == p:
            self._done(ev, effects, f"pool {p.name!r} has {ev.var} {value} already")
            return
        self._pending.set_pool(new, f"pool {p.name!r}: size {new.size}, min_size "
                                    f"{new.min_size}")
        self._done(ev, effects, f"pool {p.name!r}: {ev.var} set to {value}")


def _nothing(ev: Tick, effects: list[Effect]) -> None:
    """A tick only lets time pass: the timers run after every event."""


def _stale_temps(m: OSDMap) -> dict[tuple[int, int], tuple[int, ...]]:
    """pg_temp entries to drop or shrink in ``m``: those naming removed OSDs lose them, and
    those equal to the PG's up set are redundant."""
    out = {}
    for key, members in m.pg_temp.items():
        kept = tuple(o for o in members if o in m.osds)
        if not kept or kept == tuple(m.pg_up(*key)):
            out[key] = ()
        elif kept != members:
            out[key] = kept
    return out
