"""The objecter: object requests to OSDs with tids, ack vs commit, flush, and resubmission.

Seed 004's shape: a session is opened per OSD before requests flow (the messenger's Peer),
requests are routed from a cached map (``OSDMap.object_target``), each write can get two
replies (an *ack* when applied and readable, a *commit* when durable) and ``flush`` waits for
the commits of every earlier write. When an OSD session is reset (the daemon restarted and
lost our session) or the map moves an object's primary, every request still lacking what it
waits for is resent with the same tid and a higher attempt number; the OSD recognizes
requests it already applied and answers them without applying twice.

Reads land in place (seed 003): the reader's buffer slices are registered under the tid, and
the messenger's ``alloc_data`` hands them out when the reply header arrives.
"""

from __future__ import annotations

import errno
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from rbdpy.errors import RbdpyError
from rbdpy.maps.osdmap import OSDMap
from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, Peer
from rbdpy.proto import ops as osdops
from rbdpy.proto import osdmsg

log = logging.getLogger("rbdpy.objecter")


class OSDError(RbdpyError):
    """An OSD answered with an error: carries the errno."""

    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(err, f"{what}: {errno.errorcode.get(err, err)}" if what else
                         errno.errorcode.get(err, str(err)))


@dataclass(eq=False)
class Request:
    tid: int
    pool: int
    oid: str
    ops: list
    write: bool
    snapc: tuple[int, list[int]] | None
    snapid: int
    read_into: list[memoryview] | None
    want_commit: bool
    attempt: int = 0
    target: int | None = None
    acked: trio.Event = field(default_factory=trio.Event)
    committed: trio.Event = field(default_factory=trio.Event)
    reply: object | None = None
    error: int = 0
    landed: bool = False  # alloc_data handed out read_into: the data is already in place
    # ``start`` requests: called once on the trio thread when what the caller waits for
    # (ack, or commit if done_at_commit) arrived or the request failed
    on_done: Callable[[Request], None] | None = None
    done_at_commit: bool = False
    # a write whose caller waits for the commit asks for no ack reply: the OSD then sends
    # one reply instead of two (as modern Ceph clients ask only for ONDISK)
    want_ack: bool = True
    osd: int | None = None  # sent to this OSD, whatever the placement (OSD-wide ops)


MAX_UNCOMMITTED_PER_OBJECT = 64  # half the OSD's request-id window per client and object


@dataclass(frozen=True)
class Waiting:
    """Requests still waiting for an OSD: what a person needs to know when I/O hangs."""

    by_osd: dict[int, int]  # the OSD a request was sent to -> how many wait for it
    homeless: int  # no OSD can serve their placement group in the current map
    queued: int  # held back behind earlier writes to their object
    writes: int  # of all of them, how many are writes
    oldest_tid: int

    @property
    def total(self) -> int:
        return sum(self.by_osd.values()) + self.homeless + self.queued

    def targets(self, osdmap: OSDMap) -> str:
        """``osd.0 (127.0.0.1:6800), osd.2 (...)``: whom they wait for."""
        names = [_osd(osdmap, i) for i in sorted(self.by_osd)]
        if self.homeless:
            names.append("an OSD to serve their placement group")
        return ", ".join(names)

    def describe(self, osdmap: OSDMap) -> str:
        """One line: ``waiting for osd.0 (127.0.0.1:6800): 3 requests (2 writes)``."""
        parts = [f"{_osd(osdmap, i)}: {_n(n, 'request')}" for i, n in sorted(self.by_osd.items())]
        if self.homeless:
            parts.append(f"no OSD up for their placement group: {_n(self.homeless, 'request')}")
        if self.queued:
            parts.append(f"queued behind those: {_n(self.queued, 'request')}")
        writes = f" ({_n(self.writes, 'write')})" if self.writes else ""
        return f"waiting for {'; '.join(parts)}{writes}"


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _osd(osdmap: OSDMap, osd_id: int) -> str:
    info = osdmap.osds.get(osd_id)
    return f"osd.{osd_id} ({info.host}:{info.port})" if info is not None else f"osd.{osd_id}"


class Objecter:
    """Client-side request engine; also the messenger Dispatcher for OSD replies."""

    def __init__(self, osdmap: OSDMap, *, client_id: int | None = None) -> None:
        self.osdmap = osdmap
        self.me = EntityName(ENTITY_CLIENT, client_id or random.getrandbits(32))
        self.incarnation = random.getrandbits(63)
        self.msgr: Messenger | None = None
        self.last_tid = 0
        self.inflight: dict[int, Request] = {}
        self.uncommitted: dict[int, Request] = {}
        # uncommitted writes per object, bounded so that every one we may have to resend is
        # still in the OSD's request-id window there (osd.daemon.REQID_KEEP = 128)
        self._per_object: dict[tuple[int, str], int] = {}
        self._deferred: dict[tuple[int, str], deque[Request]] = {}  # over the limit, FIFO
        self.aborted = 0  # errno every request fails with after ``abort`` (0: not aborted)
        self.aborted_writes = 0  # writes ``abort`` failed (data the OSDs may never have)
        # called once, on the trio thread, when an OSD first refuses a request with
        # ESHUTDOWN: this client was fenced (blocklisted) by one that broke its lock
        self.on_blocklisted: Callable[[], None] | None = None
        self.blocklisted = False

    def attach(self, msgr: Messenger) -> None:
        self.msgr = msgr

    # -- submitting -----------------------------------------------------------------------

    async def submit(
        self,
        pool: int,
        oid: str,
        ops: Sequence,
        *,
        write: bool,
        snapc: tuple[int, list[int]] | None = None,
        snapid: int = osdops.NOSNAP,
        read_into: list[memoryview] | None = None,
        wait_commit: bool = False,
        osd: int | None = None,
    ) -> object:
        """Send one op vector; return the decoded reply once acked (or committed).
        ``osd`` sends it to that OSD rather than to the object's primary (OSD-wide ops
        such as ``Blocklist``).

        Writes always ask for both replies: the ack returns control, the commit is tracked
        for ``flush``. Raises OSDError with the OSD's errno on failure.
        """
        req = self._new_request(pool, oid, ops, write, snapc, snapid, read_into)
        req.want_ack = not (write and wait_commit)
        req.osd = osd
        sent = self._place(req)
        try:
            await (req.committed if wait_commit else req.acked).wait()
        except BaseException:
            # cancelled: forget the reader buffer so a late reply cannot land in it; a read
            # is forgotten entirely, so is a write still queued behind the object's limit
            # (a write that went out stays tracked: it may apply, flush waits for it)
            req.read_into = None
            if not sent and req.tid not in self.inflight:
                queue = self._deferred.get((pool, oid))
                if queue is not None and req in queue:
                    queue.remove(req)
                self.uncommitted.pop(req.tid, None)
            elif not write:
                self.inflight.pop(req.tid, None)
            raise
        if req.error:
            raise OSDError(req.error, f"{oid}")
        return req.reply

    def start(
        self,
        pool: int,
        oid: str,
        ops: Sequence,
        *,
        write: bool,
        on_done: Callable[[Request], None],
        read_into: list[memoryview] | None = None,
        wait_commit: bool = False,
    ) -> Request:
        """``submit`` without a task: send now, call ``on_done(req)`` on the trio thread once
        acked (or committed if ``wait_commit``) or failed; ``req.error``/``req.reply`` tell.

        The NBD data path uses it: a trio task, its events and its wakeups per 4 KiB request
        cost more than the request itself. Flush and resends treat it like any other."""
        req = self._new_request(pool, oid, ops, write, None, osdops.NOSNAP, read_into)
        req.on_done = on_done
        req.done_at_commit = wait_commit
        req.want_ack = not (write and wait_commit)
        self._place(req)
        return req

    def _new_request(self, pool: int, oid: str, ops: Sequence, write: bool,
                     snapc: tuple[int, list[int]] | None, snapid: int,
                     read_into: list[memoryview] | None) -> Request:
        self.last_tid += 1
        return Request(self.last_tid, pool, oid, list(ops), write, snapc, snapid, read_into,
                       want_commit=write)

    def _place(self, req: Request) -> bool:
        """Track and send (True), or queue behind its object's limit (False). A read of an
        object with writes held back queues behind them: the OSD must see them first, as
        the caller may already have been told they are done (write-back)."""
        if self.aborted:
            self._refuse(req)
            return True
        if req.write:
            self.uncommitted[req.tid] = req  # flush waits for it from now on
            return self._admit(req)
        queue = self._deferred.get((req.pool, req.oid))
        if queue:
            queue.append(req)
            return False
        self.inflight[req.tid] = req
        self._send(req)
        return True

    @staticmethod
    def _notify(req: Request) -> None:
        cb, req.on_done = req.on_done, None
        try:
            cb(req)  # type: ignore[misc]
        except Exception:  # a caller's bug must not stop the reply reader
            log.exception("completion callback of tid %d failed", req.tid)

    def _admit(self, req: Request) -> bool:
        """Send a write now if its object has fewer than MAX_UNCOMMITTED_PER_OBJECT
        uncommitted writes out, else queue it (True if sent). Queued writes go out in call
        order, each when an earlier one commits, so one object's writes reach its OSD in the
        order they were submitted."""
        key = (req.pool, req.oid)
        queue = self._deferred.get(key)
        if queue or self._per_object.get(key, 0) >= MAX_UNCOMMITTED_PER_OBJECT:
            self._deferred.setdefault(key, deque()).append(req)
            return False
        self._per_object[key] = self._per_object.get(key, 0) + 1
        self.inflight[req.tid] = req
        self._send(req)
        return True

    def _release(self, key: tuple[int, str]) -> None:
        """A write of this object committed (or failed): its slot goes to the next queued
        write, if any; reads queued before the next write after that go out too."""
        queue = self._deferred.get(key)
        handed = False
        while queue:
            if queue[0].write:
                if handed:
                    break
                handed = True
            req = queue.popleft()
            self.inflight[req.tid] = req
            self._send(req)
        if queue is not None and not queue:
            del self._deferred[key]
        if handed:
            return
        left = self._per_object[key] - 1
        if left:
            self._per_object[key] = left
        else:
            del self._per_object[key]

    def _send(self, req: Request) -> None:
        assert self.msgr is not None, "objecter not attached to a messenger"
        if req.osd is not None:
            acting = [req.osd] if req.osd in self.osdmap.osds else []
        else:
            _pg, acting = self.osdmap.object_target(req.pool, req.oid)
        if not acting:
            # nothing can serve this PG right now: wait for a map change
            req.target = None
            return
        req.target = acting[0]
        if req.write:
            flags = osdops.FLAG_WRITE | osdops.FLAG_COMMIT
            if req.want_ack:
                flags |= osdops.FLAG_ACK
        else:
            flags = osdops.FLAG_READ | osdops.FLAG_ACK
        msg = osdmsg.encode_request(
            req.ops, tid=req.tid, client=self.me, incarnation=self.incarnation,
            epoch=self.osdmap.epoch, pool=req.pool, oid=req.oid, flags=flags,
            snapc=req.snapc, snapid=req.snapid, attempt=req.attempt,
        )
        self._peer(req.target).send(msg)

    def _peer(self, osd_id: int) -> Peer:
        assert self.msgr is not None
        return self.msgr.connect(self.osdmap.osds[osd_id].addr)

    async def flush(self) -> None:
        """Wait until every write submitted before this call is durable (committed)."""
        upto = self.last_tid
        # tids grow and requests enter ``uncommitted`` as they are made, so the first entry
        # is the oldest: waiting on it in turn is O(1) per step, not a scan of every write
        while self.uncommitted:
            tid, oldest = next(iter(self.uncommitted.items()))
            if tid > upto:
                return
            await oldest.committed.wait()
            if oldest.error:
                raise OSDError(oldest.error, f"commit of {oldest.oid}")

    # -- when the OSDs do not answer --------------------------------------------------------

    def waiting(self, upto_tid: int) -> Waiting | None:
        """The requests up to ``upto_tid`` (the ``last_tid`` of an earlier look) that still
        wait for an answer, or None. Sans-I/O: the caller brings the clock, so a request
        found here has waited at least since that earlier look."""
        by_osd: dict[int, int] = {}
        homeless = queued = writes = 0
        oldest = 0
        for req in self.inflight.values():
            if req.tid > upto_tid:
                continue
            if req.target is None:
                homeless += 1
            else:
                by_osd[req.target] = by_osd.get(req.target, 0) + 1
            writes += req.write
            oldest = req.tid if not oldest else min(oldest, req.tid)
        for queue in self._deferred.values():
            for req in queue:
                if req.tid <= upto_tid:
                    queued += 1
                    writes += req.write
                    oldest = req.tid if not oldest else min(oldest, req.tid)
        if not oldest:
            return None
        return Waiting(by_osd, homeless, queued, writes, oldest)

    def abort(self, err: int) -> int:
        """Fail every request with ``err``, now and from now on, so that nothing waits for
        the OSDs any more (a server that must stop while they are gone); returns how many
        writes were failed (``aborted_writes`` goes on counting later ones). A read whose
        reply is arriving (its data lands in the caller's buffer) is left to finish: the
        caller must not get its buffer back while the messenger may still write into it."""
        self.aborted = err
        pending = [r for q in self._deferred.values() for r in q]
        pending += [r for r in self.inflight.values()
                    if r.write or not r.landed or r.read_into is None]
        self._deferred.clear()
        self._per_object.clear()
        for req in sorted(pending, key=lambda r: r.tid):
            self.inflight.pop(req.tid, None)
            self._refuse(req)
        return self.aborted_writes

    def _refuse(self, req: Request) -> None:
        """Fail ``req`` with ``aborted`` without sending it (it holds no in-flight slot)."""
        if req.write:
            self.aborted_writes += 1
        self._finish(req, self.aborted, None)

    def _blocklisted(self) -> None:
        if not self.blocklisted:
            self.blocklisted = True
            log.debug("an OSD refused a request with ESHUTDOWN: this client is fenced")
            if self.on_blocklisted is not None:
                try:
                    self.on_blocklisted()
                except Exception:  # a reporting bug must not stop the reply reader
                    log.exception("on_blocklisted failed")

    # -- map changes and resets -----------------------------------------------------------

    def update_map(self, osdmap: OSDMap) -> None:
        """A newer map: resend requests whose primary moved (or had none)."""
        if osdmap.epoch <= self.osdmap.epoch:
            return
        self.osdmap = osdmap
        for req in list(self.inflight.values()):
            if req.osd is not None:
                continue
            _pg, acting = osdmap.object_target(req.pool, req.oid)
            if not acting or acting[0] != req.target:
                req.attempt += 1
                self._send(req)

    def _resend_for(self, osd_addr: object) -> None:
        for req in sorted(self.inflight.values(), key=lambda r: r.tid):
            if req.target is not None and self.osdmap.osds[req.target].addr == osd_addr:
                req.attempt += 1
                self._send(req)

    # -- Dispatcher ----------------------------------------------------------------------

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        if header.type != osdops.MSG_OSD_OPREPLY:
            return None
        req = self.inflight.get(header.tid)
        if req is None or req.read_into is None:
            return None
        req.landed = True
        return req.read_into

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        if msg.type != osdops.MSG_OSD_OPREPLY:
            log.warning("unexpected message type %d from %s", msg.type, peer.name)
            return
        req = self.inflight.get(msg.tid)
        if req is None:
            return  # a late duplicate for something already complete
        try:
            reply = osdmsg.decode_reply(msg, req.ops)
        except osdops.OpDecodeError as e:
            log.warning("undecodable reply tid %d from %s: %s", msg.tid, peer.name, e)
            reply, err = None, errno.EBADMSG
        else:
            reply.landed = req.landed
            if reply.attempt != req.attempt:
                # an answer to an earlier send (e.g. the old primary's commit after the map
                # moved the object): it says nothing about the copy we now wait for
                return
            err = -reply.result if reply.result < 0 else 0
        if err:
            if err == errno.ESHUTDOWN:
                self._blocklisted()
            self._finish(req, err, reply)
            return
        if reply.flags & osdops.FLAG_ACK and not req.acked.is_set():
            req.reply = reply
            req.acked.set()
            if req.on_done is not None and not req.done_at_commit:
                self._notify(req)
        if reply.flags & osdops.FLAG_COMMIT or not req.want_commit:
            if req.reply is None:
                req.reply = reply
            req.reply.flags |= reply.flags  # the kept (ack) reply now records the commit
            self._finish(req, 0, req.reply)

    def _finish(self, req: Request, err: int, reply: object | None) -> None:
        req.error = err
        if req.write and req.tid in self.uncommitted and req.tid in self.inflight:
            self._release((req.pool, req.oid))
        if req.reply is None:
            req.reply = reply
        self.inflight.pop(req.tid, None)
        self.uncommitted.pop(req.tid, None)
        req.read_into = None
        req.acked.set()
        req.committed.set()
        if req.on_done is not None:
            self._notify(req)

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        """The OSD lost our session (it restarted): resend everything not yet committed."""
        log.info("session with %s reset; resubmitting", peer.name)
        self._resend_for(peer.addr)

    def on_peer_reset(self, peer: Peer) -> None:
        pass
