"""The terminal over a connection that drops: it reconnects, takes its
session back and says so; ``--no-reconnect`` (no *reopen*) exits as
before. The real ChatServer, behind a loopback proxy the test cuts."""

from __future__ import annotations

import argparse
import datetime
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from fakeserver import Breakable
from helpers import STEP_TIMEOUT, LiveServer, running_server, serving

from trichat.client import Backoff, Client, connect, open_client, open_stream
from trichat.client.terminal import (
    EXIT_FAILURE,
    EXIT_OK,
    add_arguments,
    run_session,
)
from trichat.protocol.messages import Message, Pong, Registered
from trichat.server import ChatServer, ServerConfig
from trichat.server.passwords import Hasher

pytestmark = pytest.mark.trio

NOW = datetime.datetime(2024, 5, 17, 12, 0, 1)
PASSWORD = "correct horse battery"
CHEAP = Hasher(memory_kib=8, time_cost=1, parallelism=1)
QUICK = Backoff(first=0.01, factor=1.0, cap=0.01, jitter=0.0)


class Proxy:
    """Forwards loopback connections to a server; ``cut`` drops every link
    at once (a reset towards the client, a close towards the server); after
    it new links wait until ``reopen``, or with ``refusing`` are closed at
    once, as a server that cannot be reached."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.links: set[trio.CancelScope] = set()
        self.open = trio.Event()
        self.open.set()
        self.linked = 0
        self.refusing = False
        self.changed = trio.Event()
        self.swallowing = False
        """Whether what clients send is lost on the way (read, not passed
        on): the kernel took it, the server never gets it."""
        self.swallowed = trio.Event()

    async def serve(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(
            partial(trio.serve_tcp, self._link, 0, host="127.0.0.1")
        )
        port: int = listeners[0].socket.getsockname()[1]
        return port

    def cut(self) -> None:
        self.open = trio.Event()
        for scope in self.links:
            scope.cancel()

    def reopen(self) -> None:
        self.open.set()

    async def wait_linked(self, count: int) -> None:
        """Until *count* links have been made in all."""
        with trio.fail_after(STEP_TIMEOUT):
            while self.linked < count:
                await self.changed.wait()

    async def _link(self, client: trio.SocketStream) -> None:
        if self.refusing:
            await trio.aclose_forcefully(client)
            return
        await self.open.wait()
        with trio.CancelScope() as scope:
            self.links.add(scope)
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.server_port)
                self.linked += 1
                self.changed.set()
                self.changed = trio.Event()
                async with server, trio.open_nursery() as nursery:

                    async def pipe(
                        source: trio.SocketStream, sink: trio.SocketStream
                    ) -> None:
                        with suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            while data := await source.receive_some(65536):
                                if self.swallowing and source is client:
                                    self.swallowed.set()
                                    continue
                                await sink.send_all(data)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(pipe, client, server)
                    nursery.start_soon(pipe, server, client)
            finally:
                self.links.discard(scope)
        await trio.aclose_forcefully(client)


class Screen(io.StringIO):
    """Output that can be waited on."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = trio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self.changed.set()
        self.changed = trio.Event()
        return written

    async def wait_for(self, pattern: str) -> str:
        """Until a line matches *pattern*; that line."""
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                for line in self.getvalue().splitlines():
                    if re.search(pattern, line):
                        return line
                await self.changed.wait()


class Terminal:
    """``run_session`` for alice through the proxy, with typed lines."""

    def __init__(self, *, tty: bool = False) -> None:
        self.tty = tty
        self.out = Screen()
        self.err = Screen()
        self.status: int | None = None
        self.keyboard, self._lines = trio.open_memory_channel[str](0)
        self.ended = trio.Event()

    async def run(self, client: Client, proxy_port: int, *, reconnect: bool) -> None:
        reopen = partial(open_stream, "127.0.0.1", proxy_port) if reconnect else None
        async with self._lines:
            self.status = await run_session(
                client,
                self._lines,
                self.out,
                self.err,
                clock=lambda: NOW,
                ping_interval=0,
                reopen=reopen,
                backoff=QUICK,
                tty=self.tty,
                colour=False,
            )
        self.ended.set()

    def outcome(self) -> int | None:
        """The exit status, None while the session goes on."""
        return self.status


@asynccontextmanager
async def setup(
    *, reconnect: bool = True, tty: bool = False, echo: bool = False
) -> AsyncIterator[tuple[LiveServer, Proxy, Terminal, Client]]:
    """A server with sessions, alice's terminal through a proxy (her
    client with *echo*), and bob connected directly."""
    async with running_server(resume_window=30) as live, trio.open_nursery() as nursery:
        proxy = Proxy(live.port)
        proxy_port = await proxy.serve(nursery)
        alice = await connect("alice", "127.0.0.1", proxy_port, echo=echo)
        assert alice.settings["resume"] == "30"
        bob = await connect("bob", "127.0.0.1", live.port, echo=False)
        terminal = Terminal(tty=tty)
        nursery.start_soon(
            partial(terminal.run, alice, proxy_port, reconnect=reconnect)
        )
        await terminal.out.wait_for("logged in as alice")
        try:
            yield live, proxy, terminal, bob
        finally:
            await bob.aclose()
            nursery.cancel_scope.cancel()


async def wait_for_waiting(live: LiveServer, count: int) -> None:
    """Until the server holds *count* sessions waiting for a resume (it
    signals nothing when a connection drops: this polls, bounded)."""
    with trio.fail_after(STEP_TIMEOUT):
        while live.server.waiting != count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def in_sync(client: Client, token: str) -> None:
    """Until the server answered a ping of *client*: it has taken all that
    *client* sent before."""
    await client.ping(token)
    with trio.fail_after(STEP_TIMEOUT):
        async for event in client:
            if event == Pong(token):
                return


async def test_a_drop_reconnects_resumes_and_shows_the_missed_messages_once() -> None:
    async with setup() as (live, proxy, terminal, bob):
        proxy.cut()
        await wait_for_waiting(live, 1)
        for number in range(3):
            await bob.talk("alice", f"while away {number}")
        await in_sync(bob, "taken")
        await terminal.out.wait_for(
            r"connection lost \(.*\), reconnecting in 0.01 s\.\.\."
        )
        assert terminal.outcome() is None
        proxy.reopen()
        await terminal.out.wait_for("back: 3 messages missed while away")
        await terminal.out.wait_for("bob: while away 2")
        lines = terminal.out.getvalue().splitlines()
        said = [line for line in lines if "bob: while away" in line]
        assert len(said) == 3
        for number, line in enumerate(said):
            assert line.endswith(f" bob: while away {number}")
        back = next(i for i, line in enumerate(lines) if "back:" in line)
        assert back < lines.index(said[0])
        assert terminal.outcome() is None
        assert terminal.err.getvalue() == ""

        # The chat goes on over the new connection, both ways.
        await terminal.keyboard.send("@bob after the drop")
        with trio.fail_after(STEP_TIMEOUT):
            async for event in bob:
                if isinstance(event, Message):
                    assert (event.sender, event.text) == ("alice", "after the drop")
                    break
        await bob.talk("alice", "welcome back")
        await terminal.out.wait_for("bob: welcome back")
        await terminal.keyboard.aclose()
        with trio.fail_after(STEP_TIMEOUT):
            await terminal.ended.wait()
        assert terminal.outcome() == EXIT_OK
        assert (
            sum(
                "bob: while away" in line
                for line in terminal.out.getvalue().splitlines()
            )
            == 3
        )


async def test_a_drop_while_the_server_is_unreachable_keeps_trying() -> None:
    async with setup() as (_live, proxy, terminal, _bob):
        proxy.refusing = True
        proxy.cut()
        await terminal.out.wait_for("connection lost")
        # Attempts that fail are shown and do not end the session.
        linked = proxy.linked
        await terminal.out.wait_for(
            r"still away, reconnecting in 0.01 s\.\.\. \(attempt 2\)"
        )
        assert terminal.outcome() is None
        proxy.refusing = False
        proxy.reopen()
        await proxy.wait_linked(linked + 1)
        await terminal.out.wait_for("back: 0 messages missed while away")
        assert terminal.outcome() is None


async def test_a_session_that_cannot_be_taken_back_says_what_may_be_missing() -> None:
    async with setup() as (_live, proxy, terminal, _bob):
        await terminal.keyboard.send("/join #lunch")
        await terminal.out.wait_for("you joined #lunch")
        async with running_server(resume_window=30) as other:
            # The server "restarts": the proxy now leads to another one,
            # which knows nothing of alice's session.
            proxy.server_port = other.port
            proxy.cut()
            proxy.reopen()
            line = await terminal.out.wait_for("back, but the session was not kept")
            assert "logged in again as alice" in line
            assert "messages may be missing in #lunch, to all and sent to you" in line
            assert terminal.outcome() is None
            await terminal.keyboard.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                await terminal.ended.wait()
        assert terminal.outcome() == EXIT_OK


async def test_a_server_that_shuts_down_and_comes_back_is_reconnected_to() -> None:
    async with setup() as (live, proxy, terminal, _bob):
        async with running_server(resume_window=30) as other:
            # Connections made from now on reach the server "restarted".
            proxy.server_port = other.port
            live.server.shutdown()
            await terminal.out.wait_for("! the server is shutting down")
            line = await terminal.out.wait_for("back, but the session was not kept")
            assert "logged in again as alice" in line
            assert terminal.outcome() is None
            await terminal.keyboard.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                await terminal.ended.wait()
        assert terminal.outcome() == EXIT_OK
        assert terminal.err.getvalue() == ""


async def test_when_only_direct_messages_may_be_missing_it_says_so_plainly() -> None:
    async with setup() as (_live, proxy, terminal, bob):
        await terminal.keyboard.send("/join #lunch")
        await terminal.out.wait_for("you joined #lunch")
        await bob.talk("alice", "a first word")  # alice has an id to fill from
        await terminal.out.wait_for("bob: a first word")
        # The restarted server keeps history: it fills the room and "*",
        # but keeps no direct messages of a guest.
        async with running_server(resume_window=30, db=":memory:") as other:
            proxy.server_port = other.port
            proxy.cut()
            proxy.reopen()
            line = await terminal.out.wait_for("back, but the session was not kept")
            assert line.endswith("; messages sent to you directly may be missing")
            await terminal.keyboard.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                await terminal.ended.wait()


@pytest.mark.parametrize("tty", [True, False])
async def test_a_line_lost_on_the_way_in_goes_again_after_the_resume(
    tty: bool,
) -> None:
    # The line left alice's client (the kernel took it) but never reached
    # the server. The resume's replay, which holds every message the
    # server took (her own too, with echo), does not have it: it goes
    # again, once, and lines the server did take are not sent twice.
    async def said_to_bob() -> str:
        with trio.fail_after(STEP_TIMEOUT):
            async for event in bob:
                if isinstance(event, Message):
                    return event.text
        raise AssertionError("bob's connection ended")

    async with setup(tty=tty, echo=True) as (live, proxy, terminal, bob):
        await terminal.keyboard.send("@bob taken")
        assert await said_to_bob() == "taken"
        await terminal.keyboard.send("@nobody refused")
        await terminal.out.wait_for("no such user: nobody")
        proxy.swallowing = True
        await terminal.keyboard.send("@bob into the void")
        with trio.fail_after(STEP_TIMEOUT):
            await proxy.swallowed.wait()
        proxy.cut()
        await wait_for_waiting(live, 1)
        # Typed while away: goes once back, and makes #tea the target,
        # which the line sent again does not change back to bob.
        await terminal.keyboard.send("/join #tea")
        proxy.swallowing = False
        proxy.reopen()
        await terminal.out.wait_for("back: 0 messages missed while away")
        assert await said_to_bob() == "into the void"
        await terminal.keyboard.send("to the room")
        await terminal.keyboard.send("@bob last")
        assert await said_to_bob() == "last"
        assert terminal.out.getvalue().count("no such user: nobody") == 1
        if tty:
            await terminal.out.wait_for("you -> bob: into the void")


async def test_a_line_that_may_not_have_arrived_is_shown_when_the_session_is_lost() -> (
    None
):
    # The line never reached the server, and the session cannot be taken
    # back (the server "restarted"): whether it arrived cannot be known,
    # so it is not sent again, and the user is told.
    async with setup(echo=True) as (_live, proxy, terminal, _bob):
        proxy.swallowing = True
        await terminal.keyboard.send("@bob into the void")
        with trio.fail_after(STEP_TIMEOUT):
            await proxy.swallowed.wait()
        async with running_server(resume_window=30) as other:
            proxy.server_port = other.port
            proxy.cut()
            proxy.swallowing = False
            proxy.reopen()
            await terminal.out.wait_for("back, but the session was not kept")
            line = await terminal.out.wait_for("may not have been delivered")
            assert line.endswith("may not have been delivered, to bob: into the void")
            await terminal.keyboard.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                await terminal.ended.wait()


async def test_without_reconnecting_a_drop_ends_the_session() -> None:
    async with setup(reconnect=False) as (_live, proxy, terminal, _bob):
        proxy.cut()
        with trio.fail_after(STEP_TIMEOUT):
            await terminal.ended.wait()
        assert terminal.outcome() == EXIT_FAILURE
        assert terminal.err.getvalue().startswith("trichat: ")
        assert "reconnecting" not in terminal.out.getvalue()


async def test_no_reconnect_is_an_option() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["alice"]).no_reconnect is False
    assert parser.parse_args(["alice", "--no-reconnect"]).no_reconnect is True


async def test_on_a_terminal_the_prompt_comes_back_after_each_connection_line() -> None:
    async with setup(tty=True) as (live, proxy, terminal, bob):
        await terminal.keyboard.send("@bob hi")
        await terminal.out.wait_for("you -> bob: hi")
        proxy.cut()
        await wait_for_waiting(live, 1)
        await bob.talk("alice", "while away")
        await in_sync(bob, "taken")
        proxy.reopen()
        await terminal.out.wait_for("bob: while away")
        screen = terminal.out.getvalue()
        # Each line clears the prompt (and what is typed after it) and
        # shows the prompt again below it, with the current target.
        for shown in ("! connection lost", "* back: 1 message missed"):
            start = screen.index(shown)
            before = screen.rindex("\r\x1b[K", 0, start)
            assert "\n" not in screen[before:start]
            assert screen[screen.index("\n", start) + 1 :].startswith("bob> ")
        assert terminal.outcome() is None


async def test_a_line_typed_as_the_connection_breaks_goes_out_once_back() -> None:
    # The write fails before anything has been read that says the
    # connection is gone: the session does not end, and the line is sent
    # over the resumed session.
    async with (
        running_server(resume_window=30) as live,
        trio.open_nursery() as nursery,
    ):
        proxy = Proxy(live.port)
        proxy_port = await proxy.serve(nursery)
        breakable = Breakable(await open_stream("127.0.0.1", proxy_port))
        alice = await Client.login(breakable, "alice", echo=False)
        bob = await connect("bob", "127.0.0.1", live.port, echo=False)
        terminal = Terminal()
        nursery.start_soon(partial(terminal.run, alice, proxy_port, reconnect=True))
        try:
            await terminal.out.wait_for("logged in as alice")
            breakable.broken = True
            await terminal.keyboard.send("@bob typed as it broke")
            await terminal.out.wait_for("connection lost")
            await terminal.out.wait_for("back: 0 messages missed while away")
            with trio.fail_after(STEP_TIMEOUT):
                async for event in bob:
                    if isinstance(event, Message):
                        said = (event.sender, event.text)
                        assert said == ("alice", "typed as it broke")
                        break
            assert terminal.outcome() is None
            assert terminal.err.getvalue() == ""
            await terminal.keyboard.aclose()
            with trio.fail_after(STEP_TIMEOUT):
                await terminal.ended.wait()
            assert terminal.outcome() == EXIT_OK
        finally:
            await bob.aclose()
            nursery.cancel_scope.cancel()


async def test_an_account_whose_session_ended_logs_in_again_with_its_password(
    tmp_path: Path,
) -> None:
    config = ServerConfig(port=0, db=str(tmp_path / "t.db"), resume_window=0.5)
    async with (
        serving(ChatServer(config, hasher=CHEAP)) as live,
        trio.open_nursery() as nursery,
    ):
        proxy = Proxy(live.port)
        proxy_port = await proxy.serve(nursery)
        async with open_client("alice", port=live.port) as first:
            await first.register(PASSWORD)
            with trio.fail_after(STEP_TIMEOUT):
                async for event in first:
                    if isinstance(event, Registered):
                        break
            await first.exit()
        alice = await connect(
            "alice", "127.0.0.1", proxy_port, password=PASSWORD, echo=False
        )
        terminal = Terminal()
        nursery.start_soon(partial(terminal.run, alice, proxy_port, reconnect=True))
        try:
            await terminal.out.wait_for("logged in as alice")
            proxy.cut()
            await wait_for_waiting(live, 1)
            # The window passes while the proxy holds the next attempt: the
            # session has ended when the attempt gets through.
            await wait_for_waiting(live, 0)
            proxy.reopen()
            line = await terminal.out.wait_for("back, but the session was not kept")
            assert "logged in again as alice" in line
            assert terminal.outcome() is None
            # Logged in for real: a message to her arrives.
            async with open_client("bob", port=live.port, echo=False) as bob:
                await bob.talk("alice", "welcome back")
                await terminal.out.wait_for("bob: welcome back")
            assert PASSWORD not in terminal.out.getvalue()
            assert terminal.err.getvalue() == ""
        finally:
            nursery.cancel_scope.cancel()
