"""fio (nbd engine) and qemu-img convert against rbdpy and against ceilings in the same run.

Targets:
  memory   nbdkit's C ``memory`` plugin: the ceiling of the NBD path itself
  pyplug   a minimal Python nbdkit plugin over one bytearray: the ceiling of any Python plugin
  file     nbdkit's C ``file`` plugin over a sparse file beside the cluster's data (same disk):
           the ceiling of *durable* writes through NBD here, since its flush is an fdatasync
           (memory and pyplug never touch the disk, so no store can reach them on writes)
  rbdpy    rbdpy with 1 OSD, replica 1 (writes flushed every 256 ops and at the end)

Jobs: 4k randwrite qd32, 4k randread qd32, 1M write qd8, 1M read qd8, 4k randwrite qd1 over a
region written first (so reads are real), on a 2 GiB export.

Convert: a raw file of ``--convert-size`` (1 GiB; first half random, second half zeros, made
once per run) is copied INTO a fresh export of exactly that size with
``qemu-img convert -n -f raw -O raw SRC nbd+unix:///?socket=…`` (qemu-img flushes the export
at the end, so the time covers durable data), then OUT of it into a new raw file (``-t unsafe``:
the local file is not fsynced, so the figure is the export's, not the local disk's). The copy
out must equal the source byte for byte, or the run fails. Each target does
``--convert-repeat`` (3) round trips, each into a fresh export, and the best time counts: on
a small shared machine one run can be off by 2x. Target: rbdpy's convert-in takes at most 2x
memory's.

Prints a Markdown table of IOPS with ratios; a table of what one request costs each process
(CPU microseconds and context switches of nbdkit, all threads, and of the OSDs, read from
/proc over each fio run); whether each of issue 5's targets is met (4k randwrite/randread
qd32 >= 0.35 of pyplug, 1M write/read qd8 >= 0.5 of memory, convert-in <= 2x memory); a table
of convert times; and the last line is one JSON object. ``--out DIR`` (default bench/results/)
also gets that object as fio_suite.json
and a bar chart as fio_suite.png (needs matplotlib: ``pip install -e '.[bench]'``).

    python bench/fio_suite.py [--runtime 10] [--region 1G] [--targets memory,pyplug,file,rbdpy]
        [--jobs 4k-randwrite-qd32,1m-read-qd8|none] [--no-convert] [--convert-size 1G]
        [--convert-repeat 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = [
    ("4k randwrite qd32", "randwrite", "4k", 32),
    ("4k randread qd32", "randread", "4k", 32),
    ("1M write qd8", "write", "1M", 8),
    ("1M read qd8", "read", "1M", 8),
    ("4k randwrite qd1", "randwrite", "4k", 1),
]
TARGETS = ("memory", "pyplug", "file", "rbdpy")
CEILINGS = ("memory", "pyplug", "file")
FIO_EXPORT = "2G"
CONVERT_TARGET = 2.0  # rbdpy convert-in may take at most this many times memory's
# issue 5's IOPS targets: (ceiling, least ratio of rbdpy to it)
JOB_TARGETS = {
    "4k randwrite qd32": ("pyplug", 0.35),
    "4k randread qd32": ("pyplug", 0.35),
    "1M write qd8": ("memory", 0.5),
    "1M read qd8": ("memory", 0.5),
}

PYPLUG = '''
import nbdkit
API_VERSION = 2
disk = None
size = 0
def config(k, v):
    global size
    if k == "size":
        size = nbdkit.parse_size(v)
def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL
def after_fork():
    global disk
    disk = bytearray(size)
def open(readonly):
    return 1
def get_size(h):
    return size
def block_size(h):
    return (1, 4096, 32 * 1024 * 1024)
def can_multi_conn(h):
    return True
def can_flush(h):
    return True
def flush(h, flags):
    pass
def pread(h, buf, offset, flags):
    buf[:] = disk[offset:offset + len(buf)]
def pwrite(h, buf, offset, flags):
    disk[offset:offset + len(buf)] = buf
'''


def job_key(label: str) -> str:
    """``4k randwrite qd32`` -> ``4k-randwrite-qd32`` (what ``--jobs`` takes)."""
    return label.lower().replace(" ", "-")


def parse_size(s: str) -> int:
    """``1G``, ``256M``, ``4096`` (binary units, like fio and qemu-img)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = s.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1:] in units else int(t)


def start_nbdkit(args: list[str], sock: Path, env: dict | None = None) -> subprocess.Popen:
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "--unix", str(sock),
                             *args], env=env)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"nbdkit {args[0]} did not start")
        time.sleep(0.05)
    return proc


@contextlib.contextmanager
def nbdkit(args: list[str], sock: Path, pids: dict[str, list[int]]) -> Iterator[str]:
    """An nbdkit serving ``args`` on ``sock`` for the block; stopped by its PID after. Its
    PID is ``pids["nbdkit"]`` meanwhile, for the cost sampling."""
    p = start_nbdkit(args, sock)
    pids["nbdkit"] = [p.pid]
    try:
        yield f"nbd+unix:///?socket={sock}"
    finally:
        pids.pop("nbdkit", None)
        p.send_signal(signal.SIGTERM)
        p.wait()


# -- what a request costs each process ------------------------------------------------------

def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds, context switches) of a process so far, all its threads included."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        switches = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt")):
                        switches += int(line.split()[1])
        return cpu, switches
    except OSError:
        return 0.0, 0  # gone: it counts as nothing


def sample_all(pids: dict[str, list[int]]) -> dict[str, tuple[float, int]]:
    out = {}
    for role, group in pids.items():
        got = [proc_sample(p) for p in group]
        out[role] = (sum(c for c, _ in got), sum(n for _, n in got))
    return out


def cost_per_op(before: dict, after: dict, ops: int) -> dict:
    """CPU microseconds and context switches per request, per role (nbdkit, osd): where a
    request's time goes, which ratios alone do not show. ``ops``: requests done meanwhile."""
    out = {}
    for role, (cpu, switches) in after.items():
        c0, s0 = before.get(role, (cpu, switches))
        out[role] = {"cpu_us": round((cpu - c0) * 1e6 / max(ops, 1), 1),
                     "switches": round((switches - s0) / max(ops, 1), 2)}
    return out


class Target:
    """Serves fresh exports of one kind; rbdpy's live in one cluster for the whole target."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.sock = tmp / "nbd.sock"
        self.cluster = tmp / "cluster"
        self.pids: dict[str, list[int]] = {}  # role -> PIDs whose cost per request is sampled
        self.rb = [sys.executable, "-m", "rbdpy.cli", "--cluster", str(self.cluster)]

    @contextlib.contextmanager
    def up(self) -> Iterator[Target]:
        if self.name != "rbdpy":
            yield self
            return
        subprocess.run([*self.rb, "cluster", "up"], check=True, capture_output=True)
        self.pids["osd"] = [int(p.read_text()) for p in sorted(self.cluster.glob("osd.*.pid"))]
        try:
            yield self
        finally:
            subprocess.run([*self.rb, "cluster", "down"], capture_output=True)

    def discard(self, image: str) -> None:
        """Remove a used export, as ``export`` replaces the file target's file: the next
        round trip then writes into page cache the kernel just freed, for every target
        alike. (Kept, rbdpy's old images made each round trip grow the page cache into
        memory this VM had never touched, which costs ~2.4 ms of system time per MiB here
        against ~0.3 ms for reused pages: measured with plain pwritev, no rbdpy involved.)"""
        if self.name == "rbdpy":
            subprocess.run([*self.rb, "rm", image], check=True, capture_output=True)

    def export(self, image: str, size: str) -> contextlib.AbstractContextManager[str]:
        """A new, empty export of ``size`` bytes; the context gives its NBD URI."""
        if self.name == "memory":
            return nbdkit(["memory", f"size={size}"], self.sock, self.pids)
        if self.name == "pyplug":
            plug = self.tmp / "pyplug.py"
            plug.write_text(PYPLUG)
            return nbdkit(["python", str(plug), f"size={size}"], self.sock, self.pids)
        if self.name == "file":
            path = self.tmp / "file-export.raw"
            path.unlink(missing_ok=True)
            with open(path, "wb") as f:
                f.truncate(parse_size(size))
            return nbdkit(["file", f"file={path}"], self.sock, self.pids)
        # rbdpy create takes whole 512-byte sectors, and reads a bare number as MiB
        sectors = -(-parse_size(size) // 512) * 512
        subprocess.run([*self.rb, "create", image, "--size", f"{sectors}B"], check=True)
        return nbdkit(["python", str(ROOT / "nbdplugin" / "rbdpy_nbd.py"),
                       f"cluster={self.cluster}", f"image={image}"], self.sock, self.pids)


# -- fio ----------------------------------------------------------------------------------

def fio(uri: str, rw: str, bs: str, qd: int, region: str, runtime: int, flush: bool,
        pids: dict[str, list[int]] | None = None) -> dict:
    """One fio job; with ``pids``, also what one request costs those processes (``cost``),
    sampled inside the run (from 1 s after its start to 1 s before its end): nbdkit's worker
    threads end with the connection, and their context switches with them."""
    cmd = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--size={region}", "--time_based", f"--runtime={runtime}",
           "--output-format=json", "--randrepeat=0"]
    if flush and "write" in rw:
        cmd += ["--fsync=256", "--end_fsync=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    window = None
    if pids and runtime >= 3:
        time.sleep(1)
        t0, before = time.monotonic(), sample_all(pids)
        time.sleep(runtime - 2)
        window = (time.monotonic() - t0, before, sample_all(pids))
    out, err = proc.communicate()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    res = {"iops": side["iops"], "MBps": side["bw_bytes"] / 1e6,
           "lat_us_p50": side["clat_ns"]["percentile"].get("50.000000", 0) / 1e3}
    flushes = job.get("sync", {}).get("lat_ns", {})
    if flushes.get("mean"):  # fio's flush every 256 writes: how long one took (a write
        res["flush_ms_mean"] = round(flushes["mean"] / 1e6, 2)  # waits for them all)
    if window is not None:
        secs, before, after = window
        res["cost"] = cost_per_op(before, after, round(side["iops"] * secs))
    return res


def prefill(uri: str, region: str) -> None:
    subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
                    "--bs=1M", "--iodepth=8", f"--size={region}", "--end_fsync=1",
                    "--output-format=terse"], capture_output=True, check=True)


def run_target(name: str, uri: str, region: str, runtime: int, jobs: list[tuple],
               pids: dict[str, list[int]]) -> dict:
    prefill(uri, region)
    res = {}
    for label, rw, bs, qd in jobs:
        r = res[label] = fio(uri, rw, bs, qd, region, runtime, flush=True, pids=pids)
        cost = "  ".join(f"{role} {c['cpu_us']:7.1f} us {c['switches']:5.2f} cs"
                         for role, c in r.get("cost", {}).items())
        flush = f"  flush {r['flush_ms_mean']:.1f} ms" if "flush_ms_mean" in r else ""
        print(f"  {name:<7} {label:<18} {r['iops']:10.0f} IOPS {r['MBps']:9.1f} MB/s   "
              f"per request: {cost}{flush}", flush=True)
    return res


# -- qemu-img convert ---------------------------------------------------------------------

def make_source(path: Path, size: int, chunk: int = 16 << 20) -> None:
    """First half random (seeded, incompressible), second half real zero bytes.

    The zeros are written, not left as a hole, so qemu-img has to read them and find them
    zero the way it does in a fully allocated image.
    """
    import numpy as np

    rng = np.random.default_rng(5)
    half = size // 2
    zeros = bytes(chunk)
    with open(path, "wb") as f:
        done = 0
        while done < size:
            n = min(chunk, size - done)
            if done < half:
                n = min(n, half - done)
                f.write(rng.bytes(n))
            else:
                f.write(zeros[:n])
            done += n
        f.flush()
        os.fsync(f.fileno())  # else its writeback competes with whichever target runs first


def same_content(a: Path, b: Path, chunk: int = 16 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def qemu_img(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["qemu-img", "convert", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def time_convert(uri: str, src: Path, dst: Path) -> tuple[float, float, bool]:
    """Seconds to copy ``src`` into the (fresh) export and back out; checks the round trip."""
    in_s = qemu_img("-n", "-f", "raw", "-O", "raw", str(src), uri)
    dst.unlink(missing_ok=True)
    out_s = qemu_img("-t", "unsafe", "-f", "raw", "-O", "raw", uri, str(dst))
    ok = same_content(src, dst)
    dst.unlink(missing_ok=True)
    return in_s, out_s, ok


def run_convert(target: Target, src: Path, dst: Path, repeat: int) -> dict:
    """Best of ``repeat`` round trips, each into a fresh export (the machine may be shared)."""
    size = src.stat().st_size
    ins, outs, ok = [], [], True
    for rep in range(repeat):
        with target.export(f"convert{rep}", str(size)) as uri:
            i, o, good = time_convert(uri, src, dst)
        target.discard(f"convert{rep}")
        ins.append(i)
        outs.append(o)
        ok = ok and good
        print(f"  {target.name:<7} convert in  {i:8.2f} s {size / i / 1e6:9.1f} MB/s   "
              f"out {o:8.2f} s {size / o / 1e6:9.1f} MB/s"
              + ("" if good else "   MISMATCH: the copy out differs from the source"),
              flush=True)
    in_s, out_s = min(ins), min(outs)
    return {"in_s": round(in_s, 3), "out_s": round(out_s, 3),
            "in_MBps": round(size / in_s / 1e6, 1), "out_MBps": round(size / out_s / 1e6, 1),
            "in_all": [round(x, 3) for x in ins], "out_all": [round(x, 3) for x in outs],
            "verified": ok}


# -- report -------------------------------------------------------------------------------

def ratio(a: float, b: float) -> float:
    return round(a / max(b, 1e-9), 3)


def plot(summary: dict, path: Path) -> bool:
    """Grouped bars: IOPS per job (log scale), and convert seconds per direction."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, convert = summary["results"], summary["convert"]
    targets = [t for t in TARGETS if t in results or t in convert]
    colors = {"memory": "#4c72b0", "pyplug": "#dd8452", "file": "#8172b3", "rbdpy": "#55a868"}
    panels = [p for p, have in (("fio", summary["jobs"] and results), ("convert", convert))
              if have]
    if not panels:
        return False
    widths = [2.2 if p == "fio" else 1 for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * sum(widths), 5.5),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "fio":
            groups = summary["jobs"]
            series = {t: [results[t][j]["iops"] for j in groups] for t in targets
                      if t in results}
            ax.set_yscale("log")
            ax.set_ylabel("IOPS (log scale, higher is better)")
            ax.set_title(f"fio over NBD ({summary['runtime']} s per job, "
                         f"region {summary['region']})")
            fmt = "{:.0f}"
        else:
            groups = ["in", "out"]
            series = {t: [convert[t]["in_s"], convert[t]["out_s"]] for t in targets
                      if t in convert}
            ax.set_ylabel("seconds (lower is better)")
            ax.set_title(f"qemu-img convert {summary['convert_size'] >> 20} MiB "
                         f"(half zeros), best of {summary['convert_repeat']}")
            fmt = "{:.2f}s"
            if "memory" in convert:
                lim = CONVERT_TARGET * convert["memory"]["in_s"]
                ax.plot([-0.45, 0.45], [lim, lim], "k--", lw=1,
                        label=f"rbdpy target: {CONVERT_TARGET:g}x memory")
        n = len(series)
        w = 0.8 / max(n, 1)
        for i, (t, vals) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
            bars = ax.bar(xs, vals, w, label=t, color=colors[t])
            ax.bar_label(bars, [fmt.format(v) for v in vals], fontsize=7, padding=2,
                         rotation=90 if panel == "fio" else 0)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups if panel == "convert" else [g.replace(" ", "\n", 1)
                                                             for g in groups])
        ax.margins(y=0.15)
        if panel == "fio":
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi * 4)  # room for the rotated labels
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"rbdpy vs ceilings, {summary['cpus']} CPUs, {summary['date']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_tables(summary: dict) -> None:
    results, ratios = summary["results"], summary["ratios"]
    if summary["jobs"] and results:
        print()
        print("| job | " + " | ".join(f"{k} IOPS" for k in results) + " | "
              + " | ".join(f"rbdpy/{c}" for c in CEILINGS) + " |")
        print("|---|" + "---|" * (len(results) + len(CEILINGS)))
        for label in summary["jobs"]:
            row = [f"{results[k][label]['iops']:.0f}" for k in results]
            r = ratios[label]
            print(f"| {label} | " + " | ".join(row) + " | "
                  + " | ".join(str(r.get(c, "-")) for c in CEILINGS) + " |")
        roles = {k: list(next((results[k][j]["cost"] for j in summary["jobs"]
                                if "cost" in results[k][j]), {})) for k in results}
        if any(roles.values()):
            print("\nCost per request: CPU microseconds and context switches of the server "
                  "process (nbdkit, all threads) and of the OSDs, sampled inside each run")
            print("| job | " + " | ".join(f"{k} {r}" for k in results for r in roles[k])
                  + " |")
            print("|---|" + "---|" * sum(len(r) for r in roles.values()))
            for label in summary["jobs"]:
                cells = []
                for k in results:
                    cost = results[k][label].get("cost", {})
                    cells += [f"{cost[r]['cpu_us']:.0f} us, {cost[r]['switches']:.1f} cs"
                              if r in cost else "-" for r in roles[k]]
                print(f"| {label} | " + " | ".join(cells) + " |")
    if summary["job_targets"]:
        print()
    for label, t in summary["job_targets"].items():
        print(f"rbdpy {label}: {t['got']} of {t['ceiling']} (target >= {t['want']:g}): "
              f"{'met' if t['met'] else 'NOT met'}")
    convert = summary["convert"]
    if convert:
        cr = summary["convert_ratios"]
        print()
        print(f"| qemu-img convert {summary['convert_size'] >> 20} MiB (half zeros), best of "
              f"{summary['convert_repeat']} | "
              + " | ".join(f"{k} s" for k in convert) + " | "
              + " | ".join(f"rbdpy/{c}" for c in CEILINGS) + " |")
        print("|---|" + "---|" * (len(convert) + len(CEILINGS)))
        for d, what in (("in", "in (raw file -> export)"), ("out", "out (export -> raw file)")):
            row = [f"{convert[k][f'{d}_s']:.2f}" for k in convert]
            print(f"| {what} | " + " | ".join(row) + " | "
                  + " | ".join(str(cr[d].get(c, "-")) for c in CEILINGS) + " |")
        met = summary["convert_in_target_met"]
        if met is not None:
            print(f"\nrbdpy convert-in is {cr['in']['memory']}x memory's time "
                  f"(target <= {CONVERT_TARGET:g}x): {'met' if met else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio job")
    ap.add_argument("--region", default="1G", help="bytes of the export the fio jobs use")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--jobs", default="all", help="comma-separated job keys ("
                    + ", ".join(job_key(j[0]) for j in JOBS) + "), 'all' or 'none'")
    ap.add_argument("--no-convert", action="store_true", help="skip the qemu-img convert runs")
    ap.add_argument("--convert-size", default="1G", help="size of the convert source file")
    ap.add_argument("--convert-repeat", type=int, default=3,
                    help="round trips per target, each into a fresh export; the best counts")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                    help="where fio_suite.json and fio_suite.png go (default bench/results/)")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"unknown target(s) {', '.join(bad)} (want {', '.join(TARGETS)})")
    by_key = {job_key(j[0]): j for j in JOBS}
    if args.jobs == "all":
        jobs = list(JOBS)
    elif args.jobs == "none":
        jobs = []
    else:
        want = [job_key(k) for k in args.jobs.split(",") if k.strip()]
        if bad := [k for k in want if k not in by_key]:
            ap.error(f"unknown job(s) {', '.join(bad)} (want {', '.join(by_key)})")
        jobs = [j for j in JOBS if job_key(j[0]) in want]
    convert_size = parse_size(args.convert_size)
    if args.convert_repeat < 1 or convert_size < 1 << 20:
        ap.error("--convert-repeat must be at least 1 and --convert-size at least 1M")

    results: dict[str, dict] = {}
    convert: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src, dst = t / "convert-src.raw", t / "convert-dst.raw"
        if not args.no_convert:
            t0 = time.perf_counter()
            make_source(src, convert_size)
            # one untimed local copy, so that the first target timed is not also the first to
            # read the source through qemu-img and to fill a fresh output file
            qemu_img("-t", "unsafe", "-f", "raw", "-O", "raw", str(src), str(dst))
            dst.unlink()
            print(f"  convert source: {convert_size >> 20} MiB in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        for name in targets:
            with Target(name, t).up() as target:
                if jobs:
                    with target.export("bench", FIO_EXPORT) as uri:
                        results[name] = run_target(name, uri, args.region, args.runtime, jobs,
                                                   target.pids)
                if not args.no_convert:
                    convert[name] = run_convert(target, src, dst, args.convert_repeat)

    ratios: dict[str, dict[str, float]] = {}
    for label, *_ in jobs:
        ratios[label] = {c: ratio(results["rbdpy"][label]["iops"], results[c][label]["iops"])
                         for c in CEILINGS if "rbdpy" in results and c in results}
    convert_ratios = {d: {c: ratio(convert["rbdpy"][f"{d}_s"], convert[c][f"{d}_s"])
                          for c in CEILINGS if "rbdpy" in convert and c in convert}
                      for d in ("in", "out")}
    met = (convert_ratios["in"]["memory"] <= CONVERT_TARGET
           if "memory" in convert_ratios["in"] else None)
    job_targets = {label: {"ceiling": c, "want": want, "got": ratios[label][c],
                           "met": ratios[label][c] >= want}
                   for label, (c, want) in JOB_TARGETS.items()
                   if label in ratios and c in ratios[label]}
    summary = {"results": results, "ratios": ratios, "runtime": args.runtime,
               "region": args.region, "cpus": os.cpu_count(),
               "jobs": [j[0] for j in jobs],
               "convert": convert, "convert_ratios": convert_ratios,
               "convert_size": convert_size if convert else 0,
               "convert_repeat": args.convert_repeat,
               "convert_in_target": CONVERT_TARGET, "convert_in_target_met": met,
               "job_targets": job_targets,
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    print_tables(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fio_suite.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = args.out / "fio_suite.png"
    if plot(summary, png):
        print(f"\nwrote {args.out / 'fio_suite.json'} and {png}")
    else:
        print(f"\nwrote {args.out / 'fio_suite.json'}")
    print(json.dumps(summary))
    return 0 if all(c["verified"] for c in convert.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
