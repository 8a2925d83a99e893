"""The ``rbdpy`` command, shaped like ``rbd``: daemons, cluster control, image verbs.

User errors print one line and exit non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import sys

from rbdpy import log as rlog


class UserError(Exception):
    """Shown to the user as one line, exit status 1."""


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def cmd_osd(args: argparse.Namespace) -> int:
    import trio

    from rbdpy.osd.daemon import run_osd

    rlog.setup(args.log_level)
    host, port = args.listen
    trio.run(run_osd, args.id, args.data, host, port)
    return 0


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
    o.set_defaults(fn=cmd_osd)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"rbdpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
