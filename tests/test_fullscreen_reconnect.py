"""The full-screen client over a connection that drops (a reconnecting
client: the status line counts down, the chat goes on once back, with the
typed line, the windows and what was missed), and its /register and
/password (a hidden prompt). Keys in, screen text out, against the real
ChatServer: in memory on a MockClock where time matters, over loopback
where a password is hashed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from helpers import STEP_TIMEOUT, ClockedServer, clocked_server, running_server
from test_fullscreen import press, screen, settle, shown, type_text

from trichat.client import open_stream
from trichat.client.fullscreen._app import FullScreen
from trichat.client.library import Backoff, Client, ReconnectingClient
from trichat.protocol.messages import Message

STEADY = Backoff(first=3.0, factor=2.0, cap=8.0, jitter=0.0)
"""3 s before the first attempt, then 6 and 8: no randomness."""


class Breakable(trio.abc.Stream):
    """A stream whose writes can be made to fail while it still reads:
    a connection that breaks one way first."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.broken = False
        self.swallowing = False
        """Whether writes "succeed" but never reach the server: taken by
        the kernel, lost with the connection."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("broken on the way out")
        if self.swallowing:
            await trio.lowlevel.checkpoint()
            return
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Line:
    """How alice reaches the server: a connection the test can cut, and a
    way back that can lead elsewhere (another server: a restart)."""

    def __init__(self, server: ClockedServer) -> None:
        self.server = server
        self.stream: Breakable | None = None
        self.refusing = False
        """Whether the server cannot be reached."""

    async def open(self) -> trio.abc.Stream:
        if self.refusing:
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError(111, "Connection refused")
        self.stream = Breakable(await self.server.open_stream())
        return self.stream

    async def cut(self) -> None:
        """Drop the connection without a word: the server sees it end,
        and alice's client reads no more."""
        assert self.stream is not None
        await trio.aclose_forcefully(self.stream)


@asynccontextmanager
async def reconnecting(
    server: ClockedServer, name: str = "alice", *, exit_on_loss: bool = False
) -> AsyncIterator[tuple[FullScreen, Line]]:
    """A full-screen app for *name* over a reconnecting client through a
    Line, running until the block ends."""
    line = Line(server)
    client = await Client.login(await line.open(), name)
    async with trio.open_nursery() as nursery:

        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with ReconnectingClient.wrap(
                client, line.open, backoff=STEADY, keepalive=0
            ) as wrapped:
                app = FullScreen(wrapped, ping_interval=0, exit_on_loss=exit_on_loss)
                task_status.started(app)
                await app.run()

        app: FullScreen = await nursery.start(run)
        await settle()
        yield app, line
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], within: float = STEP_TIMEOUT) -> None:
    """Until *condition* holds, for at most *within* seconds; on a
    MockClock that jumps, time passes only as far as the next thing due."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (a screen has no event)
            await trio.sleep(0.01)


def status(app: FullScreen) -> str:
    return screen(app)[-2]


async def test_a_drop_keeps_the_typed_line_and_windows_and_says_what_was_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            async with reconnecting(server) as (alice, line):
                type_text(alice, "/join #lunch")
                press(alice, "enter")
                await bob.join("#lunch")
                await bob.talk("alice", "psst")
                await settle()
                bar = screen(alice)[0]
                assert "3:bob(1)" in bar
                type_text(alice, "half typed")

                await line.cut()
                await settle()
                # Time has not moved: the first attempt is 3 s away.
                assert "connection lost, reconnecting in 3 s..." in status(alice)
                assert "connection lost" in shown(alice)
                # On a narrow terminal the state stays whole; where messages
                # go is cut instead.
                narrow = screen(alice, (44, 10))[-2]
                assert narrow.endswith(" connection lost, reconnecting in 3 s...")
                assert narrow.startswith(" al")
                await trio.sleep(1)
                await settle()
                assert "reconnecting in 2 s..." in status(alice)
                for number in range(7):
                    await bob.talk("#lunch", f"while away {number}")
                await settle()

                await until(lambda: "back: 7 messages missed" in shown(alice))
                await settle()
                rows = screen(alice)
                assert "connected" in rows[-2]
                assert "reconnecting" not in rows[-2]
                # The line as typed, the windows and their unread counts.
                assert rows[-1] == "#lunch> half typed"
                assert rows[0] == bar
                for number in range(7):
                    assert f"<bob> while away {number}" in shown(alice)
                assert shown(alice).count("while away 0") == 1

                # And the chat goes on over the new connection.
                type_text(alice, " and done")
                press(alice, "enter")
                while True:
                    events = await bob.receive_batch()
                    said = [e for e in events if isinstance(e, Message)]
                    if any(e.sender == "alice" for e in said):
                        break
                assert [e.text for e in said if e.sender == "alice"] == [
                    "half typed and done"
                ]


async def test_joining_a_room_lists_who_was_there_not_as_new_joins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The join's answer (own join, then one per member) is one write of
    # the server's: over a reconnecting client too it is one list, not
    # "bob joined" for users who were there before alice came.
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            for name in ("bob", "carol"):
                member = await Client.login(await server.open_stream(), name)
                await member.join("#lunch")
            async with reconnecting(server) as (alice, _):
                type_text(alice, "/join #lunch")
                press(alice, "enter")
                await until(lambda: "you joined #lunch" in shown(alice))
                await settle()
                text = shown(alice)
                assert "you joined #lunch; here: bob, carol" in text
                assert "joined #lunch" not in text.replace("you joined #lunch", "")


async def test_what_is_typed_while_away_goes_once_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            async with reconnecting(server) as (alice, line):
                type_text(alice, "/query bob")
                press(alice, "enter")
                await line.cut()
                await settle()
                type_text(alice, "sent while away")
                press(alice, "enter")
                await settle()
                assert "sent while away  [waiting for the connection]" in shown(alice)
                await until(lambda: "back: 0 messages missed" in shown(alice))
                received: list[str] = []
                while not received:
                    events = await bob.receive_batch()
                    received = [e.text for e in events if isinstance(e, Message)]
                assert received == ["sent while away"]
                await settle()
                assert "waiting for the connection" not in shown(alice)


async def test_a_line_sent_as_the_connection_breaks_goes_once_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The write fails while nothing read says the connection is gone.
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            async with reconnecting(server) as (alice, line):
                assert line.stream is not None
                line.stream.broken = True
                type_text(alice, "@bob as it broke")
                press(alice, "enter")
                await until(lambda: "back: 0 messages missed" in shown(alice), 30)
                received: list[str] = []
                while not received:
                    events = await bob.receive_batch()
                    received = [e.text for e in events if isinstance(e, Message)]
                assert received == ["as it broke"]
                await settle()
                press(alice, "meta 2")
                assert "<alice> as it broke" in shown(alice)
                assert "[" not in shown(alice)  # neither waiting nor failed


async def test_a_line_the_server_never_got_goes_again_after_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Written (the kernel took it) but lost with the connection: the
    # resume's missed messages, which hold every one the server took,
    # do not have it, so it goes again, once.
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            async with reconnecting(server) as (alice, line):
                type_text(alice, "/query bob")
                press(alice, "enter")
                type_text(alice, "got through")
                press(alice, "enter")
                await settle()
                assert line.stream is not None
                line.stream.swallowing = True
                type_text(alice, "into the void")
                press(alice, "enter")
                await settle()
                await line.cut()
                await until(lambda: "back: 0 messages missed" in shown(alice))
                received: list[str] = []
                while "into the void" not in received:
                    events = await bob.receive_batch()
                    received += [e.text for e in events if isinstance(e, Message)]
                assert received == ["got through", "into the void"]
                await settle()
                assert "<alice> into the void" in shown(alice)
                assert "[" not in shown(alice)  # neither waiting nor failed


async def test_a_session_not_kept_says_where_messages_may_be_missing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with (
            clocked_server("memory") as server,
            clocked_server("memory", db=":memory:", history=0) as restarted,
            reconnecting(server) as (alice, line),
        ):
            type_text(alice, "/join #lunch")
            press(alice, "enter")
            await settle()
            type_text(alice, "kept")
            # The server "restarts": the way back leads to one that
            # knows nothing of alice's session and keeps no history.
            line.server = restarted
            await line.cut()
            await until(lambda: "session was not kept" in shown(alice))
            await settle()
            text = shown(alice)
            assert "logged in again as alice" in text
            assert "direct messages sent to you while you were away may" in text
            assert screen(alice)[-1] == "#lunch> kept"
            # The room was joined again, on the new server alone.
            where, state = status(alice).split("  ", 1)
            assert (where, state.lstrip()) == (
                " alice | to #lunch (1 here)",
                "connected",
            )
            # Each conversation with a gap says so in its own window.
            assert "messages sent here while you were away may be" in text
            press(alice, "meta 1")
            assert "messages sent here while you were away may be" in shown(alice)


async def test_a_server_out_of_reach_past_its_window_leaves_the_windows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with (
            clocked_server("memory", resume_window=20) as server,
            reconnecting(server) as (alice, line),
        ):
            line.refusing = True
            await line.cut()
            # Attempts at 3, 9 and 17 s; the next would be past the window.
            await until(lambda: "(attempt 3)" in status(alice), within=30)
            assert alice.status is None
            await until(lambda: "disconnected" in status(alice), within=30)
            assert "could not reconnect within 20 s: Connection refused" in shown(alice)
            # Still there to be read; /quit leaves, as after a failure.
            assert alice.status is None
            type_text(alice, "/quit")
            press(alice, "enter")
            assert alice.status == 1


async def test_without_reconnecting_a_lost_connection_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            client = await Client.login(await server.open_stream(), "alice")
            app = FullScreen(client, ping_interval=0, exit_on_loss=True)
            async with trio.open_nursery() as nursery:
                ended = trio.Event()
                statuses: list[int] = []

                async def run() -> None:
                    statuses.append(await app.run())
                    ended.set()

                nursery.start_soon(run)
                await settle()
                server.server.shutdown()
                await ended.wait()
            assert statuses == [1]
            assert app.farewell is not None
            assert "shutting down" in app.farewell


# /register and /password


def password_prompt(app: FullScreen) -> str:
    return screen(app)[-1]


async def full_screen(port: int, name: str) -> tuple[FullScreen, Client]:
    client = await Client.login(await open_stream("127.0.0.1", port), name)
    return FullScreen(client, ping_interval=0), client


async def test_register_then_password_with_the_password_never_shown() -> None:
    secret, other = "correct horse battery", "staple staple staple"
    async with (
        running_server(db=":memory:") as live,
        trio.open_nursery() as nursery,
    ):
        alice, _ = await full_screen(live.port, "alice")
        nursery.start_soon(alice.run)
        type_text(alice, "/register")
        press(alice, "enter")
        assert password_prompt(alice) == "new password:"
        type_text(alice, secret)
        # Not drawn, not even as stars.
        assert password_prompt(alice) == "new password:"
        press(alice, "enter")
        assert password_prompt(alice) == "the same again:"
        type_text(alice, secret)
        press(alice, "enter")
        await until(lambda: "alice is an account now" in shown(alice))
        assert screen(alice)[-1] == "*>"

        type_text(alice, "/password")
        press(alice, "enter")
        type_text(alice, other)
        press(alice, "enter")
        type_text(alice, other + "!")
        press(alice, "enter")
        assert "the two passwords differ; nothing changed" in shown(alice)
        type_text(alice, "/password")
        press(alice, "enter")
        for _ in range(2):
            type_text(alice, other)
            press(alice, "enter")
        await until(lambda: "the password of alice is changed" in shown(alice))

        type_text(alice, "/register")
        press(alice, "enter")
        for _ in range(2):
            type_text(alice, other)
            press(alice, "enter")
        await until(lambda: "/register refused: already registered" in shown(alice))

        # Never on the screen, never in the input history.
        everything = "\n".join(screen(alice, (200, 60)))
        assert secret not in everything
        assert other not in everything
        press(alice, "up")
        assert screen(alice)[-1] == "*> /register"
        press(alice, "up", "up", "up")
        assert screen(alice)[-1] == "*> /register"
        alice.quit()

        # The new password is the one that logs in now.
        async with trio.open_nursery():
            again = await Client.login(
                await open_stream("127.0.0.1", live.port), "alice", password=other
            )
            await again.aclose()


async def test_a_password_prompt_can_be_cancelled_and_refuses_a_short_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with (
            clocked_server("memory", db=":memory:") as server,
            trio.open_nursery() as nursery,
        ):
            client = await Client.login(await server.open_stream(), "alice")
            alice = FullScreen(client, ping_interval=0)
            nursery.start_soon(alice.run)
            type_text(alice, "/register now")
            press(alice, "enter")
            assert "usage: /register (the password is asked for" in shown(alice)
            type_text(alice, "/register")
            press(alice, "enter")
            type_text(alice, "half")
            press(alice, "esc")
            assert "cancelled; nothing changed" in shown(alice)
            assert screen(alice)[-1] == "*>"
            type_text(alice, "/register")
            press(alice, "enter")
            type_text(alice, "short")
            press(alice, "enter")
            assert "a password has 8 to 256 characters; nothing changed" in shown(alice)
            # A paste goes into the hidden line, never out as a message.
            type_text(alice, "/register")
            press(alice, "enter")
            press(alice, "begin paste", *"pasted password\n", "end paste")
            assert password_prompt(alice) == "new password:"
            press(alice, "enter")
            type_text(alice, "pasted password")
            press(alice, "enter")
            await settle()
            # In memory the server is not on this machine: no password
            # without TLS, and the client says so plainly.
            assert "/register refused: tls required" in shown(alice)
            assert "pasted password" not in "\n".join(screen(alice, (200, 60)))
            nursery.cancel_scope.cancel()
