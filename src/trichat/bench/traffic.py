"""What every scenario's users share: logging in over the client library,
reading, the counters of one run, and its measured window.

Each bench user is a ``trichat.client.Client``. A reader takes what
arrives a read at a time (``Client.receive_batch``) and hands each frame to
the scenario's ``Handler``; a sender writes its frames a batch at a time
(``Client.talk_batch``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import trio

from ..client.library import BadServerFrame, Client, ConnectionLost, LoginRefused
from ..protocol.messages import Delivery, Error, ErrorCode, Message
from .reader import FedStream, SharedReader, dispatch
from .settings import Settings
from .usage import Usage

__all__ = [
    "BenchError",
    "Flow",
    "Handler",
    "Progress",
    "Run",
    "log_in_all",
    "run_window",
    "sleep_until_ns",
    "trio_time",
]

NS = 1_000_000_000
# Close with a reset, leaving no TIME_WAIT behind: a run may open thousands.
_NO_LINGER = struct.pack("ii", 1, 0)


class BenchError(Exception):
    """The run could not be carried out (no connection, a refused login...)."""


def trio_time(at_ns: int) -> float:
    """The Trio clock's reading at perf_counter_ns() == *at_ns*."""
    return trio.current_time() + (at_ns - time.perf_counter_ns()) / NS


async def sleep_until_ns(at_ns: int) -> None:
    """Sleep until perf_counter_ns() reaches *at_ns*."""
    await trio.sleep_until(trio_time(at_ns))


class Progress:
    """Shows how a run is going on *stream*: a live line on a terminal, a
    line per phase elsewhere, nothing when quiet or without a stream.

    ``phase`` is called as the run enters each phase ("logging in",
    "warming up", "measuring", "draining", ...).
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream
        self.live = False
        self.plain = False
        if stream is not None and not quiet:
            self.live = stream.isatty()
            self.plain = not self.live
        self._shown = False

    def phase(self, run: Run, text: str) -> None:
        if self.plain and self.stream is not None:
            print(f"trichat bench: {run.settings.scenario}: {text}", file=self.stream)

    async def show(self, run: Run) -> None:
        if not self.live or self.stream is None:
            return
        last_delivered, last = run.delivered, time.perf_counter()
        while True:
            await trio.sleep(0.5)
            now = time.perf_counter()
            rate = (run.delivered - last_delivered) / (now - last)
            last_delivered, last = run.delivered, now
            line = f"{run.settings.scenario} {run.phase:<11} {now - run.began:6.1f}s"
            if run.settings.scenario == "idle":
                line += (
                    f"  logged in {run.logged_in:,}/{run.settings.connections:,}"
                    f"  presence {run.presence:,}"
                )
            elif run.settings.scenario == "rooms" and run.phase in (
                "logging in",
                "settling",
            ):
                line += (
                    f"  logged in {run.logged_in:,}/{run.settings.sockets:,}"
                    f"  joined {run.joined:,}"
                )
            else:
                line += (
                    f"  {rate:,.0f} msg/s  sent {run.sent:,}"
                    f"  delivered {run.delivered:,}"
                )
            if run.errors or run.conns_lost:
                line += f"  errors {run.errors:,}  lost conns {run.conns_lost}"
            self.stream.write(f"\r\x1b[K{line}")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


class Run:
    """Counters and clocks shared by one run's tasks."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.phase = "starting"
        self.began = time.perf_counter()
        self._sockets: list[trio.SocketStream] = []
        # When traffic starts (warmup) and the measured window, on the
        # perf_counter_ns clock.
        self.traffic_start = 0
        self.window_start = 0
        self.window_end = 0
        self.stopping = False
        self.sent_all = False
        """Every sender has returned: ``expected`` is final."""
        self.live = True
        self.drained = trio.Event()
        self.usage_start: Usage | None = None
        self.usage_end: Usage | None = None
        self.sent = 0
        self.expected = 0
        """Deliveries the messages sent so far should make."""
        self.delivered = 0
        self.refused = 0
        """Deliveries that will not happen: the server refused the message."""
        self.in_window = 0
        self.latencies = array("q")
        self.late = array("q")
        self.bad_stamps = 0
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.last_error = ""
        self.conns_lost = 0
        self._lost: set[str] = set()
        self.exits_seen = 0
        self.reader: SharedReader | None = None
        """The task that reads every connection, if the scenario uses one
        (else each has its own)."""
        self.logged_in = 0
        self.joined = 0
        """Users that are in all their rooms (the rooms scenario)."""
        self.presence = 0

    def set_phase(self, text: str) -> None:
        self.phase = text
        self.progress.phase(self, text)

    def arrived(self, now: int, sent_ns: int) -> None:
        """Count a delivery read at *now* of a message stamped *sent_ns*."""
        self.delivered += 1
        if self.window_start <= now < self.window_end:
            self.in_window += 1
            self.latencies.append(now - sent_ns)

    def check_drained(self) -> None:
        # Not before every sender is done: one woken just before the end
        # of the window may still be sending when the clock stops it.
        if self.sent_all and self.delivered + self.refused >= self.expected:
            self.drained.set()

    def server_error(self, error: Error) -> None:
        self.errors += 1
        code = error.code.value
        self.error_codes[code] = self.error_codes.get(code, 0) + 1
        self.last_error = f"error|{code}|{error.detail}"

    def bad_frame(self, bad: BadServerFrame) -> None:
        self.errors += 1
        self.error_codes["bad-frame-from-server"] = (
            self.error_codes.get("bad-frame-from-server", 0) + 1
        )
        self.last_error = str(bad)

    def connection_lost(self, client: Client) -> None:
        if self.live and client.name not in self._lost:
            self._lost.add(client.name)
            self.conns_lost += 1

    async def send(self, client: Client, to: str, texts: Sequence[str]) -> bool:
        """Send *texts* to *to* in one write; False (and counted) if the
        connection broke."""
        try:
            await client.talk_batch(to, texts)
        except ConnectionLost:
            self.connection_lost(client)
            return False
        return True

    async def open_socket(self) -> trio.SocketStream:
        """A connection to the server, closed by ``close_all``."""
        settings = self.settings
        try:
            stream = await trio.open_tcp_stream(settings.host, settings.port)
        except OSError as error:
            raise BenchError(
                f"cannot connect to {settings.host}:{settings.port}: {error}"
            ) from None
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        self._sockets.append(stream)
        return stream

    def close_all(self) -> None:
        """Close every connection of the run at once (with a reset)."""
        self.live = False
        for stream in self._sockets:
            stream.socket.close()

    async def clock(self, wake: Sequence[trio.lowlevel.ParkingLot] = ()) -> None:
        """Sample CPU at the window's edges; stop the senders at its end."""
        pid = self.settings.pid
        await sleep_until_ns(self.window_start)
        self.usage_start = Usage.now(pid)
        self.set_phase("measuring")
        await sleep_until_ns(self.window_end)
        self.usage_end = Usage.now(pid)
        self.stopping = True
        self.set_phase("draining")
        for lot in wake:
            lot.unpark_all()

    def start_window(self) -> None:
        """Start the traffic now: the warmup, then the measured window."""
        self.traffic_start = time.perf_counter_ns()
        self.window_start = self.traffic_start + round(self.settings.warmup * NS)
        self.window_end = self.window_start + round(self.settings.duration * NS)
        self.set_phase("warming up" if self.settings.warmup else "measuring")


class Handler:
    """What a reader does with the frames of one connection; by default,
    nothing beyond counting errors."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def talk(self, delivery: Delivery | Message, now: int) -> None:
        """A delivery (``talk`` on protocol 1, ``msg`` on 2) read at *now*
        (perf_counter_ns); by default, ``delivered`` with its fields."""
        self.delivered(delivery.sender, delivery.to, delivery.text, now)

    def delivered(self, sender: str, to: str, text: str, now: int) -> None:
        """A delivery's fields: what a ``SharedReader`` that splits lines
        itself hands on, instead of calling ``talk``."""

    def login(self, name: str) -> None:
        """*name* came online."""

    def joined(self, room: str, name: str) -> None:
        """*name* is in *room*: a join list's or a newcomer's ``join``."""

    def error(self, error: Error) -> None:
        self.run.server_error(error)

    def batch_done(self) -> None:
        """Every frame of one read has been handled."""


class Flow(Handler):
    """A handler whose sender parks in ``lot`` until there is room for
    more: each read wakes it, and once the run is stopping, checks
    whether everything in flight has arrived."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.lot = trio.lowlevel.ParkingLot()

    def batch_done(self) -> None:
        if self.lot:
            self.lot.unpark_all()
        if self.run.stopping:
            self.run.check_drained()


async def _log_in(run: Run, name: str) -> tuple[Client, FedStream | None]:
    """Connect and log in as *name*; BenchError if that fails. With the
    run's shared reader, the client's stream is a FedStream (also
    returned), for that reader to feed."""
    socket_stream = await run.open_socket()
    fed = None if run.reader is None else FedStream(socket_stream)
    stream: trio.abc.Stream = socket_stream if fed is None else fed
    timeout = run.settings.login_timeout
    try:
        with trio.fail_after(timeout):
            # Protocol 2 (msg frames, as users get them) unless told 1,
            # without our own messages back: the counts are of deliveries
            # to others.
            client = await Client.login(
                stream, name, version=run.settings.protocol, echo=False
            )
    except trio.TooSlowError:
        raise BenchError(
            f"{name}: no login acknowledgement within {timeout:g} s"
        ) from None
    except LoginRefused as refused:
        hint = ""
        if refused.error.code is ErrorCode.TOO_MANY_CONNECTIONS:
            hint = " (raise the server's --max-per-ip)"
        elif refused.error.code is ErrorCode.SERVER_FULL:
            hint = " (raise the server's --max-clients)"
        raise BenchError(
            f"{name} could not log in: error|{refused.error.code.value}|"
            f"{refused.error.detail}{hint}"
        ) from None
    except (ConnectionLost, BadServerFrame) as error:
        raise BenchError(f"{name} could not log in: {error}") from None
    run.logged_in += 1
    run.presence += 1
    return client, fed


async def _read(run: Run, client: Client, handler: Handler) -> None:
    """Read *client*'s frames until the connection ends, handing them on."""
    receive_batch = client.receive_batch
    while True:
        try:
            messages = await receive_batch()
        except BadServerFrame as bad:
            run.bad_frame(bad)
            continue
        except ConnectionLost:
            break
        if not messages:
            break
        dispatch(run, handler, messages, time.perf_counter_ns())
    run.connection_lost(client)


async def log_in_all(
    run: Run,
    nursery: trio.Nursery,
    names: Sequence[str],
    handlers: Sequence[Handler],
    then: Callable[[int, Client], Awaitable[None]] | None = None,
) -> list[Client]:
    """Log in as each of *names*, ``--conc`` at a time, in that order; each
    connection's reader starts (in *nursery*) as soon as it is logged in,
    or the run's shared reader (``Run.reader``) takes it over.
    *then*, if given, is awaited with each one's index and client after
    that, still counted among the ``--conc`` in flight (the rooms
    scenario joins its rooms there)."""
    clients: list[Client | None] = [None] * len(names)
    limiter = trio.CapacityLimiter(run.settings.conc)

    async def one(index: int) -> None:
        async with limiter:
            client, fed = await _log_in(run, names[index])
            clients[index] = client
            if run.reader is None or fed is None:
                nursery.start_soon(_read, run, client, handlers[index])
            else:
                await run.reader.add(client, fed, handlers[index])
            if then is not None:
                await then(index, client)

    async with trio.open_nursery() as logins:
        for index in range(len(names)):
            logins.start_soon(one, index)
    return [client for client in clients if client is not None]


async def run_window(
    run: Run,
    lots: Sequence[trio.lowlevel.ParkingLot],
    senders: Sequence[Callable[[], Awaitable[None]]],
) -> None:
    """Start the window and run *senders* until it ends (the clock wakes
    *lots* then); wait, at most ``--drain``, for what is still in flight."""
    run.start_window()
    with trio.move_on_at(trio_time(run.window_end) + run.settings.drain):
        async with trio.open_nursery() as traffic:
            traffic.start_soon(run.clock, lots)
            for sender in senders:
                traffic.start_soon(sender)
        run.sent_all = True
        run.check_drained()
        await run.drained.wait()
