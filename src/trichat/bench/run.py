"""One run's shared state: its counters and clocks (``Run``), how it shows
progress (``Progress``), and what a reader does with a connection's
frames (``Handler``). Apart from ``traffic`` so that the reader
(``reader``) can use them without importing the scenarios' plumbing,
which imports the reader.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from array import array
from collections.abc import Sequence
from typing import TextIO

import trio

from ..client.library import BadServerFrame, Client, ConnectionLost
from ..protocol.messages import Delivery, Error, Message
from .settings import Settings
from .usage import Usage

__all__ = [
    "NS",
    "BenchError",
    "Handler",
    "Progress",
    "Run",
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
