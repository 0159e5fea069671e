"""``trichat accounts``: list, delete and set the password of accounts.

An operator's command on the server's store file (``--db``, by default
the one ``trichat serve`` uses), safe while the server runs: SQLite lets
one writer at a time and each waits for the other (``BUSY_TIMEOUT``), and
the server sees the change within about a second. A new password is read
from ``--password-file`` (its first line) or asked for twice at a prompt
that does not echo it; it is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import signal
import sqlite3
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..protocol.messages import name_key
from .passwords import BadPassword, Hasher, check_password
from .store import (
    StoreError,
    account_names,
    default_path,
    delete_account_rows,
    open_database,
    set_password_hash,
)

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --db before the action or after it: both work.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"the server's store file (default: {default_path()})",
    )
    parser.add_argument("--db", default=None, metavar="PATH", help=argparse.SUPPRESS)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list", parents=[where], help="print every account's name, one a line"
    )
    delete = actions.add_parser(
        "delete",
        parents=[where],
        help="delete an account, its offline messages and its history",
    )
    delete.add_argument("name", metavar="NAME")
    password = actions.add_parser(
        "set-password", parents=[where], help="give an account a new password"
    )
    password.add_argument("name", metavar="NAME")
    password.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-': standard "
        "input) instead of asking for it",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``trichat accounts``; the exit status."""
    path = Path(args.db) if args.db else default_path()
    if args.db and not path.exists():
        # A typo would otherwise make an empty store and list nobody.
        return _fail(f"no store at {path}: `trichat serve --db {path}` makes one")
    try:
        connection = open_database(path)
    except (OSError, StoreError, sqlite3.Error) as error:
        return _fail(error)
    try:
        if args.action == "list":
            for name in account_names(connection):
                print(name)
            return 0
        key = name_key(args.name)
        if args.action == "delete":
            with _transaction(connection):
                deleted = delete_account_rows(connection, key)
            if not deleted:
                return _fail(f"no such account: {args.name}")
            print(f"deleted {args.name}")
            return 0
        if not _exists(connection, key):
            return _fail(f"no such account: {args.name}")
        password_hash = Hasher().hash_sync(_new_password(args.password_file))
        with _transaction(connection):
            changed = set_password_hash(connection, key, password_hash)
        if not changed:  # deleted meanwhile
            return _fail(f"no such account: {args.name}")
        print(f"password set for {args.name}")
        return 0
    except (BadPassword, NoTerminal, OSError, sqlite3.Error) as error:
        return _fail(error)
    except EOFError:
        print(file=sys.stderr)
        return _fail("no password given")
    except KeyboardInterrupt:  # Ctrl-C at the prompt: as a shell reports it
        print(file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        connection.close()


def _exists(connection: sqlite3.Connection, key: str) -> bool:
    row = connection.execute("SELECT 1 FROM accounts WHERE key = ?", (key,))
    return row.fetchone() is not None


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed at the end, rolled back on error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _new_password(password_file: str | None) -> str:
    if password_file == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    elif password_file is not None:
        with open(password_file, encoding="utf-8") as file:
            password = file.readline().rstrip("\r\n")
    else:
        password = _ask("New password: ")
        check_password(password)
        if _ask("Again: ") != password:
            raise BadPassword("the two passwords differ")
    check_password(password)
    return password


class NoTerminal(Exception):
    """A password is to be asked for, and there is no terminal."""


def _ask(prompt: str) -> str:
    """A password typed on the terminal, not echoed. With no terminal,
    getpass would read standard input with a warning that it may echo:
    refused instead, pointing to --password-file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise NoTerminal(
                "no terminal to ask for the password on: give it with"
                " --password-file FILE ('-': standard input)"
            ) from None


def _fail(problem: object) -> int:
    print(f"trichat accounts: {problem}", file=sys.stderr)
    return 1
