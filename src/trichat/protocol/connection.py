"""A sans-IO trichat connection: bytes in, typed messages out, and back.

``Connection`` never touches a socket. Feed it what arrived with
``receive_data`` (``b""`` at end of file), take messages from
``next_event`` until it returns ``NEED_DATA``, and turn messages into bytes
with ``send``. On the server side it also keeps the login state, so the
rules about what may come before and after ``login`` live in one place.
"""

from __future__ import annotations

import enum
from typing import Final

from ._codec import ProtocolError, Role, decode, encode, printable
from ._linebuffer import LineBuffer, LineTooLong
from .messages import (
    ClientMessage,
    ErrorCode,
    Exit,
    Login,
    Message,
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
]

DEFAULT_MAX_LINE: Final = 4096


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event`` has no whole frame yet: call ``receive_data`` first."""
CLOSED: Final = _Sentinel.CLOSED
"""The peer closed its side and every frame before that has been read."""


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

    __slots__ = ("_eof", "_lines", "_too_long_error", "name", "our_role", "state")

    def __init__(self, our_role: Role, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.our_role = our_role
        self.state = State.LOGGING_IN
        self.name: str | None = None
        self._lines = LineBuffer(max_line)
        self._eof = False
        self._too_long_error: ProtocolError | None = None

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
        any code but ``too-long`` the next frame can be read as usual.
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
            if line:
                break
        return self.decode_line(line)

    def take_lines(self, data: bytes) -> tuple[list[bytes], bool, ProtocolError | None]:
        """The batch form of ``receive_data`` and ``next_event``: take
        *data* (not ``b""``) and return every whole line buffered, to be
        read with ``decode_line``, but for runs of empty lines: each comes
        as one entry of as many LFs (see ``LineBuffer.take_lines``).

        The second item says whether every line is ``printable`` (False
        says nothing). The third is the ``too-long`` error when a line broke
        the limit: the lines returned are those before it, to be handled
        (in the login state they find) before the connection is closed;
        from then on every call returns no lines and the error again.
        """
        if self._too_long_error is not None:
            return [], False, self._too_long_error
        continued = len(self._lines) > 0  # the first line began earlier
        lines, too_long = self._lines.take_lines(data)
        plain = printable(data) and not (
            continued and lines and not printable(lines[0])
        )
        if too_long:
            self._too_long_error = self._too_long()
        return lines, plain, self._too_long_error

    def decode_line(self, line: bytes) -> ClientMessage | ServerMessage:
        """The message in one non-empty *line* (no LF; a CR before it is
        dropped), checked against the login state like ``next_event``'s."""
        if line[-1:] == b"\r":
            line = line[:-1]
        try:
            message = decode(line, self.our_role)
        except ProtocolError as error:
            if error.code is ErrorCode.BAD_NAME and self.state is State.CHATTING:
                # A second login is refused as such, whatever name it asks for.
                raise self._already_logged_in() from None
            raise
        if self.our_role is Role.SERVER:
            self._check_client_frame(message)
        return message

    def _already_logged_in(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {self.name}"
        )

    def _too_long(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.TOO_LONG, f"a frame is at most {self.max_line} bytes"
        )

    def _check_client_frame(self, message: ClientMessage | ServerMessage) -> None:
        if self.state is State.LOGGING_IN:
            if isinstance(message, Talk) or (
                isinstance(message, Exit) and message.name is not None
            ):
                raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "log in first")
        elif isinstance(message, Login):
            raise self._already_logged_in()
        elif (
            isinstance(message, Exit)
            and message.name is not None
            and name_key(message.name) != name_key(self.name or "")
        ):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"exit names another user: {message.name}"
            )

    def logged_in(self, name: str) -> None:
        """Record that the server accepted this client's login as *name*."""
        if self.state is not State.LOGGING_IN:
            raise RuntimeError(f"cannot log in while {self.state.value}")
        self.state = State.CHATTING
        self.name = name

    def send(self, message: Message) -> bytes:
        """The bytes that carry *message* to the peer."""
        return encode(message)
