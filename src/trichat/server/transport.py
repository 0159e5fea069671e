"""How a connection's bytes come in and go out.

``PlainSocket`` reads and writes a TCP socket's descriptor directly: a
read that finds data returns it without passing through the scheduler
(under load most do), and only a read or write that would block waits.
``StreamTransport`` does the same for any Trio stream (TLS, in-memory
streams in tests). The connection's reading task (or the shared reader)
calls ``receive``/``read_now``; its writer task alone calls ``send``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

__all__ = ["PlainSocket", "StreamTransport", "Transport", "transport_for", "write_now"]

RECEIVE_SIZE = 65536
# A stream's writer reports progress after each piece of this size: a
# client reading at least this much per stall_timeout is not stalled.
_WRITE_SIZE = 4096


class PlainSocket:
    """A plain TCP socket, read and written through its descriptor."""

    __slots__ = ("fd", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()

    def read_now(self) -> bytes | None:
        """What the socket has now (``b""``: the client closed its side), or
        None if nothing yet."""
        try:
            return os.read(self.fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as error:  # a reset, or the descriptor gone
            raise trio.BrokenResourceError(str(error)) from error

    async def receive(self) -> bytes:
        """The next bytes from the client; ``b""`` once it closed its side."""
        while (data := self.read_now()) is None:
            await trio.lowlevel.wait_readable(self.fd)
        return data

    async def send(self, data: bytes, progress: Callable[[int], None]) -> None:
        """Write all of *data*, calling *progress* with each piece written."""
        fd = self.fd
        rest: bytes | memoryview = data
        while rest:
            try:
                written = os.write(fd, rest)
            except BlockingIOError:
                written = 0
            except OSError as error:  # a reset, or the descriptor gone
                raise trio.BrokenResourceError(str(error)) from error
            if written:
                progress(written)
                if written == len(rest):
                    return
                rest = memoryview(rest)[written:]
            await trio.lowlevel.wait_writable(fd)


class StreamTransport:
    """Any Trio stream: TLS, or in-memory streams in tests."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive(self) -> bytes:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        return data if type(data) is bytes else bytes(data)

    async def send(self, data: bytes, progress: Callable[[int], None]) -> None:
        # In pieces, so a client that reads slowly but steadily is seen to
        # make progress (and is not taken as stalled).
        view = memoryview(data)
        for start in range(0, len(data), _WRITE_SIZE):
            piece = view[start : start + _WRITE_SIZE]
            await self.stream.send_all(piece)
            progress(len(piece))


Transport = PlainSocket | StreamTransport


def transport_for(stream: trio.abc.Stream) -> Transport:
    """A plain socket is read and written directly; any other stream through
    its methods."""
    if type(stream) is trio.SocketStream:
        return PlainSocket(stream)
    return StreamTransport(stream)


def write_now(stream: trio.abc.Stream, data: bytes) -> None:
    """Write *data* to a plain socket if it fits at once, else nothing (for
    a connection refused in a connect flood, which gets no writer task)."""
    if type(stream) is trio.SocketStream:
        with contextlib.suppress(OSError):
            os.write(stream.socket.fileno(), data)
