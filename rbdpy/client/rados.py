"""Blocking access to a cluster for threads (the nbdkit plugin, the CLI, scripts).

One background thread runs trio with the messenger and the objecter; callers in other threads
hand it coroutines (``run``) or callbacks (``post``) and block (GIL released) until they finish.
Objects only, like librados: images live a layer up (the ``rbd`` package's ``api`` opens
them on a Rados) and register what must happen at ``close`` (``at_close``).

    import rbdpy
    with rbdpy.connect() as cluster:
        img = rbdpy.open_image(cluster, "disk0")
        img.write(0, b"hello")
        img.flush()
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from rbdpy import config
from rbdpy.client.bridge import ThreadBridge
from rbdpy.client.objecter import Objecter, OSDError
from rbdpy.msgr.messenger import Messenger
from rbdpy.proto.ops import Stat

log = logging.getLogger("rbdpy.rados")
T = TypeVar("T")
POST_BACKLOG = 256  # posted writes waiting for the cluster thread; beyond, writers wait
PROBE_OID = "rbdpy_probe"  # wait_ready stats it: any answer, ENOENT included, is a live OSD
BLOCKED_EVERY = 5.0  # report_blocked: seconds between looks (and lines) while requests wait


class ClusterUnavailable(Exception):
    """The OSDs did not answer in time."""


class Rados:
    def __init__(self, cfg: config.ClusterConfig, *, pool: str = "rbd",
                 options: config.ClientOptions | None = None) -> None:
        self.cfg = cfg
        self.options = options or config.ClientOptions()
        self.objecter = Objecter(cfg.osdmap)
        self.pool = cfg.osdmap.pool_by_name(pool).id
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._bridge = ThreadBridge()
        self._closers: list[Callable[[], None]] = []
        self._nursery: trio.Nursery | None = None
        # called once (trio thread) when the OSDs refuse this client: it was fenced
        self.on_fenced: Callable[[], None] | None = None
        self.objecter.on_blocklisted = self._fenced
        self._thread = threading.Thread(target=self._main, name="rbdpy-trio", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # reported to the opener
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        async with Messenger(self.objecter.me, self.objecter) as msgr:
            self.objecter.attach(msgr)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._bridge.serve)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
            msgr.shutdown()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the cluster thread; block until it is done."""
        return self._bridge.call(fn, *args)

    def run_started(self, start: Callable[..., bool], fn: Callable[..., Awaitable[T]],
                    *args: Any) -> T | None:
        """``run``, trying the task-free ``start(*args, done)`` first (see
        ``ThreadBridge.call_started``)."""
        return self._bridge.call_started(start, fn, *args)

    def post(self, fn: Callable[..., None], *args: Any) -> bool:
        """Queue ``fn(*args, closed)`` on the cluster thread without waiting (see
        ``ThreadBridge.post``); False if the connection is closed."""
        return self._bridge.post(fn, *args)

    @property
    def backlog(self) -> int:
        """Calls handed to the cluster thread and not yet taken up."""
        return self._bridge.backlog

    def at_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (from the closing thread, before the cluster thread stops) at
        ``close``: how an open image gives its lock back."""
        self._closers.append(fn)

    def cancel_at_close(self, fn: Callable[[], None]) -> None:
        if fn in self._closers:
            self._closers.remove(fn)

    def close(self) -> None:
        """Run the ``at_close`` callbacks (open images release their locks: not a flush, so
        unflushed write-back writes may be lost, as when a disk loses power), then stop the
        cluster thread."""
        if self._stop is not None and self._thread.is_alive():
            for fn in list(reversed(self._closers)):
                try:
                    fn()
                except Exception as e:  # closing anyway; e.g. a lock expires by itself
                    log.warning("at close: %s", e)
            self._closers.clear()
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(timeout=10)

    # -- when the OSDs do not answer --------------------------------------------------------

    def report_blocked(self, every: float = BLOCKED_EVERY) -> None:
        """Log, every ``every`` seconds while requests wait that long, which OSDs they wait
        for and how many (quiet when nothing waits; one line when they answer again): a
        server whose OSDs are gone says so instead of hanging silently."""
        async def start() -> None:
            self._nursery.start_soon(self._report_blocked, every)  # type: ignore[union-attr]
        self.run(start)

    async def _report_blocked(self, every: float) -> None:
        marks: deque[tuple[float, int]] = deque()  # (time, objecter.last_tid then)
        reported = False
        while True:
            await trio.sleep(every)
            now, obj = trio.current_time(), self.objecter
            waiting = obj.waiting(marks[-1][1]) if marks else None
            marks.append((now, obj.last_tid))
            if waiting is None:
                if reported:
                    log.warning("the OSDs answer again: no request waits any more")
                    reported = False
                marks = deque([marks[-1]])
                continue
            # the oldest request existed at the first look whose last_tid reached its tid
            while marks[0][1] < waiting.oldest_tid:
                marks.popleft()  # (the previous look's last_tid is >= every tid found)
            log.warning("%s, for %.0f s or more", waiting.describe(obj.osdmap),
                        now - marks[0][0])
            reported = True

    def abort(self, err: int = errno.ESHUTDOWN) -> int:
        """Fail every request now and from now on with ``err`` (see ``Objecter.abort``);
        returns how many writes were failed. For a server that must stop while the OSDs
        are gone: nothing it runs waits for them any more."""
        async def do() -> int:
            return self.objecter.abort(err)
        return self.run(do)

    @property
    def aborted_writes(self) -> int:
        return self.objecter.aborted_writes

    def _fenced(self) -> None:
        if self.on_fenced is not None:
            self.on_fenced()
            return
        log.error("this client (%s) was fenced: the OSDs refuse all its requests "
                  "(ESHUTDOWN), as another client broke its image lock; reconnect to go on",
                  self.objecter.me)

    def __enter__(self) -> Rados:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- verbs ----------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Check the OSDs answer (a cheap read of an object that need not exist), or raise
        ClusterUnavailable."""
        async def probe() -> None:
            with trio.move_on_after(timeout) as scope:
                try:
                    await self.objecter.submit(self.pool, PROBE_OID, [Stat()], write=False)
                except OSDError as e:
                    if e.errno != errno.ENOENT:
                        raise
            if scope.cancelled_caught:
                addrs = ", ".join(f"{o.host}:{o.port}" for o in self.cfg.osdmap.osds.values())
                raise ClusterUnavailable(f"no answer from the OSDs ({addrs}) in {timeout:g}s")
        self.run(probe)


def connect(cluster: str | None = None, *, pool: str = "rbd") -> Rados:
    """Connect to the cluster described by the cluster file (see ``rbdpy.config.locate``)."""
    return Rados(config.load(config.locate(cluster)), pool=pool,
                 options=config.ClientOptions.from_env())
