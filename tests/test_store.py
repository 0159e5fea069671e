"""The store: history, offline messages and accounts in an SQLite file,
written by one thread in groups while the event loop goes on.

Every store here lives in pytest's tmp_path (or is ``:memory:``), never in
the user's data directory. Passwords are hashed with cheap parameters
except where the parameters are what is tested (test_passwords.py).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trichat.server.hub import Accepted
from trichat.server.passwords import Hasher
from trichat.server.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AccountExists,
    Direction,
    NoSuchAccount,
    Store,
    StoreClosed,
    StoredMessage,
    StoreError,
    default_path,
)
from trichat.server.store import _chunks as chunks_of_a_commit

# No step of these tests should take anywhere near this long.
STEP = 10.0


def cheap_hasher() -> Hasher:
    return Hasher(memory_kib=8, time_cost=1)


@asynccontextmanager
async def running(path: str | Path, **options: Any) -> AsyncIterator[Store]:
    """A running store on *path*, stopped (cleanly) at the end."""
    store = Store(path, hasher=cheap_hasher(), **options)
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()


def talk(
    sender: str, to: str, first_id: int, *texts: str, time_ms: int = 1000
) -> Accepted:
    """What the hub tells its observers of messages it accepted."""
    return Accepted(sender, to, [text.encode() for text in texts], first_id, time_ms)


def ids(messages: list[StoredMessage]) -> list[int]:
    return [message.id for message in messages]


@contextmanager
def writer_held(path: Path) -> Iterator[None]:
    """Hold the file's write lock from another connection, as a slow disk
    (or another process) would: the store's writer waits for it."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("COMMIT")
    finally:
        other.close()


def congested(store: Store) -> bool:
    return store.congested


def rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def stored_ids(path: Path) -> list[int]:
    """The ids of every message kept in the file (in history), in order:
    what a restart would find, whatever the layout."""
    connection = sqlite3.connect(path)
    try:
        found: list[int] = []
        for (packed,) in connection.execute("SELECT ids FROM chunks"):
            found += struct.unpack(f"<{len(packed) // 8}q", packed)
        return sorted(found)
    finally:
        connection.close()


# -- history ------------------------------------------------------------------


async def test_room_history_in_three_directions(tmp_path: Path) -> None:
    async with running(tmp_path / "t.db") as store:
        for i in range(1, 11):
            store.record(talk("alice", "#Lunch", i, f"text {i}", time_ms=1000 + i))
        await store.flush()
        latest = await store.history("#lunch", "latest", None, 3)
        assert latest == [
            StoredMessage(8, 1008, "alice", "#Lunch", "text 8"),
            StoredMessage(9, 1009, "alice", "#Lunch", "text 9"),
            StoredMessage(10, 1010, "alice", "#Lunch", "text 10"),
        ]
        # A room is found under any spelling that clashes with it.
        assert await store.history("#LUNCH", "latest", None, 3) == latest
        assert ids(await store.history("#lunch", "before", 8, 3)) == [5, 6, 7]
        assert ids(await store.history("#lunch", "before", 3, 5)) == [1, 2]
        assert ids(await store.history("#lunch", "after", 8, 5)) == [9, 10]
        assert ids(await store.history("#lunch", "after", 0, 2)) == [1, 2]
        assert await store.history("#lunch", "after", 10, 5) == []
        assert await store.history("#dinner", "latest", None, 5) == []


async def test_history_shows_what_is_not_written_yet(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path) as store:
        store.record(talk("alice", "#r", 1, "one", "two"))
        await store.flush()
        with writer_held(path):
            # The writer waits: these are in memory only, and shown anyway.
            store.record(talk("bob", "#r", 3, "three"))
            store.record(talk("alice", "#r", 4, "four", "five"))
            assert store.committed_id == 2
            assert ids(await store.history("#r", "latest", None, 10)) == [1, 2, 3, 4, 5]
            assert ids(await store.history("#r", "latest", None, 2)) == [4, 5]
            assert ids(await store.history("#r", "before", 5, 3)) == [2, 3, 4]
            assert ids(await store.history("#r", "after", 1, 3)) == [2, 3, 4]
            assert ids(await store.history("#r", "after", 3, 3)) == [4, 5]
        await store.flush()
        assert store.committed_id == 5
        assert ids(await store.history("#r", "latest", None, 10)) == [1, 2, 3, 4, 5]


async def test_what_is_kept_of_everyone_and_direct_messages(tmp_path: Path) -> None:
    async with running(tmp_path / "t.db") as store:
        await store.register("Alice", "password1")
        await store.register("carol", "password3")
        store.record(talk("bob", "*", 1, "hello all"))
        store.record(talk("bob", "dave", 2, "between guests"))
        store.record(talk("bob", "Alice", 3, "guest to account"))
        store.record(talk("Alice", "bob", 4, "account to guest"))
        store.record(talk("Alice", "carol", 5, "account to account"))
        await store.flush()
        assert ids(await store.history("*", "latest", None, 10)) == [1]
        # Alice's conversation with bob, whoever sent what, under any spelling.
        with_bob = await store.history("BOB", "latest", None, 10, account_key="alice")
        assert [(m.id, m.sender, m.to) for m in with_bob] == [
            (3, "bob", "Alice"),
            (4, "Alice", "bob"),
        ]
        # Kept for each of two accounts.
        assert ids(
            await store.history("carol", "latest", None, 9, account_key="alice")
        ) == [5]
        assert ids(
            await store.history("alice", "latest", None, 9, account_key="carol")
        ) == [5]
        # Nothing between guests; nothing of Alice's for anyone else.
        assert await store.history("dave", "latest", None, 9, account_key="bob") == []
        assert await store.history("bob", "latest", None, 9, account_key="carol") == []
        with pytest.raises(ValueError, match="account"):
            await store.history("bob", "latest", None, 9)
        assert store.last_id == 5


async def test_only_the_newest_are_kept_and_the_rest_deleted(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path, history=3) as store:
        for i in range(1, 11):
            store.record(talk("alice", "#r", i, f"{i}"))
        store.record(talk("alice", "#other", 11, "elsewhere"))
        # Shown at once, written or not.
        assert ids(await store.history("#r", "latest", None, 10)) == [8, 9, 10]
        assert ids(await store.history("#r", "after", 0, 10)) == [8, 9, 10]
        assert ids(await store.history("#r", "before", 9, 10)) == [8]
        await store.flush()
        assert ids(await store.history("#r", "after", 0, 10)) == [8, 9, 10]
        assert ids(await store.history("#r", "before", 10, 10)) == [8, 9]
        # The writer deletes the others in the background.
        with trio.fail_after(STEP):
            while len(stored_ids(path)) > 4:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert stored_ids(path) == [8, 9, 10, 11]


def stored_by_conversation(path: Path) -> dict[str, list[list[int]]]:
    """The ids kept in the file for each conversation, by its key: one list
    per chunk, oldest chunk first."""
    connection = sqlite3.connect(path)
    try:
        found: dict[str, list[list[int]]] = {}
        for key, packed in connection.execute(
            "SELECT key, ids FROM chunks JOIN conversations "
            "ON conversations.id = chunks.conversation ORDER BY last_id"
        ):
            chunk = list(struct.unpack(f"<{len(packed) // 8}q", packed))
            found.setdefault(key, []).append(chunk)
        return found
    finally:
        connection.close()


def pruned(stored: list[list[int]], sent: list[int], keep: int) -> bool:
    """Whether a conversation's chunks (*stored*) are what pruning leaves of
    *sent* when *keep* are kept: every one of the newest *keep*, nothing
    out of order or missing after the oldest one kept, and no chunk that
    holds none of the newest (the chunk that straddles the limit stays
    whole)."""
    kept = [id for chunk in stored for id in chunk]
    newest = sent[-keep:]
    return (
        kept == sent[len(sent) - len(kept) :]
        and len(kept) >= len(newest)
        and all(chunk[-1] >= newest[0] for chunk in stored)
    )


async def test_pruning_keeps_the_newest_of_each_conversation(
    tmp_path: Path,
) -> None:
    """Written in groups of every size, some far larger than what is kept,
    some smaller: each conversation ends with its newest 5 and no chunk
    older than them, and history shows exactly those 5."""
    path = tmp_path / "t.db"
    sent: dict[str, list[int]] = {"#a": [], "#b": [], "*": []}
    next_id = 1
    async with running(path, history=5) as store:
        for group in (1, 3, 17, 2, 40, 1, 1, 9, 300, 4):
            for i in range(group):
                to = ("#a", "#b", "*")[(next_id + i // 3) % 3]
                texts = ["x"] * (1 + next_id % 2)
                store.record(talk("alice", to, next_id, *texts))
                sent[to] += range(next_id, next_id + len(texts))
                next_id += len(texts)
            await store.flush()

        def all_pruned() -> bool:
            stored = stored_by_conversation(path)
            return all(
                pruned(stored.get(to.lower(), []), ids, 5) for to, ids in sent.items()
            )

        with trio.fail_after(STEP):
            while not all_pruned():  # noqa: ASYNC110
                await trio.sleep(0.01)
        for to, sent_to in sent.items():
            assert ids(await store.history(to, "after", 0, 100)) == sent_to[-5:]


def test_both_sides_of_a_conversation_share_chunks_that_never_overlap() -> None:
    """Messages either way between two accounts are packed once for both of
    their conversations; when a conversation is in two groups in one
    commit (an account made or deleted between two of its messages), its
    chunks still hold its messages in order, none overlapping another."""

    def row(conversations: tuple[int, ...], id: int) -> Any:
        return (conversations, talk("alice", "bob", id, "hi", time_ms=1000 + id))

    shared = list(chunks_of_a_commit([row((1, 2), 1), row((1, 2), 2)]))
    assert [chunk[0] for chunk in shared] == [1, 2]
    assert shared[0][1:] == shared[1][1:]
    mixed = [row((1, 2), 1), row((1,), 2), row((1, 2), 3), row((3,), 4)]
    by_conversation: dict[int, list[int]] = {}
    for chunk in chunks_of_a_commit(mixed):
        packed = chunk[4]
        assert isinstance(packed, bytes)
        by_conversation.setdefault(chunk[0], []).extend(
            struct.unpack(f"<{len(packed) // 8}q", packed)
        )
    assert by_conversation == {1: [1, 2, 3], 2: [1, 3], 3: [4]}


async def test_runs_of_texts_are_cut_to_the_size_of_a_chunk(tmp_path: Path) -> None:
    """A run of texts accepted at once is one record; the file still holds
    at most an eighth of --history messages per chunk (cutting the runs
    that straddle one), and history gives each text with its own id, its
    run's sender, recipient and time."""
    path = tmp_path / "t.db"
    async with running(path, history=16) as store:
        store.record(talk("alice", "#r", 1, *"abcdefg", time_ms=5000))
        store.record(talk("bob", "#r", 8, "h", time_ms=6000))
        store.record(talk("alice", "#r", 9, "i", "j", "k", time_ms=7000))
        await store.flush()
        shown = await store.history("#r", "latest", None, 20)
    assert [(m.id, m.sender, m.text, m.time_ms) for m in shown] == [
        (i + 1, sender, text, time_ms)
        for i, (sender, text, time_ms) in enumerate(
            [("alice", text, 5000) for text in "abcdefg"]
            + [("bob", "h", 6000)]
            + [("alice", text, 7000) for text in "ijk"]
        )
    ]
    assert all(m.to == "#r" for m in shown)
    assert stored_by_conversation(path)["#r"] == [
        [1, 2],
        [3, 4],
        [5, 6],
        [7, 8],
        [9, 10],
        [11],
    ]


async def test_a_long_burst_to_one_room_pages_whole(tmp_path: Path) -> None:
    """One group of 1,200 messages to a room (and others between them):
    pages of 100 going back and forth give each of the newest 1,000 once."""
    path = tmp_path / "t.db"
    async with running(path, history=1000) as store:
        expected: list[int] = []
        for i in range(1, 1601):
            if i % 4:
                store.record(talk("alice", "#r", i, "x"))
                expected.append(i)
            else:
                store.record(talk("alice", "#s", i, "y"))
        await store.flush()
        newest = expected[-1000:]
        assert await _walk(store, 100) == (newest, newest)
        assert await _walk(store, 333) == (newest, newest)
        with trio.fail_after(STEP):
            while not pruned(stored_by_conversation(path)["#r"], expected, 1000):  # noqa: ASYNC110
                await trio.sleep(0.01)
        # Chunks of at most an eighth of what is kept: the one left whole
        # holds fewer than 125 more.
        assert sum(map(len, stored_by_conversation(path)["#r"])) < 1000 + 125
        assert await _walk(store, 100) == (newest, newest)


async def test_what_is_recorded_before_the_start_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path) as store:
        await store.register("bob", "password2")
        store.record(talk("alice", "#r", 1, "first"))
    store = Store(path, hasher=cheap_hasher())
    # As a hub may, before the store has started.
    store.record(talk("alice", "#r", 2, "early", "bird"))
    assert store.record_offline(talk("alice", "bob", 4, "psst"), "bob")
    assert store.last_id == 4
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert store.last_id == 4
        assert [m.text for m in await store.history("#r", "latest", None, 9)] == [
            "first",
            "early",
            "bird",
        ]
        assert ids(await store.offline("bob")) == [4]
        await store.flush()
        assert store.committed_id == 4
        nursery.cancel_scope.cancel()


async def test_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    """A file made by the first schema (a row per message) keeps its
    history, ids and accounts."""
    path = tmp_path / "t.db"
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in str(MIGRATIONS[0]).split(";"):
        if statement.strip():
            connection.execute(statement)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (1)")
    connection.execute("INSERT INTO meta VALUES ('last_id', 12)")
    connection.execute("INSERT INTO conversations VALUES (1, '#r'), (2, '*')")
    connection.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
        [(1, i, 1000 + i, "alice", "#R", f"text {i}".encode()) for i in (1, 3, 5)]
        + [(2, 4, 1004, "bob", "*", "é".encode())],
    )
    connection.close()
    async with running(path) as store:
        assert store.last_id == 12
        assert await store.history("#r", "latest", None, 9) == [
            StoredMessage(i, 1000 + i, "alice", "#R", f"text {i}") for i in (1, 3, 5)
        ]
        assert await store.history("*", "latest", None, 9) == [
            StoredMessage(4, 1004, "bob", "*", "é")
        ]
        store.record(talk("alice", "#r", 13, "new"))
        assert ids(await store.history("#r", "before", 13, 2)) == [3, 5]
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "SELECT name FROM sqlite_master WHERE name = 'messages'") == []
    assert stored_ids(path) == [1, 3, 4, 5, 13]


async def test_history_zero_keeps_no_message_but_the_last_id(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path, history=0) as store:
        store.record(talk("alice", "#r", 41, "one", "two"))
        assert await store.history("#r", "latest", None, 10) == []
        await store.flush()
    assert stored_ids(path) == []
    async with running(path, history=0) as store:
        assert store.last_id == 42


def file_last_id(path: Path) -> int:
    """The last id the file holds (what a start after a crash goes on from)."""
    ((value,),) = rows(path, "SELECT value FROM meta WHERE key = 'last_id'")
    assert isinstance(value, int)
    return value


async def test_the_file_covers_every_id_given_out_while_it_runs(
    tmp_path: Path,
) -> None:
    # Messages that are not kept (between guests here) cost no write: the
    # file holds a reservation above the ids given out, renewed as they
    # come near it; a clean stop then writes the last one exactly.
    path = tmp_path / "t.db"
    async with running(path) as store:
        covered = file_last_id(path)
        assert covered > store.last_id
        store.record(talk("bob", "dave", 1, "not kept"))
        await store.flush()
        assert file_last_id(path) == covered  # nothing written for it
        far = covered - 10  # near the end of the reservation
        store.record(talk("bob", "dave", far, "not kept either"))
        await store.flush()
        assert file_last_id(path) > far + 1000
    assert file_last_id(path) == far


async def test_a_restart_keeps_history_ids_and_accounts(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path) as store:
        assert store.last_id == 0
        await store.register("alice", "password1")
        store.record(talk("bob", "#r", 100, "before", "the restart"))
        store.record(talk("bob", "alice", 102, "psst"))
        # Not kept (between guests), but its id counts.
        store.record(talk("bob", "dave", 103, "hi"))
    async with running(path) as store:
        assert store.last_id == store.committed_id == 103
        assert store.is_account("alice")
        assert await store.verify("alice", "password1")
        history = await store.history("#r", "latest", None, 10)
        assert [m.text for m in history] == ["before", "the restart"]
        assert ids(
            await store.history("bob", "latest", None, 5, account_key="alice")
        ) == [102]
        store.record(talk("bob", "#r", 104, "after"))
        assert ids(await store.history("#r", "latest", None, 10)) == [100, 101, 104]


async def test_a_restart_with_a_smaller_history_deletes_the_oldest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    async with running(path, history=10) as store:
        for i in range(1, 9):
            store.record(talk("alice", "#r", i, "x"))
    async with running(path, history=2) as store:
        assert ids(await store.history("#r", "latest", None, 10)) == [7, 8]
        with trio.fail_after(STEP):
            while len(stored_ids(path)) > 2:  # noqa: ASYNC110
                await trio.sleep(0.01)


# -- offline messages ---------------------------------------------------------


@pytest.mark.parametrize("committed", [False, True])
async def test_offline_messages_recorded_while_they_are_read_are_read_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    # A login reads its offline messages, then goes online at once: those
    # recorded while the read ran (messages to it as it logs in) must be in
    # what the read returns, or they wait for the login after; however
    # many come, one at every read of the file.
    async with running(tmp_path / "t.db") as store:
        await store.register("bob", "password2")
        assert store.record_offline(talk("alice", "bob", 1, "before"), "bob")
        read = store._read
        arrivals = iter(talk("alice", "bob", n, f"during {n}") for n in range(2, 40))
        recorded = [(1, "before")]

        async def read_while_one_arrives(*args: Any, **kwargs: Any) -> Any:
            arrival = next(arrivals, None)
            if arrival is not None:
                assert store.record_offline(arrival, "bob")
                recorded.append((arrival.first_id, arrival.texts[0].decode()))
                if committed:
                    await store.flush()
            return await read(*args, **kwargs)

        monkeypatch.setattr(store, "_read", read_while_one_arrives)
        kept = await store.offline("bob")
        assert [(m.id, m.text) for m in kept] == recorded
        assert len(recorded) > 1


async def test_offline_messages_in_order_until_delivered(tmp_path: Path) -> None:
    async with running(tmp_path / "t.db", offline_max=4) as store:
        await store.register("Bob", "password2")
        assert store.record_offline(talk("alice", "Bob", 1, "one"), "bob")
        assert store.record_offline(talk("carol", "Bob", 2, "two", "three"), "bob")
        waiting = await store.offline("bob")
        assert [(m.id, m.sender, m.text) for m in waiting] == [
            (1, "alice", "one"),
            (2, "carol", "two"),
            (3, "carol", "three"),
        ]
        # Room for one more, not for two.
        assert not store.record_offline(talk("alice", "Bob", 4, "four", "five"), "bob")
        assert store.record_offline(talk("alice", "Bob", 6, "six"), "bob")
        assert not store.record_offline(talk("alice", "Bob", 7, "seven"), "bob")
        await store.flush()
        assert ids(await store.offline("bob")) == [1, 2, 3, 6]
        # They are in Bob's history too (the refused ones are not).
        assert ids(
            await store.history("alice", "latest", None, 9, account_key="bob")
        ) == [
            1,
            6,
        ]
        store.offline_delivered("bob", 3)
        # Gone at once for a second login, written or not.
        assert ids(await store.offline("bob")) == [6]
        await store.flush()
        assert ids(await store.offline("bob")) == [6]
        assert store.record_offline(talk("alice", "Bob", 8, "eight"), "bob")
        assert store.record_offline(talk("alice", "Bob", 9, "nine", "ten"), "bob")
        assert not store.record_offline(talk("alice", "Bob", 11, "eleven"), "bob")
        assert await store.offline("alice") == []


async def test_offline_messages_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path, offline_max=3) as store:
        await store.register("bob", "password2")
        assert store.record_offline(talk("alice", "bob", 1, "one", "two"), "bob")
        assert store.record_offline(talk("alice", "bob", 3, "three"), "bob")
    async with running(path, offline_max=3) as store:
        assert ids(await store.offline("bob")) == [1, 2, 3]
        assert not store.record_offline(talk("alice", "bob", 4, "four"), "bob")
        store.offline_delivered("bob", 3)
    async with running(path, offline_max=3) as store:
        assert await store.offline("bob") == []
        assert store.record_offline(talk("alice", "bob", 5, "five"), "bob")


# -- accounts -----------------------------------------------------------------


async def test_accounts_register_verify_change_delete(tmp_path: Path) -> None:
    async with running(tmp_path / "t.db") as store:
        assert not store.is_account("alice")
        account = await store.register("Alice", "password1")
        assert (account.name, account.key) == ("Alice", "alice")
        assert "password1" not in repr(account)
        assert account.password_hash not in repr(account)
        assert store.is_account("alice")
        with pytest.raises(AccountExists):
            await store.register("ALICE", "password9")
        assert await store.verify("alice", "password1")
        assert not await store.verify("alice", "password2")
        assert not await store.verify("nobody", "password1")
        await store.set_password("alice", "password2")
        assert await store.verify("Alice", "password2")
        assert not await store.verify("Alice", "password1")
        await store.register("bob", "password3")
        assert await store.accounts() == ["Alice", "bob"]
        stored = await store.account("alice")
        assert stored is not None
        assert stored.name == "Alice"
        assert stored.password_hash.startswith("$argon2id$")

        store.record(talk("Alice", "carol", 1, "mine"))
        assert store.record_offline(talk("carol", "Alice", 2, "for me"), "alice")
        await store.delete_account("alice")
        assert not store.is_account("alice")
        assert await store.account("alice") is None
        assert await store.accounts() == ["bob"]
        assert await store.offline("alice") == []
        assert (
            await store.history("carol", "latest", None, 5, account_key="alice") == []
        )
        with pytest.raises(NoSuchAccount):
            await store.delete_account("alice")
        with pytest.raises(NoSuchAccount):
            await store.set_password("alice", "password4")
        # The name is free again, with no past.
        await store.register("alice", "password5")
        assert await store.offline("alice") == []
        assert (
            await store.history("carol", "latest", None, 5, account_key="alice") == []
        )


async def test_a_login_rehashes_a_password_hashed_with_other_parameters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    async with running(path) as store:
        await store.register("alice", "password1")
    store = Store(path, hasher=Hasher(memory_kib=16, time_cost=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        before = await store.account("alice")
        assert before is not None
        assert "m=8," in before.password_hash
        assert not await store.verify("alice", "wrong password")
        assert await store.verify("alice", "password1")
        await store.flush()
        after = await store.account("alice")
        assert after is not None
        assert "m=16," in after.password_hash
        assert await store.verify("alice", "password1")
        nursery.cancel_scope.cancel()


# -- the writer: backpressure, stopping, crashing -----------------------------


async def test_a_slow_writer_congests_the_store_but_never_blocks_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    async with running(path, max_backlog=100) as store:
        await store.flush()
        with writer_held(path):
            for i in range(1, 51):
                store.record(talk("alice", "#r", i, "x"))
            assert store.backlog == 50
            assert not congested(store)
            store.record(talk("alice", "#r", 51, "x"))
            assert congested(store)
            # Others go on meanwhile: the loop is not blocked...
            await trio.testing.wait_all_tasks_blocked()
            # ... and a sender that waits gives up when nothing moves.
            with trio.fail_after(STEP):
                await store.make_room(0.05)
            assert congested(store)
            # Reads go on too, from what is in memory.
            assert len(await store.history("#r", "latest", None, 100)) == 51
            for i in range(52, 201):
                store.record(talk("alice", "#r", i, "x"))  # never refused
        with trio.fail_after(STEP):
            await store.make_room(STEP)
        assert not store.congested
        await store.flush()
        assert store.backlog == 0
        assert store.committed_id == 200
    assert stored_ids(path) == list(range(1, 201))


async def test_a_clean_stop_writes_everything_recorded(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with running(path) as store:
        await store.register("bob", "password2")
        for i in range(1, 2001):
            store.record(talk("alice", f"#room{i % 7}", i, f"text {i}"))
        assert store.record_offline(talk("alice", "bob", 2001, "later"), "bob")
        # Stopped at once, with (nearly) all of it still queued.
    # 2000 to rooms, and the offline one in bob's history.
    assert stored_ids(path) == list(range(1, 2002))
    assert rows(path, "SELECT id FROM offline") == [(2001,)]
    with pytest.raises(StoreClosed):
        await store.history("#room1", "latest", None, 1)


CHILD = """
    import sys
    import trio
    from trichat.server.hub import Accepted
    from trichat.server.store import Store

    async def main():
        store = Store(sys.argv[1], history=10**9)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            next_id, told = 1, 0
            # Bounded: the parent reads until a few groups are committed,
            # and a child that never gets there ends (EOF for the parent).
            with trio.move_on_after(60):
                while True:
                    for _ in range(50):
                        store.record(Accepted("alice", "#r", [b"x"], next_id, 0))
                        next_id += 1
                    # As a sender would: wait for a writer that is behind,
                    # so memory stays bounded, and give its thread a turn.
                    if store.congested:
                        await store.make_room(1.0)
                    await trio.sleep(0.001)
                    if store.committed_id != told:
                        told = store.committed_id
                        print(told, next_id - 1, flush=True)
            sys.exit(1)

    trio.run(main)
"""


def test_kill_9_loses_at_most_the_last_commit_group(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    with subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            committed = given = 0
            while committed < 5000:  # written in several groups by now
                line = child.stdout.readline()
                assert line, "the child ended"
                committed, given = map(int, line.split())
        finally:
            child.kill()  # SIGKILL: no clean stop
            child.wait(STEP)
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    found = stored_ids(path)
    # Every group the child saw committed is there, and nothing in between
    # is missing: groups are whole or absent.
    high = found[-1]
    assert high >= committed
    assert found == list(range(1, high + 1))

    async def reopen() -> None:
        async with running(path, history=10**9) as store:
            # Ids go on above every id given out, written or not (the file
            # holds a reservation), not from the last one written.
            assert store.last_id >= given >= high
            assert ids(await store.history("#r", "latest", None, 1)) == [high]

    trio.run(reopen)


# -- the file -----------------------------------------------------------------


async def test_a_memory_store_keeps_nothing() -> None:
    async with running(":memory:") as store:
        store.record(talk("alice", "#r", 1, "x"))
        await store.flush()
        assert ids(await store.history("#r", "latest", None, 1)) == [1]
        assert store._file is not None
        file = trio.Path(store._file)
        assert await file.exists()
    assert not await file.exists()
    async with running(":memory:") as store:
        assert store.last_id == 0


async def test_the_file_has_a_schema_version_and_a_newer_one_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "dir" / "t.db"
    async with running(path):
        pass
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert path.stat().st_mode & 0o777 == 0o600
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="newer"):
        await Store(path).run()


def test_the_default_file_is_in_the_users_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "trichat" / "trichat.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    assert default_path() == tmp_path / ".local" / "share" / "trichat" / "trichat.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_path() == tmp_path / ".local" / "share" / "trichat" / "trichat.db"


async def test_a_store_not_running_refuses_reads_and_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db", hasher=cheap_hasher())
    with pytest.raises(StoreClosed):
        await store.history("#r", "latest", None, 5)
    with pytest.raises(StoreClosed):
        await store.flush()
    with pytest.raises(StoreClosed):
        await store.register("alice", "password1")
    assert not store.is_account("alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with pytest.raises(StoreError, match="once"):
            await nursery.start(store.run)
        nursery.cancel_scope.cancel()


# -- paging -------------------------------------------------------------------


async def _walk(store: Store, page: int) -> tuple[list[int], list[int]]:
    """The ids of #r read backwards from the latest page and forwards from
    the oldest, a page at a time."""
    backwards = ids(await store.history("#r", "latest", None, page))
    while True:
        if not backwards:
            break
        older = ids(await store.history("#r", "before", backwards[0], page))
        backwards[:0] = older
        if len(older) < page:
            break
    forwards: list[int] = []
    while True:
        newer = ids(
            await store.history("#r", "after", forwards[-1] if forwards else 0, page)
        )
        forwards += newer
        if len(newer) < page:
            break
    return backwards, forwards


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    written=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), max_size=12),
    waiting=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), max_size=12),
    kept=st.integers(1, 30),
    page=st.integers(1, 7),
)
def test_pages_before_and_after_tile_a_conversation(
    written: list[tuple[int, int]],
    waiting: list[tuple[int, int]],
    kept: int,
    page: int,
    tmp_path: Path,
) -> None:
    """Messages to #r come in runs of 1-4 texts with others' ids between
    them; some are written, some wait for a writer held up. Pages in
    either direction give the newest *kept*, each once, in order."""

    async def check() -> None:
        path = tmp_path / f"paging-{os.getpid()}-{id(written)}.db"
        expected: list[int] = []
        async with running(path, history=kept) as store:
            next_id = 1

            def record(runs: list[tuple[int, int]]) -> None:
                nonlocal next_id
                for texts, others in runs:
                    store.record(talk("a", "#r", next_id, *["x"] * texts))
                    expected.extend(range(next_id, next_id + texts))
                    next_id += texts
                    if others:
                        store.record(talk("a", "#s", next_id, *["y"] * others))
                        next_id += others

            record(written)
            await store.flush()
            with writer_held(path):
                record(waiting)
                newest = expected[-kept:]
                backwards, forwards = await _walk(store, page)
                assert backwards == forwards == newest
                latest = ids(await store.history("#r", "latest", None, page))
                assert latest == newest[-page:]
            await store.flush()
            assert await _walk(store, page) == (newest, newest)
        path.unlink()

    trio.run(check)


# -- the newest messages, in memory --------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("talk"), st.integers(0, 2), st.integers(1, 60)),
            st.tuples(st.just("latest"), st.integers(0, 2), st.integers(1, 130)),
            st.tuples(st.just("before"), st.integers(0, 2), st.integers(1, 130)),
            st.tuples(st.just("after"), st.integers(0, 2), st.integers(1, 130)),
            st.tuples(st.just("flush"), st.just(0), st.just(0)),
            st.tuples(st.just("restart"), st.just(0), st.just(0)),
            st.tuples(st.just("held"), st.integers(0, 2), st.integers(1, 40)),
        ),
        max_size=25,
    ),
    kept=st.sampled_from([3, 60, 150]),
    cache=st.sampled_from([0, 3_000, 30_000, 32 << 20]),
)
# More than a tail's 100 in the file, asked for after a commit and after a
# restart: the tail alone cannot answer.
@example(
    steps=[("talk", 0, 70), ("talk", 0, 50), ("flush", 0, 0), ("latest", 0, 130)],
    kept=150,
    cache=32 << 20,
)
@example(
    steps=[("talk", 0, 120), ("restart", 0, 0), ("latest", 0, 110)],
    kept=150,
    cache=32 << 20,
)
# A page the messages waiting for the writer fill, of a room memory does
# not hold (30 messages are over a 3,000-byte budget).
@example(
    steps=[("talk", 0, 30), ("flush", 0, 0), ("talk", 0, 2), ("latest", 0, 2)],
    kept=150,
    cache=3_000,
)
# Pages before and after an id older than memory holds (ids 21-120 are
# in memory; the anchors are 36 and 14).
@example(
    steps=[("talk", 0, 120), ("flush", 0, 0), ("before", 0, 30), ("after", 0, 32)],
    kept=150,
    cache=32 << 20,
)
def test_pages_are_right_whatever_memory_holds(
    steps: list[tuple[str, int, int]], kept: int, cache: int, tmp_path: Path
) -> None:
    """Runs of messages to three rooms, pages of them (latest, before and
    after an id), commits and restarts, in any order: whether a page comes
    from the tails in memory (each of the newest 100, *cache* bytes of
    them), from the file, or from both and what waits for the writer, it
    is the messages asked for of the newest *kept*, each once, in order;
    and ``history_now`` answers the same or not at all."""
    rooms = ["#a", "#b", "#c"]

    async def check() -> None:
        path = tmp_path / f"tails-{os.getpid()}-{id(steps)}.db"
        sent: dict[str, list[int]] = {room: [] for room in rooms}
        next_id = 1
        step = 0

        def say(room: str, texts: int) -> None:
            nonlocal next_id
            store.record(talk("a", room, next_id, *["x"] * texts))
            sent[room] += range(next_id, next_id + texts)
            next_id += texts

        async def ask(store: Store, direction: Direction, room: str, n: int) -> None:
            shown = sent[room][-kept:]
            # Anchored on one of the room's ids, or off its ends.
            ids_of = [0, *sent[room], next_id]
            edge = ids_of[(n * 7919) % len(ids_of)]
            anchor: int | None = edge
            if direction == "latest":
                anchor, expected = None, shown[-n:]
            elif direction == "before":
                expected = [i for i in shown if i < edge][-n:]
            else:
                expected = [i for i in shown if i > edge][:n]
            now = store.history_now(room, direction, anchor, n)
            assert now is None or ids(now) == expected
            assert ids(await store.history(room, direction, anchor, n)) == expected

        while step < len(steps):
            async with running(path, history=kept, history_cache=cache) as store:
                next_id = max(next_id, store.last_id + 1)
                for what, room_index, n in steps[step:]:
                    step += 1
                    room = rooms[room_index]
                    if what == "talk":
                        say(room, n)
                    elif what == "flush":
                        await store.flush()
                    elif what == "restart":
                        break
                    elif what == "held":
                        # Runs waiting for a writer held up, pages meanwhile.
                        with writer_held(path):
                            say(room, n)
                            for direction in ("latest", "before", "after"):
                                await ask(store, direction, room, n)
                    else:
                        await ask(store, cast(Direction, what), room, n)
        path.unlink(missing_ok=True)

    trio.run(check)


async def read_across_a_commit(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    page: Callable[[], Awaitable[list[StoredMessage]]],
    commit: Accepted,
) -> list[StoredMessage]:
    """*page*, read from the file; *commit* recorded and committed after the
    read and before its result comes back (the read did not see it)."""
    reading, release = threading.Event(), threading.Event()
    read_from_file = store._read_in_thread

    def slow_read(*args: Any) -> Any:
        found = read_from_file(*args)
        reading.set()
        release.wait(STEP)
        return found

    monkeypatch.setattr(store, "_read_in_thread", slow_read)
    found: list[StoredMessage] = []
    async with trio.open_nursery() as nursery:

        async def ask() -> None:
            found.extend(await page())

        nursery.start_soon(ask)
        await trio.to_thread.run_sync(reading.wait, STEP)
        store.record(commit)
        await store.flush()
        release.set()
    monkeypatch.undo()
    return found


async def test_a_page_read_while_its_conversation_gets_a_commit_leaves_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of a conversation memory does not hold is read from the file,
    and kept in memory for the next, unless a commit added to it while the
    read ran (the read may have missed that): the next page still has
    every message."""
    # Memory (about 1,000 bytes a room and 370 a message, and its text)
    # for one of the two rooms, not both.
    async with running(tmp_path / "t.db", history_cache=2500) as store:
        store.record(talk("a", "#r", 1, "one", "two"))
        store.record(talk("a", "#q", 3, "x" * 400))  # memory holds #q only
        await store.flush()
        page = await read_across_a_commit(
            store,
            monkeypatch,
            lambda: store.history("#r", "latest", None, 10),
            talk("a", "#r", 4, "three"),
        )
        assert ids(page) == [1, 2]  # asked for before 4 was said
        assert ids(await store.history("#r", "latest", None, 10)) == [1, 2, 4]
        assert store.history_now("#r", "latest", None, 10) is not None
        assert ids(await store.history("#r", "latest", None, 10)) == [1, 2, 4]


async def test_the_messages_kept_in_memory_stay_within_their_budget(
    tmp_path: Path,
) -> None:
    """Busy rooms, some of them read, short texts and long: the memory the
    newest messages take stays within --history-cache, before and after a
    restart (which loads those of the rooms written to last), and pages
    are right whether memory or the file answers them."""
    budget = 150_000  # a few rooms' worth of 100 short messages
    path = tmp_path / "t.db"
    next_id = 1
    async with running(path, history_cache=budget) as store:
        for turn in range(30):
            for room in range(20):
                text = "x" * (4000 if room % 3 == 0 else 60)
                store.record(talk("a", f"#r{room}", next_id, *[text] * 7))
                next_id += 7
            await store.flush()
            page = await store.history(f"#r{turn % 20}", "latest", None, 100)
            assert ids(page)[-1] == next_id - 7 * (20 - turn % 20) + 6
            # (A room of long texts alone is over budget: it is not kept.)
            assert store.cached_bytes <= budget
        await store.history("#r1", "latest", None, 100)
        assert store.history_now("#r1", "latest", None, 100) is not None
        assert 0 < store.cached_bytes <= budget
    async with running(path, history_cache=budget) as store:
        assert 0 < store.cached_bytes <= budget
        # The room written to last is in memory.
        assert store.history_now("#r19", "latest", None, 5) is not None
        for room in range(20):
            page = await store.history(f"#r{room}", "latest", None, 100)
            assert len(page) == 100
            assert ids(page)[-1] == next_id - 7 * (20 - room) + 6
            assert store.cached_bytes <= budget


async def test_a_long_page_read_while_a_commit_lands_keeps_memory_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page longer than memory holds is read from the file; a commit
    that lands meanwhile goes to the conversation's tail in memory, and
    the read does not replace it (it did not see that commit)."""
    async with running(tmp_path / "t.db") as store:
        store.record(talk("a", "#r", 1, *["x"] * 150))
        await store.flush()
        page = await read_across_a_commit(
            store,
            monkeypatch,
            lambda: store.history("#r", "latest", None, 200),
            talk("a", "#r", 151, "new"),
        )
        assert len(page) == 150
        now = store.history_now("#r", "latest", None, 5)
        assert now is not None
        assert ids(now) == [147, 148, 149, 150, 151]
        store.record(talk("a", "#r", 152, "newer"))
        await store.flush()
        assert ids(await store.history("#r", "latest", None, 5)) == [
            148,
            149,
            150,
            151,
            152,
        ]


async def test_a_commit_a_read_saw_before_the_store_was_told_is_kept_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer tells the event loop of a commit after it is in the file:
    a page read in between (of a conversation memory does not hold) may see
    it. What the page leaves in memory holds each message once."""
    async with running(tmp_path / "t.db", history_cache=2500) as store:
        store.record(talk("a", "#r", 1, "one", "two"))
        store.record(talk("a", "#q", 3, "x" * 400))  # memory holds #q only
        await store.flush()
        assert store.history_now("#r", "latest", None, 10) is None
        go, told = threading.Event(), threading.Event()
        held: list[tuple[Any, ...]] = []
        read_from_file, tell = store._read_in_thread, store._tell

        def late_read(*args: Any) -> Any:
            go.wait(STEP)
            return read_from_file(*args)

        def tell_late(function: Any, *args: Any) -> None:
            if function == store._committed and not held:
                held.append(args)  # as if the writer were held up here
                told.set()
                return
            tell(function, *args)

        monkeypatch.setattr(store, "_read_in_thread", late_read)
        monkeypatch.setattr(store, "_tell", tell_late)
        pages: list[list[int]] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                pages.append(ids(await store.history("#r", "latest", None, 10)))

            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()  # asked: nothing waits
            store.record(talk("a", "#r", 4, "three"))
            await trio.to_thread.run_sync(told.wait, STEP)  # in the file
            go.set()  # the read can see 4
        store._committed(*held[0])  # and only now is the store told
        monkeypatch.undo()
        assert pages == [[1, 2]]
        assert ids(await store.history("#r", "latest", None, 10)) == [1, 2, 4]
        now = store.history_now("#r", "latest", None, 10)
        assert now is not None
        assert ids(now) == [1, 2, 4]


async def test_a_damaged_file_stops_the_store_with_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock or a full disk is waited out; anything else SQLite says of a
    # write (a damaged file) stops the store, and so the server, with a
    # StoreError that `trichat serve` says in one line, not a traceback.
    def damaged(self: object, batch: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr("trichat.server.store._Writer._commit", damaged)
    store = Store(tmp_path / "t.db", hasher=cheap_hasher())
    with (
        trio.fail_after(STEP),
        pytest.RaisesGroup(
            pytest.RaisesExc(StoreError, match="disk image is malformed"),
            flatten_subgroups=True,
        ),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.record(talk("alice", "*", 1, "hi"))
            await store.flush()


async def test_stop_now_leaves_what_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file locked by another process is waited out, within stop_timeout
    # at a stop; a second Ctrl-C (stop_now) does not wait for it.
    def locked(self: object, batch: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    store = Store(tmp_path / "t.db", hasher=cheap_hasher(), stop_timeout=10 * STEP)
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            monkeypatch.setattr("trichat.server.store._Writer._commit", locked)
            store.record(talk("alice", "*", 1, "never written"))
            store.stop_now()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("committed", [False, True])
async def test_offline_messages_come_in_id_order_whatever_order_they_were_kept(
    tmp_path: Path, committed: bool
) -> None:
    # What a closing connection did not write is kept after what was sent
    # meanwhile, with its older ids: read in id order, and once delivered
    # up to the newest, none comes again.
    async with running(tmp_path / "t.db") as store:
        await store.register("bob", "password2")
        assert store.record_offline(talk("alice", "bob", 100, "later"), "bob")
        if committed:
            await store.flush()
        assert store.record_offline(
            talk("alice", "bob", 50, "left unwritten"), "bob", history=False
        )
        kept = await store.offline("bob")
        assert [(m.id, m.text) for m in kept] == [
            (50, "left unwritten"),
            (100, "later"),
        ]
        store.offline_delivered("bob", kept[-1].id)
        assert await store.offline("bob") == []
