"""Quick throughput check of the object store alone (not a test): python store_bench.py [dir]."""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time

from rbdpy.osd.store import ObjectStore, Transaction

OBJ = 4 << 20


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else None
    d = tempfile.mkdtemp(prefix="storebench.", dir=base)
    try:
        s = ObjectStore(d)
        rnd = random.Random(1)
        nobj = 64  # a 256 MiB image
        blk = os.urandom(4096)
        n = 20000
        t = time.perf_counter()
        for i in range(n):
            off = rnd.randrange(nobj * OBJ // 4096) * 4096
            s.apply(f"rbd_data.1.{off // OBJ:016x}", Transaction().write(off % OBJ, blk))
            if i % 256 == 255:
                s.commit()
        s.commit()
        dt = time.perf_counter() - t
        print(f"4 KiB random writes, commit/256: {n / dt:8.0f} ops/s")

        mib = memoryview(os.urandom(1 << 20))
        total = 512
        for what in ("new objects", "overwrite"):
            t = time.perf_counter()
            for i in range(total):
                off = (i << 20) + (256 << 20)
                s.apply(f"rbd_data.1.{off // OBJ:016x}", Transaction().write(off % OBJ, mib))
                if i % 16 == 15:
                    s.commit()
            s.commit()
            dt = time.perf_counter() - t
            print(f"1 MiB sequential writes ({what}): {total / dt:5.0f} MB/s, commit/16")

        n = 50000
        t = time.perf_counter()
        buf = bytearray(4096)
        for _ in range(n):
            off = rnd.randrange(nobj * OBJ // 4096) * 4096
            s.read(f"rbd_data.1.{off // OBJ:016x}", off % OBJ, 4096, memoryview(buf))
        dt = time.perf_counter() - t
        print(f"4 KiB random reads:              {n / dt:8.0f} ops/s")

        t = time.perf_counter()
        for i in range(total):
            off = (i << 20) + (256 << 20)
            s.read(f"rbd_data.1.{off // OBJ:016x}", off % OBJ, 1 << 20)
        dt = time.perf_counter() - t
        print(f"1 MiB reads:                     {total / dt:8.0f} MB/s")
        t = time.perf_counter()
        s.close()
        print(f"close (checkpoint):              {time.perf_counter() - t:8.3f} s")
        t = time.perf_counter()
        s = ObjectStore(d)
        print(f"reopen:                          {time.perf_counter() - t:8.3f} s")
        s.close()
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
