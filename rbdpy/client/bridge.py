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
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The trio side is gone; the call was not run."""


class _Call:
    __slots__ = ("fn", "args", "lock", "result", "error")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple, lock: Any) -> None:
        self.fn = fn
        self.args = args
        self.lock = lock
        self.result: Any = None
        self.error: BaseException | None = None


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

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        """Run on the trio side (``await nursery.start(bridge.serve)``) until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        self._task = trio.lowlevel.current_task()
        calls = self._calls
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    while calls:
                        nursery.start_soon(self._run, calls.popleft())
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
                c.error = BridgeClosed("the cluster connection is closed")
                c.lock.release()

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
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            call.error = e
        finally:
            call.lock.release()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Block this (non-trio) thread until ``await fn(*args)`` finished on the trio side."""
        if self._closed or self._token is None:
            raise BridgeClosed("the cluster connection is closed")
        lock = getattr(self._tls, "lock", None)
        if lock is None:
            lock = self._tls.lock = _thread.allocate_lock()
        lock.acquire()  # held until the trio side releases it
        call = _Call(fn, args, lock)
        self._calls.append(call)
        if self._sleeping:
            self._sleeping = False
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass  # serve() is ending; its finally fails what is queued
        if self._closed:  # serve() may have drained the queue before our append
            try:
                self._calls.remove(call)
            except ValueError:
                pass  # it was drained: the lock is (or will be) released with an error
            else:
                lock.release()
                raise BridgeClosed("the cluster connection is closed")
        lock.acquire()
        lock.release()
        if call.error is not None:
            raise call.error
        return call.result
