"""``rbdpy bench``: Ceph's ``rbd bench`` for an rbdpy image, without the CLI.

Why it exists: fio through nbdkit measures the whole NBD path (nbdkit, the embedded Python
plugin, the blocking facade); this measures the client library alone, the way ``rbd bench``
measures librbd, so the two can be compared to see where time goes.

How: ``io_threads`` trio tasks share one op counter and each keeps exactly one I/O in flight
on the async :class:`~rbdpy.rbd.image.Image` (the same object the nbdkit plugin drives), so
the queue depth is ``io_threads``. Offsets are ``io_size``-aligned: sequential ones walk the
image from offset 0 and wrap at its end, random ones are drawn uniformly. A bench that wrote
ends with ``flush`` inside the timed region, so the figures are for durable data. Write
payloads are one immutable random buffer shared by every op: nothing the bench hands the
client can change while a write is in flight (or waits for its commit to be resent), and no
op pays for filling a buffer. Non-zero random data also makes a written image easy to check.

The CLI (``rbdpy/cli/``) parses arguments, opens the image and prints; everything here is
plain data in, plain data out, plus the pure formatting helpers it prints with.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import trio

from rbdpy.client.objecter import OSDError
from rbdpy.rbd.image import Image, ImageError

IoType = Literal["read", "write", "readwrite"]
IoPattern = Literal["seq", "rand"]

_IO_TYPES: dict[str, IoType] = {"read": "read", "write": "write", "readwrite": "readwrite",
                                 "rw": "readwrite"}
_PATTERNS: dict[str, IoPattern] = {"seq": "seq", "sequential": "seq", "rand": "rand",
                                   "random": "rand"}
MAX_IO_SIZE = 32 << 20  # one op's buffer; larger ones only measure memory allocation
LAT_SAMPLES = 1 << 20  # latency percentiles are over the last this many ops (bounded memory)


class BenchError(ValueError):
    """A bench argument that cannot work (shown to the user as one line)."""


def parse_io_type(s: str) -> IoType:
    """``read``, ``write``, ``readwrite`` (or ``rw``, as ``rbd bench`` accepts)."""
    try:
        return _IO_TYPES[s.strip().lower()]
    except KeyError:
        raise BenchError(f"bad --io-type {s!r} (read, write or readwrite)") from None


def parse_io_pattern(s: str) -> IoPattern:
    """``seq`` or ``rand`` (``sequential`` and ``random`` also accepted)."""
    try:
        return _PATTERNS[s.strip().lower()]
    except KeyError:
        raise BenchError(f"bad --io-pattern {s!r} (seq or rand)") from None


@dataclass(frozen=True)
class BenchSpec:
    """What to run; the defaults are ``rbd bench``'s."""

    io_type: IoType
    io_size: int = 4096
    io_threads: int = 16
    io_total: int = 1 << 30
    io_pattern: IoPattern = "seq"
    rw_mix_read: int = 50  # percent of ops that are reads, for readwrite only
    seed: int | None = None  # random offsets and read/write choices; None = fresh each run

    @property
    def ops(self) -> int:
        """Ops to issue: every op moves exactly ``io_size`` bytes."""
        return self.io_total // self.io_size

    def check(self, image_size: int) -> None:
        """Raise BenchError for a spec that cannot run on an image of ``image_size`` bytes.

        Checked before any I/O so that a typo costs nothing and says exactly what is wrong.
        """
        if self.io_type not in ("read", "write", "readwrite"):
            raise BenchError(f"bad io type {self.io_type!r}")
        if self.io_pattern not in ("seq", "rand"):
            raise BenchError(f"bad io pattern {self.io_pattern!r}")
        if self.io_size <= 0:
            raise BenchError("--io-size must be at least 1 byte")
        if self.io_size > MAX_IO_SIZE:
            raise BenchError(f"--io-size must be at most {MAX_IO_SIZE >> 20}M")
        if self.io_threads < 1 or self.io_threads > 4096:
            raise BenchError("--io-threads must be between 1 and 4096")
        if self.io_total < self.io_size:
            raise BenchError("--io-total must be at least --io-size")
        if not 0 <= self.rw_mix_read <= 100:
            raise BenchError("--rw-mix-read must be a percentage (0..100)")
        if self.io_size > image_size:
            raise BenchError(f"--io-size {self.io_size} is larger than the image "
                             f"({image_size} bytes)")

    def describe(self) -> str:
        """The header ``rbd bench`` prints before it starts."""
        pattern = "sequential" if self.io_pattern == "seq" else "random"
        mix = f" read:write {self.rw_mix_read}:{100 - self.rw_mix_read}" \
            if self.io_type == "readwrite" else ""
        return (f"bench  type {self.io_type} io_size {self.io_size} io_threads "
                f"{self.io_threads} bytes {self.ops * self.io_size} pattern {pattern}{mix}")


@dataclass(frozen=True)
class Progress:
    """One periodic report: cumulative counts, and rates over the last interval."""

    sec: float  # since the start
    ops: int  # completed so far
    total_ops: int
    ops_per_sec: float  # over the last interval
    bytes_per_sec: float  # over the last interval


@dataclass
class BenchResult:
    """The figures of one run; ``elapsed`` includes the final flush of a writing bench."""

    spec: BenchSpec
    elapsed: float
    read_ops: int = 0
    write_ops: int = 0
    lat_us_avg: float = 0.0
    lat_us_p50: float = 0.0
    lat_us_p99: float = 0.0
    flush_s: float = 0.0

    @property
    def ops(self) -> int:
        return self.read_ops + self.write_ops

    @property
    def bytes(self) -> int:
        return self.ops * self.spec.io_size

    @property
    def ops_per_sec(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def bytes_per_sec(self) -> float:
        return self.bytes / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        """A flat object for ``--format json``; numbers stay numbers."""
        e = self.elapsed if self.elapsed > 0 else float("inf")
        spec = asdict(self.spec)
        spec.pop("seed")
        return {**spec, "elapsed": round(self.elapsed, 6), "ops": self.ops,
                "ops_per_sec": round(self.ops_per_sec, 3), "bytes": self.bytes,
                "bytes_per_sec": round(self.bytes_per_sec, 3),
                "read_ops": self.read_ops, "read_bytes": self.read_ops * self.spec.io_size,
                "read_ops_per_sec": round(self.read_ops / e, 3),
                "write_ops": self.write_ops, "write_bytes": self.write_ops * self.spec.io_size,
                "write_ops_per_sec": round(self.write_ops / e, 3),
                "lat_us_avg": round(self.lat_us_avg, 1), "lat_us_p50": round(self.lat_us_p50, 1),
                "lat_us_p99": round(self.lat_us_p99, 1), "flush_s": round(self.flush_s, 6)}


@dataclass
class _State:
    """Shared by the workers: the op counter and what has completed."""

    spec: BenchSpec
    next_op: int = 0
    done: int = 0
    read_ops: int = 0
    write_ops: int = 0
    lat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    failure: BaseException | None = None


async def run_bench(image: Image, spec: BenchSpec,
                    progress: Callable[[Progress], None] | None = None,
                    interval: float = 1.0) -> BenchResult:
    """Run ``spec`` against an open ``image`` (in the trio loop that owns its objecter).

    ``progress`` is called every ``interval`` seconds from that loop, so it must be quick
    (printing a line is). An OSD or image error stops every worker and is re-raised as
    itself rather than inside an exception group, so callers can report it plainly.
    """
    spec.check(image.size)
    rng = random.Random(spec.seed)
    slots = image.size // spec.io_size
    total = spec.ops
    seq = spec.io_pattern == "seq"
    mix = {"read": 100, "write": 0, "readwrite": spec.rw_mix_read}[spec.io_type]
    size = spec.io_size
    payload = memoryview(os.urandom(size)) if mix < 100 else memoryview(b"")
    st = _State(spec, lat=np.zeros(min(total, LAT_SAMPLES), dtype=np.float64))
    nlat = len(st.lat)

    async def worker(cancel: trio.CancelScope) -> None:
        buf = memoryview(bytearray(size)) if mix > 0 else memoryview(b"")
        clock, draw, pick = time.perf_counter, rng.randrange, rng.random
        try:
            while st.next_op < total:
                i = st.next_op
                st.next_op += 1
                off = (i % slots if seq else draw(slots)) * size
                read = mix == 100 or (mix > 0 and pick() * 100 < mix)
                t0 = clock()
                if read:
                    await image.read(off, buf)
                    st.read_ops += 1
                else:
                    await image.write(off, payload)
                    st.write_ops += 1
                st.lat[st.done % nlat] = clock() - t0
                st.done += 1
        except (OSDError, ImageError) as e:
            if st.failure is None:
                st.failure = e
            cancel.cancel()

    async def reporter(start: float) -> None:
        last_t, last_done = start, 0
        while True:
            await trio.sleep(interval)
            now, done = time.perf_counter(), st.done
            dt = max(now - last_t, 1e-9)
            rate = (done - last_done) / dt
            progress(Progress(now - start, done, total, rate, rate * spec.io_size))
            last_t, last_done = now, done

    start = time.perf_counter()
    flush_s = 0.0
    async with trio.open_nursery() as outer:
        if progress is not None:
            outer.start_soon(reporter, start)
        async with trio.open_nursery() as n:
            for _ in range(min(spec.io_threads, total)):
                n.start_soon(worker, n.cancel_scope)
        if st.failure is None and st.write_ops:
            t0 = time.perf_counter()
            try:
                await image.flush()
            except OSDError as e:
                st.failure = e
            flush_s = time.perf_counter() - t0
        outer.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    if st.failure is not None:
        raise st.failure
    lat_us = st.lat[: min(st.done, nlat)] * 1e6
    return BenchResult(spec, elapsed, st.read_ops, st.write_ops,
                       float(lat_us.mean()) if len(lat_us) else 0.0,
                       float(np.percentile(lat_us, 50)) if len(lat_us) else 0.0,
                       float(np.percentile(lat_us, 99)) if len(lat_us) else 0.0, flush_s)


# -- what the CLI prints ------------------------------------------------------------------

def human_rate(bytes_per_sec: float) -> str:
    """``93.8 MiB/s``: binary units, as ``rbd bench`` prints them."""
    n = float(bytes_per_sec)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}/s" if unit == "B" else f"{n:.1f} {unit}/s"
        n /= 1024
    return f"{n:.1f} GiB/s"


PROGRESS_HEADER = "  SEC       OPS   OPS/SEC   BYTES/SEC"


def progress_line(p: Progress) -> str:
    """One periodic line under PROGRESS_HEADER (the format of ``rbd bench``)."""
    return f"{p.sec:5.0f}  {p.ops:8d}  {p.ops_per_sec:8.2f}  {human_rate(p.bytes_per_sec):>10}"


def progress_bar(p: Progress, width: int = 30) -> str:
    """A one-line bar for a terminal (the caller rewrites it in place with ``\\r``)."""
    frac = p.ops / p.total_ops if p.total_ops else 1.0
    filled = min(width, math.floor(frac * width))
    bar = "#" * filled + "." * (width - filled)
    return (f"[{bar}] {100 * frac:5.1f}%  {p.ops}/{p.total_ops} ops  "
            f"{p.ops_per_sec:.0f} ops/s  {human_rate(p.bytes_per_sec)}  {p.sec:.0f}s")


def summary(r: BenchResult) -> str:
    """The closing lines: totals, then the read and write split of a mixed bench."""
    lines = [f"elapsed: {r.elapsed:.2f}  ops: {r.ops}  ops/sec: {r.ops_per_sec:.2f}  "
             f"bytes/sec: {r.bytes_per_sec:.0f} ({human_rate(r.bytes_per_sec)})"]
    if r.spec.io_type == "readwrite":
        e = r.elapsed if r.elapsed > 0 else float("inf")
        size = r.spec.io_size
        lines.append(f"read_ops: {r.read_ops}  read_ops/sec: {r.read_ops / e:.2f}  "
                     f"read_bytes/sec: {r.read_ops * size / e:.0f}")
        lines.append(f"write_ops: {r.write_ops}  write_ops/sec: {r.write_ops / e:.2f}  "
                     f"write_bytes/sec: {r.write_ops * size / e:.0f}")
    return "\n".join(lines)
