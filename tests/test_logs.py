"""The server's log: a few lines of a kind a second, written by a thread."""

from __future__ import annotations

import io
import logging

from trichat.server._logs import RepeatFilter, background_stderr


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(message: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("trichat.server", level, __file__, 1, message, args, None)


def test_a_kind_of_line_gets_its_burst_a_window_then_says_what_it_held() -> None:
    clock = Clock()
    repeats = RepeatFilter(burst=3, window=1.0, clock=clock)
    let = [repeats.filter(record("connect %s", f"10.0.0.{n}")) for n in range(10)]
    assert let == [True] * 3 + [False] * 7
    clock.now += 1.0
    told = record("connect %s", "10.0.0.99")
    assert repeats.filter(told)
    assert told.getMessage() == "connect 10.0.0.99 (and 7 more like it, not logged)"
    # Told once.
    again = record("connect %s", "10.0.0.100")
    assert repeats.filter(again)
    assert again.getMessage() == "connect 10.0.0.100"


def test_kinds_are_counted_apart() -> None:
    repeats = RepeatFilter(burst=1, window=1.0, clock=Clock())
    assert repeats.filter(record("connect %s", "a"))
    assert not repeats.filter(record("connect %s", "b"))
    assert repeats.filter(record("login %s %s", "a", "alice"))
    assert repeats.filter(record("connect %s", "c", level=logging.WARNING))


def test_a_flood_of_connections_is_a_few_lines_written_by_a_thread() -> None:
    stream = io.StringIO()
    log = logging.getLogger("trichat.server")
    with background_stderr("INFO", stream, "%(message)s"):
        for n in range(1000):
            log.info("connect %s", n)
        log.info("listening on %s", "here")
    lines = stream.getvalue().splitlines()
    assert lines[:20] == [f"connect {n}" for n in range(20)]
    # A few more if the flood took over a second (a slow machine), not 1000.
    assert len(lines) < 60
    assert lines[-1] == "listening on here"
