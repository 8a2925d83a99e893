"""The monitor daemon: a thin trio driver around the sans-I/O ``Monitor`` (rbdpy.mon.state).

Everything that decides lives in the state machine; this module only turns messages into
events, the trio clock into ``now`` and ``Tick``s at ``next_wakeup()``, and carries out the
effects in the order given. One task handles events one at a time (messages are queued by
the messenger's dispatch), so effects of one event are done before the next is looked at.

The one ordering that matters for safety: a ``Commit`` is made durable (``MonStore.append``,
fsynced) before any later effect, which may reveal the epoch to an OSD or client, is carried
out. A store that fails stops the monitor: a map it could not persist must never be sent.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
from dataclasses import dataclass

import trio

from rbdpy.errors import RbdpyError
from rbdpy.maps.errors import MapError
from rbdpy.mon import events as ev
from rbdpy.mon.commands import parse_command
from rbdpy.mon.state import Monitor, MonOptions
from rbdpy.mon.store import MonStore, MonStoreError
from rbdpy.msgr.message import ENTITY_MON, EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, Peer
from rbdpy.proto import monmsg

log = logging.getLogger("rbdpy.mon")


@dataclass(frozen=True)
class _Gone:
    """A session ended (lost, or replaced by a restarted peer's): stop sending maps to
    ``who`` unless a newer session of the same name has spoken since."""

    who: str
    peer: Peer


class MonDaemon:
    """One monitor: its store, its state machine, a messenger. Also the messenger Dispatcher."""

    def __init__(self, store: MonStore, options: MonOptions) -> None:
        self.store = store
        self.options = options
        self.mon: Monitor | None = None
        self.peers: dict[str, Peer] = {}  # entity name -> its session, for SendMaps
        self.failed: RbdpyError | None = None  # why serve returned: store or listen
        self._send, self._recv = trio.open_memory_channel[tuple[Peer, Message] | _Gone](
            math.inf)

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and run until cancelled, or until the store fails or the address cannot be
        bound (then ``failed`` says why)."""
        self.mon = Monitor(self.store.osdmap, trio.current_time(), self.options,
                           self.store.incrementals)
        async with Messenger(EntityName(ENTITY_MON, 0), self) as msgr:
            try:
                addr = await msgr.listen(host, port)
            except OSError as e:
                self.failed = RbdpyError(e.errno or errno.EADDRNOTAVAIL,
                                         f"cannot listen on {host}:{port}: {e.strerror}")
                task_status.started(None)
                return
            log.info("mon listening", extra={"addr": f"{addr[0]}:{addr[1]}",
                                             "epoch": self.store.osdmap.epoch})
            task_status.started(addr)
            await self._loop()
            msgr.shutdown()

    # -- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self.mon is not None
        while True:
            wake = self.mon.next_wakeup()
            item: tuple[Peer, Message] | _Gone | None = None
            with trio.move_on_at(math.inf if wake is None else wake):
                item = await self._recv.receive()
            now = trio.current_time()
            if item is None:
                effects, reply_to = self.mon.handle(ev.Tick(), now), None
            elif isinstance(item, _Gone):
                effects, reply_to = [], None
                if self.peers.get(item.who, item.peer) is item.peer:
                    self.peers.pop(item.who, None)
                    effects = self.mon.handle(ev.Unsubscribe(item.who), now)
            else:
                effects, reply_to = self._message(*item, now)
            try:
                await self._carry_out(effects, reply_to)
            except (MonStoreError, MapError) as e:
                self.failed = e if isinstance(e, MonStoreError) else MonStoreError(
                    f"{self.store.path}: epoch does not apply to the store's map: {e}")
                return

    def _message(self, peer: Peer, msg: Message, now: float
                 ) -> tuple[list[ev.Effect], tuple[Peer, int] | None]:
        """The effects of one message, and where a command's reply goes."""
        assert self.mon is not None
        who = str(peer.name)
        self.peers[who] = peer
        is_cmd = msg.type == monmsg.MSG_MON_COMMAND
        reply_to = (peer, msg.tid) if is_cmd else None
        try:
            m = monmsg.decode(msg)
            event = self._event(who, m)
            if event is None:
                return [], None
            return self.mon.handle(event, now), reply_to
        except RbdpyError as e:
            if is_cmd:
                peer.send(monmsg.encode(monmsg.CommandReply(e.errno or errno.EINVAL, str(e),
                                                            self.mon.osdmap.epoch), msg.tid))
            else:
                log.warning("refused a message from %s: %s", who, e)
            return [], None

    @staticmethod
    def _event(who: str, m: monmsg.MonMsg) -> ev.Event | None:
        if isinstance(m, monmsg.Boot):
            return ev.OsdBoot(m.osd, m.host, m.port, m.nonce)
        if isinstance(m, monmsg.Failure):
            return ev.FailureReport(m.reporter, m.target, m.epoch, m.failed_for, m.immediate)
        if isinstance(m, monmsg.Beacon):
            return ev.OsdBeacon(m.osd)
        if isinstance(m, monmsg.Alive):
            return ev.UpThru(m.osd, m.want)
        if isinstance(m, monmsg.Subscribe):
            return ev.Subscribe(who, m.have, m.onetime)
        if isinstance(m, monmsg.Command):
            return parse_command(m.cmd)
        log.warning("ignoring a %s from %s: the monitor does not take it", type(m).__name__,
                    who)
        return None

    async def _carry_out(self, effects: list[ev.Effect], reply_to: tuple[Peer, int] | None
                         ) -> None:
        for e in effects:
            if isinstance(e, ev.Commit):
                # durable before anything after it in the list can reveal the epoch
                new = await trio.to_thread.run_sync(self.store.append, e.inc)
                if new.epoch != e.osdmap.epoch:
                    raise MonStoreError(f"store at epoch {new.epoch}, monitor at "
                                        f"{e.osdmap.epoch}", errno.EIO)
                log.info("epoch %d: %s", new.epoch, "; ".join(e.reasons) or "changes")
            elif isinstance(e, ev.SendMaps):
                peer = self.peers.get(e.to)
                if peer is not None and not peer.closed:
                    peer.send(monmsg.encode(monmsg.MapUpdate(e.full, e.incrementals)))
            elif isinstance(e, ev.CommandDone):
                if reply_to is not None and not reply_to[0].closed:
                    reply_to[0].send(monmsg.encode(monmsg.CommandReply(
                        0, e.message, e.epoch, e.result), reply_to[1]))
            elif isinstance(e, ev.Log):
                log.log(logging.DEBUG if e.level == "debug" else
                        logging.WARNING if e.level == "warning" else logging.INFO, e.message)

    # -- Dispatcher -----------------------------------------------------------------------

    def alloc_data(self, peer: EntityName | None, header: MsgHeader) -> list[memoryview] | None:
        return None

    async def dispatch(self, peer: Peer, msg: Message) -> None:
        self._send.send_nowait((peer, msg))

    def on_reset(self, peer: Peer, dropped: list[Message]) -> None:
        if peer.name is not None:
            self._send.send_nowait(_Gone(str(peer.name), peer))

    def on_peer_reset(self, peer: Peer) -> None:
        """``peer`` is the old session of a restarted peer, which subscribes again with the
        epoch it has."""
        self.on_reset(peer, [])


def open_store(data_dir: str, options: MonOptions, init_from: str | None = None) -> MonStore:
    """The store at ``data_dir``; when there is none, seeded from the static cluster file
    ``init_from`` (rbdpy.mon.migrate), else ENOENT."""
    if MonStore.exists(data_dir):
        return MonStore.open(data_dir, keep=options.keep_incrementals)
    if init_from is None:
        raise MonStoreError(f"no monitor store at {data_dir} (--init-from CLUSTER_TOML makes "
                            f"one)", errno.ENOENT)
    from pathlib import Path

    from rbdpy import config
    from rbdpy.mon.migrate import first_epoch

    first = first_epoch(config.load(Path(init_from)).osdmap)
    return MonStore.create(data_dir, first, keep=options.keep_incrementals)


async def run_mon(data_dir: str, host: str, port: int, options: MonOptions,
                  init_from: str | None = None) -> None:
    """Entry point for ``rbdpy mon``: serve until SIGTERM/SIGINT. Raises MonStoreError if the
    store cannot be opened or a write to it fails, RbdpyError if the address cannot be bound
    (the caller prints it and exits)."""
    store = open_store(data_dir, options, init_from)
    try:
        mon = MonDaemon(store, options)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async def stop_on_signal() -> None:
                    async for _sig in signals:
                        break
                    nursery.cancel_scope.cancel()

                async def serve(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
                                ) -> None:
                    await mon.serve(host, port, task_status=task_status)
                    nursery.cancel_scope.cancel()  # returns only when it failed

                nursery.start_soon(stop_on_signal)
                await nursery.start(serve)
        if mon.failed is not None:
            raise mon.failed
    finally:
        store.close()
