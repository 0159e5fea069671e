"""The frames of the trichat protocol as typed, validated ``attrs`` classes.

Every class checks its fields when it is built, so a message that breaks the
protocol's rules cannot exist. Each class names its frame ``kind`` and
``fields``; the codec derives both directions of the wire format from them.
Version 1's frames are those of the 1.0 tutorial chat plus rooms; version 2
adds ``hello`` and ``msg`` (docs/protocol.md says which is which).
"""

from __future__ import annotations

import enum
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar

import attrs

__all__ = [
    "BROADCAST",
    "DEFAULT_IGNORABLE",
    "HISTORY_DIRECTIONS",
    "MAX_HISTORY",
    "MAX_ID",
    "MAX_NAME",
    "MAX_PASSWORD",
    "MAX_TEXT",
    "MAX_TOKEN",
    "MIN_PASSWORD",
    "PROTOCOL_VERSION",
    "ChangePassword",
    "ClientMessage",
    "Delivery",
    "Error",
    "ErrorCode",
    "Exit",
    "FieldError",
    "Frame",
    "Hello",
    "Hist",
    "History",
    "HistoryEnd",
    "Join",
    "Joined",
    "ListRooms",
    "Login",
    "Message",
    "Part",
    "Parted",
    "PasswordChanged",
    "Ping",
    "Pong",
    "Register",
    "Registered",
    "Resume",
    "Resumed",
    "RoomInfo",
    "RoomsListed",
    "ServerMessage",
    "SessionInfo",
    "Talk",
    "UnknownErrorCode",
    "Welcome",
    "check_name",
    "check_password",
    "check_room",
    "check_target",
    "check_text",
    "check_token",
    "format_epoch_ms",
    "format_time",
    "is_room",
    "name_key",
    "parse_time",
]

MAX_NAME = 32
MAX_TEXT = 4000
MAX_TOKEN = 64
MAX_ID = 10**20 - 1
"""The largest message id: 20 decimal digits."""
PROTOCOL_VERSION = 2
"""The highest protocol version this package speaks."""
BROADCAST = "*"
"""The ``talk`` target that means every other user online: the
everyone-room."""
ROOM_PREFIX = "#"

_NAME_PUNCTUATION = frozenset("_-.")

# The characters that render as nothing: the Unicode property
# Default_Ignorable_Code_Point, which unicodedata does not expose. Unicode
# derives it (UAX #44; the header of its section in DerivedCoreProperties.txt)
# as
#     Other_Default_Ignorable_Code_Point (PropList.txt)
#   + General_Category Cf (format characters)
#   + Variation_Selector (PropList.txt)
#   - White_Space
#   - FFF9..FFFB (interlinear annotation format characters)
#   - 13430..1343F (Egyptian hieroglyph format characters)
#   - Prepended_Concatenation_Mark (format characters that should be visible)
# and these are the ranges DerivedCoreProperties.txt lists for it (Unicode
# 15.1, 4174 code points), joined where they touch. Most are refused in a
# name anyway, as format (Cf) or unassigned (Cn) characters; the letters and
# marks among them (U+034F, the Hangul fillers, the variation selectors...)
# are not, and would make "alice" plus an invisible character look like
# alice.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE .. RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER .. NOMINAL DIGIT SHAPES, and reserved U+2065
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1 .. 16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP .. UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM .. END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17 .. 256, and reserved
)
"""The code points with the Unicode property Default_Ignorable_Code_Point, as
inclusive ranges; none of them may appear in a name."""
_IGNORABLE = re.compile(
    "["
    + "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in DEFAULT_IGNORABLE)
    + "]"
)
# C0 controls except TAB, DEL and the C1 controls (NEL, U+0085, among them);
# the line and paragraph separators, which a client splitting lines the way
# str.splitlines() does would take for the end of a frame; and lone
# surrogates, which no UTF-8 frame can carry.
_TEXT_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same, TAB included.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class ErrorCode(enum.StrEnum):
    """Why the server refused a frame or closed a connection."""

    BAD_FRAME = "bad-frame"
    BAD_NAME = "bad-name"
    NAME_TAKEN = "name-taken"
    ACCOUNT_REQUIRED = "account-required"
    NO_SUCH_ACCOUNT = "no-such-account"
    WRONG_PASSWORD = "wrong-password"
    BAD_PASSWORD = "bad-password"
    ALREADY_REGISTERED = "already-registered"
    TLS_REQUIRED = "tls-required"
    NOT_LOGGED_IN = "not-logged-in"
    ALREADY_LOGGED_IN = "already-logged-in"
    NEEDS_HELLO = "needs-hello"
    NO_SUCH_USER = "no-such-user"
    NOT_IN_ROOM = "not-in-room"
    ALREADY_IN_ROOM = "already-in-room"
    TOO_MANY_ROOMS = "too-many-rooms"
    NO_HISTORY = "no-history"
    MAILBOX_FULL = "mailbox-full"
    RESUME_FAILED = "resume-failed"
    REPLACED = "replaced"
    TOO_LONG = "too-long"
    RATE_LIMITED = "rate-limited"
    SERVER_FULL = "server-full"
    TOO_MANY_CONNECTIONS = "too-many-connections"
    LOGIN_TIMEOUT = "login-timeout"
    SHUTTING_DOWN = "shutting-down"

    @property
    def closes(self) -> bool:
        """True when the server closes the connection after this error."""
        return self in _CLOSING_CODES


_CLOSING_CODES = frozenset(
    {
        ErrorCode.REPLACED,
        ErrorCode.TOO_LONG,
        ErrorCode.SERVER_FULL,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.LOGIN_TIMEOUT,
        ErrorCode.SHUTTING_DOWN,
    }
)


class UnknownErrorCode(str):
    """An error code that is not an ``ErrorCode``: one a newer server sends.

    A client shows it as an error like any other instead of refusing the
    frame. It reads as an ``ErrorCode`` member does: ``value`` is the code as
    the server wrote it, and ``closes`` is False, since only the server knows
    what follows it (if it closes the connection, the stream ends as it
    would anyway). It holds 1 to ``MAX_TOKEN`` characters, neither ``|`` nor
    control characters nor line separators, and is no ``ErrorCode`` value.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> UnknownErrorCode:
        if value in _KNOWN_CODES:
            raise ValueError(f"{value!r} is a known error code")
        if not 1 <= len(value) <= MAX_TOKEN:
            raise ValueError(f"an error code has 1 to {MAX_TOKEN} characters")
        if "|" in value or "\t" in value or _TEXT_FORBIDDEN.search(value):
            raise ValueError(
                "an error code may not contain '|', control characters or line"
                " separators"
            )
        return super().__new__(cls, value)

    @property
    def value(self) -> str:
        return str(self)

    @property
    def closes(self) -> bool:
        """False: the client cannot tell (see the class)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


_KNOWN_CODES = frozenset(code.value for code in ErrorCode)


def _error_code(code: str) -> ErrorCode | UnknownErrorCode:
    """An ``ErrorCode`` for its value; an ``UnknownErrorCode`` stays as it is.

    A plain string that names no ``ErrorCode`` is refused: only a client
    reading a frame (``Error.received``) takes a code it does not know.
    """
    if isinstance(code, UnknownErrorCode):
        return code
    return ErrorCode(code)


@lru_cache(maxsize=4096)
def _name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= MAX_NAME:
        return f"a name has 1 to {MAX_NAME} characters"
    if name[0] in ".-":
        return "a name must not start with '.' or '-'"
    invisible = _IGNORABLE.search(name)
    if invisible is not None:
        code = ord(invisible[0])
        return f"a name may not contain U+{code:04X}, which renders as nothing"
    for position, char in enumerate(name):
        if char in _NAME_PUNCTUATION:
            continue
        category = unicodedata.category(char)
        if category[0] == "L" or category == "Nd":
            continue
        if category[0] == "M" and position > 0:
            continue
        return f"a name may not contain {char!r}"
    return None


def check_name(name: str) -> None:
    """Raise ValueError, saying why, unless *name* is a valid user name."""
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(problem)


def is_room(target: str) -> bool:
    """Whether *target* names a room (it starts with ``#``; it may still
    break the rules, see ``check_room``)."""
    return target.startswith(ROOM_PREFIX)


def check_room(room: str) -> None:
    """Raise ValueError, saying why, unless *room* is a valid room name:
    ``#`` and then 1 to MAX_NAME characters under the rules for names."""
    if not is_room(room):
        raise ValueError(f"a room name starts with {ROOM_PREFIX!r}")
    problem = _name_problem(room[1:])
    if problem is not None:
        raise ValueError(problem.replace("a name", "a room name", 1))


def check_target(target: str) -> None:
    """Raise ValueError unless *target* is a user's name, a room or ``*``."""
    if target == BROADCAST:
        return
    if is_room(target):
        check_room(target)
    else:
        check_name(target)


@lru_cache(maxsize=65536)
def name_key(name: str) -> str:
    """The form under which two names clash: NFKC, then casefolded."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_text(text: str) -> None:
    """Raise ValueError unless *text* is valid message text."""
    if not 1 <= len(text) <= MAX_TEXT:
        raise ValueError(f"text has 1 to {MAX_TEXT} characters")
    if _TEXT_FORBIDDEN.search(text):
        raise ValueError(
            "text may not contain control characters (but TAB), line or"
            " paragraph separators, or lone surrogates"
        )


class FieldError(ValueError):
    """A field that breaks its rules, with the error code the protocol
    gives for it when that is not its frame kind's usual one (a password
    in ``register`` is a ``bad-password``, not a ``bad-frame``)."""

    def __init__(self, code: ErrorCode, problem: str) -> None:
        super().__init__(problem)
        self.code = code


MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_HISTORY = 500
"""The most messages one ``history`` request may ask for."""


def check_password(password: str) -> None:
    """Raise ValueError unless *password* is a valid new password: 8 to
    256 characters, no control characters."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if _CONTROL.search(password):
        raise ValueError("a password may not contain control characters")


def check_token(token: str) -> None:
    """Raise ValueError unless *token* is a valid ping/pong token."""
    if not 1 <= len(token) <= MAX_TOKEN:
        raise ValueError(f"a token has 1 to {MAX_TOKEN} characters")
    if "|" in token or _CONTROL.search(token):
        raise ValueError("a token may not contain '|' or control characters")


def format_time(when: datetime) -> str:
    """*when* as the protocol writes it: UTC to the millisecond, ending in
    ``Z`` (``2026-12-03T09:15:02.125Z``)."""
    return format_epoch_ms((when - _EPOCH) // _MILLISECOND)


def format_epoch_ms(ms: int) -> str:
    """``format_time`` for *ms* milliseconds since the Unix epoch: what a
    server stamps on the messages it accepts."""
    seconds, ms = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z", re.ASCII)


def parse_time(text: str) -> datetime:
    """The time a frame carries (see ``format_time``), as an aware datetime."""
    if not _TIME.match(text):
        raise ValueError(
            f"a time is written like 2026-12-03T09:15:02.125Z, not {text!r}"
        )
    return datetime.fromisoformat(text)


def _to_time(value: datetime | str) -> datetime:
    if isinstance(value, str):
        return parse_time(value)
    if value.tzinfo is None:
        raise ValueError("a message time must be timezone-aware")
    # Millisecond precision, as on the wire, so a round trip is exact.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _number(value: int | str, least: int, most: int, what: str) -> int:
    """*value* (a decimal string from a frame, or an int) within bounds."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"{what} is a decimal number, not {value!r}")
        value = int(value)
    if not least <= value <= most:
        raise ValueError(f"{what} is {least} to {most}, not {value}")
    return value


def _version(value: int | str) -> int:
    return _number(value, 1, 999_999_999, "a protocol version")


def _message_id(value: int | str) -> int:
    return _number(value, 1, MAX_ID, "a message id")


def _members(value: int | str) -> int:
    return _number(value, 1, MAX_ID, "a member count")


def _count(value: int | str) -> int:
    return _number(value, 0, MAX_ID, "a count")


def _words(value: Iterable[str] | str) -> tuple[str, ...]:
    """Space-separated words (``hello``'s options), each checked."""
    words = tuple(value.split(" ") if isinstance(value, str) else value)
    for word in words:
        if not word or " " in word or "|" in word or _CONTROL.search(word):
            raise ValueError(f"an option is a word without '|', not {word!r}")
    return words


def _settings(
    value: Mapping[str, str] | Iterable[tuple[str, str]] | str,
) -> tuple[tuple[str, str], ...]:
    """``key=value`` words (``hello``'s answer). A reader skips words that
    are not ``key=value``: a newer server may write other kinds."""
    if isinstance(value, str):
        pairs = []
        for word in value.split(" "):
            key, equals, setting = word.partition("=")
            if key and equals:
                pairs.append((key, setting))
        return _some_settings(tuple(pairs))
    items = value.items() if isinstance(value, Mapping) else value
    pairs = [(str(key), str(setting)) for key, setting in items]
    for key, setting in pairs:
        if not key or any(c in key for c in " =|") or any(c in setting for c in " |"):
            raise ValueError(f"not a setting: {key}={setting}")
        if _CONTROL.search(key + setting):
            raise ValueError("a setting may not contain control characters")
    return _some_settings(tuple(pairs))


def _some_settings(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    if not pairs:
        raise ValueError("hello's answer holds the server's settings")
    return pairs


def _name(_: Any, __: Any, value: str) -> None:
    check_name(value)


def _room(_: Any, __: Any, value: str) -> None:
    check_room(value)


def _target(_: Any, __: Any, value: str) -> None:
    # check_target's rule, inlined: every delivery a client reads runs it.
    if value[:1] == ROOM_PREFIX:
        check_room(value)
    elif value != BROADCAST:
        check_name(value)


def _history_target(_: Any, __: Any, value: str) -> None:
    # A protocol-2 frame: a target that breaks the name or room rules is a
    # bad-name, as the error table says (talk keeps version 1's bad-frame).
    try:
        _target(_, __, value)
    except ValueError as problem:
        raise FieldError(ErrorCode.BAD_NAME, str(problem)) from None


def _text(_: Any, __: Any, value: str) -> None:
    check_text(value)


def _token(_: Any, __: Any, value: str) -> None:
    check_token(value)


def _optional_name(_: Any, __: Any, value: str | None) -> None:
    if value is not None:
        check_name(value)


def _detail(_: Any, __: Any, value: str) -> None:
    if not 1 <= len(value) <= MAX_TEXT:
        raise ValueError(f"an error detail has 1 to {MAX_TEXT} characters")
    if _TEXT_FORBIDDEN.search(value):
        raise ValueError(
            "an error detail may not contain control characters (but TAB)"
            " or line or paragraph separators"
        )


def _new_password(_: Any, __: Any, value: str) -> None:
    try:
        check_password(value)
    except ValueError as problem:
        raise FieldError(ErrorCode.BAD_PASSWORD, str(problem)) from None


def _given_password(_: Any, __: Any, value: str | None) -> None:
    # Only what no password can hold: whether it matches an account, of
    # any length, is the server's to say, after whether the name is one
    # (no-such-account) and whether passwords may come this way.
    if value is not None and _CONTROL.search(value):
        raise FieldError(
            ErrorCode.BAD_FRAME, "a password may not contain control characters"
        )


@attrs.frozen
class Login:
    """``login|NAME`` or ``login|NAME|PASSWORD``: take NAME as a guest, or
    log in to the account NAME (client); NAME is online (server). The
    password is never shown in a repr."""

    kind: ClassVar[str] = "login"
    name: str = attrs.field(validator=_name)
    password: str | None = attrs.field(
        default=None, validator=_given_password, repr=False
    )

    def fields(self) -> tuple[str, ...]:
        if self.password is None:
            return (self.name,)
        return (self.name, self.password)


@attrs.frozen
class Register:
    """``register|PASSWORD``: make the guest name one is logged in with an
    account."""

    kind: ClassVar[str] = "register"
    password: str = attrs.field(validator=_new_password, repr=False)

    def fields(self) -> tuple[str, ...]:
        return (self.password,)


@attrs.frozen
class Registered:
    """``registered|NAME``: NAME is an account now."""

    kind: ClassVar[str] = "registered"
    name: str = attrs.field(validator=_name)

    def fields(self) -> tuple[str, ...]:
        return (self.name,)


@attrs.frozen
class ChangePassword:
    """``password|PASSWORD``: set a new password for one's account."""

    kind: ClassVar[str] = "password"
    password: str = attrs.field(validator=_new_password, repr=False)

    def fields(self) -> tuple[str, ...]:
        return (self.password,)


@attrs.frozen
class PasswordChanged:
    """``password|NAME``: the new password of account NAME is set."""

    kind: ClassVar[str] = "password"
    name: str = attrs.field(validator=_name)

    def fields(self) -> tuple[str, ...]:
        return (self.name,)


@attrs.frozen
class Hello:
    """``hello|VERSION[|OPTIONS]``: before logging in, a client says the
    highest protocol version it speaks and the options it wants (``echo``)."""

    kind: ClassVar[str] = "hello"
    version: int = attrs.field(converter=_version)
    options: tuple[str, ...] = attrs.field(default=(), converter=_words)

    def fields(self) -> tuple[str, ...]:
        if not self.options:
            return (str(self.version),)
        return (str(self.version), " ".join(self.options))


@attrs.frozen
class Welcome:
    """``hello|VERSION|SETTINGS``: the server's answer to ``hello``: the
    version the connection speaks from now on and the server's settings
    (``max-line``, ``rate``...; 0 means off or no limit)."""

    kind: ClassVar[str] = "hello"
    version: int = attrs.field(converter=_version)
    settings: tuple[tuple[str, str], ...] = attrs.field(converter=_settings)

    def setting(self, key: str, default: str | None = None) -> str | None:
        """The value of setting *key*, or *default* if the server gave none."""
        for name, value in self.settings:
            if name == key:
                return value
        return default

    def fields(self) -> tuple[str, ...]:
        return (str(self.version), " ".join(f"{k}={v}" for k, v in self.settings))


@attrs.frozen
class Talk:
    """``talk|TO|TEXT``: a client sends TEXT to user TO, to a room it is in
    (``#lunch``), or to everyone (``*``)."""

    kind: ClassVar[str] = "talk"
    to: str = attrs.field(validator=_target)
    text: str = attrs.field(validator=_text)

    def fields(self) -> tuple[str, ...]:
        return (self.to, self.text)


@attrs.frozen
class Delivery:
    """``talk|FROM|TO|TEXT``: the server hands a client a message from FROM.

    TO is the receiver's own name for a direct message, the room for a
    message to a room, ``*`` for a broadcast. The frame of protocol 1;
    protocol 2 delivers a ``Message``.
    """

    kind: ClassVar[str] = "talk"
    sender: str = attrs.field(validator=_name)
    to: str = attrs.field(validator=_target)
    text: str = attrs.field(validator=_text)

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    @property
    def room(self) -> str | None:
        """The room it was said in, or None for a direct message or ``*``."""
        return self.to if is_room(self.to) else None

    def fields(self) -> tuple[str, ...]:
        return (self.sender, self.to, self.text)


@attrs.frozen
class _Stamped:
    """A message the server accepted, with its id and time: the fields of
    ``msg`` and ``hist`` frames."""

    id: int = attrs.field(converter=_message_id)
    time: datetime = attrs.field(converter=_to_time)
    sender: str = attrs.field(validator=_name)
    to: str = attrs.field(validator=_target)
    text: str = attrs.field(validator=_text)

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    @property
    def room(self) -> str | None:
        """The room it was said in, or None for a direct message or ``*``."""
        return self.to if is_room(self.to) else None

    @property
    def time_ms(self) -> int:
        """``time`` in milliseconds since the Unix epoch, as a server
        stamps it."""
        return (self.time - _EPOCH) // _MILLISECOND

    def fields(self) -> tuple[str, ...]:
        return (str(self.id), format_time(self.time), self.sender, self.to, self.text)


@attrs.frozen
class Message(_Stamped):
    """``msg|ID|TIME|FROM|TO|TEXT``: a delivery on protocol 2: the message
    the server accepted as number ID at TIME (UTC, to the millisecond).

    TO is as for ``Delivery``; in the sender's own copy (the ``echo``
    option) it is the target the sender named.
    """

    kind: ClassVar[str] = "msg"


@attrs.frozen
class Join:
    """``join|ROOM``: a client enters ROOM, making it if nobody is in it."""

    kind: ClassVar[str] = "join"
    room: str = attrs.field(validator=_room)

    def fields(self) -> tuple[str, ...]:
        return (self.room,)


@attrs.frozen
class Joined:
    """``join|ROOM|NAME``: NAME is in ROOM (it just entered, or was there
    when we did)."""

    kind: ClassVar[str] = "join"
    room: str = attrs.field(validator=_room)
    name: str = attrs.field(validator=_name)

    def fields(self) -> tuple[str, ...]:
        return (self.room, self.name)


@attrs.frozen
class Part:
    """``part|ROOM``: a client leaves ROOM."""

    kind: ClassVar[str] = "part"
    room: str = attrs.field(validator=_room)

    def fields(self) -> tuple[str, ...]:
        return (self.room,)


@attrs.frozen
class Parted:
    """``part|ROOM|NAME``: NAME left ROOM."""

    kind: ClassVar[str] = "part"
    room: str = attrs.field(validator=_room)
    name: str = attrs.field(validator=_name)

    def fields(self) -> tuple[str, ...]:
        return (self.room, self.name)


@attrs.frozen
class ListRooms:
    """``rooms``: a client asks for the rooms that have members."""

    kind: ClassVar[str] = "rooms"

    def fields(self) -> tuple[str, ...]:
        return ()


@attrs.frozen
class RoomInfo:
    """``room|ROOM|MEMBERS``: one room of a ``rooms`` answer."""

    kind: ClassVar[str] = "room"
    room: str = attrs.field(validator=_room)
    members: int = attrs.field(converter=_members)

    def fields(self) -> tuple[str, ...]:
        return (self.room, str(self.members))


@attrs.frozen
class RoomsListed:
    """``rooms|COUNT``: the end of a ``rooms`` answer, after COUNT ``room``
    frames."""

    kind: ClassVar[str] = "rooms"
    count: int = attrs.field(converter=_count)

    def fields(self) -> tuple[str, ...]:
        return (str(self.count),)


@attrs.frozen
class Exit:
    """``exit`` or ``exit|NAME``: leave (client), or NAME went offline (server)."""

    kind: ClassVar[str] = "exit"
    name: str | None = attrs.field(default=None, validator=_optional_name)

    def fields(self) -> tuple[str, ...]:
        return () if self.name is None else (self.name,)


@attrs.frozen
class Ping:
    """``ping|TOKEN``: a liveness probe; the peer answers ``pong|TOKEN``."""

    kind: ClassVar[str] = "ping"
    token: str = attrs.field(validator=_token)

    def fields(self) -> tuple[str, ...]:
        return (self.token,)


@attrs.frozen
class Pong:
    """``pong|TOKEN``: the answer to ``ping|TOKEN``."""

    kind: ClassVar[str] = "pong"
    token: str = attrs.field(validator=_token)

    def fields(self) -> tuple[str, ...]:
        return (self.token,)


@attrs.frozen
class Error:
    """``error|CODE|DETAIL``: the server refused a request or is closing."""

    kind: ClassVar[str] = "error"
    code: ErrorCode | UnknownErrorCode = attrs.field(converter=_error_code)
    detail: str = attrs.field(validator=_detail)

    @classmethod
    def received(cls, code: str, detail: str) -> Error:
        """The error in a frame that a client read: a *code* that is not an
        ``ErrorCode`` becomes an ``UnknownErrorCode``, not a bad frame."""
        if code in _KNOWN_CODES:
            return cls(ErrorCode(code), detail)
        return cls(UnknownErrorCode(code), detail)

    def fields(self) -> tuple[str, ...]:
        return (self.code.value, self.detail)


def _history_count(value: int | str) -> int:
    return _number(value, 1, MAX_HISTORY, "a history request's count")


def _direction(_: Any, __: Any, value: str) -> None:
    if value not in HISTORY_DIRECTIONS:
        raise ValueError(f"history goes latest, before or after, not {value!r}")


HISTORY_DIRECTIONS = ("latest", "before", "after")


def _optional_id(value: int | str | None) -> int | None:
    return None if value is None else _message_id(value)


@attrs.frozen
class History:
    """``history|TARGET|latest|N``, ``history|TARGET|before|ID|N`` or
    ``history|TARGET|after|ID|N``: ask for stored messages of a room, of
    ``*`` or of one's conversation with a user (protocol 2)."""

    kind: ClassVar[str] = "history"
    target: str = attrs.field(validator=_history_target)
    direction: str = attrs.field(validator=_direction)
    count: int = attrs.field(converter=_history_count)
    anchor: int | None = attrs.field(default=None, converter=_optional_id)

    def __attrs_post_init__(self) -> None:
        if (self.anchor is None) != (self.direction == "latest"):
            raise ValueError("before and after take an id; latest takes none")

    @classmethod
    def from_fields(cls, target: str, direction: str, *rest: str) -> History:
        """Built from the fields of a frame: ``latest|N`` or ``before|ID|N``."""
        if direction == "latest" and len(rest) == 1:
            return cls(target, direction, rest[0])
        if direction in ("before", "after") and len(rest) == 2:
            return cls(target, direction, rest[1], rest[0])
        raise ValueError(f"history|TARGET|{direction} takes the wrong fields")

    def fields(self) -> tuple[str, ...]:
        if self.anchor is None:
            return (self.target, self.direction, str(self.count))
        return (self.target, self.direction, str(self.anchor), str(self.count))


@attrs.frozen
class Hist(_Stamped):
    """``hist|ID|TIME|FROM|TO|TEXT``: one stored message in an answer to
    ``history`` (the answer goes oldest first). Not a ``Message``: it was
    delivered before."""

    kind: ClassVar[str] = "hist"


@attrs.frozen
class HistoryEnd:
    """``history|TARGET|COUNT``: the end of a ``history`` answer, after
    COUNT ``hist`` frames; fewer than asked means there is no more."""

    kind: ClassVar[str] = "history"
    target: str = attrs.field(validator=_target)
    count: int = attrs.field(converter=_count)

    def fields(self) -> tuple[str, ...]:
        return (self.target, str(self.count))


def _secret(_: Any, __: Any, value: str) -> None:
    check_token(value)


def _seconds(value: int | str) -> int:
    return _number(value, 0, MAX_ID, "a number of seconds")


def _last_id(value: int | str) -> int:
    return _number(value, 0, MAX_ID, "a message id")


@attrs.frozen
class Resume:
    """``resume|SESSION|ID``: take back a dropped session, saying the last
    message id received (0: none) (protocol 2). The secret is never shown
    in a repr."""

    kind: ClassVar[str] = "resume"
    session: str = attrs.field(validator=_secret, repr=False)
    last_id: int = attrs.field(converter=_last_id)

    def fields(self) -> tuple[str, ...]:
        return (self.session, str(self.last_id))


@attrs.frozen
class SessionInfo:
    """``session|SESSION|SECONDS``: the secret that ``resume`` takes, and
    how long the server keeps the session after a drop (protocol 2)."""

    kind: ClassVar[str] = "session"
    session: str = attrs.field(validator=_secret, repr=False)
    seconds: int = attrs.field(converter=_seconds)

    def fields(self) -> tuple[str, ...]:
        return (self.session, str(self.seconds))


@attrs.frozen
class Resumed:
    """``resumed|NAME|COUNT``: a resume worked; COUNT missed messages
    follow the session's snapshot (protocol 2)."""

    kind: ClassVar[str] = "resumed"
    name: str = attrs.field(validator=_name)
    count: int = attrs.field(converter=_count)

    def fields(self) -> tuple[str, ...]:
        return (self.name, str(self.count))


ClientMessage = (
    Hello
    | Login
    | Resume
    | Register
    | ChangePassword
    | Talk
    | Join
    | Part
    | ListRooms
    | History
    | Exit
    | Ping
    | Pong
)
"""What a client may send."""
ServerMessage = (
    Welcome
    | Login
    | SessionInfo
    | Resumed
    | Registered
    | PasswordChanged
    | Delivery
    | Message
    | Hist
    | HistoryEnd
    | Joined
    | Parted
    | RoomInfo
    | RoomsListed
    | Exit
    | Error
    | Ping
    | Pong
)
"""What a server may send."""
Frame = ClientMessage | ServerMessage
"""Any frame of the protocol."""
