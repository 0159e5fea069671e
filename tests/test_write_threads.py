"""Large flushes and broadcasts share their writes with threads.

``Hub.flush_due`` hands every other socket's write to a helper thread when
at least _SHARED_FLUSH outboxes are due, and a broadcast writes at once to
every recipient with nothing queued, sharing those writes the same way;
these tests check that nothing is lost, doubled or reordered that way,
partial writes included.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager

import pytest
import trio
from helpers import running_server

from trichat.protocol.messages import Talk
from trichat.server import ServerConfig
from trichat.server import hub as _hub
from trichat.server.hub import _SHARED_FLUSH, Hub, Outbox, Peer

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


Crowd = list[tuple[Peer, socket.socket]]


@contextmanager
def _crowd_online(
    threads: int, max_bytes: int = 16 << 20
) -> Iterator[tuple[Hub, Crowd]]:
    """A hub with *threads* write helpers and CROWD users online, each with
    a plain socket whose other end comes with them, everything the logins
    sent read and gone."""
    hub = Hub()
    with ExitStack() as stack, hub.write_threads(threads):
        crowd = []
        kicked: list[str] = []
        for number, (fd, theirs) in enumerate(_socket_pairs(CROWD, stack)):
            outbox = Outbox(100, max_bytes, fd=fd, due=hub.due)
            peer = Peer(f"user{number}", outbox, kicked.append)
            hub.join(peer)
            hub.flush_due()
            crowd.append((peer, theirs))
        for _, theirs in crowd:
            _read_all(theirs)
        assert not kicked
        yield hub, crowd


@pytest.mark.parametrize("threads", [0, 1, 3])
async def test_a_broadcast_goes_at_once_to_the_idle_and_behind_the_queue_of_others(
    threads: int,
) -> None:
    with _crowd_online(threads) as (hub, crowd):
        sender = crowd[0][0]
        # One has a frame waiting for the next flush, one has a block
        # its socket did not take, waiting for its writer.
        waiting, held = crowd[3][0].outbox, crowd[4][0].outbox
        assert waiting.put(b"waiting\n")
        big = b"x" * (8 << 20) + b"\n"
        assert held.put(big)
        held.flush()
        assert held.handed.frames == 1
        congested: list[Outbox] = []
        assert hub.deliver(sender, Talk("*", "hello"), congested) is None
        assert congested == []
        # Before any flush: the idle have it already.
        for number, (_, theirs) in enumerate(crowd):
            if number not in (0, 3, 4):
                assert _read_all(theirs) == b"talk|user0|*|hello\n"
        assert _read_all(crowd[3][1]) == b""
        hub.flush_due()
        assert _read_all(crowd[3][1]) == b"waiting\ntalk|user0|*|hello\n"
        assert held.handed.frames == 2
        assert _read_all(crowd[4][1]) + held.drain() == (big + b"talk|user0|*|hello\n")
        assert _read_all(crowd[0][1]) == b""
        for peer, _ in crowd:
            assert (peer.outbox.queued_frames, peer.outbox.queued_bytes) == (0, 0)


@pytest.mark.parametrize("threads", [0, 1])
async def test_what_an_idle_socket_does_not_take_of_a_broadcast_goes_to_its_writer(
    threads: int,
) -> None:
    with _crowd_online(threads) as (hub, crowd):
        sender, (receiver, theirs) = crowd[0][0], crowd[1]
        # Its client reads nothing: its socket is full before the
        # broadcast, and takes none of it.
        full = b""
        while written := _write_raw(receiver.outbox, b"y" * 65536):
            full += b"y" * written
        text = b"z" * (1 << 20)  # more than an empty socket takes
        relayed, error = hub.relay_run(sender, b"*", [b"talk|*|" + text], 0, 1, [])
        assert (relayed, error) == (1, None)
        frame = b"talk|user0|*|" + text + b"\n"
        for outbox in (receiver.outbox, crowd[2][0].outbox):
            assert outbox.handed.frames == 1
            assert outbox.queued_frames == 1
        assert receiver.outbox.queued_bytes == len(frame)
        assert _read_all(theirs) + receiver.outbox.drain() == full + frame
        # The idle ones took part of it; their writers have the rest.
        for peer, theirs in crowd[2:]:
            assert _read_all(theirs) + peer.outbox.drain() == frame
        for peer, _ in crowd:
            assert (peer.outbox.queued_frames, peer.outbox.queued_bytes) == (0, 0)


async def test_a_broadcast_does_not_overtake_what_the_writer_has_or_is_writing() -> (
    None
):
    with _crowd_online(0) as (hub, crowd):
        sender = crowd[0][0]
        # Handed on to the writer, with room in the socket by now.
        handed, theirs = crowd[1][0].outbox, crowd[1][1]
        big = b"x" * (8 << 20) + b"\n"
        assert handed.put(big)
        handed.flush()
        first = _read_all(theirs)
        assert handed.handed.frames == 1
        # Taken by the writer, which is in the middle of writing it.
        sending = crowd[2][0].outbox
        assert sending.put(b"being written\n")
        taken = sending.take_pending()
        assert taken is not None
        sending.hand_on(*taken)
        block, frames = sending.handed.take()
        sending.sending = True
        hub.deliver(sender, Talk("*", "hello"), [])
        hub.flush_due()
        assert first + _read_all(theirs) + handed.drain() == (
            big + b"talk|user0|*|hello\n"
        )
        assert _read_all(crowd[2][1]) == b""
        sending.sent(len(block), frames)
        sending.sending = False
        assert block + sending.drain() == b"being written\ntalk|user0|*|hello\n"


async def test_a_broadcast_a_socket_took_part_of_reports_a_congested_outbox() -> None:
    with _crowd_online(1, max_bytes=4 << 20) as (hub, crowd):
        congested: list[Outbox] = []
        text = b"z" * (3 << 20)  # more than half the queue, not all written
        hub.relay_run(crowd[0][0], b"*", [b"talk|*|" + text], 0, 1, congested)
        assert sorted(map(id, congested)) == sorted(id(p.outbox) for p, _ in crowd[1:])


class _Broken(Exception):
    pass


def _fail_third_write(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Have this thread's third ``write`` from now on raise an error instead;
    returns, for each write in this thread, whether Ctrl-C would have waited
    for the pass to end (Trio's KeyboardInterrupt protection)."""
    real_write = _hub._write
    protected: list[bool] = []

    def failing_write(fd: int, data: bytes) -> int:
        if threading.current_thread() is threading.main_thread():
            protected.append(trio.lowlevel.currently_ki_protected())
            if len(protected) == 3:
                raise _Broken
        return real_write(fd, data)

    monkeypatch.setattr(_hub, "_write", failing_write)
    return protected


@pytest.mark.parametrize("threads", [0, 1])
async def test_a_broadcast_failing_halfway_leaves_nobody_with_part_of_it(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _crowd_online(threads) as (hub, crowd):
        sender = crowd[0][0]
        protected = _fail_third_write(monkeypatch)
        text = b"z" * (1 << 20)  # more than an empty socket takes
        with pytest.raises(_Broken):
            hub.relay_run(sender, b"*", [b"talk|*|" + text], 0, 1, [])
        monkeypatch.undo()
        assert protected == [True] * 3
        hub.deliver(sender, Talk("*", "hello"), [])
        hub.flush_due()
        frame = b"talk|user0|*|" + text + b"\n"
        for peer, theirs in crowd[1:]:
            got = _read_all(theirs) + peer.outbox.drain()
            assert got == frame + b"talk|user0|*|hello\n"


async def test_a_shared_flush_failing_halfway_loses_no_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _crowd_online(1) as (hub, crowd):
        block = b"w" * (1 << 20) + b"\n"  # more than an empty socket takes
        for peer, _ in crowd:
            assert peer.outbox.put(block)
        protected = _fail_third_write(monkeypatch)
        with pytest.raises(_Broken):
            hub.flush_due()
        monkeypatch.undo()
        assert protected == [True] * 3
        for peer, theirs in crowd:
            assert _read_all(theirs) + peer.outbox.drain() == block
            assert (peer.outbox.queued_frames, peer.outbox.queued_bytes) == (0, 0)


async def test_ctrl_c_while_waiting_for_the_helpers_waits_for_their_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _crowd_online(1) as (hub, crowd):
        for peer, _ in crowd:
            assert peer.outbox.put(b"hello\n")
        waits = 0

        def interrupted_wait(futures: list[Future[None]]) -> object:
            nonlocal waits
            waits += 1
            if waits == 1:
                raise KeyboardInterrupt
            return wait(futures)

        monkeypatch.setattr(_hub, "wait", interrupted_wait)
        with pytest.raises(KeyboardInterrupt):
            hub.flush_due()
        assert waits == 2
        for peer, theirs in crowd:
            assert _read_all(theirs) + peer.outbox.drain() == b"hello\n"


def _write_raw(outbox: Outbox, data: bytes) -> int:
    """Write to *outbox*'s socket behind its back, as if its client had not
    read earlier frames; how much the socket took."""
    assert outbox.fd is not None
    try:
        return os.write(outbox.fd, data)
    except BlockingIOError:
        return 0


async def test_a_broadcast_too_big_for_an_idle_outbox_gets_its_user_dropped() -> None:
    with _crowd_online(0, max_bytes=1000) as (hub, crowd):
        dropped: list[str] = []
        crowd[1][0].kick = dropped.append
        relayed, error = hub.relay_run(
            crowd[0][0], b"*", [b"talk|*|" + b"z" * 2000], 0, 1, []
        )
        assert (relayed, error) == (1, None)
        assert dropped == ["too slow: outgoing queue full"]
        assert _read_all(crowd[1][1]) == b""


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
