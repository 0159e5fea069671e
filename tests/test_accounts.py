"""Accounts, offline delivery and history through the server (protocol.md,
section 6), black-box over TCP, with the store in a temporary file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

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
    read_until_gone,
    say_hello,
    serving,
)

from trichat.cli import main
from trichat.server.app import ChatServer
from trichat.server.config import ServerConfig
from trichat.server.passwords import Hasher

pytestmark = pytest.mark.trio

# Argon2id at its cheapest: what is tested here is the server, not the hash.
CHEAP = Hasher(memory_kib=8, time_cost=1, parallelism=1)
PASSWORD = "correct horse"


def store_server(db: Path, **config: Any) -> AbstractAsyncContextManager[LiveServer]:
    """A server with its store in *db*, sessions off (a drop is an exit)."""
    config.setdefault("resume_window", 0)
    server = ChatServer(ServerConfig(port=0, db=str(db), **config), hasher=CHEAP)
    return serving(server)


async def v2(live: LiveServer) -> LineClient:
    client = await live.connect()
    await say_hello(client)
    return client


async def registered(live: LiveServer, name: str) -> LineClient:
    """*name* logged in and registered, on protocol 2."""
    client = await v2(live)
    await client.login(name)
    await client.send(f"register|{PASSWORD}")
    await client.expect(f"registered|{name}")
    return client


async def alice_away_and_bob(live: LiveServer) -> LineClient:
    """Account alice (protocol 2, sessions on) and guest bob online, each
    told of the other; then alice's connection drops and her session
    waits for a resume. Bob's client."""
    alice = await v2(live)
    await alice.login("alice")
    await alice.read_line()  # session
    await alice.send(f"register|{PASSWORD}")
    await alice.expect("registered|alice")
    bob = await v2(live)
    await bob.login("bob")
    await bob.read_lines(2)  # session, login|alice
    await alice.expect("login|bob")
    await trio.aclose_forcefully(alice.stream)  # her session waits
    with trio.fail_after(5):
        while live.server.waiting != 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    return bob


async def test_register_then_the_name_needs_its_password(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        guest = await v2(live)
        await guest.send("login|alice")
        await expect_error_frame(guest, "account-required")
        await guest.send("login|ALICE|wrong password")
        await expect_error_frame(guest, "wrong-password")
        await guest.send(f"login|ALICE|{PASSWORD}")
        # Shown as registered.
        await guest.expect("login|alice")


async def test_account_errors(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send(f"register|{PASSWORD}")
        await expect_error_frame(alice, "already-registered")
        await alice.send("register|short")
        await expect_error_frame(alice, "bad-password")
        bob = await v2(live)
        await bob.send(f"login|bob|{PASSWORD}")
        await expect_error_frame(bob, "no-such-account")
        await bob.login("bob")
        await bob.read_line()  # login|alice
        await bob.send("password|a new password")
        await expect_error_frame(bob, "no-such-account")
        await alice.read_line()  # login|bob
        await alice.send("password|a new password")
        await alice.expect("password|alice")
        await expect_quiet(alice, bob)


async def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        guesser = await v2(live)
        for _ in range(3):
            await guesser.send("login|alice|a guess, wrong")
            await expect_error_frame(guesser, "wrong-password")
        # Even the right password is refused now, for a while.
        await guesser.send(f"login|alice|{PASSWORD}")
        await expect_error_frame(guesser, "rate-limited")


async def test_passwords_need_tls_away_from_loopback(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        await registered(live, "alice")
        # A connection from elsewhere, in memory: not encrypted, not local.
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "192.0.2.7")
            remote = LineClient(ours)
            await remote.send(f"login|alice|{PASSWORD}")
            await expect_error_frame(remote, "tls-required")
            await trio.aclose_forcefully(ours)


async def test_a_login_elsewhere_takes_the_session_over(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        await alice.send("join|#x")
        await alice.expect("join|#x|alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")
        phone = await v2(live)
        await phone.send(f"login|alice|{PASSWORD}")
        await phone.expect("login|alice", "login|bob", "join|#x|alice")
        assert await alice.read_until_closed() == [
            "error|replaced|another connection took this session over"
        ]
        await expect_quiet(bob, phone)  # no exit, no login for bob


async def test_a_message_to_an_offline_account_waits_for_its_login(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db", offline_max=2) as live:
        alice = await registered(live, "alice")
        await alice.send("exit")
        bob = await v2(live)
        await bob.login("bob")
        await bob.send("talk|alice|one")
        await bob.send("talk|Alice|two")
        await bob.send("talk|alice|three")
        await expect_error_frame(bob, "mailbox-full", "alice")
        await bob.send("talk|carol|nobody")
        await expect_error_frame(bob, "no-such-user", "carol")
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice", "login|bob")
        kept = [Msg.parse(line) for line in await back.read_lines(2)]
        assert [(m.sender, m.to, m.text) for m in kept] == [
            ("bob", "alice", "one"),
            ("bob", "alice", "two"),
        ]
        assert kept[0].id < kept[1].id
        await expect_quiet(back)
        # Delivered once: not again at the next login.
        await back.send("exit")
        again = await v2(live)
        await again.send(f"login|alice|{PASSWORD}")
        await again.expect("login|alice", "login|bob")
        await expect_quiet(again)


async def test_history_of_a_room_of_everyone_and_of_a_conversation(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        alice = await registered(live, "alice")
        bob = await v2(live)
        await bob.login("bob")
        await bob.read_line()
        await alice.read_line()
        for who in (alice, bob):
            await who.send("join|#x")
        await alice.read_lines(2)
        await bob.read_lines(2)
        for n in range(5):
            await bob.send(f"talk|#x|{n}")
        await bob.send("talk|*|to all")
        await bob.send("talk|alice|to you")
        await alice.read_lines(7)
        await alice.send("history|#X|latest|2")
        hist = await alice.read_lines(2)
        assert [line.rsplit("|", 1)[1] for line in hist] == ["3", "4"]
        await alice.expect("history|#X|2")
        first = int(hist[0].split("|")[1])
        await alice.send(f"history|#x|before|{first}|10")
        older = await alice.read_lines(3)
        assert [line.rsplit("|", 1)[1] for line in older] == ["0", "1", "2"]
        await alice.expect("history|#x|3")
        await alice.send("history|*|latest|5")
        await alice.read_line()
        await alice.expect("history|*|1")
        await alice.send("history|bob|latest|5")
        line = await alice.read_line()
        assert line.startswith("hist|")
        assert line.endswith("|bob|alice|to you")
        await alice.expect("history|bob|1")
        # The rules: a guest has no conversations kept; rooms one is in.
        await bob.send("history|alice|latest|5")
        await expect_error_frame(bob, "no-history")
        await bob.send("history|#y|latest|5")
        await expect_error_frame(bob, "not-in-room")
        await bob.send("history|#x|latest|501")
        await expect_error_frame(bob, "bad-frame")


async def test_history_needs_a_store_that_keeps_it(tmp_path: Path) -> None:
    async with store_server(tmp_path / "t.db", history=0) as live:
        alice = await v2(live)
        await alice.login("alice")
        await alice.send("history|*|latest|5")
        await expect_error_frame(alice, "no-history")


async def test_a_history_read_that_fails_is_an_error_not_a_lost_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read the store cannot do (a disk error, a file locked too long)
    fails that request: the client is told, and stays connected. (No
    history cache: every page reads the file.)"""
    async with store_server(tmp_path / "t.db", history_cache=0) as live:
        alice = await v2(live)
        await alice.login("alice")
        await alice.send("talk|*|kept")
        store = live.server.store
        assert store is not None

        def broken(*args: object) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store, "_read_in_thread", broken)
        await alice.send("history|*|latest|5")
        await expect_error_frame(alice, "no-history")
        monkeypatch.undo()
        await alice.send("history|*|latest|5")
        assert (await alice.read_line()).startswith("hist|")
        await alice.expect("history|*|1")


async def test_recent_pages_are_answered_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest messages of the conversations used last are in memory
    too (--history-cache): a page of them (latest, before or after an id
    among them) reads nothing, so it is answered even while the file
    cannot be read, up to the newest message; a longer page reads the
    file."""
    async with store_server(tmp_path / "t.db") as live:
        alice = await v2(live)
        await alice.login("alice")
        for i in range(120):
            await alice.send(f"talk|*|m{i}")
        await alice.send("ping|sync")
        await alice.expect("pong|sync")
        store = live.server.store
        assert store is not None
        await store.flush()

        def broken(*args: object) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store, "_read_in_thread", broken)
        await alice.send("talk|*|not written yet")
        await alice.send("history|*|latest|3")
        lines = [await alice.read_line() for _ in range(3)]
        assert [line.rsplit("|", 1)[1] for line in lines] == [
            "m118",
            "m119",
            "not written yet",
        ]
        await alice.expect("history|*|3")
        # And pages before and after an id in memory.
        m118 = lines[0].split("|")[1]
        await alice.send(f"history|*|before|{m118}|2\nhistory|*|after|{m118}|5")
        for text in ("m116", "m117"):
            assert (await alice.read_line()).endswith(f"|{text}")
        await alice.expect("history|*|2")
        for text in ("m119", "not written yet"):
            assert (await alice.read_line()).endswith(f"|{text}")
        await alice.expect("history|*|2")
        await alice.send("history|*|latest|110")  # more than memory holds
        await expect_error_frame(alice, "no-history")
        monkeypatch.undo()
        # Answers keep their order: one read from the file, then one from
        # memory, asked for at once.
        await alice.send("history|*|latest|110\nhistory|*|latest|1")
        for i in range(11, 120):
            assert (await alice.read_line()).endswith(f"|m{i}")
        assert (await alice.read_line()).endswith("|not written yet")
        await alice.expect("history|*|110")
        assert (await alice.read_line()).endswith("|not written yet")
        await alice.expect("history|*|1")


async def test_accounts_history_and_ids_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with store_server(db) as live:
        alice = await registered(live, "alice")
        await alice.send("talk|*|before the restart")
        await alice.send("ping|sync")
        await alice.expect("pong|sync")
    async with store_server(db) as live:
        alice = await v2(live)
        await alice.send("login|alice")
        await expect_error_frame(alice, "account-required")
        await alice.send(f"login|alice|{PASSWORD}")
        await alice.expect("login|alice")
        await alice.send("history|*|latest|1")
        old = Msg.parse("msg" + (await alice.read_line())[4:])
        assert old.text == "before the restart"
        await alice.expect("history|*|1")
        bob = await v2(live)
        await bob.login("bob")
        await bob.expect("login|alice")
        await alice.expect("login|bob")
        await alice.send("talk|bob|after")
        assert Msg.parse(await bob.read_line()).id > old.id


async def test_guesses_sent_at_once_are_throttled_as_one_after_another(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db") as live:
        await registered(live, "alice")
        guessers = [await live.connect() for _ in range(20)]
        async with trio.open_nursery() as nursery:
            for n, guesser in enumerate(guessers):
                nursery.start_soon(guesser.send, f"login|alice|wrong guess {n}")
        codes = [(await g.read_line()).split("|")[1] for g in guessers]
        assert codes.count("wrong-password") == 3
        assert codes.count("rate-limited") == 17


async def test_what_a_session_held_when_it_ended_waits_for_the_next_login(
    tmp_path: Path,
) -> None:
    # Nothing sent to an account is lost because its session ended before
    # it came back: what it held goes to the account's offline messages.
    async with store_server(tmp_path / "t.db", resume_window=1.0) as live:
        bob = await alice_away_and_bob(live)
        await bob.send("talk|alice|sent while you were away")
        await bob.send("talk|*|to everyone")
        with trio.fail_after(5):
            await bob.expect("exit|alice")  # the window passed
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")
        await back.read_lines(2)  # a new session, login|bob
        kept = Msg.parse(await back.read_line())
        assert (kept.sender, kept.to, kept.text) == (
            "bob",
            "alice",
            "sent while you were away",
        )
        assert await back.pong_after("end") == []  # once, and not *'s


async def test_what_a_session_held_beyond_offline_max_is_refused_to_its_sender(
    tmp_path: Path,
) -> None:
    # Accepted while the session waited, but its offline messages have room
    # for two: the sender is told of each of the others, not left to think
    # they arrived.
    async with store_server(
        tmp_path / "t.db", resume_window=1.0, offline_max=2
    ) as live:
        bob = await alice_away_and_bob(live)
        for number in range(5):
            await bob.send(f"talk|alice|held {number}")
        with trio.fail_after(5):  # the window passes
            assert await bob.read_lines(4) == [
                *["error|mailbox-full|alice"] * 3,
                "exit|alice",
            ]
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")
        await back.read_lines(2)  # a new session, login|bob
        kept = [Msg.parse(await back.read_line()).text for _ in range(2)]
        assert kept == ["held 0", "held 1"]
        assert await back.pong_after("end") == []


async def test_a_message_that_overflows_a_waiting_session_is_kept_too(
    tmp_path: Path,
) -> None:
    # The session holds 8 frames; the 9th message ends it (everyone hears
    # alice left), and is kept for the account like the 8 before it and
    # those after: not refused as if alice were no account.
    async with store_server(tmp_path / "t.db", resume_window=60, queue_size=8) as live:
        bob = await alice_away_and_bob(live)
        for number in range(12):
            await bob.send(f"talk|alice|q{number}")
        assert await bob.pong_after("sent") == ["exit|alice"]
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")
        await back.read_lines(2)  # a new session, login|bob
        kept = [Msg.parse(line).text for line in await back.pong_after("end")]
        assert kept == [f"q{number}" for number in range(12)]


class Unread:
    """Account alice on a connection with no buffer that reads nothing
    unless told to; *ended* is set once the server is done with that
    connection."""

    def __init__(self, live: LiveServer, alice: LineClient, ended: trio.Event) -> None:
        self.live = live
        self.alice = alice
        self.ended = ended


def lockstep_client(
    live: LiveServer, nursery: trio.Nursery
) -> tuple[LineClient, trio.Event]:
    """A client on a connection with no buffer (what it does not read, the
    server's writer is still writing), served in *nursery*; the event is
    set once the server is done with the connection."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    ended = trio.Event()

    async def serve() -> None:
        await live.server.serve_connection(theirs, "127.0.0.1")
        ended.set()

    nursery.start_soon(serve)
    return LineClient(ours), ended


@asynccontextmanager
async def unread_alice(db: Path, version: int, **config: Any) -> AsyncIterator[Unread]:
    """A server on *db* with *config*, and alice on it on protocol *version*."""
    async with store_server(db, **config) as live, _unread(live, version) as alice:
        yield alice


@asynccontextmanager
async def _unread(live: LiveServer, version: int) -> AsyncIterator[Unread]:
    first = await live.connect()  # protocol 1: no session to read past
    await first.login("alice")
    await first.send(f"register|{PASSWORD}")
    await first.expect("registered|alice")
    await first.send("exit")
    async with trio.open_nursery() as nursery:
        alice, ended = lockstep_client(live, nursery)
        if version >= 2:
            await say_hello(alice)
        await alice.send(f"login|alice|{PASSWORD}")
        await alice.expect("login|alice")
        if version >= 2 and live.server.config.resume_window:
            await alice.read_line()  # session
        yield Unread(live, alice, ended)
        nursery.cancel_scope.cancel()


async def send_to_alice(live: LiveServer, alice: LineClient, texts: list[str]) -> None:
    """Bob, online, sends *texts* to alice; each is accepted."""
    bob = await live.connect()
    await bob.login("bob")
    await bob.read_line()  # login|alice
    await alice.expect("login|bob")
    for text in texts:
        await bob.send(f"talk|alice|{text}")
    assert await bob.pong_after("routed") == []


def said(lines: list[str]) -> list[str]:
    """The texts of the ``msg`` or ``talk`` frames among *lines*."""
    return [
        line.rsplit("|", 1)[1] if line.startswith("talk|") else Msg.parse(line).text
        for line in lines
        if line.startswith(("msg|", "talk|"))
    ]


def each_arrived(before: list[str], later: list[str], texts: list[str]) -> None:
    """*texts*, in order, arrived *before* a connection ended or *later*
    (at the next login), none lost. The batch a writer was in the middle of
    may come both ways: the server cannot know whether it was read."""
    assert before == texts[: len(before)]
    assert later == texts[len(texts) - len(later) :]
    assert len(before) + len(later) >= len(texts)


async def come_at_next_login(db: Path) -> list[str]:
    """What alice gets at her next login, from a new server on *db*."""
    async with store_server(db) as live:
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")  # (no session: resume is off)
        return said(await back.pong_after("end"))


@pytest.mark.parametrize("version", [1, 2])
async def test_direct_messages_dropped_from_a_backlog_at_shutdown_come_later(
    tmp_path: Path, version: int
) -> None:
    # At a stop, a backlog over 64 KiB is dropped so that the goodbye gets
    # through: an account's direct messages in it are kept for its next
    # login. Every message comes exactly once, before or after the stop;
    # on protocol 1 too, whose deliveries carry no id.
    db = tmp_path / "t.db"
    texts = [f"{number:03d} " + "x" * 1000 for number in range(100)]
    async with unread_alice(db, version, resume_window=60) as unread:
        await send_to_alice(unread.live, unread.alice, texts)
        unread.live.server.shutdown()
        before = await unread.alice.read_until_closed()
    assert before[-1].startswith("error|shutting-down|")
    got = said(before)
    assert len(got) < len(texts)  # some were dropped before the goodbye
    assert got + await come_at_next_login(db) == texts


@pytest.mark.parametrize("version", [1, 2])
async def test_a_backlog_not_read_before_the_close_timeout_comes_later(
    tmp_path: Path, version: int
) -> None:
    # A backlog small enough to be kept for the goodbye, which the client
    # does not read in time: not lost either.
    db = tmp_path / "t.db"
    texts = [f"{number:03d} " + "x" * 1000 for number in range(30)]
    async with unread_alice(db, version, resume_window=60, close_timeout=0.2) as unread:
        await send_to_alice(unread.live, unread.alice, texts)
        unread.live.server.shutdown()
        with trio.fail_after(STEP_TIMEOUT):
            await unread.ended.wait()
        before = said(await unread.alice.read_until_closed())
    each_arrived(before, await come_at_next_login(db), texts)


async def test_an_account_dropped_over_the_queue_budget_gets_its_messages_later(
    tmp_path: Path,
) -> None:
    # --max-queued-bytes drops the largest queue, and the session with it
    # (its memory is what is wanted back): the direct messages it held go
    # to the account's offline messages, as a waiting session's would.
    db = tmp_path / "t.db"
    texts = [f"{number:03d} " + "x" * 1000 for number in range(40)]
    async with unread_alice(db, 2, resume_window=60, max_queued_bytes=20_000) as unread:
        await send_to_alice(unread.live, unread.alice, texts)
        with trio.fail_after(STEP_TIMEOUT):
            await unread.ended.wait()
        before = said(await unread.alice.read_until_closed())
    each_arrived(before, await come_at_next_login(db), texts)


async def test_a_protocol_1_connection_taken_over_writes_what_it_held_first(
    tmp_path: Path,
) -> None:
    # Protocol 1 keeps nothing for a resume: what was queued for the old
    # connection is written to it before error|replaced, not dropped.
    async with store_server(tmp_path / "t.db") as live:
        await (await registered(live, "alice")).send("exit")
        ours, theirs = trio.testing.lockstep_stream_pair()  # no buffer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.server.serve_connection, theirs, "127.0.0.1")
            old = LineClient(ours)  # protocol 1
            await old.send(f"login|alice|{PASSWORD}")
            await old.expect("login|alice")
            bob = await live.connect()
            await bob.login("bob")
            await bob.read_line()  # login|alice
            await old.expect("login|bob")
            for number in range(20):  # the old connection reads none yet
                await bob.send(f"talk|alice|{number}")
            assert await bob.pong_after("routed") == []
            new = await live.connect()
            await new.send(f"login|alice|{PASSWORD}")
            await new.expect("login|alice", "login|bob")
            lines = await old.read_until_closed()
            nursery.cancel_scope.cancel()
        assert lines[:-1] == [f"talk|bob|alice|{number}" for number in range(20)]
        assert lines[-1].startswith("error|replaced|")
        assert await new.pong_after("end") == []


async def test_a_login_that_takes_over_gives_a_new_secret(tmp_path: Path) -> None:
    # Whoever held the old session's secret cannot take the account back
    # without its password; a protocol-1 login that takes over gets none.
    async with store_server(tmp_path / "t.db", resume_window=60) as live:
        first = await v2(live)
        await first.login("alice")
        old = (await first.read_line()).split("|")[1]
        await first.send(f"register|{PASSWORD}")
        await first.expect("registered|alice")
        owner = await v2(live)
        await owner.send(f"login|alice|{PASSWORD}")
        await owner.expect("login|alice")
        new = (await owner.read_line()).split("|")[1]
        assert new != old
        stale = await v2(live)
        await stale.send(f"resume|{old}|0")
        await expect_error_frame(stale, "resume-failed")
        plain = await live.connect()  # no hello: protocol 1
        await plain.send(f"login|alice|{PASSWORD}")
        await plain.expect("login|alice")
        assert await plain.pong_after("q") == []  # no session frame


async def test_a_login_that_takes_over_a_waiting_session_gets_what_it_kept(
    tmp_path: Path,
) -> None:
    async with store_server(tmp_path / "t.db", resume_window=60) as live:
        bob = await alice_away_and_bob(live)
        await bob.send("talk|alice|sent while you were away")
        back = await v2(live)
        await back.send(f"login|alice|{PASSWORD}")
        await back.expect("login|alice")
        await back.read_lines(2)  # a new session, login|bob
        kept = Msg.parse(await back.read_line())
        assert (kept.sender, kept.text) == ("bob", "sent while you were away")


async def test_a_message_to_an_account_deleted_by_the_command_is_refused(
    tmp_path: Path,
) -> None:
    # The server hears of a deletion by `trichat accounts` within about a
    # second; a direct message to the account meanwhile is taken for an
    # offline one, and is then refused, not kept for nobody.
    db = tmp_path / "t.db"
    async with store_server(db) as live:
        await (await registered(live, "carol")).send("exit")
        bob = await live.connect()
        await bob.login("bob")
        deleted = await trio.to_thread.run_sync(
            main, ["accounts", "delete", "carol", "--db", str(db)]
        )
        assert deleted == 0
        await bob.send("talk|carol|are you there?")
        await expect_error_frame(bob, "no-such-user", "carol")
        await bob.send("talk|carol|hello?")
        await expect_error_frame(bob, "no-such-user", "carol")


async def big_room(live: LiveServer, name: str = "writer") -> None:
    """#big holds 100 messages of 3,900 bytes (a page of them is 390 KB)."""
    writer = await v2(live)
    await writer.login(name)
    await writer.send("join|#big")
    await writer.expect(f"join|#big|{name}")
    for number in range(100):
        await writer.send(f"talk|#big|{number} " + "y" * 3900)
    await writer.pong_after("said")


async def test_history_asked_faster_than_it_is_read_waits_for_the_reading(
    tmp_path: Path,
) -> None:
    # Answers do not count against --queue-bytes, but a page is asked for
    # only once the answers not yet read are within it: all come, in order.
    async with store_server(tmp_path / "t.db", rate=0, queue_bytes=65536) as live:
        await big_room(live)
        reader = await v2(live)
        await reader.login("reader")
        await reader.send("join|#big")
        await reader.pong_after("joined")  # writer's login, the joins
        await reader.send_raw(b"history|#big|latest|100\n" * 20)
        for _ in range(20):
            page = await reader.read_lines(101)
            assert page[-1] == "history|#big|100"
            texts = [line.split("|", 5)[5] for line in page[:-1]]
            assert texts == [f"{number} " + "y" * 3900 for number in range(100)]


async def test_a_client_that_asks_for_history_and_reads_none_is_dropped(
    tmp_path: Path,
) -> None:
    # Before, 200 pages asked for and never read took 79 MB of the server.
    async with store_server(
        tmp_path / "t.db", rate=0, stall_timeout=0.2, queue_bytes=65536
    ) as live:
        await big_room(live)
        async with trio.open_nursery() as nursery:
            hog, ended = lockstep_client(live, nursery)
            await say_hello(hog)
            await hog.login("hog")
            await hog.send("join|#big")
            await hog.pong_after("joined")  # writer's login, the joins
            nursery.start_soon(hog.send_raw, b"history|#big|latest|100\n" * 200)
            with trio.fail_after(STEP_TIMEOUT):
                await ended.wait()
            # (Dropped in the middle of a page: the last line is cut.)
            got = await read_until_gone(hog.stream)
            nursery.cancel_scope.cancel()
        assert got.count(b"history|#big|100\n") < 200
