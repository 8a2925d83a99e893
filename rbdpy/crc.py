"""crc32c for every section of every message and every stored block.

The data path uses the hardware-accelerated ``crc32c`` package; ``crcmod`` is the reference
implementation (tests compare the two) and the fallback when the fast one is missing.
Both take any bytes-like object, memoryview slices included, so no data is copied.
The API is incremental: ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import crcmod.predefined

Buffer = bytes | bytearray | memoryview
"""Any bytes-like object (``collections.abc.Buffer`` arrives only in 3.12)."""

_reference_fn = crcmod.predefined.mkPredefinedCrcFun("crc-32c")


def crc32c_reference(data: Buffer, crc: int = 0) -> int:
    """crcmod's crc32c, the reference implementation."""
    return _reference_fn(data, crc)


try:  # the fast path; about 50x faster than crcmod's C extension on 4 MiB here
    import crc32c as _fast

    # crc32c(data, crc=0): of ``data`` continuing from ``crc`` (0 to start). The C function
    # itself, not a wrapper: it runs several times per message and per stored block, and a
    # Python frame costs about as much as the crc of 4 KiB.
    crc32c = _fast.crc32c

    IMPLEMENTATION = "crc32c"
except ImportError:  # pragma: no cover - exercised by tests via crc32c_reference
    crc32c = crc32c_reference
    IMPLEMENTATION = "crcmod"


def crc32c_segments(segments: Iterable[Buffer], crc: int = 0) -> int:
    """crc32c over a sequence of buffers as if they were one."""
    for seg in segments:
        crc = crc32c(seg, crc)
    return crc
