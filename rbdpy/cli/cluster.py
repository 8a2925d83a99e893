"""The local cluster (``cluster up|down|status``) and the OSD daemon (``osd``)."""


from __future__ import annotations

import argparse

from rbdpy import log as rlog
from rbdpy.cli.common import (
    UserError,
    _cfg,
    _hostport,
)


def cmd_cluster(args: argparse.Namespace) -> int:
    from rbdpy import config, localcluster

    path = config.locate(args.cluster)
    if args.action == "up":
        data = path.parent
        cfg = localcluster.init(data, osds=args.osds)
        try:
            localcluster.up(cfg)
        except localcluster.ClusterError as e:
            raise UserError(str(e)) from None
        print(f"cluster up: {len(cfg.osdmap.osds)} OSD(s), cluster file {cfg.path}")
        return 0
    cfg = _cfg(args)
    if args.action == "down":
        stopped = localcluster.down(cfg)
        print(f"cluster down: stopped {len(stopped)} OSD(s)")
        return 0
    rows = localcluster.status(cfg)
    for osd_id, addr, pid, answering in rows:
        state = "up" if pid and answering else ("starting" if pid else "down")
        print(f"osd.{osd_id}  {addr:<22} {state:<8} pid {pid or '-'}")
    return 0 if all(p and a for _i, _a, p, a in rows) else 3


def cmd_osd(args: argparse.Namespace) -> int:
    """The OSD's settings are decided here, once: its command line over the RBDPY_OSD_*
    variables (which the tests set for the OSDs they start) over the defaults."""
    import os

    import trio

    from rbdpy.config import ConfigError
    from rbdpy.osd.daemon import run_osd
    from rbdpy.osd.options import OSDOptions

    rlog.setup(args.log_level)
    try:
        options = OSDOptions.from_env(os.environ, aio=False if args.no_aio else None,
                                      commit_delay=args.commit_delay)
    except (ConfigError, ValueError) as e:
        raise UserError(str(e)) from None
    host, port = args.listen
    trio.run(run_osd, args.id, args.data, host, port, options)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``osd`` and ``cluster`` verbs."""
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
