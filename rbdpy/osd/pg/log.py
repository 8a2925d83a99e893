"""The PG log (Ceph's ``PGLog``): the ordered record of a placement group's recent writes.

Every write the primary orders gets a version ``(epoch, counter)``: the epoch of the map the
primary assigned it in and a counter that only grows. Each log entry names the object, the
kind of change, the object's version before it (``prior_version``), and the client's reqid
with the result returned, so a resent request is answered from the log (``lookup``) instead of
being applied twice. Trimmed entries leave their reqid behind as a *dup* for the same reason.

The log also drives recovery. ``last_update`` is the newest entry; objects whose newest data
this OSD lacks are its *missing set* (oid -> the version needed, the version held); everything
up to ``last_complete`` is present. When peering picks an authoritative log, ``merge_log``
brings a replica's log in line: its *divergent* entries (newer than the authoritative head, or
absent from it: writes that never committed) are rolled back, which marks their objects missing
at their authoritative version (or to be removed, when the authoritative history has no such
object), and entries it lacks mark their objects missing. Logs that do not overlap cannot be
merged: that peer is backfilled instead.

Encodings (``encode``/``decode`` here and on ``LogEntry``, ``Missing``) are little-endian and
versioned; malformed bytes raise PGDecodeError only.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from rbdpy.osd.pg.codec import Reader, Writer
from rbdpy.osd.pg.errors import PGDecodeError, PGError
from rbdpy.proto.ops import MAX_OID

MAX_EPOCH = 2**32 - 1
MAX_COUNTER = 2**64 - 1
DEFAULT_MAX_DUPS = 3000  # Ceph's osd_pg_log_dups_tracked

# encoding tags: one byte up front, so a later format can be told apart
_ENTRY_V1 = 1
_LOG_V1 = 1
_MISSING_V1 = 1
_DUP_V1 = 1


class Version(NamedTuple):
    """A PG version: the epoch the primary assigned it in, then a counter that only grows.
    Tuples compare in that order, so a newer interval's writes sort after an older one's."""

    epoch: int
    counter: int

    def __str__(self) -> str:
        return f"{self.epoch}'{self.counter}"


ZERO = Version(0, 0)
ReqId = tuple[int, int, int, int]  # entity type, entity num, incarnation, tid (as the OSD's)


class OpKind(enum.IntEnum):
    """What an entry did to its object. ERROR entries change nothing but keep a failed
    write's result, so a resend gets the same error."""

    MODIFY = 1
    DELETE = 2
    ERROR = 3


def check_oid(oid: str) -> None:
    if not isinstance(oid, str) or not oid or len(oid.encode()) > MAX_OID:
        raise PGError(f"bad object name {oid!r}")


def check_version(v: Version) -> None:
    if not (0 <= v.epoch <= MAX_EPOCH and 0 <= v.counter <= MAX_COUNTER):
        raise PGError(f"version {v} out of range")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One write in a PG's history."""

    version: Version
    oid: str
    kind: OpKind
    prior_version: Version  # the object's version before this entry; ZERO: it did not exist
    reqid: ReqId | None = None  # None for writes no client asked for
    result: int = 0

    @property
    def changes_object(self) -> bool:
        return self.kind is not OpKind.ERROR

    def encode_into(self, w: Writer) -> None:
        w.u8(_ENTRY_V1)
        w.version(self.version)
        w.u8(int(self.kind))
        w.version(self.prior_version)
        w.i64(self.result)
        if self.reqid is None:
            w.u8(0)
        else:
            w.u8(1)
            w.reqid(self.reqid)
        w.oid(self.oid)

    def encode(self) -> bytes:
        w = Writer()
        self.encode_into(w)
        return w.bytes()

    @classmethod
    def decode_from(cls, r: Reader) -> LogEntry:
        r.magic(_ENTRY_V1)
        version = Version(*r.version())
        try:
            kind = OpKind(r.u8())
        except ValueError:
            raise PGDecodeError(f"{r.what}: unknown op kind", errno.EINVAL) from None
        prior = Version(*r.version())
        result = r.i64()
        has = r.u8()
        if has not in (0, 1):
            raise PGDecodeError(f"{r.what}: bad reqid flag {has}", errno.EINVAL)
        reqid = r.reqid() if has else None
        oid = r.oid()
        if prior >= version:
            raise PGDecodeError(f"{r.what}: prior version {prior} not before {version}",
                                errno.EINVAL)
        return cls(version, oid, kind, prior, reqid, result)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> LogEntry:
        r = Reader(data, "log entry")
        e = cls.decode_from(r)
        r.done()
        return e


@dataclass(frozen=True, slots=True)
class Dup:
    """What a trimmed entry leaves for dedup: its reqid, version and result."""

    reqid: ReqId
    version: Version
    result: int

    def encode_into(self, w: Writer) -> None:
        w.u8(_DUP_V1)
        w.reqid(self.reqid)
        w.version(self.version)
        w.i64(self.result)

    def encode(self) -> bytes:
        w = Writer()
        self.encode_into(w)
        return w.bytes()

    @classmethod
    def decode_from(cls, r: Reader) -> Dup:
        r.magic(_DUP_V1)
        reqid = r.reqid()
        return cls(reqid, Version(*r.version()), r.i64())

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Dup:
        r = Reader(data, "dup entry")
        d = cls.decode_from(r)
        r.done()
        return d


_MIN_ENTRY = 1 + 12 + 1 + 12 + 8 + 1 + 2 + 1
_MIN_DUP = 1 + 25 + 12 + 8


class PGLog:
    """Entries newer than ``tail``, oldest first, with versions strictly increasing; and the
    dups of trimmed entries (at most ``max_dups``, newest kept)."""

    def __init__(self, tail: Version = ZERO, entries: Iterable[LogEntry] = (),
                 dups: Iterable[Dup] = (), max_dups: int = DEFAULT_MAX_DUPS) -> None:
        self.tail = tail
        self.max_dups = max_dups
        self.entries: list[LogEntry] = []
        self._by_version: dict[Version, LogEntry] = {}
        self._by_reqid: dict[ReqId, tuple[Version, int]] = {}
        self._latest: dict[str, LogEntry] = {}  # oid -> newest object-changing entry
        self.dups: list[Dup] = []
        for d in dups:
            self._add_dup(d)
        for e in entries:
            self.append(e)

    # -- reading ------------------------------------------------------------------------------

    @property
    def head(self) -> Version:
        """The newest version in the log (``last_update``); the tail when it is empty."""
        return self.entries[-1].version if self.entries else self.tail

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries)

    def __contains__(self, v: Version) -> bool:
        return v in self._by_version

    def get(self, v: Version) -> LogEntry | None:
        return self._by_version.get(v)

    def lookup(self, reqid: ReqId) -> tuple[Version, int] | None:
        """The version and result a request got, if the log or its dups remember it."""
        return self._by_reqid.get(reqid)

    def latest(self, oid: str) -> LogEntry | None:
        """The newest entry in the log that changed ``oid`` (ERROR entries do not)."""
        return self._latest.get(oid)

    def latest_all(self) -> dict[str, LogEntry]:
        """oid -> its newest object-changing entry, for every object the log touches."""
        return dict(self._latest)

    def after(self, v: Version) -> list[LogEntry]:
        """The entries newer than ``v``."""
        i = len(self.entries)
        while i > 0 and self.entries[i - 1].version > v:
            i -= 1
        return self.entries[i:]

    def overlaps(self, head: Version) -> bool:
        """Whether a log whose newest entry is ``head`` can be merged with this one (Ceph:
        the other log reaches at least our tail); otherwise it must be backfilled."""
        return head >= self.tail

    # -- changing -----------------------------------------------------------------------------

    def append(self, e: LogEntry) -> None:
        """Add the newest entry; its version must be newer than every one in the log."""
        check_version(e.version)
        check_oid(e.oid)
        if e.version <= self.head:
            raise PGError(f"log entry {e.version} is not newer than the head {self.head}")
        if e.prior_version >= e.version:
            raise PGError(f"log entry {e.version}: prior version {e.prior_version} not older")
        self.entries.append(e)
        self._by_version[e.version] = e
        if e.reqid is not None:
            self._by_reqid[e.reqid] = (e.version, e.result)
        if e.changes_object:
            self._latest[e.oid] = e

    def trim(self, to: Version) -> tuple[list[LogEntry], list[Dup]]:
        """Drop the entries up to ``to`` (the tail moves there, or to the head if ``to`` is
        past it); their reqids become dups. Returns the trimmed entries and the dups that fell
        off the bound, so a caller can persist the change."""
        n = 0
        while n < len(self.entries) and self.entries[n].version <= to:
            n += 1
        if n == 0:
            return [], []
        gone = self.entries[:n]
        del self.entries[:n]
        self.tail = gone[-1].version
        for e in gone:
            del self._by_version[e.version]
            if self._latest.get(e.oid) is e:
                del self._latest[e.oid]
            if e.reqid is not None:
                self._by_reqid.pop(e.reqid, None)
                self._add_dup(Dup(e.reqid, e.version, e.result))
        return gone, self._bound_dups()

    def drop_head(self) -> LogEntry:
        """Remove the newest entry (a write whose data never reached the disk here)."""
        if not self.entries:
            raise PGError("drop_head on an empty log")
        e = self.entries.pop()
        del self._by_version[e.version]
        if e.reqid is not None and self._by_reqid.get(e.reqid, (None,))[0] == e.version:
            del self._by_reqid[e.reqid]
        if self._latest.get(e.oid) is e:
            del self._latest[e.oid]
            for prev in reversed(self.entries):
                if prev.oid == e.oid and prev.changes_object:
                    self._latest[e.oid] = prev
                    break
        return e

    def _add_dup(self, d: Dup) -> None:
        if self.dups and d.version <= self.dups[-1].version:
            raise PGError(f"dup {d.version} is not newer than {self.dups[-1].version}")
        self.dups.append(d)
        if d.reqid not in self._by_reqid:
            self._by_reqid[d.reqid] = (d.version, d.result)

    def _bound_dups(self) -> list[Dup]:
        over = len(self.dups) - self.max_dups
        if over <= 0:
            return []
        dropped = self.dups[:over]
        del self.dups[:over]
        for d in dropped:
            if self._by_reqid.get(d.reqid) == (d.version, d.result):
                del self._by_reqid[d.reqid]
        return dropped

    def copy(self) -> PGLog:
        return PGLog(self.tail, self.entries, self.dups, self.max_dups)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PGLog) and self.tail == other.tail
                and self.entries == other.entries and self.dups == other.dups)

    def __repr__(self) -> str:
        return f"PGLog(({self.tail},{self.head}], {len(self.entries)} entries)"

    # -- encoding -----------------------------------------------------------------------------

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_LOG_V1)
        w.version(self.tail)
        w.u32(len(self.entries))
        for e in self.entries:
            e.encode_into(w)
        w.u32(len(self.dups))
        for d in self.dups:
            d.encode_into(w)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes | memoryview, max_dups: int = DEFAULT_MAX_DUPS) -> PGLog:
        r = Reader(data, "pg log")
        r.magic(_LOG_V1)
        tail = Version(*r.version())
        entries = [LogEntry.decode_from(r) for _ in range(r.count(_MIN_ENTRY))]
        dups = [Dup.decode_from(r) for _ in range(r.count(_MIN_DUP))]
        r.done()
        if entries and entries[0].version <= tail:
            raise PGDecodeError("pg log: an entry at or before the tail", errno.EINVAL)
        try:
            return cls(tail, entries, dups, max(max_dups, len(dups)))
        except PGError as e:
            raise PGDecodeError(f"pg log: {e}", errno.EINVAL) from None


# -- the missing set ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MissingItem:
    """An object this OSD must fix: bring it to ``need`` (``have`` is the version it holds
    that is part of the history, ZERO if none), or, when ``deleted``, remove it."""

    need: Version
    have: Version = ZERO
    deleted: bool = False

    def encode_into(self, w: Writer, oid: str) -> None:
        w.oid(oid)
        w.version(self.need)
        w.version(self.have)
        w.u8(1 if self.deleted else 0)

    def encode(self) -> bytes:
        w = Writer()
        w.version(self.need)
        w.version(self.have)
        w.u8(1 if self.deleted else 0)
        return w.bytes()

    @classmethod
    def _decode_fields(cls, r: Reader) -> MissingItem:
        need = Version(*r.version())
        have = Version(*r.version())
        flag = r.u8()
        if flag not in (0, 1):
            raise PGDecodeError(f"{r.what}: bad deleted flag {flag}", errno.EINVAL)
        return cls(need, have, bool(flag))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> MissingItem:
        r = Reader(data, "missing item")
        item = cls._decode_fields(r)
        r.done()
        return item


class Missing(dict[str, MissingItem]):
    """oid -> MissingItem. Delete items (``deleted``) are resolved locally by removing the
    object; the others need the object's data at ``need`` from an OSD that has it."""

    def copy(self) -> Missing:
        return Missing(self)

    def needs_data(self) -> dict[str, MissingItem]:
        return {o: it for o, it in self.items() if not it.deleted}

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_MISSING_V1)
        w.u32(len(self))
        for oid in sorted(self):
            self[oid].encode_into(w, oid)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Missing:
        r = Reader(data, "missing set")
        r.magic(_MISSING_V1)
        m = cls()
        for _ in range(r.count(2 + 1 + 12 + 12 + 1)):
            oid = r.oid()
            if oid in m:
                raise PGDecodeError(f"missing set: {oid!r} twice", errno.EINVAL)
            m[oid] = MissingItem._decode_fields(r)
        r.done()
        return m


def last_complete(log: PGLog, missing: Missing) -> Version:
    """The newest version up to which every entry's object is present here."""
    needs = [it.need for it in missing.values() if not it.deleted]
    if not needs:
        return log.head
    first = min(needs)
    best = log.tail
    for e in log.entries:
        if e.version >= first:
            break
        best = e.version
    return best


# -- merging an authoritative log --------------------------------------------------------------


@dataclass
class MergeResult:
    """A replica's log and missing set after merging the authoritative log into it."""

    log: PGLog
    missing: Missing
    divergent: list[LogEntry]  # this OSD's entries the authoritative history does not have
    new: list[LogEntry]  # the authoritative entries this OSD lacked


class NoOverlap(PGError):
    """The logs share no entry to merge from: the peer must be backfilled."""


def merge_log(local: PGLog, missing: Missing, auth: PGLog,
              have: Callable[[str], Version] | None = None) -> MergeResult:
    """Merge the authoritative log ``auth`` into ``local`` (with its missing set).

    Entries of ``local`` newer than ``auth.tail`` that ``auth`` lacks are divergent: they
    never committed (a committed write is on every acting OSD, so in every later
    authoritative log). Each object a divergent or a new entry touched gets the state the
    authoritative history gives it: the newest authoritative entry for it, else (only
    divergent entries touched it) the object as it was before the oldest of them
    (``prior_version``). That state is a missing item: data needed at a version, or a removal
    when the object should not exist. Entries of ``local`` at or before ``auth.tail`` are
    taken as the authoritative ones (``auth`` trimmed them once all acting OSDs had them).

    The result depends on the logs and missing set only (``have`` just fills in the
    informational ``have`` field), so the primary can compute a peer's merge exactly as the
    peer will. NoOverlap when ``local`` ends before ``auth.tail``."""
    if local.head < auth.tail:
        raise NoOverlap(f"log ending at {local.head} does not reach the authoritative tail "
                        f"{auth.tail}")
    divergent = [e for e in local.entries if e.version > auth.tail and e.version not in auth]
    new = [e for e in auth.entries if e.version > local.tail and e.version not in local]
    first_divergent: dict[str, LogEntry] = {}
    for e in divergent:
        if e.changes_object and e.oid not in first_divergent:
            first_divergent[e.oid] = e
    touched = dict.fromkeys(e.oid for e in new if e.changes_object)
    touched.update(dict.fromkeys(first_divergent))
    out = missing.copy()
    for oid in touched:
        latest = auth.latest(oid)
        if latest is not None:
            need, gone = latest.version, latest.kind is OpKind.DELETE
        else:
            prior = first_divergent[oid].prior_version
            need, gone = prior, prior == ZERO
        if gone:
            out[oid] = MissingItem(need, ZERO, deleted=True)
        else:
            held = missing[oid].have if oid in missing else (have(oid) if have else None)
            if held is None or held >= need or oid in first_divergent:
                held = ZERO  # nothing, or what this OSD holds came from a write that never was
            out[oid] = MissingItem(need, held)
    merged = PGLog(auth.tail, auth.entries, _merged_dups(local, auth), auth.max_dups)
    return MergeResult(merged, out, divergent, new)


def _merged_dups(local: PGLog, auth: PGLog) -> list[Dup]:
    """The dups a merged log keeps: the authoritative ones, ours (trimmed once committed),
    and our entries at or before the authoritative tail (committed, now trimmed there)."""
    by_version = {d.version: d for d in auth.dups}
    for d in local.dups:
        if d.version <= auth.tail:  # newer ones are entries of ``auth`` (they committed)
            by_version.setdefault(d.version, d)
    for e in local.entries:
        if e.version <= auth.tail and e.reqid is not None:
            by_version.setdefault(e.version, Dup(e.reqid, e.version, e.result))
    keep = sorted(by_version.values(), key=lambda d: d.version)
    return keep[-auth.max_dups:] if auth.max_dups else []


def reconcile(log: PGLog, missing: Missing, version_of: Callable[[str], Version | None],
              last_backfill: str | None = None) -> tuple[Missing, LogEntry | None]:
    """The missing set made true to the objects on disk after a restart, and the newest
    entry dropped if its write was torn (the log is changed in place then).

    The PG's metadata and each object are separate store records, applied and made durable in
    order; a crash keeps any prefix of what was not yet durable. A write records its entry
    (with a missing item when it carries no data here) and then changes the object, so:
    - the only entry whose change can be lost without a missing item saying so is the newest
      (nothing after its object record survived): its write was never durable here, so never
      committed (that needs every acting OSD). It is dropped, as if it had not arrived;
    - missing items already done (the data came, the object is gone) are dropped.
    Objects past ``last_backfill`` are not this OSD's to check (backfill has not reached
    them). Any other disagreement (none is expected) marks the object missing."""
    out = missing.copy()
    dropped = None
    head = log.entries[-1] if log.entries else None
    if (head is not None and head.changes_object and head.oid not in out
            and (last_backfill is None or head.oid <= last_backfill)):
        v = version_of(head.oid)
        if (v is not None) if head.kind is OpKind.DELETE else (v != head.version):
            dropped = log.drop_head()
    for oid, item in list(out.items()):
        v = version_of(oid)
        if (item.deleted and v is None) or (not item.deleted and v == item.need):
            del out[oid]
    for oid, e in log.latest_all().items():
        if oid in out or (last_backfill is not None and oid > last_backfill):
            continue
        v = version_of(oid)
        if e.kind is OpKind.DELETE:
            if v is not None:
                out[oid] = MissingItem(e.version, ZERO, deleted=True)
        elif v != e.version:
            out[oid] = MissingItem(e.version, v if v is not None and v < e.version else ZERO)
    return out, dropped
