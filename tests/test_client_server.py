"""The client library (``open_client``, ``connect``, ``Client``) against a
real ChatServer running in the test's own Trio run, over TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from helpers import STEP_TIMEOUT, running_server

from trichat.client import Client, LoginRefused, connect, open_client
from trichat.protocol.messages import (
    MAX_NAME,
    MAX_TEXT,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Login,
    Ping,
    Pong,
    ServerMessage,
)


async def next_message(client: Client) -> ServerMessage:
    """The next frame the client yields, within STEP_TIMEOUT."""
    with trio.fail_after(STEP_TIMEOUT):
        return await client.__anext__()


async def next_chat(client: Client) -> ServerMessage:
    """The next frame that is not a ping or pong."""
    while True:
        message = await next_message(client)
        if not isinstance(message, Ping | Pong):
            return message


async def sync(client: Client, token: str = "sync") -> list[ServerMessage]:
    """Ping the server and return what the client yields before the pong.

    The server answers frames in order, so whatever it sent this client
    before it read the ping comes first.
    """
    await client.ping(token)
    before: list[ServerMessage] = []
    while (message := await next_message(client)) != Pong(token):
        before.append(message)
    return before


@asynccontextmanager
async def logged_in(port: int, *names: str) -> AsyncIterator[tuple[Client, ...]]:
    """Clients logged in as *names*, one after the other; each has read the
    roster it was sent and the logins of those after it."""
    clients: list[Client] = []
    try:
        for name in names:
            with trio.fail_after(STEP_TIMEOUT):
                client = await connect(name, port=port)
            roster = await sync(client, "roster")
            assert len(roster) == len(clients)
            assert set(roster) == {Login(earlier.name) for earlier in clients}
            for earlier in clients:
                assert await next_chat(earlier) == Login(name)
            clients.append(client)
        for client in clients:
            others = [name for name in names if name != client.name]
            assert sorted(client.online) == sorted(others)
        yield tuple(clients)
    finally:
        for client in clients:
            await client.aclose()


async def test_login_is_acknowledged_and_the_roster_fills_in() -> None:
    async with (
        running_server() as live,
        open_client("Zoë", port=live.port) as zoe,
    ):
        assert zoe.name == "Zoë"
        assert not zoe.online
        async with open_client("bob", port=live.port) as bob:
            assert bob.name == "bob"
            # The newcomer learns who was there; the others learn of him.
            assert await next_message(bob) == Login("Zoë")
            assert bob.online == ("Zoë",)
            assert await next_message(zoe) == Login("bob")
            assert zoe.online == ("bob",)
            await bob.exit()
        assert await next_message(zoe) == Exit("bob")
        assert not zoe.online


async def test_a_direct_message_is_delivered_to_its_receiver_only() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob", "carol") as (alice, bob, carol),
    ):
        await alice.talk("bob", "hi | how are you?")
        assert await next_chat(bob) == Delivery("alice", "bob", "hi | how are you?")
        # The server has handled alice's talk before she reads this pong.
        assert await sync(alice) == []
        assert await sync(carol) == []


async def test_a_broadcast_reaches_everyone_else() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob", "carol") as (alice, bob, carol),
    ):
        await alice.broadcast("lunch?")
        for receiver in (bob, carol):
            delivery = await next_chat(receiver)
            assert delivery == Delivery("alice", "*", "lunch?")
            assert isinstance(delivery, Delivery)
            assert delivery.is_broadcast
        assert await sync(alice) == []


async def test_talking_to_nobody_is_an_error_and_the_connection_stays() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob") as (alice, bob),
    ):
        await alice.talk("carol", "anyone?")
        assert await next_chat(alice) == Error(ErrorCode.NO_SUCH_USER, "carol")
        await alice.talk("bob", "still here")
        assert await next_chat(bob) == Delivery("alice", "bob", "still here")


@pytest.mark.parametrize(
    "taken_as", ["alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45"]
)
async def test_a_taken_name_is_refused(taken_as: str) -> None:
    async with (
        running_server() as live,
        open_client("alice", port=live.port) as alice,
    ):
        with trio.fail_after(STEP_TIMEOUT), pytest.raises(LoginRefused) as refused:
            await connect(taken_as, port=live.port)
        assert refused.value.error.code is ErrorCode.NAME_TAKEN
        # The refusal told nobody anything.
        assert await sync(alice) == []


async def test_after_a_refusal_the_same_stream_logs_in_again() -> None:
    async with (
        running_server() as live,
        open_client("alice", port=live.port) as alice,
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", live.port)
        async with stream:
            with trio.fail_after(STEP_TIMEOUT):
                with pytest.raises(LoginRefused) as refused:
                    await Client.login(stream, "Alice")
                assert refused.value.error.code is ErrorCode.NAME_TAKEN
                bob = await Client.login(stream, "bob")
            assert bob.name == "bob"
            assert await next_chat(bob) == Login("alice")
            assert await next_chat(alice) == Login("bob")


class RenamingStream(trio.abc.Stream):
    """A stream that sends ``login|BAD`` in place of ``login|GOOD``: a server
    stricter than the client, as far as the client can tell."""

    def __init__(self, stream: trio.abc.Stream, good: str, bad: str) -> None:
        self.stream = stream
        self.good = f"login|{good}\n".encode()
        self.bad = f"login|{bad}\n".encode()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data) == self.good:
            data = self.bad
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.parametrize("bad", ["#ops", "*", "x" * (MAX_NAME + 1), "no spaces"])
async def test_a_name_the_server_refuses_raises_login_refused(bad: str) -> None:
    async with running_server() as live:
        tcp = await trio.open_tcp_stream("127.0.0.1", live.port)
        async with RenamingStream(tcp, "placeholder", bad) as stream:
            with trio.fail_after(STEP_TIMEOUT):
                with pytest.raises(LoginRefused) as refused:
                    await Client.login(stream, "placeholder")
                assert refused.value.error.code is ErrorCode.BAD_NAME
                # bad-name keeps the connection open for another try.
                client = await Client.login(stream, "alice")
            assert client.name == "alice"
            assert await sync(client) == []


async def test_a_name_the_protocol_refuses_is_not_sent() -> None:
    # connect() checks the name before it opens a connection: with nothing
    # listening on the port, it still fails on the name, not the connection.
    with pytest.raises(ValueError, match="may not contain ' '"):
        await connect("no spaces", port=1)


async def test_the_client_answers_the_servers_pings_by_itself() -> None:
    interval, timeout = 0.1, 0.2
    async with (
        running_server(ping_interval=interval, ping_timeout=timeout) as live,
        open_client("alice", port=live.port) as alice,
    ):
        start = trio.current_time()
        pings: list[str] = []
        while len(pings) < 4:
            message = await next_message(alice)
            assert isinstance(message, Ping), message
            pings.append(message.token)
        # Unanswered, the first ping would have dropped the client one ping
        # timeout after it was sent; answered, the pings go on.
        assert trio.current_time() - start > interval + timeout
        assert len(set(pings)) == 4
        assert await sync(alice, "alive") == []


async def test_a_server_shutdown_is_yielded_then_iteration_ends() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob") as (alice, bob),
    ):
        live.server.shutdown()
        for client in (alice, bob):
            with trio.fail_after(STEP_TIMEOUT):
                rest = [message async for message in client]
            assert rest == [Error(ErrorCode.SHUTTING_DOWN, "the server is stopping")]
            # Iterating again still ends at once.
            assert [message async for message in client] == []


@pytest.mark.parametrize(
    ("sender", "receiver", "char"),
    [
        pytest.param("alice", "bob", "é", id="2-byte"),
        pytest.param("alice", "bob", "€", id="3-byte"),
        # The longest frame a server can send: the longest names and text,
        # every character 4 bytes in UTF-8.
        pytest.param(
            "\U0001d400" * MAX_NAME, "\U0001d401" * MAX_NAME, "\U0001f600", id="max"
        ),
    ],
)
async def test_a_long_multibyte_talk_is_relayed_whole(
    sender: str, receiver: str, char: str
) -> None:
    text = char * MAX_TEXT
    max_line = 1 << 15
    async with (
        running_server(max_line=max_line) as live,
        logged_in(live.port, sender, receiver) as (source, sink),
    ):
        source.max_frame = max_line
        await source.talk(receiver, text)
        delivery = await next_chat(sink)
        assert delivery == Delivery(sender, receiver, text)
        relayed = f"talk|{sender}|{receiver}|{text}\n".encode()
        assert len(relayed) > 4096


async def test_a_bot_answers_what_it_is_sent() -> None:
    bot_done = trio.Event()

    async def bot(client: Client) -> None:
        async for message in client:
            match message:
                case Delivery(sender, _, text) if message.is_broadcast:
                    await client.broadcast(f"{sender} said {text!r} to everyone")
                case Delivery(sender, _, text):
                    await client.talk(sender, text.upper())
        bot_done.set()

    async with (
        running_server() as live,
        logged_in(live.port, "bot", "alice", "bob") as (robot, alice, bob),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(bot, robot)
        await alice.talk("bot", "hello")
        await bob.talk("bot", "hi there")
        assert await next_chat(alice) == Delivery("bot", "alice", "HELLO")
        assert await next_chat(bob) == Delivery("bot", "bob", "HI THERE")
        await alice.broadcast("anyone?")
        assert await next_chat(bob) == Delivery("alice", "*", "anyone?")
        answer = Delivery("bot", "*", "alice said 'anyone?' to everyone")
        assert await next_chat(alice) == answer
        assert await next_chat(bob) == answer
        # The bot's loop ends when the server shuts down.
        live.server.shutdown()
        with trio.fail_after(STEP_TIMEOUT):
            await bot_done.wait()
