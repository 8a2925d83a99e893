"""rbdpy.rbd.transfer: import/export through the blocking client against a real OSD process."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rbdpy.client.rados import Rados
from rbdpy.config import ClusterConfig
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd import transfer
from rbdpy.rbd.image import whole_sectors
from rbdpy.testing import single_osd_map

MIB = 1 << 20


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3 * transfer.BLOCK)), max_size=12))
def test_nonzero_runs_cover_exactly_the_nonzero_blocks(parts: list[tuple[bool, int]]) -> None:
    buf = bytearray()
    for filled, n in parts:
        buf += (b"\x01" * n) if filled else bytes(n)
    runs = transfer.nonzero_runs(memoryview(buf))
    covered = bytearray(len(buf))
    for s, e in runs:
        assert 0 <= s < e <= len(buf) and s % transfer.BLOCK == 0
        covered[s:e] = buf[s:e]
    assert covered == buf  # nothing non-zero left out
    for (_, e1), (s2, _) in zip(runs, runs[1:]):
        assert e1 < s2  # merged, ordered
    for s, e in runs:  # every block inside a run holds something
        for b in range(s, e, transfer.BLOCK):
            assert any(buf[b : b + transfer.BLOCK])


def _source(path: Path, layout: list[tuple[str, int]], seed: int = 1) -> bytes:
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(n) if kind == "data" else bytes(n) for kind, n in layout)
    path.write_bytes(data)
    return data


def _rados(port: int) -> Rados:
    return Rados(ClusterConfig(Path("unused.toml"), single_osd_map(port), {}), pool="rbd")


def test_import_then_export_is_identical_and_sparse(osd_process, tmp_path: Path) -> None:
    osd = osd_process()
    osd.start()
    src = tmp_path / "src.raw"
    # unaligned everywhere; a zero object in the middle; zero blocks inside a data object
    want = _source(src, [("data", MIB + 100), ("zero", 5 * MIB), ("data", 3000),
                         ("zero", 2 * MIB - 3000), ("data", MIB), ("zero", 4096 * 3),
                         ("data", 777)])
    seen: list[tuple[int, int | None]] = []
    r = _rados(osd.port)
    try:
        rbdapi.create_image(r, "img", whole_sectors(len(want)), order=21)  # as rbdpy import
        img = rbdapi.open_image(r, "img")
        fd = os.open(src, os.O_RDONLY)
        try:
            size = transfer.source_size(fd)
            assert size == len(want) and os.lseek(fd, 0, os.SEEK_CUR) == 0  # still at 0
            stats = transfer.import_into(img, fd, size, lambda d, t: seen.append((d, t)))
        finally:
            os.close(fd)
        assert stats.bytes == len(want)
        assert stats.written < len(want) - 6 * MIB  # the zero runs were not sent
        assert seen[-1] == (len(want), len(want))
        assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
        # object 1 (2-4 MiB) held only zeros: it does not exist
        assert img.extents(2 * MIB, 2 * MIB) == [(2 * MIB, 2 * MIB, False)]
        assert img.du() < len(want) - 6 * MIB
        img.close()

        img = rbdapi.open_image(r, "img", read_only=True)
        dst = tmp_path / "dst.raw"
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            stats = transfer.export_from(img, fd)
        finally:
            os.close(fd)
        assert dst.read_bytes() == want + bytes(-len(want) % 512)  # zeros to the sector end
        assert stats.written < len(want) - 6 * MIB
        assert os.stat(dst).st_blocks * 512 < len(want) - 6 * MIB  # holes, not written zeros
    finally:
        r.close()


def test_a_pipe_in_and_out(osd_process, tmp_path: Path) -> None:
    """Size unknown on the way in (the image grows, then is cut to the stream's length);
    every byte in order on the way out."""
    osd = osd_process()
    osd.start()
    want = _source(tmp_path / "src.raw", [("data", 3 * MIB + 5), ("zero", 4 * MIB),
                                          ("data", 10)], seed=2)
    r = _rados(osd.port)
    try:
        rbdapi.create_image(r, "img", 0, order=20)
        img = rbdapi.open_image(r, "img")
        feeder = subprocess.Popen(["cat", str(tmp_path / "src.raw")], stdout=subprocess.PIPE)
        pipe = feeder.stdout.fileno()  # type: ignore[union-attr]
        try:
            assert transfer.source_size(pipe) is None
            stats = transfer.import_into(img, pipe, None)
        finally:
            feeder.stdout.close()  # type: ignore[union-attr]
            feeder.wait()
        assert stats.bytes == len(want) and img.size == whole_sectors(len(want))
        rd, wr = os.pipe()
        with open(tmp_path / "out.raw", "wb") as sink:
            reader = subprocess.Popen(["cat"], stdin=rd, stdout=sink)
        os.close(rd)
        try:
            transfer.export_from(img, wr)
        finally:
            os.close(wr)
            reader.wait()
        out = (tmp_path / "out.raw").read_bytes()
        assert out == want + bytes(-len(want) % 512)
        assert np.frombuffer(out[3 * MIB + 5 : 7 * MIB + 5], np.uint8).max() == 0
    finally:
        r.close()
