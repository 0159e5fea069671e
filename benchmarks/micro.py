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

The server's benchmarks use its own pieces: a ``Session`` step, ``Hub.route``,
``Mailbox`` and one turn of the writer's loop writing with ``PlainSocket``
to ``/dev/null`` (a socket with room, minus the kernel's work). They run
synchronously, so the writer's coroutines are stepped by hand
(``_at_once``); a step that would have to wait is an error.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar, cast

import trio

from trichat import NEED_DATA, Connection, Delivery, Role, Talk, encode, name_key
from trichat.protocol.connection import decode_client_line
from trichat.server.config import ServerConfig
from trichat.server.hub import Envelope, Hub, Member
from trichat.server.mailbox import Drainable, Mailbox
from trichat.server.session import Session
from trichat.server.transport import PlainSocket

TEXT = "1732694400123456789 42 " + "x" * 41  # 64 characters, like trichat bench
# One benchmark: prepares its state and returns a function that runs a
# batch and returns how many operations it did.
Batch = Callable[[], int]
TraceFunction = Callable[[FrameType, str, Any], Any]
T = TypeVar("T")


def _chunk(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def decode_talk(frames: int) -> Batch:
    """The server decodes a ``talk|TO|TEXT`` line it cannot relay as it is
    (``decode_client_line``, login rules included)."""
    line = encode(Talk("bob", TEXT))[:-1]

    def batch() -> int:
        for _ in range(frames):
            decode_client_line(line, "alice")
        return frames

    return batch


def decode_delivery(frames: int) -> Batch:
    """A client (such as trichat bench) reads ``talk|FROM|TO|TEXT`` frames."""
    chunk = _chunk([encode(Delivery("alice", "bob", TEXT))] * frames)

    def batch() -> int:
        conn = Connection(Role.CLIENT)
        conn.receive_data(chunk)
        count = 0
        next_event = conn.next_event
        while next_event() is not NEED_DATA:
            count += 1
        return count

    return batch


def encode_delivery(frames: int) -> Batch:
    """Encode a ready ``Delivery``."""
    delivery = Delivery("alice", "bob", TEXT)

    def batch() -> int:
        for _ in range(frames):
            encode(delivery)
        return frames

    return batch


def build_and_encode_delivery(frames: int) -> Batch:
    """Build (and so validate) a ``Delivery`` and encode it."""

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


# -- the server: session, hub, mailbox and writer ---------------------------------


def _at_once(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of *coroutine*, which must finish without waiting: a
    writer's step when frames are queued and the socket has room. (The
    benchmarks are synchronous, so that they can be traced and timed.)"""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("the writer's step had to wait")


class _NullStream:
    """Stands in for a ``trio.SocketStream`` to give ``PlainSocket`` a
    descriptor that takes every write whole at once (``/dev/null``): a
    plain socket with room, minus the kernel's work."""

    def __init__(self) -> None:
        self.socket = self

    def fileno(self) -> int:
        return _null_fd()


@functools.cache
def _null_fd() -> int:
    """``/dev/null`` for writing, kept open for the process's life."""
    return os.open(os.devnull, os.O_WRONLY)


def _null_socket() -> PlainSocket:
    return PlainSocket(cast(trio.SocketStream, _NullStream()))


def _write_out(mailbox: Mailbox, transport: PlainSocket) -> None:
    """One turn of the writer task's loop (``write_loop``): take all that
    is queued as one batch, write it, and count it written."""
    batch = _at_once(mailbox.next_batch())
    assert batch is not None
    _at_once(transport.send(batch.data, mailbox.sent))
    mailbox.written(batch)


def _ignore(reason: str) -> None:
    pass


def _hub(users: int, queue: int = 1024) -> tuple[Hub, list[Member]]:
    """A hub of *users* online (``user0``...), every mailbox emptied."""
    hub = Hub()
    members = []
    for i in range(users):
        member = Member(f"user{i}", Mailbox(queue, 1 << 20), _ignore)
        hub.join(member)
        members.append(member)
        if i % 100 == 99 or i == users - 1:
            for each in members:
                each.mailbox.drain()
    return hub, members


def _session(hub: Hub, name: str) -> Session:
    """*name* logged in through a session, as the server does (no flood
    control, as in a benchmark run), its mailbox emptied."""
    mailbox = Mailbox(1024, 1 << 20)
    session = Session(ServerConfig(rate=0), hub, mailbox, _ignore, "", 0)
    session.received(b"login|%s\n" % name.encode(), 0)
    session.handle_ready(64, 0)
    assert session.member is not None
    for member in hub:
        member.mailbox.drain()
    session.mailbox.drain()
    return session


def read_talk(reads: int, lines: int = 16) -> Batch:
    """``Session.received``: a read of *lines* ``talk`` frames split into
    lines and checked printable at once (per frame)."""
    hub, _ = _hub(1)
    session = _session(hub, "alice")
    data = _chunk([encode(Talk("user0", TEXT))] * lines)

    def batch() -> int:
        received = session.received
        for _ in range(reads):
            received(data, 0)
        session.read = None
        return reads * lines

    return batch


def session_run(reads: int, lines: int = 16, to: str = "user0") -> Batch:
    """The server's whole path for a read of *lines* ``talk`` frames to one
    user (per frame): the session's step (``received``, ``handle_ready``:
    relayed as a run when *to* is the name as its owner wrote it, else
    decoded line by line), then the recipient's writer writes them, to a
    plain socket with room."""
    hub, (bob,) = _hub(1)
    session = _session(hub, "alice")
    data = _chunk([encode(Talk(to, TEXT))] * lines)
    transport = _null_socket()

    def batch() -> int:
        received, handle_ready = session.received, session.handle_ready
        mailbox = bob.mailbox
        for _ in range(reads):
            received(data, 0)
            handle_ready(64, 0)
            _write_out(mailbox, transport)
        return reads * lines

    return batch


def hub_direct(messages: int) -> Batch:
    """``Hub.route`` of one text to one user, into their mailbox."""
    hub, (alice, bob) = _hub(2, max(messages, 2))
    envelope = Envelope("user0", "user1", [TEXT.encode()])

    def batch() -> int:
        route = hub.route
        congested: list[Drainable] = []
        for _ in range(messages):
            route(alice, envelope, congested)
        bob.mailbox.drain()
        return messages

    return batch


def hub_broadcast(users: int, broadcasts: int, written: bool = False) -> Batch:
    """``Hub.route`` of a broadcast from one user to *users* others (per
    recipient): encoded once, put in every mailbox; if *written*, each
    recipient's writer then writes it to a plain socket with room."""
    hub, members = _hub(users + 1)
    sender, recipients = members[0], members[1:]
    envelope = Envelope("user0", "*", [TEXT.encode()])
    transport = _null_socket()

    def batch() -> int:
        congested: list[Drainable] = []
        for _ in range(broadcasts):
            hub.route(sender, envelope, congested)
            if written:
                for member in recipients:
                    _write_out(member.mailbox, transport)
        if not written:
            for member in recipients:
                member.mailbox.drain()
        return broadcasts * users

    return batch


def presence(users: int, rounds: int) -> Batch:
    """A login and an exit with *users* online (per user told), held for
    one release as the server does by default (``--presence-delay``): the
    newcomer's roster, a held frame each for the others, the release."""
    hub, members = _hub(users)
    hub.hold_presence = True
    newcomer = Member("newcomer", Mailbox(1024, 1 << 20), _ignore)

    def batch() -> int:
        for _ in range(rounds):
            hub.join(newcomer)
            hub.leave(newcomer)
            hub.release()
            for member in members:
                member.mailbox.drain()
            newcomer.mailbox.drain()
        return rounds * users

    return batch


def mailbox_batch(batches: int, frames: int = 16) -> Batch:
    """``Mailbox.put`` of *frames* frames one by one, then the writer's
    ``next_batch`` taking them as one batch, ``sent`` and ``written``
    (per frame)."""
    mailbox = Mailbox(1024, 1 << 20)
    frame = encode(Delivery("alice", "bob", TEXT))

    def batch() -> int:
        put = mailbox.put
        for _ in range(batches):
            for _ in range(frames):
                put(frame)
            taken = _at_once(mailbox.next_batch())
            assert taken is not None
            mailbox.sent(len(taken.data))
            mailbox.written(taken)
        return batches * frames

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
    """Reads and writes (``os.read``, ``os.write``) per operation of *batch*
    (made in this thread; no thread of the server writes)."""
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
        ("read: split+check, per talk of 16", read_talk(n(5_000))),
        ("session: run of 16 to 1 user, written, per talk", session_run(n(5_000))),
        (
            "session: 16 decoded talks to 1 user, written, per talk",
            session_run(n(1_000), to="USER0"),
        ),
        ("hub: direct talk to 1 user", hub_direct(n(20_000))),
        ("hub: broadcast, per recipient of 1000", hub_broadcast(1000, n(20))),
        (
            "hub: broadcast, written, per recipient of 1000",
            hub_broadcast(1000, n(20), written=True),
        ),
        ("presence: login+exit, per user of 1000", presence(1000, n(20))),
        ("mailbox: put+next_batch, per frame of 16", mailbox_batch(n(5_000))),
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
        print(f"{'benchmark':<56} {'opcodes/op':>10} {'syscalls/op':>11}")
    else:
        print(f"{'benchmark':<56} {'ns/op':>9} {'min':>9} {'max':>9}")

    async def run_all() -> None:
        # Inside Trio, as in the server.
        for name, batch in benchmarks(args.scale):
            if args.opcodes:
                opcodes, calls = opcodes_per_op(batch), system_calls_per_op(batch)
                print(f"{name:<56} {opcodes:10.1f} {calls:11.4f}", flush=True)
                continue
            median, low, high = measure(batch, args.repeats)
            print(f"{name:<56} {median:9.0f} {low:9.0f} {high:9.0f}", flush=True)

    trio.run(run_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
