"""Who is online, and how a message reaches them.

The hub maps each online user's clash key (``name_key``) to a ``Member``:
the name as they wrote it and their ``Mailbox``. ``route`` takes an
``Envelope`` (who sent it, to whom, the texts) to its target, a user or
everyone (``*``), and says what happened: how many texts went, or why they
were refused; recipients left congested are added to a list the sender
waits on. Each delivery is encoded once per fan-out, by the protocol
layer's codec, and handed to every recipient's mailbox in one batch.

Routing is synchronous and never waits: a member whose mailbox is full is
kicked (its own task then takes it offline) instead of slowing the sender
or anyone else down. The hub holds no sockets and knows no tasks.

Observers (``observe``) are told about every envelope routed, after its
delivery; they are called synchronously and must not block: an observer
that needs to wait (a store, a cluster bus) hands the envelope to a task
of its own through a bounded channel with ``send_nowait``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import NamedTuple

import trio

from ..protocol._codec import delivery_block, delivery_head, encode
from ..protocol.messages import BROADCAST, Exit, Login, name_key
from .mailbox import Mailbox

__all__ = ["Envelope", "Hub", "Member", "NameTaken", "Refusal", "Routed"]


class Envelope(NamedTuple):
    """A message on its way: from *sender* (a name), to *to* (a user's
    name, or ``*`` for everyone), one or more *texts* (UTF-8, valid)."""

    sender: str
    to: str
    texts: Sequence[bytes]


class Refusal(Enum):
    """Why the hub did not deliver an envelope."""

    NO_SUCH_USER = "no-such-user"


class Routed(NamedTuple):
    """What ``route`` did: how many of the texts it took (the others wait
    until the congested recipients have room), and why it refused them, if
    it did, with the name of the recipient it could not reach."""

    taken: int
    refused: Refusal | None = None
    recipient: str = ""


class Member:
    """An online user as the hub sees them."""

    __slots__ = ("exit_frame", "key", "kick", "login_frame", "mailbox", "name")

    def __init__(self, name: str, mailbox: Mailbox, kick: Callable[[str], None]):
        self.name = name
        self.key = name_key(name)
        self.mailbox = mailbox
        self.kick = kick
        """Take this user offline, giving the reason (for the log)."""
        self.login_frame = encode(Login(name))
        self.exit_frame = encode(Exit(name))

    def __repr__(self) -> str:
        return f"Member({self.name!r})"

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Put *data* (*frames* frames) in this member's mailbox; one that
        cannot take it is kicked as too slow."""
        return self.mailbox.put(data, frames) or self._too_slow()

    def hold(self, frame: bytes) -> bool:
        """``send`` for a presence frame that may wait for ``Hub.release``."""
        return self.mailbox.hold(frame) or self._too_slow()

    def _too_slow(self) -> bool:
        self.kick("too slow: outgoing queue full")
        return False


class NameTaken(Exception):
    """Another online user holds a name that clashes with the one asked for."""


Observer = Callable[[Envelope], None]


class Hub:
    """The online users, and delivery of presence and talk between them."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        # The same members by their names exactly as they wrote them.
        self._exact: dict[str, Member] = {}
        self._observers: list[Observer] = []
        self.hold_presence = False
        """When True, presence frames wait in the mailboxes for ``release``,
        so that everyone gets the logins and exits of a busy moment in one
        write; whoever sets it must call ``release`` after
        ``presence_held``."""
        self.presence_held = trio.Event()
        self._holding: list[Member] = []
        self._announcements: list[bytes] = []

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def names(self) -> list[str]:
        return [member.name for member in self._members.values()]

    def online_as_written(self, name: str) -> bool:
        """Whether *name* is ``*`` or an online user's name exactly as they
        wrote it: a target ``route`` takes without a look at its rules."""
        return name == BROADCAST or name in self._exact

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer* with every envelope routed from now on; returns
        the function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # -- presence ----------------------------------------------------------

    def join(self, member: Member) -> None:
        """Put *member* online: tell everyone, then give the newcomer its
        acknowledgement and one ``login`` frame per user already online.

        Raises NameTaken when an online user's name clashes with the member's.
        """
        if member.key in self._members:
            raise NameTaken(member.name)
        self._announce(member.login_frame)
        roster = [member.login_frame]
        roster.extend(other.login_frame for other in self._members.values())
        self._members[member.key] = member
        self._exact[member.name] = member
        # The roster is the server's own and may be large: it always fits.
        # It counts as one frame against the limits, as one message.
        if not member.mailbox.put(b"".join(roster), force=True):
            member.kick("too slow: outgoing queue full")

    def leave(self, member: Member, *, announce: bool = True) -> None:
        """Take *member* offline and, if *announce*, tell everyone else."""
        if self._members.get(member.key) is not member:
            return
        del self._members[member.key]
        del self._exact[member.name]
        if announce:
            self._announce(member.exit_frame)

    def release(self) -> None:
        """Send the presence frames held back (see ``hold_presence``)."""
        holding, self._holding = self._holding, []
        self.presence_held = trio.Event()
        for member in holding:
            if not member.mailbox.release():
                member.kick("too slow: outgoing queue full")

    def _announce(self, frame: bytes) -> None:
        """Tell everyone online *frame* (a login or an exit).

        Telling a user too slow to take it kicks them; a kick that takes
        them offline at once (the server's waits for their task) announces
        their exit from inside this one. Such announcements are queued and
        told here, one after another, so that a crowd of stalled users
        cannot nest a call per user.
        """
        self._announcements.append(frame)
        if len(self._announcements) > 1:
            return  # an announcement is under way and will tell this one
        try:
            while self._announcements:
                self._tell_everyone(self._announcements[0])
                del self._announcements[0]
        finally:
            self._announcements.clear()

    def _tell_everyone(self, frame: bytes) -> None:
        members = list(self._members.values())
        if not self.hold_presence:
            for member in members:
                if member.key in self._members:  # not kicked meanwhile
                    member.send(frame)
            return
        holding = self._holding
        for member in members:
            if member.key not in self._members:
                continue
            if not member.mailbox.held:
                holding.append(member)  # once, however many it holds
            member.hold(frame)
        self.presence_held.set()

    # -- talk ------------------------------------------------------------------

    def route(
        self, sender: Member, envelope: Envelope, congested: list[Mailbox]
    ) -> Routed:
        """Deliver *envelope* from *sender* to its target.

        It takes as many of the texts as fit the room its recipients have
        (``Mailbox.room``), one at least, in one batch per recipient;
        recipients whose mailboxes are now congested are added to
        *congested*, and the sender should let them drain before it sends
        more. A direct message to nobody online, or to a user too slow to
        take it (who is being dropped), is refused.
        """
        if envelope.to == BROADCAST:
            routed = self._broadcast(sender, envelope, congested)
        else:
            routed = self._direct(sender, envelope, congested)
        # Observers hear of what was delivered, not of what was refused.
        if self._observers and routed.taken and routed.refused is None:
            if routed.taken < len(envelope.texts):
                envelope = envelope._replace(texts=envelope.texts[: routed.taken])
            for observer in self._observers:
                observer(envelope)
        return routed

    def _direct(
        self, sender: Member, envelope: Envelope, congested: list[Mailbox]
    ) -> Routed:
        recipient = self._exact.get(envelope.to) or self._members.get(
            name_key(envelope.to)
        )
        if recipient is None:
            return Routed(len(envelope.texts), Refusal.NO_SUCH_USER, envelope.to)
        mailbox = recipient.mailbox
        head = delivery_head(sender.name, recipient.name)
        texts = _fitting(envelope.texts, len(head) + 1, *mailbox.room)
        if not recipient.send(delivery_block(head, texts), len(texts)):
            # Too slow, and being dropped.
            return Routed(len(texts), Refusal.NO_SUCH_USER, envelope.to)
        if mailbox.congested:
            congested.append(mailbox)
        return Routed(len(texts))

    def _broadcast(
        self, sender: Member, envelope: Envelope, congested: list[Mailbox]
    ) -> Routed:
        recipients = [m for m in self._members.values() if m is not sender]
        if not recipients:
            return Routed(len(envelope.texts))
        texts = envelope.texts
        head = delivery_head(sender.name, BROADCAST)
        if len(texts) > 1:
            rooms = [member.mailbox.room for member in recipients]
            texts = _fitting(
                texts,
                len(head) + 1,
                min(frames for frames, _ in rooms),
                min(size for _, size in rooms),
            )
        # Encoded once for everyone.
        block = delivery_block(head, texts)
        frames = len(texts)
        for member in recipients:
            if member.send(block, frames) and member.mailbox.congested:
                congested.append(member.mailbox)
        return Routed(frames)


def _fitting(
    texts: Sequence[bytes], overhead: int, frame_room: int, byte_room: int
) -> Sequence[bytes]:
    """The first of *texts* that fit the room a mailbox has (see
    ``Mailbox.room``), one at least, where a text's delivery costs its size
    plus *overhead* bytes."""
    if len(texts) == 1:
        return texts
    if len(texts) > frame_room:
        texts = texts[: max(1, frame_room)]
    if sum(map(len, texts)) + overhead * len(texts) <= byte_room:
        return texts
    size = 0
    for count, text in enumerate(texts):
        if size >= byte_room and count:
            return texts[:count]
        size += len(text) + overhead
    return texts
