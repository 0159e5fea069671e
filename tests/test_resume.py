"""Sessions that survive a dropped connection: ``session``, ``resume``,
``resumed`` and ``resume-failed`` (protocol.md, section 7), black-box over
TCP."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    Msg,
    expect_error_frame,
    expect_quiet,
    running_server,
    say_hello,
)

pytestmark = pytest.mark.trio


class Sessioned:
    """A protocol-2 client logged in, with its session's secret."""

    def __init__(self, name: str, client: LineClient, secret: str, seconds: int):
        self.name = name
        self.client = client
        self.secret = secret
        self.seconds = seconds


async def log_in(live: LiveServer, name: str, others: int = 0) -> Sessioned:
    """Log *name* in on protocol 2 and read its acknowledgement, its
    ``session`` frame and the *others* logins of its roster."""
    client = await live.connect()
    await say_hello(client)
    await client.login(name)
    kind, secret, seconds = (await client.read_line()).split("|")
    assert kind == "session"
    assert len(secret) >= 22  # at least 128 random bits, base64
    await client.read_lines(others)
    return Sessioned(name, client, secret, int(seconds))


async def drop(client: LineClient) -> None:
    """The connection drops without ``exit``: a reset, as a lost network
    would end it."""
    await trio.aclose_forcefully(client.stream)


async def wait_for_waiting(live: LiveServer, count: int) -> None:
    """Until the server holds *count* sessions waiting for a resume (it
    signals nothing when a connection drops, so this polls, bounded)."""
    with trio.fail_after(STEP_TIMEOUT):
        while live.server.waiting != count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def resume(live: LiveServer, secret: str, last_id: int) -> LineClient:
    client = await live.connect()
    await say_hello(client)
    await client.send(f"resume|{secret}|{last_id}")
    return client


async def test_a_protocol_2_login_gets_its_session_after_the_acknowledgement() -> None:
    async with running_server(resume_window=90) as live:
        bob = await live.connect()
        await bob.login("bob")
        client = await live.connect()
        settings = await say_hello(client)
        assert settings["resume"] == "90"
        await client.send("login|alice")
        await client.expect("login|alice")
        kind, _, seconds = (await client.read_line()).split("|")
        assert (kind, seconds) == ("session", "90")
        await client.expect("login|bob")


async def test_no_session_on_protocol_1_or_with_resume_off() -> None:
    async with running_server(resume_window=0) as live:
        client = await live.connect()
        assert (await say_hello(client))["resume"] == "0"
        await client.login("alice")
        old = await live.login("bob")
        await old.expect("login|alice")
        await client.expect("login|bob")
        assert await client.pong_after("q") == []
        assert await old.pong_after("q") == []
    async with running_server() as live:
        old = await live.login("carol")
        await expect_quiet(old)  # no session frame after its acknowledgement


async def test_a_dropped_session_waits_and_resumes_with_what_it_missed() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        await alice.client.send("join|#x")
        await alice.client.expect("join|#x|alice")
        await bob.send("join|#x")
        await bob.expect("join|#x|bob", "join|#x|alice")
        await alice.client.expect("join|#x|bob")
        await bob.send("talk|#x|before")
        seen = Msg.parse(await alice.client.read_line())
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        # Nobody hears that alice left; what is sent to her is kept.
        await bob.send("talk|#x|during")
        await bob.send("talk|alice|to you")
        await expect_quiet(bob)
        # Her name is still taken.
        other = await live.connect()
        await other.send("login|alice")
        await expect_error_frame(other, "name-taken")

        back = await resume(live, alice.secret, seen.id)
        await back.expect(
            "resumed|alice|2",
            f"session|{alice.secret}|{alice.seconds}",
            "login|alice",
            "login|bob",
            "join|#x|alice",
            "join|#x|bob",
        )
        during, dm = [Msg.parse(line) for line in await back.read_lines(2)]
        assert (during.to, during.text) == ("#x", "during")
        assert (dm.to, dm.text) == ("alice", "to you")
        assert seen.id < during.id < dm.id
        # Live again, with the same name and rooms.
        await bob.send("talk|#x|after")
        assert Msg.parse(await back.read_line()).text == "after"
        await expect_quiet(bob, back)
        assert live.server.waiting == 0


async def test_a_resume_sends_only_what_came_after_the_id_given() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        for number in range(3):
            await bob.send(f"talk|alice|{number}")
        ids = [Msg.parse(line).id for line in await alice.client.read_lines(3)]
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        back = await resume(live, alice.secret, ids[0])
        await back.expect("resumed|alice|2")
        await back.read_lines(3)  # session, login|alice, login|bob
        assert [Msg.parse(line).id for line in await back.read_lines(2)] == ids[1:]
        await expect_quiet(back)


async def test_a_resume_of_a_connected_session_replaces_its_connection() -> None:
    async with running_server() as live:
        alice = await log_in(live, "alice")
        bob = await live.login("bob")
        await bob.expect("login|alice")
        await alice.client.expect("login|bob")
        await bob.send("talk|alice|hi")
        hi = Msg.parse(await alice.client.read_line())
        # The same user, from a second device, with the secret.
        back = await resume(live, alice.secret, hi.id)
        await back.expect(
            "resumed|alice|0",
            f"session|{alice.secret}|{alice.seconds}",
            "login|alice",
            "login|bob",
        )
        assert await alice.client.read_until_closed() == [
            "error|replaced|another connection took this session over"
        ]
        # Nobody else saw it leave or come back.
        assert await bob.pong_after("q") == []
        assert await back.pong_after("q") == []
        await bob.send("talk|alice|again")
        assert Msg.parse(await back.read_line()).text == "again"


async def test_a_connection_that_drops_during_a_resume_can_resume_again() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        await bob.send("talk|alice|one")
        first = await resume(live, alice.secret, 0)
        await first.expect("resumed|alice|1")
        await drop(first)  # before it read the rest
        await wait_for_waiting(live, 1)
        second = await resume(live, alice.secret, 0)
        # The secret did not change, and the message comes again.
        await second.expect("resumed|alice|1", f"session|{alice.secret}|120")
        await second.read_lines(2)
        assert Msg.parse(await second.read_line()).text == "one"


async def test_exit_ends_the_session_for_good() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        await alice.client.send("exit")
        await bob.expect("exit|alice")
        back = await resume(live, alice.secret, 0)
        await expect_error_frame(back, "resume-failed")
        # The connection stays open, and may log in.
        await back.login("alice")


async def test_the_session_ends_when_its_window_passes() -> None:
    async with running_server(resume_window=0.2) as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        await drop(alice.client)
        # Only now do the others hear of it.
        await bob.expect("exit|alice")
        assert live.server.waiting == 0
        back = await resume(live, alice.secret, 0)
        await expect_error_frame(back, "resume-failed")
        await back.login("alice")


@pytest.mark.parametrize("dropped", [True, False])
async def test_a_resume_that_cannot_be_whole_fails_and_frees_the_name(
    dropped: bool,
) -> None:
    async with running_server(queue_size=4) as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        for number in range(8):
            await bob.send(f"talk|alice|{number}")
        first = Msg.parse(await alice.client.read_line())
        await alice.client.read_lines(7)
        if dropped:
            await drop(alice.client)
            await wait_for_waiting(live, 1)
        # Only the last 4 frames are kept: what followed the first is not.
        back = await resume(live, alice.secret, first.id)
        await expect_error_frame(back, "resume-failed")
        await bob.expect("exit|alice")
        if not dropped:
            # The connection that still held the session hears why it
            # ends, and is closed: it is not just cut off.
            assert await alice.client.read_until_closed() == [
                "error|replaced|another connection resumed this session from a"
                " message that is no longer kept: the session has ended"
            ]
        await back.login("alice")


async def test_unknown_sessions_and_misplaced_resumes() -> None:
    async with running_server() as live:
        guest = await live.connect()
        await guest.send("resume|nonsense|0")
        await expect_error_frame(guest, "needs-hello")
        await say_hello(guest)
        await guest.send("resume|not-a-session-of-ours|0")
        await expect_error_frame(guest, "resume-failed")
        await guest.login("alice")
        await guest.read_line()  # session
        await guest.send("resume|nonsense|0")
        await expect_error_frame(guest, "already-logged-in")


async def test_a_protocol_1_drop_ends_the_session_at_once() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await live.login("alice")
        await bob.expect("login|alice")
        await drop(alice)
        await bob.expect("exit|alice")
        assert live.server.waiting == 0


async def test_a_waiting_session_whose_queue_overflows_ends() -> None:
    async with running_server(queue_size=4) as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        for number in range(5):
            await bob.send(f"talk|alice|{number}")
        await bob.expect("exit|alice")
        assert live.server.waiting == 0


async def test_the_shutdown_ends_waiting_sessions() -> None:
    async with running_server() as live:
        alice = await log_in(live, "alice")
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        live.server.shutdown()
        assert live.server.waiting == 0


async def test_a_resume_takes_what_was_just_handed_to_the_old_writer() -> None:
    # A batch handed straight to a waiting writer is in no channel buffer:
    # a resume right after it (in the same pass of the shared reader) must
    # still count it, not crash or lose it. (An independent review found
    # most such resumes failing.)
    async with running_server(presence_delay=0) as live:
        bob = await live.login("bob")
        for n in range(10):
            alice = await log_in(live, f"alice{n}", others=1)
            await bob.expect(f"login|alice{n}")
            back = await live.connect()
            await say_hello(back)
            await trio.testing.wait_all_tasks_blocked(0.01)
            await bob.send(f"talk|alice{n}|hi {n}")
            await back.send(f"resume|{alice.secret}|0")
            assert (await back.read_line()).startswith(f"resumed|alice{n}|")
            await back.read_lines(3)  # session, own login, login|bob
            assert Msg.parse(await back.read_line()).text == f"hi {n}"
            await back.send("exit")
            await bob.expect(f"exit|alice{n}")


async def test_a_drop_the_writer_notices_leaves_the_session_waiting() -> None:
    # alice's network breaks: writes to her fail while reads just hang. The
    # writer notices first (a kick): the session waits all the same.
    async with running_server(presence_delay=0) as live:
        bob = await live.login("bob")
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "127.0.0.1")
            alice = LineClient(ours)
            await alice.send("hello|2")
            await alice.send("login|alice")
            await alice.read_lines(3)  # hello, login, session
            await bob.expect("login|alice")
            await ours.receive_stream.aclose()
            await bob.send("talk|alice|hello")
            await wait_for_waiting(live, 1)
            assert await bob.pong_after("q") == []  # no exit
            live.server.shutdown()


async def test_a_resume_from_further_back_than_the_last_one_fails() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        alice = await log_in(live, "alice", others=1)
        await bob.expect("login|alice")
        for n in range(3):
            await bob.send(f"talk|alice|{n}")
        ids = [Msg.parse(line).id for line in await alice.client.read_lines(3)]
        await drop(alice.client)
        await wait_for_waiting(live, 1)
        first = await resume(live, alice.secret, ids[-1])
        await first.expect("resumed|alice|0")
        await first.read_lines(3)
        await drop(first)
        await wait_for_waiting(live, 1)
        # What followed ids[0] was not kept by the connection that resumed.
        again = await resume(live, alice.secret, ids[0])
        await expect_error_frame(again, "resume-failed")
