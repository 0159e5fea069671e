"""A black-box conformance pass over protocol.md section 6 (accounts,
offline delivery, history) and the rows of sections 3, 4, 7 and 8 that
touch it: raw wire lines in, what a client sees asserted.

The tests whose docstring names a rule were found failing in this pass
(fixed in b906861); they hold the server to that rule. The others cover
contract rows no other test reaches through the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import (
    LineClient,
    Msg,
    expect_error_frame,
    expect_quiet,
    say_hello,
)
from test_accounts import PASSWORD, alice_away_and_bob, registered, store_server, v2
from test_hardening import small_buffered

pytestmark = pytest.mark.trio


def hist_as_msg(line: str) -> Msg:
    """A ``hist`` frame parsed with the ``msg`` rules (same fields)."""
    kind, _, rest = line.partition("|")
    assert kind == "hist", line
    return Msg.parse(f"msg|{rest}")


async def read_history(client: LineClient, target: str) -> list[Msg]:
    """The ``hist`` frames of one answer, its closing ``history`` frame's
    COUNT checked against them."""
    found: list[Msg] = []
    while (line := await client.read_line()).startswith("hist|"):
        found.append(hist_as_msg(line))
    assert line == f"history|{target}|{len(found)}", line
    return found


# -- taking over (section 6) and waiting sessions (section 7) ----------------------


async def test_a_protocol_1_login_taking_over_a_waiting_session_gets_what_it_kept(
    tmp_path: Path,
) -> None:
    """Section 7: what is sent to a waiting session "is kept", and "the
    session goes on in the connection that took it over", in that
    connection's protocol (it got nothing)."""
    async with store_server(tmp_path / "t.db", resume_window=60) as live:
        bob = await alice_away_and_bob(live)
        await bob.send("talk|alice|sent while you were away")
        await bob.send("talk|*|to everyone")
        await expect_quiet(bob)  # both routed before the takeover
        back = await live.connect()  # no hello: protocol 1
        await back.send(f"login|alice|{PASSWORD}")
        assert await back.pong_after("sync") == [
            "login|alice",
            "login|bob",
            "talk|bob|alice|sent while you were away",
            "talk|bob|*|to everyone",
        ]
        await expect_quiet(bob)  # nobody saw an exit or a login


@pytest.mark.parametrize("how", ["login", "resume"])
async def test_a_slow_reader_taken_over_gets_whole_frames_then_replaced(
    tmp_path: Path, how: str
) -> None:
    # alice reads nothing while far more than the sockets hold waits for
    # her; whatever of it she still gets when taken over (by a login, or a
    # resume "as a login would"), her stream ends with whole frames and
    # error|replaced.
    async with store_server(
        tmp_path / "t.db",
        resume_window=60,
        rate=0,
        queue_size=100_000,
        queue_bytes=100_000_000,
    ) as live:
        alice = await small_buffered(live, 1)
        await say_hello(alice)
        await alice.login("alice")
        secret = (await alice.read_line()).split("|")[1]
        await alice.send(f"register|{PASSWORD}")
        await alice.expect("registered|alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.read_lines(2)  # session, login|alice
        filler = "x" * 3000
        await bob.send_raw(
            "".join(f"talk|alice|{n} {filler}\n" for n in range(300)).encode()
        )
        await expect_quiet(bob)
        phone = await v2(live)  # not read: its answer is not the point
        if how == "login":
            await phone.send(f"login|alice|{PASSWORD}")
        else:
            await phone.send(f"resume|{secret}|0")
        lines = await alice.read_until_closed()  # fails on a cut frame
        assert lines[-1] == "error|replaced|another connection took this session over"
        assert lines[0] == "login|bob"
        for line in lines[1:-1]:
            assert Msg.parse(line).text.endswith(filler), line[:60]


async def test_a_takeover_in_rooms_presence_is_unseen_by_the_room(
    tmp_path: Path,
) -> None:
    # Section 6 over section 5: no presence list, the join list, and no
    # part, join or exit for the members.
    async with store_server(tmp_path / "t.db", presence="rooms") as live:
        alice = await registered(live, "alice")
        await alice.send("join|#r")
        await alice.expect("join|#r|alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.send("join|#r")
        await bob.expect("join|#r|bob", "join|#r|alice")
        await alice.expect("join|#r|bob")
        phone = await v2(live)
        await phone.send(f"login|alice|{PASSWORD}")
        assert await phone.pong_after("sync") == [
            "login|alice",
            "join|#r|alice",
            "join|#r|bob",
        ]
        assert await alice.read_until_closed() == [
            "error|replaced|another connection took this session over"
        ]
        await expect_quiet(bob)


# -- offline delivery ----------------------------------------------------------------


async def test_offline_messages_reach_protocol_1_as_talk_after_the_presence_list(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        bob = await live.connect()  # protocol 1
        await bob.login("bob")
        await bob.send("talk|alice|one|with a bar")
        await bob.send("talk|alice|two")
        await expect_quiet(bob)
        back = await live.connect()  # protocol 1
        await back.send(f"login|alice|{PASSWORD}")
        assert await back.pong_after("sync") == [
            "login|alice",
            "login|bob",
            "talk|bob|alice|one|with a bar",
            "talk|bob|alice|two",
        ]


async def test_offline_messages_keep_their_id_and_time_across_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    async with store_server(db) as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        bob = await live.connect()
        await bob.send("hello|2|echo")
        await bob.read_line()
        await bob.login("bob")
        await bob.send("talk|alice|kept over a restart")
        sent = Msg.parse(await bob.read_line())  # the echo: its ID and TIME
    async with store_server(db) as live:
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")
        assert Msg.parse(await back.read_line()) == sent
        await expect_quiet(back)


async def test_history_names_an_offline_recipient_as_the_delivery_did(
    tmp_path: Path,
) -> None:
    """Section 2: "A name is shown as its owner wrote it": the hist frame of
    a message kept offline is the msg frame that delivered it (it named
    the account as the sender spelled it)."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "Alice")
        await alice.send("exit")
        bob = await v2(live)
        await bob.login("bob")
        await bob.send("talk|ALICE|while you were out")
        await expect_quiet(bob)
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|Alice", "login|bob")
        delivered = Msg.parse(await back.read_line())
        assert delivered.to == "Alice"
        await back.send("history|bob|latest|5")
        assert await read_history(back, "bob") == [delivered]


async def test_the_echo_of_a_message_kept_offline_names_the_account_as_its_owner_does(
    tmp_path: Path,
) -> None:
    """Section 4: the echo's TO is "the recipient's name", shown as its
    owner wrote it, whether the account is online or not (offline, it was
    the sender's spelling)."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "Alice")
        bob = await live.connect()
        await bob.send("hello|2|echo")
        await bob.read_line()
        await bob.login("bob")
        await alice.expect("login|bob")
        await bob.read_line()  # login|Alice
        await bob.send("talk|ALICE|online")
        online = Msg.parse(await bob.read_line())
        assert online.to == "Alice"
        await alice.send("exit")
        assert await bob.read_line() == "exit|Alice"
        await bob.send("talk|ALICE|offline")
        offline = Msg.parse(await bob.read_line())
        assert offline.to == "Alice"


# -- history ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "ident"),
    [
        ("#r", "99999999999999999999"),
        ("#r", "9223372036854775808"),
        ("*", "99999999999999999999"),
        ("bob", "99999999999999999999"),
    ],
)
async def test_history_after_the_largest_ids_is_an_empty_answer(
    tmp_path: Path, target: str, ident: str
) -> None:
    """Section 2: an ID has up to 20 digits, beyond SQLite's integers: one
    above 2**63 - 1 is above every id, not a lost connection (it closed the
    connection with an OverflowError and ended the session)."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.read_line()  # login|alice
        await alice.expect("login|bob")
        await alice.send("join|#r")
        await alice.expect("join|#r|alice")
        await alice.send(f"talk|{target}|one message")
        await expect_quiet(alice)
        await alice.send(f"history|{target}|after|{ident}|5")
        assert await alice.read_line() == f"history|{target}|0"
        await expect_quiet(alice)


async def test_history_before_the_largest_id_is_everything(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("join|#r")
        await alice.expect("join|#r|alice")
        await alice.send("talk|#r|one")
        await alice.send("talk|#r|two")
        await alice.send("history|#r|before|99999999999999999999|5")
        assert [m.text for m in await read_history(alice, "#r")] == ["one", "two"]


@pytest.mark.parametrize(
    "frame",
    [
        "history|#r|latest|0",
        "history|#r|before|1|0",
        "history|#r|after|1|501",
        "history|#r|latest|-1",
        "history|#r|latest|x",
        "history|#r|latest",
        "history|#r|latest|5|5",
        "history|#r|before|5",
        "history|#r|before|x|5",
        "history|#r|before|0|5",
        "history|#r|after|0|5",
        "history|#r|after|100000000000000000000|5",
        "history|#r|sideways|1|5",
        "history|#r|after||5",
        "history||latest|5",
    ],
)
async def test_malformed_history_requests_are_bad_frames_and_keep_the_connection(
    tmp_path: Path, frame: str
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("join|#r")
        await alice.expect("join|#r|alice")
        await alice.send(frame)
        await expect_error_frame(alice, "bad-frame")
        await alice.send("history|#r|latest|1")
        await alice.expect("history|#r|0")


async def test_history_of_a_room_on_a_server_that_keeps_none(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db", history=0) as live:
        alice = await registered(live, "alice")
        await alice.send("join|#r")
        await alice.expect("join|#r|alice")
        for target in ("#r", "bob"):
            await alice.send(f"history|{target}|latest|5")
            await expect_error_frame(alice, "no-history")


async def test_history_of_everyone_under_rooms_presence_is_not_in_room(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db", presence="rooms") as live:
        alice = await registered(live, "alice")
        await alice.send("history|*|latest|5")
        await expect_error_frame(alice, "not-in-room", "*")


async def test_pages_before_and_after_tile_what_is_kept(tmp_path: Path) -> None:
    # --history 12 of 20 messages, read in pages of 5 both ways: each
    # message of the last 12 exactly once, in order, and a short page
    # at each end.
    async with store_server(tmp_path / "t.db", history=12) as live:
        alice = await registered(live, "alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.read_line()  # login|alice
        await alice.expect("login|bob")
        for target in ("#r", "#other"):
            for who in (alice, bob):
                await who.send(f"join|{target}")
        await alice.read_lines(4)
        await bob.read_lines(4)
        for n in range(20):
            # Another room's messages between, so the ids have gaps.
            await bob.send(f"talk|#other|x{n}")
            await bob.send(f"talk|#r|{n}")
        await expect_quiet(bob)
        assert len(await alice.pong_after("sync")) == 40
        want = [str(n) for n in range(8, 20)]

        await alice.send("history|#r|latest|5")
        page = await read_history(alice, "#r")
        backwards = list(page)
        while len(page) == 5:
            await alice.send(f"history|#r|before|{page[0].id}|5")
            page = await read_history(alice, "#r")
            backwards[:0] = page
        assert [m.text for m in backwards] == want

        await alice.send(f"history|#r|after|{backwards[0].id - 1}|5")
        page = await read_history(alice, "#r")
        forwards = list(page)
        while len(page) == 5:
            await alice.send(f"history|#r|after|{page[-1].id}|5")
            page = await read_history(alice, "#r")
            forwards += page
        assert forwards == backwards


async def test_a_history_answer_arrives_whole_while_a_conversation_goes_on(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db", rate=0) as live:
        alice = await registered(live, "alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.read_line()  # login|alice
        await alice.expect("login|bob")
        for n in range(200):
            await bob.send(f"talk|alice|{n}")
        # Bob's pong says all 200 were routed (alice's alone would not:
        # the server may read her ping before the rest of his lines).
        assert await bob.pong_after("routed") == []
        assert len(await alice.pong_after("sync")) == 200

        async def talking() -> None:
            for n in range(200, 400):
                await bob.send(f"talk|alice|{n}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talking)
            await alice.send("history|bob|latest|300")
            lines = [await alice.read_line()]
            while not lines[-1].startswith("history|"):
                lines.append(await alice.read_line())
        answer = [n for n, line in enumerate(lines) if line.startswith("hist|")]
        # Live msg frames may come before the answer, never inside it.
        assert answer == list(range(answer[0], answer[0] + len(answer)))
        assert lines[-1] == f"history|bob|{len(answer)}"


# -- logins: passwords' rules, where they are taken ------------------------------


@pytest.mark.parametrize("password", ["1234567", "with\x01control"])
async def test_a_login_to_no_account_with_a_bad_password_is_not_wrong_password(
    tmp_path: Path, password: str
) -> None:
    """Section 8: wrong-password is "the password does not match"; for a
    name that is no account there is nothing to match: no-such-account, or
    bad-frame for a field outside the rules (it was wrong-password)."""
    async with store_server(tmp_path / "t.db") as live:
        client = await v2(live)
        await client.send(f"login|nobody|{password}")
        line = await client.read_line()
        assert line.split("|")[1] in {"no-such-account", "bad-frame"}, line


@pytest.mark.parametrize(
    "password", ["1234567", "x" * 257, "tab\there too", "del\x7fhere", "c1\x85here"]
)
async def test_new_passwords_outside_the_rules_are_bad_password(
    tmp_path: Path, password: str
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send(f"password|{password}")
        await expect_error_frame(alice, "bad-password")
        guest = await v2(live)
        await guest.login("bob")
        await guest.expect("login|alice")
        await guest.send(f"register|{password}")
        await expect_error_frame(guest, "bad-password")
        await guest.send("history|alice|latest|1")  # still a guest
        await expect_error_frame(guest, "no-history")


async def test_a_password_may_hold_bars_and_be_256_characters(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        longest = "|" + "p" * 255
        await alice.send(f"password|{longest}")
        await alice.expect("password|alice")
        await alice.send("exit")
        back = await v2(live)
        await back.send(f"login|alice|{longest}")
        await back.expect("login|alice")


async def test_correct_logins_sent_at_once_are_not_throttled(tmp_path: Path) -> None:
    """protocol.md 6: 'Failed logins are throttled'; 8: rate-limited is 'too
    many frames, or too many failed logins'. Six correct logins at once
    (counted as failed while checked) once got rate-limited beyond the
    third; those beyond now wait for the checks under way."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        devices = [await v2(live) for _ in range(6)]
        async with trio.open_nursery() as nursery:
            for device in devices:
                nursery.start_soon(device.send, f"login|alice|{PASSWORD}")
        # Each one takes the session over from the one before it: its
        # acknowledgement first, whatever comes after.
        firsts = [await device.read_line() for device in devices]
        assert firsts == ["login|alice"] * 6


async def test_away_from_loopback_register_is_tls_required_too(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "192.0.2.7")
            remote = LineClient(ours)
            await remote.login("bob")
            await remote.send(f"register|{PASSWORD}")
            await expect_error_frame(remote, "tls-required")
            await remote.send("password|another password")  # still a guest
            await expect_error_frame(remote, "no-such-account")
            await trio.aclose_forcefully(ours)


@pytest.mark.parametrize(
    ("name", "password"), [("nobody", PASSWORD), ("alice", "short")]
)
async def test_away_from_loopback_any_password_is_tls_required(
    tmp_path: Path, name: str, password: str
) -> None:
    """Section 8: tls-required is "a password over plain TCP from a
    non-loopback address", whatever the name or the password (a name that
    is no account got no-such-account, a short one wrong-password)."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "192.0.2.7")
            remote = LineClient(ours)
            await remote.send(f"login|{name}|{password}")
            await expect_error_frame(remote, "tls-required")
            await trio.aclose_forcefully(ours)


async def test_allow_plain_passwords_lets_passwords_in_from_elsewhere(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db", allow_plain_passwords=True) as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "192.0.2.7")
            remote = LineClient(ours)
            await remote.send(f"login|alice|{PASSWORD}")
            await remote.expect("login|alice")
            await remote.send("password|another password")
            await remote.expect("password|alice")
            await trio.aclose_forcefully(ours)
