"""A sans-IO trichat connection: bytes in, typed messages out, and back.

``Connection`` never touches a socket. Feed it what arrived with
``receive_data`` (``b""`` at end of file), take messages from
``next_event`` until it returns ``NEED_DATA``, and turn messages into bytes
with ``send``. On the server side it also keeps the login state, so the
rules about what may come before and after ``login`` live in one place.
"""

from __future__ import annotations

import enum
from typing import Final, cast, get_args

from ._codec import ProtocolError, Role, decode, encode
from ._linebuffer import LineBuffer, LineTooLong
from .messages import (
    ChangePassword,
    ClientMessage,
    ErrorCode,
    Exit,
    Frame,
    Hello,
    History,
    Join,
    ListRooms,
    Login,
    Part,
    Register,
    Resume,
    ServerMessage,
    Talk,
    name_key,
)

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_LINE",
    "NEED_DATA",
    "Connection",
    "ProtocolError",
    "Role",
    "State",
    "decode_client_line",
]

DEFAULT_MAX_LINE: Final = 4096


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event`` has no whole frame yet: call ``receive_data`` first."""
CLOSED: Final = _Sentinel.CLOSED
"""The peer closed its side and every frame before that has been read."""


# The kinds of frame a server sends (a client reads).
_SERVER_KINDS: Final = frozenset(
    message.kind.encode() for message in get_args(ServerMessage)
)


class State(enum.Enum):
    """Where a connection stands, as the server sees it."""

    LOGGING_IN = "logging in"
    CHATTING = "chatting"
    CLOSED = "closed"


class Connection:
    """One end of a trichat connection; *our_role* says which end.

    A server-side connection knows whether its client has logged in: a
    ``talk`` before ``login``, a second ``login`` or an ``exit|NAME`` naming
    someone else raise ProtocolError with the protocol's code, and the
    connection stays usable. A line over *max_line* bytes raises
    ProtocolError with ``too-long`` and the connection is closed.
    """

    __slots__ = ("_eof", "_lines", "name", "our_role", "state")

    def __init__(self, our_role: Role, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.our_role = our_role
        self.state = State.LOGGING_IN
        self.name: str | None = None
        self._lines = LineBuffer(max_line)
        self._eof = False

    @property
    def max_line(self) -> int:
        return self._lines.max_line

    def receive_data(self, data: bytes | bytearray) -> None:
        """Take bytes from the peer; ``b""`` means it closed its side."""
        if data:
            if self._eof:
                raise RuntimeError("data received after end of file")
            self._lines.feed(data)
        else:
            self._eof = True

    def next_event(
        self,
    ) -> ClientMessage | ServerMessage | _Sentinel:
        """The next message, ``NEED_DATA`` or ``CLOSED``.

        Raises ProtocolError for a frame that breaks the protocol; after
        any code but ``too-long`` the next frame can be read as usual. A
        client skips a line whose kind it does not know (a newer server's
        frame); on the server side such a line is a ``bad-frame``.
        """
        if self.state is State.CLOSED:
            return CLOSED
        while True:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self.state = State.CLOSED
                raise self._too_long() from None
            if line is None:
                if self._eof:
                    self.state = State.CLOSED
                    return CLOSED
                return NEED_DATA
            if line and not self._unknown_kind(line):
                break
        return self._decode_line(line)

    def _unknown_kind(self, line: bytes) -> bool:
        """Whether *line* is a frame of a kind a client does not know."""
        if self.our_role is Role.SERVER:
            return False
        return line.partition(b"|")[0] not in _SERVER_KINDS

    def _decode_line(self, line: bytes) -> ClientMessage | ServerMessage:
        if self.our_role is Role.SERVER:
            return decode_client_line(line, self.name)
        if line[-1:] == b"\r":
            line = line[:-1]
        return decode(line, self.our_role)

    def _too_long(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.TOO_LONG, f"a frame is at most {self.max_line} bytes"
        )

    def logged_in(self, name: str) -> None:
        """Record that the server accepted this client's login as *name*."""
        if self.state is not State.LOGGING_IN:
            raise RuntimeError(f"cannot log in while {self.state.value}")
        self.state = State.CHATTING
        self.name = name

    def send(self, message: Frame) -> bytes:
        """The bytes that carry *message* to the peer."""
        return encode(message)


def decode_client_line(line: bytes, logged_in_as: str | None) -> ClientMessage:
    """The message a server reads in one non-empty *line* from a client
    (no LF; a CR before it is dropped), logged in as *logged_in_as* (None:
    not yet), checked against the login rules: a ``talk``, ``join``,
    ``part``, ``rooms``, ``register``, ``password``, ``history`` or
    ``exit|NAME`` before ``login``, a second ``login`` or a ``resume``
    (whatever it asks for), a ``hello`` after it, and an
    ``exit`` naming someone else raise ProtocolError with the protocol's
    code. ``Connection`` and the server both read this way.
    """
    if line[-1:] == b"\r":
        line = line[:-1]
    try:
        message = decode(line, Role.SERVER)
    except ProtocolError as error:
        # A second login is refused as such, whatever name or password it
        # holds (a malformed frame is still a bad frame).
        if (
            logged_in_as is not None
            and error.code == ErrorCode.BAD_NAME
            and line.startswith(b"login|")
        ):
            raise _already_logged_in(logged_in_as) from None
        raise
    # Decoded as a server reads, so it is a frame a client sends.
    message = cast(ClientMessage, message)
    if logged_in_as is None:
        if isinstance(message, _NEEDS_LOGIN) or (
            isinstance(message, Exit) and message.name is not None
        ):
            raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "log in first")
    elif isinstance(message, _BEFORE_LOGIN_ONLY):
        raise _already_logged_in(logged_in_as)
    elif (
        isinstance(message, Exit)
        and message.name is not None
        and name_key(message.name) != name_key(logged_in_as)
    ):
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"exit names another user: {message.name}"
        )
    return message


# What only a logged-in user may ask for, and what only one not yet logged in.
_NEEDS_LOGIN = (Talk, Join, Part, ListRooms, Register, ChangePassword, History)
_BEFORE_LOGIN_ONLY = (Login, Hello, Resume)


def _already_logged_in(name: str) -> ProtocolError:
    return ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {name}")
