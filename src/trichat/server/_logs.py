"""The server's log: bounded, and never written from the event loop.

Each connection logs two or three lines (connect, login, exit), so a flood
of connections is a flood of lines: an attacker could fill a disk, and an
event loop writing them to a slow terminal or pipe stalls every user.
``RepeatFilter`` lets a few lines of each kind through per second and
counts the rest, saying how many it held back on the next line of that
kind it lets through; ``background_stderr`` hands the lines to a thread of
its own that writes them, so a slow stderr costs the event loop nothing.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["RepeatFilter", "background_stderr"]


class RepeatFilter(logging.Filter):
    """Lets at most *burst* records of one kind (the same logger, level and
    message template: ``"connect %s"`` whatever the address) through per
    *window* seconds. Those held back are counted, and the next record of
    that kind let through says how many there were. Memory is bounded by
    the number of templates in the code, not by what clients do."""

    def __init__(
        self,
        *,
        burst: int = 20,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._clock = clock
        # kind -> [window start, let through in it, held back since last told]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = [now, 0, 0]
        if now - state[0] >= self.window:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        held = int(state[2])
        if held:
            state[2] = 0
            record.msg = f"{record.msg} (and {held} more like it, not logged)"
        return True


@contextmanager
def background_stderr(
    level: int | str, stream: TextIO, fmt: str
) -> Iterator[logging.Handler]:
    """For the time of the ``with``: the root logger's records, filtered
    by a ``RepeatFilter``, go through a queue to a thread that writes them
    to *stream*. On leaving, the thread writes what is queued and ends."""
    writer = logging.StreamHandler(stream)
    writer.setFormatter(logging.Formatter(fmt))
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(lines)
    handler.addFilter(RepeatFilter())
    listener = logging.handlers.QueueListener(lines, writer)
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    listener.start()
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        listener.stop()  # writes what is queued first
