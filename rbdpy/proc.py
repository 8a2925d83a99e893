"""Which process a PID is: its start time and command line, from ``/proc``.

A pid file outlives its process (a crash, a reboot), and the kernel hands the PID to someone
else. Before trusting a recorded PID, or signalling it, rbdpy checks that ``/proc/PID`` is
still the daemon it started: the same start time (field 22 of ``/proc/PID/stat``, clock
ticks since boot, recorded when the daemon was started) and the command line it was started
with. Any other process is none of our business.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The start time of a running process (clock ticks since boot); None when there is no
    such process or it has exited (a zombie). Together with the PID it names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": the name may hold ")"
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def cmdline(pid: int) -> list[str] | None:
    """The argv a process runs with (None if gone or hidden from us)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]] or None


def cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def same_path(pid: int, arg: str, path: Path) -> bool:
    """Whether ``arg``, a path on ``pid``'s command line (relative to its working
    directory), names ``path``."""
    if not os.path.isabs(arg):
        base = cwd(pid)
        if base is None:
            return False
        arg = os.path.join(base, arg)
    return os.path.realpath(arg) == os.path.realpath(path)


def is_ours(pid: int, start: int | None, argv_matches: Callable[[list[str]], bool]) -> bool:
    """``pid`` runs, was started at ``start`` (when known) and its command line is one we
    start (``argv_matches``)."""
    if pid <= 0:
        return False
    began = start_time(pid)
    if began is None or (start is not None and began != start):
        return False
    argv = cmdline(pid)
    return argv is not None and argv_matches(argv)


def option(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv`` (``--id 3`` → "3")."""
    try:
        return argv[argv.index(name) + 1]
    except (ValueError, IndexError):
        return None
