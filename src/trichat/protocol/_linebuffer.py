"""A receive buffer that hands out LF-terminated lines under a length limit."""

from __future__ import annotations

import re
from itertools import groupby

__all__ = ["LineBuffer", "LineTooLong"]

_BLANK_LINES = re.compile(rb"(?:\r?\n)+")
_EMPTY = frozenset({b"", b"\r"})


class LineTooLong(Exception):
    """A line is longer than the limit (its LF included), or will be."""


class LineBuffer:
    """Collects bytes and splits them into lines of at most *max_line* bytes.

    The limit counts every byte of a line, its LF included. A buffer that
    already holds *max_line* bytes with no LF is an error at once: no LF can
    make that line short enough. The search resumes where the last one
    stopped, so a line that trickles in is not scanned again from its start.
    """

    __slots__ = ("_buffer", "_scan_from", "blank_lines", "max_line")

    def __init__(self, max_line: int) -> None:
        if max_line < 2:
            raise ValueError("max_line must leave room for one byte and the LF")
        self.max_line = max_line
        self._buffer = bytearray()
        self._scan_from = 0
        self.blank_lines = 0
        """Empty lines skipped so far (a caller may reset it)."""

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def take_lines(self, data: bytes) -> tuple[list[bytes], bool]:
        """Add *data* and take every whole line buffered, all at once.

        The batch form of ``next_line``, for a reader that handles a whole
        read in one go: one split per read instead of a search per line.
        The lines come without their LF; a CR before it is the caller's to
        drop. A run of empty lines (a lone CR counts as empty) comes as one
        entry of as many LFs, which no line can hold: callers that count
        empty lines keep their place among the others. Returns the lines
        and whether the limit was broken; if it was, the lines are those
        before the one that broke it, and what follows is dropped.
        """
        buffer = self._buffer
        if buffer:
            if b"\n" not in data:
                # Most of a long line that trickles in: no copy per piece.
                buffer += data
                self._scan_from = len(buffer)
                return [], len(buffer) >= self.max_line
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        limit = self.max_line  # counts the LF: a line holds limit - 1 bytes
        too_long = len(rest) >= limit
        if lines and max(map(len, lines)) >= limit:
            first_long = next(i for i, line in enumerate(lines) if len(line) >= limit)
            del lines[first_long:]
            too_long = True
        if lines and min(map(len, lines)) <= 1:
            # Some line may be empty (or a lone CR): rare, so looked for first.
            runs: list[bytes] = []
            for empty, group in groupby(lines, _EMPTY.__contains__):
                if empty:
                    runs.append(b"\n" * len(list(group)))
                else:
                    runs.extend(group)
            lines = runs
        if not too_long:
            buffer += rest
            self._scan_from = len(rest)
        return lines, too_long

    def next_line(self) -> bytes | None:
        """The next non-empty line without its LF (and a CR before it).

        Returns None when no whole line is buffered yet; raises LineTooLong
        when the next line breaks the limit. Empty lines are skipped, all
        of a run at once, and counted in ``blank_lines``.
        """
        buffer = self._buffer
        if buffer and buffer[0] in b"\r\n":
            blanks = _BLANK_LINES.match(buffer)
            if blanks is not None:
                self.blank_lines += blanks.group().count(b"\n")
                del buffer[: blanks.end()]
                self._scan_from = 0
        end = buffer.find(b"\n", self._scan_from)
        if end < 0:
            if len(buffer) >= self.max_line:
                raise LineTooLong(len(buffer))
            self._scan_from = len(buffer)
            return None
        if end + 1 > self.max_line:
            raise LineTooLong(end + 1)
        stop = end - 1 if end and buffer[end - 1] == 0x0D else end
        line = bytes(buffer[:stop])
        del buffer[: end + 1]
        self._scan_from = 0
        return line
