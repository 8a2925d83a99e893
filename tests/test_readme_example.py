"""The README's Python examples, verbatim, next to the README's main flow: ``rbdpy up``
serving ``disk0`` (which holds that image's exclusive lock).

The example used to open ``disk0`` for writing, which fails while ``rbdpy up`` runs ("image
disk0 is in use"): the one thing a README reader has just started. Each ```` ```python ````
block of README.md runs in order, as a reader would paste it, in a directory whose
``rbdpy-data`` is the data directory of a real ``rbdpy up``.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_readme_has_python_examples() -> None:
    blocks = python_blocks(README.read_text())
    assert blocks and all("rbdpy" in b for b in blocks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit missing")
def test_the_readme_python_examples_run_next_to_rbdpy_up(tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text())
    up = subprocess.Popen([sys.executable, "-m", "rbdpy.cli", "up", "--port",
                           str(_free_port()), "--size", "64M"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            out.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "serving image" not in "".join(out):
            assert up.poll() is None and time.monotonic() < deadline, "".join(out)
            time.sleep(0.05)
        for i, code in enumerate(blocks):
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"README python block {i + 1}:\n{code}\n{r.stderr}"
        assert up.poll() is None, "".join(out)  # the server kept serving meanwhile
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        reader.join(30)
    assert up.returncode == 0, "".join(out)
