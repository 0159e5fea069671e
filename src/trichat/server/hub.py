"""Who is online, and how a message reaches them.

The hub maps each online user's clash key (``name_key``) to a ``Peer``: the
user's name as they wrote it and their ``Outbox``, the bounded queue their
writer task drains. Routing is synchronous and never waits: a peer whose
queue is full is kicked (its own task then takes it offline) instead of
slowing the sender or anyone else down.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import partial

import attrs
import trio

from ..protocol._codec import delivery_frame, encode
from ..protocol.messages import BROADCAST, Error, ErrorCode, Exit, Login, Talk, name_key

__all__ = ["Hub", "NameTaken", "Outbox", "Peer"]


# Held presence frames are flushed at once when this many have piled up.
_LAZY_FRAMES = 256
# A flush of at least this many outboxes shares its writes with the
# helper threads, if there are any.
_SHARED_FLUSH = 64


def _write(fd: int, data: bytes) -> int:
    """``os.write``, with a full or broken socket counted as nothing written
    (the writer task finds out which, and says so)."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0


# Work that a broadcast or a large flush shares out between threads (see
# Hub._share): called with a start and a step, it does every step-th item
# from start. It allocates nothing (but small objects), so that a helper
# thread does not grow a malloc arena of its own, and it changes no state
# but its own items' results.
_Share = Callable[[int, int], None]


def _write_each(
    fds: list[int], blocks: list[bytes], written: list[int], start: int, step: int
) -> None:
    """Write ``blocks[i]`` to ``fds[i]`` for every *step*-th *i* from
    *start*; ``written[i]`` says how much of it got through."""
    for index in range(start, len(fds), step):
        written[index] = _write(fds[index], blocks[index])


def _write_to_idle(
    outboxes: list[Outbox],
    data: bytes,
    frames: int,
    written: list[int],
    start: int,
    step: int,
) -> None:
    """Write *data* (*frames* frames) to the ``idle_fd`` of every *step*-th
    outbox from *start* that has one; ``written[i]`` says how much of it got
    through, and stays -1 for an outbox that was not idle."""
    size = len(data)
    for index in range(start, len(outboxes), step):
        fd = outboxes[index].idle_fd(size, frames)
        if fd is not None:
            written[index] = _write(fd, data)


def _wait_for_all(futures: list[Future[None]]) -> None:
    """Wait until all *futures* are done, even if interrupted meanwhile (the
    interruption is raised once they are)."""
    interrupted: BaseException | None = None
    while True:
        try:
            wait(futures)
        except BaseException as exc:  # re-raised below, once all are done
            interrupted = exc
            continue
        if interrupted is not None:
            raise interrupted
        return


@attrs.frozen
class _WriteHelpers:
    pool: Executor
    threads: int


class _Blocks:
    """Blocks of encoded frames in the order they came, and how many frames
    they hold: an outbox's pending ones, and those handed to its writer."""

    __slots__ = ("blocks", "frames")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.frames = 0

    def add(self, data: bytes, frames: int) -> None:
        self.blocks.append(data)
        self.frames += frames

    def take(self) -> tuple[bytes, int]:
        """All the blocks as one, and how many frames it holds; none after."""
        blocks = self.blocks
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        frames = self.frames
        blocks.clear()
        self.frames = 0
        return data, frames


class Outbox:
    """A client's queue of encoded frames, bounded in frames and in bytes.

    Frames are added (``put``, ``put_lazy``) to a pending list and handed
    on by ``flush``: written to the socket at once when nothing is queued
    ahead of them and the writer is idle, and otherwise handed on to the
    client's writer task (``next_block``), so that every frame leaves in
    the order it was added and each wake-up of the writer sends all that
    piled up in one write.

    ``put`` never blocks: it returns False when the frame does not fit (the
    client is too slow) or the outbox is closed. It registers the outbox in
    *due*, the list that whoever added frames flushes before it next
    waits. ``put_lazy`` (presence) leaves the flush to ``Hub.flush_presence``
    or to the next ``put``.

    An outbox more than half full is *congested*: senders to it wait (see
    ``make_room``) while its writer makes progress, so a burst cannot get a
    client that keeps reading dropped. One whose writer makes no progress
    for a while is *stalled*: nobody waits for it any more, it fills up and
    its client is dropped.
    """

    __slots__ = (
        "_due",
        "_progress",
        "_writer",
        "closed",
        "fd",
        "final",
        "handed",
        "is_due",
        "max_bytes",
        "max_frames",
        "pending",
        "queued_bytes",
        "queued_frames",
        "sending",
        "stalled",
    )

    def __init__(
        self,
        max_frames: int,
        max_bytes: int,
        *,
        fd: int | None = None,
        due: list[Outbox] | None = None,
    ) -> None:
        self.fd = fd
        """A plain socket's descriptor, to write to directly; None for TLS."""
        self._due = [] if due is None else due
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.pending = _Blocks()
        self.queued_frames = 0  # pending, handed on, or being written
        self.queued_bytes = 0
        self.handed = _Blocks()  # for the writer, in order
        # Where the writer waits for blocks. (A lot and a list, not a memory
        # channel: about 1.5 KiB less for every connection.)
        self._writer = trio.lowlevel.ParkingLot()
        self.sending = False  # the writer is in the middle of a write
        self.is_due = False
        self.stalled = False
        self.closed = False
        self._progress: trio.Event | None = None
        # Sent after everything queued, whatever the limits (a closing error).
        self.final = b""

    @property
    def room(self) -> tuple[int, int]:
        """How much a sender may add before it should wait, in frames and in
        bytes: a frame fits while less than that has been added (so the
        frame that makes the outbox congested still does)."""
        if self.stalled:
            # Nobody waits for it any more: until it is full.
            return (
                self.max_frames - self.queued_frames,
                self.max_bytes - self.queued_bytes,
            )
        return (
            self.max_frames // 2 + 1 - self.queued_frames,
            self.max_bytes // 2 + 1 - self.queued_bytes,
        )

    def _add(self, data: bytes, frames: int, force: bool) -> bool:
        if self.closed or not (
            force
            or (
                self.queued_frames + frames <= self.max_frames
                and self.queued_bytes + len(data) <= self.max_bytes
            )
        ):
            return False
        self.pending.add(data, frames)
        self.queued_frames += frames
        self.queued_bytes += len(data)
        return True

    def put(self, data: bytes, frames: int = 1, *, force: bool = False) -> bool:
        """Add *data*, one frame or a block of *frames* frames, to be sent
        at the next flush of the due list.

        With *force* the limits do not apply: for the server's own frames
        that must get through (a newcomer's roster, which can be large).
        """
        if not self._add(data, frames, force):
            return False
        self.mark_due()
        return True

    def mark_due(self) -> None:
        """Have the next flush of the due list flush this outbox too."""
        if not self.is_due:
            self.is_due = True
            self._due.append(self)

    def put_lazy(self, frame: bytes) -> bool:
        """Add a presence frame that may wait for a later flush; once
        _LAZY_FRAMES are pending they are flushed at once."""
        if not self._add(frame, 1, False):
            return False
        # Held frames count against the limits but cannot drain: hand them
        # on before they fill half the queue.
        held_at_most = min(_LAZY_FRAMES, self.max_frames // 2)
        return self.pending.frames < held_at_most or self.flush()

    def flush(self) -> bool:
        """Send the pending frames on their way; False if they cannot be
        handed on to the writer (the outbox is closed)."""
        taken = self.take_pending()
        if taken is None:
            return True
        fd = self.direct_fd
        if fd is None:
            return self.hand_on(*taken)
        return self.wrote(*taken, _write(fd, taken[0]))

    def take_pending(self) -> tuple[bytes, int] | None:
        """The pending frames as one block and how many there are, or None
        if there are none; nothing is pending after it."""
        self.is_due = False
        return self.pending.take() if self.pending.blocks else None

    @property
    def direct_fd(self) -> int | None:
        """The socket to write a block to at once, if it may be: a plain
        socket with nothing queued for the writer, which is idle."""
        return None if self.handed.blocks or self.sending else self.fd

    def idle_fd(self, size: int, frames: int) -> int | None:
        """The socket, if nothing at all is queued and a block of *size*
        bytes and *frames* frames fits: the block may be written to it at
        once (see ``wrote_idle``), without passing through the queue."""
        if self.queued_bytes or size > self.max_bytes or frames > self.max_frames:
            return None
        return self.fd

    def wrote_idle(self, data: bytes, frames: int, written: int) -> None:
        """Account for *written* bytes of a block (*data*, *frames* frames)
        written to ``idle_fd`` without being queued: what did not get
        through is queued for the writer."""
        self.queued_frames += frames
        self.queued_bytes += len(data)
        self.wrote(data, frames, written)

    def wrote(self, data: bytes, frames: int, written: int) -> bool:
        """Account for *written* bytes of a block (*data*, *frames* frames)
        written to ``direct_fd``, and hand the rest on to the writer."""
        if written:
            self.queued_bytes -= written
            self._progressed()
            if written == len(data):
                self.queued_frames -= frames
                return True
            data = data[written:]
        return self.hand_on(data, frames)

    def hand_on(self, data: bytes, frames: int) -> bool:
        """Give a block to the writer task; False if the outbox is closed."""
        if self.closed:
            return False
        self.handed.add(data, frames)
        self._writer.unpark_all()
        return True

    async def next_block(self) -> tuple[bytes, int] | None:
        """For the writer task: wait for blocks handed on and take them all,
        as one block with its number of frames (the writer reports what it
        wrote with ``sent``); None once the outbox is closed and empty."""
        while not self.handed.blocks:
            if self.closed:
                return None
            await self._writer.park()
        return self.handed.take()

    @property
    def congested(self) -> bool:
        return not self.stalled and (
            self.queued_frames * 2 > self.max_frames
            or self.queued_bytes * 2 > self.max_bytes
        )

    async def make_room(self, stall_timeout: float) -> None:
        """Wait until the outbox is at most half full, as long as its writer
        keeps sending: after *stall_timeout* without progress, mark it
        stalled and return."""
        while self.congested:
            if self._progress is None:
                self._progress = trio.Event()
            with trio.move_on_after(stall_timeout) as waited:
                await self._progress.wait()
            if waited.cancelled_caught:
                self.stalled = True

    def sent(self, count: int, frames: int = 0) -> None:
        """The writer wrote *count* more bytes, finishing *frames* frames."""
        self.queued_bytes -= count
        self.queued_frames -= frames
        self._progressed()

    def drain(self) -> bytes:
        """Everything handed on to the writer, taken at once (as a writer
        would); for code that has no writer task, such as benchmarks."""
        if not self.handed.blocks:
            return b""
        data, frames = self.handed.take()
        self.sent(len(data), frames)
        return data

    def _progressed(self) -> None:
        self.stalled = False
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def close(self, final: bytes = b"") -> None:
        """Take no more frames; the writer sends what is queued, then *final*."""
        self.flush()
        self.closed = True
        self.fd = None  # the descriptor is closed and may be reused soon
        self.final = final
        self._writer.unpark_all()
        # Wake whoever waits for room, and let nobody wait for it again.
        self._progressed()
        self.stalled = True


@attrs.define(eq=False)
class Peer:
    """An online user as the hub sees them."""

    name: str
    outbox: Outbox
    kick: Callable[[str], None]
    """Take this user offline, giving the reason (for the log)."""
    key: str = attrs.field(init=False)
    wire_name: bytes = attrs.field(init=False, repr=False)
    talk_prefix: bytes = attrs.field(init=False, repr=False)
    """``talk|NAME|``: what this user's deliveries start with."""
    login_frame: bytes = attrs.field(init=False, repr=False)
    exit_frame: bytes = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.key = name_key(self.name)
        self.wire_name = self.name.encode()
        self.talk_prefix = b"talk|" + self.wire_name + b"|"
        self.login_frame = encode(Login(self.name))
        self.exit_frame = encode(Exit(self.name))

    def send(self, frame: bytes, frames: int = 1) -> bool:
        """Queue *frame* (or a block of *frames* frames); a peer that cannot
        take it is kicked as too slow."""
        return self.outbox.put(frame, frames) or self._too_slow()

    def send_lazy(self, frame: bytes) -> bool:
        """``send`` for a frame that may wait for ``Hub.flush_presence``."""
        return self.outbox.put_lazy(frame) or self._too_slow()

    def _too_slow(self) -> bool:
        self.kick("too slow: outgoing queue full")
        return False


class NameTaken(Exception):
    """Another online user holds a name that clashes with the one asked for."""


class Hub:
    """The online users, and delivery of presence and talk between them."""

    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}
        # The same peers by their names' bytes, as they wrote them.
        self._wire: dict[bytes, Peer] = {}
        self.batch_presence = False
        """When True, presence frames wait for ``flush_presence``, so that
        everyone gets the logins and exits of a busy moment in one write;
        whoever sets it must call ``flush_presence`` after ``presence_due``."""
        self.presence_due = trio.Event()
        self._held: list[Peer] = []
        self.due: list[Outbox] = []
        """Outboxes with frames to flush: whoever adds frames to an outbox
        (``Outbox.put``) calls ``flush_due`` before it next waits."""
        self.write_helpers: _WriteHelpers | None = None
        """Threads that share the writes of a broadcast or a large flush
        (see ``_share``); None: this thread writes alone."""

    def flush_due(self) -> None:
        """Send on the frames added since the last flush."""
        due = self.due
        if self.write_helpers is not None and len(due) >= _SHARED_FLUSH:
            self._flush_shared()
            return
        while due:
            # An outbox refuses only once closed; then its frames are moot.
            due.pop().flush()

    @contextmanager
    def write_threads(self, threads: int) -> Iterator[None]:
        """While in this block, *threads* helper threads (none for 0) share
        the writes of every large flush, such as a broadcast to many."""
        if not threads:
            yield
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="trichat-write") as pool:
            # Start them all now (each waits for the others), not on the first
            # large flush: what they cost is the server's, not a connection's.
            started = threading.Barrier(threads)
            for waiting in [pool.submit(started.wait) for _ in range(threads)]:
                waiting.result()
            self.write_helpers = _WriteHelpers(pool, threads)
            try:
                yield
            finally:
                self.write_helpers = None

    @trio.lowlevel.enable_ki_protection
    def _flush_shared(self) -> None:
        """``flush_due`` for many outboxes (presence for a crowd, say): the
        blocks to write at once are gathered first and written in one go
        (``_share``d with the write helpers), then what was not written is
        handed on to the writers. Ctrl-C waits until it is done (a write
        and its accounting must not be parted)."""
        outboxes: list[Outbox] = []
        fds: list[int] = []
        blocks: list[bytes] = []
        frames: list[int] = []
        due = self.due
        while due:
            outbox = due.pop()
            taken = outbox.take_pending()
            if taken is None:
                continue
            fd = outbox.direct_fd
            if fd is None:
                outbox.hand_on(*taken)
            else:
                outboxes.append(outbox)
                fds.append(fd)
                blocks.append(taken[0])
                frames.append(taken[1])
        written = [0] * len(fds)
        try:
            self._share(partial(_write_each, fds, blocks, written), len(fds))
        finally:
            # Even after an error: a block not written goes to the writer.
            for outbox, block, count, done in zip(
                outboxes, blocks, frames, written, strict=True
            ):
                outbox.wrote(block, count, done)

    def _share(self, work: _Share, items: int) -> None:
        """Do *work* for all its *items*: shared out between this thread and
        the write helpers if there are any and at least _SHARED_FLUSH items.
        They run at the same time while they are in ``write``, which
        releases the GIL. This returns once all the work is done, so
        nothing else runs meanwhile."""
        helpers = self.write_helpers
        if helpers is None or items < _SHARED_FLUSH:
            work(0, 1)
            return
        parts = helpers.threads + 1
        running: list[Future[None]] = []
        try:
            for part in range(1, parts):
                running.append(helpers.pool.submit(work, part, parts))
            work(0, parts)
        finally:
            # Even if this thread was interrupted: no write may outlive this
            # call (its descriptor could be closed and reused).
            _wait_for_all(running)
        for future in running:
            future.result()

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def names(self) -> list[str]:
        return [peer.name for peer in self._peers.values()]

    def join(self, peer: Peer) -> None:
        """Put *peer* online: tell everyone, then give the newcomer its
        acknowledgement and one ``login`` frame per user already online.

        Raises NameTaken when an online user's name clashes with the peer's.
        """
        if peer.key in self._peers:
            raise NameTaken(peer.name)
        self._announce(peer.login_frame)
        roster = [peer.login_frame]
        roster.extend(other.login_frame for other in self._peers.values())
        self._peers[peer.key] = peer
        self._wire[peer.wire_name] = peer
        # The roster is the server's own and may be large: it always fits.
        peer.outbox.put(b"".join(roster), force=True)

    def leave(self, peer: Peer, *, announce: bool = True) -> None:
        """Take *peer* offline and, if *announce*, tell everyone else."""
        if self._peers.get(peer.key) is not peer:
            return
        del self._peers[peer.key]
        del self._wire[peer.wire_name]
        if announce:
            self._announce(peer.exit_frame)

    def deliver(
        self, sender: Peer, talk: Talk, congested: list[Outbox]
    ) -> Error | None:
        """Route *talk* from *sender*; returns the error to tell the sender.

        Recipients' outboxes that are now congested are added to *congested*:
        the sender should let them drain before it sends more.
        """
        if talk.to == BROADCAST:
            frame = delivery_frame(sender.name, BROADCAST, talk.text)
            self._send_each(self._others(sender), frame, 1, congested)
            return None
        recipient = self._peers.get(name_key(talk.to))
        if recipient is None:
            return Error(ErrorCode.NO_SUCH_USER, talk.to)
        frame = delivery_frame(sender.name, recipient.name, talk.text)
        if not self._send_to(recipient, frame, 1, congested):
            return Error(ErrorCode.NO_SUCH_USER, talk.to)
        return None

    def relay_run(
        self,
        sender: Peer,
        target: bytes,
        lines: list[bytes],
        start: int,
        end: int,
        congested: list[Outbox],
    ) -> tuple[int, Error | None]:
        """``deliver`` for talk frames not decoded: ``lines[start:end]``, a
        run that ``plain_talk_run`` found, all to *target*. The hub takes it
        if *target* is ``*`` or an online user's name exactly as they wrote
        it, and turns it into one block of deliveries for each recipient,
        ending where a recipient becomes congested.

        Returns where the lines relayed end (*start*: the target is not
        one the hub takes; decode the run) and the error each of them
        earns, if any.
        """
        if target == b"*":
            peers = self._others(sender)
            if not peers:
                return end, None
            rooms = [peer.outbox.room for peer in peers] if end - start > 1 else []
            block, count = _deliveries(
                sender.talk_prefix,
                lines[start:end],
                min([frames for frames, _ in rooms], default=1),
                min([size for _, size in rooms], default=1),
            )
            self._send_each(peers, block, count, congested)
            return start + count, None
        recipient = self._wire.get(target)
        if recipient is None:
            return start, None
        block, count = _deliveries(
            sender.talk_prefix, lines[start:end], *recipient.outbox.room
        )
        if not self._send_to(recipient, block, count, congested):
            return start + count, Error(ErrorCode.NO_SUCH_USER, recipient.name)
        return start + count, None

    def _others(self, sender: Peer) -> list[Peer]:
        """Everyone online but *sender*: a broadcast's recipients."""
        return [peer for peer in self._peers.values() if peer is not sender]

    @trio.lowlevel.enable_ki_protection
    def _send_each(
        self, peers: list[Peer], data: bytes, frames: int, congested: list[Outbox]
    ) -> None:
        """Send *data* (*frames* frames) to each of *peers*; those too slow
        to take it are dropped.

        Most peers of a chat have nothing queued: theirs is written at
        once, in one pass shared with the write helpers, so that the first
        write does not wait for any queueing. The others get it queued,
        behind what they have, after that pass. Ctrl-C waits until it is
        done (a write and its accounting must not be parted).
        """
        outboxes = [peer.outbox for peer in peers]
        written = [-1] * len(outboxes)
        try:
            self._share(
                partial(_write_to_idle, outboxes, data, frames, written),
                len(outboxes),
            )
        finally:
            # Even after an error, so that nobody is left with part of it.
            size = len(data)
            for peer, outbox, count in zip(peers, outboxes, written, strict=True):
                if count == size:
                    continue
                if count >= 0:
                    outbox.wrote_idle(data, frames, count)
                elif not peer.send(data, frames):
                    continue
                if outbox.congested:
                    congested.append(outbox)

    def _send_to(
        self, recipient: Peer, data: bytes, frames: int, congested: list[Outbox]
    ) -> bool:
        """Queue *data* (*frames* frames) for *recipient*, noting its outbox
        in *congested* if it now is; False if it was too slow to take it
        (and is now being dropped)."""
        if not recipient.send(data, frames):
            return False
        if recipient.outbox.congested:
            congested.append(recipient.outbox)
        return True

    def flush_presence(self) -> None:
        """Queue the presence frames held back for batching."""
        held, self._held = self._held, []
        self.presence_due = trio.Event()
        for peer in held:
            peer.outbox.mark_due()
        self.flush_due()

    def _announce(self, frame: bytes) -> None:
        peers = list(self._peers.values())
        if not self.batch_presence:
            for peer in peers:
                peer.send(frame)
            return
        held = self._held
        for peer in peers:
            if not peer.outbox.pending.blocks:
                held.append(peer)
            peer.send_lazy(frame)
        self.presence_due.set()


def _deliveries(
    prefix: bytes, lines: list[bytes], frame_room: int, byte_room: int
) -> tuple[bytes, int]:
    """One block of deliveries for *lines* (``talk|TARGET|TEXT``, ``plain_talk_run``'s),
    *prefix* (``talk|SENDER|``) put in each, as many as fit the room an
    outbox has (``Outbox.room``) but at least one; and how many it holds."""
    texts = [line[5:] for line in lines[: max(1, frame_room)]]
    overhead = len(prefix) + 1
    if len(texts) > 1 and sum(map(len, texts)) + overhead * len(texts) > byte_room:
        size = 0
        for count, text in enumerate(texts):
            if size >= byte_room and count:
                del texts[count:]
                break
            size += len(text) + overhead
    return prefix + (b"\n" + prefix).join(texts) + b"\n", len(texts)
