"""The least a Trio server can do to relay trichat talk: a yardstick.

Not trichat: no validation, limits, queues, presence or errors. It answers
``login|NAME`` and relays ``talk|TO|TEXT`` as ``talk|FROM|TO|TEXT``,
reading with ``os.read`` and writing with ``os.write``. By default each
connection's task waits for its own socket (``wait_readable``); with
``--shared`` one task waits on an epoll set of every socket and reads
whichever are ready, in the kernel's order, as trichat's shared reader
does. docs/performance.md uses the two to tell what part of the latency
belongs to the way of waiting rather than to trichat's own code::

    python benchmarks/bare_relay.py --port 7000 [--shared] &
    /tmp/trichat-loadgen -proto trichat -addr 127.0.0.1:7000 -pid $! \\
        -scenario rate -P 50 -R 20000 -D 5s
"""

from __future__ import annotations

import argparse
import os
import select
from functools import partial

import trio

from trichat._process import until_interrupted

_online: dict[bytes, int] = {}  # name -> socket descriptor


class _Relay:
    """One connection: its name once logged in, and a partial line."""

    __slots__ = ("closed", "fd", "name", "rest")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.name = b""
        self.rest = b""
        self.closed = trio.Event()  # by the client, seen by the shared task

    def handle(self, data: bytes) -> None:
        *lines, self.rest = (self.rest + data).split(b"\n")
        out: dict[int, list[bytes]] = {}
        for line in lines:
            if line.startswith(b"talk|") and self.name:
                target = _online.get(line[5:].partition(b"|")[0])
                if target is not None:
                    frame = b"talk|" + self.name + b"|" + line[5:] + b"\n"
                    out.setdefault(target, []).append(frame)
            elif line.startswith(b"login|") and not self.name:
                self.name = line[6:]
                _online[self.name] = self.fd
                os.write(self.fd, line + b"\n")
        for target, frames in out.items():
            os.write(target, b"".join(frames))

    def leave(self) -> None:
        if self.name:
            _online.pop(self.name, None)


async def _own_task(stream: trio.SocketStream) -> None:
    """A connection whose task waits for its own socket."""
    relay = _Relay(stream.socket.fileno())
    try:
        while True:
            try:
                data = os.read(relay.fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(relay.fd)
                continue
            if not data:
                return
            relay.handle(data)
    except OSError:
        return  # reset, or full: a yardstick does not queue
    finally:
        relay.leave()
        await trio.aclose_forcefully(stream)


_watched = select.epoll() if hasattr(select, "epoll") else None
_relays: dict[int, _Relay] = {}


async def _shared_task() -> None:
    """Reads every ready socket, in the order the kernel reports them."""
    assert _watched is not None
    while True:
        await trio.lowlevel.wait_readable(_watched.fileno())
        for fd, _ in _watched.poll(0, 64):
            relay = _relays.get(fd)
            if relay is None:
                continue
            try:
                data = os.read(fd, 65536)
                if data:
                    relay.handle(data)
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            _watched.unregister(fd)  # closed or broken: its task closes it
            del _relays[fd]
            relay.leave()
            relay.closed.set()


async def _watched_by_shared_task(stream: trio.SocketStream) -> None:
    """A connection read by the shared task; its own task only holds it."""
    assert _watched is not None
    fd = stream.socket.fileno()
    relay = _relays[fd] = _Relay(fd)
    _watched.register(fd, select.EPOLLIN)
    try:
        await relay.closed.wait()
    finally:
        if _relays.pop(fd, None) is not None:
            _watched.unregister(fd)
        await trio.aclose_forcefully(stream)


async def _serve(port: int, shared: bool) -> None:
    if not shared:
        await trio.serve_tcp(_own_task, port)
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_shared_task)
        await trio.serve_tcp(_watched_by_shared_task, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument(
        "--shared", action="store_true", help="one task reads every socket (Linux)"
    )
    args = parser.parse_args()
    # Ctrl-C cancels it, with no traceback.
    trio.run(until_interrupted, partial(_serve, args.port, args.shared))


if __name__ == "__main__":
    main()
