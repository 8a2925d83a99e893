"""Small helpers for tests and benchmarks that drive an OSD through a real objecter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from rbdpy.client.objecter import Objecter
from rbdpy.maps.osdmap import OSDInfo, OSDMap, PoolInfo
from rbdpy.msgr.messenger import Messenger
from rbdpy.rbd import image as rbdimage

T = TypeVar("T")
POOL = 1


def single_osd_map(port: int, host: str = "127.0.0.1") -> OSDMap:
    return OSDMap(osds={0: OSDInfo(0, host, port)}, pools={POOL: PoolInfo(POOL, "rbd")})


async def run_with_objecter(port: int, fn: Callable[[Objecter, Messenger], Awaitable[T]],
                            timeout: float = 60.0) -> T:
    """Run ``fn(objecter, messenger)`` against the OSD on ``port``, then shut down."""
    async with connected(port, timeout) as obj:
        return await fn(obj, obj.msgr)  # type: ignore[arg-type]


@asynccontextmanager
async def connected(cluster: int | OSDMap, timeout: float = 60.0, *,
                    client_id: int | None = None) -> AsyncIterator[Objecter]:
    """An objecter (one client) driving the OSD on port ``cluster`` (or the OSDs of the
    map ``cluster``); shut down on exit."""
    osdmap = single_osd_map(cluster) if isinstance(cluster, int) else cluster
    obj = Objecter(osdmap, client_id=client_id)
    async with Messenger(obj.me, obj, backoff=(0.01, 0.2)) as m:
        obj.attach(m)
        with trio.fail_after(timeout):
            yield obj
        m.shutdown()


@asynccontextmanager
async def new_image(port: int, size: int, order: int, *, writeback: bool = True,
                    timeout: float = 60.0, lease: float | None = None
                    ) -> AsyncIterator[tuple[Objecter, rbdimage.Image]]:
    """A new image "img" on the OSD at ``port``, opened, with the objecter driving it."""
    async with connected(port, timeout) as obj:
        await rbdimage.create_image(obj, POOL, "img", size, order=order)
        yield obj, await rbdimage.Image.open(obj, POOL, "img", writeback=writeback,
                                             lease=lease)
