"""The image's exclusive lock: one writer at a time, and the object map is the writer's.

Every writable open takes an exclusive ``cls lock`` on the image header (RBD's
``exclusive-lock`` feature). The object map is loaded *after* the lock is taken and is then
trusted (holes read as zeros without asking an OSD, ``extents`` answers locally) because
nobody else may write. A read-only open takes no lock and trusts no cached map: another
server may be writing, so it asks the OSDs (see ``Image.trust_map``).

A second writable open of an image in use fails with EBUSY naming the holder. A holder that
died (kill -9, a crashed host, a container that is gone) must not keep the image locked
forever, so the lock records a lease that the holder renews every ``lease/3`` seconds, and
where it runs: host, boot id, pid namespace, pid and the process's start time. A holder is
judged (``assess``) *dead* when its lease ran out, when its host rebooted, or when it ran in
this very pid namespace and its process is gone (or, within one process, its opener shut
down); *alive* when that process is seen running; otherwise (another host, another
container) *unknown*: the opener then waits for its lease to run out and takes the lock only
if it was not renewed meanwhile, as Ceph waits for a dead owner's watch to time out.
Breaking and taking the lock is one atomic op vector that names the holder it breaks, so
two breakers cannot both win.

Before a lock is broken its holder is *fenced*, as Ceph does: every OSD in the map
blocklists the holder's client (``Blocklist`` op, committed before it is answered) and from
then on refuses all of its requests with ESHUTDOWN. So a holder presumed dead that was only
stalled (or partitioned) cannot write behind the new holder's back: its late writes fail,
and so does its next renewal, after which it refuses writes itself.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from functools import partial

import trio

from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.gather import gather
from rbdpy.proto import ops as O

log = logging.getLogger("rbdpy.rbd")

LOCK_NAME = "rbd_lock"
LOCK_TAG = "internal"
LEASE = 30.0
"""Seconds a holder's lock stays valid without a renewal (``ClientOptions.lock_lease``
chooses another)."""

BLOCKLIST_FOR = 3600  # seconds a fenced client stays refused (Ceph's default: one hour)
BLOCKLIST_OID = "osd_blocklist"  # named by Blocklist requests (the op acts on the OSD)
FENCE_TIMEOUT = 10.0
RELEASE_TIMEOUT = 5.0
MAX_WAIT = 120.0  # longest wait for the lease of a holder whose liveness we cannot check
BROKEN_XATTR = "rbdpy.lock_broken"  # on the header: who broke whose lock last, and when
_HELD: dict[str, ImageLock] = {}  # cookie -> lock kept by a live keeper in this process


def lock_call(method: str, **args: object) -> O.Call:
    """A ``cls lock`` method call on the image lock (``args``: owner, cookie, ...)."""
    return O.Call("lock", method, json.dumps({"name": LOCK_NAME, **args}).encode())


class LockBusy(Exception):
    """The image is locked by a live holder."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(holder.describe())
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in it."""

    owner: str  # "client.<num>"
    cookie: str
    host: str = ""
    pid: int = 0
    start: int = 0  # the process's start time (see ``_proc_start``)
    expires: float = 0.0  # wall clock (time.time())
    boot: str = ""  # the host's boot id: another one means the host rebooted since
    pidns: str = ""  # the pid namespace its pid belongs to

    @classmethod
    def from_info(cls, key: str, entry: dict) -> Holder:
        owner, _, cookie = key.partition("/")
        try:
            d = json.loads(entry.get("desc") or "{}")
        except ValueError:
            d = {}
        try:
            return cls(owner, cookie, str(d.get("host", "")), int(d.get("pid", 0) or 0),
                       int(d.get("start", 0) or 0), float(d.get("expires", 0) or 0),
                       str(d.get("boot", "")), str(d.get("pidns", "")))
        except (TypeError, ValueError):
            return cls(owner, cookie)  # unreadable: only its lease (none) can end it

    def describe(self) -> str:
        where = f" on {self.host} pid {self.pid}" if self.host else ""
        return f"{self.owner}{where}"


DEAD, ALIVE, UNKNOWN = "dead", "alive", "unknown"


@dataclass(frozen=True)
class Here:
    """Where this process runs (what a holder's record is compared with)."""

    host: str
    boot: str
    pidns: str
    pid: int


def assess(h: Holder, here: Here, *, now: float, pid_alive: bool, held_here: bool) -> str:
    """DEAD, ALIVE or UNKNOWN (pure: the caller gathers the facts).

    ``pid_alive``: whether ``h.pid`` with ``h.start`` runs in our pid namespace;
    ``held_here``: whether a live opener in this process keeps that cookie."""
    if h.expires and h.expires < now:
        return DEAD
    if not h.host or h.host != here.host:
        return UNKNOWN  # another machine: only its lease can tell
    if h.boot and here.boot and h.boot != here.boot:
        return DEAD  # this host rebooted since: that process is gone
    if not h.pidns or h.pidns != here.pidns:
        return UNKNOWN  # another container on this host: its pids are not ours to check
    if h.pid == here.pid:
        return ALIVE if held_here else DEAD
    return ALIVE if pid_alive else DEAD


def _proc_start(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot), None if there is no such
    process or it is a zombie (killed, not yet reaped: it holds nothing any more). With
    the pid it names one process: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _pid_alive(pid: int, start: int) -> bool:
    if pid <= 0:
        return False
    got = _proc_start(pid)
    return got is not None and (not start or got == start)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def here() -> Here:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return Here(socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pidns,
                os.getpid())


class ImageLock:
    """This opener's exclusive lock on one image header object."""

    def __init__(self, objecter: Objecter, pool: int, header_oid: str,
                 lease: float | None = None) -> None:
        self.objecter, self.pool, self.oid = objecter, pool, header_oid
        self.owner = f"client.{objecter.me.num}"
        self.cookie = secrets.token_hex(8)
        self.lease = LEASE if lease is None else lease
        self.held = False
        self.lost = False  # the lock was broken by someone else: writes must stop
        self._scope: trio.CancelScope | None = None
        self._here = here()

    def _mine(self, method: str, **more: object) -> O.Call:
        return lock_call(method, owner=self.owner, cookie=self.cookie, **more)

    def _desc(self) -> str:
        me = self._here
        return json.dumps({"host": me.host, "boot": me.boot, "pidns": me.pidns, "pid": me.pid,
                           "start": _proc_start(me.pid) or 0,
                           "expires": time.time() + self.lease})

    def _lock_op(self) -> O.Call:
        return self._mine("lock", type="exclusive", tag=LOCK_TAG, description=self._desc())

    async def _call(self, ops: list, write: bool = True) -> object:
        return await self.objecter.submit(self.pool, self.oid, ops, write=write)

    async def holder(self) -> Holder | None:
        """The current holder, or None if the lock is free."""
        return await holder_of(self.objecter, self.pool, self.oid)

    async def acquire(self) -> None:
        """Take the lock, breaking a dead holder's; LockBusy if a live one has it."""
        for _ in range(5):
            try:
                await self._call([self._lock_op()])
                break
            except OSDError as e:
                if e.errno != errno.EBUSY:
                    raise
            h = await self.holder()
            if h is None:
                continue  # released meanwhile
            verdict = judge(h)
            if verdict == UNKNOWN:
                h = await self._outwait(h)
                if h is None:
                    continue  # released or taken over meanwhile: look again
            elif verdict == ALIVE:
                raise LockBusy(h)
            await fence(self.objecter, self.pool, h)
            try:  # break exactly that holder's lock and take it, atomically
                await self._call([_break_op(h), _broken_note(self.objecter, h, "took over"),
                                  self._lock_op()])
            except OSDError as e:
                if e.errno in (errno.ENOENT, errno.EBUSY):
                    continue  # somebody else broke or took it first: look again
                raise
            log.warning("broke the image lock of %s (presumed dead)", h.describe())
            break
        else:
            raise OSDError(errno.EBUSY, f"{self.oid}: the lock keeps changing hands")
        self.held = True
        _HELD[self.cookie] = self
        self.objecter.msgr.nursery.start_soon(self._keep)  # type: ignore[union-attr]

    async def _outwait(self, h: Holder) -> Holder | None:
        """Wait for the lease of a holder we cannot see: the same ``h`` if it ran out
        unrenewed (dead), None if the lock changed hands; LockBusy if it was renewed."""
        if not h.expires:
            raise LockBusy(h)  # no lease at all: only ``rbdpy lock break`` ends it
        wait = h.expires - time.time() + 0.1
        if wait > 0:
            log.warning("image locked by %s, whose liveness cannot be checked from here: "
                        "waiting %.0f s for its lease", h.describe(), wait)
            await trio.sleep(min(wait, MAX_WAIT))
        now = await self.holder()
        if now is None or now.cookie != h.cookie:
            return None
        if now.expires != h.expires or now.expires > time.time():
            raise LockBusy(now)  # it renewed (alive), or its lease is longer than we wait
        return now

    async def _keep(self) -> None:
        """Renew the lease until released; note a lock broken behind our back."""
        with trio.CancelScope() as self._scope:
            try:
                while self.held:
                    await trio.sleep(self.lease / 3)
                    try:
                        await self._call([self._mine("renew", description=self._desc())])
                    except OSDError as e:
                        if e.errno in (errno.ENOENT, errno.ESHUTDOWN):  # broken, fenced
                            self.lost = True
                            self.held = False
                            # fenced: the client as a whole says so (Rados.on_fenced)
                            (log.info if e.errno == errno.ESHUTDOWN else log.error)(
                                "the image lock was broken by another client: writes now "
                                "fail (ESHUTDOWN)")
                            return
                        log.warning("renewing the image lock failed: %s", e)
                    except Exception as e:  # this task runs in the messenger's
                        # nursery: an escaping error would stop the whole client
                        log.warning("renewing the image lock failed: %r", e)
            finally:
                _HELD.pop(self.cookie, None)

    def drop(self) -> None:
        """Stop renewing without unlocking (the header object is being deleted)."""
        self.held = False
        _HELD.pop(self.cookie, None)
        if self._scope is not None:
            self._scope.cancel()

    async def release(self) -> None:
        """Give the lock up (best effort: a dead holder's lock is broken by the next one)."""
        if not self.held:
            return
        self.drop()
        with trio.move_on_after(RELEASE_TIMEOUT) as scope:  # never hang a shutdown on it
            try:
                await self._call([self._mine("unlock")])
            except OSDError as e:
                log.warning("releasing the image lock failed: %s", e)
        if scope.cancelled_caught:
            log.warning("releasing the image lock timed out; the next writer breaks it")


async def holder_of(objecter: Objecter, pool: int, header_oid: str) -> Holder | None:
    """Who holds an image's lock (None: nobody)."""
    try:
        r = await objecter.submit(pool, header_oid, [lock_call("get_info")], write=False)
    except OSDError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    holders = json.loads(r.results[0].out or b"{}").get("holders", {})
    for key, entry in holders.items():
        return Holder.from_info(key, entry)
    return None


def _break_op(h: Holder) -> O.Call:
    """Break exactly ``h``'s lock (ENOENT if it no longer holds it)."""
    return lock_call("break_lock", owner=h.owner, cookie=h.cookie)


@dataclass(frozen=True)
class Breaker:
    """Who broke a holder's lock (``BROKEN_XATTR``), for the holder to learn once fenced:
    its own requests are refused, so it reads this with a fresh client."""

    broke: str  # the holder broken, "client.<num>"
    by: str  # the breaker, "client.<num>"
    host: str
    pid: int
    at: float  # wall clock
    how: str  # "rbdpy lock break" or "took over"

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        return f"{self.by} on {self.host} pid {self.pid} ({self.how}, {when})"


def _broken_note(objecter: Objecter, h: Holder, how: str) -> O.SetXattr:
    """Set with the break, in the same op vector: who broke ``h``'s lock."""
    me = here()
    return O.SetXattr(BROKEN_XATTR, json.dumps({
        "broke": h.owner, "by": f"client.{objecter.me.num}", "host": me.host, "pid": me.pid,
        "at": time.time(), "how": how}).encode())


async def breaker_of(objecter: Objecter, pool: int, header_oid: str) -> Breaker | None:
    """The last recorded break of this header's lock (None: none recorded)."""
    try:
        r = await objecter.submit(pool, header_oid, [O.GetXattr(BROKEN_XATTR)], write=False)
        d = json.loads(r.results[0].out or b"{}")
        return Breaker(str(d["broke"]), str(d["by"]), str(d.get("host", "")),
                       int(d.get("pid", 0)), float(d.get("at", 0)), str(d.get("how", "")))
    except OSDError as e:
        if e.errno in (errno.ENOENT, errno.ENODATA):
            return None
        raise
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: as if none


async def fence(objecter: Objecter, pool: int, h: Holder) -> None:
    """Blocklist the holder's client on every OSD, durably, before its lock is broken
    (not our own client: its requests are ordered with ours on the same sessions)."""
    owner, _, num_s = h.owner.partition(".")
    if owner != "client" or not num_s.isdigit() or int(num_s) == objecter.me.num:
        return
    until = int(time.time() + BLOCKLIST_FOR)
    with trio.move_on_after(FENCE_TIMEOUT) as scope:
        await gather(partial(objecter.submit, pool, BLOCKLIST_OID,
                             [O.Blocklist(int(num_s), until)], write=True,
                             wait_commit=True, osd=osd_id) for osd_id in objecter.osdmap.osds)
    if scope.cancelled_caught:
        raise OSDError(errno.ETIMEDOUT, f"fencing {h.owner}: not every OSD answered in "
                       f"{FENCE_TIMEOUT:g} s, its lock stays")
    log.warning("fenced %s on every OSD", h.owner)


async def break_holder(objecter: Objecter, pool: int, header_oid: str, h: Holder) -> None:
    """Fence ``h`` and break exactly its lock (``rbdpy lock break``); ENOENT if it no
    longer holds it. Its requests fail from now on; it refuses writes itself from its next
    renewal."""
    await fence(objecter, pool, h)
    await objecter.submit(pool, header_oid,
                          [_break_op(h), _broken_note(objecter, h, "rbdpy lock break")],
                          write=True)


def judge(h: Holder) -> str:
    """``assess`` with this process's facts."""
    return assess(h, here(), now=time.time(), pid_alive=_pid_alive(h.pid, h.start),
                  held_here=h.cookie in _HELD)
