"""The PG log: ordering, dedup, trimming, the encodings (round trips; malformed bytes only ever
raise PGDecodeError), the persisted keys, merging an authoritative log (a replica ends up with
exactly the authoritative objects once it recovers what the merge says it misses), and
reconciling with the objects after a crash."""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbdpy.errors import RbdpyError
from rbdpy.osd.pg.errors import PGDecodeError, PGError
from rbdpy.osd.pg.info import PGInfo
from rbdpy.osd.pg.log import (
    ZERO,
    Dup,
    LogEntry,
    Missing,
    MissingItem,
    NoOverlap,
    OpKind,
    PGLog,
    Version,
    last_complete,
    merge_log,
    reconcile,
)
from rbdpy.osd.pg.meta import MetaTxn, initial, load

V = Version


def entry(e: int, c: int, oid: str = "a", kind: OpKind = OpKind.MODIFY,
          prior: Version = ZERO, reqid: tuple | None = None, result: int = 0) -> LogEntry:
    return LogEntry(V(e, c), oid, kind, prior, reqid, result)


# -- ordering, dedup, trim --------------------------------------------------------------------


def test_append_needs_newer_versions() -> None:
    log = PGLog()
    log.append(entry(1, 1))
    log.append(entry(2, 1, prior=V(1, 1)))  # a newer epoch sorts after, whatever the counter
    for bad in (entry(2, 1), entry(1, 5), entry(2, 0)):
        with pytest.raises(PGError) as ei:
            log.append(bad)
        assert ei.value.errno == errno.EINVAL and isinstance(ei.value, RbdpyError)
    with pytest.raises(PGError):
        log.append(entry(3, 1, prior=V(3, 1)))  # prior not older than the entry
    with pytest.raises(PGError):
        log.append(entry(3, 1, oid=""))
    assert log.head == V(2, 1) and len(log) == 2


def test_lookup_trim_and_dups() -> None:
    log = PGLog(max_dups=2)
    for c in range(1, 6):
        log.append(entry(1, c, reqid=(8, 1, 1, c), result=-c))
    assert log.lookup((8, 1, 1, 3)) == (V(1, 3), -3)
    gone, dropped = log.trim(V(1, 3))
    assert [e.version for e in gone] == [V(1, 1), V(1, 2), V(1, 3)]
    assert [d.version for d in dropped] == [V(1, 1)]  # the dup bound keeps the newest two
    assert log.tail == V(1, 3) and log.head == V(1, 5)
    assert log.lookup((8, 1, 1, 3)) == (V(1, 3), -3)  # a dup now
    assert log.lookup((8, 1, 1, 5)) == (V(1, 5), -5)  # still an entry
    assert log.lookup((8, 1, 1, 1)) is None  # fell off the bound
    assert log.trim(V(1, 2)) == ([], [])


def test_latest_skips_errors_and_drop_head() -> None:
    log = PGLog()
    log.append(entry(1, 1, "a"))
    log.append(entry(1, 2, "a", OpKind.ERROR, prior=V(1, 1), result=-errno.ENOENT))
    assert log.latest("a").version == V(1, 1)
    log.append(entry(1, 3, "a", OpKind.DELETE, prior=V(1, 1), reqid=(8, 0, 0, 9)))
    assert log.latest("a").kind is OpKind.DELETE
    assert log.drop_head().version == V(1, 3)
    assert log.latest("a").version == V(1, 1) and log.lookup((8, 0, 0, 9)) is None


def test_last_complete() -> None:
    log = PGLog(V(1, 0), [entry(1, c, f"o{c}") for c in range(1, 5)])
    assert last_complete(log, Missing()) == V(1, 4)
    assert last_complete(log, Missing(o3=MissingItem(V(1, 3)))) == V(1, 2)
    assert last_complete(log, Missing(o1=MissingItem(V(1, 1)))) == V(1, 0)
    assert last_complete(log, Missing(o9=MissingItem(V(1, 2), deleted=True))) == V(1, 4)


# -- encodings -------------------------------------------------------------------------------------

oids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
               max_size=12)
reqids = st.tuples(st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                   st.integers(0, 2**64 - 1))
versions = st.builds(Version, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))


@st.composite
def logs(draw: st.DrawFn) -> PGLog:
    n = draw(st.integers(0, 12))
    e = draw(st.integers(0, 1000))
    c = draw(st.integers(0, 1000))
    tail = V(e, c)
    entries = []
    for _ in range(n):
        if draw(st.booleans()):
            e += draw(st.integers(1, 3))
        c += draw(st.integers(1, 3))
        v = V(e, c)
        prior = draw(st.sampled_from([ZERO, tail]))
        entries.append(LogEntry(v, draw(oids), draw(st.sampled_from(list(OpKind))), prior,
                                draw(st.none() | reqids), draw(st.integers(-2**63, 2**63 - 1))))
    dups = []
    dc = 0
    for _ in range(draw(st.integers(0, 4))):
        dc += draw(st.integers(1, 3))
        dups.append(Dup(draw(reqids), V(0, dc), draw(st.integers(-5, 5))))
    return PGLog(tail, entries, dups)


missings = st.dictionaries(oids, st.builds(MissingItem, versions, versions, st.booleans()),
                           max_size=6).map(Missing)
infos = st.builds(PGInfo, st.integers(0, 2**32 - 1), versions, versions, versions,
                  st.integers(0, 2**32 - 1), st.none() | st.text(max_size=8))


@given(logs())
def test_log_round_trip(log: PGLog) -> None:
    back = PGLog.decode(log.encode())
    assert back == log
    assert back.head == log.head and all(back.lookup(e.reqid) == log.lookup(e.reqid)
                                         for e in log if e.reqid is not None)
    for e in log:
        assert LogEntry.decode(e.encode()) == e
    for d in log.dups:
        assert Dup.decode(d.encode()) == d


@given(missings, infos)
def test_missing_and_info_round_trip(m: Missing, info: PGInfo) -> None:
    assert Missing.decode(m.encode()) == m
    for item in m.values():
        assert MissingItem.decode(item.encode()) == item
    assert PGInfo.decode(info.encode()) == info


def _decoders() -> list:
    return [PGLog.decode, LogEntry.decode, Dup.decode, Missing.decode, MissingItem.decode,
            PGInfo.decode]


@given(st.binary(max_size=200), st.sampled_from(range(6)))
def test_garbage_raises_only_decode_error(data: bytes, which: int) -> None:
    try:
        _decoders()[which](data)
    except PGDecodeError as e:
        assert e.errno in (errno.EBADMSG, errno.EINVAL)


@settings(max_examples=60)
@given(logs(), missings, infos, st.integers(0, 2**32 - 1))
def test_truncated_or_flipped_raises_only_decode_error(log: PGLog, m: Missing, info: PGInfo,
                                                       seed: int) -> None:
    rng = random.Random(seed)
    for dec, enc in ((PGLog.decode, log.encode()), (Missing.decode, m.encode()),
                     (PGInfo.decode, info.encode())):
        for cut in range(len(enc)):
            with pytest.raises(PGDecodeError):
                dec(enc[:cut])
        with pytest.raises(PGDecodeError):
            dec(enc + b"\0")
        for _ in range(20):
            flipped = bytearray(enc)
            flipped[rng.randrange(len(enc))] ^= 1 << rng.randrange(8)
            try:
                dec(bytes(flipped))
            except PGDecodeError:
                pass


def test_decode_refuses_out_of_order_log() -> None:
    good = PGLog(V(1, 0), [entry(1, 1), entry(1, 2, prior=V(1, 1))]).encode()
    # swap the two entries: same bytes, versions out of order
    one, two = entry(1, 1).encode(), entry(1, 2, prior=V(1, 1)).encode()
    swapped = good.replace(one + two, two + one)
    with pytest.raises(PGDecodeError) as ei:
        PGLog.decode(swapped)
    assert ei.value.errno == errno.EINVAL
    bad_kind = bytearray(entry(1, 1).encode())
    bad_kind[13] = 9
    with pytest.raises(PGDecodeError):
        LogEntry.decode(bytes(bad_kind))


# -- the persisted keys ------------------------------------------------------------------------


def _apply(kv: dict, rec) -> None:  # noqa: ANN001
    kv.update(rec.set)
    for k in rec.rm:
        kv.pop(k, None)


@given(st.integers(0, 2**32 - 1))
def test_meta_deltas_load_back(seed: int) -> None:
    """Appends, trims, merges and missing-set changes kept as key deltas load back to the
    same state."""
    rng = random.Random(seed)
    log, missing, les, lb = PGLog(max_dups=3), Missing(), 0, None
    kv: dict[str, bytes] = {}
    _apply(kv, initial(log, missing, les, lb))
    c = 0
    for _ in range(40):
        t = MetaTxn()
        r = rng.random()
        if r < 0.5:
            c += 1
            e = entry(1 + c // 5, c, rng.choice("abc"), reqid=(8, 0, 0, c))
            log.append(e)
            t.entry(e)
        elif r < 0.65:
            gone, dropped = log.trim(V(1 + c // 5, max(0, c - 2)))
            if gone:
                t.trimmed(gone, dropped, log)
        elif r < 0.75:
            new = PGLog(log.tail, log.entries[: rng.randrange(len(log) + 1)], log.dups,
                        log.max_dups)
            t.replace_log(log, new)
            log = new
            c = max(c, log.head.counter)
        elif r < 0.9:
            oid = rng.choice("abcd")
            item = None if rng.random() < 0.3 else MissingItem(V(1, c), ZERO,
                                                               rng.random() < 0.3)
            t.missing(oid, item)
            if item is None:
                missing.pop(oid, None)
            else:
                missing[oid] = item
        else:
            les, lb = rng.randrange(100), rng.choice([None, "", "b"])
            t.info(les, lb)
        _apply(kv, t.record())
        got = load(kv, max_dups=3)
        assert (got.log, got.missing) == (log, missing)
        assert got.log.head == log.head
    assert (got.les, got.last_backfill) == (les, lb)


def test_load_of_nothing_is_an_empty_complete_pg() -> None:
    got = load({})
    assert got.log == PGLog() and not got.missing and got.les == 0
    assert got.last_backfill is None
    with pytest.raises(PGDecodeError):
        load({"log.0000000100000000000000ff": entry(1, 1).encode()})  # key != version


# -- merging an authoritative log -----------------------------------------------------------


def _replay(entries: list[LogEntry], state: dict[str, Version] | None = None
            ) -> dict[str, Version]:
    state = dict(state or {})
    for e in entries:
        if e.kind is OpKind.MODIFY:
            state[e.oid] = e.version
        elif e.kind is OpKind.DELETE:
            state.pop(e.oid, None)
    return state


def _history(rng: random.Random, start: dict[str, Version], epoch: int, counter: int, n: int,
             objs: str) -> list[LogEntry]:
    state = dict(start)
    out = []
    for _ in range(n):
        counter += 1
        oid = rng.choice(objs)
        prior = state.get(oid, ZERO)
        r = rng.random()
        kind = (OpKind.DELETE if r < 0.25 and oid in state
                else OpKind.ERROR if r < 0.35 else OpKind.MODIFY)
        e = LogEntry(V(epoch, counter), oid, kind, prior, (8, 0, epoch, counter))
        out.append(e)
        state = _replay([e], state)
    return out


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1))
def test_merge_brings_a_replica_to_the_authoritative_objects(seed: int) -> None:
    """A common history, then the replica's own (divergent) writes and the authoritative
    writes of a later interval; logs trimmed anywhere that still overlaps. After the merge,
    removing the delete items and fetching every other missing object at its ``need`` (taken
    from the authoritative copy) gives exactly the authoritative objects; objects the merge
    leaves alone already match."""
    rng = random.Random(seed)
    objs = "abcdef"[: rng.randint(1, 6)]
    common = _history(rng, {}, 1, 0, rng.randint(0, 10), objs)
    base = _replay(common)
    c = common[-1].version.counter if common else 0
    div = _history(rng, base, 2, c, rng.randint(0, 6), objs)  # the replica's interval
    c2 = c + rng.randint(0, 3)  # some of the authoritative counters overlap the divergent
    new = _history(rng, base, 3, c2, rng.randint(0, 6), objs)
    cut = rng.randint(0, len(common))  # both logs hold the common entries after ``cut``
    auth = PGLog(common[cut - 1].version if cut else ZERO, common[cut:] + new)
    lcut = rng.randint(0, len(common))
    local = PGLog(common[lcut - 1].version if lcut else ZERO, common[lcut:] + div)
    local_objs = _replay(div, base)
    auth_objs = _replay(new, base)

    res = merge_log(local, Missing(), auth, local_objs.get)
    assert res.log.entries == auth.entries and res.log.tail == auth.tail
    assert {e.version for e in res.divergent} == {e.version for e in div}
    fixed = dict(local_objs)
    for oid, item in res.missing.items():
        if item.deleted:
            assert oid not in auth_objs
            fixed.pop(oid, None)
        else:
            assert auth_objs.get(oid) == item.need, (oid, item)
            fixed[oid] = item.need
    assert fixed == auth_objs


def test_merge_without_overlap_is_no_overlap() -> None:
    auth = PGLog(V(5, 10), [entry(5, 11)])
    with pytest.raises(NoOverlap):
        merge_log(PGLog(V(1, 0), [entry(1, 1)]), Missing(), auth)


def test_merge_keeps_dups_and_drops_divergent_reqids() -> None:
    common = [entry(1, 1, reqid=(8, 0, 0, 1)), entry(1, 2, "b", reqid=(8, 0, 0, 2))]
    local = PGLog(ZERO, [*common, entry(2, 3, "c", reqid=(8, 0, 0, 3))])
    auth = PGLog(V(1, 1), [common[1], entry(3, 3, "d", reqid=(8, 0, 0, 4))])
    res = merge_log(local, Missing(), auth)
    assert res.log.lookup((8, 0, 0, 1)) == (V(1, 1), 0)  # trimmed by auth: a dup
    assert res.log.lookup((8, 0, 0, 3)) is None  # divergent: will run again
    assert res.missing == {"c": MissingItem(ZERO, ZERO, deleted=True),
                           "d": MissingItem(V(3, 3))}


# -- reconciling after a crash -----------------------------------------------------------------


def test_reconcile_drops_a_torn_newest_write() -> None:
    log = PGLog(ZERO, [entry(1, 1, "a"), entry(1, 2, "a", prior=V(1, 1))])
    m, torn = reconcile(log, Missing(), {"a": V(1, 1)}.get)
    assert torn is not None and torn.version == V(1, 2) and log.head == V(1, 1)
    assert not m


def test_reconcile_keeps_recorded_missing_and_finishes_items() -> None:
    log = PGLog(ZERO, [entry(1, 1, "a"), entry(1, 2, "b"), entry(1, 3, "c")])
    missing = Missing(c=MissingItem(V(1, 3)), b=MissingItem(V(1, 2)),
                      z=MissingItem(V(1, 1), deleted=True))
    objects = {"a": V(1, 1), "b": V(1, 2), "z": V(0, 1)}
    m, torn = reconcile(log, missing, objects.get)
    assert torn is None  # the newest is recorded as missing: not torn
    assert m == {"c": MissingItem(V(1, 3)), "z": MissingItem(V(1, 1), deleted=True)}
    # a deleted object still there, not the newest entry: a delete item
    log2 = PGLog(ZERO, [entry(1, 1, "a", OpKind.DELETE), entry(1, 2, "b")])
    m2, torn2 = reconcile(log2, Missing(), {"a": V(0, 5), "b": V(1, 2)}.get)
    assert torn2 is None and m2 == {"a": MissingItem(V(1, 1), deleted=True)}
    # past the backfill watermark nothing is checked
    m3, torn3 = reconcile(log, Missing(), {}.get, last_backfill="")
    assert torn3 is None and not m3
