"""Ctrl-C (SIGINT) and SIGTERM for a command that must undo what it created if it does not
finish (``rbdpy import``): an interrupt at any moment ends with the partial image removed.

Python raises KeyboardInterrupt wherever the main thread happens to be. Three places make
that unsafe for an import: between creating the image and the ``try`` that removes it (the
image is left behind), inside a blocking call into the client library (the call goes on in
the cluster thread, and an exception between the bridge's lock operations can leave its
lock held), and inside the cleanup itself (a second Ctrl-C cut the removal short). So the
handler here only records an interrupt, except where raising is safe:

* ``RAISE`` (before anything exists): raise at once, as Python does.
* ``DEFER`` (creating, opening, closing, removing): record; the command acts on it at its
  next safe point (``check``).
* ``OUTSIDE_CLIENT`` (copying data in): raise unless the main thread is inside the client
  library (``rbdpy.client``, ``rbdpy.rbd.api``), so a read blocked on a stalled pipe is
  interrupted at once; one that came during a client call is acted on when it returns.

Every raise switches to ``DEFER`` first, so a second signal never interrupts the cleanup
the first one started. SIGTERM (kill, timeout, systemd) counts as Ctrl-C, as in ``rbdpy up``.
"""

from __future__ import annotations

import enum
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


class Mode(enum.Enum):
    RAISE = "raise"
    DEFER = "defer"
    OUTSIDE_CLIENT = "outside-client"


def _client_files() -> tuple[str, ...]:
    """File name prefixes of the client library's blocking calls (see module doc)."""
    import rbdpy.client
    import rbdpy.rbd.api

    return (str(Path(rbdpy.client.__file__).parent) + "/", rbdpy.rbd.api.__file__)


def in_client(frame: FrameType | None, files: tuple[str, ...]) -> bool:
    """Is any frame of this stack running code of ``files`` (prefixes)?"""
    while frame is not None:
        if frame.f_code.co_filename.startswith(files):
            return True
        frame = frame.f_back
    return False


class Interrupts:
    """Records SIGINT/SIGTERM and raises KeyboardInterrupt only where it is safe (see the
    module doc). Install it once, in the main thread, for the rest of the process: a
    command that uses it is the last thing the process does, and ends with ``finish``, so a
    signal that comes while the process exits (after success, or after the cleanup) cannot
    interrupt anything half-done either, nor change the exit status: it is ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.mode = Mode.RAISE
        self.pending = False  # an interrupt came and was not raised yet
        self._files = _client_files()

    @classmethod
    def install(cls) -> Interrupts:
        self = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in cls.SIGNALS:
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.mode is Mode.RAISE or (self.mode is Mode.OUTSIDE_CLIENT
                                       and not in_client(frame, self._files)):
            self.mode = Mode.DEFER
            raise KeyboardInterrupt
        self.pending = True

    def finish(self) -> None:
        """The command is over (done, or cleaned up): ignore these signals from now on.
        Python puts back the default action of every signal it handles when it finalizes,
        so one that came during the exit would kill the process (status -2) after it had
        said how it ended."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    def defer(self) -> None:
        """From now on, interrupts are recorded (until ``outside_client``)."""
        self.mode = Mode.DEFER

    def check(self) -> None:
        """A safe point: raise KeyboardInterrupt if an interrupt was recorded."""
        if self.pending:
            self.pending = False
            self.mode = Mode.DEFER
            raise KeyboardInterrupt

    @contextmanager
    def outside_client(self) -> Iterator[None]:
        """Interrupts raise inside this block, except during client calls (then at the next
        ``check``); recorded ones raise on entry. Deferred again on the way out."""
        self.check()
        self.mode = Mode.OUTSIDE_CLIENT
        try:
            yield
        finally:
            self.mode = Mode.DEFER

    def checking(self, progress: Callable[[int, int | None], None] | None
                 ) -> Callable[[int, int | None], None]:
        """``progress`` (may be None) that is also a safe point: a copy loop calls it after
        every chunk, so an interrupt recorded during a client call is acted on there."""
        def report(done: int, total: int | None) -> None:
            if progress is not None:
                progress(done, total)
            self.check()
        return report


@contextmanager
def deferred(intr: Interrupts | None) -> Iterator[None]:
    """Interrupts wait while this block runs (a cleanup that must not be cut short). With
    ``intr`` its mode is set; without one, SIGINT is only recorded here and the previous
    handler comes back afterwards (what came meanwhile is dropped: the cleanup it would
    have started is running anyway)."""
    if intr is not None:
        saved, intr.mode = intr.mode, Mode.DEFER
        try:
            yield
        finally:
            intr.mode = saved
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
