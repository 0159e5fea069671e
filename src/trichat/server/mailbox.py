"""A user's mailbox: the bounded queue between the hub and a writer task.

The hub puts encoded frames into a ``Mailbox``; the connection's writer
task (``write_loop``) takes them out and alone writes them to the socket.
Between the two is a bounded Trio memory channel. An item is a batch: one
read's worth of deliveries to one user is one ``send_nowait``, and the
writer takes everything that piled up while it was writing in one go, so a
busy user costs one system call per wake-up of their writer.

``put`` never waits. The mailbox is bounded in frames and in bytes (the
server's ``--queue-size`` and ``--queue-bytes``) and the channel in
batches; a frame that does not fit, or a ``send_nowait`` that raises
``WouldBlock``, is refused, and the hub takes that user offline as too
slow. Every frame gets a sequence number (a block put as one frame, such
as a newcomer's roster, gets one), and the mailbox can keep the last
frames its writer wrote (``keep``): a session that resumes after a drop
is sent again every message it may have missed (``messages_after``),
since a drop can lose what the kernel had accepted but the client never
read.

A mailbox more than half full is *congested*: senders to it wait (see
``make_room``) while its writer makes progress, so a burst does not get a
client that keeps reading dropped. One whose writer makes no progress for
a while is *stalled*: nobody waits for it any more, it fills up and its
user is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

import trio

from ..protocol._codec import message_frames

__all__ = ["Batch", "Drainable", "Mailbox", "Turnstile", "write_loop"]

# Writes at least this large take turns (see write_loop).
BIG_WRITE = 16 * 1024

# What travels in the channel: a Batch's fields.
_Item = tuple[int, bytes, int]


class Drainable(Protocol):
    """What a sender may have to wait for: a recipient's mailbox (or the
    store) more than half full."""

    async def make_room(self, stall_timeout: float) -> None: ...


class Batch(NamedTuple):
    """Frames that travel together: *frames* LF-terminated frames in *data*,
    numbered from *first*."""

    first: int
    data: bytes
    frames: int


class _Kept(NamedTuple):
    """Messages written and kept for a resume: *frames* frames in *data*,
    the last of them message *last_id*."""

    last_id: int
    data: bytes
    frames: int


class Mailbox:
    """One user's outgoing frames, bounded in frames and bytes; see the module."""

    __slots__ = (
        "_answers",
        "_idle_since",
        "_inbox",
        "_kept",
        "_kept_frames",
        "_outbox",
        "_progress",
        "_unwritten",
        "answer_bytes",
        "closed",
        "discarded",
        "final",
        "forgotten",
        "in_channel",
        "keep",
        "last_written",
        "lost",
        "max_bytes",
        "max_frames",
        "next_seq",
        "queued_bytes",
        "queued_frames",
        "stalled",
        "taken",
    )

    def __init__(self, max_frames: int, max_bytes: int, *, keep: int = 0) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        # Every batch holds a frame at least, so the frame limit is reached
        # first; the channel's own bound is a backstop.
        self._outbox, self._inbox = trio.open_memory_channel[_Item](max_frames)
        self.queued_frames = 0  # held, in the channel, or being written
        self.queued_bytes = 0
        self.in_channel = 0
        """Batches in the channel, not yet taken by the writer."""
        self.next_seq = 1
        """The sequence number the next frame put will get."""
        self.keep = keep
        """How many written frames to keep for ``written_since``."""
        # Made only if something is kept: an empty deque is half a KiB, and
        # a server holds thousands of mailboxes.
        self._kept: deque[_Kept] | None = deque() if keep else None
        self._kept_frames = 0
        self.last_written = 0
        """The sequence number of the last frame the writer wrote."""
        self.forgotten = 0
        """The highest message id no longer kept (``messages_after``)."""
        self.lost = False
        """A frame did not fit: what follows cannot be told in full."""
        self.stalled = False
        self.closed = False
        self.discarded = False
        self.final = b""
        """Written after everything queued, whatever the limits: a closing
        error."""
        self._progress: trio.Event | None = None
        self.taken: Batch | None = None
        """The batch the writer took and has not written whole yet."""
        # Since when a sender has seen it congested and its writer has made
        # no progress (None: it has since).
        self._idle_since: float | None = None
        self.answer_bytes = 0
        """Bytes of the server's own answers put with *force* and not
        written yet: they do not count against ``max_bytes``."""
        # The answers not written yet (sequence number, size): a few at a
        # time (a login's roster...), so a list (an empty deque is 760
        # bytes, and a server holds thousands of mailboxes).
        self._answers: list[tuple[int, int]] = []
        # What was put and is not written yet, while messages are kept:
        # (first sequence number, data, the id of its last msg frame or 0).
        self._unwritten: deque[tuple[int, bytes, int]] | None = (
            deque() if keep else None
        )

    # -- for senders -----------------------------------------------------------

    def fits(self, size: int, frames: int) -> bool:
        # counted_bytes, inlined: every frame put asks.
        return (
            self.queued_frames + frames <= self.max_frames
            and self.queued_bytes - self.answer_bytes + size <= self.max_bytes
        )

    @property
    def counted_bytes(self) -> int:
        """The bytes queued that count against ``max_bytes``: all but the
        server's own answers (a roster, a join list), which may be large and
        are bounded by the server's size, not by what the client asked."""
        return self.queued_bytes - self.answer_bytes

    @property
    def room(self) -> tuple[int, int]:
        """How much a sender may add before it should wait, in frames and in
        bytes: a frame fits while less than that has been added (so the
        frame that makes the mailbox congested still does)."""
        if self.stalled:
            # Nobody waits for it any more: until it is full.
            return (
                self.max_frames - self.queued_frames,
                self.max_bytes - self.counted_bytes,
            )
        return (
            self.max_frames // 2 + 1 - self.queued_frames,
            self.max_bytes // 2 + 1 - self.counted_bytes,
        )

    def put(
        self,
        data: bytes,
        frames: int = 1,
        *,
        force: bool = False,
        last_id: int = 0,
        whole: bool = False,
    ) -> bool:
        """Send *data*, one frame or a block of *frames* frames, to the writer.

        False when it does not fit (the user is too slow) or the mailbox is
        closed. With *force* the size limits do not apply: for the server's
        own frames that must get through (a newcomer's roster, which can
        be large). A *whole* block fits a mailbox with no counted bytes
        whatever its size: the server's news of a crowd (its logins and
        exits), which a client that keeps up must not be dropped for.
        """
        if self.closed or not (
            force
            or self.fits(len(data), frames)
            or (
                whole
                and not self.counted_bytes
                and self.queued_frames + frames <= self.max_frames
            )
        ):
            self.lost = True
            return False
        if not force:
            return self._send(data, frames, last_id)
        size = len(data)
        if not self._send(data, frames, last_id):
            return False
        # Counted out until the batch that holds it is written.
        self.answer_bytes += size
        self._answers.append((self.next_seq - 1, size))
        return True

    def _send(self, data: bytes, frames: int, last_id: int = 0) -> bool:
        try:
            # A plain tuple: cheaper to make than a Batch, for each recipient.
            self._outbox.send_nowait((self.next_seq, data, frames))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.lost = True
            return False
        if last_id and self._unwritten is not None:
            # Messages (*last_id*: the id of the last of them), kept until
            # written and then some, for a resume (messages_after).
            self._unwritten.append((self.next_seq, data, last_id))
        self.in_channel += 1
        self.next_seq += frames
        self.queued_frames += frames
        self.queued_bytes += len(data)
        return True

    def was_congested(self, size: int, frames: int) -> bool:
        """Whether it was congested already before the last *frames* frames
        (*size* bytes) were put: whoever put them did not fill it."""
        return not self.stalled and (
            (self.queued_frames - frames) * 2 > self.max_frames
            or (self.counted_bytes - size) * 2 > self.max_bytes
        )

    @property
    def congested(self) -> bool:
        return not self.stalled and (
            self.queued_frames * 2 > self.max_frames
            or (self.queued_bytes - self.answer_bytes) * 2 > self.max_bytes
        )

    async def answers_read(self, most: int, stall_timeout: float) -> bool:
        """Wait until the server's answers not written yet (``answer_bytes``)
        are at most *most* bytes, as long as the writer makes progress;
        False once it has made none for *stall_timeout*, or if the mailbox
        is closed."""
        while self.answer_bytes > most:
            if self.closed:
                return False
            if self._progress is None:
                self._progress = trio.Event()
            with trio.move_on_after(stall_timeout) as waited:
                await self._progress.wait()
            if waited.cancelled_caught:
                return False
        return True

    async def make_room(self, stall_timeout: float) -> None:
        """Wait until the mailbox is at most half full, as long as its writer
        keeps writing: after *stall_timeout* without progress, mark it
        stalled and return. The time without progress adds up over every
        wait, so waits cut short (a sender's ``max_sender_wait``) still
        find a writer that makes none."""
        while self.congested:
            now = trio.current_time()
            if self._idle_since is None:
                self._idle_since = now
            left = self._idle_since + stall_timeout - now
            if left <= 0:
                self.stalled = True
                return
            if self._progress is None:
                self._progress = trio.Event()
            with trio.move_on_after(left):
                await self._progress.wait()

    def close(self, final: bytes = b"") -> None:
        """Take no more frames; the writer writes what is queued, then *final*."""
        self.closed = True
        self.final = final
        self._outbox.close()
        # Wake whoever waits for room, and let nobody wait for it again.
        self._progressed()
        self.stalled = True

    def discard(self) -> None:
        """Take no more frames and write nothing more, not even what is
        queued: the user was dropped."""
        self.close()
        self.discarded = True

    # -- for the writer --------------------------------------------------------

    async def next_batch(self) -> Batch | None:
        """Wait for frames and take all that are queued, as one batch; None
        once the mailbox is closed and empty."""
        inbox = self._inbox
        # The channel's length is counted here (``in_channel``) so that
        # taking what is there raises no WouldBlock on the hot path.
        if self.in_channel:
            first, data, frames = inbox.receive_nowait()
        else:
            try:
                first, data, frames = await inbox.receive()
            except trio.EndOfChannel:
                return None
        more = self.in_channel - 1
        self.in_channel = 0
        if more:
            pieces = [data]
            for _ in range(more):
                _, later, count = inbox.receive_nowait()
                pieces.append(later)
                frames += count
            data = b"".join(pieces)
        self.taken = batch = Batch(first, data, frames)
        return batch

    def sent(self, count: int) -> None:
        """The writer wrote *count* more bytes."""
        self.queued_bytes -= count
        self._progressed()

    def written(self, batch: Batch) -> None:
        """The writer wrote all of *batch*."""
        self.taken = None
        self.queued_frames -= batch.frames
        self.last_written = batch.first + batch.frames - 1
        answers = self._answers
        while answers and answers[0][0] <= self.last_written:
            self.answer_bytes -= answers.pop(0)[1]
        kept, unwritten = self._kept, self._unwritten
        if kept is None or unwritten is None:
            return
        # Only messages are kept: a resume sends the rest (presence, rooms)
        # as a snapshot. Each piece with the id of its last message, so
        # that nothing is parsed to forget it.
        while unwritten and unwritten[0][0] <= self.last_written:
            _, data, last_id = unwritten.popleft()
            frames = data.count(b"\n")
            kept.append(_Kept(last_id, data, frames))
            self._kept_frames += frames
        while kept and self._kept_frames - kept[0].frames >= self.keep:
            gone = kept.popleft()
            self._kept_frames -= gone.frames
            self.forgotten = max(self.forgotten, gone.last_id)

    def keep_written(self, count: int) -> None:
        """From now on keep at least the last *count* frames written."""
        self.keep = count
        if self._kept is None:
            self._kept = deque()
        if self._unwritten is None:
            self._unwritten = deque()

    def messages_after(self, last_id: int) -> list[bytes] | None:
        """Every message frame (``msg``) with an id above *last_id* that
        this mailbox kept, is writing or holds, in order; None when it
        cannot be sure that is all of them (one no longer kept, or one that
        did not fit). Those it holds and has not written are taken out: the
        caller sends them again, elsewhere."""
        if self.lost or self.forgotten > last_id:
            return None
        pieces = [batch.data for batch in self._kept or ()]
        pieces.extend(self._take_unwritten_messages())
        return [
            frame
            for piece in pieces
            for number, frame in message_frames(piece)
            if number > last_id
        ]

    def take_unwritten_messages(self) -> list[bytes]:
        """The message frames put and not written yet, taken out: for
        whoever takes the session over."""
        pieces = self._take_unwritten_messages()
        return [frame for piece in pieces for _, frame in message_frames(piece)]

    def _take_unwritten_messages(self) -> list[bytes]:
        """Take out every piece of messages not written yet (while messages
        are kept): in the channel, handed to a writer that has not run yet,
        or being written. A mailbox that keeps none (protocol 1) gives
        none and keeps what it holds: its writer writes it."""
        if self._unwritten is None:
            return []
        pieces = [data for _, data, _ in self._unwritten]
        self._unwritten.clear()
        self._take_unwritten()
        return pieces

    def drop_unwritten(self) -> list[bytes]:
        """Drop what the writer has not taken yet (not the batch it is
        writing, so that no frame is cut): at shutdown, for a client whose
        backlog there is no time for. The messages dropped (``msg`` or
        ``talk`` frames)."""
        pieces = self._take_unwritten()
        self.lost = True
        return _messages_in(pieces)

    def leftover_messages(self) -> list[bytes]:
        """The messages (``msg`` or ``talk`` frames) put and never written
        whole, taken out: once the writer is gone, for the direct messages
        to an account that its connection did not get to write (a client
        that did not read them before the connection closed, one dropped)."""
        if self._unwritten is not None:
            return self.take_unwritten_messages()
        pieces = self._take_unwritten()
        if self.taken is not None:
            # Cut off in the middle, or never begun: perhaps not read.
            pieces.insert(0, self.taken.data)
            self.taken = None
        return _messages_in(pieces)

    def _take_unwritten(self) -> list[bytes]:
        """Take what waits in the channel's buffer, counted as gone. (A
        batch the channel handed straight to a waiting writer is not in
        the buffer: that writer writes it.)"""
        pieces = []
        oldest = self.next_seq
        while self.in_channel:
            try:
                first, data, frames = self._inbox.receive_nowait()
            except trio.WouldBlock:
                break
            oldest = min(oldest, first)
            self.in_channel -= 1
            self.queued_frames -= frames
            self.queued_bytes -= len(data)
            answers = self._answers
            while answers and answers[0][0] < first + frames:
                self.answer_bytes -= answers.pop(0)[1]
            pieces.append(data)
        # What was taken is the newest of what was put: no longer unwritten
        # (nor kept, once "written").
        unwritten = self._unwritten
        while unwritten and unwritten[-1][0] >= oldest:
            unwritten.pop()
        return pieces

    def drain(self) -> bytes:
        """Everything queued, taken at once as a writer would; for code that
        has no writer task, such as micro-benchmarks."""
        data: list[bytes] = []
        while self.in_channel:
            self.in_channel -= 1
            batch = Batch(*self._inbox.receive_nowait())
            data.append(batch.data)
            self.sent(len(batch.data))
            self.written(batch)
        return b"".join(data)

    def _progressed(self) -> None:
        self.stalled = False
        self._idle_since = None
        if self._progress is not None:
            self._progress.set()
            self._progress = None


def _messages_in(pieces: list[bytes]) -> list[bytes]:
    """The ``msg`` and ``talk`` frames in *pieces* (whole frames)."""
    return [
        line + b"\n"
        for piece in pieces
        for line in piece.split(b"\n")
        if line.startswith((b"msg|", b"talk|"))
    ]


class Turnstile:
    """Lets at most *per_turn* tasks through per turn of the event loop.

    Trio runs every task that is ready in one turn, so when thousands have
    work at once (connections ending together, writers each given a large
    block) that turn lasts as long as all their work, and every other user
    waits that long for their next step. Through a turnstile they take
    turns: the crowd's work is done a little later, and everyone else's
    latency stays that of a few of them.
    """

    def __init__(self, per_turn: int) -> None:
        self._limiter = trio.CapacityLimiter(per_turn)

    async def take_turn(self) -> None:
        async with self._limiter:
            # Hold a place until the next turn: the work after this call
            # runs then, with at most per_turn others doing theirs.
            await trio.lowlevel.checkpoint()


async def write_loop(
    mailbox: Mailbox,
    send: Callable[[bytes, Callable[[int], None]], Awaitable[None]],
    big_writes: Turnstile | None = None,
) -> None:
    """The writer task: write each batch from *mailbox* with *send*, which
    reports each piece it writes, until the mailbox is closed and empty;
    then the mailbox's final frame. Nothing else writes to the connection.
    A batch of BIG_WRITE bytes or more first passes *big_writes*: a crowd's
    presence, thousands of exits for every user at once, is written a few
    users a turn, not all in one."""
    sent = mailbox.sent
    while (batch := await mailbox.next_batch()) is not None:
        if big_writes is not None and len(batch.data) >= BIG_WRITE:
            await big_writes.take_turn()
        if mailbox.discarded:
            return
        await send(batch.data, sent)
        mailbox.written(batch)
    if mailbox.final and not mailbox.discarded:
        await send(mailbox.final, lambda _: None)
