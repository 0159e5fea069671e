"""What a ReconnectingClient does with the talks a drop may have lost
(with echo): it keeps each one until its copy comes back, sends again
after a resume those the server never took, exactly once, and tells the
program which ones it cannot vouch for when the session is gone or it
gives up. Against scripted fake servers on Trio's autojump clock, and
against a real server in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from fakeserver import Breakable, FakeServer, Reopener, fake_server_pair, logged_in
from helpers import clocked_server
from test_client_reconnect import read_to_the_end, take

from trichat.client import (
    MAX_UNCONFIRMED,
    Backoff,
    Client,
    Disconnected,
    Reconnecting,
    ReconnectingClient,
    ReconnectingEvent,
    Resumed,
    ResumeFailed,
)
from trichat.client.library import _MAX_ASKED as MAX_ASKED
from trichat.protocol.messages import (
    ClientMessage,
    Error,
    ErrorCode,
    History,
    Login,
    Message,
    Part,
    Parted,
    Ping,
    Pong,
    Resume,
    Talk,
)

pytestmark = pytest.mark.trio

SECRET = "s3cr3t-session-0123456789abcdef"
SETTINGS = (
    "server=trichat/2.0.0 max-line=4096 max-text=4000 max-name=32 rate=100"
    " burst=200 ping=60 rooms=50 history=0 resume=30 presence=global"
)
"""A trichat 2 server that keeps sessions for 30 s, and no history."""
WITH_HISTORY = SETTINGS.replace("history=0", "history=100")
TIME = "2026-12-03T09:15:02.125Z"
STEADY = Backoff(first=1.0, factor=2.0, cap=4.0, jitter=0.0)
# On the autojump clock a step costs nothing unless the test is stuck.
STEP = 60.0


def own(message_id: int, text: str, to: str = "bob") -> str:
    """The server's copy of alice's message (echo), as a frame."""
    return f"msg|{message_id}|{TIME}|alice|{to}|{text}"


def kept(client: ReconnectingClient) -> list[Talk]:
    """The talks *client* has not seen confirmed."""
    return list(client.unconfirmed)


def texts(events: Sequence[ReconnectingEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, Message)]


async def take_until_pong(
    client: ReconnectingClient, token: str
) -> list[ReconnectingEvent]:
    """The events up to the pong of *token* (not included)."""
    events: list[ReconnectingEvent] = []
    with trio.fail_after(STEP):
        async for event in client:
            if event == Pong(token):
                return events
            events.append(event)
    raise AssertionError(f"the iteration ended before pong {token}: {events}")


async def resume(
    server: FakeServer, missed: Sequence[str] = (), settings: str = SETTINGS
) -> Resume:
    """Let alice take her session back over *server*, replaying *missed*,
    then answer the ping that ends the resume."""
    with trio.fail_after(STEP):
        request = await server.resume_request(settings)
        server.connection.logged_in("alice")
        await server.send(
            f"resumed|alice|{len(missed)}",
            f"session|{SECRET}|30",
            "login|alice",
            "login|bob",
            *missed,
        )
        assert await server.answer_ping() == []
    return request


async def checkpoint(
    client: ReconnectingClient, server: FakeServer
) -> tuple[list[ClientMessage], list[ReconnectingEvent]]:
    """Ping *server* now: the frames it read before the ping (all that
    alice wrote since the last one, in order), and the events she read
    before its pong."""
    await client.ping("checkpoint")
    with trio.fail_after(STEP):
        frames = await server.answer_ping()
    return frames, await take_until_pong(client, "checkpoint")


async def frames_before_ping(
    client: ReconnectingClient, server: FakeServer
) -> list[ClientMessage]:
    """The frames of ``checkpoint``."""
    return (await checkpoint(client, server))[0]


class BreakableReopener(Reopener):
    """A Reopener whose connections are Breakable (``streams``)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[Breakable] = []

    async def __call__(self) -> trio.abc.Stream:
        self.streams.append(Breakable(await super().__call__()))
        return self.streams[-1]


@asynccontextmanager
async def alice(
    settings: str = SETTINGS,
    *,
    give_up_after: float | None = None,
    reopen: Reopener | None = None,
) -> AsyncIterator[tuple[ReconnectingClient, FakeServer, Reopener]]:
    """alice logged in with echo (bob online), her session kept 30 s,
    under a ReconnectingClient (opening new connections with *reopen*);
    the first event (bob's login) read."""
    client, server = await logged_in(
        "alice", ["bob"], settings=settings, session=f"{SECRET}|30"
    )
    assert client.echo
    reopen = Reopener() if reopen is None else reopen
    async with ReconnectingClient.wrap(
        client, reopen, backoff=STEADY, keepalive=0, give_up_after=give_up_after
    ) as reconnecting:
        assert await take(reconnecting, 1) == [Login("bob")]
        yield reconnecting, server, reopen


async def drop(client: ReconnectingClient, server: FakeServer) -> None:
    """The server's end goes without reading what is still on its way."""
    await server.drop()
    events = await take(client, 2)
    assert [type(event) for event in events] == [Disconnected, Reconnecting]


# -- after a resume ---------------------------------------------------------------


async def test_a_talk_the_server_never_read_goes_again_once_after_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, reopen):
        await client.talk("bob", "into the void")
        assert kept(client) == [Talk("bob", "into the void")]
        await drop(client, server)
        # Away: the talk is still waiting for its copy.
        assert kept(client) == [Talk("bob", "into the void")]
        second = await reopen.next_server()
        assert await resume(second) == Resume(SECRET, 0)
        # Sent again before anything the program sends after the resume.
        await client.talk("bob", "after")
        with trio.fail_after(STEP):
            assert await second.receive() == Talk("bob", "into the void")
            assert await second.receive() == Talk("bob", "after")
        assert len(kept(client)) == 2
        await second.send(own(1, "into the void"), own(2, "after"))
        events = await take(client, 3)
        assert events[0] == Resumed(0)
        assert texts(events) == ["into the void", "after"]
        assert len(kept(client)) == 0
        # Confirmed: a second drop sends nothing again.
        await drop(client, second)
        third = await reopen.next_server()
        assert await resume(third) == Resume(SECRET, 2)
        assert await frames_before_ping(client, third) == []


async def test_a_talk_the_server_took_is_not_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, reopen):
        await client.talk("bob", "taken")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("bob", "taken")
        # The server took it, but its copy is lost with the connection.
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second, missed=[own(1, "taken")])
        assert await frames_before_ping(client, second) == []
        assert kept(client) == []


async def test_the_same_text_twice_one_taken_one_not_is_delivered_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, reopen):
        await client.talk("bob", "same")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("bob", "same")
        await client.talk("bob", "same")  # never read by this server
        assert kept(client) == [Talk("bob", "same"), Talk("bob", "same")]
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second, missed=[own(1, "same")])
        # One delivery from the first server, one from the second.
        frames, events = await checkpoint(client, second)
        assert frames == [Talk("bob", "same")]
        assert events[0] == Resumed(1)
        assert texts(events) == ["same"]


async def test_a_copy_read_again_by_a_second_attempt_confirms_only_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first attempt reads the replay, then breaks sending the other
    # "same" again; the second reads the same replay: its one copy must
    # not confirm both.
    reopen = BreakableReopener()
    async with alice(reopen=reopen) as (client, server, _):
        await client.talk("bob", "same")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("bob", "same")
        await client.talk("bob", "same")
        await drop(client, server)
        second = await reopen.next_server()
        with trio.fail_after(STEP):
            await second.resume_request(SETTINGS)
            second.connection.logged_in("alice")
            await second.send(
                "resumed|alice|1",
                f"session|{SECRET}|30",
                "login|alice",
                "login|bob",
                own(1, "same"),
            )
            ping = await second.receive()
            assert isinstance(ping, Ping)
            reopen.streams[-1].broken = True
            await second.send(f"pong|{ping.token}")
        third = await reopen.next_server()
        assert await resume(third, missed=[own(1, "same")]) == Resume(SECRET, 0)
        frames, events = await checkpoint(client, third)
        assert frames == [Talk("bob", "same")]
        assert [type(event) for event in events] == [Reconnecting, Resumed, Message]


async def test_the_rest_of_a_batch_goes_again_after_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, reopen):
        await client.talk_batch("#lunch", ["one", "two", "three"])
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("#lunch", "one")
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second, missed=[own(1, "one", to="#lunch")])
        assert await frames_before_ping(client, second) == [
            Talk("#lunch", "two"),
            Talk("#lunch", "three"),
        ]


async def test_a_batch_the_drop_breaks_returns_and_is_completed_after_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server = fake_server_pair()
    breakable = Breakable(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, "alice", ["bob"], SETTINGS, f"{SECRET}|30")
        first = await Client.login(breakable, "alice")
    reopen = Reopener()
    async with ReconnectingClient.wrap(
        first, reopen, backoff=STEADY, keepalive=0
    ) as client:
        await take(client, 1)
        breakable.broken = True
        # With echo it does not raise: the resume finishes the batch.
        await client.talk_batch("bob", ["a", "b"])
        assert [type(event) for event in await take(client, 2)] == [
            Disconnected,
            Reconnecting,
        ]
        second = await reopen.next_server()
        await resume(second)
        assert await frames_before_ping(client, second) == [
            Talk("bob", "a"),
            Talk("bob", "b"),
        ]


async def test_a_talk_the_server_refused_is_not_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, reopen):
        await client.talk("nobody", "hello?")
        await client.talk("bob", "hi")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("nobody", "hello?")
            await server.send("error|no-such-user|nobody")
        events = await take(client, 1)
        assert events == [Error(ErrorCode.NO_SUCH_USER, "nobody")]
        assert kept(client) == [Talk("bob", "hi")]
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second)
        assert await frames_before_ping(client, second) == [Talk("bob", "hi")]


@pytest.mark.parametrize("ask", ["part", "history"])
async def test_a_refused_part_or_history_does_not_pass_for_a_talk_refused(
    autojump_clock: trio.testing.MockClock, ask: str
) -> None:
    # The server answers in order: a not-in-room that answers a part (or
    # a history request) sent before a talk to the same room is not that
    # talk's refusal. Taken for one, the talk (never read by the server)
    # would not go again after the resume: lost, and nobody told.
    async with alice(WITH_HISTORY) as (client, server, reopen):
        if ask == "part":
            await client.part("#r")
        else:
            await client.history("#r", 10)
        await client.talk("#r", "still here")
        with trio.fail_after(STEP):
            assert await server.receive() in (Part("#r"), History("#r", "latest", 10))
            await server.send("error|not-in-room|#r")
        assert await take(client, 1) == [Error(ErrorCode.NOT_IN_ROOM, "#r")]
        assert kept(client) == [Talk("#r", "still here")]
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second, settings=WITH_HISTORY)
        frames = await frames_before_ping(client, second)
        assert frames == [Talk("#r", "still here")]


async def test_a_refusal_among_more_requests_than_are_remembered_keeps_the_talk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # More history requests wait than the client remembers: the oldest is
    # forgotten, and its not-in-room could be anybody's. The talk stays
    # kept (at worst it would go twice), and goes again after the resume.
    async with alice(WITH_HISTORY) as (client, server, reopen):
        await client.history("#a", 10)
        for _ in range(MAX_ASKED):
            await client.history("#b", 10)
        await client.talk("#a", "hello")
        with trio.fail_after(STEP):
            assert await server.receive() == History("#a", "latest", 10)
            await server.send("error|not-in-room|#a")
        assert await take(client, 1) == [Error(ErrorCode.NOT_IN_ROOM, "#a")]
        assert kept(client) == [Talk("#a", "hello")]
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second, settings=WITH_HISTORY)
        assert await frames_before_ping(client, second) == [Talk("#a", "hello")]


async def test_a_request_answered_unseen_does_not_take_a_later_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A history request refused in a way the client does not follow
    # (rate-limited names no target), then a talk whose copy comes back:
    # everything before it was answered, so a later talk's not-in-room
    # is that talk's.
    async with alice(WITH_HISTORY) as (client, server, _):
        await client.history("#r", 10)
        await client.talk("bob", "hi")
        await client.talk("#r", "refused")
        with trio.fail_after(STEP):
            await server.receive()
            await server.send("error|rate-limited|slow down", own(1, "hi"))
            await server.send("error|not-in-room|#r")
        events = await take(client, 3)
        assert events[-1] == Error(ErrorCode.NOT_IN_ROOM, "#r")
        assert kept(client) == []


async def test_a_talk_refused_after_a_part_that_was_not_is_still_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # part, then a talk, to the same room: the part is answered (parted),
    # the talk refused: the refusal is the talk's.
    async with alice() as (client, server, _):
        await client.part("#r")
        await client.talk("#r", "too late")
        with trio.fail_after(STEP):
            assert await server.receive() == Part("#r")
            assert await server.receive() == Talk("#r", "too late")
            await server.send("part|#r|alice", "error|not-in-room|#r")
        assert await take(client, 2) == [
            Parted("#r", "alice"),
            Error(ErrorCode.NOT_IN_ROOM, "#r"),
        ]
        assert kept(client) == []


async def test_a_pong_confirms_what_went_before_its_ping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Refused without a word that names it (rate-limited): the pong of a
    # later ping says that the server has answered it.
    async with alice() as (client, server, reopen):
        await client.talk("bob", "too fast")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("bob", "too fast")
            await server.send("error|rate-limited|over 100 frames/s; frame dropped")
        assert await frames_before_ping(client, server) == []
        assert kept(client) == []
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second)
        assert await frames_before_ping(client, second) == []


async def test_talks_past_the_limit_wait_for_a_copy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice() as (client, server, _), trio.open_nursery() as nursery:
        await client.talk_batch("bob", [f"m{n}" for n in range(MAX_UNCONFIRMED)])
        sent = trio.Event()

        async def one_more() -> None:
            await client.talk("bob", "one more")
            sent.set()

        nursery.start_soon(one_more)
        with trio.fail_after(STEP):
            for n in range(MAX_UNCONFIRMED):
                assert await server.receive() == Talk("bob", f"m{n}")
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert len(kept(client)) == MAX_UNCONFIRMED
        await server.send(own(1, "m0"))
        with trio.fail_after(STEP):
            await sent.wait()
            assert await server.receive() == Talk("bob", "one more")


# -- when it cannot be resumed, or ends --------------------------------------------


async def test_after_a_new_login_the_unconfirmed_are_listed_not_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # What the server's history holds was taken; nothing tells whether
    # a direct message (no history for a guest) was: the program is told.
    async with alice(WITH_HISTORY) as (client, server, reopen):
        with trio.fail_after(STEP):
            await server.send(f"msg|1|{TIME}|bob|*|hello all")
        assert texts(await take(client, 1)) == ["hello all"]
        await client.broadcast("hello bob")
        await client.talk("bob", "just you")
        await drop(client, server)
        second = await reopen.next_server()
        with trio.fail_after(STEP):
            await second.resume_request(WITH_HISTORY)
            await second.send("error|resume-failed|no such session")
            assert await second.receive() == Login("alice")
            second.connection.logged_in("alice")
            await second.send(
                "login|alice", "session|n3w-secret-0123456789|30", "login|bob"
            )
            assert await second.receive() == History("*", "after", 500, 1)
            await second.send(f"hist|2|{TIME}|alice|*|hello bob", "history|*|1")
            assert await second.answer_ping() == []
        events = await take(client, 2)
        assert events[0] == ResumeFailed(
            "no such session",
            after=1,
            recovered=1,
            gaps=(),
            direct_gap=True,
            unconfirmed=(Talk("bob", "just you"),),
        )
        assert texts(events) == ["hello bob"]
        assert kept(client) == []
        assert await frames_before_ping(client, second) == []


async def test_giving_up_tells_which_talks_were_not_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with alice(give_up_after=10) as (client, server, reopen):
        await client.talk("bob", "first")
        await client.talk("#lunch", "second")
        with trio.fail_after(STEP):
            assert await server.receive() == Talk("bob", "first")
            await server.send(own(1, "first"))
        assert texts(await take(client, 1)) == ["first"]
        reopen.refusing = 1000
        await drop(client, server)
        events, ended = await read_to_the_end(client)
        assert all(isinstance(event, Reconnecting) for event in events)
        assert ended is not None
        assert ended.unconfirmed == (Talk("#lunch", "second"),)
        assert kept(client) == [Talk("#lunch", "second")]


async def test_without_echo_nothing_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, server = await logged_in(
        "alice", ["bob"], echo=False, settings=SETTINGS, session=f"{SECRET}|30"
    )
    reopen = Reopener()
    async with ReconnectingClient.wrap(
        first, reopen, backoff=STEADY, keepalive=0
    ) as client:
        await take(client, 1)
        await client.talk("bob", "unknown fate")
        assert kept(client) == []
        await drop(client, server)
        second = await reopen.next_server()
        await resume(second)
        assert await frames_before_ping(client, second) == []


# -- against a real server ------------------------------------------------------


async def test_a_line_lost_on_the_way_in_reaches_bob_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(300):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            streams: list[Breakable] = []

            async def reopen() -> trio.abc.Stream:
                streams.append(Breakable(await server.open_stream()))
                return streams[-1]

            first = await Client.login(await reopen(), "alice")
            async with ReconnectingClient.wrap(
                first, reopen, backoff=STEADY, keepalive=0
            ) as alice:
                await alice.talk("bob", "got through")
                await alice.talk("bob", "same")
                # Both taken: their copies have come back.
                seen: list[ReconnectingEvent] = []
                with trio.fail_after(STEP):
                    while kept(alice):
                        seen.append(await anext(alice))
                assert texts(seen) == ["got through", "same"]
                streams[-1].swallowing = True
                await alice.talk("bob", "same")  # the kernel took it; lost
                await alice.talk("bob", "into the void")
                assert streams[-1].swallowed.is_set()
                await trio.aclose_forcefully(streams[-1])
                with trio.fail_after(STEP):
                    async for event in alice:
                        if isinstance(event, Resumed):
                            break
                received: list[str] = []
                with trio.fail_after(STEP):
                    while len(received) < 4:
                        received += texts(await bob.receive_batch())
                assert received == ["got through", "same", "same", "into the void"]
                await alice.ping("done")
                events = await take_until_pong(alice, "done")
                assert texts(events) == ["same", "into the void"]
                assert kept(alice) == []
            await bob.aclose()
