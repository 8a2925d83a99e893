"""The ``rbdpy`` command, shaped like ``rbd``: daemons, cluster control, image verbs.

User errors print one line and exit non-zero; tracebacks are for bugs only. One module per
family of verbs: ``images``, ``cluster``, ``serve``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys

from rbdpy.cli import cluster, images, serve
from rbdpy.cli.common import UserError
from rbdpy.config import ConfigError

LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbdpy", description="RBD-style block devices over NBD")
    p.add_argument("--cluster", metavar="PATH", help="the cluster file (any name) or the "
                   "data directory holding cluster.toml (default: $RBDPY_CLUSTER, then "
                   "./rbdpy-data)")
    p.add_argument("--log-level", type=str.lower, default="warning", choices=LOG_LEVELS,
                   metavar="LEVEL", help="what the daemons this command runs in the "
                   f"foreground (osd, up) log to stderr: {', '.join(LOG_LEVELS)} (default "
                   "warning)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                           help="one of these ('rbdpy COMMAND --help' for its options)")
    cluster.add_parsers(sub)
    images.add_parsers(sub)
    serve.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data", None) and args.cmd == "cluster":
        args.cluster = args.data
    try:
        return args.fn(args)
    except (UserError, ConfigError) as e:  # ConfigError: a verb that reads the file itself
        if str(e):  # empty: the line was already printed (by nbdkit's plugin)
            print(f"rbdpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (rbdpy ls | head -1): not our error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # 128 + SIGPIPE, as a shell tool killed by it would
