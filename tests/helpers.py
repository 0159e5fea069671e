"""Shared pieces for tests that talk to a real in-process server over TCP."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from trichat.server import ChatServer, ServerConfig

# No single step of a network test should take anywhere near this long.
STEP_TIMEOUT = 5.0
# nox runs the network tests a second time with this set to 0, so that the
# server's fallback (each connection's task waits for its own socket) stays
# tested on Linux too.
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
    server = ChatServer(ServerConfig(**config))
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
