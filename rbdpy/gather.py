"""``gather``: run independent coroutines concurrently and fail with one plain error.

Why not a bare nursery: trio's nurseries raise an ``ExceptionGroup`` when a child fails,
even a single child. Callers of an I/O spanning objects (the NBD edge, the CLI) handle
``OSDError`` / ``ImageError`` by their errno; a group reached them as an unknown exception,
so a disk-full write across two objects came out as a traceback and EIO instead of ENOSPC.
Here every call runs to its end (their objects are independent: one failing says nothing
about the others), and the first failure is raised as itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio


async def gather(calls: Iterable[Callable[[], Awaitable[Any]]]) -> None:
    """Await every ``call()`` concurrently; then raise the first ``Exception`` any raised.

    Cancellation and other ``BaseException``s are not caught: they go through the nursery
    as trio delivers them."""
    failures: list[Exception] = []

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except Exception as e:  # collected, the first is raised below
            failures.append(e)

    async with trio.open_nursery() as n:
        for call in calls:
            n.start_soon(one, call)
    if failures:
        raise failures[0]

