"""Who is online, which rooms they are in, and how a message reaches them.

The hub maps each online user's clash key (``name_key``) to a ``Member``:
the name as they wrote it, the protocol version they speak and their
``Mailbox``; and each room's clash key to a ``Room`` and its members.
``route`` takes an ``Envelope`` (who sent it, to whom, the texts) to its
target: a user, a room, or everyone (``*``, the everyone-room of
``--presence global``). It gives every message it accepts an id and a time
and says what happened: how many texts went, or why they were refused;
recipients left congested are added to a list the sender waits on. Each
delivery is encoded once per fan-out and protocol version (``talk`` for
version 1, ``msg`` for version 2), by the protocol layer's codec, and
handed to every recipient's mailbox in one batch.

Routing is synchronous and never waits: a member whose mailbox is full is
kicked (its own task then takes it offline) instead of slowing the sender
or anyone else down. The hub holds no sockets and knows no tasks.

Observers (``observe``) are told about every message accepted, after its
delivery, as an ``Accepted`` record with its ids and time; they are called
synchronously and must not block: an observer that needs to wait (a store,
a cluster bus) hands the record to a task of its own through a bounded
channel with ``send_nowait``.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from functools import partial
from typing import NamedTuple, Protocol

import trio

from ..protocol._codec import delivery_block, delivery_head, encode, message_block
from ..protocol.messages import (
    BROADCAST,
    Exit,
    Login,
    Parted,
    format_epoch_ms,
    name_key,
)
from .mailbox import Drainable, Mailbox

__all__ = [
    "Accepted",
    "Envelope",
    "Hub",
    "Member",
    "NameTaken",
    "OfflineKeeper",
    "Refusal",
    "Room",
    "RoomRefused",
    "Routed",
]


class Envelope(NamedTuple):
    """A message on its way: from *sender* (a name), to *to* (a user's
    name, a room, or ``*`` for everyone), one or more *texts* (UTF-8,
    valid)."""

    sender: str
    to: str
    texts: Sequence[bytes]


class Accepted(NamedTuple):
    """Messages the hub accepted and delivered, as observers see them:
    from *sender* to *to* (the recipient's name, the room as its first
    member wrote it, or ``*``), *texts* numbered from *first_id* on, all
    stamped *time_ms* (milliseconds since the Unix epoch, UTC)."""

    sender: str
    to: str
    texts: Sequence[bytes]
    first_id: int
    time_ms: int


class Refusal(Enum):
    """Why the hub did not deliver an envelope: the protocol's error code."""

    NO_SUCH_USER = "no-such-user"
    NOT_IN_ROOM = "not-in-room"
    MAILBOX_FULL = "mailbox-full"


class OfflineKeeper(Protocol):
    """Where direct messages to an account that is offline are kept until
    it logs in (the store)."""

    def account_name(self, key: str) -> str | None: ...

    def record_offline(self, accepted: Accepted, account_key: str) -> bool: ...


class RoomRefused(Exception):
    """A ``join`` or ``part`` the hub refused; ``code`` is the protocol's
    error code, ``detail`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Routed(NamedTuple):
    """What ``route`` did: how many of the texts it took (the others wait
    until the congested recipients have room), and why it refused them, if
    it did, with the target it could not reach as the sender wrote it."""

    taken: int
    refused: Refusal | None = None
    recipient: str = ""


class Member:
    """An online user as the hub sees them."""

    __slots__ = (
        "echo",
        "end",
        "exit_frame",
        "key",
        "kick",
        "login_frame",
        "mailbox",
        "name",
        "replace",
        "rooms",
        "secret",
        "session_frame",
        "version",
    )

    def __init__(
        self,
        name: str,
        mailbox: Mailbox,
        kick: Callable[[str], None],
        *,
        version: int = 1,
        echo: bool = False,
    ):
        self.name = name
        self.key = name_key(name)
        self.mailbox = mailbox
        self.kick = kick
        """Take this user offline, giving the reason (for the log)."""
        self.version = version
        """The protocol version the user's connection speaks."""
        self.echo = echo
        """Whether the user gets its own accepted messages back (version 2)."""
        self.rooms: dict[str, Room] = {}
        """The rooms the user is in, by their clash keys."""
        self.secret: str | None = None
        """The session's secret, which ``resume`` takes (``Hub.open_session``)."""
        self.session_frame = b""
        """``session|SECRET|SECONDS``, sent right after the login
        acknowledgement; empty without a session to resume."""
        self.replace: Callable[[], None] = _nothing
        """Let go of the session, which another connection takes over: the
        connection that holds it (if any) is told ``replaced`` and closed."""
        self.end: Callable[[str], None] = kick
        """End the session now, giving the reason (a resume on another
        connection failed, say): a connection that holds it is told why and
        closed, after what is queued for it; a waiting session ends as when
        its window passes."""
        self.login_frame = encode(Login(name))
        self.exit_frame = encode(Exit(name))

    def __repr__(self) -> str:
        return f"Member({self.name!r})"

    def send(self, data: bytes, frames: int = 1, last_id: int = 0) -> bool:
        """Put *data* (*frames* frames; messages up to id *last_id*, if it
        is not 0) in this member's mailbox; one that cannot take it is
        kicked as too slow."""
        return self.mailbox.put(data, frames, last_id=last_id) or self._too_slow()

    def _too_slow(self) -> bool:
        self.kick("too slow: outgoing queue full")
        return False


def _nothing() -> None:
    pass


def _digest(secret: str) -> bytes:
    # Sessions are looked up by a digest of their secret, and the secret is
    # then compared in constant time: how long a lookup takes says nothing
    # about how much of a guess was right.
    return hashlib.sha256(secret.encode()).digest()


class Room:
    """A room and its members; it exists while it has any."""

    __slots__ = ("join_frames", "key", "members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        """As its first member wrote it."""
        self.key = name_key(name)
        self.members: dict[str, Member] = {}
        """By their clash keys, in the order they joined."""
        self.join_frames: dict[str, bytes] = {}
        """Each member's ``join|ROOM|NAME``, made once: a join list is
        these, joined."""

    def __repr__(self) -> str:
        return f"Room({self.name!r}, {len(self.members)} members)"


class NameTaken(Exception):
    """Another online user holds a name that clashes with the one asked for."""

    def __init__(self, asked: str, holder: str) -> None:
        super().__init__(asked, holder)
        self.asked = asked
        self.holder = holder
        """The name as the user who holds it wrote it."""

    def __str__(self) -> str:
        if self.asked == self.holder:
            return f"{self.asked} is already online"
        # Told as it is: "ALICE is already online" while alice holds it
        # sent users looking for someone who is not there.
        return f"{self.asked} is taken: {self.holder} is online"


Observer = Callable[[Accepted], None]


class Hub:
    """The online users and their rooms, and delivery of presence and talk
    between them.

    With *global_presence* (``--presence global``) every user is in ``*``:
    everyone hears of every login and exit, and ``talk|*`` reaches everyone.
    Without it (``--presence rooms``) users hear of each other only through
    the rooms they share, and ``*`` is no target. *max_rooms* caps the rooms
    one user may be in (0: no cap). *first_id* is the id the first message
    gets (by default the clock, in microseconds, so that ids keep rising
    across restarts); *clock* tells the time, in seconds since the epoch.
    """

    def __init__(
        self,
        *,
        global_presence: bool = True,
        max_rooms: int = 0,
        first_id: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.global_presence = global_presence
        self.max_rooms = max_rooms
        self._members: dict[str, Member] = {}
        # The same members by their names exactly as they wrote them.
        self._exact: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        self._rooms_exact: dict[str, Room] = {}
        self._observers: list[Observer] = []
        self._sessions: dict[bytes, Member] = {}
        self.offline: OfflineKeeper | None = None
        """Keeps direct messages to accounts that are offline (the store);
        None: such a message is refused (``no-such-user``)."""
        self.next_id = time.time_ns() // 1000 if first_id is None else first_id
        """The id the next accepted message gets."""
        self._clock = clock
        self._stamp_ms = -1
        self._stamp = b""
        self.hold_presence = False
        """When True, logins, exits, joins and parts wait in the hub's
        presence log for ``release``, so that everyone gets the presence of
        a busy moment in one write; whoever sets it must call ``release``
        after ``presence_held``."""
        self.presence_held = trio.Event()
        # The presence of the batch under way, and of those being sent.
        self._batch = _PresenceBatch()
        self._sending: list[_PresenceBatch] = []
        # Where the logins in the batch under way are in it, with the room
        # joins and parts of the same members after them: all taken back if
        # the member leaves before the batch is sent.
        self._fresh: dict[Member, list[int]] = {}
        self._announcements: list[
            tuple[bytes, list[Member] | None, tuple[Room, ...], Member | None]
        ] = []

    def __len__(self) -> int:
        return len(self._members)

    def member(self, key: str) -> Member | None:
        """The online member (or waiting session) whose clash key is *key*."""
        return self._members.get(key)

    def __contains__(self, name: object) -> bool:
        """Whether a user whose name clashes with *name* is online."""
        return isinstance(name, str) and name_key(name) in self._members

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def names(self) -> list[str]:
        return [member.name for member in self._members.values()]

    def online_as_written(self, name: str) -> bool:
        """Whether *name* is ``*``, an online user's name or a room's exactly
        as they wrote it: a target ``route`` takes without a look at its
        rules."""
        return name == BROADCAST or name in self._exact or name in self._rooms_exact

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call *observer* with every message accepted from now on; returns
        the function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # -- presence ----------------------------------------------------------

    def join(self, member: Member) -> None:
        """Put *member* online and give it its acknowledgement; with global
        presence, tell everyone and give the newcomer one ``login`` frame
        per user already online.

        Raises NameTaken when an online user's name clashes with the member's.
        """
        if member.key in self._members:
            raise NameTaken(member.name, self._members[member.key].name)
        if self.global_presence:
            if self.hold_presence:
                self._fresh[member] = [len(self._batch.frames)]
            self._announce(member.login_frame)
        roster = self.snapshot(member)
        self._members[member.key] = member
        self._exact[member.name] = member
        # The roster is the server's own answer and may be large: it always
        # fits, and counts as one frame against the limits.
        if not member.mailbox.put(roster, force=True):
            member.kick("too slow: outgoing queue full")

    def snapshot(self, member: Member, *, resumed: bool = False) -> bytes:
        """What an online *member* is told of the world when it logs in or
        resumes: its own ``login`` (and its ``session``: after the login
        when it logs in, before it when it *resumed*), one ``login`` per
        other user in its presence scope, and one ``join`` list per room it
        is in."""
        # What it is told reflects the presence so far: none is for it.
        for batch in self._sending:
            batch.note_given(member)
        if self._batch.frames:
            self._batch.note_given(member)
        if resumed:
            frames = [member.session_frame, member.login_frame]
        else:
            frames = [member.login_frame, member.session_frame]
        if self.global_presence:
            others = self._members.values()
            if self._members.get(member.key) is member:  # taken back
                frames.extend(o.login_frame for o in others if o is not member)
            else:  # not online yet
                frames.extend([other.login_frame for other in others])
        for room in member.rooms.values():
            own = room.join_frames[member.key]
            frames.append(own)
            frames.extend(f for f in room.join_frames.values() if f is not own)
        return b"".join(frames)

    def leave(self, member: Member, *, announce: bool = True) -> None:
        """Take *member* offline and out of its rooms and, if *announce*,
        tell whoever could see it (everyone, or those sharing a room)."""
        if self._members.get(member.key) is not member:
            return
        del self._members[member.key]
        del self._exact[member.name]
        if member.secret is not None:
            del self._sessions[_digest(member.secret)]
        shared: list[Room] = []
        for room in member.rooms.values():
            del room.members[member.key]
            del room.join_frames[member.key]
            if room.members:
                shared.append(room)
            else:
                self._drop_room(room)
        member.rooms.clear()
        self._batch.given.pop(member, None)
        for batch in self._sending:
            batch.given.pop(member, None)
        fresh = self._fresh.pop(member, None)
        if not announce:
            return
        if fresh is not None:
            # In and out within one batch: those who were not given its
            # login yet need none of its frames (a presence storm costs
            # them nothing).
            self._take_back(fresh, member.exit_frame)
        elif self.global_presence:
            self._announce(member.exit_frame)
        elif shared:
            # One exit per user who shared any room with it.
            self._announce(member.exit_frame, rooms=tuple(shared))

    def open_session(self, member: Member, frame: Callable[[str], bytes]) -> None:
        """Give *member* (not online yet) a session that ``resume`` can take
        back: an unguessable secret, and the ``session`` frame *frame* makes
        of it."""
        secret = secrets.token_urlsafe(18)  # 144 random bits
        member.secret = secret
        member.session_frame = frame(secret)
        self._sessions[_digest(secret)] = member

    def close_session(self, member: Member) -> None:
        """*member*'s secret no longer names its session: nobody can resume
        it with that secret any more."""
        if member.secret is not None:
            self._sessions.pop(_digest(member.secret), None)
        member.secret = None
        member.session_frame = b""

    def find_session(self, secret: str) -> Member | None:
        """The online member (connected, or waiting for a resume) whose
        session *secret* names; None for an unknown or ended session."""
        member = self._sessions.get(_digest(secret))
        if member is None or member.secret is None:
            return None
        if not hmac.compare_digest(member.secret.encode(), secret.encode()):
            return None
        return member

    def _take_back(self, entries: list[int], exit_frame: bytes) -> None:
        """A user leaves while its login, at *entries[0]* in the batch under
        way, is not sent yet: take the login out, and its room joins and
        parts after it (the rest of *entries*), and tell the exit only to
        those given the login already (or shown it on arrival)."""
        batch = self._batch
        for index in entries:
            batch.frames[index] = b""
        told = batch.given_since(entries[0])
        if told:
            self._announce(exit_frame, told)

    def _note_fresh(self, member: Member) -> None:
        """If *member*'s login is in the batch under way, the frame logged
        next is its too: taken back with the login."""
        entries = self._fresh.get(member)
        if entries is not None:
            entries.append(len(self._batch.frames))

    def catch_up(self, member: Member) -> None:
        """Give *member* the presence held for it that it has not been given
        yet: whatever is put in its mailbox next then comes after the
        logins, exits, joins and parts that happened before it."""
        if self._members.get(member.key) is not member:
            return
        for batch in self._sending:
            batch.give(member)
        if self._batch.frames:
            self._batch.give(member)

    def _seal(self) -> _PresenceBatch:
        """End the batch under way; a new one starts."""
        batch, self._batch = self._batch, _PresenceBatch()
        self._fresh = {}
        self.presence_held = trio.Event()
        batch.seal()
        self._sending.append(batch)
        return batch

    def release(self) -> None:
        """Send all the presence held, to every online member, at once."""
        self._seal()
        while self._sending:
            batch = self._sending[0]
            for member in list(self._members.values()):
                batch.give(member)
            self._sending.remove(batch)

    async def release_in_turns(self, per_turn: int) -> None:
        """Send the presence held, to *per_turn* members per turn of the
        event loop: to thousands it takes thousands of writes, and each
        member's writer has its own step, so all at once the turn that
        holds them would keep everyone waiting. Those not given theirs yet
        get it first if anything else is sent to them meanwhile."""
        batch = self._seal()
        members = list(self._members.values())
        try:
            for start in range(0, len(members), per_turn):
                for member in members[start : start + per_turn]:
                    if self._members.get(member.key) is member:
                        batch.give(member)
                await trio.lowlevel.checkpoint()
        finally:
            # (Cancelled midway, as the server stops: the rest at once.)
            for member in list(self._members.values()):
                batch.give(member)
            self._sending.remove(batch)

    def _announce(
        self,
        frame: bytes,
        audience: list[Member] | None = None,
        rooms: tuple[Room, ...] = (),
        but: Member | None = None,
    ) -> None:
        """Tell *frame* (a login, an exit, a join or a part) to the
        *audience*, or to the members of *rooms* (*but* one), or to
        everyone online.

        Telling a user too slow to take it kicks them; a kick that takes
        them offline at once (the server's waits for their task) announces
        their exit from inside this one. Such announcements are queued and
        told here, one after another, so that a crowd of stalled users
        cannot nest a call per user.
        """
        self._announcements.append((frame, audience, rooms, but))
        if len(self._announcements) > 1:
            return  # an announcement is under way and will tell this one
        try:
            while self._announcements:
                self._tell(*self._announcements[0])
                del self._announcements[0]
        finally:
            self._announcements.clear()

    def _tell(
        self,
        frame: bytes,
        audience: list[Member] | None,
        rooms: tuple[Room, ...],
        but: Member | None,
    ) -> None:
        """Send *frame* to the *audience*, or the members of *rooms* but
        *but*, or everyone online, now; or, while presence is held, log it
        for ``release``."""
        if self.hold_presence:
            keys = tuple(room.key for room in rooms) if rooms else None
            self._batch.add(frame, audience, keys)
            self.presence_held.set()
            return
        online = self._members
        if rooms:
            sharing: dict[str, Member] = {}
            for room in rooms:
                sharing.update(room.members)
            sharing.pop("" if but is None else but.key, None)
            audience = list(sharing.values())
        for member in list(online.values()) if audience is None else audience:
            if online.get(member.key) is member:  # not kicked meanwhile
                member.send(frame)

    # -- rooms -------------------------------------------------------------

    def join_room(self, member: Member, name: str) -> None:
        """Put *member* in room *name* (a valid room name), making the room
        if nobody is in it: its members get ``join|ROOM|NAME``, and the
        member gets its own ``join`` then one per member already there.

        Raises RoomRefused (``already-in-room``, ``too-many-rooms``).
        """
        key = name_key(name)
        room = self._rooms.get(key)
        if room is not None and member.key in room.members:
            raise RoomRefused("already-in-room", f"already in {room.name}")
        if self.max_rooms and len(member.rooms) >= self.max_rooms:
            raise RoomRefused(
                "too-many-rooms", f"in {self.max_rooms} rooms already; part one first"
            )
        if room is None:
            room = self._rooms[key] = self._rooms_exact[name] = Room(name)
        # Both names are valid: the frame needs no second look.
        frame = f"join|{room.name}|{member.name}\n".encode()
        others = bool(room.members)
        # The join list is an answer: it arrives whole, and always fits.
        answer = frame + b"".join(room.join_frames.values())
        if self.hold_presence:
            self._batch.move(member, key, joined=True, told=others)
        room.members[member.key] = member
        room.join_frames[member.key] = frame
        member.rooms[key] = room
        if others:
            # Presence, as logins are: a crowd joining at once costs each
            # member one write per batch, not one per joiner.
            self._note_fresh(member)
            self._announce(frame, rooms=(room,), but=member)
        self.catch_up(member)  # the logins of those it lists come first
        if not member.mailbox.put(answer, force=True):
            member.kick("too slow: outgoing queue full")

    def part_room(self, member: Member, name: str) -> None:
        """Take *member* out of room *name*: its members and the member get
        ``part|ROOM|NAME``. Raises RoomRefused (``not-in-room``)."""
        room = member.rooms.get(name_key(name))
        if room is None:
            raise RoomRefused("not-in-room", name)
        frame = encode(Parted(room.name, member.name))
        if self.hold_presence:
            self._batch.move(member, room.key, joined=False, told=True)
        del member.rooms[room.key]
        del room.members[member.key]
        del room.join_frames[member.key]
        self.catch_up(member)
        member.send(frame)
        if room.members:
            self._note_fresh(member)
            self._announce(frame, rooms=(room,))
        if not room.members:
            self._drop_room(room)

    def _drop_room(self, room: Room) -> None:
        del self._rooms[room.key]
        del self._rooms_exact[room.name]

    def rooms(self) -> list[tuple[str, int]]:
        """Every room, as its first member wrote it, and its member count."""
        return [(room.name, len(room.members)) for room in self._rooms.values()]

    def room_members(self, name: str) -> list[str]:
        """The names of the members of room *name*, [] if it has none."""
        room = self._rooms.get(name_key(name))
        return [] if room is None else [m.name for m in room.members.values()]

    # -- talk ------------------------------------------------------------------

    def route(
        self,
        sender: Member,
        envelope: Envelope,
        congested: list[Drainable],
        crowded: list[Drainable] | None = None,
    ) -> Routed:
        """Deliver *envelope* from *sender* to its target.

        It takes as many of the texts as fit the room its recipients have
        (``Mailbox.room``), one at least, in one batch per recipient;
        recipients whose mailboxes this sender made congested are added
        to *congested*, and the sender should let them drain before it
        sends more; those that were congested already, by others, go to
        *crowded* (if given), which a sender waits on only briefly: it did
        not fill them. A direct message to nobody online, or to a user too slow to
        take it (who is being dropped), is refused; so is a message to a
        room the sender is not in, or to ``*`` without global presence.
        Each text taken gets the next message id, in order.
        """
        to = envelope.to
        if to == BROADCAST:
            if not self.global_presence:
                return Routed(len(envelope.texts), Refusal.NOT_IN_ROOM, to)
            recipients = [m for m in self._members.values() if m is not sender]
            return self._deliver(
                sender, envelope, BROADCAST, recipients, congested, crowded
            )
        if to[:1] == "#":  # is_room, inlined: the hot path
            room = self._rooms_exact.get(to) or self._rooms.get(name_key(to))
            if room is None or sender.key not in room.members:
                return Routed(len(envelope.texts), Refusal.NOT_IN_ROOM, to)
            recipients = [m for m in room.members.values() if m is not sender]
            return self._deliver(
                sender, envelope, room.name, recipients, congested, crowded
            )
        recipient = self._exact.get(to) or self._members.get(name_key(to))
        if recipient is None:
            return self._keep_offline(sender, envelope, congested)
        return self._deliver(
            sender,
            envelope,
            recipient.name,
            [recipient],
            congested,
            crowded,
            direct=True,
        )

    def _deliver(
        self,
        sender: Member,
        envelope: Envelope,
        to: str,
        recipients: list[Member],
        congested: list[Drainable],
        crowded: list[Drainable] | None,
        *,
        direct: bool = False,
    ) -> Routed:
        """Deliver the texts of *envelope* that fit to *recipients*, as
        addressed to *to*, and echo them to the sender if it asked. For a
        *direct* message, a recipient too slow to take it is a refusal."""
        texts = envelope.texts
        echo = sender.echo and to != sender.name
        if len(texts) > 1 and (recipients or echo):
            # Its echoes must fit the sender's own queue as well.
            holders = [*recipients, sender] if echo else recipients
            if len(holders) == 1:
                frame_room, byte_room = holders[0].mailbox.room
            else:
                rooms = [member.mailbox.room for member in holders]
                frame_room = min(frames for frames, _ in rooms)
                byte_room = min(size for _, size in rooms)
            # A msg frame's id and time cost about 45 bytes on top of its head.
            overhead = len(sender.name) + len(to) + 52
            texts = _fitting(texts, overhead, frame_room, byte_room)
        count = len(texts)
        first_id = self.next_id
        self.next_id = first_id + count
        talk: bytes | None = None
        msg: bytes | None = None
        last_id = first_id + count - 1
        if self._batch.frames or self._sending:
            # Presence first: nobody hears from a user before its login.
            for member in recipients:
                self.catch_up(member)
            if sender.echo:
                self.catch_up(sender)
        for member in recipients:
            if member.version == 1:
                if talk is None:
                    # Encoded once for everyone who speaks version 1...
                    talk = delivery_block(delivery_head(sender.name, to), texts)
                block = talk
                sent = member.send(block, count)
            else:
                if msg is None:
                    # ... and once for everyone who speaks version 2.
                    msg = message_block(first_id, self._time(), sender.name, to, texts)
                block = msg
                sent = member.send(block, count, last_id)
            if not sent:
                if direct:
                    if self.offline is not None and member.key not in self._members:
                        # Its session ended for it (one that waited for a
                        # resume and overflowed): kept for the account.
                        return self._keep_offline(sender, envelope, congested)
                    # Too slow, and being dropped: refused, not lost unsaid.
                    return Routed(count, Refusal.NO_SUCH_USER, envelope.to)
            elif member.mailbox.congested:
                mailbox = member.mailbox
                if crowded is not None and mailbox.was_congested(len(block), count):
                    crowded.append(mailbox)
                else:
                    congested.append(mailbox)
        if echo:
            if msg is None:
                msg = message_block(first_id, self._time(), sender.name, to, texts)
            _echo(sender, msg, count, last_id, congested)
        # Observers hear of what was delivered, not of what was refused.
        if self._observers:
            if msg is None:
                self._time()
            accepted = Accepted(sender.name, to, texts, first_id, self._stamp_ms)
            for observer in self._observers:
                observer(accepted)
        return Routed(count)

    def _keep_offline(
        self, sender: Member, envelope: Envelope, congested: list[Drainable]
    ) -> Routed:
        """A direct message to nobody online: kept for the account it is
        to, if it is one (its sender is told ``mailbox-full`` when the
        account has as many as it may keep), refused otherwise."""
        texts = envelope.texts
        key = name_key(envelope.to)
        offline = self.offline
        # Named as its owner wrote it, however the sender spelled it (as a
        # message to the account online would be).
        if offline is None or (to := offline.account_name(key)) is None:
            return Routed(len(texts), Refusal.NO_SUCH_USER, envelope.to)
        first_id = self.next_id
        self._time()
        accepted = Accepted(sender.name, to, texts, first_id, self._stamp_ms)
        # The keeper keeps it in history too: the observers (the store
        # among them) are not told of it again.
        if not offline.record_offline(accepted, key):
            return Routed(len(texts), Refusal.MAILBOX_FULL, to)
        self.next_id = first_id + len(texts)
        if sender.echo:
            msg = message_block(first_id, self._stamp, sender.name, to, texts)
            count = len(texts)
            self.catch_up(sender)
            _echo(sender, msg, count, first_id + count - 1, congested)
        return Routed(len(texts))

    def restamp(self, sender: str, to: str, text: str) -> Accepted:
        """A message accepted earlier whose id and time its receiver was
        never told (a protocol-1 delivery), as if accepted now: kept for
        later, it needs both."""
        first_id = self.next_id
        self.next_id = first_id + 1
        self._time()
        return Accepted(sender, to, [text.encode()], first_id, self._stamp_ms)

    def _time(self) -> bytes:
        """The time stamp of a message accepted now, as the wire writes it:
        formatted once per millisecond."""
        ms = int(self._clock() * 1000)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp = format_epoch_ms(ms).encode()
        return self._stamp


class _PresenceBatch:
    """Logins, exits, joins and parts held to be sent together (see
    ``Hub.hold_presence``): their frames in order (b"" where taken back),
    who some of them are for (the others are for everyone online), and how
    far into it each member has been given it already (absent: not at
    all).

    A frame is for some either as a set of members (``only_for``) or as the
    members of some rooms at the time it was logged (``rooms_for``, by room
    key): a crowd leaving a room of thousands costs a key per exit, not a
    set of thousands. Who was in a room at the time is who is in it now,
    but for the members who joined or parted rooms during the batch
    (``moves``: their spans in each such room, as frame positions).
    """

    __slots__ = (
        "_by_rooms",
        "_everyone",
        "_gives",
        "_room_keys",
        "_segments",
        "_some",
        "_specific",
        "frames",
        "given",
        "moves",
        "only_for",
        "rooms_for",
    )

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.only_for: dict[int, set[Member]] = {}
        self.rooms_for: dict[int, tuple[str, ...]] = {}
        self.moves: dict[Member, dict[str, list[list[float]]]] = {}
        self.given: dict[Member, int] = {}
        # Every give in order: how far it went (never less than the one
        # before: frames are only added) and to whom. Who was given a frame
        # is found without a look at everyone given anything.
        self._gives: list[tuple[int, Member]] = []
        self._everyone: bytes | None = None
        self._some: set[Member] = set()
        self._room_keys: set[str] = set()
        self._specific: list[int] = []
        self._segments: list[bytes] = []
        self._by_rooms: dict[frozenset[str], bytes] = {}

    def add(
        self,
        frame: bytes,
        audience: list[Member] | None,
        rooms: tuple[str, ...] | None = None,
    ) -> None:
        if audience is not None:
            self.only_for[len(self.frames)] = set(audience)
        elif rooms is not None:
            self.rooms_for[len(self.frames)] = rooms
        self.frames.append(frame)

    def move(self, member: Member, room_key: str, *, joined: bool, told: bool) -> None:
        """*member* joins (or parts) room *room_key* now: it is in the room
        for the frames logged from now on (or until now). If its join or
        part is *told* to the room, it is the frame logged next, which is
        not for it."""
        here = len(self.frames) - (joined and not told)
        spans = self.moves.setdefault(member, {}).get(room_key)
        if spans is None:
            # Its first move in this room: before it, it was in the room
            # if it parts now.
            spans = self.moves[member][room_key] = [] if joined else [[-1, math.inf]]
        if joined:
            spans.append([here, math.inf])
        elif spans:
            spans[-1][1] = here

    def _in_rooms(self, member: Member, rooms: tuple[str, ...], index: int) -> bool:
        """Whether *member* was in any of *rooms* when frame *index* was
        logged."""
        moves = self.moves.get(member)
        for key in rooms:
            spans = None if moves is None else moves.get(key)
            if spans is None:
                if key in member.rooms:
                    return True
            elif any(start < index < end for start, end in spans):
                return True
        return False

    def _for(self, member: Member, index: int) -> bool:
        """Whether frame *index* is for *member*."""
        audience = self.only_for.get(index)
        if audience is not None:
            return member in audience
        rooms = self.rooms_for.get(index)
        return rooms is None or self._in_rooms(member, rooms, index)

    def seal(self) -> None:
        """No more frames: the block most members get is made, once."""
        frames, only_for, rooms_for = self.frames, self.only_for, self.rooms_for
        # The frames for everyone between those for some, each run joined
        # once: a member of some audience gets the runs and, between them,
        # the frames for it, at a cost in the frames for some, not in all.
        self._specific = specific = sorted([*only_for, *rooms_for])
        segments = []
        after = 0
        for index in specific:
            segments.append(b"".join(frames[after:index]))
            after = index + 1
        segments.append(b"".join(frames[after:]))
        self._segments = segments
        self._everyone = b"".join(segments)
        self._some = set().union(*only_for.values())
        self._room_keys = set().union(*rooms_for.values())

    def _block(self, wanted: Callable[[int], bool]) -> bytes:
        """The runs for everyone, and between them the frames *wanted*."""
        frames, segments = self.frames, self._segments
        parts = [segments[0]]
        for number, index in enumerate(self._specific, 1):
            if wanted(index):
                parts.append(frames[index])
            parts.append(segments[number])
        return b"".join(parts)

    def note_given(self, member: Member) -> None:
        """*member* has been given every frame so far (a newcomer's roster
        shows what they say)."""
        end = len(self.frames)
        self.given[member] = end
        self._gives.append((end, member))

    def given_since(self, index: int) -> list[Member]:
        """The members still here that have been given frame *index*."""
        start = bisect.bisect_right(self._gives, index, key=_how_far)
        given = self.given
        told: dict[Member, None] = {}
        for _, member in itertools.islice(self._gives, start, None):
            if given.get(member, 0) > index:
                told[member] = None
        return list(told)

    def give(self, member: Member) -> None:
        """Put the frames for *member* it has not been given in its mailbox,
        in one write; a member with no room for them is kicked."""
        frames = self.frames
        start = self.given.get(member, 0)
        end = len(frames)
        if start >= end:
            return
        # note_given, inlined: every member is given every batch.
        self.given[member] = end
        self._gives.append((end, member))
        if self._everyone is None or start:
            block = b"".join(
                frame
                for index in range(start, end)
                if (frame := frames[index]) and self._for(member, index)
            )
        elif member in self._some or member in self.moves:
            block = self._block(partial(self._for, member))
        else:
            # The common case: members who did not move get what the
            # rooms they are in were told, the same for all in the same
            # rooms, made once.
            keys = frozenset(k for k in member.rooms if k in self._room_keys)
            if not keys:
                block = self._everyone
            elif (found := self._by_rooms.get(keys)) is not None:
                block = found
            else:
                block = self._by_rooms[keys] = self._block(
                    lambda index: not keys.isdisjoint(self.rooms_for.get(index, ()))
                )
        # One frame for the limits however many it holds: a crowd's
        # presence is the server's news, and a reader that keeps up must
        # not be dropped for a storm it did not make.
        if block and not member.mailbox.put(block, whole=True):
            member.kick("too slow: outgoing queue full")


def _how_far(give: tuple[int, Member]) -> int:
    return give[0]


def _echo(
    sender: Member, block: bytes, count: int, last_id: int, congested: list[Drainable]
) -> None:
    """Give *sender* its own accepted messages back (the ``echo`` option);
    a sender that fills its own mailbox past half lets it drain."""
    if sender.send(block, count, last_id) and sender.mailbox.congested:
        congested.append(sender.mailbox)


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
