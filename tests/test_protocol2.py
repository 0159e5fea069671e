"""Protocol 2's first part, black box over TCP: hello, ids, time, echo.

Written from the contract (the shared protocol.md, version 2, sections 1-5
and 8, and the project's docs/protocol.md, which must agree with it), not
from the server's code. Sessions (section 7) are tested elsewhere: these
servers keep none unless a test says so, so a protocol-2 login gets no
``session`` frame and a dropped connection goes offline at once. Every test
runs a real server on 127.0.0.1 and drives it with bare line clients, as
``nc`` would. To know that the server has handled what a client sent, a
test sends ``ping|TOKEN`` and waits for ``pong|TOKEN``. Rooms and presence
are in test_protocol2_rooms.py.
"""

from __future__ import annotations

import datetime
from collections import defaultdict

import pytest
import trio
from helpers import (
    PROTOCOL_1_KINDS,
    STEP_TIMEOUT,
    LineClient,
    Msg,
    User,
    expect_error_frame,
    expect_quiet,
    join_room,
    running_server,
    running_server_without_sessions,
    say_hello,
    users_online,
)

import trichat

REQUIRED_SETTINGS = frozenset(
    {
        "server",
        "max-line",
        "max-text",
        "max-name",
        "rate",
        "burst",
        "ping",
        "rooms",
        "history",
        "resume",
        "presence",
    }
)


def when(msg: Msg) -> datetime.datetime:
    """The TIME of *msg* as an aware datetime."""
    return datetime.datetime.strptime(msg.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC
    )


async def own_message(user: User, text: str) -> str:
    """Send *text* to the user's own name; the one line it comes back as."""
    await user.send(f"talk|{user.name}|{text}")
    return await user.read_line()


# -- hello -----------------------------------------------------------------------


async def test_hello_2_is_answered_with_version_2_and_every_setting() -> None:
    async with running_server() as live:
        client = await live.connect()
        settings = await say_hello(client, "hello|2")
        assert settings.keys() >= REQUIRED_SETTINGS
        assert settings["server"] == f"trichat/{trichat.__version__}"
        assert {k: settings[k] for k in ("max-line", "max-text", "max-name")} == {
            "max-line": "4096",
            "max-text": "4000",
            "max-name": "32",
        }
        assert float(settings["rate"]) == 100
        assert float(settings["ping"]) == 60
        assert (settings["burst"], settings["rooms"]) == ("200", "50")
        assert settings["presence"] == "global"
        # Nothing is kept yet; sessions wait 120 s by default (section 7).
        assert (settings["history"], settings["resume"]) == ("0", "120")


async def test_with_resume_off_a_login_gets_no_session_frame() -> None:
    async with running_server_without_sessions() as live:
        client = await live.connect()
        assert (await say_hello(client, "hello|2"))["resume"] == "0"
        await client.login("alice")
        await expect_quiet(client)  # section 4: not sent when resume is off


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(
            {
                "max_line": 512,
                "rate": 2.5,
                "burst": 7,
                "ping_interval": 0.0,
                "max_rooms": 3,
                "presence": "rooms",
                "resume_window": 0.0,
            },
            id="small",
        ),
        pytest.param(
            {
                "max_line": 9000,
                "rate": 0.0,
                "burst": 1,
                "ping_interval": 12.5,
                "max_rooms": 0,
                "presence": "global",
                "resume_window": 45.5,
            },
            id="large-and-off",
        ),
    ],
)
async def test_settings_are_the_servers_own(config: dict[str, object]) -> None:
    async with running_server_without_sessions(**config) as live:
        settings = await say_hello(await live.connect(), "hello|2")
        assert settings.keys() >= REQUIRED_SETTINGS
        assert settings["max-line"] == str(config["max_line"])
        assert float(settings["rate"]) == config["rate"]
        assert settings["burst"] == str(config["burst"])
        assert float(settings["ping"]) == config["ping_interval"]
        assert settings["rooms"] == str(config["max_rooms"])
        assert settings["presence"] == config["presence"]
        assert float(settings["resume"]) == config["resume_window"]
        # hello|1 is answered with the same settings.
        assert await say_hello(await live.connect(), "hello|1", 1) == settings


async def test_max_line_in_hello_is_the_limit_enforced() -> None:
    async with running_server_without_sessions(max_line=512) as live:
        client = await live.connect()
        limit = int((await say_hello(client, "hello|2"))["max-line"])
        assert limit == 512
        await client.login("alice")
        alice = User("alice", client, 2)
        head = "talk|alice|"
        fits = "x" * (limit - len(head) - 1)  # the LF makes it limit bytes
        msg = Msg.parse(await own_message(alice, fits))
        assert msg.text == fits
        await client.send(head + fits + "x")
        lines = await client.read_until_closed()
        assert [line.split("|")[:2] for line in lines] == [["error", "too-long"]]


async def test_burst_in_hello_is_the_limit_enforced() -> None:
    async with running_server_without_sessions(rate=0.01, burst=5) as live:
        client = await live.connect()
        burst = int((await say_hello(client, "hello|2"))["burst"])
        assert burst == 5
        # The hello was one frame of the burst; one more than what is left
        # is refused.
        await client.send_raw(b"".join(b"ping|p%d\n" % i for i in range(burst)))
        await client.expect(*(f"pong|p{i}" for i in range(burst - 1)))
        await expect_error_frame(client, "rate-limited")


async def test_hello_1_is_answered_and_the_connection_stays_version_1() -> None:
    async with running_server_without_sessions() as live:
        (alice,) = await users_online(live, ("alice", 2, "echo"))
        client = await live.connect()
        settings = await say_hello(client, "hello|1", 1)
        assert settings.keys() >= REQUIRED_SETTINGS
        await client.login("carol")
        await client.expect("login|alice")
        await alice.expect("login|carol")
        await alice.send("talk|carol|hi")
        await client.expect("talk|alice|carol|hi")
        assert (await alice.delivery("alice", "carol", "hi")) is not None
        await client.send("talk|alice|hello yourself")
        await alice.delivery("carol", "alice", "hello yourself")
        await expect_quiet(client, alice)


async def test_hello_1_with_echo_echoes_nothing() -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await say_hello(client, "hello|1|echo", 1)
        await client.login("carol")
        await client.expect("login|bob")
        await bob.expect("login|carol")
        for to, shown in (("bob", "bob"), ("*", "*")):
            await client.send(f"talk|{to}|hi")
            await bob.expect(f"talk|carol|{shown}|hi")
        # To oneself it arrives once, as version 1 writes it.
        await client.send("talk|carol|me")
        await client.expect("talk|carol|carol|me")
        await expect_quiet(client, bob)


@pytest.mark.parametrize("frame", ["hello|3", "hello|10", "hello|1000|echo"])
async def test_a_later_version_gets_version_2(frame: str) -> None:
    async with running_server_without_sessions() as live:
        client = await live.connect()
        settings = await say_hello(client, frame, 2)
        assert settings.keys() >= REQUIRED_SETTINGS
        await client.login("alice")
        Msg.parse(await own_message(User("alice", client, 2), "two"))


@pytest.mark.parametrize(
    "frame",
    [
        "hello|0",
        "hello|-1",
        "hello|two",
        "hello|2.0",
        "hello| 2",
        "hello|2 ",
        "hello|0x2",
        "hello|1_0",
        "hello|+2",
        "hello|",
        "hello",
        "hello|2|",
        "hello|2|echo|more",
    ],
)
async def test_a_bad_hello_is_a_bad_frame_and_a_good_one_may_follow(
    frame: str,
) -> None:
    async with running_server_without_sessions() as live:
        client = await live.connect()
        await client.send(frame)
        await expect_error_frame(client, "bad-frame")
        await say_hello(client, "hello|2")
        await client.login("alice")
        Msg.parse(await own_message(User("alice", client, 2), "still two"))


@pytest.mark.parametrize(
    ("options", "echoed"),
    [("fancy echo zip", True), ("echo", True), ("fancy", False)],
)
async def test_unknown_options_are_ignored(options: str, echoed: bool) -> None:
    async with running_server_without_sessions() as live:
        bob, alice = await users_online(live, "bob", ("alice", 2, options))
        await alice.send("talk|bob|hi")
        await bob.expect("talk|alice|bob|hi")
        if echoed:
            await alice.delivery("alice", "bob", "hi")
        await expect_quiet(alice, bob)


@pytest.mark.parametrize(
    ("first", "second", "version"),
    [
        ("hello|2", "hello|1", 2),
        ("hello|2", "hello|2|echo", 2),
        ("hello|1", "hello|2|echo", 1),
        ("hello|3", "hello|2", 2),
    ],
)
async def test_a_second_hello_is_refused_and_the_first_stands(
    first: str, second: str, version: int
) -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await say_hello(client, first, version)
        await client.send(second)
        await expect_error_frame(client, "bad-frame")
        await client.login("alice")
        await client.expect("login|bob")
        await bob.expect("login|alice")
        alice = User("alice", client, version)
        await alice.send("talk|bob|no echo")  # the second hello's echo is not on
        await bob.expect("talk|alice|bob|no echo")
        line = await own_message(alice, "me")
        if version == 1:
            assert line == "talk|alice|alice|me"
        else:
            assert Msg.parse(line).text == "me"
        await expect_quiet(client, bob)


@pytest.mark.parametrize(("version", "options"), [(1, ""), (2, ""), (2, "echo")])
@pytest.mark.parametrize("frame", ["hello|2", "hello|1", "hello|2|echo"])
async def test_hello_after_login_is_already_logged_in(
    version: int, options: str, frame: str
) -> None:
    async with running_server_without_sessions() as live:
        (alice,) = await users_online(live, ("alice", version, options))
        await alice.send(frame)
        await expect_error_frame(alice, "already-logged-in")
        # The connection speaks what it spoke before.
        line = await own_message(alice, "same")
        if version == 1:
            assert line == "talk|alice|alice|same"
        else:
            assert Msg.parse(line).text == "same"
        await expect_quiet(alice)


async def test_hello_may_follow_a_ping_and_a_refused_login() -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await client.send("ping|first")
        await client.expect("pong|first")
        await client.send("login|*")
        await expect_error_frame(client, "bad-name")
        await client.send("login|BOB")
        await expect_error_frame(client, "name-taken")
        await say_hello(client, "hello|2|echo")
        await client.login("alice")
        await client.expect("login|bob")
        alice = User("alice", client, 2, echo=True)
        await alice.send("talk|bob|hi")
        await bob.expect("login|alice", "talk|alice|bob|hi")
        await alice.delivery("alice", "bob", "hi")


@pytest.mark.parametrize(
    "frame", ["talk|bob|hi", "talk|*|hi", "join|#r", "part|#r", "rooms", "exit|bob"]
)
async def test_a_hello_is_not_a_login(frame: str) -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await say_hello(client, "hello|2")
        await client.send(frame)
        await expect_error_frame(client, "not-logged-in")
        await expect_quiet(client, bob)


async def test_a_hello_does_not_stop_the_login_timeout() -> None:
    async with running_server_without_sessions(login_timeout=0.3) as live:
        client = await live.connect()
        await say_hello(client, "hello|2")
        lines = await client.read_until_closed()
        assert [line.split("|")[:2] for line in lines] == [["error", "login-timeout"]]


async def test_bare_exit_after_hello_just_closes() -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await say_hello(client, "hello|2")
        await client.send("exit")
        assert await client.read_until_closed() == []
        await expect_quiet(bob)


async def test_logins_and_exits_look_the_same_to_both_versions() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol = await users_online(
            live, ("alice", 2, "echo"), "bob", ("carol", 2, "")
        )
        await carol.send("exit")
        await alice.expect("exit|carol")
        await bob.expect("exit|carol")
        await bob.send("exit")
        await alice.expect("exit|bob")
        await expect_quiet(alice)


async def test_hello_login_and_talk_in_one_write_are_answered_in_order() -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        client = await live.connect()
        await client.send_raw(b"hello|2|echo\nlogin|alice\ntalk|bob|hi\nping|p\n")
        line = await client.read_line()
        assert line.startswith("hello|2|"), line
        await client.expect("login|alice", "login|bob")
        alice = User("alice", client, 2, echo=True)
        await alice.delivery("alice", "bob", "hi")
        await client.expect("pong|p")
        # bob hears of alice before he hears from her.
        await bob.expect("login|alice", "talk|alice|bob|hi")


async def test_a_talk_right_before_exit_arrives_before_the_exit() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, ""), "bob")
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await bob.client.send_raw(b"talk|alice|one\ntalk|#r|two\nexit\n")
        await alice.delivery("bob", "alice", "one")
        await alice.delivery("bob", "#r", "two")
        await alice.expect("exit|bob")
        await expect_quiet(alice)


# -- protocol 1 connections ------------------------------------------------------


@pytest.mark.parametrize(
    "resume_window",
    [pytest.param(0.0, id="no-sessions"), pytest.param(120.0, id="sessions")],
)
async def test_protocol_1_connections_never_get_a_protocol_2_kind(
    resume_window: float,
) -> None:
    # With sessions on, protocol 2 logins get a session frame: protocol 1
    # ones (no hello, or hello|1) must not.
    async with running_server(rate=0, resume_window=resume_window) as live:
        alice, bob, dave, carol = await users_online(
            live, ("alice", 2, "echo"), "bob", ("dave", 2, ""), ("carol", 1, "echo")
        )
        # carol said hello|1|echo: she speaks version 1 too, that answer aside.
        everyone = [alice, bob, dave, carol]
        seen: dict[str, list[str]] = defaultdict(list)

        async def settle() -> None:
            for user in everyone:
                seen[user.name] += await user.client.pong_after("s")

        for user in everyone:
            await user.send("join|#mix")
            await settle()
        for user in everyone:
            for to in ("#mix", "*", "bob", "carol", "alice", "dave", "nobody"):
                await user.send(f"talk|{to}|from {user.name} to {to}")
            await user.send("talk|#elsewhere|x")
            await user.send("rooms")
            await settle()
        await dave.send("part|#mix")
        await dave.send("exit")
        assert await dave.client.read_until_closed() == ["part|#mix|dave"]
        await alice.send("exit")
        await alice.client.read_until_closed()
        for user in (bob, carol):
            while not {"exit|dave", "exit|alice"} <= set(seen[user.name]):
                seen[user.name].append(await user.read_line())
            seen[user.name] += await user.client.pong_after("s")

        for name in ("bob", "carol"):
            kinds = {line.partition("|")[0] for line in seen[name]}
            assert kinds <= PROTOCOL_1_KINDS, (name, seen[name])
            # Every message for them came, as talk.
            for sender in ("alice", "dave", "bob", "carol"):
                if sender != name:
                    assert f"talk|{sender}|#mix|from {sender} to #mix" in seen[name]
                    assert f"talk|{sender}|*|from {sender} to *" in seen[name]
                assert f"talk|{sender}|{name}|from {sender} to {name}" in seen[name]
        # And version 2 gets msg, never talk.
        assert not [line for line in seen["alice"] if line.startswith("talk|")]
        assert any(line.startswith("msg|") for line in seen["alice"])


async def test_protocol_1_session_as_version_1_wrote_it() -> None:
    # docs/protocol.md, "A session": dave and erin, neither says hello.
    async with running_server_without_sessions() as live:
        dave = await live.connect()
        await dave.send("login|dave")
        await dave.expect("login|dave")
        erin = await live.connect()
        await erin.send("login|erin")
        await erin.expect("login|erin", "login|dave")
        await dave.expect("login|erin")
        await erin.send("talk|dave|are you there? | call me")
        await dave.expect("talk|erin|dave|are you there? | call me")
        await dave.send("talk|*|back in five")
        await erin.expect("talk|dave|*|back in five")
        await dave.send("talk|frank|hello?")
        await expect_error_frame(dave, "no-such-user", "frank")
        await erin.send("login|erin2")
        await expect_error_frame(erin, "already-logged-in")
        await dave.send("ping|t1")
        await dave.expect("pong|t1")
        await erin.send("exit")
        await dave.expect("exit|erin")
        assert await erin.read_until_closed() == []
        await expect_quiet(dave)


async def test_protocol_1_rooms_answer_in_version_1_frames() -> None:
    async with running_server_without_sessions() as live:
        bob, carol = await users_online(live, "bob", "carol")
        await join_room(bob, "#r", [])
        await join_room(carol, "#r", [bob])
        await bob.send("talk|#r|hi")
        await carol.expect("talk|bob|#r|hi")
        await carol.send("rooms")
        await carol.expect("room|#r|2", "rooms|1")
        await carol.send("part|#r")
        await carol.expect("part|#r|carol")
        await bob.expect("part|#r|carol")
        await expect_quiet(bob, carol)


# -- message ids and time --------------------------------------------------------


async def test_ids_strictly_increase_as_each_connection_sees_them() -> None:
    names = ["ann", "bob", "cy", "dee"]
    per_sender = 30
    async with running_server_without_sessions(rate=0) as live:
        users = await users_online(live, *((n, 2, "echo") for n in names))
        for i, user in enumerate(users):
            await join_room(user, "#r", users[:i])
        # Each sends to the next user, the room and everyone in turn, all
        # at once; the server routes them in some order.
        plan: dict[str, list[tuple[str, str]]] = {}
        for i, user in enumerate(users):
            targets = [names[(i + 1) % len(names)], "#r", "*"]
            plan[user.name] = [
                (targets[k % 3], f"{user.name}-{k}") for k in range(per_sender)
            ]
        expected: dict[str, int] = defaultdict(int)
        for sender, says in plan.items():
            for to, _ in says:
                for name in names:
                    if name == sender or to in ("#r", "*") or to == name:
                        expected[name] += 1  # an echo, or a delivery
        got: dict[str, list[Msg]] = defaultdict(list)

        async def send(user: User) -> None:
            frames = "".join(f"talk|{to}|{text}\n" for to, text in plan[user.name])
            await user.client.send_raw(frames.encode())

        async def receive(user: User) -> None:
            while len(got[user.name]) < expected[user.name]:
                got[user.name].append(Msg.parse(await user.read_line()))

        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(receive, user)
                    nursery.start_soon(send, user)
        await expect_quiet(*users)

        seen_as: dict[tuple[str, str], tuple[int, str]] = {}
        for name, msgs in got.items():
            ids = [m.id for m in msgs]
            assert ids == sorted(set(ids)), f"{name} saw ids out of order: {ids}"
            for m in msgs:
                # One message, one id and one time, for every copy of it.
                assert seen_as.setdefault((m.sender, m.text), (m.id, m.time)) == (
                    m.id,
                    m.time,
                ), m
            # And one sender's messages to one target in the order sent.
            for sender, says in plan.items():
                for to in {to for to, _ in says}:
                    sent = [text for t, text in says if t == to]
                    arrived = [m.text for m in msgs if (m.sender, m.to) == (sender, to)]
                    assert arrived == sent[: len(arrived)], (name, sender, to)
        ids = [ident for ident, _ in seen_as.values()]
        assert len(set(ids)) == len(ids) == len(names) * per_sender


async def test_ids_stay_in_order_through_a_burst_to_a_slow_reader() -> None:
    burst, direct = 3000, 600
    # A short queue, so that bob's fills and the senders wait for him. They
    # wait as long as he reads: with the default quarter-second budget per
    # read, a slow machine (or a full collection mid-burst) could get a
    # recipient dropped as too slow, which is another test's subject; and a
    # sender dropped with lines unread gets a reset, not its messages.
    async with running_server_without_sessions(
        rate=0,
        presence="rooms",
        queue_size=64,
        max_sender_wait=STEP_TIMEOUT,
        stall_timeout=STEP_TIMEOUT,
    ) as live:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1)
        await sock.connect(("127.0.0.1", live.port))
        slow = LineClient(trio.SocketStream(sock))
        live.clients.append(slow)
        await say_hello(slow, "hello|2")
        await slow.login("bob")
        bob = User("bob", slow, 2)
        alice, carol, dave = await users_online(
            live, ("alice", 2, "echo"), ("carol", 2, ""), "dave", rooms_presence=True
        )
        members = [bob, alice, carol, dave]
        for i, user in enumerate(members):
            await join_room(user, "#r", members[:i])
        got: dict[str, list[str]] = defaultdict(list)
        wanted = {"bob": burst + direct, "alice": burst, "carol": burst}
        wanted["dave"] = burst

        async def read(user: User, chunk: int) -> None:
            buffer = b""
            while len(got[user.name]) < wanted[user.name]:
                data = await user.client.stream.receive_some(chunk)
                assert data, f"{user.name} was disconnected"
                *lines, buffer = (buffer + data).split(b"\n")
                got[user.name] += [line.decode() for line in lines]
            assert buffer == b""

        async def send(user: User, frames: list[str]) -> None:
            for start in range(0, len(frames), 500):
                await user.client.send_raw(
                    "".join(frames[start : start + 500]).encode()
                )

        with trio.fail_after(4 * STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for user in members:
                    nursery.start_soon(read, user, 256 if user is bob else 65536)
                nursery.start_soon(
                    send, alice, [f"talk|#r|{n:05d} to all\n" for n in range(burst)]
                )
                nursery.start_soon(
                    send, dave, [f"talk|bob|{n:05d} to you\n" for n in range(direct)]
                )
        await expect_quiet(alice, dave, bob, carol)

        room = [f"{n:05d} to all" for n in range(burst)]
        assert got["dave"] == [f"talk|alice|#r|{text}" for text in room]
        ids: dict[str, int] = {}
        for name in ("bob", "alice", "carol"):
            msgs = [Msg.parse(line) for line in got[name]]
            assert [m.id for m in msgs] == sorted({m.id for m in msgs}), name
            assert [m.text for m in msgs if m.sender == "alice"] == room, name
            for m in msgs:
                assert ids.setdefault(m.text, m.id) == m.id, (name, m)
        assert [m.text for m in map(Msg.parse, got["bob"]) if m.sender == "dave"] == [
            f"{n:05d} to you" for n in range(direct)
        ]


async def test_ids_increase_across_restarts() -> None:
    last = 0
    for run in range(2):
        async with running_server_without_sessions() as live:
            (alice,) = await users_online(live, ("alice", 2, ""))
            first = Msg.parse(await own_message(alice, f"run {run}")).id
            second = Msg.parse(await own_message(alice, "again")).id
        assert last < first < second
        last = second


async def test_time_is_utc_to_the_millisecond_when_the_server_accepted() -> None:
    slack = datetime.timedelta(milliseconds=250)
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, "echo"), ("bob", 2, ""))
        for _ in range(3):
            before = datetime.datetime.now(datetime.UTC)
            await alice.send("talk|bob|now")
            echo = await alice.delivery("alice", "bob", "now")
            copy = await bob.delivery("alice", "bob", "now")
            after = datetime.datetime.now(datetime.UTC)
            assert echo is not None
            assert copy is not None
            assert echo.time == copy.time
            assert before - slack <= when(copy) <= after + slack, (
                before,
                copy.time,
                after,
            )


# -- echo ----------------------------------------------------------------------


@pytest.mark.parametrize("to", ["Bob", "bob", "BOB", "\uff22ob"])
async def test_echo_has_the_recipients_id_and_time_and_names_the_recipient(
    to: str,
) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, "echo"), ("Bob", 2, ""))
        await alice.send(f"talk|{to}|hi | there")
        copy = await bob.delivery("alice", "Bob", "hi | there")
        echo = await alice.delivery("alice", "Bob", "hi | there")
        assert echo == copy
        await expect_quiet(alice, bob)


async def test_echo_of_a_room_message_names_the_room_as_the_server_knows_it() -> None:
    async with running_server_without_sessions() as live:
        bob, alice, carol = await users_online(
            live, ("bob", 2, ""), ("alice", 2, "echo"), "carol"
        )
        await join_room(bob, "#Lunch", [])
        await join_room(alice, "#LUNCH", [bob], shown="#Lunch")
        await alice.send("talk|#lunch|pizza?")
        copy = await bob.delivery("alice", "#Lunch", "pizza?")
        echo = await alice.delivery("alice", "#Lunch", "pizza?")
        assert echo == copy
        await expect_quiet(alice, bob, carol)


async def test_echo_of_a_broadcast_has_the_id_everyone_else_got() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol = await users_online(
            live, ("alice", 2, "echo"), "bob", ("carol", 2, "")
        )
        await alice.send("talk|*|all")
        await bob.expect("talk|alice|*|all")
        copy = await carol.delivery("alice", "*", "all")
        echo = await alice.delivery("alice", "*", "all")
        assert echo == copy
        await expect_quiet(alice, bob, carol)


async def test_echo_of_a_broadcast_with_nobody_else_online() -> None:
    async with running_server_without_sessions() as live:
        (alice,) = await users_online(live, ("alice", 2, "echo"))
        await alice.send("talk|*|anyone?")
        await alice.delivery("alice", "*", "anyone?")
        await expect_quiet(alice)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("talk|zed|hi", "no-such-user"),
        ("talk|#nowhere|hi", "not-in-room"),
        ("talk|#elsewhere|hi", "not-in-room"),
        ("talk|bob|a\x01b", "bad-frame"),
        ("talk|bob|" + "x" * 4001, "bad-frame"),
    ],
)
async def test_a_refused_message_is_not_echoed(frame: str, code: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, "echo"), ("bob", 2, ""))
        await join_room(bob, "#elsewhere", [])
        await alice.send(frame)
        await expect_error_frame(alice, code)
        await expect_quiet(alice, bob)


@pytest.mark.parametrize("options", ["echo", ""])
@pytest.mark.parametrize("to", ["alice", "ALICE"])
async def test_a_message_to_oneself_arrives_once(options: str, to: str) -> None:
    async with running_server_without_sessions() as live:
        (alice,) = await users_online(live, ("alice", 2, options))
        await alice.send(f"talk|{to}|note to self")
        await alice.delivery("alice", "alice", "note to self")
        await expect_quiet(alice)


async def test_without_echo_the_sender_gets_nothing_back() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, ""), ("bob", 2, ""))
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        for to in ("bob", "#r", "*"):
            await alice.send(f"talk|{to}|x")
            await bob.delivery("alice", to, "x")
        await expect_quiet(alice, bob)


# -- errors on a protocol 2 connection -------------------------------------------


async def test_errors_that_keep_a_protocol_2_connection_open() -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, ("bob", 2, ""))
        client = await live.connect()
        await say_hello(client, "hello|2|echo")
        await client.send("login|*")
        await expect_error_frame(client, "bad-name")
        await client.send("login|BOB")
        await expect_error_frame(client, "name-taken")
        await client.send("talk|bob|hi")
        await expect_error_frame(client, "not-logged-in")
        await client.login("alice")
        await client.expect("login|bob")
        await bob.expect("login|alice")
        for frame, code in [
            ("login|carol", "already-logged-in"),
            ("talk|zed|x", "no-such-user"),
            ("talk|bob|", "bad-frame"),
            ("frob|x", "bad-frame"),
            ("exit|bob", "bad-frame"),
        ]:
            await client.send(frame)
            detail = await expect_error_frame(client, code)
            if code == "no-such-user":
                assert detail == "zed"
        alice = User("alice", client, 2, echo=True)
        await alice.send("talk|bob|still here")
        await bob.delivery("alice", "bob", "still here")
        await alice.delivery("alice", "bob", "still here")
        await expect_quiet(alice, bob)


async def test_shutting_down_reaches_a_protocol_2_connection() -> None:
    async with running_server_without_sessions() as live:
        (alice,) = await users_online(live, ("alice", 2, "echo"))
        live.server.shutdown()
        lines = await alice.client.read_until_closed()
        assert [line.split("|")[:2] for line in lines] == [["error", "shutting-down"]]
