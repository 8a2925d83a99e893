"""Real OSD processes for tests: a free loopback port, a tmp data dir, stopped by PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_RBDPY = Path(sys.executable).parent / "rbdpy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OSDHandle:
    """One ``rbdpy osd`` process; ``restart`` reuses the data dir and the port."""

    def __init__(self, data: Path, port: int | None = None, osd_id: int = 0) -> None:
        self.data = data
        self.port = port or free_port()
        self.osd_id = osd_id
        self.log = data.parent / f"osd{osd_id}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        assert not self.running, "already running"
        cmd = [str(_RBDPY)] if _RBDPY.exists() else [sys.executable, "-m", "rbdpy.cli"]
        cmd += ["--log-level", "info", "osd", "--id", str(self.osd_id), "--data",
                str(self.data), "--listen", f"127.0.0.1:{self.port}"]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:  # wait until the port accepts
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"osd exited with {self.proc.returncode}: "
                                       f"{self.log.read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    self.kill9()
                    raise RuntimeError("osd did not start listening") from None
                time.sleep(0.02)

    def kill9(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL if it does not stop)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def restart(self) -> None:
        """Start again on the same data dir and port (SIGTERM first if still running)."""
        if self.running:
            self.terminate()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def osd_proc(tmp_path: Path) -> Iterator[tuple[int, Path, OSDHandle]]:
    """(port, data dir, handle) of a running OSD; always stopped by its PID at teardown."""
    h = OSDHandle(tmp_path / "osd0")
    h.start()
    try:
        yield h.port, h.data, h
    finally:
        h.terminate(timeout=15)
