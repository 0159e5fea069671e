"""The sans-IO connection: bytes in, messages out, and the login rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import client_messages, server_messages

from trichat.protocol._codec import encode
from trichat.protocol.connection import (
    CLOSED,
    DEFAULT_MAX_LINE,
    NEED_DATA,
    Connection,
    ProtocolError,
    Role,
    State,
    decode_client_line,
)
from trichat.protocol.messages import (
    ChangePassword,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Frame,
    Hello,
    History,
    Join,
    ListRooms,
    Login,
    Part,
    Ping,
    Pong,
    Register,
    Resume,
    ServerMessage,
    Talk,
)

Event = object
# What a client may send only once logged in, by the protocol.
NEEDS_LOGIN = (Talk, Join, Part, ListRooms, Register, ChangePassword, History)
"""What ``drain`` records: a message, the code of a ProtocolError, or a sentinel."""


def drain(connection: Connection, *, act_as_server: bool = True) -> list[Event]:
    """Every event up to and including ``NEED_DATA`` or ``CLOSED``.

    A ProtocolError is recorded as its code. With *act_as_server*, a
    ``login`` on a server-side connection is accepted as a server would.
    """
    events: list[Event] = []
    while True:
        try:
            event = connection.next_event()
        except ProtocolError as error:
            events.append(error.code)
            continue
        events.append(event)
        if event is NEED_DATA or event is CLOSED:
            return events
        if (
            act_as_server
            and isinstance(event, Login)
            and connection.our_role is Role.SERVER
            and connection.state is State.LOGGING_IN
        ):
            connection.logged_in(event.name)


def server_side(*data: bytes, max_line: int = DEFAULT_MAX_LINE) -> Connection:
    connection = Connection(Role.SERVER, max_line)
    for chunk in data:
        connection.receive_data(chunk)
    return connection


def client_side(*data: bytes, max_line: int = DEFAULT_MAX_LINE) -> Connection:
    connection = Connection(Role.CLIENT, max_line)
    for chunk in data:
        connection.receive_data(chunk)
    return connection


def next_error(connection: Connection) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        connection.next_event()
    return info.value


# A server-side connection


def test_a_fresh_connection() -> None:
    connection = Connection(Role.SERVER)
    assert connection.our_role is Role.SERVER
    assert connection.state is State.LOGGING_IN
    assert connection.name is None
    assert connection.max_line == DEFAULT_MAX_LINE == 4096
    assert connection.next_event() is NEED_DATA


def test_login_and_chat() -> None:
    connection = server_side(b"login|alice\n")
    assert connection.next_event() == Login("alice")
    connection.logged_in("alice")
    assert connection.state is State.CHATTING
    assert connection.name == "alice"
    connection.receive_data(b"talk|bob|hi | there\ntalk|*|lunch?\nexit\n")
    assert drain(connection) == [
        Talk("bob", "hi | there"),
        Talk("*", "lunch?"),
        Exit(),
        NEED_DATA,
    ]


def test_reading_a_login_does_not_log_in() -> None:
    connection = server_side(b"login|alice\ntalk|bob|hi\n")
    assert connection.next_event() == Login("alice")
    # Only the server knows whether the name is free: until it says so, the
    # client is still logging in.
    assert connection.state is State.LOGGING_IN
    assert connection.name is None
    assert next_error(connection).code is ErrorCode.NOT_LOGGED_IN


def test_logged_in_only_once() -> None:
    connection = server_side()
    connection.logged_in("alice")
    with pytest.raises(RuntimeError):
        connection.logged_in("bob")
    assert connection.name == "alice"


def test_no_login_once_closed() -> None:
    connection = server_side(b"")
    assert connection.next_event() is CLOSED
    with pytest.raises(RuntimeError, match="closed"):
        connection.logged_in("alice")
    assert connection.name is None


@pytest.mark.parametrize(
    "line", [b"talk|bob|hi", b"talk|*|hi", b"exit|alice", b"exit|bob"]
)
def test_not_logged_in(line: bytes) -> None:
    connection = server_side(line + b"\nlogin|alice\n")
    error = next_error(connection)
    assert error.code is ErrorCode.NOT_LOGGED_IN
    # The connection stays usable: the client may still log in.
    assert connection.next_event() == Login("alice")


@pytest.mark.parametrize(
    ("line", "message"),
    [(b"ping|1", Ping("1")), (b"pong|1", Pong("1")), (b"exit", Exit())],
)
def test_allowed_before_login(line: bytes, message: ClientMessage) -> None:
    connection = server_side(line + b"\n")
    assert connection.next_event() == message
    assert connection.state is State.LOGGING_IN


@pytest.mark.parametrize(
    "second",
    # A name that is not one (reserved, or breaking the rules) is refused as
    # a second login too, not as a bad name.
    [b"login|alice", b"login|bob", b"login|*", b"login|#room", b"login|a b"],
)
def test_already_logged_in(second: bytes) -> None:
    connection = server_side(b"login|alice\n", second + b"\nping|x\n")
    assert connection.next_event() == Login("alice")
    connection.logged_in("alice")
    error = next_error(connection)
    assert error.code is ErrorCode.ALREADY_LOGGED_IN
    assert connection.next_event() == Ping("x")
    assert connection.name == "alice"


def test_exit_with_the_own_name() -> None:
    connection = server_side(b"exit|alice\n")
    connection.logged_in("alice")
    assert connection.next_event() == Exit("alice")


def test_exit_with_another_name_is_a_bad_frame() -> None:
    connection = server_side(b"exit|bob\nping|x\n")
    connection.logged_in("alice")
    error = next_error(connection)
    assert error.code is ErrorCode.BAD_FRAME
    assert "bob" in error.detail
    assert connection.next_event() == Ping("x")
    assert connection.state is State.CHATTING


def test_ping_and_pong_after_login() -> None:
    connection = server_side(b"ping|a\npong|b\n")
    connection.logged_in("alice")
    assert drain(connection) == [Ping("a"), Pong("b"), NEED_DATA]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"login|*", ErrorCode.BAD_NAME),
        (b"login|#x", ErrorCode.BAD_NAME),
        (b"login|.x", ErrorCode.BAD_NAME),
        (b"login|" + b"a" * 33, ErrorCode.BAD_NAME),
        (b"TALK|bob|hi", ErrorCode.BAD_FRAME),
        (b"typing|bob|hi", ErrorCode.BAD_FRAME),
        (b"login|al\xffice", ErrorCode.BAD_FRAME),
        (b"login|a|con\x01trol", ErrorCode.BAD_FRAME),
        (b"register|long enough", ErrorCode.NOT_LOGGED_IN),
        (b"history|*|latest|501", ErrorCode.BAD_FRAME),
        (b"login|", ErrorCode.BAD_FRAME),
        (b"ping|a\tb", ErrorCode.BAD_FRAME),
    ],
)
def test_refused_frames_leave_the_connection_open(line: bytes, code: ErrorCode) -> None:
    connection = server_side(line + b"\nlogin|alice\n")
    error = next_error(connection)
    assert error.code is code
    assert error.reply == Error(code, error.detail)
    assert connection.state is State.LOGGING_IN
    assert connection.next_event() == Login("alice")


def test_bad_frames_after_login_keep_the_login() -> None:
    connection = server_side(b"talk|bob|\x00\ntalk||hi\ntalk|bob|ok\n")
    connection.logged_in("alice")
    assert drain(connection) == [
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_FRAME,
        Talk("bob", "ok"),
        NEED_DATA,
    ]
    assert connection.state is State.CHATTING


# One line, as the server reads it


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"login|alice", Login("alice")),
        (b"login|alice\r", Login("alice")),  # the CR of a CRLF
        (b"ping|x", Ping("x")),
        (b"pong|x", Pong("x")),
        (b"exit", Exit()),
    ],
)
def test_decode_client_line_before_login(line: bytes, message: ClientMessage) -> None:
    assert decode_client_line(line, None) == message


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"talk|bob|hi", ErrorCode.NOT_LOGGED_IN),
        (b"exit|alice", ErrorCode.NOT_LOGGED_IN),
        (b"login|a b", ErrorCode.BAD_NAME),
        (b"typing|bob|hi", ErrorCode.BAD_FRAME),
        (b"ping|x\r\r", ErrorCode.BAD_FRAME),  # only one CR is dropped
    ],
)
def test_decode_client_line_refuses_before_login(line: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_line(line, None)
    assert info.value.code is code


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"talk|bob|hi|ho", Talk("bob", "hi|ho")),
        (b"talk|*|all\r", Talk("*", "all")),
        (b"exit", Exit()),
        (b"exit|alice", Exit("alice")),
        (b"exit|ALICE", Exit("ALICE")),  # the same name, compared as names are
        (b"ping|x", Ping("x")),
    ],
)
def test_decode_client_line_after_login(line: bytes, message: ClientMessage) -> None:
    assert decode_client_line(line, "alice") == message


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"login|alice", ErrorCode.ALREADY_LOGGED_IN),
        (b"login|bob", ErrorCode.ALREADY_LOGGED_IN),
        (b"login|a b", ErrorCode.ALREADY_LOGGED_IN),  # not bad-name
        (b"exit|bob", ErrorCode.BAD_FRAME),
        (b"talk|bob|", ErrorCode.BAD_FRAME),
    ],
)
def test_decode_client_line_refuses_after_login(line: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_line(line, "alice")
    assert info.value.code is code
    if code is ErrorCode.ALREADY_LOGGED_IN:
        assert info.value.detail == "already logged in as alice"


# Framing


def test_crlf_and_empty_lines() -> None:
    connection = server_side(b"\n\r\n\nlogin|alice\r\n\n\r\nping|x\r\n\r\n")
    assert drain(connection) == [Login("alice"), Ping("x"), NEED_DATA]


def test_frames_fed_byte_by_byte() -> None:
    connection = server_side()
    stream = b"login|alice\r\ntalk|bob|hi|ho\n"
    events: list[Event] = []
    for byte in stream:
        connection.receive_data(bytes([byte]))
        events.extend(e for e in drain(connection) if e is not NEED_DATA)
    assert events == [Login("alice"), Talk("bob", "hi|ho")]


def test_a_frame_of_exactly_the_limit_passes() -> None:
    frame = b"talk|bob|" + "é".encode() * 2043 + b"\n"
    assert len(frame) == DEFAULT_MAX_LINE
    connection = server_side(b"login|alice\n", frame)
    assert drain(connection) == [Login("alice"), Talk("bob", "é" * 2043), NEED_DATA]


def test_a_frame_one_byte_over_the_limit_is_too_long() -> None:
    frame = b"talk|bob|x" + "é".encode() * 2043 + b"\n"
    assert len(frame) == DEFAULT_MAX_LINE + 1
    connection = server_side(b"login|alice\n", frame, b"ping|x\n")
    assert connection.next_event() == Login("alice")
    connection.logged_in("alice")
    error = next_error(connection)
    assert error.code is ErrorCode.TOO_LONG
    assert error.code.closes
    assert str(DEFAULT_MAX_LINE) in error.detail
    assert connection.state is State.CLOSED
    # What followed the long line is never read.
    assert connection.next_event() is CLOSED
    assert connection.next_event() is CLOSED


def test_valid_text_can_still_make_a_frame_too_long() -> None:
    # 4000 characters is within the text limit, but 12000 bytes is not a frame.
    connection = server_side(b"login|alice\n", f"talk|bob|{'☕' * 4000}\n".encode())
    assert drain(connection) == [Login("alice"), ErrorCode.TOO_LONG, CLOSED]


def test_a_full_buffer_without_lf_is_too_long_at_once() -> None:
    connection = server_side(b"x" * (DEFAULT_MAX_LINE - 1))
    assert connection.next_event() is NEED_DATA
    connection.receive_data(b"x")
    assert next_error(connection).code is ErrorCode.TOO_LONG
    assert connection.state is State.CLOSED
    assert connection.next_event() is CLOSED


@pytest.mark.parametrize("max_line", [20, 70])
def test_a_custom_limit(max_line: int) -> None:
    fits = b"ping|" + b"t" * (max_line - 6) + b"\n"
    assert len(fits) == max_line
    connection = server_side(fits, max_line=max_line)
    assert connection.max_line == max_line
    assert drain(connection) == [Ping("t" * (max_line - 6)), NEED_DATA]
    connection.receive_data(b"ping|" + b"t" * (max_line - 5) + b"\n")
    assert drain(connection) == [ErrorCode.TOO_LONG, CLOSED]


# End of file


def test_frames_before_eof_are_still_read() -> None:
    connection = server_side(b"login|alice\nping|x\n", b"")
    assert drain(connection) == [Login("alice"), Ping("x"), CLOSED]
    assert connection.state is State.CLOSED
    assert connection.next_event() is CLOSED


def test_a_partial_frame_at_eof_is_dropped() -> None:
    connection = server_side(b"ping|x\nping|y", b"")
    assert drain(connection) == [Ping("x"), CLOSED]


def test_an_overlong_partial_frame_at_eof_is_too_long() -> None:
    connection = server_side(b"x" * DEFAULT_MAX_LINE, b"")
    assert drain(connection) == [ErrorCode.TOO_LONG, CLOSED]


def test_eof_before_any_data() -> None:
    connection = server_side(b"")
    assert connection.next_event() is CLOSED


def test_no_data_after_eof() -> None:
    connection = server_side(b"")
    with pytest.raises(RuntimeError):
        connection.receive_data(b"ping|x\n")
    connection.receive_data(b"")  # a second EOF is harmless
    assert connection.next_event() is CLOSED


# A client-side connection


def test_client_reads_a_session() -> None:
    connection = client_side(
        b"login|bob\r\nlogin|alice\n"
        b"talk|alice|bob|hi | how are you?\n"
        b"talk|alice|*|lunch?\n"
        b"error|no-such-user|carol\n"
        b"ping|17\npong|18\n"
        b"exit|alice\n"
    )
    assert drain(connection) == [
        Login("bob"),
        Login("alice"),
        Delivery("alice", "bob", "hi | how are you?"),
        Delivery("alice", "*", "lunch?"),
        Error(ErrorCode.NO_SUCH_USER, "carol"),
        Ping("17"),
        Pong("18"),
        Exit("alice"),
        NEED_DATA,
    ]
    assert connection.state is State.LOGGING_IN  # the login rules are the server's


@pytest.mark.parametrize(
    "line",
    [
        b"exit",
        b"talk|bob|hi",
        b"talk|bob|alice|\x00",
        b"talk|b\xffb|alice|x",
        b"error|bad-frame",
        b"login",
        b"login|a b",
        b"ping|a|b",
        b"pong|",
    ],
)
def test_client_refuses_malformed_frames_of_the_kinds_it_knows(line: bytes) -> None:
    connection = client_side(line + b"\nping|x\n")
    assert next_error(connection).code is ErrorCode.BAD_FRAME
    assert connection.next_event() == Ping("x")


@pytest.mark.parametrize(
    "line",
    [
        # What a newer server may send: frames of kinds this client lacks.
        b"typing|#lobby|alice",
        b"whisper|trichat|2",
        b"welcome",
        # Kinds are compared exactly, as bytes.
        b"TALK|bob|alice|hi",
        b"Ping|x",
        b"talks|bob|alice|hi",
        b"|login|bob",
        b"\xfe",
        b"\xfe|talk|x",
    ],
)
def test_client_skips_frames_of_kinds_it_does_not_know(line: bytes) -> None:
    connection = client_side(line + b"\nping|x\n" + line + b"\r\n", b"")
    assert drain(connection) == [Ping("x"), CLOSED]


def test_client_skips_unknown_kinds_as_they_trickle_in() -> None:
    connection = client_side()
    events: list[Event] = []
    for byte in b"typing|bob|hi\nlogin|bob\nsticker|#x|joined\r\n\nexit|bob\n":
        connection.receive_data(bytes([byte]))
        events.extend(e for e in drain(connection) if e is not NEED_DATA)
    assert events == [Login("bob"), Exit("bob")]


def test_client_still_refuses_an_unknown_kind_over_the_limit() -> None:
    connection = client_side(b"typing|" + b"x" * 43 + b"\nping|x\n", max_line=50)
    assert drain(connection) == [ErrorCode.TOO_LONG, CLOSED]


def test_client_side_too_long() -> None:
    connection = client_side(b"x" * 50 + b"\n", max_line=50)
    assert drain(connection) == [ErrorCode.TOO_LONG, CLOSED]


# Sending


@pytest.mark.parametrize("role", list(Role))
def test_send_gives_the_frame(role: Role) -> None:
    connection = Connection(role)
    assert connection.send(Talk("bob", "a|b")) == b"talk|bob|a|b\n"
    assert connection.send(Error(ErrorCode.TOO_LONG, "x")) == b"error|too-long|x\n"


def test_a_client_and_a_server_talk() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    for message in (Login("Zoë"), Talk("*", "hi|all"), Ping("p"), Exit("Zoë")):
        server.receive_data(client.send(message))
    assert drain(server) == [
        Login("Zoë"),
        Talk("*", "hi|all"),
        Ping("p"),
        Exit("Zoë"),
        NEED_DATA,
    ]
    sent: list[ServerMessage] = [
        Login("Zoë"),
        Delivery("bob", "Zoë", "hey"),
        Error(ErrorCode.NO_SUCH_USER, "carol"),
        Exit("bob"),
    ]
    for reply in sent:
        client.receive_data(server.send(reply))
    assert drain(client) == [*sent, NEED_DATA]


# Properties


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut at arbitrary points into non-empty pieces."""
    if len(data) < 2:
        return [data] if data else []
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(
    connection: Connection, chunks: list[bytes], *, eof: bool = False
) -> list[Event]:
    """Feed *chunks* one by one, draining after each, as a server loop would.

    ``NEED_DATA`` is left out; feeding stops once the connection is closed.
    Empty chunks are skipped (``b""`` would mean end of file).
    """
    events: list[Event] = []
    for chunk in filter(None, chunks):
        connection.receive_data(chunk)
        events.extend(e for e in drain(connection) if e is not NEED_DATA)
        if events and events[-1] is CLOSED:
            return events
    if eof:
        connection.receive_data(b"")
        events.extend(drain(connection))
    return events


garbage = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"\n", b"\r\n", b"|", b"login|alice\n", b"talk|bob|hi\n", b"exit|x\n"]
        ),
        st.just(b"y" * 70),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(garbage, st.sampled_from(Role), st.booleans(), st.data())
def test_arbitrary_bytes_raise_only_protocol_errors(
    stream: bytes, role: Role, eof: bool, data: st.DataObject
) -> None:
    connection = Connection(role, max_line=64)
    # drain() turns ProtocolErrors into codes: any other exception fails here.
    events = feed_all(connection, data.draw(chunked(stream)), eof=eof)
    if ErrorCode.TOO_LONG in events:
        assert events[-2:] == [ErrorCode.TOO_LONG, CLOSED]
        assert events.count(ErrorCode.TOO_LONG) == 1
        assert connection.state is State.CLOSED
        assert connection.next_event() is CLOSED
    if eof:
        assert events[-1] is CLOSED
        assert connection.state is State.CLOSED
    for event in events:
        assert isinstance(event, Frame | ErrorCode) or event is CLOSED


def expected_server_events(messages: list[ClientMessage]) -> list[Event]:
    """What a server-side connection yields for *messages*, by the rules."""
    name: str | None = None
    events: list[Event] = []
    for message in messages:
        if name is None:
            if isinstance(message, NEEDS_LOGIN) or (
                isinstance(message, Exit) and message.name is not None
            ):
                events.append(ErrorCode.NOT_LOGGED_IN)
                continue
            if isinstance(message, Login):
                name = message.name
        elif isinstance(message, Login | Hello | Resume):
            events.append(ErrorCode.ALREADY_LOGGED_IN)
            continue
        elif isinstance(message, Exit) and message.name not in (None, name):
            events.append(ErrorCode.BAD_FRAME)
            continue
        events.append(message)
    return events


def as_stream(frames: list[bytes], crlf: list[bool], blanks: list[bool]) -> bytes:
    """Frames with some LFs made CRLF and some empty lines in between."""
    out = []
    for i, frame in enumerate(frames):
        if blanks[i % len(blanks)]:
            out.append(b"\r\n" if crlf[i % len(crlf)] else b"\n")
        out.append(frame[:-1] + b"\r\n" if crlf[i % len(crlf)] else frame)
    return b"".join(out)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(client_messages(), max_size=8),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.data(),
)
def test_a_server_reads_a_chunked_stream_like_a_whole_one(
    messages: list[ClientMessage],
    crlf: list[bool],
    blanks: list[bool],
    data: st.DataObject,
) -> None:
    stream = as_stream([encode(m) for m in messages], crlf, blanks)
    whole = feed_all(Connection(Role.SERVER), [stream])
    chunks = data.draw(chunked(stream))
    assert feed_all(Connection(Role.SERVER), chunks) == whole
    assert whole == expected_server_events(messages)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(server_messages(), max_size=8),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.data(),
)
def test_a_client_reads_a_chunked_stream_like_a_whole_one(
    messages: list[ServerMessage],
    crlf: list[bool],
    blanks: list[bool],
    data: st.DataObject,
) -> None:
    stream = as_stream([encode(m) for m in messages], crlf, blanks)
    chunks = data.draw(chunked(stream))
    assert feed_all(Connection(Role.CLIENT), chunks, eof=True) == [*messages, CLOSED]
