"""How a PG's state is kept on disk: key/value pairs (an omap, or the xattrs of one metadata
object per PG), changed by ``MetaTxn`` deltas so that a write costs one entry, not the log.

Keys: ``info`` (les and last_backfill), ``tail`` (the log's tail), ``log.<version>`` (one per
entry), ``dup.<version>`` (one per dup), ``missing.<oid>`` (one per missing item). Versions are
written as fixed-width hex, so the keys sort in version order.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass

from rbdpy.osd.pg.codec import Reader, Writer
from rbdpy.osd.pg.errors import PGDecodeError, PGError
from rbdpy.osd.pg.log import (
    DEFAULT_MAX_DUPS,
    ZERO,
    Dup,
    LogEntry,
    Missing,
    MissingItem,
    PGLog,
    Version,
)

_STATE_V1 = 1
K_INFO = "info"
K_TAIL = "tail"
P_LOG = "log."
P_DUP = "dup."
P_MISSING = "missing."


def vkey(prefix: str, v: Version) -> str:
    return f"{prefix}{v.epoch:08x}{v.counter:016x}"


@dataclass(frozen=True)
class MetaRecord:
    """One atomic change to a PG's metadata: keys to set, then keys to remove."""

    set: Mapping[str, bytes]
    rm: tuple[str, ...]


class MetaTxn:
    """Collects key changes; the last change to a key wins."""

    def __init__(self) -> None:
        self._set: dict[str, bytes] = {}
        self._rm: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._set or self._rm)

    def put(self, key: str, value: bytes) -> None:
        self._set[key] = value
        self._rm.discard(key)

    def delete(self, key: str) -> None:
        self._set.pop(key, None)
        self._rm.add(key)

    def info(self, les: int, last_backfill: str | None) -> None:
        w = Writer()
        w.u8(_STATE_V1)
        w.u32(les)
        w.opt_str(last_backfill)
        self.put(K_INFO, w.bytes())

    def tail(self, v: Version) -> None:
        w = Writer()
        w.version(v)
        self.put(K_TAIL, w.bytes())

    def entry(self, e: LogEntry) -> None:
        self.put(vkey(P_LOG, e.version), e.encode())

    def trimmed(self, gone: list[LogEntry], dropped: list[Dup], log: PGLog) -> None:
        """What ``PGLog.trim`` did: entries out, their dups in, the oldest dups out."""
        for e in gone:
            self.delete(vkey(P_LOG, e.version))
            if e.reqid is not None:
                self.put(vkey(P_DUP, e.version), Dup(e.reqid, e.version, e.result).encode())
        for d in dropped:
            self.delete(vkey(P_DUP, d.version))
        self.tail(log.tail)

    def missing(self, oid: str, item: MissingItem | None) -> None:
        if item is None:
            self.delete(P_MISSING + oid)
        else:
            self.put(P_MISSING + oid, item.encode())

    def replace_log(self, old: PGLog, new: PGLog) -> None:
        """Every key of ``old`` that ``new`` lacks goes, every one of ``new`` is written."""
        keep = {vkey(P_LOG, e.version) for e in new.entries}
        keep_dups = {vkey(P_DUP, d.version) for d in new.dups}
        for e in old.entries:
            k = vkey(P_LOG, e.version)
            if k not in keep:
                self.delete(k)
        for d in old.dups:
            k = vkey(P_DUP, d.version)
            if k not in keep_dups:
                self.delete(k)
        for e in new.entries:
            if old.get(e.version) != e:
                self.entry(e)
        old_dups = {d.version: d for d in old.dups}
        for d in new.dups:
            if old_dups.get(d.version) != d:
                self.put(vkey(P_DUP, d.version), d.encode())
        self.tail(new.tail)

    def replace_missing(self, old: Missing, new: Missing) -> None:
        for oid in old:
            if oid not in new:
                self.missing(oid, None)
        for oid, item in new.items():
            if old.get(oid) != item:
                self.missing(oid, item)

    def record(self) -> MetaRecord:
        return MetaRecord(dict(self._set), tuple(sorted(self._rm)))


def initial(log: PGLog, missing: Missing, les: int, last_backfill: str | None) -> MetaRecord:
    """The full metadata of a PG state (a new PG, or a test's)."""
    t = MetaTxn()
    t.info(les, last_backfill)
    t.replace_log(PGLog(log.tail), log)
    t.replace_missing(Missing(), missing)
    return t.record()


@dataclass
class Loaded:
    log: PGLog
    missing: Missing
    les: int
    last_backfill: str | None


def load(kv: Mapping[str, bytes], max_dups: int = DEFAULT_MAX_DUPS) -> Loaded:
    """A PG's state from its keys (none: a PG this OSD never had: empty and complete).
    PGDecodeError when a value does not decode or the entries do not form a log."""
    les, last_backfill = 0, None
    if K_INFO in kv:
        r = Reader(kv[K_INFO], "pg state")
        r.magic(_STATE_V1)
        les = r.u32()
        last_backfill = r.opt_str()
        r.done()
    tail = ZERO
    if K_TAIL in kv:
        r = Reader(kv[K_TAIL], "pg log tail")
        tail = Version(*r.version())
        r.done()
    entries, dups, missing = [], [], Missing()
    for k in sorted(kv):
        if k.startswith(P_LOG):
            e = LogEntry.decode(kv[k])
            if vkey(P_LOG, e.version) != k:
                raise PGDecodeError(f"log entry {e.version} under key {k!r}", errno.EINVAL)
            entries.append(e)
        elif k.startswith(P_DUP):
            dups.append(Dup.decode(kv[k]))
        elif k.startswith(P_MISSING):
            missing[k[len(P_MISSING):]] = MissingItem.decode(kv[k])
    if entries and entries[0].version <= tail:
        raise PGDecodeError("pg log: an entry at or before the tail", errno.EINVAL)
    try:
        log = PGLog(tail, entries, sorted(dups, key=lambda d: d.version),
                    max(max_dups, len(dups)))
    except PGError as e:  # versions out of order
        raise PGDecodeError(f"pg log: {e}", errno.EINVAL) from None
    return Loaded(log, missing, les, last_backfill)
