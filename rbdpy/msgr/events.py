"""What a Connection reports to its driver: immutable events, one per thing that happened.

Frozen, so an event means the same thing to everyone who holds it. (The messenger drops its
reference to a MessageReceived by consuming the list it came in, not by clearing a field:
see ``Messenger._handle``.)
"""

from __future__ import annotations

from dataclasses import dataclass

from rbdpy.msgr.message import EntityName, Message


@dataclass(frozen=True)
class HandshakeDone:
    peer: EntityName
    peer_nonce: int


@dataclass(frozen=True)
class MessageReceived:
    msg: Message


@dataclass(frozen=True)
class KeepaliveReceived:
    stamp: int


@dataclass(frozen=True)
class KeepaliveAck:
    stamp: int


@dataclass(frozen=True)
class SessionReset:
    """Our session with the peer was lost (the peer restarted or told us so).

    ``dropped`` are the messages sent or queued but never acknowledged: they were discarded
    and the upper layer must resubmit what still matters.
    """

    peer: EntityName | None
    dropped: list[Message]


@dataclass(frozen=True)
class PeerReset:
    """The peer started a new session (it restarted): state about its old one is stale."""

    peer: EntityName


@dataclass(frozen=True)
class Fault:
    reason: str


@dataclass(frozen=True)
class Closed:
    """The peer closed the session on purpose: nothing will be replayed."""


Event = (
    HandshakeDone | MessageReceived | KeepaliveReceived | KeepaliveAck | SessionReset
    | PeerReset | Fault | Closed
)
