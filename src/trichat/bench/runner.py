"""``trichat bench``: load-test any trichat server to size a deployment.

Four scenarios, after the Go load generator in ``shared/bench/loadgen``:

``dm``
    Closed loop: ``-P`` pairs, each sender keeps ``-W`` direct messages in
    flight; a slot frees when the message reaches its recipient.
``fanout``
    Closed loop: one sender broadcasts (``talk|*|...``) to ``-N`` receivers,
    ``-W`` broadcasts in flight; a broadcast is in flight until every
    receiver has it.
``rate``
    Open loop: ``-R`` messages a second in all over ``-P`` pairs, each sent
    on a fixed schedule and stamped with its *scheduled* time, so a late
    send (by the generator or through the server's backpressure) counts as
    latency.
``idle``
    ``-C`` connections log in, ``--conc`` at a time; the time until all are
    logged in and all presence frames have arrived, then ``-K`` broadcasts
    timed one after another.

Every message's TEXT is ``<send-time-ns> <seq> xxx...``, padded to
``--size``; latency is the receive time minus that stamp, both on this
process's monotonic clock. The generator is one Python process on one core:
it measures its own CPU time and says when it, not the server, was the
limit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import re
import resource
import socket
import string
import struct
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from .. import __version__
from .._process import raise_file_limit, until_interrupted
from ..protocol._codec import ProtocolError, Role
from ..protocol.connection import CLOSED, NEED_DATA, Connection
from ..protocol.messages import (
    BROADCAST,
    MAX_NAME,
    MAX_TEXT,
    Delivery,
    Error,
    ErrorCode,
    Exit,
    Login,
    Ping,
    Pong,
    Talk,
    check_name,
    name_key,
)

__all__ = [
    "SCENARIOS",
    "BenchError",
    "Progress",
    "Settings",
    "Usage",
    "add_arguments",
    "format_report",
    "loop_note",
    "main",
    "parse_duration",
    "parse_stamp",
    "percentile",
    "process_cpu",
    "process_cpu_wait",
    "process_rss_kb",
    "run_bench",
    "stamp",
    "summarize_latencies",
    "talk_frame",
    "talk_prefix",
    "usage_summary",
]

SCENARIOS = ("dm", "fanout", "rate", "idle")
DEFAULT_PORT = 8089
"""The port ``trichat serve`` listens on by default."""

# Generator CPU, in % of one core, from which it counts as the bottleneck.
BOTTLENECK_PCT = 90.0
# Rate scenario: warn when the generator's schedule slips this much (p99).
LATE_WARNING_MS = 5.0
# Warn when a process waited this much of the window (%) for a CPU.
CPU_WAIT_WARNING_PCT = 10.0

_RECEIVE_SIZE = 65536
_NS = 1_000_000_000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_NO_LINGER = struct.pack("ii", 1, 0)
# Refusals that mean "this message was not delivered", so its slot frees.
_REFUSALS = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.NO_SUCH_USER})


class BenchError(Exception):
    """The run could not be carried out (no connection, a refused login...)."""


# -- pure parts: durations, stamps, percentiles -------------------------------

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in *text*: ``10``, ``2.5s``, ``500ms``, ``2m`` or ``1h``."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (try 10, 10s, 500ms or 2m)"
        )
    return float(match[1]) * _UNITS[match[2]]


def stamp(sent_ns: int, seq: int, size: int) -> str:
    """Message TEXT carrying *sent_ns* and *seq*, padded with ``x`` to *size*.

    The stamp itself is never cut: a *size* below its length gives just the
    stamp.
    """
    head = f"{sent_ns} {seq}"
    pad = size - len(head)
    if pad <= 0:
        return head
    return head + " " + "x" * (pad - 1)


def parse_stamp(text: str) -> tuple[int, int]:
    """The send time (ns) and sequence number that ``stamp`` put in *text*.

    Raises ValueError for text that ``stamp`` did not make.
    """
    parts = text.split(" ", 2)
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise ValueError(f"not a bench stamp: {text[:40]!r}")
    return int(parts[0]), int(parts[1])


def percentile(ordered: Sequence[int] | Sequence[float], q: float) -> float:
    """The *q*-th percentile (0 < q <= 100) of the sorted *ordered*, by
    nearest rank: the smallest value with at least q% of them at or below it.
    """
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    # The epsilon keeps float error from bumping an exact rank
    # (99.9% of 1000 values is the 999th, not the 1000th).
    rank = math.ceil(q * len(ordered) / 100 - 1e-9)
    return ordered[max(rank, 1) - 1]


def summarize_latencies(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of *latencies_ns*, in milliseconds."""
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)
    summary = {
        f"{name}_ms": round(percentile(ordered, q) / 1e6, 3)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
    }
    summary["max_ms"] = round(ordered[-1] / 1e6, 3)
    summary["mean_ms"] = round(sum(ordered) / len(ordered) / 1e6, 3)
    return summary


def talk_prefix(conn: Connection, to: str) -> bytes:
    """The start of every ``talk|TO|TEXT`` frame to *to*, up to its TEXT,
    as *conn*'s codec encodes it (so stamped frames are built by appending)."""
    frame = conn.send(Talk(to, "x"))
    if not frame.endswith(b"|x\n"):  # pragma: no cover - the codec changed
        raise RuntimeError(f"unexpected talk frame {frame!r}")
    return frame[:-2]


def talk_frame(prefix: bytes, sent_ns: int, seq: int, size: int) -> bytes:
    """A stamped ``talk`` frame: *prefix* (from ``talk_prefix``) and TEXT."""
    return prefix + stamp(sent_ns, seq, size).encode() + b"\n"


# -- settings ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One run's parameters; the command line's flags, checked."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scenario: str = "dm"
    pairs: int = 50
    in_flight: int = 16
    receivers: int = 200
    connections: int = 2000
    broadcasts: int = 5
    rate: float = 20000.0
    duration: float = 10.0
    warmup: float = 1.0
    drain: float = 5.0
    settle: float = 120.0
    login_timeout: float = 120.0
    deadline: float = 300.0
    size: int = 64
    conc: int = 8
    pid: int | None = None
    prefix: str = "bxx"
    json: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}")
        for name in ("pairs", "in_flight", "receivers", "connections", "conc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.broadcasts < 0:
            raise ValueError("broadcasts must not be negative")
        if not 1 <= self.size <= MAX_TEXT:
            raise ValueError(f"size must be 1 to {MAX_TEXT} (characters of TEXT)")
        if not self.rate > 0:
            raise ValueError("rate must be positive")
        for name in ("duration", "login_timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("warmup", "drain", "settle"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.pid is not None and self.pid < 1:
            raise ValueError("pid must be positive")
        longest = self.name("s", max(self.pairs, self.receivers, self.connections))
        if len(longest) > MAX_NAME:
            raise ValueError(f"prefix too long: names like {longest!r} break the rules")
        check_name(longest)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Settings from ``add_arguments``' options; ValueError if unusable."""
        prefix = args.prefix
        if prefix is None:
            prefix = "b" + "".join(random.choices(string.ascii_lowercase, k=2))
        return cls(
            host=args.host,
            port=args.port,
            scenario=args.scenario,
            pairs=args.pairs,
            in_flight=args.in_flight,
            receivers=args.receivers,
            connections=args.connections,
            broadcasts=args.broadcasts,
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
            drain=args.drain,
            settle=args.settle,
            login_timeout=args.login_timeout,
            deadline=args.deadline,
            size=args.size,
            conc=args.conc,
            pid=args.pid,
            prefix=prefix,
            json=args.json,
            quiet=args.quiet,
        )

    def name(self, role: str, index: int) -> str:
        return f"{self.prefix}{role}{index}"

    @property
    def sockets(self) -> int:
        """How many connections the run opens."""
        if self.scenario == "idle":
            return self.connections
        if self.scenario == "fanout":
            return self.receivers + 1
        return 2 * self.pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``trichat bench``'s options to *parser*."""
    d = Settings()
    parser.epilog = (
        "Durations take a unit: 10s, 500ms, 2m (a bare number is seconds). "
        "Benchmark a server started with --rate 0, or its per-client rate "
        "limit is what you measure."
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", default=d.host, help="server address (%(default)s)")
    target.add_argument(
        "--port", type=int, default=d.port, help="server port (%(default)s)"
    )
    target.add_argument(
        "--pid",
        type=int,
        help="the server's process id, to report its CPU time and memory "
        "(VmRSS) from /proc; the server must run on this machine",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-s",
        "--scenario",
        choices=SCENARIOS,
        default=d.scenario,
        help="dm: pairs in a closed loop; fanout: one sender broadcasting to -N; "
        "rate: open loop at -R msgs/s; idle: -C connections log in "
        "(%(default)s)",
    )
    load.add_argument(
        "-P",
        "--pairs",
        type=int,
        default=d.pairs,
        help="dm, rate: sender->receiver pairs (%(default)s)",
    )
    load.add_argument(
        "-W",
        "--in-flight",
        type=int,
        default=d.in_flight,
        help="dm: messages in flight per pair; fanout: broadcasts in flight "
        "(%(default)s)",
    )
    load.add_argument(
        "-N",
        "--receivers",
        type=int,
        default=d.receivers,
        help="fanout: receivers (%(default)s)",
    )
    load.add_argument(
        "-C",
        "--connections",
        type=int,
        default=d.connections,
        help="idle: connections (%(default)s)",
    )
    load.add_argument(
        "-K",
        "--broadcasts",
        type=int,
        default=d.broadcasts,
        help="idle: broadcasts timed after the logins (%(default)s)",
    )
    load.add_argument(
        "-R",
        "--rate",
        type=float,
        default=d.rate,
        help="rate: messages/s offered in all (%(default)g)",
    )
    load.add_argument(
        "--size",
        type=int,
        default=d.size,
        help="TEXT characters per message, stamp included (%(default)s)",
    )
    load.add_argument(
        "--conc",
        type=int,
        default=d.conc,
        help="logins in flight at a time (%(default)s)",
    )
    load.add_argument(
        "--prefix",
        help="user name prefix (default: b and two random letters)",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "-D",
        "--duration",
        type=parse_duration,
        default=d.duration,
        help="measured window (%(default)gs)",
    )
    timing.add_argument(
        "--warmup",
        type=parse_duration,
        default=d.warmup,
        help="traffic before the window, not counted (%(default)gs)",
    )
    timing.add_argument(
        "--drain",
        type=parse_duration,
        default=d.drain,
        help="longest wait for messages in flight after the window; idle: for "
        "each timed broadcast (%(default)gs)",
    )
    timing.add_argument(
        "--settle",
        type=parse_duration,
        default=d.settle,
        help="idle: longest wait for the presence frames (%(default)gs)",
    )
    timing.add_argument(
        "--login-timeout",
        type=parse_duration,
        default=d.login_timeout,
        help="longest wait for one login (%(default)gs)",
    )
    timing.add_argument(
        "--deadline",
        type=parse_duration,
        default=d.deadline,
        help="idle: longest time for all the logins (%(default)gs)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="print one JSON object, not a table"
    )
    output.add_argument(
        "-q", "--quiet", action="store_true", help="no progress on stderr"
    )


# -- CPU and memory ----------------------------------------------------------------


def process_cpu(pid: int | str) -> float:
    """User + system CPU seconds of process *pid* (not its children)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
        data = file.read()
    # Fields after the command name, which may hold spaces and parentheses;
    # utime and stime are fields 14 and 15 of the whole line.
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_rss_kb(pid: int) -> int:
    """Resident memory (VmRSS) of process *pid*, in KiB."""
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError(f"no VmRSS for process {pid}")


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return process_rss_kb(pid)
    except (OSError, ValueError, IndexError):
        return None


def process_cpu_wait(pid: int | str) -> float:
    """Seconds the threads of process *pid* spent runnable but waiting for a
    CPU (the run-queue delay in ``/proc/PID/task/*/schedstat``)."""
    total = 0
    tasks = f"/proc/{pid}/task"
    for task in os.listdir(tasks):
        try:
            with open(f"{tasks}/{task}/schedstat", encoding="ascii") as file:
                total += int(file.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / _NS


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maybe(read: Callable[[int | str], float], pid: int | str | None) -> float | None:
    if pid is None:
        return None
    try:
        return read(pid)
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Usage:
    """CPU counters at one moment: the wall clock, ours and the server's CPU
    time, and how long each has waited for a CPU (None: unknown)."""

    wall: float
    cpu: float
    wait: float | None
    server_cpu: float | None
    server_wait: float | None

    @classmethod
    def now(cls, pid: int | None) -> Usage:
        return cls(
            time.perf_counter(),
            _own_cpu(),
            _maybe(process_cpu_wait, "self"),
            _maybe(process_cpu, pid),
            _maybe(process_cpu_wait, pid),
        )


# -- one run ---------------------------------------------------------------------


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _trio_time(at_ns: int) -> float:
    """The Trio clock's reading at perf_counter_ns() == *at_ns*."""
    return trio.current_time() + (at_ns - time.perf_counter_ns()) / _NS


async def _sleep_until_ns(at_ns: int) -> None:
    await trio.sleep_until(_trio_time(at_ns))


class _Client:
    """One bench user: a TCP stream and the client side of the protocol."""

    __slots__ = ("conn", "lock", "name", "stream")

    def __init__(self, name: str, stream: trio.SocketStream) -> None:
        self.name = name
        self.stream = stream
        self.conn = Connection(Role.CLIENT)
        # The reader answers pings while a sender may be writing.
        self.lock = trio.StrictFIFOLock()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)

    def abort(self) -> None:
        """Close at once with a reset, leaving no TIME_WAIT behind."""
        with contextlib.suppress(OSError):
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        self.stream.socket.close()


class _Handler:
    """What a reader does with the frames of one connection; by default,
    nothing beyond counting errors."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def talk(self, delivery: Delivery, now: int) -> None:
        pass

    def login(self, name: str) -> None:
        pass

    def error(self, error: Error) -> None:
        self.run.server_error(error)

    def chunk_done(self) -> None:
        pass


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

    def phase(self, run: _Run, text: str) -> None:
        if self.plain and self.stream is not None:
            print(f"trichat bench: {run.settings.scenario}: {text}", file=self.stream)

    async def show(self, run: _Run) -> None:
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


class _Run:
    """Counters and clocks shared by one run's tasks."""

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.phase = "starting"
        self.began = time.perf_counter()
        self.clients: list[_Client] = []
        # When traffic starts (warmup) and the measured window, on the
        # perf_counter_ns clock.
        self.traffic_start = 0
        self.window_start = 0
        self.window_end = 0
        self.stopping = False
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
        self.presence = 0

    def set_phase(self, text: str) -> None:
        self.phase = text
        self.progress.phase(self, text)

    def arrived(self, now: int, sent_ns: int) -> None:
        self.delivered += 1
        if self.window_start <= now < self.window_end:
            self.in_window += 1
            self.latencies.append(now - sent_ns)

    def check_drained(self) -> None:
        if self.stopping and self.delivered + self.refused >= self.expected:
            self.drained.set()

    def server_error(self, error: Error) -> None:
        self.errors += 1
        code = error.code.value
        self.error_codes[code] = self.error_codes.get(code, 0) + 1
        self.last_error = f"error|{code}|{error.detail}"

    def bad_frame(self, error: ProtocolError) -> None:
        self.errors += 1
        self.error_codes["bad-frame-from-server"] = (
            self.error_codes.get("bad-frame-from-server", 0) + 1
        )
        self.last_error = f"the server sent a bad frame: {error}"

    def connection_lost(self, client: _Client) -> None:
        if self.live and client.name not in self._lost:
            self._lost.add(client.name)
            self.conns_lost += 1

    async def send(self, client: _Client, data: bytes) -> bool:
        """Send *data* on *client*; False (and counted) if the connection broke."""
        try:
            await client.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.connection_lost(client)
            return False
        return True

    async def clock(self, wake: Sequence[trio.lowlevel.ParkingLot] = ()) -> None:
        """Sample CPU at the window's edges; stop the senders at its end."""
        pid = self.settings.pid
        await _sleep_until_ns(self.window_start)
        self.usage_start = Usage.now(pid)
        self.set_phase("measuring")
        await _sleep_until_ns(self.window_end)
        self.usage_end = Usage.now(pid)
        self.stopping = True
        self.set_phase("draining")
        for lot in wake:
            lot.unpark_all()
        self.check_drained()

    def start_window(self) -> None:
        """Start the traffic now: the warmup, then the measured window."""
        self.traffic_start = time.perf_counter_ns()
        self.window_start = self.traffic_start + round(self.settings.warmup * _NS)
        self.window_end = self.window_start + round(self.settings.duration * _NS)
        self.set_phase("warming up" if self.settings.warmup else "measuring")


async def _log_in(run: _Run, name: str) -> _Client:
    """Connect and log in as *name*; BenchError if that fails."""
    settings = run.settings
    try:
        stream = await trio.open_tcp_stream(settings.host, settings.port)
    except OSError as error:
        raise BenchError(
            f"cannot connect to {settings.host}:{settings.port}: {error}"
        ) from None
    client = _Client(name, stream)
    run.clients.append(client)
    conn = client.conn
    key = name_key(name)
    try:
        with trio.fail_after(settings.login_timeout):
            await client.send(conn.send(Login(name)))
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
                elif event is CLOSED:
                    raise BenchError(
                        f"the server closed {name}'s connection before its login "
                        "was acknowledged"
                    )
                elif isinstance(event, Login) and name_key(event.name) == key:
                    run.logged_in += 1
                    run.presence += 1
                    return client
                elif isinstance(event, Error):
                    hint = ""
                    if event.code is ErrorCode.TOO_MANY_CONNECTIONS:
                        hint = " (raise the server's --max-per-ip)"
                    elif event.code is ErrorCode.SERVER_FULL:
                        hint = " (raise the server's --max-clients)"
                    raise BenchError(
                        f"{name} could not log in: error|{event.code.value}|"
                        f"{event.detail}{hint}"
                    )
                elif isinstance(event, Ping):
                    await client.send(conn.send(Pong(event.token)))
    except trio.TooSlowError:
        raise BenchError(
            f"{name}: no login acknowledgement within {settings.login_timeout:g} s"
        ) from None
    except ProtocolError as error:
        raise BenchError(f"{name}: the server sent a bad frame: {error}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
        raise BenchError(f"{name}: connection lost while logging in: {error}") from None


async def _read(run: _Run, client: _Client, handler: _Handler) -> None:
    """Read *client*'s frames until the connection ends, handing them on."""
    conn = client.conn
    receive_some = client.stream.receive_some
    now = time.perf_counter_ns()
    try:
        while True:
            while True:
                try:
                    event = conn.next_event()
                except ProtocolError as error:
                    run.bad_frame(error)
                    continue
                if type(event) is Delivery:
                    handler.talk(event, now)
                elif event is NEED_DATA:
                    break
                elif event is CLOSED:
                    run.connection_lost(client)
                    return
                elif isinstance(event, Login):
                    handler.login(event.name)
                elif isinstance(event, Ping):
                    await client.send(conn.send(Pong(event.token)))
                elif isinstance(event, Error):
                    handler.error(event)
                elif isinstance(event, Exit):
                    run.exits_seen += 1
            handler.chunk_done()
            data = await receive_some(_RECEIVE_SIZE)
            now = time.perf_counter_ns()
            conn.receive_data(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        run.connection_lost(client)


async def _log_in_all(
    run: _Run,
    nursery: trio.Nursery,
    names: Sequence[str],
    handlers: Sequence[_Handler],
) -> list[_Client]:
    """Log in as each of *names*, ``--conc`` at a time, in that order; each
    connection's reader starts (in *nursery*) as soon as it is logged in."""
    clients: list[_Client | None] = [None] * len(names)
    limiter = trio.CapacityLimiter(run.settings.conc)

    async def one(index: int) -> None:
        async with limiter:
            client = await _log_in(run, names[index])
        clients[index] = client
        nursery.start_soon(_read, run, client, handlers[index])

    async with trio.open_nursery() as logins:
        for index in range(len(names)):
            logins.start_soon(one, index)
    return [client for client in clients if client is not None]


class _Flow(_Handler):
    """A handler whose sender parks in ``lot`` until there is room for
    more: each chunk read wakes it, and once the run is stopping, checks
    whether everything in flight has arrived."""

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        self.lot = trio.lowlevel.ParkingLot()

    def chunk_done(self) -> None:
        if self.lot:
            self.lot.unpark_all()
        if self.run.stopping:
            self.run.check_drained()


async def _traffic(
    run: _Run,
    lots: Sequence[trio.lowlevel.ParkingLot],
    senders: Sequence[Callable[[], Awaitable[None]]],
) -> None:
    """Start the window and run *senders* until it ends (the clock wakes
    *lots* then); wait, at most ``--drain``, for what is still in flight."""
    run.start_window()
    with trio.move_on_at(_trio_time(run.window_end) + run.settings.drain):
        async with trio.open_nursery() as traffic:
            traffic.start_soon(run.clock, lots)
            for sender in senders:
                traffic.start_soon(sender)
        await run.drained.wait()


def _delivery_result(run: _Run, result: dict[str, Any]) -> None:
    """What the window's messages came to: refused, lost, and throughput."""
    result["refused"] = run.refused
    result["lost"] = run.expected - run.delivered - run.refused
    result["msgs_per_s"] = round(run.in_window / run.settings.duration)


# -- dm and rate: pairs ------------------------------------------------------------


class _Pair(_Flow):
    """A sender and its receiver; handles both connections' frames."""

    def __init__(self, run: _Run, sender: str, receiver: str) -> None:
        super().__init__(run)
        self.sender_name = sender
        self.receiver_name = receiver
        self.sent = 0
        self.done = 0
        """Messages delivered or refused."""

    def talk(self, delivery: Delivery, now: int) -> None:
        if delivery.sender != self.sender_name:
            return  # someone else's message
        try:
            sent_ns = parse_stamp(delivery.text)[0]
        except ValueError:
            self.run.bad_stamps += 1
            return
        self.done += 1
        self.run.arrived(now, sent_ns)

    def error(self, error: Error) -> None:
        self.run.server_error(error)
        if error.code in _REFUSALS:
            self.done += 1
            self.run.refused += 1
            self.lot.unpark_all()


async def _dm_sender(run: _Run, pair: _Pair, client: _Client) -> None:
    window = run.settings.in_flight
    size = run.settings.size
    prefix = talk_prefix(client.conn, pair.receiver_name)
    seq = 0
    while not run.stopping:
        room = window - (pair.sent - pair.done)
        if room <= 0:
            await pair.lot.park()
            continue
        now = time.perf_counter_ns()
        data = b"".join([talk_frame(prefix, now, seq + i, size) for i in range(room)])
        seq += room
        pair.sent += room
        run.sent += room
        run.expected += room
        if not await run.send(client, data):
            return


async def _rate_sender(run: _Run, pair: _Pair, client: _Client, index: int) -> None:
    settings = run.settings
    size = settings.size
    prefix = talk_prefix(client.conn, pair.receiver_name)
    # Sender i sends at R/P msgs/s, shifted by i/P of its interval.
    interval = settings.pairs * _NS / settings.rate
    base = run.traffic_start + interval * index / settings.pairs
    end = run.window_end
    seq = 0
    due = round(base)
    while due < end:
        now = time.perf_counter_ns()
        if now < due:
            await _sleep_until_ns(due)
            now = time.perf_counter_ns()
        first = due
        frames = []
        while due <= now and due < end:
            frames.append(talk_frame(prefix, due, seq, size))
            seq += 1
            due = round(base + seq * interval)
        if first >= run.window_start:
            run.late.append(now - first)
        count = len(frames)
        pair.sent += count
        run.sent += count
        run.expected += count
        if not await run.send(client, b"".join(frames)):
            return


async def _pairs(run: _Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.pairs
    pairs = [
        _Pair(run, settings.name("s", i), settings.name("r", i)) for i in range(count)
    ]
    run.set_phase("logging in")
    # Receivers first, so that no message finds its recipient missing.
    await _log_in_all(run, nursery, [p.receiver_name for p in pairs], pairs)
    senders = await _log_in_all(run, nursery, [p.sender_name for p in pairs], pairs)
    tasks: list[Callable[[], Awaitable[None]]] = []
    for index, (pair, client) in enumerate(zip(pairs, senders, strict=True)):
        if settings.scenario == "rate":
            tasks.append(functools.partial(_rate_sender, run, pair, client, index))
        else:
            tasks.append(functools.partial(_dm_sender, run, pair, client))
    await _traffic(run, [p.lot for p in pairs], tasks)
    if settings.scenario == "rate":
        sending = settings.warmup + settings.duration
        result["offered_per_s"] = round(run.sent / sending)
        if run.late:
            late = sorted(run.late)
            result["gen_late_p99_ms"] = round(percentile(late, 99) / 1e6, 3)
            result["gen_late_max_ms"] = round(late[-1] / 1e6, 3)
    result["sent"] = run.sent
    result["delivered"] = run.delivered
    _delivery_result(run, result)


# -- fanout ------------------------------------------------------------------------


class _Fanout(_Flow):
    """The broadcasts in flight, and how many receivers each still lacks."""

    def __init__(self, run: _Run, sender: str, receivers: int) -> None:
        super().__init__(run)
        self.sender_name = sender
        self.receivers = receivers
        self.pending: dict[int, int] = {}
        self.refused = 0
        self.completed = 0

    def talk(self, delivery: Delivery, now: int) -> None:
        if delivery.sender != self.sender_name:
            return
        try:
            sent_ns, seq = parse_stamp(delivery.text)
        except ValueError:
            self.run.bad_stamps += 1
            return
        missing = self.pending.get(seq)
        if missing is None:
            self.run.bad_stamps += 1  # a duplicate, or not ours
            return
        if missing > 1:
            self.pending[seq] = missing - 1
        else:
            del self.pending[seq]
            self.completed += 1
        self.run.arrived(now, sent_ns)

    def error(self, error: Error) -> None:
        self.run.server_error(error)
        if error.code is ErrorCode.RATE_LIMITED:
            # A refused broadcast stays pending for good; it no longer counts
            # as in flight.
            self.refused += 1
            self.run.refused += self.receivers
            self.lot.unpark_all()


async def _fanout_sender(run: _Run, fan: _Fanout, client: _Client) -> None:
    window = run.settings.in_flight
    size = run.settings.size
    receivers = fan.receivers
    prefix = talk_prefix(client.conn, BROADCAST)
    pending = fan.pending
    seq = 0
    while not run.stopping:
        room = window - (len(pending) - fan.refused)
        if room <= 0:
            await fan.lot.park()
            continue
        now = time.perf_counter_ns()
        frames = []
        for _ in range(room):
            pending[seq] = receivers
            frames.append(talk_frame(prefix, now, seq, size))
            seq += 1
        run.sent += room
        run.expected += room * receivers
        if not await run.send(client, b"".join(frames)):
            return


async def _fanout(run: _Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.receivers
    fan = _Fanout(run, settings.name("s", 0), count)
    run.set_phase("logging in")
    names = [settings.name("r", i) for i in range(count)]
    await _log_in_all(run, nursery, names, [fan] * count)
    # The sender last: every receiver is online before the first broadcast.
    (sender,) = await _log_in_all(run, nursery, [fan.sender_name], [fan])
    await _traffic(
        run, [fan.lot], [functools.partial(_fanout_sender, run, fan, sender)]
    )
    result["bcasts_sent"] = run.sent
    result["bcasts_complete"] = fan.completed
    result["deliveries"] = run.delivered
    _delivery_result(run, result)
    result["bcasts_per_s"] = round(run.in_window / settings.duration / count, 3)


# -- idle --------------------------------------------------------------------------


class _Idle(_Handler):
    """Counts presence frames; times the broadcasts of connection 0."""

    def __init__(self, run: _Run, sender: str, target: int) -> None:
        super().__init__(run)
        self.sender_name = sender
        self.prefix = run.settings.prefix
        self.target = target
        self.settled = trio.Event()
        self.seq = -1
        self.expect = 0
        self.got = 0
        self.last_ns = 0
        self.all_there = trio.Event()

    def login(self, name: str) -> None:
        if name.startswith(self.prefix):
            run = self.run
            run.presence += 1
            if run.presence >= self.target:
                self.settled.set()

    def talk(self, delivery: Delivery, now: int) -> None:
        if delivery.sender != self.sender_name:
            return
        try:
            sent_ns, seq = parse_stamp(delivery.text)
        except ValueError:
            self.run.bad_stamps += 1
            return
        if seq != self.seq:
            self.run.bad_stamps += 1  # late, from a broadcast given up on
            return
        self.got += 1
        self.last_ns = now
        self.run.arrived(now, sent_ns)
        if self.got >= self.expect:
            self.all_there.set()


async def _idle(run: _Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.connections
    pid = settings.pid
    names = [settings.name("c", i) for i in range(count)]
    idle = _Idle(run, names[0], count * count)
    rss0 = _rss(pid)
    if rss0 is not None:
        result["rss0_kb"] = rss0
    run.set_phase("logging in")
    run.usage_start = Usage.now(pid)
    began = time.perf_counter()
    with trio.move_on_after(settings.deadline) as login_scope:
        clients = await _log_in_all(run, nursery, names, [idle] * count)
    if login_scope.cancelled_caught:
        raise BenchError(
            f"only {run.logged_in} of {count} connections logged in within "
            f"{settings.deadline:g} s (--deadline)"
        )
    logged_in = time.perf_counter()
    result["login_s"] = round(logged_in - began, 3)
    result["logins_per_s"] = round(count / (logged_in - began))
    run.set_phase("settling")
    if run.presence >= idle.target:
        idle.settled.set()
    with trio.move_on_after(settings.settle):
        await idle.settled.wait()
    run.usage_end = Usage.now(pid)
    result["presence_frames"] = run.presence
    result["presence_expected"] = idle.target
    if not idle.settled.is_set():
        result["warnings"].append(
            f"only {run.presence:,} of {idle.target:,} presence frames arrived "
            f"within {settings.settle:g} s (--settle)"
        )
    else:
        result["settle_s"] = round(run.usage_end.wall - logged_in, 3)
    if pid is not None:
        await trio.sleep(0.3)
        rss = _rss(pid)
        if rss is not None and rss0 is not None:
            result["rss_kb"] = rss
            result["rss_per_conn_kb"] = round((rss - rss0) / count, 3)
    if count < 2 or not settings.broadcasts:
        return
    run.set_phase("broadcasting")
    run.window_start, run.window_end = 0, 2**63 - 1
    sender = clients[0]
    fulls: list[float] = []
    for seq in range(settings.broadcasts):
        idle.seq, idle.expect, idle.got = seq, count - 1, 0
        idle.all_there = trio.Event()
        sent_ns = time.perf_counter_ns()
        run.sent += 1
        run.expected += count - 1
        data = sender.conn.send(Talk(BROADCAST, stamp(sent_ns, seq, settings.size)))
        if not await run.send(sender, data):
            break
        with trio.move_on_after(settings.drain):
            await idle.all_there.wait()
        if idle.all_there.is_set():
            fulls.append((idle.last_ns - sent_ns) / 1e6)
    result["bcasts_sent"] = run.sent
    result["bcasts_complete"] = len(fulls)
    result["deliveries"] = run.delivered
    result["lost"] = run.expected - run.delivered
    if fulls:
        result["bcast_full_ms_median"] = round(sorted(fulls)[len(fulls) // 2], 3)
    rss_after = _rss(pid)
    if rss_after is not None:
        result["rss_after_kb"] = rss_after


_SCENARIO_RUNS: dict[
    str, Callable[[_Run, trio.Nursery, dict[str, Any]], Awaitable[None]]
] = {
    "dm": _pairs,
    "rate": _pairs,
    "fanout": _fanout,
    "idle": _idle,
}


def _begin_result(settings: Settings) -> dict[str, Any]:
    return {
        "tool": "trichat bench",
        "version": __version__,
        "proto": "trichat",
        "scenario": settings.scenario,
        "addr": f"{settings.host}:{settings.port}",
        "size": settings.size,
        "D_s": settings.duration,
        "warmup_s": settings.warmup,
        "prefix": settings.prefix,
        **_parameters(settings),
        "ok": True,
        "warnings": [],
    }


def _parameters(settings: Settings) -> dict[str, Any]:
    """The load's parameters under the Go generator's names."""
    if settings.scenario == "dm":
        return {"P": settings.pairs, "W": settings.in_flight}
    if settings.scenario == "rate":
        return {"P": settings.pairs, "R": settings.rate}
    if settings.scenario == "fanout":
        return {"N": settings.receivers, "W": settings.in_flight}
    return {"C": settings.connections, "K": settings.broadcasts, "conc": settings.conc}


def usage_summary(
    start: Usage, end: Usage, cores: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """CPU use between *start* and *end*, and warnings about what it means
    for the numbers; *cores* is the machine's (``os.cpu_count()`` if None)."""
    wall = end.wall - start.wall
    if wall <= 0:
        return {}, []
    cores = cores or os.cpu_count() or 1
    summary: dict[str, Any] = {"window_s": round(wall, 3)}
    warnings = []
    gen_cpu = end.cpu - start.cpu
    gen_pct = gen_cpu / wall * 100
    summary["gen_cpu_s"] = round(gen_cpu, 3)
    summary["gen_cpu_pct"] = round(gen_pct)
    summary["gen_bottleneck"] = gen_pct >= BOTTLENECK_PCT
    if summary["gen_bottleneck"]:
        warnings.append(
            f"the generator used {gen_pct:.0f}% of one core: it was probably "
            "the bottleneck, so these numbers are a lower bound on what the "
            "server can do. Run several generators at once or use the Go "
            "loadgen to push harder."
        )
    waits = []
    if start.wait is not None and end.wait is not None:
        pct = (end.wait - start.wait) / wall * 100
        summary["gen_cpu_wait_pct"] = round(pct)
        if pct >= CPU_WAIT_WARNING_PCT:
            waits.append(f"the generator {pct:.0f}%")
    if start.server_cpu is not None and end.server_cpu is not None:
        server_cpu = end.server_cpu - start.server_cpu
        summary["srv_cpu_s"] = round(server_cpu, 3)
        summary["srv_cpu_pct"] = round(server_cpu / wall * 100)
        if (gen_cpu + server_cpu) / wall >= 0.9 * cores:
            warnings.append(
                f"the generator and the server together kept all {cores} "
                "cores busy: they competed for CPU; run them on separate "
                "machines for a fair measure."
            )
    if start.server_wait is not None and end.server_wait is not None:
        pct = (end.server_wait - start.server_wait) / wall * 100
        summary["srv_cpu_wait_pct"] = round(pct)
        if pct >= CPU_WAIT_WARNING_PCT:
            waits.append(f"the server {pct:.0f}%")
    if waits:
        warnings.append(
            "the CPUs were contended: "
            + " and ".join(waits)
            + " of the window was ready to run but waited for a CPU. Other "
            "processes (or generator and server) competed, so throughput is "
            "understated and latency overstated."
        )
    return summary, warnings


def loop_note(scenario: str, summary: dict[str, Any]) -> str | None:
    """For a closed-loop run in which neither the generator nor the server
    kept a core busy, a note that the rate is not the server's capacity."""
    if scenario not in ("dm", "fanout") or summary.get("gen_bottleneck", True):
        return None
    server = summary.get("srv_cpu_pct")
    if server is None or server >= BOTTLENECK_PCT:
        return None
    return (
        f"neither the server ({server}%) nor the generator "
        f"({summary['gen_cpu_pct']}%) kept a core busy: the closed loop (what "
        "is in flight, and how fast the generator answers) set this rate, "
        "not the server's capacity (for a one-process server). Try a larger "
        "-W or -P, several generators, or the Go loadgen."
    )


def _finish_result(run: _Run, result: dict[str, Any]) -> None:
    settings = run.settings
    result.update(summarize_latencies(run.latencies))
    result["latency_samples"] = len(run.latencies)
    result["errors"] = run.errors
    if run.error_codes:
        result["error_codes"] = dict(run.error_codes)
    if run.last_error:
        result["last_error"] = run.last_error
    result["bad_stamps"] = run.bad_stamps
    result["conns_lost"] = run.conns_lost
    result["exits_seen"] = run.exits_seen
    result["logged_in"] = run.logged_in
    warnings: list[str] = result["warnings"]
    rate_limited = bool(run.error_codes.get(ErrorCode.RATE_LIMITED.value))
    if rate_limited:
        warnings.append(
            "the server rate-limited the generator's users (error|rate-limited): "
            "the numbers measure that limit, not the server's capacity. Start "
            "the server with --rate 0 to benchmark it."
        )
    if run.usage_start is not None and run.usage_end is not None:
        usage, notes = usage_summary(run.usage_start, run.usage_end)
        result.update(usage)
        warnings.extend(notes)
        note = loop_note(settings.scenario, usage)
        if note is not None and not rate_limited:
            warnings.append(note)
    if (
        run.usage_end is not None
        and settings.pid is not None
        and "srv_cpu_s" not in result
    ):
        warnings.append(f"could not read /proc/{settings.pid}/stat: no server CPU")
    if run.conns_lost:
        warnings.append(
            f"the server closed {run.conns_lost} connection(s) during the run "
            "(a client that cannot keep up is dropped)"
        )
    lost = result.get("lost", 0)
    if lost > 0:
        warnings.append(
            f"{lost:,} deliveries had not arrived when the run ended (--drain)"
        )
    late = result.get("gen_late_p99_ms")
    if late is not None and late > LATE_WARNING_MS:
        warnings.append(
            f"the generator fell behind its own schedule (p99 {late:g} ms, max "
            f"{result['gen_late_max_ms']:g} ms late): that delay is in the "
            "latencies; offer less (-R) or use more generators."
        )
    if run.bad_stamps:
        warnings.append(
            f"{run.bad_stamps:,} messages from bench senders had no valid stamp, "
            "came twice, or came after the run had given up on them"
        )


async def run_bench(
    settings: Settings, progress: Progress | None = None
) -> dict[str, Any]:
    """Run one benchmark and return its results (what ``--json`` prints).

    A run that could not be carried out has ``ok`` False and ``error``.
    """
    progress = progress or Progress()
    run = _Run(settings, progress)
    result = _begin_result(settings)
    try:
        if settings.pid is not None:
            try:
                process_cpu(settings.pid)
                process_rss_kb(settings.pid)
            except (OSError, ValueError, IndexError) as error:
                raise BenchError(
                    f"cannot read process {settings.pid} in /proc: {error}"
                ) from None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.show, run)
            await _SCENARIO_RUNS[settings.scenario](run, nursery, result)
            run.live = False
            nursery.cancel_scope.cancel()
    except* BenchError as group:
        result["ok"] = False
        result["error"] = str(_first_leaf(group))
    finally:
        run.live = False
        for client in run.clients:
            client.abort()
        progress.clear()
    _finish_result(run, result)
    return result


# -- the report --------------------------------------------------------------------

# (key, label, unit) in the order the table shows them.
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("msgs_per_s", "throughput", "msg/s"),
    ("bcasts_per_s", "broadcasts", "/s"),
    ("offered_per_s", "offered", "msg/s"),
    ("sent", "sent", "messages"),
    ("delivered", "delivered", "messages"),
    ("bcasts_sent", "broadcasts sent", ""),
    ("bcasts_complete", "complete", "broadcasts"),
    ("deliveries", "deliveries", ""),
    ("lost", "lost", ""),
    ("refused", "refused", ""),
    ("login_s", "all logged in", "s"),
    ("logins_per_s", "login rate", "logins/s"),
    ("settle_s", "presence settled", "s after"),
    ("presence_frames", "presence frames", ""),
    ("p50_ms", "latency p50", "ms"),
    ("p90_ms", "latency p90", "ms"),
    ("p99_ms", "latency p99", "ms"),
    ("max_ms", "latency max", "ms"),
    ("bcast_full_ms_median", "full broadcast", "ms (median)"),
    ("gen_late_p99_ms", "schedule slip p99", "ms"),
    ("gen_late_max_ms", "schedule slip max", "ms"),
    ("errors", "errors", ""),
    ("conns_lost", "connections lost", ""),
    ("gen_cpu_pct", "generator CPU", "% of one core"),
    ("gen_cpu_wait_pct", "generator CPU wait", "% of the window"),
    ("srv_cpu_pct", "server CPU", "% of one core"),
    ("srv_cpu_wait_pct", "server CPU wait", "% of the window"),
    ("rss0_kb", "server RSS before", "KiB"),
    ("rss_kb", "server RSS", "KiB"),
    ("rss_per_conn_kb", "RSS per connection", "KiB"),
)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def _describe(result: dict[str, Any]) -> str:
    scenario = result["scenario"]
    if scenario == "dm":
        load = f"{result.get('P')} pairs, {result.get('W')} in flight each"
    elif scenario == "rate":
        load = f"{result.get('P')} pairs, {_number(result.get('R'))} msg/s offered"
    elif scenario == "fanout":
        load = f"{result.get('N')} receivers, {result.get('W')} broadcasts in flight"
    else:
        load = f"{result.get('C')} connections, {result.get('conc')} logging in at once"
    text = f"trichat bench {scenario} against {result['addr']}: {load}"
    if scenario != "idle":
        text += (
            f", {result['size']}-character messages, {result['D_s']:g} s window "
            f"after {result['warmup_s']:g} s warmup"
        )
    return text


def format_report(result: dict[str, Any]) -> str:
    """The table that ``trichat bench`` prints for *result*."""
    lines = [_describe(result)]
    if not result.get("ok", False):
        lines.append(f"error: {result.get('error', 'the run failed')}")
    for key, label, unit in _ROWS:
        if key not in result:
            continue
        value = _number(result[key])
        if key == "gen_cpu_pct" and "gen_cpu_s" in result:
            unit += f" ({_number(result['gen_cpu_s'])} s CPU)"
        elif key == "srv_cpu_pct" and "srv_cpu_s" in result:
            unit += f" ({_number(result['srv_cpu_s'])} s CPU)"
        lines.append(f"  {label:<20} {value:>12} {unit}".rstrip())
    if result.get("last_error"):
        lines.append(f"  last error: {result['last_error']}")
    lines.extend(f"warning: {warning}" for warning in result.get("warnings", ()))
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """Run ``trichat bench``; 0 when the run was carried out, 1 when it
    could not be, 2 for unusable options, 130 when interrupted."""
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        print(f"trichat bench: {error}", file=sys.stderr)
        return 2
    raise_file_limit(settings.sockets + 64)
    progress = Progress(sys.stderr, quiet=settings.quiet)
    result = None
    try:
        result = trio.run(
            until_interrupted, functools.partial(run_bench, settings, progress)
        )
    except* KeyboardInterrupt:
        pass
    if result is None:
        progress.clear()
        print("trichat bench: interrupted", file=sys.stderr)
        return 130
    if settings.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0 if result["ok"] else 1
