"""One client's session rules, with no I/O and no waiting.

A ``Session`` decides everything about what a client sends: the login
state, flood control, the line limit, liveness (login and ping deadlines)
and what each frame does. It is fed what a read brought (``received``) and
handles it a step at a time (``handle_ready``), routing talk through the
hub and putting replies in the client's own mailbox. It never waits: it
says when it has to (``congested``: recipients to let drain first;
``pending``: blocking work, such as a password check or a look in the
store, to await in the connection's task before anything more is handled;
``read``: lines left for later) and its caller, the connection's task or
the shared reader, does the waiting. Both call the same step, so the two
paths cannot drift. Times come in as *now* (Trio's clock, in seconds).

Most lines are talk that goes on as it came, a run at a time: a read of
printable ASCII whose lines are ``talk`` frames to one online user (their
name exactly as they wrote it) or to ``*`` is routed without decoding each
frame (``plain_talk_run``). Any other line is decoded in full, alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from itertools import count
from typing import cast

import trio

from ..protocol._codec import (
    ProtocolError,
    as_deliveries,
    encode,
    plain_talk_run,
    printable,
    talk_texts,
)
from ..protocol._linebuffer import LineBuffer
from ..protocol.connection import decode_client_line
from ..protocol.messages import (
    PROTOCOL_VERSION,
    ChangePassword,
    ClientMessage,
    Error,
    ErrorCode,
    Exit,
    Frame,
    Hello,
    History,
    HistoryEnd,
    Join,
    ListRooms,
    Login,
    Part,
    PasswordChanged,
    Ping,
    Pong,
    Register,
    Registered,
    Resume,
    Resumed,
    RoomInfo,
    RoomsListed,
    SessionInfo,
    Talk,
    Welcome,
    format_epoch_ms,
    is_room,
    name_key,
)
from .config import ServerConfig
from .hub import Envelope, Hub, Member, NameTaken, RoomRefused
from .mailbox import Drainable, Mailbox
from .passwords import LoginThrottle
from .store import (
    AccountExists,
    Direction,
    NoSuchAccount,
    Store,
    StoredMessage,
    StoreError,
)

__all__ = ["Session", "SessionEnded", "TokenBucket"]

log = logging.getLogger("trichat.server")


class SessionEnded(Exception):
    """The session is over: close with *error* (if any), and log *reason*."""

    def __init__(self, reason: str, error: Error | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class TokenBucket:
    """Allows *rate* frames a second on average, *burst* at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        return self.take_up_to(1, now) == 1

    def take_up_to(self, count: int, now: float) -> int:
        """Take up to *count* frames' worth; returns how many were allowed."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            # A forgiven wait may have left it above the burst: that is
            # spent first, and time refills no further than the burst.
            tokens = max(self.burst, self.tokens)
        self.stamp = now
        allowed = min(count, int(tokens))
        self.tokens = tokens - allowed
        return allowed

    def give_back(self, count: int) -> None:
        """Return *count* frames' worth taken but not used."""
        self.tokens = min(self.burst, self.tokens + count)

    def forgive(self, seconds: float) -> None:
        """The client's frames waited *seconds* unread because of the server
        (it let recipients drain): the frames that piled up meanwhile are
        not a burst of the client's making. Allows that many seconds' worth
        more, beyond the burst if need be, but never more than a burst's
        worth beyond it."""
        self.tokens = min(2 * self.burst, self.tokens + seconds * self.rate)


class Read:
    """The lines of one read, and how far handling them has got."""

    __slots__ = ("decode_until", "lines", "next", "plain", "too_long")

    def __init__(
        self, lines: list[bytes], plain: bool, too_long: ProtocolError | None
    ) -> None:
        self.lines = lines
        """Whole lines without LF; a run of empty lines is one entry of as
        many LFs (see ``LineBuffer.take_lines``)."""
        self.plain = plain
        """Every line is ``printable``: runs of talk may be routed as they are."""
        self.too_long = too_long
        """The error to close with once the lines are handled, if any."""
        self.next = 0
        self.decode_until = 0
        """Lines before this one are decoded even if ``plain``."""


class Session:
    """The rules of one client's session; see the module."""

    __slots__ = (
        "_lines",
        "_pings",
        "_stalled",
        "_stalls",
        "_too_long",
        "address",
        "bucket",
        "config",
        "congested",
        "crowded",
        "deadline_moved",
        "echo",
        "ended",
        "flood_since",
        "hub",
        "ip",
        "kick",
        "last_heard",
        "last_refused",
        "login_bucket",
        "login_deadline",
        "mailbox",
        "member",
        "now",
        "pending",
        "ping_deadline",
        "ping_token",
        "private",
        "read",
        "replaced",
        "stopped",
        "store",
        "throttle",
        "version",
        "wait_left",
    )

    def __init__(
        self,
        config: ServerConfig,
        hub: Hub,
        mailbox: Mailbox,
        kick: Callable[[str], None],
        address: str,
        now: float,
        replaced: Callable[[], None] = lambda: None,
        ended: Callable[[str], None] = lambda reason: None,
        *,
        store: Store | None = None,
        throttle: LoginThrottle | None = None,
        private: bool = False,
        ip: str = "",
        login_bucket: TokenBucket | None = None,
        stalls: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.mailbox = mailbox
        self.kick = kick
        """Drop the client at once (too slow, say), giving the reason."""
        self.replaced = replaced
        """Let go of the session, which another connection took over."""
        self.ended = ended
        """Let go of the session, which ended elsewhere (a resume on
        another connection failed), telling the client why."""
        self.store = store
        """Accounts, offline messages and history; None: nothing is kept."""
        # (An empty throttle is falsy: "or" would not share it.)
        self.throttle = LoginThrottle() if throttle is None else throttle
        self.private = private
        """Passwords may be sent: the connection is encrypted, or local."""
        self.ip = ip or address
        self.login_bucket = login_bucket
        """Logins allowed from this client's address (shared by its
        connections); None: no limit."""
        self.now = now
        """The time of the step under way."""
        self.address = address
        self._lines = LineBuffer(config.max_line)
        self._too_long: ProtocolError | None = None
        self.member: Member | None = None
        """This user, once logged in."""
        self.bucket = (
            TokenBucket(config.rate, config.burst, now) if config.rate else None
        )
        self.flood_since: float | None = None
        self.last_refused = -math.inf
        self.last_heard = now
        self.login_deadline = now + config.login_timeout
        self.ping_token: str | None = None
        self.ping_deadline = math.inf
        self._pings = count(1)
        self.deadline_moved = False
        """``wake_at`` moved otherwise than by time passing (a login, an
        answered ping): the caller should look at it again and clear this."""
        self.read: Read | None = None
        """A read not handled to its end yet."""
        self.congested: list[Drainable] = []
        """Mailboxes (or a store) this session filled past half: let them
        drain before handling more."""
        self.pending: Callable[[], Awaitable[None]] | None = None
        """Work that must wait (in a worker thread) before the next frame is
        handled: the caller awaits it in the connection's task, where it
        finishes what its frame asked (answers included), in order."""
        self.stopped = False
        """Kicked or closing: handle no more frames."""
        self.crowded: list[Drainable] = []
        """Mailboxes others had filled past half, that this session's
        messages went to: it waits for them too, but only briefly."""
        self.wait_left = config.max_sender_wait
        """How much longer the current read may wait for ``crowded``
        recipients; once spent, its lines are handled without waiting for
        them."""
        self.version: int | None = None
        """The protocol version agreed in ``hello``; None: no ``hello`` (yet),
        which is version 1."""
        self._stalls = stalls
        """Seconds the whole server has been too busy to read any socket
        (see ``ChatServer.stalls``), so far; None: not known."""
        self._stalled = 0.0 if stalls is None else stalls()
        self.echo = False
        """The client asked for its own messages back (``hello|2|echo``)."""

    # -- reading -----------------------------------------------------------------

    def received(self, data: bytes, now: float) -> None:
        """Take what one read brought (``b""``: the client closed its side,
        which ends the session); its lines are handled by ``handle_ready``."""
        if not data:
            raise SessionEnded("closed")
        self.last_heard = now
        if self.ping_token is not None:
            # Answered: the next deadline is a ping interval away.
            self.ping_token = None
            self.deadline_moved = True
        self.read = self._take_lines(data)
        self.wait_left = self.config.max_sender_wait
        if self._stalls is not None and (stalled := self._stalls()) > self._stalled:
            # The server was too busy to read anyone meanwhile: what piled
            # up in this socket then is not a burst of the client's making.
            if self.bucket is not None:
                self.bucket.forgive(stalled - self._stalled)
            self._stalled = stalled

    def _take_lines(self, data: bytes) -> Read:
        if self._too_long is not None:
            return Read([], False, self._too_long)
        continued = len(self._lines) > 0  # the first line began earlier
        lines, too_long = self._lines.take_lines(data)
        plain = printable(data) and not (
            continued and lines and not printable(lines[0])
        )
        if too_long:
            self._too_long = ProtocolError(
                ErrorCode.TOO_LONG, f"a frame is at most {self.config.max_line} bytes"
            )
        return Read(lines, plain, self._too_long)

    def handle_ready(self, most: int, now: float) -> int:
        """Handle the current read's lines until they are done, *most* are
        handled, the session stops, or a recipient is congested; returns how
        many were handled. Once the read is done ``read`` is None (and a
        line too long ends the session)."""
        read = self.read
        assert read is not None
        self.now = now
        handled = 0
        lines = read.lines
        while read.next < len(lines):
            if self.crowded and self.wait_left <= 0:
                # This read waited its share for queues others filled: no
                # sender is held up for long by what others sent.
                self.crowded.clear()
            if (
                handled >= most
                or self.stopped
                or self.congested
                or self.crowded
                or self.pending
            ):
                return handled
            handled += self._handle_lines(read, most - handled, now)
        if self.wait_left <= 0:
            self.crowded.clear()
        self.read = None
        if read.too_long is not None:
            raise SessionEnded(read.too_long.code.value, read.too_long.reply)
        return handled

    def _handle_lines(self, read: Read, most: int, now: float) -> int:
        """Handle at least one and at most *most* lines of *read* from
        ``read.next`` on, and move ``read.next`` past them; returns how many."""
        lines, start = read.lines, read.next
        if lines[start][:1] == b"\n":
            # A run of empty lines, as many as its LFs. They mean nothing,
            # but a flood of them is a flood.
            read.next = start + 1
            self._charge_blank_lines(len(lines[start]), now)
            return 1
        member = self.member
        if read.plain and member is not None and start >= read.decode_until:
            relayed = self._route_run(member, read, most, now)
            if relayed:
                read.next = start + relayed
                return relayed
        read.next = start + 1
        self._handle_line(lines[start], now)
        return 1

    def _route_run(self, member: Member, read: Read, most: int, now: float) -> int:
        """Route the run of talk to one target from ``read.next`` on, as it
        came, as far as the flood limit and the recipients' room allow;
        returns how many lines went (0: decode the next line instead)."""
        lines, start = read.lines, read.next
        stop = min(len(lines), start + most)
        bucket = self.bucket
        if bucket is not None:
            stop = start + bucket.take_up_to(stop - start, now)
        relayed = 0
        if stop > start:
            end, target = plain_talk_run(lines, start, stop)
            to = target.decode()
            if end == start:
                pass
            elif not self.hub.online_as_written(to):
                # Not a target the hub takes as written: decode the run's
                # lines, without looking for a run again.
                read.decode_until = end
            else:
                relayed = self._route(member, to, talk_texts(lines, start, end, target))
        if bucket is not None:
            bucket.give_back(stop - start - relayed)
            if relayed:
                self._forgive_flood(now)
        return relayed

    def _route(self, sender: Member, to: str, texts: list[bytes]) -> int:
        """Route *texts* from *sender* to *to* through the hub, and tell the
        sender of each one refused; returns how many the hub took (the rest
        wait for congested recipients to drain)."""
        routed = self.hub.route(
            sender, Envelope(sender.name, to, texts), self.congested, self.crowded
        )
        store = self.store
        if store is not None and store.congested:
            # The store's writer is behind: senders wait for it as for a
            # recipient, so what waits for the disk stays bounded.
            self.congested.append(store)
        if routed.refused is not None:
            refusal = Error(ErrorCode(routed.refused.value), routed.recipient)
            for _ in range(routed.taken):
                self.reply(refusal)
        return routed.taken

    def _handle_line(self, line: bytes, now: float) -> None:
        """Decode and handle one non-empty line (which may end in CR)."""
        event: ClientMessage | ProtocolError
        try:
            event = decode_client_line(line, self.name)
        except ProtocolError as error:
            event = error
        # Every frame counts against the rate, a faulty one too; only
        # leaving is always allowed.
        if self.bucket is None or type(event) is Exit or self._within_rate(now):
            if isinstance(event, ProtocolError):
                if event.code is ErrorCode.NOT_IN_ROOM and self.config.global_presence:
                    # part|*: everyone is in *, and nobody leaves it (under
                    # --presence rooms nobody is in it: not-in-room).
                    event = ProtocolError(ErrorCode.BAD_NAME, "* cannot be parted")
                self.reply(event.reply)
            else:
                self.handle(event)

    def handle(self, message: ClientMessage) -> None:
        """Do what one decoded frame from the client asks."""
        match message:
            case Talk(to=to, text=text):
                assert self.member is not None
                self._route(self.member, to, [text.encode()])
            case Login(name=name, password=None):
                if self.store is not None and self.store.is_account(name_key(name)):
                    self.reply(
                        Error(
                            ErrorCode.ACCOUNT_REQUIRED,
                            f"{name} is an account: log in with its password",
                        )
                    )
                else:
                    self._log_in(name)
            case Login(name=name, password=str(password)):
                self._log_in_to_account(name, password)
            case Resume(session=secret, last_id=last_id):
                if self._needs_hello("resume"):
                    self._resume(secret, last_id)
            case History():
                if self._needs_hello("history"):
                    self._history(message)
            case Register(password=password):
                self._register(password)
            case ChangePassword(password=password):
                self._change_password(password)
            case Hello():
                self._hello(message)
            case Join(room=room):
                assert self.member is not None
                self._in_rooms(self.hub.join_room, self.member, room)
            case Part(room=room):
                assert self.member is not None
                self._in_rooms(self.hub.part_room, self.member, room)
            case ListRooms():
                self._list_rooms()
            case Exit():
                raise SessionEnded("exit")
            case Ping(token=token):
                self.reply(Pong(token))
            case Pong():
                pass  # any frame at all proves the client alive

    @property
    def name(self) -> str | None:
        return None if self.member is None else self.member.name

    # -- accounts, offline messages, history (the store) ------------------------

    def _may_send_passwords(self) -> bool:
        """True if a password may come over this connection; else tell the
        client why not."""
        if self.private or self.config.allow_plain_passwords:
            return True
        self.reply(
            Error(
                ErrorCode.TLS_REQUIRED,
                "passwords go over TLS only (or from this machine)",
            )
        )
        return False

    def _log_in_to_account(self, name: str, password: str) -> None:
        """``login|NAME|PASSWORD``: check the password in a worker thread,
        then log in, taking over the session of whoever holds the name (the
        same account, elsewhere), and deliver what was kept meanwhile."""
        store = self.store
        key = name_key(name)
        # Whatever the name: a password sent where it may not come was
        # seen on the way already, and whether the name is an account is
        # nobody's business there.
        if not self._may_send_passwords():
            return
        if store is None or not store.is_account(key):
            self.reply(Error(ErrorCode.NO_SUCH_ACCOUNT, f"{name} is not an account"))
            return
        throttle, ip = self.throttle, self.ip

        async def log_in() -> None:
            while not throttle.allowed(key, ip, trio.current_time()):
                if not throttle.worth_waiting(key, ip, trio.current_time()):
                    self.reply(
                        Error(
                            ErrorCode.RATE_LIMITED,
                            "too many failed logins; try again in a minute",
                        )
                    )
                    return
                # Full only of attempts still being checked: whether they
                # fail decides.
                await throttle.settled()
            # Counted as failed until it proves right, so that guesses sent
            # in parallel are limited as those sent one after another are.
            tried = trio.current_time()
            throttle.attempt(key, ip, tried)
            right = False
            try:
                right = await store.verify(name, password)
            finally:
                throttle.ended(key, ip, tried, right)
            if not right:
                self.reply(
                    Error(ErrorCode.WRONG_PASSWORD, f"wrong password for {name}")
                )
                return
            throttle.succeeded(key, ip, trio.current_time())
            account = await store.account(key)
            kept = await store.offline(key)
            if self.member is not None or self.stopped:
                return
            holder = self.hub.member(key)
            if holder is not None:
                self._take_over(holder)
            else:
                self._log_in(account.name if account is not None else name)
            # Logged in (unless a guest took the name meanwhile): the
            # messages kept for it come right after the lists.
            member = self.hub.member(key)
            if member is not None and member.mailbox is self.mailbox and kept:
                self._deliver_kept(member, kept)
                store.offline_delivered(key, kept[-1].id)

        self.pending = log_in

    def _take_over(self, member: Member) -> None:
        """Take *member*'s session from the connection (or the wait for a
        resume) that holds it: the account logged in again elsewhere.
        Nobody else sees it leave or come back."""
        # What was accepted for the session and never written (while it
        # waited for a resume, say) goes to the new connection, as it
        # speaks. (Only a protocol-2 session keeps it: one on protocol 1
        # never waits, and its connection writes what it holds.)
        unwritten = member.mailbox.take_unwritten_messages()
        last_id = _last_id(unwritten, 0)
        if not self.version or self.version < 2:
            unwritten, last_id = as_deliveries(unwritten, member.name), 0
        self._adopt(member)
        # A new secret (or none, on protocol 1): whoever held the old one
        # cannot take the account back without its password.
        self.hub.close_session(member)
        if self._resumable:
            self.hub.open_session(member, self._session_frame)
        self._logged_in(member)
        self._answer(
            self.hub.snapshot(member) + b"".join(unwritten),
            force=True,
            last_id=last_id,
        )
        log.info("login %s %s (took the session over)", self.address, member.name)

    def _adopt(self, member: Member) -> None:
        """Make *member*, a session another connection (or the wait for a
        resume) holds, this connection's: whoever held it lets go, and
        what is sent to it comes here, as this connection speaks."""
        member.replace()
        member.mailbox = self.mailbox
        member.kick = self.kick
        member.replace = self.replaced
        member.end = self.ended
        member.version = self.version or 1
        member.echo = self.echo

    def _deliver_kept(self, member: Member, kept: list[StoredMessage]) -> None:
        """The direct messages kept while *member*'s account was offline,
        in order, with their ids and times, as one piece."""
        frames = []
        for message in kept:
            if member.version >= 2:
                frames.append(_stored_frame("msg", message, member.name))
            else:
                frames.append(f"talk|{message.sender}|{member.name}|{message.text}\n")
        self._answer("".join(frames).encode(), force=True, last_id=kept[-1].id)

    def _register(self, password: str) -> None:
        """``register|PASSWORD``: make the guest name an account."""
        store, member = self.store, self.member
        assert member is not None
        if store is None:
            self.reply(Error(ErrorCode.BAD_FRAME, "this server keeps no accounts"))
            return
        taken = Error(ErrorCode.ALREADY_REGISTERED, f"{member.name} is an account")
        if store.is_account(member.key):
            self.reply(taken)
        elif self._may_send_passwords():
            self._change_account(
                partial(store.register, member.name, password),
                AccountExists,
                taken,
                Registered(member.name),
            )

    def _change_password(self, password: str) -> None:
        """``password|PASSWORD``: a new password for one's account."""
        store, member = self.store, self.member
        assert member is not None
        guest = Error(ErrorCode.NO_SUCH_ACCOUNT, f"{member.name} is not an account")
        if store is None or not store.is_account(member.key):
            self.reply(guest)
        elif self._may_send_passwords():
            self._change_account(
                partial(store.set_password, member.name, password),
                NoSuchAccount,
                guest,
                PasswordChanged(member.name),
            )

    def _change_account(
        self,
        change: Callable[[], Awaitable[object]],
        refused_by: type[Exception],
        refusal: Error,
        done: Registered | PasswordChanged,
    ) -> None:
        """Make *change* to the store (it waits for the disk, and the
        password's hash): answer *done*, or *refusal* if the store refused
        it with *refused_by* (someone else was quicker)."""

        async def work() -> None:
            try:
                await change()
            except refused_by:
                self.reply(refusal)
                return
            self.reply(done)
            log.info("%s %s %s", done.kind, self.address, done.name)

        self.pending = work

    def _history(self, request: History) -> None:
        """``history|TARGET|...``: the stored messages asked for, oldest
        first, then ``history|TARGET|COUNT``, as one answer."""
        store, member = self.store, self.member
        assert member is not None
        if self.mailbox.answer_bytes > self.config.queue_bytes:
            # The client asks faster than it reads its answers, which do
            # not count against its queue: this one (and its reading) waits.
            self.pending = partial(self._history_once_read, request)
            return
        target = request.target
        if store is None or not store.history_size:
            self.reply(Error(ErrorCode.NO_HISTORY, "this server keeps no history"))
            return
        if target == "*":
            if not self.config.global_presence:
                self.reply(Error(ErrorCode.NOT_IN_ROOM, target))
                return
        elif is_room(target):
            if name_key(target) not in member.rooms:
                self.reply(Error(ErrorCode.NOT_IN_ROOM, target))
                return
        elif not store.is_account(member.key):
            self.reply(
                Error(ErrorCode.NO_HISTORY, "a guest's direct messages are not kept")
            )
            return

        direction = cast(Direction, request.direction)  # checked when decoded
        asked = (target, direction, request.anchor, request.count)
        # A page memory holds is answered at once: no worker thread, and no
        # wait for this connection's task (Store.history_now).
        try:
            found = store.history_now(*asked, account_key=member.key)
        except StoreError:
            found = None  # the read says why
        if found is not None:
            self._answer_history(target, found)
            return

        async def answer() -> None:
            try:
                found = await store.history(*asked, account_key=member.key)
            except StoreError as error:
                # The request failed, not the connection: say so (the
                # closest code there is), and the client may ask again.
                log.warning("history for %s failed: %s", self.address, error)
                self.reply(Error(ErrorCode.NO_HISTORY, "history cannot be read now"))
                return
            self._answer_history(target, found)

        self.pending = answer

    async def _history_once_read(self, request: History) -> None:
        """``_history`` once the answers not written yet are within
        ``--queue-bytes``; a client that reads none of them for
        ``--stall-timeout`` is dropped as too slow."""
        config = self.config
        try:
            read = await self.mailbox.answers_read(
                config.queue_bytes, config.stall_timeout
            )
        except trio.Cancelled:
            # (A deadline, say: the request is taken up again after it.)
            self.pending = partial(self._history_once_read, request)
            raise
        if read:
            self._history(request)
        elif not self.stopped:
            self.kick("too slow: outgoing queue full")

    def _answer_history(self, target: str, found: list[StoredMessage]) -> None:
        """The ``hist`` frames of *found*, then ``history|TARGET|COUNT``."""
        frames = [_stored_frame("hist", m, m.to) for m in found]
        data = "".join(frames).encode() + encode(HistoryEnd(target, len(found)))
        self._answer(data, force=True)

    def _needs_hello(self, what: str) -> bool:
        """True on a protocol-2 connection; else tell the client that
        *what* needs ``hello|2`` first."""
        if self.version is not None and self.version >= 2:
            return True
        self.reply(Error(ErrorCode.NEEDS_HELLO, f"{what} needs hello|2 first"))
        return False

    def _hello(self, hello: Hello) -> None:
        """Agree on the protocol version (the lower of the client's and
        ours) and answer with the server's settings. Once only, before
        login (``decode_client_line`` refuses it after)."""
        if self.version is not None:
            self.reply(Error(ErrorCode.BAD_FRAME, "hello was said already"))
            return
        self.version = min(hello.version, PROTOCOL_VERSION)
        self.echo = self.version >= 2 and "echo" in hello.options
        self.reply(Welcome(self.version, self.config.settings()))

    def _in_rooms(
        self, action: Callable[[Member, str], None], member: Member, room: str
    ) -> None:
        """Join or part *room*; a refusal is the client's error."""
        try:
            action(member, room)
        except RoomRefused as refused:
            self.reply(Error(ErrorCode(refused.code), refused.detail))

    def _list_rooms(self) -> None:
        """Answer ``rooms``: one ``room`` frame per room, then ``rooms|COUNT``,
        in one piece (an answer arrives whole)."""
        rooms = self.hub.rooms()
        answer = [encode(RoomInfo(name, members)) for name, members in rooms]
        answer.append(encode(RoomsListed(len(rooms))))
        self._answer(b"".join(answer), force=True)

    def _log_in(self, name: str) -> None:
        bucket = self.login_bucket
        if bucket is not None and not bucket.take(self.now):
            # A storm of logins from one address would cost everyone a
            # presence frame each.
            self.reply(
                Error(
                    ErrorCode.RATE_LIMITED,
                    "too many logins from your address; try again in a moment",
                )
            )
            return
        member = Member(
            name, self.mailbox, self.kick, version=self.version or 1, echo=self.echo
        )
        member.replace = self.replaced
        member.end = self.ended
        if self._resumable and name not in self.hub:
            self.hub.open_session(member, self._session_frame)
        try:
            # A session waiting for a resume holds its name too.
            self.hub.join(member)
        except NameTaken as taken:
            self.reply(Error(ErrorCode.NAME_TAKEN, str(taken)))
            return
        self._logged_in(member)
        log.info("login %s %s", self.address, name)

    @property
    def _resumable(self) -> bool:
        """Whether this connection's session may wait for a resume."""
        return (self.version or 1) >= 2 and self.config.resume_window > 0

    def _session_frame(self, secret: str) -> bytes:
        return encode(SessionInfo(secret, math.ceil(self.config.resume_window)))

    def _logged_in(self, member: Member) -> None:
        self.member = member
        self.login_deadline = math.inf
        # The ping interval may be shorter than what was left of it.
        self.deadline_moved = True
        if self._resumable:
            # A drop can lose what the kernel took but the client never
            # read: keep what was written, to send it again on a resume.
            self.mailbox.keep_written(self.config.queue_size)

    def _resume(self, secret: str, last_id: int) -> None:
        """Take back the session *secret* names, sending every message
        after *last_id* again, or say why not (``resume-failed``)."""
        member = self.hub.find_session(secret)
        if member is None:
            self.reply(
                Error(
                    ErrorCode.RESUME_FAILED, "no such session: it ended, or never was"
                )
            )
            return
        missed = member.mailbox.messages_after(last_id)
        if missed is None:
            # The session cannot be resumed whole: it ends, and its name is
            # free for a login at once. A connection that still holds it
            # hears why, as one taken over would.
            self.hub.leave(member)
            member.end(
                "another connection resumed this session from a message that"
                " is no longer kept: the session has ended"
            )
            self.reply(
                Error(
                    ErrorCode.RESUME_FAILED,
                    f"messages after {last_id} are no longer kept; log in and"
                    " ask for history",
                )
            )
            return
        self._adopt(member)
        # Nothing at or below last_id is kept here: a later resume from
        # further back cannot be whole.
        self.mailbox.forgotten = max(self.mailbox.forgotten, last_id)
        self._logged_in(member)
        answer = encode(Resumed(member.name, len(missed)))
        answer += self.hub.snapshot(member, resumed=True) + b"".join(missed)
        # Kept like any messages: a drop during the resume can resume again.
        self._answer(answer, force=True, last_id=_last_id(missed, last_id))
        log.info("resume %s %s (%d missed)", self.address, member.name, len(missed))

    def reply(self, message: Frame) -> None:
        """Put a frame of the server's own in this client's mailbox."""
        self._answer(encode(message))

    def _answer(self, data: bytes, *, force: bool = False, last_id: int = 0) -> None:
        """Put *data*, the server's answer to the client (one frame, or an
        answer of many that counts as one), in this client's mailbox; with
        *force*, whatever its size."""
        mailbox = self.mailbox
        if self.member is not None:
            self.hub.catch_up(self.member)  # answers come after what happened
        if not mailbox.put(data, force=force, last_id=last_id):
            self.kick("too slow: outgoing queue full")
        elif mailbox.congested:
            # Replies are held to the same rule as deliveries: a client that
            # reads its replies is not dropped for asking many questions.
            self.congested.append(mailbox)

    # -- flood control -----------------------------------------------------------

    def _within_rate(self, now: float) -> bool:
        """Charge one frame to the token bucket; False if it is refused."""
        assert self.bucket is not None
        if self.bucket.take(now):
            self._forgive_flood(now)
            return True
        self._refused(now)
        self.reply(
            Error(
                ErrorCode.RATE_LIMITED,
                f"over {self.config.rate:g} frames/s; frame dropped",
            )
        )
        return False

    def _charge_blank_lines(self, count: int, now: float) -> None:
        if self.bucket is None:
            return
        if self.bucket.take_up_to(count, now) < count:
            self._refused(now)
        else:
            self._forgive_flood(now)

    def _forgive_flood(self, now: float) -> None:
        """A frame within the rate a second after the last refusal ends a flood."""
        if self.flood_since is not None and now - self.last_refused > 1.0:
            self.flood_since = None

    def _refused(self, now: float) -> None:
        """Note a frame over the rate; end a session flooding past the grace."""
        self.last_refused = now
        if self.flood_since is None:
            self.flood_since = now
        elif now - self.flood_since >= self.config.flood_grace:
            raise SessionEnded(
                "flooding",
                Error(
                    ErrorCode.RATE_LIMITED,
                    f"over {self.config.rate:g} frames/s for "
                    f"{self.config.flood_grace:g} s; closing",
                ),
            )

    # -- liveness ----------------------------------------------------------------

    def wake_at(self) -> float:
        """When ``check_quiet`` has something to do if nothing comes first."""
        if self.member is None:
            return self.login_deadline
        if self.ping_token is not None:
            return self.ping_deadline
        if self.config.ping_interval:
            return self.last_heard + self.config.ping_interval
        return math.inf

    def check_quiet(self, now: float) -> None:
        """Enforce the login timeout and liveness once a deadline passed."""
        config = self.config
        if self.member is None:
            if now >= self.login_deadline:
                raise SessionEnded(
                    "login timeout",
                    Error(
                        ErrorCode.LOGIN_TIMEOUT,
                        f"no login within {config.login_timeout:g} s",
                    ),
                )
        elif self.ping_token is not None:
            if now >= self.ping_deadline:
                raise SessionEnded("ping timeout")
        elif config.ping_interval and now >= self.last_heard + config.ping_interval:
            if self.read is not None:
                # What it sent is still being handled: it is alive, and could
                # not answer a ping before the rest of that read is handled.
                self.last_heard = now
                return
            self.ping_token = f"t{next(self._pings)}"
            self.ping_deadline = now + config.ping_timeout
            self.reply(Ping(self.ping_token))

    def drained(self, now: float, waited: float, crowded: float = 0.0) -> None:
        """The caller waited *waited* seconds for congested recipients, of
        which *crowded* for crowded ones: that wait was the server's doing,
        and says nothing against the client's liveness, nor counts against
        its rate; the crowded part comes off what the current read may
        still wait for crowded recipients."""
        self.wait_left -= crowded
        if self.bucket is not None:
            self.bucket.forgive(waited)
        if self.member is not None:
            self.last_heard = now


def _last_id(frames: list[bytes], default: int) -> int:
    """The id of the last of *frames* (``msg`` frames), or *default*."""
    if not frames:
        return default
    return int(frames[-1].split(b"|", 2)[1])


def _stored_frame(kind: str, message: StoredMessage, to: str) -> str:
    """*message*, from the store, as a ``msg`` or ``hist`` frame to *to*,
    with its id and time: its fields were checked when it was accepted."""
    stamp = format_epoch_ms(message.time_ms)
    return f"{kind}|{message.id}|{stamp}|{message.sender}|{to}|{message.text}\n"
