"""Attacks on the whole server, in miniature (issue "Hardening 2"): each test
reproduces one, bounded in time, and checks what an honest user sees."""

from __future__ import annotations

import gc
import logging
import socket
from collections import Counter

import pytest
import trio
import trio.testing
from helpers import LineClient, LiveServer, running_server

from trichat.server.config import ServerConfig
from trichat.server.hub import Hub, Member
from trichat.server.mailbox import Mailbox, Turnstile
from trichat.server.session import Session

BIG = "x" * 1000


async def small_buffered(live: LiveServer, rcvbuf: int) -> LineClient:
    """A client whose socket has a receive buffer of *rcvbuf* bytes (the
    kernel rounds it up to its minimum); closed with the server."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", live.port))
    except BaseException:
        sock.close()
        raise
    client = LineClient(trio.SocketStream(sock))
    live.clients.append(client)
    return client


class Crowd:
    """A hub with a slow user (its mailbox has no writer), bob, and alice
    logged in through a real Session; every mailbox drained."""

    def __init__(self, config: ServerConfig) -> None:
        self.hub = Hub()
        self.kicked: list[str] = []
        self.slow = Mailbox(config.queue_size, config.queue_bytes)
        self.hub.join(Member("slow", self.slow, self.kicked.append))
        self.bob = Mailbox(config.queue_size, config.queue_bytes)
        self.hub.join(Member("bob", self.bob, self.kicked.append))
        self.mine = Mailbox(config.queue_size, config.queue_bytes)
        self.alice = Session(config, self.hub, self.mine, self.kicked.append, "", 0.0)
        self.alice.received(b"login|alice\n", 0.0)
        self.alice.handle_ready(64, 0.0)
        for mailbox in (self.slow, self.bob, self.mine):
            mailbox.drain()


def test_a_read_waits_only_briefly_for_queues_others_filled() -> None:
    # The attack, in miniature: someone else filled slow's queue past half
    # (slow reads, but slowly). Before, alice's one message to everyone
    # paused her reading until slow drained, for as long as it kept making
    # progress (12-21 s with 20 such readers), and her talk to bob waited
    # behind it. Now a read waits at most max_sender_wait in all for
    # queues it did not fill, then goes on.
    config = ServerConfig(rate=0, max_sender_wait=0.25, queue_size=8)
    crowd = Crowd(config)
    for n in range(5):
        assert crowd.slow.put(b"filler %d\n" % n)  # from someone else
    alice = crowd.alice
    alice.received(b"talk|*|hello\ntalk|slow|more\ntalk|bob|one\ntalk|bob|two\n", 1.0)
    alice.handle_ready(64, 1.0)
    assert alice.crowded == [crowd.slow]  # stopped: the caller waits...
    assert alice.congested == []  # ... but alice did not fill it
    alice.crowded.clear()  # the caller waited for it, in vain
    alice.drained(1.25, 0.25, 0.25)
    # Its share spent, the read goes on, slow's queue or not.
    alice.handle_ready(64, 1.25)
    assert alice.read is None
    assert alice.crowded == []
    assert crowd.slow.drain().endswith(b"talk|alice|*|hello\ntalk|alice|slow|more\n")
    assert crowd.bob.drain() == (
        b"talk|alice|*|hello\ntalk|alice|bob|one\ntalk|alice|bob|two\n"
    )
    assert crowd.kicked == []
    # The next read may wait its share again.
    alice.received(b"talk|bob|again\n", 2.0)
    assert alice.wait_left == config.max_sender_wait


def test_a_sender_waits_for_the_queues_it_fills_itself() -> None:
    # A burst from alice to a reader that keeps reading must not get it
    # dropped (protocol.md): the one who bursts waits, as long as the
    # reader makes progress.
    config = ServerConfig(rate=0, max_sender_wait=0.25, queue_size=8)
    crowd = Crowd(config)
    alice = crowd.alice
    alice.received(b"".join(b"talk|slow|%d\n" % n for n in range(20)), 1.0)
    alice.handle_ready(64, 1.0)
    assert alice.congested == [crowd.slow]
    assert alice.crowded == []
    alice.drained(5.0, 4.0)  # however long it took
    # Not given up on: handling waits for it still.
    assert alice.handle_ready(64, 5.0) == 0
    assert alice.congested == [crowd.slow]
    assert crowd.kicked == []


def test_lines_that_waited_for_the_server_are_not_a_burst() -> None:
    # While the server let recipients drain, the sender's lines piled up
    # unread; handled at once, they are not a burst of the sender's making
    # and are not charged as one (up to twice the burst).
    config = ServerConfig(rate=10, burst=10)
    hub = Hub()
    hub.join(Member("bob", Mailbox(1000, 1 << 20), lambda _: None))
    mailbox = Mailbox(1000, 1 << 20)
    alice = Session(config, hub, mailbox, lambda _: None, "test", 0.0)
    alice.received(b"login|alice\n", 0.0)
    alice.handle_ready(64, 0.0)
    mailbox.drain()
    # 20 lines within the rate (two seconds' worth) that the server did not
    # read for the 2 s it waited.
    alice.drained(2.0, 2.0)
    alice.received(b"".join(b"talk|bob|%d\n" % n for n in range(20)), 2.0)
    alice.handle_ready(64, 2.0)
    assert mailbox.drain() == b""  # no rate-limited
    # A burst of its own making is still one.
    alice.received(b"".join(b"talk|bob|%d\n" % n for n in range(20)), 2.0)
    alice.handle_ready(64, 2.0)
    assert mailbox.drain().count(b"error|rate-limited|") == 20


def test_lines_that_waited_for_a_busy_server_are_not_a_burst() -> None:
    # 9,000 connections opened and closed every 5 s kept the event loop in
    # turns of seconds; alice, within her rate, had her lines pile up
    # unread meanwhile, and 389 of them were refused as a burst. Time the
    # server was too busy to read anyone is forgiven as the wait for
    # recipients is.
    config = ServerConfig(rate=10, burst=10)
    hub = Hub()
    hub.join(Member("bob", Mailbox(1000, 1 << 20), lambda _: None))
    mailbox = Mailbox(1000, 1 << 20)
    stalled = [0.0]
    alice = Session(
        config, hub, mailbox, lambda _: None, "test", 0.0, stalls=lambda: stalled[0]
    )
    alice.received(b"login|alice\n", 0.0)
    alice.handle_ready(64, 0.0)
    mailbox.drain()
    # A 2 s turn of the loop: 20 lines within the rate piled up unread.
    stalled[0] = 2.0
    alice.received(b"".join(b"talk|bob|%d\n" % n for n in range(20)), 2.0)
    alice.handle_ready(64, 2.0)
    assert mailbox.drain() == b""  # no rate-limited
    # A burst of its own making is still one.
    alice.received(b"".join(b"talk|bob|%d\n" % n for n in range(20)), 2.0)
    alice.handle_ready(64, 2.0)
    assert mailbox.drain().count(b"error|rate-limited|") == 20


@pytest.mark.trio
async def test_a_congested_reader_that_reads_nothing_is_not_waited_for_again() -> None:
    # The time without progress adds up over every sender's waits: a reader
    # that reads nothing counts as stalled after stall_timeout in all, even
    # though each read waits at most max_sender_wait.
    config = {"rate": 0, "queue_size": 8, "stall_timeout": 0.5, "max_sender_wait": 0.1}
    async with running_server(**config) as live:
        alice = await live.login("alice")
        mute = await small_buffered(live, 1)
        await mute.send("login|mute")  # and never reads
        assert await alice.read_line() == "login|mute"
        with trio.fail_after(10):
            replies: list[str] = []
            while not replies:
                await alice.send(f"talk|mute|{BIG * 3}")
                replies = await alice.pong_after("sent")
        assert replies[0] == "error|no-such-user|mute"


@pytest.mark.trio
async def test_logins_from_one_address_are_limited_but_not_from_loopback() -> None:
    # A presence storm (200 clients cycling login and exit) sent every user
    # thousands of frames a second: logins from one address are limited.
    async with running_server(logins_per_ip=1, presence_delay=0) as live:
        watcher = await live.login("watcher")
        async with trio.open_nursery() as nursery:
            refused = []
            for n in range(4):
                ours, theirs = trio.testing.memory_stream_pair()
                nursery.start_soon(live.server.serve_connection, theirs, "192.0.2.7")
                remote = LineClient(ours)
                live.clients.append(remote)
                await remote.send(f"login|remote{n}")
                line = await remote.read_line()
                if line.startswith("error|rate-limited|"):
                    refused.append(n)
                else:
                    assert line == f"login|remote{n}"
            # A burst of two, then one a second: the third and fourth wait.
            assert refused == [2, 3]
            # This machine's own logins are not limited.
            for n in range(4):
                await live.login(f"local{n}")
            told = [await watcher.read_line() for _ in range(6)]
            assert sorted(told) == sorted(
                [f"login|remote{n}" for n in (0, 1)]
                + [f"login|local{n}" for n in range(4)]
            )
            nursery.cancel_scope.cancel()


async def big_is_dropped_not_small(live: LiveServer, sender: LineClient) -> None:
    """*sender* sends 250 KB to big and 100 KB to small, two non-readers:
    together over the limit under test, but not each. big is dropped (its
    messages refused, then its exit), small and the sender stay."""
    with trio.fail_after(10):
        for _ in range(250):
            await sender.send(f"talk|big|{BIG}")
        for _ in range(100):
            await sender.send(f"talk|small|{BIG}")
        while (line := await sender.read_line()) != "exit|big":
            assert line == "error|no-such-user|big", line
    assert await sender.pong_after("still here") == []
    assert live.server.hub.member("small") is not None


@pytest.mark.trio
async def test_all_the_queues_together_are_bounded() -> None:
    # 900 non-readers filled by a helper took a server from 28 MB to 802 MB:
    # each queue was bounded, their sum not. Past --max-queued-bytes the
    # connections holding the most are dropped, and the others go on.
    config = {"rate": 0, "max_queued_bytes": 300_000, "presence_delay": 0}
    async with running_server(**config) as live:
        sender = await live.login("sender")
        mutes = []
        for name in ("big", "small"):
            mute = await small_buffered(live, 1)
            await mute.send(f"login|{name}")  # and never reads
            assert await sender.read_line() == f"login|{name}"
            mutes.append(mute)
        await big_is_dropped_not_small(live, sender)


@pytest.mark.trio
async def test_the_queues_of_one_address_are_bounded() -> None:
    # 900 non-readers from one address, filled by a helper: past
    # --max-queued-bytes-per-ip that address's largest holders are dropped,
    # long before the server-wide budget, and nobody else is.
    config = {"rate": 0, "max_queued_bytes_per_ip": 300_000, "presence_delay": 0}
    async with running_server(**config) as live:
        sender = await live.login("sender")  # loopback: no such limit
        async with trio.open_nursery() as remote:
            for name in ("big", "small"):
                # One address, 192.0.2.7, whose clients read their login
                # and then nothing: the server's writes to them block.
                client, server_side = trio.testing.lockstep_stream_pair()
                remote.start_soon(
                    live.server.serve_connection, server_side, "192.0.2.7"
                )
                await client.send_all(f"login|{name}\n".encode())
                answer = await client.receive_some()
                assert answer.startswith(f"login|{name}\nlogin|sender\n".encode())
                assert await sender.read_line() == f"login|{name}"
            await big_is_dropped_not_small(live, sender)
            remote.cancel_scope.cancel()


@pytest.mark.trio
async def test_the_goodbye_goes_before_a_backlog_there_is_no_time_for() -> None:
    # 1,000 TLS readers under a broadcast storm: SIGTERM cut every stream
    # mid-frame and nobody got error|shutting-down. A large backlog is
    # dropped before the goodbye (the frame being written is finished).
    async with running_server(rate=0, presence_delay=0) as live:
        sender = await live.login("sender")
        reader = await small_buffered(live, 1)
        await reader.send("login|reader")  # reads nothing, for now
        assert await sender.read_line() == "login|reader"
        for _ in range(300):  # 300 KB, past the kernel's buffers
            await sender.send(f"talk|reader|{BIG}")
        assert await sender.pong_after("queued") == []
        live.server.shutdown()
        lines = await reader.read_until_closed()
    assert lines[-1] == "error|shutting-down|the server is stopping"
    talks = [line for line in lines if line.startswith("talk|")]
    assert all(line == f"talk|sender|reader|{BIG}" for line in talks)  # none cut
    assert len(talks) < 300


@pytest.mark.trio
async def test_connections_leave_no_reference_cycles_behind() -> None:
    # With thousands of connections coming and going (a connect flood,
    # mass login time-outs, a crowd dropping at once), what each left in
    # reference cycles fed Python's full collections, which paused the
    # whole server for 100-500 ms every second or two. Now reference
    # counting alone frees a connection, however it ended: the collector
    # finds none of the server's objects to free.
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what it frees, it keeps for us to see
    try:
        async with running_server(login_timeout=0.2, presence_delay=0) as live:
            watcher = await live.login("watcher")
            quitter = await live.login("quitter")
            dropped = await live.login("dropped")
            silent = await live.connect()  # closes without a word
            late = await live.connect()  # never logs in: timed out
            await quitter.send("exit|quitter")
            await dropped.stream.aclose()
            await silent.stream.aclose()
            with trio.fail_after(10):
                assert (await late.read_line()).startswith("error|login-timeout|")
            seen = await watcher.pong_after("still here")
            assert seen[:2] == ["login|quitter", "login|dropped"]
            assert sorted(seen[2:]) == ["exit|dropped", "exit|quitter"]
        gc.collect()
        ours = {
            type(thing).__qualname__
            for thing in gc.garbage
            if type(thing).__module__.startswith("trichat")
        }
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == set()


@pytest.mark.trio
async def test_full_collections_run_on_the_servers_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collected = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("full collection:"):
                collected.set()

    watch = Watch()
    logging.getLogger("trichat.server").addHandler(watch)
    caplog.set_level(logging.INFO, "trichat.server")
    before = gc.get_threshold()
    try:
        async with running_server(full_collection_interval=0.05) as live:
            alice = await live.login("alice")
            with trio.fail_after(10):
                await collected.wait()
            # Python starts none of its own meanwhile...
            assert gc.get_threshold()[2] > 1_000_000
            # ... and the server serves as before.
            assert await alice.pong_after("still here") == []
    finally:
        logging.getLogger("trichat.server").removeHandler(watch)
    # What the process had is back once the server stops.
    assert gc.get_threshold() == before


@pytest.mark.trio
async def test_connections_that_end_in_a_crowd_take_turns() -> None:
    # 10,000 connections that never logged in, timing out within seconds
    # of each other, made each turn of the event loop run thousands of
    # endings, and everyone else waited a second for each of their steps.
    # Endings now pass a turnstile: a few per turn, all of them in the end.
    turnstile = Turnstile(per_turn=4)
    turn = 0
    passed_in: list[int] = []

    async def tick() -> None:
        nonlocal turn
        while True:
            turn += 1
            await trio.lowlevel.checkpoint()  # one turn of the loop

    async def end() -> None:
        await turnstile.take_turn()
        passed_in.append(turn)

    with trio.fail_after(10):
        async with trio.open_nursery() as ticking:
            ticking.start_soon(tick)
            async with trio.open_nursery() as crowd:
                for _ in range(40):
                    crowd.start_soon(end)
            ticking.cancel_scope.cancel()
    assert len(passed_in) == 40
    assert max(Counter(passed_in).values()) <= 4
