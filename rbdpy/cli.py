"""The ``rbdpy`` command, shaped like ``rbd``: daemons, cluster control, image verbs.

User errors print one line and exit non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import sys

from rbdpy import log as rlog
from rbdpy.rbd import api as rbdapi


class UserError(Exception):
    """Shown to the user as one line, exit status 1."""


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(s: str) -> int:
    """``10G``, ``4M``, ``512K``, ``4096``, ``1.5G`` (binary units, like rbd)."""
    t = s.strip().upper().removesuffix("IB").removesuffix("B") if s else ""
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    num = t[: len(t) - len(unit)] if unit else t
    try:
        val = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (examples: 10G, 4M, 4096)") from None
    n = int(val * _UNITS[unit])
    if n < 0 or val != val:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return n


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cfg(args: argparse.Namespace):  # noqa: ANN202
    from rbdpy import config

    try:
        return config.load(config.locate(args.cluster))
    except config.ConfigError as e:
        raise UserError(str(e)) from None


def _client_options():  # noqa: ANN202
    from rbdpy.config import ClientOptions, ConfigError

    try:
        return ClientOptions.from_env()
    except ConfigError as e:
        raise UserError(str(e)) from None


def _rados(args: argparse.Namespace):  # noqa: ANN202
    from rbdpy.client.rados import ClusterUnavailable, Rados

    r = Rados(_cfg(args), options=_client_options())
    try:
        r.wait_ready(timeout=args.timeout)
    except ClusterUnavailable as e:
        r.close()
        raise UserError(f"{e} (is the cluster up? 'rbdpy cluster status')") from None
    return r


def _image_errors(fn):  # noqa: ANN001, ANN202
    """Image and OSD errors are user errors: one line, no traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from rbdpy.client.objecter import OSDError
        from rbdpy.rbd.image import ImageError

        try:
            return fn(args)
        except ImageError as e:
            raise UserError(str(e)) from None
        except OSDError as e:
            raise UserError(f"cluster error: {e}") from None
    return wrapper


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


def _order(object_size: int | None) -> int:
    order = (object_size.bit_length() - 1) if object_size else 22
    if object_size and (1 << order) != object_size:
        raise UserError("--object-size must be a power of two (4K..32M)")
    return order


@_image_errors
def cmd_create(args: argparse.Namespace) -> int:
    order = _order(args.object_size)
    with _rados(args) as r:
        rbdapi.create_image(r, args.name, args.size, order=order)
    return 0


def _progress_meter(verb: str, show: bool):  # noqa: ANN202
    """``progress(done, total)`` rewriting one line on a terminal (``rbd``'s "Importing
    image: 42% complete..."), or None (not a terminal, or --no-progress: quiet)."""
    if not show or not sys.stderr.isatty():
        return None
    last = [""]

    def progress(done: int, total: int | None) -> None:
        text = (f"{verb}: {100 * done // total}% complete..." if total
                else f"{verb}: {human(done)}...")
        if text != last[0]:
            last[0] = text
            print("\r" + text, end="", file=sys.stderr, flush=True)
    return progress


def _done_meter(verb: str, progress) -> None:  # noqa: ANN001
    if progress is not None:
        print(f"\r\x1b[K{verb}: 100% complete...done.", file=sys.stderr, flush=True)


@_image_errors
def cmd_import(args: argparse.Namespace) -> int:
    """``rbd import``: a raw file, block device or ``-`` (stdin) into a new image, sparse
    (zero blocks are not written); the image is durable when this returns 0. A failed or
    interrupted import removes the partial image."""
    import os

    from rbdpy.rbd import transfer

    order = _order(args.object_size)
    name = args.name or os.path.basename(args.path.rstrip("/"))
    if args.path == "-":
        fd, closefd = sys.stdin.fileno(), False
        if not args.name:
            raise UserError("importing from stdin needs an image name")
    else:
        try:
            fd, closefd = os.open(args.path, os.O_RDONLY | os.O_CLOEXEC), True
        except OSError as e:
            raise UserError(f"cannot open {args.path}: {e.strerror}") from None
    try:
        size = transfer.source_size(fd)
        progress = _progress_meter("Importing image", not args.no_progress)
        with _rados(args) as r:
            rbdapi.create_image(r, name, size or 0, order=order)
            _fill_new_image(r, name, f"import of {args.path}",
                            lambda img: transfer.import_into(img, fd, size, progress))
    finally:
        if closefd:
            os.close(fd)
    _done_meter("Importing image", progress)
    return 0


DROP_TIMEOUT = 30.0


def _fill_new_image(r, name: str, what: str, fill) -> None:  # noqa: ANN001
    """Open the image ``name`` just created and ``fill(img)`` it, then close it; if that
    fails (one line) or is interrupted (Ctrl-C), remove the partial image."""
    from rbdpy.client.objecter import OSDError
    from rbdpy.rbd.image import ImageError

    img = None
    try:
        img = rbdapi.open_image(r, name)
        fill(img)
        img.close()
    except (OSError, OSDError, ImageError) as e:
        raise UserError(f"{what} failed: {e}; {_drop_partial(r, img, name)}") from None
    except KeyboardInterrupt:
        print(f"\nrbdpy: {what} interrupted; {_drop_partial(r, img, name)}",
              file=sys.stderr)
        raise


def _drop_partial(r, img, name: str) -> str:  # noqa: ANN001
    """Remove what a failed import (or copy) left; says what happened, for the error line."""
    import trio

    from rbdpy.rbd import image as rbdimage

    async def remove() -> None:
        with trio.fail_after(DROP_TIMEOUT):  # the cluster may be what failed
            await rbdimage.remove_image(r.objecter, r.pool, name,
                                        lease=r.options.lock_lease)
    try:
        if img is not None:
            img.close()
        r.run(remove)
        return f"removed the partial image {name}"
    except Exception as e:  # noqa: BLE001 - reported, the original error matters more
        return f"could not remove the partial image {name} ({e}): 'rbdpy rm {name}'"


@_image_errors
def cmd_mv(args: argparse.Namespace) -> int:
    """``rbd mv``: rename (refused while a writer has the image open)."""
    with _rados(args) as r:
        rbdapi.rename_image(r, args.name, args.new_name)
    return 0


@_image_errors
def cmd_cp(args: argparse.Namespace) -> int:
    """``rbd cp``: a new image with the same size, object size and data, sparse (holes
    and zero blocks are not copied); durable when this returns 0. A failed or interrupted
    copy removes the partial image."""
    from rbdpy.rbd import transfer

    progress = _progress_meter("Image copy", not args.no_progress)
    with _rados(args) as r:
        src = rbdapi.open_image(r, args.name, read_only=True)  # read-only: works next to a server
        rbdapi.create_image(r, args.dest, src.size, order=src.info.order)
        _fill_new_image(r, args.dest, f"copy to {args.dest}",
                        lambda dst: transfer.copy_image(src, dst, progress))
    _done_meter("Image copy", progress)
    return 0


@_image_errors
def cmd_export(args: argparse.Namespace) -> int:
    """``rbd export``: an image to a new raw file (sparse), a block device, or ``-``
    (stdout, every byte). An existing regular file is not overwritten; a failed or
    interrupted export deletes the file it created."""
    import os
    import stat

    from rbdpy.rbd import transfer

    st = None
    if args.path == "-":
        if sys.stdout.isatty():
            raise UserError("refusing to write image data to a terminal (redirect stdout)")
    else:
        try:
            st = os.stat(args.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"cannot use {args.path}: {e.strerror}") from None
        if st is not None and not stat.S_ISBLK(st.st_mode):
            raise UserError(f"{args.path} exists (remove it first, or export to a new name)")
    progress = _progress_meter("Exporting image", not args.no_progress)
    with _rados(args) as r:
        img = rbdapi.open_image(r, args.name, read_only=True)  # first: a wrong name makes no file
        if args.path == "-":
            fd, created = sys.stdout.fileno(), False
        else:
            flags = os.O_WRONLY | os.O_CLOEXEC | (0 if st else os.O_CREAT | os.O_EXCL)
            try:
                fd = os.open(args.path, flags, 0o644)
            except OSError as e:
                raise UserError(f"cannot create {args.path}: {e.strerror}") from None
            created = st is None
        ok = False
        try:
            transfer.export_from(img, fd, progress)
            ok = True
        except OSError as e:
            raise UserError(f"export to {args.path} failed: {e}") from None
        finally:
            if args.path != "-":
                os.close(fd)
            if not ok and created:
                os.unlink(args.path)
    _done_meter("Exporting image", progress)
    return 0


@_image_errors
def cmd_ls(args: argparse.Namespace) -> int:
    with _rados(args) as r:
        for name in sorted(rbdapi.list_images(r)):
            print(name)
    return 0


@_image_errors
def cmd_info(args: argparse.Namespace) -> int:
    import json

    with _rados(args) as r:
        info = rbdapi.open_image(r, args.name, read_only=True).info
    if args.format == "json":
        print(json.dumps({"name": info.name, "id": info.id, "size": info.size,
                          "order": info.order, "object_size": info.object_size,
                          "objects": info.num_objects, "stripe_unit": info.stripe_unit,
                          "stripe_count": info.stripe_count, "features": info.features}))
        return 0
    print(f"rbd image '{info.name}':")
    print(f"\tsize {human(info.size)} in {info.num_objects} objects")
    print(f"\torder {info.order} ({human(info.object_size)} objects)")
    print(f"\tid: {info.id}")
    print(f"\tblock_name_prefix: rbd_data.{info.id}")
    print(f"\tstripe unit: {human(info.stripe_unit)}, stripe count: {info.stripe_count}")
    print(f"\tfeatures: {', '.join(info.features)}")
    return 0


@_image_errors
def cmd_lock(args: argparse.Namespace) -> int:
    import time

    with _rados(args) as r:
        verb = rbdapi.break_lock if args.action == "break" else rbdapi.lock_holder
        h = verb(r, args.name)
    if h is None:
        print(f"image {args.name} is not locked")
        return 0 if args.action == "ls" else 1
    if args.action == "break":
        print(f"broke the lock of {h.describe()}: fenced, the OSDs refuse its requests")
        return 0
    left = f", lease ends in {h.expires - time.time():.0f} s" if h.expires else ""
    print(f"locked by {h.describe()}{left} (cookie {h.cookie})")
    return 0


@_image_errors
def cmd_resize(args: argparse.Namespace) -> int:
    with _rados(args) as r:
        img = rbdapi.open_image(r, args.name)
        if args.size < img.size and not args.allow_shrink:
            raise UserError("shrinking loses data: add --allow-shrink")
        img.resize(args.size)
    return 0


@_image_errors
def cmd_rm(args: argparse.Namespace) -> int:
    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rRemoving image: {100 * done // max(total, 1)}% complete...",
                  end="", file=sys.stderr, flush=True)

    with _rados(args) as r:
        rbdapi.remove_image(r, args.name, progress)
    if sys.stderr.isatty():
        print("\rRemoving image: 100% complete...done.", file=sys.stderr)
    return 0


@_image_errors
def cmd_du(args: argparse.Namespace) -> int:
    with _rados(args) as r:
        names = [args.name] if args.name else sorted(rbdapi.list_images(r))
        print(f"{'NAME':<24} {'PROVISIONED':>12} {'USED':>12}")
        for name in names:
            img = rbdapi.open_image(r, name, read_only=True)
            used = img.du()
            if args.bytes:
                print(f"{name:<24} {img.size:>12} {used:>12}")
            else:
                print(f"{name:<24} {human(img.size):>12} {human(used):>12}")
    return 0


@_image_errors
def cmd_bench(args: argparse.Namespace) -> int:
    """``rbd bench``: I/O straight through the client library (no NBD), then the figures.

    Progress goes to stderr (a bar rewritten in place on a terminal, one line per interval
    otherwise); the summary, or the JSON object, is the only thing on stdout.
    """
    import json

    from rbdpy.rbd import bench

    def size(opt: str, value: str) -> int:
        try:
            return parse_size(value)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{opt}: {e}") from None

    def integer(opt: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{opt}: expected a whole number, got {value!r}") from None

    if args.io_type is None:
        raise UserError("--io-type is required (read, write or readwrite)")
    if args.format not in ("plain", "json"):
        raise UserError(f"bad --format {args.format!r} (plain or json)")
    try:
        spec = bench.BenchSpec(
            io_type=bench.parse_io_type(args.io_type), io_size=size("--io-size", args.io_size),
            io_threads=integer("--io-threads", args.io_threads),
            io_total=size("--io-total", args.io_total),
            io_pattern=bench.parse_io_pattern(args.io_pattern),
            rw_mix_read=integer("--rw-mix-read", args.rw_mix_read))
        spec.check(bench.MAX_IO_SIZE)  # all but the image's own size, before connecting
    except bench.BenchError as e:
        raise UserError(str(e)) from None

    show = not args.no_progress
    tty = show and sys.stderr.isatty()

    def report(p: bench.Progress) -> None:
        if tty:
            print("\r" + bench.progress_bar(p), end="", file=sys.stderr, flush=True)
        else:
            print(bench.progress_line(p), file=sys.stderr, flush=True)

    with _rados(args) as r:
        img = rbdapi.open_image(r, args.name, read_only=spec.io_type == "read")
        try:
            spec.check(img.size)
        except bench.BenchError as e:
            raise UserError(str(e)) from None
        if show:
            print(spec.describe(), file=sys.stderr)
            if not tty:
                print(bench.PROGRESS_HEADER, file=sys.stderr)
        result = r.run(bench.run_bench, img.image, spec, report if show else None)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)  # erase the bar
    if args.format == "json":
        print(json.dumps({"image": args.name, **result.to_json()}))
    else:
        print(bench.summary(result))
    return 0


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


def _stop_up(proc, cfg) -> str:  # noqa: ANN001
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


def _wait_serving(proc, host: str, port: int, timeout: float = 60.0) -> None:  # noqa: ANN001
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

    def image_cmd(name: str, fn, helptext: str) -> argparse.ArgumentParser:  # noqa: ANN001
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


if __name__ == "__main__":
    sys.exit(main())
