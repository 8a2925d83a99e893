"""What every verb shares: user errors as one line, sizes, the cluster file and the
connection, progress meters."""


from __future__ import annotations

import argparse
import sys


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
    order = (object_size.bit_length() - 1) if object_size else 22
    if object_size and (1 << order) != object_size:
        raise UserError("--object-size must be a power of two (4K..32M)")
    return order


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
