"""A bug met by one request (an exception no layer expected) is that request's EIO and one
log line, in process: the daemon goes on serving, and cancellation still gets through.

The buggy class methods are registered for the test only: the shipped ones validate their
input (``tests/osd/test_cls_fuzz.py`` checks that no input reaches a bug of theirs)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message
from rbdpy.osd import classes
from rbdpy.osd.daemon import OSD
from rbdpy.proto import ops as O
from rbdpy.proto import osdmsg as M


class Peer:
    name = EntityName(ENTITY_CLIENT, 5)

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


def request(ops: list[O.Op], tid: int, *, write: bool) -> Message:
    flags = O.FLAG_WRITE | O.FLAG_ACK | O.FLAG_COMMIT if write else O.FLAG_READ
    return M.encode_request(ops, tid=tid, client=Peer.name, incarnation=1, epoch=1, pool=1,
                            oid="victim", flags=flags)


def register(monkeypatch: pytest.MonkeyPatch, name: str, fn: Callable, write: bool) -> None:
    monkeypatch.setitem(classes._REGISTRY, ("test", name), (fn, write))


def buggy(ctx: classes.ClsContext, indata: bytes) -> bytes:
    ctx.setxattr("half", b"done")  # queued into the transaction, which must not apply
    return {}["missing"]


async def test_an_unexpected_exception_is_eio_and_one_log_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    register(monkeypatch, "buggy", buggy, write=True)
    osd, peer = OSD(0, tmp_path), Peer()
    try:
        with caplog.at_level(logging.INFO, logger="rbdpy.osd"):
            await osd.dispatch(peer, request([O.Write(0, b"w"), O.Call("test", "buggy", b"")],
                                             7, write=True))
        rep = M.decode_reply(peer.sent[-1], [])
        assert rep.tid == 7 and rep.result == -errno.EIO
        assert rep.flags & O.FLAG_ACK and rep.flags & O.FLAG_COMMIT
        [rec] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        line = rec.getMessage()
        assert "KeyError: 'missing'" in line and "in buggy" in line, line
        assert rec.oid == "victim" and rec.ops == "write,call:test.buggy" and rec.tid == 7
        assert not osd.store.exists("1.victim")  # nothing of the vector was applied
        # the same OSD serves the next request
        await osd.dispatch(peer, request([O.Write(0, b"ok")], 8, write=True))
        assert M.decode_reply(peer.sent[-1], [O.Write(0, b"")]).result == 0
        assert bytes(osd.store.read("1.victim", 0, 10)) == b"ok"
    finally:
        osd.store.close()


async def test_cancellation_and_interrupts_are_not_swallowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(ctx: classes.ClsContext, indata: bytes) -> bytes:
        raise KeyboardInterrupt

    register(monkeypatch, "interrupted", interrupted, write=False)
    osd, peer = OSD(0, tmp_path), Peer()
    try:
        with pytest.raises(KeyboardInterrupt):
            await osd.dispatch(peer, request([O.Call("test", "interrupted", b"")], 1,
                                             write=False))
        assert peer.sent == []
    finally:
        osd.store.close()
