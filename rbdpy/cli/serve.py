"""Serving images over NBD: ``serve`` (nbdkit with the rbdpy plugin) and ``up`` (the
embedded default: local cluster, image, server)."""


from __future__ import annotations

import argparse
import sys

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
    return cmd


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


def cmd_serve(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    if shutil.which("nbdkit") is None:
        raise UserError("nbdkit is not installed (run scripts/install.sh)")
    cfg = _cfg(args)
    if args.socket:
        _clear_stale_socket(args.socket)
    cmd = nbdkit_command(args, str(cfg.path))
    if not args.foreground:
        args.pidfile = args.pidfile or str(cfg.dir / f"nbdkit.{args.name}.pid")
        cmd = nbdkit_command(args, str(cfg.path))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise UserError(f"nbdkit exited with status {rc}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The embedded default: local cluster, image disk0, served in the foreground.

    SIGTERM (kill, timeout, systemd) stops it as Ctrl-C does: nbdkit first, then the OSDs,
    exit 0. Python's default SIGTERM ended this process at once: nbdkit followed it
    (--exit-with-parent), but the OSDs run in their own session (so that they outlive
    ``cluster up``) and were left behind. Whatever ends ``up`` once the cluster is up (a
    signal, a failed start of nbdkit, an image error) stops what it runs."""
    import signal
    import subprocess

    from rbdpy import config, localcluster
    from rbdpy.rbd.image import ImageError

    rlog.setup(args.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt, as SIGINT
    path = config.locate(args.cluster or args.data)
    cfg = localcluster.init(path.parent, osds=args.osds)
    proc: subprocess.Popen | None = None
    cluster_error = serving = False
    try:
        try:
            localcluster.up(cfg)
        except localcluster.ClusterError as e:
            cluster_error = True  # as before: OSDs already running are not ours to stop
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
        cmd = nbdkit_command(args, str(cfg.path))
        host = "127.0.0.1" if args.bind in ("0.0.0.0", "::") else args.bind
        url = f"nbd://{host}:{args.port}"
        proc = subprocess.Popen(cmd)
        _wait_serving(proc, host, args.port)
        serving = True
        print(f"""serving image {args.name} at {url}  (Ctrl-C stops everything)

  attach:   nbd-client {host} {args.port} /dev/nbd0 -N {args.name}
  qemu-img: qemu-img convert -p -n -O raw disk.img {url}
  fio:      fio --name=t --ioengine=nbd --uri={url} --rw=randwrite --bs=4k --iodepth=32 \\
                --size=1G --time_based --runtime=30
""", flush=True)
        proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        if not serving:
            raise
    finally:
        if not cluster_error:
            print(_stop_up(proc, cfg), flush=True)
    assert proc is not None
    return 0 if proc.returncode in (0, -signal.SIGTERM) else proc.returncode


NBDKIT_STOP_TIMEOUT = 90.0  # nbdkit bounds its exit flush (the plugin's cleanup) to 30 s


def _stop_up(proc, cfg) -> str:
    """Stop what ``up`` runs: nbdkit first (its exit flushes the image), then the OSDs; says
    what it stopped. SIGINT and SIGTERM are ignored from here on: a second Ctrl-C stopping
    this halfway would leave the OSDs running, or nbdkit's writes unflushed."""
    import signal
    import subprocess

    from rbdpy import localcluster

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    what = ""
    if proc is not None:
        what = "nbdkit and "
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=NBDKIT_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"rbdpy: nbdkit did not stop in {NBDKIT_STOP_TIMEOUT:g} s: killed; writes "
                  "it had not flushed are lost", file=sys.stderr)
    stopped = localcluster.down(cfg)
    return f"stopped {what}{len(stopped)} OSD(s); data kept in {cfg.dir}"


def _wait_serving(proc, host: str, port: int, timeout: float = 60.0) -> None:
    """Return once nbdkit accepts connections (so the commands printed next work at once);
    UserError if it exits first or takes longer than ``timeout``."""
    import time

    from rbdpy import localcluster

    deadline = time.monotonic() + timeout
    while not localcluster.port_open(host, port):
        if proc.poll() is not None:
            raise UserError(f"nbdkit exited with status {proc.returncode} before serving")
        if time.monotonic() > deadline:
            raise UserError(f"nbdkit did not listen on {host}:{port} within {timeout:g}s")
        time.sleep(0.05)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` and ``up`` verbs."""
    sv = sub.add_parser("serve", help="serve an image over NBD with nbdkit")
    sv.add_argument("name")
    sv.add_argument("--port", type=int, default=10809)
    sv.add_argument("--bind", default="127.0.0.1")
    sv.add_argument("--socket", help="unix socket path instead of TCP")
    sv.add_argument("--readonly", action="store_true")
    sv.add_argument("--write-through", action="store_true",
                    help="writes wait for the OSD's ack (default: write-back; flush or FUA "
                         "makes data durable either way)")
    sv.add_argument("--foreground", action="store_true")
    sv.add_argument("--pidfile")
    sv.set_defaults(fn=cmd_serve)

    u = sub.add_parser("up", help="local cluster + image disk0 + NBD server (foreground)")
    u.add_argument("--data", default=None, help="data directory (default ./rbdpy-data)")
    u.add_argument("--name", default="disk0")
    u.add_argument("--size", type=parse_size, default=10 << 30)
    u.add_argument("--osds", type=int, default=1)
    u.add_argument("--port", type=int, default=10809)
    u.add_argument("--bind", default="127.0.0.1")
    u.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    u.set_defaults(fn=cmd_up)
