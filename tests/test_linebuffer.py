"""The line buffer: splitting bytes into lines under a byte limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trichat.protocol._linebuffer import LineBuffer, LineTooLong


def lines_of(buffer: LineBuffer) -> list[bytes]:
    """Every whole line the buffer holds now."""
    lines = []
    while (line := buffer.next_line()) is not None:
        lines.append(line)
    return lines


def test_no_line_until_its_lf() -> None:
    buffer = LineBuffer(100)
    assert buffer.next_line() is None
    buffer.feed(b"login|alice")
    assert buffer.next_line() is None
    buffer.feed(b"\n")
    assert buffer.next_line() == b"login|alice"
    assert buffer.next_line() is None
    assert len(buffer) == 0


def test_several_lines_in_one_feed() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"one\ntwo\nthree\npart")
    assert lines_of(buffer) == [b"one", b"two", b"three"]
    assert len(buffer) == len(b"part")
    buffer.feed(b"ial\n")
    assert lines_of(buffer) == [b"partial"]


def test_a_line_trickling_in_byte_by_byte() -> None:
    buffer = LineBuffer(100)
    for byte in b"talk|bob|hi":
        buffer.feed(bytes([byte]))
        assert buffer.next_line() is None
    buffer.feed(b"\nx")
    assert buffer.next_line() == b"talk|bob|hi"
    assert buffer.next_line() is None
    assert len(buffer) == 1


def test_lf_arriving_after_a_search_found_none() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"ab")
    assert buffer.next_line() is None
    buffer.feed(b"c\nd")
    assert buffer.next_line() == b"abc"
    buffer.feed(b"e\n")
    assert buffer.next_line() == b"de"


def test_crlf_loses_its_cr() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"one\r\ntwo\n\r\n")
    assert lines_of(buffer) == [b"one", b"two"]
    assert buffer.blank_lines == 1


def test_cr_split_from_its_lf_is_still_dropped() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"one\r")
    assert buffer.next_line() is None
    buffer.feed(b"\n")
    assert buffer.next_line() == b"one"


def test_only_the_cr_right_before_the_lf_is_dropped() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"a\rb\r\r\n\rc\n")
    assert lines_of(buffer) == [b"a\rb\r", b"\rc"]


def test_empty_lines_are_skipped_and_counted() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"\n\r\nx\n\n")
    assert lines_of(buffer) == [b"x"]
    assert buffer.blank_lines == 3


def test_a_blank_line_split_between_cr_and_lf_is_still_blank() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"\r")
    assert buffer.next_line() is None
    buffer.feed(b"\ny\n")
    assert lines_of(buffer) == [b"y"]
    assert buffer.blank_lines == 1


def test_bytes_are_passed_through_undecoded() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"\xff\x00\xc3\xa9\n")
    assert buffer.next_line() == b"\xff\x00\xc3\xa9"


# The limit


@pytest.mark.parametrize("max_line", [2, 10, 4096])
def test_a_line_of_exactly_the_limit_passes(max_line: int) -> None:
    buffer = LineBuffer(max_line)
    buffer.feed(b"x" * (max_line - 1) + b"\n")
    assert buffer.next_line() == b"x" * (max_line - 1)


@pytest.mark.parametrize("max_line", [2, 10, 4096])
def test_a_line_one_over_the_limit_fails(max_line: int) -> None:
    buffer = LineBuffer(max_line)
    buffer.feed(b"x" * max_line + b"\n")
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_the_limit_counts_the_cr_of_a_crlf() -> None:
    fits = LineBuffer(10)
    fits.feed(b"x" * 8 + b"\r\n")
    assert fits.next_line() == b"x" * 8
    too_long = LineBuffer(10)
    too_long.feed(b"x" * 9 + b"\r\n")
    with pytest.raises(LineTooLong):
        too_long.next_line()


def test_the_limit_counts_bytes_not_characters() -> None:
    buffer = LineBuffer(10)
    buffer.feed("ééééé\n".encode())  # 5 characters, 11 bytes
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_a_full_buffer_without_lf_fails_at_once() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"x" * 9)
    assert buffer.next_line() is None  # an LF could still make it fit
    buffer.feed(b"x")
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_a_huge_chunk_without_lf_fails_at_once() -> None:
    buffer = LineBuffer(4096)
    buffer.feed(b"x" * 100_000)
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_lines_before_a_long_one_are_still_returned() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"ok\nalso ok\n" + b"x" * 20 + b"\n")
    assert buffer.next_line() == b"ok"
    assert buffer.next_line() == b"also ok"
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_the_limit_applies_to_each_line_not_the_buffer() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"123456789\n" * 50)
    assert lines_of(buffer) == [b"123456789"] * 50


def test_a_partial_line_after_whole_ones_is_measured_alone() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"123456789\n12345678")
    assert buffer.next_line() == b"123456789"
    assert buffer.next_line() is None
    buffer.feed(b"9")
    assert buffer.next_line() is None
    buffer.feed(b"0")
    with pytest.raises(LineTooLong):
        buffer.next_line()


def test_len_counts_the_bytes_not_taken_yet() -> None:
    buffer = LineBuffer(100)
    assert buffer.max_line == 100
    assert len(buffer) == 0
    buffer.feed(b"ping|x\r\npin")
    assert len(buffer) == 11
    assert buffer.next_line() == b"ping|x"
    assert len(buffer) == 3
    assert buffer.take_lines(b"g|y\nping") == ([b"ping|y"], False)
    assert len(buffer) == 4
    buffer.feed(b"|z\n")
    assert lines_of(buffer) == [b"ping|z"]
    assert len(buffer) == 0


@pytest.mark.parametrize("max_line", [-1, 0, 1])
def test_a_limit_must_leave_room_for_a_byte_and_the_lf(max_line: int) -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineBuffer(max_line)


# Properties

line_bodies = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut at arbitrary points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200)
@given(st.lists(line_bodies, max_size=10), line_bodies, st.data())
def test_chunking_does_not_change_the_lines(
    bodies: list[bytes], tail: bytes, data: st.DataObject
) -> None:
    stream = b"".join(body + b"\n" for body in bodies) + tail
    whole = LineBuffer(64)
    whole.feed(stream)
    expected = lines_of(whole)

    buffer = LineBuffer(64)
    got = []
    for chunk in data.draw(chunked(stream)):
        buffer.feed(chunk)
        got.extend(lines_of(buffer))
    assert got == expected
    assert len(buffer) == len(whole) == len(tail)
    assert buffer.blank_lines == whole.blank_lines
    # The lines come back without their LF and without one CR before it;
    # the empty ones are counted, not returned.
    lines = [body.removesuffix(b"\r") for body in bodies]
    assert expected == [line for line in lines if line]
    assert whole.blank_lines == lines.count(b"")


@given(st.binary(max_size=300), st.integers(2, 40))
def test_every_line_returned_is_within_the_limit(stream: bytes, max_line: int) -> None:
    buffer = LineBuffer(max_line)
    buffer.feed(stream)
    try:
        while (line := buffer.next_line()) is not None:
            assert len(line) + 1 <= max_line
            assert b"\n" not in line
    except LineTooLong:
        # Either the next line is over the limit or the rest has no LF yet
        # and already fills the limit.
        rest = stream[len(stream) - len(buffer) :]
        end = rest.find(b"\n")
        if end < 0:
            assert len(rest) >= max_line
        else:
            assert end + 1 > max_line
    else:
        assert len(buffer) < max_line


# take_lines, the batch form a server uses


def expand_runs(lines: list[bytes]) -> list[bytes]:
    """take_lines' lines with each run of empty lines (an entry of LFs)
    back as that many empty lines."""
    expanded: list[bytes] = []
    for line in lines:
        if line[:1] == b"\n":
            expanded.extend([b""] * len(line))
        else:
            expanded.append(line)
    return expanded


@settings(max_examples=200)
@given(st.lists(line_bodies, max_size=10), line_bodies, st.data())
def test_take_lines_gives_every_whole_line_however_the_bytes_arrive(
    bodies: list[bytes], tail: bytes, data: st.DataObject
) -> None:
    stream = b"".join(body + b"\n" for body in bodies) + tail
    buffer = LineBuffer(64)
    got = []
    for chunk in data.draw(chunked(stream)):
        lines, too_long = buffer.take_lines(chunk)
        assert not too_long
        got.extend(lines)
    # As they were sent, a CR included, and each run of empty ones (a lone
    # CR is empty too) as one entry of that many LFs, in its place.
    assert expand_runs(got) == [b"" if body == b"\r" else body for body in bodies]
    assert len(buffer) == len(tail)


@given(st.binary(max_size=300), st.integers(2, 40), st.data())
def test_take_lines_agrees_with_next_line_on_the_limit(
    stream: bytes, max_line: int, data: st.DataObject
) -> None:
    one_by_one = LineBuffer(max_line)
    one_by_one.feed(stream)
    expected = []
    try:
        while (line := one_by_one.next_line()) is not None:
            expected.append(line)
        expected_too_long = False
    except LineTooLong:
        expected_too_long = True

    batch = LineBuffer(max_line)
    got = []
    too_long = False
    for chunk in data.draw(chunked(stream)):
        lines, too_long = batch.take_lines(chunk)
        got.extend(lines)
        if too_long:
            break
    assert too_long == expected_too_long
    lines = [line for line in expand_runs(got) if line]
    assert [line.removesuffix(b"\r") for line in lines] == expected
    assert len(expand_runs(got)) - len(lines) == one_by_one.blank_lines


def test_take_lines_returns_the_lines_before_a_long_one() -> None:
    buffer = LineBuffer(10)
    assert buffer.take_lines(b"ok\nalso ok\n" + b"x" * 20 + b"\nlost\n") == (
        [b"ok", b"also ok"],
        True,
    )


def test_take_lines_counts_a_partial_line_across_reads() -> None:
    buffer = LineBuffer(10)
    assert buffer.take_lines(b"123456789\n1234") == ([b"123456789"], False)
    assert buffer.take_lines(b"5678") == ([], False)
    assert buffer.take_lines(b"9\n") == ([b"123456789"], False)
    assert buffer.take_lines(b"12345") == ([], False)
    assert buffer.take_lines(b"67890") == ([], True)


def test_take_lines_and_next_line_share_the_buffer() -> None:
    buffer = LineBuffer(64)
    assert buffer.take_lines(b"one\ntw") == ([b"one"], False)
    buffer.feed(b"o\nthree\n")
    assert lines_of(buffer) == [b"two", b"three"]


def test_take_lines_gives_a_run_of_empty_lines_as_one_entry_in_its_place() -> None:
    buffer = LineBuffer(64)
    assert buffer.take_lines(b"one\n\n\r\n\ntwo\n\nthree\n") == (
        [b"one", b"\n\n\n", b"two", b"\n", b"three"],
        False,
    )
