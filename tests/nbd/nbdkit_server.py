"""nbdkit run directly with the rbdpy plugin, in the foreground, its stderr kept in a file:
the server's own lines (startup errors, waits for OSDs, fencing, stop) are what these
tests read. Stopped by its PID."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.procs import stop_pid, wait_for

PLUGIN = Path(__file__).resolve().parents[2] / "nbdplugin" / "rbdpy_nbd.py"
NBDSH = ["/usr/bin/python3", "-m", "nbd"]  # Debian's interpreter has libnbd's bindings


class Nbdkit:
    """``nbdkit -f -U SOCK python rbdpy_nbd.py cluster=DATA PARAMS...``."""

    def __init__(self, root: Path, data: Path, *params: str, name: str = "srv") -> None:
        self.sock = root / f"{name}.sock"
        self.log = root / f"{name}.stderr"
        self.sock.unlink(missing_ok=True)
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                ["nbdkit", "-f", "-U", str(self.sock), "python", str(PLUGIN),
                 f"cluster={data}", *params], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(self.sock, timeout=60)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"nbdkit did not start: {self.stderr()}") from None

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_line(self, text: str, timeout: float = 60.0) -> str:
        """The first stderr line containing ``text`` (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr().splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} from nbdkit:\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_pid(self.proc.pid)
        self.proc.wait()


def nbdsh(uri: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` with ``h`` connected to ``uri`` (libnbd's nbdsh)."""
    return subprocess.run([*NBDSH, "-u", uri, "-c", script], capture_output=True, text=True,
                          timeout=timeout)


def nbdsh_bg(uri: str, script: str) -> subprocess.Popen:
    return subprocess.Popen([*NBDSH, "-u", uri, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
