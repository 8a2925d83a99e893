"""The monitor daemon as a real process (``rbdpy mon``), spoken to over the messenger by a
test client: boots, subscriptions, a failure report, an admin command, and a kill -9 restart
that resumes at the last durable epoch."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from rbdpy.maps.incremental import Incremental
from rbdpy.maps.osdmap import OSDMap
from rbdpy.msgr.message import ENTITY_CLIENT, EntityName, Message
from rbdpy.msgr.messenger import Messenger, Peer, SimpleDispatcher
from rbdpy.proto import monmsg
from tests.procs import stop_pid

CLUSTER = """\
[cluster]
epoch = 1

[[osds]]
id = 0
host = "127.0.0.1"
port = 6800

[[osds]]
id = 1
host = "127.0.0.1"
port = 6801

[[pools]]
id = 1
name = "rbd"
size = 2
min_size = 1
pg_num = 8
"""

WAIT = 30.0  # generous bound for a reply (a hung mon fails the test, nothing is timed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mon:
    """One ``rbdpy mon`` process on loopback."""

    def __init__(self, tmp: Path, grace: float = 5.0) -> None:
        self.grace = grace
        self.data = tmp / "mon"
        self.toml = tmp / "cluster.toml"
        self.toml.write_text(CLUSTER)
        self.port = free_port()
        self.log = tmp / "mon.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rbdpy.cli", "--log-level", "info", "mon", "--data",
                 str(self.data), "--listen", f"127.0.0.1:{self.port}", "--init-from",
                 str(self.toml), "--grace", str(self.grace), "--down-out-interval", "-1"],
                stdout=logf, stderr=logf)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid)
            self.proc.wait()


@pytest.fixture
def mon(tmp_path: Path):
    m = Mon(tmp_path)
    m.start()
    yield m
    m.stop()


class Client:
    """A messenger session to the mon that applies the maps it is sent."""

    def __init__(self, msgr: Messenger, addr: tuple[str, int]) -> None:
        self.peer: Peer = msgr.connect(addr)
        self.map: OSDMap | None = None
        self.send_in, self.recv = trio.open_memory_channel[Message](100)

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        await self.send_in.send(msg)

    def send(self, m: monmsg.MonMsg, tid: int = 0) -> None:
        self.peer.send(monmsg.encode(m, tid))

    async def next(self) -> monmsg.MonMsg:
        with trio.fail_after(WAIT):
            return monmsg.decode(await self.recv.receive())

    async def until(self, want) -> OSDMap:
        """Apply maps as they come until ``want(map)`` holds."""
        while self.map is None or not want(self.map):
            m = await self.next()
            assert isinstance(m, monmsg.MapUpdate), m
            await self._apply(m)
        return self.map

    async def command(self, cmd: dict, tid: int) -> monmsg.CommandReply:
        self.send(monmsg.Command(cmd), tid)
        while True:
            m = await self.next()
            if isinstance(m, monmsg.CommandReply):
                return m
            assert isinstance(m, monmsg.MapUpdate)
            await self._apply(m)

    async def _apply(self, m: monmsg.MapUpdate) -> None:
        if m.full is not None:
            self.map = m.full
        for inc in m.incrementals:
            assert isinstance(inc, Incremental) and self.map is not None
            if inc.epoch > self.map.epoch:
                self.map = self.map.apply(inc)


async def session(port: int, body) -> None:
    client: Client | None = None

    async def dispatch(peer: Peer, msg: Message) -> None:
        assert client is not None
        await client.dispatch(peer, msg)

    async with Messenger(EntityName(ENTITY_CLIENT, 7), SimpleDispatcher(dispatch),
                         backoff=(0.05, 0.5)) as msgr:
        client = Client(msgr, ("127.0.0.1", port))
        await body(client)
        msgr.shutdown()


def test_mon_process(mon: Mon) -> None:
    first_epoch = {}

    async def boot_fail_out(c: Client) -> None:
        c.send(monmsg.Subscribe(0))
        m = await c.until(lambda m: True)
        assert m.epoch == 2 and not m.is_up(0) and not m.is_up(1)  # migrate.first_epoch
        c.send(monmsg.Boot(0, "127.0.0.1", 6800, 11))
        c.send(monmsg.Boot(1, "127.0.0.1", 6801, 12))
        m = await c.until(lambda m: m.is_up(0) and m.is_up(1))
        first_epoch["up"] = m.epoch
        c.send(monmsg.Failure(0, 1, m.epoch, 0.0, immediate=True))
        m = await c.until(lambda m: not m.is_up(1))
        assert m.is_up(0) and m.osds[1].in_

        reply = await c.command({"prefix": "osd out", "id": 1}, tid=5)
        assert reply.err == 0 and "marked out osd.1" in reply.text, reply
        m = await c.until(lambda m: m.epoch >= reply.epoch)
        assert not m.osds[1].in_ and not m.osds[1].up
        bad = await c.command({"prefix": "osd out", "id": 9}, tid=6)
        assert bad.err == errno.ENOENT and "osd.9" in bad.text
        unknown = await c.command({"prefix": "osd frobnicate"}, tid=7)
        assert unknown.err == errno.ENOTSUP
        first_epoch["last"] = m

    trio.run(session, mon.port, boot_fail_out)
    last: OSDMap = first_epoch["last"]

    mon.kill9()
    mon.start()

    async def resubscribe(c: Client) -> None:
        c.send(monmsg.Subscribe(0))
        m = await c.until(lambda m: True)
        assert m == last  # same epoch, same OSDs and pools
        # a subscriber holding the last epoch gets nothing until the next one is made
        c.send(monmsg.Subscribe(last.epoch))
        c.send(monmsg.Beacon(0))
        reply = await c.command({"prefix": "osd in", "id": 1}, tid=8)
        assert reply.err == 0 and reply.epoch == last.epoch + 1
        m = await c.until(lambda m: m.epoch == reply.epoch)
        assert m.osds[1].in_ and m.is_up(0)

    trio.run(session, mon.port, resubscribe)
    assert mon.proc is not None and mon.proc.poll() is None
    log = mon.log.read_text()
    assert "Traceback" not in log


def test_a_reported_failure_marks_down_after_the_grace(tmp_path: Path) -> None:
    """Not immediate: the mon's timer (a Tick at next_wakeup) marks the target down once
    the grace has passed, with no further message from anyone."""
    mon = Mon(tmp_path, grace=0.3)
    mon.start()

    async def report(c: Client) -> None:
        c.send(monmsg.Subscribe(0))
        c.send(monmsg.Boot(0, "127.0.0.1", 6800, 11))
        c.send(monmsg.Boot(1, "127.0.0.1", 6801, 12))
        m = await c.until(lambda m: m.is_up(0) and m.is_up(1))
        c.send(monmsg.Failure(0, 1, m.epoch, 0.0))
        m = await c.until(lambda m: not m.is_up(1))
        assert m.is_up(0)

    try:
        trio.run(session, mon.port, report)
        assert "osd.1 marked down: reported failed for" in mon.log.read_text()
    finally:
        mon.stop()


def test_a_restarted_subscriber_gets_the_new_epochs(mon: Mon) -> None:
    """The same entity name from a new messenger (a restarted client) replaces the old
    session: dropping the old one must not drop the new one's subscription."""
    held: list[OSDMap] = []

    async def first(c: Client) -> None:
        c.send(monmsg.Subscribe(0))
        held.append(await c.until(lambda m: True))

    async def second(c: Client) -> None:
        c.map = held[0]
        c.send(monmsg.Subscribe(held[0].epoch))
        c.send(monmsg.Boot(0, "127.0.0.1", 6800, 11))
        m = await c.until(lambda m: m.is_up(0))
        assert m.epoch == held[0].epoch + 1
        reply = await c.command({"prefix": "osd out", "id": 1}, tid=1)
        m = await c.until(lambda m: m.epoch == reply.epoch)
        assert not m.osds[1].in_

    trio.run(session, mon.port, first)
    trio.run(session, mon.port, second)


def test_store_failure_stops_the_mon_before_the_epoch_is_sent(mon: Mon) -> None:
    """Epoch 3 cannot be written (a directory holds its name): the mon exits with one line
    and the subscriber never sees epoch 3."""
    seen: list[int] = []

    async def boot(c: Client) -> None:
        c.send(monmsg.Subscribe(0))
        m = await c.until(lambda m: True)
        assert m.epoch == 2
        blocker = mon.data / "inc.0000000003"
        blocker.mkdir()
        (blocker / "x").write_bytes(b"")
        c.send(monmsg.Boot(0, "127.0.0.1", 6800, 11))
        with trio.move_on_after(WAIT):  # until the mon is gone: the session only retries
            while mon.proc is not None and mon.proc.poll() is None:
                with trio.move_on_after(0.2):
                    await c.until(lambda m: m.epoch > 2)
                    seen.append(c.map.epoch)  # type: ignore[union-attr]
                    return
        assert mon.proc is not None and mon.proc.poll() is not None

    trio.run(session, mon.port, boot)
    assert mon.proc is not None and mon.proc.wait(timeout=WAIT) == 1
    assert seen == []
    log = mon.log.read_text()
    assert "Traceback" not in log
    assert "rbdpy: mon store:" in log and "inc.0000000003" in log, log


def test_no_store_and_no_seed_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rbdpy.cli", "mon", "--data",
                          str(tmp_path / "none"), "--listen", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no monitor store" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr



def test_address_in_use_is_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "cluster.toml"
    toml.write_text(CLUSTER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = subprocess.run([sys.executable, "-m", "rbdpy.cli", "mon", "--data",
                              str(tmp_path / "mon"), "--listen",
                              f"127.0.0.1:{s.getsockname()[1]}", "--init-from", str(toml)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
