"""The message classes and the rules for names, texts and tokens."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import cache

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import client_messages, names, server_messages, texts, tokens

from trichat.protocol.messages import (
    BROADCAST,
    DEFAULT_IGNORABLE,
    MAX_NAME,
    MAX_TEXT,
    MAX_TOKEN,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Frame,
    Login,
    Ping,
    Pong,
    Talk,
    UnknownErrorCode,
    check_name,
    check_text,
    check_token,
    name_key,
)

# The characters the protocol bans from text: C0, DEL and C1 (TAB is allowed).
CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09]


@cache
def renders_as_nothing() -> frozenset[str]:
    """Default_Ignorable_Code_Point, built the way Unicode defines it
    (DerivedCoreProperties.txt) from Python's Unicode database and the two
    lists in PropList.txt it takes, instead of from its ranges."""
    other_default_ignorable = [
        (0x034F, 0x034F),
        (0x115F, 0x1160),
        (0x17B4, 0x17B5),
        (0x2065, 0x2065),
        (0x3164, 0x3164),
        (0xFFA0, 0xFFA0),
        (0xFFF0, 0xFFF8),
        (0xE0000, 0xE0000),
        (0xE0002, 0xE001F),
        (0xE0080, 0xE00FF),
        (0xE01F0, 0xE0FFF),
    ]
    variation_selector = [
        (0x180B, 0x180D),
        (0x180F, 0x180F),
        (0xFE00, 0xFE0F),
        (0xE0100, 0xE01EF),
    ]
    prepended_concatenation_mark = [
        *range(0x0600, 0x0606),
        0x06DD,
        0x070F,
        0x0890,
        0x0891,
        0x08E2,
        0x110BD,
        0x110CD,
    ]
    listed = {
        code
        for first, last in other_default_ignorable + variation_selector
        for code in range(first, last + 1)
    }
    chars = {
        chr(code)
        for code in range(0x110000)
        if code in listed or unicodedata.category(chr(code)) == "Cf"
    }
    visible = {
        *(chr(code) for code in range(0xFFF9, 0xFFFC)),
        *(chr(code) for code in range(0x13430, 0x13440)),
        *map(chr, prepended_concatenation_mark),
    }
    return frozenset(char for char in chars - visible if not char.isspace())


def is_valid_name(name: str) -> bool:
    """The name rules of the protocol, spelled out independently."""
    if not 1 <= len(name) <= 32 or name[0] in ".-":
        return False
    for position, char in enumerate(name):
        if char in renders_as_nothing():
            return False
        category = unicodedata.category(char)
        if char in "_-." or category.startswith("L") or category == "Nd":
            continue
        if category.startswith("M") and position > 0:
            continue
        return False
    return True


# Names


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "a",
        "Zoë",
        "ZOË",
        "\uff3aoë",  # full-width Z
        "Zoe\u0308",  # e followed by a combining diaeresis
        "李雷",
        "Алиса",
        "\u02bcadam",  # a modifier letter apostrophe (Lm) first
        "bob42",
        "42",
        "٣٤",  # Arabic-Indic digits (Nd)
        "_x",
        "x_y-z.w",
        "x.",
        "x-",
        "क्षत्रिय",  # Devanagari with spacing and non-spacing marks
        "한글",  # Hangul, not its fillers
        "ᠮᠣᠩᠭᠣᠯ",  # Mongolian, without free variation selectors
        "ខ្មែរ",  # Khmer with marks, not its inherent vowels
        "e\u0301_\u0660-x.",  # a mark, an Arabic-Indic digit, _ - .
        "a" * MAX_NAME,
    ],
)
def test_valid_names(name: str) -> None:
    check_name(name)
    assert Login(name).name == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * (MAX_NAME + 1), id="33 characters"),
        pytest.param(".x", id="leading dot"),
        pytest.param("-x", id="leading hyphen"),
        pytest.param("*", id="broadcast"),
        pytest.param("#x", id="hash"),
        pytest.param("a#", id="hash inside"),
        pytest.param("\u0301e", id="combining mark first"),
        pytest.param("a b", id="space"),
        pytest.param("a|b", id="bar"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x00", id="NUL"),
        pytest.param("a\x85", id="C1 NEL"),
        pytest.param("a\u200bb", id="zero-width space (Cf)"),
        pytest.param("x²", id="superscript two (No)"),
        pytest.param("Ⅻ", id="roman numeral (Nl)"),
        pytest.param("a!b", id="exclamation mark"),
        pytest.param("a@b", id="at sign"),
        pytest.param("😀", id="emoji (So)"),
        pytest.param("a\ud800", id="lone surrogate"),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        check_name(name)


@pytest.mark.parametrize("name", ["*", "#x", ".x", "", "a b"])
def test_messages_with_names_refuse_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Login(name)
    with pytest.raises(ValueError, match="name"):
        Exit(name)
    with pytest.raises(ValueError, match="name"):
        Delivery(name, "bob", "hi")


@pytest.mark.parametrize("target", ["#", "#.x", "##", ".x", "", "**", "a b"])
def test_talk_refuses_bad_targets(target: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Talk(target, "hi")
    with pytest.raises(ValueError, match="name"):
        Delivery("alice", target, "hi")


# Characters that render as nothing (Default_Ignorable_Code_Point): the
# ones the protocol names, and the best known format characters among them.
INVISIBLE = {
    "U+034F": [0x034F],
    "U+115F": [0x115F],
    "U+1160": [0x1160],
    "U+17B4": [0x17B4],
    "U+17B5": [0x17B5],
    "U+180B-U+180F": list(range(0x180B, 0x1810)),
    "U+3164": [0x3164],
    "U+FE00-U+FE0F": list(range(0xFE00, 0xFE10)),
    "U+FFA0": [0xFFA0],
    "U+E0100-U+E01EF": list(range(0xE0100, 0xE01F0)),
    "U+200B-U+200F": list(range(0x200B, 0x2010)),
    "U+2060": [0x2060],
    "U+FEFF": [0xFEFF],
    "U+00AD": [0x00AD],
}


@pytest.mark.parametrize("codes", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_a_name_may_not_hold_a_character_that_renders_as_nothing(
    codes: list[int],
) -> None:
    for code in codes:
        char = chr(code)
        # Without the rule this would be a second "alice": it does not clash.
        assert name_key("alice" + char) != name_key("alice")
        for name in ("alice" + char, "al" + char + "ice", char + "alice", char):
            with pytest.raises(ValueError, match=f"U\\+{code:04X}.*renders as nothing"):
                check_name(name)
            with pytest.raises(ValueError, match="name"):
                Login(name)
            with pytest.raises(ValueError, match="name"):
                Talk(name, "hi")


def test_the_invisible_ranges_are_unicodes_definition() -> None:
    listed = {
        chr(code)
        for first, last in DEFAULT_IGNORABLE
        for code in range(first, last + 1)
    }
    assert len(listed) == 4174  # DerivedCoreProperties-15.1.0.txt's total
    assert listed == renders_as_nothing()


@given(names())
def test_generated_names_are_valid(name: str) -> None:
    check_name(name)


@given(st.text(max_size=MAX_NAME + 3))
@example("")
@example("a" * (MAX_NAME + 1))
@example("e\u0301")
@example("\u0301e")
@example("alice\u034f")
@example("alice\ufe0f")
@example("\u3164")
def test_check_name_follows_the_rules(name: str) -> None:
    if is_valid_name(name):
        check_name(name)
    else:
        with pytest.raises(ValueError, match="name"):
            check_name(name)


def test_name_length_counts_characters_not_bytes() -> None:
    name = "ë" * MAX_NAME  # 64 bytes of UTF-8
    check_name(name)
    with pytest.raises(ValueError, match="name"):
        check_name(name + "ë")


# Name clashes


@pytest.mark.parametrize(
    "other",
    [
        "ZOË",
        "zoë",
        "Zoe\u0308",  # decomposed
        "\uff3aoë",  # full-width Z
        "\uff3a\uff2f\uff25\u0308",  # full-width ZOE, combining diaeresis
    ],
)
def test_names_that_clash(other: str) -> None:
    assert name_key("Zoë") == name_key(other)


@pytest.mark.parametrize("other", ["Zoe", "Zoé", "Zoë2", "Zo"])
def test_names_that_do_not_clash(other: str) -> None:
    assert name_key("Zoë") != name_key(other)


@given(names())
def test_canonically_equivalent_spellings_clash(name: str) -> None:
    key = name_key(name)
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        assert name_key(unicodedata.normalize(form, name)) == key


@given(st.text(st.sampled_from("abcxyzABCXYZ019_"), min_size=1, max_size=MAX_NAME))
def test_ascii_names_clash_with_other_cases_and_full_width(name: str) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in name)
    key = name_key(name)
    assert name_key(name.upper()) == key
    assert name_key(name.lower()) == key
    assert name_key(full_width) == key


# Text


@pytest.mark.parametrize(
    "text",
    [
        "x",
        "hi | how are you?",
        "|",
        "tab\there",
        " leading and trailing ",
        "naïve café ☕ 你好",
        "\u00a0",  # the first character after the C1 block
        "x" * MAX_TEXT,
        "☕" * MAX_TEXT,
    ],
)
def test_valid_texts(text: str) -> None:
    check_text(text)
    assert Talk("bob", text).text == text


@pytest.mark.parametrize("text", ["", "x" * (MAX_TEXT + 1)])
def test_text_length(text: str) -> None:
    with pytest.raises(ValueError, match="text"):
        check_text(text)
    with pytest.raises(ValueError, match="text"):
        Talk(BROADCAST, text)


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_text_refuses_control_characters(control: str) -> None:
    with pytest.raises(ValueError, match="control"):
        check_text(f"a{control}b")
    with pytest.raises(ValueError, match="control"):
        Delivery("alice", "bob", control)


@pytest.mark.parametrize(
    "separator",
    ["\u2028", "\u2029", "\u0085"],
    ids=["line separator", "paragraph separator", "next line (C1)"],
)
def test_text_refuses_line_and_paragraph_separators(separator: str) -> None:
    # str.splitlines() ends a line at each of them: a client that splits
    # what it reads that way would see the rest as a frame of its own.
    assert len(f"a{separator}b".splitlines()) == 2
    for text in (f"a{separator}b", separator, f"hi{separator}talk|mallory|bob|x"):
        with pytest.raises(ValueError, match="text"):
            check_text(text)
        with pytest.raises(ValueError, match="text"):
            Talk("bob", text)
        with pytest.raises(ValueError, match="text"):
            Delivery("alice", "bob", text)
        with pytest.raises(ValueError, match="detail"):
            Error(ErrorCode.BAD_FRAME, text)


@given(texts())
def test_generated_texts_are_valid(text: str) -> None:
    check_text(text)


# Tokens


@pytest.mark.parametrize("token", ["1", "abc-123", "t" * MAX_TOKEN, "ünïcode ok"])
def test_valid_tokens(token: str) -> None:
    check_token(token)
    assert Ping(token).token == token
    assert Pong(token).token == token


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("t" * (MAX_TOKEN + 1), id="65 characters"),
        pytest.param("a|b", id="bar"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x00b", id="NUL"),
        pytest.param("a\x7fb", id="DEL"),
        pytest.param("a\x9fb", id="C1"),
    ],
)
def test_invalid_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        check_token(token)
    with pytest.raises(ValueError, match="token"):
        Ping(token)
    with pytest.raises(ValueError, match="token"):
        Pong(token)


@given(tokens())
def test_generated_tokens_are_valid(token: str) -> None:
    check_token(token)


# The classes


def test_kinds_and_fields() -> None:
    assert (Login.kind, Login("alice").fields()) == ("login", ("alice",))
    assert (Talk.kind, Talk("*", "a|b").fields()) == ("talk", ("*", "a|b"))
    assert (Delivery.kind, Delivery("alice", "bob", "hi").fields()) == (
        "talk",
        ("alice", "bob", "hi"),
    )
    assert (Exit.kind, Exit().fields()) == ("exit", ())
    assert Exit("alice").fields() == ("alice",)
    assert (Ping.kind, Ping("t").fields()) == ("ping", ("t",))
    assert (Pong.kind, Pong("t").fields()) == ("pong", ("t",))
    assert (Error.kind, Error(ErrorCode.TOO_LONG, "x").fields()) == (
        "error",
        ("too-long", "x"),
    )


def test_exit_name_defaults_to_none() -> None:
    assert Exit().name is None


def test_delivery_knows_a_broadcast() -> None:
    assert Delivery("alice", BROADCAST, "hi").is_broadcast
    assert not Delivery("alice", "bob", "hi").is_broadcast


def test_messages_compare_and_hash_by_value() -> None:
    assert Talk("bob", "hi") == Talk("bob", "hi")
    assert Talk("bob", "hi") != Talk("bob", "ho")
    assert len({Login("x"), Exit("x")}) == 2
    assert len({Ping("t"), Ping("t"), Pong("t")}) == 2


def test_messages_are_immutable() -> None:
    login = Login("alice")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(login, "name", "*")  # noqa: B010
    assert login.name == "alice"


@given(st.one_of(client_messages(), server_messages()))
def test_a_message_is_rebuilt_from_its_fields(message: Frame) -> None:
    # A kind whose frame has several forms (history) is built from them so.
    build = getattr(type(message), "from_fields", type(message))
    assert build(*message.fields()) == message


# Errors


def test_error_code_from_its_wire_name() -> None:
    error = Error("no-such-user", "carol")
    assert error.code is ErrorCode.NO_SUCH_USER
    with pytest.raises(ValueError, match="no-such-code"):
        Error("no-such-code", "x")


def test_a_received_error_may_have_a_code_this_client_does_not_know() -> None:
    # Forward compatibility: a newer server's code is an error all the same.
    assert Error.received("no-such-user", "carol") == Error(
        ErrorCode.NO_SUCH_USER, "carol"
    )
    assert type(Error.received("no-such-user", "carol").code) is ErrorCode
    error = Error.received("quota-exceeded", "slow down")
    assert error == Error(UnknownErrorCode("quota-exceeded"), "slow down")
    assert type(error.code) is UnknownErrorCode
    assert error.code == "quota-exceeded"
    assert error.code.value == "quota-exceeded"
    assert not error.code.closes
    assert error.fields() == ("quota-exceeded", "slow down")
    assert repr(error.code) == "UnknownErrorCode('quota-exceeded')"
    # Only a client reading a frame takes an unknown code from a string.
    with pytest.raises(ValueError, match="quota-exceeded"):
        Error("quota-exceeded", "slow down")


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * (MAX_TOKEN + 1), id="65 characters"),
        pytest.param("a|b", id="bar"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\x1bb", id="ESC"),
        pytest.param("a\x85b", id="C1"),
        pytest.param("a\u2028b", id="line separator"),
    ],
)
def test_unknown_error_code_rules(code: str) -> None:
    with pytest.raises(ValueError, match="error code"):
        UnknownErrorCode(code)
    with pytest.raises(ValueError, match="error code"):
        Error.received(code, "x")


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_known_code_is_not_an_unknown_one(code: ErrorCode) -> None:
    with pytest.raises(ValueError, match="known"):
        UnknownErrorCode(code.value)


def test_error_codes_are_the_protocols() -> None:
    assert {code.value for code in ErrorCode} == {
        "bad-frame",
        "bad-name",
        "name-taken",
        "account-required",
        "no-such-account",
        "wrong-password",
        "bad-password",
        "already-registered",
        "tls-required",
        "not-logged-in",
        "already-logged-in",
        "needs-hello",
        "no-such-user",
        "not-in-room",
        "already-in-room",
        "too-many-rooms",
        "no-history",
        "mailbox-full",
        "resume-failed",
        "replaced",
        "too-long",
        "rate-limited",
        "server-full",
        "too-many-connections",
        "login-timeout",
        "shutting-down",
    }


@pytest.mark.parametrize("code", list(ErrorCode))
def test_which_errors_close_the_connection(code: ErrorCode) -> None:
    closing = {
        "replaced",
        "too-long",
        "server-full",
        "too-many-connections",
        "login-timeout",
        "shutting-down",
    }
    assert code.closes == (code.value in closing)


@pytest.mark.parametrize(
    "detail",
    [
        "",
        "x" * (MAX_TEXT + 1),
        "line\nbreak",
        "nul\x00",
        "c1\x9c",
        "line\u2028separator",
        "paragraph\u2029separator",
    ],
)
def test_error_detail_rules(detail: str) -> None:
    with pytest.raises(ValueError, match="detail"):
        Error(ErrorCode.BAD_FRAME, detail)


def test_error_detail_may_hold_bars_and_tabs() -> None:
    assert Error(ErrorCode.BAD_FRAME, "a|b\tc").detail == "a|b\tc"


# A lone surrogate cannot be encoded as UTF-8, so no frame could carry it:
# the message is refused when it is built, not when it is encoded.
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: Talk("bob", "a\ud800b"), id="text"),
        pytest.param(lambda: Ping("\udcff"), id="token"),
        pytest.param(lambda: Error(ErrorCode.BAD_FRAME, "\ud800"), id="detail"),
    ],
)
def test_lone_surrogates_are_refused(build: Callable[[], Frame]) -> None:
    with pytest.raises(ValueError, match=r"text|token|detail"):
        build()
