"""The trichat server: one Trio task per connection, routing through the hub.

``ChatServer(config).serve()`` listens, and runs every connection as a task
in the server's nursery. A connection is a reader (``_Session.read_loop``:
frames in, replies and deliveries into the recipients' outboxes) and a
writer (drains the client's bounded outbox in one ``send_all`` per
wake-up), both in the connection's own nursery. A reader flushes the
outboxes it filled before it waits: straight to the socket when nothing is
queued there, else to the writer. On a plain socket (and where there is
epoll) a reader with nothing to read waits at the server's
``SharedReader`` instead of on its own socket: that one task reads and
handles what arrives (``_Session.serve_ready``) in the order it arrives,
and wakes the reader only when something has to wait. ``shutdown()`` stops
accepting, tells every client ``error|shutting-down|...`` and waits for the
connections to close.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import attrs
import trio

from ..protocol._codec import ProtocolError, Role, encode, plain_talk_run
from ..protocol.connection import Connection
from ..protocol.messages import (
    ClientMessage,
    Error,
    ErrorCode,
    Exit,
    Login,
    Ping,
    Pong,
    ServerMessage,
    Talk,
)
from ._shared_reader import SharedReader, available
from .hub import Hub, NameTaken, Outbox, Peer
from .hub import _write as write_at_once

__all__ = ["ChatServer", "ServerConfig"]

log = logging.getLogger("trichat.server")

_RECEIVE_SIZE = 65536
# The writer reports progress after each piece of this size it has written:
# a client reading at least this much per stall_timeout is not stalled.
_WRITE_SIZE = 4096
# A reader hands the scheduler back after this many frames from one read, so
# the writers of the users it is talking to can drain their queues.
_FRAMES_PER_TURN = 64
# How long presence frames may wait per user online, up to presence_delay.
_DELAY_PER_USER = 50e-6
# What every client hears when the server stops, connected or connecting.
_GOODBYE = Error(ErrorCode.SHUTTING_DOWN, "the server is stopping")
# accept() errors that mean "out of resources for now", not "listener broken".
_ACCEPT_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must not be negative, not {value}")


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0 to 65535, not {value}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Where the server listens and the limits it enforces.

    Times are in seconds. ``max_per_ip``, ``rate`` and ``ping_interval`` of
    0 switch that limit off.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8089, validator=_port)
    max_line: int = attrs.field(default=4096, validator=attrs.validators.ge(64))
    queue_size: int = attrs.field(default=1024, validator=_positive)
    queue_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_clients: int = attrs.field(default=10_000, validator=_positive)
    max_per_ip: int = attrs.field(default=1000, validator=_not_negative)
    login_timeout: float = attrs.field(default=10.0, validator=_positive)
    ping_interval: float = attrs.field(default=60.0, validator=_not_negative)
    ping_timeout: float = attrs.field(default=30.0, validator=_positive)
    rate: float = attrs.field(default=100.0, validator=_not_negative)
    burst: int = attrs.field(default=200, validator=_positive)
    flood_grace: float = attrs.field(default=5.0, validator=_positive)
    presence_delay: float = attrs.field(default=0.1, validator=_not_negative)
    """Longest time logins and exits may wait to be sent together (with few
    users online they wait much less); 0: never."""
    stall_timeout: float = attrs.field(default=1.0, validator=_positive)
    """How long a sender waits for a congested recipient that reads nothing."""
    close_timeout: float = attrs.field(default=0.5, validator=_positive)
    """How long a closing connection may take to flush and say goodbye (and
    over TLS as long again to send its close_notify)."""
    max_refusing: int = attrs.field(
        default=100, validator=[attrs.validators.instance_of(int), _positive]
    )
    """Refused connections held at once while their error is delivered (up
    to close_timeout each, twice that over TLS); beyond that, one gets its
    error only if it can be written at once, and is closed without waiting
    (over TLS, with no error: that would take a handshake)."""
    write_threads: int = attrs.field(
        default=1,
        validator=[
            attrs.validators.instance_of(int),
            _not_negative,
            attrs.validators.le(64),
        ],
    )
    """Threads that share the system calls of a large flush (a broadcast to
    many users) with the server's own; 0: none."""
    shared_reader: bool = True
    """Watch the plain sockets of connections with nothing to read from one
    task, which reads and handles what they send as a select loop would
    (see _shared_reader); False: each connection's task waits for its own.
    Linux only: elsewhere each task always waits for its own."""
    ssl_context: ssl.SSLContext | None = None


class _TokenBucket:
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
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        allowed = min(count, int(tokens))
        self.tokens = tokens - allowed
        return allowed

    def give_back(self, count: int) -> None:
        """Return *count* frames' worth taken but not used."""
        self.tokens = min(self.burst, self.tokens + count)


class _Read:
    """The lines of one read, and how far handling them has got."""

    __slots__ = ("decode_until", "lines", "next", "plain", "too_long")

    def __init__(
        self, lines: list[bytes], plain: bool, too_long: ProtocolError | None
    ) -> None:
        self.lines = lines
        self.plain = plain
        """Every line is ``printable``: runs of talk may be relayed as they are."""
        self.too_long = too_long
        """The error to close with once the lines are handled, if any."""
        self.next = 0
        self.decode_until = 0
        """Lines before this one are decoded even if ``plain``."""


class _Close(Exception):
    """Ends a session's read loop: close with *error* (if any) and say why."""

    def __init__(self, reason: str, error: Error | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _Session:
    """One client connection, from accept to close."""

    __slots__ = (
        "address",
        "bucket",
        "close_by",
        "config",
        "congested",
        "conn",
        "connection_scope",
        "end_error",
        "end_reason",
        "fd",
        "flood_since",
        "kicked",
        "last_heard",
        "last_refused",
        "login_deadline",
        "outbox",
        "peer",
        "ping_deadline",
        "ping_token",
        "pings",
        "quiet_scope",
        "read",
        "read_scope",
        "receive",
        "server",
        "shared",
        "stopped",
        "stream",
    )

    def __init__(
        self, server: ChatServer, stream: trio.abc.Stream, address: str
    ) -> None:
        config = server.config
        self.server = server
        self.config = config
        self.stream = stream
        self.address = address
        self.conn = Connection(Role.SERVER, config.max_line)
        # A plain socket is read directly, and written to directly when
        # nothing is queued.
        fd = stream.socket.fileno() if type(stream) is trio.SocketStream else None
        self.fd = fd
        self.receive: Callable[[], Awaitable[bytes | None]] = (
            self.receive_stream if fd is None else self.receive_plain
        )
        self.shared = None if fd is None else server.shared_reader
        self.outbox = Outbox(
            config.queue_size, config.queue_bytes, fd=fd, due=server.hub.due
        )
        self.peer: Peer | None = None
        now = trio.current_time()
        self.bucket = (
            _TokenBucket(config.rate, config.burst, now) if config.rate else None
        )
        self.flood_since: float | None = None
        self.last_refused = -math.inf
        self.last_heard = now
        self.login_deadline = now + config.login_timeout
        self.ping_token: str | None = None
        self.ping_deadline = math.inf
        self.pings = count(1)
        self.read_scope = trio.CancelScope()
        self.read: _Read | None = None  # a read not handled to its end yet
        # The scope of the reader and writer both (their nursery's).
        self.connection_scope: trio.CancelScope | None = None
        self.quiet_scope = trio.CancelScope()
        self.end_reason = "closed"
        self.end_error: Error | None = None
        self.close_by = math.inf
        self.kicked = False
        self.stopped = False  # kicked or closing: handle no more frames
        self.congested: list[Outbox] = []

    # -- control from outside ------------------------------------------------

    def kick(self, reason: str) -> None:
        """Drop the client at once, discarding what is queued for it."""
        if self.kicked or (self.server.stopping and self.end_error is not None):
            # Already dropped, or closing with shutting-down, which must
            # still reach the client.
            return
        self.kicked = self.stopped = True
        self.end_reason = reason
        self.end_error = None
        self.read_scope.cancel()
        if self.connection_scope is not None:
            self.connection_scope.cancel()

    def close_with(self, error: Error, reason: str) -> None:
        """Stop reading, send what is queued and then *error*, and close."""
        self.end_reason = reason
        self.end_error = error
        self.stopped = True
        self.read_scope.cancel()

    # -- the connection's life -----------------------------------------------

    async def run(self) -> None:
        log.info("connect %s", self.address)
        async with trio.open_nursery() as nursery:
            self.connection_scope = nursery.cancel_scope
            nursery.start_soon(self.write_loop)
            try:
                with self.read_scope:
                    try:
                        await self.read_loop()
                    except _Close as close:
                        # Unless a kick or the shutdown came first (between
                        # the shared reader's handing this over and now).
                        if not self.stopped:
                            self.end_reason = close.reason
                            self.end_error = close.error
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.end_reason = "connection lost"
            finally:
                # However reading ended, a bug included, the user goes
                # offline and the outbox takes no more frames.
                self.stopped = True
                self.go_offline()
                self.server.hub.flush_due()
                final = encode(self.end_error) if self.end_error else b""
                self.outbox.close(final)
                # Only the writer is left: flushing and lingering share one
                # deadline.
                self.close_by = trio.current_time() + self.config.close_timeout
                nursery.cancel_scope.deadline = self.close_by

    async def say_goodbye(self) -> None:
        """After ``run``: let the client read what was sent last (see
        _linger), unless it was dropped or could not be written to."""
        scope = self.connection_scope
        if not self.kicked and scope is not None and not scope.cancelled_caught:
            with trio.move_on_at(self.close_by):
                await _linger(self.stream)

    def go_offline(self) -> None:
        peer, self.peer = self.peer, None
        who = f" {peer.name}" if peer else ""
        if peer is not None:
            self.server.hub.leave(peer, announce=not self.server.stopping)
        if self.end_reason in ("exit", "closed"):
            log.info("exit %s%s (%s)", self.address, who, self.end_reason)
        else:
            log.info("drop %s%s: %s", self.address, who, self.end_reason)

    async def write_loop(self) -> None:
        outbox = self.outbox
        send_all = self.stream.send_all
        try:
            while (block := await outbox.next_block()) is not None:
                outbox.sending = True
                data, frames = block
                # In pieces, so a client that reads slowly but steadily is
                # seen to make progress (and is not taken as stalled).
                view = memoryview(data)
                for start in range(0, len(data), _WRITE_SIZE):
                    piece = view[start : start + _WRITE_SIZE]
                    await send_all(piece)
                    outbox.sent(len(piece))
                outbox.sent(0, frames)
                outbox.sending = False
            if outbox.final:
                await send_all(outbox.final)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kick("connection lost")

    async def read_loop(self) -> None:
        """Read and handle frames until the session ends (by raising _Close).

        The login, ping and ping-answer deadlines share one cancel scope per
        quiet period rather than one per read: reads are the hot path, and
        a scope that expires early just wakes us to set a later deadline.
        """
        flush_due = self.server.hub.flush_due
        while True:
            with trio.move_on_at(self.wake_at()) as self.quiet_scope:
                try:
                    await self.read_frames()
                finally:
                    flush_due()
            self.read_what_came()
            self.check_quiet(trio.current_time())
            flush_due()

    def read_what_came(self) -> None:
        """Before a deadline is enforced: read and handle what is waiting in
        the socket already. Trio sees expired deadlines before it looks at
        the shared reader's sockets, so a pong or a login that came just in
        time could otherwise count as missing. Once only: trickling bytes
        does not put a deadline off."""
        if self.fd is not None and self.read is None and not self.stopped:
            self.serve_ready()

    def wake_at(self) -> float:
        if self.peer is None:
            return self.login_deadline
        if self.ping_token is not None:
            return self.ping_deadline
        if self.config.ping_interval:
            return self.last_heard + self.config.ping_interval
        return math.inf

    def check_quiet(self, now: float) -> None:
        """Enforce the login timeout and liveness once a deadline passed."""
        if self.peer is None:
            if now >= self.login_deadline:
                raise _Close(
                    "login timeout",
                    Error(
                        ErrorCode.LOGIN_TIMEOUT,
                        f"no login within {self.config.login_timeout:g} s",
                    ),
                )
        elif self.ping_token is not None:
            if now >= self.ping_deadline:
                raise _Close("ping timeout")
        elif (
            self.config.ping_interval
            and now >= self.last_heard + self.config.ping_interval
        ):
            if self.read is not None:
                # What it sent is still being handled: it is alive, and could
                # not answer a ping before the rest of that read is handled.
                self.last_heard = now
                return
            self.ping_token = f"t{next(self.pings)}"
            self.ping_deadline = now + self.config.ping_timeout
            self.reply(Ping(self.ping_token))

    async def read_frames(self) -> None:
        """Read and handle frames, a whole read at a time.

        What this task queued goes out before it waits for anything. It
        lets other tasks run every _FRAMES_PER_TURN frames or reads even
        when its client always has more to read (see ``receive``). A read
        is handled from ``self.read``, so that what is left of it when the
        quiet scope expires in between is handled on the next call.
        """
        receive = self.receive
        flush_due = self.server.hub.flush_due
        congested = self.congested
        turn = 0
        while True:
            read = self.read
            if read is None:
                flush_due()
                if turn >= _FRAMES_PER_TURN:
                    turn = 0
                    await trio.lowlevel.checkpoint()
                data = await receive()
                if data is None:
                    # The shared reader handled what came while we waited,
                    # and left the rest (in self.read) or a wait to us.
                    turn = 0
                    if congested:
                        flush_due()
                        await self.let_recipients_drain()
                    continue
                turn += 1
                read = self.read = self.took(data)
            while read.next < len(read.lines):
                if self.stopped:
                    # Kicked or closing: what is still buffered goes unhandled.
                    flush_due()
                    await trio.lowlevel.checkpoint()  # Cancelled ends the loop
                if congested:
                    # Left by read_what_came: wait before handling more.
                    flush_due()
                    await self.let_recipients_drain()
                # Synchronous, and moves read.next on: nothing is handled twice.
                turn += self.handle_lines(read, _FRAMES_PER_TURN - turn)
                if congested:
                    flush_due()
                    await self.let_recipients_drain()
                if turn >= _FRAMES_PER_TURN:
                    turn = 0
                    flush_due()
                    await trio.lowlevel.checkpoint()
            self.read = None
            if read.too_long is not None:
                raise _Close(read.too_long.code.value, read.too_long.reply)

    def took(self, data: bytes) -> _Read:
        """Note what a read brought; the lines to handle."""
        if not data:
            raise _Close("closed")
        self.last_heard = trio.current_time()
        if self.ping_token is not None:
            # Answered: the next deadline is a ping interval away.
            self.ping_token = None
            self.quiet_scope.deadline = self.wake_at()
        return _Read(*self.conn.take_lines(data))

    def serve_ready(self) -> bool:
        """The shared reader's turn at this parked session: read once and
        handle what ``read_frames`` would without waiting. False when this
        session's task must take over (queues to wait for, lines left over,
        a line too long); ``_Close`` and errors reach the task too."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, _RECEIVE_SIZE)
        except BlockingIOError:
            return True
        except OSError as error:  # a reset, or the descriptor gone
            raise trio.BrokenResourceError(str(error)) from error
        read = self.read = self.took(data)
        most = _FRAMES_PER_TURN
        while read.next < len(read.lines):
            if most <= 0 or self.stopped or self.congested:
                return False
            most -= self.handle_lines(read, most)
        if self.congested or read.too_long is not None:
            return False
        self.read = None
        return True

    async def receive_stream(self) -> bytes:
        """The next bytes from the client; b"" once it closed its side."""
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        return data if type(data) is bytes else bytes(data)

    async def receive_plain(self) -> bytes | None:
        """``receive`` for a plain socket, read directly.

        Unlike ``SocketStream.receive_some`` it does not pass through the
        scheduler when there is something to read at once: under load most
        reads find data waiting, and ``read_frames`` lets others run often
        enough. It waits (a checkpoint) only when there is nothing to read:
        parked at the shared reader if there is one, and then it returns
        None once the reader has handed over.
        """
        fd = self.fd
        assert fd is not None
        try:
            while True:
                try:
                    return os.read(fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    if self.shared is not None:
                        await self.shared.wait(fd, self.serve_ready)
                        return None
                    await trio.lowlevel.wait_readable(fd)
        except OSError as error:  # a reset, or the descriptor gone
            raise trio.BrokenResourceError(str(error)) from error

    def handle_lines(self, read: _Read, most: int) -> int:
        """Handle at least one and at most *most* lines of *read* from
        ``read.next`` on, and move ``read.next`` past them; returns how many.

        Most lines are talk that ``Hub.relay_run`` passes on as it is, a run
        at a time (if the read is ``printable``); any other line is decoded
        in full, alone.
        """
        lines, start = read.lines, read.next
        if lines[start][:1] == b"\n":
            # A run of empty lines, as many as its LFs (see take_lines). They
            # mean nothing, but a flood of them is a flood.
            read.next = start + 1
            self.charge_blank_lines(len(lines[start]))
            return 1
        peer = self.peer
        if read.plain and peer is not None and start >= read.decode_until:
            stop = min(len(lines), start + most)
            bucket = self.bucket
            if bucket is not None:
                now = trio.current_time()
                stop = start + bucket.take_up_to(stop - start, now)
            relayed = start
            if stop > start:
                end, target = plain_talk_run(lines, start, stop)
                if end > start:
                    relayed, error = self.server.hub.relay_run(
                        peer, target, lines, start, end, self.congested
                    )
                    if relayed == start:
                        # Not a target the hub takes as written: decode the
                        # run's lines, without looking for a run again.
                        read.decode_until = end
                    elif error is not None:
                        for _ in range(relayed - start):
                            self.reply(error)
                if bucket is not None:
                    bucket.give_back(stop - relayed)
                    if relayed > start:
                        self.forgive_flood(now)
            if relayed > start:
                read.next = relayed
                return relayed - start
        read.next = start + 1
        self.handle_line(lines[start])
        return 1

    def handle_line(self, line: bytes) -> None:
        """Decode and handle one non-empty line (which may end in CR)."""
        event: ClientMessage | ServerMessage | ProtocolError
        try:
            event = self.conn.decode_line(line)
        except ProtocolError as error:
            event = error
        # Every frame counts against the rate, a faulty one too; only
        # leaving is always allowed.
        if self.bucket is None or type(event) is Exit or self.within_rate():
            if isinstance(event, ProtocolError):
                self.reply(event.reply)
            else:
                self.handle(event)

    async def let_recipients_drain(self) -> None:
        """Pause reading until the outboxes we filled past half have room.

        This is what keeps a burst from getting a recipient that reads, but
        more slowly than we write, dropped; a recipient that stops reading
        stalls and is not waited for.
        """
        stall_timeout = self.config.stall_timeout
        # Not reading meanwhile is our doing: it says nothing about whether
        # the client is alive, so only the login deadline still runs.
        self.quiet_scope.deadline = self.login_deadline
        try:
            while self.congested:
                # Taken off only once drained: a wait cut short by a deadline
                # is taken up again before anything more is handled.
                await self.congested[-1].make_room(stall_timeout)
                self.congested.pop()
        finally:
            if self.peer is not None:
                self.last_heard = trio.current_time()
            self.quiet_scope.deadline = self.wake_at()

    def handle(self, message: object) -> None:
        match message:
            case Talk():
                assert self.peer is not None
                error = self.server.hub.deliver(self.peer, message, self.congested)
                if error is not None:
                    self.reply(error)
            case Login(name=name):
                self.log_in(name)
            case Exit():
                raise _Close("exit")
            case Ping(token=token):
                self.reply(Pong(token))
            case Pong():
                pass  # any frame at all proves the client alive
            case _:  # pragma: no cover - Connection only yields client frames
                raise AssertionError(f"unexpected message {message!r}")

    def log_in(self, name: str) -> None:
        peer = Peer(name, self.outbox, self.kick)
        try:
            self.server.hub.join(peer)
        except NameTaken:
            self.reply(Error(ErrorCode.NAME_TAKEN, f"{name} is already online"))
            return
        self.peer = peer
        self.conn.logged_in(name)
        self.login_deadline = math.inf
        # The login deadline no longer applies; the ping interval may be
        # shorter than what is left of it.
        self.quiet_scope.deadline = self.wake_at()
        log.info("login %s %s", self.address, name)

    def reply(self, message: Error | Pong | Ping) -> None:
        outbox = self.outbox
        if not outbox.put(encode(message)):
            self.kick("too slow: outgoing queue full")
        elif outbox.congested:
            # Replies are held to the same rule as deliveries: a client that
            # reads its replies is not dropped for asking many questions.
            self.congested.append(outbox)

    def within_rate(self) -> bool:
        """Charge one frame to the token bucket; False if it is refused."""
        assert self.bucket is not None
        now = trio.current_time()
        if self.bucket.take(now):
            self.forgive_flood(now)
            return True
        self.refused(now)
        self.reply(
            Error(
                ErrorCode.RATE_LIMITED,
                f"over {self.config.rate:g} frames/s; frame dropped",
            )
        )
        return False

    def charge_blank_lines(self, count: int) -> None:
        if self.bucket is None:
            return
        now = trio.current_time()
        if self.bucket.take_up_to(count, now) < count:
            self.refused(now)
        else:
            self.forgive_flood(now)

    def forgive_flood(self, now: float) -> None:
        """A frame within the rate a second after the last refusal ends a flood."""
        if self.flood_since is not None and now - self.last_refused > 1.0:
            self.flood_since = None

    def refused(self, now: float) -> None:
        """Note a frame over the rate; close a client flooding past the grace."""
        self.last_refused = now
        if self.flood_since is None:
            self.flood_since = now
        elif now - self.flood_since >= self.config.flood_grace:
            raise _Close(
                "flooding",
                Error(
                    ErrorCode.RATE_LIMITED,
                    f"over {self.config.rate:g} frames/s for "
                    f"{self.config.flood_grace:g} s; closing",
                ),
            )


class ChatServer:
    """A trichat server; ``serve`` runs it, ``shutdown`` stops it."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.hub = Hub()
        self.stopping = False
        self._sessions: set[_Session] = set()
        self._per_ip: Counter[str] = Counter()
        self._refusing = 0  # refused connections still being told why
        self._accepting = trio.CancelScope()
        self.shared_reader: SharedReader | None = None

    @property
    def connections(self) -> int:
        return len(self._sessions)

    @property
    def refusing(self) -> int:
        """Refused connections still being told why (see ``max_refusing``)."""
        return self._refusing

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until ``shutdown``.

        Reports the bound port through *task_status*, so a caller can bind
        port 0 with ``port = await nursery.start(server.serve)``.
        """
        listeners = await trio.open_tcp_listeners(
            self.config.port, host=self.config.host
        )
        try:
            with self.hub.write_threads(self.config.write_threads):
                async with trio.open_nursery() as reading:
                    if self.config.shared_reader and available():
                        self.shared_reader = SharedReader(
                            self.hub.flush_due,
                            expected=(_Close, trio.BrokenResourceError),
                        )
                        reading.start_soon(self.shared_reader.run)
                    await self._serve_connections(listeners, task_status)
                    # Every connection is closed: nobody is parked any more.
                    reading.cancel_scope.cancel()
        finally:
            self.shared_reader = None
            for listener in listeners:
                await trio.aclose_forcefully(listener)
        log.info("stopped")

    async def _serve_connections(
        self,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[int],
    ) -> None:
        """Accept until ``shutdown``, then wait for the connections to close."""
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    if self.config.presence_delay:
                        accepting.start_soon(self._flush_presence)
                    for listener in listeners:
                        host, port = listener.socket.getsockname()[:2]
                        log.info("listening on %s port %s", host, port)
                    task_status.started(listeners[0].socket.getsockname()[1])
            # Stopped accepting: free the port while the connections close.
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _flush_presence(self) -> None:
        """Send logins and exits in batches, at most ``presence_delay`` late.

        When many users come and go at once (a reconnect storm, a benchmark)
        each online user then gets one write per batch instead of one per
        login, which is what keeps presence from costing O(users) writes for
        every login. Logins still see one another in order: a frame queued
        for a user always goes after the presence frames held for them.
        """
        hub = self.hub
        hub.batch_presence = True
        try:
            while True:
                await hub.presence_due.wait()
                # A flush costs a write per online user, so wait in
                # proportion: with 2,000 online 0.1 s, with 20 a millisecond.
                await trio.sleep(
                    min(self.config.presence_delay, len(hub) * _DELAY_PER_USER)
                )
                hub.flush_presence()
        finally:
            hub.batch_presence = False
            hub.flush_presence()

    def shutdown(self) -> None:
        """Stop accepting and close every connection with ``shutting-down``."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: closing %d connections", len(self._sessions))
        self._accepting.cancel()
        for session in list(self._sessions):
            session.close_with(_GOODBYE, "server shutting down")

    async def _accept_loop(
        self, listener: trio.SocketListener, connections: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno not in _ACCEPT_BACKOFF_ERRNOS:
                    raise
                log.warning("accept failed: %s; retrying shortly", error)
                await trio.sleep(0.1)
                continue
            connections.start_soon(self._handle, stream)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        try:
            peer = tcp.socket.getpeername()
        except OSError:  # already gone
            await tcp.aclose()
            return
        stream: trio.abc.Stream = tcp
        if self.config.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.config.ssl_context, server_side=True)
        await self.serve_connection(stream, str(peer[0]), f"{peer[0]}:{peer[1]}")

    async def serve_connection(
        self, stream: trio.abc.Stream, ip: str, address: str | None = None
    ) -> None:
        """Serve one client on *stream* (any Trio stream) until it is gone,
        then close the stream. *ip* counts towards ``max_per_ip``; *address*
        names the client in the log. Tests use it with in-memory streams."""
        address = address or ip
        refusal = self._refusal(ip)
        if refusal is not None:
            if self._refusing >= self.config.max_refusing:
                # A connect flood: every refusal held for a goodbye is a
                # file descriptor, so past the cap the error is written if
                # it fits at once and the connection closed without waiting.
                log.info("refuse %s at once: %s", address, refusal.code.value)
                if type(stream) is trio.SocketStream:
                    write_at_once(stream.socket.fileno(), encode(refusal))
                await trio.aclose_forcefully(stream)
                return
            log.info("refuse %s: %s", address, refusal.code.value)
            self._refusing += 1
            try:
                await self._refuse(stream, refusal)
            finally:
                self._refusing -= 1
            return
        session = _Session(self, stream, address)
        self._sessions.add(session)
        self._per_ip[ip] += 1
        try:
            try:
                await session.run()
            except Exception:
                log.exception("connection %s failed", address)
            finally:
                self._sessions.discard(session)
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
            # The slot is free again; what is left is a goodbye.
            await session.say_goodbye()
        finally:
            await _close(stream, self.config.close_timeout)

    def _refusal(self, ip: str) -> Error | None:
        config = self.config
        if self.stopping:
            return _GOODBYE
        if len(self._sessions) >= config.max_clients:
            return Error(
                ErrorCode.SERVER_FULL,
                f"the server holds its maximum of {config.max_clients} connections",
            )
        if config.max_per_ip and self._per_ip[ip] >= config.max_per_ip:
            return Error(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"{ip} holds its maximum of {config.max_per_ip} connections",
            )
        return None

    async def _refuse(self, stream: trio.abc.Stream, error: Error) -> None:
        with trio.move_on_after(self.config.close_timeout):
            try:
                await stream.send_all(encode(error))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            else:
                await _linger(stream)
        await _close(stream, self.config.close_timeout)


async def _close(stream: trio.abc.Stream, within: float) -> None:
    """Close *stream*. Over TLS, first send a close_notify if that can be
    done *within* seconds (a client that reads until the server ends the
    connection may take a TCP close without one for a truncation attack);
    a stream broken already, by a write cut off or a failed handshake, is
    just closed."""
    try:
        if isinstance(stream, trio.SSLStream):
            with (
                trio.move_on_after(within),
                contextlib.suppress(trio.BrokenResourceError),
            ):
                await stream.aclose()
    finally:
        await trio.aclose_forcefully(stream)  # if not closed already


async def _linger(stream: trio.abc.Stream) -> None:
    """End our side of *stream*, then discard input until the peer closes.

    Closing a socket with unread input makes the kernel reset the
    connection, and a reset can destroy data the peer has not read yet (the
    error we just sent). Callers bound the wait with a deadline.
    """
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(_RECEIVE_SIZE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
