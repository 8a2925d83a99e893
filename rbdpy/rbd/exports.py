"""The images one NBD server serves, by export name, and how that server meets failures.

nbdkit's plugin (``nbdplugin/rbdpy_nbd.py``) only translates callbacks to this. A server's
life, and why each step is shaped so:

- ``probe`` (nbdkit's ``get_ready``, before it forks): every image opens once (a writable
  open takes its lock and gives it back) and its size is recorded. A missing image, one in
  use, or OSDs that do not answer end the server at startup with one line.
- ``start`` (after the fork: threads do not survive it): one ``Rados`` for every export, so
  a flush on any connection waits for every write of the server (NBD multi-conn), and the
  images open in the background. A client's handshake needs only the recorded size and
  flags, never the cluster; its requests wait for the open, and for the OSDs: while they
  are down nothing fails, and the server logs every few seconds which OSDs it waits for.
- ``begin_stop`` / ``stop`` (a signal, then nbdkit's ``cleanup``): the server stops within
  ``stop_timeout`` seconds even when the OSDs are gone. Requests still waiting then fail
  (ESHUTDOWN, NBD's "server shutting down"), and one line says how many writes could not be
  flushed.
- fenced (``rbdpy lock break``, or a writer that judged this server dead): the OSDs refuse
  every request of the server's client, for all its exports (a fence is per client, as in
  Ceph). One line says so, and by whom, as far as the breaker recorded it.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from rbdpy import config as rconfig
from rbdpy.client.objecter import OSDError
from rbdpy.client.rados import Rados
from rbdpy.errors import RbdpyError
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd import image as rbdimage
from rbdpy.rbd.lock import Breaker

log = logging.getLogger("rbdpy.serve")

STOP_TIMEOUT = 10.0
"""Seconds a server takes at most to stop (flush included) when the OSDs do not answer."""
PROBE_TIMEOUT = 10.0  # startup: the OSDs must answer within this
FENCE_LOOKUP = 5.0  # seconds to find who fenced us (the note is written just after the fence)


class UnknownExport(RbdpyError):
    """A client asked for an export name this server does not serve."""


class Export:
    """One image served under its name: its size is known before it is open."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0
        self.image: rbdapi.SyncImage | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()

    def wait(self) -> rbdapi.SyncImage:
        """The open image, once it is open (requests wait for it, as for the OSDs)."""
        img = self.image
        if img is None:
            self._ready.wait()
            img = self.image
            if img is None:
                raise self.error if isinstance(self.error, OSError) else RbdpyError(
                    errno.EIO, f"image {self.name} could not be opened: {self.error}")
        return img


class Exports:
    """The exports of one server, on one cluster connection (see the module doc)."""

    def __init__(self, names: list[str], *, cluster: str | None = None, pool: str = "rbd",
                 read_only: bool = False, writeback: bool = True,
                 stop_timeout: float = STOP_TIMEOUT,
                 options: rconfig.ClientOptions | None = None) -> None:
        if not names:
            raise ValueError("no image to serve")
        self.exports = {n: Export(n) for n in names}
        self.default = names[0]
        self.cluster, self.pool = cluster, pool
        self.read_only, self.writeback = read_only, writeback
        self.stop_timeout = stop_timeout
        self.options = options or rconfig.ClientOptions.from_env()
        self.rados: Rados | None = None
        self._cfg: rconfig.ClusterConfig | None = None
        self._deadline: float | None = None
        self._timer: threading.Timer | None = None
        self._abort_lock = threading.Lock()
        self._lost: int | None = None  # writes failed by the abort (None: no abort)
        self._owed = ""  # what the OSDs owed when the abort came
        self.stopped = threading.Event()
        # called (from a thread of ours) when no image could be opened after all (removed,
        # or taken by another writer since the probe): the server has nothing to serve
        self.on_unservable: Callable[[], None] | None = None

    def _connect(self) -> Rados:
        if self._cfg is None:
            self._cfg = rconfig.load(rconfig.locate(self.cluster))
        try:
            return Rados(self._cfg, pool=self.pool, options=self.options)
        except KeyError as e:  # no such pool
            raise rconfig.ConfigError(str(e).strip("'\"")) from None

    # -- startup ------------------------------------------------------------------------

    def probe(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Open every image once and record its size; raises ConfigError,
        ClusterUnavailable or an OSError (ImageError: missing, in use) with one line."""
        with self._connect() as rados:
            rados.wait_ready(timeout=timeout)
            for ex in self.exports.values():
                img = rbdapi.open_image(rados, ex.name, read_only=self.read_only,
                                        writeback=self.writeback)
                ex.size = img.size
                img.close()

    def start(self) -> None:
        """Connect and open the images in the background; returns at once (the cluster
        is not asked anything here)."""
        self.rados = self._connect()
        self.rados.on_fenced = self._fenced
        self.rados.report_blocked()
        threading.Thread(target=self._open_all, name="rbdpy-open", daemon=True).start()

    def _open_all(self) -> None:
        for ex in self.exports.values():
            try:
                img = rbdapi.open_image(self.rados, ex.name,  # type: ignore[arg-type]
                                        read_only=self.read_only, writeback=self.writeback)
                ex.size = img.size  # resized since the probe: new connections see it
                ex.image = img
            except BaseException as e:  # its waiting requests get it; the others serve on
                ex.error = e
                if self._deadline is None:  # (not stopping: then it says nothing new)
                    log.error("cannot serve image %s: %s", ex.name, e)
            finally:
                ex._ready.set()
        if self.on_unservable is not None and self._deadline is None and all(
                ex.image is None for ex in self.exports.values()):
            self.on_unservable()

    def lookup(self, export_name: str) -> Export:
        """The export a client asked for ("" is the default, the first image)."""
        ex = self.exports.get(export_name or self.default)
        if ex is None:
            raise UnknownExport(errno.ENOENT, f"no export named {export_name!r} (this server "
                                f"serves {', '.join(self.exports)})")
        return ex

    # -- fenced ---------------------------------------------------------------------------

    def _fenced(self) -> None:
        """Trio thread, once: the OSDs refuse this client. Writes are refused here from now
        on; who fenced us is looked up with a fresh client, in a thread of its own."""
        for ex in self.exports.values():
            lock = ex.image.image.lock if ex.image is not None else None
            if lock is not None:  # no longer ours: refuse writes, renew and release nothing
                lock.lost = True
                lock.drop()
        threading.Thread(target=self._report_fenced, name="rbdpy-fenced", daemon=True).start()

    def _report_fenced(self) -> None:
        me = f"client.{self.rados.objecter.me.num}"  # type: ignore[union-attr]
        who: Breaker | None = None
        image = ""
        try:
            with self._connect() as fresh:
                deadline = time.monotonic() + FENCE_LOOKUP
                while who is None and time.monotonic() < deadline:
                    for ex in self.exports.values():
                        b = _bounded(fresh, FENCE_LOOKUP, rbdapi.last_break, ex.name)
                        if b is not None and b.broke == me:
                            who, image = b, ex.name
                            break
                    else:
                        time.sleep(0.2)  # the breaker writes its note just after the fence
        except Exception as e:  # only the "by whom" is lost
            log.debug("looking up who fenced us: %r", e)
        by = (f"by {who.describe()}, who broke its lock on image {image}" if who else
              "by another client (no record of the break)")
        log.error("this server (%s) was fenced %s: the OSDs refuse all its requests from now "
                  "on, so they fail (ESHUTDOWN); it must be restarted to serve %s again", me,
                  by, ", ".join(self.exports))

    # -- stopping -------------------------------------------------------------------------

    def begin_stop(self) -> None:
        """A signal asked the server to stop (nbdkit now closes its connections once their
        requests end): from now on it has ``stop_timeout`` seconds, after which requests
        still waiting fail, so that the connections close and ``stop`` runs."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.stop_timeout
            self._timer = threading.Timer(self.stop_timeout, self._abort)
            self._timer.daemon = True
            self._timer.start()

    def _abort(self) -> None:
        """Fail every request still waiting (once); remember how many image writes that
        lost and whom they waited for."""
        with self._abort_lock:
            if self._lost is not None or self.rados is None or self.stopped.is_set():
                return
            rados = self.rados
            data = tuple(rbdimage.data_oid(ex.image.image.id, 0)[:-16]  # "rbd_data.<id>."
                         for ex in self.exports.values() if ex.image is not None)

            async def abort() -> tuple[int, str]:
                obj = rados.objecter
                waiting = obj.waiting(obj.last_tid)
                lost = sum(1 for r in obj.uncommitted.values() if r.oid.startswith(data))
                obj.abort(errno.ESHUTDOWN)
                return lost, waiting.targets(obj.osdmap) if waiting is not None else ""

            # the one line ``stop`` returns tells it all: not one warning per failed write
            logging.getLogger("rbdpy").setLevel(logging.ERROR)
            try:
                self._lost, self._owed = rados.run(abort)
            except RuntimeError:  # BridgeClosed: the connection closed meanwhile
                self._lost = 0

    def stop(self) -> str | None:
        """nbdkit's cleanup (every connection closed): flush what was written, within the
        deadline, and disconnect. Returns the line to show when writes were lost or the
        flush failed."""
        if self.rados is None:
            return None
        self.begin_stop()  # the deadline holds, whatever began the stop
        assert self._deadline is not None
        failed: list[str] = []
        for ex in self.exports.values():
            if ex.image is None or self.read_only or self._lost is not None:
                continue
            try:
                ex.image.flush(timeout=max(0.0, self._deadline - time.monotonic()))
            except OSError as e:
                if isinstance(e, OSDError) and e.errno == errno.ETIMEDOUT:
                    self._abort()  # out of time: nothing may wait for the OSDs any more
                    break
                failed.append(f"image {ex.name}: {e}")
        self.rados.close()  # gives the locks back (the timer still bounds it)
        with self._abort_lock:
            self.stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._lost:
            n = self._lost
            return (f"rbdpy: {n} write{'s' if n > 1 else ''} could not be flushed and "
                    f"{'are' if n > 1 else 'is'} lost: no answer in {self.stop_timeout:g} s "
                    f"from {self._owed or 'the OSDs'}")
        if failed:
            return f"rbdpy: the final flush failed, unflushed writes are lost: {'; '.join(failed)}"
        return None


def _bounded(rados: Rados, timeout: float, fn: Callable, *args: object) -> Breaker | None:
    """``fn(rados, *args)`` (a blocking api call), given up after ``timeout`` seconds."""
    result: list[Breaker | None] = [None]
    done = threading.Event()

    def run() -> None:
        try:
            result[0] = fn(rados, *args)
        except Exception as e:
            log.debug("%s: %r", getattr(fn, "__name__", fn), e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    done.wait(timeout)
    return result[0]

