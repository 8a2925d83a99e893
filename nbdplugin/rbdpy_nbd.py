"""nbdkit python plugin serving rbdpy images: thin, callbacks → Image calls, errors → errno.

    nbdkit python nbdplugin/rbdpy_nbd.py cluster=rbdpy-data image=disk0 [image=vm ...]
        [readonly=1] [writeback=0] [stop-timeout=10] [log=PATH]

nbdkit embeds Debian's /usr/bin/python3, so this file first puts the project's virtualenv
(``.venv`` beside ``nbdplugin/``, or ``$RBDPY_VENV``) on sys.path with ``site.addsitedir``,
which also honours the editable install's ``.pth``. What the server does lives in
``rbdpy.rbd.exports`` (see there); this file maps nbdkit's callbacks onto it:

- export names: each ``image=`` is served under its own name, the first one also as the
  default export ""; any other name is refused (ENOENT).
- ``get_ready`` (before nbdkit forks) probes the cluster and the images. A missing image,
  one in use or OSDs that do not answer: one line on stderr and exit status 2
  (``STARTUP_FAILED``: "the plugin said why"), not a traceback; ``os._exit`` is what ends
  nbdkit 1.32 from here without one (nothing is bound or written yet at that point).
- ``after_fork`` connects and opens the images in the background (threads do not survive
  nbdkit's fork), and takes over nbdkit's stop signals: a request waiting for OSDs that are
  gone would otherwise keep nbdkit from ever reaching ``cleanup``.
- errors a callback raises reach nbdkit as one line each (``_one_line_errors``).
"""

import builtins
import errno
import glob
import os
import signal
import site
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import nbdkit


def _add_venv() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.environ.get("RBDPY_VENV") or os.path.join(root, ".venv")
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for sp in glob.glob(os.path.join(venv, "lib", ver, "site-packages")):
        site.addsitedir(sp)
    if root not in sys.path:
        sys.path.append(root)


_add_venv()

from rbdpy import config as rconfig  # noqa: E402
from rbdpy import log as rlog  # noqa: E402
from rbdpy.client.rados import ClusterUnavailable  # noqa: E402
from rbdpy.rbd import exports as rexports  # noqa: E402

API_VERSION = 2
T = TypeVar("T")


def _one_line_errors() -> None:
    """nbdkit's python plugin prints an exception a callback raises with its traceback,
    through ``traceback.format_exception``, which it looks up at each error. An OSError is
    an expected failure with an errno (an unknown export, a full disk, the OSDs refusing a
    fenced server): one short line each, ``ENOSPC: message``. Anything else is a bug and
    keeps its traceback."""
    import traceback

    full = traceback.format_exception

    def short(exc: Any, /, *args: Any, **kwargs: Any) -> list[str]:
        value = args[0] if args else exc
        if isinstance(value, BadParameter):
            return [str(value)]
        if isinstance(value, OSError):
            name = errno.errorcode.get(value.errno or 0, "EIO")
            msg = str(value)
            return [msg if msg.startswith(name) or msg.endswith(name) else f"{name}: {msg}"]
        return full(exc, *args, **kwargs)

    traceback.format_exception = short


_one_line_errors()
STARTUP_FAILED = 2  # exit status of a server that could not start; its one line says why
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)  # nbdkit's
BACKSTOP = 5.0  # seconds past stop-timeout after which the process ends whatever it waits for

_cfg: dict[str, Any] = {"cluster": None, "images": [], "readonly": False, "pool": "rbd",
                        "writeback": True, "stop-timeout": rexports.STOP_TIMEOUT, "log": None}
_exports: rexports.Exports | None = None


class BadParameter(ValueError):
    """A wrong plugin parameter: one line, not a traceback."""


class Handle:
    """What ``open`` returns; nbdkit hands it back to every callback of the connection."""

    __slots__ = ("export", "readonly")

    def __init__(self, export: rexports.Export, readonly: bool) -> None:
        self.export = export
        self.readonly = readonly


def config(key: str, value: str) -> None:
    if key in ("cluster", "pool", "log"):
        _cfg[key] = value
    elif key == "image":
        if value in _cfg["images"]:
            raise BadParameter(f"image={value} given twice")
        _cfg["images"].append(value)
    elif key in ("readonly", "writeback"):
        if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise BadParameter(f"{key}={value!r}: want a boolean (1/0, true/false, on/off)")
        _cfg[key] = value.lower() in ("1", "true", "yes", "on")
    elif key == "stop-timeout":
        try:
            _cfg[key] = float(value)
        except ValueError:
            _cfg[key] = -1.0
        if not 0 < _cfg[key] < 3600:
            raise BadParameter(f"stop-timeout={value!r}: want seconds (0 < s < 3600)")
    else:
        raise BadParameter(f"unknown parameter {key!r} (want cluster=, image=, pool=, "
                           "readonly=, writeback=, stop-timeout=, log=)")


def config_complete() -> None:
    global _exports
    if not _cfg["images"]:
        raise BadParameter("image= is required")
    stream = sys.stderr
    if _cfg["log"]:  # opened before nbdkit forks (and chdirs to / in the background)
        # kept open for the life of the process (``open`` here is the NBD callback)
        stream = builtins.open(_cfg["log"], "a", buffering=1)  # noqa: SIM115
    rlog.setup("warning", stream)
    _exports = rexports.Exports(_cfg["images"], cluster=_cfg["cluster"], pool=_cfg["pool"],
                                read_only=_cfg["readonly"], writeback=_cfg["writeback"],
                                stop_timeout=_cfg["stop-timeout"])


def config_help() -> str:
    return ("cluster=PATH   cluster file or data directory (default $RBDPY_CLUSTER or "
            "./rbdpy-data)\nimage=NAME     image to serve, as export NAME (repeat it to "
            "serve several;\n               the first is also the default export \"\")\n"
            "readonly=1     refuse writes\n"
            "writeback=0    writes wait for the OSD (default 1: they return once sent; "
            "flush\n               makes them durable and reports any that failed)\n"
            f"stop-timeout=S seconds a stop may take when the OSDs do not answer (default "
            f"{rexports.STOP_TIMEOUT:g});\n               writes not flushed by then are "
            "lost, and one line says how many\n"
            "log=PATH       append the server's log lines there (default stderr, which nbdkit "
            "sends\n               to /dev/null once it runs in the background)")


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready() -> None:
    """Fail at startup, with one clear line, if the image or the cluster is not there."""
    assert _exports is not None
    try:
        _exports.probe()
    except (rconfig.ConfigError, ClusterUnavailable, OSError) as e:
        print(f"rbdpy: {e}", file=sys.stderr, flush=True)
        os._exit(STARTUP_FAILED)
    for ex in _exports.exports.values():
        nbdkit.debug(f"rbdpy: image {ex.name} size {ex.size}")


def after_fork() -> None:
    assert _exports is not None
    _catch_stop_signals()
    _exports.on_unservable = nbdkit.shutdown  # each open failed (and said why): end
    _exports.start()


def cleanup() -> None:
    if _exports is not None:
        line = _exports.stop()
        if line:
            _say(line)


def _say(line: str) -> None:
    """One line for the person who stops the server: on stderr, and in the log file."""
    print(line, file=sys.stderr, flush=True)
    if _cfg["log"]:
        with builtins.open(_cfg["log"], "a") as f:
            f.write(line + "\n")


def _catch_stop_signals() -> None:
    """nbdkit ends on SIGINT/SIGTERM/SIGQUIT/SIGHUP once every request in progress has
    returned, so one waiting for OSDs that are gone kept it running forever. Python's own
    C handler replaces nbdkit's (it runs in whichever thread the signal hits, and writes
    the signal to the wakeup fd); a thread reading that fd asks nbdkit to shut down as its
    handler did, and starts the stop clock (``Exports.begin_stop``)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(w, False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _python_side_of_a_signal)
        signal.siginterrupt(sig, False)  # SA_RESTART, as nbdkit's handler had it
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_stop_on_signal, args=(r,), name="rbdpy-signals",
                     daemon=True).start()


def _python_side_of_a_signal(signum: int, frame: object) -> None:
    """Runs (if ever) when nbdkit's main thread next runs Python: nothing left to do."""


def _stop_on_signal(fd: int) -> None:
    os.read(fd, 64)
    nbdkit.shutdown()
    assert _exports is not None
    _exports.begin_stop()
    # the backstop: a read whose reply was arriving when the requests were failed is left
    # to finish (its buffer is nbdkit's); should anything still hang, end here
    if not _exports.stopped.wait(_exports.stop_timeout + BACKSTOP):
        _say(f"rbdpy: not stopped {_exports.stop_timeout + BACKSTOP:g} s after the signal: "
             "exiting now; writes not flushed are lost")
        os._exit(1)


def list_exports(readonly: bool, is_tls: bool) -> list[tuple[str, str]]:
    assert _exports is not None
    return [(ex.name, f"rbdpy image {ex.name}") for ex in _exports.exports.values()]


def default_export(readonly: bool, is_tls: bool) -> str:
    assert _exports is not None
    return _exports.default


def _errno_edge(fn: Callable[..., T]) -> Callable[..., T]:
    """Typed errors inside become errno values here: set_error, then raise (never a fake
    success with an unfilled buffer)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any) -> T:
        try:
            return fn(*args)
        except OSError as e:  # rbdpy's errors (RbdpyError) included: each has its errno
            err = e.errno
            nbdkit.set_error(err if isinstance(err, int) and err > 0 else errno.EIO)
            raise

    return wrapper


@_errno_edge
def open(readonly: bool) -> Handle:  # the name nbdkit calls
    assert _exports is not None
    return Handle(_exports.lookup(nbdkit.export_name()), readonly or _cfg["readonly"])


def get_size(h: Handle) -> int:
    return h.export.size  # known since get_ready: a handshake never waits for the OSDs


def block_size(h: Handle) -> tuple[int, int, int]:
    # minimum 1 (any byte range works), preferred 4 KiB, maximum 32 MiB (nbdkit's own cap)
    return (1, 4096, 32 * 1024 * 1024)


def can_write(h: Handle) -> bool:
    return not h.readonly


def can_flush(h: Handle) -> bool:
    return True


def can_trim(h: Handle) -> bool:
    return True


def can_zero(h: Handle) -> bool:
    return True


def can_fast_zero(h: Handle) -> bool:
    return True


def can_fua(h: Handle) -> int:
    return nbdkit.FUA_NATIVE


def can_multi_conn(h: Handle) -> bool:
    return True  # one objecter per nbdkit process: flush covers every connection's writes


def can_extents(h: Handle) -> bool:
    return True


def is_rotational(h: Handle) -> bool:
    return False


def _image(h: Handle) -> Any:
    """The export's open image; requests that come before it is open wait for it."""
    return h.export.image or h.export.wait()


@_errno_edge
def pread(h: Handle, buf: bytearray, offset: int, flags: int) -> None:
    _image(h).read(offset, buf)


@_errno_edge
def pwrite(h: Handle, buf: memoryview, offset: int, flags: int) -> None:
    _image(h).write(offset, buf, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def flush(h: Handle, flags: int) -> None:
    _image(h).flush()


@_errno_edge
def trim(h: Handle, count: int, offset: int, flags: int) -> None:
    _image(h).discard(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def zero(h: Handle, count: int, offset: int, flags: int) -> None:
    # always fast: whole objects are deleted, partial ranges zeroed on the OSD, no data sent
    _image(h).write_zeroes(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))


@_errno_edge
def extents(h: Handle, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    runs = _image(h).extents(offset, count)
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(off, n, 0 if alloc else hole) for off, n, alloc in runs]
