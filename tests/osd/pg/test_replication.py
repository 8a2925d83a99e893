"""The write path, in scripted scenarios on the simulation: ack when applied everywhere,
commit only once every acting OSD has the write durable; below min_size ops wait and resume;
a resent request is answered from the log (in flight or committed, across a primary change)
and applied once; the log is trimmed only past what is durable everywhere."""

from __future__ import annotations

from rbdpy.osd.pg.messages import RepopReply
from rbdpy.osd.pg.states import PGState
from tests.osd.pg.scripted import cluster, crash, data, done, op, pref, primary, restart, until
from tests.osd.pg.sim import OpReply


def test_commit_waits_for_every_replica_durable() -> None:
    sim = cluster(3, 3, 2)
    slow = sim.osds[pref(sim)[2]]
    slow._commit = lambda inc: None  # this replica's disk never finishes a commit (yet)
    w = op(sim, "write")
    assert w.acked and not done(sim, w)  # applied on all: ack; durable on two of three
    del slow._commit
    slow._commit(slow.incarnation)
    sim.settle()
    assert done(sim, w)


def test_below_min_size_ops_wait_and_resume() -> None:
    sim = cluster(2, 2, 2)
    a, b = pref(sim)
    assert done(sim, op(sim, "write"))
    crash(sim, b)
    sim.settle()
    st = primary(sim).state()
    assert PGState.PEERED in st and PGState.ACTIVE not in st
    w = op(sim, "append")
    r = op(sim, "read", "obj01")
    assert not done(sim, w) and not done(sim, r)  # no error: they wait
    restart(sim, b)
    assert done(sim, w) and done(sim, r)
    assert data(sim, a) == data(sim, b) == sim.model["obj00"]


def test_resend_while_in_flight_is_answered_once() -> None:
    """A resend of a write still in flight joins it (one execution, both get the reply)."""
    sim = cluster(2, 2, 1)
    slow = sim.osds[pref(sim)[1]]
    slow._commit = lambda inc: None
    w = op(sim, "append")
    assert w.acked and not done(sim, w)
    sim.clients[0].reset(pref(sim)[0])  # connection reset: the client resends
    sim.settle()
    assert not done(sim, w)  # the resend waits for the same commit
    del slow._commit
    slow._commit(slow.incarnation)
    sim.settle()
    assert done(sim, w) and not sim.stats.get("re-executed")
    assert sim.model["obj00"] == w.data


def test_duplicate_across_a_primary_change_is_applied_once() -> None:
    """The commit of an append never reaches the client (its replies from the primary are
    lost); the primary dies; the client resends to the new primary, which finds the reqid in
    the log and answers with the stored result without applying it again."""
    sim = cluster(2, 2, 1)
    a, b = pref(sim)
    assert done(sim, op(sim, "write"))
    before = sim.model["obj00"]
    send = sim.net.send

    def lossy(src, dst, msg):  # noqa: ANN001, ANN202
        if src == a and isinstance(msg, OpReply):
            return None
        return send(src, dst, msg)

    sim.net.send = lossy
    w = op(sim, "append")
    assert not done(sim, w) and data(sim, b) == before + w.data  # durable on both by now
    sim.net.send = send
    crash(sim, a)
    sim.settle()
    assert done(sim, w)
    assert sim.stats.get("re-executed") is None
    assert data(sim, b) == before + w.data == sim.model["obj00"]
    restart(sim, a)
    assert data(sim, a) == data(sim, b)


def test_log_trimmed_only_past_what_is_durable_everywhere() -> None:
    """Six writes in flight, the replica's durable answers lost for all but the first: when
    the first completes, the log (over its bound) is trimmed to it, not further."""
    sim = cluster(2, 2, 1, max_log=3)
    a, b = pref(sim)
    pg = primary(sim)
    for i in range(4):
        assert done(sim, op(sim, "write", f"obj0{i}"))
    until(sim, lambda: len(pg.log) <= 3)
    first = pg.log.head.counter + 1
    send = sim.net.send

    def lossy(src, dst, msg):  # noqa: ANN001, ANN202
        if src == b and isinstance(msg, RepopReply) and msg.committed \
                and msg.version.counter > first:
            return None
        return send(src, dst, msg)

    sim.net.send = lossy
    slow = sim.osds[b]
    slow._commit = lambda inc: None
    ws = [op(sim, "write", f"obj0{i % 4}", settle=False) for i in range(6)]
    sim.settle()
    assert len(pg.log) == 9 and not any(done(sim, w) for w in ws)
    del slow._commit
    slow._commit(slow.incarnation)  # durable on the replica; only the first one says so
    sim.settle()
    assert done(sim, ws[0]) and not any(done(sim, w) for w in ws[1:])
    assert pg.log.tail.counter == first  # trimmed up to the durable write, no further
    assert len(pg.log) == 5
    replica = sim.osds[b].pgs[0]
    assert replica.log.tail.counter < first  # told with the next write only
