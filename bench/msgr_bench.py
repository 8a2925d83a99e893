"""Messenger throughput against a raw-socket ceiling measured in the same run.

Two processes on loopback. For each size (1 MiB and 4 KiB data messages) the receiver is a
separate process; the sender streams N messages and stops the clock when the receiver says
it has them all. The ceiling is the same stream with plain ``sendall``/``recv_into`` of the
same sizes, no framing and no crc, run alternately with the messenger (best of each).
The last line printed is one JSON object.

    python bench/msgr_bench.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import trio

from rbdpy.msgr.message import EntityName, Message, MsgHeader
from rbdpy.msgr.messenger import Messenger, SimpleDispatcher
from rbdpy.msgr.payload import BioChain

MSG_DATA = 1
MSG_DONE = 2
SIZES = {"1M": 1 << 20, "4K": 4096}


# ---- receivers (run in the child process) ----------------------------------------------------


def raw_receiver(port_file: str, size: int) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    _announce(port_file, srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = memoryview(bytearray(size))
    count = int.from_bytes(_recv_exact(conn, memoryview(bytearray(8))), "little")
    for _ in range(count):
        _recv_exact(conn, buf)
    conn.sendall(b"k")
    conn.close()


def _recv_exact(conn: socket.socket, buf: memoryview) -> memoryview:
    got = 0
    while got < len(buf):
        n = conn.recv_into(buf[got:])
        if not n:
            raise ConnectionError("sender went away")
        got += n
    return buf


def msgr_receiver(port_file: str, size: int) -> None:
    async def main() -> None:
        dest = memoryview(bytearray(size))
        state = {"n": 0, "want": -1}

        def alloc(peer: EntityName | None, h: MsgHeader) -> list[memoryview] | None:
            return [dest] if h.type == MSG_DATA else None

        async def dispatch(peer, msg: Message) -> None:
            if msg.type == MSG_DATA:
                state["n"] += 1
            else:
                state["want"] = msg.tid
            if state["n"] == state["want"]:
                peer.send(Message(type=MSG_DONE))

        async with Messenger(EntityName(2, 0), SimpleDispatcher(dispatch, alloc)) as m:
            _host, port = await m.listen("127.0.0.1", 0)
            _announce(port_file, port)
            await trio.sleep_forever()

    trio.run(main)


def _announce(port_file: str, port: int) -> None:
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(port_file + ".tmp", port_file)


# ---- senders (the parent) --------------------------------------------------------------------


def start_receiver(kind: str, size: int, tmp: str) -> tuple[subprocess.Popen, int]:
    port_file = os.path.join(tmp, f"port-{kind}-{size}-{time.monotonic_ns()}")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--receiver", kind, "--size", str(size), "--port-file",
         port_file],
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"{kind} receiver did not start")
        time.sleep(0.01)
    with open(port_file) as f:
        return proc, int(f.read())


def run_raw(size: int, count: int, tmp: str) -> float:
    proc, port = start_receiver("raw", size, tmp)
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(os.urandom(size))
        t0 = time.perf_counter()
        sock.sendall(count.to_bytes(8, "little"))
        for _ in range(count):
            sock.sendall(buf)
        sock.recv(1)
        elapsed = time.perf_counter() - t0
        sock.close()
        return elapsed
    finally:
        proc.wait(timeout=10)


def run_msgr(size: int, count: int, tmp: str) -> float:
    proc, port = start_receiver("msgr", size, tmp)
    try:
        return trio.run(_msgr_send, port, size, count)
    finally:
        proc.kill()
        proc.wait()


async def _msgr_send(port: int, size: int, count: int) -> float:
    done = trio.Event()

    async def dispatch(peer, msg: Message) -> None:
        done.set()

    buf = bytearray(os.urandom(size))
    async with Messenger(EntityName(1, 1), SimpleDispatcher(dispatch)) as m:
        peer = m.connect(("127.0.0.1", port))
        await peer.connected.wait()
        t0 = time.perf_counter()
        window = max(8, (64 << 20) // size)  # bound what is queued but unacked
        sent = 0
        while sent < count:
            await peer.wait_for_room(window)
            peer.send(Message(type=MSG_DATA, tid=sent, data=BioChain.from_buffer(buf)))
            sent += 1
        peer.send(Message(type=MSG_DONE, tid=count))
        await done.wait()
        elapsed = time.perf_counter() - t0
        m.shutdown()
    return elapsed


def calibrate(fn, size: int, seconds: float, tmp: str) -> int:
    """A message count for which one run of ``fn`` takes about ``seconds``."""
    count = max(16, int((64 << 20) // size))
    t = fn(size, count, tmp)
    return max(count, int(count * seconds / max(t, 1e-3)))


def measure_pair(size: int, seconds: float, rounds: int, tmp: str
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Raw and messenger runs interleaved (raw, msgr, raw, msgr, ...), best of each.

    This box's throughput drifts by a third between runs a few seconds apart; interleaving
    gives ceiling and subject the same conditions, and the best of several is the least
    disturbed run of each.
    """
    counts = {fn: calibrate(fn, size, seconds, tmp) for fn in (run_raw, run_msgr)}
    best = {fn: float("inf") for fn in counts}
    for _ in range(rounds):
        for fn, count in counts.items():
            best[fn] = min(best[fn], fn(size, count, tmp))
    out = []
    for fn, count in counts.items():
        t = best[fn]
        out.append({"msgs_per_s": count / t, "MB_per_s": count * size / t / 1e6, "count": count})
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--receiver", choices=["raw", "msgr"])
    ap.add_argument("--size", type=int)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    if args.receiver:
        (raw_receiver if args.receiver == "raw" else msgr_receiver)(args.port_file, args.size)
        return
    import tempfile

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            raw, msgr = measure_pair(size, args.seconds, args.rounds, tmp)
            key = "MB_per_s" if size >= (1 << 20) else "msgs_per_s"
            ratio = msgr[key] / raw[key]
            results[label] = {"raw": raw, "msgr": msgr, "ratio": round(ratio, 3), "metric": key}
            print(f"{label:>3}: msgr {msgr['MB_per_s']:9.1f} MB/s {msgr['msgs_per_s']:10.0f} "
                  f"msg/s | raw {raw['MB_per_s']:9.1f} MB/s {raw['msgs_per_s']:10.0f} msg/s"
                  f" | ratio ({key}) {ratio:.2f}", flush=True)
    results["targets"] = {"1M": 0.70, "4K": 0.40}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
