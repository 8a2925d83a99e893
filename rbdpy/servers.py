"""The NBD servers running for a cluster: one record per nbdkit process that ``rbdpy serve``
or ``rbdpy up`` started, in ``DIR/servers/`` next to the cluster file.

What ``rbd device list`` / ``rbd device unmap`` are for rbd-nbd: ``serve ls`` lists the
records whose process still runs, ``serve stop`` stops them, ``cluster down`` sees them. A
record holds the image, the address, the PID with its start time and the mode. Each server
gets its own record and pid file (a random name), so serving one image twice (a read-only
server beside the writer, say) never overwrites the first one's. A record counts only while
its PID is still that nbdkit (same start time, our plugin on this cluster file, see
``rbdpy.proc``); other records are stale and dropped when read.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rbdpy import proc as rproc

PLUGIN_NAME = "rbdpy_nbd.py"


@dataclass(frozen=True)
class Server:
    image: str
    address: str  # the NBD URI: nbd://HOST:PORT/IMAGE or nbd+unix:///IMAGE?socket=PATH
    pid: int
    start: int | None  # /proc/PID/stat field 22 when it was recorded
    readonly: bool
    cluster: str  # the cluster file nbdkit was given
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    pidfile: str | None = None
    record: str = ""  # the record's own path (not stored in it)

    @property
    def mode(self) -> str:
        return "ro" if self.readonly else "rw"

    def describe(self) -> str:
        return f"{self.image} at {self.address} (pid {self.pid})"

    def to_json(self) -> dict:
        d = asdict(self)
        del d["record"]
        return d


def uri(image: str, *, host: str | None = None, port: int | None = None,
        socket: str | None = None) -> str:
    """The NBD URI of ``image`` served on a TCP address or a unix socket."""
    if socket is not None:
        return f"nbd+unix:///{image}?socket={socket}"
    h = f"[{host}]" if host and ":" in host else host
    return f"nbd://{h}:{port}/{image}"


def registry(cluster_dir: Path) -> Path:
    return cluster_dir / "servers"


def new_name(cluster_dir: Path, image: str) -> Path:
    """A fresh path stem for one server's pid file and record (``IMAGE.XXXXXXXX``)."""
    d = registry(cluster_dir)
    d.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image)[:64]
    return d / f"{safe}.{secrets.token_hex(4)}"


def register(stem: Path, server: Server) -> Server:
    """Write the record (atomically: a reader never sees half of it)."""
    path = stem.with_name(stem.name + ".json")
    tmp = stem.with_name(stem.name + ".tmp")
    tmp.write_text(json.dumps(server.to_json(), indent=1) + "\n")
    os.replace(tmp, path)
    return Server(**{**server.to_json(), "record": str(path)})


def is_nbdkit(pid: int, start: int | None, cluster: str) -> bool:
    """``pid`` is nbdkit running our plugin on ``cluster`` (started at ``start``)."""
    def matches(argv: list[str]) -> bool:
        return (os.path.basename(argv[0]) == "nbdkit"
                and any(os.path.basename(a) == PLUGIN_NAME for a in argv)
                and f"cluster={cluster}" in argv)
    return rproc.is_ours(pid, start, matches)


def running(server: Server) -> bool:
    return is_nbdkit(server.pid, server.start, server.cluster)


def unregister(server: Server) -> None:
    """Remove a record, and its pid file when it is the one rbdpy chose (beside it)."""
    if server.pidfile and Path(server.pidfile).parent == Path(server.record).parent:
        Path(server.pidfile).unlink(missing_ok=True)
    Path(server.record).unlink(missing_ok=True)


def live(cluster_dir: Path) -> list[Server]:
    """The servers that run now, by image then address; stale records are removed."""
    out = []
    for path in sorted(registry(cluster_dir).glob("*.json")):
        try:
            server = Server(**{**json.loads(path.read_text()), "record": str(path)})
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours to judge
        if running(server):
            out.append(server)
        else:
            unregister(server)
    return sorted(out, key=lambda s: (s.image, s.address))


def matching(servers: list[Server], target: str) -> list[Server]:
    """The servers ``target`` names: an image name, or an address (the URI, the URI
    without the export name, HOST:PORT, or the unix socket's path)."""
    out = []
    for s in servers:
        names = {s.image, s.address}
        if s.socket is not None:
            names |= {f"nbd+unix://?socket={s.socket}", f"nbd+unix:///?socket={s.socket}"}
            if os.path.realpath(target) == os.path.realpath(s.socket):
                names.add(target)
        else:
            base = s.address.rsplit("/", 1)[0]
            names |= {base, base + "/", base.removeprefix("nbd://")}
        if target in names:
            out.append(s)
    return out


def stop(servers: list[Server], timeout: float) -> list[tuple[Server, bool]]:
    """SIGTERM each server (nbdkit then runs the plugin's cleanup, which flushes the image)
    and wait up to ``timeout`` for all of them; (server, stopped) for each. A server that
    did not stop keeps its record: it still runs."""
    for s in servers:
        try:
            os.kill(s.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(running(s) for s in servers) and time.monotonic() < deadline:
        for s in servers:
            _reap(s.pid)
        time.sleep(0.05)
    out = []
    for s in servers:
        _reap(s.pid)
        gone = not running(s)
        if gone:
            unregister(s)
        out.append((s, gone))
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
