"""Hostile and broken clients must not hurt anyone else.

Each test runs one attack against a live server over TCP while two normal
users, alice and bob, keep talking (``Pair.run`` in a nursery beside the
attack). Every one of their messages must arrive, in order; afterwards the
server must still let a fresh client log in and talk, and hold exactly the
connections it should.

Most tests switch the rate limit off (``rate=0``) so that alice and bob can
talk flat out; the flood test turns it on and paces them below it.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio
from helpers import (
    STEP_TIMEOUT,
    LineClient,
    LiveServer,
    read_until_gone,
    reset_on_close,
    running_server,
    wait_for_connections,
)

from trichat import Role, decode

# A bound for a whole test: every one is done in a second or two.
TEST_TIMEOUT = 20.0


# -- checking what the server says ---------------------------------------------


def check_server_frame(line: str) -> None:
    """Fail unless *line* is a frame a server may send.

    The client-side decoder validates every field, so this also proves that
    nothing a client sent (a control character, an escape sequence) came
    back out unescaped, not even inside an error's detail.
    """
    decode(line.encode(), Role.CLIENT)


def code_of(line: str) -> str:
    assert line.startswith("error|"), line
    return line.split("|")[1]


def split_lines(data: bytes) -> list[str]:
    """Whole frames in *data*; each is checked as a server frame."""
    *lines, rest = data.split(b"\n")
    assert rest == b"", f"partial line at close: {rest!r}"
    decoded = [line.decode() for line in lines]
    for line in decoded:
        check_server_frame(line)
    return decoded


async def read_until_line(stream: trio.abc.Stream, last: str) -> list[str]:
    """Lines until *last* (included); fails if the server closes first."""
    received = bytearray()
    with trio.fail_after(STEP_TIMEOUT):
        while not received.endswith(f"{last}\n".encode()):
            data = await stream.receive_some(65536)
            assert data, f"closed before {last!r}; got {bytes(received)!r}"
            received += data
    return split_lines(bytes(received))


# What an attacker that logged in hears from alice and bob meanwhile.
BROADCASTS = ("talk|alice|*|",)


async def barrier(
    client: LineClient, token: str, skip: tuple[str, ...] = BROADCASTS
) -> list[str]:
    """Send ``ping|TOKEN``; the lines that come before the ``pong|TOKEN``,
    but for those starting with one of *skip*."""
    await client.send(f"ping|{token}")
    return await read_until_pong(client, token, skip)


async def read_until_pong(
    client: LineClient, token: str, skip: tuple[str, ...] = BROADCASTS
) -> list[str]:
    """The lines before ``pong|TOKEN``, but for those starting with *skip*."""
    lines = []
    while (line := await client.read_line()) != f"pong|{token}":
        check_server_frame(line)
        if not line.startswith(skip):
            lines.append(line)
    return lines


def check_login(lines: list[str], name: str, online: list[str]) -> None:
    """*lines* are the acknowledgement of *name*'s login, then the roster
    (in no particular order)."""
    assert lines[0] == f"login|{name}", lines
    assert sorted(lines[1:]) == sorted(f"login|{x}" for x in online), lines


# -- the normal users ----------------------------------------------------------


class Pair:
    """alice and bob, who keep talking while someone attacks the server.

    Each round alice sends bob a direct message and everyone a broadcast,
    and bob sends alice a direct message; each waits for what the other
    sent. Frames that are not part of their conversation (presence, talk
    from others, errors) are kept in ``other``, in order, for the test.
    """

    def __init__(self, alice: LineClient, bob: LineClient, pace: float) -> None:
        self.clients = {"alice": alice, "bob": bob}
        self.other: dict[str, list[str]] = {"alice": [], "bob": []}
        self.rounds = 0
        self.pace = pace
        self._tokens = itertools.count()

    @classmethod
    async def join(cls, live: LiveServer, *, pace: float = 0.0) -> Pair:
        alice = await live.login("alice")
        bob = await live.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")
        return cls(alice, bob, pace)

    async def run(self, stop: trio.Event, min_rounds: int = 20) -> None:
        alice, bob = self.clients["alice"], self.clients["bob"]
        while self.rounds < min_rounds or not stop.is_set():
            n = self.rounds
            await alice.send(f"talk|bob|a{n}")
            await alice.send(f"talk|*|A{n}")
            await bob.send(f"talk|alice|b{n}")
            await self._read("bob", [f"talk|alice|bob|a{n}", f"talk|alice|*|A{n}"])
            await self._read("alice", [f"talk|bob|alice|b{n}"])
            self.rounds += 1
            if self.pace:
                await trio.sleep(self.pace)

    async def drain(self) -> None:
        """Read both until the server has answered a fresh ping of each, so
        ``other`` holds everything queued for them so far."""
        for name, client in self.clients.items():
            token = f"drain{next(self._tokens)}"
            await client.send(f"ping|{token}")
            await self._read(name, [f"pong|{token}"])

    async def _read(self, name: str, wanted: list[str]) -> None:
        client = self.clients[name]
        partner = "bob" if name == "alice" else "alice"
        wanted = list(wanted)
        while wanted:
            line = await client.read_line()
            check_server_frame(line)
            if line.startswith((f"talk|{partner}|", "pong|")):
                assert line == wanted[0], f"{name}: want {wanted[0]!r}, got {line!r}"
                del wanted[0]
            elif line.startswith("ping|"):
                await client.send("pong|" + line.removeprefix("ping|"))
            else:
                self.other[name].append(line)

    def check_undisturbed(self) -> None:
        """Neither got an error, nor a message from anyone else."""
        for name, lines in self.other.items():
            stray = [x for x in lines if not x.startswith(("login|", "exit|"))]
            assert stray == [], f"{name} got {stray}"

    def presence(self, name: str, who: str) -> list[str]:
        """The login/exit frames about *who* that *name* got, in order."""
        return [x for x in self.other[name] if x in (f"login|{who}", f"exit|{who}")]


async def under_attack(
    live: LiveServer,
    attack: Callable[[], Awaitable[None]],
    *,
    pace: float = 0.0,
    connections: int = 2,
    undisturbed: bool = True,
) -> Pair:
    """Run *attack* while alice and bob talk; then check that they were not
    disturbed (if *undisturbed*: no errors, nobody else's messages) and that
    the server is healthy with *connections* open (alice, bob and whoever
    the attack left connected)."""
    pair = await Pair.join(live, pace=pace)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.run, stop)
        await attack()
        stop.set()
    # Connections the attack made may still wait in the listen backlog, and
    # the count would miss them. The server accepts in order: once a later
    # connection has been served, every earlier one has been accepted.
    marker = await live.connect()
    assert await barrier(marker, "marker") == []
    await marker.aclose()
    await wait_for_connections(live, connections)
    await pair.drain()
    if undisturbed:
        pair.check_undisturbed()
    await check_healthy(live, pair, connections)
    return pair


async def check_healthy(live: LiveServer, pair: Pair, connections: int) -> None:
    """A fresh client can log in, reach alice and bob, and leave."""
    seen = {name: len(lines) for name, lines in pair.other.items()}
    fresh = await live.login("fresh")
    roster = await barrier(fresh, "fresh")
    assert {"login|alice", "login|bob"} <= set(roster), roster
    await fresh.send("talk|alice|hello alice")
    await fresh.send("talk|*|hello all")
    await fresh.send("exit")
    assert await fresh.read_until_closed() == []
    await pair.drain()
    assert pair.other["alice"][seen["alice"] :] == [
        "login|fresh",
        "talk|fresh|alice|hello alice",
        "talk|fresh|*|hello all",
        "exit|fresh",
    ]
    assert pair.other["bob"][seen["bob"] :] == [
        "login|fresh",
        "talk|fresh|*|hello all",
        "exit|fresh",
    ]
    await wait_for_connections(live, connections)


def attack_server(**config: Any) -> AbstractAsyncContextManager[LiveServer]:
    """``running_server`` with *config*; the rate limit is off unless given."""
    config.setdefault("rate", 0)
    return running_server(**config)


# -- what attackers do ---------------------------------------------------------


async def log_in_mallory(live: LiveServer) -> LineClient:
    """mallory, logged in beside alice and bob, the roster read."""
    mallory = await live.login("mallory")
    check_login(
        ["login|mallory", *await barrier(mallory, "m0")],
        "mallory",
        ["alice", "bob"],
    )
    return mallory


async def each_refused(
    client: LineClient, frames: Iterable[bytes], code: str, token: str
) -> None:
    """Send *frames* one at a time (each with an LF, added if missing); each
    must get just an ``error|CODE|...``, before ``pong|TOKEN<n>``."""
    for n, frame in enumerate(frames):
        frame = frame if frame.endswith(b"\n") else frame + b"\n"
        await client.send_raw(frame)
        replies = await barrier(client, f"{token}{n}")
        assert [code_of(x) for x in replies] == [code], frame


async def replies_until_dropped(
    client: LineClient, write: Callable[[], Awaitable[None]]
) -> list[str]:
    """Run *write*, which sends on *client* without end, until the server
    drops the connection; meanwhile read what the server says (the lines)."""
    replies: list[str] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            replies.extend(split_lines(await read_until_gone(client.stream)))
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        with contextlib.suppress(trio.BrokenResourceError):
            await write()
    return replies


# -- the attacks ---------------------------------------------------------------


async def test_random_bytes() -> None:
    rng = random.Random(0x7E1C4A7)
    payload = rng.randbytes(256 * 1024)
    # A random line over the 4096-byte limit would close the connection, which
    # is another test's business; this seed has none.
    assert max(len(line) for line in payload.split(b"\n")) < 4000

    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def spray(attacker: LineClient) -> list[str]:
                """Send the payload in random pieces; the replies to it."""
                replies: list[str] = []

                async def read() -> None:
                    skip = (*BROADCASTS, "login|")
                    replies.extend(await read_until_pong(attacker, "done", skip))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    position = 0
                    while position < len(payload):
                        size = rng.randint(1, 8192)
                        await attacker.send_raw(payload[position : position + size])
                        position += size
                    await attacker.send_raw(b"\nping|done\n")
                return replies

            async def attack() -> None:
                stranger = await live.connect()
                insider = await live.login("mallory")
                for attacker in (stranger, insider):
                    replies = await spray(attacker)
                    # Every line got an error that keeps the connection open;
                    # none of them was taken for a frame that does something.
                    codes = {code_of(line) for line in replies}
                    assert codes <= {"bad-frame", "not-logged-in", "bad-name"}
                    assert len(replies) > 500
                    await attacker.aclose()

            pair = await under_attack(live, attack)
            assert pair.presence("alice", "mallory") == [
                "login|mallory",
                "exit|mallory",
            ]


INVALID_UTF8 = [
    b"talk|bob|\xff\xfe\n",
    b"talk|bob|caf\xc3\n",  # truncated two-byte sequence
    b"talk|bob|\xc3\x28\n",  # bad continuation byte
    b"talk|bob|\xc0\xaf\n",  # overlong "/"
    b"talk|bob|\xe0\x80\xaf\n",  # overlong, three bytes
    b"talk|bob|\xed\xa0\x80\n",  # an encoded UTF-16 surrogate
    b"talk|bob|\xf4\x90\x80\x80\n",  # beyond U+10FFFF
    b"talk|*|\x80\n",  # lone continuation byte
    b"talk|b\xffb|hi\n",
    b"t\xe1lk|bob|hi\n",
    b"ping|\xfe\n",
    b"exit|\xff\n",
    b"\xff\n",
]


async def test_invalid_utf8_is_refused_and_never_delivered() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                mallory = await log_in_mallory(live)
                await each_refused(mallory, INVALID_UTF8, "bad-frame", "u")
                stranger = await live.connect()
                await stranger.send_raw(b"login|m\xe9lory\n")  # Latin-1, not UTF-8
                replies = await barrier(stranger, "s")
                assert [code_of(x) for x in replies] == ["bad-frame"]
                # The stranger can still log in on the same connection.
                await stranger.send("login|stranger")
                check_login(
                    await barrier(stranger, "s2"),
                    "stranger",
                    ["alice", "bob", "mallory"],
                )
                assert await barrier(mallory, "m") == ["login|stranger"]
                await mallory.send("exit")
                await stranger.send("exit")
                await mallory.read_until_closed()
                await stranger.read_until_closed()

            await under_attack(live, attack)


ESCAPES = [
    b"talk|bob|hi\x00there\n",
    b"talk|bob|\x00\n",
    b"talk|bob|\x1b[31mred\x1b[0m\n",
    b"talk|*|\x1b[2J\x1b[Hscreen wiped\n",
    b"talk|*|\x1b]0;pwned\x07\n",  # set the terminal title
    b"talk|bob|\x1b]52;c;cHduZWQ=\x07\n",  # OSC 52: write the clipboard
    "talk|bob|\u009b31mC1 CSI".encode(),
    "talk|bob|\u009d0;title\u009c".encode(),
    b"talk|bob|back\x08\x08space\n",
    b"talk|bob|bell\x07\n",
    b"talk|bob|del\x7f\n",
    b"talk|bob|fake\rtalk|root|bob|line\n",
    b"talk|b\x00b|hi\n",
    b"talk|\x1b[1mbob|hi\n",
    b"ping|\x1b[0m\n",
    b"pong|\x00\n",
    b"exit|\x1b\n",
    b"\x1b[31m\n",
    b"\x00\x00\x00\n",
]


async def test_nul_and_escape_sequences_are_refused_and_never_delivered() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                mallory = await log_in_mallory(live)
                await each_refused(mallory, ESCAPES, "bad-frame", "e")
                stranger = await live.connect()
                await each_refused(
                    stranger,
                    [b"login|ev\x00il\n", b"login|\x1b[31mred\n", b"login|a\x7f\n"],
                    "bad-name",
                    "s",
                )
                # Still in step: a good frame after all that works.
                await mallory.send("talk|stranger|are you there?")
                assert await barrier(mallory, "m") == ["error|no-such-user|stranger"]
                await mallory.aclose()
                await stranger.aclose()

            await under_attack(live, attack)


async def test_endless_line_gets_too_long_and_is_closed() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def endless(client: LineClient, prefix: bytes) -> list[str]:
                async def write() -> None:
                    await client.send_raw(prefix)
                    while True:
                        await client.send_raw(b"A" * 8192)

                return await replies_until_dropped(client, write)

            async def attack() -> None:
                stranger = await live.connect()
                replies = await endless(stranger, b"")
                assert [code_of(x) for x in replies] == ["too-long"]
                insider = await live.login("mallory")
                replies = await endless(insider, b"talk|bob|")
                assert [code_of(x) for x in replies[-1:]] == ["too-long"]
                # Before the error, at most alice's broadcasts reached it.
                assert all(
                    x.startswith(("login|", "talk|alice|*|")) for x in replies[:-1]
                )

            pair = await under_attack(live, attack)
            assert pair.presence("bob", "mallory") == ["login|mallory", "exit|mallory"]


async def test_frames_split_into_single_bytes_still_work() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                dribbler = await live.connect()
                data = "login|dribbler\r\ntalk|bob|héllo ✓ in bytes\r\nping|x\n"
                for byte in data.encode():
                    await dribbler.send_raw(bytes([byte]))
                replies = []
                while (line := await dribbler.read_line()) != "pong|x":
                    if not line.startswith(BROADCASTS):
                        replies.append(line)
                check_login(replies, "dribbler", ["alice", "bob"])
                for byte in b"exit\n":
                    await dribbler.send_raw(bytes([byte]))
                assert all(
                    x.startswith("talk|alice|*|")
                    for x in await dribbler.read_until_closed()
                )

            pair = await under_attack(live, attack, undisturbed=False)
            assert [x for x in pair.other["bob"] if "dribbler" in x] == [
                "login|dribbler",
                "talk|dribbler|bob|héllo ✓ in bytes",
                "exit|dribbler",
            ]


async def test_thousand_frames_in_one_write() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                sink = await live.login("sink")
                burst = await live.login("burst")
                await burst.send_raw(
                    b"".join(b"talk|sink|m%d\n" % n for n in range(1000))
                )
                got: list[str] = []
                while len(got) < 1000:
                    line = await sink.read_line()
                    if line.startswith("talk|burst|"):
                        got.append(line)
                assert got == [f"talk|burst|sink|m{n}" for n in range(1000)]
                # And a thousand pings before login: a thousand pongs, in order.
                stranger = await live.connect()
                await stranger.send_raw(b"".join(b"ping|%d\n" % n for n in range(1000)))
                assert await stranger.read_lines(1000) == [
                    f"pong|{n}" for n in range(1000)
                ]
                for client in (sink, burst, stranger):
                    await client.aclose()

            await under_attack(live, attack)


async def test_broadcast_burst_does_not_drop_readers() -> None:
    """Four megabytes of broadcasts in one write: everyone who keeps reading
    gets all of it, in order, and is not dropped as too slow."""
    text = "\u00e9" * 1990  # two bytes each: frames of about 4 KB
    count = 1000

    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                loud = await live.login("loud")
                frames = b"".join(f"talk|*|{n}{text}\n".encode() for n in range(count))
                await loud.send_raw(frames)
                assert await barrier(loud, "sent", (*BROADCASTS, "login|")) == []
                await loud.send("exit")
                await loud.read_until_closed()

            pair = await under_attack(live, attack, undisturbed=False)
            for name in ("alice", "bob"):
                heard = [x for x in pair.other[name] if x.startswith("talk|loud|")]
                assert heard == [f"talk|loud|*|{n}{text}" for n in range(count)]
                assert pair.presence(name, "loud") == ["login|loud", "exit|loud"]


async def test_line_limit_counts_bytes_exactly() -> None:
    """A frame of exactly max_line bytes (its LF included) passes; one byte
    more is too long. Multi-byte characters count by their bytes."""
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                edgy = await live.login("edgy")
                # 9 + 3914 + 2 * 86 + 1 = 4096 bytes, 4000 characters of text.
                fits = "talk|bob|" + "a" * 3914 + "\u00e9" * 86
                assert len(fits.encode()) + 1 == 4096
                await edgy.send(fits)
                assert await barrier(edgy, "fits", (*BROADCASTS, "login|")) == []
                over = "talk|bob|" + "a" * 3913 + "\u00e9" * 87
                assert len(over.encode()) + 1 == 4097
                await edgy.send(over)
                lines = split_lines(await read_until_gone(edgy.stream))
                errors = [x for x in lines if x.startswith("error|")]
                assert [code_of(x) for x in errors] == ["too-long"]

            pair = await under_attack(live, attack, undisturbed=False)
            text = "a" * 3914 + "\u00e9" * 86
            assert [x for x in pair.other["bob"] if "edgy" in x] == [
                "login|edgy",
                f"talk|edgy|bob|{text}",
                "exit|edgy",
            ]


async def test_connection_storm_beyond_max_clients() -> None:
    """More clients than the server holds: the extra ones are told
    ``server-full`` and closed; nobody already in is affected, and the
    slots come back."""
    # alice, bob, the marker and the fresh client of the checks need room too.
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server(max_clients=12) as live:
            answers: list[str] = []
            crowd_size = 40
            all_answered = trio.Event()

            async def crowd(n: int) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", live.port)
                try:
                    await stream.send_all(f"login|crowd{n}\n".encode())
                    lines = split_lines(await read_until_line_or_gone(stream))
                    answers.append(lines[0] if lines else "")
                    if len(answers) == crowd_size:
                        all_answered.set()
                    # Hold on to the slot until everyone has an answer.
                    await all_answered.wait()
                finally:
                    await stream.aclose()

            async def read_until_line_or_gone(stream: trio.SocketStream) -> bytes:
                received = bytearray()
                with trio.fail_after(STEP_TIMEOUT):
                    while b"\n" not in received:
                        try:
                            data = await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            break
                        if not data:
                            break
                        received += data
                return bytes(received[: received.find(b"\n") + 1])

            async def attack() -> None:
                # The admitted hold their slots until all have an answer, so
                # at most 12 - 2 get in.
                async with trio.open_nursery() as nursery:
                    for n in range(crowd_size):
                        nursery.start_soon(crowd, n)

            await under_attack(live, attack, undisturbed=False)
            full = [x for x in answers if x.startswith("error|")]
            assert {code_of(x) for x in full} == {"server-full"}
            assert len(full) >= 30
            assert all(x.startswith("login|crowd") for x in answers if x not in full)


async def test_connect_and_vanish_storm() -> None:
    behaviours = [
        b"",  # connect, say nothing, close
        b"log",  # half a frame
        b"login|storm%d",  # a login without its LF
        b"login|storm%d\n",  # log in and vanish
        b"login|storm%d\ntalk|alice|boo\n",
        b"ping|x\n" * 50,  # ask and never read the answers
    ]

    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def vanish(n: int) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", live.port)
                try:
                    behaviour = behaviours[n % len(behaviours)]
                    data = behaviour % n if b"%d" in behaviour else behaviour
                    if data:
                        await stream.send_all(data)
                    if (n // len(behaviours)) % 2:  # each way, FIN and RST
                        reset_on_close(stream)
                finally:
                    await stream.aclose()

            async def attack() -> None:
                for wave in range(2):
                    async with trio.open_nursery() as nursery:
                        for n in range(150):
                            nursery.start_soon(vanish, wave * 150 + n)

            pair = await under_attack(live, attack, undisturbed=False)
            assert sorted(live.server.hub.names()) == ["alice", "bob"]
            for name in ("alice", "bob"):
                logins = [x for x in pair.other[name] if x.startswith("login|")]
                exits = [x for x in pair.other[name] if x.startswith("exit|")]
                # Everyone who came online went offline again, once each.
                assert sorted(x[6:] for x in logins) == sorted(x[5:] for x in exits)
                assert len(set(logins)) == len(logins)
                for login in logins:
                    who = login[6:]
                    seen = pair.presence(name, who)
                    assert seen[:2] == [f"login|{who}", f"exit|{who}"], seen
            stray = [
                x
                for x in pair.other["alice"]
                if not x.startswith(("login|", "exit|", "talk|storm", "talk|fresh"))
            ]
            assert stray == []


async def test_half_closed_client_is_treated_as_leaving() -> None:
    """A client that shuts down its sending side has said all it will say:
    the server acts on every frame before the EOF, answers them, takes the
    client offline and then closes the connection."""
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                client = await live.connect()
                stream = client.stream
                assert isinstance(stream, trio.SocketStream)
                await client.send("login|half\ntalk|bob|last words\nping|last")
                await stream.send_eof()
                lines = split_lines(await read_until_gone(stream))
                lines = [x for x in lines if not x.startswith(BROADCASTS)]
                check_login(lines[:-1], "half", ["alice", "bob"])
                assert lines[-1] == "pong|last"
                # The pre-login client that half-closes is just gone.
                quiet = await live.connect()
                assert isinstance(quiet.stream, trio.SocketStream)
                await quiet.send("ping|q")
                await quiet.stream.send_eof()
                assert split_lines(await read_until_gone(quiet.stream)) == ["pong|q"]

            pair = await under_attack(live, attack, undisturbed=False)
            assert [x for x in pair.other["bob"] if "half" in x] == [
                "login|half",
                "talk|half|bob|last words",
                "exit|half",
            ]
            # Both, or neither when the login and the exit fell within one
            # presence batch (a visit that short costs others nothing).
            assert pair.presence("alice", "half") in (
                ["login|half", "exit|half"],
                [],
            )


async def test_client_that_never_reads_is_dropped() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                slow = await live.login("slow")
                flooder = await live.login("flooder")
                refused = trio.Event()
                text = "x" * 4000

                async def watch() -> None:
                    while True:
                        line = await flooder.read_line()
                        if line == "error|no-such-user|slow":
                            refused.set()
                            return
                        assert line.startswith(("login|", "talk|alice|*|")), line

                sent = 0
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    frame = f"talk|slow|{text}\n".encode() * 16
                    while not refused.is_set():
                        await flooder.send_raw(frame)
                        sent += 16
                        assert sent < 20_000, "slow reader never dropped"
                        await trio.lowlevel.checkpoint()
                await flooder.send("exit")
                await flooder.read_until_closed()
                await slow.aclose()

            pair = await under_attack(live, attack)
            for name in ("alice", "bob"):
                assert pair.presence(name, "slow") == ["login|slow", "exit|slow"]


async def test_login_storm_for_one_name() -> None:
    # The same name to the server: case and full-width forms clash.
    variants = ["dup", "DUP", "Dup", "\uff44\uff55\uff50", "dUP"]
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:
            winners: list[str] = []

            async def attack() -> None:
                clients = [await live.connect() for _ in range(60)]
                answers: dict[int, str] = {}

                async def log_in(n: int) -> None:
                    await clients[n].send(f"login|{variants[n % len(variants)]}")
                    answers[n] = await clients[n].read_line()

                async with trio.open_nursery() as nursery:
                    for n in range(len(clients)):
                        nursery.start_soon(log_in, n)
                for n, answer in answers.items():
                    if answer.startswith("login|"):
                        assert answer == f"login|{variants[n % len(variants)]}"
                        winners.append(answer[6:])
                    else:
                        assert code_of(answer) == "name-taken", answer
                assert len(winners) == 1, winners
                assert len(answers) == len(clients)
                for client in clients:
                    await client.aclose()

            pair = await under_attack(live, attack)
            winner = winners[0]
            for name in ("alice", "bob"):
                assert [x for x in pair.other[name] if "fresh" not in x] == [
                    f"login|{winner}",
                    f"exit|{winner}",
                ]


async def test_flood_over_the_rate_limit() -> None:
    config = {"rate": 50, "burst": 20, "flood_grace": 0.5}
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server(**config) as live:
            replies: list[str] = []
            elapsed = 0.0

            async def attack() -> None:
                nonlocal elapsed
                flooder = await live.login("flooder")
                start = trio.current_time()
                batch = b"".join(b"ping|f%d\n" % n for n in range(20))

                async def write() -> None:
                    while True:
                        await flooder.send_raw(batch)
                        await trio.lowlevel.checkpoint()

                replies.extend(await replies_until_dropped(flooder, write))
                elapsed = trio.current_time() - start

            # 2 frames a round from alice, at most 20 rounds a second: under 50.
            pair = await under_attack(live, attack, pace=0.05)
            assert pair.presence("bob", "flooder") == ["login|flooder", "exit|flooder"]
            codes = [code_of(x) for x in replies if x.startswith("error|")]
            assert codes.count("rate-limited") >= 2
            assert set(codes) == {"rate-limited"}
            assert "closing" in replies[-1]
            assert any(x.startswith("pong|") for x in replies)
            # The grace, a second to notice the flood, the close timeout.
            assert elapsed < 0.5 + 1.0 + 0.5 + 1.0


# -- bursts of frames that each get an error -----------------------------------
#
# A client that sends many frames in one write and reads every reply must be
# answered frame by frame, as the protocol says: bad-frame and rate-limited
# leave the connection open. Only a client that does not read may be dropped
# as too slow.


async def test_burst_of_bad_frames_gets_every_reply() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server() as live:

            async def attack() -> None:
                sloppy = await live.login("sloppy")
                await sloppy.send_raw(b"x\n" * 2000 + b"ping|after\n")
                replies = await read_until_pong(
                    sloppy, "after", (*BROADCASTS, "login|")
                )
                assert len(replies) == 2000
                assert {code_of(x) for x in replies} == {"bad-frame"}
                await sloppy.send("exit")
                await sloppy.read_until_closed()

            await under_attack(live, attack)


async def test_burst_over_the_rate_limit_is_refused_not_dropped() -> None:
    """One write of 2000 pings to a server that allows 200 at once: the
    first get pongs, the rest rate-limited, and the connection stays open
    (a single burst is not a persistent flood)."""
    config = {"rate": 100, "burst": 200, "flood_grace": 5.0}
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server(**config) as live:

            async def attack() -> None:
                eager = await live.login("eager")
                await eager.send_raw(b"".join(b"ping|%d\n" % n for n in range(2000)))
                replies: list[str] = []
                while len(replies) < 2000:
                    line = await eager.read_line()
                    if not line.startswith((*BROADCASTS, "login|")):
                        replies.append(line)
                pongs = [x for x in replies if x.startswith("pong|")]
                refused = [x for x in replies if not x.startswith("pong|")]
                # The login took one token; time adds a few more.
                assert len(pongs) >= 199
                assert {code_of(x) for x in refused} == {"rate-limited"}
                assert pongs == sorted(pongs, key=lambda x: int(x[5:]))
                await eager.send("exit")
                await eager.read_until_closed()

            # Alice and bob stay well under 100 frames a second.
            await under_attack(live, attack, pace=0.05)


async def test_flood_of_empty_lines_is_a_flood() -> None:
    """Empty lines are ignored, but a client that sends nothing else, as
    fast as it can, floods the server like any other: it must be limited
    and closed after the grace, not served for ever."""
    config = {"rate": 50, "burst": 20, "flood_grace": 0.5}
    # The grace, a second to notice the flood, the close timeout, and slack.
    patience = 0.5 + 1.0 + 0.5 + 2.0
    with trio.fail_after(TEST_TIMEOUT):
        async with attack_server(**config) as live:
            replies: list[str] = []

            async def attack() -> None:
                flooder = await live.login("blank")

                async def write() -> None:
                    while True:
                        await flooder.send_raw(b"\n" * 65536)

                with trio.move_on_after(patience) as waited:
                    replies.extend(await replies_until_dropped(flooder, write))
                await flooder.aclose()
                assert not waited.cancelled_caught, (
                    f"still connected after {patience} s of empty lines"
                )

            await under_attack(live, attack, pace=0.05)
            # Empty lines get no reply, within the rate or over it: the one
            # error is the last word, the rate-limited that closes.
            errors = [x for x in replies if x.startswith("error|")]
            assert [code_of(x) for x in errors] == ["rate-limited"], replies
            assert replies[-1] == errors[0]
            assert errors[0].endswith("; closing")
