"""A local cluster shared by the CLI tests of a module, and the ``rbdpy`` command run as a
user runs it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

RBDPY = [sys.executable, "-m", "rbdpy.cli"]
Cli = Callable[..., subprocess.CompletedProcess]


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """``rbdpy ARGS...``; text output unless ``text=False`` is passed."""
    kw.setdefault("text", True)
    r = subprocess.run([*RBDPY, *args], capture_output=True, timeout=120, **kw)
    if check:
        assert r.returncode == 0, (r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data directory of a running one-OSD cluster, stopped after the module."""
    data = tmp_path_factory.mktemp("cli") / "data"
    run("--cluster", str(data), "cluster", "up")
    try:
        yield data
    finally:
        run("--cluster", str(data), "cluster", "down", check=False)


@pytest.fixture
def rb(cluster: Path) -> Cli:
    """``rbdpy --cluster CLUSTER ARGS...`` (``check=False`` to look at a failure)."""
    def call(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run("--cluster", str(cluster), *args, check=check, **kw)
    return call
