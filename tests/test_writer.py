"""The writer: each connection's task that alone writes its mailbox to the socket.

Through real sockets: a crowd gets broadcasts and presence whole and in
order, a frame too big for a user's queue gets that user dropped, and what
a full socket does not take waits in the mailbox and is written later, in
order (``write_loop`` over ``PlainSocket`` directly, then through a running
server).
"""

from __future__ import annotations

import socket

import trio
import trio.testing
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    read_until_gone,
    running_server,
)

from trichat.server.hub import Member
from trichat.server.mailbox import Mailbox, write_loop
from trichat.server.transport import PlainSocket

CROWD = 70


def _member(live: LiveServer, name: str) -> Member:
    (member,) = [member for member in live.server.hub if member.name == name]
    return member


async def _small_window_client(live: LiveServer) -> LineClient:
    """A client whose receive buffer is as small as the kernel allows, so
    that what it does not read soon fills the server's socket."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    await sock.connect(("127.0.0.1", live.port))
    client = LineClient(trio.SocketStream(sock))
    live.clients.append(client)
    return client


async def test_a_broadcast_and_presence_reach_a_crowd_whole_and_in_order() -> None:
    async with running_server(rate=0, presence_delay=0.01) as live:
        names = [f"user{number}" for number in range(CROWD)]
        clients = [await live.login(name) for name in names[:-1]]
        # The last one logs in and broadcasts in one write: its login is
        # held for the next batch of presence when the broadcasts are put
        # behind it.
        last = await live.connect()
        await last.send_raw(f"login|{names[-1]}\ntalk|*|one\ntalk|*|two\n".encode())
        await last.expect(*(f"login|{name}" for name in [names[-1], *names[:-1]]))
        clients.append(last)
        for number, client in enumerate(clients[:-1]):
            # Everyone already online, in the order they came, then everyone
            # after, then the broadcasts: whole and in order.
            await client.expect(*(f"login|{name}" for name in names[:number]))
            await client.expect(*(f"login|{name}" for name in names[number + 1 :]))
            await client.expect(f"talk|{names[-1]}|*|one", f"talk|{names[-1]}|*|two")
        # Presence after the broadcasts reaches everyone too.
        await clients[0].send("exit")
        for client in clients[1:]:
            await client.expect(f"exit|{names[0]}")


async def test_a_broadcast_too_big_for_the_queues_drops_its_recipients() -> None:
    async with running_server(rate=0, queue_bytes=1000, presence_delay=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        carol = await live.login("carol")
        await alice.expect("login|bob", "login|carol")
        await bob.expect("login|alice", "login|carol")
        await carol.expect("login|alice", "login|bob")
        await alice.send("talk|*|" + "z" * 2000)  # one frame over 1000 bytes
        # Neither could take it: both are dropped, and get none of it.
        assert await bob.read_until_closed() == []
        assert await carol.read_until_closed() == []
        # The sender of a broadcast is not told, but sees them go.
        assert sorted(await alice.read_lines(2)) == ["exit|bob", "exit|carol"]
        assert await alice.pong_after("after") == []


async def test_a_direct_message_too_big_for_the_queue_drops_its_recipient() -> None:
    async with running_server(rate=0, queue_bytes=1000, presence_delay=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        await alice.send("talk|bob|" + "z" * 2000)
        assert await bob.read_until_closed() == []
        # The sender is told at once; bob's exit follows when he is gone.
        await alice.expect("error|no-such-user|bob", "exit|bob")


async def test_the_refusal_for_a_user_too_slow_names_them_as_the_sender_did() -> None:
    # As for anyone not online, the detail is the target as it was written.
    async with running_server(rate=0, queue_bytes=1000, presence_delay=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await alice.expect("login|bob")
        await alice.send("talk|BOB|" + "z" * 2000)
        assert await bob.read_until_closed() == ["login|alice"]
        await alice.expect("error|no-such-user|BOB", "exit|bob")


async def test_a_user_dropped_as_too_slow_is_offline_at_once() -> None:
    # The message after the one that dropped bob comes in the same read,
    # before bob's own task has run: it must not be queued for a user who
    # is gone (and lost without a word).
    async with running_server(rate=0, queue_bytes=1000, presence_delay=0) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        await alice.send("talk|bob|" + "z" * 2000 + "\ntalk|bob|still there?")
        assert await bob.read_until_closed() == []
        await alice.expect(
            "error|no-such-user|bob", "error|no-such-user|bob", "exit|bob"
        )


async def test_a_dropped_user_s_name_stays_taken_until_the_exit_is_told() -> None:
    # A kick and another client's login of the same name can be handled in
    # one turn of the shared reader, before the kicked user's task runs:
    # the login must be refused, not announced and then undone by the
    # dropped user's exit.
    async with running_server(rate=0, presence_delay=0) as live:
        alice = await live.login("alice")
        await live.login("bob")
        await alice.expect("login|bob")
        carol = await live.connect()
        await trio.testing.wait_all_tasks_blocked()
        by_name = {c.session.name: c for c in live.server._connections}
        (newcomer,) = [c for c in live.server._connections if c.session.name is None]
        by_name["bob"].kick("too slow: outgoing queue full")
        # No checkpoint in between: as the shared reader would, in one turn.
        newcomer.received(b"login|bob\n")
        newcomer.step(64)
        assert await carol.read_line() == "error|name-taken|bob is already online"
        await alice.expect("exit|bob")
        await carol.send("login|bob")
        assert (await carol.read_line(), await alice.read_line()) == (
            "login|bob",
            "login|bob",
        )
        assert await alice.pong_after("end") == []


async def test_what_a_full_socket_does_not_take_is_written_later_in_order() -> None:
    ours, theirs = trio.socket.socketpair()
    with ours, theirs:
        transport = PlainSocket(trio.SocketStream(ours))
        mailbox = Mailbox(100, 64 << 20)
        big = b"x" * (8 << 20) + b"\n"  # more than a socket buffer holds
        after = b"".join(b"after %d\n" % number for number in range(10))
        assert mailbox.put(big)
        received = bytearray()
        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_loop, mailbox, transport.send)
                await trio.testing.wait_all_tasks_blocked()
                # The socket took part of it; the writer waits for room with
                # the rest, and what comes meanwhile queues behind it.
                assert 0 < mailbox.queued_bytes < len(big)
                assert mailbox.queued_frames == 1
                for number in range(10):
                    assert mailbox.put(b"after %d\n" % number)
                mailbox.close()
                while data := await theirs.recv(1 << 20):
                    received += data
                    if len(received) == len(big) + len(after):
                        break
        assert bytes(received) == big + after
        assert (mailbox.queued_frames, mailbox.queued_bytes) == (0, 0)
        assert mailbox.last_written == 11


async def test_a_server_writes_what_a_full_socket_did_not_take_later_in_order() -> None:
    count = 400
    async with running_server(
        rate=0, queue_size=10 * count, queue_bytes=64 << 20, presence_delay=0
    ) as live:
        alice = await live.login("alice")
        bob = await _small_window_client(live)
        await bob.login("bob")
        await alice.expect("login|bob")
        text = "w" * 3000
        await alice.send_raw(
            b"".join(f"talk|bob|{n:05d}{text}\n".encode() for n in range(count))
        )
        # Everything alice sent is handled (and nothing refused), and bob,
        # who has read nothing yet, has frames waiting for his socket.
        assert await alice.pong_after("handled") == []
        mailbox = _member(live, "bob").mailbox
        assert mailbox.queued_bytes > 0
        await bob.expect("login|alice")
        for n in range(count):
            assert await bob.read_line() == f"talk|alice|bob|{n:05d}{text}"
        assert mailbox.queued_bytes == 0
        await bob.send("exit")
        assert await read_until_gone(bob.stream) == b""
