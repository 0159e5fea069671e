"""The full-screen client at work: the client's frames into the model, the
model's outbox to the server at a pace the server allows, and urwid's
input, all tasks of one Trio nursery."""

from __future__ import annotations

import itertools
import math
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Final

import trio
import urwid
from urwid.display.common import InputClosedError

from ...protocol.messages import (
    Delivery,
    Error,
    Exit,
    Joined,
    Login,
    Message,
    Parted,
    PasswordChanged,
    Ping,
    Pong,
    Registered,
)
from ..library import (
    BadServerFrame,
    Client,
    ConnectionLost,
    Disconnected,
    HistoryPage,
    NotSent,
    Reconnecting,
    ReconnectingClient,
    ReconnectingEvent,
    Resumed,
    ResumeFailed,
    RoomList,
)
from ..terminal import EXIT_FAILURE, EXIT_OK, describe_error, escape
from ._model import ChatModel, Link, Outgoing, Pacer
from ._widgets import PALETTE, ChatView

__all__ = ["FullScreen"]

_LAG_TOKEN: Final = "lag-"
# How long one write may take before the connection counts as lost.
_WRITE_GRACE: Final = 10.0
# How long leaving may take to send what was typed before /quit.
_FLUSH_GRACE: Final = 5.0
EXIT_HANGUP: Final = 128 + signal.SIGHUP
"""The terminal hung up, as a shell reports a SIGHUP."""


class FullScreen:
    """One full-screen session over a logged-in *client*.

    ``run`` drives it: with a urwid *screen* it draws there and reads the
    keys from it; without one (tests) ``view`` takes keys by hand
    (``view.keypress``) and renders on demand (``view.render``).

    Over a ``ReconnectingClient`` a dropped connection is shown (the
    status line counts down to each attempt) and the chat goes on once
    the client is back: windows, unread counts, the input line and what
    waits in the outbox are kept. A connection lost for good (a plain
    ``Client``'s drop, or a reconnecting one that gave up) leaves the
    windows for reading, or with *exit_on_loss* ends the session
    (EXIT_FAILURE, ``farewell`` says why).
    """

    def __init__(
        self,
        client: Client | ReconnectingClient,
        *,
        bell: bool = True,
        ping_interval: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        zone: tzinfo | None = None,
        on_bell: Callable[[], None] | None = None,
        exit_on_loss: bool = False,
    ) -> None:
        self.client = client
        self.ping_interval = ping_interval
        self.exit_on_loss = exit_on_loss
        self.farewell: str | None = None
        """Why the session ended, when the connection did (exit_on_loss)."""
        self.model = ChatModel(
            client.name,
            version=client.version,
            echo=client.echo,
            settings=client.settings,
            max_text=client.max_text,
            max_frame=client.max_frame,
            online=client.online,
            clock=clock,
            bell=bell,
        )
        self.view = ChatView(
            self.model,
            on_quit=self.quit,
            on_bell=on_bell or (lambda: None),
            zone=zone,
        )
        self.status: int | None = None
        self._scope = trio.CancelScope()
        self._wake = trio.Event()
        self._pacer = Pacer(0, 1)
        self._pings: dict[str, float] = {}
        self._closing: str | None = None
        # The next attempt to reconnect: (its number, when it starts).
        self._retry: tuple[int, float] | None = None
        self._retry_changed = trio.Event()
        self.model.wake_sender = self._wake_sender
        self.model.info(f"logged in as {escape(client.name)}; /help lists the commands")
        self.view.refresh()

    # -- running --------------------------------------------------------------------

    async def run(
        self, screen: urwid.BaseScreen | None = None, typed: Sequence[str] = ()
    ) -> int:
        """Chat until ``/quit`` (EXIT_OK; EXIT_FAILURE after the connection
        was lost); the client is closed at the end. *typed*: keys typed
        before the screen started, taken as if typed on it."""
        self._pacer = self.model.pacer(trio.current_time())
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive)
                    nursery.start_soon(self._send)
                    nursery.start_soon(self._count_down)
                    if self.ping_interval > 0:
                        nursery.start_soon(self._measure_lag)
                    if screen is None:
                        await trio.sleep_forever()
                    else:
                        await self._show(screen, typed)
                        self._scope.cancel()
            await self._leave()
        finally:
            await self.client.aclose()
        return EXIT_OK if self.status is None else self.status

    async def _leave(self) -> None:
        """Say goodbye, after what was typed before ``/quit``."""
        model = self.model
        if model.link is Link.DISCONNECTED:
            return
        with trio.move_on_after(_FLUSH_GRACE):
            while model.outbox and self._linked():
                if not await self._send_next():
                    break
        # Away, a reconnecting client tries once, briefly, to take the
        # session back just to say exit (else the server ends it when its
        # window passes).
        await self.client.exit()

    async def _show(self, screen: urwid.BaseScreen, typed: Sequence[str]) -> None:
        """Run urwid's main loop on *screen* until the session ends; the
        screen is given back as it was found."""
        event_loop = urwid.TrioEventLoop()
        loop = urwid.MainLoop(
            self.view, PALETTE, screen=screen, event_loop=event_loop, handle_mouse=True
        )
        try:
            with loop.start():
                loop.process_input(typed)
                await event_loop.run_async()
        except* (InputClosedError, OSError):
            # The terminal hung up (reading it ends, or writing to it, or
            # giving it back, fails with EIO): nobody is left to type, and
            # the name is to be freed at once. Reading and redrawing often
            # fail together, and urwid's loop then raises both in a group:
            # hence except*.
            self.hang_up(signal.SIGHUP)

    def hang_up(self, number: int = signal.SIGHUP) -> None:
        """The terminal closed (SIGHUP), or we are told to stop (signal
        *number*, SIGTERM): leave as ``/quit`` does, saying ``exit`` so
        that the name is free at once (the user closed the chat: nothing
        is left to resume it), with the signal's exit status. Safe to call
        at any time, even while leaving."""
        self.quit()
        self.status = 128 + number

    def interrupt(self) -> None:
        """Ctrl-C: leave now, saying ``exit`` (as a hang-up), without
        waiting for what is still to be sent."""
        self.model.abandon_outbox()
        self.hang_up(signal.SIGINT)

    def quit(self) -> None:
        """Leave: what ``/quit`` does once nothing is left to send."""
        failed = self.model.link is Link.DISCONNECTED
        self.status = EXIT_FAILURE if failed else EXIT_OK
        self._scope.cancel()

    def _linked(self) -> bool:
        """Whether the connection is up (as far as is known)."""
        return self.model.link in {Link.CONNECTED, Link.SILENT}

    @property
    def _reconnecting(self) -> bool:
        return isinstance(self.client, ReconnectingClient)

    def _changed(self) -> None:
        # The main loop redraws when the tasks that called this are done.
        self.view.refresh()

    # -- what arrives ---------------------------------------------------------------

    async def _receive(self) -> None:
        model = self.model
        while True:
            try:
                batch = await self.client.receive_batch()
            except BadServerFrame as bad:
                if not bad.fatal:
                    model.problem(f"ignored a frame: {escape(str(bad))}")
                    self._changed()
                    continue
                self._lost(escape(str(bad)))
                return
            except ConnectionLost as lost:
                self._lost(escape(str(lost)))
                return
            if not batch:
                self._lost(self._closing or "the server closed the connection")
                return
            for message in batch:
                self.handle(message)
            # A join's answer (who is in the room) arrives whole, in one
            # read as a rule: the members listed after it have just come.
            model.end_of_batch()
            self._changed()

    def _lost(self, why: str) -> None:
        self._set_retry(None)
        self.model.lost(why)
        self._changed()
        if self.exit_on_loss:
            self.farewell = why
            self.status = EXIT_FAILURE
            self._scope.cancel()

    def handle(self, message: ReconnectingEvent) -> None:
        """Bring the model up to date with one frame from the server, or
        one change of the connection."""
        model = self.model
        if model.link is Link.SILENT:
            model.link = Link.CONNECTED
        match message:
            case Disconnected(reason):
                self._pings.clear()
                model.dropped(escape(reason))
            case Reconnecting(attempt, delay):
                self._set_retry((attempt, trio.current_time() + delay))
                model.retrying(attempt, max(1, math.ceil(delay)))
            case Resumed(missed):
                self._set_retry(None)
                model.resumed(missed)
            case ResumeFailed(reason, _, recovered, gaps, direct_gap):
                self._set_retry(None)
                model.resume_failed(escape(reason), recovered, gaps, direct_gap)
            case Registered(name):
                model.registered(name)
            case PasswordChanged(name):
                model.password_changed(name)
            case Message(id, time, sender, to, text):
                model.delivered(sender, to, text, id=id, time=time)
            case Delivery(sender, to, text):
                model.delivered(sender, to, text)
            case Login(name):
                model.logged_in(name)
            case Exit(str(name)):
                model.exited(name)
            case Joined(room, name):
                model.joined(room, name)
            case Parted(room, name):
                model.parted(room, name)
            case RoomList(rooms):
                model.room_list([(info.room, info.members) for info in rooms])
            case HistoryPage(target, messages):
                model.history_page(target, messages)
            case Error(code):
                words = describe_error(message)
                if code.closes:
                    self._closing = words
                    if not self._reconnecting:
                        return  # the end of the connection says it next
                model.refused(code.value, message.detail, words)
            case Pong(token) if token in self._pings:
                sent = self._pings.pop(token)
                model.lag = trio.current_time() - sent
            case Exit() | Ping() | Pong():
                pass

    def _set_retry(self, retry: tuple[int, float] | None) -> None:
        self._retry = retry
        self._retry_changed.set()
        self._retry_changed = trio.Event()

    async def _count_down(self) -> None:
        """While reconnecting: the seconds to the next attempt, in the
        status line, one a second."""
        while True:
            changed = self._retry_changed
            retry = self._retry
            if retry is None:
                await changed.wait()
                continue
            attempt, start = retry
            left = start - trio.current_time()
            if left <= 0:
                self._retry = None
                self.model.retrying(attempt, None)
                self._changed()
                continue
            seconds = math.ceil(left)
            self.model.retrying(attempt, seconds)
            self._changed()
            with trio.move_on_at(start - (seconds - 1)):
                await changed.wait()

    async def _measure_lag(self) -> None:
        """Ping every ``ping_interval`` seconds: the answer's delay is the
        lag in the status line; no answer at all makes it "not answering"."""
        for number in itertools.count(1):
            token = f"{_LAG_TOKEN}{number}"
            sent = trio.current_time()
            self._pings = {token: sent}
            try:
                # Over a reconnecting client, waits while it is away.
                await self.client.ping(token)
            except ConnectionLost:
                if not self._reconnecting or self.model.link is Link.DISCONNECTED:
                    return
            await trio.sleep(self.ping_interval)
            unanswered = token in self._pings and self.client.last_heard < sent
            if unanswered and self.model.link is Link.CONNECTED:
                self.model.link = Link.SILENT
                self.model.lag = None
                self._changed()

    # -- what goes out --------------------------------------------------------------

    def _wake_sender(self) -> None:
        self._wake.set()

    async def _send(self) -> None:
        """Send what the outbox holds, in order, under the server's rate;
        while the connection is away, it waits."""
        while True:
            if not self.model.outbox or self.model.link is Link.AWAY:
                self._wake = trio.Event()
                await self._wake.wait()
            elif not await self._send_next():
                return

    async def _send_next(self) -> bool:
        """Send the first frame of the outbox once the pacer lets it go;
        False when the connection is lost."""
        model = self.model
        delay = self._pacer.delay(trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
        if not model.outbox:  # dropped meanwhile
            return model.link is not Link.DISCONNECTED
        item = model.take_outgoing()
        client = self.client
        try:
            # A write cancelled halfway would leave the stream unusable,
            # even for saying exit: quitting waits for it (not for long).
            # Over a reconnecting client, a write the drop interrupts goes
            # again once back: this waits for that too (within limits).
            with trio.CancelScope(shield=True) as scope:
                scope.relative_deadline = _WRITE_GRACE
                await self._write(item)
        except ValueError as invalid:
            model.not_sent(item, escape(str(invalid)))
        except NotSent as never:
            # The reconnecting client has ended; the reading task hears why.
            model.not_sent(item, escape(str(never)))
            self._changed()
            return False
        except ConnectionLost as lost:
            if not isinstance(client, ReconnectingClient):
                self._lost(escape(str(lost)))
                return False
            # Did not reach the server, and the client reconnects: it goes
            # first once back.
            model.put_back(item)
            self._changed()
            return True
        if scope.cancelled_caught:
            if isinstance(client, ReconnectingClient) and not client.connected:
                # Cancelled while waiting for the connection: not sent.
                model.put_back(item)
            else:
                model.not_sent(item, "the server did not take it in time")
        else:
            self._pacer.spend(trio.current_time())
            model.sent(item)
        self._changed()
        return True

    async def _write(self, item: Outgoing) -> None:
        client = self.client
        match item.kind:
            case "talk":
                await client.talk(item.target, item.text)
            case "join":
                await client.join(item.target)
            case "part":
                await client.part(item.target)
            case "rooms":
                await client.list_rooms()
            case "history":
                await client.history(item.target, item.count)
            case "register":
                # A reconnecting client keeps the password, to log in with
                # it again should its session be lost.
                await client.register(item.secret)
            case "password":
                await client.change_password(item.secret)
