"""``trichat connect NAME`` on a terminal: a full-screen chat on urwid.

One window per conversation (``*``, each room, each direct peer), a
scrolling message pane, an input line with history and completion, and a
status line that says where Enter sends. With a pipe, or ``--plain``,
``trichat connect`` stays the line client of ``terminal``.

The state and rules are plain Python (``_model``, ``_text``); the urwid
widgets (``_widgets``) only draw them, and ``_app.FullScreen`` runs the
client's tasks and urwid's main loop in one Trio nursery.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import sys
import termios
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

import trio

from ...protocol.messages import PROTOCOL_VERSION, ErrorCode
from .. import terminal
from ..library import (
    BadServerFrame,
    Client,
    ConnectionLost,
    LoginRefused,
    ReconnectingClient,
    open_stream,
)
from ..terminal import (
    CONNECT_TIMEOUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    describe_error,
    escape,
    os_reason,
)
from ._model import HELP

if TYPE_CHECKING:
    from ._app import FullScreen

__all__ = ["HELP", "add_arguments", "main"]

_EPILOG = f"""\
On a terminal, a full-screen client (with a pipe, or --plain, the line
client that scripts use). A dropped connection is taken back within the
server's resume window (--no-reconnect: exit instead); closing the
terminal leaves as /quit does. In it:

{HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``connect``'s arguments to *parser*: the line client's, and
    those of the full-screen client."""
    terminal.add_arguments(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    known = parser._option_string_actions  # another front end may add them too
    if "--plain" not in known:
        parser.add_argument(
            "--plain",
            action="store_true",
            help="the line client even on a terminal",
        )
    if "--no-bell" not in known:
        parser.add_argument(
            "--no-bell",
            action="store_true",
            help="no terminal bell on a direct message or a mention",
        )


def main(args: argparse.Namespace) -> int:
    """Run ``trichat connect``: full-screen on a terminal, else the line
    client; returns the exit status."""
    if args.plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return terminal.main(args)
    try:
        status: int | None = trio.run(_connect_and_chat, args)
    except KeyboardInterrupt:  # before the signal handler was in place
        status = None
    except BaseExceptionGroup as group:
        interrupts, rest = group.split(KeyboardInterrupt)
        if interrupts is None or rest is not None:
            raise
        status = None
    finally:
        _discard_typed_input()
    return EXIT_INTERRUPTED if status is None else status


def _discard_typed_input() -> None:
    """Drop what was typed but not read, so it does not reach the shell."""
    with contextlib.suppress(termios.error, OSError, ValueError):
        termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)


def _fail(problem: str, status: int = EXIT_FAILURE) -> int:
    print(f"trichat: {problem}", file=sys.stderr, flush=True)
    return status


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | int | None:
    """The TLS context the options ask for, or the exit status of a
    failure (said)."""
    if args.tls or args.ca is not None or args.server_name is not None:
        try:
            return ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as error:
            return _fail(f"cannot use the CA file {args.ca}: {error}", EXIT_REFUSED)
    return None


async def _connect(
    args: argparse.Namespace, ssl_context: ssl.SSLContext | None
) -> Client | int:
    """The logged-in client, or the exit status of a failure (said)."""
    where = f"{args.host}:{args.port}"
    shown_name = escape(args.name)
    password = None
    if getattr(args, "password_file", None) is not None:
        try:
            password = terminal.read_password_file(args.password_file)
        except (OSError, ValueError) as error:
            why = error.strerror if isinstance(error, OSError) else error
            return _fail(
                f"cannot read a password from {args.password_file}: {why}",
                EXIT_REFUSED,
            )
    try:
        return await terminal.log_in(
            args,
            ssl_context=ssl_context,
            # The line client's --protocol, where it has one.
            version=getattr(args, "protocol", None) or PROTOCOL_VERSION,
            echo=True,
            password=password,
            # Asked for before the screen starts, as a line client would.
            ask=terminal.ask_password,
        )
    except ValueError as invalid:
        return _fail(f"cannot log in as {shown_name}: {invalid}", EXIT_REFUSED)
    except LoginRefused as refused:
        code = refused.error.code
        name_refused = code in {
            ErrorCode.BAD_NAME,
            ErrorCode.NAME_TAKEN,
            ErrorCode.ACCOUNT_REQUIRED,
            ErrorCode.NO_SUCH_ACCOUNT,
            ErrorCode.WRONG_PASSWORD,
        }
        return _fail(
            f"cannot log in as {shown_name}: {describe_error(refused.error)}",
            EXIT_REFUSED if name_refused else EXIT_FAILURE,
        )
    except (ConnectionLost, BadServerFrame) as failure:
        return _fail(f"cannot connect to {where}: {escape(str(failure))}")
    except trio.TooSlowError:
        return _fail(f"no answer from {where} within {CONNECT_TIMEOUT:.0f} s")
    except OSError as error:
        return _fail(f"cannot connect to {where}: {os_reason(error)}")


_TYPED_KEYS = {"\n": "enter", "\r": "enter", "\t": "tab", "\x7f": "backspace"}


def _take_typeahead(fd: int) -> list[str]:
    """The keys typed before the screen starts (while connecting), which
    starting it would discard: as urwid names them."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return []
    reading = list(saved)
    reading[3] = saved[3] & ~(termios.ICANON | termios.ECHO)
    reading[6] = list(saved[6])
    reading[6][termios.VMIN] = 0
    reading[6][termios.VTIME] = 0
    data = bytearray()
    termios.tcsetattr(fd, termios.TCSANOW, reading)
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except OSError:
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    keys: list[str] = []
    for char in data.decode(errors="replace"):
        if char in _TYPED_KEYS:
            keys.append(_TYPED_KEYS[char])
        elif char.isprintable():
            keys.append(char)
    return keys


async def _connect_and_chat(args: argparse.Namespace) -> int:
    # From the start to the end, Ctrl-C (SIGINT), a hang-up (SIGHUP) or
    # SIGTERM is received here, never by the default action that would
    # kill the process (or a KeyboardInterrupt anywhere): not while
    # connecting, and above all not while the chat says exit.
    with trio.open_signal_receiver(
        signal.SIGINT, signal.SIGHUP, signal.SIGTERM
    ) as signals:
        leaving = _Leaving()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leaving.watch, signals)
            status = await leaving.run(args)
            nursery.cancel_scope.cancel()
    return status


class _Leaving:
    """Where a signal goes: to the chat once it runs, which leaves saying
    exit (the user is gone: no session is to be kept for a resume); else
    it ends the connecting. A second one ends everything at once."""

    def __init__(self) -> None:
        self.app: FullScreen | None = None
        self.scope = trio.CancelScope()
        self.signal: int | None = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for number in signals:
            if self.app is not None and self.signal is None:
                self.signal = number
                if number == signal.SIGINT:
                    self.app.interrupt()
                else:
                    self.app.hang_up(number)
            else:
                # Before the chat, or again while it says goodbye: now.
                if self.signal is None:
                    self.signal = number
                self.scope.cancel()

    async def run(self, args: argparse.Namespace) -> int:
        with self.scope:
            return await _chat(args, self)
        # Cancelled by a signal before the chat started, or by a second.
        assert self.signal is not None
        return 128 + self.signal


async def _chat(args: argparse.Namespace, leaving: _Leaving) -> int:
    # urwid is imported only here: ``trichat serve`` has no use for it.
    import urwid

    from ._app import FullScreen

    ssl_context = _ssl_context(args)
    if isinstance(ssl_context, int):
        return ssl_context
    client = await _connect(args, ssl_context)
    if isinstance(client, int):
        return client
    screen = urwid.display.raw.Screen(bracketed_paste_mode=True)
    if "NO_COLOR" in os.environ:
        screen.set_terminal_properties(colors=1)

    def ring() -> None:
        screen.write("\a")
        screen.flush()

    async def chat(chatting: Client | ReconnectingClient) -> int:
        app = FullScreen(
            chatting,
            bell=not args.no_bell,
            ping_interval=args.ping_interval,
            on_bell=ring,
            exit_on_loss=args.no_reconnect,
        )
        leaving.app = app
        status = await app.run(screen, _take_typeahead(sys.stdin.fileno()))
        if app.farewell is not None:
            # The screen is given back by now: said where the shell is.
            _fail(app.farewell)
        return status

    async with client:
        if args.no_reconnect or not client.keeps_sessions:
            return await chat(client)
        reopen = partial(
            open_stream,
            args.host,
            args.port,
            ssl_context=ssl_context,
            server_hostname=args.server_name,
        )
        # Its keepalive is the lag pings': a connection silent for two
        # intervals counts as dropped.
        async with ReconnectingClient.wrap(
            client, reopen, keepalive=args.ping_interval
        ) as reconnecting:
            return await chat(reconnecting)
