"""Drive the message store alone, as the server would, and time it.

Three measurements, each with a fresh store file in a temporary directory
(or under ``--dir``)::

    python benchmarks/store_bench.py              # all three, ~2 minutes
    python benchmarks/store_bench.py sustained --seconds 30 --rate 100000
    python benchmarks/store_bench.py big --messages 1000000

- ``sustained``: the event loop records messages at ``--rate`` a second
  (in ticks of 10 ms, as a busy server's hub would: one ``Accepted`` per
  text, to ``--rooms`` rooms and between ``--accounts`` accounts) for
  ``--seconds``, pausing on ``make_room`` whenever the store is congested,
  as a sender does. It prints, every 5 s, what was recorded and committed,
  the backlog and the process's RSS; then the totals. ``--rate 0``
  records as fast as the loop can (the store's own ceiling).
- ``big``: fills a store with ``--messages`` messages (``--rooms``
  rooms, ``history`` large enough to keep them all), stops it, then times
  a restart (``Store.run`` until started) and ``history latest 100`` of
  random rooms: idle, and while a ``--load`` messages/s recording runs.

Compare numbers from one machine only, and with nothing else running.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import trio

from trichat.server.hub import Accepted
from trichat.server.store import Store

TEXT = ("1732694400123456789 42 " + "x" * 41).encode()  # 64 bytes, as bench's
TICK = 0.01  # seconds


def rss_mib() -> float:
    """This process's resident memory, in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    """CPU time this process has used, all its threads, in seconds."""
    times = os.times()
    return times.user + times.system


def python_speed() -> float:
    """Nanoseconds one iteration of a trivial Python loop takes, in CPU
    time: how fast this machine runs Python, to compare runs with."""
    start = time.thread_time()
    total = 0
    for i in range(2_000_000):
        total += i
    return (time.thread_time() - start) / 2_000_000 * 1e9


def file_mib(path: str) -> float:
    """The size of the store's file and its WAL, in MiB."""
    wal = path + "-wal"
    size = os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
    return size / 2**20


class Traffic:
    """Accepted records as a hub makes them: each to one of *rooms* rooms
    (``#Room0``...) or, one in *direct* of them, a direct message between
    two of *accounts* accounts (``user0``...), with ids from *first_id*.
    Who talks to whom is drawn once, beforehand: what is timed is the
    store, not the drawing."""

    def __init__(
        self, first_id: int, rooms: int, accounts: int, direct: int, fixed: int = 0
    ) -> None:
        self.next_id = first_id
        self.count = 0
        room_names = [f"#Room{i}" for i in range(rooms)]
        users = [f"user{i}" for i in range(accounts)]
        pairs: list[tuple[str, str]] = []
        # Every room as often (a room drawn at random for each of the 10,007
        # could come up once, or never, in 1,000,000 messages).
        rooms_in_turn = [room_names[i % rooms] for i in range(10_007)]
        random.shuffle(rooms_in_turn)
        for i in range(10_007):
            if direct and i % direct == 0:
                if fixed:
                    # As the generator's dm: user{k} to user{fixed + k}.
                    k = i % fixed
                    pairs.append((users[k], users[fixed + k]))
                else:
                    sender, to = random.sample(users, 2)
                    pairs.append((sender, to))
            else:
                pairs.append((random.choice(users), rooms_in_turn[i]))
        self.pairs = pairs
        self.texts = (TEXT,)

    def make(self, count: int) -> list[Accepted]:
        """The next *count* messages, accepted now."""
        first, pairs, texts = self.next_id, self.pairs, self.texts
        start = self.count
        now = int(time.time() * 1000)
        made = [
            Accepted(*pairs[(start + i) % 10_007], texts, first + i, now)
            for i in range(count)
        ]
        self.next_id += count
        self.count += count
        return made


async def drive(
    store: Store,
    traffic: Traffic,
    rate: float,
    seconds: float,
    report: Callable[[float], None] | None = None,
) -> float:
    """Record *rate* messages a second (0: as fast as possible) for
    *seconds*, pausing while the store is congested; the time it took."""
    record = store.record
    start = trio.current_time()
    end = start + seconds
    next_report = start + 5
    per_tick = max(1, round(rate * TICK)) if rate else 2000
    tick = start
    while (now := trio.current_time()) < end:
        for accepted in traffic.make(per_tick):
            record(accepted)
        if store.congested:
            await store.make_room(1.0)
        if rate:
            tick += TICK
            await trio.sleep_until(max(tick, now))
        else:
            await trio.lowlevel.checkpoint()
        if report is not None and now >= next_report:
            report(now - start)
            next_report += 5
    return trio.current_time() - start


async def sustained(args: argparse.Namespace, directory: str) -> None:
    path = os.path.join(directory, "sustained.db")
    cache = {} if args.history_cache is None else {"history_cache": args.history_cache}
    store = Store(path, history=args.history, **cache)
    traffic = Traffic(1, args.rooms, args.accounts, args.direct, args.pairs)
    print(
        f"sustained: {args.rate or 'max'} messages/s for {args.seconds:g} s, "
        f"{args.rooms} rooms, {args.accounts} accounts"
        + (f" ({args.pairs} pairs)" if args.pairs else "")
        + f", one in {args.direct} direct, history {args.history}"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await _make_accounts(store, args.accounts)
        backlog_peak = 0
        last = [0.0, 0]
        rss: list[float] = []

        def report(elapsed: float) -> None:
            nonlocal backlog_peak
            committed = store.committed_id
            rate = (committed - last[1]) / (elapsed - last[0])
            last[:] = [elapsed, committed]
            rss.append(rss_mib())
            print(
                f"  {elapsed:5.1f} s: recorded {traffic.count:>9,}"
                f"  committed {committed:>9,} ({rate:>8,.0f}/s)"
                f"  backlog {store.backlog:>6,}  RSS {rss[-1]:6.1f} MiB"
            )

        async def watch_backlog() -> None:
            nonlocal backlog_peak
            while True:
                backlog_peak = max(backlog_peak, store.backlog)
                await trio.sleep(0.05)

        nursery.start_soon(watch_backlog)
        windows: list[float] = []
        nursery.start_soon(watch_window, store, windows)
        cpu = cpu_seconds()
        took = await drive(store, traffic, args.rate, args.seconds, report)
        cpu = cpu_seconds() - cpu
        recorded = traffic.count
        committed_in_time = store.committed_id
        flush = time.perf_counter()
        while store.backlog:
            await store.make_room(1.0)
            await trio.sleep(0.01)
        flush = time.perf_counter() - flush
        nursery.cancel_scope.cancel()
    print(
        f"  recorded {recorded:,} in {took:.1f} s: {recorded / took:,.0f}/s; "
        f"committed meanwhile {committed_in_time / took:,.0f}/s; "
        f"the rest written {flush:.2f} s later"
    )
    print(
        f"  backlog peak {backlog_peak:,} (congested above {store.max_backlog // 2:,});"
        f" RSS {min(rss, default=0):.1f} to {max(rss, default=0):.1f} MiB after 5 s"
    )
    print(
        f"  CPU: {cpu:.1f} s in {took:.1f} s ({cpu / took:.0%} of a core), "
        f"{cpu / max(1, committed_in_time) * 1e6:.1f} us per message committed"
    )
    if windows:
        print(
            f"  from record to commit (what a kill -9 can lose): median "
            f"{statistics.median(windows) * 1000:.1f} ms, p99 "
            f"{percentile(windows, 0.99) * 1000:.1f} ms, "
            f"max {max(windows) * 1000:.1f} ms"
        )
    print(f"  file: {file_mib(path):.0f} MiB")


async def watch_window(store: Store, windows: list[float]) -> None:
    """Every 20 ms, how long the message recorded last takes to be
    committed: the window a crash loses."""
    while True:
        await trio.sleep(0.02)
        since = time.perf_counter()
        await store.flush()
        windows.append(time.perf_counter() - since)


async def _make_accounts(store: Store, count: int) -> None:
    from trichat.server.passwords import Hasher

    store.hasher = Hasher(memory_kib=8, time_cost=1)  # not what is timed here
    for i in range(count):
        if not store.is_account(f"user{i}"):
            await store.register(f"user{i}", "password")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def big(args: argparse.Namespace, directory: str) -> None:
    path = os.path.join(directory, "big.db")
    rooms = args.rooms
    per_room = -(-args.messages // rooms)
    print(
        f"big: {args.messages:,} messages in {rooms} rooms "
        f"(history {per_room}), then a restart and history latest 100"
    )
    store = Store(path, history=per_room)
    traffic = Traffic(1, rooms, 10, 0)
    filled = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        while traffic.count < args.messages:
            for accepted in traffic.make(min(2000, args.messages - traffic.count)):
                store.record(accepted)
            if store.congested:
                await store.make_room(1.0)
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    filled = time.perf_counter() - filled
    size = file_mib(path)
    print(
        f"  filled in {filled:.1f} s ({args.messages / filled:,.0f}/s), {size:.0f} MiB"
    )

    store = Store(path, history=per_room)
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(store.run)
        started = time.perf_counter() - started
        print(f"  start-up: {started * 1000:.0f} ms (last id {store.last_id:,})")
        for label, load in (
            ("idle", 0.0),
            (f"recording {args.load:,.0f}/s", args.load),
        ):
            times = await _time_history(store, rooms, args.queries, load)
            print(
                f"  history latest 100, {label}: median "
                f"{statistics.median(times) * 1000:.2f} ms, p99 "
                f"{percentile(times, 0.99) * 1000:.2f} ms, "
                f"max {max(times) * 1000:.2f} ms ({len(times)} queries)"
            )
        nursery.cancel_scope.cancel()


async def _time_history(
    store: Store, rooms: int, queries: int, load: float
) -> list[float]:
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        if load:
            traffic = Traffic(store.last_id + 1, rooms, 10, 0)
            nursery.start_soon(drive, store, traffic, load, 3600.0)
            await trio.sleep(1)  # let it settle
        for _ in range(queries):
            room = f"#room{random.randrange(rooms)}"
            start = time.perf_counter()
            page = await store.history(room, "latest", None, 100)
            times.append(time.perf_counter() - start)
            assert len(page) == 100, len(page)
            await trio.sleep(0.002)
        nursery.cancel_scope.cancel()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what", nargs="?", choices=("all", "sustained", "big"), default="all"
    )
    parser.add_argument("--dir", help="where the store files go (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100_000.0, help="0: max")
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument(
        "--direct", type=int, default=10, help="one message in N is direct (0: none)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="direct messages between N fixed pairs of accounts, as the "
        "generator's dm (0: any two)",
    )
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument(
        "--history-cache",
        type=int,
        default=None,
        help="sustained: the store's history_cache (bytes for the newest "
        "messages in memory; 0: none; default: the store's own)",
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--load", type=float, default=50_000.0)
    args = parser.parse_args()
    print(
        f"Python here: {python_speed():.0f} ns a loop iteration (CPU time); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        if args.what in ("all", "sustained"):
            trio.run(sustained, args, directory)
        if args.what in ("all", "big"):
            trio.run(big, args, directory)


if __name__ == "__main__":
    main()
