"""What the full-screen client shows and does, as plain Python: windows and
their scrollback, where Enter sends, commands, completion, input history,
the paced outbox. No urwid and no I/O: the app feeds it what arrives and
what is typed, sends what it queues, and the widgets draw it."""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, Literal, Protocol

import attrs

from ...protocol.messages import (
    BROADCAST,
    MAX_HISTORY,
    MAX_TEXT,
    Hist,
    check_password,
    check_room,
    check_target,
    is_room,
    name_key,
)
from ..library import Pacer
from ._text import confusables, display_text, mentions, unusual_letters

__all__ = [
    "COMMANDS",
    "HELP",
    "JOIN_HISTORY",
    "ChatModel",
    "Completer",
    "Entry",
    "EntryKind",
    "EntryState",
    "History",
    "Link",
    "Listener",
    "Outgoing",
    "Pacer",
    "PasswordEntry",
    "Window",
    "edit_line",
    "split_text",
]

SCROLLBACK: Final = 5000
"""Entries a window keeps; older ones go, a chunk at a time."""
_TRIM_CHUNK: Final = 500

JOIN_HISTORY: Final = 20
"""How many earlier messages of a room are shown on joining it."""

HELP: Final = """\
Enter sends the input line to the window's target, shown in the prompt:
a user, a room or * (everyone). Nothing that arrives changes it.
/msg NAME TEXT   send TEXT to NAME (a user, a #room or *); @NAME TEXT too
/query NAME      open NAME's window (a user or a #room) and switch to it
/join #ROOM      enter ROOM (made if nobody is in it) and open its window
/part [#ROOM]    leave ROOM (default: this window's room)
/rooms           list the rooms that have members
/who             who is here: online users, or this room's members
/history [N]     the last N (default 20) messages here
/register        make your name an account (the password is asked for)
/password        set a new password for your account (asked for)
/all TEXT        send TEXT to everyone (*)
/win N|NAME      switch to window N, or to NAME's (also Alt-1..9, Ctrl-N/P)
/close           close this window (not *)
/help            this help; //TEXT sends /TEXT as text
/quit            leave (asks first while pasted lines wait to be sent)
Keys: PageUp/PageDown or the mouse wheel scroll; Up/Down recall input;
Tab completes names, rooms and commands; Ctrl-A/E start/end of line,
Ctrl-W/U/K delete a word back/to the start/to the end."""

COMMANDS: Final = (
    "/all",
    "/close",
    "/help",
    "/history",
    "/join",
    "/msg",
    "/part",
    "/password",
    "/query",
    "/quit",
    "/register",
    "/rooms",
    "/who",
    "/win",
)

_COMMAND = re.compile(r"/(\S*)(?:\s+(.*))?", re.DOTALL)
# The refusals that answer a register or password request.
_ACCOUNT_REFUSALS: Final = frozenset(
    {
        "bad-password",
        "already-registered",
        "tls-required",
        "no-such-account",
        "wrong-password",
    }
)
_TARGETED = re.compile(r"(\S+)(?:\s+(.*))?", re.DOTALL)


class EntryKind(enum.Enum):
    MESSAGE = "message"
    INFO = "info"
    ERROR = "error"


class EntryState(enum.Enum):
    DONE = "done"
    PENDING = "pending"
    """An own message not yet sent, or not yet confirmed by the server."""
    FAILED = "failed"


@attrs.define(eq=False)
class Entry:
    """One line of a window's scrollback.

    ``time`` is the server's time for a protocol-2 message; otherwise
    (``server_time`` false) when this client received or sent it.
    """

    kind: EntryKind
    text: str
    time: datetime
    sender: str | None = None
    to: str | None = None
    server_time: bool = False
    id: int | None = None
    own: bool = False
    mention: bool = False
    state: EntryState = EntryState.DONE
    note: str = ""
    earlier: bool = False
    """A stored message from the server's history, not a live one."""


class Window:
    """One conversation: a room, a direct peer, or ``*`` (everyone)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.entries: list[Entry] = []
        self.unread = 0
        self.alert = False
        """Unread messages include a direct message or a mention."""
        self.joined = False
        """For a room: whether this user is in it."""
        self.members: dict[str, str] = {}
        """For a room: its members (key -> name as written)."""

    @property
    def key(self) -> str:
        return target_key(self.target)

    @property
    def is_room(self) -> bool:
        return is_room(self.target)

    @property
    def is_everyone(self) -> bool:
        return self.target == BROADCAST

    def __repr__(self) -> str:
        return f"<Window {self.target!r}: {len(self.entries)} entries>"


def target_key(target: str) -> str:
    """The form under which two targets are the same window."""
    return BROADCAST if target == BROADCAST else name_key(target)


class Listener(Protocol):
    """What the widgets hear from the model."""

    def entry_added(self, window: Window, entry: Entry) -> None: ...

    def entry_changed(self, window: Window, entry: Entry) -> None: ...

    def entries_replaced(self, window: Window) -> None:
        """Entries were inserted (history) or dropped: redraw it all."""

    def bell(self) -> None: ...


class _NoListener:
    def entry_added(self, window: Window, entry: Entry) -> None:
        pass

    def entry_changed(self, window: Window, entry: Entry) -> None:
        pass

    def entries_replaced(self, window: Window) -> None:
        pass

    def bell(self) -> None:
        pass


class Link(enum.Enum):
    """The state of the connection, as the status line shows it."""

    CONNECTED = "connected"
    SILENT = "not answering"
    AWAY = "reconnecting"
    """Dropped; the client is reconnecting to take its session back."""
    DISCONNECTED = "disconnected"
    """For good: nothing more is sent or received."""


@attrs.define
class PasswordEntry:
    """A new password being typed (``/register``, ``/password``): asked
    for twice, hidden, never kept in the input history."""

    command: Literal["register", "password"]
    first: str | None = attrs.field(default=None, repr=False)
    """What was typed the first time; None until then."""

    @property
    def prompt(self) -> str:
        return "new password: " if self.first is None else "the same again: "


@attrs.define(eq=False)
class Outgoing:
    """A frame the outbox holds until the pacer lets it go."""

    kind: Literal["talk", "join", "part", "rooms", "history", "register", "password"]
    target: str = ""
    text: str = ""
    entry: Entry | None = None
    window: Window | None = None
    pasted: bool = False
    count: int = 0
    """How many messages a ``history`` request asks for."""
    secret: str = attrs.field(default="", repr=False)
    """The new password of ``register`` or ``password``."""
    quiet: bool = False
    """A ``rooms`` request whose answer only feeds Tab completion."""


def split_text(text: str, max_chars: int = MAX_TEXT, max_bytes: int = 0) -> list[str]:
    """*text* cut into pieces of at most *max_chars* characters and (when
    not 0) *max_bytes* bytes of UTF-8, at a space where there is one in the
    second half of a piece; the first and last pieces keep their spaces."""
    pieces: list[str] = []
    rest = text
    while rest:
        size = min(len(rest), max_chars)
        if max_bytes:
            while len(rest[:size].encode()) > max_bytes:
                size -= max(1, (len(rest[:size].encode()) - max_bytes) // 4)
        if size < len(rest):
            space = rest.rfind(" ", size // 2, size)
            if space > 0:
                size = space + 1
        piece, rest = rest[:size], rest[size:]
        if piece.strip():
            pieces.append(piece)
    return pieces


class History:
    """The lines entered, for Up and Down, like a shell's."""

    def __init__(self, limit: int = 500) -> None:
        self._lines: list[str] = []
        self._limit = limit
        self._position = 0
        self._draft = ""

    def add(self, line: str) -> None:
        if line.strip() and (not self._lines or self._lines[-1] != line):
            self._lines.append(line)
            del self._lines[: -self._limit]
        self._position = len(self._lines)
        self._draft = ""

    def previous(self, current: str) -> str | None:
        """The line before the one shown (*current*); None at the oldest."""
        if self._position == 0:
            return None
        if self._position == len(self._lines):
            self._draft = current
        self._position -= 1
        return self._lines[self._position]

    def next(self) -> str | None:
        """The line after the one shown, or the draft; None past it."""
        if self._position >= len(self._lines):
            return None
        self._position += 1
        if self._position == len(self._lines):
            return self._draft
        return self._lines[self._position]


def edit_line(key: str, text: str, position: int) -> tuple[str, int] | None:
    """The input line after an editing key (``ctrl a``, ``ctrl e``,
    ``ctrl w``, ``ctrl u``, ``ctrl k``, ``home``, ``end``), or None for a
    key that is not one of them."""
    match key:
        case "ctrl a" | "home":
            return text, 0
        case "ctrl e" | "end":
            return text, len(text)
        case "ctrl u":
            return text[position:], 0
        case "ctrl k":
            return text[:position], position
        case "ctrl w":
            start = len(text[:position].rstrip())
            while start > 0 and not text[start - 1].isspace():
                start -= 1
            return text[:start] + text[position:], start
    return None


class Completer:
    """Tab completion of the word before the cursor, cycling through the
    candidates on repeated Tabs."""

    def __init__(self) -> None:
        # (text before the word, text after the cursor, options, index)
        self._cycle: tuple[str, str, list[str], int] | None = None
        self._last: tuple[str, int] | None = None

    def reset(self) -> None:
        self._cycle = None
        self._last = None

    def complete(
        self, text: str, position: int, candidates: Callable[[str, bool], list[str]]
    ) -> tuple[str, int] | None:
        """The line and cursor after a Tab, or None when nothing completes.

        *candidates(word, first)* lists what may replace *word*, the word
        before the cursor (*first*: it starts the line). A Tab right after
        a completion puts the next candidate in its place.
        """
        if self._cycle is not None and self._last == (text, position):
            head, tail, options, index = self._cycle
            index = (index + 1) % len(options)
        else:
            start = position
            while start > 0 and not text[start - 1].isspace():
                start -= 1
            head, tail = text[:start], text[position:]
            options = candidates(text[start:position], not head.strip())
            if not options:
                self.reset()
                return None
            index = 0
        self._cycle = (head, tail, options, index)
        choice = options[index]
        new_text = head + choice + ("" if tail.startswith(" ") else " ") + tail
        new_position = len(head) + len(choice) + 1
        self._last = (new_text, new_position)
        return new_text, new_position


class ChatModel:
    """The full-screen client's state and rules."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        echo: bool = False,
        settings: dict[str, str] | None = None,
        max_text: int = MAX_TEXT,
        max_frame: int = 4096,
        online: Iterable[str] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        listener: Listener | None = None,
        bell: bool = True,
    ) -> None:
        self.name = name
        self.version = version
        self.echo = echo
        """Whether the server sends our own messages back (protocol 2)."""
        self.settings = dict(settings or {})
        self.max_text = max_text
        # The frame ``talk|TO|TEXT`` and its LF must fit in max_frame bytes;
        # the longest TO (a room: "#" and 32 characters of 4 bytes) is assumed.
        self.max_text_bytes = max(16, max_frame - len("talk||\n") - 1 - 4 * 32)
        self.clock = clock
        self.listener: Listener = listener or _NoListener()
        self.ring_bell = bell
        self.link = Link.CONNECTED
        self.link_problem = ""
        self.link_note = ""
        """While AWAY: what the status line says about reconnecting."""
        self.password_entry: PasswordEntry | None = None
        """A new password being typed: the input line is hidden meanwhile."""
        self._account_asked: deque[str] = deque()
        # Own messages unconfirmed at a drop, and how many messages are to
        # come after the client is back before their echo can no longer.
        self._unsure: list[Outgoing] = []
        self._to_come = 0
        self._unsure_note = ""
        self._writing: Outgoing | None = None
        """Taken from the outbox and being written: not yet sent or not."""
        self.lag: float | None = None
        self.online: dict[str, str] = {name_key(user): user for user in online}
        self.windows: list[Window] = [Window(BROADCAST)]
        self.current = self.windows[0]
        self.history = History()
        self.completer = Completer()
        self.outbox: deque[Outgoing] = deque()
        self.queued_total = 0
        """Frames queued since the outbox was last empty (for the count)."""
        self.sent_total = 0
        self.pasted_waiting = 0
        self._awaiting_echo: deque[Outgoing] = deque()
        self._quit_asked = False
        self._joining: str | None = None
        self._join_entry: Entry | None = None
        self._look_alikes: dict[str, list[str]] = {}
        self.known_rooms: dict[str, str] = {}
        # The conversations (clash keys) whose /history answer is awaited:
        # that answer says what it brought, which may all be out of sight.
        self._history_asked: set[str] = set()
        # Whether each ``rooms`` request sent is a quiet one (for Tab
        # completion), in the order the answers will come; and whether a
        # quiet one is on its way.
        self._rooms_answers: deque[bool] = deque()
        self._asking_rooms = False
        self.wake_sender: Callable[[], None] = lambda: None
        self._check_look_alikes()

    # -- settings -------------------------------------------------------------------

    def pacer(self, now: float) -> Pacer:
        """A pacer for the server's advertised ``rate`` and ``burst``, or
        for a cautious default when it advertised none (protocol 1)."""
        return Pacer.for_server(self.settings, now)

    # -- windows --------------------------------------------------------------------

    def find_window(self, target: str) -> Window | None:
        key = target_key(target)
        for window in self.windows:
            if window.key == key:
                return window
        return None

    def window_for(self, target: str) -> Window:
        """The window of *target*, opened (at the end of the list) if need be."""
        window = self.find_window(target)
        if window is None:
            window = Window(target)
            self.windows.append(window)
        return window

    def show(self, window: Window) -> None:
        """Make *window* the current one: what Enter sends to."""
        self.current = window
        window.unread = 0
        window.alert = False

    def show_number(self, number: int) -> bool:
        """Show window *number* (from 1); False if there is none."""
        if 1 <= number <= len(self.windows):
            self.show(self.windows[number - 1])
            return True
        return False

    def show_next(self, step: int = 1) -> None:
        index = self.windows.index(self.current)
        self.show(self.windows[(index + step) % len(self.windows)])

    def close(self, window: Window) -> str | None:
        """Close *window*; a reason when it cannot be closed."""
        if window.is_everyone:
            return "the * window stays open"
        if window.is_room and window.joined:
            return f"you are in {window.target}: /part first"
        index = self.windows.index(window)
        self.windows.remove(window)
        if self.current is window:
            self.show(self.windows[max(0, index - 1)])
        return None

    def number(self, window: Window) -> int:
        return self.windows.index(window) + 1

    # -- scrollback -----------------------------------------------------------------

    def add(self, window: Window, entry: Entry, *, counts: bool = False) -> Entry:
        """Append *entry* to *window*; *counts*: it is news (unread)."""
        window.entries.append(entry)
        if len(window.entries) > SCROLLBACK + _TRIM_CHUNK:
            del window.entries[:_TRIM_CHUNK]
            self.listener.entries_replaced(window)
        else:
            self.listener.entry_added(window, entry)
        if counts and window is not self.current:
            window.unread += 1
        return entry

    def insert_history(self, window: Window, entries: Sequence[Entry]) -> int:
        """Merge older or missed messages (with ids) into *window*'s
        scrollback in id order, skipping those it holds; how many were new.

        The seam for ``/history`` and scrollback on join.
        """
        held = {entry.id for entry in window.entries if entry.id is not None}
        new = [
            entry for entry in entries if entry.id is not None and entry.id not in held
        ]
        if not new:
            return 0
        merged = window.entries + new
        # Stable: entries without an id stay after the one before them.
        order: list[tuple[int, int]] = []
        last_id = 0
        for position, entry in enumerate(merged):
            if entry.id is not None:
                last_id = entry.id
            order.append((last_id, position))
        ranks = sorted(range(len(merged)), key=lambda i: order[i])
        window.entries[:] = [merged[i] for i in ranks]
        self.listener.entries_replaced(window)
        return len(new)

    def changed(self, window: Window, entry: Entry) -> None:
        self.listener.entry_changed(window, entry)

    def info(self, text: str, window: Window | None = None) -> Entry:
        return self.add(
            window or self.current, Entry(EntryKind.INFO, text, self.clock())
        )

    def problem(self, text: str, window: Window | None = None) -> Entry:
        return self.add(
            window or self.current, Entry(EntryKind.ERROR, text, self.clock())
        )

    def show_help(self) -> None:
        for line in HELP.splitlines():
            self.info(line)

    # -- who ------------------------------------------------------------------------

    def is_me(self, name: str) -> bool:
        return name_key(name) == name_key(self.name)

    def look_alikes(self, name: str) -> list[str]:
        """The other names online (or ours) that *name* looks like."""
        return self._look_alikes.get(name, [])

    def _check_look_alikes(self) -> None:
        names = [self.name, *self.online.values()]
        for window in self.windows:
            if window.is_room:
                names.extend(window.members.values())
            elif not window.is_everyone:
                names.append(window.target)
        self._look_alikes = confusables(dict.fromkeys(names))

    def _look_alike_note(self, name: str) -> str:
        others = self.look_alikes(name)
        if not others:
            return ""
        shown = ", ".join(display_text(other) for other in others)
        letters = unusual_letters(name)
        if letters:
            return f" (looks like {shown}, but has {', '.join(letters)})"
        # A plain name that came after its look-alike: say which one hides
        # the letters of another script, lest this one seem the odd one.
        hiding = [
            f"{display_text(other)}, which has {', '.join(unusual_letters(other))}"
            for other in others
            if unusual_letters(other)
        ]
        if hiding:
            return f" (looks like {'; '.join(hiding)})"
        return f" (looks like {shown}: not the same name!)"

    # -- what arrives ---------------------------------------------------------------

    def delivered(
        self,
        sender: str,
        to: str,
        text: str,
        *,
        id: int | None = None,
        time: datetime | None = None,
    ) -> None:
        """A message arrived (``talk`` on protocol 1, ``msg`` on protocol 2;
        with the ``echo`` option our own come back too)."""
        self._end_join()
        try:
            self._delivered(sender, to, text, id, time)
        finally:
            if self._unsure and id is not None and self._to_come > 0:
                self._to_come -= 1
                if not self._to_come:
                    self._settle_unsure()

    def _delivered(
        self,
        sender: str,
        to: str,
        text: str,
        id: int | None,
        time: datetime | None,
    ) -> None:
        own = self.is_me(sender)
        if own:
            if self._confirm(to, text, id, time):
                return
            window = self.window_for(to)
        elif to == BROADCAST or is_room(to):
            window = self.window_for(to)
        else:
            # Not taken for a sign that the sender is online: a message kept
            # while we were offline comes at login from someone long gone.
            window = self.window_for(sender)
            self._check_look_alikes()
        mention = not own and mentions(text, self.name)
        entry = Entry(
            EntryKind.MESSAGE,
            text,
            time if time is not None else self.clock(),
            sender=sender,
            to=to,
            server_time=time is not None,
            id=id,
            own=own,
            mention=mention,
        )
        direct = not own and not (to == BROADCAST or is_room(to))
        self.add(window, entry, counts=not own)
        if (direct or mention) and window is not self.current:
            window.alert = True
        if direct and window is not self.current:
            # Where it is, without taking you there.
            number = self.number(window)
            keys = f", Alt-{number}" if number < 10 else ""
            self.info(
                f"{display_text(sender)} (window {number}{keys}): {display_text(text)}"
            )
        if (direct or mention) and self.ring_bell:
            self.listener.bell()

    def _confirm(
        self, to: str, text: str, id: int | None, time: datetime | None
    ) -> bool:
        """Match our own message, sent back by the server, to its entry."""
        key = target_key(to)
        for item in self._awaiting_echo:
            if target_key(item.target) == key and item.text == text:
                self._awaiting_echo.remove(item)
                entry = item.entry
                if entry is None or item.window is None:
                    return False
                entry.state = EntryState.DONE
                entry.id = id
                if time is not None:
                    entry.time = time
                    entry.server_time = True
                entry.note = ""
                self.changed(item.window, entry)
                return True
        return False

    def logged_in(self, name: str) -> None:
        self._end_join()
        if self.is_me(name):
            return
        self.online[name_key(name)] = name
        self._check_look_alikes()
        text = f"{display_text(name)} is online{self._look_alike_note(name)}"
        self.info(text, self.windows[0])
        peer = self.find_window(name)
        if peer is not None:
            self.info(text, peer)

    def exited(self, name: str) -> None:
        self._end_join()
        key = name_key(name)
        self.online.pop(key, None)
        shown = display_text(name)
        self.info(f"{shown} left", self.windows[0])
        for window in self.windows:
            if window.is_room and key in window.members:
                del window.members[key]
                self.info(f"{shown} left (offline)", window)
            elif window.key == key:
                self.info(f"{shown} left", window)
        self._check_look_alikes()

    def joined(self, room: str, name: str) -> None:
        """``join|ROOM|NAME``: we entered ROOM (then its members follow, as
        the answer to our join), or NAME did."""
        window = self.window_for(room)
        if self.is_me(name):
            self._end_join()
            window.joined = True
            window.members = {name_key(name): name}
            self._joining = window.key
            self._join_entry = self.info(f"you joined {display_text(room)}", window)
            self.known_rooms[name_key(room)] = room
            if self.keeps_history():
                self.queue(Outgoing("history", room, count=JOIN_HISTORY))
            return
        window.members[name_key(name)] = name
        self._check_look_alikes()
        if self._joining == window.key and self._join_entry is not None:
            # Still the list of who was there when we joined.
            entry = self._join_entry
            names = [
                display_text(n) for n in window.members.values() if not self.is_me(n)
            ]
            entry.text = f"you joined {display_text(room)}; here: " + ", ".join(names)
            self.changed(window, entry)
            return
        self._end_join()
        self.info(
            f"{display_text(name)} joined {display_text(room)}"
            f"{self._look_alike_note(name)}",
            window,
        )

    def keeps_history(self) -> bool:
        """Whether the server keeps messages to show as earlier ones."""
        return self.version >= 2 and self.settings.get("history", "0") != "0"

    def history_page(self, target: str, messages: Sequence[Hist]) -> None:
        """The answer to ``history``: *messages* of *target*, merged into
        its window (where the live ones already there stay, in id order),
        each marked as earlier."""
        self._end_join()
        window = self.window_for(target)
        entries = [
            Entry(
                EntryKind.MESSAGE,
                hist.text,
                hist.time,
                sender=hist.sender,
                to=hist.to,
                server_time=True,
                id=hist.id,
                own=self.is_me(hist.sender),
                earlier=True,
            )
            for hist in messages
        ]
        added = self.insert_history(window, entries)
        if not entries:
            self.info("no earlier messages", window)
        elif name_key(target) in self._history_asked:
            # Merged in id order, they may all be above what is in view,
            # or be there already: either way the screen looks the same.
            count = len(entries)
            found = f"{count} earlier message{'' if count == 1 else 's'}"
            if not added:
                self.info(f"{found}, all in this window already", window)
            else:
                self.info(f"{found}: {added} more in this window (PageUp)", window)
        self._history_asked.discard(name_key(target))

    def end_of_batch(self) -> None:
        """What arrived in one read has been taken in."""
        self._end_join()

    def _end_join(self) -> None:
        self._joining = None
        self._join_entry = None

    def parted(self, room: str, name: str) -> None:
        self._end_join()
        window = self.window_for(room)
        if self.is_me(name):
            window.joined = False
            window.members.clear()
            self.info(f"you left {display_text(room)}", window)
            return
        window.members.pop(name_key(name), None)
        self.info(f"{display_text(name)} left {display_text(room)}", window)
        self._check_look_alikes()

    def room_list(self, rooms: Sequence[tuple[str, int]]) -> None:
        """The answer to ``rooms``: each room with members, and how many."""
        self._end_join()
        for room, _ in rooms:
            self.known_rooms[name_key(room)] = room
        if self._rooms_answers and self._rooms_answers.popleft():
            self._asking_rooms = False
            return  # asked for Tab completion, not by the user
        if not rooms:
            self.info("no room has members: /join #ROOM makes one")
            return
        listed = ", ".join(f"{display_text(room)} ({count})" for room, count in rooms)
        self.info(f"rooms: {listed}")

    def refused(self, code: str, detail: str, words: str) -> None:
        """The server refused a request: ``error|CODE|DETAIL`` (*words*:
        the whole error as the user reads it)."""
        self._end_join()
        if self._account_asked and (
            code in _ACCOUNT_REFUSALS
            or (code == "rate-limited" and not self._awaiting_echo)
        ):
            command = self._account_asked.popleft()
            self.problem(f"/{command} refused: {words}; nothing changed")
            return
        item = self._failed_request(code, detail)
        if item is not None and item.entry is not None and item.window is not None:
            item.entry.state = EntryState.FAILED
            item.entry.note = words
            self.changed(item.window, item.entry)
            if item.window is not self.current:
                self.problem(
                    f"not sent to {display_text(item.target)}: {words}", self.current
                )
            return
        self.problem(words)

    def _failed_request(self, code: str, detail: str) -> Outgoing | None:
        """The message, still waiting for its echo, that *code* refuses."""
        if not self._awaiting_echo:
            return None
        if code in {"no-such-user", "not-in-room", "mailbox-full"}:
            key = target_key(detail)
            for item in self._awaiting_echo:
                if target_key(item.target) == key:
                    self._awaiting_echo.remove(item)
                    return item
            return None
        if code in {"rate-limited", "bad-frame", "too-long"}:
            # The server answers in order: the oldest message still waiting
            # is the one it refused.
            return self._awaiting_echo.popleft()
        return None

    def lost(self, why: str) -> None:
        """The connection is gone for good."""
        self.link = Link.DISCONNECTED
        self.link_problem = why
        self.link_note = ""
        self.lag = None
        self._unsure = []
        self._account_asked.clear()
        self.cancel_password("the connection was lost")
        for item in self._awaiting_echo:
            if item.entry is not None and item.window is not None:
                item.entry.state = EntryState.FAILED
                item.entry.note = "not confirmed: the connection was lost"
                self.changed(item.window, item.entry)
        self._awaiting_echo.clear()
        unsent = len(self.outbox)
        self._drop_outbox("not sent: the connection was lost")
        note = f"; {unsent} queued lines were not sent" if unsent else ""
        self.problem(f"{why}{note} (/quit leaves)", self.current)

    # -- a connection that drops and comes back -------------------------------------

    def dropped(self, why: str) -> None:
        """The connection dropped; the client reconnects by itself. What is
        typed meanwhile waits in the outbox."""
        self.link = Link.AWAY
        self.link_problem = why
        # The answers to requests in flight may be lost with the connection.
        self._rooms_answers.clear()
        self._asking_rooms = False
        self.link_note = "connection lost, reconnecting..."
        self.lag = None
        self.cancel_password("the connection dropped")
        # Their answers are not among what a resume brings back.
        for command in self._account_asked:
            self.problem(
                f"/{command}: no answer came before the connection dropped;"
                f" once back, /{command} again to be sure"
            )
        self._account_asked.clear()
        # Sent, but the server's copy has not come back: it may come after
        # the resume, or never. (What is being written just now is sent
        # again over the new connection if the drop broke its write.)
        self._unsure = [i for i in self._awaiting_echo if i is not self._writing]
        for item in self._unsure:
            if item.entry is not None and item.window is not None:
                item.entry.note = "not confirmed yet: the connection dropped"
                self.changed(item.window, item.entry)
        self.problem(
            f"connection lost ({why}); reconnecting: what you type waits and"
            " goes once back",
            self.current,
        )

    def retrying(self, attempt: int, seconds: int | None) -> None:
        """Attempt *attempt* to reconnect starts in *seconds* (None: now)."""
        when = "now" if seconds is None else f"in {seconds} s"
        if attempt == 1:
            self.link_note = f"connection lost, reconnecting {when}..."
        else:
            # Short enough for the status line of 80 columns.
            self.link_note = f"reconnecting {when}... (attempt {attempt})"

    def resumed(self, missed: int) -> None:
        """Back, with the session: *missed* messages follow. Own messages
        they do not give back never reached the server: they go again."""
        self._back(missed, "")
        plural = "" if missed == 1 else "s"
        self.info(f"back: {missed} message{plural} missed while away", self.current)

    def resume_failed(
        self,
        reason: str,
        recovered: int,
        gaps: Sequence[str],
        direct_gap: bool,
    ) -> None:
        """Back, but the session was not kept: logged in again, the rooms
        joined again; *recovered* messages from the server's history
        follow; messages to *gaps* (rooms, ``*``) and, with *direct_gap*,
        direct ones may be missing."""
        self._back(recovered, "may not have been sent: the connection dropped")
        found = ""
        if recovered:
            plural = "" if recovered == 1 else "s"
            found = f"; {recovered} message{plural} found in the server's history"
        self.problem(
            f"back, but the session was not kept ({display_text(reason)}):"
            f" logged in again as {display_text(self.name)}, rooms joined"
            f" again{found}",
            self.current,
        )
        for gap in gaps:
            window = self.window_for(gap)
            self.problem(
                "messages sent here while you were away may be missing"
                " (the server's history could not fill the gap)",
                window,
            )
        if direct_gap:
            self.problem(
                "direct messages sent to you while you were away may be missing",
                self.current,
            )
        elif not gaps:
            self.info("nothing is missing", self.current)

    def _back(self, to_come: int, unsure_note: str) -> None:
        self.link = Link.CONNECTED
        self.link_problem = ""
        self.link_note = ""
        self._to_come = to_come
        self._unsure_note = unsure_note
        if not to_come:
            self._settle_unsure()
        self.wake_sender()

    def _settle_unsure(self) -> None:
        """Everything missed has come: own messages still unconfirmed from
        before the drop never reached the server. After a resume (whose
        missed messages hold every one the server took, our own among
        them) the reconnecting client has sent them again, first: they
        wait for their echo as before. After a new login nobody can tell,
        and they are marked with the note."""
        unsure, self._unsure = self._unsure, []
        for item in unsure:
            if item not in self._awaiting_echo:
                continue
            if self._unsure_note:
                self._awaiting_echo.remove(item)
            if item.entry is None or item.window is None:
                continue
            if self._unsure_note:
                item.entry.state = EntryState.FAILED
                item.entry.note = self._unsure_note
            else:
                item.entry.note = "sent again: the server never got it"
            self.changed(item.window, item.entry)

    def abandon_outbox(self) -> None:
        """Leaving at once: what waits in the outbox is not sent."""
        self._drop_outbox("not sent: you left")

    def _drop_outbox(self, note: str) -> None:
        for item in self.outbox:
            if item.entry is not None and item.window is not None:
                item.entry.state = EntryState.FAILED
                item.entry.note = note
                self.changed(item.window, item.entry)
        self.outbox.clear()
        self.pasted_waiting = 0

    # -- the outbox -----------------------------------------------------------------

    def queue(self, item: Outgoing) -> None:
        if not self.outbox:
            self.queued_total = 0
            self.sent_total = 0
        self.outbox.append(item)
        self.queued_total += 1
        if item.pasted:
            self.pasted_waiting += 1
        self.wake_sender()

    def next_outgoing(self) -> Outgoing | None:
        return self.outbox[0] if self.outbox else None

    def take_outgoing(self) -> Outgoing:
        """Take the first item of the outbox, to be written now; the app
        then calls ``sent`` or ``not_sent`` for it."""
        item = self.outbox.popleft()
        self._writing = item
        if item.pasted:
            self.pasted_waiting -= 1
        if item.kind == "talk" and self.echo:
            # Before it is written: its echo may be read before the write
            # returns.
            self._awaiting_echo.append(item)
        return item

    def sent(self, item: Outgoing) -> None:
        """*item* has been written to the server."""
        self._writing = None
        self.sent_total += 1
        entry = item.entry
        if entry is not None and item.window is not None and entry.note:
            entry.note = ""  # it waited for the connection: no longer
            self.changed(item.window, entry)
        if item.kind == "rooms":
            self._rooms_answers.append(item.quiet)
        if self.echo or item.kind != "talk":
            return
        if item.entry is not None and item.window is not None:
            item.entry.state = EntryState.DONE
            item.entry.time = self.clock()
            self.changed(item.window, item.entry)

    def put_back(self, item: Outgoing) -> None:
        """*item*, taken to be written, did not reach the server (the
        connection dropped first): it goes first when the client is back."""
        self._writing = None
        if item in self._awaiting_echo:
            self._awaiting_echo.remove(item)
        if item in self._unsure:
            # The drop was heard of before the write failed.
            self._unsure.remove(item)
        if item.pasted:
            self.pasted_waiting += 1
        self.outbox.appendleft(item)
        if item.entry is not None and item.window is not None:
            item.entry.state = EntryState.PENDING
            item.entry.note = "waiting for the connection"
            self.changed(item.window, item.entry)

    def not_sent(self, item: Outgoing, why: str) -> None:
        """*item* was refused before it went (too long, say)."""
        self._writing = None
        self.sent_total += 1
        if item.quiet:
            self._asking_rooms = False
            return
        if item in self._awaiting_echo:
            self._awaiting_echo.remove(item)
        if item.entry is not None and item.window is not None:
            item.entry.state = EntryState.FAILED
            item.entry.note = f"not sent: {why}"
            self.changed(item.window, item.entry)
        else:
            self.problem(f"not sent: {why}")

    @property
    def sending(self) -> tuple[int, int] | None:
        """(sent, queued) while more than one message waits in the outbox."""
        if self.queued_total > 1 and self.outbox:
            return self.sent_total, self.queued_total
        return None

    # -- what is typed --------------------------------------------------------------

    def submit(self, line: str) -> bool:
        """Act on an input line; False when it asks to quit (and may)."""
        self.completer.reset()
        self.history.add(line)
        asked, self._quit_asked = self._quit_asked, False
        if not line.strip():
            return True
        if line.startswith("//"):
            self.say(self.current, line[1:])
        elif line.startswith("/"):
            return self.command(line, quit_asked=asked)
        elif line.startswith("@") and len(line) > 1 and not line[1].isspace():
            self.targeted(line[1:], "@NAME TEXT")
        else:
            self.say(self.current, line)
        return True

    def paste(self, text: str) -> str:
        """Queue each line of pasted *text* to the current window, as text
        (a line that starts with ``/`` is not a command); the last line,
        unless the paste ends with a line break, is returned for the input."""
        *lines, rest = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self.say(self.current, line, pasted=True)
        return rest

    def want_quit(self) -> bool:
        """Whether leaving now loses nothing; if pasted lines wait to be
        sent, say so (the next ``/quit`` leaves without them). What was
        typed is sent on the way out."""
        waiting = self.pasted_waiting
        if not waiting or self.link is Link.DISCONNECTED:
            return True
        self._quit_asked = True
        self.problem(
            f"{waiting} pasted lines are not sent yet: /quit again to leave"
            " without them, or wait"
        )
        return False

    def command(self, line: str, *, quit_asked: bool = False) -> bool:
        match = _COMMAND.fullmatch(line)
        assert match is not None  # any line that starts with "/" matches
        name, rest = match[1].lower(), (match[2] or "").strip()
        if name in {"quit", "exit"}:
            if quit_asked:
                self._drop_outbox("not sent: you left")
                return False
            return not self.want_quit()
        if name == "msg":
            self.targeted(rest, "/msg NAME TEXT")
        elif name in {"query", "q"}:
            self._query(rest)
        elif name == "join":
            self._join(rest)
        elif name in {"part", "leave"}:
            self._part(rest)
        elif name in {"rooms", "list"}:
            self.queue(Outgoing("rooms"))
        elif name in {"who", "names"}:
            self.who()
        elif name == "history":
            self._history(rest)
        elif name == "all":
            if rest:
                self.say(self.windows[0], rest)
            else:
                self.problem("usage: /all TEXT")
        elif name in {"win", "window", "w"}:
            self._win(rest)
        elif name in {"close", "wc"}:
            reason = self.close(self.current)
            if reason is not None:
                self.problem(reason)
        elif name in {"register", "password"}:
            self._ask_password("register" if name == "register" else "password", rest)
        elif name == "help":
            self.show_help()
        else:
            self.problem(f"unknown command /{display_text(match[1])}: /help lists them")
        return True

    # -- accounts -------------------------------------------------------------------

    def _ask_password(
        self, command: Literal["register", "password"], rest: str
    ) -> None:
        if rest:
            # Typed on the line, it would be on the screen and in the history.
            self.problem(f"usage: /{command} (the password is asked for, hidden)")
            return
        if self.link is Link.AWAY or self.link is Link.DISCONNECTED:
            self.problem("not connected just now: try again once back")
            return
        self.password_entry = PasswordEntry(command)
        self.info("type the new password (it is not shown), then Enter; Esc cancels")

    def password_entered(self, text: str) -> None:
        """The hidden input line was entered while a password is asked for."""
        entry = self.password_entry
        assert entry is not None
        if not text:
            self.cancel_password("no password given")
            return
        if entry.first is None:
            try:
                check_password(text)
            except ValueError as invalid:
                # The reason, never the password.
                self.password_entry = None
                self.problem(f"{invalid}; nothing changed")
                return
            entry.first = text
            return
        self.password_entry = None
        if text != entry.first:
            self.problem("the two passwords differ; nothing changed")
            return
        self._account_asked.append(entry.command)
        self.queue(Outgoing(entry.command, secret=text))

    def cancel_password(self, why: str = "cancelled") -> None:
        if self.password_entry is not None:
            self.password_entry = None
            self.info(f"{why}; nothing changed")

    def registered(self, name: str) -> None:
        """``registered|NAME``: the answer to ``/register``."""
        self._end_join()
        self._account_answered("register")
        self.info(
            f"{display_text(name)} is an account now: logging in as"
            f" {display_text(name)} takes this password from now on"
        )

    def password_changed(self, name: str) -> None:
        """``password|NAME``: the answer to ``/password``."""
        self._end_join()
        self._account_answered("password")
        self.info(f"the password of {display_text(name)} is changed")

    def _account_answered(self, command: str) -> None:
        if command in self._account_asked:
            self._account_asked.remove(command)

    def _checked_target(self, target: str) -> str | None:
        try:
            check_target(target)
        except ValueError as invalid:
            self.problem(f"{display_text(target)}: {invalid}")
            return None
        return target

    def targeted(self, rest: str, usage: str) -> None:
        match = _TARGETED.fullmatch(rest)
        if match is None or not (match[2] or "").strip():
            self.problem(f"usage: {usage}")
            return
        target = self._checked_target(match[1])
        if target is None:
            return
        window = self.find_window(target) or self.window_for(target)
        self.say(window, match[2])
        if window is not self.current:
            self.info(f"-> {display_text(window.target)}: {display_text(match[2])}")

    def _history(self, rest: str) -> None:
        count = JOIN_HISTORY
        if rest:
            number = int(rest) if rest.isascii() and rest.isdigit() else 0
            if not 1 <= number <= MAX_HISTORY:
                self.problem(f"usage: /history [N] (N from 1 to {MAX_HISTORY})")
                return
            count = int(rest)
        if self.version < 2:
            self.problem("the server keeps no history on protocol 1")
            return
        self._history_asked.add(name_key(self.current.target))
        self.queue(Outgoing("history", self.current.target, count=count))

    def _query(self, rest: str) -> None:
        target = rest.split()[0] if rest else ""
        if not target:
            self.problem("usage: /query NAME")
            return
        if self._checked_target(target) is None:
            return
        self.show(self.window_for(target))

    def _join(self, rest: str) -> None:
        room = rest.split()[0] if rest else ""
        if not room:
            self.problem("usage: /join #ROOM")
            return
        if not is_room(room):
            room = "#" + room
        try:
            check_room(room)
        except ValueError as invalid:
            self.problem(f"{display_text(room)}: {invalid}")
            return
        window = self.window_for(room)
        self.show(window)
        self.queue(Outgoing("join", room))

    def _part(self, rest: str) -> None:
        room = rest.split()[0] if rest else self.current.target
        if not is_room(room):
            self.problem("usage: /part #ROOM (or /part in a room's window)")
            return
        self.queue(Outgoing("part", room))

    def _win(self, rest: str) -> None:
        if rest.isdigit():
            if not self.show_number(int(rest)):
                count = len(self.windows)
                self.problem(
                    f"there is no window {rest}:"
                    f" {count} {'is' if count == 1 else 'are'} open"
                )
            return
        window = self.find_window(rest) if rest else None
        if window is None:
            self.problem(f"usage: /win N (1 to {len(self.windows)}) or /win NAME")
            return
        self.show(window)

    def who(self) -> None:
        window = self.current
        if window.is_room:
            if not window.joined:
                self.info(f"you are not in {display_text(window.target)}")
                return
            names = [self._shown_name(n) for n in window.members.values()]
            self.info(f"in {display_text(window.target)}: " + ", ".join(names))
        elif window.is_everyone:
            others = [self._shown_name(n) for n in self.online.values()]
            self.info(
                "online: " + ", ".join(others) if others else "nobody else is online"
            )
        else:
            here = name_key(window.target) in self.online
            state = "online" if here else "not online (as far as this client knows)"
            self.info(f"{self._shown_name(window.target)} is {state}")

    def _shown_name(self, name: str) -> str:
        return display_text(name) + self._look_alike_note(name)

    def say(self, window: Window, text: str, *, pasted: bool = False) -> None:
        """Queue *text* to *window*'s target, in pieces if it is too long."""
        if self.link is Link.DISCONNECTED:
            self.problem("not sent: not connected")
            return
        if window.is_room and not window.joined:
            self.problem(
                f"not sent: you are not in {display_text(window.target)}:"
                f" /join {display_text(window.target)}"
            )
            return
        try:
            check_target(window.target)
        except ValueError as invalid:
            self.problem(f"not sent: {invalid}")
            return
        away = "waiting for the connection" if self.link is Link.AWAY else ""
        for piece in split_text(text, self.max_text, self.max_text_bytes):
            entry = self.add(
                window,
                Entry(
                    EntryKind.MESSAGE,
                    piece,
                    self.clock(),
                    sender=self.name,
                    to=window.target,
                    own=True,
                    state=EntryState.PENDING,
                    note=away,
                ),
            )
            self.queue(Outgoing("talk", window.target, piece, entry, window, pasted))

    # -- completion -----------------------------------------------------------------

    def candidates(self, word: str, first: bool) -> list[str]:
        """What Tab may turn *word* into (*first*: it starts the line)."""
        if first and word.startswith("/"):
            return [c for c in COMMANDS if c.startswith(word.lower())]
        if word.startswith("#"):
            rooms = {w.key: w.target for w in self.windows if w.is_room}
            for key, room in self.known_rooms.items():
                rooms.setdefault(key, room)
            found = _matching(word, rooms.values())
            if (
                not found
                and not self._asking_rooms
                and self.link is Link.CONNECTED
                and self.version >= 2  # a trichat 1.0 server may know no rooms
            ):
                # Rooms made by others are known only from a room list: ask
                # for one, quietly; the next Tab completes from it.
                self._asking_rooms = True
                self.queue(Outgoing("rooms", quiet=True))
            return found
        prefix = "@" if word.startswith("@") else ""
        stem = word[len(prefix) :]
        names: dict[str, str] = {}
        for pool in (self.current.members, self.online):
            names.update(pool)
        for window in self.windows:
            if not window.is_room and not window.is_everyone:
                names.setdefault(window.key, window.target)
        names.pop(name_key(self.name), None)
        found = [prefix + name for name in _matching(stem, names.values())]
        if first and not prefix and (self.current.is_room or self.current.is_everyone):
            # Addressing someone in a room, as on IRC: "bob: ..."
            return [name + ":" for name in found]
        return found


def _matching(word: str, options: Iterable[str]) -> list[str]:
    key = name_key(word)
    return sorted(
        (option for option in options if name_key(option).startswith(key)),
        key=name_key,
    )
