"""Sessions, and the handshake's rules as pure decisions (Ceph msgr v1's connect logic).

A Session outlives its Connections: it numbers outgoing messages once, keeps what was sent
but not acked (payload references included) and replays it after a reconnect; it remembers
the last sequence received so duplicates are dropped. Lossy sessions keep nothing.

Whether a connect resumes, resets or retries a session is decided by two pure functions,
``accept`` (the accepting side, given what it remembers of the peer) and ``on_reply`` (the
connecting side, given the verdict), so every case is a row of a table test; the Connection
only carries the decision out.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from rbdpy.msgr.message import EntityName, Message
from rbdpy.msgr.wire import (
    TAG_BADAUTH,
    TAG_READY,
    TAG_RESETSESSION,
    TAG_RETRY_GLOBAL,
    TAG_RETRY_SESSION,
    TAG_WAIT,
)


@dataclass(eq=False)
class Session:
    """Per-peer state that survives reconnects (lossless) or not (lossy)."""

    lossy: bool = False
    peer: EntityName | None = None
    peer_nonce: int = 0
    out_seq: int = 0
    in_seq: int = 0
    connect_seq: int = 0
    peer_global_seq: int = 0
    unsent: deque[Message] = field(default_factory=deque)
    sent: deque[Message] = field(default_factory=deque)
    owner: object | None = None

    def queue(self, msg: Message) -> None:
        self.out_seq += 1
        msg.seq = self.out_seq
        msg._wire_head = msg._wire_foot = None
        self.unsent.append(msg)

    def backlog(self) -> int:
        """Messages queued or sent but not yet acknowledged by the peer."""
        return len(self.sent) + len(self.unsent)

    def acked(self, seq: int) -> None:
        sent = self.sent
        while sent and sent[0].seq <= seq:
            sent.popleft()

    def requeue_sent(self, peer_in_seq: int) -> None:
        """After a reconnect: forget what the peer has, send the rest again, in order."""
        self.acked(peer_in_seq)
        while self.unsent and self.unsent[0].seq <= peer_in_seq:
            self.unsent.popleft()
        self.sent.extend(self.unsent)
        self.unsent = self.sent
        self.sent = deque()

    def reset(self) -> list[Message]:
        dropped = list(self.sent) + list(self.unsent)
        self.sent.clear()
        self.unsent.clear()
        self.out_seq = self.in_seq = self.connect_seq = 0
        return dropped


class SessionRegistry:
    """The accepting side's sessions, by peer entity name (pure bookkeeping, no I/O)."""

    def __init__(self) -> None:
        self.sessions: dict[EntityName, Session] = {}

    def get(self, peer: EntityName) -> Session | None:
        return self.sessions.get(peer)

    def remove(self, peer: EntityName) -> None:
        self.sessions.pop(peer, None)


# ---- the accepting side ---------------------------------------------------------------------


class Connect(NamedTuple):
    """The fields of a peer's connect that decide what becomes of it."""

    global_seq: int  # the peer's connection counter: a repeat means a stale attempt
    connect_seq: int  # 0: a fresh session; n: resume the one we accepted n times
    nonce: int  # the peer's incarnation
    lossy: bool


class Known(NamedTuple):
    """What the accepting side remembers of a peer's session."""

    peer_global_seq: int
    peer_nonce: int
    connect_seq: int
    active: bool  # a message was numbered on it, either way

    @classmethod
    def of(cls, s: Session) -> Known:
        return cls(s.peer_global_seq, s.peer_nonce, s.connect_seq, bool(s.in_seq or s.out_seq))


class Accept(enum.Enum):
    """The accepting side's verdict on a connect."""

    RETRY_GLOBAL = "retry-global"  # a global_seq we already saw: reply ours, it retries above
    RESET_SESSION = "reset-session"  # it resumes a session we do not have: we restarted
    RETRY_SESSION = "retry-session"  # its connect_seq is behind ours: reply ours, it retries
    NEW = "new"  # the first session with this peer: open it
    REPLACE = "replace"  # a new incarnation (or a lossy reconnect): a fresh session, PeerReset
    RESTART = "restart"  # same incarnation, its side reset: PeerReset, empty the session, open
    RESUME = "resume"  # the same session goes on: open it and replay what the peer lacks


def accept(c: Connect, known: Known | None) -> Accept:
    """What the accepting side does with a peer's connect (``known``: its session, if any)."""
    if known is not None and c.global_seq <= known.peer_global_seq \
            and known.peer_nonce == c.nonce:
        return Accept.RETRY_GLOBAL
    if known is None or known.peer_nonce != c.nonce or c.lossy:
        if c.connect_seq > 0 and not c.lossy:
            return Accept.RESET_SESSION  # it believes in a session we do not have
        return Accept.NEW if known is None else Accept.REPLACE
    if c.connect_seq == 0:
        # a peer that never read our READY (the connection died in the handshake) asks
        # again with 0: nothing happened on the session, so it simply goes on
        return Accept.RESTART if known.active else Accept.RESUME
    if c.connect_seq < known.connect_seq:
        return Accept.RETRY_SESSION
    return Accept.RESUME


# ---- the connecting side --------------------------------------------------------------------


class Reply(enum.Enum):
    """What the connecting side does with the accepting side's reply."""

    OPEN = "open"  # READY: the session is open; replay what the peer lacks
    OPEN_RESET = "open-reset"  # READY from another incarnation to a resumed lossless session:
    # report the old session lost (SessionReset), then open
    RESET = "reset"  # RESETSESSION: report the session lost, connect again afresh
    RETRY_SESSION = "retry-session"  # take the acceptor's connect_seq, connect again
    RETRY_GLOBAL = "retry-global"  # take a global_seq above the acceptor's, connect again
    WAIT = "wait"  # the acceptor asks us to wait: a fault (we do not implement waiting)
    BADAUTH = "bad-auth"  # authentication refused: a fault
    UNKNOWN = "unknown"  # not a reply tag: a protocol error


_REPLY_OF_TAG = {
    TAG_RESETSESSION: Reply.RESET,
    TAG_RETRY_SESSION: Reply.RETRY_SESSION,
    TAG_RETRY_GLOBAL: Reply.RETRY_GLOBAL,
    TAG_WAIT: Reply.WAIT,
    TAG_BADAUTH: Reply.BADAUTH,
}


def on_reply(tag: int, known_nonce: int, reply_nonce: int, lossy: bool) -> Reply:
    """What the connecting side does with a reply ``tag`` from incarnation ``reply_nonce``
    (``known_nonce``: the incarnation our session was with, 0 if none)."""
    if tag == TAG_READY:
        if known_nonce and known_nonce != reply_nonce and not lossy:
            return Reply.OPEN_RESET
        return Reply.OPEN
    return _REPLY_OF_TAG.get(tag, Reply.UNKNOWN)
