"""The server's clocks: login timeout, pings, and flood control over time.

Every test runs on a MockClock that jumps to the next deadline whenever
every task is waiting, so a 10 s timeout costs no real time; and every test
runs twice, its clients reaching the server over in-memory streams
(``ChatServer.serve_connection``) and over loopback sockets, as users do
(helpers.SOCKET_AUTOJUMP says how the clock stays deterministic there).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from helpers import (
    TRANSPORTS,
    ClockedServer,
    LineClient,
    autojump_clock,
    clocked_server,
    read_until_closed_while,
)
from trio.testing import MockClock

from trichat.server import ChatServer

# Virtual seconds; generous, since waiting costs nothing.
STEP_TIMEOUT = 600.0


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(transport: str) -> MockClock:
    """The test's clock (pytest-trio runs a test on the Clock it is given)."""
    return autojump_clock(transport)


class Client(LineClient):
    """A LineClient whose steps are bounded in virtual time.

    With *answer_pings*, ``read_line`` answers the server's ``ping|TOKEN``
    itself and does not return it, as a well-behaved client would.
    ``last_sent`` is when it last sent something: the server reads it at
    that (virtual) time, so its ping interval starts then.
    """

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = False) -> None:
        super().__init__(stream)
        self.answer_pings = answer_pings
        self.last_sent = trio.current_time()

    async def send_raw(self, data: bytes) -> None:
        self.last_sent = trio.current_time()
        await super().send_raw(data)

    async def send(self, line: str | bytes) -> None:
        self.last_sent = trio.current_time()
        await super().send(line)

    async def read_line(self) -> str:
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                text = await self._next_line()
                if self.answer_pings and text.startswith("ping|"):
                    await self.send("pong|" + text.removeprefix("ping|"))
                    continue
                return text

    async def read_until_closed(self) -> list[str]:
        """Every line until the server closes (a reset after its last
        frame counts as closing); then close our end too."""
        with trio.fail_after(STEP_TIMEOUT):
            try:
                while data := await self.stream.receive_some(65536):
                    self._buffer += data
            except trio.BrokenResourceError:
                pass
        await self.stream.aclose()
        return self._lines_at_close()


class Served:
    """A server on the test's clock, and how its clients connect."""

    def __init__(self, clocked: ClockedServer) -> None:
        self.clocked = clocked
        self.server: ChatServer = clocked.server

    async def connect(self, *, answer_pings: bool = False) -> Client:
        stream = await self.clocked.open_stream()
        return Client(stream, answer_pings=answer_pings)

    async def login(self, name: str, *, answer_pings: bool = False) -> Client:
        client = await self.connect(answer_pings=answer_pings)
        await client.login(name)
        return client

    async def two_users(
        self, first: str, second: str, *, first_answers_pings: bool = False
    ) -> tuple[Client, Client]:
        """*first* and *second* logged in, in that order; each heard of the
        other."""
        one = await self.login(first, answer_pings=first_answers_pings)
        two = await self.login(second)
        await two.expect(f"login|{first}")
        await one.expect(f"login|{second}")
        return one, two


@asynccontextmanager
async def chat_server(transport: str, **config: Any) -> AsyncIterator[Served]:
    async with clocked_server(transport, **config) as clocked:
        yield Served(clocked)


async def settle() -> None:
    """Wait until every task, the server's included, is blocked."""
    await trio.testing.wait_all_tasks_blocked()


def error_code(line: str) -> str:
    assert line.startswith("error|"), line
    return line.split("|")[1]


# -- login timeout -------------------------------------------------------------


async def test_silent_client_gets_login_timeout(
    transport: str, clock: MockClock
) -> None:
    async with chat_server(transport, login_timeout=10) as live:
        start = trio.current_time()
        client = await live.connect()
        lines = await client.read_until_closed()
        assert [error_code(line) for line in lines] == ["login-timeout"]
        assert trio.current_time() - start == 10
        await settle()
        assert live.server.connections == 0


async def test_login_in_time_cancels_the_timeout(
    transport: str, clock: MockClock
) -> None:
    async with chat_server(transport, login_timeout=10, ping_interval=0) as live:
        client = await live.connect()
        await trio.sleep(9.5)
        await client.login("alice")
        await trio.sleep(100)
        assert await client.pong_after("still-here") == []
        await settle()
        assert live.server.connections == 1


async def test_failed_logins_do_not_extend_the_timeout(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, login_timeout=10) as live:
        holder = await live.login("alice")
        start = trio.current_time()
        client = await live.connect()
        for _ in range(5):
            await client.send("login|ALICE")
            assert error_code(await client.read_line()) == "name-taken"
            await client.send("login|bad name")
            assert error_code(await client.read_line()) == "bad-name"
            await trio.sleep(1)
        assert [error_code(x) for x in await client.read_until_closed()] == [
            "login-timeout"
        ]
        assert trio.current_time() - start == 10
        assert await holder.pong_after("a") == []


async def test_pings_before_login_do_not_extend_the_timeout(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, login_timeout=10) as live:
        start = trio.current_time()
        client = await live.connect()
        for n in range(9):
            assert await client.pong_after(f"p{n}") == []
            await trio.sleep(1)
        lines = await client.read_until_closed()
        assert [error_code(line) for line in lines] == ["login-timeout"]
        assert trio.current_time() - start == 10


async def test_slowloris_login_never_holds_the_slot(
    transport: str,
    clock: MockClock,
) -> None:
    """A login line trickled one byte a second, taking longer than the login
    timeout, is cut off at the timeout; the slot is free again."""
    async with chat_server(transport, login_timeout=5, max_clients=1) as live:
        start = trio.current_time()
        client = await live.connect()

        async def trickle() -> None:
            for byte in b"login|slowpoke\n":
                await client.send_raw(bytes([byte]))
                await trio.sleep(1)

        lines = await read_until_closed_while(client, trickle)
        closed_at = trio.current_time()
        assert [error_code(line) for line in lines] == ["login-timeout"]
        # The server closes at the timeout, plus at most its close_timeout
        # spent flushing the error and waiting for the client to hang up.
        assert closed_at - start <= 5 + live.server.config.close_timeout
        await settle()
        assert live.server.connections == 0
        # The one slot is free for someone else.
        other = await live.login("bob")
        assert await other.pong_after("x") == []


async def test_endless_trickle_without_newline_is_cut_off(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, login_timeout=5) as live:
        start = trio.current_time()
        client = await live.connect()

        async def trickle() -> None:
            while True:
                await client.send_raw(b"x")
                await trio.sleep(0.25)

        lines = await read_until_closed_while(client, trickle)
        assert [error_code(line) for line in lines] == ["login-timeout"]
        assert trio.current_time() - start <= 5 + live.server.config.close_timeout
        await settle()
        assert live.server.connections == 0


# -- pings ---------------------------------------------------------------------


async def test_idle_client_gets_pinged_after_the_interval(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, ping_interval=30, ping_timeout=10) as live:
        client = await live.login("alice")
        since = trio.current_time()
        line = await client.read_line()
        assert line.startswith("ping|")
        token = line.removeprefix("ping|")
        assert token
        assert trio.current_time() - since == 30


async def test_any_traffic_postpones_the_ping(transport: str, clock: MockClock) -> None:
    async with chat_server(transport, ping_interval=30, ping_timeout=10) as live:
        client = await live.login("alice")
        for n in range(5):
            await trio.sleep(20)
            assert await client.pong_after(f"b{n}") == []
        since = trio.current_time()
        assert (await client.read_line()).startswith("ping|")
        assert trio.current_time() - since == 30


async def collect(client: Client, until: str, lines: list[str]) -> None:
    """Read *client*'s lines into *lines* until *until* arrives."""
    while (line := await client.read_line()) != until:
        lines.append(line)


async def test_pong_keeps_the_client(transport: str, clock: MockClock) -> None:
    async with chat_server(transport, ping_interval=30, ping_timeout=10) as live:
        alice, bob = await live.two_users("alice", "bob", first_answers_pings=True)
        heard: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, alice, "talk|bob|alice|still here", heard)
            tokens = []
            for _ in range(4):
                # (Not the time now: the presence frames that two_users
                # waited for may come a little after bob's login.)
                since = bob.last_sent
                line = await bob.read_line()
                assert line.startswith("ping|")
                assert trio.current_time() - since == 30
                tokens.append(line.removeprefix("ping|"))
                await trio.sleep(9)  # answer late, but within ping_timeout
                await bob.send(f"pong|{tokens[-1]}")
            assert len(set(tokens)) == len(tokens)
            # Four intervals and then some: both still online.
            await bob.send("talk|alice|still here")
        assert heard == []  # in particular no exit|bob
        await settle()
        assert live.server.connections == 2


async def test_any_frame_counts_as_a_sign_of_life(
    transport: str, clock: MockClock
) -> None:
    """After a ping, any frame (here a pong with another token) proves the
    client alive; it is dropped only after going quiet again for a whole
    interval and timeout."""
    async with chat_server(transport, ping_interval=30, ping_timeout=10) as live:
        alice, bob = await live.two_users("alice", "bob", first_answers_pings=True)
        heard: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, alice, "exit|bob", heard)
            assert (await bob.read_line()).startswith("ping|")
            await trio.sleep(5)
            await bob.send("pong|not-the-token")
            since = trio.current_time()
            lines = await bob.read_until_closed()
            assert len(lines) == 1
            assert lines[0].startswith("ping|")
            assert trio.current_time() - since == 30 + 10
        assert heard == []


async def test_silent_client_is_dropped_after_ping_timeout(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, ping_interval=30, ping_timeout=10) as live:
        alice, bob = await live.two_users("alice", "bob", first_answers_pings=True)
        heard: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, alice, "exit|bob", heard)
            since = bob.last_sent  # his login
            lines = await bob.read_until_closed()
            assert len(lines) == 1
            assert lines[0].startswith("ping|")
            assert trio.current_time() - since == 30 + 10
        assert heard == []
        await settle()
        assert live.server.connections == 1
        # Alice answered every ping and is still here.
        assert await alice.pong_after("ok") == []


# -- flood control -------------------------------------------------------------


async def test_burst_then_rate(transport: str, clock: MockClock) -> None:
    async with chat_server(transport, rate=10, burst=5, flood_grace=3) as live:
        client = await live.login("alice")
        await trio.sleep(10)  # the login took a token; refill
        # The bucket is full: a burst of 5 frames passes, the 6th does not.
        await client.send_raw(b"".join(f"ping|{n}\n".encode() for n in range(6)))
        lines = [await client.read_line() for _ in range(6)]
        assert lines[:5] == [f"pong|{n}" for n in range(5)]
        assert error_code(lines[5]) == "rate-limited"
        # Refilled at 10 frames a second, capped at the burst.
        await trio.sleep(10)
        await client.send_raw(b"".join(f"ping|r{n}\n".encode() for n in range(6)))
        lines = [await client.read_line() for _ in range(6)]
        assert lines[:5] == [f"pong|r{n}" for n in range(5)]
        assert error_code(lines[5]) == "rate-limited"
        await trio.sleep(0.15)  # one and a half tokens
        await client.send_raw(b"ping|one\nping|two\n")
        assert await client.read_line() == "pong|one"
        assert error_code(await client.read_line()) == "rate-limited"


async def test_steady_sender_at_the_rate_is_never_limited(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, rate=10, burst=5, flood_grace=3) as live:
        alice, bob = await live.two_users("alice", "bob")
        for n in range(200):  # 20 s at 10 frames a second
            await bob.send(f"talk|alice|{n}")
            await trio.sleep(0.1)
        for n in range(200):
            assert await alice.read_line() == f"talk|bob|alice|{n}"
        await trio.sleep(1)
        assert await bob.pong_after("end") == []


async def test_persistent_flooder_is_closed_after_grace(
    transport: str,
    clock: MockClock,
) -> None:
    async with chat_server(transport, rate=10, burst=5, flood_grace=3) as live:
        alice, flooder = await live.two_users("alice", "flood")
        start = trio.current_time()

        async def flood() -> None:
            for n in itertools.count():
                await flooder.send(f"talk|alice|{n}")
                await trio.sleep(0.05)  # 20 frames a second, twice the rate

        lines = await read_until_closed_while(flooder, flood)
        closed_at = trio.current_time()
        codes = [error_code(line) for line in lines]
        assert codes
        assert set(codes) == {"rate-limited"}
        assert "closing" in lines[-1]
        # First refusal after the 5-frame burst plus what the rate refills
        # (about 0.5 s), then flood_grace of refusals, then the close.
        assert 3 <= closed_at - start <= 3 + 1 + live.server.config.close_timeout
        # Alice got what passed the limiter, in order, then the exit.
        received = []
        while (line := await alice.read_line()) != "exit|flood":
            received.append(line)
        numbers = [int(line.rsplit("|", 1)[1]) for line in received]
        assert numbers == sorted(numbers)  # in order, each at most once
        assert len(numbers) >= 5
        assert len(set(numbers)) == len(numbers)
        assert await alice.pong_after("ok") == []


async def test_bursty_but_moderate_sender_is_not_closed(
    transport: str,
    clock: MockClock,
) -> None:
    """Short bursts over the rate, with pauses to refill the bucket, are
    refused frame by frame but never count as a persistent flood."""
    async with chat_server(transport, rate=10, burst=5, flood_grace=3) as live:
        client = await live.login("alice")
        await trio.sleep(10)  # the login took a token; refill
        for round_ in range(10):  # 30 s, ten times the grace
            frames = b"".join(f"ping|{round_}-{n}\n".encode() for n in range(8))
            await client.send_raw(frames)
            lines = [await client.read_line() for _ in range(8)]
            assert lines[:5] == [f"pong|{round_}-{n}" for n in range(5)]
            assert [error_code(line) for line in lines[5:]] == ["rate-limited"] * 3
            await trio.sleep(3)
        assert await client.pong_after("alive") == []
