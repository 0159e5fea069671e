"""The terminal front end: fake input lines and a fake server, captured output."""

from __future__ import annotations

import argparse
import datetime
import errno
import functools
import io
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from fakeserver import (
    OLD_SERVER,
    SETTINGS,
    FakeServer,
    ResetStream,
    fail_after,
    free_port,
    logged_in,
    serve_fake,
)
from helpers import STEP_TIMEOUT, running_server

from trichat.client import Client, connect, open_client
from trichat.client.terminal import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    PROMPT,
    _Lines,
    add_arguments,
    describe_error,
    escape,
    run_session,
)
from trichat.protocol.messages import (
    ClientMessage,
    Error,
    ErrorCode,
    Exit,
    Hello,
    Join,
    ListRooms,
    Login,
    Message,
    Part,
    Ping,
    Pong,
    Talk,
    UnknownErrorCode,
)

NOW = datetime.datetime(2024, 5, 17, 12, 0, 1)


class Chat:
    """A ``run_session`` in progress: type lines, hear frames, read output."""

    def __init__(self, client: Client, server: FakeServer) -> None:
        self.client = client
        self.server = server
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.status: int | None = None
        self.keyboard, self._lines = trio.open_memory_channel[str](0)
        self._shown = 0

    async def run(self, **options: Any) -> None:
        async with self._lines:
            self.status = await run_session(
                self.client,
                self._lines,
                self.out,
                self.err,
                clock=lambda: NOW,
                **options,
            )

    async def type(self, *lines: str) -> None:
        """Enter *lines* and wait until the session has dealt with them."""
        for line in lines:
            await self.keyboard.send(line)
            await trio.testing.wait_all_tasks_blocked()

    async def hear(self, *frames: str) -> None:
        """Have the server send *frames*; wait until the session showed them."""
        await self.server.send(*frames)
        await trio.testing.wait_all_tasks_blocked()

    async def end_input(self) -> None:
        await self.keyboard.aclose()

    def new_output(self) -> list[str]:
        """The lines written since the last call."""
        lines = self.out.getvalue().splitlines()
        new, self._shown = lines[self._shown :], len(lines)
        return new


@asynccontextmanager
async def chatting(
    name: str = "alice",
    online: Iterable[str] = (),
    *,
    version: int = 1,
    echo: bool = True,
    settings: str = SETTINGS,
    **options: Any,
) -> AsyncIterator[Chat]:
    """Log in over a memory stream with protocol *version* and *echo* (the
    server answering hello with *settings*) and run a session with
    *options*; the block ends it."""
    client, server = await logged_in(
        name, online, version=version, echo=echo, settings=settings
    )
    chat = Chat(client, server)
    options.setdefault("ping_interval", 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(chat.run, **options))
        await trio.testing.wait_all_tasks_blocked()
        yield chat


async def sent(server: FakeServer, count: int) -> list[ClientMessage | None]:
    return [await server.receive() for _ in range(count)]


# What the user types


@fail_after(5)
async def test_welcome_and_roster() -> None:
    async with chatting("alice", online=["bob", "carol"]) as chat:
        assert chat.new_output() == [
            "12:00:01 * logged in as alice",
            "12:00:01 * bob is online",
            "12:00:01 * carol is online",
        ]
        await chat.end_input()
    assert chat.status == EXIT_OK
    assert chat.err.getvalue() == ""


@fail_after(5)
async def test_at_name_sends_and_makes_the_current_peer() -> None:
    async with chatting("alice", online=["bob", "carol"]) as chat:
        await chat.type("@bob hi | there", "and again")
        assert await sent(chat.server, 2) == [
            Talk("bob", "hi | there"),
            Talk("bob", "and again"),
        ]
        await chat.end_input()


@fail_after(5)
async def test_msg_sends_and_makes_the_current_peer() -> None:
    async with chatting("alice", online=["bob", "carol"]) as chat:
        await chat.type("@bob first", "/msg carol  hello  there", "to carol")
        assert await sent(chat.server, 3) == [
            Talk("bob", "first"),
            Talk("carol", "hello  there"),
            Talk("carol", "to carol"),
        ]
        await chat.end_input()


@fail_after(5)
async def test_all_goes_to_everyone_and_keeps_no_peer() -> None:
    async with chatting("alice", online=["bob", "carol"]) as chat:
        chat.new_output()
        await chat.type("/all lunch?", "who gets this?")
        assert await sent(chat.server, 1) == [Talk("*", "lunch?")]
        assert chat.new_output() == [
            "12:00:01 ! several users are online: write @NAME TEXT to pick one,"
            " or /all TEXT for everyone"
        ]
        await chat.end_input()
    assert await chat.server.receive_all() == [Exit()]


@fail_after(5)
async def test_plain_text_goes_to_the_only_other_user() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        await chat.type("hi bob")
        await chat.hear("login|carol")
        # bob became the current peer by being written to.
        await chat.type("still bob")
        assert await sent(chat.server, 2) == [
            Talk("bob", "hi bob"),
            Talk("bob", "still bob"),
        ]
        await chat.end_input()


@fail_after(5)
async def test_plain_text_with_nobody_to_send_to() -> None:
    async with chatting("alice") as chat:
        chat.new_output()
        await chat.type("hello?")
        assert chat.new_output() == ["12:00:01 ! nobody else is online"]
        await chat.hear("login|bob", "exit|bob")
        await chat.type("hello?")
        assert chat.new_output() == [
            "12:00:01 * bob is online",
            "12:00:01 * bob left",
            "12:00:01 ! nobody else is online",
        ]
        await chat.end_input()
    assert await chat.server.receive_all() == [Exit()]


@fail_after(5)
async def test_whoever_wrote_last_becomes_the_current_peer() -> None:
    async with chatting("alice", online=["bob", "carol"]) as chat:
        await chat.type("@bob hi")
        await chat.hear("talk|carol|alice|psst")
        await chat.type("hi carol")
        # A message to everyone does not make its sender the peer.
        await chat.hear("talk|bob|*|lunch?")
        await chat.type("still carol")
        assert await sent(chat.server, 3) == [
            Talk("bob", "hi"),
            Talk("carol", "hi carol"),
            Talk("carol", "still carol"),
        ]
        await chat.end_input()


@fail_after(5)
async def test_double_slash_sends_a_text_that_starts_with_a_slash() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        await chat.type("//shrug", "/ /")
        assert await sent(chat.server, 1) == [Talk("bob", "/shrug")]
        await chat.end_input()
    assert chat.new_output()[-1] == "12:00:01 ! unknown command /: /help lists them"


@fail_after(5)
async def test_who() -> None:
    async with chatting("alice", online=["bob", "Zoë"]) as chat:
        chat.new_output()
        await chat.type("/who")
        assert chat.new_output() == ["12:00:01 * online: bob, Zoë"]
        await chat.type("@zoë hi", "/WHO")
        assert chat.new_output() == [
            "12:00:01 * online: bob, Zoë",
            "12:00:01 * current peer: zoë",
        ]
        await chat.hear("exit|bob", "exit|ZOË")
        chat.new_output()
        await chat.type("/who")
        assert chat.new_output() == [
            "12:00:01 * nobody else is online",
            "12:00:01 * current peer: zoë",
        ]
        await chat.end_input()


@fail_after(5)
async def test_help() -> None:
    async with chatting("alice") as chat:
        chat.new_output()
        await chat.type("/help")
        shown = chat.new_output()
        await chat.end_input()
    for command in (
        "@NAME TEXT",
        "/msg NAME TEXT",
        "#ROOM TEXT",
        "/all TEXT",
        "/join #ROOM",
        "/part [#ROOM]",
        "/rooms",
        "/who",
        "/quit",
    ):
        assert any(line.startswith(command) for line in shown), command


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("/frob x", "unknown command /frob: /help lists them"),
        ("@bob", "usage: @NAME TEXT"),
        ("@bob   ", "usage: @NAME TEXT"),
        ("@ bob hi", "usage: @NAME TEXT"),
        ("/msg bob", "usage: /msg NAME TEXT"),
        ("/msg", "usage: /msg NAME TEXT"),
        ("/all", "usage: /all TEXT"),
        ("@bob! hi", "not sent: a name may not contain '!'"),
        ("@bob \x1b[2J", "not sent: text may not contain control characters"),
        ("@bob " + "x" * 4001, "not sent: text has 1 to 4000 characters"),
        ("@bob " + "ö" * 2100, "not sent: the frame has 4210 bytes"),
    ],
)
@fail_after(5)
async def test_input_that_is_not_sent_gets_a_hint(line: str, hint: str) -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.type(line, "")
        shown = chat.new_output()
        await chat.end_input()
    assert len(shown) == 1
    assert shown[0].startswith(f"12:00:01 ! {hint}")
    assert await chat.server.receive_all() == [Exit()]


@fail_after(5)
async def test_empty_lines_are_ignored() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.type("", "   ", "\t")
        assert chat.new_output() == []
        await chat.end_input()
    assert await chat.server.receive_all() == [Exit()]


# What arrives


@fail_after(5)
async def test_how_events_are_shown() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear(
            "talk|bob|alice|hi | how are you?",
            "talk|bob|*|lunch?",
            "login|carol",
            "exit|carol",
            "error|no-such-user|carol",
            "error|rate-limited|slow down",
            "error|bad-frame|talk takes 2 fields",
            "ping|p1",
            "pong|p2",
        )
        assert chat.new_output() == [
            "12:00:01 bob: hi | how are you?",
            "12:00:01 bob (to all): lunch?",
            "12:00:01 * carol is online",
            "12:00:01 * carol left",
            "12:00:01 ! no such user: carol",
            "12:00:01 ! rate limited: slow down",
            "12:00:01 ! the server did not understand: talk takes 2 fields",
        ]
        assert await chat.server.receive() == Pong("p1")
        await chat.end_input()


@fail_after(5)
async def test_what_others_send_is_escaped() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear(
            "talk|bob|alice|\u202eevil\u202c\tok",
            "error|no-such-user|\u2066x\u2069",
            "talk|bob|*|zero\u200bwidth \U000e0041",
            "error|new\u202e-code|\u202ex",
        )
        assert chat.new_output() == [
            "12:00:01 bob: \\u202eevil\\u202c\\x09ok",
            "12:00:01 ! no such user: \\u2066x\\u2069",
            "12:00:01 bob (to all): zero\\u200bwidth \\U000e0041",
            "12:00:01 ! new\\u202e code: \\u202ex",
        ]
        await chat.end_input()


def test_escape() -> None:
    assert (
        escape("plain é ß 中文 \U0001f600 a\u0301")
        == "plain é ß 中文 \U0001f600 a\u0301"
    )
    assert escape("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert escape("\x00\x07\x7f\x9b\r\n\t") == "\\x00\\x07\\x7f\\x9b\\x0d\\x0a\\x09"
    assert escape("\u200f\u202e\u2066\ufeff\u00ad") == (
        "\\u200f\\u202e\\u2066\\ufeff\\xad"
    )
    assert escape("\u2028\u2029") == "\\u2028\\u2029"
    assert escape("\U000e0001") == "\\U000e0001"


def test_describe_error() -> None:
    for code in ErrorCode:
        text = describe_error(Error(code, "why\u202e"))
        assert text.endswith(": why\\u202e")
        assert "-" not in text
    assert describe_error(Error("no-such-user", "carol")) == "no such user: carol"


def test_describe_an_error_this_client_does_not_know() -> None:
    error = Error(UnknownErrorCode("quota-exceeded"), "10 MB a day")
    assert describe_error(error) == "quota exceeded: 10 MB a day"


@fail_after(5)
async def test_an_error_code_this_client_does_not_know_is_shown() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear("error|quota-exceeded|slow down", "talk|bob|alice|fine")
        assert chat.new_output() == [
            "12:00:01 ! quota exceeded: slow down",
            "12:00:01 bob: fine",
        ]
        await chat.end_input()
    assert chat.status == EXIT_OK


@fail_after(5)
async def test_a_text_with_a_line_separator_is_a_bad_frame() -> None:
    # A server never sends one; a client that split lines on it would see
    # the rest as a frame from someone else.
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear(
            "talk|bob|alice|hi\u2028talk|mallory|alice|x", "talk|bob|alice|ok"
        )
        assert chat.new_output() == [
            "12:00:01 ! ignored a frame: the server sent a bad frame: bad-frame:"
            " text may not contain control characters (but TAB), line or"
            " paragraph separators, or lone surrogates",
            "12:00:01 bob: ok",
        ]
        await chat.end_input()


@fail_after(5)
async def test_a_bad_frame_is_reported_and_reading_goes_on() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear("exit|bob|\u202e", "talk|bob|alice|fine")
        assert chat.new_output() == [
            "12:00:01 ! ignored a frame: the server sent a bad frame:"
            " bad-frame: exit takes 1 field",
            "12:00:01 bob: fine",
        ]
        await chat.end_input()


# How a session ends


@fail_after(5)
async def test_quit_says_exit_and_ends_with_status_0() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        await chat.type("@bob bye", "/quit")
        # Nobody reads on after /quit.
        with pytest.raises(trio.BrokenResourceError):
            chat.keyboard.send_nowait("@bob not sent")
    assert chat.status == EXIT_OK
    assert await chat.server.receive_all() == [Talk("bob", "bye"), Exit()]
    assert chat.err.getvalue() == ""


@fail_after(5)
async def test_end_of_input_says_exit_and_ends_with_status_0() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        await chat.type("@bob bye")
        await chat.end_input()
    assert chat.status == EXIT_OK
    assert await chat.server.receive_all() == [Talk("bob", "bye"), Exit()]


@fail_after(5)
async def test_the_server_closing_ends_with_status_1() -> None:
    async with chatting("alice") as chat:
        # The input stays open: the session must stop reading it by itself.
        await chat.server.stream.aclose()
    assert chat.status == EXIT_FAILURE
    assert chat.err.getvalue() == "trichat: the server closed the connection\n"


@fail_after(5)
async def test_a_server_shutdown_ends_with_status_1() -> None:
    async with chatting("alice") as chat:
        chat.new_output()
        await chat.hear("error|shutting-down|back in five")
    assert chat.status == EXIT_FAILURE
    assert chat.err.getvalue() == (
        "trichat: the server is shutting down: back in five\n"
    )
    assert chat.new_output() == []
    # It left without saying exit: the server had already said goodbye.
    assert await chat.server.receive_all() == []


@fail_after(5)
async def test_a_line_over_the_limit_ends_with_status_1() -> None:
    async with chatting("alice") as chat:
        await chat.server.stream.send_all(b"x" * 20000)
    assert chat.status == EXIT_FAILURE
    assert chat.err.getvalue().startswith(
        "trichat: the server sent a bad frame: too-long"
    )


@fail_after(5)
async def test_a_lost_connection_ends_with_status_1() -> None:
    client = Client(ResetStream(b"talk|bob|alice|hi\n"))
    out, err = io.StringIO(), io.StringIO()
    send_lines, lines = trio.open_memory_channel[str](0)
    async with send_lines:
        status = await run_session(
            client, lines, out, err, ping_interval=0, clock=lambda: NOW
        )
    assert status == EXIT_FAILURE
    assert out.getvalue().splitlines()[-1] == "12:00:01 bob: hi"
    assert err.getvalue() == "trichat: connection lost: connection reset\n"


@fail_after(5)
async def test_a_failed_send_ends_with_status_1() -> None:
    # The reading side has not noticed yet; the send finds out.
    client_stream, _ = trio.testing.memory_stream_pair()
    client = Client(trio.StapledStream(ResetStream(), client_stream.receive_stream))
    out, err = io.StringIO(), io.StringIO()
    send_lines, lines = trio.open_memory_channel[str](1)
    async with send_lines:
        send_lines.send_nowait("/all hello")
        status = await run_session(
            client, lines, out, err, ping_interval=0, clock=lambda: NOW
        )
    assert status == EXIT_FAILURE
    assert err.getvalue() == "trichat: connection lost: connection reset\n"


# Keepalive


@fail_after(600)
async def test_keepalive_pings_a_quiet_server_and_says_when_it_stops_answering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chatting("alice", ping_interval=10) as chat:
        start = trio.current_time()
        chat.new_output()
        assert await chat.server.receive() == Ping("keepalive-1")
        assert trio.current_time() == start + 10
        # No answer for another interval: one warning, not one per ping.
        assert await chat.server.receive() == Ping("keepalive-2")
        assert await chat.server.receive() == Ping("keepalive-3")
        assert trio.current_time() == start + 30
        assert chat.new_output() == [
            "12:00:01 ! the server is not answering (nothing heard for 20 s)"
        ]
        await chat.hear("pong|keepalive-3")
        assert chat.new_output() == ["12:00:01 * the server is answering again"]
        # An answered ping is followed by the next only after a quiet interval.
        assert await chat.server.receive() == Ping("keepalive-4")
        assert trio.current_time() == start + 40
        await chat.end_input()


@fail_after(600)
async def test_keepalive_stays_quiet_while_the_server_talks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chatting("alice", online=["bob"], ping_interval=10) as chat:
        start = trio.current_time()
        for _ in range(5):
            await trio.sleep(9)
            await chat.server.send("talk|bob|*|tick")
        with trio.move_on_after(9):
            assert await chat.server.receive() is None  # pragma: no cover
        assert await chat.server.receive() == Ping("keepalive-1")
        assert trio.current_time() == start + 55
        await chat.end_input()


# Protocol 2 and rooms

SAME_DAY = "2024-05-17T11:59:58.500Z"
"""A server's time on the day of NOW, in UTC (the zone these tests show)."""


@asynccontextmanager
async def chatting_v2(
    name: str = "alice", online: Iterable[str] = (), **options: Any
) -> AsyncIterator[Chat]:
    """``chatting`` with protocol 2, the server's times shown in UTC."""
    async with chatting(
        name, online, version=2, timezone=datetime.UTC, **options
    ) as chat:
        yield chat


@fail_after(5)
async def test_protocol_2_messages_are_stamped_with_the_servers_time() -> None:
    async with chatting_v2("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear(
            f"msg|7|{SAME_DAY}|bob|alice|hi | how are you?",
            f"msg|8|{SAME_DAY}|bob|*|lunch?",
            "join|#lunch|alice",
            f"msg|9|{SAME_DAY}|bob|#lunch|pizza?",
            # Not today: the date too.
            "msg|10|2024-05-16T23:30:00.000Z|carol|alice|late",
        )
        assert chat.new_output() == [
            "11:59:58 bob: hi | how are you?",
            "11:59:58 bob (to all): lunch?",
            "12:00:01 * you joined #lunch",
            "11:59:58 bob (#lunch): pizza?",
            "2024-05-16 23:30:00 carol: late",
        ]
        await chat.end_input()


@fail_after(5)
async def test_the_servers_time_is_shown_in_the_local_zone() -> None:
    east = datetime.timezone(datetime.timedelta(hours=2))
    async with chatting("alice", version=2, timezone=east) as chat:
        chat.new_output()
        await chat.hear(f"msg|7|{SAME_DAY}|bob|alice|hi")
        assert chat.new_output() == ["13:59:58 bob: hi"]
        await chat.end_input()


@fail_after(5)
async def test_a_room_message_over_protocol_1() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.hear("talk|bob|#lunch|pizza?")
        assert chat.new_output() == ["12:00:01 bob (#lunch): pizza?"]
        # A message in a room makes nobody the current peer.
        await chat.type("hi")
        assert chat.new_output() == []
        assert await chat.server.receive() == Talk("bob", "hi")
        await chat.end_input()


@fail_after(5)
async def test_hash_room_sends_to_the_room_which_becomes_the_target() -> None:
    async with chatting_v2("alice", online=["bob", "carol"]) as chat:
        await chat.type("#lunch pizza | at 12?", "and dessert")
        # A direct message does not take the target away from a room.
        await chat.hear(f"msg|3|{SAME_DAY}|bob|alice|psst")
        await chat.type("still the room", "@bob ok", "to bob")
        assert await sent(chat.server, 5) == [
            Talk("#lunch", "pizza | at 12?"),
            Talk("#lunch", "and dessert"),
            Talk("#lunch", "still the room"),
            Talk("bob", "ok"),
            Talk("bob", "to bob"),
        ]
        await chat.end_input()


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("#lunch", "usage: #ROOM TEXT"),
        ("#lunch   ", "usage: #ROOM TEXT"),
        ("#lu!nch hi", "not sent: a room name may not contain '!'"),
        ("# hi", "not sent: a room name has 1 to 32 characters"),
        ("/join", "usage: /join #ROOM"),
        ("/join lunch", "not sent: a room name starts with '#'"),
        ("/join #a #b", "usage: /join #ROOM"),
        ("/part", "usage: /part #ROOM (the current target is no room)"),
        ("/part #", "not sent: a room name has 1 to 32 characters"),
    ],
)
@fail_after(5)
async def test_room_input_that_is_not_sent_gets_a_hint(line: str, hint: str) -> None:
    async with chatting_v2("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.type(line)
        assert chat.new_output() == [f"12:00:01 ! {hint}"]
        await chat.end_input()
    assert await chat.server.receive_all() == [Exit()]


@fail_after(5)
async def test_join_and_the_lines_it_brings() -> None:
    async with chatting_v2("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.type("/join #lunch")
        assert await chat.server.receive() == Join("#lunch")
        # Our own join, then those already there, then what happens later.
        await chat.hear("join|#lunch|alice", "join|#lunch|bob", "join|#lunch|carol")
        await chat.hear(f"msg|4|{SAME_DAY}|bob|#lunch|hi alice", "join|#lunch|dave")
        await chat.hear("part|#lunch|carol", "exit|dave")
        assert chat.new_output() == [
            "12:00:01 * you joined #lunch",
            "12:00:01 * bob is in #lunch",
            "12:00:01 * carol is in #lunch",
            "11:59:58 bob (#lunch): hi alice",
            "12:00:01 * dave joined #lunch",
            "12:00:01 * carol left #lunch",
            "12:00:01 * dave left",
        ]
        # The room is the current target.
        await chat.type("hello room")
        assert await chat.server.receive() == Talk("#lunch", "hello room")
        await chat.end_input()


@fail_after(5)
async def test_the_prompt_shows_the_current_target() -> None:
    async with chatting_v2("alice", online=["bob"], tty=True, colour=False) as chat:
        assert chat.out.getvalue().endswith("\n> ")
        await chat.type("@bob hi")
        assert chat.out.getvalue().endswith("bob> ")
        await chat.hear("join|#lunch|alice")
        assert chat.out.getvalue().endswith("#lunch> ")
        await chat.hear("part|#lunch|alice")
        assert chat.out.getvalue().endswith("\n> ")
        await chat.end_input()


@fail_after(5)
async def test_part() -> None:
    async with chatting_v2("alice", online=["bob"]) as chat:
        await chat.hear("join|#lunch|alice", "join|#ops|alice", "join|#ops|bob")
        chat.new_output()
        # The current target's room, then one named.
        await chat.type("/part", "/part #lunch")
        assert await sent(chat.server, 2) == [Part("#ops"), Part("#lunch")]
        await chat.hear("part|#ops|alice", "part|#lunch|alice")
        assert chat.new_output() == [
            "12:00:01 * you left #ops",
            "12:00:01 * you left #lunch",
        ]
        # No current target now: plain text goes to the only other user.
        await chat.type("hi bob")
        assert await chat.server.receive() == Talk("bob", "hi bob")
        await chat.end_input()


@fail_after(5)
async def test_rooms_lists_the_rooms() -> None:
    async with chatting_v2("alice") as chat:
        await chat.hear("join|#lunch|alice")
        chat.new_output()
        await chat.type("/rooms")
        assert await chat.server.receive() == ListRooms()
        await chat.hear("room|#lunch|2", "room|#ops|1", "rooms|2")
        await chat.type("/rooms")
        await chat.hear("rooms|0")
        assert chat.new_output() == [
            "12:00:01 * 2 rooms:",
            "12:00:01 *   #lunch: 2 members, you among them",
            "12:00:01 *   #ops: 1 member",
            "12:00:01 * no rooms",
        ]
        await chat.end_input()


@fail_after(5)
async def test_who_with_rooms() -> None:
    async with chatting_v2("alice", online=["bob", "carol"]) as chat:
        await chat.hear("join|#lunch|alice", "join|#lunch|bob", "join|#ops|alice")
        chat.new_output()
        await chat.type("#lunch hi", "/who", "/who #LUNCH", "/who #tea")
        assert chat.new_output() == [
            "12:00:01 * online: bob, carol",
            "12:00:01 * in #lunch: alice, bob",
            "12:00:01 * in #ops: alice",
            "12:00:01 * current room: #lunch",
            "12:00:01 * in #LUNCH: alice, bob",
            "12:00:01 * you are not in #tea",
        ]
        await chat.end_input()


@fail_after(5)
async def test_presence_by_rooms() -> None:
    settings = SETTINGS.replace("presence=global", "presence=rooms")
    async with chatting_v2("alice", settings=settings) as chat:
        chat.new_output()
        await chat.type("hello?", "/who")
        assert chat.new_output() == [
            "12:00:01 ! no current target: write @NAME TEXT or #ROOM TEXT,"
            " or /join #ROOM",
            "12:00:01 * this server tells who is online only through rooms",
        ]
        await chat.end_input()


@fail_after(5)
async def test_an_error_about_rooms() -> None:
    async with chatting_v2("alice") as chat:
        chat.new_output()
        await chat.hear("error|not-in-room|#lunch", "error|too-many-rooms|at most 5")
        assert chat.new_output() == [
            "12:00:01 ! not in room: #lunch",
            "12:00:01 ! too many rooms: at most 5",
        ]
        await chat.end_input()


@fail_after(5)
async def test_a_message_over_the_servers_limit_is_not_sent() -> None:
    # What a server started with --max-line 512 would close the connection for.
    settings = SETTINGS.replace("max-line=4096", "max-line=512")
    async with chatting_v2("alice", online=["bob"], settings=settings) as chat:
        chat.new_output()
        await chat.type("@bob " + "x" * 600, "@bob short")
        assert chat.new_output() == [
            "12:00:01 ! not sent: the frame has 610 bytes; the server takes at most 512"
        ]
        assert await chat.server.receive() == Talk("bob", "short")
        await chat.end_input()
    assert chat.status == EXIT_OK


# Your own messages


@fail_after(5)
async def test_with_echo_a_tty_shows_the_servers_copy_in_place_of_the_line() -> None:
    async with chatting_v2("alice", online=["bob"], tty=True, colour=False) as chat:
        start = len(chat.out.getvalue())
        await chat.type("@bob hi")
        # Nothing until the server's copy arrives...
        assert chat.out.getvalue()[start:] == "bob> "
        await chat.hear(f"msg|5|{SAME_DAY}|alice|bob|hi")
        shown = chat.out.getvalue()[start:]
        # ... which takes the place of the line as typed, once.
        assert shown == "bob> \x1b[1A\r\x1b[K11:59:58 you -> bob: hi\nbob> "
        await chat.type("/all lunch?", "#lunch pizza?")
        await chat.hear(
            f"msg|6|{SAME_DAY}|alice|*|lunch?", f"msg|7|{SAME_DAY}|alice|#lunch|pizza?"
        )
        shown = chat.out.getvalue()
        assert shown.count("you -> bob: hi") == 1
        assert shown.count("you (to all): lunch?") == 1
        assert shown.count("you (#lunch): pizza?") == 1
        await chat.end_input()


@fail_after(5)
async def test_an_echo_after_other_lines_does_not_replace_the_typed_line() -> None:
    async with chatting_v2("alice", online=["bob"], tty=True, colour=False) as chat:
        await chat.type("@bob one", "@bob two")
        start = len(chat.out.getvalue())
        # The copy of "one" arrives while "two" is the line typed last.
        await chat.hear(f"msg|5|{SAME_DAY}|alice|bob|one")
        assert chat.out.getvalue()[start:] == (
            "\r\x1b[K11:59:58 you -> bob: one\nbob> "
        )
        await chat.hear(
            f"msg|6|{SAME_DAY}|bob|alice|yo", f"msg|7|{SAME_DAY}|alice|bob|two"
        )
        assert "\x1b[1A" not in chat.out.getvalue()[start:]
        await chat.end_input()


@fail_after(5)
async def test_without_echo_a_tty_shows_the_line_when_it_is_sent() -> None:
    async with chatting(
        "alice", online=["bob"], version=2, echo=False, tty=True, colour=False
    ) as chat:
        start = len(chat.out.getvalue())
        await chat.type("#lunch hi")
        assert chat.out.getvalue()[start:] == (
            "\x1b[1A\r\x1b[K12:00:01 you (#lunch): hi\n#lunch> "
        )
        await chat.end_input()


@fail_after(5)
async def test_a_pipe_shows_no_own_messages_echo_or_not() -> None:
    async with chatting_v2("alice", online=["bob"]) as chat:
        chat.new_output()
        await chat.type("@bob hi")
        await chat.hear(
            f"msg|5|{SAME_DAY}|alice|bob|hi", f"msg|6|{SAME_DAY}|bob|alice|yo"
        )
        assert chat.new_output() == ["11:59:58 bob: yo"]
        await chat.end_input()


# With a real server


class Terminal:
    """A ``run_session`` on a TTY without colour, for a client of a real
    server: type lines, wait for what it shows."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.out = io.StringIO()
        self.keyboard, self._lines = trio.open_memory_channel[str](0)
        self.status: int | None = None

    async def run(self) -> None:
        async with self._lines:
            self.status = await run_session(
                self.client, self._lines, self.out, tty=True, colour=False
            )

    async def type(self, line: str) -> None:
        await self.keyboard.send(line)

    async def wait_for(self, pattern: str) -> None:
        """Wait (bounded) until a line shown matches *pattern*.

        What the session shows comes from the server over a socket, with
        no event to wait on, so this polls.
        """
        with trio.fail_after(STEP_TIMEOUT):
            while not re.search(pattern, self.out.getvalue(), re.MULTILINE):  # noqa: ASYNC110
                await trio.sleep(0.01)


STAMP = r"\d\d:\d\d:\d\d "


async def next_said(client: Client) -> Message:
    """The next message *client* yields, within STEP_TIMEOUT."""
    with trio.fail_after(STEP_TIMEOUT):
        async for event in client:
            if isinstance(event, Message):
                return event
    raise AssertionError("the connection ended")


async def test_rooms_and_echo_with_a_real_server() -> None:
    async with (
        running_server() as live,
        open_client("bob", port=live.port) as bob,
        trio.open_nursery() as nursery,
    ):
        await bob.join("#lunch")
        with trio.fail_after(STEP_TIMEOUT):
            alice = Terminal(await connect("alice", port=live.port))
        assert (alice.client.version, alice.client.echo) == (2, True)
        nursery.start_soon(alice.run)
        await alice.wait_for(rf"\r\x1b\[K{STAMP}\* bob is online$")

        await alice.type("/join #lunch")
        await alice.wait_for(rf"{STAMP}\* you joined #lunch$")
        await alice.wait_for(rf"{STAMP}\* bob is in #lunch$")
        await alice.type("hello lunch")
        said = await next_said(bob)
        assert (said.sender, said.to, said.text) == ("alice", "#lunch", "hello lunch")
        # The server's copy of her message replaces the line she typed.
        await alice.wait_for(rf"\x1b\[1A\r\x1b\[K{STAMP}you \(#lunch\): hello lunch$")
        await bob.talk("#lunch", "pizza?")
        await alice.wait_for(rf"{STAMP}bob \(#lunch\): pizza\?$")
        await alice.type("/rooms")
        await alice.wait_for(rf"{STAMP}\*   #lunch: 2 members, you among them$")
        await alice.type("/part")
        await alice.wait_for(rf"{STAMP}\* you left #lunch$")
        await alice.keyboard.aclose()
    assert alice.status == EXIT_OK
    assert alice.out.getvalue().count("hello lunch") == 1


# The terminal


@fail_after(5)
async def test_a_tty_gets_a_prompt_colour_and_an_echo() -> None:
    async with chatting("alice", online=["bob"], tty=True) as chat:
        await chat.type("hi")
        await chat.hear("talk|bob|alice|\u202eyo")
        await chat.end_input()
    shown = chat.out.getvalue()
    assert PROMPT in shown
    assert "\x1b[1mbob\x1b[0m: \\u202eyo" in shown
    assert "\x1b[1myou\x1b[0m -> bob: hi" in shown
    assert "/help lists the commands" in shown


@fail_after(5)
async def test_without_a_tty_there_is_no_prompt_and_no_colour() -> None:
    async with chatting("alice", online=["bob"]) as chat:
        await chat.type("hi", "/who", "/nope")
        await chat.hear("talk|bob|alice|yo", "error|no-such-user|x")
        await chat.end_input()
    shown = chat.out.getvalue()
    assert PROMPT not in shown
    assert "\x1b" not in shown
    assert all(line.startswith("12:00:01 ") for line in shown.splitlines())


@fail_after(5)
async def test_a_tty_without_colour() -> None:
    async with chatting("alice", online=["bob"], tty=True, colour=False) as chat:
        await chat.hear("talk|bob|alice|yo")
        await chat.end_input()
    shown = chat.out.getvalue()
    assert PROMPT in shown
    assert "\x1b[0m" not in shown


@fail_after(5)
async def test_lines_from_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        lines = _Lines(read_fd)
        os.write(write_fd, b"one\r\ntwo\n\nthr")
        assert [await lines.__anext__() for _ in range(3)] == ["one", "two", ""]
        # A character split between reads, and a byte that is not UTF-8.
        os.write(write_fd, b"\xc3")
        os.write(write_fd, b"\xa9e \xff\nlast")
        os.close(write_fd)
        write_fd = -1
        assert [line async for line in lines] == ["thr\u00e9e \ufffd", "last"]
        assert [line async for line in lines] == []
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


@fail_after(5)
async def test_lines_from_a_terminal_that_hung_up_end_in_eio_not_eof() -> None:
    # Its other end closed: a read returns nothing, as after a Ctrl-D, and
    # only SIGHUP (which races it) said the user left. EIO says it too.
    master, slave = os.openpty()
    try:
        lines = _Lines(slave)
        os.write(master, b"typed\n")
        assert await lines.__anext__() == "typed"
        os.close(master)
        master = -1
        with pytest.raises(OSError, match="hung up") as gone:
            await lines.__anext__()
        assert gone.value.errno == errno.EIO
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)


@fail_after(5)
async def test_ctrl_d_on_a_terminal_ends_the_lines() -> None:
    master, slave = os.openpty()
    try:
        lines = _Lines(slave)
        os.write(master, b"last\n\x04")  # Ctrl-D at the start of a line
        assert [line async for line in lines] == ["last"]
    finally:
        os.close(master)
        os.close(slave)


@fail_after(5)
async def test_reading_lines_can_be_cancelled() -> None:
    read_fd, write_fd = os.pipe()
    read_returned = threading.Event()

    def read(fd: int, size: int) -> bytes:
        try:
            return os.read(fd, size)
        finally:
            read_returned.set()

    try:
        lines = _Lines(read_fd, read=read)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lines.__anext__)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert not read_returned.is_set()
    finally:
        # End the abandoned read before its descriptor goes away.
        os.close(write_fd)
        await trio.to_thread.run_sync(read_returned.wait)
        os.close(read_fd)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments() -> None:
    args = parse("alice")
    assert (args.name, args.host, args.port) == ("alice", "127.0.0.1", 8089)
    assert (args.tls, args.ca, args.ping_interval) == (False, None, 30.0)
    args = parse("bob", "--host", "chat.example", "--port", "9000", "--tls")
    assert (args.host, args.port, args.tls) == ("chat.example", 9000, True)
    args = parse("bob", "--ca", "ca.pem", "--ping-interval", "0")
    assert (args.ca, args.ping_interval) == ("ca.pem", 0.0)
    assert (parse("bob").protocol, parse("bob", "--protocol", "1").protocol) == (2, 1)
    assert args.server_name is None
    args = parse("bob", "--host", "192.0.2.7", "--server-name", "chat.example")
    assert (args.host, args.server_name) == ("192.0.2.7", "chat.example")


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("alice", "--port", "0"),
        ("alice", "--port", "http"),
        ("alice", "--ping-interval", "-1"),
        ("alice", "--ping-interval", "nan"),
        ("alice", "--server-name", ""),
        ("alice", "--server-name", ".example.org"),
        ("alice", "--protocol", "3"),
        ("alice", "--protocol", "0"),
    ],
)
def test_bad_arguments(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    capsys.readouterr()


# The command, run as a process over a real socket

CONNECT = """\
import argparse, sys
from trichat.client import terminal
parser = argparse.ArgumentParser()
terminal.add_arguments(parser)
sys.exit(terminal.main(parser.parse_args(sys.argv[1:])))
"""


async def serve(
    nursery: trio.Nursery,
    handler: Callable[[FakeServer], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """``serve_fake`` for ``trichat connect`` processes. One may exit with
    frames unread, and so reset the connection: that counts as closing."""
    return await serve_fake(nursery, handler, ssl_context, broken_is_closed=True)


async def connect_process(
    *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    result = await trio.run_process(
        [sys.executable, "-c", CONNECT, *argv],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    assert b"Traceback" not in result.stderr
    return result


@fail_after(20)
async def test_main_chats_through_pipes() -> None:
    received: list[ClientMessage] = []
    hello: list[Hello | None] = []

    async def bob_is_here(server: FakeServer) -> None:
        await server.accept("alice", online=["bob"])
        hello.append(server.hello)
        await server.send(f"msg|7|{SAME_DAY}|bob|alice|hi alice")
        received.extend(await server.receive_all())

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, bob_is_here)
        result = await connect_process(
            "alice", "--port", str(port), stdin=b"@bob hello\n/all bye\n"
        )
        nursery.cancel_scope.cancel()
    assert result.returncode == EXIT_OK
    assert result.stderr == b""
    # Protocol 2, with echo (which tells a script's lines lost on the way
    # in as a connection drops, to go again); a pipe shows no own messages.
    assert hello == [Hello(2, ("echo",))]
    assert received == [Talk("bob", "hello"), Talk("*", "bye"), Exit()]
    assert b"* logged in as alice\n" in result.stdout
    assert b"bob: hi alice\n" in result.stdout
    assert b"> " not in result.stdout


@fail_after(30)
async def test_a_script_joins_talks_in_the_room_and_reads_the_answers() -> None:
    # A script does not wait for the join's answer before its next line:
    # that line goes to the room all the same (bob, the only other user
    # online, would otherwise get it directly), and leaving waits for the
    # answers to what it asked (the members, /history, a refusal).
    async with (
        running_server(db=":memory:") as live,
        open_client("bob", port=live.port) as bob,
    ):
        await bob.join("#lunch")
        await bob.talk("#lunch", "earlier words")
        script = b"/join #lunch\nin the room\n/history 5\n@nobody hi\n"
        result = await connect_process("alice", "--port", str(live.port), stdin=script)
        said = await next_said(bob)
        if said.sender == "bob":  # his own, as a member of the room
            said = await next_said(bob)
        assert (said.sender, said.to, said.text) == ("alice", "#lunch", "in the room")
    assert result.returncode == EXIT_OK, result.stderr
    out = result.stdout.decode()
    assert re.search(rf"^{STAMP}\* bob is in #lunch$", out, re.M), out
    assert re.search(r"\[earlier\] bob \(#lunch\): earlier words$", out, re.M), out
    assert re.search(rf"^{STAMP}! no such user: nobody$", out, re.M), out


@fail_after(30)
async def test_a_script_goes_no_faster_than_the_server_takes_it() -> None:
    # 12 lines against a flood limit of 10 a second (a burst of 2): each
    # goes, none is refused, whatever the pipe gives at once.
    async with (
        running_server(rate=10, burst=2) as live,
        open_client("bob", port=live.port) as bob,
    ):
        script = b"".join(b"@bob line %d\n" % number for number in range(12))
        result = await connect_process("alice", "--port", str(live.port), stdin=script)
        said = [(await next_said(bob)).text for _ in range(12)]
    assert result.returncode == EXIT_OK, result.stderr
    assert b"rate limited" not in result.stdout, result.stdout
    assert said == [f"line {number}" for number in range(12)]


@pytest.mark.parametrize(
    ("argv", "settings", "expected"),
    [
        (("--protocol", "1"), SETTINGS, None),
        # A server that does not know hello (trichat 1.0).
        ((), OLD_SERVER, Hello(2, ("echo",))),
        # Without reconnecting, a script has no use for its copies.
        (("--no-reconnect",), OLD_SERVER, Hello(2)),
    ],
)
@fail_after(20)
async def test_main_speaking_protocol_1(
    argv: tuple[str, ...], settings: str | None, expected: Hello | None
) -> None:
    hello: list[Hello | None] = []

    async def old_style(server: FakeServer) -> None:
        await server.accept("alice", online=["bob"], settings=settings)
        hello.append(server.hello)
        await server.send("talk|bob|alice|hi alice")
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, old_style)
        result = await connect_process(
            "alice", "--port", str(port), *argv, stdin=b"@bob hello\n"
        )
        nursery.cancel_scope.cancel()
    assert result.returncode == EXIT_OK
    assert hello == [expected]
    assert b"bob: hi alice\n" in result.stdout


@fail_after(20)
async def test_main_with_an_unreachable_server() -> None:
    port = free_port()
    result = await connect_process("alice", "--port", str(port))
    assert result.returncode == EXIT_FAILURE
    assert result.stderr.decode() == (
        f"trichat: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )


@pytest.mark.parametrize(
    ("refusal", "status", "problem"),
    [
        (
            "error|name-taken|alice is online",
            EXIT_REFUSED,
            "name taken: alice is online",
        ),
        ("error|bad-name|too long", EXIT_REFUSED, "bad name: too long"),
        ("error|server-full|try later", EXIT_FAILURE, "the server is full: try later"),
        ("error|banned|go away", EXIT_FAILURE, "banned: go away"),
    ],
)
@fail_after(20)
async def test_main_when_the_login_is_refused(
    refusal: str, status: int, problem: str
) -> None:
    async def refuse(server: FakeServer) -> None:
        assert await server.login_request() == Login("alice")
        await server.send(refusal)
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, refuse)
        result = await connect_process("alice", "--port", str(port))
        nursery.cancel_scope.cancel()
    assert result.returncode == status
    assert result.stderr.decode() == f"trichat: cannot log in as alice: {problem}\n"


@fail_after(20)
async def test_main_with_a_name_the_protocol_refuses() -> None:
    result = await connect_process("no spaces", "--port", str(free_port()))
    assert result.returncode == EXIT_REFUSED
    assert result.stderr.decode() == (
        "trichat: cannot log in as no spaces: a name may not contain ' '\n"
    )


@asynccontextmanager
async def connect_started(*argv: str) -> AsyncIterator[trio.Process]:
    """Run the command with an input pipe that stays open; kill it at the end."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CONNECT, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            assert pipe is not None
            await pipe.aclose()


async def read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


@fail_after(20)
async def test_main_when_the_server_shuts_down() -> None:
    async def shut_down(server: FakeServer) -> None:
        await server.accept("alice")
        await server.send("error|shutting-down|the server is stopping")
        await server.stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, shut_down)
        async with connect_started("alice", "--port", str(port)) as process:
            status = await process.wait()
            err = await read_all(process.stderr)
        nursery.cancel_scope.cancel()
    assert status == EXIT_FAILURE
    assert err == b"trichat: the server is shutting down: the server is stopping\n"


@fail_after(20)
async def test_main_exits_cleanly_on_ctrl_c() -> None:
    async def wait(server: FakeServer) -> None:
        await server.accept("alice")
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, wait)
        async with connect_started("alice", "--port", str(port)) as process:
            assert process.stdout is not None
            # Once the session has started:
            assert b"logged in" in await process.stdout.receive_some()
            process.send_signal(signal.SIGINT)
            status = await process.wait()
            err = await read_all(process.stderr)
        nursery.cancel_scope.cancel()
    assert status == EXIT_INTERRUPTED
    assert err == b""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@fail_after(20)
async def test_main_over_tls(ca: trustme.CA, tmp_path: Path) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca_file = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))

    async def greet(server: FakeServer) -> None:
        login = await server.login_request()
        if login is None:  # a client that does not trust the certificate
            return
        assert login == Login("alice")
        server.connection.logged_in("alice")
        await server.send("login|alice", "login|bob")
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, greet, server_context)
        good = await connect_process("alice", "--port", str(port), "--ca", str(ca_file))
        wrong = await connect_process(
            "alice", "--port", str(port), "--ca", str(other_ca_file)
        )
        missing = await connect_process(
            "alice", "--port", str(port), "--ca", str(tmp_path / "missing.pem")
        )
        nursery.cancel_scope.cancel()
    assert good.returncode == EXIT_OK
    assert b"* bob is online" in good.stdout
    assert wrong.returncode == EXIT_FAILURE
    assert wrong.stderr.startswith(
        f"trichat: cannot connect to 127.0.0.1:{port}: TLS handshake failed:".encode()
    )
    assert b"CERTIFICATE_VERIFY_FAILED" in wrong.stderr
    assert missing.returncode == EXIT_REFUSED
    assert missing.stderr.startswith(b"trichat: cannot use the CA file")


@fail_after(20)
async def test_main_checks_the_certificate_against_the_server_name(
    ca: trustme.CA, tmp_path: Path
) -> None:
    # A certificate for a name only, reached by its address.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("chat.trichat.test").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def greet(server: FakeServer) -> None:
        login = await server.login_request()
        if login is None:  # a client that does not accept the certificate
            return
        server.connection.logged_in("alice")
        await server.send("login|alice", "login|bob")
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, greet, server_context)
        named = await connect_process(
            "alice", "--port", str(port), "--ca", str(ca_file),
            "--server-name", "chat.trichat.test",
        )  # fmt: skip
        by_address = await connect_process(
            "alice", "--port", str(port), "--ca", str(ca_file)
        )
        misnamed = await connect_process(
            "alice", "--port", str(port), "--ca", str(ca_file),
            "--server-name", "impostor.trichat.test",
        )  # fmt: skip
        # --server-name alone means TLS, with the default trust store.
        trusting = await connect_process(
            "alice", "--port", str(port), "--server-name", "chat.trichat.test",
            env={"SSL_CERT_FILE": str(ca_file)},
        )  # fmt: skip
        nursery.cancel_scope.cancel()
    for accepted in (named, trusting):
        assert accepted.returncode == EXIT_OK
        assert b"* bob is online" in accepted.stdout
    for refused in (by_address, misnamed):
        assert refused.returncode == EXIT_FAILURE
        assert b"CERTIFICATE_VERIFY_FAILED" in refused.stderr
