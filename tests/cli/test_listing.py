"""``ls -l``, ``--format json`` on ``ls``, ``du`` and ``lock ls``, ``du``'s <TOTAL> row (the
shapes of ``rbd``'s), and help text on every option of the image verbs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import rbdpy
from rbdpy.cli import build_parser
from rbdpy.rbd import api as rbdapi
from tests.cli.conftest import Cli, run

MIB = 1 << 20


def test_listings(cluster: Path, rb: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBDPY_LOCK_LEASE", "5")  # renewed every 1.7 s: alive to the CLI
    rb("create", "one", "--size", "8M", "--object-size", "1M")
    rb("create", "two", "--size", "1G")
    try:
        with rbdpy.connect(str(cluster)) as c:
            img = rbdapi.open_image(c, "one")
            img.write(0, b"x" * 4096)
            img.flush()
            me = f"client.{c.objecter.me.num}"

            assert json.loads(rb("ls", "--format", "json").stdout) == ["one", "two"]
            lines = rb("ls", "-l").stdout.splitlines()
            assert lines[0].split() == ["NAME", "SIZE", "OBJECT", "SIZE", "FMT", "LOCK"]
            assert lines[1].split()[:6] == ["one", "8.0", "MiB", "1.0", "MiB", "2"]
            assert f"excl {me} on " in lines[1] and lines[2].split() == [
                "two", "1.0", "GiB", "4.0", "MiB", "2"]
            rows = json.loads(rb("ls", "-l", "--format", "json").stdout)
            assert [r["image"] for r in rows] == ["one", "two"]
            assert {k: rows[0][k] for k in ("size", "object_size", "order", "format",
                                            "lock_type", "locker")} == {
                "size": 8 * MIB, "object_size": MIB, "order": 20, "format": 2,
                "lock_type": "exclusive", "locker": me}
            assert "lock_type" not in rows[1] and rows[1]["size"] == 1 << 30

            lockers = json.loads(rb("lock", "ls", "one", "--format", "json").stdout)
            assert len(lockers) == 1 and lockers[0]["locker"] == me
            assert lockers[0]["lease_expired"] is False and lockers[0]["id"]
            assert json.loads(rb("lock", "ls", "two", "--format", "json").stdout) == []
            img.close()

        du = rb("du", "--bytes").stdout.splitlines()
        assert [row.split() for row in du] == [
            ["NAME", "PROVISIONED", "USED"], ["one", str(8 * MIB), "4096"],
            ["two", str(1 << 30), "0"], ["<TOTAL>", str(8 * MIB + (1 << 30)), "4096"]]
        assert rb("du").stdout.splitlines()[-1].split() == ["<TOTAL>", "1.0", "GiB", "4.0",
                                                             "KiB"]
        assert len(rb("du", "one").stdout.splitlines()) == 2  # one image: no total, as rbd
        assert json.loads(rb("du", "--format", "json").stdout) == {
            "images": [
                {"name": "one", "id": rows[0]["id"], "provisioned_size": 8 * MIB,
                 "used_size": 4096},
                {"name": "two", "id": rows[1]["id"], "provisioned_size": 1 << 30,
                 "used_size": 0}],
            "total_provisioned_size": 8 * MIB + (1 << 30), "total_used_size": 4096}
        assert json.loads(rb("du", "two", "--format", "json").stdout) == {"images": [
            {"name": "two", "id": rows[1]["id"], "provisioned_size": 1 << 30, "used_size": 0}]}
    finally:
        rb("rm", "one")
        rb("rm", "two")
    assert rb("ls", "-l").stdout == rb("du").stdout == ""
    assert json.loads(rb("ls", "-l", "--format", "json").stdout) == []


IMAGE_VERBS = ["create", "ls", "import", "export", "cp", "mv", "info", "resize", "lock", "rm",
               "du", "bench"]


def test_every_option_has_help() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"rbdpy {a.dest}" for a in parser._actions if not a.help]
    for verb in IMAGE_VERBS:
        missing += [f"rbdpy {verb} {a.dest}" for a in subs.choices[verb]._actions
                    if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []
    out = run("create", "--help").stdout
    assert "a bare number is MiB" in out and "4096..33554432" in out
    assert "--timeout SECONDS" in out
