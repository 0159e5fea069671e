"""The codec: one line of the wire format to one message, and back."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import client_messages, names, server_messages, targets, texts

from trichat.protocol._codec import (
    ProtocolError,
    Role,
    as_deliveries,
    decode,
    delivery_block,
    delivery_head,
    encode,
    plain_talk_run,
    printable,
    talk_texts,
)
from trichat.protocol.messages import (
    MAX_TEXT,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Frame,
    Login,
    Ping,
    Pong,
    ServerMessage,
    Talk,
    UnknownErrorCode,
)
from trichat.server.config import ServerConfig
from trichat.server.hub import Hub, Member
from trichat.server.mailbox import Mailbox
from trichat.server.session import Session

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
def test_encode(message: Frame, frame: bytes) -> None:
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
    [b"TALK|bob|hi", b"Login|alice", b"", b" login|alice", b"login |x"],
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
        (b"history|*|latest", SERVER),
        (b"history|*|before|5", SERVER),
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
        (b"talk|#x y|hi", SERVER),
        (b"talk|#|hi", SERVER),
        (b"hello|0", SERVER),
        (b"hello|two", SERVER),
        (b"hello|2|a\tb", SERVER),
        (b"msg|0|2026-12-03T09:15:02.125Z|bob|alice|hi", CLIENT),
        (b"msg|1|2026-12-03 09:15:02|bob|alice|hi", CLIENT),
        (b"hello|2|nothing", CLIENT),
        (b"room|#x|0", CLIENT),
        (b"join|x|bob", CLIENT),
        (b"talk|.bob|hi", SERVER),
        (b"talk|bob|a\x01b", SERVER),
        (b"talk|bob|a\rb", SERVER),
        (b"talk|bob|\x7f", SERVER),
        ("talk|bob|\u0085".encode(), SERVER),  # C1 NEL
        ("talk|bob|a\u2028b".encode(), SERVER),  # line separator
        ("talk|*|\u2029".encode(), SERVER),  # paragraph separator
        (b"talk|bob|" + b"x" * 4001, SERVER),
        (b"exit|*", SERVER),
        (b"exit|a b", SERVER),
        (b"ping|a\tb", SERVER),
        (b"ping|" + b"t" * 65, SERVER),
        (b"pong|\x1b[31m", SERVER),
        (b"login|*", CLIENT),  # from a server a bad name is just a bad frame
        (b"talk|*|bob|hi", CLIENT),
        (b"talk|alice|#x y|hi", CLIENT),
        (b"talk|alice|bob|\x00", CLIENT),
        (b"exit|-x", CLIENT),
        ("talk|alice|bob|a\u2028b".encode(), CLIENT),
        (b"error|bad\x1bcode|x", CLIENT),
        (b"error|bad-frame|\x07", CLIENT),
        ("error|bad-frame|a\u2028b".encode(), CLIENT),
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
        "alice\u034f",  # renders as nothing: a combining grapheme joiner,
        "alice\ufe0f",  # a variation selector,
        "\u3164",  # a Hangul filler
    ],
)
def test_a_login_with_a_bad_name(name: str) -> None:
    error = decode_error(f"login|{name}".encode(), SERVER)
    assert error.code is ErrorCode.BAD_NAME
    assert "name" in error.detail


def test_a_login_of_32_characters_is_fine() -> None:
    assert decode(b"login|" + b"a" * 32, SERVER) == Login("a" * 32)


@pytest.mark.parametrize("password", ["short", "x" * 300, "with|bars and spaces"])
def test_a_login_password_of_any_length_is_the_servers_to_judge(password: str) -> None:
    # Whether it matches, or the name is an account at all, the server says
    # (wrong-password, no-such-account, tls-required), not the decoder.
    line = f"login|alice|{password}".encode()
    assert decode(line, SERVER) == Login("alice", password)


@pytest.mark.parametrize("target", ["bad name", ".dot", "#bad room", "#"])
def test_a_history_target_outside_the_rules_is_a_bad_name(target: str) -> None:
    # history is protocol 2's: the error table's bad-name (a talk to such a
    # target stays a bad-frame, as in version 1).
    error = decode_error(f"history|{target}|latest|5".encode(), SERVER)
    assert error.code is ErrorCode.BAD_NAME
    assert decode_error(b"talk|bad name|x", SERVER).code is ErrorCode.BAD_FRAME
    assert decode_error(b"history|#r|latest|501", SERVER).code is ErrorCode.BAD_FRAME


def test_a_login_password_with_a_control_character_is_a_bad_frame() -> None:
    error = decode_error(b"login|alice|secr\x01et", SERVER)
    assert error.code is ErrorCode.BAD_FRAME
    assert "secr" not in error.detail  # the password is never shown


def test_the_reply_to_an_invisible_character_in_a_name_is_a_frame() -> None:
    error = decode_error("login|alice\u3164".encode(), SERVER)
    assert encode(error.reply) == (
        b"error|bad-name|a name may not contain U+3164, which renders as nothing\n"
    )


# Error codes a client does not know


@pytest.mark.parametrize(
    "line", [b"error|quota-exceeded|slow | down", b"error|BAD-FRAME|slow | down"]
)
def test_a_client_reads_an_error_code_it_does_not_know(line: bytes) -> None:
    code = line.split(b"|")[1].decode()
    error = decode(line, CLIENT)
    assert error == Error(UnknownErrorCode(code), "slow | down")
    assert encode(error) == line + b"\n"


def test_a_server_reads_no_error_frames() -> None:
    for line in (b"error|quota-exceeded|x", b"error|bad-frame|x"):
        error = decode_error(line, SERVER)
        assert (error.code, error.detail) == (
            ErrorCode.BAD_FRAME,
            "unknown kind 'error'",
        )


# The error and its reply


def test_protocol_error_reply() -> None:
    error = decode_error(b"login|*", SERVER)
    assert error.reply == Error(ErrorCode.BAD_NAME, error.detail)
    assert str(error) == f"bad-name: {error.detail}"
    assert encode(error.reply).startswith(b"error|bad-name|")


def test_a_protocol_error_made_directly() -> None:
    error = ProtocolError(ErrorCode.NO_SUCH_USER, "carol")
    assert (error.code, error.detail) == (ErrorCode.NO_SUCH_USER, "carol")
    assert str(error) == "no-such-user: carol"
    assert error.reply == Error(ErrorCode.NO_SUCH_USER, "carol")


# The server's hot path: frames built and read without a message object


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_the_server_refuses_a_talk_with_a_line_separator(separator: str) -> None:
    # Not ASCII, so never printable: the line goes through the decoder, which
    # refuses it, and reaches nobody. A real session, with bob online.
    config = ServerConfig()
    hub = Hub()
    kicked: list[str] = []
    bob = Mailbox(config.queue_size, config.queue_bytes)
    hub.join(Member("bob", bob, kicked.append))
    bob.drain()
    alice = Mailbox(config.queue_size, config.queue_bytes)
    session = Session(config, hub, alice, kicked.append, "test", 0.0)
    session.received(b"login|alice\n", 0.0)
    assert session.handle_ready(64, 0.0) == 1
    assert alice.drain() == b"login|alice\nlogin|bob\n"
    assert bob.drain() == b"login|alice\n"
    data = f"talk|bob|a{separator}b\ntalk|*|x{separator}\ntalk|bob|fine\n".encode()
    assert not printable(data)
    session.received(data, 0.0)
    assert session.handle_ready(64, 0.0) == 3
    detail = (
        "text may not contain control characters (but TAB), line or paragraph"
        " separators, or lone surrogates"
    )
    assert alice.drain() == f"error|bad-frame|{detail}\n".encode() * 2
    assert bob.drain() == b"talk|alice|bob|fine\n"
    assert not kicked


def test_delivery_head() -> None:
    assert delivery_head("alice", "bob") == b"talk|alice|bob|"
    assert delivery_head("Zoë", "*") == "talk|Zoë|*|".encode()


def test_delivery_block() -> None:
    head = delivery_head("alice", "bob")
    assert delivery_block(head, [b"hi"]) == b"talk|alice|bob|hi\n"
    assert delivery_block(head, [b"one", b"a|b", b"three"]) == (
        b"talk|alice|bob|one\ntalk|alice|bob|a|b\ntalk|alice|bob|three\n"
    )


@given(names(), targets(), st.lists(texts(max_size=20), min_size=1, max_size=5))
def test_a_delivery_block_is_the_frames_of_its_deliveries(
    sender: str, to: str, messages: list[str]
) -> None:
    block = delivery_block(delivery_head(sender, to), [t.encode() for t in messages])
    assert block == b"".join(encode(Delivery(sender, to, t)) for t in messages)


def test_talk_texts() -> None:
    lines = [b"ping|x", b"talk|bob|one", b"talk|bob|a|b", b"talk|bob|three"]
    assert talk_texts(lines, 1, 3, b"bob") == [b"one", b"a|b"]
    assert talk_texts(lines, 3, 4, b"bob") == [b"three"]
    assert talk_texts(lines, 1, 1, b"bob") == []


@pytest.mark.parametrize(
    "data", [b"", b"talk|bob|hi\n", b"tab\tand LF\n", b" !~|\n\n", b"x"]
)
def test_printable(data: bytes) -> None:
    assert printable(data)


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"crlf\r\n", b"del\x7f", b"\x1b[2J", "é".encode(), b"\x80", b"\x0b"],
)
def test_not_printable(data: bytes) -> None:
    assert not printable(data)


@given(st.binary(max_size=40))
def test_printable_means_ascii_without_controls_but_tab_and_lf(data: bytes) -> None:
    assert printable(data) == all(32 <= b < 127 or b in b"\t\n" for b in data)


def test_a_run_of_talk_to_one_target() -> None:
    lines = [b"talk|bob|one", b"talk|bob|a|b", b"talk|carol|x", b"talk|bob|four"]
    assert plain_talk_run(lines, 0, 4) == (2, b"bob")
    assert plain_talk_run(lines, 1, 4) == (2, b"bob")
    assert plain_talk_run(lines, 2, 4) == (3, b"carol")
    assert plain_talk_run(lines, 3, 4) == (4, b"bob")
    # It looks no further than stop.
    assert plain_talk_run(lines, 0, 1) == (1, b"bob")


@pytest.mark.parametrize(
    "line",
    [b"ping|x", b"exit", b"talk||x", b"talk|bob", b"talks|bob|x", b"TALK|bob|x"],
)
def test_a_line_that_is_not_plain_talk_starts_no_run(line: bytes) -> None:
    end, _ = plain_talk_run([line, b"talk|bob|x"], 0, 2)
    assert end == 0


def test_a_run_holds_texts_of_1_to_max_text_characters() -> None:
    fits = b"talk|bob|" + b"x" * MAX_TEXT
    lines = [b"talk|bob|ok", b"talk|bob|", fits, fits + b"x"]
    assert plain_talk_run(lines, 0, 4) == (1, b"bob")
    assert plain_talk_run(lines, 1, 4)[0] == 1  # an empty text: decode it
    assert plain_talk_run(lines, 2, 4) == (3, b"bob")
    assert plain_talk_run(lines, 3, 4)[0] == 3  # one too long: decode it


def _run_one_line_at_a_time(lines: list[bytes], start: int, stop: int) -> int:
    """Where a run of talk to the target of ``lines[start]`` ends, found as
    the rules say, a line at a time: what plain_talk_run must agree with."""
    first = lines[start]
    bar = first.find(b"|", 5)
    if bar <= 5 or not first.startswith(b"talk|"):
        return start
    head = first[: bar + 1]
    end = start
    while end < stop and lines[end].startswith(head):
        if not 0 < len(lines[end]) - len(head) <= MAX_TEXT:
            break
        end += 1
    return end


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"bob", b"carol", b"b", b"bo"]).flatmap(
                lambda to: st.binary(max_size=6).map(
                    lambda text: b"talk|" + to + b"|" + text.replace(b"\n", b"")
                )
            ),
            st.sampled_from([b"ping|x", b"talk|", b"talk||x", b"talk|bob"]),
            st.just(b"talk|bob|" + b"x" * MAX_TEXT),
            st.just(b"talk|bob|" + b"x" * (MAX_TEXT + 1)),
        ),
        min_size=1,
        max_size=12,
    ),
    st.data(),
)
def test_a_run_ends_where_the_rules_say(
    lines: list[bytes], data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(lines) - 1))
    stop = data.draw(st.integers(start + 1, len(lines)))
    end, target = plain_talk_run(lines, start, stop)
    assert end == _run_one_line_at_a_time(lines, start, stop)
    if end > start:
        size = len(target) + 6
        assert talk_texts(lines, start, end, target) == [
            line[size:] for line in lines[start:end]
        ]


def test_the_target_of_a_run_is_not_checked() -> None:
    # Whoever routes the run checks it (an online user's name, or *).
    assert plain_talk_run([b"talk|*|x"], 0, 1) == (1, b"*")
    assert plain_talk_run([b"talk|a b|x"], 0, 1) == (1, b"a b")


_printable_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["bob", "*", "carol", "", "a b"]), _printable_text),
        max_size=12,
    )
)
def test_runs_are_what_decoding_each_line_gives(frames: list[tuple[str, str]]) -> None:
    lines = [f"talk|{to}|{text}".encode() for to, text in frames]
    assert printable(b"\n".join(lines))
    start = 0
    while start < len(lines):
        end, target = plain_talk_run(lines, start, len(lines))
        if end == start:
            # Not plain talk: decoding it must not give a talk to a valid
            # target with a valid text.
            with pytest.raises(ProtocolError):
                decode(lines[start], SERVER)
            start += 1
            continue
        texts = talk_texts(lines, start, end, target)
        for line, text in zip(lines[start:end], texts, strict=True):
            assert line == b"talk|" + target + b"|" + text
            if target != b"a b":
                assert decode(line, SERVER) == Talk(target.decode(), text.decode())
        if end < len(lines):
            # The run is as long as it can be: the line after it starts
            # none, or one to another target.
            next_end, next_target = plain_talk_run(lines, end, len(lines))
            assert next_end == end or next_target != target
        start = end


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
    outcome: Frame
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


def test_messages_as_protocol_1_deliveries() -> None:
    """What a protocol-2 session kept, for a protocol-1 connection that took
    it over: talk frames, bars in the text kept, echoes left out."""
    kept = [
        b"msg|7|2026-12-03T09:15:02.125Z|bob|alice|hi|there\n",
        b"msg|8|2026-12-03T09:15:03.000Z|alice|#r|my own, echoed\n",
        b"msg|9|2026-12-03T09:15:04.000Z|alice|alice|a note to myself\n",
        b"msg|10|2026-12-03T09:15:05.000Z|carol|*|to everyone\n",
    ]
    assert as_deliveries(kept, "alice") == [
        b"talk|bob|alice|hi|there\n",
        b"talk|alice|alice|a note to myself\n",
        b"talk|carol|*|to everyone\n",
    ]
    assert as_deliveries([], "alice") == []
