"""The OSD tests' fixture: one started OSD process from ``osd_process`` (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def osd(osd_process):
    """A running OSD (an ``OSDProc``: port, data, start/kill9/stop); stopped at teardown."""
    o = osd_process()
    o.start()
    return o
