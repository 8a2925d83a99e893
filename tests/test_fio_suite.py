"""bench/fio_suite.py end to end, small: it runs as users run it, ratios and costs come out.

Nothing here checks a speed: the suite's figures are for people to read. What is checked is
that the suite works (a ceiling and rbdpy both serve fio, the qemu-img round trip copies the
source back byte for byte) and that its report holds what it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.nbd.conftest import needs_nbdkit

ROOT = Path(__file__).resolve().parent.parent

pytestmark = needs_nbdkit


def test_suite_reports_ratios_and_costs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fio_suite.py"), "--runtime", "3",
         "--region", "64M", "--targets", "memory,rbdpy", "--jobs", "4k-randwrite-qd32",
         "--convert-size", "8M", "--convert-repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "RBDPY_LOG": "warning"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "fio_suite.json").read_text())
    job = summary["results"]["rbdpy"]["4k randwrite qd32"]
    assert job["iops"] > 0
    # the cost of a request is sampled from /proc for nbdkit and for the OSD
    assert set(job["cost"]) == {"nbdkit", "osd"}
    assert job["cost"]["nbdkit"]["cpu_us"] > 0 and job["cost"]["osd"]["cpu_us"] > 0
    assert job["cost"]["nbdkit"]["switches"] > 0
    assert job["flush_ms_mean"] > 0  # fio flushed every 256 writes, and each one waited
    assert set(summary["results"]["memory"]["4k randwrite qd32"]["cost"]) == {"nbdkit"}
    assert summary["ratios"]["4k randwrite qd32"]["memory"] == round(
        job["iops"] / summary["results"]["memory"]["4k randwrite qd32"]["iops"], 3)
    assert summary["convert"]["rbdpy"]["verified"] and summary["convert"]["memory"]["verified"]
    assert "Cost per request" in out.stdout
    assert (tmp_path / "fio_suite.png").stat().st_size > 0
