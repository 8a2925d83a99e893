"""rbdpy/msgr/session.py: the handshake's decisions, one table row per case.

``accept`` is what the accepting side does with a peer's connect given what it remembers of
that peer; ``on_reply`` is what the connecting side does with the verdict. Both are pure, so
the whole rule set is the two tables below; test_connection.py drives the same cases through
real Connections (restarts, lost READYs, stale global seqs, replaced connections).
"""

from __future__ import annotations

import pytest

from rbdpy.msgr.message import Message
from rbdpy.msgr.session import (
    Accept,
    Connect,
    Known,
    Reply,
    Session,
    accept,
    on_reply,
)
from rbdpy.msgr.wire import (
    TAG_BADAUTH,
    TAG_MSG,
    TAG_READY,
    TAG_RESETSESSION,
    TAG_RETRY_GLOBAL,
    TAG_RETRY_SESSION,
    TAG_WAIT,
)

N, OTHER = 0x51, 0x77  # the peer's incarnation (nonce) we know, and a new one


def known(gseq: int = 5, nonce: int = N, cseq: int = 3, active: bool = True) -> Known:
    return Known(peer_global_seq=gseq, peer_nonce=nonce, connect_seq=cseq, active=active)


def conn(gseq: int = 9, cseq: int = 3, nonce: int = N, lossy: bool = False) -> Connect:
    return Connect(global_seq=gseq, connect_seq=cseq, nonce=nonce, lossy=lossy)


ACCEPT_CASES = [
    # (case, connect, what the acceptor knows, verdict)
    ("first contact", conn(cseq=0), None, Accept.NEW),
    ("first contact, lossy", conn(cseq=0, lossy=True), None, Accept.NEW),
    ("resume of a session we never had: we restarted", conn(cseq=2), None,
     Accept.RESET_SESSION),
    ("lossy resume of an unknown session: just a new one", conn(cseq=2, lossy=True), None,
     Accept.NEW),
    ("global_seq already seen", conn(gseq=5), known(gseq=5), Accept.RETRY_GLOBAL),
    ("global_seq older than seen", conn(gseq=2, cseq=0), known(gseq=5), Accept.RETRY_GLOBAL),
    ("global_seq already seen, lossy", conn(gseq=5, lossy=True), known(gseq=5),
     Accept.RETRY_GLOBAL),
    ("old global_seq from a new incarnation is no retry", conn(gseq=1, cseq=0, nonce=OTHER),
     known(gseq=5), Accept.REPLACE),
    ("new incarnation, fresh session", conn(cseq=0, nonce=OTHER), known(), Accept.REPLACE),
    ("new incarnation resuming a session it cannot have", conn(cseq=2, nonce=OTHER),
     known(), Accept.RESET_SESSION),
    ("lossy reconnect: a fresh session every time", conn(cseq=0, lossy=True), known(),
     Accept.REPLACE),
    ("lossy reconnect with a connect_seq", conn(cseq=4, lossy=True), known(), Accept.REPLACE),
    ("same incarnation reset its side after traffic", conn(cseq=0), known(active=True),
     Accept.RESTART),
    ("READY lost in the first handshake: nothing happened, go on", conn(cseq=0),
     known(cseq=1, active=False), Accept.RESUME),
    ("connect_seq behind ours: a stale attempt", conn(cseq=2), known(cseq=3),
     Accept.RETRY_SESSION),
    ("connect_seq as we handed it out: resume", conn(cseq=3), known(cseq=3), Accept.RESUME),
    ("connect_seq ahead of ours: resume", conn(cseq=7), known(cseq=3), Accept.RESUME),
]


@pytest.mark.parametrize(("case", "c", "k", "verdict"), ACCEPT_CASES,
                         ids=[row[0] for row in ACCEPT_CASES])
def test_accept(case: str, c: Connect, k: Known | None, verdict: Accept) -> None:
    assert accept(c, k) is verdict


REPLY_CASES = [
    # (case, reply tag, nonce our session was with (0: none), replier's nonce, lossy, step)
    ("READY to a new session", TAG_READY, 0, N, False, Reply.OPEN),
    ("READY from the incarnation we knew", TAG_READY, N, N, False, Reply.OPEN),
    ("READY from another incarnation: the old session is lost", TAG_READY, N, OTHER, False,
     Reply.OPEN_RESET),
    ("READY from another incarnation, lossy: nothing to lose", TAG_READY, N, OTHER, True,
     Reply.OPEN),
    ("reset-session", TAG_RESETSESSION, N, N, False, Reply.RESET),
    ("retry-session", TAG_RETRY_SESSION, N, N, False, Reply.RETRY_SESSION),
    ("retry-global", TAG_RETRY_GLOBAL, N, N, False, Reply.RETRY_GLOBAL),
    ("wait", TAG_WAIT, N, N, False, Reply.WAIT),
    ("bad-auth", TAG_BADAUTH, 0, N, False, Reply.BADAUTH),
    ("a frame tag is no reply", TAG_MSG, N, N, False, Reply.UNKNOWN),
    ("not a tag at all", 0xEE, 0, N, True, Reply.UNKNOWN),
]


@pytest.mark.parametrize(("case", "tag", "known_nonce", "nonce", "lossy", "step"),
                         REPLY_CASES, ids=[row[0] for row in REPLY_CASES])
def test_on_reply(case: str, tag: int, known_nonce: int, nonce: int, lossy: bool,
                  step: Reply) -> None:
    assert on_reply(tag, known_nonce, nonce, lossy) is step


def test_the_tables_reach_every_decision() -> None:
    assert {row[-1] for row in ACCEPT_CASES} == set(Accept)
    assert {row[-1] for row in REPLY_CASES} == set(Reply)


def test_known_of_a_session() -> None:
    s = Session(peer_nonce=N, peer_global_seq=4, connect_seq=2)
    assert Known.of(s) == Known(4, N, 2, active=False)
    s.queue(Message(type=1))
    assert Known.of(s).active
    s.reset()
    s.in_seq = 1
    assert Known.of(s) == Known(4, N, 0, active=True)
