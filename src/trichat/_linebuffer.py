"""A receive buffer that hands out LF-terminated lines under a length limit."""

from __future__ import annotations

__all__ = ["LineBuffer", "LineTooLong"]


class LineTooLong(Exception):
    """A line is longer than the limit (its LF included), or will be."""


class LineBuffer:
    """Collects bytes and splits them into lines of at most *max_line* bytes.

    The limit counts every byte of a line, its LF included. A buffer that
    already holds *max_line* bytes with no LF is an error at once: no LF can
    make that line short enough. The search resumes where the last one
    stopped, so a line that trickles in is not scanned again from its start.
    """

    __slots__ = ("_buffer", "_scan_from", "max_line")

    def __init__(self, max_line: int) -> None:
        if max_line < 2:
            raise ValueError("max_line must leave room for one byte and the LF")
        self.max_line = max_line
        self._buffer = bytearray()
        self._scan_from = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next line without its LF (and without a CR before it).

        Returns None when no whole line is buffered yet; raises LineTooLong
        when the next line breaks the limit.
        """
        buffer = self._buffer
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
