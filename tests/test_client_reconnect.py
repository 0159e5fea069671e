"""The library's ReconnectingClient against scripted fake servers, on
Trio's autojump clock: the delays between attempts, what a resume asks
for and what it passes on, logging in again when the session is gone
(with the password of an account), where it stops, and what happens to
sends while the connection is down. Nothing here sleeps for real: the
clock jumps whenever every task waits."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from fakeserver import (
    SETTINGS,
    Breakable,
    FakeServer,
    Reopener,
    fail_after,
    fake_server_pair,
    logged_in,
)
from helpers import clocked_server

from trichat.client import (
    Backoff,
    Client,
    ConnectionLost,
    Disconnected,
    LoginRefused,
    NotSent,
    Reconnecting,
    ReconnectingClient,
    ReconnectingEvent,
    Resumed,
    ResumeFailed,
)
from trichat.client.library import EXIT_WHILE_AWAY_TIMEOUT
from trichat.protocol.messages import (
    ChangePassword,
    Error,
    ErrorCode,
    Exit,
    History,
    Join,
    Joined,
    Login,
    Message,
    Ping,
    Register,
    Registered,
    Resume,
    Talk,
)

pytestmark = pytest.mark.trio

SECRET = "s3cr3t-session-0123456789abcdef"
SESSIONS = SETTINGS.replace("resume=0", "resume=30")
"""A trichat 2 server that keeps sessions for 30 s, and no history."""
WITH_HISTORY = SESSIONS.replace("history=0", "history=100")
TIME = "2026-12-03T09:15:02.125Z"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple tuna zebra"
# Long enough for any step here: on the autojump clock it costs nothing
# unless a test is stuck, and then it fails it.
STEP = 60.0
# Each test's bound: on the autojump clock (virtual seconds, which a stuck
# test reaches at once), and on the real one (tests that take milliseconds).
VIRTUAL_BOUND = 600.0
REAL_BOUND = 10.0


class Scripted(random.Random):
    """A random source that gives the numbers it is given, in order."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def msg(message_id: int, sender: str = "bob", to: str = "alice") -> str:
    return f"msg|{message_id}|{TIME}|{sender}|{to}|message {message_id}"


def ids(events: Sequence[ReconnectingEvent]) -> list[int]:
    return [event.id for event in events if isinstance(event, Message)]


async def take(client: ReconnectingClient, count: int) -> list[ReconnectingEvent]:
    """The next *count* events."""
    with trio.fail_after(STEP):
        return [await anext(client) for _ in range(count)]


async def read_to_the_end(
    client: ReconnectingClient,
) -> tuple[list[ReconnectingEvent], ConnectionLost | None]:
    """Every event until the iteration ends, and the ConnectionLost that
    ended it (None: it just ended)."""
    events: list[ReconnectingEvent] = []
    with trio.fail_after(STEP):
        try:
            async for event in client:
                events.append(event)
        except ConnectionLost as lost:
            return events, lost
    return events, None


async def take_back(
    server: FakeServer,
    *,
    missed: Sequence[str] = (),
    count: int | None = None,
    online: Sequence[str] = ("bob",),
    rooms: Sequence[str] = (),
) -> Resume:
    """Play a server that lets alice's session be taken back: answer her
    ``resume`` with the snapshot and *missed* (*count* said, by default
    as many), then her ping. Returns her ``resume``."""
    with trio.fail_after(STEP):
        resume = await server.resume_request(SESSIONS)
        server.connection.logged_in("alice")
        said = len(missed) if count is None else count
        await server.send(
            f"resumed|alice|{said}",
            f"session|{SECRET}|30",
            "login|alice",
            *(f"login|{other}" for other in online),
            *rooms,
            *missed,
        )
        assert await server.answer_ping() == []
    return resume


async def refuse_resume(server: FakeServer, settings: str = SESSIONS) -> None:
    """Play a server that knows nothing of alice's session."""
    with trio.fail_after(STEP):
        await server.resume_request(settings)
        await server.send("error|resume-failed|no such session")


async def log_in_again(server: FakeServer, password: str | None = None) -> None:
    """Take alice's login, which must come with *password*."""
    with trio.fail_after(STEP):
        assert await server.receive() == Login("alice", password)
    server.connection.logged_in("alice")


async def with_session(
    *, settings: str = SESSIONS, password: str | None = None
) -> tuple[Client, FakeServer]:
    """alice logged in (bob online), with a session kept 30 s."""
    return await logged_in(
        "alice",
        ["bob"],
        settings=settings,
        session=f"{SECRET}|30",
        password=password,
    )


# -- what a login hands over ---------------------------------------------------


@fail_after(REAL_BOUND)
async def test_the_session_is_known_as_soon_as_login_returns() -> None:
    client, server = await with_session()
    assert client.session == SECRET
    assert client.resume_window == 30
    # The session frame is no event: the presence list comes first.
    await server.send("pong|x")
    with trio.fail_after(STEP):
        assert await anext(client) == Login("bob")


@fail_after(REAL_BOUND)
async def test_keeps_sessions_says_whether_reconnecting_can_resume() -> None:
    with_one, _ = await with_session()
    said_so, _ = await logged_in("alice", ["bob"], settings=SESSIONS)
    without, _ = await logged_in("alice")  # resume=0
    old, _ = await logged_in("alice", ["bob"], version=1, settings=SESSIONS)
    assert (with_one.keeps_sessions, said_so.keeps_sessions) == (True, True)
    assert (without.keeps_sessions, old.keeps_sessions) == (False, False)


@fail_after(REAL_BOUND)
async def test_a_server_that_says_no_session_frame_loses_no_frame() -> None:
    # Sessions in the settings, but the login's answer goes straight on
    # with the presence list: nothing of it is lost.
    client, server = await logged_in("alice", ["bob", "carol"], settings=SESSIONS)
    assert client.session is None
    with trio.fail_after(STEP):
        assert await client.receive_batch() == [Login("bob"), Login("carol")]
    assert client.online == ("bob", "carol")
    await server.send(f"session|{SECRET}|30")
    await server.send("pong|x")
    with trio.fail_after(STEP):
        await anext(client)
    assert client.session == SECRET


@fail_after(REAL_BOUND)
async def test_without_sessions_login_waits_for_no_session_frame() -> None:
    client, _server = await logged_in("alice", ["bob"])
    assert client.session is None
    assert client.resume_window == 0


@fail_after(REAL_BOUND)
async def test_resume_knows_the_window_as_soon_as_it_returns() -> None:
    client_stream, server = fake_server_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_back, server)
        client = await Client.resume(client_stream, SECRET, 4)
        assert (client.name, client.session, client.resume_window) == (
            "alice",
            SECRET,
            30,
        )
        # What follows is the snapshot, which iteration reads.
        assert await anext(client) == Login("alice")
        assert await anext(client) == Login("bob")
        await client.ping("done")
    await client.aclose()


# -- the delays ---------------------------------------------------------------


@fail_after(REAL_BOUND)
async def test_backoff_doubles_up_to_the_cap_and_jitter_takes_a_share_off() -> None:
    steady = Backoff(first=1.0, factor=2.0, cap=30.0, jitter=0.0)
    assert [steady.delay(n, random.Random(1)) for n in range(1, 8)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    jittery = Backoff(first=1.0, factor=2.0, cap=30.0, jitter=0.5)
    # random() in [0, 1): at most half of the delay is taken off.
    assert jittery.delay(3, Scripted([0.0])) == 4.0
    assert jittery.delay(3, Scripted([0.5])) == 3.0
    assert jittery.delay(3, Scripted([0.999])) == pytest.approx(2.002)
    seeded = [jittery.delay(n, random.Random(7)) for n in range(1, 40)]
    for n, delay in enumerate(seeded, start=1):
        base = min(30.0, 2.0 ** (n - 1))
        assert base / 2 < delay <= base


@fail_after(VIRTUAL_BOUND)
async def test_attempts_wait_capped_exponential_delays_with_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    reopen.refusing = 4
    backoff = Backoff(first=1.0, factor=2.0, cap=5.0, jitter=0.5)
    rng = Scripted([0.0, 1.0, 0.5, 0.0, 0.25])
    async with ReconnectingClient.wrap(
        client, reopen, backoff=backoff, rng=rng, keepalive=0
    ) as reconnecting:
        assert await take(reconnecting, 1) == [Login("bob")]
        dropped = trio.current_time()
        await server.drop()
        assert await take(reconnecting, 6) == [
            Disconnected("the server closed the connection"),
            Reconnecting(1, 1.0),  # 1 s, nothing off
            Reconnecting(2, 1.0),  # 2 s, half off
            Reconnecting(3, 3.0),  # 4 s, a quarter off
            Reconnecting(4, 5.0),  # 8 s, capped at 5
            Reconnecting(5, 4.375),  # 5 s, an eighth off
        ]
        assert await take_back(await reopen.next_server()) == Resume(SECRET, 0)
        assert await take(reconnecting, 1) == [Resumed(0)]
        # Each attempt starts its delay after the one before it failed.
        waited = [call - dropped for call in reopen.calls]
        assert waited == pytest.approx([1.0, 2.0, 5.0, 10.0, 14.375])
        assert reconnecting.reconnects == 1
        assert reconnecting.connected


# -- resuming -----------------------------------------------------------------


@fail_after(VIRTUAL_BOUND)
async def test_a_resume_asks_from_the_last_id_and_passes_each_message_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(
        client, reopen, backoff=Backoff(jitter=0.0), keepalive=0
    ) as reconnecting:
        await server.send(msg(1), msg(2), msg(3))
        assert ids(await take(reconnecting, 4)) == [1, 2, 3]  # after Login(bob)
        await server.drop()
        assert await take(reconnecting, 2) == [
            Disconnected("the server closed the connection"),
            Reconnecting(1, 1.0),
        ]
        second = await reopen.next_server()
        # The server replays 3, which alice has: she missed two. Meanwhile
        # bob left and carol came.
        resume = await take_back(
            second, missed=[msg(3), msg(4), msg(5)], online=["carol"]
        )
        assert resume == Resume(SECRET, 3)
        events = await take(reconnecting, 5)
        assert events[:3] == [Resumed(2), Login("carol"), Exit("bob")]
        assert ids(events[3:]) == [4, 5]
        assert reconnecting.online == ("carol",)

        # Live, an id already passed on is not passed on again.
        await second.send(msg(5), msg(4), msg(6, sender="carol"))
        assert ids(await take(reconnecting, 1)) == [6]
        assert reconnecting.last_id == 6

        # A second drop resumes from the newest id, with the same secret.
        await second.drop()
        await take(reconnecting, 2)
        third = await reopen.next_server()
        resume = await take_back(third, missed=[msg(7)], online=["carol"])
        assert resume == Resume(SECRET, 6)
        events = await take(reconnecting, 2)
        assert events[0] == Resumed(1)
        assert ids(events) == [7]
        assert reconnecting.reconnects == 2


@fail_after(VIRTUAL_BOUND)
async def test_a_replaced_connection_ends_without_reconnecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await take(reconnecting, 1)  # Login(bob)
        await server.send("error|replaced|logged in from elsewhere")
        await server.drop()
        (event,) = await take(reconnecting, 1)
        assert isinstance(event, Error)
        assert event.code is ErrorCode.REPLACED
        with trio.fail_after(STEP), pytest.raises(StopAsyncIteration):
            await anext(reconnecting)
        with pytest.raises(NotSent, match="replaced"):
            await reconnecting.talk("bob", "anyone?")
    assert reopen.calls == []


@fail_after(VIRTUAL_BOUND)
async def test_give_up_after_zero_does_not_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(
        client, reopen, give_up_after=0, keepalive=0
    ) as reconnecting:
        await take(reconnecting, 1)
        await server.drop()
        assert await take(reconnecting, 1) == [
            Disconnected("the server closed the connection")
        ]
        with trio.fail_after(STEP), pytest.raises(ConnectionLost, match="closed"):
            await anext(reconnecting)
    assert reopen.calls == []


@fail_after(VIRTUAL_BOUND)
async def test_it_gives_up_when_the_resume_window_has_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    reopen.refusing = 1000
    outcome: list[BaseException] = []

    async def send_while_away(client: ReconnectingClient) -> None:
        try:
            await client.talk("bob", "are you there?")
        except ConnectionLost as lost:
            outcome.append(lost)

    async with (
        ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting,
        trio.open_nursery() as nursery,
    ):
        dropped = trio.current_time()
        await server.drop()
        await take(reconnecting, 2)  # Disconnected, Reconnecting(1)
        nursery.start_soon(send_while_away, reconnecting)
        events, ended = await read_to_the_end(reconnecting)
        gave_up = trio.current_time()
    assert events
    assert all(isinstance(event, Reconnecting) for event in events)
    assert ended is not None
    message = str(ended)
    assert message == "could not reconnect within 30 s: Connection refused"
    assert gave_up - dropped <= 30
    assert reopen.calls[-1] - dropped <= 30
    # The send that waited says it was not sent, and why.
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotSent)
    assert str(outcome[0]) == message


# -- when the session is gone -----------------------------------------------


@fail_after(VIRTUAL_BOUND)
async def test_resume_failed_logs_in_again_and_fills_the_gaps_from_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session(settings=WITH_HISTORY)
    reopen = Reopener()
    async with ReconnectingClient.wrap(
        client, reopen, backoff=Backoff(jitter=0.0), keepalive=0
    ) as reconnecting:
        await reconnecting.join("#lunch")
        assert await server.receive() == Join("#lunch")
        await server.send("join|#lunch|alice", "join|#lunch|bob", msg(7, to="#lunch"))
        assert ids(await take(reconnecting, 4)) == [7]  # Login, Joined, Joined
        await server.drop()
        await take(reconnecting, 2)

        second = await reopen.next_server()
        await refuse_resume(second, WITH_HISTORY)
        with trio.fail_after(STEP):
            await log_in_again(second)
            await second.send("login|alice", "session|n3w-secret-0123456789|30")
            await second.send("login|bob")
            assert await second.receive() == Join("#lunch")
            await second.send("join|#lunch|alice", "join|#lunch|bob")
            assert await second.receive() == History("#lunch", "after", 500, 7)
            assert await second.receive() == History("*", "after", 500, 7)
            await second.send(
                f"hist|8|{TIME}|bob|#lunch|message 8",
                f"hist|10|{TIME}|bob|#lunch|message 10",
                "history|#lunch|2",
                msg(11, to="#lunch"),  # live, while the history comes
                f"hist|9|{TIME}|carol|*|message 9",
                "history|*|1",
            )
            assert await second.answer_ping() == []
        events = await take(reconnecting, 5)
        assert events[0] == ResumeFailed(
            "no such session", after=7, recovered=3, gaps=(), direct_gap=True
        )
        assert ids(events[1:]) == [8, 9, 10, 11]
        assert reconnecting.session == "n3w-secret-0123456789"
        assert reconnecting.rooms == {"#lunch": ("alice", "bob")}


@fail_after(VIRTUAL_BOUND)
async def test_without_history_the_gaps_are_said(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await reconnecting.join("#lunch")
        assert await server.receive() == Join("#lunch")
        await server.send("join|#lunch|alice", msg(3, to="#lunch"))
        await take(reconnecting, 3)
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second)
        with trio.fail_after(STEP):
            await log_in_again(second)
            await second.send("login|alice", "login|carol")
            assert await second.receive() == Join("#lunch")
            await second.send("join|#lunch|alice", "join|#lunch|carol")
            assert await second.answer_ping() == []
        events = await take(reconnecting, 4)
        assert events[0] == ResumeFailed(
            "no such session", after=3, gaps=("#lunch", "*")
        )
        # What changed while away, as events.
        assert set(events[1:]) == {
            Login("carol"),
            Joined("#lunch", "carol"),
            Exit("bob"),
        }


@fail_after(VIRTUAL_BOUND)
async def test_with_nothing_received_yet_history_is_not_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # "Everything after id 0" would be all the server keeps, said before
    # alice came: the gaps are said instead.
    client, server = await with_session(settings=WITH_HISTORY)
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await take(reconnecting, 1)
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second, WITH_HISTORY)
        with trio.fail_after(STEP):
            await log_in_again(second)
            await second.send("login|alice", "login|bob")
            assert await second.answer_ping() == []
        assert await take(reconnecting, 1) == [
            ResumeFailed("no such session", after=0, gaps=("*",))
        ]


@fail_after(VIRTUAL_BOUND)
async def test_a_conversation_whose_history_is_refused_is_a_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session(settings=WITH_HISTORY)
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await reconnecting.join("#lunch")
        assert await server.receive() == Join("#lunch")
        await server.send("join|#lunch|alice", msg(3, to="#lunch"))
        await take(reconnecting, 3)
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second, WITH_HISTORY)
        with trio.fail_after(STEP):
            await log_in_again(second)
            await second.send("login|alice", "login|bob")
            await second.receive()  # join
            await second.send("join|#lunch|alice")
            assert await second.receive() == History("#lunch", "after", 500, 3)
            assert await second.receive() == History("*", "after", 500, 3)
            await second.send(
                f"hist|4|{TIME}|bob|#lunch|message 4",
                "history|#lunch|1",
                "error|not-in-room|*",
            )
            assert await second.answer_ping() == []
        events = await take(reconnecting, 2)
        assert events[0] == ResumeFailed(
            "no such session", after=3, recovered=1, gaps=("*",)
        )
        assert ids(events) == [4]


@fail_after(VIRTUAL_BOUND)
async def test_an_account_logs_in_again_with_its_password(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session(password=PASSWORD)
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await take(reconnecting, 1)
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second)
        with trio.fail_after(STEP):
            await log_in_again(second, PASSWORD)
            await second.send("login|alice", "login|bob")
            assert await second.answer_ping() == []
        (event,) = await take(reconnecting, 1)
        assert isinstance(event, ResumeFailed)
        # The password is kept, and never shown.
        for shown in (repr(reconnecting), repr(reconnecting.client), repr(event)):
            assert PASSWORD not in shown

        # And kept across the next drop too (this server said no session
        # this time: the client logs in at once).
        await second.drop()
        await take(reconnecting, 2)
        third = await reopen.next_server()
        with trio.fail_after(STEP):
            assert await third.login_request(SESSIONS) == Login("alice", PASSWORD)


@fail_after(VIRTUAL_BOUND)
async def test_a_name_registered_meanwhile_logs_in_again_with_its_password(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await reconnecting.register(PASSWORD)
        assert await server.receive() == Register(PASSWORD)
        await server.send("registered|alice")
        assert await take(reconnecting, 2) == [Login("bob"), Registered("alice")]
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second)
        with trio.fail_after(STEP):
            assert await second.receive() == Login("alice", PASSWORD)


@fail_after(VIRTUAL_BOUND)
async def test_a_new_password_whose_answer_was_lost_is_tried_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session(password=PASSWORD)
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await reconnecting.change_password(NEW_PASSWORD)
        assert await server.receive() == ChangePassword(NEW_PASSWORD)
        # The server took it; the drop lost its answer.
        await server.drop()
        await take(reconnecting, 3)
        second = await reopen.next_server()
        await refuse_resume(second)
        with trio.fail_after(STEP):
            assert await second.receive() == Login("alice", PASSWORD)
            await second.send("error|wrong-password|alice")
            await log_in_again(second, NEW_PASSWORD)
            await second.send("login|alice", "login|bob")
            assert await second.answer_ping() == []
        (event,) = await take(reconnecting, 1)
        assert isinstance(event, ResumeFailed)


@fail_after(VIRTUAL_BOUND)
async def test_a_refusal_that_retrying_cannot_change_ends_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session(password=PASSWORD)
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await take(reconnecting, 1)
        await server.drop()
        await take(reconnecting, 2)
        second = await reopen.next_server()
        await refuse_resume(second)
        with trio.fail_after(STEP):
            assert await second.receive() == Login("alice", PASSWORD)
            await second.send("error|wrong-password|alice")
        with trio.fail_after(STEP), pytest.raises(ConnectionLost) as raised:
            await anext(reconnecting)
        assert "cannot log in again as alice: wrong-password" in str(raised.value)
        assert isinstance(raised.value.__cause__, LoginRefused)
        assert PASSWORD not in str(raised.value)
        with pytest.raises(NotSent, match="wrong-password"):
            await reconnecting.talk("bob", "hello?")
    assert len(reopen.calls) == 1


# -- sending while away ----------------------------------------------------------


@fail_after(VIRTUAL_BOUND)
async def test_a_send_while_away_goes_out_once_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    sent = trio.Event()

    async def send_while_away(client: ReconnectingClient) -> None:
        await client.talk("bob", "while away")
        sent.set()

    async with (
        ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting,
        trio.open_nursery() as nursery,
    ):
        await take(reconnecting, 1)
        await server.drop()
        await take(reconnecting, 2)
        assert not reconnecting.connected
        nursery.start_soon(send_while_away, reconnecting)
        second = await reopen.next_server()
        # Not sent, and not failed, while there is no connection.
        assert not sent.is_set()
        await take_back(second)
        # After the resume's own frames: the snapshot is read first.
        with trio.fail_after(STEP):
            assert await second.receive() == Talk("bob", "while away")
            await sent.wait()
        assert reconnecting.connected


@fail_after(VIRTUAL_BOUND)
async def test_a_send_the_drop_breaks_goes_out_again_after_the_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server = fake_server_pair()
    breakable = Breakable(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, "alice", ["bob"], SESSIONS, f"{SECRET}|30")
        client = await Client.login(breakable, "alice")
    reopen = Reopener()
    returned = trio.Event()

    async def send_as_it_breaks(client: ReconnectingClient) -> None:
        await client.talk("bob", "typed as it dropped")
        returned.set()

    async with (
        ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting,
        trio.open_nursery() as nursery,
    ):
        await take(reconnecting, 1)
        # The connection is gone, but nothing has been read to say so.
        breakable.broken = True
        nursery.start_soon(send_as_it_breaks, reconnecting)
        (dropped,) = await take(reconnecting, 1)
        assert dropped == Disconnected("connection lost: connection reset")
        await take(reconnecting, 1)  # Reconnecting
        assert not returned.is_set()
        await take_back(await reopen.next_server())
        with trio.fail_after(STEP):
            await returned.wait()
    # Nothing of it went over the broken connection.
    assert await server.receive_all() == []


@fail_after(VIRTUAL_BOUND)
async def test_a_send_cancelled_halfway_ends_that_connection_and_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server = fake_server_pair()
    breakable = Breakable(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, "alice", ["bob"], SESSIONS, f"{SECRET}|30")
        client = await Client.login(breakable, "alice")
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting:
        await take(reconnecting, 1)
        breakable.stalling = True
        with trio.move_on_after(5) as waited:
            await reconnecting.talk("bob", "half of it")
        assert waited.cancelled_caught
        # Half a frame, then the end: the server takes nothing from it.
        with trio.fail_after(STEP):
            assert await server.receive_all() == []
        assert await take(reconnecting, 1) == [Disconnected("a send was interrupted")]
        await take(reconnecting, 1)  # Reconnecting
        second = await reopen.next_server()
        await take_back(second)
        await reconnecting.talk("bob", "whole")
        with trio.fail_after(STEP):
            assert await second.receive() == Talk("bob", "whole")


@fail_after(VIRTUAL_BOUND)
async def test_sends_waiting_when_the_client_closes_raise_not_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    outcome: list[BaseException] = []

    async def send_while_away(client: ReconnectingClient) -> None:
        try:
            await client.join("#lunch")
        except ConnectionLost as lost:
            outcome.append(lost)

    async with (
        trio.open_nursery() as nursery,
        ReconnectingClient.wrap(client, reopen, keepalive=0) as reconnecting,
    ):
        await server.drop()
        await take(reconnecting, 3)  # Login, Disconnected, Reconnecting
        nursery.start_soon(send_while_away, reconnecting)
        await reopen.next_server()
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotSent)
    assert str(outcome[0]) == "the client is closed"


# -- keepalive ------------------------------------------------------------------


@fail_after(VIRTUAL_BOUND)
async def test_a_silent_server_is_pinged_then_counts_as_a_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await with_session()
    reopen = Reopener()
    async with ReconnectingClient.wrap(client, reopen, keepalive=5) as reconnecting:
        await take(reconnecting, 1)
        quiet_since = client.last_heard
        with trio.fail_after(STEP):
            assert await server.receive() == Ping("keepalive-1")
        assert trio.current_time() == pytest.approx(quiet_since + 5)
        # No answer: after as long again, the connection is given up.
        events = await take(reconnecting, 2)
        assert events[0] == Disconnected("no answer from the server for 5 s")
        assert trio.current_time() == pytest.approx(quiet_since + 10)
        assert isinstance(events[1], Reconnecting)
        assert await take_back(await reopen.next_server()) == Resume(SECRET, 0)


async def test_exit_while_away_takes_the_session_back_to_say_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # /quit (or a closed terminal) while the connection is down: one quick
    # resume says exit, so the name is free at once, not when the real
    # server's resume window (120 s) has passed.
    with trio.fail_after(VIRTUAL_BOUND):
        async with clocked_server("memory") as server:
            bob = await Client.login(await server.open_stream(), "bob")
            first = await server.open_stream()
            alice = await Client.login(first, "alice")
            slow = Backoff(first=50.0, factor=1.0, cap=50.0, jitter=0.0)
            async with ReconnectingClient.wrap(
                alice, server.open_stream, backoff=slow, keepalive=0
            ) as wrapped:
                await trio.aclose_forcefully(first)
                async for event in wrapped:
                    if isinstance(event, Disconnected):
                        break
                left = trio.current_time()
                await wrapped.exit()
            with trio.fail_after(EXIT_WHILE_AWAY_TIMEOUT):
                async for event in bob:
                    if event == Exit("alice"):
                        break
            assert trio.current_time() - left <= EXIT_WHILE_AWAY_TIMEOUT
            again = await Client.login(await server.open_stream(), "alice")
            assert again.name == "alice"
