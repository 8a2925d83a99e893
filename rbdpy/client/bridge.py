"""ThreadBridge: blocking threads hand coroutines to one trio thread, in batches.

Why not ``trio.from_thread.run``: it builds a ``queue.Queue``, a message object and a system
task for every call and always writes to trio's wakeup socket, which measured ~45 µs of CPU
per call with nbdkit's worker threads contending; at 4 KiB I/O that was the largest single
cost of the NBD path. Here a caller appends to a deque and sleeps on its own thread's lock;
the trio side drains the deque in one go, and the wakeup socket is written only when the
trio side had gone to sleep (under load it usually has not, so a burst of calls costs one
wakeup). The result travels back by releasing the caller's lock.
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")
log = logging.getLogger("rbdpy.bridge")


class BridgeClosed(RuntimeError):
    """The trio side is gone; the call was not run."""


class _Call:
    __slots__ = ("fn", "args", "lock", "result", "error", "start", "bridge")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple, lock: Any,
                 start: Callable[..., bool] | None = None) -> None:
        self.fn = fn
        self.args = args
        self.lock = lock
        self.result: Any = None
        self.error: BaseException | None = None
        self.start = start
        self.bridge: ThreadBridge | None = None

    def done(self, error: BaseException | None) -> None:
        """Completion of a started call (see ``ThreadBridge.call_started``)."""
        if self.bridge is None:
            return  # already completed (or failed when the bridge closed)
        self.bridge._started.discard(self)
        self.bridge = None
        self.error = error
        self.lock.release()


class ThreadBridge:
    """Run ``await fn(*args)`` on a trio loop from any other thread (see module doc)."""

    def __init__(self) -> None:
        self._calls: deque[_Call] = deque()
        self._sleeping = False
        self._closed = False
        self._parked = False
        self._task: trio.lowlevel.Task | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._tls = threading.local()
        self._started: set[_Call] = set()  # started calls whose done() has not come yet

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run on the trio side (``await nursery.start(bridge.serve)``) until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        self._task = trio.lowlevel.current_task()
        calls = self._calls
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    while calls:
                        call = calls.popleft()
                        if call.lock is None:  # posted: nobody waits
                            self._run_posted(call)
                            continue
                        if call.start is not None and self._start(call):
                            continue
                        nursery.start_soon(self._run, call)
                    self._sleeping = True
                    if calls:  # appended after the drain but before the flag was visible
                        self._sleeping = False
                        continue
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._abort)
        finally:
            self._closed = True
            self._sleeping = False
            while calls:
                c = calls.popleft()
                if c.lock is None:  # posted: its owner learns through its own channel
                    self._run_posted(c, BridgeClosed("the cluster connection is closed"))
                    continue
                c.error = BridgeClosed("the cluster connection is closed")
                c.lock.release()
            for c in list(self._started):
                c.done(BridgeClosed("the cluster connection closed during the call"))

    def _start(self, call: _Call) -> bool:
        """Run a call's synchronous starter; False if it declined (then ``fn`` runs as a
        task). Its completion arrives later through ``call.done``."""
        call.bridge = self
        self._started.add(call)
        try:
            started = call.start(*call.args, call.done)  # type: ignore[misc]
        except BaseException as e:  # handed to the calling thread
            call.done(e)
            return True
        if not started:
            self._started.discard(call)
            call.bridge = None
        return started

    @staticmethod
    def _run_posted(call: _Call, closed: BaseException | None = None) -> None:
        """A posted call: ``fn(*args, closed)``; it must handle its own errors."""
        try:
            call.fn(*call.args, closed)
        except Exception:  # nobody to hand it to; the loop must go on
            log.exception("posted call %r failed", call.fn)

    def _wake(self) -> None:
        # several callers may have seen the flag at once: only the first wake counts
        if self._parked:
            self._parked = False
            trio.lowlevel.reschedule(self._task)  # type: ignore[arg-type]

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    @staticmethod
    async def _run(call: _Call) -> None:
        try:
            call.result = await call.fn(*call.args)
        except trio.Cancelled:
            call.error = BridgeClosed("the cluster connection closed during the call")
            raise
        except BaseException as e:  # handed to the calling thread
            call.error = e
        finally:
            call.lock.release()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Block this (non-trio) thread until ``await fn(*args)`` finished on the trio side."""
        return self._call(_Call(fn, args, None))

    def call_started(self, start: Callable[..., bool], fn: Callable[..., Awaitable[T]],
                     *args: Any) -> T | None:
        """Like ``call``, but first try ``start(*args, done)`` on the trio thread: a plain
        function that sets the work going and returns True, and later calls ``done(error)``
        (error None on success) from the trio thread, e.g. from a reply callback. No task is
        spawned for it, which at 4 KiB I/O costs more than the request. If ``start`` returns
        False, ``await fn(*args)`` runs as ``call`` would."""
        return self._call(_Call(fn, args, None, start))

    def post(self, fn: Callable[..., None], *args: Any) -> bool:
        """Queue ``fn(*args, closed)`` to run on the trio thread, in order with every other
        call, and return at once (False, nothing queued, if the bridge is closed). ``closed``
        is None, or BridgeClosed when the loop ended before running it. Nobody waits: ``fn``
        reports its own outcome. For work whose caller needs no answer (a write-back write),
        this saves the caller's sleep and wakeup, the largest cost left per 4 KiB request."""
        if self._closed or self._token is None:
            return False
        return self._enqueue(_Call(fn, args, None))

    def _enqueue(self, call: _Call) -> bool:
        """Queue ``call`` and wake the trio side if it sleeps. False if ``serve`` ended
        before it could take the call (it is then not queued); True if queued, or drained
        by ``serve``'s ending, which fails (or, posted, runs with ``closed``) what it finds."""
        self._calls.append(call)
        if self._sleeping:
            self._sleeping = False
            try:
                self._token.run_sync_soon(self._wake)  # type: ignore[union-attr]
            except trio.RunFinishedError:
                pass  # serve() is ending; its finally handles what is queued
        if self._closed:  # serve() may have finished draining before our append
            try:
                self._calls.remove(call)
            except ValueError:
                return True  # drained after all
            return False
        return True

    @property
    def backlog(self) -> int:
        """Calls queued and not yet taken by the trio side."""
        return len(self._calls)

    def _call(self, call: _Call) -> Any:
        if self._closed or self._token is None:
            raise BridgeClosed("the cluster connection is closed")
        lock = getattr(self._tls, "lock", None)
        if lock is None:
            lock = self._tls.lock = _thread.allocate_lock()
        try:
            lock.acquire()  # held until the trio side releases it
            call.lock = lock
            if not self._enqueue(call):
                lock.release()
                raise BridgeClosed("the cluster connection is closed")
            lock.acquire()
            lock.release()
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) can land between any two of these steps: the lock
            # may stay held, by this thread or by a call nobody waits for any more. This
            # thread's next call takes a fresh lock instead of waiting on it forever.
            self._tls.lock = None
            raise
        if call.error is not None:
            raise call.error
        return call.result
