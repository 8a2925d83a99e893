"""What every verb shares: user errors as one line, sizes, the cluster file and the
connection, progress meters."""


from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction


class UserError(Exception):
    """Shown to the user as one line, exit status 1."""


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


_SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGTPE])(?:I?B?)|(B))?\s*", re.I)
OBJECT_SIZES = "a power of two from 4K to 32M (4096..33554432 bytes)"


def parse_bytes(s: str, default_unit: str = "") -> int:
    """A byte count as ``rbd`` reads one: ``4096``, ``4096B``, ``512K``, ``4M``, ``10G``
    (binary units up to E; ``Ki``/``KiB``/``KB`` forms too, any case); a bare number is in
    ``default_unit`` (``""``: bytes). A fraction is fine if it comes to whole bytes
    (``1.5G``), refused otherwise (``1.3K`` is 1331.2 bytes): no silent rounding."""
    m = _SIZE_RE.fullmatch(s or "")
    if m is None:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (examples: 10G, 512M, 4096B)")
    num, unit, byte = m.groups()
    shift = 0 if byte else _SHIFTS[(unit or default_unit).upper()]
    val = Fraction(num) * (1 << shift)
    if val.denominator != 1:
        raise argparse.ArgumentTypeError(f"bad size {s!r}: not a whole number of bytes "
                                          f"({float(val):.1f})")
    return int(val)


def parse_size(s: str) -> int:
    """An image size (``--size``), by ``rbd``'s rules: a bare number is MiB (``--size 100``
    is 100 MiB), ``B`` marks bytes; whole 512-byte sectors, at most 1 PiB (the image layer
    holds the same rule, and the lower limit small objects bring)."""
    from rbdpy.rbd.image import MAX_SIZE, SECTOR

    n = parse_bytes(s, default_unit="M")
    if n % SECTOR:
        raise argparse.ArgumentTypeError(f"bad size {s!r}: {n} bytes is not a multiple of "
                                          f"{SECTOR} (image sizes are whole sectors)")
    if n > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"bad size {s!r}: over the limit of 1 PiB "
                                          "(and of 2^28 objects: 1 TiB with 4K objects)")
    return n


def parse_object_size(s: str) -> int:
    """``--object-size``: bytes when bare (as in ``rbd``), a power of two, 4 KiB..32 MiB."""
    n = parse_bytes(s)
    if n < 4096 or n > 32 << 20 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"bad object size {s!r}: want {OBJECT_SIZES}")
    return n


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cfg(args: argparse.Namespace):
    from rbdpy import config

    try:
        return config.load(config.locate(args.cluster))
    except config.ConfigError as e:
        raise UserError(str(e)) from None


def _client_options():
    from rbdpy.config import ClientOptions, ConfigError

    try:
        return ClientOptions.from_env()
    except ConfigError as e:
        raise UserError(str(e)) from None


def _rados(args: argparse.Namespace):
    from rbdpy.client.rados import ClusterUnavailable, Rados

    r = Rados(_cfg(args), options=_client_options())
    try:
        r.wait_ready(timeout=args.timeout)
    except ClusterUnavailable as e:
        r.close()
        raise UserError(f"{e} (is the cluster up? 'rbdpy cluster status')") from None
    return r


def _image_errors(fn):
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


def _order(object_size: int | None) -> int:
    """The order of a ``parse_object_size`` value (None: rbd's default, 4 MiB objects)."""
    return 22 if object_size is None else object_size.bit_length() - 1


def _progress_meter(verb: str, show: bool):
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


def _done_meter(verb: str, progress) -> None:
    if progress is not None:
        print(f"\r\x1b[K{verb}: 100% complete...done.", file=sys.stderr, flush=True)
