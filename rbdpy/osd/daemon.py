"""The OSD daemon: executes op vectors against the object store, replies ack and commit.

Requests are executed in arrival order on the trio thread, so a vector on one object is
atomic (one store transaction) and ordered with every other request on that object. The
ack reply leaves as soon as the transaction is applied (readable); the commit reply leaves
after the group-commit fsync that covers it, which a committer task hands to the kernel
(Linux AIO, ``rbdpy.osd.aiosync``; a worker thread where that is not available) while new
requests keep being applied.

Resent requests (same client incarnation and tid, higher attempt) are recognized from a
small per-object table of recent request ids that is written in the same transaction as the
mutation itself, so it survives a crash exactly when the mutation does: a write already
applied is answered, not applied twice. On disk the table is one xattr per client
incarnation, a bounded log the store appends to (``appendxattr``): a write journals its own
12-byte entry, not the whole table.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import struct
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

import trio

from rbdpy.gather import gather
from rbdpy.msgr.message import ENTITY_OSD, EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, Peer
from rbdpy.osd import classes
from rbdpy.osd.aiosync import AioSync
from rbdpy.osd.options import OSDOptions
from rbdpy.osd.store import ObjectStore, StoreError, Transaction
from rbdpy.proto import ops as osdops
from rbdpy.proto import osdmsg

log = logging.getLogger("rbdpy.osd")
T = TypeVar("T")

REQID_PREFIX = "_rq."  # + "<type>.<num>.<incarnation>": that client's log on the object
REQID_KEEP = 128  # per client incarnation and object: must cover its writes in flight there
REQID_CLIENTS = 8  # client incarnations remembered per object
_RQ_ENTRY = struct.Struct("<Qi")  # tid, result: one log entry
_RQ_KEEP_BYTES = REQID_KEEP * _RQ_ENTRY.size
_BOTH = osdops.FLAG_ACK | osdops.FLAG_COMMIT
BLOCKLIST_KEY = "_osd.blocklist"  # the OSD's own object: one xattr per fenced client
_UNTIL = struct.Struct("<Q")


class _PendingCommit(NamedTuple):
    seq: int
    peer: Peer
    reply: Message


class ObjectContext:
    """A class method's view of its object: reads from the store, writes into the txn.

    Xattr reads see the vector's own xattr changes; data reads see the object's data as it
    was before the vector (as ``cls_cxx_read`` in Ceph), an object the vector created as
    empty."""

    def __init__(self, store: ObjectStore, oid: str, txn: Transaction) -> None:
        self.store, self.oid, self.txn = store, oid, txn
        self.mutated = False
        self.removed = False  # the vector deletes the object (maybe re-creating it after)
        self._xattr_overlay: dict[str, bytes | None] = {}
        self._exists: bool | None = None

    def exists(self) -> bool:
        if self._exists is not None:
            return self._exists
        return self.store.exists(self.oid)

    def _created(self) -> bool:
        """The vector (re)creates the object: the store has none of its data yet."""
        return self._exists is True and (self.removed or not self.store.exists(self.oid))

    def stat(self) -> tuple[int, int, int]:
        if self._created():
            return 0, 0, 0
        st = self.store.stat(self.oid)
        return st.size, int(st.mtime * 1e9), st.version

    def read(self, offset: int, length: int) -> bytes:
        if self._created():
            return b""
        return bytes(self.store.read(self.oid, offset, length))

    def allocated(self) -> int:
        if self._created():
            return 0
        return sum(n for _o, n in self.store.extents(self.oid))

    def getxattr(self, name: str) -> bytes | None:
        if name in self._xattr_overlay:
            return self._xattr_overlay[name]
        try:
            return self.store.getxattr(self.oid, name)
        except StoreError:
            return None

    def getxattrs(self) -> dict[str, bytes]:
        try:
            out = dict(self.store.getxattrs(self.oid))
        except StoreError:
            out = {}
        for k, v in self._xattr_overlay.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return out

    def create(self, exclusive: bool) -> None:
        self.txn.create(exclusive)
        self._exists = True
        self.mutated = True

    def write(self, offset: int, data: bytes) -> None:
        self.txn.write(offset, data)
        self._exists = True
        self.mutated = True

    def writefull(self, data: bytes) -> None:
        self.txn.writefull(data)
        self._exists = True
        self.mutated = True

    def setxattr(self, name: str, value: bytes) -> None:
        self.txn.setxattr(name, value)
        self._xattr_overlay[name] = value
        self._exists = True
        self.mutated = True

    def rmxattr(self, name: str) -> None:
        self.txn.rmxattr(name)
        self._xattr_overlay[name] = None
        self.mutated = True

    def remove(self) -> None:
        self.txn.delete()
        self._exists = False
        self.removed = True
        self.mutated = True


class OSD:
    """One OSD: a store, a messenger endpoint, a committer. Also the messenger Dispatcher."""

    def __init__(self, osd_id: int, data_dir: str | os.PathLike,
                 options: OSDOptions | None = None) -> None:
        self.id = osd_id
        self.options = options = options or OSDOptions()
        self.name = EntityName(ENTITY_OSD, osd_id)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ObjectStore(self.data_dir / "store")
        self.epoch = 1
        # fenced clients (client num -> until, epoch seconds): every request refused
        self.blocklist: dict[int, int] = self._load_blocklist()
        self._pending: list[_PendingCommit] = []
        self._commit_wanted = trio.Event()
        # object -> its recent request ids, per client incarnation
        self._recent: dict[str, _ObjIds] = {}
        self.msgr: Messenger | None = None
        self.stats = {"ops": 0, "errors": 0, "dups": 0, "commits": 0, "fenced": 0}
        self.commit_delay = options.commit_delay  # fault injection (see OSDOptions)
        # group commits synced by the kernel, awaited here (None: a worker thread does it)
        self._aio = AioSync.open() if options.aio else None

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with Messenger(self.name, self) as msgr:
            self.msgr = msgr
            addr = await msgr.listen(host, port)
            log.info("osd listening", extra={"osd": self.id, "addr": f"{addr[0]}:{addr[1]}",
                                             "commits": "thread" if self._aio is None
                                             else "aio", "commit_delay": self.commit_delay})
            msgr.nursery.start_soon(self._committer)
            task_status.started(addr)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.store.close)
                    if self._aio is not None:
                        self._aio.close()
                    log.info("osd stopped cleanly", extra={"osd": self.id})

    async def _committer(self) -> None:
        """Group commit: one fsync for everything applied meanwhile, then commit replies."""
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            if not self._pending:
                continue
            if self.commit_delay:
                await trio.sleep(self.commit_delay)
            try:
                durable = await self._commit()
            except StoreError as e:
                log.error("commit failed: %s", e)
                durable = -1
                for p in self._pending:
                    p.peer.send(osdmsg.error_reply(p.reply.tid, e.errno, epoch=self.epoch))
                self._pending = []
                continue
            self.stats["commits"] += 1
            keep = []
            for p in self._pending:
                if p.seq <= durable:
                    p.peer.send(p.reply)
                else:
                    keep.append(p)
            self._pending = keep
            if keep:
                self._commit_wanted.set()

    async def _commit(self) -> int:
        """One group commit; the durable seq. With AIO (``rbdpy.osd.aiosync``) the syncs
        are the kernel's and this loop goes on meanwhile; without, or while a checkpoint
        holds the store's commit lock, ``store.commit`` runs in a worker thread."""
        plan = self.store.begin_commit() if self._aio is not None else None
        if plan is None:
            return await trio.to_thread.run_sync(self.store.commit)
        synced = False
        try:
            if plan.seq > self.store.committed_seq():
                # direct data before the records about it; those files all at once
                await gather(partial(self._sync_file, p) for p in plan.direct_paths)
                await self._aio.fdatasync(plan.journal_fd)  # type: ignore[union-attr]
            synced = True
        except OSError as e:
            raise StoreError(errno.EIO, f"commit: {e}") from None
        finally:
            durable = self.store.end_commit(plan, synced)
        if plan.jpos >= self.store.journal_max:
            await trio.to_thread.run_sync(self.store.checkpoint_if_due)
        return durable

    async def _sync_file(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # deleted since; that delete is journaled
        try:
            await self._aio.fdatasync(fd)  # type: ignore[union-attr]
        finally:
            os.close(fd)

    # -- Dispatcher ----------------------------------------------------------------------

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        return None  # write payloads land in fresh pages; the store writes from those views

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        if msg.type != osdops.MSG_OSD_OP:
            log.warning("unexpected message type %d from %s", msg.type, peer.name)
            return
        self.stats["ops"] += 1
        req = None
        try:
            req = osdmsg.decode_request(msg)
            self._execute(peer, req)
        except osdops.OpDecodeError as e:
            self.stats["errors"] += 1
            log.warning("bad request from %s tid %d: %s", peer.name, msg.tid, e)
            peer.send(osdmsg.error_reply(msg.tid, e.errno, epoch=self.epoch))
        except Exception as e:
            # The last line of defence: a bug met by one request is that request's EIO and
            # one log line, never the daemon's exit (the objecter would resend the same
            # request to the restarted OSD, a crash loop). Cancellation is not caught.
            self.stats["errors"] += 1
            log.error("request failed unexpectedly, answered EIO: %s", _failure(e),
                      extra={"client": str(peer.name), "tid": msg.tid,
                             "oid": req.oid if req is not None else "?",
                             "ops": _op_names(req.ops) if req is not None else "?"})
            peer.send(osdmsg.error_reply(msg.tid, errno.EIO, epoch=self.epoch,
                                         attempt=req.attempt if req is not None else 0))

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        pass  # replies to a client that reset are not needed: it resends its requests

    def on_peer_reset(self, peer: Peer) -> None:
        self._pending = [p for p in self._pending if p.peer is not peer]

    # -- execution ------------------------------------------------------------------------

    def _load_blocklist(self) -> dict[int, int]:
        try:
            attrs = self.store.getxattrs(BLOCKLIST_KEY)
        except StoreError:
            return {}
        now = time.time()
        out = {}
        for name, raw in attrs.items():
            if name.isdigit() and len(raw) == _UNTIL.size:
                until = _UNTIL.unpack(raw)[0]
                if until > now:
                    out[int(name)] = until
        return out

    def _fenced(self, num: int) -> bool:
        until = self.blocklist.get(num)
        if until is None:
            return False
        if until > time.time():
            return True
        del self.blocklist[num]  # expired (its xattr goes with the next blocklist write)
        return False

    def _blocklist_add(self, peer: Peer, req: osdmsg.OSDRequest, op: osdops.Blocklist
                       ) -> None:
        """Fence a client, durably: replied to once the entry is committed, so the fencer
        knows that no request of the fenced client is executed here any more. The entry
        replaces the client's previous one, in memory as on disk (an ``until`` already
        past unfences it)."""
        txn = Transaction()
        txn.setxattr(str(op.client_num), _UNTIL.pack(op.until))
        now = time.time()
        expired = [num for num, until in self.blocklist.items()
                   if until <= now and num != op.client_num]  # not the entry just written
        for num in expired:
            txn.rmxattr(str(num))
        try:
            res = self.store.apply(BLOCKLIST_KEY, txn)
        except StoreError as e:
            self.stats["errors"] += 1
            return self._reply(peer, req, -e.errno, 0, [], None, True)
        for num in expired:
            del self.blocklist[num]
        if op.until > now:
            self.blocklist[op.client_num] = op.until
        else:
            self.blocklist.pop(op.client_num, None)
        log.warning("blocklisted client.%d until %d", op.client_num, op.until)
        self._reply(peer, req, 0, res.version, [(op, 0, None)], res.seq, True)

    def _execute(self, peer: Peer, req: osdmsg.OSDRequest) -> None:
        if self.blocklist and self._fenced(req.client.num):
            self.stats["fenced"] += 1
            return self._reply(peer, req, -errno.ESHUTDOWN, 0, [], None, req.is_write)
        if len(req.ops) == 1 and type(req.ops[0]) is osdops.Blocklist:
            return self._blocklist_add(peer, req, req.ops[0])
        key = f"{req.pool}.{req.oid}"
        reqid = (req.client.type, req.client.num, req.incarnation, req.tid)
        writes = calls = False
        only_writes = True  # plain data writes only: no outputs to compute after apply
        for op in req.ops:  # one pass (the common vector is a single read or write)
            if op.MUTATES:
                writes = True
                if type(op) is not osdops.Write:
                    only_writes = False
            else:
                only_writes = False
                if type(op) is osdops.Call:
                    calls = True
        if calls and not writes:
            try:
                writes = any(classes.lookup(op.cls, op.method)[1] for op in req.ops
                             if type(op) is osdops.Call)
            except classes.ClsError as e:
                return self._reply(peer, req, -e.errno, 0, [], None, False)
        if writes:
            dup = self._find_dup(key, reqid)
            if dup is not None:
                self.stats["dups"] += 1
                result, version = dup
                return self._reply(peer, req, result, version, [], self.store.applied_seq, True)
        txn = Transaction()
        ctx = ObjectContext(self.store, key, txn)
        try:
            outputs = self._run_ops(req, key, txn, ctx)
            if writes and (len(txn) or ctx.mutated):
                saved = self._record_reqid(key, reqid, txn, ctx)
                res = self.store.apply(key, txn)
                version, seq = res.version, res.seq
                self._remember(key, reqid, 0, version, saved, ctx.removed)
            else:
                version, seq = self._version(key), None
            if not only_writes:  # reads are thunks, run after apply
                outputs = [(op, r, out() if callable(out) else out) for op, r, out in outputs]
        except (StoreError, classes.ClsError, osdops.OpError) as e:
            self.stats["errors"] += 1
            err = e.errno
            if (err == errno.ENOENT and writes and req.attempt > 0
                    and any(isinstance(op, osdops.Delete) for op in req.ops)):
                err = 0  # a resent delete that already happened before a crash
            if writes:
                self._remember(key, reqid, -err, 0, False, False)
            return self._reply(peer, req, -err, 0, [], None, writes)
        self._reply(peer, req, 0, version, outputs, seq, writes)

    def _run_ops(self, req: osdmsg.OSDRequest, key: str, txn: Transaction,
                 ctx: ObjectContext) -> list[tuple]:
        """Queue mutations and guards into ``txn``; reads become thunks run after apply."""
        store, out = self.store, []
        for op in req.ops:
            t = type(op)
            if t is osdops.Write:  # the common case first
                txn.write(op.offset, op.data)
                out.append((op, 0, None))
                continue
            if t is osdops.Read:
                if op.length > store.max_object_size:
                    raise osdops.OpError(errno.EINVAL, "read longer than an object")
                out.append((op, 0, _reader(store, key, op.offset, op.length)))
                continue
            if t is osdops.SparseRead:
                out.append((op, 0, _bind(store.sparse_read, key, op.offset, op.length)))
                continue
            if t is osdops.Stat:
                out.append((op, 0, _bind(_stat, store, key)))
                continue
            if t is osdops.GetXattr:
                out.append((op, 0, _bind(store.getxattr, key, op.name)))
                continue
            if t is osdops.GetXattrs:
                out.append((op, 0, _bind(_visible_xattrs, store, key)))
                continue
            if t is osdops.ListObjects:
                out.append((op, 0, _bind(_list, store, req.pool, op.start_after,
                                         op.max_entries)))
                continue
            if t is osdops.Call:
                fn, _w = classes.lookup(op.cls, op.method)
                out.append((op, 0, fn(ctx, op.indata)))
                continue
            if t is osdops.WriteFull:
                txn.writefull(op.data)
            elif t is osdops.Zero:
                txn.zero(op.offset, op.length)
            elif t is osdops.Truncate:
                txn.truncate(op.size)
            elif t is osdops.Delete:
                txn.delete()
                ctx._exists = False
                ctx.removed = True
            elif t is osdops.Create:
                txn.create(op.exclusive)
            elif t is osdops.SetXattr:
                if op.name.startswith("_"):
                    raise osdops.OpError(errno.EINVAL, "xattr names starting with _ are internal")
                txn.setxattr(op.name, op.value)
            elif t is osdops.RmXattr:
                if op.name.startswith("_"):
                    raise osdops.OpError(errno.EINVAL, "xattr names starting with _ are internal")
                txn.rmxattr(op.name)
            elif t is osdops.CmpXattr:
                txn.cmpxattr(op.name, op.op, op.value)
            elif t is osdops.AssertVersion:
                if self._version(key) != op.version:  # the store says ECANCELED; ops: ERANGE
                    raise osdops.OpError(errno.ERANGE, f"object version is not {op.version}")
                txn.assert_version(op.version)
            elif t is osdops.AssertExists:
                txn.assert_exists()
            else:  # pragma: no cover - every registered op is handled above
                raise osdops.OpError(errno.EOPNOTSUPP, f"op {t.__name__}")
            out.append((op, 0, None))
        if not ctx.mutated and len(txn) and not req.is_write:
            # guards in a read-only vector: check them without writing anything
            self.store.apply(key, txn)  # a txn of guards only evaluates, writes nothing
        return out

    def _reply(self, peer: Peer, req: osdmsg.OSDRequest, result: int, version: int,
               outputs: list, seq: int | None, write: bool) -> None:
        """Reads get one reply; writes an ack now and a commit after the fsync covering them."""
        encode = osdmsg.encode_reply
        if not write or seq is None or seq <= self.store.committed_seq():
            peer.send(encode(tid=req.tid, result=result, version=version, flags=_BOTH,
                             epoch=self.epoch, attempt=req.attempt, op_results=outputs))
            return
        if req.flags & osdops.FLAG_ACK:
            peer.send(encode(tid=req.tid, result=result, version=version,
                             flags=osdops.FLAG_ACK, epoch=self.epoch, attempt=req.attempt,
                             op_results=outputs))
        acked = req.flags & osdops.FLAG_ACK
        self._pending.append(_PendingCommit(  # without an ack, the commit carries the outputs
            seq, peer, encode(tid=req.tid, result=result, version=version,
                              flags=osdops.FLAG_COMMIT, epoch=self.epoch,
                              attempt=req.attempt, op_results=() if acked else outputs)))
        self._commit_wanted.set()

    def _version(self, oid: str) -> int:
        try:
            return self.store.stat(oid).version
        except StoreError:
            return 0

    # -- duplicate detection --------------------------------------------------------------
    #
    # Invariant: after every write that records its id, each client's xattr on the object
    # holds exactly that client's in-memory entries (same order, same window). Entries the
    # store has not got yet (failed requests, writes whose vector deleted the object, ...)
    # wait in ``unsaved`` and ride along with the next recorded write; logs of evicted
    # clients wait in ``drop`` to be removed.

    def _find_dup(self, oid: str, reqid: tuple) -> tuple[int, int] | None:
        tbl = self._recent.get(oid)
        if tbl is None:
            tbl = self._load_recent(oid)
        ids = tbl.clients.get(reqid[:3])
        return ids.results.get(reqid[3]) if ids is not None else None

    def _table(self, oid: str) -> _ObjIds:
        tbl = self._recent.get(oid)
        return tbl if tbl is not None else self._load_recent(oid)

    def _load_recent(self, oid: str) -> _ObjIds:
        tbl = _ObjIds()
        try:
            attrs = self.store.getxattrs(oid)
        except StoreError:
            attrs = {}
        for name, raw in attrs.items():  # least recently appended first
            if not name.startswith(REQID_PREFIX):
                continue
            try:
                ctype, cnum, inc = (int(x) for x in name[len(REQID_PREFIX):].split("."))
            except ValueError:
                continue
            ids = _ClientIds(name)
            n = len(raw) - len(raw) % _RQ_ENTRY.size
            for tid, result in _RQ_ENTRY.iter_unpack(raw[len(raw) - n:]):
                if tid not in ids.results:
                    ids.tids.append(tid)
                ids.results[tid] = (result, 0)
            tbl.clients[(ctype, cnum, inc)] = ids
        while len(tbl.clients) > REQID_CLIENTS:
            tbl.drop.append(tbl.clients.popitem(last=False)[1].attr)
        if len(self._recent) > 4096:
            self._recent.pop(next(iter(self._recent)))
        self._recent[oid] = tbl
        return tbl

    def _record_reqid(self, oid: str, reqid: tuple, txn: Transaction,
                      ctx: ObjectContext) -> bool:
        """Add this request's id (and whatever is pending) to ``txn``; False if it cannot be
        attached to the object, so it stays unsaved until the next write that can."""
        if ctx._exists is False:
            return False  # the vector deletes the object: nothing to attach the id to
        if not self.store.exists(oid) and not txn.creates():
            return False  # zero/rmxattr of a missing object must not create it just for the id
        tbl = self._table(oid)
        client, tid = reqid[:3], reqid[3]
        ids = tbl.clients.get(client)
        if ids is None:
            ids = self._admit(tbl, client)
        entry = _RQ_ENTRY.pack(tid, 0)
        if not tbl.pending and not ctx.removed:  # the common case: one entry, one op
            txn.appendxattr(ids.attr, entry, _RQ_KEEP_BYTES)
            return True
        if ctx.removed:
            # the vector deletes the object before re-creating it and its logs go with it:
            # write every client's whole window again (this client's one with this id)
            for c in tbl.clients.values():
                data = c.encode() + entry if c is ids else c.encode()
                if data:
                    txn.appendxattr(c.attr, data[-_RQ_KEEP_BYTES:], _RQ_KEEP_BYTES)
            return True
        for attr in tbl.drop:  # first: an evicted client that came back starts a new log
            if ctx.getxattr(attr) is not None:
                txn.rmxattr(attr)
        for c in tbl.clients.values():
            if c.unsaved and c is not ids:
                txn.appendxattr(c.attr, c.unsaved, _RQ_KEEP_BYTES)
        txn.appendxattr(ids.attr, (ids.unsaved + entry)[-_RQ_KEEP_BYTES:], _RQ_KEEP_BYTES)
        return True

    @staticmethod
    def _admit(tbl: _ObjIds, client: tuple) -> _ClientIds:
        """A new client incarnation on the object, evicting the least recently used one."""
        while len(tbl.clients) >= REQID_CLIENTS:
            gone = tbl.clients.popitem(last=False)[1]
            tbl.drop.append(gone.attr)
            tbl.pending = True
        ids = _ClientIds(f"{REQID_PREFIX}{client[0]}.{client[1]}.{client[2]}")
        tbl.clients[client] = ids
        return ids

    def _remember(self, oid: str, reqid: tuple, result: int, version: int, saved: bool,
                  removed: bool) -> None:
        """Note the outcome in memory. ``saved``: the id went into the applied transaction,
        with everything pending; otherwise it waits for the next write. ``removed``: the
        object was deleted (and maybe re-created) by it, taking the logs along."""
        tbl = self._table(oid)
        client, tid = reqid[:3], reqid[3]
        ids = tbl.clients.get(client)
        if ids is None:
            ids = self._admit(tbl, client)
        else:
            tbl.clients.move_to_end(client)
        tids = ids.tids
        if tid not in ids.results:
            if len(tids) >= REQID_KEEP:
                ids.results.pop(tids.popleft(), None)
            tids.append(tid)
        ids.results[tid] = (result, version)
        if saved:
            if tbl.pending or removed:
                for c in tbl.clients.values():
                    c.unsaved = bytearray()
                tbl.drop.clear()
                tbl.pending = False
            return
        if removed:  # the logs went with the object: everything is unsaved again
            for c in tbl.clients.values():
                c.unsaved = c.encode()
            tbl.drop.clear()
        else:
            ids.unsaved += _RQ_ENTRY.pack(tid, result)
            del ids.unsaved[:-_RQ_KEEP_BYTES]
        tbl.pending = True


class _ObjIds:
    """The recent request ids on one object: per client incarnation (least recently used
    first), plus what the store does not hold yet."""

    __slots__ = ("clients", "drop", "pending")

    def __init__(self) -> None:
        self.clients: OrderedDict[tuple, _ClientIds] = OrderedDict()
        self.drop: list[str] = []  # logs of evicted clients, to remove with the next write
        self.pending = False  # some client has unsaved entries, or drop is not empty


class _ClientIds:
    """One client incarnation's recent requests on one object, oldest first."""

    __slots__ = ("attr", "tids", "results", "unsaved")

    def __init__(self, attr: str) -> None:
        self.attr = attr  # the xattr holding its log
        self.tids: deque[int] = deque()
        self.results: dict[int, tuple[int, int]] = {}  # tid -> (result, version)
        self.unsaved = bytearray()  # log entries not in the store yet, oldest first

    def encode(self) -> bytearray:
        """The whole window as log entries (versions are not persisted: they read as 0)."""
        out = bytearray()
        for tid in self.tids:
            out += _RQ_ENTRY.pack(tid, self.results[tid][0])
        return out


def _op_names(ops: list[osdops.Op]) -> str:
    """``write,call:rbd.dir_add``: a request's ops for a log line (no data)."""
    return ",".join(f"call:{op.cls}.{op.method}" if type(op) is osdops.Call else op.NAME
                    for op in ops)


def _failure(e: BaseException) -> str:
    """An exception and where it was raised, on one line."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _bind(fn: Callable[..., T], *args: object) -> Callable[[], T]:
    return lambda: fn(*args)


def _reader(store: ObjectStore, key: str, offset: int, length: int
            ) -> Callable[[], bytes | int]:
    return lambda: store.read(key, offset, length)


def _stat(store: ObjectStore, key: str) -> osdops.StatResult:
    st = store.stat(key)
    return osdops.StatResult(st.size, st.mtime, st.version)


def _visible_xattrs(store: ObjectStore, key: str) -> dict[str, bytes]:
    return {k: v for k, v in store.getxattrs(key).items() if not k.startswith("_")}


def _list(store: ObjectStore, pool: int, start_after: str, n: int
          ) -> tuple[list[str], str | None]:
    prefix = f"{pool}."
    names, _nxt = store.list_objects(prefix + start_after if start_after else prefix, n + 1)
    names = [k[len(prefix):] for k in names if k.startswith(prefix)]
    more = len(names) > n
    names = names[:n]
    return names, (names[-1] if more and names else None)


async def run_osd(osd_id: int, data_dir: str, host: str, port: int,
                  options: OSDOptions | None = None) -> None:
    """Entry point for ``rbdpy osd``: serve until SIGTERM/SIGINT, then commit and exit."""
    osd = OSD(osd_id, data_dir, options)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(osd.serve, host, port)
            async for _sig in signals:
                nursery.cancel_scope.cancel()
                break
