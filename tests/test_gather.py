"""gather: concurrent calls, and one plain error (never an ExceptionGroup) when some fail."""

from __future__ import annotations

import errno
from functools import partial

import pytest
import trio

from rbdpy.client.objecter import OSDError
from rbdpy.gather import gather


async def test_every_call_runs_concurrently() -> None:
    started: list[int] = []
    ended: list[int] = []

    async def one(i: int) -> None:
        started.append(i)
        await trio.sleep(0.01 * (3 - i))
        ended.append(i)

    await gather(partial(one, i) for i in range(3))
    assert sorted(started) == [0, 1, 2]
    assert ended == [2, 1, 0]  # all were in flight at once: the shortest sleep ended first


async def test_the_first_failure_is_raised_as_itself_after_all_ended() -> None:
    ended: list[str] = []

    async def fail(delay: float, err: int) -> None:
        await trio.sleep(delay)
        ended.append(f"fail {err}")
        raise OSDError(err, "object")

    async def fine() -> None:
        await trio.sleep(0.05)
        ended.append("fine")

    with pytest.raises(OSDError) as ei:
        await gather([partial(fail, 0.02, errno.EIO), partial(fail, 0.01, errno.ENOSPC), fine])
    assert ei.value.errno == errno.ENOSPC  # the first to fail, unwrapped
    assert sorted(ended) == ["fail 28", "fail 5", "fine"]  # the others were not cut short


async def test_cancellation_goes_through() -> None:
    with trio.move_on_after(0.05) as scope:
        await gather([partial(trio.sleep, 10), partial(trio.sleep, 10)])
    assert scope.cancelled_caught


async def test_nothing_to_do() -> None:
    await gather([])
