"""The server core against the cases an adversarial review found broken.

Each test states what the protocol or the code's own documentation
promises, and failed before the fix it comes with; the comments in the
tests describe those faults, as they were. Most run on in-memory streams
through ``ChatServer.serve_connection`` under pytest-trio's
``autojump_clock``, so a timeout costs no real time and nothing depends on
real-time scheduling.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from helpers import running_server
from trio.testing import MockClock

from trichat.server import ChatServer, ServerConfig
from trichat.server.session import Session

# Virtual seconds: generous, since waiting costs nothing.
STEP = 600.0


class Client:
    """The test's end of an in-memory connection to the server."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self.stream.send_all(raw if raw.endswith(b"\n") else raw + b"\n")

    async def read_line(self) -> str | None:
        """The next line, or None when the server closed first."""
        with trio.fail_after(STEP):
            while b"\n" not in self._buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def expect(self, *lines: str) -> None:
        assert [await self.read_line() for _ in lines] == list(lines)

    async def login(self, name: str) -> None:
        await self.send(f"login|{name}")
        assert await self.read_line() == f"login|{name}"

    async def read_until_closed(self) -> list[str]:
        lines: list[str] = []
        while (line := await self.read_line()) is not None:
            lines.append(line)
        return lines


class Server:
    """A ChatServer serving in-memory clients in *nursery*."""

    def __init__(self, server: ChatServer, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery

    def serve(self, stream: trio.abc.Stream, ip: str = "192.0.2.1") -> None:
        self.nursery.start_soon(self.server.serve_connection, stream, ip)

    def connect(self) -> Client:
        """A client on an unbounded in-memory pipe (the server's writes to
        it never block)."""
        ours, theirs = trio.testing.memory_stream_pair()
        self.serve(theirs)
        return Client(ours)

    def connect_lockstep(self) -> Client:
        """A client on a pipe without buffering: the server's ``send_all``
        returns only once the client has read every byte of it."""
        ours, theirs = trio.testing.lockstep_stream_pair()
        self.serve(theirs)
        return Client(ours)


@asynccontextmanager
async def memory_server(**config: object) -> AsyncIterator[Server]:
    server = ChatServer(ServerConfig(port=0, **config))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        try:
            yield Server(server, nursery)
        finally:
            server.shutdown()
            nursery.cancel_scope.deadline = trio.current_time() + STEP


async def read_slowly(
    client: Client,
    *,
    chunk: int,
    pause: float,
    done: Callable[[list[str]], bool],
) -> list[str]:
    """Read *chunk* bytes every *pause* seconds, as a slow link would, until
    *done* says so or the server closes. Answers the server's pings, and
    returns every other line."""
    lines: list[str] = []
    buffer = b""
    while not done(lines):
        data = await client.stream.receive_some(chunk)
        if not data:
            break
        *complete, buffer = (buffer + data).split(b"\n")
        for raw in complete:
            line = raw.decode()
            if line.startswith("ping|"):
                await client.send("pong|" + line.removeprefix("ping|"))
            else:
                lines.append(line)
        await trio.sleep(pause)
    return lines


def talks(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("talk|")]


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize("option", ["ping_interval", "presence_delay", "rate"])
def test_config_refuses_nan(option: str) -> None:
    # ``_not_negative`` tests ``value < 0``, which is False for NaN, so
    # ``trichat serve --ping-interval nan`` (argparse ``type=float``) is
    # accepted. NaN ping_interval fails every session at login (a NaN cancel
    # scope deadline raises ValueError); NaN presence_delay crashes serve()
    # at the first login (trio.sleep(nan)); NaN rate switches the rate limit
    # off while looking on.
    with pytest.raises(ValueError, match=option):
        ServerConfig(**{option: math.nan})  # type: ignore[arg-type]


def test_config_refuses_a_port_past_65535() -> None:
    # Only ``_not_negative``: ``trichat serve --port 70000`` listens on port
    # 4464 (70000 - 65536) and logs that, with no error.
    with pytest.raises(ValueError, match="port"):
        ServerConfig(port=70000)


# -- a session that fails --------------------------------------------------------


def fail_after_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first session that logs in fail with a bug right after."""
    log_in = Session._log_in
    failed = False

    def failing_log_in(session: Session, name: str) -> None:
        nonlocal failed
        log_in(session, name)
        if not failed:
            failed = True
            raise RuntimeError("a bug in the session")

    monkeypatch.setattr(Session, "_log_in", failing_log_in)


async def test_a_session_that_fails_goes_offline(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve_connection catches Exception from a session so the server lives
    # on; the session must still take the user offline and close its
    # outbox, or it stays a ghost: the name taken for good, and the outbox
    # (with the closed socket's fd) still receiving every presence frame.
    fail_after_login(monkeypatch)
    async with memory_server() as live:
        alice = live.connect()
        await alice.send("login|alice")
        await alice.read_until_closed()
        assert live.server.connections == 0
        again = live.connect()
        await again.send("login|alice")
        assert await again.read_line() == "login|alice"


async def test_a_failed_session_never_writes_to_its_old_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same ghost over TCP: its Outbox still holds the fd of a socket
    # serve_connection has closed, and Outbox.flush os.write()s to it. Once
    # the number is reused (here by dup2, in real life by the next accept),
    # other users' frames go to whoever owns it now.
    fail_after_login(monkeypatch)
    async with running_server(presence_delay=0) as live:
        alice = await live.connect()
        await alice.send("login|alice")
        assert await alice.read_until_closed() == ["login|alice"]
        assert live.server.connections == 0
        fds = [member.mailbox for member in live.server.hub]
        if not fds:
            return  # alice went offline: no ghost, nothing to write to
        (fd,) = fds
        assert fd is not None
        with pytest.raises(OSError, match=rf"\[Errno {errno.EBADF}\]"):
            os.fstat(fd)  # closed, and not reused yet
        # The lowest free numbers go to the next sockets opened: one of
        # these two takes the ghost's number (else dup2 gives it one).
        mine, theirs = socket.socketpair()
        with mine, theirs:
            reused = fd in (mine.fileno(), theirs.fileno())
            if not reused:
                os.dup2(theirs.fileno(), fd)
            other_end = theirs if fd == mine.fileno() else mine
            try:
                bob = await live.connect()
                await bob.send("login|bob")
                lines = await bob.read_until_closed()
                assert lines[0] == "login|bob", lines
                other_end.setblocking(False)
                try:
                    leaked = other_end.recv(4096)
                except BlockingIOError:
                    leaked = b""
                assert leaked == b""
            finally:
                if not reused:
                    os.close(fd)


# -- timeouts --------------------------------------------------------------------


async def test_ping_is_sent_when_its_deadline_passes(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wake_at() arms the quiet scope for last_heard + ping_interval, but
    # check_quiet asks now - last_heard >= ping_interval, and in floating
    # point (0.7 + 0.1) - 0.7 < 0.1. The scope expires, no ping is due yet,
    # and read_loop re-enters a scope whose deadline has passed: a busy
    # loop until the clock moves past the deadline by an ulp. On a real
    # clock that is microseconds; under MockClock, which moves only when
    # every task waits, it is forever (this test caps it at 1000 turns).
    turns = 0
    check_quiet = Session.check_quiet

    def counted(session: Session, now: float) -> None:
        nonlocal turns
        turns += 1
        if turns > 1000:
            raise RuntimeError("read_loop spins")
        check_quiet(session, now)

    monkeypatch.setattr(Session, "check_quiet", counted)
    async with memory_server(ping_interval=0.1, ping_timeout=10) as live:
        await trio.sleep(0.7)
        alice = live.connect()
        await alice.login("alice")  # last_heard = 0.7
        assert await alice.read_line() == "ping|t1", f"{turns} turns"


# -- presence --------------------------------------------------------------------


async def test_a_login_burst_does_not_drop_a_user_who_reads(
    autojump_clock: MockClock,
) -> None:
    # With presence batching (serve() runs _send_presence), presence
    # frames wait in the mailbox until the batch timer or until _HELD_FRAMES
    # (256) pile up; they count against queue_size all the while, and no
    # amount of reading drains them. With queue_size under 256, a burst of
    # queue_size logins inside one batch window kicks every user online as
    # "too slow", however fast they read.
    async with memory_server(queue_size=8, presence_delay=0.1, rate=0) as live:
        live.nursery.start_soon(live.server._send_presence)
        alice = live.connect()
        await alice.login("alice")
        for n in range(10):
            await live.connect().send(f"login|user{n}")
        assert [await alice.read_line() for _ in range(10)] == [
            f"login|user{n}" for n in range(10)
        ]


# -- login -----------------------------------------------------------------------


async def test_newcomer_gets_the_roster_however_many_are_online(
    autojump_clock: MockClock,
) -> None:
    # Hub.join queues the acknowledgement and one login frame per user
    # online as ONE put, which is held to queue_bytes. Once the roster is
    # bigger than queue_bytes, every newcomer is kicked ("too slow") the
    # moment it logs in, before it could read a byte, and gets no error.
    # Here: 4 KiB and 105 users with 32-character names (39 bytes a line).
    # With the defaults (1 MiB) it takes about 7,800 users whose names are
    # 32 four-byte letters, fewer than max_clients.
    async with memory_server(queue_bytes=4096, rate=0) as live:
        names = [f"user{n:03d}".ljust(32, "x") for n in range(105)]
        for name in names:
            await live.connect().login(name)
        newcomer = live.connect()
        await newcomer.send("login|newcomer")
        assert await newcomer.read_line() == "login|newcomer"


# -- slow readers ----------------------------------------------------------------


async def test_a_slow_but_steady_reader_is_not_dropped_by_a_burst(
    autojump_clock: MockClock,
) -> None:
    # protocol.md: "A client that keeps reading is never dropped because
    # another client sent a burst". But the writer takes the whole queue
    # in one send_all and reports progress only when that returns; a
    # block of queue_bytes/2 that takes longer than stall_timeout to read
    # marks the outbox stalled, the sender stops waiting, fills the queue
    # and the reader is kicked. Here rita reads 10 kB/s steadily; with the
    # defaults (1 MiB, 1 s) anyone reading under ~512 kB/s is at risk.
    async with memory_server(
        rate=0, ping_interval=0, queue_bytes=32768, stall_timeout=1.0
    ) as live:
        sam = live.connect()
        await sam.login("sam")
        rita = live.connect_lockstep()
        await rita.login("rita")
        await rita.expect("login|sam")
        await sam.expect("login|rita")
        count = 1000
        burst = b"".join(
            f"talk|rita|{n:04d}{'x' * 80}\n".encode() for n in range(count)
        )
        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sam.send, burst)
                lines = await read_slowly(
                    rita,
                    chunk=1000,
                    pause=0.1,
                    done=lambda lines: len(talks(lines)) == count,
                )
        assert talks(lines) == [
            f"talk|sam|rita|{n:04d}{'x' * 80}" for n in range(count)
        ]


async def test_a_sender_held_back_by_a_slow_reader_is_not_timed_out(
    autojump_clock: MockClock,
) -> None:
    # While let_recipients_drain makes sam's reader wait for rita, the
    # server does not read sam; last_heard only moves when it does. So the
    # quiet scope pings sam, sam answers at once (the pong sits unread in
    # the server's socket), and ping_timeout later sam is dropped as dead,
    # though the server is the one that stopped listening.
    async with memory_server(
        rate=0,
        ping_interval=2.0,
        ping_timeout=1.0,
        queue_bytes=4096,
        stall_timeout=1.0,
    ) as live:
        sam = live.connect()
        await sam.login("sam")
        rita = live.connect_lockstep()
        await rita.login("rita")
        await rita.expect("login|sam")
        await sam.expect("login|rita")
        count = 800
        burst = b"".join(
            f"talk|rita|{n:04d}{'x' * 80}\n".encode() for n in range(count)
        )
        sam_heard: list[str] = []

        async def sam_answers_pings() -> None:
            await sam.send(burst)
            while (line := await sam.read_line()) is not None:
                if line.startswith("ping|"):
                    await sam.send("pong|" + line.removeprefix("ping|"))
                else:
                    sam_heard.append(line)

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sam_answers_pings)
                lines = await read_slowly(
                    rita,
                    chunk=1000,
                    pause=0.1,
                    done=lambda lines: (
                        len(talks(lines)) == count or "exit|sam" in lines
                    ),
                )
                nursery.cancel_scope.cancel()
        assert "exit|sam" not in lines
        assert len(talks(lines)) == count
        assert sam_heard == []


# -- shutdown --------------------------------------------------------------------


async def test_shutdown_reaches_a_client_whose_last_frame_did_not_fit(
    autojump_clock: MockClock,
) -> None:
    # shutdown() only cancels read scopes; a reader whose receive_some has
    # already completed still handles what it read. A reply (or a talk from
    # someone else) that no longer fits then kicks the client, and kick()
    # clears the end_error that close_with() set: the client that the test
    # test_shutdown_reaches_a_client_whose_queue_is_full says must get
    # error|shutting-down gets nothing. bob pipelines pings without reading
    # until his queue is full, then one more ping arrives as the server
    # stops.
    server_out, bob_in = trio.testing.lockstep_stream_one_way_pair()
    server_in = trio.testing.MemoryReceiveStream()
    bob = Client(trio.StapledStream(trio.testing.MemorySendStream(), bob_in))
    async with memory_server(rate=0, queue_size=4, stall_timeout=1.0) as live:
        live.serve(trio.StapledStream(server_out, server_in))
        server_in.put_data(b"login|bob\n")
        # The writer takes the acknowledgement and waits for bob to read it.
        await trio.testing.wait_all_tasks_blocked()
        server_in.put_data(b"ping|1\nping|2\nping|3\n")
        # The acknowledgement being written and the pongs congest bob's
        # queue; the server waits stall_timeout for bob to read, then
        # queues the last pong: the queue is full.
        await trio.sleep(2.0)
        await trio.testing.wait_all_tasks_blocked()
        # One more frame arrives in the same scheduler tick as the shutdown.
        server_in.put_data(b"ping|5\n")
        live.server.shutdown()
        lines = await bob.read_until_closed()
        assert lines[:4] == ["login|bob", "pong|1", "pong|2", "pong|3"]
        assert lines[-1].startswith("error|shutting-down|"), lines


async def test_a_client_is_not_pinged_while_what_it_sent_is_being_handled() -> None:
    # A read outlasts the ping interval (here it waits for a recipient who
    # stopped reading, longer than the ping timeout): the sender cannot
    # answer a ping before the rest of that read is handled, so it must not
    # be pinged meanwhile, let alone dropped for not answering.
    server = ChatServer(
        ServerConfig(
            rate=0,
            ping_interval=0.002,
            ping_timeout=0.2,
            stall_timeout=0.5,
            queue_size=64,
            close_timeout=0.2,
        )
    )
    alice, alice_end = trio.testing.memory_stream_pair()
    bob, bob_end = trio.testing.lockstep_stream_pair()
    heard: list[bytes] = []

    async def alice_reads() -> None:
        buffer = b""
        while b"pong|end" not in heard:
            data = await alice_end.receive_some(65536)
            assert data, f"alice was dropped; she heard {heard[-3:]}"
            *lines, buffer = (buffer + data).split(b"\n")
            heard.extend(lines)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, alice, "10.0.0.1")
        nursery.start_soon(server.serve_connection, bob, "10.0.0.2")
        await alice_end.send_all(b"login|alice\n")
        await bob_end.send_all(b"login|bob\n")
        with trio.fail_after(STEP):
            assert await bob_end.receive_some(64)  # then Bob stops reading
        await alice_end.send_all(
            b"pong|p\n" * 3000
            + b"talk|bob|x\n" * 40
            + b"pong|q\n" * 200
            + b"ping|end\n"
        )
        with trio.fail_after(STEP):
            await alice_reads()
        # (Once it is all handled, a quiet Alice may be pinged again.)
        handling = heard[: heard.index(b"pong|end")]
        assert not [line for line in handling if line.startswith(b"ping|")]
        nursery.cancel_scope.cancel()
