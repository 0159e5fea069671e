"""The shared reader on its own: parking, handing over, cancelling, order."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
import trio
import trio.testing
from helpers import STEP_TIMEOUT, LiveServer, running_server

from trichat._shared_reader import SharedReader, available

pytestmark = pytest.mark.skipif(not available(), reason="needs select.epoll")


@contextmanager
def socket_pairs(count: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """*count* connected pairs; the first of each is the one watched."""
    pairs = [socket.socketpair() for _ in range(count)]
    for watched, _ in pairs:
        watched.setblocking(False)
    try:
        yield pairs
    finally:
        for one, other in pairs:
            one.close()
            other.close()


def reading(sock: socket.socket, into: list[bytes]) -> Callable[[], bool]:
    def on_ready() -> bool:
        with suppress(BlockingIOError):
            into.append(sock.recv(100))
        return True

    return on_ready


async def test_reads_for_a_parked_task_until_it_must_take_over() -> None:
    reader = SharedReader()
    got: list[bytes] = []
    with socket_pairs(1) as [(watched, peer)]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            woken = trio.Event()

            def on_ready() -> bool:
                got.append(watched.recv(100))
                return got[-1] != b"stop"

            async def owner() -> None:
                await reader.wait(watched.fileno(), on_ready)
                woken.set()

            nursery.start_soon(owner)
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader) == 1
            peer.send(b"one")
            await trio.testing.wait_all_tasks_blocked()
            peer.send(b"two")
            await trio.testing.wait_all_tasks_blocked()
            assert got == [b"one", b"two"]
            assert not woken.is_set()  # handled without waking its owner
            peer.send(b"stop")
            with trio.fail_after(5):
                await woken.wait()
            assert got == [b"one", b"two", b"stop"]
            assert len(reader) == 0
            nursery.cancel_scope.cancel()


async def test_an_error_in_on_ready_is_raised_in_the_parked_task() -> None:
    reader = SharedReader()
    with socket_pairs(1) as [(watched, peer)]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)

            def on_ready() -> bool:
                raise ConnectionResetError("from on_ready")

            peer.send(b"x")
            with trio.fail_after(5), pytest.raises(ConnectionResetError):
                await reader.wait(watched.fileno(), on_ready)
            assert len(reader) == 0
            nursery.cancel_scope.cancel()


async def test_a_cancelled_wait_stops_watching_at_once() -> None:
    reader = SharedReader()
    got: list[bytes] = []
    with socket_pairs(1) as [(watched, peer)]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            with trio.move_on_after(0.01) as waiting:
                await reader.wait(watched.fileno(), reading(watched, got))
            assert waiting.cancelled_caught
            assert len(reader) == 0
            peer.send(b"late")
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # nobody asked for it any more
            assert watched.recv(100) == b"late"
            nursery.cancel_scope.cancel()


async def test_on_ready_may_cancel_its_own_wait() -> None:
    """As a session does when its own reply overflows its queue (a kick):
    the owner ends by cancellation, woken once, and on_ready's later error
    is dropped, not raised in the owner."""
    reader = SharedReader()
    with socket_pairs(1) as [(watched, peer)]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            scope = trio.CancelScope()

            def on_ready() -> bool:
                scope.cancel()
                raise RuntimeError("after the kick")

            peer.send(b"x")
            with trio.fail_after(5):
                with scope:
                    await reader.wait(watched.fileno(), on_ready)
            assert scope.cancelled_caught
            assert len(reader) == 0
            nursery.cancel_scope.cancel()


async def test_one_waiter_per_socket() -> None:
    reader = SharedReader()
    with socket_pairs(1) as [(watched, _)]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            nursery.start_soon(reader.wait, watched.fileno(), lambda: True)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await reader.wait(watched.fileno(), lambda: True)
            nursery.cancel_scope.cancel()


async def test_parked_tasks_hear_when_the_reader_stops() -> None:
    reader = SharedReader()
    with socket_pairs(2) as pairs:
        errors: list[type[BaseException]] = []

        async def owner(sock: socket.socket) -> None:
            try:
                await reader.wait(sock.fileno(), lambda: True)
            except trio.ClosedResourceError as error:
                errors.append(type(error))

        async with trio.open_nursery() as owners, trio.open_nursery() as running:
            running.start_soon(reader.run)
            for watched, _ in pairs:
                owners.start_soon(owner, watched)
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader) == 2
            running.cancel_scope.cancel()
        assert errors == [trio.ClosedResourceError] * 2


async def test_ready_sockets_are_served_in_the_order_they_became_ready() -> None:
    """A select loop's fairness: no socket is served twice before another
    that was ready first, whatever order Trio runs its tasks in."""
    served: list[int] = []
    flushed: list[int] = []
    reader = SharedReader(after_each=lambda: flushed.append(len(served)))
    with socket_pairs(6) as pairs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            for index, (watched, _) in enumerate(pairs):

                def on_ready(index: int = index, sock: socket.socket = watched) -> bool:
                    sock.recv(100)
                    served.append(index)
                    return True

                nursery.start_soon(reader.wait, watched.fileno(), on_ready)
            await trio.testing.wait_all_tasks_blocked()
            order = [4, 1, 5, 0, 3, 2]
            for index in order:
                pairs[index][1].send(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert served == order
            assert flushed == [1, 2, 3, 4, 5, 6]  # after each, not per batch
            nursery.cancel_scope.cancel()


def test_the_descriptor_is_closed_with_the_reader() -> None:
    reader = SharedReader()
    fd = reader._epoll.fileno()

    async def main() -> None:
        with trio.move_on_after(0.01):
            await reader.run()

    trio.run(main)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


async def parked(live: LiveServer, count: int) -> None:
    """Wait (bounded) until *count* connections are parked at the reader."""
    reader = live.server.shared_reader
    assert reader is not None
    with trio.fail_after(STEP_TIMEOUT):
        while len(reader) != count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_the_server_reads_idle_connections_from_its_shared_reader() -> None:
    async with running_server(shared_reader=True, rate=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await bob.expect("login|alice")  # who was online already
        await alice.expect("login|bob")
        await parked(live, 2)
        for number in range(3):
            await alice.send(f"talk|bob|hello {number}")
            await bob.expect(f"talk|alice|bob|hello {number}")
        await bob.send("ping|t1")
        await bob.expect("pong|t1")
        # Handled by the reader: both are still parked, none was dropped.
        await parked(live, 2)
        await bob.send("exit|bob")
        await alice.expect("exit|bob")
        await parked(live, 1)
        assert live.server.connections == 1


async def test_without_the_shared_reader_each_task_waits_for_its_socket() -> None:
    async with running_server(shared_reader=False) as live:
        alice = await live.login("alice")
        await alice.send("ping|t1")
        await alice.expect("pong|t1")
        assert live.server.shared_reader is None
