"""The client library (``open_client``, ``connect``, ``Client``) against a
real ChatServer running in the test's own Trio run, over TCP: protocol 2
(the client's default) and 1, rooms, and the limits a server sets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from helpers import STEP_TIMEOUT, running_server

from trichat.client import (
    Client,
    Event,
    LoginRefused,
    RoomList,
    connect,
    open_client,
)
from trichat.protocol.messages import (
    MAX_NAME,
    MAX_TEXT,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Joined,
    Login,
    Message,
    Parted,
    Ping,
    Pong,
    RoomInfo,
    format_time,
)


def said(event: Event) -> tuple[str, str, str]:
    """Who said what to whom in a delivery of either protocol version."""
    assert isinstance(event, Delivery | Message), event
    return event.sender, event.to, event.text


async def next_message(client: Client) -> Event:
    """The next frame the client yields, within STEP_TIMEOUT."""
    with trio.fail_after(STEP_TIMEOUT):
        return await client.__anext__()


async def next_chat(client: Client) -> Event:
    """The next frame that is not a ping or pong."""
    while True:
        message = await next_message(client)
        if not isinstance(message, Ping | Pong):
            return message


async def sync(client: Client, token: str = "sync") -> list[Event]:
    """Ping the server and return what the client yields before the pong.

    The server answers frames in order, so whatever it sent this client
    before it read the ping comes first.
    """
    await client.ping(token)
    before: list[Event] = []
    while (message := await next_message(client)) != Pong(token):
        before.append(message)
    return before


@asynccontextmanager
async def logged_in(
    port: int, *names: str, version: int = 2
) -> AsyncIterator[tuple[Client, ...]]:
    """Clients logged in as *names* with protocol *version*, one after the
    other; each has read the roster it was sent and the logins of those
    after it."""
    clients: list[Client] = []
    try:
        for name in names:
            with trio.fail_after(STEP_TIMEOUT):
                client = await connect(name, port=port, version=version)
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
        delivered = await next_chat(bob)
        assert said(delivered) == ("alice", "bob", "hi | how are you?")
        # alice gets her message back (echo), with the same id and time.
        assert await sync(alice) == [delivered]
        assert await sync(carol) == []


async def test_a_broadcast_reaches_everyone_else() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob", "carol") as (alice, bob, carol),
    ):
        await alice.broadcast("lunch?")
        echo = await next_chat(alice)
        assert said(echo) == ("alice", "*", "lunch?")
        for receiver in (bob, carol):
            assert await next_chat(receiver) == echo
        assert isinstance(echo, Message)
        assert echo.is_broadcast
        assert await sync(alice) == []


async def test_talking_to_nobody_is_an_error_and_the_connection_stays() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob") as (alice, bob),
    ):
        await alice.talk("carol", "anyone?")
        assert await next_chat(alice) == Error(ErrorCode.NO_SUCH_USER, "carol")
        await alice.talk("bob", "still here")
        assert said(await next_chat(bob)) == ("alice", "bob", "still here")


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
        # The client takes the server's limit from its answer to hello.
        assert source.max_frame == max_line
        await source.talk(receiver, text)
        delivery = await next_chat(sink)
        assert said(delivery) == (sender, receiver, text)
        assert isinstance(delivery, Message)
        relayed = f"msg|{delivery.id}|{format_time(delivery.time)}|"
        relayed += f"{sender}|{receiver}|{text}\n"
        assert len(relayed.encode()) > 4096


async def test_a_bot_answers_what_it_is_sent() -> None:
    bot_done = trio.Event()

    async def bot(client: Client) -> None:
        async for message in client:
            match message:
                case Message() if client.is_own(message):
                    pass
                case Message(sender=sender, text=text) if message.is_broadcast:
                    await client.broadcast(f"{sender} said {text!r} to everyone")
                case Message(sender=sender, text=text):
                    await client.talk(sender, text.upper())
        bot_done.set()

    async with (
        running_server() as live,
        logged_in(live.port, "bot", "alice", "bob") as (robot, alice, bob),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(bot, robot)
        await alice.talk("bot", "hello")
        assert said(await next_chat(alice)) == ("alice", "bot", "hello")
        assert said(await next_chat(alice)) == ("bot", "alice", "HELLO")
        await bob.talk("bot", "hi there")
        assert said(await next_chat(bob)) == ("bob", "bot", "hi there")
        assert said(await next_chat(bob)) == ("bot", "bob", "HI THERE")
        await alice.broadcast("anyone?")
        assert said(await next_chat(alice)) == ("alice", "*", "anyone?")
        assert said(await next_chat(bob)) == ("alice", "*", "anyone?")
        answer = ("bot", "*", "alice said 'anyone?' to everyone")
        assert said(await next_chat(alice)) == answer
        assert said(await next_chat(bob)) == answer
        # The bot's loop ends when the server shuts down.
        live.server.shutdown()
        with trio.fail_after(STEP_TIMEOUT):
            await bot_done.wait()


# Protocol 2 and 1


async def test_hello_gives_the_servers_settings_and_limits() -> None:
    async with (
        running_server(max_line=512, max_rooms=7) as live,
        open_client("alice", port=live.port) as alice,
    ):
        assert (alice.version, alice.echo) == (2, True)
        assert alice.settings["max-line"] == "512"
        assert alice.settings["rooms"] == "7"
        assert alice.settings["presence"] == "global"
        assert alice.settings["server"].startswith("trichat/")
        assert (alice.max_frame, alice.max_text) == (512, MAX_TEXT)


async def test_a_message_over_the_servers_line_limit_is_not_sent() -> None:
    # Sent, it would have closed the connection (too-long).
    async with (
        running_server(max_line=512) as live,
        logged_in(live.port, "alice", "bob") as (alice, bob),
    ):
        with pytest.raises(ValueError, match="at most 512"):
            await alice.talk("bob", "x" * 600)
        await alice.talk("bob", "x" * 400)
        assert said(await next_chat(bob)) == ("alice", "bob", "x" * 400)
        assert len(await sync(alice)) == 1  # the echo: still connected


async def test_protocol_1_and_2_clients_talk_to_each_other() -> None:
    async with (
        running_server() as live,
        open_client("old", port=live.port, version=1) as old,
        open_client("new", port=live.port) as new,
    ):
        assert (old.version, old.echo, old.settings) == (1, False, {})
        assert await sync(new) == [Login("old")]
        assert await sync(old) == [Login("new")]
        await old.talk("new", "hi | new")
        message = await next_chat(new)
        assert isinstance(message, Message)
        assert said(message) == ("old", "new", "hi | new")
        await new.talk("old", "hi old")
        assert await next_chat(old) == Delivery("new", "old", "hi old")
        echo = await next_chat(new)
        assert isinstance(echo, Message)
        assert said(echo) == ("new", "old", "hi old")
        assert echo.id > message.id
        # A protocol-1 connection gets no echo, and no message ids.
        assert await sync(old) == []
        assert old.last_id == 0
        assert new.last_id == echo.id


async def test_without_echo_no_own_message_comes_back() -> None:
    async with (
        running_server() as live,
        open_client("alice", port=live.port, echo=False) as alice,
        open_client("bob", port=live.port) as bob,
    ):
        assert (alice.version, alice.echo) == (2, False)
        assert await sync(bob) == [Login("alice")]
        await alice.talk("bob", "hi")
        assert said(await next_chat(bob)) == ("alice", "bob", "hi")
        assert await sync(alice) == [Login("bob")]


# Rooms


async def test_rooms_from_join_to_exit() -> None:
    async with (
        running_server() as live,
        logged_in(live.port, "alice", "bob", "carol") as (alice, bob, carol),
    ):
        await alice.join("#Lunch")
        assert await next_chat(alice) == Joined("#Lunch", "alice")
        await bob.join("#lunch")
        # The room is written as its first member wrote it.
        assert await sync(bob) == [Joined("#Lunch", "bob"), Joined("#Lunch", "alice")]
        assert await next_chat(alice) == Joined("#Lunch", "bob")
        assert alice.rooms == {"#Lunch": ("alice", "bob")}
        assert bob.rooms == {"#Lunch": ("bob", "alice")}
        assert sorted(alice.members("#lunch")) == ["alice", "bob"]

        await bob.talk("#lunch", "pizza?")
        message = await next_chat(alice)
        assert said(message) == ("bob", "#Lunch", "pizza?")
        assert isinstance(message, Message)
        assert alice.conversation(message) == "#Lunch"
        echo = await next_chat(bob)
        assert isinstance(echo, Message)
        assert bob.is_own(echo)
        # carol, who is not in the room, gets nothing.
        assert await sync(carol) == []
        await carol.talk("#lunch", "let me in")
        assert await next_chat(carol) == Error(ErrorCode.NOT_IN_ROOM, "#lunch")

        await carol.list_rooms()
        assert await next_chat(carol) == RoomList((RoomInfo("#Lunch", 2),))

        await alice.part("#lunch")
        assert await next_chat(alice) == Parted("#Lunch", "alice")
        assert await next_chat(bob) == Parted("#Lunch", "alice")
        assert alice.rooms == {}
        assert bob.rooms == {"#Lunch": ("bob",)}
        await alice.join("#lunch")
        assert await sync(alice) == [Joined("#Lunch", "alice"), Joined("#Lunch", "bob")]
        assert await next_chat(bob) == Joined("#Lunch", "alice")
        await alice.exit()
        assert await next_chat(bob) == Exit("alice")
        assert bob.rooms == {"#Lunch": ("bob",)}


async def test_room_refusals_keep_the_connection() -> None:
    async with (
        running_server(max_rooms=1) as live,
        open_client("alice", port=live.port) as alice,
    ):
        await alice.join("#a")
        await alice.join("#a")
        await alice.join("#b")
        await alice.part("#c")
        answers = await sync(alice)
        assert answers[0] == Joined("#a", "alice")
        assert [error.code for error in answers[1:] if isinstance(error, Error)] == [
            ErrorCode.ALREADY_IN_ROOM,
            ErrorCode.TOO_MANY_ROOMS,
            ErrorCode.NOT_IN_ROOM,
        ]
        assert alice.rooms == {"#a": ("alice",)}


async def test_presence_by_rooms() -> None:
    async with (
        running_server(presence="rooms") as live,
        open_client("alice", port=live.port) as alice,
        open_client("bob", port=live.port) as bob,
    ):
        assert alice.settings["presence"] == "rooms"
        # Nobody hears of anybody's login...
        assert await sync(alice) == []
        assert await sync(bob) == []
        assert alice.online == bob.online == ()
        # ... but of those who share a room.
        await alice.join("#ops")
        await bob.join("#ops")
        assert await sync(bob) == [Joined("#ops", "bob"), Joined("#ops", "alice")]
        assert await sync(alice) == [Joined("#ops", "alice"), Joined("#ops", "bob")]
        # There is no everyone-room; direct messages still work.
        await alice.broadcast("anyone?")
        assert await next_chat(alice) == Error(ErrorCode.NOT_IN_ROOM, "*")
        await alice.talk("bob", "psst")
        assert said(await next_chat(bob)) == ("alice", "bob", "psst")
        assert said(await next_chat(alice)) == ("alice", "bob", "psst")
        await bob.exit()
        assert await next_chat(alice) == Exit("bob")
        assert alice.rooms == {"#ops": ("alice",)}
