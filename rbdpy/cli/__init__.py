"""The ``rbdpy`` command, shaped like ``rbd``: daemons, cluster control, image verbs.

User errors print one line and exit non-zero; tracebacks are for bugs only. One module per
family of verbs: ``images``, ``cluster``, ``serve``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys

from rbdpy.cli.cluster import (
    cmd_cluster,
    cmd_osd,
)
from rbdpy.cli.common import (
    UserError,
    _hostport,
    parse_size,
)
from rbdpy.cli.images import (
    cmd_bench,
    cmd_cp,
    cmd_create,
    cmd_du,
    cmd_export,
    cmd_import,
    cmd_info,
    cmd_lock,
    cmd_ls,
    cmd_mv,
    cmd_resize,
    cmd_rm,
)
from rbdpy.cli.serve import (
    cmd_serve,
    cmd_up,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbdpy", description="RBD-style block devices over NBD")
    p.add_argument("--cluster", help="cluster file or data directory (default: "
                   "$RBDPY_CLUSTER, then ./rbdpy-data)")
    p.add_argument("--log-level", default="warning")
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("osd", help="run an OSD daemon in the foreground")
    o.add_argument("--id", type=int, required=True)
    o.add_argument("--data", required=True, help="the OSD's data directory")
    o.add_argument("--listen", type=_hostport, default=("127.0.0.1", 6800))
    o.add_argument("--no-aio", action="store_true", help="sync group commits in a worker "
                   "thread, not through Linux AIO (also: RBDPY_OSD_NO_AIO=1)")
    o.add_argument("--commit-delay", type=float, metavar="SECONDS",
                   help="fault injection: hold every group commit back this long "
                   "(also: RBDPY_OSD_COMMIT_DELAY; default 0)")
    o.set_defaults(fn=cmd_osd)

    c = sub.add_parser("cluster", help="local cluster control")
    c.add_argument("action", choices=["up", "down", "status"])
    c.add_argument("--data", help="data directory (same as --cluster)")
    c.add_argument("--osds", type=int, default=1, help="OSDs to create on first 'up'")
    c.set_defaults(fn=cmd_cluster)

    def image_cmd(name: str, fn, helptext: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
        sp.set_defaults(fn=fn)
        return sp

    sp = image_cmd("create", cmd_create, "create a thin image")
    sp.add_argument("name")
    sp.add_argument("--size", type=parse_size, required=True)
    sp.add_argument("--object-size", type=parse_size, default=None)
    image_cmd("ls", cmd_ls, "list images")
    sp = image_cmd("import", cmd_import, "copy a raw file, block device or - (stdin) into a "
                   "new image, sparse (like rbd import)")
    sp.add_argument("path")
    sp.add_argument("name", nargs="?", help="image name (default: the file's name)")
    sp.add_argument("--object-size", type=parse_size, default=None)
    sp.add_argument("--no-progress", action="store_true")
    sp = image_cmd("export", cmd_export, "copy an image to a new raw file (sparse), a block "
                   "device or - (stdout) (like rbd export)")
    sp.add_argument("name")
    sp.add_argument("path")
    sp.add_argument("--no-progress", action="store_true")
    sp = image_cmd("cp", cmd_cp, "copy an image to a new one, sparse (like rbd cp)")
    sp.add_argument("name")
    sp.add_argument("dest")
    sp.add_argument("--no-progress", action="store_true")
    sp = image_cmd("mv", cmd_mv, "rename an image (like rbd mv)")
    sp.add_argument("name")
    sp.add_argument("new_name")
    sp = image_cmd("info", cmd_info, "show an image")
    sp.add_argument("name")
    sp.add_argument("--format", choices=["plain", "json"], default="plain")
    sp = image_cmd("resize", cmd_resize, "grow or shrink an image")
    sp.add_argument("name")
    sp.add_argument("--size", type=parse_size, required=True)
    sp.add_argument("--allow-shrink", action="store_true")
    sp = image_cmd("lock", cmd_lock, "show (ls) or break the image's exclusive lock "
                   "(like rbd lock ls / rm)")
    sp.add_argument("action", choices=["ls", "break"])
    sp.add_argument("name")
    sp = image_cmd("rm", cmd_rm, "remove an image and its data")
    sp.add_argument("name")
    sp = image_cmd("du", cmd_du, "provisioned and used space")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--bytes", action="store_true", help="exact byte counts")
    # values are checked by cmd_bench, not argparse, so every bad one is a one-line error
    sp = image_cmd("bench", cmd_bench, "benchmark an image through the client library "
                   "(like rbd bench)")
    sp.add_argument("name")
    sp.add_argument("--io-type", help="read, write or readwrite (required)")
    sp.add_argument("--io-size", default="4K", help="bytes per op (default 4K)")
    sp.add_argument("--io-threads", default="16", help="ops in flight (default 16)")
    sp.add_argument("--io-total", default="1G", help="bytes to move in all (default 1G)")
    sp.add_argument("--io-pattern", default="seq", help="seq or rand (default seq)")
    sp.add_argument("--rw-mix-read", default="50",
                    help="percent of reads, for readwrite (default 50)")
    sp.add_argument("--format", default="plain", help="plain or json")
    sp.add_argument("--no-progress", action="store_true", help="no progress on stderr")

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data", None) and args.cmd == "cluster":
        args.cluster = args.data
    try:
        return args.fn(args)
    except UserError as e:
        print(f"rbdpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (rbdpy ls | head -1): not our error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # 128 + SIGPIPE, as a shell tool killed by it would
