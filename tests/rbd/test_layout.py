"""Image ranges map to object extents that tile the range exactly, with no overlap."""

from hypothesis import given
from hypothesis import strategies as st

from rbdpy.rbd.layout import Layout, map_extents


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    order = draw(st.integers(12, 16))
    su_shift = draw(st.integers(9, order))
    return Layout(order=order, stripe_unit=1 << su_shift, stripe_count=draw(st.integers(1, 4)))


def image_offset(layout: Layout, objectno: int, obj_off: int) -> int:
    """The inverse mapping, written independently of map_extents."""
    su, sc = layout.su, layout.stripe_count
    per_obj = layout.object_size // su
    objectsetno, stripepos = divmod(objectno, sc)
    stripe_in_obj, block_off = divmod(obj_off, su)
    stripeno = objectsetno * per_obj + stripe_in_obj
    return (stripeno * sc + stripepos) * su + block_off


@given(layouts(), st.integers(0, 1 << 22), st.integers(0, 1 << 18))
def test_extents_tile_the_range(layout: Layout, offset: int, length: int) -> None:
    covered = bytearray(length)
    for ex in map_extents(layout, offset, length):
        assert ex.offset >= 0 and ex.offset + ex.length <= layout.object_size
        assert sum(n for _, n in ex.buffer_extents) == ex.length
        obj_off = ex.offset
        for buf_off, n in ex.buffer_extents:
            for k in (0, n - 1):  # both ends of each piece map back to the right image byte
                assert image_offset(layout, ex.objectno, obj_off + k) == offset + buf_off + k
            assert not any(covered[buf_off : buf_off + n])
            covered[buf_off : buf_off + n] = b"\x01" * n
            obj_off += n
    assert all(covered)


def test_default_layout_one_extent_per_object() -> None:
    exts = map_extents(Layout(order=22), (4 << 20) - 10, 20)
    assert [(e.objectno, e.offset, e.length) for e in exts] == [(0, (4 << 20) - 10, 10), (1, 0, 10)]
    assert exts[1].buffer_extents == [(10, 10)]


def test_bad_layouts_rejected() -> None:
    import pytest

    for kw in ({"order": 11}, {"order": 26}, {"order": 20, "stripe_unit": 3000}):
        with pytest.raises(ValueError):
            Layout(**kw)
