"""Serving images over NBD: ``serve`` (nbdkit with the rbdpy plugin) and ``up`` (the
embedded default: local cluster, image, server)."""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rbdpy import log as rlog
from rbdpy.cli.common import (
    UserError,
    _cfg,
    _rados,
    human,
    parse_size,
)
from rbdpy.rbd import api as rbdapi


def plugin_path() -> str:
    from pathlib import Path

    import rbdpy

    return str(Path(rbdpy.__file__).resolve().parent.parent / "nbdplugin" / "rbdpy_nbd.py")


PLUGIN_REPORTED = 2  # nbdkit's status when the plugin refused to start and said why


def nbdkit_command(args: argparse.Namespace, cfg_path: str) -> list[str]:
    cmd = ["nbdkit", "--exit-with-parent"] if args.foreground else ["nbdkit"]
    if args.foreground:
        cmd.append("--foreground")
    if args.socket:
        cmd += ["--unix", args.socket]
    else:
        cmd += ["--port", str(args.port), "--ipaddr", args.bind]
    if getattr(args, "pidfile", None):
        cmd += ["--pidfile", args.pidfile]
    cmd += ["python", plugin_path(), f"cluster={cfg_path}", f"image={args.name}"]
    if args.readonly:
        cmd.append("readonly=1")
    if getattr(args, "write_through", False):
        cmd.append("writeback=0")
    if getattr(args, "log", None):
        cmd.append(f"log={args.log}")
    return cmd


def _drop_empty(path: Path) -> None:
    """A server that never started leaves no empty log behind."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _clear_stale_socket(path: str) -> None:
    """A socket file nobody listens on (left by a killed server) would block nbdkit."""
    import os
    import socket

    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError:
            return
    raise UserError(f"{path} is in use by a running server")


def _check_port(bind: str, port: int) -> None:
    """Refuse a TCP port another program listens on, before anything starts: nbdkit would
    only fail once the cluster and the image are up (and ``up`` said "serving" on another
    program's port)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nbdkit binds
        try:
            s.bind((bind, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {bind} is in use by another program "
                                "(choose another with --port)") from None
            raise UserError(f"cannot listen on {bind}:{port}: {e.strerror}") from None


def _listening(host: str | None, port: int | None, sock: str | None) -> bool:
    """Whether the server accepts connections yet (on the TCP port or the unix socket)."""
    import socket

    from rbdpy import localcluster

    if sock is None:
        assert host is not None and port is not None
        return localcluster.port_open(host, port)
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(sock)
        except OSError:
            return False
    return True


def _served_by(args: argparse.Namespace, cfg, pid: int, pidfile: str | None, stem):
    """Record the nbdkit ``pid`` serving ``args.name`` (``serve ls`` lists it)."""
    from rbdpy import proc, servers

    host = None if args.socket else _connect_host(args.bind)
    server = servers.Server(
        image=args.name, address=servers.uri(args.name, host=host, port=args.port,
                                             socket=args.socket),
        pid=pid, start=proc.start_time(pid), readonly=bool(args.readonly),
        cluster=str(cfg.path), host=host, port=None if args.socket else args.port,
        socket=args.socket, pidfile=pidfile)
    return servers.register(stem, server)


def _connect_host(bind: str) -> str:
    """Where a client on this host reaches a server bound to ``bind``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve NAME`` (nbdkit in the background, or ``--foreground``), ``serve ls``,
    ``serve stop NAME|ADDRESS|--all``."""
    if args.name == "ls":
        return _serve_ls(args)
    if args.name == "stop":
        return _serve_stop(args)
    if args.target is not None or args.all:
        raise UserError("serve takes one image name ('rbdpy serve stop NAME' stops a server)")
    return _serve_image(args)


def _serve_image(args: argparse.Namespace) -> int:
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from rbdpy import servers

    if shutil.which("nbdkit") is None:
        raise UserError("nbdkit is not installed (run scripts/install.sh)")
    cfg = _cfg(args)
    if args.socket:
        args.socket = os.path.abspath(args.socket)
        _clear_stale_socket(args.socket)
    else:
        _check_port(args.bind, args.port)
    stem = servers.new_name(cfg.dir, args.name)
    if args.pidfile:
        args.pidfile = os.path.abspath(args.pidfile)
        _clear_pidfile(Path(args.pidfile))
    elif not args.foreground:
        args.pidfile = str(stem.with_name(stem.name + ".pid"))  # its own: never another's
        # in the background nbdkit's stderr is /dev/null: the plugin logs here instead
        args.log = str(stem.with_name(stem.name + ".log"))
    cmd = nbdkit_command(args, str(cfg.path))
    if args.foreground:
        return _serve_foreground(args, cfg, cmd, stem)
    rc = subprocess.call(cmd)
    if rc != 0:
        _drop_empty(Path(args.log))
    if rc == PLUGIN_REPORTED:
        raise UserError("")  # the plugin printed the one line that says why
    if rc != 0:
        raise UserError(f"nbdkit exited with status {rc}")
    pid = _wait_pidfile(Path(args.pidfile))
    server = _served_by(args, cfg, pid, args.pidfile, stem)
    print(_serving_line(server), flush=True)
    return 0


def _serving_line(server) -> str:
    where = f"socket {server.socket}, " if server.socket else ""
    mode = "read-only" if server.readonly else "writable"
    return f"serving {server.image} at {server.address} ({where}pid {server.pid}, {mode})"


def _clear_pidfile(path) -> None:
    """A pid file given with --pidfile that names a running nbdkit stays (it is that
    server's); a stale one goes, so that its reappearance means the new server is ready."""
    import os

    from rbdpy import proc

    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pid = 0
    argv = proc.cmdline(pid) if pid > 0 and proc.start_time(pid) is not None else None
    if argv and os.path.basename(argv[0]) == "nbdkit":
        raise UserError(f"{path} is the pid file of a running server (pid {pid})")
    path.unlink(missing_ok=True)


PIDFILE_TIMEOUT = 60.0  # the server opens the image after forking (up to 10 s per try)


def _wait_pidfile(path, timeout: float = PIDFILE_TIMEOUT) -> int:
    """nbdkit writes its pid file once it accepts connections, after forking into the
    background (its first process has exited by then); the PID in it."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):  # not there yet, or half written
            if time.monotonic() > deadline:
                raise UserError(f"nbdkit did not start serving within {timeout:g} s (it "
                                "logs to the system log in the background; --foreground "
                                "shows its messages)") from None
            time.sleep(0.05)


def _serve_foreground(args: argparse.Namespace, cfg, cmd: list[str], stem) -> int:
    """nbdkit as our child (it exits with us): recorded while it serves, stopped on Ctrl-C
    or SIGTERM with its exit flush, as ``up`` stops it."""
    import signal
    import subprocess

    from rbdpy import servers

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    proc = subprocess.Popen(cmd)
    server = None
    try:
        host = None if args.socket else _connect_host(args.bind)
        _wait_serving(proc, lambda: _listening(host, args.port, args.socket))
        server = _served_by(args, cfg, proc.pid, args.pidfile, stem)
        print(_serving_line(server), flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_nbdkit(proc)
        if server is not None:
            servers.unregister(server)
    return 0 if proc.returncode in (0, -signal.SIGTERM, -signal.SIGINT) else proc.returncode


def _serve_ls(args: argparse.Namespace) -> int:
    import json

    from rbdpy import servers

    if args.target is not None or args.all:
        raise UserError("serve ls takes no image name")
    rows = servers.live(_cfg(args).dir)
    if args.format == "json":
        print(json.dumps([s.to_json() for s in rows], indent=1))
        return 0
    if rows:
        width = max(5, *(len(s.image) for s in rows))
        print(f"{'image':<{width}}  mode  {'pid':<7}  address")
        for s in rows:
            print(f"{s.image:<{width}}  {s.mode:<4}  {s.pid:<7}  {s.address}")
    return 0


def _serve_stop(args: argparse.Namespace) -> int:
    from rbdpy import servers

    if args.all == (args.target is not None):
        raise UserError("serve stop takes an image name, an address or --all")
    rows = servers.live(_cfg(args).dir)
    if not args.all:
        rows = servers.matching(rows, args.target)
        if not rows:
            raise UserError(f"no running server of {args.target} (see 'rbdpy serve ls')")
    return 0 if stop_servers(rows, args.wait) else 1


def stop_servers(rows: list, wait: float) -> bool:
    """Stop these servers (SIGTERM: nbdkit's exit runs the plugin's cleanup, which flushes)
    and say, one line each, which stopped and which did not within ``wait`` seconds."""
    from rbdpy import servers

    ok = True
    for s, gone in servers.stop(rows, wait):
        if gone:
            print(f"stopped {s.describe()}", flush=True)
        else:
            ok = False
            print(f"rbdpy: {s.describe()} did not stop within {wait:g} s (still flushing? "
                  f"'kill -9 {s.pid}' loses the writes it has not flushed)", file=sys.stderr,
                  flush=True)
    return ok


def _claim_up(data_dir, what: str):
    """One ``up`` per data directory: an flock on ``DIR/up.lock``, held while it runs (the
    kernel drops it when the process ends, however it ends). The file says which ``up``
    holds it, for the one refused."""
    import fcntl
    import os

    f = open(data_dir / "up.lock", "a+")  # noqa: SIM115 - held for the life of up
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "pid unknown"
        f.close()
        raise UserError(f"rbdpy up is already running on {data_dir} ({holder})") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, serving {what}\n")
    f.flush()
    return f


def cmd_up(args: argparse.Namespace) -> int:
    """The embedded default: local cluster, image disk0, served in the foreground.

    SIGTERM (kill, timeout, systemd) stops it as Ctrl-C does: nbdkit first, then the OSDs,
    exit 0. Python's default SIGTERM ended this process at once: nbdkit followed it
    (--exit-with-parent), but the OSDs run in their own session (so that they outlive
    ``cluster up``) and were left behind. Whatever ends ``up`` (a signal, a failed start of
    nbdkit, an image error) stops exactly what this run started: OSDs that ran before it
    (``cluster up``) keep running. Checks that need nothing started (another ``up`` on this
    directory, a server of the image, the port) come first, and touch nothing."""
    import signal
    import subprocess

    from rbdpy import config, localcluster, servers
    from rbdpy.rbd.image import ImageError

    rlog.setup(args.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt, as SIGINT
    path = config.locate(args.cluster or args.data)
    cfg = localcluster.init(path.parent, osds=args.osds)
    host = _connect_host(args.bind)
    url = servers.uri(args.name, host=host, port=args.port)
    claim = _claim_up(cfg.dir, f"{args.name} at {url}")
    proc: subprocess.Popen | None = None
    started: list[localcluster.Started] = []
    server = None
    try:
        for s in servers.live(cfg.dir):
            if s.image == args.name and not s.readonly:
                raise UserError(f"{args.name} is already served: {s.describe()}")
        _check_port(args.bind, args.port)
        try:
            localcluster.up(cfg, started=started)
        except localcluster.ClusterError as e:
            raise UserError(str(e)) from None
        args.cluster = str(cfg.path)
        with _rados(args) as r:
            if args.name not in rbdapi.list_images(r):
                try:
                    rbdapi.create_image(r, args.name, args.size)
                    print(f"created image {args.name} ({human(args.size)}, thin)")
                except ImageError as e:
                    raise UserError(str(e)) from None
        args.foreground, args.socket, args.readonly, args.pidfile = True, None, False, None
        proc = subprocess.Popen(nbdkit_command(args, str(cfg.path)))
        _wait_serving(proc, lambda: _listening(host, args.port, None))
        server = _served_by(args, cfg, proc.pid, None, servers.new_name(cfg.dir, args.name))
        print(f"""serving image {args.name} at {url}  (Ctrl-C stops everything)

  attach:   nbd-client {host} {args.port} /dev/nbd0 -N {args.name}
  qemu-img: qemu-img convert -p -n -O raw disk.img {url}
  fio:      fio --name=t --ioengine=nbd --uri={url} --rw=randwrite --bs=4k --iodepth=32 \\
                --size=1G --time_based --runtime=30
""", flush=True)
        proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        if server is None:
            raise
    finally:
        done = _stop_up(proc, cfg, started, server)
        if server is not None:
            print(done, flush=True)
        claim.close()
    assert proc is not None
    return 0 if proc.returncode in (0, -signal.SIGTERM) else proc.returncode


NBDKIT_STOP_TIMEOUT = 30.0  # the plugin bounds its stop (flush included) to ~15 s


def _stop_nbdkit(proc) -> None:
    """SIGTERM our nbdkit child and wait (its exit flushes the image); SIGKILL only past
    NBDKIT_STOP_TIMEOUT, saying what that loses."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=NBDKIT_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"rbdpy: nbdkit did not stop in {NBDKIT_STOP_TIMEOUT:g} s: killed; writes "
              "it had not flushed are lost", file=sys.stderr)


def _stop_up(proc, cfg, started, server) -> str:
    """Stop what this ``up`` started: nbdkit first (its exit flushes the image), then the
    OSDs it started (not those that ran before it); says what it stopped. SIGINT and
    SIGTERM are ignored from here on: a second Ctrl-C stopping this halfway would leave the
    OSDs running, or nbdkit's writes unflushed."""
    import signal

    from rbdpy import localcluster, servers

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    what = ""
    if proc is not None:
        what = "nbdkit and "
        _stop_nbdkit(proc)
    if server is not None:
        servers.unregister(server)
    if not started:
        return (f"stopped nbdkit; the OSDs ran before 'up' and keep running ('rbdpy cluster "
                f"down' stops them); data in {cfg.dir}")
    stopped = localcluster.stop(cfg, started)
    return f"stopped {what}{len(stopped)} OSD(s); data kept in {cfg.dir}"


def _wait_serving(proc, ready, timeout: float = 60.0) -> None:
    """Return once nbdkit accepts connections (``ready()``), so the commands printed next
    work at once; UserError if it exits first or takes longer than ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            if proc.returncode == PLUGIN_REPORTED:
                raise UserError("")  # the plugin printed the one line that says why
            raise UserError(f"nbdkit exited with status {proc.returncode} before serving")
        if time.monotonic() > deadline:
            raise UserError(f"nbdkit did not start serving within {timeout:g}s")
        time.sleep(0.05)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` and ``up`` verbs."""
    sv = sub.add_parser(
        "serve", help="serve an image over NBD with nbdkit; list (ls) and stop servers",
        usage="rbdpy serve NAME [--port P | --socket PATH] [--bind ADDR] [--readonly] "
              "[--write-through] [--foreground] [--pidfile FILE]\n"
              "       rbdpy serve ls [--format plain|json]\n"
              "       rbdpy serve stop NAME|ADDRESS|--all [--wait SECONDS]",
        description="Serve an image with nbdkit, in the background unless --foreground; "
                    "it prints the address. 'serve ls' lists the running servers of this "
                    "cluster (image, mode, pid, address), 'serve stop' stops them: SIGTERM, "
                    "after which nbdkit flushes the image and exits.")
    sv.add_argument("name", metavar="NAME|ls|stop",
                    help="the image to serve, or 'ls' (list servers) or 'stop' (stop them)")
    sv.add_argument("target", nargs="?", metavar="NAME|ADDRESS",
                    help="for 'stop': the image whose servers to stop, or one server's "
                         "address (nbd://HOST:PORT/NAME, HOST:PORT, or its socket path)")
    sv.add_argument("--port", type=int, default=10809, help="TCP port (default 10809)")
    sv.add_argument("--bind", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--socket", help="listen on this unix socket path instead of TCP")
    sv.add_argument("--readonly", action="store_true",
                    help="refuse writes; takes no lock, so it may run beside the writer")
    sv.add_argument("--write-through", action="store_true",
                    help="writes wait for the OSD's ack (default: write-back; flush or FUA "
                         "makes data durable either way)")
    sv.add_argument("--foreground", action="store_true",
                    help="stay in the foreground (Ctrl-C stops the server)")
    sv.add_argument("--pidfile", help="also write nbdkit's PID to this file (rbdpy keeps "
                    "its own record of every server in DIR/servers/)")
    sv.add_argument("--all", action="store_true", help="for 'stop': every server of "
                    "this cluster")
    sv.add_argument("--format", choices=["plain", "json"], default="plain",
                    help="for 'ls': output format (default plain)")
    sv.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                    help="for 'stop': how long to wait for each server to flush and exit "
                         "(default 60); a server still running then is reported, not killed")
    sv.set_defaults(fn=cmd_serve)

    u = sub.add_parser("up", help="local cluster + image disk0 + NBD server (foreground)",
                       description="Start the local cluster (the OSDs not running yet), "
                       "create the image if missing and serve it until Ctrl-C or SIGTERM, "
                       "then stop what this run started. Refused while another 'up' runs on "
                       "the same data directory.")
    u.add_argument("--data", default=None, help="data directory (default ./rbdpy-data)")
    u.add_argument("--name", default="disk0", help="the image to serve (default disk0)")
    u.add_argument("--size", type=parse_size, default=10 << 30,
                   help="size of the image if it has to be created (default 10G)")
    u.add_argument("--osds", type=int, default=1,
                   help="OSDs to create when the data directory is new (default 1)")
    u.add_argument("--port", type=int, default=10809, help="TCP port (default 10809)")
    u.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    u.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    u.set_defaults(fn=cmd_up)
