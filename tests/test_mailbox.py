"""Mailbox: the bounded, sequence-numbered queue between the hub and a writer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trichat.server.mailbox import Batch, Mailbox, write_loop

# No test here should come anywhere near this, even on a slow machine.
TIMEOUT = 5.0


def frames(*numbers: int) -> bytes:
    return b"".join(b"frame %d\n" % number for number in numbers)


# A batch no writer would ever see.
_NOTHING = Batch(0, b"", 0)


# -- putting -----------------------------------------------------------------------


def test_a_put_is_counted_and_numbered() -> None:
    mailbox = Mailbox(10, 1000)
    assert (mailbox.next_seq, mailbox.queued_frames, mailbox.queued_bytes) == (1, 0, 0)
    assert mailbox.put(b"one\n")
    assert mailbox.put(b"two\nthree\n", 2)
    assert mailbox.next_seq == 4
    assert (mailbox.queued_frames, mailbox.queued_bytes) == (3, 14)
    assert mailbox.drain() == b"one\ntwo\nthree\n"


@pytest.mark.parametrize(("max_frames", "max_bytes"), [(3, 1000), (100, 12)])
def test_a_put_that_does_not_fit_is_refused_and_changes_nothing(
    max_frames: int, max_bytes: int
) -> None:
    mailbox = Mailbox(max_frames, max_bytes)
    assert mailbox.put(b"abc\n")
    assert mailbox.put(b"def\n")
    assert mailbox.fits(4, 1)
    assert mailbox.put(b"ghi\n")  # exactly at the limit: fits
    assert not mailbox.fits(4, 1)
    assert not mailbox.put(b"jkl\n")
    assert (mailbox.queued_frames, mailbox.next_seq) == (3, 4)
    assert mailbox.drain() == b"abc\ndef\nghi\n"


def test_a_whole_block_of_any_size_fits_only_an_empty_mailbox() -> None:
    # A crowd's presence can be larger than --queue-bytes: a reader that
    # keeps up takes it; one that has not read what came before does not.
    # Anything else that large does not fit at all (1.0's limit).
    mailbox = Mailbox(100, 10)
    assert not mailbox.put(b"x" * 50 + b"\n")
    mailbox.lost = False
    assert mailbox.put(b"x" * 50 + b"\n", whole=True)
    assert mailbox.congested
    assert not mailbox.put(b"a\n")
    assert mailbox.drain() == b"x" * 50 + b"\n"
    assert mailbox.put(b"a\n")
    assert not mailbox.put(b"y" * 50 + b"\n", whole=True)
    assert mailbox.lost


def test_a_block_counts_all_its_frames_against_the_limit() -> None:
    mailbox = Mailbox(3, 1000)
    assert not mailbox.put(b"a\nb\nc\nd\n", 4)
    assert mailbox.put(b"a\nb\nc\n", 3)
    assert mailbox.queued_frames == 3


def test_force_ignores_the_limits_but_counts() -> None:
    mailbox = Mailbox(1, 10)
    roster = b"login|someone\n" * 5
    assert mailbox.put(roster, force=True)
    assert (mailbox.queued_frames, mailbox.queued_bytes) == (1, len(roster))
    assert not mailbox.put(b"x\n")  # full now
    assert mailbox.drain() == roster


def test_nothing_is_taken_once_closed_not_even_by_force() -> None:
    mailbox = Mailbox(10, 1000)
    mailbox.close()
    assert not mailbox.put(b"x\n")
    assert not mailbox.put(b"x\n", force=True)
    assert mailbox.next_seq == 1


# -- room, congestion and stalls ----------------------------------------------


def test_room_is_what_may_be_added_before_a_sender_should_wait() -> None:
    mailbox = Mailbox(10, 100)
    assert mailbox.room == (6, 51)
    mailbox.put(b"x" * 9 + b"\n")
    assert mailbox.room == (5, 41)
    assert not mailbox.congested
    # Stalled: nobody waits for it, so the room is all that is left.
    mailbox.stalled = True
    assert mailbox.room == (9, 90)


@pytest.mark.parametrize(
    ("put", "congested"),
    [
        ([b"x\n"] * 5, False),  # half the frames
        ([b"x\n"] * 6, True),
        ([b"x" * 49 + b"\n"], False),  # half the bytes
        ([b"x" * 50 + b"\n"], True),
    ],
)
def test_more_than_half_full_is_congested(put: list[bytes], congested: bool) -> None:
    mailbox = Mailbox(10, 100)
    for data in put:
        assert mailbox.put(data)
    assert mailbox.congested is congested
    mailbox.stalled = True
    assert not mailbox.congested


async def test_make_room_returns_at_once_when_not_congested(
    autojump_clock: MockClock,
) -> None:
    mailbox = Mailbox(10, 100)
    mailbox.put(b"x\n")
    start = trio.current_time()
    with trio.fail_after(TIMEOUT):
        await mailbox.make_room(1.0)
    assert trio.current_time() == start
    assert not mailbox.stalled


async def test_make_room_waits_while_the_writer_makes_progress(
    autojump_clock: MockClock,
) -> None:
    mailbox = Mailbox(4, 1000)
    for _ in range(3):
        mailbox.put(b"frame\n")
    assert mailbox.congested
    done = trio.Event()

    async def sender() -> None:
        await mailbox.make_room(1.0)
        done.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            batch = await mailbox.next_batch()
            assert batch is not None
            # A piece written every 0.9 s: slow, but never stalled.
            for _ in range(3):
                await trio.sleep(0.9)
                mailbox.sent(6)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()
            mailbox.written(batch)
            await trio.sleep(0.9)
            mailbox.sent(0)  # as a writer's next write does
            await done.wait()
    assert not mailbox.stalled
    assert trio.current_time() == pytest.approx(3.6)


async def test_a_writer_with_no_progress_for_the_stall_timeout_is_stalled(
    autojump_clock: MockClock,
) -> None:
    mailbox = Mailbox(4, 1000)
    for _ in range(3):
        mailbox.put(b"frame\n")
    with trio.fail_after(TIMEOUT):
        await mailbox.make_room(2.5)
    assert trio.current_time() == pytest.approx(2.5)
    assert (mailbox.stalled, mailbox.congested) == (True, False)
    assert mailbox.room == (1, 1000 - 18)
    # Any progress and it is waited for again.
    mailbox.sent(0)
    assert (mailbox.stalled, mailbox.congested) == (False, True)


async def test_close_wakes_a_sender_waiting_for_room(autojump_clock: MockClock) -> None:
    mailbox = Mailbox(4, 1000)
    for _ in range(3):
        mailbox.put(b"frame\n")
    start = trio.current_time()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.make_room, 10.0)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
    assert trio.current_time() == start
    assert mailbox.stalled


# -- the writer's side ---------------------------------------------------------------


async def test_next_batch_takes_everything_queued_as_one_batch() -> None:
    mailbox = Mailbox(10, 1000)
    mailbox.put(frames(1))
    mailbox.put(frames(2, 3), 2)
    mailbox.put(frames(4))
    with trio.fail_after(TIMEOUT):
        assert await mailbox.next_batch() == Batch(1, frames(1, 2, 3, 4), 4)
        mailbox.put(frames(5))
        assert await mailbox.next_batch() == Batch(5, frames(5), 1)
    # Taken is not written: the frames count until the writer says so.
    assert mailbox.queued_frames == 5


async def test_next_batch_waits_for_a_put() -> None:
    mailbox = Mailbox(10, 1000)
    got: list[Batch | None] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                got.append(await mailbox.next_batch())

            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            mailbox.put(frames(1))
            mailbox.put(frames(2))
    # What came while it woke is taken with it.
    assert got == [Batch(1, frames(1, 2), 2)]


async def test_next_batch_ends_with_none_once_closed_and_empty() -> None:
    mailbox = Mailbox(10, 1000)
    mailbox.put(frames(1))
    mailbox.close(b"error|shutting-down|bye\n")
    assert mailbox.closed
    assert mailbox.final == b"error|shutting-down|bye\n"
    with trio.fail_after(TIMEOUT):
        assert await mailbox.next_batch() == Batch(1, frames(1), 1)
        assert await mailbox.next_batch() is None
        assert await mailbox.next_batch() is None


async def test_close_wakes_a_waiting_writer_with_none() -> None:
    mailbox = Mailbox(10, 1000)
    got: list[Batch | None] = [_NOTHING]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                got[0] = await mailbox.next_batch()

            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            mailbox.close()
    assert got == [None]


def test_sent_counts_bytes_and_written_counts_frames() -> None:
    mailbox = Mailbox(10, 1000)
    mailbox.put(frames(1, 2), 2)
    batch = Batch(1, frames(1, 2), 2)
    mailbox.sent(5)
    assert (mailbox.queued_frames, mailbox.queued_bytes) == (2, 11)
    assert mailbox.last_written == 0
    mailbox.sent(11)
    mailbox.written(batch)
    assert (mailbox.queued_frames, mailbox.queued_bytes) == (0, 0)
    assert mailbox.last_written == 2


def test_drain_takes_and_counts_everything_as_written() -> None:
    mailbox = Mailbox(10, 1000)
    mailbox.put(frames(1))
    mailbox.put(frames(2, 3), 2)
    assert mailbox.drain() == frames(1, 2, 3)
    assert (mailbox.queued_frames, mailbox.queued_bytes) == (0, 0)
    assert mailbox.last_written == 3
    assert mailbox.drain() == b""


# -- keeping what was written, for a resume --------------------------------------


def msg(number: int) -> bytes:
    return b"msg|%d|2026-12-03T09:15:02.125Z|alice|bob|text %d\n" % (number, number)


def _written_one_by_one(mailbox: Mailbox, *numbers: int) -> None:
    for number in numbers:
        assert mailbox.put(msg(number), last_id=number)
        assert mailbox.drain() == msg(number)


def test_messages_after_gives_the_kept_messages_above_an_id() -> None:
    mailbox = Mailbox(10, 1000, keep=3)
    _written_one_by_one(mailbox, 10, 11, 12, 13, 14)
    assert mailbox.messages_after(11) == [msg(12), msg(13), msg(14)]
    assert mailbox.messages_after(14) == []
    # 11 is no longer kept: whoever saw only up to 10 cannot be told all.
    assert mailbox.messages_after(10) is None
    assert mailbox.messages_after(0) is None


def test_messages_after_keeps_nothing_by_default() -> None:
    mailbox = Mailbox(10, 1000)
    _written_one_by_one(mailbox, 1, 2)
    assert mailbox.messages_after(5) == []
    mailbox.keep_written(5)
    _written_one_by_one(mailbox, 3, 4)
    assert mailbox.messages_after(2) == [msg(3), msg(4)]


def test_messages_after_skips_other_frames_and_takes_what_is_not_written() -> None:
    mailbox = Mailbox(10, 1000, keep=10)
    mailbox.put(b"login|carol\n" + msg(1) + b"join|#x|dave\n", 3, last_id=1)
    mailbox.drain()
    mailbox.put(msg(2), last_id=2)
    mailbox.put(b"exit|carol\n")
    mailbox.put(msg(3), last_id=3)
    assert mailbox.messages_after(1) == [msg(2), msg(3)]
    # What was not written is taken out: the resuming connection sends it.
    assert (mailbox.in_channel, mailbox.queued_frames) == (0, 0)


async def test_messages_after_counts_a_batch_being_written() -> None:
    mailbox = Mailbox(10, 1000, keep=10)
    mailbox.put(msg(1), last_id=1)
    with trio.fail_after(TIMEOUT):
        assert await mailbox.next_batch() is not None
    # Taken by the writer, not written yet.
    assert mailbox.messages_after(0) == [msg(1)]


def test_a_frame_that_did_not_fit_makes_any_resume_fail() -> None:
    mailbox = Mailbox(1, 1000, keep=10)
    assert mailbox.put(msg(1))
    assert not mailbox.put(msg(2))
    assert mailbox.messages_after(0) is None


# -- write_loop ------------------------------------------------------------------


class FakeSocket:
    """A writer's ``send`` that records each write, reports it in pieces
    of *piece* bytes, and can be held shut."""

    def __init__(self, piece: int = 1 << 20) -> None:
        self.writes: list[bytes] = []
        self.piece = piece
        self.open = trio.Event()
        self.open.set()

    async def send(self, data: bytes, progress: Callable[[int], None]) -> None:
        await self.open.wait()
        self.writes.append(data)
        for start in range(0, len(data), self.piece):
            progress(len(data[start : start + self.piece]))
            await trio.lowlevel.checkpoint()


async def test_write_loop_writes_batches_in_order_then_the_final_frame() -> None:
    mailbox = Mailbox(10, 1000)
    socket = FakeSocket()
    socket.open = trio.Event()  # shut until the test opens it
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_loop, mailbox, socket.send)
            mailbox.put(frames(1))
            await trio.testing.wait_all_tasks_blocked()
            # While the first write waits, more piles up: one write for it.
            mailbox.put(frames(2))
            mailbox.put(frames(3, 4), 2)
            socket.open.set()
            await trio.testing.wait_all_tasks_blocked()
            assert socket.writes == [frames(1), frames(2, 3, 4)]
            assert (mailbox.queued_frames, mailbox.queued_bytes) == (0, 0)
            assert mailbox.last_written == 4
            mailbox.put(frames(5))
            mailbox.close(b"error|shutting-down|bye\n")
    assert socket.writes == [
        frames(1),
        frames(2, 3, 4),
        frames(5),
        b"error|shutting-down|bye\n",
    ]
    assert mailbox.last_written == 5


async def test_write_loop_reports_progress_piece_by_piece() -> None:
    mailbox = Mailbox(10, 1000)
    socket = FakeSocket(piece=4)
    seen: list[int] = []

    async def send(data: bytes, progress: Callable[[int], None]) -> None:
        def watched(count: int) -> None:
            progress(count)
            seen.append(mailbox.queued_bytes)

        await socket.send(data, watched)

    mailbox.put(b"0123456789\n")
    mailbox.close()
    with trio.fail_after(TIMEOUT):
        await write_loop(mailbox, send)
    assert seen == [7, 3, 0]
    assert socket.writes == [b"0123456789\n"]


async def test_write_loop_with_nothing_final_writes_nothing_more() -> None:
    mailbox = Mailbox(10, 1000)
    socket = FakeSocket()
    mailbox.close()
    with trio.fail_after(TIMEOUT):
        await write_loop(mailbox, socket.send)
    assert socket.writes == []


# -- the server's own answers ----------------------------------------------------


def test_a_forced_answer_does_not_count_against_the_byte_limit() -> None:
    mailbox = Mailbox(10, 100)
    roster = b"login|" + b"x" * 300 + b"\n"
    assert mailbox.put(roster, force=True)
    # The frames that follow still fit, and it is not congested.
    assert mailbox.counted_bytes == 0
    assert not mailbox.congested
    assert mailbox.put(frames(1))
    assert mailbox.drain() == roster + frames(1)
    assert (mailbox.queued_bytes, mailbox.answer_bytes) == (0, 0)


async def test_an_answer_counts_out_until_its_batch_is_written() -> None:
    mailbox = Mailbox(10, 100)
    mailbox.put(frames(1))
    answer = b"room|#" + b"x" * 200 + b"|1\n"
    mailbox.put(answer, force=True)
    with trio.fail_after(TIMEOUT):
        batch = await mailbox.next_batch()
    assert batch is not None
    mailbox.sent(10)  # part of it written: still being written
    assert mailbox.answer_bytes == len(answer)
    mailbox.sent(len(batch.data) - 10)
    mailbox.written(batch)
    assert (mailbox.queued_bytes, mailbox.answer_bytes) == (0, 0)
