"""rbdpy/client/bridge.py: blocking threads hand work to one trio thread."""

from __future__ import annotations

import threading

import pytest
import trio

from rbdpy.client.bridge import BridgeClosed, ThreadBridge


class Loop:
    """A trio loop serving a ThreadBridge in a background thread (as Rados runs it)."""

    def __init__(self) -> None:
        self.bridge = ThreadBridge()
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        assert self._ready.wait(10)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self.nursery = n
            await n.start(self.bridge.serve)
            self._ready.set()
            await self._stop.wait()
            n.cancel_scope.cancel()

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)  # type: ignore[union-attr]
        self.thread.join(10)


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    if lp.thread.is_alive():
        lp.close()


def test_call_runs_the_coroutine_on_the_trio_thread(loop: Loop) -> None:
    async def where(x: int) -> tuple[int, str]:
        await trio.sleep(0)
        return x * 2, threading.current_thread().name

    assert loop.bridge.call(where, 21) == (42, loop.thread.name)


def test_started_call_completes_when_done_is_called_later(loop: Loop) -> None:
    """The starter sets work going and returns; a later event on the trio thread (here a
    task, in rbdpy a reply callback) calls done: no task is spawned for the call itself."""
    ran_fallback = []

    def start(x: int, done) -> bool:
        async def later() -> None:
            await trio.sleep(0.01)
            done(None)

        loop.nursery.start_soon(later)  # type: ignore[union-attr]
        return True

    async def fallback(x: int) -> None:
        ran_fallback.append(x)

    assert loop.bridge.call_started(start, fallback, 1) is None
    assert ran_fallback == []


def test_started_call_reports_the_error_given_to_done(loop: Loop) -> None:
    def start(done) -> bool:
        done(OSError(5, "boom"))  # completion may come at once, inside the starter
        return True

    async def fallback() -> None:
        raise AssertionError("fallback must not run")

    with pytest.raises(OSError, match="boom"):
        loop.bridge.call_started(start, fallback)


def test_starter_that_raises_fails_the_call(loop: Loop) -> None:
    def start(done) -> bool:
        raise ValueError("bad range")

    async def fallback() -> None:
        raise AssertionError("fallback must not run")

    with pytest.raises(ValueError, match="bad range"):
        loop.bridge.call_started(start, fallback)
    assert not loop.bridge._started  # nothing left waiting for a done()


def test_declined_start_runs_the_coroutine(loop: Loop) -> None:
    async def fallback(x: int) -> int:
        return x + 1

    assert loop.bridge.call_started(lambda x, done: False, fallback, 1) == 2
    assert not loop.bridge._started


def test_closing_fails_a_started_call_that_never_completes() -> None:
    loop = Loop()
    result: list[BaseException | None] = []

    def caller() -> None:
        try:
            loop.bridge.call_started(lambda done: True, None)  # type: ignore[arg-type]
            result.append(None)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=caller)
    t.start()
    for _ in range(500):
        if loop.bridge._started:
            break
        threading.Event().wait(0.01)
    assert loop.bridge._started, "the started call never reached the trio side"
    loop.close()
    t.join(10)
    assert not t.is_alive(), "the caller still blocks after the bridge closed"
    assert len(result) == 1 and isinstance(result[0], BridgeClosed)
    with pytest.raises(BridgeClosed):
        loop.bridge.call_started(lambda done: True, None)  # type: ignore[arg-type]


def test_posted_calls_run_in_order_with_calls_and_nobody_waits(loop: Loop) -> None:
    seen: list = []
    gate = threading.Event()

    def record(x: int, closed: BaseException | None) -> None:
        seen.append((x, closed, threading.current_thread().name))

    async def slow() -> None:
        await trio.to_thread.run_sync(gate.wait)  # the trio side is busy with this call

    t = threading.Thread(target=loop.bridge.call, args=(slow,))
    t.start()
    for i in range(50):  # returns at once even though nothing has run them yet
        assert loop.bridge.post(record, i)

    async def snapshot() -> list:
        return list(seen)

    gate.set()
    t.join(10)
    got = loop.bridge.call(snapshot)  # queued after the posts: they all ran before it
    assert got == [(i, None, loop.thread.name) for i in range(50)]
    assert loop.bridge.backlog == 0


def test_posted_call_after_close_is_refused() -> None:
    lp = Loop()
    lp.close()
    ran: list = []
    assert not lp.bridge.post(lambda closed: ran.append(closed))
    assert ran == []


def test_an_interrupted_call_does_not_block_the_threads_next_call(loop: Loop) -> None:
    """Ctrl-C lands wherever the calling thread is: here, as if between taking its lock and
    queueing the call (a KeyboardInterrupt raised by the queueing). The thread's next call
    must still run; it waited forever on the lock left held (checked without waiting: the
    lock this thread would use next must be free)."""
    real = loop.bridge._enqueue
    calls = {"n": 0}

    def interrupted_once(call: object) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(call)  # type: ignore[arg-type]

    async def answer() -> int:
        return 42

    loop.bridge._enqueue = interrupted_once  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        loop.bridge.call(answer)
    nxt = getattr(loop.bridge._tls, "lock", None)
    assert nxt is None or not nxt.locked()
    assert loop.bridge.call(answer) == 42
