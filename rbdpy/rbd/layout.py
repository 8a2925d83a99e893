"""Image byte ranges → object extents (Ceph's file_to_extents), pure and allocation-light.

With the default layout (stripe unit = object size, stripe count 1) a range maps to one
extent per object it touches. Fancy striping spreads stripe units round-robin over
``stripe_count`` objects of an object set. Each extent remembers which slices of the caller's
buffer it covers, so the I/O path can hand those slices to the messenger without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Layout:
    order: int = 22
    stripe_unit: int = 0  # 0: the object size
    stripe_count: int = 1

    def __post_init__(self) -> None:
        if not 12 <= self.order <= 25:
            raise ValueError(f"order {self.order} outside 12..25 (4 KiB..32 MiB objects)")
        su = self.su
        if su <= 0 or self.object_size % su or su % 512:
            raise ValueError("stripe unit must divide the object size and be a multiple of 512")
        if self.stripe_count < 1:
            raise ValueError("stripe count must be at least 1")

    @property
    def object_size(self) -> int:
        return 1 << self.order

    @property
    def su(self) -> int:
        return self.stripe_unit or self.object_size


@dataclass
class ObjectExtent:
    objectno: int
    offset: int
    length: int
    buffer_extents: list[tuple[int, int]] = field(default_factory=list)
    """(offset in the caller's buffer, length) pieces, in object order."""


def map_extents(layout: Layout, offset: int, length: int) -> list[ObjectExtent]:
    """Object extents for image bytes [offset, offset+length), sorted by object number."""
    su, sc = layout.su, layout.stripe_count
    stripes_per_object = layout.object_size // su
    by_obj: dict[int, ObjectExtent] = {}
    pos, end, buf_off = offset, offset + length, 0
    while pos < end:
        blockno, block_off = divmod(pos, su)
        stripeno, stripepos = divmod(blockno, sc)
        objectsetno, stripe_in_obj = divmod(stripeno, stripes_per_object)
        objectno = objectsetno * sc + stripepos
        obj_off = stripe_in_obj * su + block_off
        n = min(su - block_off, end - pos)
        ex = by_obj.get(objectno)
        if ex is not None and ex.offset + ex.length == obj_off:
            ex.length += n
            last_off, last_len = ex.buffer_extents[-1]
            if last_off + last_len == buf_off:
                ex.buffer_extents[-1] = (last_off, last_len + n)
            else:
                ex.buffer_extents.append((buf_off, n))
        else:
            # a contiguous image range always lands contiguously in each object
            assert ex is None, "non-contiguous object extent"
            by_obj[objectno] = ObjectExtent(objectno, obj_off, n, [(buf_off, n)])
        pos += n
        buf_off += n
    return sorted(by_obj.values(), key=lambda e: (e.objectno, e.offset))
