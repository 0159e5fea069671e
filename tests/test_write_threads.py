"""Large flushes (a broadcast to a crowd) share their writes with threads.

``Hub.flush_due`` hands every other socket's write to a helper thread when
at least _SHARED_FLUSH outboxes are due; these tests check that nothing is
lost, doubled or reordered that way, partial writes included.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import trio
from helpers import running_server

from trichat._hub import _SHARED_FLUSH, Hub, Outbox
from trichat.server import ServerConfig

CROWD = _SHARED_FLUSH + 6


def _socket_pairs(count: int, stack: ExitStack) -> Iterator[tuple[int, socket.socket]]:
    for _ in range(count):
        ours, theirs = socket.socketpair()
        stack.enter_context(ours)
        stack.enter_context(theirs)
        ours.setblocking(False)
        yield ours.fileno(), theirs


def _read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        data += chunk


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_a_shared_flush_writes_every_block_whole_and_once(threads: int) -> None:
    async def main() -> None:
        hub = Hub()
        with ExitStack() as stack, hub.write_threads(threads):
            pairs = list(_socket_pairs(CROWD, stack))
            outboxes = [Outbox(100, 1 << 20, fd=fd, due=hub.due) for fd, _ in pairs]
            for turn in range(3):
                for number, outbox in enumerate(outboxes):
                    assert outbox.put(b"frame %d for %d\n" % (turn, number))
                    assert outbox.put(b"more\n")
                hub.flush_due()
            for number, (outbox, (_, peer)) in enumerate(
                zip(outboxes, pairs, strict=True)
            ):
                expected = b"".join(
                    b"frame %d for %d\nmore\n" % (turn, number) for turn in range(3)
                )
                assert _read_all(peer) == expected
                assert (outbox.queued_frames, outbox.queued_bytes) == (0, 0)

    trio.run(main)


def test_what_a_full_socket_does_not_take_goes_to_its_writer_in_order() -> None:
    async def main() -> None:
        hub = Hub()
        with ExitStack() as stack, hub.write_threads(1):
            pairs = list(_socket_pairs(CROWD, stack))
            outboxes = [Outbox(100, 64 << 20, fd=fd, due=hub.due) for fd, _ in pairs]
            big = b"x" * (8 << 20) + b"\n"  # more than a socket buffer holds
            full = outboxes[7]
            assert full.put(big)
            for outbox in outboxes:
                assert outbox.put(b"after\n")
            hub.flush_due()
            # The socket took part of the first block; the rest, and the
            # next, wait for the writer, in order.
            assert full.handed.frames == 2
            taken = full.drain()
            got = _read_all(pairs[7][1])
            assert got + taken == big + b"after\n"
            for number, (_, peer) in enumerate(pairs):
                if number != 7:
                    assert _read_all(peer) == b"after\n"

    trio.run(main)


def _write_helpers_running() -> int:
    # By name: other threads (Trio's thread cache) come and go on their own.
    return sum(
        thread.name.startswith("trichat-write") for thread in threading.enumerate()
    )


def test_helper_threads_start_with_the_block_and_are_gone_after_it() -> None:
    hub = Hub()
    assert _write_helpers_running() == 0
    with hub.write_threads(2):
        assert _write_helpers_running() == 2
        assert hub.write_helpers is not None
    assert _write_helpers_running() == 0
    assert hub.write_helpers is None


async def test_a_broadcast_and_presence_reach_a_crowd_whole_and_in_order() -> None:
    async with running_server(rate=0, write_threads=1, presence_delay=0.01) as live:
        names = [f"user{number}" for number in range(CROWD)]
        clients = []
        for name in names:
            clients.append(await live.login(name))
        # Everyone sees everyone's login (in one batch or several), then
        # two broadcasts, in order.
        await clients[0].send("talk|*|one")
        await clients[0].send("talk|*|two")
        for number, client in enumerate(clients):
            logins = await client.read_lines(CROWD - 1)
            assert sorted(logins) == sorted(
                f"login|{name}" for name in names if name != names[number]
            )
            if number:
                await client.expect("talk|user0|*|one", "talk|user0|*|two")


def test_write_threads_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="write_threads must not be negative"):
        ServerConfig(write_threads=-1)


def test_outboxes_without_a_socket_go_to_their_writers_as_before() -> None:
    # Not plain sockets (TLS, say): nothing to share, all to the writers.
    async def main() -> None:
        hub = Hub()
        with hub.write_threads(1):
            outboxes = [Outbox(10, 1000, due=hub.due) for _ in range(CROWD)]
            for outbox in outboxes:
                outbox.put(b"hello\n")
            hub.flush_due()
            assert [outbox.drain() for outbox in outboxes] == [b"hello\n"] * CROWD

    trio.run(main)
