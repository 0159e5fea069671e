"""A trichat client for programs and bots: log in, send, and read what arrives.

``open_client`` connects (TCP or TLS), logs in and hands out a ``Client``;
``Client.login`` does the same over a stream that is already open. A client
speaks protocol 2 unless told otherwise (``version=1``), and falls back to
protocol 1 by itself with a server that does not know it (trichat 1.0). It
is an async iterator of what the server says, as typed events (``Event``);
it answers the server's pings by itself and keeps track of who is online,
the rooms it is in and who is in them.

    async with open_client("bot") as client:
        await client.join("#lobby")
        async for event in client:
            match event:
                case Message(sender=sender, to="#lobby", text=text):
                    ...

Nothing here writes to a terminal.
"""

from __future__ import annotations

import random
import ssl
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Final, cast

import attrs
import trio

from ..protocol.connection import (
    CLOSED,
    DEFAULT_MAX_LINE,
    NEED_DATA,
    Connection,
    ProtocolError,
    Role,
)
from ..protocol.messages import (
    BROADCAST,
    MAX_ID,
    MAX_NAME,
    MAX_TEXT,
    PROTOCOL_VERSION,
    ChangePassword,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Hello,
    Hist,
    History,
    HistoryEnd,
    Join,
    Joined,
    ListRooms,
    Login,
    Message,
    Part,
    Parted,
    PasswordChanged,
    Ping,
    Pong,
    Register,
    Registered,
    Resume,
    RoomInfo,
    RoomsListed,
    ServerMessage,
    SessionInfo,
    Talk,
    UnknownErrorCode,
    Welcome,
    check_password,
    check_text,
    is_room,
    name_key,
)
from ..protocol.messages import (
    Resumed as ResumedFrame,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_SERVER_FRAME",
    "MAX_UNCONFIRMED",
    "Backoff",
    "BadServerFrame",
    "Client",
    "ConnectionEvent",
    "ConnectionLost",
    "Disconnected",
    "Event",
    "HistoryPage",
    "LoginRefused",
    "NotSent",
    "Reconnecting",
    "ReconnectingClient",
    "ReconnectingEvent",
    "ResumeFailed",
    "Resumed",
    "RoomList",
    "StreamOpener",
    "connect",
    "open_client",
    "open_reconnecting_client",
    "open_stream",
]

DEFAULT_PORT: Final = 8089

MAX_SERVER_FRAME: Final = (
    len("msg|||||#")
    + len(str(MAX_ID))
    + len("2026-12-03T09:15:02.125Z")
    + 4 * (2 * MAX_NAME + MAX_TEXT)
    + len("\r\n")
)
"""The longest frame a server can send, in bytes: a protocol-2
``msg|ID|TIME|FROM|#ROOM|TEXT`` with the longest id, names and text, every
character of them four bytes in UTF-8. It is longer than the server's own
limit on what it reads, since a delivery adds FROM (and an id and a time)."""

_RECEIVE_SIZE: Final = 65536
# How the server refuses a register or change_password request.
_PASSWORD_REFUSALS: Final = frozenset(
    {
        ErrorCode.ALREADY_REGISTERED,
        ErrorCode.BAD_PASSWORD,
        ErrorCode.TLS_REQUIRED,
        ErrorCode.NO_SUCH_ACCOUNT,
    }
)
# How long saying exit, or closing, may take before the stream is just closed.
_CLOSE_GRACE: Final = 2.0


@attrs.frozen
class RoomList:
    """The server's answer to ``Client.list_rooms``: every room that has
    members, each a ``RoomInfo`` (``room``, ``members``: how many), in the
    server's order.

    On the wire the answer is one ``room|ROOM|MEMBERS`` frame per room and
    ``rooms|COUNT`` at the end; the client yields it as this one event, when
    the end has arrived. Iterating a ``RoomList`` goes through its rooms,
    and ``len`` counts them.
    """

    rooms: tuple[RoomInfo, ...] = ()

    def __iter__(self) -> Iterator[RoomInfo]:
        return iter(self.rooms)

    def __len__(self) -> int:
        return len(self.rooms)

    def members(self, room: str) -> int:
        """How many members *room* has: 0 when it is not listed. Room names
        are compared as the protocol compares names (``#Lunch`` is
        ``#lunch``)."""
        key = name_key(room)
        for info in self.rooms:
            if name_key(info.room) == key:
                return info.members
        return 0


@attrs.frozen
class HistoryPage:
    """The server's answer to ``Client.history``: stored messages of
    ``target`` (a room, ``*``, or the conversation with a user), oldest
    first, each a ``Hist`` (``id``, ``time``, ``sender``, ``to``, ``text``).

    On the wire the answer is one ``hist|ID|TIME|FROM|TO|TEXT`` frame per
    message and ``history|TARGET|COUNT`` at the end; the client yields it
    as this one event, when the end has arrived. ``target`` is as the
    request wrote it; ``direction`` (``latest``, ``before``, ``after``) and
    ``asked`` (how many at most) are the request's (``asked`` is 0 for an
    answer to no request this client sent).

    Fewer messages than asked means there are no more that way: nothing
    older for ``latest`` and ``before``, nothing newer (yet) for
    ``after``; ``complete`` says so. Iterating a page goes through its
    messages, and ``len`` counts them.
    """

    target: str
    messages: tuple[Hist, ...] = ()
    asked: int = 0
    direction: str = "latest"

    def __iter__(self) -> Iterator[Hist]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def complete(self) -> bool:
        """True when the server has no more messages in this direction:
        it sent fewer than were asked for."""
        return len(self.messages) < self.asked

    @property
    def oldest(self) -> int | None:
        """The id of the first (oldest) message, None on an empty page:
        ``history(target, n, before=page.oldest)`` reads further back."""
        return self.messages[0].id if self.messages else None

    @property
    def newest(self) -> int | None:
        """The id of the last (newest) message, None on an empty page:
        ``history(target, n, after=page.newest)`` reads on."""
        return self.messages[-1].id if self.messages else None


Event = (
    Login
    | Delivery
    | Message
    | Joined
    | Parted
    | RoomList
    | HistoryPage
    | Registered
    | PasswordChanged
    | Exit
    | Error
    | Ping
    | Pong
)
"""What iterating a ``Client`` yields: every frame the server sends but the
answer to ``hello`` (which ``Client.login`` reads), ``session`` (kept in
``Client.session``) and the frames of a ``rooms`` answer (yielded together,
as one ``RoomList``) and of a ``history`` answer (as one ``HistoryPage``)."""


@attrs.frozen
class _Greeting:
    """What a connection settled on before its login: the protocol version
    it speaks, the server's settings (none on protocol 1) and whether the
    server echoes the client's own messages."""

    version: int = 1
    settings: tuple[tuple[str, str], ...] = ()
    echo: bool = False


class LoginRefused(Exception):
    """The server answered ``hello`` or ``login`` with an error.

    ``error`` is that ``Error``; its ``code`` says why (``bad-name``,
    ``name-taken``, ``server-full``, ...): an ``ErrorCode``, or an
    ``UnknownErrorCode`` for a code this client does not know.

    After a refusal that keeps the connection open (``bad-name``,
    ``name-taken``) the same stream may try again:
    ``Client.login(stream, other_name, after=refused)`` goes on speaking
    what was agreed with the server instead of saying ``hello`` a second
    time, which the server would refuse.
    """

    def __init__(self, error: Error, greeting: _Greeting | None = None) -> None:
        super().__init__(f"{error.code.value}: {error.detail}")
        self.error = error
        # None: no hello was answered; a second try says it again.
        self._greeting = greeting


class ConnectionLost(Exception):
    """The connection broke, or closed before the login was acknowledged.

    ``unconfirmed``: when a ``ReconnectingClient`` ends with it (it gave
    up, or could not log in again), the talks it had handed to a
    connection whose delivery the server never confirmed (with echo;
    see ``ReconnectingClient.unconfirmed``), oldest first; empty
    otherwise."""

    unconfirmed: tuple[Talk, ...] = ()


class NotSent(ConnectionLost):
    """A ``ReconnectingClient`` did not send a frame, and never will: the
    client gave up reconnecting (the session could not be taken back
    within ``give_up_after`` seconds, or logging in again was refused),
    it was closed, or another connection took the session over. ``str()``
    says which (``could not reconnect within 30 s: ...``, ``the client is
    closed``...): the type itself says that nothing was sent."""


class BadServerFrame(Exception):
    """The server sent a frame that the protocol does not allow.

    ``problem`` is the ProtocolError that describes it. Unless ``fatal`` is
    true, the frames after it can still be read: iterating the client again
    goes on with the next one. A fatal problem (a line over the limit) ends
    the iteration.
    """

    def __init__(self, problem: ProtocolError) -> None:
        super().__init__(f"the server sent a bad frame: {problem}")
        self.problem = problem
        self.fatal = problem.code is ErrorCode.TOO_LONG


def _bad(detail: str) -> BadServerFrame:
    return BadServerFrame(ProtocolError(ErrorCode.BAD_FRAME, detail))


def _unexpected(message: ServerMessage, while_doing: str) -> BadServerFrame:
    return _bad(f"unexpected {message.kind} frame {while_doing}")


def _setting(settings: dict[str, str], key: str, default: int, unlimited: int) -> int:
    """The number setting *key* holds: *default* when the server gave none
    (or no number), *unlimited* when it is 0 (no limit)."""
    value = settings.get(key, "")
    if not (value.isascii() and value.isdigit()):
        return default
    return int(value) or unlimited


class _Room:
    """A room this client is in: its name as the server wrote it, and its
    members by clash key."""

    __slots__ = ("members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, str] = {}


DEFAULT_RATE: Final = 10.0
DEFAULT_BURST: Final = 10
"""How fast a client sends when the server does not say (protocol 1):
well under the rate any trichat server allows by default."""


class Pacer:
    """A token bucket that keeps what this client sends under the server's
    flood limit: *rate* frames a second after a burst of *burst*.

    Times are ``trio.current_time()`` values given by the caller; rate 0
    means no limit.
    """

    def __init__(
        self, rate: float, burst: float, now: float = 0.0, *, spent: int = 0
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = max(0.0, self.burst - spent)
        self._at = now

    @classmethod
    def under(cls, rate: float, burst: float, now: float = 0.0) -> Pacer:
        """A pacer with room to spare under a server's *rate* and *burst*:
        its pongs, pings and other frames count too."""
        if rate <= 0:
            return cls(0, 1, now)
        # Logging in (hello, login) took two frames of the burst.
        return cls(rate * 0.8, max(1.0, burst / 2), now, spent=2)

    @classmethod
    def for_server(cls, settings: dict[str, str], now: float = 0.0) -> Pacer:
        """A pacer under the ``rate`` and ``burst`` a server gave in its
        *settings* (``under``), or a cautious default when it gave none
        (protocol 1)."""
        if "rate" not in settings:
            return cls(DEFAULT_RATE, DEFAULT_BURST, now)

        def number(key: str, default: float) -> float:
            try:
                return float(settings[key])
            except (KeyError, ValueError):
                return default

        return cls.under(number("rate", 0), number("burst", 1), now)

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def delay(self, now: float) -> float:
        """How long to wait, from *now*, before the next frame may go."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def spend(self, now: float) -> None:
        """Count one frame sent at *now*."""
        if self.rate <= 0:
            return
        self._refill(now)
        self._tokens -= 1


class Client(trio.abc.AsyncResource):
    """A logged-in trichat connection; build it with ``connect``,
    ``open_client`` or ``Client.login``.

    Iterating it yields every ``Event`` the server sends (``Login``,
    ``Delivery`` on protocol 1 or ``Message`` on protocol 2, ``Joined``,
    ``Parted``, ``RoomList``, ``Exit``, ``Error``, ``Ping``, ``Pong``)
    until the server closes the connection, or right after an error that
    closes it (``ErrorCode.closes``). Frames of kinds this client does not
    know (a newer server's) are skipped. An error with a code this client
    does not know (an ``UnknownErrorCode``) is yielded like any other and
    does not end the iteration. A ``Ping`` is answered with a ``Pong``
    before it is yielded. Only one task may iterate at a time; any number
    may send, so a request's answer (``join``, ``list_rooms``) arrives by
    iteration, in the task that iterates.
    ``receive_batch`` and ``talk_batch`` read and send many frames at
    once, for a program that handles many.

    Attributes:
      name: the client's name as the server acknowledged it.
      version: the protocol version the connection speaks: the one the
        server's answer to ``hello`` named, or 1 (``version=1``, or a
        server that does not know ``hello``).
      settings: the server's settings from that answer (``max-line``,
        ``max-text``, ``rate``, ``presence``...; "0" means off or no
        limit), as ``key -> value``; empty when there was none.
      echo: whether the server sends the client's own messages back to it,
        as a ``Message`` addressed to the target it named (protocol 2
        with ``echo=True``).
      last_id: the highest message id received (0 before any): where
        "everything after" starts for a client that wants to catch up.
      last_heard: ``trio.current_time()`` when the last frame arrived (or
        when the client was made), so a keepalive can tell that the server
        went quiet.
      max_frame: the longest frame, in bytes, that ``send`` lets through:
        the server's ``max-line`` (4096 without settings); the server
        closes a connection that sends a longer line.
      max_text: the most characters a message's text may have: the
        server's ``max-text`` (the protocol's 4000 without settings).
      session: the secret of the session, from the server's ``session``
        frame (protocol 2, with sessions on: ``Client.login`` and
        ``Client.resume`` read it before they return), or None without
        one: what ``Client.resume`` takes back after a drop. Keep it to
        yourself: whoever has it can take the session.
      resume_window: how many seconds the server keeps the session after
        the connection drops (the ``session`` frame's), 0 without one.
      missed: after ``Client.resume``, how many missed messages the server
        said it replays (``resumed|NAME|COUNT``); 0 otherwise.

    A client logged in with a password keeps it, in memory only and never
    shown, for as long as it lives (and takes the new one when the server
    confirms ``register`` or ``change_password``): what a
    ``ReconnectingClient`` needs to log in again when a session is gone.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        """Wrap *stream* before logging in; ``Client.login`` is the way in."""
        self.name = ""
        self.version = 1
        self.settings: dict[str, str] = {}
        self.echo = False
        self.last_id = 0
        self.last_heard = trio.current_time()
        self.max_frame = DEFAULT_MAX_LINE
        self.max_text = MAX_TEXT
        self.session: str | None = None
        self.resume_window = 0
        self.missed = 0
        self._stream = stream
        self._connection = Connection(Role.CLIENT, max_line=MAX_SERVER_FRAME)
        self._online: dict[str, str] = {}
        self._rooms: dict[str, _Room] = {}
        # The rooms of a rooms answer read so far; None outside one.
        self._listing: list[RoomInfo] | None = None
        # The messages of a history answer read so far, and the history
        # requests sent and not answered yet (the server answers in
        # order): (target's clash key, direction, count).
        self._paging: list[Hist] = []
        self._history_asked: deque[tuple[str, str, int]] = deque()
        # Frames that login read past its answer (looking for the session
        # frame), for iteration to yield first.
        self._early: deque[ServerMessage] = deque()
        # The password this client logged in with (None: a guest), and the
        # new ones sent (register, change_password) not answered yet.
        self._password: str | None = None
        self._new_passwords: deque[str] = deque()
        self._send_lock = trio.Lock()
        self._send_broken = False
        self._receiving = False
        self._finished = False
        self._closed = False
        # A bad frame that receive_batch found after good ones: the next
        # read raises it.
        self._problem: ProtocolError | None = None

    @classmethod
    async def login(
        cls,
        stream: trio.abc.Stream,
        name: str,
        *,
        version: int = PROTOCOL_VERSION,
        echo: bool = True,
        after: LoginRefused | None = None,
        password: str | None = None,
    ) -> Client:
        """Log in as *name* over *stream* and wait for the acknowledgement.

        With *password* the client logs in to the account *name*
        (``login|NAME|PASSWORD``); without, as a guest, which the server
        refuses for an account's name (``account-required``). Refusals of
        a password (``no-such-account``, ``wrong-password``,
        ``rate-limited``, ``tls-required``) are LoginRefused like any other,
        and keep the connection open. A password that no account can have
        (under 8 characters, say) is a ValueError, and nothing is sent.

        With *version* 2 (the default) the client first says
        ``hello|2|echo`` (``hello|2`` without *echo*) and reads the
        server's answer: the version the connection speaks and the
        server's settings, which set the client's limits. A server that
        answers ``error|bad-frame`` does not know ``hello`` (trichat 1.0):
        the connection then speaks protocol 1, as it does with *version* 1,
        which says no ``hello`` at all. When the server keeps sessions
        (``resume`` in its settings), the ``session`` frame that follows
        the acknowledgement is read too: ``session`` and
        ``resume_window`` are set when this returns.

        Raises ValueError for a name the protocol does not allow or a
        version this client does not speak (nothing is sent then),
        LoginRefused when the server refuses, ConnectionLost when the
        connection ends first, and BadServerFrame when the server answers
        with something else. *stream* is not closed on failure: after
        ``bad-name`` or ``name-taken`` the server lets the connection try
        again, with *after* the LoginRefused of the last try (see there).
        On success the client owns *stream*.
        """
        request = _login_request(name, password)
        if not 1 <= version <= PROTOCOL_VERSION:
            raise ValueError(f"this client speaks protocol 1 to {PROTOCOL_VERSION}")
        client = cls(stream)
        greeting = None if after is None else after._greeting
        if greeting is None:
            greeting = await client._greet(version, echo)
        client._agree(greeting)
        await client.send(request)
        while True:
            message = await client._next_frame()
            match message:
                case None:
                    raise ConnectionLost(
                        "the server closed the connection before accepting the login"
                    )
                case Login(acknowledged) if name_key(acknowledged) == name_key(name):
                    client.name = acknowledged
                    client._connection.logged_in(acknowledged)
                    client._password = password
                    if client._keeps_sessions():
                        await client._read_session()
                    return client
                case Error():
                    raise LoginRefused(message, greeting)
                case Ping(token):
                    await client._answer(token)
                case Pong():
                    pass
                case _:
                    raise _unexpected(message, "before the login was accepted")

    @classmethod
    async def resume(
        cls,
        stream: trio.abc.Stream,
        session: str,
        last_id: int,
        *,
        echo: bool = True,
    ) -> Client:
        """Take back the dropped session *session* over *stream*, saying
        that *last_id* is the last message id received (0: none).

        Says ``hello|2`` (with ``echo``), then ``resume|SESSION|ID``, and
        returns the client once the server answered ``resumed|NAME|COUNT``
        (``missed`` is COUNT). What follows, read by iteration, is the
        session's snapshot: the own ``Login``, the presence list, one
        ``Joined`` list per room (which rebuild ``online`` and ``rooms``),
        then the COUNT missed messages, each once, in order.

        Raises LoginRefused when the server refuses: with the code
        ``resume-failed`` the connection stays open, and
        ``Client.login(stream, name, after=refused)`` may log in on it;
        ConnectionLost and BadServerFrame as ``Client.login`` does (and
        BadServerFrame when the server does not speak protocol 2).
        *stream* is not closed on failure.
        """
        request = Resume(session, last_id)
        client = cls(stream)
        greeting = await client._greet(PROTOCOL_VERSION, echo)
        if greeting.version < 2:
            raise _bad("the server does not speak protocol 2: no resume")
        client._agree(greeting)
        await client.send(request)
        while True:
            message = await client._next_frame()
            match message:
                case None:
                    raise ConnectionLost(
                        "the server closed the connection before answering resume"
                    )
                case ResumedFrame(name, count):
                    client.name = name
                    client.missed = count
                    client.session = session
                    client._connection.logged_in(name)
                    await client._read_session()
                    return client
                case Error():
                    raise LoginRefused(message, greeting)
                case Ping(token):
                    await client._answer(token)
                case Pong():
                    pass
                case _:
                    raise _unexpected(message, "before the answer to resume")

    def _keeps_sessions(self) -> bool:
        """Whether the server said it keeps sessions (``resume`` in its
        settings, protocol 2): then ``session`` follows the login's
        acknowledgement."""
        window = self.settings.get("resume", "0")
        return self.version >= 2 and window not in ("", "0")

    async def _read_session(self) -> None:
        """Read the ``session`` frame that the server sends right after the
        answer to a login or resume, so that ``session`` and
        ``resume_window`` are there when that call returns. Any other frame
        (a server that sends none) is left for iteration."""
        frame = await self._next_frame()
        if frame is None:
            return
        if isinstance(frame, SessionInfo):
            self.session = frame.session
            self.resume_window = frame.seconds
            return
        self._early.append(frame)

    async def _greet(self, version: int, echo: bool) -> _Greeting:
        """Say ``hello`` (unless *version* is 1) and read the answer."""
        if version == 1:
            return _Greeting()
        await self.send(Hello(version, ("echo",) if echo else ()))
        while True:
            message = await self._next_frame()
            match message:
                case None:
                    raise ConnectionLost(
                        "the server closed the connection before answering hello"
                    )
                case Welcome(agreed, settings) if agreed <= version:
                    return _Greeting(agreed, settings, echo and agreed >= 2)
                case Welcome(agreed):
                    raise _bad(f"the server answered hello|{version} with {agreed}")
                case Error(ErrorCode.BAD_FRAME):
                    # What a server that does not know hello answers.
                    return _Greeting()
                case Error():
                    raise LoginRefused(message)
                case Ping(token):
                    await self._answer(token)
                case Pong():
                    pass
                case _:
                    raise _unexpected(message, "before the answer to hello")

    def _agree(self, greeting: _Greeting) -> None:
        """Take what the connection settled on, and the limits it sets."""
        self.version = greeting.version
        self.echo = greeting.echo
        settings: dict[str, str] = {}
        for key, value in greeting.settings:
            settings.setdefault(key, value)
        self.settings = settings
        self.max_frame = _setting(
            settings, "max-line", DEFAULT_MAX_LINE, unlimited=MAX_SERVER_FRAME
        )
        self.max_text = min(
            MAX_TEXT, _setting(settings, "max-text", MAX_TEXT, unlimited=MAX_TEXT)
        )

    @property
    def keeps_sessions(self) -> bool:
        """Whether the server keeps this client's session waiting after a
        drop, to be resumed: it gave it a ``session``, or said in its
        settings that it keeps them (``resume`` above 0, protocol 2). Only
        then is a ``ReconnectingClient`` worth more than a new login."""
        return self.session is not None or self._keeps_sessions()

    @property
    def online(self) -> tuple[str, ...]:
        """Who else is online, as far as the ``login`` and ``exit`` frames
        read so far tell. Under ``--presence rooms`` (``settings["presence"]``)
        the server tells nobody that: ``rooms`` says who shares a room."""
        return tuple(self._online.values())

    @property
    def rooms(self) -> dict[str, tuple[str, ...]]:
        """The rooms this client is in, each with its members (this client
        among them), as far as the frames read so far tell: a room is
        added by the ``Joined`` that names this client, and its members by
        the ``Joined`` and ``Parted`` for it; an ``Exit`` takes a user out
        of every room. Names are as the server wrote them; the dict is a
        copy."""
        return {
            room.name: tuple(room.members.values()) for room in self._rooms.values()
        }

    def members(self, room: str) -> tuple[str, ...]:
        """Who is in *room* (compared as names are), this client among
        them; empty when this client is not in it."""
        found = self._rooms.get(name_key(room))
        return () if found is None else tuple(found.members.values())

    def is_own(self, message: Delivery | Message) -> bool:
        """Whether this client sent *message* (the echo of its own)."""
        return name_key(message.sender) == name_key(self.name)

    def conversation(self, message: Delivery | Message) -> str:
        """Where *message* belongs, and where a reply to it goes: its room,
        ``*``, or for a direct message the other user (the sender, or the
        receiver of this client's own message)."""
        to = message.to
        if to == BROADCAST or is_room(to) or self.is_own(message):
            return to
        return message.sender

    async def send(self, message: ClientMessage) -> None:
        """Send one frame.

        Raises ValueError when the frame is longer than ``max_frame`` bytes
        or a ``Talk``'s text longer than ``max_text`` characters, and
        ConnectionLost when the connection is gone, or when an earlier
        send was cancelled halfway (the stream may hold part of a frame).
        """
        data = self._frame(message)
        if type(message) is History:
            self._history_asked.append(
                (name_key(message.target), message.direction, message.count)
            )
        await self._write(data)
        if type(message) is Register or type(message) is ChangePassword:
            self._new_passwords.append(message.password)

    async def talk(self, to: str, text: str) -> None:
        """Send *text* to *to*: a user's name (a direct message), a room
        this client is in (``#lunch``) or ``*`` (everyone).

        Raises ValueError, and sends nothing, when either is invalid or
        the message is over the server's limits; ConnectionLost as
        ``send`` does. A refusal by the server (``no-such-user``,
        ``not-in-room``) arrives as an ``Error`` by iteration; with
        ``echo`` the message itself comes back as a ``Message``.
        """
        await self.send(Talk(to, text))

    async def broadcast(self, text: str) -> None:
        """Send *text* to every other user online: ``talk('*', text)``."""
        await self.send(Talk(BROADCAST, text))

    async def join(self, room: str) -> None:
        """Ask to enter *room* (``#lunch``), which is made if nobody is in it.

        The answer arrives by iteration: ``Joined(room, <this client>)``,
        then one ``Joined`` for each member already there; or an ``Error``
        (``already-in-room``, ``too-many-rooms``). ValueError, and nothing
        sent, for a name that is not a room's.
        """
        await self.send(Join(room))

    async def part(self, room: str) -> None:
        """Ask to leave *room*; ``Parted(room, <this client>)`` arrives by
        iteration (or ``Error`` ``not-in-room``)."""
        await self.send(Part(room))

    async def list_rooms(self) -> None:
        """Ask which rooms have members; the answer arrives by iteration,
        as one ``RoomList``."""
        await self.send(ListRooms())

    async def ping(self, token: str) -> None:
        """Send ``ping|TOKEN``; the server's ``Pong`` arrives by iteration."""
        await self.send(Ping(token))

    async def history(
        self,
        target: str,
        count: int,
        *,
        after: int | None = None,
        before: int | None = None,
    ) -> None:
        """Ask for stored messages of *target* (a room this client is in,
        ``*``, or a user: this account's conversation with them): the last
        *count* (1 to 500); with *before*, the last *count* with ids below
        it; with *after*, the first *count* with ids above it.

        The answer arrives by iteration, as one ``HistoryPage`` (its
        messages oldest first; ``complete`` when there are no more that
        way); or an ``Error``: ``not-in-room``, ``no-history`` (a guest's
        direct messages, or a server that keeps none: ``history=0`` in its
        settings), ``needs-hello`` on protocol 1. ValueError, and nothing
        sent, for a bad target or count, or both *after* and *before*.
        """
        if after is not None and before is not None:
            raise ValueError("history reads after an id or before one, not both")
        if after is not None:
            await self.send(History(target, "after", count, after))
        elif before is not None:
            await self.send(History(target, "before", count, before))
        else:
            await self.send(History(target, "latest", count))

    async def register(self, password: str) -> None:
        """Make the name this client is logged in with (as a guest) an
        account with *password*: from then on logging in as it takes the
        password. ``Registered`` arrives by iteration, or an ``Error``
        (``already-registered``, ``bad-password``, ``tls-required``).
        ValueError, and nothing sent, for a password the protocol does not
        allow (8 to 256 characters, no control characters)."""
        await self.send(Register(password))

    async def change_password(self, password: str) -> None:
        """Set a new *password* for this client's account.
        ``PasswordChanged`` arrives by iteration, or an ``Error``
        (``no-such-account`` for a guest, ``bad-password``,
        ``tls-required``). ValueError as for ``register``."""
        await self.send(ChangePassword(password))

    async def talk_batch(self, to: str, texts: Sequence[str]) -> None:
        """Send each of *texts*, in order, to *to* (as ``talk``), in one write.

        The same as ``talk`` for each, at a fraction of the cost per
        message. Raises ValueError, and sends nothing, when *to* or any
        text is invalid or over the server's limits; and ConnectionLost as
        ``send`` does.
        """
        if isinstance(texts, str):
            raise TypeError("texts is a sequence of texts, not one text")
        if not texts:
            await trio.lowlevel.checkpoint()
            return
        first = texts[0]
        # What every frame starts with, as the codec writes it: talk|TO|
        head = self._connection.send(Talk(to, first))[: -len(first.encode()) - 1]
        for text in texts:
            # Printable text holds nothing that check_text refuses.
            if not (text.isprintable() and 0 < len(text) <= MAX_TEXT):
                check_text(text)
        self._check_length(max(map(len, texts)))
        encoded = [text.encode() for text in texts]
        self._check_size(len(head) + max(map(len, encoded)) + 1)
        await self._write(head + (b"\n" + head).join(encoded) + b"\n")

    def _frame(self, message: ClientMessage) -> bytes:
        if type(message) is Talk:
            self._check_length(len(message.text))
        data = self._connection.send(message)
        self._check_size(len(data))
        return data

    def _check_length(self, length: int) -> None:
        if length > self.max_text:
            raise ValueError(
                f"the text has {length} characters; the server takes at most"
                f" {self.max_text}"
            )

    def _check_size(self, size: int) -> None:
        if size > self.max_frame:
            limit = self.max_frame
            raise ValueError(
                f"the frame has {size} bytes; the server takes at most {limit}"
            )

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            if self._send_broken:
                raise ConnectionLost("an earlier send was interrupted")
            try:
                await self._stream.send_all(data)
            except trio.Cancelled:
                self._send_broken = True
                raise
            except trio.BrokenResourceError as error:
                raise ConnectionLost(f"connection lost: {error}") from error
            except trio.ClosedResourceError as error:
                raise ConnectionLost("the client is closed") from error

    async def exit(self) -> None:
        """Say ``exit`` and close. A connection that is already gone is fine,
        and so is a server that does not read: saying goodbye takes at most
        a couple of seconds."""
        try:
            with suppress(ConnectionLost), trio.move_on_after(_CLOSE_GRACE):
                await self.send(Exit())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection without a word; a second call does nothing."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.move_on_after(_CLOSE_GRACE):
            await self._stream.aclose()

    def __aiter__(self) -> Client:
        return self

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Read in this block, as the only task that does; a frame that
        ends the connection, or its loss, ends what iterating yields."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already reading")
        self._receiving = True
        try:
            yield
        except BadServerFrame as bad:
            self._finished = bad.fatal
            raise
        except ConnectionLost:
            self._finished = True
            raise
        finally:
            self._receiving = False

    async def __anext__(self) -> Event:
        with self._reading():
            if self._finished:
                raise StopAsyncIteration
            self._raise_left_problem()
            while True:
                frame = await self._next_frame()
                if frame is None:
                    self._finished = True
                    raise StopAsyncIteration
                try:
                    event = self._event(frame)
                except ProtocolError as problem:
                    raise BadServerFrame(problem) from None
                if event is not None:
                    break
        self._track(event)
        if isinstance(event, Ping):
            await self._answer(event.token)
        return event

    async def receive_batch(self) -> list[Event]:
        """The events that iterating would yield next, as many as have
        arrived: those already read, or else those of the next read, which
        this waits for. An empty list means the end: the server closed the
        connection, or sent an error that closes it (the last event of the
        batch before).

        Pings are answered and the roster, the rooms and ``last_id`` kept
        as iteration does, and it raises what iteration raises: a
        BadServerFrame after the events before it have been returned (in
        this batch), ConnectionLost, or BusyResourceError while another
        task reads. It costs one call per read instead of one per frame,
        for a program that handles many.
        """
        with self._reading():
            if self._finished:
                await trio.lowlevel.checkpoint()
                return []
            self._raise_left_problem()
            messages = self._decode_buffered()
            while messages is not None and not messages:
                try:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError as error:
                    raise ConnectionLost(f"connection lost: {error}") from error
                except trio.ClosedResourceError:
                    # Closed on our side: nothing more will be read.
                    messages = None
                    break
                self._connection.receive_data(data)
                messages = self._decode_buffered()
        if not messages:
            self._finished = True
            return []
        self.last_heard = trio.current_time()
        for message in messages:
            if type(message) is not Delivery:
                self._track(message)
                if isinstance(message, Ping):
                    await self._answer(message.token)
        return messages

    def _decode_buffered(self) -> list[Event] | None:
        """The events that the bytes read so far hold, up to a bad frame
        (left for the next read) or an error that closes the connection;
        None when the stream has ended and every frame has been taken."""
        messages: list[Event] = []
        while self._early:
            early = self._early.popleft()
            try:
                event = self._event(early)
            except ProtocolError as problem:
                if not messages:
                    raise BadServerFrame(problem) from None
                self._problem = problem
                return messages
            if event is not None:
                messages.append(event)
        next_event = self._connection.next_event
        while True:
            try:
                frame = next_event()
                if type(frame) is Delivery or type(frame) is Message:
                    messages.append(frame)
                    continue
                if frame is NEED_DATA:
                    return messages
                if frame is CLOSED:
                    return messages or None
                # Decoded as a client reads: a frame a server sends.
                event = self._event(cast(ServerMessage, frame))
            except ProtocolError as problem:
                if not messages:
                    raise BadServerFrame(problem) from None
                self._problem = problem
                return messages
            if event is not None:
                messages.append(event)
                if isinstance(event, Error) and event.code.closes:
                    return messages

    def _event(self, frame: ServerMessage) -> Event | None:
        """What iterating yields for *frame*: the frame itself, or None
        when it yields nothing (yet): the ``room`` frames of a ``rooms``
        answer wait for its end, which yields them as one ``RoomList``, and
        the ``hist`` frames of a ``history`` answer as one ``HistoryPage``.
        Raises ProtocolError for an answer that miscounts its rooms or
        messages."""
        match frame:
            case Hist():
                self._paging.append(frame)
                return None
            case HistoryEnd():
                return self._history_page(frame)
            case Error(code, detail) if self._history_asked:
                self._history_refused(code, detail)
                return frame
            case RoomInfo():
                if self._listing is None:
                    self._listing = []
                self._listing.append(frame)
                return None
            case RoomsListed(count):
                listed, self._listing = tuple(self._listing or ()), None
                if len(listed) != count:
                    raise ProtocolError(
                        ErrorCode.BAD_FRAME,
                        f"rooms|{count} ended an answer that listed {len(listed)}",
                    )
                return RoomList(listed)
            case SessionInfo(session, seconds):
                self.session = session
                self.resume_window = seconds
                return None
            case (
                Login()
                | Registered()
                | PasswordChanged()
                | Delivery()
                | Message()
                | Joined()
                | Parted()
                | Exit()
                | Error()
                | Ping()
                | Pong()
            ):
                return frame
            case _:
                # A hello answer (login has read the one there is), or a
                # frame of a kind this client does not handle yet.
                return None

    def _history_page(self, end: HistoryEnd) -> HistoryPage:
        """The page that *end* closes: the ``hist`` frames read since the
        last one, with the request they answer."""
        messages, self._paging = tuple(self._paging), []
        if len(messages) != end.count:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"history|{end.target}|{end.count} ended an answer that held"
                f" {len(messages)}",
            )
        key = name_key(end.target)
        asked = self._history_asked
        # Requests before the one answered were answered with errors.
        while asked:
            target, direction, count = asked.popleft()
            if target == key:
                return HistoryPage(end.target, messages, count, direction)
        return HistoryPage(end.target, messages)

    def _history_refused(self, code: ErrorCode | UnknownErrorCode, detail: str) -> None:
        """Take the first history request off the waiting list when *code*
        is how the server refuses it."""
        target = self._history_asked[0][0]
        if code in (ErrorCode.NO_HISTORY, ErrorCode.NEEDS_HELLO) or (
            code is ErrorCode.NOT_IN_ROOM and name_key(detail) == target
        ):
            self._history_asked.popleft()

    def _track(self, event: Event) -> None:
        """Keep the roster, the rooms, ``last_id`` and whether the server is
        done up to date."""
        match event:
            case Message(id=message_id):
                self.last_id = max(self.last_id, message_id)
            case Login(name) if name_key(name) != name_key(self.name):
                self._online[name_key(name)] = name
            case Joined(room, name):
                self._joined(room, name)
            case Parted(room, name):
                self._parted(room, name)
            case Exit(str(name)):
                key = name_key(name)
                self._online.pop(key, None)
                for joined in self._rooms.values():
                    joined.members.pop(key, None)
            case Error(code) if code.closes:
                self._finished = True
            case Registered() | PasswordChanged() if self._new_passwords:
                self._password = self._new_passwords.popleft()
            case Error(code) if code in _PASSWORD_REFUSALS and self._new_passwords:
                self._new_passwords.popleft()

    def _passwords(self) -> list[str | None]:
        """The passwords to log in again with, most likely first: the one
        in use, then the new ones not answered yet, the latest first (the
        answer may have been lost in a drop)."""
        candidates: list[str | None] = [self._password]
        for password in reversed(self._new_passwords):
            if password not in candidates:
                candidates.append(password)
        return candidates

    def _joined(self, room: str, name: str) -> None:
        key = name_key(name)
        if key == name_key(self.name):
            # This client entered the room: the members follow.
            joined = self._rooms[name_key(room)] = _Room(room)
        else:
            found = self._rooms.get(name_key(room))
            if found is None:
                return
            joined = found
        joined.members[key] = name

    def _parted(self, room: str, name: str) -> None:
        room_key, key = name_key(room), name_key(name)
        if key == name_key(self.name):
            self._rooms.pop(room_key, None)
        elif (found := self._rooms.get(room_key)) is not None:
            found.members.pop(key, None)

    async def _answer(self, token: str) -> None:
        # A lost connection shows up on the receiving side soon enough.
        with suppress(ConnectionLost):
            await self.send(Pong(token))

    def _raise_left_problem(self) -> None:
        """Raise the bad frame that a batch left for the next read, if any."""
        if self._problem is not None:
            problem, self._problem = self._problem, None
            raise BadServerFrame(problem)

    async def _next_frame(self) -> ServerMessage | None:
        """The next frame from the server; None at the end of the stream."""
        if self._early:
            return self._early.popleft()
        while True:
            try:
                frame = self._connection.next_event()
            except ProtocolError as problem:
                raise BadServerFrame(problem) from None
            if frame is CLOSED:
                return None
            if frame is NEED_DATA:
                try:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError as error:
                    raise ConnectionLost(f"connection lost: {error}") from error
                except trio.ClosedResourceError:
                    # Closed on our side: nothing more will be read.
                    return None
                self._connection.receive_data(data)
                continue
            self.last_heard = trio.current_time()
            # Decoded as a client reads: a frame a server sends.
            return cast(ServerMessage, frame)


async def connect(
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    version: int = PROTOCOL_VERSION,
    echo: bool = True,
    password: str | None = None,
) -> Client:
    """Connect to a trichat server, log in as *name*, and return the client.

    With *password*, to the account *name* (see ``Client.login``).

    With *ssl_context* the connection is TLS, and the handshake is done
    before the login, so a certificate the context does not trust (or a
    server that does not speak TLS) fails here with ConnectionLost. The
    certificate must match *server_hostname* (default *host*). *version*
    and *echo* are ``Client.login``'s. Raises OSError when the server
    cannot be reached, and whatever ``Client.login`` raises. The caller
    closes the client (``async with client:``); ``open_client`` does that
    for you.
    """
    _login_request(name, password)  # a refused name is not worth a connection
    if not 1 <= version <= PROTOCOL_VERSION:
        raise ValueError(f"this client speaks protocol 1 to {PROTOCOL_VERSION}")
    stream = await open_stream(
        host, port, ssl_context=ssl_context, server_hostname=server_hostname
    )
    try:
        return await Client.login(
            stream, name, version=version, echo=echo, password=password
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def open_stream(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> trio.abc.Stream:
    """A connection to the server, TLS with *ssl_context* (handshake
    done), before any frame: what ``connect`` logs in over. Raises OSError
    when the server cannot be reached, ConnectionLost when the TLS
    handshake fails."""
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    try:
        if ssl_context is not None:
            # https_compatible: a server that closes without a TLS close_notify
            # has still closed the connection; every frame ends with its LF,
            # so a cut cannot pass for a shorter frame.
            tls = trio.SSLStream(
                tcp,
                ssl_context,
                server_hostname=server_hostname or host,
                https_compatible=True,
            )
            stream = tls
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as error:
                reason = error.__cause__ or error
                raise ConnectionLost(f"TLS handshake failed: {reason}") from error
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


@asynccontextmanager
async def open_client(
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    version: int = PROTOCOL_VERSION,
    echo: bool = True,
    password: str | None = None,
) -> AsyncIterator[Client]:
    """``connect`` as a context manager that closes the client at the end.
    With *password*, it logs in to the account *name*.

    Leaving the block closes the connection without ``exit``; the server
    then tells the others that the user left. Call ``client.exit()`` first
    to say goodbye.
    """
    client = await connect(
        name,
        host,
        port,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        version=version,
        echo=echo,
        password=password,
    )
    async with client:
        yield client


def _login_request(name: str, password: str | None) -> Login:
    """The login frame; ValueError for a name the protocol refuses, or a
    password no account can have (the message never shows it): every
    way to make an account or set its password keeps to the rules of a
    new one, and the frame itself no longer checks them."""
    if password is not None:
        check_password(password)
    return Login(name, password)


# -- A client that comes back by itself ----------------------------------------


@attrs.frozen
class Disconnected:
    """The connection dropped (``reason`` says how) without ``exit``: the
    client reconnects by itself. Sends wait until it is back (see
    ``ReconnectingClient``)."""

    reason: str


@attrs.frozen
class Reconnecting:
    """Attempt number ``attempt`` (from 1) to reconnect starts in ``delay``
    seconds."""

    attempt: int
    delay: float


@attrs.frozen
class Resumed:
    """The session was taken back on a new connection: the name, the rooms
    and everything said meanwhile are kept. The ``missed`` messages said
    while away come next, each once, in order (what the server replayed,
    less any this client had already received); changes to who is online
    and who is in the rooms (``Login``, ``Exit``, ``Joined``, ``Parted``)
    come before them.

    Not the protocol's ``trichat.Resumed`` frame (``resumed|NAME|COUNT``),
    which the client reads itself."""

    missed: int


@attrs.frozen
class ResumeFailed:
    """The session could not be taken back (``reason``: it ended, the
    server restarted, keeps no sessions or no longer held every message),
    so the client logged in again under the same name and joined its rooms
    again.

    ``after`` is the id of the last message received before the drop.
    ``recovered`` messages with higher ids were found in the server's
    history (the server's ``history`` setting above 0): they come next, in
    order, before the live stream. ``gaps`` lists the conversations (rooms,
    ``*``) whose messages after ``after`` could not be filled in, and
    ``direct_gap`` says whether direct messages to this client after it may
    be missing (the server keeps none for guests). A program can show
    "messages may be missing here" for each. When no message had been
    received before the drop (``after`` is 0) there is no id to fill
    from, and every conversation is a gap.

    ``unconfirmed`` lists the talks (with echo) handed to the lost
    connection whose copy never came back, oldest first, less those
    found among the recovered messages: whether the server took them
    before the session was lost cannot be known, so they are not sent
    again (a repeat may be a duplicate); a program can show them as
    "may not have been delivered" and let its user send them again.
    """

    reason: str
    after: int
    recovered: int = 0
    gaps: tuple[str, ...] = ()
    direct_gap: bool = True
    unconfirmed: tuple[Talk, ...] = ()


ConnectionEvent = Disconnected | Reconnecting | Resumed | ResumeFailed
"""What a ``ReconnectingClient`` says about its connection."""

ReconnectingEvent = Event | ConnectionEvent
"""What iterating a ``ReconnectingClient`` yields."""

StreamOpener = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens a new connection to the server (see ``open_stream``)."""


@attrs.frozen
class Backoff:
    """How long to wait before each attempt to reconnect: ``first``
    seconds before the first, then ``factor`` times as long each time, at
    most ``cap``; a random share of up to ``jitter`` (0 to 1) of each delay
    is taken off, so many clients cut off at once do not all come back at
    the same moment."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before attempt number *attempt* (from 1)."""
        steps = min(max(attempt - 1, 0), 64)
        base = min(self.cap, self.first * self.factor**steps)
        return base * (1.0 - self.jitter * rng.random())


_HISTORY_PAGE: Final = 500
# How long one attempt (connect, resume or login, the snapshot) may take.
_ATTEMPT_TIMEOUT: Final = 10.0
# How long ``exit`` while away tries to reach the server to say it.
EXIT_WHILE_AWAY_TIMEOUT: Final = 2.0
# How long to keep trying without a resume window from the server.
_DEFAULT_GIVE_UP: Final = 120.0
# Refusals of a login that trying again will not change: the client stops.
_FINAL_REFUSALS: Final = frozenset(
    {
        ErrorCode.BAD_NAME,
        ErrorCode.ACCOUNT_REQUIRED,
        ErrorCode.NO_SUCH_ACCOUNT,
        ErrorCode.WRONG_PASSWORD,
        ErrorCode.TLS_REQUIRED,
    }
)


MAX_UNCONFIRMED: Final = 1024
"""How many talks a ``ReconnectingClient`` keeps, handed to a connection
and not yet confirmed by their echo, before a new talk waits for one to
be confirmed (a single ``talk_batch`` may go past it). It is the
default ``--queue-size`` of a trichat server, the most messages a
session's queue holds: more of our own messages than that on their way
back would overflow the queue the server keeps for us while we are
away, and the session could not be resumed anyway."""
# How many pings whose pong is awaited are kept as points that confirm
# what was sent before them.
_MAX_BARRIERS: Final = 64
# Refusals of a talk that name its target (the detail is TO).
_REFUSES_A_TALK: Final = frozenset(
    {ErrorCode.NO_SUCH_USER, ErrorCode.NOT_IN_ROOM, ErrorCode.MAILBOX_FULL}
)


@attrs.define(eq=False)
class _Kept:
    """A talk handed to a connection (``client``) whose echo has not come
    yet; ``key`` is its target's clash key, what an echo is matched on
    with the text."""

    to: str
    text: str
    key: str
    client: Client
    order: int = 0
    """Where it was written among the requests that can draw the same
    refusal (see _Asked)."""

    @property
    def talk(self) -> Talk:
        return Talk(self.to, self.text)


@attrs.frozen
class _Asked:
    """A ``part`` or ``history`` request written over the live connection
    and not answered yet. Its refusal, ``not-in-room`` with the room, is
    also how a talk to that room is refused: the server answers in order,
    so the refusal is the one of whichever of the two went first
    (``order``, counted with the kept talks')."""

    kind: str  # "part" or "history"
    key: str
    order: int


# Requests waiting for an answer that are remembered, at most. Those
# answered are forgotten as their answers come, and those the server must
# have answered (written before a talk whose copy came back); past this,
# the oldest is forgotten and a not-in-room is no longer taken for a talk's
# refusal until the server is known to have answered it (see _refused).
_MAX_ASKED: Final = 256


@attrs.frozen
class _Raise:
    """A problem the reading task found, for the iterating task to raise."""

    error: BadServerFrame | ConnectionLost


class ReconnectingClient:
    """A ``Client`` that survives dropped connections (protocol 2 with
    sessions, section 7 of the protocol): build it with
    ``open_reconnecting_client`` (or ``ReconnectingClient.wrap``), which
    runs its reconnecting task in a nursery for as long as the ``async
    with`` block lasts.

    It reads and sends as a ``Client`` does (the same attributes and
    methods: ``name``, ``settings``, ``online``, ``rooms``, ``talk``,
    ``join``...) and iterating it yields the same events, plus
    ``ConnectionEvent``s: when the connection drops without ``exit``
    (a reset, the server's end closing, a ``shutting-down``, or silence
    past *keepalive* seconds), it yields ``Disconnected``, then a
    ``Reconnecting(attempt, delay)`` before each attempt (capped
    exponential backoff with jitter, see ``Backoff``), and once back:

    - ``Resumed(missed)`` when the server took the session back: then the
      changes to the roster and the rooms, then the missed messages;
    - ``ResumeFailed`` when it could not: the client logged in again under
      the same name, joined its rooms again, filled what it could from
      the server's history, and the event says where gaps are left.

    Messages are de-duplicated by id and never go backwards: a program
    sees one ordered stream of messages across drops, or a
    ``ResumeFailed`` where a gap could not be filled. It does not
    reconnect after its own ``exit`` or after ``error|replaced`` (another
    connection took the session over): the iteration ends there. When no
    attempt succeeds within *give_up_after* seconds (default: the
    server's resume window), iterating raises ConnectionLost and ends.

    A client that logged in with a password (``Client.login``,
    ``connect``...) logs in again with it when its session is gone; the
    password stays in memory, for the life of the client, and is never
    shown or logged. A refusal that trying again cannot change
    (``wrong-password``, ``account-required``, ``bad-name``...) ends the
    iteration with ConnectionLost, caused by the LoginRefused.

    While the connection is down, ``online``, ``rooms`` and the settings
    are those last known and ``connected`` is false.

    Sending while away: every send (``talk``, ``join``, ``send``...)
    waits until the client is back, then goes out over the new
    connection, after the snapshot (so a message to a room goes once the
    room is joined again); a send that the drop interrupts waits and goes
    out again the same way (a frame that a broken write did not finish
    never reached the server). A send waits rather than being queued
    behind the program's back: it either returns, having handed its frame
    to a live connection, or raises (only a talk that the server may have
    lost after that is sent again by the client itself, below). The wait
    is bounded by the reconnecting itself: when the client gives up, is
    closed, or its session is taken over, every waiting send raises
    ``NotSent`` (a ConnectionLost) saying why. A program that must not
    wait that long bounds the call (``trio.move_on_after``): cancelled
    while waiting, nothing was sent;
    cancelled in the middle of the write, nothing was taken either (that
    connection is ended, so the server drops the part it got, and the
    session is taken back over a new one); a ``talk_batch`` is the
    exception, see below.

    A send that returned may still be lost in a drop right after it (the
    kernel took it, the server never read it). With ``echo`` (protocol 2
    with the ``echo`` option, the default) the client makes up for it by
    itself, for the talks sent through it (``talk``, ``broadcast``,
    ``talk_batch``, ``send`` of a ``Talk``): it keeps each one, in the
    order written, until the server's copy of it (a ``Message`` from this
    client to the target it named, with the same text) comes back, or the
    server refuses it (an ``Error`` naming its target: ``no-such-user``,
    ``not-in-room``, ``mailbox-full``; or a later copy, or the pong of a
    later ``ping`` sent through it, since the server answers in order
    and refuses some without naming them: ``rate-limited``). A
    ``not-in-room`` that answers a ``part`` or ``history`` of that room
    sent before the talk is not taken for the talk's refusal (answers come
    in order). ``unconfirmed`` lists them. After a drop:

    - on ``Resumed``, the missed messages hold the copy of every one the
      server took; the others never reached it and are sent again over the
      new connection, in order, once, before anything the program sends
      next (their copies then come back as any other);
    - on ``ResumeFailed`` nobody can tell which the server took before the
      session was lost: those found among the messages recovered from the
      server's history are confirmed, the rest are listed in the event's
      ``unconfirmed`` and not sent again (a repeat may be a duplicate);
    - when the client gives up (or logging in again is refused), the
      ConnectionLost that ends the iteration lists them in its
      ``unconfirmed``.

    Whatever ends the client otherwise (``exit`` while away, ``aclose``,
    a ``replaced``), ``unconfirmed`` still lists what was not confirmed.
    At most MAX_UNCONFIRMED talks are kept: a talk past it waits until an
    echo frees a place, so a program must go on reading (which it must do
    anyway, or the server drops it as too slow). Talks sent through
    ``client`` directly, around this one, are not kept, and their copies
    are taken for those of kept talks with the same target and text.

    Without echo (protocol 1, or ``echo=False``) nothing says what the
    server took: a talk lost in a drop right after its send returned is
    lost, and nobody is told; ``unconfirmed`` stays empty, which says
    nothing about delivery.

    ``talk_batch`` is one write of many frames. With echo, a drop in the
    middle of it is like a drop right after it: the texts the server did
    not take go again after a resume (or are listed as unconfirmed), and
    it returns; cancelled in the middle of its write, it is completed the
    same way. Without echo a drop in the middle raises ConnectionLost
    (part of the batch may have gone; the client reconnects meanwhile),
    since sending it again could repeat messages.
    """

    def __init__(
        self,
        client: Client,
        reopen: StreamOpener,
        *,
        backoff: Backoff | None = None,
        give_up_after: float | None = None,
        keepalive: float = 30.0,
        rng: random.Random | None = None,
        password: str | None = None,
    ) -> None:
        """Take over the logged-in *client*; *reopen* opens a new stream to
        the same server. *password* is the one to log in again with when a
        session is gone (default: the one *client* logged in with, if
        any). See ``open_reconnecting_client`` for the rest."""
        if password is not None:
            client._password = password
        self._client: Client | None = client
        self._last = client
        self._reopen = reopen
        self._backoff = Backoff() if backoff is None else backoff
        self._give_up_after = give_up_after
        self._keepalive = keepalive
        self._rng = random.Random() if rng is None else rng
        self.last_id = client.last_id
        """The highest message id received (0 before any), across drops."""
        self.reconnects = 0
        """How many times the client came back after a drop."""
        self._changed = trio.Event()
        self._send_events, self._receive_events = trio.open_memory_channel[
            ReconnectingEvent | _Raise
        ](1024)
        self._held: ReconnectingEvent | _Raise | None = None
        self._scope = trio.CancelScope()
        self._exiting = False
        self._final = False
        self._ended = False
        self._closing_reason: str | None = None
        self._failure: ConnectionLost | None = None
        # Why sends fail from now on, once the client has ended.
        self._end_reason = "the client is closed"
        self._pings = 0
        # With echo: the talks handed to a connection and not confirmed
        # yet, in the order written (see the class). Writes that keep
        # something go one at a time under _order, so that this order is
        # the order on the wire, which the server answers in.
        self._kept: deque[_Kept] = deque()
        self._order = trio.Lock()
        # Pings whose pong is awaited: the connection, the token, and the
        # last talk kept when it was written (None: none), which the pong
        # confirms with everything before it.
        self._barriers: deque[tuple[Client, str, int]] = deque()
        # Parts and history requests not answered yet (with echo), and the
        # count that orders them and the kept talks (see _Asked).
        self._asking: deque[_Asked] = deque()
        self._written = 0
        # The order of the last request forgotten unanswered (0: none).
        self._forgot_asked = 0
        # A talk waits for a place among the kept (MAX_UNCONFIRMED).
        self._room_wanted = False
        # The highest message id looked at for copies of the kept talks:
        # an attempt to come back that fails after reading the replay
        # reads it again in the next, and a copy must confirm only once
        # (the same text may have been sent twice).
        self._looked_at = client.last_id

    @classmethod
    @asynccontextmanager
    async def wrap(
        cls,
        client: Client,
        reopen: StreamOpener,
        *,
        backoff: Backoff | None = None,
        give_up_after: float | None = None,
        keepalive: float = 30.0,
        rng: random.Random | None = None,
        password: str | None = None,
    ) -> AsyncIterator[ReconnectingClient]:
        """Run a ReconnectingClient over the logged-in *client* for the
        block's length, reopening streams with *reopen*; the block's end
        closes it (without ``exit``: call ``exit`` first to leave)."""
        wrapped = cls(
            client,
            reopen,
            backoff=backoff,
            give_up_after=give_up_after,
            keepalive=keepalive,
            rng=rng,
            password=password,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wrapped._run)
            try:
                yield wrapped
            finally:
                await wrapped.aclose()

    # -- what a Client has --------------------------------------------------

    @property
    def client(self) -> Client:
        """The ``Client`` of the current connection (the last one while
        the connection is down)."""
        return self._last

    @property
    def connected(self) -> bool:
        """Whether the client is connected and logged in just now."""
        return self._client is not None

    @property
    def unconfirmed(self) -> tuple[Talk, ...]:
        """With echo: the talks handed to a connection whose delivery the
        server has not confirmed yet (its copy has not come back), oldest
        first; what a drop would put at risk (see the class). Always empty
        without echo."""
        return tuple(kept.talk for kept in self._kept)

    @property
    def name(self) -> str:
        return self._last.name

    @property
    def version(self) -> int:
        return self._last.version

    @property
    def settings(self) -> dict[str, str]:
        return self._last.settings

    @property
    def echo(self) -> bool:
        return self._last.echo

    @property
    def last_heard(self) -> float:
        return self._last.last_heard

    @property
    def max_frame(self) -> int:
        return self._last.max_frame

    @property
    def max_text(self) -> int:
        return self._last.max_text

    @property
    def session(self) -> str | None:
        return self._last.session

    @property
    def resume_window(self) -> int:
        return self._last.resume_window

    @property
    def keeps_sessions(self) -> bool:
        return self._last.keeps_sessions

    @property
    def online(self) -> tuple[str, ...]:
        return self._last.online

    @property
    def rooms(self) -> dict[str, tuple[str, ...]]:
        return self._last.rooms

    def members(self, room: str) -> tuple[str, ...]:
        return self._last.members(room)

    def is_own(self, message: Delivery | Message) -> bool:
        return self._last.is_own(message)

    def conversation(self, message: Delivery | Message) -> str:
        return self._last.conversation(message)

    async def send(self, message: ClientMessage) -> None:
        """Send one frame, once connected: while away it waits until the
        client is back. Raises ValueError (nothing sent) as
        ``Client.send`` does, and NotSent when the client ends first (see
        the class)."""
        if type(message) is Talk:
            talks: tuple[tuple[str, str], ...] = ((message.to, message.text),)
        else:
            talks = ()
        token = message.token if type(message) is Ping else None
        asking: tuple[str, str] | None = None
        if type(message) is Part:
            asking = ("part", name_key(message.room))
        elif type(message) is History:
            asking = ("history", name_key(message.target))
        await self._deliver(lambda client: client.send(message), talks, token, asking)

    async def talk(self, to: str, text: str) -> None:
        await self.send(Talk(to, text))

    async def broadcast(self, text: str) -> None:
        await self.send(Talk(BROADCAST, text))

    async def join(self, room: str) -> None:
        await self.send(Join(room))

    async def part(self, room: str) -> None:
        await self.send(Part(room))

    async def list_rooms(self) -> None:
        await self.send(ListRooms())

    async def ping(self, token: str) -> None:
        await self.send(Ping(token))

    async def history(
        self,
        target: str,
        count: int,
        *,
        after: int | None = None,
        before: int | None = None,
    ) -> None:
        await self._deliver(
            lambda client: client.history(target, count, after=after, before=before),
            asking=("history", name_key(target)),
        )

    async def register(self, password: str) -> None:
        await self._deliver(lambda client: client.register(password))

    async def change_password(self, password: str) -> None:
        await self._deliver(lambda client: client.change_password(password))

    async def talk_batch(self, to: str, texts: Sequence[str]) -> None:
        """``Client.talk_batch`` once connected; see the class for a drop
        in the middle of it."""
        if isinstance(texts, str):
            raise TypeError("texts is a sequence of texts, not one text")
        while True:
            client = await self._connected_client()
            if client.echo:
                await self._make_room(len(texts))
            if client is self._client:
                break
        async with self._order:
            key = name_key(to)
            kept = self._keep(client, ((to, text, key) for text in texts))
            try:
                await client.talk_batch(to, texts)
            except ConnectionLost as lost:
                await self._drop(client, lost)
                if client.echo:
                    return  # what the server did not take goes after the resume
                raise ConnectionLost(
                    f"{lost}: part of the batch may not have reached the server"
                ) from lost
            except trio.Cancelled:
                if client._send_broken:
                    # Part of it may have gone: with echo, the resume
                    # completes it, as after a drop.
                    with trio.CancelScope(shield=True):
                        interrupted = ConnectionLost("a send was interrupted")
                        await self._drop(client, interrupted)
                else:
                    self._forget(kept)
                raise
            except BaseException:
                self._forget(kept)  # refused before anything was written
                raise

    async def exit(self) -> None:
        """Say ``exit`` and close: no reconnecting after it. While the
        connection is down, one quick attempt (EXIT_WHILE_AWAY_TIMEOUT
        seconds at most) takes the session back only to say it, so that
        the name is free at once; when that fails too, the server ends the
        waiting session when its resume window passes."""
        self._exiting = True
        self._end_reason = "the client has said exit"
        try:
            with trio.move_on_after(EXIT_WHILE_AWAY_TIMEOUT):
                await self._say_exit()
        finally:
            await self.aclose()

    async def _say_exit(self) -> None:
        client = self._client
        if client is None and not self._ended:
            # Stop reconnecting first, so that no attempt of its own takes
            # the session over from the one made here; one that has just
            # come back is used instead.
            self._scope.cancel()
            await self._stopped()
            client = self._client
        if client is not None:
            with suppress(ConnectionLost):
                await client.exit()
            return
        session = self._last.session
        if session is None or self._failure is not None:
            return  # no session waiting (or it is known to be over)
        try:
            stream = await self._reopen()
        except OSError:
            return
        try:
            back = await Client.resume(stream, session, self.last_id)
            await back.exit()
        except (LoginRefused, ConnectionLost, BadServerFrame):
            pass  # the session is over already, or out of reach
        finally:
            await trio.aclose_forcefully(stream)

    async def _stopped(self) -> None:
        """Until the reconnecting task has ended."""
        while not self._ended:
            await self._changed.wait()

    async def aclose(self) -> None:
        """Stop reconnecting and close the connection without a word."""
        self._ended = True
        self._scope.cancel()
        self._notify()
        client, self._client = self._client, None
        await self._last.aclose()
        if client is not None:
            await client.aclose()

    def __aiter__(self) -> ReconnectingClient:
        return self

    async def __anext__(self) -> ReconnectingEvent:
        item = self._held
        self._held = None
        if item is None:
            try:
                item = await self._receive_events.receive()
            except trio.EndOfChannel:
                failure, self._failure = self._failure, None
                if failure is not None:
                    # Why it ended (a refused login, say), not the channel.
                    raise failure from failure.__cause__
                raise StopAsyncIteration from None
        if isinstance(item, _Raise):
            raise item.error
        return item

    async def receive_batch(self) -> list[ReconnectingEvent]:
        """The events that iterating would yield next, as many as have
        arrived (at least one; an empty list at the end), as
        ``Client.receive_batch``."""
        try:
            batch = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        while True:
            try:
                item = self._receive_events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return batch
            if isinstance(item, _Raise):
                self._held = item
                return batch
            batch.append(item)

    # -- the reconnecting task --------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _connected_client(self, not_this: Client | None = None) -> Client:
        """The client of the live connection (other than *not_this*, one
        that broke), once there is one; NotSent when the client ends."""
        while True:
            client = self._client
            if self._ended:
                raise NotSent(self._end_reason)
            if client is not None and client is not not_this:
                return client
            await self._changed.wait()

    async def _deliver(
        self,
        act: Callable[[Client], Awaitable[None]],
        talks: Sequence[tuple[str, str]] = (),
        ping: str | None = None,
        asking: tuple[str, str] | None = None,
    ) -> None:
        """Do *act* (one frame's send) over the live connection, waiting
        while away; when the connection breaks under it, again over the
        next one: the frame did not reach the server whole. *talks*: the
        talk it sends, kept until confirmed (with echo); *ping*: the token
        of the ping it sends, whose pong confirms what went before it;
        *asking*: the kind and key of the part or history request it
        sends (see _Asked)."""
        broken: Client | None = None
        while True:
            client = await self._connected_client(broken)
            if talks and client.echo:
                await self._make_room(len(talks))
                if client is not self._client:
                    continue
            async with self._order:
                kept = self._keep(client, ((to, t, name_key(to)) for to, t in talks))
                if ping is not None:
                    self._barrier(client, ping)
                asked = None if asking is None else self._ask(client, *asking)
                try:
                    await act(client)
                except ConnectionLost as lost:
                    # One frame, not written whole: the server took none
                    # of it, and it goes again over the next connection.
                    self._forget(kept)
                    self._unask(asked)
                    await self._drop(client, lost)
                    broken = client
                    continue
                except trio.Cancelled:
                    self._forget(kept)
                    self._unask(asked)
                    if client._send_broken:
                        # Cancelled in the middle of the write: the
                        # connection holds part of a frame and can carry no
                        # other. Ending it now makes the server drop that
                        # part (a frame is only whole with its line end) and
                        # the session is taken back over a new connection.
                        with trio.CancelScope(shield=True):
                            interrupted = ConnectionLost("a send was interrupted")
                            await self._drop(client, interrupted)
                    raise
                except BaseException:
                    self._forget(kept)
                    self._unask(asked)
                    raise
            return

    # -- what was sent and not confirmed yet (with echo) ----------------------------

    async def _make_room(self, count: int) -> None:
        """Wait until *count* more talks may be kept (MAX_UNCONFIRMED), the
        connection changes, or the client ends (NotSent)."""
        client = self._client
        while self._kept and len(self._kept) + count > MAX_UNCONFIRMED:
            if self._ended:
                raise NotSent(self._end_reason)
            if self._client is not client:
                return
            self._room_wanted = True
            await self._changed.wait()

    def _keep(
        self, client: Client, talks: Iterable[tuple[str, str, str]]
    ) -> list[_Kept]:
        """Keep *talks* (to, text, clash key of to), about to be written to
        *client*, until confirmed; nothing without echo."""
        if not client.echo:
            return []
        kept = [_Kept(to, text, key, client) for to, text, key in talks]
        for each in kept:
            self._written += 1
            each.order = self._written
        self._kept.extend(kept)
        return kept

    def _ask(self, client: Client, kind: str, key: str) -> _Asked | None:
        """A part or history request (*kind*) to *key* is about to be
        written to *client*: remembered until answered; nothing without
        echo (no talk is kept then)."""
        if not client.echo:
            return None
        if len(self._asking) >= _MAX_ASKED:
            self._forgot_asked = self._asking.popleft().order
        self._written += 1
        asked = _Asked(kind, key, self._written)
        self._asking.append(asked)
        return asked

    def _unask(self, asked: _Asked | None) -> None:
        """*asked* was not written after all (or not whole)."""
        if asked is not None and asked in self._asking:
            self._asking.remove(asked)

    def _answered(self, kind: str, key: str | None) -> None:
        """The first request of *kind* to *key* (any key: None) waiting for
        an answer got it."""
        for asked in self._asking:
            if asked.kind == kind and (key is None or asked.key == key):
                self._asking.remove(asked)
                return

    def _forget(self, kept: Sequence[_Kept]) -> None:
        """*kept* were not written after all (or not whole)."""
        if not kept:
            return
        # Under _order nothing is kept after them meanwhile, but an echo
        # or a resume may have taken some of them off already.
        gone = set(map(id, kept))
        self._kept = deque(each for each in self._kept if id(each) not in gone)
        self._freed()

    def _freed(self) -> None:
        if self._room_wanted and len(self._kept) < MAX_UNCONFIRMED:
            self._room_wanted = False
            self._notify()

    def _barrier(self, client: Client, token: str) -> None:
        """A ping with *token* is about to be written to *client*: its pong
        confirms every talk kept before it."""
        if not client.echo:
            return
        if len(self._barriers) >= _MAX_BARRIERS:
            self._barriers.popleft()  # only a shortcut: an echo confirms too
        self._barriers.append((client, token, self._written))

    def _confirm(self, message: Message) -> None:
        """Our own *message*, back from the server: the first talk kept
        with its target and text is delivered, and every one kept before
        it was answered too (the server answers in order; with an error,
        already passed on)."""
        key = name_key(message.to)
        text = message.text
        for index, kept in enumerate(self._kept):
            if kept.key == key and kept.text == text:
                for _ in range(index + 1):
                    self._kept.popleft()
                self._freed()
                self._settled(kept.order)
                return

    def _settled(self, through: int) -> None:
        """Everything written up to *through* (in order) has been answered:
        the requests among it that still wait were answered in ways not
        followed (``rate-limited``...)."""
        asking = self._asking
        while asking and asking[0].order <= through:
            asking.popleft()
        if self._forgot_asked <= through:
            self._forgot_asked = 0

    def _refused(self, error: Error) -> None:
        """*error* refuses a talk to the target it names: the first one
        kept to it is answered; unless it is a ``not-in-room`` and a part
        or history request to that room went before that talk: then it
        is that request's answer."""
        key = name_key(error.detail)
        talk = next((kept for kept in self._kept if kept.key == key), None)
        if error.code is ErrorCode.NOT_IN_ROOM:
            asked = next((each for each in self._asking if each.key == key), None)
            if asked is not None and (talk is None or asked.order < talk.order):
                self._asking.remove(asked)
                return
            if talk is not None and 0 < self._forgot_asked < talk.order:
                # Perhaps the answer of a request forgotten before the
                # talk: the talk stays kept (at worst it goes twice, never
                # lost).
                return
        if talk is not None:
            self._kept.remove(talk)
            self._freed()

    def _ponged(self, client: Client, token: str) -> None:
        """The pong of a ping written to *client*: what was written before
        that ping has been answered."""
        found = next(
            (
                index
                for index, (sent_to, said, _) in enumerate(self._barriers)
                if sent_to is client and said == token
            ),
            None,
        )
        if found is None:
            return  # a ping sent around this client
        # Pongs come in order: the pings before it will get none.
        for _ in range(found):
            self._barriers.popleft()
        written = self._barriers.popleft()[2]
        kept = self._kept
        while kept and kept[0].client is client and kept[0].order <= written:
            kept.popleft()
        self._freed()
        self._settled(written)

    async def _catch_up(
        self, client: Client, events: list[ReconnectingEvent]
    ) -> list[ReconnectingEvent]:
        """Back over *client*: the kept talks whose copy *events* (the
        outcome, then the missed or recovered messages) hold are delivered.
        After a resume the others never reached the server: they go again
        now, in order, before the program's next send. After a new login
        they are listed in the ResumeFailed. Returns *events*."""
        self._barriers.clear()
        # Asked over the connection that was lost: no answer will come.
        self._asking.clear()
        self._forgot_asked = 0
        own = name_key(client.name)
        looked_at = self._looked_at
        for event in events:
            if not isinstance(event, Message) or event.id <= looked_at:
                continue
            self._looked_at = max(self._looked_at, event.id)
            if self._kept and name_key(event.sender) == own:
                self._confirm(event)
        if not self._kept:
            return events
        outcome = events[0]
        if isinstance(outcome, Resumed):
            async with self._order:
                for kept in self._kept:
                    kept.client = client
                # The same server, with the same limits, took each of them
                # before: no check can refuse one now.
                frames = [client._connection.send(kept.talk) for kept in self._kept]
                await client._write(b"".join(frames))
            return events
        unconfirmed = self.unconfirmed
        self._kept.clear()
        self._freed()
        assert isinstance(outcome, ResumeFailed), outcome
        return [attrs.evolve(outcome, unconfirmed=unconfirmed), *events[1:]]

    async def _drop(self, client: Client, lost: ConnectionLost) -> None:
        """A send found *client*'s connection broken: close it, so that the
        reading task sees the drop now rather than at its next read."""
        if client is self._client and self._closing_reason is None:
            self._closing_reason = str(lost)
        await client.aclose()

    async def _run(self) -> None:
        async with self._send_events, trio.open_nursery() as nursery:
            with self._scope:
                if self._keepalive > 0:
                    nursery.start_soon(self._watch, self._keepalive)
                await self._follow()
            if self._failure is not None:
                self._end_reason = str(self._failure)
                self._failure.unconfirmed = self.unconfirmed
            self._ended = True
            self._notify()
            nursery.cancel_scope.cancel()

    async def _follow(self) -> None:
        """Read connection after connection until the end."""
        while True:
            client = self._client
            if client is None:
                return
            reason = await self._pump(client)
            if self._final or self._exiting:
                return
            self._client = None
            self._notify()
            await client.aclose()
            await self._send_events.send(Disconnected(reason))
            if not await self._reconnect(reason):
                return

    async def _pump(self, client: Client) -> str:
        """Pass on what *client* yields until its connection ends; why."""
        self._closing_reason = None
        while True:
            try:
                batch = await client.receive_batch()
            except BadServerFrame as bad:
                if not bad.fatal:
                    await self._send_events.send(_Raise(bad))
                    continue
                return str(bad)
            except ConnectionLost as lost:
                return str(lost)
            if not batch:
                return self._closing_reason or "the server closed the connection"
            await self._pass(batch, client)

    async def _pass(
        self, events: Sequence[ReconnectingEvent], client: Client | None = None
    ) -> None:
        """Pass on *events*, what one read brought, as one batch: they go
        into the channel without a checkpoint between them while it has
        room, so the reader's ``receive_batch`` takes them together (a
        join's member list, say, stays one answer). *client*: the live
        connection they came from, whose answers confirm the talks kept
        (None: a resume's, which ``_catch_up`` has looked at)."""
        confirming = client is not None and bool(self._kept)
        asking = client is not None and bool(self._asking)
        own = name_key(self.name)
        for event in events:
            match event:
                case Message(id=message_id, sender=sender):
                    if message_id <= self.last_id:
                        continue
                    self.last_id = message_id
                    if message_id > self._looked_at:
                        self._looked_at = message_id
                        if confirming and name_key(sender) == own:
                            self._confirm(event)
                case Error(code) if (confirming or asking) and code in _REFUSES_A_TALK:
                    self._refused(event)
                case Parted(room, name) if asking and name_key(name) == own:
                    self._answered("part", name_key(room))
                case HistoryPage(target=target) if asking:
                    self._answered("history", name_key(target))
                case Error(ErrorCode.NO_HISTORY | ErrorCode.NEEDS_HELLO) if asking:
                    self._answered("history", None)
                case Pong(token) if confirming and client is not None:
                    self._ponged(client, token)
                case Error(code, detail) if code.closes:
                    if code in (ErrorCode.REPLACED, ErrorCode.TOO_LONG):
                        self._final = True
                        self._end_reason = (
                            f"the connection ended ({code.value}: {detail})"
                        )
                    self._closing_reason = f"{code.value}: {detail}"
            try:
                self._send_events.send_nowait(event)
            except trio.WouldBlock:
                await self._send_events.send(event)

    async def _watch(self, interval: float) -> None:
        """Close a connection over which nothing arrives any more: ping
        after *interval* seconds of silence, close after as many again."""
        while True:
            try:
                client = await self._connected_client()
            except NotSent:
                return  # the client has ended
            await trio.sleep_until(client.last_heard + interval)
            if client is not self._client:
                continue
            if trio.current_time() < client.last_heard + interval:
                continue
            sent = trio.current_time()
            self._pings += 1
            token = f"keepalive-{self._pings}"
            async with self._order:
                self._barrier(client, token)
                with suppress(ConnectionLost):
                    await client.send(Ping(token))
            await trio.sleep_until(sent + interval)
            if client is self._client and client.last_heard < sent:
                self._closing_reason = f"no answer from the server for {interval:g} s"
                await client.aclose()

    async def _reconnect(self, reason: str) -> bool:
        """Try until back (True), or until it is time to give up."""
        window = self._give_up_after
        if window is None:
            window = float(self._last.resume_window) or _DEFAULT_GIVE_UP
        give_up = trio.current_time() + window
        attempt = 0
        problem = reason
        while True:
            attempt += 1
            delay = self._backoff.delay(attempt, self._rng)
            if trio.current_time() + delay > give_up:
                if window <= 0:  # reconnecting is off
                    self._failure = ConnectionLost(problem)
                else:
                    self._failure = ConnectionLost(
                        f"could not reconnect within {window:g} s: {problem}"
                    )
                return False
            await self._send_events.send(Reconnecting(attempt, delay))
            await trio.sleep(delay)
            try:
                with trio.fail_after(_ATTEMPT_TIMEOUT):
                    client, events = await self._attempt()
            except trio.TooSlowError:
                problem = f"no answer within {_ATTEMPT_TIMEOUT:g} s"
                continue
            except OSError as error:
                problem = error.strerror or str(error)
                continue
            except LoginRefused as refused:
                if refused.error.code in _FINAL_REFUSALS:
                    self._failure = ConnectionLost(
                        f"cannot log in again as {self.name}: {refused}"
                    )
                    self._failure.__cause__ = refused
                    return False
                problem = str(refused)
                continue
            except (ConnectionLost, BadServerFrame) as error:
                problem = str(error)
                continue
            self.reconnects += 1
            self._client = self._last = client
            self._notify()
            await self._pass(events)
            return True

    async def _attempt(self) -> tuple[Client, list[ReconnectingEvent]]:
        """One attempt: connect, take the session back (or log in again),
        and read the snapshot; the client and what it has to say."""
        stream = await self._reopen()
        try:
            client, failure = await self._take_back(stream)
            events = await self._settle(client, failure)
            events = await self._catch_up(client, events)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return client, events

    async def _take_back(self, stream: trio.abc.Stream) -> tuple[Client, str | None]:
        """Resume, or log in again: the client, and why a resume failed
        (None when it worked)."""
        old = self._last
        if old.session is None:
            client = await self._log_in_again(stream, None)
            if old.version < 2:
                return client, "protocol 1 has no sessions"
            return client, "the server keeps no sessions"
        try:
            client = await Client.resume(
                stream, old.session, self.last_id, echo=old.echo
            )
        except LoginRefused as refused:
            if refused.error.code is not ErrorCode.RESUME_FAILED:
                raise
            client = await self._log_in_again(stream, refused)
            return client, refused.error.detail or "the session has ended"
        client._password = old._password
        client._new_passwords = old._new_passwords.copy()
        return client, None

    async def _log_in_again(
        self, stream: trio.abc.Stream, after: LoginRefused | None
    ) -> Client:
        """Log in over *stream* as the session's name, with the password
        the client logged in with (a guest: none); when that is refused,
        with a new one whose confirmation a drop may have lost."""
        old = self._last
        passwords = old._passwords()
        for tried, password in enumerate(passwords, start=1):
            try:
                if after is None:
                    return await Client.login(
                        stream,
                        old.name,
                        version=old.version,
                        echo=old.echo,
                        password=password,
                    )
                return await Client.login(
                    stream, old.name, after=after, password=password
                )
            except LoginRefused as refused:
                retry = refused.error.code in (
                    ErrorCode.ACCOUNT_REQUIRED,
                    ErrorCode.WRONG_PASSWORD,
                )
                if not retry or tried == len(passwords):
                    raise
                after = refused
        raise AssertionError("unreachable: there is always one password to try")

    async def _settle(
        self, client: Client, failure: str | None
    ) -> list[ReconnectingEvent]:
        """Read what comes back before the live stream: the snapshot and
        the missed messages of a resume; or, after a new login, the rooms
        joined again and what history fills in. Returns the events to pass
        on: the outcome, the changes to the roster and rooms, then the
        messages, in id order."""
        old = self._last
        after = self.last_id
        asked: dict[str, str] = {}
        if failure is not None:
            rooms = list(old.rooms)
            for room in rooms:
                await client.join(room)
            keeps = client.version >= 2 and client.settings.get("history", "0") != "0"
            # With no message received yet there is no id to fill from:
            # "everything after 0" would pass on what was said before this
            # client came, as if missed. The event says the gaps instead.
            if keeps and after > 0:
                targets = list(rooms)
                if client.settings.get("presence") != "rooms":
                    targets.append(BROADCAST)
                for target in targets:
                    asked[name_key(target)] = target
                    await client.history(target, _HISTORY_PAGE, after=after)
        self._pings += 1
        token = f"settle-{self._pings}"
        await client.send(Ping(token))
        messages: dict[int, Message] = {}
        # The replay of a resume is the first COUNT messages; those this
        # client had not received are the ones it missed.
        replayed = missed = 0
        recovered: set[int] = set()
        newest: dict[str, int] = {}
        filled: set[str] = set()
        others: list[ReconnectingEvent] = []
        answered = False
        while not answered or asked:
            try:
                event = await client.__anext__()
            except StopAsyncIteration:
                raise ConnectionLost(
                    "the connection closed during the resume"
                ) from None
            if isinstance(event, Message):
                replayed += 1
                new = event.id > after and event.id not in messages
                if new and failure is None and replayed <= client.missed:
                    missed += 1
            match event:
                case Message(id=message_id) if message_id > after:
                    messages.setdefault(message_id, event)
                case HistoryPage(target, found):
                    for message_id, time, sender, to, text in (
                        (hist.id, hist.time, hist.sender, hist.to, hist.text)
                        for hist in found
                    ):
                        key = name_key(to) if to == BROADCAST or is_room(to) else ""
                        if key:
                            newest[key] = max(newest.get(key, after), message_id)
                        if message_id > after and message_id not in messages:
                            messages[message_id] = Message(
                                message_id, time, sender, to, text
                            )
                            recovered.add(message_id)
                    key = name_key(target)
                    if key in asked and len(found) >= _HISTORY_PAGE:
                        await client.history(
                            target, _HISTORY_PAGE, after=newest.get(key, after)
                        )
                    elif asked.pop(key, None) is not None:
                        filled.add(key)
                case Pong(answer) if answer == token:
                    answered = True
                case Error(code) if code.closes:
                    raise ConnectionLost(f"{code.value}: {event.detail}")
                case Error(ErrorCode.NO_HISTORY | ErrorCode.NOT_IN_ROOM, detail) if (
                    asked and failure is not None
                ):
                    # The answer to a history request (or a join) that
                    # failed: that conversation's gap stays.
                    for key, target in list(asked.items()):
                        if target in detail or key in name_key(detail):
                            del asked[key]
                            break
                    else:
                        others.append(event)
                case Login() | Exit() | Joined() | Parted() | Ping() | Pong():
                    pass  # the client keeps the roster; the changes follow
                case Message():
                    pass  # seen before the drop
                case _:
                    others.append(event)
        outcome: ReconnectingEvent
        if failure is None:
            outcome = Resumed(missed)
        else:
            conversations = [*old.rooms]
            if old.settings.get("presence") != "rooms":
                conversations.append(BROADCAST)
            outcome = ResumeFailed(
                failure,
                after,
                len(recovered),
                tuple(c for c in conversations if name_key(c) not in filled),
            )
        return [
            outcome,
            *_changes(old, client),
            *others,
            *(messages[message_id] for message_id in sorted(messages)),
        ]


def _changes(old: Client, new: Client) -> list[Event]:
    """The events that take a program from what *old* knew of the roster
    and the rooms to what *new* knows."""
    events: list[Event] = []
    gone = {key: name for key, name in old._online.items() if key not in new._online}
    events.extend(
        Login(name) for key, name in new._online.items() if key not in old._online
    )
    own = new.name
    for key, room in old._rooms.items():
        if key not in new._rooms:
            events.append(Parted(room.name, own))
    for key, room in new._rooms.items():
        before = old._rooms.get(key)
        if before is None:
            events.append(Joined(room.name, own))
            events.extend(
                Joined(room.name, name)
                for member, name in room.members.items()
                if member != name_key(own)
            )
            continue
        events.extend(
            Joined(room.name, name)
            for member, name in room.members.items()
            if member not in before.members
        )
        events.extend(
            Parted(room.name, name)
            for member, name in before.members.items()
            if member not in room.members and member not in gone
        )
    events.extend(Exit(name) for name in gone.values())
    return events


@asynccontextmanager
async def open_reconnecting_client(
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    echo: bool = True,
    backoff: Backoff | None = None,
    give_up_after: float | None = None,
    keepalive: float = 30.0,
    rng: random.Random | None = None,
    password: str | None = None,
) -> AsyncIterator[ReconnectingClient]:
    """``open_client`` for a client that survives dropped connections: log
    in (protocol 2) as ``connect`` does (with *password*, to the account
    *name*; raising what it raises), then run a ``ReconnectingClient`` for
    the block's length.

        async with open_reconnecting_client("bot", host, port) as client:
            async for event in client:
                match event:
                    case Message(): ...
                    case Disconnected() | Reconnecting(): ...  # show it
                    case ResumeFailed(gaps=gaps): ...  # say what may be lost

    *backoff* sets the delays between attempts (``Backoff()``: 1 s,
    doubling, at most 30 s, up to half taken off at random, from *rng*);
    after *give_up_after* seconds (default: the server's resume window,
    else 120 s) without success, iterating raises ConnectionLost, and
    sends raise NotSent; ``give_up_after=0`` turns reconnecting off (a
    drop yields ``Disconnected``, then iterating raises ConnectionLost).
    The password, if any, is kept in memory for as long as the client
    lives, to log in again when a session is gone; it is never shown.
    *keepalive* seconds of silence from the server bring a ping; as many
    again without a word count as a drop (0: never). Leaving the block
    closes without ``exit``: the server keeps the session for its resume
    window; call ``client.exit()`` first to leave for good.
    """

    async def reopen() -> trio.abc.Stream:
        return await open_stream(
            host, port, ssl_context=ssl_context, server_hostname=server_hostname
        )

    first = await connect(
        name,
        host,
        port,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        echo=echo,
        password=password,
    )
    try:
        async with ReconnectingClient.wrap(
            first,
            reopen,
            backoff=backoff,
            give_up_after=give_up_after,
            keepalive=keepalive,
            rng=rng,
        ) as client:
            yield client
    finally:
        await first.aclose()
