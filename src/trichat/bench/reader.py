"""Reading many connections from one task, and handing on what they read.

A reader task per connection (``traffic``'s default) costs, for every read,
a wake-up of that task and a new ``epoll`` registration: tens of
microseconds of the generator's one core. That is nothing for a few
hundred busy connections whose reads hold many frames, and the limit for
ten thousand that each get a frame every few seconds (the ``rooms``
scenario), where every delivery is a read of its own.

``SharedReader`` reads them the way the server reads idle connections: one
task waits on an ``epoll`` set of all their sockets and, for each ready one,
reads what is there and hands it to the connection's ``Client`` through a
``FedStream``, whose ``receive_some`` returns the bytes given to it instead
of waiting for the socket. ``Client.receive_batch`` then decodes, keeps the
client's roster and rooms, and answers pings, as it does for a task that
reads for itself; when the bytes held no whole frame, ``receive_some`` ends
that call with ``_NothingYet`` (the bytes stay in the client's buffer for
the next read).

``dispatch`` hands one read's events to the connection's ``Handler``; both
ways of reading use it. Linux only (``select.epoll``).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from ..client.library import BadServerFrame, Client, ConnectionLost, Event
from ..protocol.messages import Delivery, Error, Exit, Joined, Login, Message

if TYPE_CHECKING:
    from .traffic import Handler, Run

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
    handler.batch_done()


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
    __slots__ = ("client", "handler", "stream")

    def __init__(self, client: Client, stream: FedStream, handler: Handler) -> None:
        self.client = client
        self.stream = stream
        self.handler = handler


class SharedReader:
    """Reads every connection given to ``add`` from one task (``run``)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._epoll = select.epoll()
        self._reading: dict[int, _Reading] = {}

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
        if await self._handle(fd, reading, None):
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
                    if not await self._handle(fd, found, data):
                        del reading[fd]
                        epoll.unregister(fd)
        finally:
            epoll.close()

    async def _handle(self, fd: int, reading: _Reading, data: bytes | None) -> bool:
        """Give *data* (None: nothing new) to the client and hand on what
        it decodes; False once the connection has ended."""
        run = self._run
        stream = reading.stream
        stream.fed = data
        # Until the client has taken the bytes: it hands out what it holds
        # already (events, or a bad frame a batch left behind) before it
        # reads more.
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
                run.connection_lost(reading.client)
                return False
            if not events:
                run.connection_lost(reading.client)
                return False
            dispatch(run, reading.handler, events, time.perf_counter_ns())
            if stream.fed is None:
                return True
