"""The server against the wire protocol, black box, over real TCP.

Every test runs a real server on 127.0.0.1 and drives it with bare line
clients, as `nc` would. Nothing here looks inside the server: to know that
the server has handled what a client sent, a test sends ``ping|TOKEN`` and
waits for ``pong|TOKEN`` (frames from one client are handled in order, and
whatever they caused is queued before the pong).
"""

from __future__ import annotations

import socket

import pytest
import trio
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    read_until_closed_while,
    read_until_gone,
    reset_on_close,
    running_server,
)

# -- helpers -------------------------------------------------------------------

SMALLEST_RCVBUF = 1  # SO_RCVBUF; the kernel rounds it up to its minimum
FILLER = "f" * 3000
BURST = 5000


async def assert_quiet(*clients: LineClient) -> None:
    """Assert that nothing is waiting for any of *clients*, in that order.

    Put the clients whose frames may have caused something first: the
    server has queued what their frames caused before it answers them.
    """
    for client in clients:
        assert await client.pong_after("sync") == []


def error_parts(line: str) -> tuple[str, str]:
    """The CODE and DETAIL of an ``error|CODE|DETAIL`` line."""
    kind, code, detail = line.split("|", 2)
    assert kind == "error", line
    assert detail, f"empty DETAIL in {line!r}"
    return code, detail


async def expect_error(client: LineClient, code: str, detail: str | None = None) -> str:
    """Read one line: ``error|code|...``; return its DETAIL."""
    line = await client.read_line()
    got_code, got_detail = error_parts(line)
    assert got_code == code, line
    if detail is not None:
        assert got_detail == detail, line
    return got_detail


async def expect_closed_with(client: LineClient, code: str) -> list[str]:
    """Read to EOF; the last line must be ``error|code|...``. Returns the
    lines before it."""
    lines = await client.read_until_closed()
    assert lines, f"closed without error|{code}"
    assert error_parts(lines[-1])[0] == code, lines[-1]
    return lines[:-1]


async def refused_with(client: LineClient, code: str) -> None:
    """The server said only ``error|code|...`` to *client*, then closed."""
    assert await expect_closed_with(client, code) == []


async def open_client(
    live: LiveServer, *, rcvbuf: int | None = None, source_ip: str | None = None
) -> LineClient:
    """A client whose socket gets options before it connects: a small
    receive buffer (*rcvbuf*), or a source address other than 127.0.0.1."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source_ip is not None:
            await sock.bind((source_ip, 0))
        await sock.connect(("127.0.0.1", live.port))
    except BaseException:
        sock.close()
        raise
    client = LineClient(trio.SocketStream(sock))
    live.clients.append(client)
    return client


async def reset(client: LineClient) -> None:
    """Drop the connection abortively: the server sees a reset, not EOF."""
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    reset_on_close(stream)
    await stream.aclose()


async def users(live: LiveServer, *names: str) -> list[LineClient]:
    """Clients logged in as *names*, in order, every presence frame read."""
    clients: list[LineClient] = []
    for name in names:
        client = await live.login(name)
        roster = await client.read_lines(len(clients))
        assert sorted(roster) == sorted(f"login|{n}" for n in names[: len(clients)])
        for other in clients:
            await other.expect(f"login|{name}")
        clients.append(client)
    return clients


# -- login and presence --------------------------------------------------------


async def test_newcomer_gets_ack_then_one_login_per_user_online() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        await assert_quiet(alice)

        bob = await live.connect()
        await bob.send("login|bob")
        await bob.expect("login|bob", "login|alice")
        await alice.expect("login|bob")

        carol = await live.connect()
        await carol.send("login|carol")
        assert await carol.read_line() == "login|carol"
        assert sorted(await carol.read_lines(2)) == ["login|alice", "login|bob"]
        await alice.expect("login|carol")
        await bob.expect("login|carol")
        await assert_quiet(alice, bob, carol)


async def test_presence_follows_users_coming_and_going() -> None:
    async with running_server() as live:
        alice, bob, carol, dave = await users(live, "alice", "bob", "carol", "dave")
        await bob.send("exit")
        for other in (alice, carol, dave):
            await other.expect("exit|bob")
        assert await bob.read_until_closed() == []

        erin = await live.login("erin")
        roster = await erin.read_lines(3)
        assert sorted(roster) == ["login|alice", "login|carol", "login|dave"]
        for other in (alice, carol, dave):
            await other.expect("login|erin")
        await assert_quiet(alice, carol, dave, erin)


@pytest.mark.parametrize(
    "clash",
    [
        "Zo\u00eb",  # the same name
        "zo\u00eb",
        "ZO\u00cb",
        "\uff3ao\u00eb",  # full-width Z
        "Zoe\u0308",  # e + combining diaeresis
        "\uff3a\uff2f\u00cb",  # full-width Z and O, upper-case E with diaeresis
    ],
)
async def test_names_clash_case_insensitively_after_nfkc(clash: str) -> None:
    async with running_server() as live:
        zoe = await live.login("Zo\u00eb")
        other = await live.connect()
        await other.send(f"login|{clash}")
        await expect_error(other, "name-taken")
        # Still connected and not logged in: the same connection may retry.
        await other.send("talk|Zo\u00eb|hi")
        await expect_error(other, "not-logged-in")
        await other.login("bob")
        await other.expect("login|Zo\u00eb")  # shown as its owner wrote it
        await zoe.expect("login|bob")
        await assert_quiet(zoe, other)


async def test_name_is_shown_as_its_owner_wrote_it() -> None:
    wide = "\uff3ao\u00eb"  # full-width Z
    async with running_server() as live:
        alice = await live.login("alice")
        zoe = await live.login(wide)
        await zoe.expect("login|alice")
        await alice.expect(f"login|{wide}")
        await alice.send("talk|ZO\u00cb|hi")
        await zoe.expect(f"talk|alice|{wide}|hi")
        await zoe.send("talk|ALICE|hello")
        await alice.expect(f"talk|{wide}|alice|hello")
        await zoe.send("exit")
        await alice.expect(f"exit|{wide}")


BAD_NAMES = [
    ".alice",  # must not start with '.'
    "-alice",  # or '-'
    "*",  # reserved
    "#general",  # reserved
    "a" * 33,  # too long
    "al ice",  # space
    "alice!",
    "al/ice",
    "\u0301alice",  # combining mark first
    "al\u200bice",  # zero-width space (Cf)
    "al\tice",  # a control character
    "\U0001f600",  # an emoji (So)
    "\u00bd",  # a number, but not a decimal digit (No)
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_name_leaves_the_connection_free_to_log_in(name: str) -> None:
    async with running_server() as live:
        watcher = await live.login("watcher")
        client = await live.connect()
        await client.send(f"login|{name}")
        await expect_error(client, "bad-name")
        await client.login("alice")
        await client.expect("login|watcher")
        await watcher.expect("login|alice")  # and nothing about the bad name
        await assert_quiet(client, watcher)


async def test_every_kind_of_valid_name_logs_in_as_written() -> None:
    names = [
        "a",
        "x" * 32,
        "42",
        "_under",
        "a.b-c_d",
        "e\u0301",  # letter + combining mark
        "\u65e5\u672c\u8a9e",  # CJK letters
        "\u0661\u0662\u0663",  # Arabic-Indic digits (Nd)
        "\u00c5ngstr\u00f6m",
    ]
    async with running_server() as live:
        await users(live, *names)


async def test_name_taken_then_log_in_with_another_name() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        other = await live.connect()
        await other.send("login|alice")
        assert await other.read_line() == "error|name-taken|alice is already online"
        await other.send("login|ALICE")
        # Who holds it, as they wrote it: ALICE is not online.
        assert (
            await other.read_line()
            == "error|name-taken|ALICE is taken: alice is online"
        )
        await other.login("alice2")
        await other.expect("login|alice")
        await alice.expect("login|alice2")
        await assert_quiet(alice, other)


async def leave(client: LineClient, how: str, name: str) -> None:
    """Make *client*, logged in as *name*, go away in the way *how* says."""
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    match how:
        case "exit":
            await client.send("exit")
        case "exit-name":
            await client.send(f"exit|{name}")
        case "close":
            await stream.aclose()
        case "half-close":
            await stream.send_eof()
        case "reset":
            await reset(client)
        case _:  # pragma: no cover
            raise AssertionError(how)


@pytest.mark.parametrize("how", ["exit", "exit-name", "close", "half-close", "reset"])
async def test_name_is_free_again_once_its_user_is_gone(how: str) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await leave(bob, how, "bob")
        await alice.expect("exit|bob")
        again = await live.login("BOB")
        await again.expect("login|alice")
        await alice.expect("login|BOB")
        await alice.send("talk|bob|welcome back")
        await again.expect("talk|alice|BOB|welcome back")


async def test_frames_sent_before_eof_are_all_handled() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        bob = await live.connect()
        await bob.send_raw(b"login|bob\ntalk|alice|one\ntalk|*|two\nexit\n")
        stream = bob.stream
        assert isinstance(stream, trio.SocketStream)
        await stream.send_eof()
        await alice.expect("login|bob", "talk|bob|alice|one", "talk|bob|*|two")
        await alice.expect("exit|bob")
        assert await bob.read_until_closed() == ["login|bob", "login|alice"]


# -- talk ----------------------------------------------------------------------


@pytest.mark.parametrize("to", ["bob", "Bob", "BOB", "\uff22ob"])
async def test_direct_talk_names_the_receiver_as_written(to: str) -> None:
    async with running_server() as live:
        alice, bob, carol = await users(live, "alice", "Bob", "carol")
        await alice.send(f"talk|{to}|hi")
        await bob.expect("talk|alice|Bob|hi")
        await assert_quiet(alice, bob, carol)


async def test_broadcast_reaches_every_other_user_but_not_the_sender() -> None:
    async with running_server() as live:
        alice, bob, carol = await users(live, "alice", "bob", "carol")
        await alice.send("talk|*|lunch?")
        await bob.expect("talk|alice|*|lunch?")
        await carol.expect("talk|alice|*|lunch?")
        await assert_quiet(alice, bob, carol)


async def test_broadcast_with_nobody_else_online_is_no_error() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        await alice.send("talk|*|anyone?")
        await assert_quiet(alice)


@pytest.mark.parametrize(
    "text", ["hi | how are you?", "|", "a||b", "|lead", "trail|", "||||", "a\tb"]
)
async def test_text_arrives_as_sent(text: str) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await alice.send(f"talk|bob|{text}")
        await bob.expect(f"talk|alice|bob|{text}")
        await alice.send(f"talk|*|{text}")
        await bob.expect(f"talk|alice|*|{text}")


async def test_text_of_4000_characters_arrives_whole() -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        text = "".join(chr(ord("a") + i % 26) for i in range(4000))
        await alice.send(f"talk|bob|{text}")
        await bob.expect(f"talk|alice|bob|{text}")


async def test_talk_to_yourself_comes_back_to_you() -> None:
    # protocol.md forbids nothing here: `*` means every *other* user, but a
    # direct message to your own name names a user who is online.
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await alice.send("talk|alice|note to self")
        await alice.expect("talk|alice|alice|note to self")
        await alice.send("talk|ALICE|again")
        await alice.expect("talk|alice|alice|again")
        await assert_quiet(alice, bob)


@pytest.mark.parametrize("to", ["carol", "Carol", "\uff23arol", "bob"])
async def test_no_such_user_names_the_target_as_sent(to: str) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await bob.send("exit")
        await alice.expect("exit|bob")
        await alice.send(f"talk|{to}|anyone?")
        await expect_error(alice, "no-such-user", to)
        await assert_quiet(alice)  # still open


async def test_from_is_filled_by_the_server() -> None:
    async with running_server() as live:
        alice, bob, carol = await users(live, "alice", "bob", "carol")
        # A client writing a server-style frame only names the target; the
        # rest is text, and FROM is always the sender's own login.
        await alice.send("talk|carol|bob|forged")
        await carol.expect("talk|alice|carol|bob|forged")
        await alice.send("talk|mallory|carol|forged")
        await expect_error(alice, "no-such-user", "mallory")
        await assert_quiet(alice, bob, carol)


# -- errors ----------------------------------------------------------------------

BAD_FRAMES = [
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"talk|bob|caf\xc3", id="truncated-utf8"),
    pytest.param(b"talk|bob|\xed\xa0\x80", id="encoded-surrogate"),
    pytest.param(b"hello", id="unknown-kind"),
    pytest.param(b"hello|bob|hi", id="unknown-kind-with-fields"),
    pytest.param(b"TALK|bob|hi", id="upper-case-talk"),
    pytest.param(b"Ping|x", id="capitalised-ping"),
    pytest.param(b"error|bad-frame|x", id="server-only-kind"),
    pytest.param(b"|", id="empty-kind"),
    pytest.param(b" ping|x", id="space-before-kind"),
    pytest.param(b"login", id="login-no-field"),
    pytest.param(b"talk", id="talk-no-field"),
    pytest.param(b"talk|bob", id="talk-one-field"),
    pytest.param(b"ping", id="ping-no-field"),
    pytest.param(b"ping|a|b", id="ping-two-fields"),
    pytest.param(b"pong", id="pong-no-field"),
    pytest.param(b"pong|a|b", id="pong-two-fields"),
    pytest.param(b"exit|bob|x", id="exit-two-fields"),
    pytest.param(b"login|", id="login-empty"),
    pytest.param(b"talk||hi", id="talk-empty-to"),
    pytest.param(b"talk|bob|", id="talk-empty-text"),
    pytest.param(b"ping|", id="ping-empty"),
    pytest.param(b"pong|", id="pong-empty"),
    pytest.param(b"exit|", id="exit-empty"),
    pytest.param(b"talk|bob|a\x01b", id="text-c0"),
    pytest.param(b"talk|bob|a\x00b", id="text-nul"),
    pytest.param(b"talk|bob|a\rb", id="text-inner-cr"),
    pytest.param(b"talk|bob|a\x1bb", id="text-escape"),
    pytest.param(b"talk|bob|a\x7fb", id="text-del"),
    pytest.param("talk|bob|a\u0085b".encode(), id="text-c1"),
    pytest.param(b"talk|bob|" + b"x" * 4001, id="text-4001-chars"),
    pytest.param(b"talk|bad name|hi", id="invalid-to"),
    pytest.param(b"talk|#bad room|hi", id="invalid-room"),
    pytest.param(b"ping|" + b"t" * 65, id="token-65-chars"),
    pytest.param(b"ping|a\tb", id="token-tab"),
    pytest.param(b"ping|a\x01b", id="token-control"),
    pytest.param(b"pong|a\x01b", id="pong-token-control"),
    pytest.param(b"exit|carol", id="exit-other-name"),
    pytest.param(b"exit|bob", id="exit-other-user-online"),
    pytest.param(b"exit|no body", id="exit-invalid-name"),
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_bad_frame_after_login_keeps_the_connection(frame: bytes) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await alice.send(frame)
        await expect_error(alice, "bad-frame")
        await assert_quiet(alice, bob)
        await alice.send("talk|bob|still here")
        await bob.expect("talk|alice|bob|still here")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"hello", id="unknown-kind"),
        pytest.param(b"LOGIN|alice", id="upper-case-login"),
        pytest.param(b"login|", id="login-empty"),
        pytest.param(b"talk|bob", id="talk-one-field"),
        pytest.param(b"ping|", id="ping-empty"),
        pytest.param(b"exit|a|b", id="exit-two-fields"),
    ],
)
async def test_bad_frame_before_login_keeps_the_connection(frame: bytes) -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        client = await live.connect()
        await client.send(frame)
        await expect_error(client, "bad-frame")
        await client.login("alice")
        await client.expect("login|bob")
        await bob.expect("login|alice")


async def test_several_errors_in_one_write_each_get_their_reply() -> None:
    async with running_server() as live:
        alice = await live.connect()
        await alice.send_raw(b"hello\nlogin|*\ntalk|bob|x\nlogin|alice\nlogin|x\n")
        await expect_error(alice, "bad-frame")
        await expect_error(alice, "bad-name")
        await expect_error(alice, "not-logged-in")
        await alice.expect("login|alice")
        await expect_error(alice, "already-logged-in")
        await assert_quiet(alice)


@pytest.mark.parametrize("frame", ["talk|bob|hi", "talk|*|hi", "exit|bob", "exit|x"])
async def test_not_logged_in(frame: str) -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        client = await live.connect()
        await client.send(frame)
        await expect_error(client, "not-logged-in")
        await assert_quiet(client, bob)  # bob got nothing; client still open
        await client.login("alice")
        await client.expect("login|bob")
        await bob.expect("login|alice")


@pytest.mark.parametrize("name", ["alice", "ALICE", "alice2", "bob", "*", ".x"])
async def test_second_login_is_already_logged_in(name: str) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await alice.send(f"login|{name}")
        await expect_error(alice, "already-logged-in")
        await assert_quiet(alice, bob)
        # Still alice, and the name asked for was not taken.
        await bob.send("talk|alice|still you?")
        await alice.expect("talk|bob|alice|still you?")
        other = await live.login("alice2")
        await other.read_lines(2)


async def test_exit_before_login_just_closes() -> None:
    async with running_server() as live:
        bob = await live.login("bob")
        client = await live.connect()
        await assert_quiet(client)
        await client.send("exit")
        assert await client.read_until_closed() == []
        await assert_quiet(bob)


@pytest.mark.parametrize("frame", ["exit|alice", "exit"])
async def test_exit_says_goodbye_to_the_others(frame: str) -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        await alice.send(frame)
        await bob.expect("exit|alice")
        assert await alice.read_until_closed() == []


async def test_exit_with_own_name_in_another_case_is_accepted() -> None:
    # protocol.md: exit|NAME is accepted when NAME is the connection's own,
    # and names that clash are one name.
    async with running_server() as live:
        zoe, bob = await users(live, "Zo\u00eb", "bob")
        await zoe.send("exit|ZO\u00cb")
        await bob.expect("exit|Zo\u00eb")
        assert await zoe.read_until_closed() == []


# -- too-long ------------------------------------------------------------------


async def test_too_long_before_login_is_answered_then_closed() -> None:
    async with running_server() as live:
        client = await live.connect()
        await client.send(b"x" * 5000)
        await refused_with(client, "too-long")


@pytest.mark.parametrize(
    ("first", "reply"),
    [
        (b"login|carol", "login|carol"),
        (b"talk|bob|hi", "error|not-logged-in|log in first"),
        (b"exit|bob", "error|not-logged-in|log in first"),
        (b"ping|t", "pong|t"),
    ],
)
async def test_frames_before_a_too_long_line_in_one_write_are_handled_first(
    first: bytes, reply: str
) -> None:
    # Handled in the state they find: the too-long line after them has not
    # been reached yet.
    async with running_server() as live:
        client = await live.connect()
        await client.send_raw(first + b"\n" + b"x" * 5000 + b"\n")
        assert await expect_closed_with(client, "too-long") == [reply]


async def test_too_long_without_line_feed_is_answered_at_once() -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        # No LF, ever: 4096 bytes can no longer be a frame.
        await bob.send_raw(b"talk|alice|" + b"x" * 4085)
        assert await expect_closed_with(bob, "too-long") == []
        await alice.expect("exit|bob")
        await assert_quiet(alice)


async def test_too_long_from_a_user_closes_only_that_user() -> None:
    async with running_server() as live:
        alice, bob, carol = await users(live, "alice", "bob", "carol")
        await bob.send(b"talk|alice|" + b"y" * 5000)
        assert await expect_closed_with(bob, "too-long") == []
        await alice.expect("exit|bob")
        await carol.expect("exit|bob")
        await alice.send("talk|carol|bob is gone")
        await carol.expect("talk|alice|carol|bob is gone")
        again = await live.login("bob")  # the name is free again
        assert sorted(await again.read_lines(2)) == ["login|alice", "login|carol"]


async def test_too_long_error_arrives_while_the_client_keeps_sending() -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")

        async def keep_sending() -> None:
            chunk = b"z" * 16384
            while True:
                await bob.send_raw(chunk)

        lines = await read_until_closed_while(bob, keep_sending)
        assert len(lines) == 1, lines
        assert error_parts(lines[0])[0] == "too-long"
        await alice.expect("exit|bob")


async def test_line_limit_counts_bytes_including_the_line_feed() -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        head = b"talk|bob|"
        # 4096 bytes with its LF: the most a frame may be. 2043 characters.
        text = "\u00e9" * 2043
        fits = head + text.encode()
        assert len(fits) + 1 == 4096
        await alice.send(fits)
        await bob.expect(f"talk|alice|bob|{text}")
        # One byte more (2044 characters, far below 4000) is too long.
        await alice.send(fits + b"a")
        assert await expect_closed_with(alice, "too-long") == []
        await bob.expect("exit|alice")


async def test_max_line_is_a_server_option() -> None:
    async with running_server(max_line=64) as live:
        alice, bob = await users(live, "alice", "bob")
        fits = "talk|bob|" + "x" * (63 - len("talk|bob|"))
        await alice.send(fits)
        await bob.expect(f"talk|alice|bob|{'x' * 54}")
        await alice.send(fits + "x")
        assert await expect_closed_with(alice, "too-long") == []
        await bob.expect("exit|alice")


# -- rate-limited ----------------------------------------------------------------


async def test_rate_limited_frames_are_refused_and_the_connection_stays() -> None:
    async with running_server(rate=1, burst=3) as live:
        bob = await live.login("bob")  # bob's login spends 1 of his 3
        alice = await live.connect()
        await alice.send_raw(b"".join(f"ping|{n}\n".encode() for n in range(5)))
        await alice.expect("pong|0", "pong|1", "pong|2")
        await expect_error(alice, "rate-limited")
        await expect_error(alice, "rate-limited")
        # bob has tokens of his own left.
        await bob.send("ping|b1")
        await bob.expect("pong|b1")
        await bob.send("ping|b2")
        await bob.expect("pong|b2")


async def test_rate_limited_talk_is_not_delivered() -> None:
    async with running_server(rate=1, burst=3) as live:
        bob = await live.login("bob")
        alice = await live.login("alice")
        await alice.expect("login|bob")
        await bob.expect("login|alice")
        await alice.send_raw(b"talk|bob|1\ntalk|bob|2\ntalk|bob|3\n")
        await expect_error(alice, "rate-limited")
        await bob.expect("talk|alice|bob|1", "talk|alice|bob|2")
        await bob.send("ping|b")
        await bob.expect("pong|b")


async def test_persistent_flooding_is_closed_with_rate_limited() -> None:
    async with running_server(rate=1, burst=2, flood_grace=0.1) as live:
        alice, flooder = await users(live, "alice", "flooder")

        async def flood() -> None:
            try:
                while True:
                    await flooder.send_raw(b"ping|f\n" * 10)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            lines = await expect_closed_with(flooder, "rate-limited")
            nursery.cancel_scope.cancel()
        refused = [line for line in lines if line != "pong|f"]
        assert refused, "closed without a frame ever being refused"
        assert all(error_parts(line)[0] == "rate-limited" for line in refused)
        await alice.expect("exit|flooder")


# -- limits on connections -------------------------------------------------------


async def test_server_full() -> None:
    async with running_server(max_clients=2) as live:
        first = await live.connect()
        alice = await live.login("alice")
        await assert_quiet(first)
        third = await live.connect()
        await refused_with(third, "server-full")
        # The refused connection never counted; the others go on.
        await assert_quiet(first, alice)
        await first.send("exit")
        assert await first.read_until_closed() == []
        bob = await live.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")


async def test_too_many_connections_from_one_address() -> None:
    async with running_server(max_per_ip=1) as live:
        alice = await live.login("alice")
        second = await live.connect()
        await refused_with(second, "too-many-connections")
        # Another address still gets in.
        bob = await open_client(live, source_ip="127.0.0.2")
        await bob.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")
        await alice.send("exit")
        await bob.expect("exit|alice")
        assert await alice.read_until_closed() == []
        carol = await live.login("carol")
        await carol.expect("login|bob")


async def test_login_timeout() -> None:
    async with running_server(login_timeout=0.5) as live:
        alice = await live.login("alice")
        late = await live.connect()
        # Neither pings nor failed logins count as logging in.
        await late.send("ping|1")
        await late.expect("pong|1")
        await late.send("login|no good")
        await expect_error(late, "bad-name")
        await late.send("login|alice")
        await expect_error(late, "name-taken")
        await refused_with(late, "login-timeout")
        # alice logged in in time and stays.
        await alice.send("ping|a")
        await alice.expect("pong|a")


# -- shutting-down ---------------------------------------------------------------


async def test_shutdown_says_shutting_down_to_every_client() -> None:
    async with running_server() as live:
        alice, bob = await users(live, "alice", "bob")
        anonymous = await live.connect()
        partial = await live.connect()
        await assert_quiet(anonymous, partial)
        await partial.send_raw(b"login|car")  # half a frame
        await alice.send("talk|bob|bye")  # queued for bob before the goodbye
        await assert_quiet(alice)
        live.server.shutdown()
        # Users going offline because the server stops may or may not be
        # announced; nothing else may come, and the goodbye comes last.
        rest = await expect_closed_with(bob, "shutting-down")
        assert [line for line in rest if not line.startswith("exit|")] == [
            "talk|alice|bob|bye"
        ]
        for client in (alice, anonymous, partial):
            rest = await expect_closed_with(client, "shutting-down")
            assert all(line.startswith("exit|") for line in rest), rest


async def test_new_connections_after_shutdown_are_refused() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        live.server.shutdown()
        await expect_closed_with(alice, "shutting-down")
        # The server stopped listening as the shutdown began, before it told
        # anyone: the port refuses connections.
        with (
            trio.fail_after(STEP_TIMEOUT),
            trio.socket.socket() as late,
            pytest.raises(ConnectionRefusedError),
        ):
            await late.connect(("127.0.0.1", live.port))


async def _fill(sender: LineClient, to: str, limit: int) -> tuple[int, list[str]]:
    """Send *to* up to *limit* big direct talks, one at a time.

    Returns how many were queued before the first one that came back
    no-such-user, and the lines that came back with that one.
    """
    for n in range(limit):
        await sender.send(f"talk|{to}|{n:05d}{FILLER}")
        replies = await sender.pong_after(f"fill{n}")
        if replies:
            assert replies[0] == f"error|no-such-user|{to}", replies
            assert set(replies[1:]) <= {f"exit|{to}"}, replies
            return n, replies
    return limit, []


async def _expect_exit(client: LineClient, name: str, seen: list[str]) -> None:
    """*client* is told ``exit|name``, unless it already was in *seen*."""
    if f"exit|{name}" not in seen:
        await client.expect(f"exit|{name}")


async def test_shutdown_reaches_a_client_whose_queue_is_full() -> None:
    # A full queue cannot be seen from outside, so first measure how many
    # talks a client that never reads (through the smallest receive buffer)
    # takes before it is dropped: then its queue was full. Queueing as many
    # for an identical client fills its queue without getting it dropped.
    config = {"rate": 0, "queue_size": 4}
    async with running_server(**config) as live:
        alice = await live.login("alice")
        bob = await open_client(live, rcvbuf=SMALLEST_RCVBUF)
        await bob.send("login|bob")
        await alice.expect("login|bob")
        capacity, replies = await _fill(alice, "bob", 100_000)
        await _expect_exit(alice, "bob", replies)
    # Now the same again, stopping as close to full as we can without being
    # dropped (the kernel's buffering may vary by a frame).
    for slack in range(3):
        async with running_server(**config) as live:
            alice = await live.login("alice")
            bob = await open_client(live, rcvbuf=SMALLEST_RCVBUF)
            await bob.send("login|bob")
            await alice.expect("login|bob")
            queued, replies = await _fill(alice, "bob", capacity - slack)
            if queued < capacity - slack:
                await _expect_exit(alice, "bob", replies)
                continue  # dropped: one frame less next time
            live.server.shutdown()
            lines = await expect_closed_with(bob, "shutting-down")
            assert lines == [
                "login|bob",
                "login|alice",
                *(f"talk|alice|bob|{n:05d}{FILLER}" for n in range(queued)),
            ]
            await expect_closed_with(alice, "shutting-down")
            return
    pytest.fail(f"dropped even {capacity - 2} talks short of {capacity}")


# -- ping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["x", "t" * 64, "with spaces", "\u00e9" * 64, "a:b=c", "*#!"]
)
async def test_ping_is_answered_before_and_after_login(token: str) -> None:
    async with running_server() as live:
        client = await live.connect()
        await client.send(f"ping|{token}")
        await client.expect(f"pong|{token}")
        await client.login("alice")
        await client.send(f"ping|{token}")
        await client.expect(f"pong|{token}")


async def test_unasked_pong_is_ignored() -> None:
    async with running_server() as live:
        client = await live.connect()
        await client.send("pong|nobody-asked")
        await assert_quiet(client)
        await client.login("alice")
        await client.send("pong|nobody-asked")
        await assert_quiet(client)


async def _next_ping(client: LineClient, within: float, which: str) -> str:
    """The token of the server's next frame, which must be a ``ping`` and
    must come within *within* seconds."""
    with trio.move_on_after(within):
        line = await client.read_line()
        kind, _, token = line.partition("|")
        assert kind == "ping", line
        assert token, line
        return token
    raise AssertionError(f"no {which} from the server within {within} s")


async def test_idle_client_is_pinged_every_interval_while_it_answers() -> None:
    # ping_interval 0.05 s: a ping is due 0.05 s after the client was last
    # heard from, whatever the login and ping timeouts are.
    async with running_server(ping_interval=0.05, ping_timeout=5) as live:
        alice = await live.login("alice")
        token = await _next_ping(alice, 1.0, "first ping after login")
        await alice.send(f"pong|{token}")
        token = await _next_ping(alice, 1.0, "second ping after answering the first")
        await alice.send(f"pong|{token}")
        await alice.send("ping|still-here")
        while (line := await alice.read_line()) != "pong|still-here":
            assert line.startswith("ping|"), line


async def test_client_that_does_not_answer_pings_is_dropped() -> None:
    async with running_server(ping_interval=0.05, ping_timeout=0.3) as live:
        alice = await live.login("alice")
        bob = await live.login("bob")
        # alice answers the server's pings; bob never does.
        seen: list[str] = []
        with trio.fail_after(2.0):
            while (line := await alice.read_line()) != "exit|bob":
                if line.startswith("ping|"):
                    await alice.send(f"pong|{line[5:]}")
                else:
                    seen.append(line)
        assert seen == ["login|bob"]
        lines = await bob.read_until_closed()
        assert lines[0] == "login|alice", lines
        assert len(lines) > 1, "bob was never pinged"
        assert all(line.startswith("ping|") for line in lines[1:]), lines


# -- framing ---------------------------------------------------------------------


async def test_crlf_line_endings_are_accepted() -> None:
    async with running_server() as live:
        alice = await live.connect()
        await alice.send_raw(b"login|alice\r\n")
        await alice.expect("login|alice")
        bob = await live.connect()
        await bob.send_raw(b"login|bob\r\n")
        await bob.expect("login|bob", "login|alice")
        await alice.expect("login|bob")
        await alice.send_raw(b"talk|bob|hi there\r\nping|p\r\n")
        await bob.expect("talk|alice|bob|hi there")
        await alice.expect("pong|p")
        await bob.send_raw(b"exit\r\n")
        await alice.expect("exit|bob")


async def test_empty_lines_are_ignored() -> None:
    async with running_server() as live:
        alice = await live.connect()
        await alice.send_raw(b"\n\r\n\n")
        await assert_quiet(alice)
        await alice.send_raw(b"\nlogin|alice\n\n\r\n")
        await alice.expect("login|alice")
        await alice.send_raw(b"\r\n\n")
        await assert_quiet(alice)


async def test_frames_split_across_writes_and_joined_in_one() -> None:
    async with running_server() as live:
        alice = await live.connect()
        for piece in [b"log", b"in|al", b"ice\nping|1\npi", b"ng|2", b"\n"]:
            await alice.send_raw(piece)
        await alice.expect("login|alice", "pong|1", "pong|2")
        bob = await live.connect()
        await bob.send_raw(b"login|bob\ntalk|alice|a\ntalk|alice|b\nping|3\n")
        await bob.expect("login|bob", "login|alice", "pong|3")
        await alice.expect("login|bob", "talk|bob|alice|a", "talk|bob|alice|b")
        # A multi-byte character split between two writes.
        await bob.send_raw("talk|alice|\u00e9t\u00e9".encode()[:13])
        await bob.send_raw("talk|alice|\u00e9t\u00e9\n".encode()[13:])
        await alice.expect("talk|bob|alice|\u00e9t\u00e9")


async def test_one_write_of_every_kind_of_line_is_handled_in_order() -> None:
    # Runs of plain talk are relayed without decoding; everything else in
    # the same read is decoded. Either way, each line in its turn.
    async with running_server(rate=0) as live:
        alice, bob, carol = await users(live, "alice", "Bob", "carol")
        await alice.send_raw(
            b"talk|Bob|1\ntalk|Bob|2\ntalk|BOB|3 other case\n"
            b"talk|Bob|4\ttab\ntalk|carol|5\ntalk|*|6 all\ntalk|*|7 all\n"
            b"talk|dave|8\ntalk|Bob|\ntalk|Bob|9|bars|\n\nping|p\ntalk|Bob|10\n"
        )
        await alice.expect(
            "error|no-such-user|dave",
            "error|bad-frame|talk has an empty field",
            "pong|p",
        )
        await bob.expect(
            "talk|alice|Bob|1",
            "talk|alice|Bob|2",
            "talk|alice|Bob|3 other case",
            "talk|alice|Bob|4\ttab",
            "talk|alice|*|6 all",
            "talk|alice|*|7 all",
            "talk|alice|Bob|9|bars|",
            "talk|alice|Bob|10",
        )
        await carol.expect(
            "talk|alice|carol|5", "talk|alice|*|6 all", "talk|alice|*|7 all"
        )
        # CRLF and text that is not ASCII, in one read with plain lines.
        await alice.send_raw("talk|Bob|11\r\ntalk|Bob|été\ntalk|Bob|12\n".encode())
        await bob.expect("talk|alice|Bob|11", "talk|alice|Bob|été", "talk|alice|Bob|12")


async def test_a_read_is_handled_whole_across_quiet_deadlines() -> None:
    # The quiet scope (login, ping) ends read_frames each time it expires,
    # here every few milliseconds, while a long write is being handled:
    # what is left of a read must be handled when reading goes on.
    count = 30_000
    async with running_server(rate=0, ping_interval=0.002) as live:
        # Pings may come at any time, between login frames too: the lines
        # looked at are the talk.
        alice = await live.login("alice")
        bob = await live.login("bob")
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            # Bob reads while Alice writes: the server waits for him to
            # drain, in between.
            nursery.start_soon(
                alice.send_raw, b"".join(b"talk|bob|m%d\n" % i for i in range(count))
            )
            while len(got) < count:
                line = await bob.read_line()
                if line.startswith("talk|"):
                    got.append(line)
        assert got == [f"talk|alice|bob|m{i}" for i in range(count)]


# -- slow clients ----------------------------------------------------------------


async def test_client_that_never_reads_is_dropped_and_the_rest_go_on() -> None:
    async with running_server(rate=0, queue_size=16) as live:
        alice, carol = await users(live, "alice", "carol")
        bob = await open_client(live, rcvbuf=SMALLEST_RCVBUF)
        await bob.send("login|bob")  # and never reads a byte
        await alice.expect("login|bob")
        await carol.expect("login|bob")
        text = "b" * 2000
        sent = 0
        replies: list[str] = []
        while not replies:
            batch = b"".join(
                f"talk|bob|{n:06d}{text}\n".encode() for n in range(sent, sent + 20)
            )
            await alice.send_raw(batch)
            replies = await alice.pong_after(f"b{sent}")
            sent += 20
        # Each talk that could not be queued says so; bob goes offline.
        assert replies[0] == "error|no-such-user|bob", replies
        assert set(replies) <= {"error|no-such-user|bob", "exit|bob"}, replies
        await _expect_exit(alice, "bob", replies)
        await carol.expect("exit|bob")
        await alice.send("talk|carol|bob is gone")
        await carol.expect("talk|alice|carol|bob is gone")
        await carol.send("talk|*|so it seems")
        await alice.expect("talk|carol|*|so it seems")
        # What bob got is the start of what he was sent, in order.
        data = await read_until_gone(bob.stream)
        lines = data.split(b"\n")[:-1]  # the last frame may be cut short
        assert lines[0] == b"login|bob"
        assert sorted(lines[1:3]) == [b"login|alice", b"login|carol"]
        expected = [f"talk|alice|bob|{n:06d}{text}".encode() for n in range(sent)]
        assert lines[3:] == expected[: len(lines) - 3]
        assert len(lines) - 3 < sent
        # And his name is free again.
        again = await live.login("bob")
        assert sorted(await again.read_lines(2)) == ["login|alice", "login|carol"]


async def _burst_to_readers(to: str, rcvbuf: int | None, chunk: int) -> None:
    """alice sends BURST talks to *to* in a few writes; bob and carol read
    all the time, *chunk* bytes at a time, through a receive buffer of
    *rcvbuf* bytes. Whoever the talks are for gets every one, in order."""
    async with running_server(rate=0) as live:
        alice = await live.login("alice")
        readers = {"bob": await open_client(live, rcvbuf=rcvbuf)}
        readers["carol"] = await open_client(live, rcvbuf=rcvbuf)
        for name, client in readers.items():
            await client.login(name)
        await readers["bob"].expect("login|alice", "login|carol")
        assert sorted(await readers["carol"].read_lines(2)) == [
            "login|alice",
            "login|bob",
        ]
        await alice.expect("login|bob", "login|carol")
        await assert_quiet(alice)
        frames = [f"talk|{to}|{n:05d} keep reading\n".encode() for n in range(BURST)]
        received: dict[str, list[bytes]] = {name: [] for name in readers}
        expected: dict[str, list[bytes]] = {name: [] for name in readers}
        for name in readers if to == "*" else [to]:
            shown = "*" if to == "*" else name
            expected[name] = [
                f"talk|alice|{shown}|{n:05d} keep reading".encode()
                for n in range(BURST)
            ]

        async def read_all(name: str) -> None:
            stream = readers[name].stream
            lines = received[name]
            buffer = b""
            while len(lines) < len(expected[name]):
                data = await stream.receive_some(chunk)
                if not data:
                    return
                *new_lines, buffer = (buffer + data).split(b"\n")
                lines.extend(new_lines)

        with trio.fail_after(STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for name in readers:
                    nursery.start_soon(read_all, name)
                for start in range(0, BURST, 1000):
                    await alice.send_raw(b"".join(frames[start : start + 1000]))
                replies = await alice.pong_after("burst")
        for name in readers:
            got = received[name]
            assert len(got) == len(expected[name]), (
                f"{name} got {len(got)} of {len(expected[name])} frames"
            )
            assert got == expected[name]
        assert replies == []
        await assert_quiet(*readers.values())


@pytest.mark.parametrize("to", ["bob", "*"])
async def test_reading_client_gets_a_burst_whole_and_in_order(to: str) -> None:
    await _burst_to_readers(to, rcvbuf=None, chunk=65536)


@pytest.mark.parametrize("to", ["bob", "*"])
async def test_reading_client_with_a_small_buffer_is_not_dropped_by_a_burst(
    to: str,
) -> None:
    # protocol.md: "A client that keeps reading is never dropped because
    # another client sent a burst". The readers read all the time, through
    # a small receive buffer (a slow link, as the server sees it).
    await _burst_to_readers(to, rcvbuf=SMALLEST_RCVBUF, chunk=4096)


async def test_pipelined_pings_are_all_answered_in_order() -> None:
    async with running_server(rate=0) as live:
        alice = await live.login("alice")
        got: list[str] = []

        async def read_all() -> None:
            for _ in range(BURST):
                got.append(await alice.read_line())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await alice.send_raw(b"".join(f"ping|{n}\n".encode() for n in range(BURST)))
        assert got == [f"pong|{n}" for n in range(BURST)]


async def test_refusals_beyond_max_refusing_are_not_waited_for() -> None:
    async with running_server(max_clients=1, max_refusing=3, close_timeout=5) as live:
        await live.login("alice")
        # Refused clients that read their error and keep the socket open:
        # the server holds each while it waits for them to close.
        held = [await live.connect() for _ in range(3)]
        for client in held:
            line = await client.read_line()
            assert line.startswith("error|server-full|")
        assert live.server.refusing == 3
        # One more is told why all the same, but not held.
        flooder = await live.connect()
        await refused_with(flooder, "server-full")
        assert live.server.refusing == 3
        # Once those are gone, a refusal is explained again.
        for client in held:
            await client.aclose()
        with trio.fail_after(STEP_TIMEOUT):
            while live.server.refusing:  # noqa: ASYNC110 - no event to wait for
                await trio.sleep(0.01)
        late = await live.connect()
        await refused_with(late, "server-full")


async def test_empty_lines_count_against_the_rate_in_their_place() -> None:
    # 200 frames of burst: the ping before 250 empty lines gets its answer,
    # the one after them is over the rate.
    async with running_server(rate=100, burst=200) as live:
        client = await live.connect()
        await client.send_raw(b"ping|before\n" + b"\n" * 250 + b"ping|after\n")
        await client.expect("pong|before")
        assert error_parts(await client.read_line())[0] == "rate-limited"


# -- protocol 2 frames of features still to come ------------------------------------


async def test_a_login_with_a_password_is_no_account_yet() -> None:
    async with running_server() as live:
        client = await live.connect()
        await client.send(b"login|alice|correct horse")
        await expect_error(client, "no-such-account")
        # Not logged in as a guest either: the name is still free.
        await client.login("alice")


async def test_a_bad_room_after_login_is_a_bad_name_not_a_second_login() -> None:
    async with running_server() as live:
        alice = await live.login("alice")
        await alice.send(b"join|lunch")
        await expect_error(alice, "bad-name")
        await alice.send(b"login|alice|correct horse")
        await expect_error(alice, "already-logged-in")


@pytest.mark.parametrize(
    "frame", [b"history|*|latest|5", b"resume|s3cret|0"], ids=["history", "resume"]
)
async def test_history_and_resume_need_hello(frame: bytes) -> None:
    async with running_server() as live:
        client = await live.connect()
        if frame.startswith(b"history"):
            await client.login("alice")
        await client.send(frame)
        await expect_error(client, "needs-hello")


async def test_a_roster_over_the_queue_bytes_does_not_drop_the_newcomer() -> None:
    # Hardening item: a newcomer's roster is the server's answer, as large
    # as the number of users online makes it; it must not count as the
    # newcomer being too slow.
    long_names = [f"{n:02d}" + "x" * 30 for n in range(40)]  # 40 x 39 bytes
    async with running_server(queue_bytes=1000, presence_delay=0) as live:
        others = [await live.login(name) for name in long_names]
        newcomer = await live.login("newcomer")
        assert len(await newcomer.read_lines(len(long_names))) == len(long_names)
        await others[0].send("talk|newcomer|still here?")
        assert (
            await newcomer.read_line() == f"talk|{long_names[0]}|newcomer|still here?"
        )
