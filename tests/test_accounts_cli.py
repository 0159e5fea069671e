"""``trichat accounts``: list, delete and set-password on a store file, also
while a server's store has it open. Every file is in tmp_path."""

from __future__ import annotations

import contextlib
import getpass
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trichat.cli import main
from trichat.server.hub import Accepted
from trichat.server.passwords import Hasher
from trichat.server.store import Store

STEP = 10.0


@asynccontextmanager
async def running(path: Path, history: int = 1000) -> AsyncIterator[Store]:
    store = Store(path, history=history, hasher=Hasher(memory_kib=8, time_cost=1))
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()


async def make_accounts(path: Path, *names: str) -> None:
    async with running(path) as store:
        for name in names:
            await store.register(name, "password0")


def accounts(*argv: str) -> int:
    return main(["accounts", *argv])


async def test_list_delete_and_set_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "t.db"
    await make_accounts(db, "bob", "Alice", "carol")
    assert accounts("list", "--db", str(db)) == 0
    assert capsys.readouterr().out == "Alice\nbob\ncarol\n"

    assert accounts("--db", str(db), "delete", "BOB") == 0
    assert capsys.readouterr().out == "deleted BOB\n"
    password_file = tmp_path / "password"
    password_file.write_text("new password\n")
    assert (
        accounts(
            "set-password",
            "alice",
            "--password-file",
            str(password_file),
            "--db",
            str(db),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out == "password set for alice\n"
    async with running(db) as store:
        assert await store.accounts() == ["Alice", "carol"]
        assert await store.verify("Alice", "new password")
        assert not await store.verify("Alice", "password0")


async def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    await make_accounts(db, "alice")
    password_file = tmp_path / "password"
    password_file.write_text("short\n")
    assert accounts("delete", "nobody", "--db", str(db)) == 1
    assert "no such account: nobody" in capsys.readouterr().err
    assert accounts("set-password", "nobody", "--db", str(db)) == 1
    assert "no such account: nobody" in capsys.readouterr().err
    assert (
        accounts(
            "set-password",
            "alice",
            "--db",
            str(db),
            "--password-file",
            str(password_file),
        )
        == 1
    )
    error = capsys.readouterr().err
    assert "8 to 256 characters" in error
    assert "short" not in error
    missing = str(tmp_path / "missing")
    assert (
        accounts("set-password", "alice", "--db", str(db), "--password-file", missing)
        == 1
    )
    assert "No such file" in capsys.readouterr().err
    typo = tmp_path / "t.bd"
    assert accounts("list", "--db", str(typo)) == 1
    assert f"no store at {typo}" in capsys.readouterr().err
    assert not await trio.Path(typo).exists()
    async with running(db) as store:
        assert await store.verify("alice", "password0")


async def test_the_password_from_a_prompt_that_does_not_echo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    await make_accounts(db, "alice")
    answers = iter(["typed password", "typed password", "once more", "not the same"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert accounts("set-password", "alice", "--db", str(db)) == 0
    assert prompts == ["New password: ", "Again: "]
    assert accounts("set-password", "alice", "--db", str(db)) == 1
    assert "differ" in capsys.readouterr().err
    async with running(db) as store:
        assert await store.verify("alice", "typed password")

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(getpass, "getpass", interrupted)
    # Ctrl-C at the prompt: the status a shell gives an interrupted command.
    assert accounts("set-password", "alice", "--db", str(db)) == 130


async def test_the_default_file_is_made_in_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert accounts("list") == 0
    assert capsys.readouterr().out == ""
    assert await trio.Path(tmp_path / "data" / "trichat" / "trichat.db").exists()


async def test_changes_while_the_server_runs_reach_it(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    password_file = tmp_path / "password"
    password_file.write_text("changed password\n")
    async with running(db) as store:
        await store.register("alice", "password0")
        await store.register("bob", "password0")
        for i in range(1, 101):
            assert store.record_offline(Accepted("carol", "bob", [b"hi"], i, 0), "bob")
        await store.flush()
        latest = await store.history("carol", "latest", None, 5, account_key="bob")
        assert [m.id for m in latest] == [96, 97, 98, 99, 100]
        assert (
            await trio.to_thread.run_sync(
                accounts,
                "set-password",
                "alice",
                "--db",
                str(db),
                "--password-file",
                str(password_file),
            )
            == 0
        )
        assert (
            await trio.to_thread.run_sync(accounts, "delete", "bob", "--db", str(db))
            == 0
        )
        assert await store.verify("alice", "changed password")
        # The server hears of the deletion within about a second. Its own
        # deletion of what it still holds for bob cannot be written yet
        # (the file's write lock is held): its history is gone anyway, in
        # memory as in the file.
        await store.flush()  # (a rehash of alice's new password is written)
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with trio.fail_after(STEP):
                while store.is_account("bob"):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            bob = await store.history("carol", "latest", None, 5, account_key="bob")
            assert bob == []
        finally:
            holder.close()
        assert store.is_account("alice")
        assert await store.accounts() == ["alice"]
        assert await store.offline("bob") == []
        await store.flush()
        assert await store.history("carol", "latest", None, 5, account_key="bob") == []


@pytest.mark.parametrize("by", ["command", "server"])
async def test_a_deleted_accounts_messages_leave_no_bytes_in_the_file(
    tmp_path: Path, by: str
) -> None:
    # Texts long enough that their chunks spill into overflow pages, which a
    # delete frees whole; and more of them than the history keeps, so that
    # the oldest are pruned first. None may stay, pruned or deleted.
    secret = b"no one else may read this " * 40
    db = tmp_path / "t.db"
    async with running(db, history=20) as store:
        await store.register("bob", "password0")
        await store.register("carol", "password0")
        for i in range(1, 7):
            store.record(Accepted("bob", "#room", [b"kept"], i, 0))
            assert store.record_offline(
                Accepted("alice", "bob", [secret + b"offline"], 20 + i, 0), "bob"
            )
            store.record(Accepted("carol", "alice", [b"carol's own"], 30 + i, 0))
        for i in range(100, 400):
            store.record(Accepted("alice", "bob", [secret + b"%d" % i], i, 0))
            if i % 10 == 0:
                await store.flush()  # a chunk per flush
        await store.flush()
        with trio.fail_after(STEP):
            while _stored(db) > 100:  # noqa: ASYNC110 (pruned in the background)
                await trio.sleep(0.05)
        if by == "server":
            await store.delete_account("bob")
    if by == "command":
        assert accounts("delete", "bob", "--db", str(db)) == 0
    # (Closed by its last user, the file has taken in its write-ahead log.)
    data = db.read_bytes()
    assert not (tmp_path / "t.db-wal").exists()
    assert b"no one else may read" not in data
    assert b"carol's own" in data
    assert b"kept" in data


@pytest.mark.parametrize("by", ["command", "server"])
async def test_while_the_server_runs_its_log_keeps_no_copy_of_them_either(
    tmp_path: Path, by: str
) -> None:
    secret = b"not in the log either " * 40
    db = tmp_path / "t.db"
    log = tmp_path / "t.db-wal"
    async with running(db) as store:
        await store.register("bob", "password0")
        for i in range(1, 31):
            store.record(Accepted("alice", "bob", [secret + b"%d" % i], i, 0))
        await store.flush()
        assert secret in log.read_bytes()  # the log has them, as written
        if by == "server":
            await store.delete_account("bob")
        else:
            assert (
                await trio.to_thread.run_sync(
                    accounts, "delete", "bob", "--db", str(db)
                )
                == 0
            )
        # Emptied by the checkpoint after the deletion (within a second or
        # two: the server hears of the command's within a second).
        with trio.fail_after(STEP):
            while secret in log.read_bytes() or secret in db.read_bytes():  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert await store.history("alice", "latest", None, 5, account_key="bob") == []


def _stored(db: Path) -> int:
    """How many messages the history in *db* holds."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        (count,) = connection.execute("SELECT sum(count) FROM chunks").fetchone()
    return int(count)


_ACCOUNTS = [sys.executable, "-m", "trichat", "accounts"]


async def test_with_no_terminal_the_password_is_not_read_where_it_may_echo(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    await make_accounts(db, "alice")
    # A session of its own: no controlling terminal for getpass to open.
    result = await trio.run_process(
        [*_ACCOUNTS, "set-password", "alice", "--db", str(db)],
        stdin=b"piped password\npiped password\n",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        start_new_session=True,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "trichat accounts: no terminal to ask for the password on: give it"
        " with --password-file FILE ('-': standard input)\n"
    )
    async with running(db) as store:
        assert await store.verify("alice", "password0")
