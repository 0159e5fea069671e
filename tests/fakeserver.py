"""A scripted fake server, for the tests of the clients (the library's and
the terminal's), and the small pieces those tests share."""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, cast

import trio
import trio.testing

from trichat.client import Client
from trichat.protocol.connection import CLOSED, NEED_DATA, Connection, Role
from trichat.protocol.messages import ClientMessage, Hello, Login, Ping, Resume

P = ParamSpec("P")

SETTINGS = (
    "server=trichat/2.0.0 max-line=4096 max-text=4000 max-name=32 rate=100"
    " burst=200 ping=60 rooms=50 history=0 resume=0 presence=global"
)
"""What a FakeServer answers ``hello`` with, unless told otherwise: the
settings of a trichat 2 server with the default options."""
OLD_SERVER = None
"""``settings`` for a FakeServer that answers ``hello`` as trichat 1.0 did."""


def fail_after(
    seconds: float,
) -> Callable[[Callable[P, Awaitable[None]]], Callable[P, Awaitable[None]]]:
    """Bound a test: it fails with TooSlowError after *seconds*."""

    def decorate(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
        @functools.wraps(test)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return bounded

    return decorate


class FakeServer:
    """The server's end of a stream, scripted by a test.

    A client that breaks the connection off (a reset, a failed TLS
    handshake) makes ``receive`` raise BrokenResourceError; with
    *broken_is_closed* that counts as the client closing instead.
    """

    def __init__(
        self, stream: trio.abc.Stream, *, broken_is_closed: bool = False
    ) -> None:
        self.stream = stream
        self.connection = Connection(Role.SERVER)
        self.hello: Hello | None = None
        """The client's ``hello``, once ``login_request`` has read one."""
        self._gone: tuple[type[Exception], ...] = (
            (trio.ClosedResourceError, trio.BrokenResourceError)
            if broken_is_closed
            else (trio.ClosedResourceError,)
        )

    async def receive(self) -> ClientMessage | None:
        """The client's next frame; None when the client closed."""
        while True:
            event = self.connection.next_event()
            if event is NEED_DATA:
                try:
                    data = await self.stream.receive_some()
                except self._gone:
                    return None
                self.connection.receive_data(data)
                continue
            if event is CLOSED:
                return None
            # Decoded as a server reads: a frame a client sends.
            return cast(ClientMessage, event)

    async def receive_all(self) -> list[ClientMessage]:
        """Every frame until the client closes. The pings a script's
        session sends on leaving (``last-N``, to see the answers to what it
        sent) are answered, as a server would, and not listed."""
        frames = []
        while (message := await self.receive()) is not None:
            if isinstance(message, Ping) and message.token.startswith("last-"):
                await self.send(f"pong|{message.token}")
                continue
            frames.append(message)
        return frames

    async def expect(self, message: ClientMessage) -> None:
        assert await self.receive() == message

    async def expect_closed(self) -> None:
        assert await self.receive() is None

    async def send(self, *lines: str) -> None:
        await self.stream.send_all(b"".join(line.encode() + b"\n" for line in lines))

    async def login_request(self, settings: str | None = SETTINGS) -> Login | None:
        """The client's login (None if it closes first), after answering
        its ``hello``, if it says one, with the version it asked for and
        *settings*; or, with *settings* None (OLD_SERVER), as trichat 1.0
        did: with a ``bad-frame``, for a kind it did not know."""
        message = await self.receive()
        if isinstance(message, Hello):
            self.hello = message
            if settings is None:
                await self.send("error|bad-frame|unknown kind 'hello'")
            else:
                await self.send(f"hello|{message.version}|{settings}")
            message = await self.receive()
        assert message is None or isinstance(message, Login), message
        return message

    async def accept(
        self,
        name: str,
        online: Iterable[str] = (),
        settings: str | None = SETTINGS,
        session: str | None = None,
    ) -> None:
        """Take the client's login (answering its hello with *settings*, see
        ``login_request``) and acknowledge it as *name*, then (with
        *session*, a ``session|SECRET|SECONDS`` frame's fields) say the
        session; list *online*."""
        message = await self.login_request(settings)
        assert isinstance(message, Login)
        self.connection.logged_in(name)
        said = [f"session|{session}"] if session is not None else []
        await self.send(f"login|{name}", *said, *(f"login|{other}" for other in online))

    async def resume_request(self, settings: str = SETTINGS) -> Resume:
        """The client's ``resume``, after answering its ``hello`` with
        *settings*."""
        message = await self.receive()
        assert isinstance(message, Hello), message
        self.hello = message
        await self.send(f"hello|{message.version}|{settings}")
        resume = await self.receive()
        assert isinstance(resume, Resume), resume
        return resume

    async def answer_ping(self) -> list[ClientMessage]:
        """Read up to the client's next ``ping`` and answer it; the frames
        before it."""
        before: list[ClientMessage] = []
        while True:
            message = await self.receive()
            assert message is not None, f"closed after {before}"
            if isinstance(message, Ping):
                await self.send(f"pong|{message.token}")
                return before
            before.append(message)

    async def drop(self) -> None:
        """End the connection without a word: the client reads its end."""
        await self.stream.aclose()


class ResetStream(trio.abc.Stream):
    """A stream that reads *frames*, then finds the connection reset: each
    send, and every read after the frames, raises BrokenResourceError(*reason*).
    """

    def __init__(self, *frames: bytes, reason: str = "connection reset") -> None:
        self.frames = list(frames)
        self.reason = reason

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError(self.reason)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.frames:
            return self.frames.pop(0)
        raise trio.BrokenResourceError(self.reason)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Breakable(trio.abc.Stream):
    """A stream whose writes fail (a connection reset the reader has not
    noticed yet) once ``broken`` is set, or with ``stalling`` set write
    half of what they are given and then wait for ever (a peer that stopped
    reading), or with ``swallowing`` set return as if written while
    nothing reaches the peer (the kernel took it; the connection is lost
    before the server reads it); reads go on as before."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.broken = False
        self.stalling = False
        self.swallowing = False
        self.swallowed = trio.Event()
        """Set once a write has been swallowed."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset")
        if self.swallowing:
            await trio.lowlevel.checkpoint()
            self.swallowed.set()
            return
        if self.stalling:
            await self.inner.send_all(bytes(data)[: len(data) // 2])
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


def fake_server_pair() -> tuple[trio.abc.Stream, FakeServer]:
    """The client's end of an in-memory stream, and a FakeServer on the other."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    return client_stream, FakeServer(server_stream)


async def logged_in(
    name: str = "alice",
    online: Iterable[str] = (),
    *,
    version: int = 2,
    echo: bool = True,
    settings: str | None = SETTINGS,
    session: str | None = None,
    password: str | None = None,
) -> tuple[Client, FakeServer]:
    """A Client logged in as *name* over a memory stream, *online* listed;
    with *version*, *echo* and *password* as ``Client.login`` takes them,
    and a server that answers ``hello`` with *settings* (see
    ``FakeServer.login_request``) and says *session* (see ``accept``)."""
    client_stream, server = fake_server_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, name, online, settings, session)
        client = await Client.login(
            client_stream, name, version=version, echo=echo, password=password
        )
    return client, server


class Reopener:
    """A ``StreamOpener`` for a reconnecting client's tests: each call
    opens an in-memory connection, whose FakeServer ``next_server`` hands
    to the test. While ``refusing`` is above 0, each call takes one off
    and fails as a server that cannot be reached. ``calls`` holds the time
    (``trio.current_time()``) of every call."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.refusing = 0
        self._servers, self._opened = trio.open_memory_channel[FakeServer](math.inf)

    async def __call__(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.calls.append(trio.current_time())
        if self.refusing > 0:
            self.refusing -= 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        client_stream, server = fake_server_pair()
        self._servers.send_nowait(server)
        return client_stream

    async def next_server(self) -> FakeServer:
        """The server end of the next connection opened."""
        return await self._opened.receive()


async def serve_fake(
    nursery: trio.Nursery,
    handler: Callable[[FakeServer], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
    *,
    broken_is_closed: bool = False,
) -> int:
    """Serve *handler* a FakeServer (see there for *broken_is_closed*) for
    each connection, on a free local port; return the port.

    A client that breaks the connection (a failed TLS handshake) ends its
    handler, not the server.
    """

    async def tolerant(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await handler(FakeServer(stream, broken_is_closed=broken_is_closed))

    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if ssl_context is None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, tolerant, 0, host="127.0.0.1")
        )
    else:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_ssl_over_tcp, tolerant, 0, ssl_context, host="127.0.0.1"
            )
        )
    listener = listeners[0]
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    port: int = listener.socket.getsockname()[1]
    return port


def free_port() -> int:
    """A local port that nothing listens on (just now)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port: int = unused.getsockname()[1]
    return port
