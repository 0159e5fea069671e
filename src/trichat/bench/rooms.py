"""The ``rooms`` scenario: many users in many rooms, talking to them.

``--users`` users log in, ``--conc`` at a time, and each joins its
``--rooms-each`` rooms (``Settings.rooms_of`` deals them out, so every room
has about ``users * rooms_each / rooms`` members); a user counts as in once
the server has acknowledged every one of its joins (its own ``join`` at the
head of each room's join list). The time until all are in is ``join_s``;
then the run waits until every join frame about another member has arrived
(``joins_settled_s``) and reads the server's memory.

Then every user talks to its rooms in turn, open loop: ``--rate`` messages
a second in all, user u's n-th message due at ``(n + u / users) * users /
rate`` seconds after the traffic starts, each stamped with that *scheduled*
time, so a late send counts as latency (as in the ``rate`` scenario). Each
message carries a sequence number of the whole run, and the run keeps how
many of the room's other members still lack it: a delivery of a message
that nobody lacks (a duplicate), or to a user not in the room it names,
counts against the run; what is still lacking after the drain is lost.

It works under both ``--presence`` modes of the server: it waits for no
``login`` frame but its own, and sends nothing to ``*``.

One task reads every connection (``reader.SharedReader``), unless
``--no-shared-reader``: with a task each, the generator spends more on
waking ten thousand readers than the server spends on the deliveries.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..client.library import Client, ConnectionLost
from ..protocol.messages import Error
from .latency import parse_stamp, percentile, stamp
from .reader import SharedReader, available
from .run import NS, BenchError, Handler, Run, sleep_until_ns
from .traffic import log_in_all, run_window
from .usage import Usage, rss_kb_or_none

__all__ = ["run_rooms"]


class _Shared:
    """What the users of one run share: the messages in flight, and the
    count of join frames."""

    def __init__(self, run: Run, sizes: list[int]) -> None:
        self.run = run
        self.pending: dict[int, int] = {}
        """Sequence number -> how many receivers still lack that message."""
        self.seq = 0
        self.misrouted = 0
        # The k-th member to join a room (from 0) gets k members in its
        # join list, and each of those k gets a join about it: 2k frames
        # about others, m(m - 1) for a room of m.
        self.join_frames = sum(m * (m - 1) for m in sizes)
        self.join_frames_seen = 0
        self.settled = trio.Event()


class _User(Handler):
    """One user's reader: its joins, and the deliveries it gets."""

    def __init__(self, shared: _Shared, name: str, rooms: list[str]) -> None:
        super().__init__(shared.run)
        self.shared = shared
        self.name = name
        self.rooms = frozenset(rooms)
        self.to_join = len(rooms)
        self.all_joined = trio.Event()
        self.refusal: Error | None = None

    def joined(self, room: str, name: str) -> None:
        if name != self.name:
            shared = self.shared
            shared.join_frames_seen += 1
            if shared.join_frames_seen >= shared.join_frames:
                shared.settled.set()
            return
        self.to_join -= 1
        if not self.to_join:
            self.run.joined += 1
            self.all_joined.set()

    def error(self, error: Error) -> None:
        self.run.server_error(error)
        if not self.all_joined.is_set():
            self.refusal = error
            self.all_joined.set()

    def delivered(self, sender: str, to: str, text: str, now: int) -> None:
        run = self.run
        try:
            sent_ns, seq = parse_stamp(text)
        except ValueError:
            run.bad_stamps += 1
            return
        if to not in self.rooms:
            self.shared.misrouted += 1
            return
        pending = self.shared.pending
        missing = pending.get(seq)
        if missing is None:
            run.bad_stamps += 1  # a duplicate, or not ours
            return
        if missing > 1:
            pending[seq] = missing - 1
        else:
            del pending[seq]
        run.arrived(now, sent_ns)

    def batch_done(self) -> None:
        if self.run.stopping:
            self.run.check_drained()


async def _join(run: Run, user: _User, client: Client, rooms: list[str]) -> None:
    """Join *rooms* (one write each, without waiting in between) and wait
    until the server has acknowledged them all."""
    try:
        for room in rooms:
            await client.join(room)
    except ConnectionLost as error:
        raise BenchError(f"{user.name} could not join: {error}") from None
    timeout = run.settings.login_timeout
    with trio.move_on_after(timeout):
        await user.all_joined.wait()
    if user.refusal is not None:
        refusal = user.refusal
        raise BenchError(
            f"{user.name} could not join its rooms: error|{refusal.code}|"
            f"{refusal.detail}"
        )
    if not user.all_joined.is_set():
        raise BenchError(
            f"{user.name}: {user.to_join} of {len(rooms)} joins not acknowledged "
            f"within {timeout:g} s (--login-timeout)"
        )


async def _talker(
    run: Run,
    shared: _Shared,
    index: int,
    client: Client,
    rooms: list[str],
    receivers: list[int],
) -> None:
    """User *index*'s messages, to its *rooms* in turn, on its schedule;
    *receivers* are how many others each room has."""
    settings = run.settings
    size = settings.size
    count = len(rooms)
    interval = settings.users * NS / settings.offered
    base = run.traffic_start + interval * index / settings.users
    start, end = run.window_start, run.window_end
    pending = shared.pending
    late = run.late
    n = 0
    due = round(base)
    while due < end:
        now = time.perf_counter_ns()
        if now < due:
            await sleep_until_ns(due)
            now = time.perf_counter_ns()
        while due <= now and due < end:
            slot = n % count
            seq = shared.seq
            shared.seq += 1
            others = receivers[slot]
            if others:
                pending[seq] = others
                run.expected += others
            run.sent += 1
            if due >= start:
                late.append(now - due)
            if not await run.send(client, rooms[slot], [stamp(due, seq, size)]):
                return
            n += 1
            due = round(base + n * interval)


def _join_usage(result: dict[str, Any], start: Usage, end: Usage) -> None:
    """The CPU the generator and the server spent logging in and joining,
    to tell which one set the pace."""
    result["join_gen_cpu_s"] = round(end.cpu - start.cpu, 3)
    if end.server_cpu is not None and start.server_cpu is not None:
        result["join_srv_cpu_s"] = round(end.server_cpu - start.server_cpu, 3)
    if end.server_wait is not None and start.server_wait is not None:
        wall = end.wall - start.wall
        if wall > 0:
            wait = end.server_wait - start.server_wait
            result["join_srv_cpu_wait_pct"] = round(wait / wall * 100)


async def run_rooms(run: Run, nursery: trio.Nursery, result: dict[str, Any]) -> None:
    """The rooms scenario (see the module); its readers run in *nursery*."""
    settings = run.settings
    count = settings.users
    pid = settings.pid
    names = [settings.name("u", i) for i in range(count)]
    room_names = [settings.room(r) for r in range(settings.rooms)]
    joins = [settings.rooms_of(i) for i in range(count)]
    sizes = [0] * settings.rooms
    for rooms in joins:
        for room in rooms:
            sizes[room] += 1
    shared = _Shared(run, sizes)
    users = [
        _User(shared, name, [room_names[r] for r in rooms])
        for name, rooms in zip(names, joins, strict=True)
    ]
    used = [size for size in sizes if size]
    result["members_min"] = min(used)
    result["members_max"] = max(used)
    result["members_mean"] = round(sum(used) / len(used), 1)
    result["join_frames_expected"] = shared.join_frames

    async def join(index: int, client: Client) -> None:
        await _join(run, users[index], client, [room_names[r] for r in joins[index]])

    reader = SharedReader(run) if settings.shared_reader and available() else None
    if reader is not None:
        nursery.start_soon(reader.run)
    result["shared_reader"] = reader is not None
    rss0 = rss_kb_or_none(pid)
    if rss0 is not None:
        result["rss0_kb"] = rss0
    run.set_phase("logging in")
    joining = Usage.now(pid)
    began = time.perf_counter()
    with trio.move_on_after(settings.deadline) as login_scope:
        clients = await log_in_all(run, nursery, names, users, join, reader=reader)
    if login_scope.cancelled_caught:
        raise BenchError(
            f"only {run.joined} of {count} users logged in and joined within "
            f"{settings.deadline:g} s (--deadline)"
        )
    joined = time.perf_counter()
    result["join_s"] = round(joined - began, 3)
    _join_usage(result, joining, Usage.now(pid))
    result["joins_per_s"] = round(count * settings.rooms_each / (joined - began))
    run.set_phase("settling")
    if shared.join_frames_seen >= shared.join_frames:
        shared.settled.set()
    with trio.move_on_after(settings.settle):
        await shared.settled.wait()
    result["join_frames"] = shared.join_frames_seen
    if shared.settled.is_set():
        result["joins_settled_s"] = round(time.perf_counter() - joined, 3)
    else:
        result["warnings"].append(
            f"only {shared.join_frames_seen:,} of {shared.join_frames:,} join "
            "frames about "
            f"other members arrived within {settings.settle:g} s (--settle)"
        )
    if pid is not None:
        await trio.sleep(0.3)
        rss = rss_kb_or_none(pid)
        if rss is not None and rss0 is not None:
            result["rss_kb"] = rss
            result["rss_per_user_kb"] = round((rss - rss0) / count, 3)
    tasks: list[Callable[[], Awaitable[None]]] = []
    for index, client in enumerate(clients):
        rooms = joins[index]
        tasks.append(
            functools.partial(
                _talker,
                run,
                shared,
                index,
                client,
                [room_names[r] for r in rooms],
                [sizes[r] - 1 for r in rooms],
            )
        )
    del clients
    await run_window(run, [], tasks)
    sending = settings.warmup + settings.duration
    result["offered_per_s"] = round(run.sent / sending)
    if run.late:
        late = sorted(run.late)
        result["gen_late_p99_ms"] = round(percentile(late, 99) / 1e6, 3)
        result["gen_late_max_ms"] = round(late[-1] / 1e6, 3)
    result["sent"] = run.sent
    result["delivered"] = run.delivered
    result["refused"] = run.refused
    result["lost"] = run.expected - run.delivered - run.refused
    result["msgs_incomplete"] = len(shared.pending)
    result["misrouted"] = shared.misrouted
    result["msgs_per_s"] = round(run.in_window / settings.duration)
    rss_after = rss_kb_or_none(pid)
    if rss_after is not None:
        result["rss_after_kb"] = rss_after
    start, end = run.usage_start, run.usage_end
    if start is not None and end is not None and run.in_window:
        # CPU per delivery in the window, for sizing: usage_summary has the %.
        result["gen_us_per_delivery"] = round(
            (end.cpu - start.cpu) / run.in_window * 1e6, 2
        )
        if end.server_cpu is not None and start.server_cpu is not None:
            result["srv_us_per_delivery"] = round(
                (end.server_cpu - start.server_cpu) / run.in_window * 1e6, 2
            )
