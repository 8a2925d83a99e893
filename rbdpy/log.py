"""Structured, quiet-by-default logging for the daemons and the CLI.

One line per event: ``ts level logger message key=value ...``. Extra fields passed with
``extra={...}`` are appended as key=value pairs, so logs stay greppable and parseable.
"""

from __future__ import annotations

import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        extras = " ".join(
            f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD
        )
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name}: {msg}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str | int = "warning", stream=None) -> None:
    """Install the key=value handler on the ``rbdpy`` logger (idempotent)."""
    logger = logging.getLogger("rbdpy")
    for h in list(logger.handlers):
        if getattr(h, "_rbdpy", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    handler._rbdpy = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
