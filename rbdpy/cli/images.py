"""Image verbs, like ``rbd``: create, import/export, cp/mv, ls/info, lock, resize, rm, du, bench."""


from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rbdpy.cli.common import (
    OBJECT_SIZES,
    UserError,
    _done_meter,
    _image_errors,
    _order,
    _progress_meter,
    _rados,
    human,
    parse_bytes,
    parse_object_size,
    parse_size,
)
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd.image import ImageError, whole_sectors

if TYPE_CHECKING:
    from rbdpy.cli.interrupts import Interrupts


@_image_errors
def cmd_create(args: argparse.Namespace) -> int:
    order = _order(args.object_size)
    with _rados(args) as r:
        rbdapi.create_image(r, args.name, args.size, order=order)
    return 0


@_image_errors
def cmd_import(args: argparse.Namespace) -> int:
    """``rbd import``: a raw file, block device or ``-`` (stdin) into a new image, sparse
    (zero blocks are not written); the image is durable when this returns 0. A failed or
    interrupted import removes the partial image, whenever the interrupt comes (see
    ``rbdpy.cli.interrupts``); one that comes once the image is complete is ignored."""
    import os
    import stat

    what = f"import of {args.path}"
    with _creating(what) as job:
        intr = job.intr
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
            if stat.S_ISDIR(os.fstat(fd).st_mode):  # before an image exists: nothing to undo
                raise UserError(f"cannot import {args.path}: it is a directory")
            size = transfer.source_size(fd)
            progress = _progress_meter("Importing image", not args.no_progress)
            with _rados(args) as r:
                intr.defer()  # from the create on, the image must go if we do not finish
                rbdapi.create_image(r, name, whole_sectors(size or 0), order=order)
                job.created = True
                _fill_new_image(r, name, what, lambda img: transfer.import_into(
                    img, fd, size, intr.checking(progress)), intr)
        finally:
            if closefd:
                os.close(fd)
    _done_meter("Importing image", progress)
    return 0


class _Creating:
    """What ``_creating`` knows: the interrupts, and whether the new image exists yet."""

    def __init__(self, intr: Interrupts) -> None:
        self.intr = intr
        self.created = False


@contextmanager
def _creating(what: str) -> Iterator[_Creating]:
    """Run a command that creates an image and must remove it if it does not finish
    (import, cp): interrupts at any moment end with one line (``rbdpy.cli.interrupts``).
    The body sets ``created`` once the image exists; from then on ``_fill_new_image`` says
    what became of it, before that this says nothing was created. A signal once the
    command is over changes nothing."""
    from rbdpy.cli.interrupts import Interrupts

    job = None
    try:
        job = _Creating(Interrupts.install())
        yield job
    except KeyboardInterrupt:
        if job is None or not job.created:
            print(f"{_line_start()}rbdpy: {what} interrupted; no image was created",
                  file=sys.stderr)
        raise
    finally:
        if job is not None:
            job.intr.finish()


DROP_TIMEOUT = 30.0


def _fill_new_image(r, name: str, what: str, fill, intr=None) -> None:
    """Open the image ``name`` just created and ``fill(img)`` it, then close it; if that
    fails (one line) or is interrupted (Ctrl-C), remove the partial image.

    With ``intr`` (an ``Interrupts`` deferring since before the image was created), an
    interrupt at any moment until ``fill`` returns removes the image: it raises inside
    ``fill`` between client calls, and is acted on at the next safe point otherwise; one
    after that is ignored (the image is complete). The removal runs with interrupts
    deferred either way, so a second Ctrl-C cannot cut it short."""
    from contextlib import nullcontext

    from rbdpy.client.objecter import OSDError
    from rbdpy.rbd.image import ImageError

    img = None
    try:
        if intr is not None:
            intr.check()  # came while the image was being created
        img = rbdapi.open_image(r, name)
        with intr.outside_client() if intr is not None else nullcontext():
            fill(img)
        if intr is not None:
            intr.check()  # came during fill's last client call (its flush)
        img.close()
    except (OSError, OSDError, ImageError) as e:
        raise UserError(f"{what} failed: {e}; {_drop_partial(r, img, name, intr)}") from None
    except KeyboardInterrupt:
        print(f"{_line_start()}rbdpy: {what} interrupted; {_drop_partial(r, img, name, intr)}",
              file=sys.stderr)
        raise


def _line_start() -> str:
    """What starts a message line on stderr: on a terminal, erase the progress line."""
    return "\r\x1b[K" if sys.stderr.isatty() else ""


def _drop_partial(r, img, name: str, intr=None) -> str:
    """Remove what a failed import (or copy) left, with interrupts deferred (a second Ctrl-C
    must not cut the removal short); says what happened, for the error line."""
    import trio

    from rbdpy.cli.interrupts import deferred
    from rbdpy.rbd import image as rbdimage

    async def remove() -> None:
        with trio.fail_after(DROP_TIMEOUT):  # the cluster may be what failed
            await rbdimage.remove_image(r.objecter, r.pool, name,
                                        lease=r.options.lock_lease)
    with deferred(intr):
        try:
            if img is not None:
                try:
                    img.close()
                except Exception:  # our lock: remove_image takes it back or says why
                    pass
            r.run(remove)
            return f"removed the partial image {name}"
        except Exception as e:  # reported, the original error matters more
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

    what = f"copy to {args.dest}"
    with _creating(what) as job:
        intr = job.intr
        progress = _progress_meter("Image copy", not args.no_progress)
        with _rados(args) as r:
            src = rbdapi.open_image(r, args.name, read_only=True)  # works next to a server
            intr.defer()  # from the create on, the copy must go if we do not finish
            # whole sectors: an image made before sizes had to be is copied with zeros after it
            rbdapi.create_image(r, args.dest, whole_sectors(src.size), order=src.info.order)
            job.created = True
            _fill_new_image(r, args.dest, what, lambda dst: transfer.copy_image(
                src, dst, intr.checking(progress)), intr)
    _done_meter("Image copy", progress)
    return 0


@_image_errors
def cmd_export(args: argparse.Namespace) -> int:
    """``rbd export``: an image to a new raw file (sparse), an existing block or character
    device (``/dev/null`` included) or ``-`` (stdout): every byte, in order. An existing
    regular file is not overwritten; a failed or interrupted export deletes the file it
    created."""
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
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UserError(f"{args.path} is a directory (export to a file name)")
        if st is not None and stat.S_ISREG(st.st_mode):
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
                verb = "open" if st else "create"
                raise UserError(f"cannot {verb} {args.path}: {e.strerror}") from None
            created = st is None
        ok = False
        try:
            transfer.export_from(img, fd, progress)
            ok = True
        except BrokenPipeError:
            raise  # the reader went away (export vm - | head): main exits quietly
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
    """``rbd ls [-l] [--format json]``: names, or with ``-l`` a table of size, object size
    and lock holder (an image removed meanwhile is left out, as ``rbd ls -l`` does)."""
    import json

    with _rados(args) as r:
        names = sorted(rbdapi.list_images(r))
        if not args.long:
            print(json.dumps(names) if args.format == "json" else "\n".join(names),
                  end="\n" if names or args.format == "json" else "")
            return 0
        rows = []
        for name in names:
            try:
                info = rbdapi.open_image(r, name, read_only=True).info
                holder = rbdapi.lock_holder(r, name)
            except ImageError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            rows.append((info, holder))
    if args.format == "json":
        out = []
        for info, h in rows:
            row = {"image": info.name, "id": info.id, "size": info.size,
                   "object_size": info.object_size, "order": info.order, "format": 2}
            if h is not None:
                row |= {"lock_type": "exclusive", "locker": h.owner}
            out.append(row)
        print(json.dumps(out))
        return 0
    table = [("NAME", "SIZE", "OBJECT SIZE", "FMT", "LOCK")]
    table += [(info.name, human(info.size), human(info.object_size), "2",
               f"excl {h.describe()}" if h else "") for info, h in rows]
    if rows:
        _print_table(table, right=(1, 2, 3))
    return 0


def _print_table(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> None:
    """Columns as wide as their widest cell, two spaces apart (``rbd``'s TextTable); the
    columns in ``right`` are right-aligned, the last one is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


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


def _lease(h, now: float) -> str:
    """What a holder's lease says: left, or (run out without a renewal) what that means."""
    if not h.expires:
        return ""
    left = h.expires - now
    if left >= 0:
        return f", lease ends in {left:.0f} s"
    return (f", lease expired {-left:.0f} s ago: the holder is presumed dead, the next "
            "writer to open the image breaks the lock and takes over")


@_image_errors
def cmd_lock(args: argparse.Namespace) -> int:
    """``rbd lock ls`` (with ``--format json``: a list of lockers) and ``lock break``."""
    import json
    import time

    with _rados(args) as r:
        verb = rbdapi.break_lock if args.action == "break" else rbdapi.lock_holder
        h = verb(r, args.name)
    if args.action == "ls" and args.format == "json":
        now = time.time()
        print(json.dumps([] if h is None else [{
            "id": h.cookie, "locker": h.owner, "address": h.host, "pid": h.pid,
            "lease_expires": h.expires or None,
            "lease_expired": bool(h.expires) and h.expires < now}]))
        return 0
    if h is None:
        print(f"image {args.name} is not locked")
        return 0 if args.action == "ls" else 1
    if args.action == "break":
        print(f"broke the lock of {h.describe()}: fenced, the OSDs refuse its requests")
        return 0
    print(f"locked by {h.describe()}{_lease(h, time.time())} (cookie {h.cookie})")
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
    """``rbd du``: provisioned and used bytes per image, a <TOTAL> row for more than one,
    or ``--format json`` shaped like rbd's. Everything is gathered before anything is
    printed, so an error (no such image) is the only output."""
    import json

    rows = []
    with _rados(args) as r:
        names = [args.name] if args.name else sorted(rbdapi.list_images(r))
        for name in names:
            try:
                img = rbdapi.open_image(r, name, read_only=True)
            except ImageError as e:
                if e.errno == errno.ENOENT and not args.name:
                    continue  # removed since the listing, as rbd du skips it
                raise
            rows.append((name, img.info.id, img.size, img.du()))
    total_prov, total_used = sum(row[2] for row in rows), sum(row[3] for row in rows)
    if args.format == "json":
        out: dict = {"images": [{"name": n, "id": i, "provisioned_size": p, "used_size": u}
                                for n, i, p, u in rows]}
        if not args.name:
            out |= {"total_provisioned_size": total_prov, "total_used_size": total_used}
        print(json.dumps(out))
        return 0
    fmt = str if args.bytes else human
    table = [("NAME", "PROVISIONED", "USED")]
    table += [(n, fmt(p), fmt(u)) for n, _i, p, u in rows]
    if len(rows) > 1:
        table.append(("<TOTAL>", fmt(total_prov), fmt(total_used)))
    if rows:
        _print_table(table, right=(1, 2))
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
            return parse_bytes(value)
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The image verbs."""
    def image_cmd(name: str, fn, helptext: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext)
        sp.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up if the cluster does not answer within this long "
                        "(default 10)")
        sp.set_defaults(fn=fn)
        return sp

    def image(sp: argparse.ArgumentParser, what: str = "the image") -> None:
        sp.add_argument("name", help=f"{what}'s name")

    def fmt(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--format", choices=["plain", "json"], default="plain",
                        help=f"plain text, or json ({what})")

    def no_progress(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-progress", action="store_true",
                        help="no progress meter on stderr (there is none off a terminal)")

    size_help = ("new size: a bare number is MiB (as in rbd), or give a unit: 4096B, 512K, "
                 "10G, 1T (powers of 1024); a multiple of 512 bytes, at most 1 PiB")
    object_size_help = (f"object size, bytes unless a unit is given: {OBJECT_SIZES}; "
                        "default 4M")

    sp = image_cmd("create", cmd_create, "create a thin image")
    image(sp, "the new image")
    sp.add_argument("--size", type=parse_size, required=True, help=size_help)
    sp.add_argument("--object-size", type=parse_object_size, default=None, metavar="SIZE",
                    help=object_size_help)
    sp = image_cmd("ls", cmd_ls, "list images (like rbd ls)")
    sp.add_argument("-l", "--long", action="store_true",
                    help="a table: size, object size and lock holder of each image")
    fmt(sp, "a list of names; with -l, objects like rbd ls -l --format json")
    sp = image_cmd("import", cmd_import, "copy a raw file, block device or - (stdin) into a "
                   "new image, sparse (like rbd import)")
    sp.add_argument("path", help="a raw file, a block device, or - for stdin")
    sp.add_argument("name", nargs="?", help="image name (default: the file's name)")
    sp.add_argument("--object-size", type=parse_object_size, default=None, metavar="SIZE",
                    help=object_size_help)
    no_progress(sp)
    sp = image_cmd("export", cmd_export, "copy an image to a new raw file (sparse), a block "
                   "or character device, or - (stdout) (like rbd export)")
    image(sp)
    sp.add_argument("path", help="a new file, a device (written in place), or - for stdout")
    no_progress(sp)
    sp = image_cmd("cp", cmd_cp, "copy an image to a new one, sparse (like rbd cp)")
    image(sp, "the source image")
    sp.add_argument("dest", help="the new image's name")
    no_progress(sp)
    sp = image_cmd("mv", cmd_mv, "rename an image (like rbd mv)")
    image(sp)
    sp.add_argument("new_name", help="its new name")
    sp = image_cmd("info", cmd_info, "show an image")
    image(sp)
    fmt(sp, "one object")
    sp = image_cmd("resize", cmd_resize, "grow or shrink an image")
    image(sp)
    sp.add_argument("--size", type=parse_size, required=True, help=size_help)
    sp.add_argument("--allow-shrink", action="store_true",
                    help="allow a smaller size (the data past it is deleted)")
    sp = image_cmd("lock", cmd_lock, "show (ls) or break the image's exclusive lock "
                   "(like rbd lock ls / rm)")
    sp.add_argument("action", choices=["ls", "break"],
                    help="ls: who holds it; break: fence the holder and remove its lock")
    image(sp)
    fmt(sp, "for ls: a list of lockers, like rbd lock ls --format json")
    sp = image_cmd("rm", cmd_rm, "remove an image and its data")
    image(sp)
    sp = image_cmd("du", cmd_du, "provisioned and used space (like rbd du)")
    sp.add_argument("name", nargs="?", help="one image (default: all, and their total)")
    sp.add_argument("--bytes", action="store_true", help="exact byte counts")
    fmt(sp, 'like rbd du --format json: {"images": [...], "total_...": ...}')
    # values are checked by cmd_bench, not argparse, so every bad one is a one-line error
    sp = image_cmd("bench", cmd_bench, "benchmark an image through the client library "
                   "(like rbd bench)")
    image(sp)
    sp.add_argument("--io-type", help="read, write or readwrite (required)")
    sp.add_argument("--io-size", default="4K", help="bytes per op (default 4K)")
    sp.add_argument("--io-threads", default="16", help="ops in flight (default 16)")
    sp.add_argument("--io-total", default="1G", help="bytes to move in all (default 1G)")
    sp.add_argument("--io-pattern", default="seq", help="seq or rand (default seq)")
    sp.add_argument("--rw-mix-read", default="50",
                    help="percent of reads, for readwrite (default 50)")
    sp.add_argument("--format", default="plain", help="plain or json")
    sp.add_argument("--no-progress", action="store_true", help="no progress on stderr")
