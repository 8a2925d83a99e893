"""Processes the tests start: checked and stopped by PID only (never by name)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rbdpy.localcluster import pid_alive  # re-exported; a zombie counts as dead


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send ``sig``, reap it if it is our child, SIGKILL it if it outlives ``timeout``."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)
