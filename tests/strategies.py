"""Hypothesis strategies for valid trichat names, texts, tokens and messages.

They are written from the protocol's rules, not from ``trichat.protocol.messages``, so
a test that checks the validators against them checks two readings of the
rules against each other. Import them as ``from strategies import names``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from trichat.protocol.messages import (
    BROADCAST,
    MAX_NAME,
    MAX_TEXT,
    MAX_TOKEN,
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
    Resumed,
    RoomInfo,
    RoomsListed,
    ServerMessage,
    SessionInfo,
    Talk,
    Welcome,
)

__all__ = [
    "client_messages",
    "details",
    "error_codes",
    "names",
    "passwords",
    "rooms",
    "server_messages",
    "targets",
    "texts",
    "tokens",
]

# The letters and marks that render as nothing (Default_Ignorable_Code_Point;
# the protocol lists them), which no name may hold.
_INVISIBLE = "".join(
    map(
        chr,
        [
            0x034F,
            0x115F,
            0x1160,
            0x17B4,
            0x17B5,
            *range(0x180B, 0x1810),
            0x3164,
            *range(0xFE00, 0xFE10),
            0xFFA0,
            *range(0xE0100, 0xE01F0),
        ],
    )
)
# A name may start with a letter (L*), a decimal digit (Nd) or "_" ...
_name_first = st.characters(
    categories=("L", "Nd"), include_characters="_", exclude_characters=_INVISIBLE
)
# ... and go on with those, combining marks (M*), "-" and ".".
_name_rest = st.characters(
    categories=("L", "M", "Nd"), include_characters="_-.", exclude_characters=_INVISIBLE
)

# Text: anything but control characters (Cc is exactly C0, DEL and C1, so
# NEL too), the line and paragraph separators (Zl and Zp are exactly U+2028
# and U+2029) and lone surrogates (not UTF-8); TAB is allowed. "|" and a few
# other characters that have tripped up line protocols are drawn often on
# purpose.
_text_char = st.one_of(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    st.sampled_from("\t| \u00a0\u200b\u0301é"),
)
# A token: no control character (TAB included) and no "|".
_token_char = st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="|")


@st.composite
def _names(draw: st.DrawFn, max_size: int) -> str:
    first = draw(_name_first)
    rest = draw(st.text(_name_rest, max_size=max_size - 1))
    return first + rest


def names(max_size: int = MAX_NAME) -> st.SearchStrategy[str]:
    """Valid user names of 1 to *max_size* characters."""
    return _names(max_size)


def rooms(max_size: int = MAX_NAME) -> st.SearchStrategy[str]:
    """Valid room names: ``#`` and a name of 1 to *max_size* characters."""
    return _names(max_size).map(lambda name: "#" + name)


def targets() -> st.SearchStrategy[str]:
    """Valid ``talk`` targets: a name, a room, or ``*`` for everyone."""
    return st.one_of(names(), rooms(), st.just(BROADCAST))


# An option or a setting's key or value: a word of printable ASCII.
_word = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="|="),
    min_size=1,
    max_size=12,
)
_ids = st.integers(min_value=1, max_value=10**20 - 1)
# Times as the server writes them: UTC, to the millisecond.
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(9999, 12, 31)
).map(
    lambda when: when.replace(microsecond=when.microsecond // 1000 * 1000, tzinfo=UTC)
)


def passwords() -> st.SearchStrategy[str]:
    """Valid passwords: 8 to 256 characters, no control characters."""
    return st.text(_token_char | st.just("|"), min_size=8, max_size=256)


def texts(max_size: int = MAX_TEXT) -> st.SearchStrategy[str]:
    """Valid message texts of 1 to *max_size* characters."""
    return st.text(_text_char, min_size=1, max_size=max_size)


def details() -> st.SearchStrategy[str]:
    """Valid ``error`` details (the same rules as message text)."""
    return texts(max_size=200)


def tokens() -> st.SearchStrategy[str]:
    """Valid ``ping``/``pong`` tokens."""
    return st.text(_token_char, min_size=1, max_size=MAX_TOKEN)


def error_codes() -> st.SearchStrategy[ErrorCode]:
    """Every error code of the protocol."""
    return st.sampled_from(ErrorCode)


def client_messages() -> st.SearchStrategy[ClientMessage]:
    """Any frame a client may send, as the server decodes it."""
    return st.one_of(
        st.builds(Hello, st.integers(1, 999), st.lists(_word, max_size=3).map(tuple)),
        st.builds(Login, names()),
        st.builds(Login, names(), passwords()),
        st.builds(Resume, tokens(), st.integers(0, 10**20 - 1)),
        st.builds(Register, passwords()),
        st.builds(ChangePassword, passwords()),
        st.builds(History, targets(), st.just("latest"), st.integers(1, 500)),
        st.builds(
            History,
            targets(),
            st.sampled_from(["before", "after"]),
            st.integers(1, 500),
            _ids,
        ),
        st.builds(Talk, targets(), texts()),
        st.builds(Join, rooms()),
        st.builds(Part, rooms()),
        st.just(ListRooms()),
        st.builds(Exit, st.none() | names()),
        st.builds(Ping, tokens()),
        st.builds(Pong, tokens()),
    )


def server_messages() -> st.SearchStrategy[ServerMessage]:
    """Any frame a server may send, as the client decodes it.

    A server's ``exit`` always names who left, so ``Exit()`` is not drawn.
    """
    return st.one_of(
        st.builds(
            Welcome,
            st.integers(1, 999),
            st.lists(st.tuples(_word, _word), min_size=1).map(tuple),
        ),
        st.builds(Login, names()),
        st.builds(SessionInfo, tokens(), st.integers(0, 10**6)),
        st.builds(Resumed, names(), st.integers(0, 10**6)),
        st.builds(Registered, names()),
        st.builds(PasswordChanged, names()),
        st.builds(Delivery, names(), targets(), texts()),
        st.builds(Message, _ids, _times, names(), targets(), texts()),
        st.builds(Hist, _ids, _times, names(), targets(), texts()),
        st.builds(HistoryEnd, targets(), st.integers(0, 500)),
        st.builds(Joined, rooms(), names()),
        st.builds(Parted, rooms(), names()),
        st.builds(RoomInfo, rooms(), st.integers(1, 10**6)),
        st.builds(RoomsListed, st.integers(0, 10**6)),
        st.builds(Exit, names()),
        st.builds(Error, error_codes(), details()),
        st.builds(Ping, tokens()),
        st.builds(Pong, tokens()),
    )
