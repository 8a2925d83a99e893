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
        # an existing cluster file of any name (--cluster ./mycluster.conf) is the one to start
        cfg = config.load(path) if path.exists() else localcluster.init(data, osds=args.osds)
        try:
            started = localcluster.up(cfg)
        except localcluster.ClusterError as e:
            raise UserError(str(e)) from None
        print(f"cluster up: {len(cfg.osdmap.osds)} OSD(s) ({len(started)} started), "
              f"cluster file {cfg.path}")
        return 0
    cfg = _cfg(args)
    if args.action == "down":
        _stop_servers_first(cfg, args.force)
        stopped = localcluster.down(cfg)
        print(f"cluster down: stopped {len(stopped)} OSD(s)")
        return 0
    rows = localcluster.status(cfg)
    for osd_id, addr, pid, answering in rows:
        state = "up" if pid and answering else ("starting" if pid else "down")
        print(f"osd.{osd_id}  {addr:<22} {state:<8} pid {pid or '-'}")
    return 0 if all(p and a for _i, _a, p, a in rows) else 3


def _stop_servers_first(cfg, force: bool) -> None:
    """NBD servers of this cluster (``serve ls``) would lose their OSDs under their
    clients' feet: ``down`` refuses while they run, and ``--force`` stops them first
    (each flushes on the way out), then the OSDs."""
    from rbdpy import servers
    from rbdpy.cli.serve import NBDKIT_STOP_TIMEOUT, stop_servers

    running = servers.live(cfg.dir)
    if not running:
        return
    if not force:
        raise UserError("NBD servers of this cluster are running: "
                        + ", ".join(s.describe() for s in running)
                        + "; stop them first ('rbdpy serve stop --all') or use "
                          "'rbdpy cluster down --force'")
    if not stop_servers(running, NBDKIT_STOP_TIMEOUT):
        raise UserError("a server did not stop: the OSDs keep running")


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


def cmd_mon(args: argparse.Namespace) -> int:
    """The monitor's settings are decided here, once, from its command line."""
    import trio

    from rbdpy.errors import RbdpyError
    from rbdpy.mon.daemon import run_mon
    from rbdpy.mon.events import MonError
    from rbdpy.mon.state import MonOptions
    from rbdpy.mon.store import MonStoreError

    rlog.setup(args.log_level)
    try:
        options = MonOptions(grace=args.grace, down_out_interval=(
            None if args.down_out_interval < 0 else args.down_out_interval))
    except MonError as e:
        raise UserError(str(e)) from None
    host, port = args.listen
    try:
        trio.run(run_mon, args.data, host, port, options, args.init_from)
    except MonStoreError as e:
        raise UserError(f"mon store: {e}") from None
    except RbdpyError as e:  # the address cannot be bound, --init-from's map seeds no store
        raise UserError(f"mon: {e}") from None
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``osd``, ``mon`` and ``cluster`` verbs."""
    m = sub.add_parser("mon", help="run the monitor daemon in the foreground")
    m.add_argument("--data", required=True, help="the monitor's store directory")
    m.add_argument("--listen", type=_hostport, default=("127.0.0.1", 6789), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:6789)")
    m.add_argument("--grace", type=float, default=20.0, metavar="SECONDS",
                   help="an OSD reported failed this long is marked down (default 20)")
    m.add_argument("--down-out-interval", type=float, default=600.0, metavar="SECONDS",
                   help="a down OSD is marked out after this long; negative: never "
                        "(default 600)")
    m.add_argument("--init-from", metavar="CLUSTER_TOML",
                   help="when --data holds no store yet, make one whose first epoch is this "
                        "static cluster file's map (its OSDs down until they boot)")
    m.set_defaults(fn=cmd_mon)

    o = sub.add_parser("osd", help="run an OSD daemon in the foreground")
    o.add_argument("--id", type=int, required=True, help="the OSD's id in the cluster map")
    o.add_argument("--data", required=True, help="the OSD's data directory")
    o.add_argument("--listen", type=_hostport, default=("127.0.0.1", 6800), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:6800)")
    o.add_argument("--no-aio", action="store_true", help="sync group commits in a worker "
                   "thread, not through Linux AIO (also: RBDPY_OSD_NO_AIO=1)")
    o.add_argument("--commit-delay", type=float, metavar="SECONDS",
                   help="fault injection: hold every group commit back this long "
                   "(also: RBDPY_OSD_COMMIT_DELAY; default 0)")
    o.set_defaults(fn=cmd_osd)

    c = sub.add_parser("cluster", help="local cluster control",
                       description="up: start the OSDs that are not running (a pid file "
                       "whose PID is now another process is stale and replaced); down: stop "
                       "them, refused while NBD servers of this cluster run unless --force "
                       "(which stops those first); status: show them.")
    c.add_argument("action", choices=["up", "down", "status"],
                   help="up: start the OSDs; down: stop them; status: show them")
    c.add_argument("--data", help="data directory (same as --cluster)")
    c.add_argument("--osds", type=int, default=1, help="OSDs to create on first 'up'")
    c.add_argument("--force", action="store_true",
                   help="down: stop this cluster's NBD servers first (each flushes), instead "
                        "of refusing while they run")
    c.set_defaults(fn=cmd_cluster)
