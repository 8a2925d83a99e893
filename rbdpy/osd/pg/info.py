"""PG info (Ceph's ``pg_info_t``, reduced): the summary an OSD gives of its copy of a PG when
a peering primary asks, and the part of it kept on disk."""

from __future__ import annotations

from dataclasses import dataclass

from rbdpy.osd.pg.codec import Reader, Writer
from rbdpy.osd.pg.log import Version

_INFO_V1 = 1


@dataclass(frozen=True, slots=True)
class PGInfo:
    """``last_update``: the newest entry in the log; ``last_complete``: every object is
    present up to it; ``log_tail``: the log holds the entries after it; ``les`` (last epoch
    started): the first epoch of the last interval this copy was activated in;
    ``last_backfill``: backfill has brought the objects up to this name (None: all, the copy is
    complete; ""  : none yet). Only a complete copy can be authoritative or a peering source."""

    pgid: int
    last_update: Version
    last_complete: Version
    log_tail: Version
    les: int
    last_backfill: str | None

    @property
    def complete(self) -> bool:
        return self.last_backfill is None

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_INFO_V1)
        w.u32(self.pgid)
        w.version(self.last_update)
        w.version(self.last_complete)
        w.version(self.log_tail)
        w.u32(self.les)
        w.opt_str(self.last_backfill)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> PGInfo:
        r = Reader(data, "pg info")
        r.magic(_INFO_V1)
        info = cls(r.u32(), Version(*r.version()), Version(*r.version()),
                   Version(*r.version()), r.u32(), r.opt_str())
        r.done()
        return info
