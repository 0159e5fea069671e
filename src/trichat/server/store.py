"""The server's memory: accounts, offline messages and history, in SQLite.

One file (``--db PATH``; ``default_path()`` is the one in the user's data
directory; ``:memory:`` keeps nothing), in WAL mode, with a schema version
and migrations (``MIGRATIONS``) from the first release on. In brief::

    store = Store(path, history=1000, offline_max=1000)
    await nursery.start(store.run)    # then store.last_id: ids go on above it
    hub.observe(store.record)         # every accepted message; never blocks
    store.congested                   # as a Mailbox: senders then wait for
    await store.make_room(stall_timeout)  # ... the writer to catch up
    store.is_account(name_key(name))  # in memory
    store.record_offline(accepted, key)   # False: mailbox-full (not recorded)
    await store.offline(key)          # at login, then:
    store.offline_delivered(key, last_id_delivered)
    await store.history(target, "latest" | "before" | "after", anchor_id, n,
                        account_key=key)  # key: for a NAME target
    store.history_now(target, ..., account_key=key)  # from memory, or None
    await store.register(name, password)  # AccountExists
    await store.verify(name, password)    # bool; rehashes if need be
    await store.set_password(name, password)  # NoSuchAccount
    await store.delete_account(name)      # NoSuchAccount
    await store.accounts(); await store.account(key)
    await store.flush()               # everything recorded so far is written

The event loop never waits for the disk:

- ``Store.run`` (in the server's nursery) opens the file in a worker
  thread, loads what must be known at once (``last_id``, the account
  names, how many offline messages each account has), reports started,
  then runs the **writer**: one thread, the only one that writes, inside a
  task ``run`` owns (``trio.to_thread.run_sync``). It takes everything that
  arrived while it was committing and commits it as one transaction
  (group commit; two commits start _COMMIT_EVERY apart at least), then
  prunes some conversations, and so on until ``run`` is cancelled: then it
  writes everything recorded so far and returns. That
  final write is bounded by *stop_timeout* (10 s by default), enforced by
  the writer itself; the task waiting for it cannot be cancelled sooner
  (a thread cannot be interrupted), which shields it.
- ``record`` (a hub observer) and ``record_offline`` are synchronous and
  never block: they add the message's rows (one per conversation that
  keeps it) to a batch, which a task of ``run`` hands to the writer once
  per pass of the scheduler. The queue is never
  cut short (the message was delivered already); its length is bounded
  by the server instead: ``congested`` is True while more than half of
  *max_backlog* messages (or *max_backlog_bytes* bytes of text) wait, and
  senders then wait for ``make_room`` as they do for a congested
  recipient.
- Reads (``history``, ``offline``, ``account``, ``accounts``) run in
  worker threads behind a ``trio.CapacityLimiter``, each on a read
  connection of its own. What is recorded but not yet committed is added
  to what they read, so a message is in history from the moment it is
  recorded. The newest messages of the conversations used last are in
  memory too (``Recent``, about *history_cache* bytes of them): a
  page within them reads nothing (``history_now``).
- Account changes (``register``, ``set_password``, ``delete_account``) go
  through the writer too, and return once committed; password hashing
  happens in the ``Hasher``'s own threads (``passwords.py``).

What is kept, per conversation: messages to a room (the conversation's key
is the room's clash key, ``name_key("#Lunch")``), to ``*``, and direct
messages where the sender or the recipient is an account (kept in that
account's conversation with the other name: both accounts' conversations,
if both are, hold the same chunks).
Each conversation keeps its *history* newest messages (0: none); older
ones are deleted in the background, in the writer, up to _PRUNE_STEP
conversations after each commit (a conversation is due once a quarter of
*history* came since its last pruning), and are never shown meanwhile.
The file keeps a conversation's messages in chunks, a row for what one
commit brought to it (see ``_chunk``), which pruning deletes whole or
leaves whole (see ``_prune``). Message ids are the hub's: ``last_id`` is
the highest id the store has seen, kept across restarts even for messages
it does not keep. The file holds an id above it, reserved in steps of
_RESERVE (``_reserve``): a start after a crash goes on above every id
given out, and no commit is needed for the messages not kept. A clean
stop writes the last id exactly.

Offline messages (``record_offline``): a direct message to an account that
is offline is kept for it (and in its history), at most *offline_max* per
account, until ``offline_delivered`` says it was delivered.

Crash safety: a commit is atomic and written to the WAL before the next
group starts (``synchronous=NORMAL``: a killed process loses no committed
group; a power cut may lose the last commits before a checkpoint but
leaves a consistent file). A ``kill -9`` loses what was queued and not
yet committed: the group being written and what came since, normally the
last 10 to 30 milliseconds, up to half *max_backlog* messages while the
writer is behind (``congested``).

Another process (``trichat accounts``) may change accounts while the
server runs: SQLite serializes the writers (each waits up to
``BUSY_TIMEOUT`` for the other), and the writer sees such changes within
about a second (``PRAGMA data_version``) and reloads the account names.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import chain, repeat
from operator import add
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

import attrs
import trio

from ..protocol.messages import BROADCAST, name_key
from .history import (
    TAIL,
    TAIL_COST,
    Recent,
    Row,
    StoredMessage,
    message_cost,
    newest_first,
)
from .hub import Accepted
from .passwords import Hasher

__all__ = [
    "BUSY_TIMEOUT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Account",
    "AccountExists",
    "Direction",
    "NoSuchAccount",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnreadable",
    "StoredMessage",
    "account_names",
    "default_path",
    "delete_account_rows",
    "open_database",
    "set_password_hash",
]

log = logging.getLogger("trichat.store")

T = TypeVar("T")

Direction: TypeAlias = Literal["latest", "before", "after"]

BUSY_TIMEOUT = 5.0
"""How long a connection waits for another process's write, in seconds."""

# Between an account's clash key and the other name's in the key of their
# conversation: no name's clash key can hold it (names hold no control
# characters, and NFKC makes none).
_SEP = "\x1f"
# How often the writer looks for changes made by another process.
_LOOK_EVERY = 1.0
# Above every message id (SQLite's largest integer).
_NO_ID = (1 << 63) - 1
# Conversations pruned in one transaction, at most.
_PRUNE_STEP = 256
# Messages in one chunk row, at most: a history read decodes whole chunks.
_CHUNK_MOST = 256
# The least time between the starts of two commits, in seconds.
_COMMIT_EVERY = 0.01
# Message ids reserved at a time: the file says the highest id given out
# may be this far above the last one recorded (see Store._reserve).
_RESERVE = 1 << 20
# How often the WAL is copied into the file, in seconds; and its size, in
# pages, past which the writer copies it itself.
_CHECKPOINT_EVERY = 0.25
_CHECKPOINT_PAGES = 16384
# Chunks inserted by one statement, at most (10 values each; SQLite takes
# 32,766 since version 3.32).
_INSERT_MOST = 512
# Spellings of rooms remembered with their conversation, at most.
_SPELLINGS_MOST = 65536
# Start-up loads the newest messages into memory for at most this long (the
# rest come when asked for; see _newest_tails).
_PRELOAD_SECONDS = 0.5


@attrs.frozen
class Account:
    """An account: its name as registered, its clash key, its password's
    hash (never shown) and when it was made (ms since the epoch)."""

    name: str
    key: str
    password_hash: str = attrs.field(repr=False)
    created_ms: int


class StoreError(Exception):
    """A store that cannot be used (a newer schema, a closed store)."""


class StoreClosed(StoreError):
    """The store is not running (``Store.run`` has not started or has
    ended)."""


class StoreUnreadable(StoreError):
    """A read failed in SQLite (a disk error, a file locked for too long):
    that request failed, the store goes on."""


class AccountExists(StoreError):
    """``register`` of a name that is an account already
    (``already-registered``)."""


class NoSuchAccount(StoreError):
    """The name is not an account (``no-such-account``)."""


# -- the file ------------------------------------------------------------------

_CHUNKS = """
    CREATE TABLE chunks (
        conversation INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        first_id INTEGER NOT NULL,
        count INTEGER NOT NULL,
        ids BLOB NOT NULL,
        times BLOB NOT NULL,
        senders TEXT NOT NULL,
        recipients TEXT NOT NULL,
        lengths BLOB NOT NULL,
        texts BLOB NOT NULL
    )
"""
_CHUNKS_INDEX = (
    "CREATE INDEX chunks_by_conversation ON chunks (conversation, last_id, count)"
)
_INSERT_CHUNK = "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_CHUNK_COLUMNS = "ids, times, senders, recipients, lengths, texts"

_Chunk: TypeAlias = tuple[int, int, int, int, bytes, bytes, str, str, bytes, bytes]


def _chunk(conversation: int, rows: Sequence[Row], most: int) -> list[_Chunk]:
    """Rows of ``chunks`` for messages of one *conversation*, oldest first:
    one, unless they are more than *most* messages (see _parts).

    Why chunks: SQLite's cost is per row and per page a commit changes, and
    a row per message in an index by conversation meant a row to insert
    and one to delete for every message, and a page of the index changed
    per conversation per commit. A chunk holds what one commit brought to
    one conversation: the ids and times as little-endian 64-bit integers,
    the names joined by newlines (a name holds no control character), the
    texts' sizes as 32-bit integers and the texts end to end.

    Each row's fields are repeated for its texts by ``map`` and
    ``itertools`` (C code, not a loop of ours per text): the writer holds
    the GIL while it packs, and the event loop waits for it then."""
    senders, recipients, texts, firsts, times = zip(
        *[row[1] for row in rows], strict=True
    )
    counts = tuple(map(len, texts))
    count = sum(counts)
    if count > most:
        return [
            chunk
            for part in _parts(rows, most)
            for chunk in _chunk(conversation, part, most)
        ]
    last = firsts[-1] + counts[-1] - 1
    if count == len(rows):
        # A text each (a room's usual traffic): nothing to repeat.
        ids = firsts
    else:
        ids = tuple(chain(*map(range, firsts, map(add, firsts, counts))))
        times = tuple(chain(*map(repeat, times, counts)))
        senders = tuple(chain(*map(repeat, senders, counts)))
        recipients = tuple(chain(*map(repeat, recipients, counts)))
    every_text = tuple(chain(*texts))
    return [
        (
            conversation,
            last,
            firsts[0],
            count,
            struct.pack(f"<{count}q", *ids),
            struct.pack(f"<{count}q", *times),
            "\n".join(senders),
            "\n".join(recipients),
            struct.pack(f"<{count}I", *map(len, every_text)),
            b"".join(every_text),
        )
    ]


def _chunks(rows: list[Row], most: int = _CHUNK_MOST) -> Iterator[_Chunk]:
    """*rows* (in id order) as chunks: one per conversation, or more when
    it has more than *most* of them. Conversations that keep the same
    messages (both sides of one between two accounts) get the same
    chunks, packed once."""
    by_conversations: dict[tuple[int, ...], list[Row]] = {}
    for row in rows:
        some = by_conversations.get(row[0])
        if some is None:
            by_conversations[row[0]] = [row]
        else:
            some.append(row)
    named = [conversation for key in by_conversations for conversation in key]
    if len(named) != len(set(named)):
        # A conversation among two groups (an account made or deleted
        # between two messages of this commit): its rows in one group, in
        # id order, so that its chunks do not overlap.
        by_conversations = {}
        for row in rows:
            for conversation in row[0]:
                by_conversations.setdefault((conversation,), []).append(row)
    for conversations, some in by_conversations.items():
        for packed in _chunk(conversations[0], some, most):
            yield packed
            for conversation in conversations[1:]:
                yield (conversation, *packed[1:])


def _parts(rows: Sequence[Row], most: int) -> Iterator[list[Row]]:
    """*rows* cut into parts of at most *most* texts each (a row whose
    texts straddle a cut is cut too): a chunk holds at most *most*
    messages, which pruning counts on."""
    part: list[Row] = []
    room = most
    for conversations, accepted in rows:
        texts, first = accepted.texts, accepted.first_id
        while texts:
            if not room:
                yield part
                part, room = [], most
            some = texts[:room]
            part.append((conversations, accepted._replace(texts=some, first_id=first)))
            texts, first, room = texts[room:], first + len(some), room - len(some)
    if part:
        yield part


def _insert_statement(count: int) -> str:
    return (
        "INSERT INTO chunks SELECT * FROM (VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * count)
        + ") WHERE column1 IS NOT NULL"
    )


# For 1, 2, 4 ... _INSERT_MOST chunks.
_INSERT_CHUNKS = [_insert_statement(1 << n) for n in range(_INSERT_MOST.bit_length())]
_PADDING = (None,) * 10


def _insert_chunks(connection: sqlite3.Connection, chunks: list[_Chunk]) -> None:
    """Insert *chunks*, many to a statement: SQLite runs each statement
    without the GIL, and the writer thread waits for the GIL again after
    each one (up to ``sys.getswitchinterval()`` while the event loop runs
    Python), so a statement per chunk was slow. A few statements' texts
    (each prepared once), for a power of two of chunks: the smallest that
    takes what is left (up to _INSERT_MOST), padded with rows of NULLs
    that its WHERE leaves out."""
    for start in range(0, len(chunks), _INSERT_MOST):
        some: list[Any] = chunks[start : start + _INSERT_MOST]
        size = (len(some) - 1).bit_length()
        some += [_PADDING] * ((1 << size) - len(some))
        connection.execute(
            _INSERT_CHUNKS[size], tuple(itertools.chain.from_iterable(some))
        )


def _unpack(
    ids: bytes,
    times: bytes,
    senders: str,
    recipients: str,
    lengths: bytes,
    texts: bytes,
) -> list[StoredMessage]:
    """The messages of a chunk, oldest first."""
    count = len(ids) >> 3
    messages = []
    end = 0
    # One string per name, not one per message: the tails in memory keep
    # what is read (see history.Recent), and a room's messages share a
    # recipient.
    names: dict[str, str] = {}
    name = names.setdefault
    for id, time_ms, sender, to, length in zip(
        struct.unpack(f"<{count}q", ids),
        struct.unpack(f"<{count}q", times),
        senders.split("\n"),
        recipients.split("\n"),
        struct.unpack(f"<{count}I", lengths),
        strict=True,
    ):
        start, end = end, end + length
        messages.append(
            StoredMessage(
                id,
                time_ms,
                name(sender, sender),
                name(to, to),
                texts[start:end].decode(),
            )
        )
    return messages


def _to_chunks(connection: sqlite3.Connection) -> None:
    """Migration 2: the messages of version 1, a row each, in chunks."""
    connection.execute(_CHUNKS)
    rows = connection.execute(
        "SELECT conversation, id, time_ms, sender, recipient, text FROM messages "
        "ORDER BY conversation, id"
    )
    for conversation, some in itertools.groupby(rows, lambda row: row[0]):
        kept: list[Row] = [
            ((conversation,), Accepted(sender, to, (text,), id, time_ms))
            for _, id, time_ms, sender, to, text in some
        ]
        connection.executemany(_INSERT_CHUNK, _chunks(kept))
    connection.execute("DROP TABLE messages")
    connection.execute(_CHUNKS_INDEX)


MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # 1: the first release.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE accounts (
        key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE conversations (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
    CREATE TABLE messages (
        conversation INTEGER NOT NULL,
        id INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text BLOB NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation, id);
    CREATE TABLE offline (
        account TEXT NOT NULL,
        id INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text BLOB NOT NULL,
        PRIMARY KEY (account, id)
    ) WITHOUT ROWID;
    """,
    # 2: messages in chunks (see _chunk), written and deleted many at a time.
    _to_chunks,
)
"""The schema, as the scripts (or functions, called inside the migration's
transaction) that take a file from one version to the next:
``MIGRATIONS[0]`` makes version 1. Only ever append."""

SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    """Where the store lives unless told otherwise:
    ``$XDG_DATA_HOME/trichat/trichat.db``, else
    ``~/.local/share/trichat/trichat.db``."""
    base = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec: a relative path there is to be ignored.
    data = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return data / "trichat" / "trichat.db"


def _connect(
    path: str | os.PathLike[str], *, read_only: bool = False
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable
    from any thread (one at a time), waiting BUSY_TIMEOUT for locks."""
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA cache_size = -32768")  # 32 MiB
    # What a delete frees is overwritten with zeros, whatever the build's
    # default (Debian's does this, others do not): pruned messages and a
    # deleted account's do not linger in the file's free pages, where a
    # later deletion could not reach them. It costs the pruning a second
    # write (docs/performance.md, "Session 8: overwriting what is deleted").
    connection.execute("PRAGMA secure_delete = ON")
    if read_only:
        connection.execute("PRAGMA query_only = ON")
    return connection


def _cannot_open(path: str | os.PathLike[str], error: Exception) -> str:
    """Why the store's file at *path* could not be opened, in words."""
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        return (
            f"the store {path} is locked by another process (waited "
            f"{BUSY_TIMEOUT:g} s for it); try again once it is done"
        )
    reason = error.strerror if isinstance(error, OSError) else error
    return f"cannot open the store {path}: {reason}"


def open_database(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating it and its directory, readable by its owner only, if
    need be) the store's file at *path*, in WAL mode and migrated to
    ``SCHEMA_VERSION``; a connection for writing.

    Raises StoreError for a file made by a newer trichat.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Password hashes live here: only the owner may read it (SQLite
        # gives the WAL and shared-memory files the same permissions).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    connection = _connect(path)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # Keep the WAL file from staying large after a burst.
        connection.execute("PRAGMA journal_size_limit = 67108864")
        _migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store's schema is version {version}, newer than this "
                f"trichat's {SCHEMA_VERSION}: use a newer trichat"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            migration = MIGRATIONS[number - 1]
            if callable(migration):
                migration(connection)
            else:
                # executescript would commit: run the statements one by one.
                for statement in migration.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version VALUES (?)", (number,))
            log.info("store schema migrated to version %d", number)
    except BaseException:
        _roll_back(connection)
        raise
    connection.execute("COMMIT")


def _roll_back(connection: sqlite3.Connection) -> None:
    """Roll back the transaction, if SQLite has not already."""
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def account_names(connection: sqlite3.Connection) -> list[str]:
    """Every account's name, in clash-key order."""
    rows = connection.execute("SELECT name FROM accounts ORDER BY key")
    return [name for (name,) in rows]


def _account(connection: sqlite3.Connection, key: str) -> Account | None:
    row = connection.execute(
        "SELECT name, key, password_hash, created_ms FROM accounts WHERE key = ?",
        (key,),
    ).fetchone()
    return None if row is None else Account(*row)


def set_password_hash(
    connection: sqlite3.Connection, key: str, password_hash: str
) -> bool:
    """Give account *key* a new password hash; False if there is no such
    account. Call it inside a transaction or alone."""
    cursor = connection.execute(
        "UPDATE accounts SET password_hash = ? WHERE key = ?", (password_hash, key)
    )
    return cursor.rowcount > 0


def delete_account_rows(connection: sqlite3.Connection, key: str) -> bool:
    """Delete account *key*, its offline messages and its conversations
    with others; False if there is no such account. Call it inside a
    transaction."""
    if connection.execute("DELETE FROM accounts WHERE key = ?", (key,)).rowcount == 0:
        return False
    _delete_account_data(connection, key)
    return True


def _run_checkpoint(connection: sqlite3.Connection, mode: str) -> bool:
    """``PRAGMA wal_checkpoint(MODE)``: whether it could not finish (busy)."""
    busy, _, _ = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return bool(busy)


def _delete_account_data(connection: sqlite3.Connection, key: str) -> None:
    """Delete the offline messages of account *key* and the messages of
    its conversations (overwritten in the file: see _connect). (The
    conversations' ids stay: a running writer knows them by heart.)"""
    connection.execute("DELETE FROM offline WHERE account = ?", (key,))
    low, high = key + _SEP, key + chr(ord(_SEP) + 1)
    conversations = "SELECT id FROM conversations WHERE key >= ? AND key < ?"
    connection.execute(
        f"DELETE FROM chunks WHERE conversation IN ({conversations})", (low, high)
    )


# -- what goes to the writer ---------------------------------------------------


class _Batch:
    """Messages recorded, for the writer: everything recorded between two
    passes of the event loop's scheduler (see ``Store._hand_over``).

    *rows* go to history; *conversations* are those new among them (id,
    key); *offline* the messages kept for an account that is offline. Once
    handed over: how many texts (*count*) and bytes (*size*) it holds, and
    the highest id recorded when it was (*high*)."""

    __slots__ = ("conversations", "count", "high", "offline", "rows", "size")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.conversations: list[tuple[int, str]] = []
        self.offline: list[tuple[str, Accepted]] = []
        self.count = 0
        self.size = 0
        self.high = 0


class _Change:
    """Anything else for the writer: *write* runs in the writer thread,
    inside the group's transaction, and its result goes to *done* on the
    event loop once the group is committed."""

    __slots__ = ("done", "write")

    def __init__(
        self,
        write: Callable[[sqlite3.Connection], Any],
        done: Callable[[Any], None],
    ) -> None:
        self.write = write
        self.done = done


class _Waiter:
    """The result of a change, for a task waiting on the event loop."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Any = None

    def __call__(self, result: Any) -> None:
        self.result = result
        self.event.set()


class _Waiting:
    """The messages of one conversation (or offline mailbox) recorded and
    not yet committed, oldest first, and how many texts they hold."""

    __slots__ = ("count", "messages")

    def __init__(self) -> None:
        self.messages: deque[Accepted] = deque()
        self.count = 0


def _ignore_refused(to: str, senders: dict[str, int]) -> None:
    """Nobody to tell (see ``Store.refused``)."""


class _Committed:
    """What the writer tells the event loop after a commit."""

    __slots__ = ("batches", "changes", "high_id", "refused")

    def __init__(self) -> None:
        self.batches: list[_Batch] = []
        self.changes: list[tuple[_Change, Any]] = []
        self.high_id = 0
        self.refused: list[tuple[str, str]] = []
        """Offline messages not kept, their account gone: (to, sender)."""


_Item: TypeAlias = _Batch | _Change


# -- the store -----------------------------------------------------------------


class Store:
    """Accounts, offline messages and history in one SQLite file; see the
    module's docstring. *path* is the file, or ``":memory:"`` for a store
    that keeps nothing after ``run`` (a temporary file, deleted then).

    *history* is how many messages each conversation keeps (0: none);
    *offline_max* how many offline messages one account may have waiting;
    the store is ``congested`` past half *max_backlog* messages or half
    *max_backlog_bytes* bytes of text waiting for the writer. *limiter*
    bounds the reads running at once (one read connection each); *hasher*
    hashes passwords (tests pass a cheap one). *stop_timeout* bounds the
    last write when ``run`` is cancelled. The newest TAIL messages of the
    conversations used last are in memory too, about *history_cache*
    bytes of them (see ``Recent``; 0: none).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: int = 1000,
        offline_max: int = 1000,
        max_backlog: int = 65536,
        max_backlog_bytes: int = 32 << 20,
        limiter: trio.CapacityLimiter | None = None,
        hasher: Hasher | None = None,
        stop_timeout: float = 10.0,
        history_cache: int = 64 << 20,
    ) -> None:
        if (
            min(history, offline_max, history_cache) < 0
            or min(max_backlog, max_backlog_bytes) < 2
        ):
            raise ValueError("history, offline_max, history_cache >= 0, backlogs >= 2")
        self.path = path
        self.history_size = history
        self.offline_max = offline_max
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.limiter = limiter or trio.CapacityLimiter(4)
        self.hasher = hasher or Hasher()
        self.stop_timeout = stop_timeout
        self.last_id = 0
        """The highest message id the store has seen (recorded, or stored
        before a restart): the hub continues above it."""
        # The id past which more ids are reserved (see _reserve); the
        # highest the file covers now, and the id past which senders wait
        # for it to cover more (see _renewed).
        self._reserve_at = 0
        self._covered = 0
        self._uncovered_at = 0
        self.committed_id = 0
        """The highest message id written to the file (everything recorded
        before it is there too)."""
        self.backlog = 0
        """Messages recorded and not yet committed."""
        self.backlog_bytes = 0
        """Their texts' bytes."""
        self._file: str | None = None  # the file in use, once open
        self._temporary: str | None = None  # the directory of a :memory: one
        self._running = False
        self._token: trio.lowlevel.TrioToken | None = None
        # Every account's name as its owner wrote it, by clash key.
        self._accounts: dict[str, str] = {}
        # Account changes queued and not yet committed: key -> exists after.
        self._account_changes: dict[str, list[bool]] = {}
        self._offline_count: dict[str, int] = {}
        self.refused: Callable[[str, dict[str, int]], None] = _ignore_refused
        """Told, on the event loop, of direct messages to account NAME
        recorded as offline messages and not kept after all (another process
        deleted it before they were written): how many, by sender."""
        # The offline messages recorded for an account while its offline
        # messages are read (see ``offline``): one list per read under way.
        self._offline_reads: dict[str, list[list[Accepted]]] = {}
        # Offline messages delivered (up to that id) whose deletion is queued.
        self._delivered: dict[str, int] = {}
        # Conversations by key, with the id their rows carry; and rooms (and
        # '*') by the spelling messages to them have: the hot path.
        self._conversation_ids: dict[str, int] = {}
        self._next_conversation = 1
        self._spellings: dict[str, tuple[int, ...]] = {}
        # And direct messages' by (sender, recipient) as written, while the
        # accounts stay as they are.
        self._pairs: dict[tuple[str, str], tuple[int, ...]] = {}
        self._recent = Recent(history_cache, min(TAIL, history))
        # Messages recorded since the scheduler's last pass; those handed to
        # the writer and not yet committed, oldest first; and how many texts
        # and bytes of the backlog were handed over.
        self._batch: _Batch | None = None
        # Recorded before run: (accepted, offline, history).
        self._early: list[tuple[Accepted, str | None, bool]] = []
        self._handed: deque[_Batch] = deque()
        self._handed_count = 0
        self._handed_size = 0
        # Offline messages recorded and not yet committed, by account.
        self._pending_offline: dict[str, _Waiting] = {}
        self._progress = trio.Event()  # set at every commit
        # An account's data was deleted: the write-ahead log may still hold
        # copies of it, until the next checkpoint empties it (_checkpoint).
        self._log_to_empty = False
        self._opened = trio.Event()  # set when a batch is opened
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._writer_waiting = False
        self._stopping = False
        self._stop_now = False
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._lost = 0

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, history={self.history_size})"

    @property
    def cached_bytes(self) -> int:
        """About how much memory the newest messages kept in memory take
        (at most about *history_cache*; see ``Recent``)."""
        return self._recent.size

    # -- running -----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the file, report started, and write until cancelled; then
        write everything recorded (within *stop_timeout*) and close."""
        if self._running or self._token is not None:
            raise StoreError("a store runs once")
        self._token = trio.lowlevel.current_trio_token()
        try:
            if str(self.path) == ":memory:":
                self._temporary = tempfile.mkdtemp(prefix="trichat-")
                self._file = os.path.join(self._temporary, "trichat.db")
            else:
                self._file = os.fspath(self.path)
            started = time.monotonic()
            try:
                writer, state = await trio.to_thread.run_sync(self._open, self._file)
            except (sqlite3.Error, OSError) as error:
                raise StoreError(_cannot_open(self.path, error)) from error
            try:
                # Anything recorded before the start is queued, and counts.
                self.last_id = max(self.last_id, state.last_id)
                self.committed_id = state.last_id
                self._reserve_at = state.ceiling - _RESERVE // 2
                self._renewed(state.ceiling)
                self._accounts = state.accounts
                self._offline_count = state.offline
                self._conversation_ids = state.conversations
                for conversation, messages, whole in state.tails:
                    self._recent.install(conversation, messages, whole)
                self._next_conversation = (
                    max(state.conversations.values(), default=0) + 1
                )
                self._running = True
                if self.last_id > self._reserve_at:  # recorded before the start
                    self._reserve(self.last_id)
                # What was recorded before the start goes first.
                for accepted, offline, history in self._early:
                    self._add_rows(accepted, offline, history)
                self._early.clear()
                self._hand_over()
                log.info(
                    "store %s open in %.2f s: %d accounts, last id %d",
                    self.path,
                    time.monotonic() - started,
                    len(state.accounts),
                    state.last_id,
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, writer, state)
                    nursery.start_soon(self._checkpoint, self._file)
                    task_status.started()
                    try:
                        await self._handing_over()
                    finally:
                        self._stop_writer()
            finally:
                self._running = False
                writer.close()
        finally:
            self._close_readers()
            if self._temporary is not None:
                shutil.rmtree(self._temporary, ignore_errors=True)
            self._progress.set()  # nobody waits for a store that is gone

    def _open(self, path: str) -> tuple[sqlite3.Connection, _Loaded]:
        connection = open_database(path)
        try:
            # The checkpoints are _checkpoint's: this is the backstop.
            connection.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            loaded = _Loaded(connection, self._recent.budget, self._recent.length)
            # Before any id is given out: whatever happens to this run, the
            # next starts above every id it gave.
            loaded.ceiling = loaded.last_id + _RESERVE
            _write_last_id(connection, loaded.ceiling)
        except BaseException:
            connection.close()
            raise
        return connection, loaded

    async def _write(self, connection: sqlite3.Connection, state: _Loaded) -> None:
        writer = _Writer(self, connection, state)
        # Shielded: cancelled, it must still write what is queued, and it
        # ends by itself once told to stop (within stop_timeout). A thread
        # of its own: the default limiter's threads are for reads.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(
                    writer.run, limiter=trio.CapacityLimiter(1)
                )
            except sqlite3.Error as error:
                # Not a lock or a full disk, which it waits out: the file is
                # damaged, say. Stopping says so in a line, with no trace.
                raise StoreError(
                    f"the store {self.path} failed ({error}); the server stops"
                    f" with {self.backlog} messages unwritten"
                ) from error

    async def _checkpoint(self, file: str) -> None:
        """Copy the WAL into the file every _CHECKPOINT_EVERY seconds, in
        a thread and on a connection of its own, beside the writer: left
        to the writer, it was done in the commit that filled the WAL past
        its limit, and the writer waited for the copy and its fsync."""
        limiter = trio.CapacityLimiter(1)
        connection = await trio.to_thread.run_sync(_connect, file, limiter=limiter)
        try:
            while True:
                await trio.sleep(_CHECKPOINT_EVERY)
                # After an account's deletion the log is emptied too: it
                # holds the pages as they were before (their texts
                # included) until SQLite happens to write over them. That
                # waits for the readers of those pages, and the writer
                # waits for it: once a deletion, not every time.
                emptying, self._log_to_empty = self._log_to_empty, False
                mode = "TRUNCATE" if emptying else "PASSIVE"
                try:
                    busy = await trio.to_thread.run_sync(
                        _run_checkpoint, connection, mode, limiter=limiter
                    )
                except sqlite3.OperationalError as error:
                    log.warning("store checkpoint failed, will retry: %s", error)
                    busy = True
                except sqlite3.Error as error:
                    raise StoreError(
                        f"the store {self.path} failed ({error}); the server stops"
                    ) from error
                if emptying and busy:
                    self._log_to_empty = True  # the next one tries again
        finally:
            connection.close()

    def stop_now(self) -> None:
        """Stop without writing what is left (a second Ctrl-C): the writer
        ends once the commit under way, if any, is done."""
        self._stop_now = self._stopping = True
        self._wake.set()

    def _stop_writer(self) -> None:
        self._hand_over()
        self._stopping = True
        self._wake.set()

    def _close_readers(self) -> None:
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                return

    # -- recording -----------------------------------------------------------------

    def account_name(self, key: str) -> str | None:
        """Account *key*'s name as its owner wrote it (in memory), or None
        when *key* is no account."""
        return self._accounts.get(key)

    def is_account(self, key: str) -> bool:
        """Whether clash key *key* (``name_key(name)``) is an account."""
        return key in self._accounts

    @property
    def congested(self) -> bool:
        """Whether senders should wait (``make_room``) before more is
        recorded: the writer is behind by more than half the backlog, or
        ids came near the highest the file covers (see ``_renewed``)."""
        return (
            self.backlog > self.max_backlog >> 1
            or self.backlog_bytes > self.max_backlog_bytes >> 1
            or self.last_id > self._uncovered_at
        )

    async def make_room(self, stall_timeout: float) -> None:
        """Wait until the store is not congested, as long as the writer
        makes progress: after *stall_timeout* seconds without a commit,
        return anyway (as ``Mailbox.make_room`` does), unless ids are near
        what the file covers: then until it covers more."""
        while self.congested and self._running:
            with trio.move_on_after(stall_timeout) as waited:
                await self._progress.wait()
            if waited.cancelled_caught and self.last_id <= self._uncovered_at:
                # (Ids near what the file covers wait for it however long.)
                return

    def _conversations(self, accepted: Accepted) -> tuple[int, ...]:
        """The ids of the conversations that keep *accepted* (new ones are
        made, and written with the next batch)."""
        to = accepted.to
        if not self.history_size:
            return ()
        if to == BROADCAST or to[:1] == "#":
            conversation = self._conversation(name_key(to) if to[:1] == "#" else to)
            spellings = self._spellings
            if len(spellings) >= _SPELLINGS_MOST:
                spellings.clear()
            spellings[to] = (conversation,)
            return spellings[to]
        pair = (accepted.sender, to)
        known = self._pairs.get(pair)
        if known is not None:
            return known
        sender, recipient = name_key(accepted.sender), name_key(to)
        accounts = self._accounts
        keys: tuple[str, ...] = ()
        if sender in accounts:
            if recipient in accounts and recipient != sender:
                keys = (sender + _SEP + recipient, recipient + _SEP + sender)
            else:
                keys = (sender + _SEP + recipient,)
        elif recipient in accounts:
            keys = (recipient + _SEP + sender,)
        # In order: a message either way between two accounts goes to the
        # same two conversations, in the same chunks (see _chunks).
        known = tuple(sorted(self._conversation(key) for key in keys))
        if len(self._pairs) >= _SPELLINGS_MOST:
            self._pairs.clear()
        self._pairs[pair] = known
        return known

    def _conversation(self, key: str) -> int:
        """The id of conversation *key*, made if it is new."""
        conversation = self._conversation_ids.get(key)
        if conversation is None:
            conversation = self._conversation_ids[key] = self._next_conversation
            self._next_conversation += 1
            self._recent.install(conversation, [], whole=True)
            (self._batch or self._open_batch()).conversations.append(
                (conversation, key)
            )
        return conversation

    def record(self, accepted: Accepted) -> None:
        """Keep *accepted* (a hub observer): queued for the writer, never
        waiting, never dropped. Kept: messages to rooms and ``*``, and
        direct messages to or from an account (in that account's
        conversation with the other); for the others, only the id."""
        # The hot path: to a room, or between two names, seen before: a row,
        # whatever the number of texts (the writer unpacks it).
        to = accepted.to
        conversations = self._spellings.get(to)
        if conversations is None:
            conversations = self._pairs.get((accepted.sender, to))
            if conversations is None:
                self._record(accepted, None)
                return
        texts = accepted.texts
        if conversations:
            (self._batch or self._open_batch()).rows.append((conversations, accepted))
            self.backlog += len(texts)
            self.backlog_bytes += (
                len(texts[0]) if len(texts) == 1 else sum(map(len, texts))
            )
        # Else only its ids count, and the reservation covers them.
        last = accepted.first_id + len(texts) - 1
        if last > self.last_id:  # _saw, inlined: the hot path
            self.last_id = last
            if last > self._reserve_at:
                self._reserve(last)

    def _saw(self, last_id: int) -> None:
        """Id *last_id* was given out: the highest seen, and reserved."""
        if last_id > self.last_id:
            self.last_id = last_id
            if last_id > self._reserve_at:
                self._reserve(last_id)

    def _reserve(self, last_id: int) -> None:
        """Id *last_id* came near the highest the file covers: cover
        _RESERVE more. The file says a higher id than any given out, so
        that a restart after a crash goes on above all of them; and no
        commit need write the last id, nor any happen for messages that
        are not kept (between guests, or with no history)."""
        ceiling = last_id + _RESERVE
        self._reserve_at = ceiling - _RESERVE // 2
        if self._running:
            self._put(
                _Change(
                    partial(_write_last_id, last_id=ceiling),
                    lambda _: self._renewed(ceiling),
                )
            )

    def _renewed(self, ceiling: int) -> None:
        """The file covers every id up to *ceiling*. Senders wait (see
        ``congested``) once ids come within a quarter of a reservation of
        what it covers: a writer that cannot commit (the file locked by
        another process, a full disk) must not let ids run past it, or a
        crash then would give them out again."""
        if ceiling > self._covered:
            self._covered = ceiling
            self._uncovered_at = ceiling - _RESERVE // 4

    def record_offline(
        self, accepted: Accepted, account_key: str, *, history: bool = True
    ) -> bool:
        """Keep *accepted*, a direct message to account *account_key* who is
        offline, for its next login (``offline``), and in history as
        ``record`` would (do not ``record`` it as well), unless *history*
        is false (it was recorded already: a message its session did not
        deliver before it ended). False, and nothing kept, if its texts
        would take the account past *offline_max* (``mailbox-full``)."""
        count = self._offline_count.get(account_key, 0) + len(accepted.texts)
        if count > self.offline_max:
            return False
        self._offline_count[account_key] = count
        waiting = self._pending_offline.get(account_key)
        if waiting is None:
            waiting = self._pending_offline[account_key] = _Waiting()
        waiting.messages.append(accepted)
        waiting.count += len(accepted.texts)
        for read in self._offline_reads.get(account_key, ()):
            read.append(accepted)
        self._record(accepted, account_key, history)
        return True

    def _record(
        self, accepted: Accepted, offline: str | None, history: bool = True
    ) -> None:
        self._saw(accepted.first_id + len(accepted.texts) - 1)
        if not self._running and not self._stopping:
            # Before the start: the conversations' ids are not known yet.
            self._early.append((accepted, offline, history))
            return
        self._add_rows(accepted, offline, history)

    def _add_rows(
        self, accepted: Accepted, offline: str | None, history: bool = True
    ) -> None:
        texts = accepted.texts
        conversations = self._conversations(accepted) if history else ()
        if not conversations and offline is None:
            return  # nothing to keep but its id (see _reserve)
        self.backlog += len(texts)
        self.backlog_bytes += sum(map(len, texts))
        batch = self._batch or self._open_batch()
        if offline is not None:
            batch.offline.append((offline, accepted))
        if conversations:
            batch.rows.append((conversations, accepted))

    def _open_batch(self) -> _Batch:
        """A batch for what is recorded until the scheduler's next pass,
        which hands it to the writer: once per pass, not per message."""
        batch = self._batch = _Batch()
        if self._running:
            if self._stopping:
                # Stopping, still writing: _handing_over has ended.
                assert self._token is not None
                self._token.run_sync_soon(self._hand_over)
            else:
                self._opened.set()
        elif self._stopping:
            self._lose()
        return batch

    async def _handing_over(self) -> None:
        """Hand every batch to the writer, a scheduler's pass after it was
        opened. (A task of the event loop's own, not ``run_sync_soon``:
        that writes to a socket, and a system call lets the writer thread
        take the GIL for as long as it likes.)"""
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._hand_over()

    def _lose(self) -> None:
        """After run: nobody will write what is recorded now."""
        self._lost += 1
        if self._lost == 1:
            log.error("store stopped: messages recorded from now on are lost")

    def _hand_over(self) -> None:
        """Give the writer the batch recorded so far (if any)."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        batch.count = self.backlog - self._handed_count
        batch.size = self.backlog_bytes - self._handed_size
        batch.high = self.last_id
        self._handed_count = self.backlog
        self._handed_size = self.backlog_bytes
        self._handed.append(batch)
        self._put(batch)

    def _put(self, item: _Item) -> None:
        """Queue *item* for the writer, after everything recorded before."""
        if type(item) is _Change:
            self._hand_over()
            if self._stopping and not self._running:
                self._lose()
        self._queue.append(item)
        if self._writer_waiting:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything recorded so far is committed."""
        if not self._running:
            raise StoreClosed("the store is not running")
        waiter = _Waiter()
        self._put(_Change(_nothing, waiter))
        await waiter.event.wait()

    def offline_delivered(self, account_key: str, up_to_id: int) -> None:
        """The offline messages of *account_key* up to id *up_to_id* were
        delivered: they are deleted (queued for the writer)."""
        done = max(self.delivered_through(account_key), up_to_id)
        self._delivered[account_key] = done

        def write(connection: sqlite3.Connection) -> int:
            return connection.execute(
                "DELETE FROM offline WHERE account = ? AND id <= ?",
                (account_key, up_to_id),
            ).rowcount

        def deleted(count: int) -> None:
            left = self._offline_count.get(account_key, 0) - count
            if left > 0:
                self._offline_count[account_key] = left
            else:
                self._offline_count.pop(account_key, None)
            if self._delivered.get(account_key) == done:
                del self._delivered[account_key]

        self._put(_Change(write, deleted))

    # -- what the writer tells ------------------------------------------------------

    def _committed(self, committed: _Committed) -> None:
        """On the event loop: a group is in the file."""
        pending_offline = self._pending_offline
        handed = self._handed
        recent = self._recent
        messages = size = 0
        for batch in committed.batches:
            assert handed[0] is batch
            handed.popleft()
            if recent.budget:
                recent.committed(batch.rows)
            messages += batch.count
            size += batch.size
            for offline, accepted in batch.offline:
                waiting = pending_offline[offline]
                waiting.messages.popleft()
                waiting.count -= len(accepted.texts)
                if not waiting.count:
                    del pending_offline[offline]
        self.backlog -= messages
        self.backlog_bytes -= size
        self._handed_count -= messages
        self._handed_size -= size
        if committed.high_id > self.committed_id:
            self.committed_id = committed.high_id
        for change, result in committed.changes:
            change.done(result)
        if committed.refused:
            senders: dict[str, dict[str, int]] = {}
            for to, sender in committed.refused:
                by_sender = senders.setdefault(to, {})
                by_sender[sender] = by_sender.get(sender, 0) + 1
            for to, by_sender in senders.items():
                self.refused(to, by_sender)
        self._progress.set()
        self._progress = trio.Event()

    def _accounts_changed(self, accounts: dict[str, str]) -> None:
        """On the event loop: another process changed the accounts (now
        *accounts*, names by key)."""
        for key, after in self._account_changes.items():
            # Our own changes not committed yet stand.
            if not after[-1]:
                accounts.pop(key, None)
            elif key in self._accounts:
                accounts[key] = self._accounts[key]
        for key in self._accounts.keys() - accounts.keys():
            # Deleted by another process, with its offline messages and its
            # history; and what was queued for it since is deleted too.
            self._offline_count.pop(key, None)
            self._delivered[key] = self.last_id
            self._history_deleted(key)  # the file's pages are empty already
            self._put(
                _Change(
                    partial(_delete_account_data, key=key),
                    partial(self._history_deleted, key),
                )
            )
        self._accounts = accounts
        self._pairs.clear()  # who is an account changed

    def _history_deleted(self, key: str, _: object = None) -> None:
        """On the event loop: account *key*'s conversations were emptied
        (committed): their tails go too, and the log's copies of them."""
        self._log_to_empty = True
        low = key + _SEP
        self._recent.forget(
            conversation
            for other, conversation in self._conversation_ids.items()
            if other.startswith(low)
        )

    def _tell(self, function: Callable[..., None], *args: Any) -> None:
        """From the writer thread: call *function* on the event loop."""
        assert self._token is not None
        self._token.run_sync_soon(function, *args)

    # -- reading ---------------------------------------------------------------------

    async def _read(
        self, read: Callable[[sqlite3.Connection], T], *, one_statement: bool = False
    ) -> T:
        """*read* in a reader thread, on a read connection, in one read
        transaction (one snapshot of the file): its own if *read* runs
        *one_statement* (two statements fewer, and each lets the thread
        wait for the GIL again)."""
        if not self._running or self._file is None:
            raise StoreClosed("the store is not running")
        try:
            return await trio.to_thread.run_sync(
                self._read_in_thread,
                self._file,
                read,
                one_statement,
                limiter=self.limiter,
            )
        except sqlite3.Error as error:
            raise StoreUnreadable(f"the store could not be read: {error}") from error

    def _read_in_thread(
        self, file: str, read: Callable[[sqlite3.Connection], T], one_statement: bool
    ) -> T:
        try:
            connection = self._readers.get_nowait()
        except queue.Empty:
            connection = _connect(file, read_only=True)
        try:
            if one_statement:
                return read(connection)
            connection.execute("BEGIN")
            try:
                return read(connection)
            finally:
                connection.execute("COMMIT")
        finally:
            if self._running:
                self._readers.put(connection)
            else:
                connection.close()

    def _conversation_key(self, target: str, account_key: str | None) -> str:
        if target == BROADCAST:
            return BROADCAST
        if target[:1] == "#":
            return name_key(target)
        if account_key is None:
            raise ValueError("the history of a conversation needs an account")
        return account_key + _SEP + name_key(target)

    async def history(
        self,
        target: str,
        direction: Direction,
        anchor_id: int | None,
        n: int,
        *,
        account_key: str | None = None,
    ) -> list[StoredMessage]:
        """Up to *n* messages of *target*, oldest first: the latest, or
        those just before or just after the id *anchor_id*.

        *target* is a room (in any spelling that clashes with it), ``*``, or
        a NAME: then the direct messages between account *account_key* and
        NAME. Only the newest *history* messages of a conversation are ever
        shown. Pages ``before`` the first id of a page and ``after`` the
        last one tile the conversation, with no gap and no repeat.
        """
        asked = self._asked(target, direction, anchor_id, n, account_key)
        if asked is None:
            return []
        conversation, anchor, page = asked
        found = self._in_memory(conversation, direction, anchor, n, page)
        if found is not None:
            return found
        if direction == "latest":
            return await self._read_latest_page(conversation, n, page)
        kept = self.history_size
        return await self._read(
            lambda connection: _read_history(
                connection, conversation, direction, anchor, n, page, kept
            )
        )

    def history_now(
        self,
        target: str,
        direction: Direction,
        anchor_id: int | None,
        n: int,
        *,
        account_key: str | None = None,
    ) -> list[StoredMessage] | None:
        """What ``history`` would answer, if memory holds it (no read of the
        file); else None."""
        asked = self._asked(target, direction, anchor_id, n, account_key)
        if asked is None:
            return []
        conversation, anchor, page = asked
        return self._in_memory(conversation, direction, anchor, n, page)

    def _asked(
        self,
        target: str,
        direction: Direction,
        anchor_id: int | None,
        n: int,
        account_key: str | None,
    ) -> tuple[int, int, _Page] | None:
        """A history request checked: its conversation, its anchor, and the
        part of the page not in the file yet; None if the page is empty
        whatever the file holds."""
        if direction not in ("latest", "before", "after"):
            raise ValueError(f"no such direction: {direction!r}")
        if direction != "latest" and anchor_id is None:
            raise ValueError(f"{direction} needs an id")
        key = self._conversation_key(target, account_key)
        if not self._running:
            raise StoreClosed("the store is not running")
        kept = self.history_size
        if n <= 0 or not kept:
            return None
        # Ids run to 20 digits, SQLite's integers to 2**63 - 1: above every
        # id there is.
        anchor = min(anchor_id or 0, _NO_ID)
        conversation = self._conversation_ids.get(key)
        if conversation is None:
            return None
        waiting = self._waiting(conversation)
        if not waiting:
            return conversation, anchor, _Page([], 0, _NO_ID)
        # What the file cannot have yet: the newest messages.
        newest = newest_first([accepted for _, accepted in waiting], kept)
        if direction == "latest":
            part = list(itertools.islice(newest, n))
        elif direction == "before":
            older = itertools.dropwhile(lambda m: m.id >= anchor, newest)
            part = list(itertools.islice(older, n))
        else:
            part = list(itertools.takewhile(lambda m: m.id > anchor, newest))
            part = part[-n:]
        part.reverse()
        count = sum(len(accepted.texts) for _, accepted in waiting)
        return conversation, anchor, _Page(part, count, waiting[0][1].first_id)

    def _in_memory(
        self, conversation: int, direction: Direction, anchor: int, n: int, page: _Page
    ) -> list[StoredMessage] | None:
        """A page of *conversation*: *page* on top of what its tail holds;
        None if the file must be read."""
        if not _needed_from_file(direction, n, page, self.history_size):
            return page.messages
        held = self._recent.held(conversation)
        if held is None:
            return None
        tail, whole = held
        return _page_from_tail(
            tail, whole, direction, anchor, n, page, self.history_size
        )

    async def _read_latest_page(
        self, conversation: int, n: int, page: _Page
    ) -> list[StoredMessage]:
        """The latest *n* messages of *conversation*: *page* on top of the
        file's newest; and, if its tail is wanted, a tail's worth of them
        read for it."""
        want = min(
            _needed_from_file("latest", n, page, self.history_size),
            self.history_size - page.waiting,
        )
        if not want:
            return page.messages
        recent = self._recent
        token = recent.fill_from(conversation)
        ask = max(want, recent.length) if token else want
        # Only ids seen by now: those committed meanwhile are the commits'
        # to add to a tail, once told of (and the page's, if waiting now).
        below = min(page.below, self.last_id + 1)
        found: list[StoredMessage] | None = None
        try:
            found = await self._read(
                lambda connection: _read_latest(connection, conversation, below, ask),
                one_statement=True,
            )
        finally:
            recent.filled(
                conversation, token, found, found is not None and len(found) < ask
            )
        return found[-want:] + page.messages

    def _waiting(self, conversation: int) -> list[Row]:
        """The rows of *conversation* recorded and not yet committed,
        oldest first. (Looked for among all of them: a few milliseconds'
        worth, or half *max_backlog* at most.)"""
        rows: list[Row] = []
        batches = list(self._handed)
        if self._batch is not None:
            batches.append(self._batch)
        for batch in batches:
            rows += [row for row in batch.rows if conversation in row[0]]
        return rows

    async def offline(self, account_key: str) -> list[StoredMessage]:
        """The offline messages kept for *account_key*, in order: all those
        recorded until it returns, so that a login that goes online at once
        after it leaves none behind. Those recorded while the file is read
        may be neither in what was waiting to be written before the read
        nor in the file as it was read: they are collected as they are
        recorded, and added."""
        during: list[Accepted] = []
        reads = self._offline_reads.setdefault(account_key, [])
        reads.append(during)
        try:
            messages = await self._offline_before(account_key)
        finally:
            reads.remove(during)
            if not reads:
                del self._offline_reads[account_key]
        if during:
            # (Some may have reached the file before it was read.)
            seen = {message.id for message in messages}
            later = list(newest_first(during, sum(len(a.texts) for a in during)))
            messages.extend(m for m in later if m.id not in seen)
            done = self.delivered_through(account_key)
            messages = [message for message in messages if message.id > done]
        # In id order, whatever the order they were recorded in (what a
        # connection left unwritten is kept after what came meanwhile).
        messages.sort(key=lambda message: message.id)
        return messages

    def delivered_through(self, account_key: str) -> int:
        """The id up to which *account_key*'s offline messages were
        delivered (a message kept with an id at or below it would never
        be)."""
        return self._delivered.get(account_key, 0)

    async def _offline_before(self, account_key: str) -> list[StoredMessage]:
        """The offline messages of *account_key* recorded before this call."""
        # Those delivered whose deletion is not written yet are left out: as
        # of now, before the read (it may be written meanwhile).
        done = self.delivered_through(account_key)
        waiting = self._pending_offline.get(account_key)
        newer = (
            []
            if waiting is None
            else list(newest_first(waiting.messages, waiting.count))
        )
        # (Pending ids are not all above those in the file: what a closing
        # connection left unwritten is kept with its own, older ids.)
        pending = {message.id for message in newer}
        messages = await self._read(
            lambda connection: _read_offline(connection, account_key)
        )
        messages = [message for message in messages if message.id not in pending]
        messages.extend(newer)
        return [message for message in messages if message.id > done]

    async def account(self, key: str) -> Account | None:
        """Account *key* (a clash key), or None."""
        return await self._read(lambda connection: _account(connection, key))

    async def accounts(self) -> list[str]:
        """Every account's name, in clash-key order."""
        return await self._read(account_names)

    # -- changing accounts --------------------------------------------------------

    async def _change(
        self,
        key: str,
        after: bool,
        write: Callable[..., Any],
        committed: Callable[[str], None] | None = None,
    ) -> Any:
        """Queue *write* (a change to account *key*, which exists *after*)
        and wait until it is committed, when ``committed(key)`` is called on
        the event loop; the result of *write*."""
        if not self._running:
            raise StoreClosed("the store is not running")
        changes = self._account_changes.setdefault(key, [])
        changes.append(after)
        waiter = _Waiter()

        def done(result: Any) -> None:
            changes.pop(0)
            if not changes:
                del self._account_changes[key]
            if committed is not None:
                committed(key)
            waiter(result)

        self._put(_Change(write, done))
        await waiter.event.wait()
        return waiter.result

    async def register(self, name: str, password: str) -> Account:
        """Make *name* an account with *password* (hashed first; the caller
        checks the password's rules). Raises AccountExists."""
        key = name_key(name)
        if not self._running:
            raise StoreClosed("the store is not running")
        if key in self._accounts:
            raise AccountExists(name)
        password_hash = await self.hasher.hash(password)
        if key in self._accounts:  # registered while we hashed
            raise AccountExists(name)
        self._accounts[key] = name
        self._pairs.clear()  # who is an account changed
        account = Account(name, key, password_hash, int(time.time() * 1000))

        def write(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO accounts (name, key, password_hash, created_ms)"
                " VALUES (?, ?, ?, ?)",
                attrs.astuple(account),
            )
            return cursor.rowcount > 0

        if not await self._change(key, True, write):
            raise AccountExists(name)  # by another process
        return account

    async def verify(self, name: str, password: str) -> bool:
        """Whether *password* is account *name*'s (False for no account:
        ask ``is_account`` to tell the two apart). A password whose hash
        was made with other parameters than the hasher's is hashed again."""
        key = name_key(name)
        account = await self.account(key)
        if account is None:
            return False
        if not await self.hasher.verify(account.password_hash, password):
            return False
        if self.hasher.needs_rehash(account.password_hash):
            new_hash = await self.hasher.hash(password)
            old_hash = account.password_hash

            def write(connection: sqlite3.Connection) -> None:
                # Unless the password changed meanwhile.
                connection.execute(
                    "UPDATE accounts SET password_hash = ? "
                    "WHERE key = ? AND password_hash = ?",
                    (new_hash, key, old_hash),
                )

            self._put(_Change(write, _ignore))
        return True

    async def set_password(self, name: str, password: str) -> None:
        """Give account *name* a new password. Raises NoSuchAccount."""
        key = name_key(name)
        if key not in self._accounts:
            raise NoSuchAccount(name)
        password_hash = await self.hasher.hash(password)

        def write(connection: sqlite3.Connection) -> bool:
            return set_password_hash(connection, key, password_hash)

        if not await self._change(key, True, write):
            raise NoSuchAccount(name)

    async def delete_account(self, name: str) -> None:
        """Delete account *name*, its offline messages and its history.
        Raises NoSuchAccount."""
        key = name_key(name)
        if not self._running:
            raise StoreClosed("the store is not running")
        if key not in self._accounts:
            raise NoSuchAccount(name)
        del self._accounts[key]
        self._pairs.clear()  # who is an account changed
        self._offline_count.pop(key, None)
        # Its offline messages still queued are written, then deleted.
        done = self._delivered[key] = self.last_id

        def write(connection: sqlite3.Connection) -> bool:
            return delete_account_rows(connection, key)

        deleted = await self._change(key, False, write, self._history_deleted)
        if self._delivered.get(key) == done:
            del self._delivered[key]
        if not deleted:
            raise NoSuchAccount(name)


def _ignore(_: object) -> None:
    pass


def _nothing(_: sqlite3.Connection) -> None:
    pass


# -- reads, in a reader thread -----------------------------------------------------

_COLUMNS = "id, time_ms, sender, recipient, text"


def _messages(rows: Iterator[tuple[int, int, str, str, bytes]]) -> list[StoredMessage]:
    return [
        StoredMessage(id, time_ms, sender, to, text.decode())
        for id, time_ms, sender, to, text in rows
    ]


class _Page(NamedTuple):
    """The part of a history page that is not in the file yet: *messages*
    (oldest first) of the *count* messages of the conversation recorded and
    not committed when the page was asked for, all with ids from *below*
    on (newer than any in the file then)."""

    messages: list[StoredMessage]
    waiting: int
    below: int


def _needed_from_file(direction: Direction, n: int, waiting: _Page, kept: int) -> int:
    """How many messages a page of *n* may need from the file, besides
    the *waiting* part: none if that fills it (``before``, ``latest``) or
    if the newest *kept* are all waiting."""
    shown = kept - waiting.waiting
    need = n - len(waiting.messages) if direction != "after" else n
    return 0 if shown <= 0 or need <= 0 else need


def _page_from_tail(
    tail: list[StoredMessage],
    whole: bool,
    direction: Direction,
    anchor: int,
    n: int,
    waiting: _Page,
    kept: int,
) -> list[StoredMessage] | None:
    """A page as ``_read_latest`` or ``_read_history`` would read it, from
    *tail*, the newest of the file's messages (all of them if *whole*),
    with the *waiting* part on top; None if the tail cannot tell."""
    newer = waiting.messages
    need = _needed_from_file(direction, n, waiting, kept)
    if not need:
        return newer
    shown = kept - waiting.waiting
    # The file's messages that may be shown, as far as the tail holds them;
    # `complete` if that is all of them.
    complete = whole or shown <= len(tail)
    shown_held = tail[-shown:] if shown <= len(tail) else tail
    if direction == "latest":
        if need <= len(shown_held):
            return shown_held[-need:] + newer
        return shown_held + newer if complete else None
    if direction == "before":
        older = [m for m in shown_held if m.id < anchor]
        if len(older) >= need:
            return older[-need:] + newer
        return older + newer if complete else None
    # After: everything above the anchor must be in the tail.
    if not complete and (not tail or anchor < tail[0].id):
        return None
    later = [m for m in shown_held if m.id > anchor]
    return (later + newer)[:n]


def _read_history(
    connection: sqlite3.Connection,
    conversation: int,
    direction: Direction,
    anchor: int,
    n: int,
    waiting: _Page,
    kept: int,
) -> list[StoredMessage]:
    """A page ``before`` or ``after`` *anchor*: read from the file, with the
    *waiting* part on top. Only the newest *kept* messages of a
    conversation are shown."""
    newer = waiting.messages
    # Chunks committed since the page was asked for are among the waiting
    # (a chunk's messages are either all below `below` or none).
    below = waiting.below
    # How many this page wants from the file, and how many of the file's
    # newest messages (below `below`) may be shown.
    need = _needed_from_file(direction, n, waiting, kept)
    if not need:
        return newer
    shown = kept - waiting.waiting
    select = f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE conversation = ? AND "
    oldest = _oldest_shown(connection, conversation, below, shown)
    if direction == "before":
        top = min(anchor, below)
        messages: list[StoredMessage] = []
        for row in connection.execute(
            select + "last_id >= ? AND first_id < ? ORDER BY last_id DESC",
            (conversation, oldest, top),
        ):
            messages[:0] = [m for m in _unpack(*row) if oldest <= m.id < top]
            if len(messages) >= need:
                break
        return messages[-need:] + newer
    messages = []
    for row in connection.execute(
        select + "last_id > ? AND last_id >= ? AND first_id < ? ORDER BY last_id",
        (conversation, anchor, oldest, below),
    ):
        messages += [m for m in _unpack(*row) if m.id > anchor and m.id >= oldest]
        if len(messages) >= n:
            break
    # The page goes on among the waiting, all newer than the file's ones.
    return (messages + newer)[:n]


_LATEST = (
    # The chunks that hold the newest `want` messages below an id, all in
    # one row (hex keeps the blobs whole through group_concat).
    "SELECT group_concat(hex(ids), ''), group_concat(hex(times), ''), "
    "group_concat(senders, char(10)), group_concat(recipients, char(10)), "
    "group_concat(hex(lengths), ''), group_concat(hex(texts), '') "
    "FROM chunks WHERE rowid IN (SELECT chunk FROM (SELECT rowid AS chunk, count, "
    "sum(count) OVER (ORDER BY last_id DESC) AS total FROM chunks "
    "WHERE conversation = ? AND last_id < ?) WHERE total - count < ?)"
)


def _read_latest(
    connection: sqlite3.Connection, conversation: int, below: int, want: int
) -> list[StoredMessage]:
    """The newest *want* messages of *conversation* below id *below*,
    oldest first, read in one step of one statement: SQLite runs each
    step (each row) without the GIL, and the thread then waits to get it
    back, up to ``sys.getswitchinterval()`` while another thread runs
    Python; a row per chunk made the slowest reads under load slow."""
    row = connection.execute(_LATEST, (conversation, below, want)).fetchone()
    if row is None or row[0] is None:
        return []
    ids, times, senders, recipients, lengths, texts = row
    # Every aggregate saw the chunks in the same order, whatever it was.
    messages = _unpack(
        bytes.fromhex(ids),
        bytes.fromhex(times),
        senders,
        recipients,
        bytes.fromhex(lengths),
        bytes.fromhex(texts),
    )
    messages.sort(key=_by_id)
    return messages[-want:]


def _by_id(message: StoredMessage) -> int:
    return message.id


def _oldest_shown(
    connection: sqlite3.Connection, conversation: int, below: int, shown: int
) -> int:
    """The id of the oldest of the newest *shown* messages of
    *conversation* in the file below id *below* (0 if it has fewer)."""
    row = connection.execute(
        "SELECT ids, total FROM (SELECT last_id, ids, sum(count) OVER "
        "(ORDER BY last_id DESC) AS total FROM chunks "
        "WHERE conversation = ? AND last_id < ?) WHERE total >= ? LIMIT 1",
        (conversation, below, shown),
    ).fetchone()
    if row is None:
        return 0
    ids, total = row
    # The chunk where the count reaches `shown`: its ids, oldest first.
    (oldest,) = struct.unpack_from("<q", ids, 8 * (total - shown))
    return int(oldest)


def _accounts_by_key(connection: sqlite3.Connection) -> dict[str, str]:
    """Every account's name as its owner wrote it, by clash key."""
    return dict(connection.execute("SELECT key, name FROM accounts"))


def _write_last_id(connection: sqlite3.Connection, last_id: int) -> None:
    connection.execute("INSERT OR REPLACE INTO meta VALUES ('last_id', ?)", (last_id,))


def _read_offline(connection: sqlite3.Connection, account: str) -> list[StoredMessage]:
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM offline WHERE account = ? ORDER BY id", (account,)
    )
    return _messages(rows)


# -- the writer ----------------------------------------------------------------------


class _Loaded:
    """What the store must know before it starts, read from the file."""

    def __init__(self, connection: sqlite3.Connection, tails: int, length: int) -> None:
        row = connection.execute(
            "SELECT value FROM meta WHERE key = 'last_id'"
        ).fetchone()
        self.last_id: int = 0 if row is None else int(row[0])
        """The highest id given out (or reserved, after a crash)."""
        self.ceiling = self.last_id
        """The highest id the file covers once the store has started."""
        # Files of before the reservations: the newest chunk may be above it.
        # (An index seek per conversation.)
        row = connection.execute(
            "SELECT max((SELECT max(last_id) FROM chunks "
            "WHERE conversation = conversations.id)) FROM conversations"
        ).fetchone()
        if row[0] is not None and row[0] > self.last_id:
            self.last_id = row[0]
        self.accounts = _accounts_by_key(connection)
        self.offline: dict[str, int] = dict(
            connection.execute("SELECT account, count(*) FROM offline GROUP BY account")
        )
        row = connection.execute(
            "SELECT value FROM meta WHERE key = 'history'"
        ).fetchone()
        self.history: int | None = None if row is None else int(row[0])
        """The *history* the store last ran with."""
        self.conversations: dict[str, int] = {
            key: id
            for id, key in connection.execute("SELECT id, key FROM conversations")
        }
        self.tails = _newest_tails(connection, tails, length)
        """The newest *length* messages of the conversations written to
        last, about *tails* bytes of them, those written to last at the
        end."""


def _newest_tails(
    connection: sqlite3.Connection, budget: int, length: int
) -> list[tuple[int, list[StoredMessage], bool]]:
    """For ``Recent``: the newest *length* messages of the conversations
    written to last, about *budget* bytes of them (or what _PRELOAD_SECONDS
    reads), and whether they are all the conversation has; those written
    to last at the end."""
    tails: list[tuple[int, list[StoredMessage], bool]] = []
    if not budget:
        return tails
    written_to_last = connection.execute(
        "SELECT id FROM conversations ORDER BY (SELECT max(last_id) FROM chunks "
        "WHERE conversation = conversations.id) DESC"
    ).fetchall()
    size = 0
    until = time.monotonic() + _PRELOAD_SECONDS
    for (conversation,) in written_to_last:
        messages = _read_latest(connection, conversation, _NO_ID, length)
        size += TAIL_COST + sum(message_cost(len(m.text)) for m in messages)
        if size > budget or time.monotonic() > until:
            break
        tails.append((conversation, messages, len(messages) < length))
    tails.reverse()
    return tails


_INSERT_OFFLINE = "INSERT OR IGNORE INTO offline VALUES (?, ?, ?, ?, ?, ?)"


class _Writer:
    """The writer thread's state and loop (everything here runs in it)."""

    def __init__(
        self, store: Store, connection: sqlite3.Connection, state: _Loaded
    ) -> None:
        self.store = store
        self.connection = connection
        self.last_history = state.history
        self.high_id = state.last_id
        # Appends per conversation since it was last pruned, and those due.
        self.appended: dict[int, int] = {}
        self.to_prune: dict[int, None] = {}
        self.commit_started = 0.0
        # Chunks (conversation, messages) in the transaction being written.
        self.inserted: list[tuple[int, int]] = []
        self.slack = max(1, store.history_size // 4)
        # Pruning leaves the chunk that straddles the newest *history* whole
        # (see _prune): with chunks of at most an eighth of it, the file
        # holds at most that many more than history shows.
        self.chunk_most = max(1, min(_CHUNK_MOST, store.history_size // 8))
        self.data_version = self._data_version()
        self.looked_at = time.monotonic()

    def run(self) -> None:
        store = self.store
        self._find_overfull()
        carried: list[_Item] = []
        stop_by: float | None = None
        while True:
            # Read before taking: once it is set, everything recorded is
            # queued (the event loop hands the last batch over first).
            stopping = store._stopping
            batch = carried + self._take(wait=not carried)
            carried = []
            if store._stop_now:
                left = len(batch) + len(store._queue)
                if left:
                    log.error("store stopped at once with %d changes unwritten", left)
                return
            if store._stopping and stop_by is None:
                stop_by = time.monotonic() + store.stop_timeout
            if batch:
                try:
                    self._commit(batch)
                except sqlite3.OperationalError as error:
                    # Locked too long by another process, or a full disk:
                    # try again (with what came meanwhile) after a pause.
                    log.warning("store write failed, will retry: %s", error)
                    carried = batch
                    if stop_by is not None and time.monotonic() > stop_by:
                        log.error("store stopped: %d changes lost", len(carried))
                        return
                    store._wake.wait(0.5 if stop_by is None else 0.1)
                    continue
            elif stopping:
                # All written: the next start goes on from the next id,
                # not from above the reservation (which a crash leaves).
                try:
                    _write_last_id(self.connection, store.last_id)
                except sqlite3.OperationalError as error:
                    log.warning("store: the last id stays reserved: %s", error)
                return
            if stop_by is None:
                # In a transaction of its own: what comes meanwhile makes
                # the next group larger, and its chunks too (measured:
                # 10 us of CPU a message against 11 in the commit's).
                self._prune_some()
                self._look_for_changes()
            elif time.monotonic() > stop_by:
                left = len(store._queue)
                if left:
                    log.error("store stopped with %d changes unwritten", left)
                return

    def _take(self, *, wait: bool) -> list[_Item]:
        """Everything queued; if *wait*, waits for something first (or a
        second, or the stop)."""
        store = self.store
        queued = store._queue
        # A commit costs the same few statements however little it holds,
        # and each statement lets the event loop's thread wait for the GIL
        # again (the writer takes it whenever the loop makes a system call).
        # Under a light but steady load, groups of _COMMIT_EVERY at least.
        pause = self.commit_started + _COMMIT_EVERY - time.monotonic()
        if pause > 0 and not store._stopping:
            time.sleep(pause)
        if wait and not queued and not store._stopping:
            store._writer_waiting = True
            if not queued and not store._stopping:
                store._wake.wait(_LOOK_EVERY if not self.to_prune else 0)
            store._writer_waiting = False
            store._wake.clear()
        popleft = queued.popleft
        return [popleft() for _ in range(len(queued))]

    def _commit(self, items: list[_Item]) -> None:
        self.commit_started = time.monotonic()
        if self._commit_alone(items):
            return
        connection = self.connection
        committed = _Committed()
        rows: list[Row] = []
        offline: list[tuple[str, int, int, str, str, bytes]] = []
        high = self.high_id
        connection.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                if type(item) is _Batch:
                    if item.conversations:
                        connection.executemany(
                            "INSERT INTO conversations (id, key) VALUES (?, ?)",
                            item.conversations,
                        )
                    rows += item.rows
                    for account, accepted in item.offline:
                        first, time_ms = accepted.first_id, accepted.time_ms
                        sender, to = accepted.sender, accepted.to
                        offline += [
                            (account, first + i, time_ms, sender, to, text)
                            for i, text in enumerate(accepted.texts)
                        ]
                    if item.high > high:
                        high = item.high
                    committed.batches.append(item)
                else:
                    assert isinstance(item, _Change)
                    # In order: what came before it is written first.
                    committed.refused += self._insert(rows, offline)
                    rows, offline = [], []
                    committed.changes.append((item, item.write(connection)))
            committed.refused += self._insert(rows, offline)
            connection.execute("COMMIT")
        except BaseException:
            _roll_back(connection)
            self.inserted.clear()
            raise
        self._done(committed, high)

    def _done(self, committed: _Committed, high: int) -> None:
        """A group is committed: tell the event loop, note what is due a
        pruning."""
        self.high_id = committed.high_id = high
        self.store._tell(self.store._committed, committed)
        appended, to_prune, slack = self.appended, self.to_prune, self.slack
        for conversation, count in self.inserted:
            count += appended.get(conversation, 0)
            appended[conversation] = count
            if count >= slack:
                to_prune[conversation] = None
        self.inserted.clear()

    def _commit_alone(self, items: list[_Item]) -> bool:
        """Commit *items* as one INSERT statement, a transaction by itself,
        if they are only history that fits one (the common case): two
        statements fewer than BEGIN, INSERT, COMMIT, and each statement
        lets the event loop's thread wait for the GIL again. (The last id
        is never written with a group: see Store._reserve.)"""
        rows: list[Row] = []
        batches: list[_Batch] = []
        for item in items:
            if not isinstance(item, _Batch) or item.conversations or item.offline:
                return False
            rows += item.rows
            batches.append(item)
        high = max(self.high_id, batches[-1].high)
        if not rows:
            return False
        chunks = list(_chunks(rows, self.chunk_most))
        if len(chunks) > _INSERT_MOST:
            return False
        _insert_chunks(self.connection, chunks)
        self.inserted += [(chunk[0], chunk[3]) for chunk in chunks]
        committed = _Committed()
        committed.batches = batches
        self._done(committed, high)
        return True

    def _insert(
        self, rows: list[Row], offline: list[tuple[str, int, int, str, str, bytes]]
    ) -> list[tuple[str, str]]:
        """Insert *rows* of history and *offline* messages; the latter's
        (to, sender) whose account is gone, which are not kept."""
        if rows:
            chunks = list(_chunks(rows, self.chunk_most))
            _insert_chunks(self.connection, chunks)
            self.inserted += [(chunk[0], chunk[3]) for chunk in chunks]
        if not offline:
            return []
        # Another process (the accounts command) may have deleted one since
        # the event loop last heard: its messages would be kept for nobody.
        keys = list({row[0] for row in offline})
        present = {
            key
            for (key,) in self.connection.execute(
                f"SELECT key FROM accounts WHERE key IN ({', '.join('?' * len(keys))})",
                keys,
            )
        }
        refused = [(row[4], row[3]) for row in offline if row[0] not in present]
        if refused:
            offline = [row for row in offline if row[0] in present]
        self.connection.executemany(_INSERT_OFFLINE, offline)
        return refused

    def _find_overfull(self) -> None:
        """At the start, after a restart with a smaller *history*: the
        conversations with more than *history* messages are due a pruning."""
        keep = self.store.history_size
        if self.last_history == keep:
            return
        self.connection.execute(
            "INSERT OR REPLACE INTO meta VALUES ('history', ?)", (keep,)
        )
        if self.last_history is not None and self.last_history < keep:
            return
        rows = self.connection.execute(
            "SELECT conversation FROM chunks GROUP BY conversation "
            "HAVING sum(count) > ?",
            (keep,),
        )
        for (conversation,) in rows:
            self.to_prune[conversation] = None

    def _prune_some(self) -> None:
        """Prune a few conversations, in a transaction of its own."""
        if not self.to_prune:
            return
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            some = self._prune()
            connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            _roll_back(connection)
            log.warning("store pruning failed, will retry: %s", error)
            return
        except BaseException:
            _roll_back(connection)
            raise
        self._pruned(some)

    def _prune(self) -> list[int]:
        """Delete the chunks of a few conversations that hold none of their
        newest *history* messages (inside a transaction), in one statement:
        each statement lets the event loop have the GIL, and the writer
        then waits to get it back. The conversations pruned."""
        some = list(itertools.islice(self.to_prune, _PRUNE_STEP))
        if not some:
            return some
        # Integers of the store's own: safe to write into the statement.
        due = ", ".join(map(str, some))
        keep = self.store.history_size
        connection = self.connection
        if not keep:
            connection.execute(f"DELETE FROM chunks WHERE conversation IN ({due})")
            return some
        # For each chunk, how many messages of its conversation are as new
        # as its own or newer (`total`): the chunks with none of the newest
        # `keep` go. The one that straddles the limit stays whole until a
        # later pruning (history never shows what it holds beyond `keep`):
        # cutting it cost a read, an unpacking and a rewrite of a chunk per
        # conversation pruned, more than a third of pruning's time.
        counted = (
            "SELECT rowid AS chunk, count, sum(count) OVER (PARTITION BY "
            "conversation ORDER BY last_id DESC) AS total FROM chunks "
            f"WHERE conversation IN ({due})"
        )
        connection.execute(
            f"DELETE FROM chunks WHERE rowid IN (SELECT chunk FROM ({counted}) "
            "WHERE total - count >= ?)",
            (keep,),
        )
        return some

    def _pruned(self, some: list[int]) -> None:
        """Conversations *some* were pruned (and committed)."""
        for conversation in some:
            del self.to_prune[conversation]
            self.appended.pop(conversation, None)

    def _data_version(self) -> int:
        row = self.connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _look_for_changes(self) -> None:
        """Once a second: if another process changed the file (the
        ``accounts`` command), tell the event loop the accounts now."""
        now = time.monotonic()
        if now - self.looked_at < _LOOK_EVERY:
            return
        self.looked_at = now
        version = self._data_version()
        if version == self.data_version:
            return
        self.data_version = version
        accounts = _accounts_by_key(self.connection)
        self.store._tell(self.store._accounts_changed, accounts)
