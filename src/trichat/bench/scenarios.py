"""The five loads ``trichat bench`` offers, after the Go load generator in
``shared/bench/loadgen``.

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
``rooms``
    ``--users`` users join ``--rooms-each`` of ``--rooms`` rooms each and
    talk to them at ``-R`` messages a second in all, open loop (in
    ``rooms``).

``run_scenario`` runs the one the settings name.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..client.library import Client
from ..protocol.messages import BROADCAST, Delivery, Error, ErrorCode, Message
from .latency import parse_stamp, percentile, stamp
from .rooms import run_rooms
from .run import NS, BenchError, Handler, Run, sleep_until_ns
from .traffic import Flow, log_in_all, run_window
from .usage import Usage, rss_kb_or_none

__all__ = ["run_scenario"]

# Refusals that mean "this message was not delivered", so its slot frees.
_REFUSALS = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.NO_SUCH_USER})


def _delivery_result(run: Run, result: dict[str, Any]) -> None:
    """What the window's messages came to: refused, lost, and throughput."""
    result["refused"] = run.refused
    result["lost"] = run.expected - run.delivered - run.refused
    result["msgs_per_s"] = round(run.in_window / run.settings.duration)


# -- dm and rate: pairs ------------------------------------------------------------


class _Pair(Flow):
    """A sender and its receiver; handles both connections' frames."""

    def __init__(self, run: Run, sender: str, receiver: str) -> None:
        super().__init__(run)
        self.sender_name = sender
        self.receiver_name = receiver
        self.sent = 0
        self.done = 0
        """Messages delivered or refused."""

    def talk(self, delivery: Delivery | Message, now: int) -> None:
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


async def _dm_sender(run: Run, pair: _Pair, client: Client) -> None:
    window = run.settings.in_flight
    size = run.settings.size
    to = pair.receiver_name
    seq = 0
    while not run.stopping:
        room = window - (pair.sent - pair.done)
        if room <= 0:
            await pair.lot.park()
            continue
        now = time.perf_counter_ns()
        texts = [stamp(now, seq + i, size) for i in range(room)]
        seq += room
        pair.sent += room
        run.sent += room
        run.expected += room
        if not await run.send(client, to, texts):
            return


async def _rate_sender(run: Run, pair: _Pair, client: Client, index: int) -> None:
    settings = run.settings
    size = settings.size
    to = pair.receiver_name
    # Sender i sends at R/P msgs/s, shifted by i/P of its interval.
    interval = settings.pairs * NS / settings.offered
    base = run.traffic_start + interval * index / settings.pairs
    end = run.window_end
    seq = 0
    due = round(base)
    while due < end:
        now = time.perf_counter_ns()
        if now < due:
            await sleep_until_ns(due)
            now = time.perf_counter_ns()
        first = due
        texts = []
        while due <= now and due < end:
            texts.append(stamp(due, seq, size))
            seq += 1
            due = round(base + seq * interval)
        if first >= run.window_start:
            run.late.append(now - first)
        count = len(texts)
        pair.sent += count
        run.sent += count
        run.expected += count
        if not await run.send(client, to, texts):
            return


async def _pairs(run: Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.pairs
    pairs = [
        _Pair(run, settings.name("s", i), settings.name("r", i)) for i in range(count)
    ]
    run.set_phase("logging in")
    # Receivers first, so that no message finds its recipient missing.
    await log_in_all(run, nursery, [p.receiver_name for p in pairs], pairs)
    senders = await log_in_all(run, nursery, [p.sender_name for p in pairs], pairs)
    tasks: list[Callable[[], Awaitable[None]]] = []
    for index, (pair, client) in enumerate(zip(pairs, senders, strict=True)):
        if settings.scenario == "rate":
            tasks.append(functools.partial(_rate_sender, run, pair, client, index))
        else:
            tasks.append(functools.partial(_dm_sender, run, pair, client))
    await run_window(run, [p.lot for p in pairs], tasks)
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


class _Fanout(Flow):
    """The broadcasts in flight, and how many receivers each still lacks."""

    def __init__(self, run: Run, sender: str, receivers: int) -> None:
        super().__init__(run)
        self.sender_name = sender
        self.receivers = receivers
        self.pending: dict[int, int] = {}
        self.refused = 0
        self.completed = 0

    def talk(self, delivery: Delivery | Message, now: int) -> None:
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


async def _fanout_sender(run: Run, fan: _Fanout, client: Client) -> None:
    window = run.settings.in_flight
    size = run.settings.size
    receivers = fan.receivers
    pending = fan.pending
    seq = 0
    while not run.stopping:
        room = window - (len(pending) - fan.refused)
        if room <= 0:
            await fan.lot.park()
            continue
        now = time.perf_counter_ns()
        texts = []
        for _ in range(room):
            pending[seq] = receivers
            texts.append(stamp(now, seq, size))
            seq += 1
        run.sent += room
        run.expected += room * receivers
        if not await run.send(client, BROADCAST, texts):
            return


async def _fanout(run: Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.receivers
    fan = _Fanout(run, settings.name("s", 0), count)
    run.set_phase("logging in")
    names = [settings.name("r", i) for i in range(count)]
    await log_in_all(run, nursery, names, [fan] * count)
    # The sender last: every receiver is online before the first broadcast.
    (sender,) = await log_in_all(run, nursery, [fan.sender_name], [fan])
    await run_window(
        run, [fan.lot], [functools.partial(_fanout_sender, run, fan, sender)]
    )
    result["bcasts_sent"] = run.sent
    result["bcasts_complete"] = fan.completed
    result["deliveries"] = run.delivered
    _delivery_result(run, result)
    result["bcasts_per_s"] = round(run.in_window / settings.duration / count, 3)


# -- idle --------------------------------------------------------------------------


class _Idle(Handler):
    """Counts presence frames; times the broadcasts of connection 0."""

    def __init__(self, run: Run, sender: str, target: int) -> None:
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

    def talk(self, delivery: Delivery | Message, now: int) -> None:
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


async def _idle(run: Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    settings = run.settings
    count = settings.connections
    pid = settings.pid
    names = [settings.name("c", i) for i in range(count)]
    idle = _Idle(run, names[0], count * count)
    rss0 = rss_kb_or_none(pid)
    if rss0 is not None:
        result["rss0_kb"] = rss0
    run.set_phase("logging in")
    run.usage_start = Usage.now(pid)
    began = time.perf_counter()
    with trio.move_on_after(settings.deadline) as login_scope:
        clients = await log_in_all(run, nursery, names, [idle] * count)
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
        rss = rss_kb_or_none(pid)
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
        text = stamp(sent_ns, seq, settings.size)
        if not await run.send(sender, BROADCAST, [text]):
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
    rss_after = rss_kb_or_none(pid)
    if rss_after is not None:
        result["rss_after_kb"] = rss_after


_RUNS: dict[str, Callable[[Run, trio.Nursery, dict[str, Any]], Awaitable[None]]] = {
    "dm": _pairs,
    "rate": _pairs,
    "fanout": _fanout,
    "idle": _idle,
    "rooms": run_rooms,
}


async def run_scenario(run: Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    """Run the run's scenario, its readers in *nursery*; what it measured
    goes into *result*."""
    await _RUNS[run.settings.scenario](run, nursery, result)
