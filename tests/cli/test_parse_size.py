"""``parse_bytes`` / ``parse_size`` / ``parse_object_size`` (rbd's size rules) and the size
limit of the image layer."""

from __future__ import annotations

import argparse
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rbdpy.cli.common import parse_bytes, parse_object_size, parse_size
from rbdpy.osd.classes import MAX_OBJMAP_OBJECTS
from rbdpy.rbd import image as rbdimage
from rbdpy.rbd.layout import Layout

MIB = 1 << 20
UNITS = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
SPELLINGS = ["{u}", "{u}B", "{u}i", "{u}iB", "{l}", "{l}ib"]


@given(st.integers(0, 1 << 40), st.sampled_from(sorted(UNITS)), st.sampled_from(SPELLINGS))
def test_whole_sizes_round_trip(n: int, unit: str, spelling: str) -> None:
    text = f"{n}{spelling.format(u=unit, l=unit.lower())}"
    assert parse_bytes(text) == n << UNITS[unit]
    assert parse_bytes(f"{n}B") == parse_bytes(str(n)) == n
    assert parse_bytes(str(n), default_unit="M") == n * MIB  # rbd: a bare --size is MiB


@given(st.integers(0, 10**9), st.integers(1, 6), st.sampled_from(["", "B", *sorted(UNITS)]))
def test_a_fraction_is_taken_only_when_it_is_whole_bytes(
        digits: int, places: int, unit: str) -> None:
    text = f"{digits // 10**places}.{digits % 10**places:0{places}d}{unit}"
    exact = Fraction(digits, 10**places) * (1 << UNITS.get(unit, 0))
    if exact.denominator == 1:
        assert parse_bytes(text) == exact
    else:  # 1.5 bytes, 1.3K: refused, never cut (1.3K was 1331 bytes)
        with pytest.raises(argparse.ArgumentTypeError, match="not a whole number of bytes"):
            parse_bytes(text)


@pytest.mark.parametrize("text", ["", "ten", "-5", "1e3", "0x10", "4 K B", "5Q", "1..5M",
                                  "nan", "inf"])
def test_what_is_not_a_size(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="bad size"):
        parse_bytes(text)


def test_image_sizes_and_object_sizes() -> None:
    assert parse_size("100") == 100 * MIB
    assert parse_size("1536B") == 1536
    assert parse_size("1.5") == 3 * MIB // 2
    assert parse_size("1P") == rbdimage.MAX_SIZE
    for bad, why in [("1331B", "not a multiple of 512"), ("1.3K", "not a whole number"),
                     ("100P", "over the limit of 1 PiB"), ("1E", "over the limit of 1 PiB")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse_size(bad)
    assert parse_object_size("4096") == 4096  # bare: bytes, as rbd's --object-size
    assert parse_object_size("4M") == 4 * MIB
    assert parse_object_size("32M") == 32 * MIB
    for bad in ["0", "2K", "3M", "64M", "4097"]:
        with pytest.raises(argparse.ArgumentTypeError, match=r"power of two from 4K to 32M"):
            parse_object_size(bad)


def test_the_size_limit_is_the_object_maps() -> None:
    """2^28 objects (one bit each in a 32 MiB map object, which the OSD also holds to) and
    1 PiB; small objects reach the first limit sooner."""
    assert rbdimage.MAX_OBJECTS == MAX_OBJMAP_OBJECTS
    assert rbdimage.size_limit(Layout(22)) == rbdimage.MAX_SIZE == 1 << 50
    assert rbdimage.size_limit(Layout(25)) == 1 << 50
    assert rbdimage.size_limit(Layout(12)) == 1 << 40
    for order, sc, su in [(12, 3, 1024), (16, 7, 4096), (20, 1, 0), (13, 5, 8192)]:
        lay = Layout(order, su, sc)
        limit = rbdimage.size_limit(lay)
        assert rbdimage._objects_for(limit, lay) <= rbdimage.MAX_OBJECTS
        assert limit == rbdimage.MAX_SIZE or \
            rbdimage._objects_for(limit + 512, lay) > rbdimage.MAX_OBJECTS
