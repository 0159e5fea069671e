"""Reading many connections from one task, and handing on what they read.

A reader task per connection (``traffic``'s default) costs, for every read,
a wake-up of that task and a new ``epoll`` registration, and then the
client library decodes and checks every frame: tens of microseconds of the
generator's one core per frame. That is nothing for a few hundred busy
connections whose reads hold many frames, and the limit for ten thousand
that each get a frame every few seconds (the ``rooms`` scenario), where
every delivery is a read of its own, and a join into rooms of 50 brings
millions of ``join`` frames.

``SharedReader`` reads them the way the server reads idle connections: one
task waits on an ``epoll`` set of all their sockets and, for each ready
one, reads what is there. It starts each connection on the client
library: the bytes go to the connection's ``Client`` through a
``FedStream``, whose ``receive_some`` returns the bytes given to it instead
of waiting for the socket, and ``Client.receive_batch`` decodes them
(``_NothingYet`` ends that call when they held no whole frame: they stay in
the client's buffer). Once a read has left the client's buffer empty (it
ended with a line's end, and every line in it was handed out), the reader
takes the connection's lines itself: the frames a scenario counts in bulk
(``msg``, ``talk`` and ``join``) are split into their fields without the
library's checks and handed to ``Handler.delivered`` and
``Handler.joined``, ten times cheaper; any other frame is decoded by the
protocol's ``Connection`` as the library would (a kind it does not know is
skipped), and a ``ping`` answered.

``dispatch`` hands one read's events to the connection's ``Handler``; both
ways of reading use it. Linux only (``select.epoll``).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from ..client.library import (
    MAX_SERVER_FRAME,
    BadServerFrame,
    Client,
    ConnectionLost,
    Event,
)
from ..protocol import Connection, ProtocolError, Role
from ..protocol.messages import (
    Delivery,
    Error,
    Exit,
    Joined,
    Login,
    Message,
    Ping,
    Pong,
)

if TYPE_CHECKING:
    from .run import Handler, Run

__all__ = ["FedStream", "SharedReader", "available", "dispatch"]

_RECEIVE_SIZE = 65536
# Ready sockets read before the reader lets the other tasks (the senders) run.
_BATCH = 256


def available() -> bool:
    """Whether a ``SharedReader`` can run here (it needs ``select.epoll``)."""
    return hasattr(select, "epoll")


def dispatch(run: Run, handler: Handler, events: Sequence[Event], now: int) -> None:
    """Hand *events*, read at *now* (``perf_counter_ns``), to *handler*."""
    for event in events:
        _hand_on(run, handler, event, now)
    handler.batch_done()


def _hand_on(run: Run, handler: Handler, event: Event, now: int) -> None:
    if isinstance(event, Message | Delivery):
        handler.talk(event, now)
    elif isinstance(event, Joined):
        handler.joined(event.room, event.name)
    elif isinstance(event, Login):
        handler.login(event.name)
    elif isinstance(event, Error):
        handler.error(event)
    elif isinstance(event, Exit):
        run.exits_seen += 1


class _NothingYet(Exception):
    """A ``FedStream`` of a shared reader has no bytes to give."""


class FedStream(trio.abc.Stream):
    """A socket stream that, once a ``SharedReader`` reads for it, gives
    ``receive_some`` the bytes the reader read instead of reading itself.

    Until then (while its client logs in) it reads and writes as the
    socket stream it wraps; it always writes as that stream does.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.shared = False
        self.fed: bytes | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self.shared:
            return await self.inner.receive_some(max_bytes)
        data = self.fed
        if data is None:
            raise _NothingYet
        self.fed = None
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Reading:
    __slots__ = ("client", "handler", "partial", "raw", "stream")

    def __init__(self, client: Client, stream: FedStream, handler: Handler) -> None:
        self.client = client
        self.stream = stream
        self.handler = handler
        self.raw = False
        """The reader splits the lines itself (the client's buffer is empty)."""
        self.partial = b""
        """The start of a line whose end has not been read yet (raw)."""


class SharedReader:
    """Reads every connection given to ``add`` from one task (``run``).

    With *raw* False, every frame goes through the client library, as with
    a reader task per connection.
    """

    def __init__(self, run: Run, *, raw: bool = True) -> None:
        self._run = run
        self._raw = raw
        self._epoll = select.epoll()
        self._reading: dict[int, _Reading] = {}
        # Decodes, one line at a time, the frames the reader does not split
        # itself.
        self._decoder = Connection(Role.CLIENT, max_line=MAX_SERVER_FRAME)

    def __len__(self) -> int:
        return len(self._reading)

    async def add(self, client: Client, stream: FedStream, handler: Handler) -> None:
        """Read *client* (over *stream*) from now on, handing its events to
        *handler*; what it has read already but not yet handed out (the
        frames that came with its login acknowledgement) is handed out
        first."""
        stream.shared = True
        reading = _Reading(client, stream, handler)
        fd = stream.inner.socket.fileno()
        if await self._library(reading, None):
            self._reading[fd] = reading
            self._epoll.register(fd, select.EPOLLIN)

    async def run(self) -> None:
        """Read until cancelled."""
        epoll = self._epoll
        reading = self._reading
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, _BATCH):
                    found = reading.get(fd)
                    if found is None:
                        continue
                    try:
                        data = os.read(fd, _RECEIVE_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""  # reset: the end, as for the client
                    if found.raw and data:
                        going = await self._lines(found, data)
                    else:
                        going = await self._library(found, data)
                        if going and self._raw and data.endswith(b"\n"):
                            # Every line read so far has been handed out.
                            found.raw = True
                    if not going:
                        del reading[fd]
                        epoll.unregister(fd)
                        self._run.connection_lost(found.client)
        finally:
            epoll.close()

    async def _library(self, reading: _Reading, data: bytes | None) -> bool:
        """Give *data* (None: nothing new) to the client and hand on what
        it decodes; False once the connection has ended."""
        run = self._run
        stream = reading.stream
        stream.fed = data
        # Until the client has taken the bytes and decoded every whole line:
        # it hands out what it holds already (events, or a bad frame a
        # batch left behind) before it reads more.
        while True:
            try:
                events = await reading.client.receive_batch()
            except _NothingYet:
                return True
            except BadServerFrame as bad:
                run.bad_frame(bad)
                if bad.fatal:
                    return False
                continue
            except ConnectionLost:
                return False
            if not events:
                return False
            dispatch(run, reading.handler, events, time.perf_counter_ns())

    async def _lines(self, reading: _Reading, data: bytes) -> bool:
        """Hand on the whole lines of *data*, after what was left of the
        last read; False once the connection has ended (an error that
        closes it)."""
        now = time.perf_counter_ns()
        handler = reading.handler
        lines = (reading.partial + data).split(b"\n")
        reading.partial = lines.pop()
        going = True
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            kind = line[:5]
            if kind[:4] == b"msg|":
                fields = line.split(b"|", 5)
                if len(fields) == 6:
                    _, _, _, sender, to, text = fields
                    handler.delivered(sender.decode(), to.decode(), text.decode(), now)
                    continue
            elif kind == b"talk|":
                fields = line.split(b"|", 3)
                if len(fields) == 4:
                    _, sender, to, text = fields
                    handler.delivered(sender.decode(), to.decode(), text.decode(), now)
                    continue
            elif kind == b"join|":
                fields = line.split(b"|")
                if len(fields) == 3:
                    handler.joined(fields[1].decode(), fields[2].decode())
                    continue
            elif not line:
                continue
            if not await self._decoded(reading, line, now):
                going = False
                break  # the server closes the connection after it
        handler.batch_done()
        return going

    async def _decoded(self, reading: _Reading, line: bytes, now: int) -> bool:
        """Decode *line* as the client library would (a kind it does not
        know is skipped), and hand it on; False for an error that closes
        the connection."""
        decoder = self._decoder
        decoder.receive_data(line + b"\n")
        try:
            event = decoder.next_event()
        except ProtocolError as problem:
            self._run.bad_frame(BadServerFrame(problem))
            return True
        if isinstance(event, Ping):
            # A lost connection: the reader finds out soon enough.
            with contextlib.suppress(ConnectionLost):
                await reading.client.send(Pong(event.token))
            return True
        if isinstance(event, Message | Delivery | Joined | Login | Error | Exit):
            _hand_on(self._run, reading.handler, event, now)
            return not (isinstance(event, Error) and event.code.closes)
        return True
