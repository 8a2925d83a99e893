"""Shared fixtures: real OSD processes started by the tests and stopped by PID."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


class OSDProc:
    """One ``rbdpy osd`` process on a free 127.0.0.1 port with its data in ``data``; it can
    be stopped (or killed) and started again on the same data and port. Signals go to its own
    PID only; its stdout and stderr are appended to ``log``."""

    def __init__(self, data: Path, osd_id: int = 0) -> None:
        self.data = data
        self.osd_id = osd_id
        self.log = data.parent / f"{data.name}.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.file_size_limit: int | None = None  # RLIMIT_FSIZE: a real "disk full" (EFBIG)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start, and return once the port accepts connections."""
        assert not self.running, "already running"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rbdpy.cli", "--log-level", "info", "osd", "--id",
                 str(self.osd_id), "--data", str(self.data), "--listen",
                 f"127.0.0.1:{self.port}"],
                stdout=logf, stderr=logf, preexec_fn=self._limits)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"osd exited with {self.proc.returncode}: "
                                       f"{self.log_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    self.kill9()
                    raise RuntimeError("osd did not start listening") from None
                time.sleep(0.02)

    def _limits(self) -> None:
        if self.file_size_limit is not None:
            lim = self.file_size_limit
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL if it does not stop in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def osd_process(tmp_path: Path):
    """A factory of OSD processes (data under tmp_path); all are stopped at teardown."""
    made: list[OSDProc] = []

    def make(name: str = "osd0", osd_id: int = 0) -> OSDProc:
        o = OSDProc(tmp_path / name, osd_id)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()
