"""The codec: one line of the wire format to one message, and back."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import client_messages, server_messages

from trichat.protocol._codec import ProtocolError, Role, decode, encode
from trichat.protocol.messages import (
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Login,
    Message,
    Ping,
    Pong,
    ServerMessage,
    Talk,
)

SERVER = Role.SERVER  # reads what clients send
CLIENT = Role.CLIENT  # reads what servers send


def decode_error(line: bytes, role: Role) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(line, role)
    return info.value


# Encoding


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        (Login("alice"), b"login|alice\n"),
        (Talk("bob", "hi | how are you?"), b"talk|bob|hi | how are you?\n"),
        (Talk("*", "lunch?"), b"talk|*|lunch?\n"),
        (Delivery("alice", "bob", "a|b"), b"talk|alice|bob|a|b\n"),
        (Delivery("alice", "*", "lunch?"), b"talk|alice|*|lunch?\n"),
        (Exit(), b"exit\n"),
        (Exit("bob"), b"exit|bob\n"),
        (Ping("42"), b"ping|42\n"),
        (Pong("42"), b"pong|42\n"),
        (Error(ErrorCode.NO_SUCH_USER, "carol"), b"error|no-such-user|carol\n"),
        (Error(ErrorCode.TOO_LONG, "x"), b"error|too-long|x\n"),
        (Talk("Zoë", "☕\tok"), "talk|Zoë|☕\tok\n".encode()),
    ],
)
def test_encode(message: Message, frame: bytes) -> None:
    assert encode(message) == frame


# Decoding, each frame in the role that receives it


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"login|alice", Login("alice")),
        (b"talk|bob|hi", Talk("bob", "hi")),
        (b"talk|*|lunch?", Talk("*", "lunch?")),
        (b"talk|bob|hi | how are you?", Talk("bob", "hi | how are you?")),
        (b"talk|bob||", Talk("bob", "|")),
        (b"talk|bob|a||b|", Talk("bob", "a||b|")),
        (b"exit", Exit()),
        (b"exit|alice", Exit("alice")),
        (b"ping|t 1", Ping("t 1")),
        (b"pong|t 1", Pong("t 1")),
        ("login|\uff3aoë".encode(), Login("\uff3aoë")),  # full-width Z
        (b"talk|bob|\ttabbed", Talk("bob", "\ttabbed")),
    ],
)
def test_decode_client_frames(line: bytes, message: ClientMessage) -> None:
    assert decode(line, SERVER) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"login|alice", Login("alice")),
        (b"talk|alice|bob|hi", Delivery("alice", "bob", "hi")),
        (b"talk|alice|*|lunch?", Delivery("alice", "*", "lunch?")),
        (b"talk|alice|bob|a | b|c", Delivery("alice", "bob", "a | b|c")),
        (b"exit|bob", Exit("bob")),
        (b"error|no-such-user|carol", Error(ErrorCode.NO_SUCH_USER, "carol")),
        (b"error|bad-frame|a|b", Error(ErrorCode.BAD_FRAME, "a|b")),
        (b"ping|7", Ping("7")),
        (b"pong|7", Pong("7")),
    ],
)
def test_decode_server_frames(line: bytes, message: ServerMessage) -> None:
    assert decode(line, CLIENT) == message


@pytest.mark.parametrize("code", list(ErrorCode))
def test_decode_every_error_code(code: ErrorCode) -> None:
    assert decode(f"error|{code.value}|why".encode(), CLIENT) == Error(code, "why")


def test_the_role_decides_what_talk_means() -> None:
    # From a client the text takes everything after TO ...
    assert decode(b"talk|a|b|c", SERVER) == Talk("a", "b|c")
    # ... from a server FROM and TO come first.
    assert decode(b"talk|a|b|c", CLIENT) == Delivery("a", "b", "c")


# bad-frame


@pytest.mark.parametrize(
    "line",
    [
        b"\xff",
        b"talk|bob|\xff",
        b"login|\xc3",  # truncated sequence
        b"talk|bob|\xc0\xaf",  # overlong "/"
        b"talk|bob|\xed\xa0\x80",  # an encoded surrogate
        b"login|\xf4\x90\x80\x80",  # past U+10FFFF
    ],
)
@pytest.mark.parametrize("role", list(Role))
def test_not_utf8(line: bytes, role: Role) -> None:
    error = decode_error(line, role)
    assert error.code is ErrorCode.BAD_FRAME
    assert "UTF-8" in error.detail


@pytest.mark.parametrize(
    "line",
    [b"TALK|bob|hi", b"Login|alice", b"hello", b"", b" login|alice", b"login |x"],
)
@pytest.mark.parametrize("role", list(Role))
def test_unknown_kind(line: bytes, role: Role) -> None:
    error = decode_error(line, role)
    assert error.code is ErrorCode.BAD_FRAME
    assert "unknown kind" in error.detail


@pytest.mark.parametrize("line", [b"error|bad-frame|x", b"error|too-long|x"])
def test_a_server_does_not_accept_error_frames(line: bytes) -> None:
    assert decode_error(line, SERVER).code is ErrorCode.BAD_FRAME


def test_a_long_unknown_kind_is_cut_short_in_the_detail() -> None:
    error = decode_error(b"k" * 3000, SERVER)
    assert error.code is ErrorCode.BAD_FRAME
    assert len(error.detail) < 100


@pytest.mark.parametrize(
    ("line", "role"),
    [
        (b"login", SERVER),
        (b"login|alice|bob", SERVER),
        (b"talk", SERVER),
        (b"talk|bob", SERVER),
        (b"exit|alice|bob", SERVER),
        (b"ping", SERVER),
        (b"ping|a|b", SERVER),
        (b"pong", SERVER),
        (b"pong|a|b", SERVER),
        (b"login", CLIENT),
        (b"login|alice|bob", CLIENT),
        (b"talk|alice|hi", CLIENT),  # a client's talk, not a delivery
        (b"talk|alice", CLIENT),
        (b"exit", CLIENT),  # a server always says who left
        (b"exit|alice|bob", CLIENT),
        (b"error", CLIENT),
        (b"error|bad-frame", CLIENT),
        (b"ping", CLIENT),
        (b"pong|a|b", CLIENT),
    ],
)
def test_wrong_field_count(line: bytes, role: Role) -> None:
    error = decode_error(line, role)
    assert error.code is ErrorCode.BAD_FRAME
    assert "field" in error.detail


@pytest.mark.parametrize(
    ("line", "role"),
    [
        (b"login|", SERVER),
        (b"talk||hi", SERVER),
        (b"talk|bob|", SERVER),
        (b"talk||", SERVER),
        (b"exit|", SERVER),
        (b"ping|", SERVER),
        (b"pong|", SERVER),
        (b"login|", CLIENT),
        (b"talk||bob|hi", CLIENT),
        (b"talk|alice||hi", CLIENT),
        (b"talk|alice|bob|", CLIENT),
        (b"exit|", CLIENT),
        (b"error||x", CLIENT),
        (b"error|bad-frame|", CLIENT),
        (b"ping|", CLIENT),
        (b"pong|", CLIENT),
    ],
)
def test_empty_field(line: bytes, role: Role) -> None:
    error = decode_error(line, role)
    assert error.code is ErrorCode.BAD_FRAME
    assert "empty field" in error.detail


@pytest.mark.parametrize(
    ("line", "role"),
    [
        (b"talk|#x|hi", SERVER),
        (b"talk|.bob|hi", SERVER),
        (b"talk|bob|a\x01b", SERVER),
        (b"talk|bob|a\rb", SERVER),
        (b"talk|bob|\x7f", SERVER),
        ("talk|bob|\u0085".encode(), SERVER),  # C1 NEL
        (b"talk|bob|" + b"x" * 4001, SERVER),
        (b"exit|*", SERVER),
        (b"exit|a b", SERVER),
        (b"ping|a\tb", SERVER),
        (b"ping|" + b"t" * 65, SERVER),
        (b"pong|\x1b[31m", SERVER),
        (b"login|*", CLIENT),  # from a server a bad name is just a bad frame
        (b"talk|*|bob|hi", CLIENT),
        (b"talk|alice|#x|hi", CLIENT),
        (b"talk|alice|bob|\x00", CLIENT),
        (b"exit|-x", CLIENT),
        (b"error|no-such-code|x", CLIENT),
        (b"error|BAD-FRAME|x", CLIENT),
        (b"error|bad-frame|\x07", CLIENT),
        (b"ping|" + b"t" * 65, CLIENT),
    ],
)
def test_invalid_field(line: bytes, role: Role) -> None:
    assert decode_error(line, role).code is ErrorCode.BAD_FRAME


# bad-name


@pytest.mark.parametrize(
    "name",
    [
        "*",
        "#x",
        "#",
        ".x",
        "-x",
        "a b",
        "a" * 33,
        "\u0301e",
        "x²",
        "😀",
        "a/b",
    ],
)
def test_a_login_with_a_bad_name(name: str) -> None:
    error = decode_error(f"login|{name}".encode(), SERVER)
    assert error.code is ErrorCode.BAD_NAME
    assert "name" in error.detail


def test_a_login_of_32_characters_is_fine() -> None:
    assert decode(b"login|" + b"a" * 32, SERVER) == Login("a" * 32)


# The error and its reply


def test_protocol_error_reply() -> None:
    error = decode_error(b"login|*", SERVER)
    assert error.reply == Error(ErrorCode.BAD_NAME, error.detail)
    assert str(error) == f"bad-name: {error.detail}"
    assert encode(error.reply).startswith(b"error|bad-name|")


# Properties


@given(client_messages())
@example(Talk("bob", "|"))
@example(Talk("*", "a|b|c"))
@example(Exit())
def test_client_messages_round_trip(message: ClientMessage) -> None:
    frame = encode(message)
    assert frame.endswith(b"\n")
    assert frame.count(b"\n") == 1
    assert decode(frame[:-1], SERVER) == message


@given(server_messages())
@example(Delivery("alice", "*", "|"))
@example(Error(ErrorCode.SHUTTING_DOWN, "bye|now"))
def test_server_messages_round_trip(message: ServerMessage) -> None:
    frame = encode(message)
    assert frame.endswith(b"\n")
    assert frame.count(b"\n") == 1
    assert decode(frame[:-1], CLIENT) == message


frame_like = st.lists(
    st.one_of(
        st.sampled_from(
            [b"login", b"talk", b"exit", b"ping", b"pong", b"error", b"*", b""]
        ),
        st.sampled_from([e.value.encode() for e in ErrorCode]),
        st.binary(max_size=8),
        st.text(max_size=8).map(str.encode),
    ),
    max_size=5,
).map(b"|".join)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=80), frame_like), st.sampled_from(Role))
def test_decode_raises_only_protocol_errors(line: bytes, role: Role) -> None:
    outcome: Message
    try:
        outcome = decode(line, role)
        decoded = True
    except ProtocolError as error:
        outcome = error.reply
        decoded = False
    if decoded:
        # Decoding is exact: the message encodes back to the very same line.
        assert encode(outcome) == line + b"\n"
    else:
        # The reply is always a frame the server can send.
        assert encode(outcome).startswith(b"error|")
