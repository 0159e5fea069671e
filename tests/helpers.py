"""Shared pieces for tests that talk to a real in-process server over TCP."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from trichat.server import ChatServer, ServerConfig

# No single step of a network test should take anywhere near this long.
STEP_TIMEOUT = 5.0
# nox runs the tests of how the server reads (noxfile.py, READ_PATH_TESTS) a
# second time with this set to 0, so that the server's fallback (each
# connection's task waits for its own socket) stays tested on Linux too.
SHARED_READER = os.environ.get("TRICHAT_TEST_SHARED_READER", "1") != "0"


class LiveServer:
    """A running server and the test clients connected to it."""

    def __init__(self, server: ChatServer, port: int) -> None:
        self.server = server
        self.port = port
        self.clients: list[LineClient] = []

    async def connect(self) -> LineClient:
        client = await LineClient.connect(self.port)
        self.clients.append(client)
        return client

    async def login(self, name: str) -> LineClient:
        """A client logged in as *name*, its acknowledgement read."""
        client = await self.connect()
        await client.login(name)
        return client


@asynccontextmanager
async def running_server(**config: Any) -> AsyncIterator[LiveServer]:
    """A server on 127.0.0.1 and a free port, with *config* as ServerConfig
    options; at the end its clients are closed and it shuts down."""
    config.setdefault("port", 0)
    config.setdefault("shared_reader", SHARED_READER)
    async with serving(ChatServer(ServerConfig(**config))) as live:
        yield live


@asynccontextmanager
async def serving(server: ChatServer) -> AsyncIterator[LiveServer]:
    """*server* running on its port; at the end its clients are closed and
    it shuts down."""
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(server.serve)
        live = LiveServer(server, port)
        try:
            yield live
        finally:
            for client in live.clients:
                await trio.aclose_forcefully(client.stream)
            server.shutdown()


async def wait_for_connections(live: LiveServer, count: int) -> None:
    """Wait (bounded) until the server holds *count* connections.

    The server signals no event when a connection is gone, and a client that
    hung up itself cannot see it, so this polls.
    """
    with trio.fail_after(STEP_TIMEOUT):
        while live.server.connections != count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def read_until_gone(stream: trio.abc.Stream) -> bytes:
    """Every byte until the server closes (or resets) the connection."""
    received = bytearray()
    with trio.fail_after(STEP_TIMEOUT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing *stream* send a TCP RST instead of a FIN."""
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


class LineClient:
    """A bare line-based client, as `nc` would be, for driving the server."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> LineClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        await self.stream.send_all(data if data.endswith(b"\n") else data + b"\n")

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_line(self) -> str:
        """The next line from the server, without its LF.

        Fails the test if none comes within STEP_TIMEOUT or the server closes.
        """
        with trio.fail_after(STEP_TIMEOUT):
            return await self._next_line()

    async def _next_line(self) -> str:
        """The next line, read as needed (unbounded); fails if the server
        closes first."""
        while b"\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
                raise AssertionError(f"server closed; unread: {bytes(self._buffer)!r}")
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return line.decode()

    async def read_lines(self, count: int) -> list[str]:
        return [await self.read_line() for _ in range(count)]

    async def expect(self, *lines: str) -> None:
        """Assert that the next lines are exactly *lines*, in order."""
        assert await self.read_lines(len(lines)) == list(lines)

    async def read_until_closed(self) -> list[str]:
        """Every line until the server closes the connection."""
        self._buffer += await read_until_gone(self.stream)
        return self._lines_at_close()

    def _lines_at_close(self) -> list[str]:
        """The lines left in the buffer, the server having closed: the last
        must be whole."""
        self.eof = True
        lines = bytes(self._buffer).split(b"\n")
        self._buffer.clear()
        assert lines[-1] == b"", f"partial line at close: {lines[-1]!r}"
        return [line.decode() for line in lines[:-1]]

    async def login(self, name: str) -> None:
        """Log in as *name*; the next line must be the acknowledgement."""
        await self.send(f"login|{name}")
        assert await self.read_line() == f"login|{name}"

    async def pong_after(self, token: str) -> list[str]:
        """Send ``ping|token``; return the lines that came before its pong."""
        await self.send(f"ping|{token}")
        lines: list[str] = []
        while (line := await self.read_line()) != f"pong|{token}":
            lines.append(line)
        return lines

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_until_closed_while(
    client: LineClient, write: Callable[[], Awaitable[None]]
) -> list[str]:
    """*client*'s lines until the server closes, while *write* sends on in
    the background; *write* ends quietly when the connection is gone."""

    async def writing() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await write()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writing)
        lines = await client.read_until_closed()
        nursery.cancel_scope.cancel()
    return lines


# -- a server on a MockClock, over either transport --------------------------------

TRANSPORTS = ("memory", "socket")
"""How clients reach a server in the tests that run on a MockClock: in-memory
streams that ``ChatServer.serve_connection`` serves, or loopback TCP
sockets, the way users reach it (``ChatServer.serve``)."""

SOCKET_AUTOJUMP = 0.005
"""How long, in real seconds, every task must have been waiting before a
MockClock with socket clients jumps to the next deadline.

An autojump happens only when no task can run and the I/O manager has
nothing ready, so bytes already written to a loopback socket keep the
clock still: Linux delivers them to the other end within the writing
system call. The threshold is a margin for when it does not (the kernel
leaves the delivery to its ksoftirqd thread under load), which would let a
deadline pass while a frame is on its way. Every jump costs this much real
time. With in-memory streams nothing is ever on its way, and 0 is exact."""


def autojump_clock(transport: str) -> trio.testing.MockClock:
    """A MockClock that jumps to the next deadline whenever every task is
    waiting, safely for clients over *transport*."""
    threshold = SOCKET_AUTOJUMP if transport == "socket" else 0.0
    return trio.testing.MockClock(autojump_threshold=threshold)


class ClockedServer:
    """A running ChatServer and how to reach it: over loopback TCP when it
    has a *port*, else over in-memory streams it serves in *nursery*."""

    def __init__(
        self, server: ChatServer, nursery: trio.Nursery, port: int | None
    ) -> None:
        self.server = server
        self.nursery = nursery
        self.port = port
        self.streams: list[trio.abc.Stream] = []
        """The client ends of the connections opened, closed at the end."""

    async def open_stream(self) -> trio.abc.Stream:
        """A new connection to the server: the client's end of it."""
        stream: trio.abc.Stream
        if self.port is not None:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        else:
            stream, theirs = trio.testing.memory_stream_pair()
            self.nursery.start_soon(self.server.serve_connection, theirs, "192.0.2.1")
        self.streams.append(stream)
        return stream

    async def close_clients(self) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def clocked_server(transport: str, **config: Any) -> AsyncIterator[ClockedServer]:
    """A server with *config* as ServerConfig options, reached over
    *transport* (see TRANSPORTS); its clients are closed and it shuts down
    at the end. For tests on an
    ``autojump_clock(transport)``; in memory, a connection still open at
    the end is given (virtual) minutes to close, not for ever."""
    if transport == "socket":
        async with running_server(**config) as live, trio.open_nursery() as nursery:
            clocked = ClockedServer(live.server, nursery, live.port)
            try:
                yield clocked
            finally:
                await clocked.close_clients()
        return
    server = ChatServer(ServerConfig(port=0, **config))
    async with trio.open_nursery() as nursery:
        clocked = ClockedServer(server, nursery, None)
        try:
            yield clocked
        finally:
            await clocked.close_clients()
            server.shutdown()
            nursery.cancel_scope.deadline = trio.current_time() + 600


# -- protocol 2: hello, msg frames, users of either version ------------------------

PROTOCOL_1_KINDS = frozenset(
    {"login", "exit", "join", "part", "talk", "room", "rooms", "error", "ping", "pong"}
)
"""Every kind a server may send to a protocol-1 connection (protocol.md,
section 4; ``hello`` only as the answer to the connection's own
``hello|1``)."""

ID_FORMAT = re.compile(r"[1-9][0-9]{0,19}")
TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@attrs.frozen
class Msg:
    """A ``msg|ID|TIME|FROM|TO|TEXT`` frame, its ID and TIME checked."""

    id: int
    time: str
    sender: str
    to: str
    text: str

    @classmethod
    def parse(cls, line: str) -> Msg:
        fields = line.split("|", 5)
        assert len(fields) == 6, f"not a msg frame: {line!r}"
        kind, ident, time, sender, to, text = fields
        assert kind == "msg", f"not a msg frame: {line!r}"
        assert ID_FORMAT.fullmatch(ident), f"bad ID in {line!r}"
        assert TIME_FORMAT.fullmatch(time), f"bad TIME in {line!r}"
        return cls(int(ident), time, sender, to, text)


def parse_settings(text: str) -> dict[str, str]:
    """The ``key=value`` words of a hello's SETTINGS, each key once."""
    settings: dict[str, str] = {}
    for word in text.split(" "):
        key, equals, value = word.partition("=")
        assert equals, f"not key=value: {word!r} in {text!r}"
        assert key, f"no key: {word!r} in {text!r}"
        assert key not in settings, f"{key} twice in {text!r}"
        settings[key] = value
    return settings


async def say_hello(
    client: LineClient, frame: str = "hello|2", version: int = 2
) -> dict[str, str]:
    """Send *frame* (a hello); the answer must be ``hello|version|SETTINGS``.
    Returns the settings."""
    await client.send(frame)
    line = await client.read_line()
    kind, got, settings = [*line.split("|", 2), "", ""][:3]
    assert (kind, got) == ("hello", str(version)), line
    return parse_settings(settings)


async def expect_quiet(*clients: LineClient | User) -> None:
    """Nothing is waiting for any of *clients*: each answers a ping with
    nothing before the pong. Put first the clients whose frames may have
    caused something (their effects are queued before their pong)."""
    for client in clients:
        line_client = client.client if isinstance(client, User) else client
        assert await line_client.pong_after("quiet") == []


async def expect_error_frame(
    client: LineClient | User, code: str, detail: str | None = None
) -> str:
    """The next line is ``error|code|DETAIL`` (with *detail*, if given);
    returns DETAIL."""
    line = await client.read_line()
    kind, got_code, got_detail = [*line.split("|", 2), "", ""][:3]
    assert (kind, got_code) == ("error", code), line
    assert got_detail, f"empty DETAIL in {line!r}"
    if detail is not None:
        assert got_detail == detail, line
    return got_detail


@attrs.define
class User:
    """A logged-in line client: its name as the server shows it, and the
    protocol version it speaks (with or without echo)."""

    name: str
    client: LineClient
    version: int = 1
    echo: bool = False

    async def send(self, line: str | bytes) -> None:
        await self.client.send(line)

    async def read_line(self) -> str:
        return await self.client.read_line()

    async def expect(self, *lines: str) -> None:
        await self.client.expect(*lines)

    async def delivery(self, sender: str, to: str, text: str) -> Msg | None:
        """Read the next line: the delivery of *text* from *sender* to *to*
        as this user's version writes it (``talk`` on 1, ``msg`` on 2).
        Returns the Msg on version 2."""
        line = await self.client.read_line()
        if self.version == 1:
            assert line == f"talk|{sender}|{to}|{text}", line
            return None
        msg = Msg.parse(line)
        assert (msg.sender, msg.to, msg.text) == (sender, to, text), line
        return msg


async def log_in_user(
    live: LiveServer, name: str, version: int = 1, options: str = ""
) -> User:
    """A user logged in as *name* (its acknowledgement read, and on
    protocol 2 its ``session`` frame if the server keeps sessions, nothing
    else): version 1 says no hello; otherwise ``hello|version[|options]``
    first."""
    client = await live.connect()
    settings: dict[str, str] = {}
    if version != 1 or options:
        frame = f"hello|{version}" + (f"|{options}" if options else "")
        settings = await say_hello(client, frame, min(version, 2))
    await client.login(name)
    if version >= 2 and settings.get("resume", "0") != "0":
        session = await client.read_line()
        assert session.startswith("session|"), session
    return User(
        name, client, min(version, 2), "echo" in options.split() and version >= 2
    )


async def users_online(
    live: LiveServer, *specs: str | tuple[str, int, str], rooms_presence: bool = False
) -> list[User]:
    """Users logged in in order, each a NAME (version 1) or (NAME, VERSION,
    OPTIONS); every presence frame their logins cause is read and checked:
    under global presence the newcomer's roster and the others' ``login``,
    under ``--presence rooms`` nothing but the acknowledgement."""
    users: list[User] = []
    for spec in specs:
        name, version, options = (spec, 1, "") if isinstance(spec, str) else spec
        user = await log_in_user(live, name, version, options)
        if not rooms_presence:
            roster = await user.client.read_lines(len(users))
            assert sorted(roster) == sorted(f"login|{u.name}" for u in users)
            for other in users:
                await other.expect(f"login|{name}")
        users.append(user)
    return users


async def join_room(
    joiner: User, room: str, members: list[User], shown: str | None = None
) -> None:
    """*joiner* sends ``join|room``; it must get its own join (the room
    written as *shown*, if given) then one per member of *members* (those
    already in the room, in any order), and each member the joiner's."""
    shown = room if shown is None else shown
    await joiner.send(f"join|{room}")
    await joiner.expect(f"join|{shown}|{joiner.name}")
    listed = await joiner.client.read_lines(len(members))
    assert sorted(listed) == sorted(f"join|{shown}|{m.name}" for m in members)
    for member in members:
        await member.expect(f"join|{shown}|{joiner.name}")


def running_server_without_sessions(
    **config: Any,
) -> contextlib.AbstractAsyncContextManager[LiveServer]:
    """``running_server`` with ``resume_window=0`` unless *config* gives one:
    a server that keeps no sessions (protocol.md section 7), so a protocol-2
    login gets no ``session`` frame and a dropped connection goes offline
    at once, as in the first part of protocol 2."""
    config.setdefault("resume_window", 0)
    return running_server(**config)
