"""The least a Trio server can do to relay trichat talk: a yardstick.

Not trichat: no validation, limits, queues or errors. It answers
``login|NAME`` (then one ``login`` frame per user online, and tells them),
and relays ``talk|TO|TEXT`` as ``talk|FROM|TO|TEXT``, to everyone else if
TO is ``*``, reading with ``os.read`` and writing with ``os.write``; the
writes of a broadcast to 64 or more are shared with ``--write-threads``
helper threads (1 unless told), as trichat's are. Presence is one write
per user per login, not batched, so the idle scenario's logins are slow;
its broadcast is the figure to compare. By default each
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
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial

import trio

from trichat._process import until_interrupted

_online: dict[bytes, int] = {}  # name -> socket descriptor
_helpers: list[ThreadPoolExecutor] = []  # one pool of write helpers, if any
_SHARED = 64  # a broadcast to this many or more shares its writes
_threads = 0


def _write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except OSError:
        return 0  # reset, or full: a yardstick does not queue


def _write_each(fds: list[int], data: bytes, start: int, step: int) -> None:
    for index in range(start, len(fds), step):
        _write(fds[index], data)


def _write_to(fds: list[int], data: bytes) -> None:
    """Write *data* to each of *fds*, shared with the helpers if many."""
    if not _helpers or len(fds) < _SHARED:
        _write_each(fds, data, 0, 1)
        return
    parts = _threads + 1
    running = [
        _helpers[0].submit(_write_each, fds, data, part, parts)
        for part in range(1, parts)
    ]
    try:
        _write_each(fds, data, 0, parts)
    finally:
        wait(running)


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
            if line.startswith(b"talk|*|") and self.name:
                self.send(out)
                frame = b"talk|" + self.name + b"|" + line[5:] + b"\n"
                _write_to([fd for fd in _online.values() if fd != self.fd], frame)
            elif line.startswith(b"talk|") and self.name:
                target = _online.get(line[5:].partition(b"|")[0])
                if target is not None:
                    frame = b"talk|" + self.name + b"|" + line[5:] + b"\n"
                    out.setdefault(target, []).append(frame)
            elif line.startswith(b"login|") and not self.name:
                self.send(out)
                frame = line + b"\n"
                _write_to(list(_online.values()), frame)
                roster = [b"login|" + name + b"\n" for name in _online]
                os.write(self.fd, frame + b"".join(roster))
                self.name = line[6:]
                _online[self.name] = self.fd
        self.send(out)

    def send(self, out: dict[int, list[bytes]]) -> None:
        """Write the frames gathered for each recipient, one write each."""
        for target, frames in out.items():
            os.write(target, b"".join(frames))
        out.clear()

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
    parser.add_argument(
        "--write-threads",
        type=int,
        default=1,
        help="helper threads sharing a broadcast's writes (%(default)s)",
    )
    args = parser.parse_args()
    if args.write_threads < 0:
        parser.error("--write-threads must not be negative")
    global _threads
    _threads = args.write_threads
    with ThreadPoolExecutor(max(1, _threads)) as pool:
        if _threads:
            _helpers.append(pool)
        # Ctrl-C cancels it, with no traceback.
        trio.run(until_interrupted, partial(_serve, args.port, args.shared))


if __name__ == "__main__":
    main()
