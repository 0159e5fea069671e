"""``trichat connect`` with accounts and history: ``--password-file`` and
the password asked for, ``/register``, ``/password``, ``/history [N]``,
and a room's earlier messages on joining it; against a scripted fake
server, and end to end against a server with its store in a temporary
file."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fakeserver import SETTINGS, FakeServer, fail_after, serve_fake
from test_terminal import SAME_DAY, chatting_v2, connect_process, sent

from trichat.client import LoginRefused, open_client
from trichat.client.fullscreen._model import ChatModel, EntryKind
from trichat.client.terminal import (
    EXIT_OK,
    EXIT_REFUSED,
    add_arguments,
    log_in,
    read_password_file,
    run_session,
)
from trichat.protocol.messages import (
    ChangePassword,
    ErrorCode,
    Exit,
    Hist,
    History,
    Join,
    Login,
    Pong,
    Register,
    Registered,
    Talk,
)
from trichat.server.app import ChatServer
from trichat.server.config import ServerConfig
from trichat.server.passwords import Hasher

PASSWORD = "correct horse"
HISTORY = SETTINGS.replace("history=0", "history=1000")
"""A server's settings when it keeps history."""
CHEAP = Hasher(memory_kib=8, time_cost=1, parallelism=1)
WHEN = datetime(2024, 5, 17, 11, 59, 58, 500000, tzinfo=UTC)


class Prompts:
    """A fake password prompt: answers with *answers* in turn, and keeps
    the prompts it was shown."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.shown: list[str] = []

    async def __call__(self, prompt: str) -> str | None:
        await trio.lowlevel.checkpoint()
        self.shown.append(prompt)
        return self.answers.pop(0)


# A room's earlier messages on joining it


@fail_after(5)
async def test_joining_shows_the_rooms_earlier_messages_before_live_ones() -> None:
    async with chatting_v2("alice", online=["bob"], settings=HISTORY) as chat:
        chat.new_output()
        await chat.type("/join #lunch")
        assert await chat.server.receive() == Join("#lunch")
        await chat.hear("join|#lunch|alice", "join|#lunch|bob")
        assert await chat.server.receive() == History("#lunch", "latest", 20)
        # A live message arrives before the answer, which holds it too.
        await chat.hear(f"msg|12|{SAME_DAY}|bob|#lunch|live one")
        await chat.hear(
            f"hist|10|{SAME_DAY}|bob|#lunch|hungry?",
            f"hist|11|{SAME_DAY}|alice|#lunch|always",
            f"hist|12|{SAME_DAY}|bob|#lunch|live one",
            "history|#lunch|3",
        )
        await chat.hear(f"msg|13|{SAME_DAY}|bob|#lunch|pizza?")
        assert chat.new_output() == [
            "12:00:01 * you joined #lunch",
            "12:00:01 * bob is in #lunch",
            "12:00:01 * 2 earlier messages in #lunch:",
            "11:59:58 [earlier] bob (#lunch): hungry?",
            "11:59:58 [earlier] you (#lunch): always",
            "11:59:58 bob (#lunch): live one",
            "11:59:58 bob (#lunch): pizza?",
        ]
        await chat.end_input()
    assert chat.status == EXIT_OK


@fail_after(5)
async def test_a_new_room_shows_no_earlier_messages() -> None:
    async with chatting_v2("alice", settings=HISTORY) as chat:
        chat.new_output()
        await chat.type("/join #new")
        assert await chat.server.receive() == Join("#new")
        await chat.hear("join|#new|alice")
        assert await chat.server.receive() == History("#new", "latest", 20)
        await chat.hear("history|#new|0")
        assert chat.new_output() == ["12:00:01 * you joined #new"]
        await chat.end_input()


@fail_after(5)
async def test_a_server_without_history_is_not_asked() -> None:
    async with chatting_v2("alice") as chat:
        await chat.type("/join #lunch")
        assert await chat.server.receive() == Join("#lunch")
        await chat.hear("join|#lunch|alice")
        await chat.type("hello room")
        assert await chat.server.receive() == Talk("#lunch", "hello room")
        await chat.end_input()


@fail_after(5)
async def test_a_refused_history_on_join_shows_what_was_held_back() -> None:
    async with chatting_v2("alice", settings=HISTORY) as chat:
        await chat.type("/join #lunch")
        await chat.hear("join|#lunch|alice")
        assert await sent(chat.server, 2) == [
            Join("#lunch"),
            History("#lunch", "latest", 20),
        ]
        chat.new_output()
        await chat.hear(f"msg|12|{SAME_DAY}|bob|#lunch|held")
        assert chat.new_output() == []
        await chat.hear("error|no-history|this server keeps no history")
        # The refusal answers our own request: only the message shows.
        assert chat.new_output() == ["11:59:58 bob (#lunch): held"]
        await chat.end_input()


# /history


@fail_after(5)
async def test_history_shows_the_current_targets_earlier_messages() -> None:
    async with chatting_v2("alice", online=["bob"], settings=HISTORY) as chat:
        await chat.type("@bob hi", "/history 5")
        assert await sent(chat.server, 2) == [
            Talk("bob", "hi"),
            History("bob", "latest", 5),
        ]
        chat.new_output()
        await chat.hear(
            f"hist|3|{SAME_DAY}|bob|alice|are you there?",
            f"hist|4|{SAME_DAY}|alice|bob|hi",
            "history|bob|2",
        )
        assert chat.new_output() == [
            "12:00:01 * 2 earlier messages with bob:",
            "11:59:58 [earlier] bob: are you there?",
            "11:59:58 [earlier] you -> bob: hi",
        ]
        await chat.type("/history")
        assert await chat.server.receive() == History("bob", "latest", 20)
        await chat.hear("history|bob|0")
        assert chat.new_output() == ["12:00:01 * no earlier messages with bob"]
        await chat.end_input()


@fail_after(5)
async def test_a_full_page_says_there_may_be_more() -> None:
    async with chatting_v2("alice", settings=HISTORY) as chat:
        await chat.type("/all hi", "/history 1")
        # /all does not make * the current target: nothing to ask about.
        assert "! no current target" in chat.out.getvalue()
        await chat.type("@bob hi", "/history 1")
        assert await sent(chat.server, 3) == [
            Talk("*", "hi"),
            Talk("bob", "hi"),
            History("bob", "latest", 1),
        ]
        chat.new_output()
        await chat.hear(f"hist|3|{SAME_DAY}|bob|*|to everyone", "history|bob|1")
        assert chat.new_output() == [
            "12:00:01 * 1 earlier message with bob; /history 500 shows more:",
            "11:59:58 [earlier] bob (to all): to everyone",
        ]
        await chat.end_input()


@pytest.mark.parametrize("argument", ["0", "501", "ten", "-1"])
@fail_after(5)
async def test_history_with_a_bad_count_is_not_sent(argument: str) -> None:
    async with chatting_v2("alice", settings=HISTORY) as chat:
        chat.new_output()
        await chat.type("@bob hi", f"/history {argument}", "/quit")
        assert "12:00:01 ! usage: /history [N] (N from 1 to 500)" in chat.new_output()
    # Nothing between the talk and the goodbye.
    assert await chat.server.receive_all() == [Talk("bob", "hi"), Exit()]


# /register and /password


@fail_after(5)
async def test_register_from_a_pipe_takes_the_next_line() -> None:
    async with chatting_v2("alice") as chat:
        chat.new_output()
        await chat.type("/register", PASSWORD)
        assert await chat.server.receive() == Register(PASSWORD)
        await chat.hear("registered|alice")
        assert chat.new_output() == [
            "12:00:01 * alice is an account now: logging in as it takes the password"
        ]
        assert PASSWORD not in chat.out.getvalue() + chat.err.getvalue()
        await chat.end_input()


@fail_after(5)
async def test_register_at_the_end_of_input_sends_nothing() -> None:
    async with chatting_v2("alice") as chat:
        chat.new_output()
        await chat.type("/register")
        await chat.end_input()
    assert chat.new_output() == [
        "12:00:01 ! no password: it is the line after the command"
    ]


@pytest.mark.parametrize("command", ["/register", "/password"])
@fail_after(5)
async def test_a_password_on_the_command_line_is_refused(command: str) -> None:
    async with chatting_v2("alice") as chat:
        chat.new_output()
        await chat.type(f"{command} {PASSWORD}", "@bob hi")
        assert await chat.server.receive() == Talk("bob", "hi")
        output = chat.new_output()
        assert output == [f"12:00:01 ! usage: {command} (the password is asked for)"]
        await chat.end_input()


@fail_after(5)
async def test_password_asks_twice_on_a_terminal() -> None:
    prompts = Prompts("battery staple", "battery staple")
    async with chatting_v2("alice", ask_password=prompts) as chat:
        await chat.type("/password")
        assert await chat.server.receive() == ChangePassword("battery staple")
        chat.new_output()
        await chat.hear("password|alice")
        assert chat.new_output() == ["12:00:01 * the password of alice is changed"]
        await chat.end_input()
    assert prompts.shown == ["new password: ", "the same again: "]


@fail_after(5)
async def test_two_different_passwords_change_nothing() -> None:
    prompts = Prompts("battery staple", "battery stable")
    async with chatting_v2("alice", ask_password=prompts) as chat:
        chat.new_output()
        await chat.type("/register", "@bob hi")
        assert await chat.server.receive() == Talk("bob", "hi")
        assert chat.new_output() == [
            "12:00:01 ! the two passwords differ; nothing changed"
        ]
        await chat.end_input()


@fail_after(5)
async def test_a_bad_new_password_is_not_sent_nor_shown() -> None:
    prompts = Prompts("short", "short")
    async with chatting_v2("alice", ask_password=prompts) as chat:
        chat.new_output()
        await chat.type("/register", "@bob hi")
        assert await chat.server.receive() == Talk("bob", "hi")
        assert chat.new_output() == [
            "12:00:01 ! not sent: a password has 8 to 256 characters"
        ]
        await chat.end_input()


# Logging in: --password-file and the prompt


def arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_a_password_file_holds_the_password_on_its_first_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "password"
    path.write_bytes(f"{PASSWORD}\r\nsecond line\n".encode())
    assert read_password_file(str(path)) == PASSWORD
    path.write_text(PASSWORD)
    assert read_password_file(str(path)) == PASSWORD
    path.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        read_password_file(str(path))
    path.write_bytes(b"\xffsecret\n")
    with pytest.raises(ValueError, match="not UTF-8") as bad:
        read_password_file(str(path))
    assert "secret" not in str(bad.value)


@fail_after(10)
async def test_the_name_of_an_account_asks_for_its_password() -> None:
    logins: list[Login | None] = []

    async def account(server: FakeServer) -> None:
        login = await server.login_request()
        logins.append(login)
        if login is not None and login.password is None:
            await server.send("error|account-required|alice is an account")
        else:
            server.connection.logged_in("alice")
            await server.send("login|alice")
        await server.receive_all()

    prompts = Prompts(PASSWORD)
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, account, broken_is_closed=True)
        args = arguments("alice", "--port", str(port))
        client = await log_in(
            args, ssl_context=None, version=2, echo=True, password=None, ask=prompts
        )
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert prompts.shown == ["password for alice: "]
    # A new connection for the password: the server does not wait.
    assert logins == [Login("alice"), Login("alice", PASSWORD)]


@fail_after(10)
async def test_no_password_given_at_the_prompt_is_the_refusal() -> None:
    async def account(server: FakeServer) -> None:
        await server.login_request()
        await server.send("error|account-required|alice is an account")
        await server.receive_all()

    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, account, broken_is_closed=True)
        args = arguments("alice", "--port", str(port))
        with pytest.raises(LoginRefused) as refused:
            await log_in(
                args,
                ssl_context=None,
                version=2,
                echo=True,
                password=None,
                ask=Prompts(None),
            )
        nursery.cancel_scope.cancel()
    assert refused.value.error.code is ErrorCode.ACCOUNT_REQUIRED


@fail_after(20)
async def test_main_logs_in_with_the_password_file(tmp_path: Path) -> None:
    logins: list[Login | None] = []

    async def account(server: FakeServer) -> None:
        logins.append(await server.login_request())
        server.connection.logged_in("alice")
        await server.send("login|alice")
        await server.receive_all()

    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    async with trio.open_nursery() as nursery:
        port = await serve_fake(nursery, account, broken_is_closed=True)
        result = await connect_process(
            "alice", "--port", str(port), "--password-file", str(path)
        )
        nursery.cancel_scope.cancel()
    assert result.returncode == EXIT_OK
    assert logins == [Login("alice", PASSWORD)]
    assert PASSWORD.encode() not in result.stdout + result.stderr


@fail_after(20)
async def test_main_with_a_password_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = await connect_process(
        "alice", "--port", "1", "--password-file", str(missing)
    )
    assert result.returncode == EXIT_REFUSED
    assert result.stderr.decode() == (
        f"trichat: cannot read a password from {missing}: No such file or directory\n"
    )


# End to end, with a server that keeps accounts and history


@asynccontextmanager
async def store_server(db: Path, **config: Any) -> AsyncIterator[int]:
    config.setdefault("resume_window", 0)
    server = ChatServer(ServerConfig(port=0, db=str(db), **config), hasher=CHEAP)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(server.serve)
        try:
            yield port
        finally:
            server.shutdown()


async def register(port: int, name: str) -> None:
    async with open_client(name, port=port) as client:
        await client.register(PASSWORD)
        async for event in client:
            if event == Registered(name):
                break
        await client.exit()


@fail_after(30)
async def test_main_against_a_server_with_accounts(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as port:
        await register(port, "alice")
        refused = await connect_process("alice", "--port", str(port))
        assert refused.returncode == EXIT_REFUSED
        assert refused.stderr.decode() == (
            "trichat: cannot log in as alice: account required: alice is an"
            " account: log in with its password (give it with --password-file"
            " FILE)\n"
        )
        path = tmp_path / "password"
        path.write_text(PASSWORD + "\n")
        result = await connect_process(
            "alice", "--port", str(port), "--password-file", str(path)
        )
        assert result.returncode == EXIT_OK, result.stderr
        assert b"* logged in as alice\n" in result.stdout


class Screen(io.StringIO):
    """Captured output that a test can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._changed.set()
        return written

    async def shows(self, line: str) -> list[str]:
        """Wait until *line* ends a line of output; all the lines so far."""
        while True:
            lines = self.getvalue().splitlines()
            if any(shown.endswith(line) for shown in lines):
                return lines
            self._changed = trio.Event()
            await self._changed.wait()


@fail_after(30)
async def test_joining_a_room_shows_what_was_said_in_it(tmp_path: Path) -> None:
    async with (
        store_server(tmp_path / "t.db") as port,
        open_client("bob", port=port) as bob,
    ):
        await bob.join("#lunch")
        await bob.talk_batch("#lunch", [f"message {n}" for n in range(25)])
        await bob.ping("said")
        async for event in bob:
            if event == Pong("said"):
                break
        async with open_client("alice", port=port, echo=False) as alice:
            screen = Screen()
            keyboard, lines = trio.open_memory_channel[str](0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_session(
                        alice, lines, screen, io.StringIO(), ping_interval=0
                    )
                )
                await keyboard.send("/join #lunch")
                await screen.shows("[earlier] bob (#lunch): message 24")
                await bob.talk("#lunch", "live now")
                shown = await screen.shows("bob (#lunch): live now")
                await keyboard.aclose()
    said = [line.split(" ", 1)[1] for line in shown if "(#lunch)" in line]
    assert said == [
        *(f"[earlier] bob (#lunch): message {n}" for n in range(5, 25)),
        "bob (#lunch): live now",
    ]


@fail_after(30)
async def test_a_script_gets_the_answers_to_its_lines_in_their_order(
    tmp_path: Path,
) -> None:
    # A script's lines go without waiting for answers: the earlier
    # messages of a room it joins are asked for right behind the join,
    # before what the script says next; and /who waits for what came before.
    async with (
        store_server(tmp_path / "t.db") as port,
        open_client("bob", port=port) as bob,
    ):
        await bob.join("#lunch")
        await bob.talk("#lunch", "soup today")
        await bob.ping("said")
        async for event in bob:
            if event == Pong("said"):
                break
        script = b"/join #new\n/history 5\n/part\n/join #lunch\n/who #lunch\n"
        result = await connect_process("alice", "--port", str(port), stdin=script)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == b""
    shown = [line.split(" ", 1)[1] for line in result.stdout.decode().splitlines()]
    assert shown == [
        "* logged in as alice",
        "* bob is online",
        "* you joined #new",
        "* no earlier messages in #new",
        "* you left #new",
        "* you joined #lunch",
        "* bob is in #lunch",
        "* 1 earlier message in #lunch:",
        "[earlier] bob (#lunch): soup today",
        "* in #lunch: alice, bob",
    ]


# The full-screen client's model


def full_screen(settings: dict[str, str]) -> ChatModel:
    return ChatModel(
        "alice",
        version=2,
        echo=True,
        settings=settings,
        online=("bob",),
        clock=lambda: WHEN,
    )


def queued(chat: ChatModel) -> list[tuple[str, str, int]]:
    return [(item.kind, item.target, item.count) for item in chat.outbox]


def test_full_screen_joining_asks_for_the_rooms_earlier_messages() -> None:
    chat = full_screen({"history": "1000"})
    chat.joined("#lunch", "alice")
    assert queued(chat) == [("history", "#lunch", 20)]
    window = chat.window_for("#lunch")
    # A live message arrives before the answer, which holds it too.
    chat.delivered("bob", "#lunch", "live one", id=12, time=WHEN)
    chat.history_page(
        "#lunch",
        [
            Hist(10, WHEN, "bob", "#lunch", "hungry?"),
            Hist(11, WHEN, "alice", "#lunch", "always"),
            Hist(12, WHEN, "bob", "#lunch", "live one"),
        ],
    )
    messages = [
        (entry.id, entry.text, entry.earlier, entry.own)
        for entry in window.entries
        if entry.kind is EntryKind.MESSAGE
    ]
    assert messages == [
        (10, "hungry?", True, False),
        (11, "always", True, True),
        (12, "live one", False, False),
    ]


def test_full_screen_without_history_on_the_server_asks_nothing() -> None:
    chat = full_screen({"history": "0"})
    chat.joined("#lunch", "alice")
    assert queued(chat) == []


def test_full_screen_history_command_asks_for_the_windows_target() -> None:
    chat = full_screen({"history": "1000"})
    chat.show(chat.window_for("bob"))
    chat.command("/history 50")
    chat.command("/history")
    assert queued(chat) == [("history", "bob", 50), ("history", "bob", 20)]
    chat.outbox.clear()
    chat.command("/history 501")
    assert queued(chat) == []
    assert chat.current.entries[-1].text == "usage: /history [N] (N from 1 to 500)"
    chat.history_page("bob", [])
    assert chat.current.entries[-1].text == "no earlier messages"
