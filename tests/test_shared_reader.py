"""The shared reader on its own: parking, handing over, cancelling, order."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import pytest
import trio
import trio.testing
from helpers import STEP_TIMEOUT, LineClient, LiveServer, running_server
from trio.testing import MockClock

from trichat.server._shared_reader import SharedReader, available
from trichat.server.transport import PlainSocket

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


@asynccontextmanager
async def watching(reader: SharedReader) -> AsyncIterator[trio.Nursery]:
    """*reader* running, in a nursery for the test's tasks; all stopped at
    the end."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run)
        yield nursery
        nursery.cancel_scope.cancel()


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
        async with watching(reader) as nursery:
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


async def test_an_error_in_on_ready_is_raised_in_the_parked_task() -> None:
    reader = SharedReader()
    with socket_pairs(1) as [(watched, peer)]:
        async with watching(reader):

            def on_ready() -> bool:
                raise ConnectionResetError("from on_ready")

            peer.send(b"x")
            with trio.fail_after(5), pytest.raises(ConnectionResetError):
                await reader.wait(watched.fileno(), on_ready)
            assert len(reader) == 0


async def test_a_cancelled_wait_stops_watching_at_once() -> None:
    reader = SharedReader()
    got: list[bytes] = []
    with socket_pairs(1) as [(watched, peer)]:
        async with watching(reader):
            with trio.move_on_after(0.01) as waiting:
                await reader.wait(watched.fileno(), reading(watched, got))
            assert waiting.cancelled_caught
            assert len(reader) == 0
            peer.send(b"late")
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # nobody asked for it any more
            assert watched.recv(100) == b"late"


async def test_on_ready_may_cancel_its_own_wait() -> None:
    """As a session does when its own reply overflows its queue (a kick):
    the owner ends by cancellation, woken once, and on_ready's later error
    is dropped, not raised in the owner."""
    reader = SharedReader()
    with socket_pairs(1) as [(watched, peer)]:
        async with watching(reader):
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


async def test_one_waiter_per_socket() -> None:
    reader = SharedReader()
    with socket_pairs(1) as [(watched, _)]:
        async with watching(reader) as nursery:
            nursery.start_soon(reader.wait, watched.fileno(), lambda: True)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await reader.wait(watched.fileno(), lambda: True)


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
    reader = SharedReader()
    with socket_pairs(6) as pairs:
        async with watching(reader) as nursery:
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


async def test_a_failing_handler_ends_only_that_owner_s_wait() -> None:
    """A bug in a socket's handler is raised in the owner whose turn it
    was; the reader goes on for the others."""

    def failing() -> bool:
        raise RuntimeError("a bug in the handler")

    reader = SharedReader()
    got: list[bytes] = []
    with socket_pairs(2) as [(first, first_peer), (second, second_peer)]:
        async with watching(reader) as nursery:
            nursery.start_soon(reader.wait, second.fileno(), reading(second, got))
            first_peer.send(b"x")
            with trio.fail_after(5), pytest.raises(RuntimeError, match="handler"):
                await reader.wait(first.fileno(), failing)
            second_peer.send(b"still served")
            await trio.testing.wait_all_tasks_blocked()
            assert got == [b"still served"]


async def test_an_unexpected_error_after_the_wait_ended_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trichat.server")
    reader = SharedReader(expected=(ConnectionResetError,))
    with socket_pairs(2) as [(first, first_peer), (second, second_peer)]:
        async with watching(reader):
            for (watched, peer), error in [
                ((first, first_peer), ConnectionResetError("no news")),
                ((second, second_peer), KeyError("a bug")),
            ]:
                scope = trio.CancelScope()

                def on_ready(
                    scope: trio.CancelScope = scope, error: Exception = error
                ) -> bool:
                    scope.cancel()
                    raise error

                peer.send(b"x")
                with trio.fail_after(5), scope:
                    await reader.wait(watched.fileno(), on_ready)
    # The expected error is no news: a line at debug level, no traceback.
    # The bug is an error, with its traceback.
    assert [record.levelname for record in caplog.records] == ["DEBUG", "ERROR"]
    quiet, loud = caplog.records
    assert (quiet.levelname, quiet.exc_info) == ("DEBUG", None)
    assert "ConnectionResetError('no news')" in quiet.getMessage()
    assert loud.levelname == "ERROR"
    assert loud.exc_info is not None
    assert isinstance(loud.exc_info[1], KeyError)


async def test_waiting_after_the_reader_stopped_is_refused() -> None:
    reader = SharedReader()
    with trio.move_on_after(0.01):
        await reader.run()
    with socket_pairs(1) as [(watched, _)], pytest.raises(trio.ClosedResourceError):
        await reader.wait(watched.fileno(), lambda: True)


# -- deadlines: what already arrived counts -------------------------------------
# Trio looks at expired deadlines before the shared reader gets to run, so
# these tests make both happen in one pass of its loop: the bytes are
# written with a plain os.write and the clock jumped before anyone yields.


def write_now(client: LineClient, data: bytes) -> None:
    """Into the client's socket, without yielding to the server."""
    assert isinstance(client.stream, trio.SocketStream)
    assert os.write(client.stream.socket.fileno(), data) == len(data)


async def test_a_pong_waiting_in_the_socket_at_the_deadline_counts(
    mock_clock: MockClock,
) -> None:
    async with running_server(ping_interval=30, ping_timeout=10) as live:
        alice = await live.login("alice")
        mock_clock.jump(30)
        await alice.expect("ping|t1")
        write_now(alice, b"pong|t1\n")
        mock_clock.jump(10)
        await alice.send("ping|mine")
        await alice.expect("pong|mine")
        assert live.server.connections == 1


async def test_a_login_waiting_in_the_socket_at_the_deadline_counts(
    mock_clock: MockClock,
) -> None:
    async with running_server(login_timeout=10) as live:
        bob = await live.connect()
        await bob.send("ping|early")  # the connection is served by now
        await bob.expect("pong|early")
        write_now(bob, b"login|bob\n")
        mock_clock.jump(10)
        await bob.expect("login|bob")


async def test_a_silent_client_still_gets_its_login_timeout(
    mock_clock: MockClock,
) -> None:
    async with running_server(login_timeout=10) as live:
        bob = await live.connect()
        await bob.send("ping|early")
        await bob.expect("pong|early")
        mock_clock.jump(10)
        assert (await bob.read_until_closed())[0].startswith("error|login-timeout|")


def fill_socket(fd: int) -> None:
    """Fill the kernel's buffers from *fd* on, until a write would block."""
    with suppress(BlockingIOError):
        while True:
            os.write(fd, b"#" * 65536)
    with suppress(BlockingIOError):
        while True:
            os.write(fd, b"#")


async def test_a_sender_is_held_back_after_a_read_at_the_deadline(
    mock_clock: MockClock,
) -> None:
    """What read_what_came handles is held to the same rule as any read: a
    sender that filled a recipient's queue past half waits for it before
    sending more, so a recipient that reads (if slowly) is not dropped."""
    async with running_server(
        queue_size=2, ping_interval=30, ping_timeout=10, rate=0, presence_delay=0
    ) as live:
        alice = await live.login("alice")
        mock_clock.jump(20)  # bob's quiet period ends after alice's
        bob = await live.login("bob")
        await alice.expect("login|bob")
        await trio.testing.wait_all_tasks_blocked()
        (bob_session,) = [
            connection
            for connection in live.server._connections
            if connection.session.name == "bob"
        ]
        assert isinstance(bob_session.transport, PlainSocket)
        fill_socket(bob_session.transport.fd)  # nothing more reaches bob for now
        write_now(alice, b"talk|bob|1\ntalk|bob|2\ntalk|bob|3\n")
        mock_clock.jump(10)  # alice's ping deadline: read_what_came reads
        await trio.testing.wait_all_tasks_blocked()
        assert not bob_session.kicked, bob_session.end_reason
        assert bob is not None
