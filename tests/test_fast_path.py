"""The server's fast path for talk must do exactly what decoding does.

Most lines a server reads are ``talk`` to a user named exactly as they
wrote their name, or to ``*``; the session routes those a run at a time as
they came (``printable``, ``plain_talk_run``, ``Session._route_run``)
instead of decoding each into a ``Talk``. These tests drive the server's
own ``Session`` with a real ``Hub`` and real mailboxes and hold its fast
path to the decoder: same deliveries, same errors, same order, for any mix
of lines and any way of splitting them into reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import pytest
from helpers import running_server
from hypothesis import given
from hypothesis import strategies as st
from strategies import texts

import trichat.server.session as session_module
from trichat.protocol._codec import (
    ProtocolError,
    Role,
    decode,
    plain_talk_run,
    printable,
)
from trichat.protocol.connection import decode_client_line
from trichat.protocol.messages import MAX_TEXT, ClientMessage, Talk, check_name
from trichat.server.config import ServerConfig
from trichat.server.hub import Hub, Member
from trichat.server.mailbox import Mailbox
from trichat.server.session import Session, SessionEnded

# Users online besides the sender, who logs in through its session; "Zoë"
# is not ASCII, so talk to her always takes the decoder.
OTHERS = ("bob", "Carol", "Zoë")
SENDER = "alice"

_targets = st.sampled_from(
    ["bob", "BOB", "Bob", "Carol", "carol", "Zoë", "zoë", "*", "alice", "dave"]
)
_bad_targets = st.sampled_from(["b@b", ""])
# Lines that break the fast path's rules, or come close: printable ones
# (which the fast path must look at and turn down) ...
_printable_odd_lines = st.sampled_from(
    [
        b"",
        b"talk|bob|",
        b"talk||hi",
        b"talk|bob",
        b"talk|",
        b"talk",
        b"talk|bob|tab\there",
        b"talk|bob|" + b"x" * MAX_TEXT,
        b"talk|bob|" + b"x" * (MAX_TEXT + 1),
        b"talk|*|" + b"x" * (MAX_TEXT + 1),
        b"talk|bob|a|b",
        b"ping|t1",
        b"pong|t1",
        b"exit|bob",
        b"login|bob",
        b"login|b@b",
        b"TALK|bob|hi",
    ]
)
# ... and others, which send the whole read through the decoder.
_other_odd_lines = st.sampled_from(
    [
        b"\r",
        b"talk|bob|crlf\r",
        b"talk|bob|\x7fdel",
        b"talk|bob|\x1b[31m",
        b"talk|bob|caf\xc3\xa9",
        b"talk|bob|\xff",
    ]
)
# Leaving ends the session; rare, so that most examples go on to the end.
_leaving = st.sampled_from([b"exit", b"exit|alice", b"exit|ALICE"])


@st.composite
def _talk_lines(draw: st.DrawFn, text: st.SearchStrategy[str]) -> bytes:
    return f"talk|{draw(_targets | _bad_targets)}|{draw(text)}".encode()


_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_printable_talk = _talk_lines(st.text(_ascii, min_size=1, max_size=20))
_any_talk = _talk_lines(texts())
# Reads of printable lines, which the fast path takes in runs, and reads of
# anything at all.
lines_strategy = st.one_of(
    st.lists(st.one_of(_printable_talk, _printable_odd_lines), max_size=40),
    st.lists(
        st.one_of(_printable_talk, _any_talk, _printable_odd_lines, _other_odd_lines),
        max_size=40,
    ),
)


@st.composite
def _session_lines(draw: st.DrawFn) -> list[bytes]:
    """Lines as above, now and then with a way of leaving among them."""
    lines = draw(lines_strategy)
    if draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(_leaving))
    return lines


# -- the pieces of the fast path ---------------------------------------------------


@given(lines_strategy)
def test_a_plain_run_is_talk_the_decoder_accepts_to_a_valid_target(
    lines: list[bytes],
) -> None:
    if not printable(b"\n".join(lines)):
        return
    for start in range(len(lines)):
        end, target = plain_talk_run(lines, start, len(lines))
        assert start <= end <= len(lines)
        for line in lines[start:end]:
            text = line[len(b"talk|") + len(target) + 1 :].decode()
            try:
                message = decode(line, Role.SERVER)
            except ProtocolError:
                # Only the target can be at fault, and the session routes a
                # run only to an online name as written or "*".
                with pytest.raises(ValueError, match="name"):
                    check_name(target.decode())
                continue
            assert message == Talk(target.decode(), text)


@pytest.mark.parametrize(
    "data",
    [
        b"talk|bob|hi\n",
        b"talk|bob|tab\tis fine\n",
        b"talk|bob|hi\ntalk|*|all\n",
    ],
)
def test_printable_lines(data: bytes) -> None:
    assert printable(data)


@pytest.mark.parametrize(
    "data",
    [
        b"talk|bob|crlf\r\n",
        b"talk|bob|nul\x00\n",
        b"talk|bob|del\x7f\n",
        b"talk|bob|esc\x1b\n",
        "talk|bob|café\n".encode(),
        b"talk|bob|\x85\n",
    ],
)
def test_not_printable(data: bytes) -> None:
    assert not printable(data)


@pytest.mark.parametrize("byte", range(256))
def test_printable_is_exactly_ascii_from_space_to_tilde_tab_and_lf(byte: int) -> None:
    expected = byte in (0x09, 0x0A) or 0x20 <= byte <= 0x7E
    assert printable(b"talk|bob|" + bytes([byte]) + b"x\n") is expected


def test_a_run_stops_at_a_new_target_and_at_stop() -> None:
    lines = [b"talk|bob|1", b"talk|bob|2", b"talk|carol|3", b"talk|bob|4"]
    assert plain_talk_run(lines, 0, 4) == (2, b"bob")
    assert plain_talk_run(lines, 0, 1) == (1, b"bob")
    assert plain_talk_run(lines, 2, 4) == (3, b"carol")


def test_a_run_does_not_take_a_target_that_is_a_prefix_of_another() -> None:
    lines = [b"talk|bob|1", b"talk|bobby|2"]
    assert plain_talk_run(lines, 0, 2) == (1, b"bob")


# -- the session's step against the decoder ----------------------------------------


@contextmanager
def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    decoded: list[bytes] = []

    def counting(line: bytes, logged_in_as: str | None) -> ClientMessage:
        decoded.append(line)
        return decode_client_line(line, logged_in_as)

    monkeypatch.setattr(session_module, "decode_client_line", counting)
    yield decoded


NOW = 1000.0


class World:
    """A hub with OTHERS online, each with a mailbox and no writer, and the
    sender logged in through a real ``Session``; every mailbox drained."""

    def __init__(
        self,
        queue_size: int = 10_000,
        queue_bytes: int = 1 << 26,
        *,
        rate: float,
        burst: int = 200,
        flood_grace: float = 5.0,
    ) -> None:
        self.config = ServerConfig(
            queue_size=queue_size,
            queue_bytes=queue_bytes,
            rate=rate,
            burst=burst,
            flood_grace=flood_grace,
        )
        self.hub = Hub()
        self.kicked: list[str] = []
        self.mailboxes: dict[str, Mailbox] = {}
        for name in OTHERS:
            mailbox = Mailbox(queue_size, queue_bytes)
            self.mailboxes[name] = mailbox
            self.hub.join(Member(name, mailbox, self.kicked.append))
            self.drain_all()
        mailbox = Mailbox(queue_size, queue_bytes)
        self.mailboxes[SENDER] = mailbox
        self.session = Session(
            self.config, self.hub, mailbox, self.kicked.append, "test", NOW
        )
        self.session.received(f"login|{SENDER}\n".encode(), NOW)
        assert self.session.handle_ready(64, NOW) == 1
        assert self.session.name == SENDER
        self.drain_all()
        assert not self.kicked
        self.got = dict.fromkeys(self.mailboxes, b"")

    def drain_all(self) -> None:
        for mailbox in self.mailboxes.values():
            mailbox.drain()

    def collect(self) -> None:
        """Take what every mailbox holds, as their writers would."""
        for name, mailbox in self.mailboxes.items():
            self.got[name] += mailbox.drain()


Outcome = tuple[dict[str, bytes], str | None, list[str]]


def _stepped(
    world: World,
    reads: list[tuple[bytes, float]],
    most: int,
    *,
    fast: bool = True,
) -> Outcome:
    """Feed *reads* (data, time) to the sender's session and take its real
    step, at most *most* lines at a time, as the server does; the writers
    drain every mailbox between steps. Without *fast*, every read is
    marked unfit for the fast path, so each of its lines is decoded.
    What everyone got, why the session ended (if it did), and who was
    kicked."""
    session = world.session
    ended = None
    try:
        for data, now in reads:
            session.received(data, now)
            if not fast:
                assert session.read is not None
                session.read.plain = False
            while session.read is not None:
                handled = session.handle_ready(most, now)
                assert handled <= most
                world.collect()
                # The writers made room: what the connection's task waits for.
                session.congested.clear()
    except SessionEnded as end:
        ended = end.reason
    world.collect()
    return world.got, ended, world.kicked


def _decoded_one_by_one(world: World, lines: list[bytes]) -> Outcome:
    """Handle *lines* one at a time through the decoder, as a server would
    with no fast path: ``decode_client_line``, then ``Session.handle`` or
    the error in reply; empty lines mean nothing."""
    session = world.session
    ended = None
    try:
        for line in lines:
            if line in (b"", b"\r"):
                continue
            message: ClientMessage
            try:
                message = decode_client_line(line, session.name)
            except ProtocolError as error:
                session.reply(error.reply)
            else:
                session.handle(message)
    except SessionEnded as end:
        ended = end.reason
    world.collect()
    return world.got, ended, world.kicked


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* in pieces, cut at *cuts* (positions, any order, repeats
    ignored)."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in pairwise(points) if b > a]


@given(
    _session_lines(),
    st.lists(st.integers(min_value=0), max_size=6),
    st.integers(min_value=1, max_value=64),
)
def test_relaying_delivers_what_decoding_does(
    lines: list[bytes], cuts: list[int], most: int
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    reads = [(piece, NOW) for piece in _split(data, cuts)]
    relayed = _stepped(World(rate=0), reads, most)
    decoded = _decoded_one_by_one(World(rate=0), lines)
    assert relayed == decoded


@given(
    _session_lines(),
    st.lists(st.integers(min_value=0), max_size=6),
    st.lists(st.floats(min_value=0, max_value=3), max_size=7),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=30),
)
def test_under_flood_control_relaying_refuses_what_decoding_does(
    lines: list[bytes],
    cuts: list[int],
    pauses: list[float],
    most: int,
    burst: int,
) -> None:
    # A run takes the token bucket's tokens all at once and gives back what
    # it did not route; one line at a time must come to the same frames
    # delivered, the same rate-limited errors and the same flood verdict.
    data = b"".join(line + b"\n" for line in lines)
    reads = []
    now = NOW
    for index, piece in enumerate(_split(data, cuts)):
        now += pauses[index] if index < len(pauses) else 0.0
        reads.append((piece, now))

    def world() -> World:
        return World(rate=2.0, burst=burst, flood_grace=4.0)

    relayed = _stepped(world(), reads, most)
    decoded = _stepped(world(), reads, most, fast=False)
    assert relayed == decoded


def test_the_decoded_path_of_the_comparison_is_really_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The comparisons above are only worth something if one side is the
    # fast path and the other is not.
    reads = [(b"talk|bob|1\ntalk|*|2\n", NOW)]
    fast_world, slow_world = World(rate=0), World(rate=0)
    with _counting_decodes(monkeypatch) as decoded:
        fast = _stepped(fast_world, reads, 64)
        assert decoded == []
        slow = _stepped(slow_world, reads, 64, fast=False)
        assert decoded == [b"talk|bob|1", b"talk|*|2"]
    assert fast == slow
    assert fast[0]["bob"] == b"talk|alice|bob|1\ntalk|alice|*|2\n"


# -- congestion ------------------------------------------------------------------


@pytest.mark.parametrize("queue_size", [2, 3, 4, 7])
def test_a_run_stops_where_the_recipient_becomes_congested(queue_size: int) -> None:
    world = World(queue_size, rate=0)
    session = world.session
    session.received(b"".join(b"talk|bob|%d\n" % i for i in range(20)), NOW)
    handled = session.handle_ready(64, NOW)
    # As many as one at a time would take before the sender must wait.
    assert handled == queue_size // 2 + 1
    assert session.congested == [world.mailboxes["bob"]]
    assert session.read is not None
    assert world.mailboxes["bob"].drain() == b"".join(
        b"talk|alice|bob|%d\n" % i for i in range(handled)
    )
    # Once bob's writer made room, the step goes on where it stopped.
    session.congested.clear()
    assert session.handle_ready(64, NOW) == queue_size // 2 + 1
    assert world.mailboxes["bob"].drain() == b"".join(
        b"talk|alice|bob|%d\n" % i for i in range(handled, 2 * handled)
    )
    assert world.kicked == []
    assert world.mailboxes[SENDER].drain() == b""


def test_a_broadcast_run_stops_where_any_recipient_becomes_congested() -> None:
    world = World(100, rate=0)
    carol = world.mailboxes["Carol"]
    for _ in range(48):
        assert carol.put(b"talk|bob|Carol|filler\n")
    session = world.session
    session.received(b"".join(b"talk|*|%d\n" % i for i in range(20)), NOW)
    assert session.handle_ready(64, NOW) == 3
    assert session.congested == [carol]
    expected = b"".join(b"talk|alice|*|%d\n" % i for i in range(3))
    assert world.mailboxes["bob"].drain() == expected
    assert world.mailboxes["Zoë"].drain() == expected
    assert carol.drain() == b"talk|bob|Carol|filler\n" * 48 + expected
    assert world.mailboxes[SENDER].drain() == b""


def test_a_run_stops_where_the_recipient_congests_by_bytes() -> None:
    world = World(1000, 1000, rate=0)
    bob = world.mailboxes["bob"]
    session = world.session
    text = b"x" * 90  # deliveries of 106 bytes
    session.received((b"talk|bob|" + text + b"\n") * 9, NOW)
    # 500 bytes is half: the fifth delivery crosses it.
    assert session.handle_ready(64, NOW) == 5
    assert session.congested == [bob]
    assert bob.queued_bytes == 5 * 106
    assert bob.congested


def test_a_recipient_too_slow_for_a_run_is_dropped_and_the_sender_told() -> None:
    world = World(100, rate=0)
    bob = world.mailboxes["bob"]
    bob.stalled = True  # its writer made no progress for long
    while bob.put(b"talk|x|bob|filler\n"):
        pass
    session = world.session
    session.received(b"talk|bob|hi\n" * 3, NOW)
    assert session.handle_ready(64, NOW) == 3
    assert session.congested == []
    # Each message that could not be queued gets its sender an error; bob
    # is being dropped (his task takes him offline when it runs).
    assert world.mailboxes[SENDER].drain() == b"error|no-such-user|bob\n" * 3
    assert world.kicked == ["too slow: outgoing queue full"] * 3
    assert b"hi" not in bob.drain()


def test_a_run_refused_by_the_flood_limit_is_decoded_and_refused_line_by_line() -> None:
    world = World(rate=1.0, burst=4)  # the login took one
    session = world.session
    session.received(b"".join(b"talk|bob|%d\n" % i for i in range(5)), NOW)
    assert session.handle_ready(64, NOW) == 5
    assert world.mailboxes["bob"].drain() == b"".join(
        b"talk|alice|bob|%d\n" % i for i in range(3)
    )
    replies = world.mailboxes[SENDER].drain().splitlines()
    assert len(replies) == 2
    assert all(reply.startswith(b"error|rate-limited|") for reply in replies)


# -- through a running server ----------------------------------------------------


async def test_plain_talk_is_relayed_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fast path is what makes the server fast: a change that sent every
    # line through the decoder again would still pass every other test.
    with _counting_decodes(monkeypatch) as decoded:
        async with running_server(rate=0) as live:
            alice = await live.login("alice")
            bob = await live.login("bob")
            await alice.expect("login|bob")
            await bob.expect("login|alice")
            assert decoded == [b"login|alice", b"login|bob"]
            decoded.clear()
            await alice.send_raw(b"".join(b"talk|bob|%d\n" % i for i in range(100)))
            await alice.send_raw(b"talk|*|all\ntalk|BOB|other case\n")
            await bob.expect(*[f"talk|alice|bob|{i}" for i in range(100)])
            await bob.expect("talk|alice|*|all", "talk|alice|bob|other case")
            # Only the line whose target is not written as bob wrote it.
            assert decoded == [b"talk|BOB|other case"]
