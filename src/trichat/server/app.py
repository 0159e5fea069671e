"""The trichat server: a Trio nursery with a task per connection.

``ChatServer(config).serve()`` accepts connections (``trio.serve_listeners``)
and serves each in a task of the server's ``connections`` nursery. A
connection (``_Connection``) is two tasks in a nursery of its own:

- its reading task reads what the client sends and hands it to the
  connection's sans-IO ``Session`` (``session.py``), which decides what
  each frame does and routes talk through the ``Hub`` (``hub.py``);
- its writer task takes what the hub and the session put in the user's
  ``Mailbox`` (``mailbox.py``) through a bounded memory channel, and alone
  writes to the socket.

On a plain socket (and where there is epoll) a reading task with nothing to
read parks at the server's ``SharedReader`` instead of waiting on its own
socket: that one task reads and hands what arrives to the same session step
(``_Connection.serve_ready``) in the order it arrives, and wakes the
connection's task only when something has to wait. ``shutdown()`` stops
accepting, tells every client ``error|shutting-down|...`` and waits for the
connections to close. docs/architecture.md draws the task tree.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import trio

from ..protocol._codec import ProtocolError, Role, decode, encode
from ..protocol.messages import Delivery, Error, ErrorCode, Message, name_key
from ._shared_reader import SharedReader, available
from .config import ServerConfig
from .hub import Accepted, Hub, Member
from .mailbox import Drainable, Mailbox, Turnstile, write_loop
from .passwords import Hasher, LoginThrottle
from .session import Session, SessionEnded, TokenBucket
from .store import Store
from .transport import RECEIVE_SIZE, PlainSocket, transport_for, write_now

__all__ = ["ChatServer", "ServerConfig"]

log = logging.getLogger("trichat.server")

# A reading task hands the scheduler back after this many frames or reads,
# so the writers of the users it is talking to can drain their queues.
_FRAMES_PER_TURN = 64
# How long presence frames may wait per user online, up to presence_delay.
_DELAY_PER_USER = 50e-6
# Connections that start their closing work in one turn of the event loop.
_ENDINGS_PER_TURN = 32
# Members given a batch of presence per turn of the event loop.
_PRESENCE_PER_TURN = 128
# Writers that write a large block (mailbox.BIG_WRITE) in one turn.
_BIG_WRITES_PER_TURN = 64
# A turn of the event loop this long is a stall (see _Stalls).
_LONG_TURN = 0.05
# Full collections Python would wait for: none, in practice.
_NEVER = 1 << 30
# How often the queues' sum is looked at, and why one is dropped past it.
_QUEUE_WATCH = 0.25
_OVER_BUDGET = "too slow: the server's queues hold too much"
_OVER_IP_BUDGET = "too slow: the queues of this address hold too much"
# At shutdown, a queue holding more than this is dropped before the
# goodbye: over TLS, thousands of clients' backlogs cannot all be encrypted
# and sent within the close timeout, and the goodbye would be lost.
_GOODBYE_BACKLOG = 64 * 1024
# What every client hears when the server stops, connected or connecting.
_GOODBYE = Error(ErrorCode.SHUTTING_DOWN, "the server is stopping")
_REPLACED = Error(ErrorCode.REPLACED, "another connection took this session over")
# The ways a connection can end that leave its session waiting for a resume
# (protocol 2): the client did not mean to leave. An exit, a line too long,
# a flood close and the shutdown end the session.
_DROPS = frozenset(
    {"closed", "connection lost", "ping timeout", "too slow: outgoing queue full"}
)


class _Connection:
    """One client connection, from accept to close: a reading task and a
    writer task around the client's ``Session`` and ``Mailbox``."""

    __slots__ = (
        "address",
        "close_by",
        "config",
        "connection_scope",
        "end_error",
        "end_reason",
        "ip",
        "kicked",
        "leaving",
        "mailbox",
        "parked",
        "quiet_scope",
        "server",
        "session",
        "shared",
        "stream",
        "transport",
    )

    def __init__(
        self, server: ChatServer, stream: trio.abc.Stream, address: str, ip: str
    ) -> None:
        config = server.config
        self.server = server
        self.config = config
        self.stream = stream
        self.address = address
        self.ip = ip
        self.transport = transport_for(stream)
        self.shared = (
            server.shared_reader if isinstance(self.transport, PlainSocket) else None
        )
        self.mailbox = Mailbox(config.queue_size, config.queue_bytes)
        self.session = Session(
            config,
            server.hub,
            self.mailbox,
            self.kick,
            address,
            trio.current_time(),
            replaced=self.replaced,
            ended=self.ended_elsewhere,
            store=server.store,
            throttle=server.throttle,
            private=_private(stream, ip),
            ip=ip,
            login_bucket=server.login_bucket(ip),
            # Only flood control needs to know (rate 0: none).
            stalls=server.stalls.seconds if config.rate else None,
        )
        # The scope of the reader and writer both (their nursery's).
        self.connection_scope: trio.CancelScope | None = None
        # The reading's, for one quiet period (see read_loop); cancelled,
        # with session.stopped set, it ends the reading.
        self.quiet_scope = trio.CancelScope()
        self.end_reason = "closed"
        self.end_error: Error | None = None
        self.close_by = 0.0
        self.kicked = False
        self.leaving: Member | None = None
        """The user whose session ends with this connection (once closed)."""
        self.parked = False
        """The session waits for a resume (the server holds it now)."""

    # -- control from outside ------------------------------------------------

    def kick(self, reason: str) -> None:
        """Drop the client at once, discarding what is queued for it (unless
        its session is to wait for a resume)."""
        if self.kicked or (self.server.stopping and self.end_error is not None):
            # Already dropped, or closing with shutting-down, which must
            # still reach the client.
            return
        self.kicked = self.session.stopped = True
        self.end_reason = reason
        self.end_error = None
        if not self._session_waits():
            # From now on a message to this user is refused, not queued and
            # lost; the name stays taken until go_offline, which tells others.
            self.mailbox.discard()
        self.quiet_scope.cancel()
        if self.connection_scope is not None:
            self.connection_scope.cancel()

    def replaced(self) -> None:
        """Another connection took this one's session over (``resume``):
        tell the client ``replaced`` and close, leaving the session be."""
        log.info("replaced %s %s", self.address, self.session.name)
        self.session.member = None
        self.close_with(_REPLACED, "replaced")

    def ended_elsewhere(self, reason: str) -> None:
        """This connection's session ended on another (a resume there
        failed): tell the client why, as ``replaced``, and close."""
        log.info("replaced %s %s (session ended)", self.address, self.session.name)
        self.session.member = None
        self.close_with(Error(ErrorCode.REPLACED, reason), "session ended")

    def _session_waits(self) -> bool:
        """Whether the session outlives this connection's end, waiting for
        a resume (it has one, and the connection dropped)."""
        member = self.session.member
        return (
            member is not None
            and member.secret is not None
            and not self.server.stopping
            and self.end_reason in _DROPS
        )

    def close_with(self, error: Error, reason: str) -> None:
        """Stop reading, send what is queued and then *error*, and close."""
        self.end_reason = reason
        self.end_error = error
        self.session.stopped = True
        self.quiet_scope.cancel()

    # -- the connection's life -----------------------------------------------

    async def run(self) -> None:
        log.info("connect %s", self.address)
        async with trio.open_nursery() as nursery:
            self.connection_scope = nursery.cancel_scope
            nursery.start_soon(self.write)
            read_ended = False  # not by a bug
            try:
                try:
                    await self.read_loop()
                except SessionEnded as end:
                    # Unless a kick or the shutdown came first (between the
                    # shared reader's handing this over and now).
                    if not self.session.stopped:
                        self.end_reason = end.reason
                        self.end_error = end.error
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.end_reason = "connection lost"
                read_ended = True
            finally:
                self.session.stopped = True
                with trio.CancelScope(shield=True):  # bounded: they take turns
                    await self.server.endings.take_turn()
                # A kick (the writer lost the connection, say) ends reading
                # by cancelling: not a bug either.
                if (read_ended or self.kicked) and self._session_waits():
                    self.park(nursery.cancel_scope)
                else:
                    self.close(nursery.cancel_scope)
        leaving, self.leaving = self.leaving, None
        if leaving is not None and leaving.mailbox is self.mailbox:
            # The writer is done: what it did not write (the client did not
            # read it in time, or was dropped) is not lost for an account.
            self.server.keep_for_later(leaving)

    def park(self, scope: trio.CancelScope) -> None:
        """Leave the session waiting for a resume, with its mailbox, which
        keeps taking frames; the writer stops where it is."""
        member = self.session.member
        assert member is not None
        self.server.park(member, self.end_reason, self.ip)
        self.parked = True
        scope.cancel()

    def close(self, scope: trio.CancelScope) -> None:
        """However reading ended, a bug included: the user goes offline and
        the mailbox takes no more frames; the writer has until the close
        timeout to write what is queued."""
        self.leaving = self.go_offline()
        final = encode(self.end_error) if self.end_error else b""
        self.mailbox.close(final)
        # Only the writer is left: flushing and lingering share one
        # deadline.
        self.close_by = trio.current_time() + self.config.close_timeout
        scope.deadline = self.close_by

    def disown(self) -> None:
        """The connection is over: let go of its session's callbacks into
        it, the cycle that would otherwise keep both (and the mailbox,
        scopes and socket objects they reach) alive until the cycle
        collector came. Freed by reference counting instead, a crowd of
        connections that come and go no longer feeds the full collections
        that stalled every user for hundreds of milliseconds."""
        self.leaving = None
        self.session.kick = _ignore_kick
        self.session.replaced = _nothing
        self.session.ended = _ignore_kick

    async def say_goodbye(self) -> None:
        """After ``run``: let the client read what was sent last (see
        _linger), unless it was dropped or could not be written to."""
        scope = self.connection_scope
        if self.parked or self.kicked:
            return
        if scope is not None and not scope.cancelled_caught:
            with trio.move_on_at(self.close_by):
                await _linger(self.stream)

    def go_offline(self) -> Member | None:
        """The user, if any, leaves the hub (who it was is returned)."""
        member, self.session.member = self.session.member, None
        who = f" {member.name}" if member else ""
        if member is not None:
            self.server.hub.leave(member, announce=not self.server.stopping)
        if self.end_reason in ("exit", "closed"):
            log.info("exit %s%s (%s)", self.address, who, self.end_reason)
        else:
            log.info("drop %s%s: %s", self.address, who, self.end_reason)
        return member

    async def write(self) -> None:
        """The writer task: the only one that writes to the client."""
        try:
            await write_loop(self.mailbox, self.transport.send, self.server.big_writes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kick("connection lost")

    # -- reading -------------------------------------------------------------

    async def read_loop(self) -> None:
        """Read and handle frames until the session ends (SessionEnded), or
        is stopped (a kick, a close).

        The login, ping and ping-answer deadlines share one cancel scope per
        quiet period rather than one per read: reads are the hot path, and
        a scope that expires early just wakes us to set a later deadline.
        Stopping cancels that scope too: a second scope for it, held by
        every idle connection, cost most of a KiB each.
        """
        session = self.session
        while True:
            with trio.move_on_at(session.wake_at()) as self.quiet_scope:
                # (Handling what came at the deadline may have stopped it.)
                if not session.stopped:
                    await self.read_frames()
            if session.stopped:
                return
            self.read_what_came()
            session.check_quiet(trio.current_time())

    async def read_frames(self) -> None:
        """Read and handle frames, a step of the session at a time.

        It lets other tasks run every _FRAMES_PER_TURN frames or reads even
        when its client always has more to read, and lets congested
        recipients drain before it handles more. What is left of a read
        when the quiet scope expires in between stays in ``session.read``
        and is handled on the next call.
        """
        session = self.session
        turn = 0
        while True:
            if session.pending is not None:
                # Before anything more is read or handled: its frame's
                # answer comes before theirs.
                work, session.pending = session.pending, None
                await work()
                continue
            if session.read is None:
                if turn >= _FRAMES_PER_TURN:
                    turn = 0
                    await trio.lowlevel.checkpoint()
                data = await self.receive()
                if data is None:
                    # The shared reader handled what came while we waited,
                    # and left the rest (in session.read) or a wait to us.
                    turn = 0
                else:
                    turn += 1
                    self.received(data)
            elif session.stopped:
                # Kicked or closing: what is still buffered goes unhandled.
                await trio.lowlevel.checkpoint()  # Cancelled ends the loop
            if session.congested or session.crowded:
                await self.let_recipients_drain()
                continue
            if session.read is not None:
                turn += self.step(_FRAMES_PER_TURN - turn)
                if turn >= _FRAMES_PER_TURN:
                    turn = 0
                    await trio.lowlevel.checkpoint()

    def received(self, data: bytes) -> None:
        self.session.received(data, trio.current_time())

    def step(self, most: int) -> int:
        """One step of the session (see ``Session.handle_ready``)."""
        session = self.session
        handled = session.handle_ready(most, trio.current_time())
        if session.deadline_moved:
            session.deadline_moved = False
            self.quiet_scope.deadline = session.wake_at()
        return handled

    async def receive(self) -> bytes | None:
        """The next bytes from the client (``b""``: it closed its side).

        On a plain socket with a shared reader, a task with nothing to read
        parks there; it returns None once the reader has handed over.
        """
        transport = self.transport
        if self.shared is None or not isinstance(transport, PlainSocket):
            return await transport.receive()
        data = transport.read_now()
        if data is not None:
            return data
        await self.shared.wait(transport.fd, self.serve_ready)
        return None

    def serve_ready(self) -> bool:
        """The shared reader's turn at this parked connection: read once and
        take the session's step without waiting. False when this
        connection's task must take over (recipients to wait for, lines
        left over); SessionEnded and errors reach the task too."""
        assert isinstance(self.transport, PlainSocket)
        data = self.transport.read_now()
        if data is None:
            return True
        self.received(data)
        session = self.session
        self.step(_FRAMES_PER_TURN)
        return (
            session.read is None
            and not session.congested
            and not session.crowded
            and not session.pending
        )

    def read_what_came(self) -> None:
        """Before a deadline is enforced: read and handle what is waiting in
        the socket already. Trio sees expired deadlines before it looks at
        the shared reader's sockets, so a pong or a login that came just in
        time could otherwise count as missing. Once only: trickling bytes
        does not put a deadline off."""
        session = self.session
        if self.shared is not None and session.read is None and not session.stopped:
            self.serve_ready()

    async def let_recipients_drain(self) -> None:
        """Pause reading until the mailboxes we filled past half have room;
        and those others had filled, that we sent to, for at most what is
        left of the read's ``max_sender_wait``.

        This is what keeps a burst from getting a recipient that reads, but
        more slowly than we write, dropped: the one who bursts waits. A
        recipient that stops reading stalls and is not waited for; and a
        sender who only added to a queue others filled is not held up by it
        for long.
        """
        session = self.session
        stall_timeout = self.config.stall_timeout
        # Not reading meanwhile is our doing: it says nothing about whether
        # the client is alive, so only the login deadline still runs.
        self.quiet_scope.deadline = session.login_deadline
        started = crowded_from = trio.current_time()
        try:
            # Each is taken off only once drained: a wait cut short by a
            # deadline is taken up again before anything more is handled.
            await _drain(session.congested, stall_timeout)
            crowded_from = trio.current_time()
            with trio.move_on_after(max(0.0, session.wait_left)):
                await _drain(session.crowded, stall_timeout)
        finally:
            now = trio.current_time()
            session.drained(now, now - started, now - crowded_from)
            self.quiet_scope.deadline = session.wake_at()


class _Waiting(NamedTuple):
    """A session waiting for a resume: when the wait ends, and the address
    its connection came from (its queue counts towards that address's)."""

    deadline: float
    ip: str


class _CollectionTimer:
    """The servers of this process that time full collections, and the
    thresholds the process had before the first of them."""

    def __init__(self) -> None:
        self.servers = 0
        self.thresholds = gc.get_threshold()


_collection_timer = _CollectionTimer()


class _Stalls(trio.abc.Instrument):
    """Adds up the turns of the event loop that took longer than _LONG_TURN.

    No socket is read during a turn: while one lasts, a client's lines pile
    up in its socket, and are then read all at once. A sender within its
    rate must not be charged them as a burst (``Session.received`` forgives
    that much time's worth), whatever made the turn long: a crowd, a full
    garbage collection, the machine itself.
    """

    def __init__(self) -> None:
        self._total = 0.0
        self._turn_began = time.perf_counter()

    def seconds(self) -> float:
        """The time spent in long turns so far."""
        return self._total

    def after_io_wait(self, timeout: float) -> None:
        self._turn_began = time.perf_counter()

    def before_io_wait(self, timeout: float) -> None:
        turn = time.perf_counter() - self._turn_began
        if turn > _LONG_TURN:
            self._total += turn


def _ignore_kick(reason: str) -> None:
    """A kick for a connection that is over already."""


def _nothing() -> None:
    """A callback with nothing left to call."""


async def _drain(mailboxes: list[Drainable], stall_timeout: float) -> None:
    """Wait until each of *mailboxes* has room, taking each off when it has."""
    while mailboxes:
        await mailboxes[-1].make_room(stall_timeout)
        mailboxes.pop()


class ChatServer:
    """A trichat server; ``serve`` runs it, ``shutdown`` stops it."""

    def __init__(
        self, config: ServerConfig | None = None, *, hasher: Hasher | None = None
    ) -> None:
        """*hasher* hashes the passwords of accounts (tests give a cheap
        one); by default, Argon2id with OWASP's parameters."""
        self.config = config or ServerConfig()
        self.hub = Hub(
            global_presence=self.config.global_presence,
            max_rooms=self.config.max_rooms,
        )
        self.stopping = False
        self._connections: set[_Connection] = set()
        self._per_ip: Counter[str] = Counter()
        self._refusing = 0  # refused connections still being told why
        self._accepting = trio.CancelScope()
        self.endings = Turnstile(_ENDINGS_PER_TURN)
        """Where ending connections wait their turn to close."""
        self.big_writes = Turnstile(_BIG_WRITES_PER_TURN)
        """Where writers with a large block wait their turn to write it."""
        self.stalls = _Stalls()
        """How long the event loop, while serving, spent in turns so long
        that nothing was read meanwhile."""
        self.shared_reader: SharedReader | None = None
        config = self.config
        self.store: Store | None = None
        if config.db is not None:
            self.store = Store(
                config.db,
                history=config.history,
                history_cache=config.history_cache,
                offline_max=config.offline_max,
                hasher=hasher,
            )
        self.throttle = LoginThrottle()
        # Logins allowed per address, while it has connections.
        self._login_buckets: dict[str, TokenBucket] = {}
        # Sessions waiting for a resume: when each ends, where it came from.
        self._waiting: dict[Member, _Waiting] = {}
        self._waiting_changed = trio.Event()

    @property
    def connections(self) -> int:
        return len(self._connections)

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
        # Before anything else, so that a port in use is an OSError the
        # caller sees as it is.
        listeners = await trio.open_tcp_listeners(
            self.config.port, host=self.config.host
        )
        if self.config.rate:
            trio.lowlevel.add_instrument(self.stalls)
        try:
            async with trio.open_nursery() as storing:
                if self.store is not None:
                    # Open before the first connection: ids go on above
                    # those it holds. It stops (writing all it was given)
                    # after the last connection closed.
                    await storing.start(self.store.run)
                    self.hub.next_id = max(self.hub.next_id, self.store.last_id + 1)
                    self.hub.offline = self.store
                    self.store.refused = self._tell_no_such_user
                    self.hub.observe(self.store.record)
                await self._listen(listeners, task_status)
                storing.cancel_scope.cancel()
        finally:
            if self.config.rate:
                trio.lowlevel.remove_instrument(self.stalls)
            for listener in listeners:
                await trio.aclose_forcefully(listener)
        log.info("stopped")

    async def _listen(
        self,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[int],
    ) -> None:
        try:
            async with trio.open_nursery() as reading:
                if self.config.shared_reader and available():
                    self.shared_reader = SharedReader(
                        expected=(SessionEnded, trio.BrokenResourceError),
                    )
                    reading.start_soon(self.shared_reader.run)
                await self._serve_connections(listeners, task_status)
                # Every connection is closed: nobody is parked any more.
                reading.cancel_scope.cancel()
        finally:
            self.shared_reader = None

    async def _serve_connections(
        self,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[int],
    ) -> None:
        """Accept until ``shutdown``, then wait for the connections to close."""
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    if self.config.presence_delay:
                        accepting.start_soon(self._send_presence)
                    if self.config.resume_window:
                        accepting.start_soon(self._end_waiting_sessions)
                    if (
                        self.config.max_queued_bytes
                        or self.config.max_queued_bytes_per_ip
                    ):
                        accepting.start_soon(self._watch_queued_bytes)
                    if self.config.full_collection_interval:
                        accepting.start_soon(self._collect_garbage)
                    # It backs off when out of descriptors, and closes the
                    # listeners when cancelled, freeing the port while the
                    # connections close.
                    await accepting.start(
                        partial(
                            trio.serve_listeners,
                            self._handle,
                            listeners,
                            handler_nursery=connections,
                        )
                    )
                    for listener in listeners:
                        host, port = listener.socket.getsockname()[:2]
                        log.info("listening on %s port %s", host, port)
                    task_status.started(listeners[0].socket.getsockname()[1])

    async def _send_presence(self) -> None:
        """Send logins and exits in batches, at most ``presence_delay`` late.

        When many users come and go at once (a reconnect storm, a benchmark)
        each online user then gets one write per batch instead of one per
        login, which is what keeps presence from costing O(users) writes for
        every login. The batch's frames are logged once in the hub and go
        to the members _PRESENCE_PER_TURN at a time, so that the writes to
        thousands (4,000 exits at once, say) do not all fall in one turn of
        the event loop. Logins still see one another in order: whatever is
        put in a mailbox goes after the presence logged before it.
        """
        hub = self.hub
        hub.hold_presence = True
        try:
            while True:
                await hub.presence_held.wait()
                # A release costs a write per online user, so wait in
                # proportion: with 2,000 online 0.1 s, with 20 a millisecond.
                await trio.sleep(
                    min(self.config.presence_delay, len(hub) * _DELAY_PER_USER)
                )
                await hub.release_in_turns(_PRESENCE_PER_TURN)
        finally:
            hub.hold_presence = False
            hub.release()

    async def _watch_queued_bytes(self) -> None:
        """A few times a second, ``keep_queues_in_budget``."""
        while True:
            await trio.sleep(_QUEUE_WATCH)
            self.keep_queues_in_budget()

    def keep_queues_in_budget(self) -> None:
        """Keep what the outgoing queues hold under ``max_queued_bytes`` in
        all, and under ``max_queued_bytes_per_ip`` for the connections (and
        waiting sessions) of any one address but loopback: past a limit,
        drop those that hold the most, until a tenth of it is free.

        It looks at every connection, in one step while everyone waits, but
        costs nothing on the hot path: adding up first, the list of who
        holds what is made only when a limit is passed.
        """
        config = self.config
        limit, per_ip = config.max_queued_bytes, config.max_queued_bytes_per_ip
        total = 0
        by_ip: Counter[str] = Counter()
        for connection in self._connections:
            if size := connection.mailbox.queued_bytes:
                total += size
                by_ip[connection.ip] += size
        for member, (_, ip) in self._waiting.items():
            if size := member.mailbox.queued_bytes:
                total += size
                by_ip[ip] += size
        if per_ip:
            for ip, size in by_ip.items():
                if size > per_ip and not _is_loopback(ip):
                    log.warning(
                        "queues of %s hold %d bytes, over %d: dropping the largest",
                        ip,
                        size,
                        per_ip,
                    )
                    self._drop_largest(self._queue_holders(ip), per_ip, _OVER_IP_BUDGET)
        if limit and total > limit:
            log.warning(
                "queues hold %d bytes, over %d: dropping the largest", total, limit
            )
            self._drop_largest(self._queue_holders(), limit, _OVER_BUDGET)

    def _queue_holders(
        self, ip: str | None = None
    ) -> list[tuple[int, Callable[[str], None]]]:
        """What each connection and waiting session (of *ip*, or all) holds
        in its queue, with how to drop it."""
        holders: list[tuple[int, Callable[[str], None]]] = [
            (c.mailbox.queued_bytes, c.kick)
            for c in self._connections
            if not c.kicked and (ip is None or c.ip == ip)
        ]
        holders.extend(
            (m.mailbox.queued_bytes, partial(self._end_waiting, m))
            for m, waiting in self._waiting.items()
            if ip is None or waiting.ip == ip
        )
        return holders

    @staticmethod
    def _drop_largest(
        holders: list[tuple[int, Callable[[str], None]]], limit: int, reason: str
    ) -> None:
        total = sum(size for size, _ in holders)
        holders.sort(key=lambda holder: holder[0], reverse=True)
        for size, drop in holders:
            if total <= limit * 0.9:
                break
            drop(reason)
            total -= size

    async def _collect_garbage(self) -> None:
        """Run the cycle collector's full collections on a timer.

        Python starts one whenever the objects that survived since the last
        have grown by a quarter: with thousands of connections coming and
        going that was every second or two, and each walked every object
        of every connection, 100-500 ms during which nobody was served
        (measured with 9,000 connections). Connections make no reference
        cycles (``_Connection.disown``), so the young collections, which
        stay, find what little there is; whatever reaches the oldest
        generation waits for this timer.
        """
        timer = _collection_timer
        if not timer.servers:
            timer.thresholds = gc.get_threshold()
            gc.freeze()  # what start-up made lives as long as the server
            first, second, _ = timer.thresholds
            gc.set_threshold(first, second, _NEVER)
        timer.servers += 1
        try:
            while True:
                await trio.sleep(self.config.full_collection_interval)
                started = time.perf_counter()
                found = gc.collect()
                log.info(
                    "full collection: %d objects freed in %.0f ms",
                    found,
                    1000 * (time.perf_counter() - started),
                )
        finally:
            # The process's own schedule is back when the last server that
            # timed collections stops (several may run in one process).
            timer.servers -= 1
            if not timer.servers:
                gc.set_threshold(*timer.thresholds)
                gc.unfreeze()

    def login_bucket(self, ip: str) -> TokenBucket | None:
        """The logins *ip* may still make (``--logins-per-ip``), shared by
        its connections; None for no limit (off, or a loopback address)."""
        rate = self.config.logins_per_ip
        if not rate or _is_loopback(ip):
            return None
        bucket = self._login_buckets.get(ip)
        if bucket is None:
            burst = max(1, round(2 * rate))
            bucket = TokenBucket(rate, burst, trio.current_time())
            self._login_buckets[ip] = bucket
        return bucket

    # -- sessions waiting for a resume ---------------------------------------

    @property
    def waiting(self) -> int:
        """Sessions waiting for a resume."""
        return len(self._waiting)

    def park(self, member: Member, reason: str, ip: str) -> None:
        """Keep *member*'s session, whose connection dropped, for a resume:
        its name, rooms and mailbox stay; nobody is told it left. It ends
        when the resume window passes, or when its mailbox overflows."""
        member.kick = partial(self._end_waiting, member)
        member.replace = partial(self._resumed, member)
        member.end = member.kick
        # Nobody waits for a mailbox that has no writer.
        member.mailbox.stalled = True
        self._waiting[member] = _Waiting(
            trio.current_time() + self.config.resume_window, ip
        )
        self._waiting_changed.set()
        log.info("wait %s (%s)", member.name, reason)

    def _resumed(self, member: Member) -> None:
        """A connection takes *member*'s waiting session back."""
        if self._waiting.pop(member, None) is not None:
            member.mailbox.discard()

    def _end_waiting(self, member: Member, reason: str) -> None:
        """End *member*'s waiting session: now everyone hears it left."""
        if self._waiting.pop(member, None) is None:
            return
        self.keep_for_later(member)
        member.mailbox.discard()
        self.hub.leave(member, announce=not self.stopping)
        log.info("exit %s (session ended: %s)", member.name, reason)

    def _tell_mailbox_full(self, name: str, refused: dict[str, int]) -> None:
        """The senders online of direct messages to *name* that its offline
        messages had no room for hear ``mailbox-full``, once a message, as
        if they had sent them now: accepted when *name*'s session held
        them, they are not delivered after all."""
        self._tell_refused(Error(ErrorCode.MAILBOX_FULL, name), refused)

    def _tell_no_such_user(self, name: str, refused: dict[str, int]) -> None:
        """The senders online of direct messages to account *name* kept for
        it while offline hear ``no-such-user``, once a message: the account
        was deleted (by ``trichat accounts``) before they were written."""
        self._tell_refused(Error(ErrorCode.NO_SUCH_USER, name), refused)

    def _tell_refused(self, error: Error, refused: dict[str, int]) -> None:
        """Each sender online in *refused* hears *error* as many times."""
        frame = encode(error)
        for sender, count in refused.items():
            holder = self.hub.member(name_key(sender))
            if holder is not None and holder.name == sender:
                holder.send(frame * count, count)

    def keep_for_later(self, member: Member, frames: list[bytes] | None = None) -> None:
        """The session of *member* ends unresumed: the direct messages sent
        to it that its mailbox still holds, never written whole to any
        connection (or among *frames*, dropped from it), go to its
        account's offline messages, delivered at its next login, as a
        message to it while offline would be (a guest has none). A
        protocol-1 delivery gets an id and a time only now."""
        store = self.store
        if store is None or not store.is_account(member.key):
            return
        if frames is None:
            frames = member.mailbox.leftover_messages()
        left = 0
        refused: dict[str, int] = {}  # by sender's name
        for frame in frames:
            try:
                message = decode(frame.rstrip(b"\n"), Role.CLIENT)
            except ProtocolError:  # the server's own frame: never, but no crash
                left += 1
                continue
            # Direct messages to it (its own echoed name their target, and
            # a note to itself is one).
            if (
                isinstance(message, Message)
                and message.to == member.name
                and message.id > store.delivered_through(member.key)
            ):
                accepted = Accepted(
                    message.sender,
                    message.to,
                    [message.text.encode()],
                    message.id,
                    message.time_ms,
                )
            elif isinstance(message, (Message, Delivery)) and message.to == member.name:
                # No id (protocol 1), or one at or below what a login since
                # took as delivered: a new one, or it would never be.
                accepted = self.hub.restamp(message.sender, message.to, message.text)
            else:
                continue
            if not store.record_offline(accepted, member.key, history=False):
                left += 1
                refused[message.sender] = refused.get(message.sender, 0) + 1
        self._tell_mailbox_full(member.name, refused)
        if left:
            log.warning(
                "%s: %d direct messages sent to its session are not kept: "
                "its offline messages are at --offline-max (or unreadable); "
                "their senders online were told mailbox-full",
                member.name,
                left,
            )

    async def _end_waiting_sessions(self) -> None:
        """End each waiting session whose resume window has passed."""
        while True:
            self._waiting_changed = trio.Event()
            now = trio.current_time()
            for member, (deadline, _) in list(self._waiting.items()):
                if deadline <= now:
                    self._end_waiting(member, "resume window passed")
            ends = (waiting.deadline for waiting in self._waiting.values())
            with trio.move_on_at(min(ends, default=math.inf)):
                await self._waiting_changed.wait()

    def shutdown(self) -> None:
        """Stop accepting and close every connection with ``shutting-down``."""
        if self.stopping:
            return
        self.stopping = True
        count = len(self._connections)
        log.info(
            "shutting down: closing %d connection%s", count, "" if count == 1 else "s"
        )
        self._accepting.cancel()
        for member in list(self._waiting):
            self._end_waiting(member, "server shutting down")
        for connection in list(self._connections):
            # The goodbye matters more than a backlog there is no time
            # for: beyond _GOODBYE_BACKLOG, what was never taken for
            # writing is dropped (a frame being written is finished), but
            # for an account's direct messages, kept for its next login.
            if connection.mailbox.queued_bytes > _GOODBYE_BACKLOG:
                dropped = connection.mailbox.drop_unwritten()
                user = connection.session.member
                if user is not None:
                    self.keep_for_later(user, dropped)
            connection.close_with(_GOODBYE, "server shutting down")

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
                write_now(stream, encode(refusal))
                await trio.aclose_forcefully(stream)
                return
            log.info("refuse %s: %s", address, refusal.code.value)
            self._refusing += 1
            try:
                await self._refuse(stream, refusal)
            finally:
                self._refusing -= 1
            return
        session = _Connection(self, stream, address, ip)
        self._connections.add(session)
        self._per_ip[ip] += 1
        try:
            try:
                await session.run()
            except Exception:
                log.exception("connection %s failed", address)
            finally:
                self._connections.discard(session)
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
                    self._login_buckets.pop(ip, None)
            # The slot is free again; what is left is a goodbye.
            await session.say_goodbye()
        finally:
            await _close(stream, self.config.close_timeout)
            session.disown()

    def _refusal(self, ip: str) -> Error | None:
        config = self.config
        if self.stopping:
            return _GOODBYE
        if len(self._connections) >= config.max_clients:
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


def _private(stream: trio.abc.Stream, ip: str) -> bool:
    """Whether a password may go over *stream* from *ip*: it is encrypted
    (TLS), or comes from this machine (loopback)."""
    return isinstance(stream, trio.SSLStream) or _is_loopback(ip)


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


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
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
