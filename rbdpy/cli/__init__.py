"""The ``rbdpy`` command, shaped like ``rbd``: daemons, cluster control, image verbs.

User errors print one line and exit non-zero; tracebacks are for bugs only. One module per
family of verbs: ``images``, ``cluster``, ``serve``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys

from rbdpy.cli import cluster, images, serve
from rbdpy.cli.common import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbdpy", description="RBD-style block devices over NBD")
    p.add_argument("--cluster", help="cluster file or data directory (default: "
                   "$RBDPY_CLUSTER, then ./rbdpy-data)")
    p.add_argument("--log-level", default="warning")
    sub = p.add_subparsers(dest="cmd", required=True)
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
    except UserError as e:
        print(f"rbdpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (rbdpy ls | head -1): not our error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 141  # 128 + SIGPIPE, as a shell tool killed by it would
