"""Rooms and presence, black box over TCP, both protocol versions.

Written from the contract (the shared protocol.md, version 2, sections 2-5
and 8, and the project's docs/protocol.md), not from the server's code:
``join``, ``part``, ``talk`` to a room, ``rooms``, the clash rules for room
names, ``--max-rooms``, ``--presence global|rooms``, and section 4's rule
that an answer arrives whole. The servers keep no sessions (section 7 is
tested elsewhere): a dropped protocol-2 connection goes offline at once.
Every test runs a real server on 127.0.0.1;
``ping|TOKEN`` / ``pong|TOKEN`` tells a test that what a client sent has
been handled.
"""

from __future__ import annotations

import pytest
import trio
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    Msg,
    User,
    expect_error_frame,
    expect_quiet,
    join_room,
    log_in_user,
    reset_on_close,
    running_server_without_sessions,
    say_hello,
    users_online,
)

OFFLINE = ["exit", "exit|NAME", "eof", "reset", "too-long"]


async def go_offline(user: User, how: str) -> None:
    """Take *user* offline in one of the OFFLINE ways; for those the
    server answers, read to the end of the connection."""
    client = user.client
    match how:
        case "exit":
            await client.send("exit")
            assert await client.read_until_closed() == []
        case "exit|NAME":
            await client.send(f"exit|{user.name.upper()}")
            assert await client.read_until_closed() == []
        case "eof":
            await client.aclose()
        case "reset":
            assert isinstance(client.stream, trio.SocketStream)
            reset_on_close(client.stream)
            await client.aclose()
        case "too-long":
            await client.send_raw(b"x" * 5000)
            lines = await client.read_until_closed()
            assert [line.split("|")[:2] for line in lines] == [["error", "too-long"]]
        case _:
            raise AssertionError(how)


async def listing(user: User) -> list[str]:
    """The answer to ``rooms``: its ``room`` lines sorted, then the end."""
    await user.send("rooms")
    lines: list[str] = []
    while not (line := await user.read_line()).startswith("rooms|"):
        assert line.startswith("room|"), line
        lines.append(line)
    assert line == f"rooms|{len(lines)}"
    return [*sorted(lines), line]


# -- join, part, talk ------------------------------------------------------------


async def test_join_answers_own_name_first_then_every_member() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol, dave = await users_online(
            live, "alice", ("bob", 2, ""), ("carol", 2, "echo"), "dave"
        )
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await join_room(carol, "#r", [alice, bob])
        await expect_quiet(alice, bob, carol, dave)  # dave is not in #r


async def test_part_is_told_to_the_members_and_to_the_user_who_left() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol, dave = await users_online(
            live, "alice", ("bob", 2, ""), ("carol", 2, "echo"), "dave"
        )
        for i, user in enumerate((alice, bob, carol)):
            await join_room(user, "#r", [alice, bob, carol][:i])
        await bob.send("part|#r")
        for user in (bob, alice, carol):
            await user.expect("part|#r|bob")
        await expect_quiet(bob, alice, carol, dave)
        # bob is out: the room's talk no longer reaches him, and he may
        # neither talk to it nor leave it again.
        await alice.send("talk|#r|after")
        await carol.delivery("alice", "#r", "after")
        await bob.send("talk|#r|me too")
        await expect_error_frame(bob, "not-in-room", "#r")
        await bob.send("part|#r")
        await expect_error_frame(bob, "not-in-room", "#r")
        await expect_quiet(alice, bob, carol, dave)


async def test_room_talk_reaches_every_other_member_in_its_version() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol, dave, erin = await users_online(
            live,
            ("alice", 2, "echo"),
            "bob",
            ("carol", 1, "echo"),
            ("dave", 2, ""),
            ("erin", 2, ""),
        )
        members = [alice, bob, carol, dave]
        for i, user in enumerate(members):
            await join_room(user, "#mix", members[:i])
        for sender in members:
            text = f"from {sender.name}"
            await sender.send(f"talk|#mix|{text}")
            receivers = [u for u in members if u is not sender or u.echo]
            copies = [await u.delivery(sender.name, "#mix", text) for u in receivers]
            # One message: one id in every version-2 copy (and the echo).
            assert len({copy.id for copy in copies if copy is not None}) == 1
        await expect_quiet(*members, erin)


async def test_a_version_1_and_a_version_2_member_get_the_same_message() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, ""), "bob")
        await join_room(bob, "#lunch", [])
        await join_room(alice, "#lunch", [bob])
        await bob.send("talk|#lunch|pizza at 12:30? | or later")
        msg = await alice.delivery("bob", "#lunch", "pizza at 12:30? | or later")
        assert msg is not None
        await alice.send("talk|#lunch|ok!")
        await bob.expect("talk|alice|#lunch|ok!")
        await expect_quiet(alice, bob)


# -- room names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "other"),
    [
        ("#Lunch", "#lunch"),
        ("#Lunch", "#LUNCH"),
        ("#Lunch", "#\uff2cunch"),  # full-width L
        ("#caf\u00e9", "#cafe\u0301"),  # composed and decomposed
        ("#caf\u00e9", "#CAF\u00c9"),
        ("#Stra\u00dfe", "#STRASSE"),  # casefold: sharp s is ss
        ("#\ufb01x", "#fix"),  # NFKC: the fi ligature is f, i
    ],
)
async def test_room_names_clash_after_nfkc_and_casefold(first: str, other: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", ("bob", 2, "echo"))
        await join_room(alice, first, [])
        await join_room(bob, other, [alice], shown=first)
        await bob.send(f"talk|{other}|one room")
        await alice.expect(f"talk|bob|{first}|one room")
        await bob.delivery("bob", first, "one room")
        assert await listing(alice) == [f"room|{first}|2", "rooms|1"]
        await bob.send(f"join|{first}")
        await expect_error_frame(bob, "already-in-room")
        await bob.send(f"part|{other}")
        await bob.expect(f"part|{first}|bob")
        await alice.expect(f"part|{first}|bob")
        await expect_quiet(alice, bob)


async def test_a_room_is_shown_as_its_first_member_wrote_it_while_it_lives() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol, dave = await users_online(
            live, "alice", "bob", ("carol", 2, ""), "dave"
        )
        await join_room(alice, "#Lunch", [])
        await join_room(bob, "#LUNCH", [alice], shown="#Lunch")
        await alice.send("part|#lunch")
        await alice.expect("part|#Lunch|alice")
        await bob.expect("part|#Lunch|alice")
        # The first member left; the room lives on under the same name.
        await join_room(carol, "#lunch", [bob], shown="#Lunch")
        assert await listing(dave) == ["room|#Lunch|2", "rooms|1"]
        await bob.send("part|#LuNcH")
        await bob.expect("part|#Lunch|bob")
        await carol.expect("part|#Lunch|bob")
        await carol.send("part|#lUnCh")
        await carol.expect("part|#Lunch|carol")
        assert await listing(dave) == ["rooms|0"]
        # Empty, it was gone: whoever comes first now names it.
        await join_room(dave, "#LUNCH", [])
        await join_room(alice, "#lunch", [dave], shown="#LUNCH")
        await expect_quiet(alice, bob, carol, dave)


@pytest.mark.parametrize("how", ["part", *OFFLINE])
async def test_a_room_whose_last_member_leaves_is_gone(how: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", ("bob", 2, ""))
        await join_room(bob, "#Solo", [])
        await join_room(alice, "#other", [])
        assert await listing(alice) == ["room|#Solo|1", "room|#other|1", "rooms|2"]
        if how == "part":
            await bob.send("part|#solo")
            await bob.expect("part|#Solo|bob")
        else:
            await go_offline(bob, how)
            await alice.expect("exit|bob")
        assert await listing(alice) == ["room|#other|1", "rooms|1"]
        await join_room(alice, "#SOLO", [])
        assert await listing(alice) == ["room|#SOLO|1", "room|#other|1", "rooms|2"]


VALID_ROOMS = [
    "#" + "a" * 32,
    "#a",
    "#caf\u00e9",
    "#r2-d2",
    "#_x",
    "#a.b",
    "#\u674e\u96f7",
    "#Zoe\u0308",
    "#1",
    "#\u0663",  # an Arabic-Indic digit
]


async def test_every_kind_of_valid_room_name_is_joined_as_written() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", ("bob", 2, ""))
        for room in VALID_ROOMS:
            await join_room(alice, room, [])
            await join_room(bob, room, [alice])
        assert await listing(bob) == [
            *sorted(f"room|{room}|2" for room in VALID_ROOMS),
            f"rooms|{len(VALID_ROOMS)}",
        ]


BAD_ROOMS = [
    "lunch",  # no '#'
    "#",  # nothing after it
    "#" + "a" * 33,  # too long
    "#a b",
    "##a",
    "#.a",
    "#-a",
    "#\u0301a",  # a combining mark first
    "#a\u034f",  # a combining grapheme joiner: renders as nothing
    "#a\ufe0f",  # a variation selector
    "#a*",
    "#a\u200b",  # a zero-width space
    "@a",
]


@pytest.mark.parametrize("kind", ["join", "part"])
@pytest.mark.parametrize("room", BAD_ROOMS)
async def test_a_bad_room_name_is_bad_name(kind: str, room: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", "bob")
        await join_room(bob, "#a", [])
        await alice.send(f"{kind}|{room}")
        await expect_error_frame(alice, "bad-name")
        await expect_quiet(alice, bob)
        assert await listing(alice) == ["room|#a|1", "rooms|1"]


@pytest.mark.parametrize("presence", ["global", "rooms"])
async def test_everyone_cannot_be_joined(presence: str) -> None:
    async with running_server_without_sessions(presence=presence) as live:
        (alice,) = await users_online(live, "alice", rooms_presence=True)
        await alice.send("join|*")
        await expect_error_frame(alice, "bad-name")
        await expect_quiet(alice)
        assert await listing(alice) == ["rooms|0"]


async def test_everyone_cannot_be_parted() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", "bob")
        await alice.send("part|*")
        await expect_error_frame(alice, "bad-name")
        await alice.send("talk|*|still in it")
        await bob.expect("talk|alice|*|still in it")
        await expect_quiet(alice, bob)


# -- room errors -----------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["#r", "#R", "#\uff32"])
async def test_joining_a_room_one_is_in_is_already_in_room(spelling: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", ("bob", 2, ""))
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await bob.send(f"join|{spelling}")
        await expect_error_frame(bob, "already-in-room")
        await expect_quiet(bob, alice)
        # Still in it, once.
        assert await listing(alice) == ["room|#r|2", "rooms|1"]
        await bob.send("part|#r")
        await bob.expect("part|#r|bob")
        await alice.expect("part|#r|bob")


@pytest.mark.parametrize("kind", ["talk", "part"])
@pytest.mark.parametrize("room", ["#elsewhere", "#ELSEWHERE", "#nowhere"])
async def test_a_room_one_is_not_in_is_not_in_room(kind: str, room: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, ("alice", 2, "echo"), "bob")
        await join_room(bob, "#elsewhere", [])
        await alice.send(f"{kind}|{room}" + ("|hello?" if kind == "talk" else ""))
        # protocol.md (the project's): the DETAIL is the room as written.
        await expect_error_frame(alice, "not-in-room", room)
        await expect_quiet(alice, bob)


async def test_too_many_rooms_is_the_limit_in_hello() -> None:
    async with running_server_without_sessions(max_rooms=3) as live:
        client = await live.connect()
        limit = int((await say_hello(client, "hello|2"))["rooms"])
        assert limit == 3
        await client.login("alice")
        alice = User("alice", client, 2)
        (bob,) = await users_online(live, "bob", rooms_presence=True)
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        await join_room(bob, "#4", [])
        for i in range(limit):
            await join_room(alice, f"#{i}", [])
        for room in ("#4", "#5"):
            await alice.send(f"join|{room}")
            await expect_error_frame(alice, "too-many-rooms")
        await expect_quiet(alice, bob)
        assert await listing(alice) == [
            "room|#0|1",
            "room|#1|1",
            "room|#2|1",
            "room|#4|1",
            "rooms|4",
        ]
        await alice.send("part|#0")
        await alice.expect("part|#0|alice")
        await join_room(alice, "#4", [bob])


async def test_the_default_limit_is_50_rooms() -> None:
    async with running_server_without_sessions(rate=0) as live:
        client = await live.connect()
        assert (await say_hello(client, "hello|2"))["rooms"] == "50"
        await client.login("alice")
        alice = User("alice", client, 2)
        for i in range(50):
            await join_room(alice, f"#{i}", [])
        await alice.send("join|#50")
        await expect_error_frame(alice, "too-many-rooms")


async def test_max_rooms_0_is_no_limit() -> None:
    async with running_server_without_sessions(rate=0, max_rooms=0) as live:
        client = await live.connect()
        assert (await say_hello(client, "hello|2"))["rooms"] == "0"
        await client.login("alice")
        alice = User("alice", client, 2)
        for i in range(60):
            await join_room(alice, f"#{i}", [])
        assert (await listing(alice))[-1] == "rooms|60"


@pytest.mark.parametrize("hello", ["", "hello|2", "hello|1"])
@pytest.mark.parametrize("frame", ["join|#r", "part|#r", "rooms", "talk|#r|hi"])
async def test_rooms_before_login_are_not_logged_in(hello: str, frame: str) -> None:
    async with running_server_without_sessions() as live:
        (bob,) = await users_online(live, "bob")
        await join_room(bob, "#r", [])
        client = await live.connect()
        if hello:
            await say_hello(client, hello, int(hello[-1]))
        await client.send(frame)
        await expect_error_frame(client, "not-logged-in")
        await expect_quiet(client, bob)


# -- rooms listing -----------------------------------------------------------------


async def test_rooms_lists_every_room_with_its_members() -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol, dave, erin = await users_online(
            live, "alice", "bob", ("carol", 2, ""), ("dave", 2, "echo"), "erin"
        )
        assert await listing(erin) == ["rooms|0"]
        await join_room(alice, "#a", [])
        await join_room(bob, "#a", [alice])
        await join_room(carol, "#A", [alice, bob], shown="#a")
        await join_room(bob, "#b", [])
        await join_room(dave, "#C", [])
        await join_room(alice, "#c", [dave], shown="#C")
        want = ["room|#C|2", "room|#a|3", "room|#b|1", "rooms|3"]
        for user in (alice, bob, carol, dave, erin):  # members or not
            assert await listing(user) == want
        await expect_quiet(alice, bob, carol, dave, erin)


# -- going offline ---------------------------------------------------------------


@pytest.mark.parametrize("how", OFFLINE)
async def test_a_member_going_offline_is_an_exit_not_a_part(how: str) -> None:
    async with running_server_without_sessions() as live:
        alice, bob, carol = await users_online(live, ("alice", 2, ""), "bob", "carol")
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await join_room(bob, "#solo", [])
        await go_offline(bob, how)
        await alice.expect("exit|bob")
        await carol.expect("exit|bob")  # global presence: everyone hears it
        await expect_quiet(alice, carol)
        assert await listing(carol) == ["room|#r|1", "rooms|1"]
        await alice.send("talk|#r|alone")
        await expect_quiet(alice, carol)


# -- presence by rooms -------------------------------------------------------------


async def test_presence_rooms_login_is_acknowledged_with_own_login_only() -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        users = await users_online(
            live, "alice", ("bob", 2, ""), ("carol", 2, "echo"), rooms_presence=True
        )
        await expect_quiet(*users)
        await users[0].send("exit")
        await expect_quiet(*users[1:])


@pytest.mark.parametrize(("version", "options"), [(1, ""), (2, ""), (2, "echo")])
async def test_presence_rooms_has_no_everyone(version: int, options: str) -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        alice, bob = await users_online(
            live, ("alice", version, options), "bob", rooms_presence=True
        )
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await alice.send("talk|*|anyone?")
        await expect_error_frame(alice, "not-in-room", "*")
        await expect_quiet(alice, bob)


async def test_presence_rooms_parting_everyone_is_not_in_room() -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        (alice,) = await users_online(live, "alice", rooms_presence=True)
        await alice.send("part|*")
        await expect_error_frame(alice, "not-in-room", "*")


async def test_presence_rooms_direct_messages_still_work() -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        alice, bob, carol = await users_online(
            live, ("alice", 2, "echo"), "bob", ("carol", 2, ""), rooms_presence=True
        )
        # No room is shared; each may still write to the others.
        await alice.send("talk|BOB|psst")
        await bob.expect("talk|alice|bob|psst")
        await alice.delivery("alice", "bob", "psst")
        await bob.send("talk|carol|hi carol")
        await carol.delivery("bob", "carol", "hi carol")
        await carol.send("talk|alice|hi alice")
        await alice.delivery("carol", "alice", "hi alice")
        await bob.send("talk|zed|anyone?")
        await expect_error_frame(bob, "no-such-user", "zed")
        await expect_quiet(alice, bob, carol)


async def test_presence_rooms_joins_and_parts_are_the_presence() -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        alice, bob, carol = await users_online(
            live, "alice", ("bob", 2, ""), "carol", rooms_presence=True
        )
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await bob.send("talk|#r|hi")
        await alice.expect("talk|bob|#r|hi")
        await bob.send("part|#r")
        await bob.expect("part|#r|bob")
        await alice.expect("part|#r|bob")
        assert await listing(carol) == ["room|#r|1", "rooms|1"]
        await expect_quiet(alice, bob, carol)


@pytest.mark.parametrize("how", OFFLINE)
async def test_presence_rooms_exactly_one_exit_per_user_who_shared_a_room(
    how: str,
) -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        bob, alice, carol, dave, erin, frank = await users_online(
            live,
            ("bob", 2, "echo"),
            "alice",
            ("carol", 2, ""),
            "dave",
            ("erin", 2, ""),
            "frank",
            rooms_presence=True,
        )
        for room in ("#a", "#b", "#c"):  # alice shares three rooms with bob
            await join_room(bob, room, [])
            await join_room(alice, room, [bob])
        await join_room(carol, "#a", [bob, alice])  # carol one
        await join_room(dave, "#d", [])  # dave none, but they talked
        await dave.send("talk|bob|hi")
        await bob.delivery("dave", "bob", "hi")
        await bob.send("talk|dave|hi")
        await dave.expect("talk|bob|dave|hi")
        await bob.delivery("bob", "dave", "hi")
        await join_room(erin, "#e", [])  # erin shared one, but bob left it
        await join_room(bob, "#e", [erin])
        await bob.send("part|#e")
        await bob.expect("part|#e|bob")
        await erin.expect("part|#e|bob")
        await join_room(bob, "#f", [])  # frank shared one, but left it
        await join_room(frank, "#f", [bob])
        await frank.send("part|#f")
        await frank.expect("part|#f|frank")
        await bob.expect("part|#f|frank")
        await expect_quiet(bob, alice, carol, dave, erin, frank)

        await go_offline(bob, how)
        await alice.expect("exit|bob")
        await carol.expect("exit|bob")
        await expect_quiet(alice, carol, dave, erin, frank)
        assert await listing(dave) == [
            "room|#a|2",
            "room|#b|1",
            "room|#c|1",
            "room|#d|1",
            "room|#e|1",
            "rooms|5",
        ]


async def test_presence_rooms_a_newcomer_in_a_room_hears_of_its_exit() -> None:
    async with running_server_without_sessions(presence="rooms") as live:
        alice, bob = await users_online(live, "alice", "bob", rooms_presence=True)
        await join_room(alice, "#r", [])
        await join_room(bob, "#r", [alice])
        await go_offline(alice, "eof")
        await bob.expect("exit|alice")
        await expect_quiet(bob)


@pytest.mark.parametrize("presence", ["global", "rooms"])
async def test_one_exit_for_a_room_member_dropped_as_too_slow(presence: str) -> None:
    async with running_server_without_sessions(
        rate=0, presence=presence, queue_size=32, stall_timeout=0.2
    ) as live:
        alice, carol = await users_online(
            live, "alice", ("carol", 2, ""), rooms_presence=presence == "rooms"
        )
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 1)
        await sock.connect(("127.0.0.1", live.port))
        bob = User("bob", LineClient(trio.SocketStream(sock)))
        live.clients.append(bob.client)
        # bob never reads a byte.
        await bob.send("login|bob\njoin|#a\njoin|#b\n")
        if presence == "global":
            await alice.expect("login|bob")
            await carol.expect("login|bob")
        for room in ("#a", "#b"):
            await alice.send(f"join|{room}")
            await alice.expect(f"join|{room}|alice", f"join|{room}|bob")
        await carol.send("join|#b")
        await carol.expect("join|#b|carol")
        assert sorted(await carol.client.read_lines(2)) == [
            "join|#b|alice",
            "join|#b|bob",
        ]
        await alice.expect("join|#b|carol")
        text = "x" * 2000
        replies: list[str] = []
        with trio.fail_after(STEP_TIMEOUT):
            while "exit|bob" not in replies:
                batch = "".join(f"talk|#a|{n}{text}\n" for n in range(20))
                await alice.client.send_raw(batch.encode())
                replies += await alice.client.pong_after("flood")
        assert replies == ["exit|bob"]
        await carol.expect("exit|bob")
        await expect_quiet(alice, carol)
        assert await listing(carol) == ["room|#a|1", "room|#b|2", "rooms|2"]


async def test_a_room_made_by_two_at_once_has_one_name() -> None:
    async with running_server_without_sessions() as live:
        alice, bob = await users_online(live, "alice", "bob")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alice.send, "join|#Race")
            nursery.start_soon(bob.send, "join|#RACE")
        first = [await alice.read_line(), await bob.read_line()]
        # Each gets its own join first; whoever came second then gets the
        # other's, and the first the second's; all name the room alike.
        rooms = {line.split("|")[1] for line in first}
        assert len(rooms) == 1, first
        (room,) = rooms
        assert room in ("#Race", "#RACE")
        later = [await alice.read_line(), await bob.read_line()]
        assert sorted(later) == sorted(f"join|{room}|{n}" for n in ("alice", "bob"))
        assert await listing(alice) == [f"room|{room}|2", "rooms|1"]


# -- an answer arrives whole ------------------------------------------------------


async def busy(live: LiveServer, sender: User, to: str, members: list[User]) -> None:
    """*sender* talks to *to* without pause while *members* read all that
    comes, until cancelled."""

    async def drain(user: User) -> None:
        while await user.client.stream.receive_some(65536):
            pass

    async def talk() -> None:
        for n in range(10**9):
            batch = "".join(f"talk|{to}|{n}.{k}\n" for k in range(20))
            await sender.client.send_raw(batch.encode())

    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(drain, member)
        nursery.start_soon(talk)


CROWD = 40
ROUNDS = 5


async def test_a_join_list_arrives_whole_while_the_room_is_busy() -> None:
    async with running_server_without_sessions(rate=0, presence="rooms") as live:
        crowd = await users_online(
            live, *(f"m{i}" for i in range(CROWD)), rooms_presence=True
        )
        for i, user in enumerate(crowd):
            await join_room(user, "#busy", crowd[:i])
        newcomer = await log_in_user(live, "newbie", 2)
        members = sorted(f"join|#busy|{user.name}" for user in crowd)
        live_messages = 0
        with trio.fail_after(4 * STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy, live, crowd[0], "#busy", crowd)
                for _ in range(ROUNDS):
                    await newcomer.send("join|#busy")
                    await newcomer.expect("join|#busy|newbie")
                    listed = await newcomer.client.read_lines(CROWD)
                    assert sorted(listed) == members, listed
                    await newcomer.send("part|#busy")
                    while (line := await newcomer.read_line()) != "part|#busy|newbie":
                        assert Msg.parse(line).to == "#busy"
                        live_messages += 1
                nursery.cancel_scope.cancel()
        # The room was busy while the lists were sent.
        assert live_messages > 0


async def test_a_login_list_arrives_whole_while_everyone_is_talking() -> None:
    async with running_server_without_sessions(rate=0) as live:
        crowd = await users_online(live, *(f"m{i}" for i in range(CROWD)))
        roster = sorted(f"login|{user.name}" for user in crowd)
        with trio.fail_after(4 * STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy, live, crowd[0], "*", crowd)
                for n in range(ROUNDS):
                    newcomer = await live.connect()
                    await newcomer.send(f"login|new{n}")
                    await newcomer.expect(f"login|new{n}")
                    listed = await newcomer.read_lines(CROWD)
                    assert sorted(listed) == roster, listed
                    # The talk was going on around the list.
                    assert (await newcomer.read_line()).startswith("talk|m0|*|")
                    await newcomer.send("exit")
                    for line in await newcomer.read_until_closed():
                        assert line.startswith("talk|m0|*|"), line
                nursery.cancel_scope.cancel()


async def test_a_rooms_listing_arrives_whole_while_a_room_is_busy() -> None:
    rooms = 30
    async with running_server_without_sessions(rate=0) as live:
        sender, asker, filler = await users_online(
            live, "sender", ("asker", 2, ""), "filler"
        )
        await join_room(sender, "#busy", [])
        await join_room(asker, "#busy", [sender])
        for i in range(rooms):
            await join_room(filler, f"#r{i}", [])
        want = sorted(["room|#busy|2", *(f"room|#r{i}|1" for i in range(rooms))])
        live_messages = 0
        with trio.fail_after(4 * STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy, live, sender, "#busy", [sender, filler])
                for _ in range(ROUNDS):
                    await asker.send("rooms")
                    while (line := await asker.read_line()).startswith("msg|"):
                        live_messages += 1
                    listed = [line, *await asker.client.read_lines(rooms)]
                    assert sorted(listed) == want, listed
                    await asker.expect(f"rooms|{rooms + 1}")
                nursery.cancel_scope.cancel()
        assert live_messages > 0
