"""BufferPool: receive buffers for data sections no upper layer claimed, reused safely.

Why: an OSD gets every write's payload this way (``alloc_data`` returns None: the data lands
in fresh memory and the store writes from it). A fresh multi-MiB ``bytearray`` per message is
an mmap plus a page fault per 4 KiB touched; on the 2-core test box that was ~23% of the
OSD's Python time during a large sequential write (qemu-img convert). Reusing buffers avoids
both.

Safety by construction: a buffer goes back on the free list only when nothing references it
any more. The pool lends it under a token; when the messenger is done dispatching the
message, it hands the token back, and the pool checks the buffer's reference count: any
surviving memoryview (a slice kept by the dispatcher, a payload in a retained message, an
op's data) holds a reference, and then the buffer is simply not reused (left to the garbage
collector). So a dispatcher may keep what it likes; it only loses the reuse.
"""

from __future__ import annotations

import sys

POOL_MIN = 64 << 10  # smaller data sections are cheap to allocate: not pooled


class BufferPool:
    """Free lists of power-of-two ``bytearray`` buffers, at most ``max_bytes`` kept idle."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._lent: dict[int, bytearray] = {}
        self._idle = 0
        self.reused = 0
        self.allocated = 0
        self.refused = 0  # given back while still referenced: dropped, never reused

    @staticmethod
    def size_class(n: int) -> int:
        return max(POOL_MIN, 1 << (n - 1).bit_length())

    def take(self, n: int) -> tuple[int, memoryview]:
        """A buffer for ``n`` bytes: (token for ``give_back``, a view of exactly n bytes)."""
        size = self.size_class(n)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            self._idle -= size
            self.reused += 1
        else:
            buf = bytearray(size)
            self.allocated += 1
        token = id(buf)
        self._lent[token] = buf
        return token, memoryview(buf)[:n]

    def give_back(self, token: int) -> None:
        """The lender is done: reuse the buffer if no view of it survives, else drop it."""
        if not self.try_give_back(token):
            self.refused += 1
            self.forget(token)

    def try_give_back(self, token: int) -> bool:
        """Back on the free list if no view of the buffer survives (True); else it stays
        lent (False), so the lender can try again later or ``forget`` it."""
        buf = self._lent.get(token)
        if buf is None:
            return True
        # references now: the _lent entry, ``buf`` here and getrefcount's argument; any live
        # memoryview (slices included: they share one managed buffer) adds one
        if sys.getrefcount(buf) > 3:
            return False
        del self._lent[token]
        if self._idle + len(buf) <= self.max_bytes:
            self._free.setdefault(len(buf), []).append(buf)
            self._idle += len(buf)
        return True

    def forget(self, token: int) -> None:
        """Stop tracking a lent buffer; it is never reused (the garbage collector has it)."""
        self._lent.pop(token, None)

    @property
    def lent(self) -> int:
        return len(self._lent)
