"""Image verbs, like ``rbd``: create, import/export, cp/mv, ls/info, lock, resize, rm, du, bench."""


from __future__ import annotations

import argparse
import sys

from rbdpy.cli.common import (
    UserError,
    _done_meter,
    _image_errors,
    _order,
    _progress_meter,
    _rados,
    human,
    parse_size,
)
from rbdpy.rbd import api as rbdapi


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

    from rbdpy.cli.interrupts import Interrupts

    intr = Interrupts.install()  # first: an interrupt from here on ends with one line
    what = f"import of {args.path}"
    created = False
    try:
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
                rbdapi.create_image(r, name, size or 0, order=order)
                created = True
                _fill_new_image(r, name, what, lambda img: transfer.import_into(
                    img, fd, size, intr.checking(progress)), intr)
        finally:
            if closefd:
                os.close(fd)
    except KeyboardInterrupt:
        if not created:  # else _fill_new_image said what became of the image
            print(f"{_line_start()}rbdpy: {what} interrupted; no image was created",
                  file=sys.stderr)
        raise
    finally:
        intr.finish()  # said how it ended: a later signal changes nothing
    _done_meter("Importing image", progress)
    return 0


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The image verbs."""
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
