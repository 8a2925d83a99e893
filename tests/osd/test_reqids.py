"""Duplicate detection in the daemon, in process: the per-client request-id logs that ride in
the same store transaction as each write must answer resends after a kill -9 exactly as the
in-memory table did before it (window, failures, evictions, delete and re-create)."""

from __future__ import annotations

import errno
from pathlib import Path

from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message
from rbdpy.msgr.payload import BioChain
from rbdpy.osd.daemon import OSD, REQID_CLIENTS, REQID_KEEP, REQID_PREFIX
from rbdpy.proto import ops as O
from rbdpy.proto import osdmsg as M

KEY = "1.obj"


class Peer:
    name = "test-peer"

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


def crash(osd: OSD) -> OSD:
    """kill -9: drop the store without commit or checkpoint (the page cache keeps what was
    written), then start a new OSD on the same directory (journal replay)."""
    osd.store.abandon()
    return OSD(osd.id, osd.data_dir)


def send(osd: OSD, ops: list[O.Op], tid: int, client: int = 1, attempt: int = 0,
         oid: str = "obj") -> int:
    """Execute one request as the messenger would hand it over; the ack's result."""
    msg = M.encode_request(ops, tid=tid, client=EntityName(ENTITY_CLIENT, client),
                           incarnation=7, epoch=1, pool=1, oid=oid,
                           flags=O.FLAG_WRITE | O.FLAG_ACK | O.FLAG_COMMIT, attempt=attempt)
    if msg.data is not None:  # received data arrives as one fresh buffer
        msg.data = BioChain([memoryview(bytearray(msg.data_bytes()))])
        msg.trail = None
    peer = Peer()
    osd._execute(peer, M.decode_request(msg))
    return M.decode_reply(peer.sent[0], ops).result


def logs(osd: OSD) -> list[str]:
    return [k for k in osd.store.getxattrs(KEY) if k.startswith(REQID_PREFIX)]


def test_window_of_resends_survives_kill9(tmp_path: Path) -> None:
    osd = OSD(0, tmp_path)
    n = REQID_KEEP + 40
    for tid in range(1, n + 1):
        assert send(osd, [O.Write(tid, b"x")], tid) == 0
    version = osd.store.stat(KEY).version
    jpos = osd.store._jpos
    send(osd, [O.Write(0, b"y")], n + 1)
    assert osd.store._jpos - jpos < 200  # the record carries one id, not the table
    osd = crash(osd)
    for tid in range(n + 1 - REQID_KEEP + 1, n + 2):  # the last REQID_KEEP: answered
        assert send(osd, [O.Write(tid, b"z")], tid, attempt=1) == 0
    assert osd.stats["dups"] == REQID_KEEP and osd.store.stat(KEY).version == version + 1
    assert send(osd, [O.Write(0, b"z")], n + 1 - REQID_KEEP, attempt=1) == 0  # forgotten
    assert osd.store.stat(KEY).version == version + 2
    osd.store.close()


def test_failed_request_is_saved_with_the_next_write(tmp_path: Path) -> None:
    osd = OSD(0, tmp_path)
    send(osd, [O.Write(0, b"a")], 1)
    guarded = [O.CmpXattr("k", O.CMP_EQ, O.CMP_STRING, b"v"), O.Write(0, b"b")]
    assert send(osd, guarded, 2) == -errno.ECANCELED
    assert send(osd, [O.SetXattr("k", b"v")], 3) == 0  # now the guard would pass
    osd = crash(osd)
    assert send(osd, guarded, 2, attempt=1) == -errno.ECANCELED  # answered, not applied
    assert send(osd, [O.SetXattr("k", b"v")], 3, attempt=1) == 0
    assert osd.store.read(KEY, 0, 1) == b"a" and osd.stats["dups"] == 2
    osd.store.close()


def test_evicted_clients_logs_are_removed_and_a_returning_one_starts_afresh(
        tmp_path: Path) -> None:
    osd = OSD(0, tmp_path)
    for c in range(1, REQID_CLIENTS + 2):
        assert send(osd, [O.Write(c, b"c")], 100 + c, client=c) == 0
    assert len(logs(osd)) == REQID_CLIENTS
    assert f"{REQID_PREFIX}{ENTITY_CLIENT}.1.7" not in logs(osd)
    assert send(osd, [O.Write(0, b"r")], 500, client=1) == 0  # client 1 is back: evicts 2
    assert len(logs(osd)) == REQID_CLIENTS and logs(osd)[-1].endswith(".1.7")
    assert osd.store.getxattr(KEY, logs(osd)[-1]) == (500).to_bytes(8, "little") + bytes(4)
    osd = crash(osd)
    assert send(osd, [O.Write(0, b"s")], 500, client=1, attempt=1) == 0
    assert send(osd, [O.Write(0, b"s")], 100 + REQID_CLIENTS + 1,
                client=REQID_CLIENTS + 1, attempt=1) == 0
    assert osd.stats["dups"] == 2 and osd.store.read(KEY, 0, 1) == b"r"
    osd.store.close()


def test_delete_and_recreate_keep_the_window(tmp_path: Path) -> None:
    """Resending write, delete, write after a crash must not re-run the delete."""
    osd = OSD(0, tmp_path)
    assert send(osd, [O.Write(0, b"one")], 1) == 0
    assert send(osd, [O.Delete()], 2) == 0
    assert send(osd, [O.Write(0, b"two")], 3) == 0
    assert send(osd, [O.Delete(), O.Write(0, b"three")], 4) == 0
    assert send(osd, [O.Write(5, b"!")], 5) == 0
    osd = crash(osd)
    for tid, ops in ((1, [O.Write(0, b"one")]), (2, [O.Delete()]),
                     (3, [O.Write(0, b"two")]), (4, [O.Delete(), O.Write(0, b"three")]),
                     (5, [O.Write(5, b"!")])):
        assert send(osd, ops, tid, attempt=1) == 0
    assert osd.stats["dups"] == 5
    assert osd.store.read(KEY, 0, 100) == b"three!"
    osd.store.close()


def test_internal_xattrs_cannot_be_removed_by_clients(tmp_path: Path) -> None:
    osd = OSD(0, tmp_path)
    send(osd, [O.Write(0, b"a")], 1)
    assert send(osd, [O.RmXattr(logs(osd)[0])], 2) == -errno.EINVAL
    osd.store.close()
