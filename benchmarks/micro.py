"""Micro-benchmarks of trichat's hot path, in nanoseconds per frame.

Run ``python benchmarks/micro.py`` (or ``nox -s bench``). Each benchmark
times a batch of operations several times with ``time.perf_counter_ns`` and
prints the median per operation, with the fastest and slowest repeat.
Compare numbers from one machine only, and with nothing else running.

``--opcodes`` counts instead of timing: the Python bytecode instructions
each operation runs (``opcodes_per_op``), and the system calls it makes to
read or write (``system_calls_per_op``). Those counts are the same on
every machine and in every run with the same Python, so they can be
compared from one commit to the next anywhere; tests/test_hot_path_budget.py
does, in CI. They do not see how long C code or the kernel take.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import trio

from trichat import NEED_DATA, Connection, Delivery, Role, Talk, encode, name_key
from trichat.server.hub import Hub, Outbox, Peer

TEXT = "1732694400123456789 42 " + "x" * 41  # 64 characters, like trichat bench
# One benchmark: prepares its state and returns a function that runs a
# batch and returns how many operations it did.
Batch = Callable[[], int]
TraceFunction = Callable[[FrameType, str, Any], Any]


def _chunk(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def _decode_all(chunk: bytes, new_connection: Callable[[], Connection]) -> Batch:
    """A batch that decodes every frame in *chunk* on a new connection."""

    def batch() -> int:
        conn = new_connection()
        conn.receive_data(chunk)
        count = 0
        next_event = conn.next_event
        while next_event() is not NEED_DATA:
            count += 1
        return count

    return batch


def decode_talk(frames: int) -> Batch:
    """The server reads ``talk|TO|TEXT`` frames, many to a chunk."""
    chunk = _chunk([encode(Talk("bob", TEXT))] * frames)

    def logged_in_server() -> Connection:
        conn = Connection(Role.SERVER)
        conn.logged_in("alice")
        return conn

    return _decode_all(chunk, logged_in_server)


def decode_delivery(frames: int) -> Batch:
    """A client (such as trichat bench) reads ``talk|FROM|TO|TEXT`` frames."""
    chunk = _chunk([encode(Delivery("alice", "bob", TEXT))] * frames)
    return _decode_all(chunk, lambda: Connection(Role.CLIENT))


def encode_delivery(frames: int) -> Batch:
    """Encode a ready ``Delivery``."""
    delivery = Delivery("alice", "bob", TEXT)

    def batch() -> int:
        for _ in range(frames):
            encode(delivery)
        return frames

    return batch


def build_and_encode_delivery(frames: int) -> Batch:
    """Build (and so validate) a ``Delivery`` and encode it, as routing does."""

    def batch() -> int:
        for _ in range(frames):
            encode(Delivery("alice", "bob", TEXT))
        return frames

    return batch


def name_key_cached(calls: int) -> Batch:
    """``name_key`` of a name seen before (the lru_cache hit)."""
    names = [f"Zoë{i}" for i in range(100)]
    for name in names:
        name_key(name)

    def batch() -> int:
        for _ in range(calls // len(names)):
            for name in names:
                name_key(name)
        return calls // len(names) * len(names)

    return batch


def name_key_uncached(calls: int) -> Batch:
    """``name_key`` computed afresh: NFKC, then casefold."""
    compute = name_key.__wrapped__
    names = [f"\uff3aoë{i}" for i in range(calls)]  # a full-width Z

    def batch() -> int:
        for name in names:
            compute(name)
        return len(names)

    return batch


def _drain(hub: Hub, outbox: Outbox) -> None:
    """Flush what routing queued and take it all, as the writer would."""
    hub.flush_due()
    outbox.drain()


@functools.cache
def _null_fd() -> int:
    """A descriptor that takes every write whole at once (``/dev/null``),
    kept open for the process's life: a plain socket with room, minus the
    kernel's work."""
    return os.open(os.devnull, os.O_WRONLY)


def _hub(users: int, queue: int, fd: int | None = None) -> tuple[Hub, list[Peer]]:
    """A hub of *users* online, each outbox holding up to *queue* frames and
    writing to *fd* if given (as for plain sockets), else queueing for a
    writer task (as for TLS)."""
    hub = Hub()
    peers = []
    for i in range(users):
        outbox = Outbox(queue, queue * 256, fd=fd, due=hub.due)
        peer = Peer(f"user{i}", outbox, lambda reason: None)
        hub.join(peer)
        peers.append(peer)
        for each in peers:
            _drain(hub, each.outbox)
    return hub, peers


def hub_direct(messages: int) -> Batch:
    """Route one direct ``talk`` to one user and queue it in their outbox."""
    hub, (alice, bob) = _hub(2, messages)
    talk = Talk("user1", TEXT)

    def batch() -> int:
        deliver = hub.deliver
        congested: list[Outbox] = []
        for _ in range(messages):
            deliver(alice, talk, congested)
        _drain(hub, bob.outbox)
        return messages

    return batch


def hub_broadcast(users: int, broadcasts: int) -> Batch:
    """Route a broadcast from one user to *users* others with plain sockets
    (one operation per recipient, outbox and write included)."""
    hub, peers = _hub(users + 1, broadcasts, _null_fd())
    sender = peers[0]
    talk = Talk("*", TEXT)

    def batch() -> int:
        congested: list[Outbox] = []
        for _ in range(broadcasts):
            hub.deliver(sender, talk, congested)
        for peer in peers[1:]:
            _drain(hub, peer.outbox)
        return broadcasts * users

    return batch


def read_talk(reads: int, lines: int = 16) -> Batch:
    """The server takes a read of *lines* ``talk`` frames: one split, and a
    check that all of it is printable (per frame)."""
    data = _chunk([encode(Talk("user1", TEXT))] * lines)
    conn = Connection(Role.SERVER)
    conn.logged_in("user0")

    def batch() -> int:
        take_lines = conn.take_lines
        for _ in range(reads):
            take_lines(data)
        return reads * lines

    return batch


def relay_direct(reads: int, lines: int = 16) -> Batch:
    """``Hub.relay_run`` of a read's run of *lines* plain ``talk`` frames to
    one user with a plain socket: one block into their outbox, written at
    the flush (per frame)."""
    hub, (alice, bob) = _hub(2, 1024, _null_fd())
    run = [encode(Talk("user1", TEXT))[:-1]] * lines

    def batch() -> int:
        relay_run = hub.relay_run
        congested: list[Outbox] = []
        for _ in range(reads):
            relay_run(alice, b"user1", run, 0, lines, congested)
            _drain(hub, bob.outbox)
        return reads * lines

    return batch


def relay_broadcast(users: int, broadcasts: int, queued: bool = False) -> Batch:
    """``Hub.relay_run`` of one plain broadcast to *users* others (per
    recipient): written at once to their plain sockets, or, if *queued*,
    queued for their writer tasks (as over TLS) and taken from there."""
    hub, peers = _hub(users + 1, 1024, None if queued else _null_fd())
    sender = peers[0]
    run = [encode(Talk("*", TEXT))[:-1]]

    def batch() -> int:
        congested: list[Outbox] = []
        for _ in range(broadcasts):
            hub.relay_run(sender, b"*", run, 0, 1, congested)
        for peer in peers[1:]:
            _drain(hub, peer.outbox)
        return broadcasts * users

    return batch


@contextmanager
def _quiet_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def measure(batch: Batch, repeats: int) -> tuple[float, float, float]:
    """Median, fastest and slowest nanoseconds per operation over *repeats*."""
    batch()  # warm caches and the allocator
    per_op = []
    for _ in range(repeats):
        with _quiet_gc():
            start = time.perf_counter_ns()
            operations = batch()
            elapsed = time.perf_counter_ns() - start
        per_op.append(elapsed / operations)
    return statistics.median(per_op), min(per_op), max(per_op)


def _per_op(batch: Batch, set_hook: Callable[[Any], None], hook: Any) -> int:
    """Run *batch* twice (the first run warms caches, as ``measure`` does),
    the second with *hook* installed by *set_hook* (``sys.settrace`` or
    ``sys.setprofile``); the operations it did."""
    batch()
    set_hook(hook)
    try:
        return batch()
    finally:
        set_hook(None)


def opcodes_per_op(batch: Batch) -> float:
    """Python bytecode instructions per operation of *batch*."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> TraceFunction:
        nonlocal count
        if event == "opcode":
            count += 1
        elif event == "call":
            frame.f_trace_opcodes = True
        return trace

    operations = _per_op(batch, sys.settrace, trace)
    return count / operations


# The calls that cost a system call each on the hot path.
_SYSTEM_CALLS = frozenset({os.read, os.write})


def system_calls_per_op(batch: Batch) -> float:
    """Reads and writes (``os.read``, ``os.write``) per operation of *batch*,
    made in this thread: a hub with write helpers would need their threads
    counted too (``threading.setprofile``); the benchmarks have none."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event == "c_call" and arg in _SYSTEM_CALLS:
            count += 1

    operations = _per_op(batch, sys.setprofile, profile)
    return count / operations


def benchmarks(scale: float) -> list[tuple[str, Batch]]:
    def n(count: int) -> int:
        return max(1, round(count * scale))

    chosen: list[tuple[str, Batch]] = [
        ("decode+validate talk (server)", decode_talk(n(20_000))),
        ("decode+validate delivery (client)", decode_delivery(n(20_000))),
        ("encode Delivery", encode_delivery(n(50_000))),
        ("build+encode Delivery", build_and_encode_delivery(n(50_000))),
        ("name_key, cached", name_key_cached(n(100_000))),
        ("name_key, uncached", name_key_uncached(n(20_000))),
        ("hub: direct talk to 1 user", hub_direct(n(20_000))),
        ("hub: broadcast, per recipient of 1000", hub_broadcast(1000, n(20))),
        ("read: split+check, per talk of 16", read_talk(n(5_000))),
        ("relay: run of 16 to 1 user, per talk", relay_direct(n(5_000))),
        ("relay: broadcast, per recipient of 1000", relay_broadcast(1000, n(20))),
        (
            "relay: broadcast, queued, per recipient of 1000",
            relay_broadcast(1000, n(20), queued=True),
        ),
    ]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed batches (%(default)s)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every batch's size (%(default)s)",
    )
    parser.add_argument(
        "--opcodes",
        action="store_true",
        help="count Python opcodes and system calls per operation instead of timing",
    )
    args = parser.parse_args(argv)
    if args.opcodes:
        print(f"{'benchmark':<48} {'opcodes/op':>10} {'syscalls/op':>11}")
    else:
        print(f"{'benchmark':<48} {'ns/op':>9} {'min':>9} {'max':>9}")

    async def run_all() -> None:
        # Inside Trio, as in the server.
        for name, batch in benchmarks(args.scale):
            if args.opcodes:
                opcodes, calls = opcodes_per_op(batch), system_calls_per_op(batch)
                print(f"{name:<48} {opcodes:10.1f} {calls:11.4f}", flush=True)
                continue
            median, low, high = measure(batch, args.repeats)
            print(f"{name:<48} {median:9.0f} {low:9.0f} {high:9.0f}", flush=True)

    trio.run(run_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
