"""The ``Served`` helper stops what it started when it fails to start: ``served``'s teardown
never runs then, and the OSDs of its cluster were left running after the test session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import osds_of
from tests.nbd.conftest import Served, stop_osds


def test_served_stops_its_cluster_when_it_fails_to_start(tmp_path: Path) -> None:
    try:
        with pytest.raises(subprocess.CalledProcessError):
            Served(tmp_path, size="bogus")  # the cluster comes up, the image is refused
        assert not osds_of(tmp_path / "data"), "the OSDs of the failed Served still run"
    finally:
        stop_osds(tmp_path / "data")
