"""Crash-test workload for rbdpy.osd.store (run as a child process, killed with SIGKILL).

``python store_crash_child.py DIR SEED`` opens (and so recovers) the store in DIR, then applies
transaction ``txn(seed, seq)`` for seq = applied_seq + 1, ... forever, committing every few
transactions and printing ``C <durable seq>`` (flushed) after each commit. The transaction for a
sequence number depends only on (seed, seq) and never fails, so the parent can rebuild the exact
expected state for any applied prefix with :class:`Model`.

Every written block starts with a header naming the transaction that wrote it, so a torn or
foreign block would be recognisable even before the full comparison with the model.
"""

from __future__ import annotations

import random
import struct
import sys

BS = 4096
MAX_OBJ = 4 << 20
OIDS = [f"rbd_data.crash.{i:04x}" for i in range(6)]
JOURNAL_MAX = 2 << 20
_HDR = struct.Struct("<QQI")  # seq, block index, oid number


def block(seq: int, idx: int, onum: int) -> bytes:
    """A block whose every 20 bytes say who wrote it."""
    h = _HDR.pack(seq, idx, onum)
    return (h * (BS // len(h) + 1))[:BS]


def txn_ops(seed: int, seq: int) -> tuple[str, list[tuple]]:
    """The (oid, ops) of transaction ``seq``: deterministic, and valid in any state."""
    rnd = random.Random(seed * 1_000_003 + seq)
    onum = rnd.randrange(len(OIDS))
    oid = OIDS[onum]
    r = rnd.random()
    ops: list[tuple] = []

    def write(nblocks: int, unaligned: bool = False) -> None:
        b = rnd.randrange(MAX_OBJ // BS - nblocks)
        data = b"".join(block(seq, b + i, onum) for i in range(nblocks))
        off = b * BS
        if unaligned:
            cut = rnd.randrange(1, BS)
            off += cut
            data = data[: len(data) - cut - rnd.randrange(0, BS - cut)]
        ops.append(("write", off, data))

    if r < 0.50:
        write(rnd.randint(1, 4))
    elif r < 0.60:
        write(rnd.randint(64, 256))  # big: a long pwrite to be killed in
    elif r < 0.72:
        for _ in range(rnd.randint(2, 3)):
            write(rnd.randint(1, 8), unaligned=rnd.random() < 0.3)
        ops.append(("setxattr", "seq", str(seq).encode()))
    elif r < 0.80:
        write(rnd.randint(1, 2), unaligned=True)
    elif r < 0.86:
        ops.append(("zero", rnd.randrange(MAX_OBJ // 2), rnd.randrange(1, MAX_OBJ // 4)))
    elif r < 0.91:
        ops.append(("truncate", rnd.randrange(MAX_OBJ)))
    elif r < 0.94:
        ops.append(("create",))
        ops.append(("delete",))
    else:
        ops.append(("writefull", b"".join(block(seq, i, onum) for i in range(rnd.randint(0, 3)))))
    return oid, ops


class Model:
    """Expected contents after applying transactions 1..seq in order."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seq = 0
        self.objs: dict[str, bytearray] = {}
        self.xattrs: dict[str, dict[str, bytes]] = {}
        self.versions: dict[str, int] = {}

    def advance(self, upto: int) -> None:
        while self.seq < upto:
            self.seq += 1
            oid, ops = txn_ops(self.seed, self.seq)
            for op in ops:
                self._op(oid, op)
            if oid in self.objs:
                self.versions[oid] = self.seq

    def _op(self, oid: str, op: tuple) -> None:
        kind = op[0]
        data = self.objs.get(oid)
        if kind in ("write", "writefull", "truncate", "create", "setxattr") and data is None:
            data = self.objs[oid] = bytearray()
            self.xattrs[oid] = {}
        if kind == "write":
            _, off, b = op
            if len(data) < off + len(b):
                data.extend(bytes(off + len(b) - len(data)))
            data[off:off + len(b)] = b
        elif kind == "writefull":
            data[:] = op[1]
        elif kind == "zero":
            if data is not None:
                end = min(op[1] + op[2], len(data))
                if op[1] < end:
                    data[op[1]:end] = bytes(end - op[1])
        elif kind == "truncate":
            if op[1] < len(data):
                del data[op[1]:]
            else:
                data.extend(bytes(op[1] - len(data)))
        elif kind == "delete":
            del self.objs[oid], self.xattrs[oid]
            self.versions.pop(oid, None)
        elif kind == "setxattr":
            self.xattrs[oid][op[1]] = op[2]


def build(ops: list[tuple]):
    from rbdpy.osd.store import Transaction

    t = Transaction()
    for op in ops:
        getattr(t, op[0])(*op[1:])
    return t


def main() -> None:
    from rbdpy.osd.store import ObjectStore

    path, seed = sys.argv[1], int(sys.argv[2])
    rnd = random.Random()
    store = ObjectStore(path, max_object_size=MAX_OBJ, journal_max=JOURNAL_MAX)
    out = sys.stdout
    out.write(f"R {store.applied_seq}\n")
    out.flush()
    seq = store.applied_seq
    every = rnd.randint(1, 40)
    while True:
        seq += 1
        oid, ops = txn_ops(seed, seq)
        res = store.apply(oid, build(ops))
        assert res.seq == seq, (res, seq)
        if seq % every == 0:
            out.write(f"C {store.commit()}\n")
            out.flush()
            every = rnd.randint(1, 40)


if __name__ == "__main__":
    main()
