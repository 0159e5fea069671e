"""``trichat connect NAME``: chat from a terminal, or from a script through pipes.

``main`` parses nothing itself: ``add_arguments`` fills the ``connect``
subcommand's parser and ``main`` runs the session. The session proper is
``run_session``, which takes its input lines and output streams as
arguments, so tests (and other front ends) can drive it without a terminal.

One line per event, each starting with its time: the server's, for a
protocol-2 message; else the local time it was shown at.
"""

from __future__ import annotations

import argparse
import codecs
import datetime
import errno
import getpass
import os
import re
import signal
import ssl
import sys
import unicodedata
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Final, TextIO, TypeVarTuple

import trio

if sys.platform != "win32":
    import termios

from .._process import until_interrupted
from .._units import duration
from ..protocol.messages import (
    BROADCAST,
    MAX_HISTORY,
    PROTOCOL_VERSION,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Hist,
    Joined,
    Login,
    Message,
    Parted,
    PasswordChanged,
    Ping,
    Pong,
    Registered,
    is_room,
    name_key,
)
from .library import (
    DEFAULT_PORT,
    Backoff,
    BadServerFrame,
    Client,
    ConnectionLost,
    Disconnected,
    Event,
    HistoryPage,
    LoginRefused,
    Pacer,
    Reconnecting,
    ReconnectingClient,
    ReconnectingEvent,
    Resumed,
    ResumeFailed,
    RoomList,
    StreamOpener,
    connect,
    open_stream,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "PasswordPrompt",
    "add_arguments",
    "ask_password",
    "describe_error",
    "escape",
    "log_in",
    "main",
    "read_password_file",
    "run_session",
]

Args = TypeVarTuple("Args")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
"""The server could not be reached, or the connection was lost or closed."""
EXIT_REFUSED: Final = 2
"""The server refused the name or its password (or the command line was
wrong)."""
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C, as a shell reports a SIGINT."""

PROMPT: Final = "> "
CONNECT_TIMEOUT: Final = 30.0
"""How long connecting and logging in may take, in seconds."""
JOIN_HISTORY: Final = 20
"""How many earlier messages of a room are shown on joining it."""
LAST_ANSWERS_TIMEOUT: Final = 5.0
"""How long, in seconds, a script's session waits on leaving for the
answers to what it asked (a join's members, /history, an error)."""

AnyClient = Client | ReconnectingClient
"""What a session chats over: a plain client, which ends with its
connection, or one that reconnects and resumes by itself."""

PasswordPrompt = Callable[[str], Awaitable[str | None]]
"""Asks the user for a password with the prompt it is given, without
echo; None when none was given (end of input)."""

HELP: Final = """\
@NAME TEXT       send TEXT to NAME, who becomes the current target
/msg NAME TEXT   the same
#ROOM TEXT       send TEXT to ROOM, a room you are in; it becomes the target
/all TEXT        send TEXT to everyone online
TEXT             send TEXT to the current target (the prompt shows it): the
                 room or user you last chose; while it is not a room, also
                 the last user who wrote to you. With no current target and
                 only one other user online, to that user
//TEXT           send /TEXT (a text that starts with /) like TEXT
/join #ROOM      enter ROOM (made if nobody is in it); it becomes the target
/part [#ROOM]    leave ROOM (default: the current target's room)
/rooms           list the rooms that have members
/who [#ROOM]     list who is online and who is in your rooms (or in ROOM)
/history [N]     show the last N (default 20, at most 500) messages with the
                 current target, marked as earlier
/register        make your name an account, with a password (asked for)
/password        set a new password for your account (asked for)
/help            show this help
/quit            leave (end of input, Ctrl-D, does too)"""

_ESC = "\x1b["
_RESET = _ESC + "0m"
_DIM = _ESC + "2m"
_BOLD = _ESC + "1m"
_RED = _ESC + "31m"
_CLEAR_LINE = "\r" + _ESC + "K"
_LINE_UP = _ESC + "1A"

_ERROR_WORDS: Final = {
    ErrorCode.BAD_FRAME: "the server did not understand",
    ErrorCode.BAD_NAME: "bad name",
    ErrorCode.NAME_TAKEN: "name taken",
    ErrorCode.NOT_LOGGED_IN: "not logged in",
    ErrorCode.ALREADY_LOGGED_IN: "already logged in",
    ErrorCode.NO_SUCH_USER: "no such user",
    ErrorCode.TOO_LONG: "message too long",
    ErrorCode.RATE_LIMITED: "rate limited",
    ErrorCode.SERVER_FULL: "the server is full",
    ErrorCode.TOO_MANY_CONNECTIONS: "too many connections from this address",
    ErrorCode.LOGIN_TIMEOUT: "login timed out",
    ErrorCode.SHUTTING_DOWN: "the server is shutting down",
}
# Refusals of the name itself, or of its password; other refusals (a full
# server...) are failures.
_NAME_REFUSALS: Final = frozenset(
    {
        ErrorCode.BAD_NAME,
        ErrorCode.NAME_TAKEN,
        ErrorCode.ACCOUNT_REQUIRED,
        ErrorCode.NO_SUCH_ACCOUNT,
        ErrorCode.WRONG_PASSWORD,
    }
)
# Control, format (bidi among them), surrogate, line and paragraph separators.
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_COMMAND = re.compile(r"/(\S*)(?:\s+(.*))?", re.DOTALL)
_TARGETED = re.compile(r"(\S+)(?:\s+(.*))?", re.DOTALL)


def escape(text: str) -> str:
    """*text* safe to print: control characters (TAB too), escape sequences,
    bidi and other format characters, and line separators are shown as
    Python escapes (``\\x1b``, ``\\u202e``); everything else is unchanged."""
    if text.isprintable():
        return text
    return "".join(_escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def describe_error(error: Error) -> str:
    """The server's error in plain words, e.g. ``no such user: carol``.

    A code this client does not know (from a newer server) is shown as the
    server wrote it, with spaces for hyphens: ``quota exceeded: ...``.
    """
    code = error.code
    words = _ERROR_WORDS.get(code) if isinstance(code, ErrorCode) else None
    if words is None:
        words = escape(code.value.replace("-", " "))
    return f"{words}: {escape(error.detail)}"


def _seconds(delay: float) -> str:
    """*delay* in seconds for people: ``2``, ``1.4``, ``0.05``, ``12``."""
    if delay >= 10:
        return f"{delay:.0f}"
    if delay < 0.95:
        return f"{delay:.1g}"
    return f"{delay:.1f}".removesuffix(".0")


def _gap_words(failed: ResumeFailed) -> str:
    """Where messages may be missing after a resume that failed."""
    places = [
        "to all" if gap == BROADCAST else f"in {escape(gap)}" for gap in failed.gaps
    ]
    if failed.direct_gap:
        if not places:
            return "messages sent to you directly may be missing"
        places.append("sent to you directly")
    if not places:
        return "nothing is missing"
    if len(places) > 1:
        places[-2:] = [f"{places[-2]} and {places[-1]}"]
    return "messages may be missing " + ", ".join(places)


def _own_line(to: str, text: str) -> str:
    """How a message of the user's own to *to* is shown, after ``you``."""
    if to == BROADCAST:
        return f"(to all): {escape(text)}"
    if is_room(to):
        return f"({escape(to)}): {escape(text)}"
    return f"-> {escape(to)}: {escape(text)}"


class _Session:
    """The state of one terminal session; ``run_session`` drives it."""

    def __init__(
        self,
        client: AnyClient,
        out: TextIO,
        err: TextIO,
        *,
        tty: bool,
        colour: bool,
        clock: Callable[[], datetime.datetime],
        timezone: datetime.tzinfo | None,
        ask_password: PasswordPrompt | None = None,
        wait_for_answers: bool = False,
    ) -> None:
        self.client = client
        self.ask_password = ask_password
        """How a password is asked for; None: it is the next input line."""
        self.wait_for_answers = wait_for_answers
        """Whether leaving waits for the answers to what was sent."""
        self.out = out
        self.err = err
        self.tty = tty
        self.colour = colour
        self.clock = clock
        self.timezone = timezone
        self.target: str | None = None
        """Where plain TEXT goes: a user or a room."""
        self.status: int | None = None
        self.signalled = False
        """Whether a signal ended the session (it says exit all the same)."""
        self.silent = False
        self.scope = trio.CancelScope()
        self._pings = 0
        self._prompted = False
        # Lines written so far, and how many there were when the user's
        # current input line arrived.
        self._written = 0
        self._written_before_input = 0
        # What the user's last input line sent, (to, text), until its echo
        # takes the place of the line as typed.
        self._sent: tuple[str, str] | None = None
        # The clash key of the room whose member list is coming in: the
        # joins right after our own are of those already there.
        self._listing: str | None = None
        # The input lines, for a command that reads the next one.
        self._lines: AsyncIterator[str] | None = None
        # Rooms just joined whose earlier messages are on their way, by
        # clash key, with the live messages held back until they arrive;
        # and the rooms whose earlier messages are still to be asked for.
        self._earlier: dict[str, list[Event]] = {}
        self._ask_earlier: deque[str] = deque()
        # A join or part was sent whose answer may not have come yet.
        self._rooms_changed = False
        # Why the connection dropped, until the first attempt to reconnect
        # says so.
        self._lost: str | None = None
        # What is sent goes no faster than the server takes it: a script's
        # lines would otherwise be refused by its flood limit.
        self._pacer = Pacer.for_server(client.settings, trio.current_time())
        # The ping whose pong says that every answer to what was sent
        # before it has arrived, and the event its pong sets.
        self._last_ping: str | None = None
        self._answered = trio.Event()

    # Output

    def paint(self, text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if self.colour else text

    def emit(
        self,
        text: str,
        *,
        stamp: bool = True,
        when: datetime.datetime | None = None,
        replace_input: bool = False,
    ) -> None:
        """Write one line, time-stamped unless *stamp* is false: with *when*
        (the server's time, in the local zone; with the date if it is not
        today's), else the local time now.

        On a TTY the prompt is cleared first and shown again after it;
        *replace_input* also overwrites the line the user just typed.
        """
        if stamp:
            now = self.clock()
            if when is None:
                shown = now.strftime("%H:%M:%S")
            else:
                local = when.astimezone(self.timezone)
                today = local.date() == now.date()
                shown = local.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S")
            text = self.paint(shown, _DIM) + " " + text
        self._written += 1
        try:
            if self.tty:
                before = _LINE_UP + _CLEAR_LINE if replace_input else _CLEAR_LINE
                self.out.write(before + text + "\n" + self.prompt_text())
                self._prompted = True
            else:
                self.out.write(text + "\n")
            self.out.flush()
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            self.hung_up()

    def hung_up(self) -> None:
        """The terminal is gone (reading or writing it fails with EIO):
        the user left, as with SIGHUP, which may not have come yet."""
        self.signalled = True
        self.finish(128 + signal.SIGHUP)

    def info(self, text: str) -> None:
        self.emit(self.paint(f"* {text}", _DIM))

    def problem(self, text: str) -> None:
        self.emit(self.paint(f"! {text}", _RED))

    def prompt_text(self) -> str:
        """The prompt: the current target, if any, before ``> ``."""
        if self.target is None:
            return PROMPT
        return self.paint(escape(self.target), _BOLD) + PROMPT

    def prompt(self) -> None:
        if self.tty:
            self.out.write(self.prompt_text())
            self.out.flush()

    def end(self) -> None:
        if self.tty:
            try:
                self.out.write(_CLEAR_LINE)
                self.out.flush()
            except OSError as error:
                if error.errno != errno.EIO:  # EIO: the terminal is gone
                    raise

    def finish(self, status: int, problem: str | None = None) -> None:
        """Record how the session ends (the first call wins) and end it."""
        if self.status is None:
            self.status = status
            if problem is not None:
                self.end()
                self.err.write(f"trichat: {problem}\n")
                self.err.flush()
        self.scope.cancel()

    # What arrives

    async def receive(self) -> None:
        while True:
            try:
                async for message in self.client:
                    self.show(message)
                    while self._ask_earlier:
                        room = self._ask_earlier.popleft()
                        await self.request(self.client.history, room, JOIN_HISTORY)
            except BadServerFrame as bad:
                if bad.fatal:
                    self.finish(EXIT_FAILURE, escape(str(bad)))
                    return
                self.problem(f"ignored a frame: {escape(str(bad))}")
                continue
            except ConnectionLost as lost:
                self.finish(EXIT_FAILURE, escape(str(lost)))
                return
            self.finish(EXIT_FAILURE, "the server closed the connection")
            return

    def show(self, message: ReconnectingEvent) -> None:
        if self.silent:
            self.silent = False
            self.info("the server is answering again")
        own = name_key(self.client.name)
        listing, self._listing = self._listing, None
        match message:
            case Disconnected() | Reconnecting() | Resumed() | ResumeFailed():
                self.show_connection(message)
            case Message(to=to) if name_key(to) in self._earlier:
                # Shown after the room's earlier messages.
                self._earlier[name_key(to)].append(message)
            case HistoryPage():
                self.show_page(message)
            case Error(ErrorCode.NO_HISTORY | ErrorCode.NOT_IN_ROOM) if (
                self._no_earlier(message)
            ):
                pass
            case Registered(name):
                self.info(
                    f"{escape(name)} is an account now: logging in as"
                    " it takes the password"
                )
            case PasswordChanged(name):
                self.info(f"the password of {escape(name)} is changed")
            case Message() if self.client.echo and self.client.is_own(message):
                self.show_own(message)
            case Delivery() | Message():
                self.show_said(message)
            case Joined(room, name) if name_key(name) == own:
                self.target = room
                self._listing = name_key(room)
                self.info(f"you joined {escape(room)}")
                if self.keeps_history() and name_key(room) not in self._earlier:
                    self._earlier[name_key(room)] = []
                    self._ask_earlier.append(room)
            case Joined(room, name):
                if listing == name_key(room):
                    self._listing = listing
                    self.info(f"{escape(name)} is in {escape(room)}")
                else:
                    self.info(f"{escape(name)} joined {escape(room)}")
            case Parted(room, name) if name_key(name) == own:
                if self.target is not None and name_key(self.target) == name_key(room):
                    self.target = None
                self.info(f"you left {escape(room)}")
            case Parted(room, name):
                self.info(f"{escape(name)} left {escape(room)}")
            case RoomList():
                self.show_rooms(message)
            case Login(name) if name_key(name) != own:
                self.info(f"{escape(name)} is online")
            case Exit(str(name)) if name_key(name) != own:
                self.info(f"{escape(name)} left")
            case Error(ErrorCode.SHUTTING_DOWN) if isinstance(
                self.client, ReconnectingClient
            ):
                # Said, not the end: the client reconnects (a restart), as
                # after any drop, and gives up past the resume window.
                self.problem(describe_error(message))
            case Error(code) if code.closes:
                self.finish(EXIT_FAILURE, describe_error(message))
            case Error():
                self.problem(describe_error(message))
            case Pong(token) if token == self._last_ping:
                self._answered.set()
            case Login() | Exit() | Ping() | Pong():
                pass

    def show_connection(
        self, event: Disconnected | Reconnecting | Resumed | ResumeFailed
    ) -> None:
        """What a reconnecting client says about its connection: one line
        for each attempt to reconnect and for how it came back."""
        match event:
            case Disconnected(reason):
                self._lost = reason
                # The earlier messages asked for may never come: show what
                # was held back for them.
                held, self._earlier = self._earlier, {}
                for events in held.values():
                    for each in events:
                        self.show(each)
            case Reconnecting(attempt, delay):
                when = f"reconnecting in {_seconds(delay)} s..."
                lost, self._lost = self._lost, None
                if lost is not None:
                    self.problem(f"connection lost ({escape(lost)}), {when}")
                else:
                    self.problem(f"still away, {when} (attempt {attempt})")
            case Resumed(missed):
                self._lost = None
                plural = "" if missed == 1 else "s"
                self.info(f"back: {missed} message{plural} missed while away")
            case ResumeFailed():
                self._lost = None
                recovered = ""
                if event.recovered:
                    count = event.recovered
                    recovered = (
                        f"; {count} message{'' if count == 1 else 's'} found in"
                        f" the server's history follow{'s' if count == 1 else ''}"
                    )
                self.problem(
                    f"back, but the session was not kept ({escape(event.reason)}):"
                    f" logged in again as {escape(self.client.name)} and joined"
                    f" your rooms again{recovered}; {_gap_words(event)}"
                )
                # Sent before the drop, and not known to have arrived: the
                # user is told, and may send them again.
                for talk in event.unconfirmed:
                    self.problem(
                        f"may not have been delivered, to {escape(talk.to)}:"
                        f" {escape(talk.text)}"
                    )

    def keeps_history(self) -> bool:
        """Whether the server keeps messages to show as earlier ones."""
        client = self.client
        return client.version >= 2 and client.settings.get("history", "0") != "0"

    def show_page(self, page: HistoryPage) -> None:
        """Earlier messages: a line that says where they are from, then
        one line each, marked ``[earlier]``; for a room just joined, then
        the live messages held back meanwhile."""
        held = self._earlier.pop(name_key(page.target), None)
        live = {event.id for event in held or () if isinstance(event, Message)}
        shown = [hist for hist in page if hist.id not in live]
        where = self._conversation(page.target)
        if shown:
            more = "" if page.complete else f"; /history {MAX_HISTORY} shows more"
            count = len(shown)
            self.info(
                f"{count} earlier message{'s' if count > 1 else ''} {where}{more}:"
            )
            for hist in shown:
                self.show_earlier(hist)
        elif held is None:
            self.info(f"no earlier messages {where}")
        for event in held or ():
            self.show(event)

    def show_earlier(self, hist: Hist) -> None:
        """One stored message, as a live one is shown (the user's own as
        ``you``), after ``[earlier]``."""
        own = name_key(hist.sender) == name_key(self.client.name)
        who = self.paint("you" if own else escape(hist.sender), _BOLD)
        if own:
            said = f"{who} {_own_line(hist.to, hist.text)}"
        elif hist.to == BROADCAST:
            said = f"{who} (to all): {escape(hist.text)}"
        elif is_room(hist.to):
            said = f"{who} ({escape(hist.to)}): {escape(hist.text)}"
        else:
            said = f"{who}: {escape(hist.text)}"
        self.emit(self.paint("[earlier]", _DIM) + " " + said, when=hist.time)

    @staticmethod
    def _conversation(target: str) -> str:
        if target == BROADCAST:
            return "to all"
        if is_room(target):
            return f"in {escape(target)}"
        return f"with {escape(target)}"

    def _no_earlier(self, error: Error) -> bool:
        """Whether *error* refuses the earlier messages of a room just
        joined (the server keeps none after all, or the room was left);
        then the messages held back are shown."""
        if not self._earlier:
            return False
        if error.code is ErrorCode.NO_HISTORY:
            key = next(iter(self._earlier))
        else:
            key = name_key(error.detail)
            if key not in self._earlier:
                return False
        for event in self._earlier.pop(key):
            self.show(event)
        return True

    def show_said(self, message: Delivery | Message) -> None:
        """A message from someone else: ``bob: TEXT`` when it is for us
        alone, ``bob (to all): TEXT``, ``bob (#lunch): TEXT``."""
        when = message.time if isinstance(message, Message) else None
        sender = self.paint(escape(message.sender), _BOLD)
        text = escape(message.text)
        if message.is_broadcast:
            self.emit(f"{sender} (to all): {text}", when=when)
        elif message.room is not None:
            self.emit(f"{sender} ({escape(message.room)}): {text}", when=when)
        else:
            if self.target is None or not is_room(self.target):
                self.target = message.sender
            self.emit(f"{sender}: {text}", when=when)

    def show_own(self, message: Message) -> None:
        """The server's copy of a message of ours (echo): on a TTY it is
        the line that says what went where, in place of the line as typed
        when that is the last line on screen; elsewhere nothing is shown,
        as without echo."""
        if not self.tty:
            return
        sent, self._sent = self._sent, None
        last_typed = sent is not None and (name_key(sent[0]), sent[1]) == (
            name_key(message.to),
            message.text,
        )
        you = self.paint("you", _BOLD)
        self.emit(
            f"{you} {_own_line(message.to, message.text)}",
            when=message.time,
            replace_input=last_typed and self._written == self._written_before_input,
        )

    def show_rooms(self, listing: RoomList) -> None:
        if not listing:
            self.info("no rooms")
            return
        count = len(listing)
        self.info(f"{count} room{'s' if count > 1 else ''}:")
        for info in listing:
            members = f"{info.members} member{'s' if info.members > 1 else ''}"
            if self.client.members(info.room):
                members += ", you among them"
            self.info(f"  {escape(info.room)}: {members}")

    async def keepalive(self, interval: float) -> None:
        """Ping when the server has been quiet for *interval* seconds; say so
        once when not even that gets an answer within another interval."""
        client = self.client
        while True:
            await trio.sleep_until(client.last_heard + interval)
            if trio.current_time() < client.last_heard + interval:
                continue
            self._pings += 1
            try:
                await client.ping(f"keepalive-{self._pings}")
            except ConnectionLost as lost:
                self.finish(EXIT_FAILURE, escape(str(lost)))
                return
            sent = trio.current_time()
            await trio.sleep_until(sent + interval)
            if client.last_heard < sent and not self.silent:
                self.silent = True
                quiet = trio.current_time() - client.last_heard
                self.problem(
                    f"the server is not answering (nothing heard for {quiet:.0f} s)"
                )

    # What the user types

    async def read(self, lines: AsyncIterable[str]) -> None:
        self._lines = aiter(lines)
        try:
            async for line in self._lines:
                if not await self.handle(line):
                    break
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            self.hung_up()
            return
        if self.wait_for_answers:
            await self.last_answers()
        self.finish(EXIT_OK)

    async def last_answers(self) -> None:
        """Wait (at most LAST_ANSWERS_TIMEOUT) until the server has answered
        what was sent: a script that ends with ``/join``, ``/history`` or a
        message the server refuses sees the answer. The earlier messages
        of a room joined again after a reconnection are asked for only when
        the join's answer arrives, so it waits again while any are due."""
        with trio.move_on_after(LAST_ANSWERS_TIMEOUT):
            while await self.caught_up() and (self._earlier or self._ask_earlier):
                pass

    async def caught_up(self) -> bool:
        """Wait (at most LAST_ANSWERS_TIMEOUT) until the server has answered
        everything sent so far: it answers in order, so the pong of a ping
        sent now comes after all of it. False if no answer came (no
        connection, or not in time)."""
        client = self.client
        if isinstance(client, ReconnectingClient) and not client.connected:
            return False  # nobody to answer now
        self._pings += 1
        self._last_ping = f"last-{self._pings}"
        self._answered = answered = trio.Event()
        await self.pace()
        try:
            # Not under the time limit: a send cut short would leave half a
            # frame on the connection. (If it dropped since the check above,
            # this waits, as every line sent meanwhile does, until it is back.)
            await client.ping(self._last_ping)
        except ConnectionLost:
            return False
        with trio.move_on_after(LAST_ANSWERS_TIMEOUT):
            await answered.wait()
        return answered.is_set()

    async def handle(self, line: str) -> bool:
        """Act on one input line; False when it asks to quit."""
        self._prompted = False
        self._written_before_input = self._written
        if not line.strip():
            pass
        elif line.startswith("//"):
            await self.say(line[1:])
        elif line.startswith("/"):
            if not await self.command(line):
                return False
        elif line.startswith("@"):
            await self.targeted(line[1:], usage="@NAME TEXT")
        elif line.startswith("#"):
            await self.targeted(line, usage="#ROOM TEXT")
        else:
            await self.say(line)
        if not self._prompted:
            self.prompt()
        return True

    async def command(self, line: str) -> bool:
        match = _COMMAND.fullmatch(line)
        assert match is not None  # any line that starts with "/" matches
        name, rest = match[1].lower(), match[2] or ""
        if name == "quit":
            return False
        if name == "msg":
            await self.targeted(rest, usage="/msg NAME TEXT")
        elif name == "all":
            if rest.strip():
                await self.send(None, rest)
            else:
                self.problem("usage: /all TEXT")
        elif name == "join":
            await self.join(rest.strip())
        elif name == "part":
            await self.part(rest.strip())
        elif name == "rooms":
            await self.request(self.client.list_rooms)
        elif name == "who":
            # Answered from what the client knows: after a join or a part,
            # once their answers came ("/join #r" then "/who #r" lists #r).
            if self._rooms_changed:
                self._rooms_changed = False  # (once: a silent server waits 5 s)
                await self.caught_up()
            self.who(rest.strip())
        elif name == "history":
            await self.history(rest.strip())
        elif name in ("register", "password"):
            if rest.strip():
                # A password typed on the command line would be shown.
                self.problem(f"usage: /{name} (the password is asked for)")
                return True
            password = await self.new_password()
            plain = self.plain_client()
            if password is not None and plain is not None:
                change = plain.change_password
                await self.request(
                    plain.register if name == "register" else change, password
                )
        elif name == "help":
            for help_line in HELP.splitlines():
                self.emit(help_line, stamp=False)
        else:
            self.problem(f"unknown command /{escape(match[1])}: /help lists them")
        return True

    async def leave_on(self, signals: AsyncIterator[int]) -> None:
        """End the session at the first of *signals*: Ctrl-C, a closed
        terminal or a polite kill is a user who left, not a dropped
        connection to be resumed."""
        async for number in signals:
            self.signalled = True
            self.finish(128 + number)
            return

    async def pace(self) -> None:
        """Wait, if need be, until one more frame is within the flood limit
        the server gave (``rate``, ``burst``): a script's lines all go, as
        fast as the server takes them. A person typing never waits."""
        delay = self._pacer.delay(trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
        self._pacer.spend(trio.current_time())

    def plain_client(self) -> Client | None:
        """The ``Client`` of the connection, for what only it does; None
        (said why) while a reconnecting client is away."""
        client = self.client
        if not isinstance(client, ReconnectingClient):
            return client
        if not client.connected:
            self.problem("not connected just now: try again when back")
            return None
        return client.client

    def note_away(self) -> None:
        """Say that what the user sends waits while the client is away."""
        client = self.client
        if isinstance(client, ReconnectingClient) and not client.connected:
            self.info("away: this goes out once the connection is back")

    async def targeted(self, rest: str, *, usage: str) -> None:
        match = _TARGETED.fullmatch(rest)
        if match is None or not (match[2] or "").strip():
            self.problem(f"usage: {usage}")
            return
        await self.send(match[1], match[2])

    async def join(self, room: str) -> None:
        if len(room.split()) != 1:
            self.problem("usage: /join #ROOM")
            return
        known = {name_key(joined) for joined in self.client.rooms}
        if await self.request(self.client.join, room):
            self._rooms_changed = True
            # The room is the target from now on, not once the answer
            # arrives: the server takes the lines that follow after the
            # join, so a script's next line goes to the room (or, if the
            # join was refused, is refused too), never to the last peer.
            self.target = room
            key = name_key(room)
            if self.keeps_history() and key not in known and key not in self._earlier:
                # Its earlier messages, asked for right behind the join (a
                # refused join gets them refused too): asked for once the
                # join's answer came, they went after the script's next
                # lines, and a /history or /part there took their place.
                self._earlier[key] = []
                if not await self.request(self.client.history, room, JOIN_HISTORY):
                    for event in self._earlier.pop(key, []):  # held meanwhile
                        self.show(event)

    async def part(self, room: str) -> None:
        if not room and self.target is not None and is_room(self.target):
            room = self.target
        if len(room.split()) != 1:
            self.problem("usage: /part #ROOM (the current target is no room)")
            return
        if await self.request(self.client.part, room):
            self._rooms_changed = True

    async def request(
        self, send: Callable[[*Args], Awaitable[None]], *args: *Args
    ) -> bool:
        """Send a request with ``send(*args)``; its answer is shown when it
        arrives. False (said why) when it was not sent."""
        await self.pace()
        try:
            await send(*args)
        except ValueError as invalid:
            self.problem(f"not sent: {invalid}")
        except ConnectionLost as lost:
            self.finish(EXIT_FAILURE, escape(str(lost)))
        else:
            return True
        return False

    async def history(self, rest: str) -> None:
        """``/history [N]``: ask for the last N messages with the current
        target; they are shown when they arrive."""
        count = JOIN_HISTORY
        if rest:
            if not (rest.isascii() and rest.isdigit()) or not (
                1 <= int(rest) <= MAX_HISTORY
            ):
                self.problem(f"usage: /history [N] (N from 1 to {MAX_HISTORY})")
                return
            count = int(rest)
        if self.target is None:
            self.problem(
                "no current target: /history shows the messages of the room"
                " or user you last chose"
            )
            return
        if self.client.version < 2:
            self.problem("the server keeps no history on protocol 1")
            return
        await self.request(self.client.history, self.target, count)

    async def new_password(self) -> str | None:
        """A new password: asked for twice without echo on a terminal,
        else the next input line. None (said why) when there is none."""
        if self.ask_password is None:
            password = None
            if self._lines is not None:
                password = await anext(self._lines, None)
            if password is None:
                self.problem("no password: it is the line after the command")
            return password
        password = await self.ask_password("new password: ")
        if password is None:
            self.problem("no password given; nothing changed")
            return None
        again = await self.ask_password("the same again: ")
        if again != password:
            self.problem("the two passwords differ; nothing changed")
            return None
        return password

    async def say(self, text: str) -> None:
        """Send *text* to the current target, or to the only other user."""
        to = self.target
        if to is None:
            others = self.client.online
            if len(others) == 1:
                to = others[0]
            elif not others and self.client.settings.get("presence") == "rooms":
                self.problem(
                    "no current target: write @NAME TEXT or #ROOM TEXT, or /join #ROOM"
                )
                return
            elif not others:
                self.problem("nobody else is online")
                return
            else:
                self.problem(
                    "several users are online: write @NAME TEXT to pick one,"
                    " or /all TEXT for everyone"
                )
                return
        await self.send(to, text)

    async def send(self, to: str | None, text: str) -> None:
        """Send *text* to *to* (a user or a room), or to everyone when *to*
        is None. With echo, a line that a dropped connection lost on its
        way in is sent again by the reconnecting client itself."""
        self.note_away()
        await self.pace()
        try:
            if to is None:
                await self.client.broadcast(text)
            else:
                await self.client.talk(to, text)
        except ValueError as invalid:
            self.problem(f"not sent: {invalid}")
            return
        except ConnectionLost as lost:
            self.finish(EXIT_FAILURE, escape(str(lost)))
            return
        if to is not None:
            self.target = to
        if not self.tty:
            return
        # Show what went where, in place of the line as typed unless
        # something else has been written below it meanwhile: now, or
        # with echo when the server's copy arrives (show_own).
        if self.client.echo:
            self._sent = (BROADCAST if to is None else to, text)
            return
        you = self.paint("you", _BOLD)
        self.emit(
            f"{you} {_own_line(BROADCAST if to is None else to, text)}",
            replace_input=self._written == self._written_before_input,
        )

    def who(self, room: str) -> None:
        if room:
            members = self.client.members(room)
            if members:
                self.info(f"in {escape(room)}: " + ", ".join(map(escape, members)))
            else:
                self.info(f"you are not in {escape(room)}")
            return
        others = self.client.online
        if others:
            self.info("online: " + ", ".join(escape(name) for name in others))
        elif self.client.settings.get("presence") == "rooms":
            self.info("this server tells who is online only through rooms")
        else:
            self.info("nobody else is online")
        for joined, members in self.client.rooms.items():
            shown = ", ".join(map(escape, members))
            self.info(f"in {escape(joined)}: {shown}")
        if self.target is not None:
            what = "room" if is_room(self.target) else "peer"
            self.info(f"current {what}: {escape(self.target)}")


async def run_session(
    client: AnyClient,
    lines: AsyncIterable[str],
    out: TextIO,
    err: TextIO | None = None,
    *,
    tty: bool = False,
    colour: bool | None = None,
    ping_interval: float = 30.0,
    clock: Callable[[], datetime.datetime] = datetime.datetime.now,
    timezone: datetime.tzinfo | None = None,
    ask_password: PasswordPrompt | None = None,
    reopen: StreamOpener | None = None,
    backoff: Backoff | None = None,
    wait_for_answers: bool = False,
    signals: AsyncIterator[int] | None = None,
) -> int:
    """Chat over the logged-in *client*, reading *lines* and writing *out*.

    Returns the exit status: EXIT_OK after ``/quit`` or the end of *lines*
    (the client says ``exit``), EXIT_FAILURE when the connection is lost or
    the server closes it (one line on *err*, default ``sys.stderr``).
    The client is closed at the end. *tty* adds a prompt, and colour unless
    *colour* is false, and shows the user's own messages (with the
    client's ``echo``, as the server confirms them); *ping_interval* 0
    turns the keepalive off; *clock* gives the local wall time for the
    time stamps, and *timezone* the zone the server's times are shown in
    (default: the system's). ``/register`` and ``/password`` ask for the
    password with *ask_password* (see ``ask_password``), or without it
    take the next line of *lines*. With *wait_for_answers* (for scripts),
    ``/quit`` and the end of *lines* first wait, at most
    LAST_ANSWERS_TIMEOUT seconds, until the server has answered what was
    sent (a join's member list, ``/history``, a refused message), and
    show it.

    *signals* (the numbers of signals received, such as SIGINT, SIGHUP,
    SIGTERM) end the session as a user who left: ``exit`` is said, so the
    name is free at once, and the status is 128 plus the signal's number;
    a second signal while saying it stops at once.

    With a server that keeps history, joining a room shows its last
    ``JOIN_HISTORY`` messages first, each line marked ``[earlier]``, and
    the room's live messages after them.

    With *reopen* (which opens a new stream to the same server) and a
    server that keeps sessions (``resume`` in its settings), a dropped connection
    does not end the chat: the client reconnects with *backoff* and takes
    its session back (a ``ReconnectingClient``), and each step is shown
    (``connection lost (...), reconnecting in 2 s...``, ``back: 7
    messages missed while away``, or where messages may be missing when
    the session could not be taken back). The session ends with
    EXIT_FAILURE only when the server cannot be reached within its
    resume window. *ping_interval* is then the reconnecting client's
    keepalive: that long without a word brings a ping, and as long again
    counts as a drop.
    """
    if reopen is not None and isinstance(client, Client) and client.keeps_sessions:
        async with ReconnectingClient.wrap(
            client, reopen, backoff=backoff, keepalive=ping_interval
        ) as wrapped:
            return await run_session(
                wrapped,
                lines,
                out,
                err,
                tty=tty,
                colour=colour,
                ping_interval=ping_interval,
                clock=clock,
                timezone=timezone,
                ask_password=ask_password,
                wait_for_answers=wait_for_answers,
                signals=signals,
            )
    session = _Session(
        client,
        out,
        sys.stderr if err is None else err,
        tty=tty,
        colour=tty if colour is None else colour,
        clock=clock,
        timezone=timezone,
        ask_password=ask_password,
        wait_for_answers=wait_for_answers,
    )
    welcome = f"logged in as {escape(client.name)}"
    session.info(welcome + ("; /help lists the commands" if tty else ""))
    try:
        with session.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.receive)
                # A reconnecting client keeps the connection alive itself.
                if ping_interval > 0 and isinstance(client, Client):
                    nursery.start_soon(session.keepalive, ping_interval)
                nursery.start_soon(session.read, lines)
                if signals is not None:
                    nursery.start_soon(session.leave_on, signals)
        if session.status == EXIT_OK or session.signalled:
            async with trio.open_nursery() as leaving:
                if signals is not None and session.signalled:
                    leaving.start_soon(_stop_on_next, signals, leaving.cancel_scope)
                await client.exit()
                leaving.cancel_scope.cancel()
    finally:
        await client.aclose()
        session.end()
    assert session.status is not None
    return session.status


async def _stop_on_next(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


class _Lines:
    """The lines read from a file descriptor, without their line ends.

    Each read runs in a worker thread that is abandoned when the reading
    task is cancelled, so this works on TTYs, pipes and plain files alike
    and leaves the descriptor's flags alone. Bytes that are not UTF-8 are
    replaced.
    """

    def __init__(self, fd: int, read: Callable[[int, int], bytes] = os.read) -> None:
        self._fd = fd
        self._read = read
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._ready: deque[str] = deque()
        self._eof = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while not self._ready:
            if self._eof:
                raise StopAsyncIteration
            data = await trio.to_thread.run_sync(
                self._read, self._fd, 65536, abandon_on_cancel=True
            )
            if not data and _hung_up(self._fd):
                # Its other end closed: a read may then end as if Ctrl-D
                # was typed, racing SIGHUP. It is the user gone, as EIO is.
                raise OSError(errno.EIO, "the terminal hung up")
            self._eof = not data
            text = self._partial + self._decoder.decode(data, final=self._eof)
            *complete, self._partial = text.split("\n")
            if self._eof and self._partial:
                complete.append(self._partial)
            self._ready.extend(line.removesuffix("\r") for line in complete)
        return self._ready.popleft()


def _hung_up(fd: int) -> bool:
    """Whether *fd* is a terminal that hung up: asking a hung-up terminal
    for its settings fails with EIO (anything else that is not one, such
    as a pipe, with ENOTTY)."""
    if sys.platform == "win32":
        return False
    try:
        termios.tcgetattr(fd)
    except termios.error as error:
        return bool(error.args[0] == errno.EIO)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``connect``'s arguments to *parser*."""
    parser.add_argument("name", metavar="NAME", help="the name to chat under")
    parser.add_argument(
        "--host", default="127.0.0.1", help="server address (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="server port (default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="CA bundle to verify the server with (implies --tls;"
        " default: the system's trusted CAs)",
    )
    parser.add_argument(
        "--server-name",
        metavar="CERT_NAME",
        type=_server_name,
        help="check the server's certificate against CERT_NAME instead of"
        " --host (when --host is an address the certificate does not carry,"
        " say); implies --tls",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="log in to the account NAME with the password on the first line of"
        " FILE; without it, the password is asked for on a terminal when NAME"
        " is an account",
    )
    parser.add_argument(
        "--protocol",
        type=int,
        choices=range(1, PROTOCOL_VERSION + 1),
        default=PROTOCOL_VERSION,
        metavar="VERSION",
        help="the protocol version to ask for (default %(default)s); 1 speaks"
        " as trichat 1.0's client did",
    )
    parser.add_argument(
        "--ping-interval",
        type=_interval,
        default=30.0,
        metavar="SECONDS",
        help="ping the server after this long without a word from it, and warn"
        " when another as long passes in silence; 0 turns it off"
        " (default %(default)s)",
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit when the connection drops instead of reconnecting and"
        " taking the session back (for scripts that prefer to exit)",
    )


def _server_name(text: str) -> str:
    # What ssl accepts as a server_hostname.
    if not text or text.startswith("."):
        raise argparse.ArgumentTypeError(f"not a server name: {text!r}")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return port


def _interval(text: str) -> float:
    # 30, 30s, 1.5s, 500ms, 2m: the durations every trichat command takes.
    return duration(text)


def main(args: argparse.Namespace) -> int:
    """Run ``trichat connect``; returns the exit status."""
    try:
        status = trio.run(until_interrupted, partial(_connect_and_chat, args))
    except KeyboardInterrupt:  # before the signal handler was in place
        return _interrupted()
    except BrokenPipeError:
        return _stdout_gone()
    except BaseExceptionGroup as group:
        interrupts, rest = group.split(KeyboardInterrupt)
        if interrupts is not None and rest is None:
            return _interrupted()
        broken_pipes, rest = group.split(BrokenPipeError)
        if broken_pipes is not None and rest is None:
            return _stdout_gone()
        raise
    return _interrupted() if status is None else status


def _interrupted() -> int:
    if sys.stdout.isatty():
        sys.stdout.write("\n")
        sys.stdout.flush()
    return EXIT_INTERRUPTED


def _stdout_gone() -> int:
    # Whoever read the output has gone; do not fail again flushing at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILURE


def _fail(problem: str, status: int = EXIT_FAILURE) -> int:
    print(f"trichat: {problem}", file=sys.stderr, flush=True)
    return status


def os_reason(error: OSError) -> str:
    """Why connecting failed, in the words of the system calls."""
    if error.strerror:
        return error.strerror
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = dict.fromkeys(
            os.strerror(leaf.errno) if leaf.errno else str(leaf)
            for leaf in _leaves(cause)
            if isinstance(leaf, OSError)
        )
        if reasons:
            return "; ".join(reasons)
    return str(error)


def read_password_file(path: str) -> str:
    """The password in the file *path*: its first line, without its line
    end. OSError when the file cannot be read; ValueError (which never
    shows the password) when it holds none."""
    with open(path, "rb") as file:
        line = file.readline()
    try:
        password = line.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ValueError("its first line is not UTF-8 text") from None
    if not password:
        raise ValueError("its first line is empty")
    return password


async def ask_password(prompt: str) -> str | None:
    """A password typed on the terminal, without echo (``getpass``, in
    a worker thread); None at the end of input."""
    try:
        return await trio.to_thread.run_sync(
            getpass.getpass, prompt, abandon_on_cancel=True
        )
    except EOFError:
        return None


async def log_in(
    args: argparse.Namespace,
    *,
    ssl_context: ssl.SSLContext | None,
    version: int,
    echo: bool,
    password: str | None,
    ask: PasswordPrompt | None,
) -> Client:
    """Connect to ``args.host``/``args.port`` and log in as ``args.name``:
    with *password* to the account; else as a guest, and when the name is
    an account (``account-required``) and *ask* is given, with the password
    it asks for, over a new connection (the server does not wait for a
    login while the user types). Each attempt may take CONNECT_TIMEOUT
    seconds (TooSlowError); raises what ``connect`` raises."""

    async def attempt(password: str | None) -> Client:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await connect(
                args.name,
                args.host,
                args.port,
                ssl_context=ssl_context,
                server_hostname=args.server_name,
                version=version,
                echo=echo,
                password=password,
            )

    try:
        return await attempt(password)
    except LoginRefused as refused:
        asks = password is None and ask is not None
        if not asks or refused.error.code is not ErrorCode.ACCOUNT_REQUIRED:
            raise
        assert ask is not None
        given = await ask(f"password for {escape(args.name)}: ")
        if given is None:
            raise
    return await attempt(given)


def _refusal(name: str, refused: LoginRefused, *, asked: bool) -> str:
    """Why the login as *name* was refused, and what to do about it."""
    why = f"cannot log in as {name}: {describe_error(refused.error)}"
    if refused.error.code is ErrorCode.ACCOUNT_REQUIRED and not asked:
        why += " (give it with --password-file FILE)"
    return why


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            found.extend(_leaves(inner))
        else:
            found.append(inner)
    return found


async def _connect_and_chat(args: argparse.Namespace) -> int:
    ssl_context = None
    if args.tls or args.ca is not None or args.server_name is not None:
        try:
            ssl_context = ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as error:
            return _fail(f"cannot use the CA file {args.ca}: {error}", EXIT_REFUSED)
    where = f"{args.host}:{args.port}"
    shown_name = escape(args.name)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    password = None
    if args.password_file is not None:
        try:
            password = read_password_file(args.password_file)
        except (OSError, ValueError) as error:
            why = error.strerror if isinstance(error, OSError) else error
            return _fail(
                f"cannot read a password from {args.password_file}: {why}",
                EXIT_REFUSED,
            )
    prompt = ask_password if tty else None
    try:
        client = await log_in(
            args,
            ssl_context=ssl_context,
            version=args.protocol,
            # Only a terminal shows the user's own messages; a script's
            # copies tell the reconnecting client which lines a dropped
            # connection lost on the way in, which it sends again after
            # the resume.
            echo=tty or not args.no_reconnect,
            password=password,
            ask=prompt,
        )
    except ValueError as invalid:
        return _fail(f"cannot log in as {shown_name}: {invalid}", EXIT_REFUSED)
    except LoginRefused as refused:
        status = EXIT_REFUSED if refused.error.code in _NAME_REFUSALS else EXIT_FAILURE
        return _fail(_refusal(shown_name, refused, asked=prompt is not None), status)
    except (ConnectionLost, BadServerFrame) as failure:
        return _fail(f"cannot connect to {where}: {escape(str(failure))}")
    except trio.TooSlowError:
        return _fail(f"no answer from {where} within {CONNECT_TIMEOUT:.0f} s")
    except OSError as error:
        return _fail(f"cannot connect to {where}: {os_reason(error)}")
    reopen: StreamOpener | None = None
    if not args.no_reconnect:
        reopen = partial(
            open_stream,
            args.host,
            args.port,
            ssl_context=ssl_context,
            server_hostname=args.server_name,
        )
    # Received here, not as the process's end: Ctrl-C, a closed terminal
    # (SIGHUP) and SIGTERM say exit before leaving (a second one stops at
    # once).
    leave = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
    async with client:
        with trio.open_signal_receiver(*leave) as signals:
            return await run_session(
                client,
                _Lines(sys.stdin.fileno()),
                sys.stdout,
                sys.stderr,
                tty=tty,
                colour=tty and "NO_COLOR" not in os.environ,
                ping_interval=args.ping_interval,
                ask_password=prompt,
                reopen=reopen,
                # A script reads what it asked for; a person saw it arrive.
                wait_for_answers=not tty,
                signals=signals,
            )
