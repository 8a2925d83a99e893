"""Admin commands from JSON (rbdpy.mon.commands): each prefix, and refusals with an errno."""

from __future__ import annotations

import errno

import pytest

from rbdpy.mon.commands import parse_command
from rbdpy.mon.events import MonError, OsdAdd, OsdIn, OsdOut, OsdRm, PoolCreate, PoolSet


@pytest.mark.parametrize("cmd, event", [
    ({"prefix": "osd out", "id": 3}, OsdOut(3)),
    ({"prefix": "osd in", "id": 0}, OsdIn(0)),
    ({"prefix": "osd rm", "id": 2}, OsdRm(2)),
    ({"prefix": "osd add"}, OsdAdd(1.0)),
    ({"prefix": "osd add", "weight": 2}, OsdAdd(2.0)),
    ({"prefix": "osd pool create", "pool": "rbd"}, PoolCreate("rbd")),
    ({"prefix": "osd pool create", "pool": "rbd", "size": 2, "pg_num": 8},
     PoolCreate("rbd", 2, None, 8)),
    ({"prefix": "osd pool set", "pool": "rbd", "var": "size", "val": 3},
     PoolSet("rbd", "size", 3)),
])
def test_commands(cmd: dict, event: object) -> None:
    assert parse_command(cmd) == event


@pytest.mark.parametrize("cmd, err, words", [
    ({"prefix": "osd frob"}, errno.ENOTSUP, "unknown command"),
    ({"prefix": 3}, errno.ENOTSUP, "unknown command"),
    ({"prefix": "osd out"}, errno.EINVAL, "'id'"),
    ({"prefix": "osd out", "id": "3"}, errno.EINVAL, "integer 'id'"),
    ({"prefix": "osd out", "id": True}, errno.EINVAL, "integer 'id'"),
    ({"prefix": "osd add", "weight": "x"}, errno.EINVAL, "weight"),
    ({"prefix": "osd pool create", "pool": 1}, errno.EINVAL, "string 'pool'"),
    ({"prefix": "osd pool set", "pool": "rbd", "var": "size", "val": [1]}, errno.EINVAL,
     "'val'"),
])
def test_refusals(cmd: dict, err: int, words: str) -> None:
    with pytest.raises(MonError, match=words) as e:
        parse_command(cmd)
    assert e.value.errno == err
