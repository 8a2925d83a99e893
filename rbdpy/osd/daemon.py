"""The OSD daemon: executes op vectors against the object store, replies ack and commit.

Requests are executed in arrival order on the trio thread, so a vector on one object is
atomic (one store transaction) and ordered with every other request on that object. The
ack reply leaves as soon as the transaction is applied (readable); the commit reply leaves
after the group-commit fsync that covers it, which a committer task runs in a worker thread
while new requests keep being applied.

Resent requests (same client incarnation and tid, higher attempt) are recognized from a
small per-object table of recent request ids that is written in the same transaction as the
mutation itself, so it survives a crash exactly when the mutation does: a write already
applied is answered, not applied twice.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import struct
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import trio

from rbdpy.msgr.message import ENTITY_OSD, EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, Peer
from rbdpy.osd import classes
from rbdpy.osd import ops as osdops
from rbdpy.osd.store import ObjectStore, StoreError, Transaction

log = logging.getLogger("rbdpy.osd")

REQID_ATTR = "_reqids"
REQID_KEEP = 128  # per client incarnation and object: must cover its writes in flight there
REQID_CLIENTS = 8  # client incarnations remembered per object


@dataclass
class _PendingCommit:
    seq: int
    peer: Peer
    reply: Message


class ObjectContext:
    """A class method's view of its object: reads from the store, writes into the txn."""

    def __init__(self, store: ObjectStore, oid: str, txn: Transaction) -> None:
        self.store, self.oid, self.txn = store, oid, txn
        self.mutated = False
        self._xattr_overlay: dict[str, bytes | None] = {}
        self._exists: bool | None = None

    def exists(self) -> bool:
        if self._exists is not None:
            return self._exists
        return self.store.exists(self.oid)

    def stat(self) -> tuple[int, int, int]:
        st = self.store.stat(self.oid)
        return st.size, int(st.mtime * 1e9), st.version

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.store.read(self.oid, offset, length))

    def allocated(self) -> int:
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
        self.mutated = True


class OSD:
    """One OSD: a store, a messenger endpoint, a committer. Also the messenger Dispatcher."""

    def __init__(self, osd_id: int, data_dir: str | os.PathLike) -> None:
        self.id = osd_id
        self.name = EntityName(ENTITY_OSD, osd_id)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ObjectStore(self.data_dir / "store")
        self.epoch = 1
        self._pending: list[_PendingCommit] = []
        self._commit_wanted = trio.Event()
        # object -> client incarnation -> its recent request ids there
        self._recent: dict[str, OrderedDict[tuple, _ClientIds]] = {}
        self.msgr: Messenger | None = None
        self.stats = {"ops": 0, "errors": 0, "dups": 0, "commits": 0}
        # fault injection for tests (like Ceph's *_inject_* options): hold every group commit
        # back this long, so "applied but not yet durable" lasts long enough to act on
        self.commit_delay = float(os.environ.get("RBDPY_OSD_COMMIT_DELAY", "0") or 0)

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED
                    ) -> None:  # noqa: ANN001
        async with Messenger(self.name, self) as msgr:
            self.msgr = msgr
            addr = await msgr.listen(host, port)
            log.info("osd listening", extra={"osd": self.id, "addr": f"{addr[0]}:{addr[1]}"})
            msgr.nursery.start_soon(self._committer)
            task_status.started(addr)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.store.close)
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
                durable = await trio.to_thread.run_sync(self.store.commit)
            except StoreError as e:
                log.error("commit failed: %s", e)
                durable = -1
                for p in self._pending:
                    p.peer.send(osdops.error_reply(p.reply.tid, e.errno, epoch=self.epoch))
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

    # -- Dispatcher ----------------------------------------------------------------------

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        return None  # write payloads land in fresh pages; the store writes from those views

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        if msg.type != osdops.MSG_OSD_OP:
            log.warning("unexpected message type %d from %s", msg.type, peer.name)
            return
        self.stats["ops"] += 1
        try:
            req = osdops.decode_request(msg)
        except osdops.OpDecodeError as e:
            self.stats["errors"] += 1
            log.warning("bad request from %s tid %d: %s", peer.name, msg.tid, e)
            peer.send(osdops.error_reply(msg.tid, e.errno, epoch=self.epoch))
            return
        self._execute(peer, req)

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        pass  # replies to a client that reset are not needed: it resends its requests

    def on_peer_reset(self, peer: Peer) -> None:
        self._pending = [p for p in self._pending if p.peer is not peer]

    # -- execution ------------------------------------------------------------------------

    def _execute(self, peer: Peer, req: osdops.OSDRequest) -> None:
        key = f"{req.pool}.{req.oid}"
        reqid = (req.client.type, req.client.num, req.incarnation, req.tid)
        try:
            writes = req.is_write or any(
                classes.lookup(op.cls, op.method)[1] for op in req.ops
                if isinstance(op, osdops.Call))
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
                self._record_reqid(key, reqid, txn, ctx)
                res = self.store.apply(key, txn)
                version, seq = res.version, res.seq
                self._remember(key, reqid, 0, version)
            else:
                version, seq = self._version(key), None
            outputs = [(op, r, out() if callable(out) else out) for op, r, out in outputs]
        except (StoreError, classes.ClsError, osdops.OpError) as e:
            self.stats["errors"] += 1
            err = e.errno
            if (err == errno.ENOENT and writes and req.attempt > 0
                    and any(isinstance(op, osdops.Delete) for op in req.ops)):
                err = 0  # a resent delete that already happened before a crash
            if writes:
                self._remember(key, reqid, -err, 0)
            return self._reply(peer, req, -err, 0, [], None, writes)
        self._reply(peer, req, 0, version, outputs, seq, writes)

    def _run_ops(self, req: osdops.OSDRequest, key: str, txn: Transaction,
                 ctx: ObjectContext) -> list[tuple]:
        """Queue mutations and guards into ``txn``; reads become thunks run after apply."""
        store, out = self.store, []
        for op in req.ops:
            t = type(op)
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
            if t is osdops.Write:
                txn.write(op.offset, op.data)
            elif t is osdops.WriteFull:
                txn.writefull(op.data)
            elif t is osdops.Zero:
                txn.zero(op.offset, op.length)
            elif t is osdops.Truncate:
                txn.truncate(op.size)
            elif t is osdops.Delete:
                txn.delete()
                ctx._exists = False
            elif t is osdops.Create:
                txn.create(op.exclusive)
            elif t is osdops.SetXattr:
                if op.name.startswith("_"):
                    raise osdops.OpError(errno.EINVAL, "xattr names starting with _ are internal")
                txn.setxattr(op.name, op.value)
            elif t is osdops.RmXattr:
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
        if not req.is_write and not ctx.mutated and len(txn):
            # guards in a read-only vector: check them without writing anything
            self.store.apply(key, txn)  # a txn of guards only evaluates, writes nothing
        return out

    def _reply(self, peer: Peer, req: osdops.OSDRequest, result: int, version: int,
               outputs: list, seq: int | None, write: bool) -> None:
        """Reads get one reply; writes an ack now and a commit after the fsync covering them."""
        def rep(flags: int, outs: list) -> Message:
            return osdops.encode_reply(tid=req.tid, result=result, version=version,
                                       flags=flags, epoch=self.epoch, attempt=req.attempt,
                                       op_results=outs)

        both = osdops.FLAG_ACK | osdops.FLAG_COMMIT
        if not write or seq is None or seq <= self.store.committed_seq():
            peer.send(rep(both, outputs))
            return
        if req.flags & osdops.FLAG_ACK:
            peer.send(rep(osdops.FLAG_ACK, outputs))
        self._pending.append(_PendingCommit(seq, peer, rep(osdops.FLAG_COMMIT, [])))
        self._commit_wanted.set()

    def _version(self, oid: str) -> int:
        try:
            return self.store.stat(oid).version
        except StoreError:
            return 0

    # -- duplicate detection --------------------------------------------------------------

    def _find_dup(self, oid: str, reqid: tuple) -> tuple[int, int] | None:
        ids = self._table(oid).get(reqid[:3])
        return ids.results.get(reqid[3]) if ids is not None else None

    def _table(self, oid: str) -> OrderedDict:
        recent = self._recent.get(oid)
        return recent if recent is not None else self._load_recent(oid)

    def _load_recent(self, oid: str) -> OrderedDict:
        recent: OrderedDict[tuple, _ClientIds] = OrderedDict()
        try:
            _decode_reqids(self.store.getxattr(oid, REQID_ATTR), recent)
        except (StoreError, ValueError, struct.error):
            recent.clear()
        if len(self._recent) > 4096:
            self._recent.pop(next(iter(self._recent)))
        self._recent[oid] = recent
        return recent

    def _record_reqid(self, oid: str, reqid: tuple, txn: Transaction,
                      ctx: ObjectContext) -> None:
        if ctx._exists is False:
            return  # the vector deletes the object: nothing to attach the id to
        if not self.store.exists(oid) and not txn.creates():
            return  # zero/rmxattr of a missing object must not create it just for the id
        txn.setxattr(REQID_ATTR, _encode_reqids(self._table(oid), reqid))

    def _remember(self, oid: str, reqid: tuple, result: int, version: int) -> None:
        recent = self._table(oid)
        client, tid = reqid[:3], reqid[3]
        ids = recent.pop(client, None) or _ClientIds()
        recent[client] = ids  # most recently used client last
        if tid not in ids.results:
            ids.tids.append(tid)
        ids.results[tid] = (result, version)
        if result:
            ids.errs[tid] = result
        if len(ids.tids) > REQID_KEEP:
            for old in ids.tids[: len(ids.tids) - REQID_KEEP]:
                ids.results.pop(old, None)
                ids.errs.pop(old, None)
            del ids.tids[: len(ids.tids) - REQID_KEEP]
        while len(recent) > REQID_CLIENTS:
            recent.popitem(last=False)


class _ClientIds:
    """One client incarnation's recent requests on one object, oldest first."""

    __slots__ = ("tids", "results", "errs")

    def __init__(self) -> None:
        self.tids = array("Q")
        self.results: dict[int, tuple[int, int]] = {}  # tid -> (result, version)
        self.errs: dict[int, int] = {}  # tid -> result, failures only


# persisted request ids (binary, so a deep window costs a memcpy, not a Python loop):
# magic, n clients, then per client: type, num, incarnation, n tids, n failures,
# tids u64…, (tid u64, result i32)…
_RQ_MAGIC = b"RQ1"
_RQ_CLIENT = struct.Struct("<BQQHH")
_RQ_ERR = struct.Struct("<Qi")


def _encode_reqids(recent: OrderedDict, reqid: tuple) -> bytes:
    """The table as it will be once ``reqid`` is applied (it is written in the same txn)."""
    client, tid = reqid[:3], reqid[3]
    out = [_RQ_MAGIC, b""]
    n = 0
    for c in [c for c in recent if c != client][-(REQID_CLIENTS - 1):] + [client]:
        ids = recent.get(c)
        tids = ids.tids if ids is not None else array("Q")
        if c == client and (ids is None or tid not in ids.results):
            tids = tids[len(tids) - REQID_KEEP + 1:] if len(tids) >= REQID_KEEP else tids[:]
            tids.append(tid)
        if not tids:
            continue
        errs = list(ids.errs.items()) if ids is not None else []
        out.append(_RQ_CLIENT.pack(c[0], c[1], c[2], len(tids), len(errs)))
        out.append(tids.tobytes())
        out.extend(_RQ_ERR.pack(t, r) for t, r in errs)
        n += 1
    out[1] = bytes([n])
    return b"".join(out)


def _decode_reqids(raw: bytes, recent: OrderedDict) -> None:
    if not raw.startswith(_RQ_MAGIC):
        raise ValueError("not a request id table")
    pos = len(_RQ_MAGIC) + 1
    for _ in range(raw[len(_RQ_MAGIC)]):
        ctype, cnum, inc, nt, ne = _RQ_CLIENT.unpack_from(raw, pos)
        pos += _RQ_CLIENT.size
        ids = _ClientIds()
        ids.tids.frombytes(raw[pos : pos + 8 * nt])
        pos += 8 * nt
        ids.results = dict.fromkeys(ids.tids, (0, 0))
        for _ in range(ne):
            t, r = _RQ_ERR.unpack_from(raw, pos)
            pos += _RQ_ERR.size
            ids.errs[t] = r
            ids.results[t] = (r, 0)
        recent[(ctype, cnum, inc)] = ids
    if pos != len(raw):
        raise ValueError("trailing bytes in the request id table")




def _bind(fn, *args):  # noqa: ANN001, ANN202
    return lambda: fn(*args)


def _reader(store: ObjectStore, key: str, offset: int, length: int):  # noqa: ANN202
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


async def run_osd(osd_id: int, data_dir: str, host: str, port: int) -> None:
    """Entry point for ``rbdpy osd``: serve until SIGTERM/SIGINT, then commit and exit."""
    osd = OSD(osd_id, data_dir)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(osd.serve, host, port)
            async for _sig in signals:
                nursery.cancel_scope.cancel()
                break
