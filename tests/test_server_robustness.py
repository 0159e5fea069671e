"""The server core against the cases an adversarial review found broken.

Each test states what the protocol or the code's own documentation
promises, and failed before the fix it comes with; the comments in the
tests describe those faults, as they were. Most run on a MockClock that
jumps to the next deadline whenever every task waits, so a timeout costs no
real time, and nothing depends on real-time scheduling. Those run twice:
over in-memory streams (``ChatServer.serve_connection``) and over loopback
sockets, as users connect (see ``helpers.clocked_server``); the ones that
need a client to read slowly run in memory only, where a lockstep stream
makes the server wait for every byte to be read (a socket's kernel buffers
would take the whole burst at once).
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import (
    STEP_TIMEOUT,
    TRANSPORTS,
    ClockedServer,
    autojump_clock,
    clocked_server,
    running_server,
)
from trio.testing import MockClock

from trichat.server import ChatServer, ServerConfig
from trichat.server.hub import Accepted
from trichat.server.session import Session

# Virtual seconds: generous, since waiting costs nothing.
STEP = 600.0


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(transport: str) -> MockClock:
    """The test's clock (pytest-trio runs a test on the Clock it is given)."""
    return autojump_clock(transport)


class Client:
    """The test's end of an in-memory connection to the server."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self.stream.send_all(raw if raw.endswith(b"\n") else raw + b"\n")

    @classmethod
    async def connect(cls, live: ClockedServer) -> Client:
        return cls(await live.open_stream())

    async def read_line(self) -> str | None:
        """The next line, or None when the server closed first (or reset
        the connection after its last frame)."""
        with trio.fail_after(STEP):
            while b"\n" not in self._buffer:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
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


def fail_on_first_talk(server: ChatServer) -> None:
    """Make the session that routes the first talk fail with a bug.

    The hub calls its observers as it routes, in the sender's session, so
    an observer that raises is a bug in that session's handling of a frame.
    """
    failed = False

    def failing(_: Accepted) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("a bug in the session")

    server.hub.observe(failing)


async def test_a_session_that_fails_goes_offline(
    transport: str, clock: MockClock
) -> None:
    # serve_connection catches Exception from a session so the server lives
    # on; the session must still take the user offline and close its
    # outbox, or it stays a ghost: the name taken for good, and the outbox
    # (with the closed socket's fd) still receiving every presence frame.
    async with clocked_server(transport, presence_delay=0) as live:
        fail_on_first_talk(live.server)
        bob = await Client.connect(live)
        await bob.login("bob")
        alice = await Client.connect(live)
        await alice.login("alice")
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        await alice.send("talk|bob|this frame meets a bug")
        await alice.read_until_closed()
        assert live.server.connections == 1
        # (Observers are told after the delivery.)
        await bob.expect("talk|alice|bob|this frame meets a bug", "exit|alice")
        again = await Client.connect(live)
        await again.login("alice")
        await again.expect("login|bob")
        await bob.expect("login|alice")


def server_end(client: trio.SocketStream) -> int:
    """The descriptor of the server's end of *client*'s connection, the
    server running in this process: the socket whose addresses are those
    of *client*'s, swapped."""
    wanted = (client.socket.getpeername(), client.socket.getsockname())
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as candidate:
                found = (candidate.getsockname(), candidate.getpeername())
        except OSError:  # gone meanwhile (the listing's own), or not connected
            continue
        if found == wanted:
            return fd
    raise AssertionError(f"no socket in this process has the addresses {wanted}")


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as error:
        if error.errno != errno.EBADF:
            raise
        return False
    return True


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="finds descriptors in /proc"
)
async def test_a_failed_session_never_touches_its_old_descriptor() -> None:
    # The same ghost over TCP, as it was: its outbox still held the number
    # of the socket serve_connection had closed, and wrote to it. Once the
    # number is taken again (here by a socket of the test's, in real life
    # by the next accept), other users' frames went to whoever owns it now.
    # Nothing may write to that number, or read from it, once it is closed.
    async with running_server(presence_delay=0) as live:
        fail_on_first_talk(live.server)
        alice = await live.login("alice")
        assert isinstance(alice.stream, trio.SocketStream)
        fd = server_end(alice.stream)
        await alice.send("talk|*|this frame meets a bug")
        assert await alice.read_until_closed() == []
        await alice.aclose()  # the server closes once we have
        with trio.fail_after(STEP_TIMEOUT):
            while is_open(fd):  # noqa: ASYNC110 (a close sends no event)
                await trio.sleep(0.01)
        # The lowest free numbers go to the next sockets opened: one of
        # these two takes alice's old number (else dup2 gives it one).
        mine, other = socket.socketpair()
        with mine, other:
            if fd == mine.fileno():
                peer, alias = other, False
            elif fd == other.fileno():
                peer, alias = mine, False
            else:
                os.dup2(other.fileno(), fd)  # fd is other's now too
                peer, alias = mine, True
            try:
                peer.sendall(b"login|mallory\n")  # for anyone reading it
                bob = await live.login("bob")
                carol = await live.login("carol")
                await carol.expect("login|bob")
                await bob.expect("login|carol")
                await carol.send("talk|bob|hi bob")
                await carol.send("talk|*|hi all")
                await bob.expect("talk|carol|bob|hi bob", "talk|carol|*|hi all")
                await bob.send("exit")
                assert await bob.read_until_closed() == []
                await carol.expect("exit|bob")
                assert await carol.pong_after("done") == []
                # Nothing came out of the old number, and nothing was read
                # from it: mallory never logged in.
                peer.setblocking(False)
                with pytest.raises(BlockingIOError):
                    peer.recv(4096)
                os.set_blocking(fd, False)
                assert os.read(fd, 4096) == b"login|mallory\n"
            finally:
                if alias:
                    os.close(fd)


# -- timeouts --------------------------------------------------------------------


async def test_ping_is_sent_when_its_deadline_passes(
    transport: str, clock: MockClock, monkeypatch: pytest.MonkeyPatch
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
    async with clocked_server(transport, ping_interval=0.1, ping_timeout=10) as live:
        await trio.sleep(0.7)
        alice = await Client.connect(live)
        await alice.login("alice")  # last_heard = 0.7
        assert await alice.read_line() == "ping|t1", f"{turns} turns"


# -- presence --------------------------------------------------------------------


async def test_a_login_burst_does_not_drop_a_user_who_reads(
    transport: str, clock: MockClock
) -> None:
    # With presence batching (serve() runs _send_presence), presence
    # frames wait in the mailbox until the batch timer or until _HELD_FRAMES
    # (256) pile up; they count against queue_size all the while, and no
    # amount of reading drains them. With queue_size under 256, a burst of
    # queue_size logins inside one batch window kicks every user online as
    # "too slow", however fast they read.
    config = {"queue_size": 8, "presence_delay": 0.1, "rate": 0}
    async with clocked_server(transport, **config) as live:
        if transport == "memory":
            # serve() batches presence; serve_connection alone does not.
            live.nursery.start_soon(live.server._send_presence)
        alice = await Client.connect(live)
        await alice.login("alice")
        for n in range(10):
            await (await Client.connect(live)).send(f"login|user{n}")
        assert [await alice.read_line() for _ in range(10)] == [
            f"login|user{n}" for n in range(10)
        ]


# -- login -----------------------------------------------------------------------


async def test_newcomer_gets_the_roster_however_many_are_online(
    transport: str, clock: MockClock
) -> None:
    # Hub.join queues the acknowledgement and one login frame per user
    # online as ONE put, which is held to queue_bytes. Once the roster is
    # bigger than queue_bytes, every newcomer is kicked ("too slow") the
    # moment it logs in, before it could read a byte, and gets no error.
    # Here: 4 KiB and 105 users with 32-character names (39 bytes a line).
    # With the defaults (1 MiB) it takes about 7,800 users whose names are
    # 32 four-byte letters, fewer than max_clients.
    # (In memory the clients share one address that is not loopback: no
    # limit on its logins here.)
    async with clocked_server(
        transport, queue_bytes=4096, rate=0, logins_per_ip=0
    ) as live:
        names = [f"user{n:03d}".ljust(32, "x") for n in range(105)]
        for name in names:
            await (await Client.connect(live)).login(name)
        newcomer = await Client.connect(live)
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
        await bob_end.send_all(b"login|bob\n")
        with trio.fail_after(STEP):
            assert await bob_end.receive_some(64)  # then Bob stops reading
        # Alice's login comes with the rest: she is never quiet for a ping
        # interval before it (a ping then would be her due, and the check
        # below would take it for one sent while she was being handled).
        await alice_end.send_all(
            b"login|alice\n"
            + b"pong|p\n" * 3000
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
