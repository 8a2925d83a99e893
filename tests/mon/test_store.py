"""The monitor's store (rbdpy.mon.store): round trips, pruning, refusals, damage, a failed
write, and real kill -9 crashes of a process appending epochs in a loop."""

from __future__ import annotations

import errno
import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rbdpy.maps.errors import MapError
from rbdpy.maps.incremental import Incremental, OsdChange
from rbdpy.maps.osdmap import OSDMap, PoolInfo
from rbdpy.mon.store import MonStore, MonStoreError
from tests.maps.gen import gen_history

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("mon_store_crash_child",
                                               HERE / "store_crash_child.py")
crash_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_child)


def files(p: Path) -> list[str]:
    return sorted(f.name for f in p.iterdir() if f.name != "lock")


def test_appends_survive_a_reopen_and_old_records_are_pruned(tmp_path: Path) -> None:
    maps, incs = gen_history(random.Random(5), 30)
    d = tmp_path / "mon"
    s = MonStore.create(d, maps[0], keep=4, full_every=10)
    assert MonStore.exists(d) and s.osdmap == maps[0] and s.incrementals == ()
    for k, inc in enumerate(incs):
        assert s.append(inc) == maps[k + 1] == s.osdmap
        if k == 12:  # epoch 14: full map 11, incrementals 11..14 (the window; 12.. replay)
            s.close()
            s = MonStore.open(d, keep=4, full_every=10)
            assert s.osdmap == maps[k + 1]
            assert s.incrementals == tuple(incs[k - 3:k + 1])
            assert files(d) == ["full.0000000011"] + [f"inc.{e:010d}" for e in range(11, 15)]
    s.close()
    s = MonStore.open(d, keep=4, full_every=10)
    assert s.osdmap == maps[-1] and s.osdmap.epoch == 31
    assert [i.epoch for i in s.incrementals] == [28, 29, 30, 31]
    assert files(d) == ["full.0000000031"] + [f"inc.{e:010d}" for e in range(28, 32)]
    s.close()


def test_refusals(tmp_path: Path) -> None:
    d = tmp_path / "mon"
    with pytest.raises(MonStoreError) as ei:
        MonStore.open(d)
    assert ei.value.errno == errno.ENOENT
    m = OSDMap(epoch=1, pools={1: PoolInfo(1, "rbd")})
    s = MonStore.create(d, m)
    with pytest.raises(MonStoreError) as ei:
        MonStore.open(d)  # the first one holds the lock
    assert ei.value.errno == errno.EBUSY and "another monitor" in str(ei.value)
    with pytest.raises(MapError):  # does not apply: nothing written
        s.append(Incremental(3))
    with pytest.raises(MapError):
        s.append(Incremental(2, osds={9: OsdChange(up=False)}))
    assert files(d) == ["full.0000000001"]
    s.close()
    with pytest.raises(MonStoreError) as ei:
        MonStore.create(d, m)
    assert ei.value.errno == errno.EEXIST
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MonStoreError) as ei:
        MonStore.open(empty)
    assert ei.value.errno == errno.ENOENT


def test_every_state_a_crash_can_leave_opens_at_a_whole_epoch(tmp_path: Path) -> None:
    """What kill -9 can leave mid-append, built directly (a real kill rarely lands in the
    microseconds of a write): a temporary file of any length, renamed or not, for the
    incremental and for the full map written after it. Open finds the epoch before, or the
    new one once its incremental was renamed into place, and removes the leftovers."""
    maps, incs = gen_history(random.Random(3), 4)
    ref = tmp_path / "ref"
    s = MonStore.create(ref, maps[0], full_every=4)
    for inc in incs:
        s.append(inc)  # the last one also writes full.5
    s.close()
    inc5, full5 = (ref / "inc.0000000005").read_bytes(), (ref / "full.0000000005").read_bytes()
    for name, record, renamed_inc, want in (("inc.0000000005", inc5, False, 4),
                                            ("full.0000000005", full5, True, 5)):
        for cut in sorted({0, 1, 11, 12, len(record) // 2, len(record) - 1, len(record)}):
            d = tmp_path / f"{name}-{cut}"
            s = MonStore.create(d, maps[0], full_every=4)
            for inc in incs[:3]:
                s.append(inc)
            s.close()
            if renamed_inc:
                (d / "inc.0000000005").write_bytes(inc5)
            (d / (name + ".tmp")).write_bytes(record[:cut])
            s = MonStore.open(d, full_every=4)
            assert s.osdmap == maps[want - 1] and s.incrementals[-1].epoch == want
            assert not any(f.endswith(".tmp") for f in files(d))
            s.close()


def make_damaged(tmp_path: Path) -> Path:
    maps, incs = gen_history(random.Random(9), 6)
    d = tmp_path / "mon"
    s = MonStore.create(d, maps[0], full_every=100)
    for inc in incs:
        s.append(inc)
    s.close()
    return d


@pytest.mark.parametrize("damage", ["flip", "truncate", "gap", "wrong epoch"])
def test_damaged_files_are_refused_not_skipped(tmp_path: Path, damage: str) -> None:
    d = make_damaged(tmp_path)
    f = d / "inc.0000000004"
    if damage == "flip":
        b = bytearray(f.read_bytes())
        b[-1] ^= 1
        f.write_bytes(b)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-3])
    elif damage == "gap":
        f.unlink()
    else:
        f.write_bytes((d / "inc.0000000005").read_bytes())
    with pytest.raises(MonStoreError) as ei:
        MonStore.open(d)
    assert ei.value.errno == errno.EIO, str(ei.value)


FAILING_WRITE = textwrap.dedent("""
    import errno, resource, signal, sys
    from rbdpy.maps.incremental import Incremental, OsdChange
    from rbdpy.maps.osdmap import OSDMap
    from rbdpy.mon.store import MonStore, MonStoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    s = MonStore.create(sys.argv[1], OSDMap(epoch=1), full_every=1)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    done = 1
    try:
        while True:  # each epoch adds an OSD with a long host name: the full map grows
            e = s.osdmap.epoch + 1
            i = e - 2
            s.append(Incremental(e, new_osds=(i,), osds={i: OsdChange(
                up=True, addr=("h" * 200, 6800), nonce=1)}))
            done = e
    except MonStoreError as err:
        print(done, err.errno)
    try:
        s.append(Incremental(s.osdmap.epoch + 1))
    except MonStoreError as err:
        print(err.errno, "restart" in str(err))
""")


def test_a_failed_write_stops_the_store(tmp_path: Path) -> None:
    """A real write failure (RLIMIT_FSIZE: EFBIG from the kernel): a typed error, no further
    appends, and a reopen finds the epochs whose append returned (plus, perhaps, the one
    whose incremental was durable before the full map failed)."""
    d = tmp_path / "mon"
    r = subprocess.run([sys.executable, "-c", FAILING_WRITE, str(d)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    done, err = map(int, first.split())
    assert err == errno.EFBIG and done > 5
    assert second == f"{errno.EIO} True"
    s = MonStore.open(d)
    assert s.osdmap.epoch in (done, done + 1) and len(s.osdmap.osds) == s.osdmap.epoch - 1
    s.close()


# -- real crashes -----------------------------------------------------------------------------


def run_child_and_kill(path: Path, seed: int, keep: int, full_every: int,
                       delay: float) -> tuple[int, int, str]:
    """Run the workload and SIGKILL it ``delay`` s after it opened the store (or while it
    opens, if negative); return (epoch it opened at, last durable epoch it printed,
    stderr)."""
    proc = subprocess.Popen([sys.executable, str(HERE / "store_crash_child.py"), str(path),
                             str(seed), str(keep), str(full_every)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = b""
    try:
        if delay < 0:
            time.sleep(-delay)
        else:
            line = proc.stdout.readline()
            assert line.startswith(b"R "), (line, proc.stderr.read())
            time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        out, errout = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert alive or delay < 0, errout.decode()
    opened, durable = -1, 0
    for ln in (line + out).decode().splitlines():
        if ln.startswith("C "):
            durable = max(durable, int(ln.split()[1]))
        elif ln.startswith("R "):
            opened = int(ln.split()[1])
    return opened, durable, errout.decode()


def test_kill9_resumes_at_the_last_durable_epoch_or_later(tmp_path: Path) -> None:
    seed = int(os.environ.get("RBDPY_CRASH_SEED", "20261202"))
    rnd = random.Random(seed)
    path = tmp_path / "mon"
    keep, full_every = rnd.randint(2, 12), rnd.randint(1, 9)
    last = 1
    deadline = time.monotonic() + 20
    runs = 0
    while runs < 10 and (runs < 5 or time.monotonic() < deadline):
        delay = rnd.choice([rnd.uniform(0.01, 0.3), rnd.uniform(0.3, 1.0),
                            -rnd.uniform(0.05, 0.4)])
        opened, durable, errout = run_child_and_kill(path, seed, keep, full_every, delay)
        assert "Traceback" not in errout, errout
        if not MonStore.exists(path):  # killed before its first map was durable
            assert durable == 0 and opened < 0
            continue
        s = MonStore.open(path, keep=keep, full_every=full_every)
        try:
            e = s.osdmap.epoch
            assert e >= durable and e >= last and e >= opened  # never goes back
            maps, incs = crash_child.model(seed, e)
            assert s.osdmap == maps[-1]  # the map intact, exactly the one of its epoch
            kept = s.incrementals
            assert kept and kept[-1].epoch == e and len(kept) <= keep
            assert list(kept) == incs[len(incs) - len(kept):]
            assert len(kept) == min(keep, e - 1)
            names = files(path)
            assert sum(n.startswith("full.") for n in names) == 1
            assert not any(n.endswith(".tmp") for n in names)
        finally:
            s.close()
        last = e
        runs += 1
    assert last > 30, last
