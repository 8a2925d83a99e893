"""Shared fixtures: real OSD processes started by the tests and stopped by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


class OSDProc:
    def __init__(self, data: Path, osd_id: int = 0) -> None:
        self.data = data
        self.osd_id = osd_id
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rbdpy.cli", "--log-level", "info", "osd", "--id",
             str(self.osd_id), "--data", str(self.data), "--listen", f"127.0.0.1:{self.port}"],
            stderr=open(self.data.parent / "osd.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "osd died"
                time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def osd_process(tmp_path: Path):  # noqa: ANN201
    """A factory of OSD processes (data under tmp_path); all are stopped at teardown."""
    made: list[OSDProc] = []

    def make(name: str = "osd0", osd_id: int = 0) -> OSDProc:
        o = OSDProc(tmp_path / name, osd_id)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()
