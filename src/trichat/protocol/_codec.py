"""One line of the wire format to one typed message, and back. No I/O here.

Adding a frame kind means adding its class to ``messages`` and one row to
``_KINDS`` below; encoding needs nothing new.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from .messages import (
    BROADCAST,
    MAX_TEXT,
    ChangePassword,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    FieldError,
    Frame,
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
    Resumed,
    RoomInfo,
    RoomsListed,
    ServerMessage,
    SessionInfo,
    Talk,
    Welcome,
)

__all__ = [
    "ProtocolError",
    "Role",
    "as_deliveries",
    "decode",
    "delivery_block",
    "delivery_head",
    "encode",
    "message_block",
    "message_frames",
    "plain_talk_run",
    "printable",
    "talk_texts",
]

# Control characters other than TAB and LF: with non-ASCII bytes, what
# ``printable`` looks for. (Deleting them and comparing lengths scans
# several times faster than a regex search.)
_UNPRINTABLE = bytes([*range(0x09), *range(0x0B, 0x20), 0x7F])


class Role(enum.Enum):
    """Which end of a connection we are; it decides which frames we accept."""

    CLIENT = "client"
    SERVER = "server"


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow.

    ``code`` and ``detail`` are what a server tells the client in reply
    (``reply`` builds that frame).
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reply(self) -> Error:
        return Error(self.code, self.detail)


def encode(message: Frame) -> bytes:
    """The frame for *message*, LF included."""
    return ("|".join((message.kind, *message.fields())) + "\n").encode()


def delivery_head(sender: str, to: str) -> bytes:
    """What every delivery from *sender* to *to* starts with: ``talk|FROM|TO|``."""
    return f"talk|{sender}|{to}|".encode()


def delivery_block(head: bytes, texts: Sequence[bytes]) -> bytes:
    """The delivery frames of *texts* (UTF-8, already valid), one after
    another, each starting with *head* (``delivery_head``'s).

    The server's hot path: the talk it relays was validated when it was
    read, so checking its fields a second time would only cost time, and
    one join builds the frames of a whole read.
    """
    return head + (b"\n" + head).join(texts) + b"\n"


def message_block(
    first_id: int, time: bytes, sender: str, to: str, texts: Sequence[bytes]
) -> bytes:
    """The protocol-2 deliveries of *texts* (UTF-8, already valid), one
    ``msg|ID|TIME|FROM|TO|TEXT`` frame each, numbered from *first_id* on and
    all stamped *time* (``format_time``'s, encoded): ``delivery_block`` for
    protocol 2."""
    tail = b"|" + time + f"|{sender}|{to}|".encode()
    return b"".join(
        [b"msg|%d%s%s\n" % (first_id + n, tail, text) for n, text in enumerate(texts)]
    )


def message_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The ``msg`` frames in *data* (whole frames, as a server writes
    them), each with its id; other frames are passed over."""
    for line in data.split(b"\n"):
        if line.startswith(b"msg|"):
            bar = line.find(b"|", 4)
            yield int(line[4:bar]), line + b"\n"


def as_deliveries(frames: Iterable[bytes], name: str) -> list[bytes]:
    """``msg`` frames (whole, as a server writes them) for user *name*, as
    the ``talk`` deliveries protocol 1 has for the same messages: no id,
    no time, and no echo of *name*'s own messages (protocol 1 has none)."""
    own = name.encode()
    deliveries = []
    for frame in frames:
        _, _, _, sender, rest = frame.split(b"|", 4)
        if sender == own and rest.split(b"|", 1)[0] != own:
            continue  # an echo
        deliveries.append(b"talk|" + sender + b"|" + rest)
    return deliveries


def talk_texts(lines: Sequence[bytes], start: int, end: int, to: bytes) -> list[bytes]:
    """The texts of ``lines[start:end]``, a run of ``talk|TO|TEXT`` frames
    that ``plain_talk_run`` found (its target is *to*)."""
    if end <= start:
        return []
    head = b"talk|" + to + b"|"
    # Every line starts with the head, and no text holds an LF: split at
    # each LF followed by the head, the texts are what is left.
    return b"\n".join(lines[start:end])[len(head) :].split(b"\n" + head)


def printable(data: bytes) -> bool:
    """Whether *data* is lines of printable ASCII: no byte above 0x7F and no
    control character but TAB and LF. One scan of a whole read tells
    ``plain_talk_run`` that every line in it is fit to relay as it is."""
    return data.isascii() and len(data.translate(None, _UNPRINTABLE)) == len(data)


def plain_talk_run(lines: Sequence[bytes], start: int, stop: int) -> tuple[int, bytes]:
    """The run of ``talk`` frames to one target that a server can relay
    without decoding them, from ``lines[start]`` on and before
    ``lines[stop]``.

    The lines must be ``printable``. A line of the run has a non-empty
    target and a text of 1 to MAX_TEXT characters, so its text is valid as
    it is. Returns where the run ends and its target: ``end == start`` when
    ``lines[start]`` is not such a frame (then it needs ``decode``). The
    target is not checked: one that is an online user's name exactly as
    they wrote it, or ``*``, is valid (any other goes through ``decode``).
    The server's hot path, which relays most messages this way.
    """
    line = lines[start]
    bar = line.find(b"|", 5)
    if bar <= 5 or not line.startswith(b"talk|"):
        return start, b""
    head = line[: bar + 1]  # talk|TARGET|
    size = bar + 1
    # Most often every line is one (a client's burst to one user): said by
    # C code (a join, a count, a map) rather than by a loop of ours.
    run = lines[start:stop]
    if (
        b"\n".join(run).count(b"\n" + head) == len(run) - 1
        and min(map(len, run)) > size
        and max(map(len, run)) <= size + MAX_TEXT
    ):
        return stop, head[5:-1]
    for end in range(start, stop):
        line = lines[end]
        if not (line.startswith(head) and 0 < len(line) - size <= MAX_TEXT):
            return end, head[5:-1]
    return stop, head[5:-1]


def _part(room: str) -> Part:
    """A ``part`` a server reads: ``part|*`` is no bad name but a room
    nobody can leave (the server says which error fits its presence)."""
    if room == BROADCAST:
        raise FieldError(ErrorCode.NOT_IN_ROOM, BROADCAST)
    return Part(room)


@attrs.frozen
class _Kind:
    build: Callable[..., Any]
    min_fields: int
    max_fields: int
    # The last field takes the rest of the line, ``|`` included.
    rest: bool = False
    # The error code for a field that breaks its rules.
    invalid: ErrorCode = ErrorCode.BAD_FRAME


# What each side accepts from the other: the frames a server decodes come
# from clients, and the other way round.
_KINDS: dict[Role, dict[str, _Kind]] = {
    Role.SERVER: {
        "hello": _Kind(Hello, 1, 2),
        "login": _Kind(Login, 1, 2, rest=True, invalid=ErrorCode.BAD_NAME),
        "resume": _Kind(Resume, 2, 2),
        "register": _Kind(Register, 1, 1, rest=True),
        "password": _Kind(ChangePassword, 1, 1, rest=True),
        "talk": _Kind(Talk, 2, 2, rest=True),
        "join": _Kind(Join, 1, 1, invalid=ErrorCode.BAD_NAME),
        "part": _Kind(_part, 1, 1, invalid=ErrorCode.BAD_NAME),
        "rooms": _Kind(ListRooms, 0, 0),
        "history": _Kind(History.from_fields, 3, 4),
        "exit": _Kind(Exit, 0, 1),
        "ping": _Kind(Ping, 1, 1),
        "pong": _Kind(Pong, 1, 1),
    },
    Role.CLIENT: {
        "hello": _Kind(Welcome, 2, 2, rest=True),
        "login": _Kind(Login, 1, 1),
        "session": _Kind(SessionInfo, 2, 2),
        "resumed": _Kind(Resumed, 2, 2),
        "registered": _Kind(Registered, 1, 1),
        "password": _Kind(PasswordChanged, 1, 1),
        "hist": _Kind(Hist, 5, 5, rest=True),
        "history": _Kind(HistoryEnd, 2, 2),
        "talk": _Kind(Delivery, 3, 3, rest=True),
        "msg": _Kind(Message, 5, 5, rest=True),
        "join": _Kind(Joined, 2, 2),
        "part": _Kind(Parted, 2, 2),
        "room": _Kind(RoomInfo, 2, 2),
        "rooms": _Kind(RoomsListed, 1, 1),
        "exit": _Kind(Exit, 1, 1),
        # A code this client does not know is still an error (forward
        # compatibility): Error.received keeps it as an UnknownErrorCode.
        "error": _Kind(Error.received, 2, 2, rest=True),
        "ping": _Kind(Ping, 1, 1),
        "pong": _Kind(Pong, 1, 1),
    },
}


def decode(line: bytes, our_role: Role) -> ClientMessage | ServerMessage:
    """The message in *line* (no LF), as read by *our_role*.

    Raises ProtocolError with the code the protocol gives for the fault.
    """
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid UTF-8") from None
    kind_name, bar, rest = text.partition("|")
    kind = _KINDS[our_role].get(kind_name)
    if kind is None:
        shown = kind_name if len(kind_name) <= 32 else kind_name[:32] + "..."
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown kind {shown!r}")
    if not bar:
        fields = []
    elif kind.rest:
        fields = rest.split("|", kind.max_fields - 1)
    else:
        fields = rest.split("|")
    if not kind.min_fields <= len(fields) <= kind.max_fields:
        raise ProtocolError(ErrorCode.BAD_FRAME, _field_count(kind_name, kind))
    if "" in fields:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"{kind_name} has an empty field")
    try:
        message: ClientMessage | ServerMessage = kind.build(*fields)
    except ValueError as error:
        code = error.code if isinstance(error, FieldError) else kind.invalid
        raise ProtocolError(code, str(error)) from None
    return message


def _field_count(name: str, kind: _Kind) -> str:
    if kind.min_fields == kind.max_fields:
        count = str(kind.max_fields)
    else:
        count = f"{kind.min_fields} to {kind.max_fields}"
    plural = "" if count == "1" else "s"
    return f"{name} takes {count} field{plural}"
