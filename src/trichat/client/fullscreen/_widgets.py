"""The urwid widgets of the full-screen client: a thin layer that draws the
``ChatModel`` and hands it the keys."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import tzinfo
from typing import Final

import urwid
from urwid.widget import AbstractFlowWidget

from ._model import ChatModel, Entry, EntryKind, EntryState, Link, Window, edit_line
from ._text import NAME_COLOURS, colour_index, display_text

__all__ = ["PALETTE", "ChatView", "entry_markup"]

_NAME_COLOURS: Final = (
    "light red",
    "light green",
    "yellow",
    "light blue",
    "light magenta",
    "light cyan",
    "dark red",
    "dark green",
    "brown",
    "dark magenta",
)
assert len(_NAME_COLOURS) == NAME_COLOURS

PALETTE: Final[list[tuple[str, str, str, str]]] = [
    ("time", "dark gray", "default", ""),
    ("date", "dark cyan", "default", "bold"),
    ("info", "dark gray", "default", ""),
    ("error", "light red", "default", "bold"),
    ("own", "white", "default", "bold"),
    ("pending", "dark gray", "default", ""),
    ("failed", "light red", "default", "standout"),
    ("mention", "yellow", "default", "standout"),
    ("lookalike", "white", "dark red", "standout"),
    ("bar", "white", "dark blue", "standout"),
    ("bar.current", "black", "light gray", "bold"),
    ("bar.unread", "white", "dark blue", "bold"),
    ("bar.alert", "yellow", "dark red", "bold"),
    ("status", "light gray", "dark blue", "standout"),
    ("status.bad", "yellow", "dark red", "bold"),
    ("prompt", "light cyan", "default", "bold"),
] + [
    (f"name{index}", colour, "default", "")
    for index, colour in enumerate(_NAME_COLOURS)
]

_Markup = list[tuple[Hashable, str] | str]

_PASTE_KEYS: Final = {"enter": "\n", "tab": "\t", "space": " "}


def _time_text(entry: Entry, zone: tzinfo | None) -> tuple[str, str]:
    when = entry.time.astimezone(zone)
    # A message's time not from the server (protocol 1: when it arrived
    # here; an own message not yet confirmed) is marked with "~".
    local = entry.kind is EntryKind.MESSAGE and not entry.server_time
    mark = "~" if local else " "
    return when.strftime("%Y-%m-%d"), f"{mark}{when:%H:%M:%S} "


def entry_markup(
    model: ChatModel, entry: Entry, before: Entry | None, zone: tzinfo | None = None
) -> _Markup:
    """How *entry* is drawn, after *before* (the entry above it): with a
    date line first when the date changes."""
    day, stamp = _time_text(entry, zone)
    markup: _Markup = []
    if before is None or _time_text(before, zone)[0] != day:
        when = entry.time.astimezone(zone)
        markup.append(("date", f"--- {when:%A %d %B %Y} ---\n"))
    markup.append(("time", stamp))
    text = display_text(entry.text)
    match entry.kind:
        case EntryKind.INFO:
            markup.append(("info", f"* {text}"))
        case EntryKind.ERROR:
            markup.append(("error", f"! {text}"))
        case EntryKind.MESSAGE:
            markup.extend(_message_markup(model, entry, text))
    return markup


def _message_markup(model: ChatModel, entry: Entry, text: str) -> _Markup:
    sender = entry.sender or "?"
    markup: _Markup = []
    if entry.earlier:
        markup.append(("info", "[earlier] "))
    if entry.own:
        markup.append(("own", f"<{display_text(sender)}> "))
    elif model.look_alikes(sender):
        markup.append(("lookalike", f"<!{display_text(sender)}>"))
        markup.append(" ")
    else:
        markup.append((f"name{colour_index(sender)}", f"<{display_text(sender)}>"))
        markup.append(" ")
    if entry.state is EntryState.PENDING:
        markup.append(("pending", text))
        if entry.note:
            markup.append(("info", f"  [{entry.note}]"))
    elif entry.state is EntryState.FAILED:
        markup.append(("failed", text))
        markup.append(("error", f"  [{entry.note or 'not sent'}]"))
    elif entry.mention:
        markup.append(("mention", text))
    else:
        markup.append(text)
    return markup


class _Pane:
    """One window's scrollback: a list box of texts, one per entry."""

    def __init__(self, view: ChatView, window: Window) -> None:
        self.view = view
        self.window = window
        self.walker: urwid.SimpleFocusListWalker[AbstractFlowWidget]
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox: urwid.ListBox[int] = urwid.ListBox(self.walker)
        self.texts: dict[int, urwid.Text] = {}
        self.rebuild()

    def rebuild(self) -> None:
        self.texts.clear()
        widgets: list[AbstractFlowWidget] = []
        before: Entry | None = None
        for entry in self.window.entries:
            widgets.append(self._text(entry, before))
            before = entry
        self.walker[:] = widgets
        if widgets:
            self.walker.set_focus(len(widgets) - 1)

    def _text(self, entry: Entry, before: Entry | None) -> urwid.Text:
        text = urwid.Text(entry_markup(self.view.model, entry, before, self.view.zone))
        self.texts[id(entry)] = text
        return text

    @property
    def at_bottom(self) -> bool:
        return not self.walker or self.walker.focus == len(self.walker) - 1

    def added(self, entry: Entry) -> None:
        following = self.at_bottom
        entries = self.window.entries
        before = entries[-2] if len(entries) > 1 else None
        self.walker.append(self._text(entry, before))
        if following:
            self.walker.set_focus(len(self.walker) - 1)

    def changed(self, entry: Entry) -> None:
        text = self.texts.get(id(entry))
        if text is None:
            return
        entries = self.window.entries
        index = next(i for i, e in enumerate(reversed(entries)) if e is entry)
        position = len(entries) - 1 - index
        before = entries[position - 1] if position > 0 else None
        text.set_text(entry_markup(self.view.model, entry, before, self.view.zone))


class _Input(urwid.Edit):
    """The input line; the keys it does not edit go to the view."""


_Frame = urwid.Frame["urwid.ListBox[int]", "urwid.AttrMap[urwid.Text]", urwid.Pile]
_Size = tuple[()] | tuple[int] | tuple[int, int]


class _StatusLine(urwid.Widget):
    """The status line: where messages go on the left, the connection's
    state on the right. When both do not fit, the state wins: a narrow
    terminal still shows that the connection is lost (the left part is
    cut instead)."""

    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self) -> None:
        super().__init__()
        self.where = urwid.Text("", wrap="clip")
        self.state = urwid.Text("", wrap="clip")

    def set_markup(self, where: _Markup, state: _Markup) -> None:
        self.where.set_text(where)
        self.state.set_text(state)
        self._invalidate()

    def rows(self, size: _Size, focus: bool = False) -> int:
        return 1

    def render(self, size: _Size, focus: bool = False) -> urwid.Canvas:
        assert len(size) == 1, size  # a flow widget: (columns,)
        width = size[0]
        right = min(self.state.pack()[0], width)
        left = width - right
        parts = [(self.state.render((right,)), None, False, right)]
        if left:
            parts.insert(0, (self.where.render((left,)), None, False, left))
        return urwid.CanvasJoin(parts)


class ChatView(urwid.WidgetWrap[_Frame]):
    """The whole screen: the window bar, the current window's messages, the
    status line and the input line."""

    def __init__(
        self,
        model: ChatModel,
        *,
        on_quit: Callable[[], None] = lambda: None,
        on_bell: Callable[[], None] = lambda: None,
        zone: tzinfo | None = None,
    ) -> None:
        self.model = model
        self.zone = zone
        self.on_quit = on_quit
        self.on_bell = on_bell
        self._panes: dict[Window, _Pane] = {}
        self._pasting: list[str] | None = None
        self.bar = urwid.Text("", wrap="clip")
        self.status = _StatusLine()
        self.input = _Input()
        footer = urwid.Pile(
            [urwid.AttrMap(self.status, "status"), self.input], focus_item=1
        )
        self.frame: _Frame = urwid.Frame(
            self._pane(model.current).listbox,
            header=urwid.AttrMap(self.bar, "bar"),
            footer=footer,
            focus_part="footer",
        )
        super().__init__(self.frame)
        model.listener = self
        self.refresh()

    # -- the model's listener -------------------------------------------------------

    def _pane(self, window: Window) -> _Pane:
        """The pane of *window*, made when it is first shown."""
        pane = self._panes.get(window)
        if pane is None:
            pane = self._panes[window] = _Pane(self, window)
        return pane

    def entry_added(self, window: Window, entry: Entry) -> None:
        if (pane := self._panes.get(window)) is not None:
            pane.added(entry)

    def entry_changed(self, window: Window, entry: Entry) -> None:
        if (pane := self._panes.get(window)) is not None:
            pane.changed(entry)

    def entries_replaced(self, window: Window) -> None:
        if (pane := self._panes.get(window)) is not None:
            pane.rebuild()

    def bell(self) -> None:
        self.on_bell()

    # -- drawing --------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the bar, status line, prompt and message pane up to date."""
        model = self.model
        for closed in self._panes.keys() - set(model.windows):
            del self._panes[closed]
        self.frame.body = self._pane(model.current).listbox
        self.bar.set_text(self._bar_markup())
        self.status.set_markup(*self._status_markup())
        asking = model.password_entry
        if asking is None:
            self.input.set_caption(
                ("prompt", f"{display_text(model.current.target)}> ")
            )
            self.input.set_mask(None)
        else:
            self.input.set_caption(("prompt", asking.prompt))
            # Nothing of a password is drawn, not even its length.
            self.input.set_mask("")

    def _bar_markup(self) -> _Markup:
        markup: _Markup = []
        for number, window in enumerate(self.model.windows, 1):
            look_alike = not window.is_room and self.model.look_alikes(window.target)
            mark = "!" if look_alike else ""
            label = f"{number}:{mark}{display_text(window.target)}"
            if window.is_room and not window.joined:
                label += "(-)"
            if window is self.model.current:
                markup.append(("bar.current", f" {label} "))
            elif window.unread:
                style = "bar.alert" if window.alert else "bar.unread"
                markup.append((style, f" {label}({window.unread}) "))
            else:
                markup.append(f" {label} ")
        return markup

    def _status_markup(self) -> tuple[_Markup, _Markup]:
        """The status line's two parts: where messages go, and the
        connection's state."""
        model = self.model
        window = model.current
        where = display_text(window.target)
        if window.is_everyone and model.settings.get("presence") == "rooms":
            where = "* (everyone: not on this server; rooms only)"
        elif window.is_everyone:
            where = f"* (everyone: {len(model.online) + 1} online)"
        elif window.is_room:
            where += (
                f" ({len(window.members)} here)" if window.joined else " (not in it)"
            )
        elif model.look_alikes(window.target):
            where += " (looks like another name!)"
        markup: _Markup = [f" {display_text(model.name)} | to {where} "]
        state: _Markup = [" "]
        if model.link is Link.CONNECTED:
            state.append("connected")
        elif model.link is Link.AWAY:
            state.append(("status.bad", model.link_note or model.link.value))
        else:
            state.append(("status.bad", model.link.value))
        if model.lag is not None:
            state.append(f" | lag {model.lag * 1000:.0f} ms")
        sending = model.sending
        if sending is not None:
            done, total = sending
            state.append(("status.bad", f" | sending {done}/{total}"))
        pane = self._panes.get(window)
        if pane is not None and not pane.at_bottom:
            markup.append(("status.bad", "| scrolled back (PageDown) "))
        state.append(" ")
        return markup, state

    # -- input ----------------------------------------------------------------------

    def keypress(self, size: _Size, key: str) -> str | None:
        if key != "tab":
            self.model.completer.reset()
        if self._pasting is not None:
            self._paste_key(key)
            result = None
        elif self.model.password_entry is not None:
            result = self._password_key(size, key)
        elif self._key(size, key):
            result = None
        else:
            result = super().keypress(size, key)
        self.refresh()
        return result

    def _key(self, size: _Size, key: str) -> bool:
        """Handle a key that is not plain editing; False for those."""
        model = self.model
        edit = self.input
        if key == "begin paste":
            self._pasting = []
            return True
        if key == "enter":
            line = edit.edit_text
            edit.set_edit_text("")
            if not model.submit(line):
                self.on_quit()
            return True
        if key == "tab":
            done = model.completer.complete(
                edit.edit_text, edit.edit_pos, model.candidates
            )
            if done is not None:
                edit.set_edit_text(done[0])
                edit.set_edit_pos(done[1])
            return True
        if key in {"up", "down"}:
            line = (
                model.history.previous(edit.edit_text)
                if key == "up"
                else model.history.next()
            )
            if line is not None:
                edit.set_edit_text(line)
                edit.set_edit_pos(len(line))
            return True
        if key in {"page up", "page down"}:
            self.frame.body.keypress(self._body_size(size), key)
            return True
        if key.startswith("meta ") and key[5:].isdigit() and len(key) == 6:
            model.show_number(int(key[5:]))
            return True
        if key in {"ctrl n", "ctrl p"}:
            model.show_next(1 if key == "ctrl n" else -1)
            return True
        if key == "ctrl d" and not edit.edit_text:
            if not model.submit("/quit"):
                self.on_quit()
            return True
        edited = edit_line(key, edit.edit_text, edit.edit_pos)
        if edited is None:
            return False
        edit.set_edit_text(edited[0])
        edit.set_edit_pos(edited[1])
        return True

    def _password_key(self, size: _Size, key: str) -> str | None:
        """A key while a password is typed: Enter takes it, Esc cancels,
        the line editing keys edit; nothing else (no history, no
        completion, no switching windows) lest it be shown or kept."""
        model = self.model
        edit = self.input
        if key == "enter":
            text = edit.edit_text
            edit.set_edit_text("")
            model.password_entered(text)
            return None
        if key == "esc":
            edit.set_edit_text("")
            model.cancel_password()
            return None
        if key == "begin paste":
            self._pasting = []
            return None
        edited = edit_line(key, edit.edit_text, edit.edit_pos)
        if edited is not None:
            edit.set_edit_text(edited[0])
            edit.set_edit_pos(edited[1])
            return None
        if len(key) == 1 or key in {"backspace", "delete", "left", "right"}:
            return super().keypress(size, key)
        return None

    def _paste_key(self, key: str) -> None:
        assert self._pasting is not None
        if key != "end paste":
            if len(key) == 1:
                self._pasting.append(key)
            elif key in _PASTE_KEYS:
                self._pasting.append(_PASTE_KEYS[key])
            return
        pasted, self._pasting = "".join(self._pasting), None
        edit = self.input
        if self.model.password_entry is not None:
            # A pasted password: its first line, never sent as a message.
            edit.insert_text(pasted.split("\n", 1)[0])
        elif "\n" not in pasted:
            edit.insert_text(pasted)
        else:
            text, position = edit.edit_text, edit.edit_pos
            rest = self.model.paste(text[:position] + pasted + text[position:])
            edit.set_edit_text(rest)
            edit.set_edit_pos(len(rest))

    def _body_size(self, size: _Size) -> tuple[int, int]:
        cols, rows = size if len(size) == 2 else (80, 24)
        header = self.frame.header
        footer = self.frame.footer
        used = (header.rows((cols,)) if header is not None else 0) + (
            footer.rows((cols,), True) if footer is not None else 0
        )
        return cols, max(1, rows - used)

    def mouse_event(
        self,
        size: _Size,
        event: str,
        button: int,
        col: int,
        row: int,
        focus: bool,
    ) -> bool | None:
        handled = super().mouse_event(size, event, button, col, row, focus)
        # A click must not take the keys away from the input line.
        self.frame.focus_position = "footer"
        self.refresh()
        return handled
