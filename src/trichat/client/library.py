"""A trichat client for programs and bots: log in, send, and read what arrives.

``open_client`` connects (TCP or TLS), logs in and hands out a ``Client``;
``Client.login`` does the same over a stream that is already open. A client
is an async iterator of every frame the server sends; it answers the
server's pings by itself and keeps a roster of who is online.

    async with open_client("bot") as client:
        await client.broadcast("hello")
        async for message in client:
            ...

Nothing here writes to a terminal.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Final

import trio

from ..protocol.connection import (
    CLOSED,
    DEFAULT_MAX_LINE,
    NEED_DATA,
    Connection,
    ProtocolError,
    Role,
)
from ..protocol.messages import (
    BROADCAST,
    MAX_NAME,
    MAX_TEXT,
    ClientMessage,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Login,
    Ping,
    Pong,
    ServerMessage,
    Talk,
    check_text,
    name_key,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_SERVER_FRAME",
    "BadServerFrame",
    "Client",
    "ConnectionLost",
    "LoginRefused",
    "connect",
    "open_client",
]

DEFAULT_PORT: Final = 8089

MAX_SERVER_FRAME: Final = len("talk|||") + 4 * (2 * MAX_NAME + MAX_TEXT) + len("\r\n")
"""The longest frame a server can send, in bytes: a ``talk|FROM|TO|TEXT``
whose every character takes four bytes in UTF-8. It is longer than the
server's own limit on what it reads, since a delivery adds FROM."""

_RECEIVE_SIZE: Final = 65536
# How long saying exit, or closing, may take before the stream is just closed.
_CLOSE_GRACE: Final = 2.0


class LoginRefused(Exception):
    """The server answered ``login`` with an error.

    ``error`` is that ``Error``; its ``code`` says why (``bad-name``,
    ``name-taken``, ``server-full``, ...): an ``ErrorCode``, or an
    ``UnknownErrorCode`` for a code this client does not know.
    """

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.value}: {error.detail}")
        self.error = error


class ConnectionLost(Exception):
    """The connection broke, or closed before the login was acknowledged."""


class BadServerFrame(Exception):
    """The server sent a frame that the protocol does not allow.

    ``problem`` is the ProtocolError that describes it. Unless ``fatal`` is
    true, the frames after it can still be read: iterating the client again
    goes on with the next one. A fatal problem (a line over the limit) ends
    the iteration.
    """

    def __init__(self, problem: ProtocolError) -> None:
        super().__init__(f"the server sent a bad frame: {problem}")
        self.problem = problem
        self.fatal = problem.code is ErrorCode.TOO_LONG


def _unexpected(message: ServerMessage, while_doing: str) -> BadServerFrame:
    return BadServerFrame(
        ProtocolError(
            ErrorCode.BAD_FRAME, f"unexpected {message.kind} frame {while_doing}"
        )
    )


class Client(trio.abc.AsyncResource):
    """A logged-in trichat connection; build it with ``connect``,
    ``open_client`` or ``Client.login``.

    Iterating it yields every frame the server sends (``Login``,
    ``Delivery``, ``Exit``, ``Error``, ``Ping``, ``Pong``) until the server
    closes the connection, or right after an error that closes it
    (``ErrorCode.closes``). An error with a code this client does not know
    (an ``UnknownErrorCode``, from a newer server) is yielded like any
    other and does not end the iteration. A ``Ping`` is answered with a
    ``Pong`` before it is yielded. Only one task may iterate at a time; any
    number may send.
    ``receive_batch`` and ``talk_batch`` read and send many frames at
    once, for a program that handles many.

    Attributes:
      name: the client's name as the server acknowledged it.
      last_heard: ``trio.current_time()`` when the last frame arrived (or
        when the client was made), so a keepalive can tell that the server
        went quiet.
      max_frame: the longest frame, in bytes, that ``send`` lets through;
        the server closes a connection that sends a longer line.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        """Wrap *stream* before logging in; ``Client.login`` is the way in."""
        self.name = ""
        self.last_heard = trio.current_time()
        self.max_frame = DEFAULT_MAX_LINE
        self._stream = stream
        self._connection = Connection(Role.CLIENT, max_line=MAX_SERVER_FRAME)
        self._online: dict[str, str] = {}
        self._send_lock = trio.Lock()
        self._send_broken = False
        self._receiving = False
        self._finished = False
        self._closed = False
        # A bad frame that receive_batch found after good ones: the next
        # read raises it.
        self._problem: ProtocolError | None = None

    @classmethod
    async def login(cls, stream: trio.abc.Stream, name: str) -> Client:
        """Log in as *name* over *stream* and wait for the acknowledgement.

        Raises ValueError for a name the protocol does not allow (nothing is
        sent then), LoginRefused when the server refuses it, ConnectionLost
        when the connection ends first, and BadServerFrame when the server
        answers with something else. *stream* is not closed on failure: after
        ``bad-name`` or ``name-taken`` the server lets the connection try
        again. On success the client owns *stream*.
        """
        request = Login(name)
        client = cls(stream)
        await client.send(request)
        while True:
            message = await client._receive()
            match message:
                case None:
                    raise ConnectionLost(
                        "the server closed the connection before accepting the login"
                    )
                case Login(acknowledged) if name_key(acknowledged) == name_key(name):
                    client.name = acknowledged
                    client._connection.logged_in(acknowledged)
                    return client
                case Error():
                    raise LoginRefused(message)
                case Ping(token):
                    await client._answer(token)
                case Pong():
                    pass
                case _:
                    raise _unexpected(message, "before the login was accepted")

    @property
    def online(self) -> tuple[str, ...]:
        """Who else is online, as far as the frames read so far tell."""
        return tuple(self._online.values())

    async def send(self, message: ClientMessage) -> None:
        """Send one frame.

        Raises ValueError when the frame is longer than ``max_frame`` bytes,
        and ConnectionLost when the connection is gone, or when an earlier
        send was cancelled halfway (the stream may hold part of a frame).
        """
        await self._write(self._frame(message))

    async def talk_batch(self, to: str, texts: Sequence[str]) -> None:
        """Send each of *texts*, in order, to the user *to* (or to everyone,
        ``BROADCAST``), in one write.

        The same as ``talk`` for each, at a fraction of the cost per
        message. Raises ValueError, and sends nothing, when *to* or any
        text is invalid or makes a frame longer than ``max_frame``; and
        ConnectionLost as ``send`` does.
        """
        if isinstance(texts, str):
            raise TypeError("texts is a sequence of texts, not one text")
        if not texts:
            await trio.lowlevel.checkpoint()
            return
        first = texts[0]
        # What every frame starts with, as the codec writes it: talk|TO|
        head = self._connection.send(Talk(to, first))[: -len(first.encode()) - 1]
        for text in texts:
            # Printable text holds nothing that check_text refuses.
            if not (text.isprintable() and 0 < len(text) <= MAX_TEXT):
                check_text(text)
        encoded = [text.encode() for text in texts]
        self._check_size(len(head) + max(map(len, encoded)) + 1)
        await self._write(head + (b"\n" + head).join(encoded) + b"\n")

    def _frame(self, message: ClientMessage) -> bytes:
        data = self._connection.send(message)
        self._check_size(len(data))
        return data

    def _check_size(self, size: int) -> None:
        if size > self.max_frame:
            limit = self.max_frame
            raise ValueError(
                f"the frame has {size} bytes; the server takes at most {limit}"
            )

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            if self._send_broken:
                raise ConnectionLost("an earlier send was interrupted")
            try:
                await self._stream.send_all(data)
            except trio.Cancelled:
                self._send_broken = True
                raise
            except trio.BrokenResourceError as error:
                raise ConnectionLost(f"connection lost: {error}") from error
            except trio.ClosedResourceError as error:
                raise ConnectionLost("the client is closed") from error

    async def talk(self, to: str, text: str) -> None:
        """Send *text* to the user *to*; ValueError when either is invalid."""
        await self.send(Talk(to, text))

    async def broadcast(self, text: str) -> None:
        """Send *text* to every other user online."""
        await self.send(Talk(BROADCAST, text))

    async def ping(self, token: str) -> None:
        """Send ``ping|TOKEN``; the server's ``Pong`` arrives by iteration."""
        await self.send(Ping(token))

    async def exit(self) -> None:
        """Say ``exit`` and close. A connection that is already gone is fine,
        and so is a server that does not read: saying goodbye takes at most
        a couple of seconds."""
        try:
            with suppress(ConnectionLost), trio.move_on_after(_CLOSE_GRACE):
                await self.send(Exit())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection without a word; a second call does nothing."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.move_on_after(_CLOSE_GRACE):
            await self._stream.aclose()

    def __aiter__(self) -> Client:
        return self

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Read in this block, as the only task that does; a frame that
        ends the connection, or its loss, ends what iterating yields."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already reading")
        self._receiving = True
        try:
            yield
        except BadServerFrame as bad:
            self._finished = bad.fatal
            raise
        except ConnectionLost:
            self._finished = True
            raise
        finally:
            self._receiving = False

    async def __anext__(self) -> ServerMessage:
        with self._reading():
            if self._finished:
                raise StopAsyncIteration
            message = await self._receive()
        if message is None:
            self._finished = True
            raise StopAsyncIteration
        self._track(message)
        if isinstance(message, Ping):
            await self._answer(message.token)
        return message

    async def receive_batch(self) -> list[ServerMessage]:
        """The frames that iterating would yield next, as many as have
        arrived: those already read, or else those of the next read, which
        this waits for. An empty list means the end: the server closed the
        connection, or sent an error that closes it (the last frame of the
        batch before).

        Pings are answered and the roster kept as iteration does, and it
        raises what iteration raises: a BadServerFrame after the frames
        before it have been returned (in this batch), ConnectionLost, or
        BusyResourceError while another task reads. It costs one call per
        read instead of one per frame, for a program that handles many.
        """
        with self._reading():
            if self._finished:
                await trio.lowlevel.checkpoint()
                return []
            self._raise_left_problem()
            messages = self._decode_buffered()
            while messages is not None and not messages:
                try:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError as error:
                    raise ConnectionLost(f"connection lost: {error}") from error
                except trio.ClosedResourceError:
                    # Closed on our side: nothing more will be read.
                    messages = None
                    break
                self._connection.receive_data(data)
                messages = self._decode_buffered()
        if not messages:
            self._finished = True
            return []
        self.last_heard = trio.current_time()
        for message in messages:
            if type(message) is not Delivery:
                self._track(message)
                if isinstance(message, Ping):
                    await self._answer(message.token)
        return messages

    def _decode_buffered(self) -> list[ServerMessage] | None:
        """The frames that the bytes read so far hold, up to a bad frame
        (left for the next read) or an error that closes the connection;
        None when the stream has ended and every frame has been taken."""
        messages: list[ServerMessage] = []
        next_event = self._connection.next_event
        while True:
            try:
                event = next_event()
            except ProtocolError as problem:
                if not messages:
                    raise BadServerFrame(problem) from None
                self._problem = problem
                return messages
            if type(event) is Delivery:
                messages.append(event)
                continue
            if event is NEED_DATA:
                return messages
            if event is CLOSED:
                return messages or None
            match event:
                case Login() | Exit() | Error() | Ping() | Pong():
                    messages.append(event)
                    if isinstance(event, Error) and event.code.closes:
                        return messages
                case _:  # pragma: no cover - a client's decoder never builds it
                    raise AssertionError("decoded a client frame on the client side")

    def _track(self, message: ServerMessage) -> None:
        """Keep the roster, and whether the server is done, up to date."""
        match message:
            case Login(name) if name_key(name) != name_key(self.name):
                self._online[name_key(name)] = name
            case Exit(str(name)):
                self._online.pop(name_key(name), None)
            case Error(code) if code.closes:
                self._finished = True

    async def _answer(self, token: str) -> None:
        # A lost connection shows up on the receiving side soon enough.
        with suppress(ConnectionLost):
            await self.send(Pong(token))

    def _raise_left_problem(self) -> None:
        """Raise the bad frame that a batch left for the next read, if any."""
        if self._problem is not None:
            problem, self._problem = self._problem, None
            raise BadServerFrame(problem)

    async def _receive(self) -> ServerMessage | None:
        """The next frame from the server; None at the end of the stream."""
        self._raise_left_problem()
        while True:
            try:
                event = self._connection.next_event()
            except ProtocolError as problem:
                raise BadServerFrame(problem) from None
            if event is CLOSED:
                return None
            if event is NEED_DATA:
                try:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                except trio.BrokenResourceError as error:
                    raise ConnectionLost(f"connection lost: {error}") from error
                except trio.ClosedResourceError:
                    # Closed on our side: nothing more will be read.
                    return None
                self._connection.receive_data(data)
                continue
            match event:
                case Login() | Delivery() | Exit() | Error() | Ping() | Pong():
                    self.last_heard = trio.current_time()
                    return event
                case Talk():  # pragma: no cover - a client's decoder never builds it
                    raise AssertionError("decoded a client frame on the client side")


async def connect(
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Client:
    """Connect to a trichat server, log in as *name*, and return the client.

    With *ssl_context* the connection is TLS, and the handshake is done
    before the login, so a certificate the context does not trust (or a
    server that does not speak TLS) fails here with ConnectionLost. The
    certificate must match *server_hostname* (default *host*). Raises
    OSError when the server cannot be reached, and whatever
    ``Client.login`` raises. The caller closes the client
    (``async with client:``); ``open_client`` does that for you.
    """
    Login(name)  # a name the protocol refuses is not worth a connection
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    try:
        if ssl_context is not None:
            # https_compatible: a server that closes without a TLS close_notify
            # has still closed the connection; every frame ends with its LF,
            # so a cut cannot pass for a shorter frame.
            tls = trio.SSLStream(
                tcp,
                ssl_context,
                server_hostname=server_hostname or host,
                https_compatible=True,
            )
            stream = tls
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as error:
                reason = error.__cause__ or error
                raise ConnectionLost(f"TLS handshake failed: {reason}") from error
        return await Client.login(stream, name)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@asynccontextmanager
async def open_client(
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Client]:
    """``connect`` as a context manager that closes the client at the end.

    Leaving the block closes the connection without ``exit``; the server
    then tells the others that the user left. Call ``client.exit()`` first
    to say goodbye.
    """
    client = await connect(
        name, host, port, ssl_context=ssl_context, server_hostname=server_hostname
    )
    async with client:
        yield client
