"""fio (nbd engine) against rbdpy and against ceilings measured in the same run.

Targets:
  memory   nbdkit's C ``memory`` plugin: the ceiling of the NBD path itself
  pyplug   a minimal Python nbdkit plugin over one bytearray: the ceiling of any Python plugin
  rbdpy    rbdpy with 1 OSD, replica 1 (writes flushed every 256 ops and at the end)

Jobs: 4k randwrite qd32, 4k randread qd32, 1M write qd8, 1M read qd8, 4k randwrite qd1 over a
region written first (so reads are real). Prints a Markdown table with ratios, and the last
line is one JSON object.

    python bench/fio_suite.py [--runtime 10] [--region 1G]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = [
    ("4k randwrite qd32", "randwrite", "4k", 32),
    ("4k randread qd32", "randread", "4k", 32),
    ("1M write qd8", "write", "1M", 8),
    ("1M read qd8", "read", "1M", 8),
    ("4k randwrite qd1", "randwrite", "4k", 1),
]

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


def fio(uri: str, rw: str, bs: str, qd: int, region: str, runtime: int, flush: bool) -> dict:
    cmd = ["fio", "--name=j", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--size={region}", "--time_based", f"--runtime={runtime}",
           "--output-format=json", "--randrepeat=0"]
    if flush and "write" in rw:
        cmd += ["--fsync=256", "--end_fsync=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return {"iops": side["iops"], "MBps": side["bw_bytes"] / 1e6,
            "lat_us_p50": side["clat_ns"]["percentile"].get("50.000000", 0) / 1e3}


def prefill(uri: str, region: str) -> None:
    subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
                    "--bs=1M", "--iodepth=8", f"--size={region}", "--end_fsync=1",
                    "--output-format=terse"], capture_output=True, check=True)


def run_target(name: str, uri: str, region: str, runtime: int) -> dict:
    prefill(uri, region)
    res = {}
    for label, rw, bs, qd in JOBS:
        res[label] = fio(uri, rw, bs, qd, region, runtime, flush=True)
        print(f"  {name:<7} {label:<18} {res[label]['iops']:10.0f} IOPS "
              f"{res[label]['MBps']:9.1f} MB/s", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--region", default="1G")
    ap.add_argument("--targets", default="memory,pyplug,rbdpy")
    args = ap.parse_args()
    targets = args.targets.split(",")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sock = t / "nbd.sock"
        if "memory" in targets:
            p = start_nbdkit(["memory", "size=2G"], sock)
            try:
                results["memory"] = run_target("memory", f"nbd+unix:///?socket={sock}",
                                               args.region, args.runtime)
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait()
        if "pyplug" in targets:
            plug = t / "pyplug.py"
            plug.write_text(PYPLUG)
            p = start_nbdkit(["python", str(plug), "size=2G"], sock)
            try:
                results["pyplug"] = run_target("pyplug", f"nbd+unix:///?socket={sock}",
                                               args.region, args.runtime)
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait()
        if "rbdpy" in targets:
            data = t / "cluster"
            rb = [sys.executable, "-m", "rbdpy.cli", "--cluster", str(data)]
            subprocess.run([*rb, "cluster", "up"], check=True, capture_output=True)
            try:
                subprocess.run([*rb, "create", "bench", "--size", "2G"], check=True)
                p = start_nbdkit(["python", str(ROOT / "nbdplugin" / "rbdpy_nbd.py"),
                                  f"cluster={data}", "image=bench"], sock)
                try:
                    results["rbdpy"] = run_target("rbdpy", f"nbd+unix:///?socket={sock}",
                                                  args.region, args.runtime)
                finally:
                    p.send_signal(signal.SIGTERM)
                    p.wait()
            finally:
                subprocess.run([*rb, "cluster", "down"], capture_output=True)
    print()
    print("| job | " + " | ".join(f"{k} IOPS" for k in results) + " | rbdpy/memory | "
          "rbdpy/pyplug |")
    print("|---|" + "---|" * (len(results) + 2))
    ratios: dict[str, dict[str, float]] = {}
    for label, *_ in JOBS:
        row = [f"{results[k][label]['iops']:.0f}" for k in results]
        r = {}
        if "rbdpy" in results:
            for ceil in ("memory", "pyplug"):
                if ceil in results:
                    r[ceil] = round(results["rbdpy"][label]["iops"]
                                    / max(results[ceil][label]["iops"], 1e-9), 3)
        ratios[label] = r
        print(f"| {label} | " + " | ".join(row) + f" | {r.get('memory', '-')} | "
              f"{r.get('pyplug', '-')} |")
    print(json.dumps({"results": results, "ratios": ratios, "runtime": args.runtime,
                      "region": args.region, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
